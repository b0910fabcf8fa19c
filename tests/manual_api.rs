//! The manual API (start_run / join_run / end_run / feedback / wrap_agent),
//! child spans from handlers, distinct ids, capture controls and
//! cross-service propagation, on a recording ingest.

mod common;

use axum::extract::State;
use axum::routing::post;
use axum::{Extension, Router};
use common::*;
use futures::FutureExt;
use serde_json::{Value, json};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;
use trodo_tower::{
    EndRun, Feedback, RequestSpan, SpanGuard, SpanKind, StartRun, Trodo, TrodoLayer,
};
use uuid::Uuid;

async fn trodo() -> (RecordingIngest, Trodo) {
    let ingest = RecordingIngest::start().await.unwrap();
    let trodo = Trodo::new(&config(&ingest));
    (ingest, trodo)
}

#[tokio::test]
async fn start_run_sends_the_full_run_and_threads_a_given_id() {
    let (ingest, trodo) = trodo().await;
    let given = Uuid::parse_str("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee").unwrap();
    let parent = Uuid::new_v4();
    let run_id = trodo.start_run(
        StartRun::new("external_mcp_session")
            .run_id(given)
            .distinct_id("user-7")
            .conversation_id("conv-abc")
            .parent_run_id(parent)
            .metadata("mcp_client", "claude-desktop")
            .input(json!({"hello": "world"})),
    );
    assert_eq!(run_id, given);
    let minted = trodo.start_run(StartRun::new("session"));
    assert_eq!(minted.get_version_num(), 4);
    assert!(trodo.flush(WAIT).await);

    // Runs are delivered side by side: each in order, not one after the other.
    let starts = ingest.starts();
    assert_eq!(starts.len(), 2);
    let run_with = |id: Uuid| {
        starts
            .iter()
            .find(|run| run["run_id"] == id.to_string())
            .unwrap_or_else(|| panic!("no start of {id} in {starts:?}"))
    };
    let run = run_with(given);
    assert_eq!(
        keys(run),
        [
            "agent_name",
            "conversation_id",
            "distinct_id",
            "input",
            "metadata",
            "parent_run_id",
            "run_id",
            "started_at",
            "status"
        ]
    );
    assert_eq!(run["run_id"], given.to_string());
    assert_eq!(run["agent_name"], "external_mcp_session");
    assert_eq!(run["distinct_id"], "user-7");
    assert_eq!(run["conversation_id"], "conv-abc");
    assert_eq!(run["parent_run_id"], parent.to_string());
    assert_eq!(run["status"], "running");
    assert_eq!(run["metadata"], json!({"mcp_client": "claude-desktop"}));
    assert_eq!(run["input"], r#"{"hello":"world"}"#);
    assert_eq!(run_with(minted)["agent_name"], "session");
}

#[tokio::test]
async fn spans_joined_from_another_process_and_a_true_end() {
    let (ingest, process_a) = trodo().await;
    // Another process: its own state, same ingest.
    let process_b = Trodo::new(&config(&ingest));
    let run_id = process_a.start_run(StartRun::new("session").conversation_id("mcp-sess-42"));

    for (i, tool) in ["tool.a", "tool.b", "tool.c"].into_iter().enumerate() {
        let mut span = process_b.join_run(run_id, SpanKind::Tool, tool);
        span.set_input(json!({"team_id": "team-1"}))
            .set_output(json!({"status": "ok"}))
            .set_attribute("call_idx", i);
        span.finish();
    }
    // Two spans in the owning process count in its totals.
    let mut tool = process_a.join_run(run_id, SpanKind::Tool, "tool.lookup");
    tool.set_tokens(5, 10).set_cost(0.001);
    tool.finish();
    let mut llm = process_a.join_run(run_id, SpanKind::Llm, "llm.answer");
    llm.set_tokens(15, 30)
        .set_cost(0.002)
        .set_error("rate_limited", "429 from the provider");
    llm.finish();
    process_a.end_run(
        run_id,
        EndRun::ok()
            .output(json!({"calls": 5}))
            .metadata("closed_via", "session_timeout"),
    );
    process_a.end_run(run_id, EndRun::ok()); // a second end sends nothing
    assert!(process_b.flush(WAIT).await && process_a.flush(WAIT).await);

    // Each process delivers its spans in order; the two side by side.
    let spans = spans_of(&ingest, &run_id.to_string());
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    let in_order = |wanted: &[&str]| {
        names
            .iter()
            .filter(|name| wanted.contains(name))
            .copied()
            .collect::<Vec<_>>()
            == wanted
    };
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(in_order(&["tool.a", "tool.b", "tool.c"]), "{names:?}");
    assert!(in_order(&["tool.lookup", "llm.answer"]), "{names:?}");
    let named = |name: &str| spans.iter().find(|s| s["name"] == name).unwrap();
    assert_eq!(named("tool.a")["kind"], "tool");
    assert_eq!(named("tool.a")["tool_name"], "a");
    assert_eq!(named("tool.a")["run_id"], run_id.to_string());
    assert_eq!(named("tool.c")["attributes"]["call_idx"], 2);
    assert_eq!(named("tool.a")["output"], r#"{"status":"ok"}"#);
    assert_eq!(named("llm.answer")["status"], "error");
    assert_eq!(named("llm.answer")["error_type"], "rate_limited");

    let ends = ingest.ends();
    assert_eq!(ends.len(), 1, "exactly one end");
    let end = &ends[0].1;
    assert_eq!(end["status"], "ok");
    assert_eq!(end["output"], r#"{"calls":5}"#);
    assert_eq!(end["metadata"], json!({"closed_via": "session_timeout"}));
    assert_eq!(
        (
            end["total_tokens_in"].as_u64(),
            end["total_tokens_out"].as_u64()
        ),
        (Some(20), Some(40))
    );
    assert_eq!(end["total_cost"], 0.003);
    // Spans of process B went straight to the ingest: process A counts what it saw.
    assert_eq!(
        (
            end["span_count"].as_u64(),
            end["tool_count"].as_u64(),
            end["error_count"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
}

#[tokio::test]
async fn end_run_records_an_error_and_tolerates_a_failing_ingest() {
    let (ingest, trodo) = trodo().await;
    let run_id = trodo.start_run(StartRun::new("session"));
    trodo.end_run(run_id, EndRun::error("boom"));
    assert!(trodo.flush(WAIT).await);
    let end = &ingest.ends()[0].1;
    assert_eq!(end["status"], "error");
    assert_eq!(end["error_summary"], "boom");

    ingest.fail_next(10, 400);
    let other = trodo.start_run(StartRun::new("session"));
    trodo.end_run(other, EndRun::ok());
    assert!(trodo.flush(WAIT).await);
    assert_eq!(
        ingest.ends().len(),
        1,
        "the rejected calls are not recorded, and nothing panicked"
    );
}

#[tokio::test]
async fn a_joined_span_that_finishes_after_its_run_ended_here_is_not_sent() {
    let (ingest, trodo) = trodo().await;
    let run_id = trodo.start_run(StartRun::new("session"));
    let late = trodo.join_run(run_id, SpanKind::Tool, "tool.late");
    let on_time = trodo.join_run(run_id, SpanKind::Tool, "tool.on_time");
    on_time.finish();
    trodo.end_run(run_id, EndRun::ok());
    late.finish();
    assert!(trodo.flush(WAIT).await);

    let paths: Vec<String> = ingest.received().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/api/sdk/runs/start".to_owned(),
            format!("/api/sdk/runs/{run_id}/spans"),
            format!("/api/sdk/runs/{run_id}/end"),
        ]
    );
    let names: Vec<Value> = ingest
        .spans()
        .into_iter()
        .map(|(_, s)| s["name"].clone())
        .collect();
    assert_eq!(names, [json!("tool.on_time")]);
    assert_eq!(ingest.ends()[0].1["span_count"], 1);
    assert_eq!(trodo.delivery_counters().dropped_after_run_end, 1);
}

/// A run this process does not hold (opened by another, or before a
/// restart), ended here twice: one end goes, and a span of it finished
/// after that is not sent.
#[tokio::test]
async fn a_run_opened_elsewhere_is_ended_once_from_here() {
    let (ingest, trodo) = trodo().await;
    let run_id = Uuid::new_v4();
    trodo.end_run(run_id, EndRun::error("timed out"));
    trodo.end_run(run_id, EndRun::ok());
    trodo.join_run(run_id, SpanKind::Llm, "llm.late").finish();
    assert!(trodo.flush(WAIT).await);

    let ends = ingest.ends();
    assert_eq!(ends.len(), 1, "{:?}", ingest.received());
    assert_eq!(ends[0].1["status"], "error");
    assert!(ingest.spans().is_empty());
    assert_eq!(trodo.delivery_counters().dropped_after_run_end, 1);
}

#[tokio::test]
async fn switched_off_the_manual_api_records_nothing_and_flush_has_nothing_to_wait_for() {
    let ingest = RecordingIngest::start().await.unwrap();
    let trodo = Trodo::new(&config(&ingest).with_enabled(false));
    let run_id = trodo.start_run(StartRun::new("session"));
    trodo.join_run(run_id, SpanKind::Tool, "tool.x").finish();
    trodo.end_run(run_id, EndRun::ok());
    trodo.feedback(run_id, Feedback::new().rating(5.0));

    let counters = trodo.delivery_counters();
    assert_eq!(
        (counters.queued_items, counters.sent, counters.dropped()),
        (0, 0, 0)
    );
    // With records queued and no delivery thread, these would wait WAIT
    // and return false.
    assert!(trodo.flush(WAIT).await);
    assert!(trodo.shutdown(WAIT).await);
    assert!(ingest.received().is_empty(), "{:?}", ingest.received());
}

#[tokio::test]
async fn a_run_id_started_again_after_its_end_can_be_ended_again() {
    let (ingest, trodo) = trodo().await;
    let run_id = Uuid::new_v4();
    for round in 1..=2 {
        trodo.start_run(StartRun::new("session").run_id(run_id));
        trodo.join_run(run_id, SpanKind::Tool, "tool.x").finish();
        trodo.end_run(run_id, EndRun::ok());
        assert_eq!(trodo.open_runs(), 0, "round {round}");
    }
    assert!(trodo.flush(WAIT).await);
    assert_eq!(ingest.starts().len(), 2);
    let ends = ingest.ends();
    assert_eq!(ends.len(), 2);
    assert!(
        ends.iter()
            .all(|(id, end)| *id == run_id.to_string() && end["span_count"] == 1)
    );
}

#[tokio::test]
async fn a_cost_or_temperature_that_is_not_a_number_is_left_out() {
    let (ingest, trodo) = trodo().await;
    let run_id = trodo.start_run(StartRun::new("session"));
    let mut llm = trodo.join_run(run_id, SpanKind::Llm, "llm.answer");
    llm.set_cost(f64::NAN).set_temperature(f64::INFINITY);
    llm.finish();
    let mut other = trodo.join_run(run_id, SpanKind::Llm, "llm.again");
    other.set_cost(0.25);
    other.finish();
    trodo.end_run(run_id, EndRun::ok());
    assert!(trodo.flush(WAIT).await);

    let spans = ingest.spans();
    assert_eq!(spans.len(), 2);
    assert!(spans[0].1.get("cost").is_none(), "{}", spans[0].1);
    assert!(spans[0].1.get("temperature").is_none(), "{}", spans[0].1);
    assert_eq!(spans[1].1["cost"], 0.25);
    assert_eq!(
        ingest.ends()[0].1["total_cost"],
        0.25,
        "the run's total stays a number"
    );
}

#[tokio::test]
async fn feedback_on_a_run() {
    let (ingest, trodo) = trodo().await;
    let run_id = Uuid::new_v4();
    trodo.feedback(
        run_id,
        Feedback::new()
            .satisfaction("positive")
            .rating(4.5)
            .comment("spot on")
            .distinct_id("user-1")
            .attribute("channel", "chat"),
    );
    assert!(trodo.flush(WAIT).await);
    let received = ingest.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, format!("/api/sdk/runs/{run_id}/feedback"));
    assert_eq!(
        received[0].body,
        json!({"satisfaction": "positive", "rating": 4.5, "comment": "spot on", "distinct_id": "user-1", "attributes": {"channel": "chat"}})
    );

    trodo.feedback(run_id, Feedback::new().comment("meh").rating(f64::NAN));
    assert!(trodo.flush(WAIT).await);
    assert_eq!(
        ingest.received()[1].body,
        json!({"comment": "meh"}),
        "a rating that is not a number is left out"
    );
}

/// Work that panics.
async fn crash() -> Result<(), String> {
    panic!("the model client crashed")
}

#[tokio::test]
async fn a_span_dropped_by_a_panic_is_an_error_counted_in_the_end() {
    let (ingest, trodo) = trodo().await;
    let run_id = trodo.start_run(StartRun::new("session"));
    let t = trodo.clone();
    let crashed = tokio::spawn(async move {
        t.join_run(run_id, SpanKind::Tool, "tool.done").finish();
        let mut failed = t.join_run(run_id, SpanKind::Tool, "tool.failed");
        failed.set_error("rate_limited", "429 from the provider");
        let mut crashing = t.join_run(run_id, SpanKind::Tool, "tool.crash");
        crashing.set_input("x");
        panic!("the tool crashed");
    })
    .await;
    assert!(crashed.unwrap_err().is_panic());
    // A panic inside `run`'s work is a panic, not a cancellation.
    let t = trodo.clone();
    let crashed = tokio::spawn(async move {
        t.join_run(run_id, SpanKind::Llm, "llm.crash")
            .run(crash())
            .await
    })
    .await;
    assert!(crashed.unwrap_err().is_panic());
    trodo.end_run(run_id, EndRun::ok());
    assert!(trodo.flush(WAIT).await);

    let spans = spans_of(&ingest, &run_id.to_string());
    assert_eq!(spans.len(), 4, "{spans:?}");
    let named = |name: &str| spans.iter().find(|s| s["name"] == name).unwrap();
    for name in ["tool.crash", "llm.crash"] {
        let span = named(name);
        assert_eq!(span["status"], "error", "{span}");
        assert_eq!(span["error_type"], "panic", "{span}");
        assert_eq!(span["error_message"], "the span's work panicked", "{span}");
    }
    assert_eq!(named("tool.crash")["input"], "x", "what was set is kept");
    assert_eq!(
        named("tool.done")["status"],
        "ok",
        "finished before the panic"
    );
    assert!(named("tool.done").get("error_type").is_none());
    let failed = named("tool.failed");
    assert_eq!(
        (&failed["error_type"], &failed["error_message"]),
        (&json!("rate_limited"), &json!("429 from the provider")),
        "an error set before the panic stands"
    );
    let end = &ingest.ends()[0].1;
    assert_eq!(
        (end["span_count"].as_u64(), end["error_count"].as_u64()),
        (Some(4), Some(3))
    );
}

#[tokio::test]
async fn a_run_dropped_before_its_work_completed_is_cancelled_and_counted_in_the_end() {
    let (ingest, trodo) = trodo().await;
    let run_id = trodo.start_run(StartRun::new("session"));
    let never = Arc::new(Notify::new());
    let waiting = |never: &Arc<Notify>| {
        let never = Arc::clone(never);
        async move {
            never.notified().await;
            Ok::<_, String>("late")
        }
    };

    // Cut short by a timeout.
    let slow = trodo
        .join_run(run_id, SpanKind::Llm, "llm.timed_out")
        .run(waiting(&never));
    assert!(
        tokio::time::timeout(Duration::from_millis(20), slow)
            .await
            .is_err()
    );
    // A `select!` branch that lost (polled once first).
    tokio::select! {
        biased;
        _ = trodo.join_run(run_id, SpanKind::Tool, "tool.lost_race").run(waiting(&never)) => {
            unreachable!("never notified")
        }
        () = std::future::ready(()) => {}
    }
    // An aborted task.
    let task = tokio::spawn(
        trodo
            .join_run(run_id, SpanKind::Tool, "tool.aborted")
            .run(waiting(&never)),
    );
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    // A future dropped before it was ever polled.
    drop(
        trodo
            .join_run(run_id, SpanKind::Tool, "tool.never_polled")
            .run(async { Ok::<_, String>(1) }),
    );
    // One that completes is a success.
    let done = trodo
        .join_run(run_id, SpanKind::Tool, "tool.done")
        .run(async { Ok::<_, String>(7) })
        .await;
    assert_eq!(done, Ok(7));
    trodo.end_run(run_id, EndRun::ok());
    assert!(trodo.flush(WAIT).await);

    let spans = spans_of(&ingest, &run_id.to_string());
    assert_eq!(spans.len(), 5, "{spans:?}");
    let named = |name: &str| spans.iter().find(|s| s["name"] == name).unwrap();
    for name in [
        "llm.timed_out",
        "tool.lost_race",
        "tool.aborted",
        "tool.never_polled",
    ] {
        let span = named(name);
        assert_eq!(span["status"], "error", "{span}");
        assert_eq!(span["error_type"], "cancelled", "{span}");
        assert_eq!(
            span["error_message"], "the span's work was cancelled before it finished",
            "{span}"
        );
        assert!(span.get("output").is_none(), "{span}");
    }
    assert_eq!(named("tool.done")["status"], "ok");
    assert_eq!(named("tool.done")["output"], "7");
    let end = &ingest.ends()[0].1;
    assert_eq!(end["status"], "ok");
    assert_eq!(
        (
            end["span_count"].as_u64(),
            end["tool_count"].as_u64(),
            end["error_count"].as_u64()
        ),
        (Some(5), Some(4), Some(4))
    );
}

#[tokio::test]
async fn wrap_agent_sends_one_ingest_call() {
    let (ingest, trodo) = trodo().await;
    let answer: Result<Value, String> = trodo
        .wrap_agent(
            StartRun::new("chat")
                .distinct_id("user-1")
                .conversation_id("conv-1")
                .input(json!({"q": "hello"})),
            |run| async move {
                let mut llm = run.span(SpanKind::Llm, "llm.reply");
                llm.set_tokens(10, 3).set_cost(0.5);
                llm.finish();
                Ok(json!({"a": "world"}))
            },
        )
        .await;
    assert_eq!(answer, Ok(json!({"a": "world"})));
    let failed: Result<(), String> = trodo
        .wrap_agent(StartRun::new("chat").input("query"), |_| async {
            Err("kaboom".to_owned())
        })
        .await;
    assert!(failed.is_err());
    assert!(trodo.flush(WAIT).await);

    let received = ingest.received();
    assert!(
        received.iter().all(|r| r.path == "/api/sdk/runs/ingest"),
        "no start, no end"
    );
    assert_eq!(received.len(), 2);
    // Runs are delivered side by side: each in order, not one after the other.
    let with_status = |status: &str| {
        received
            .iter()
            .find(|r| r.body["run"]["status"] == status)
            .unwrap_or_else(|| panic!("no {status} run"))
    };
    let ok = with_status("ok");
    let run = &ok.body["run"];
    assert_eq!(run["agent_name"], "chat");
    assert_eq!(run["distinct_id"], "user-1");
    assert_eq!(run["conversation_id"], "conv-1");
    assert_eq!(run["status"], "ok");
    assert_eq!(run["input"], r#"{"q":"hello"}"#);
    assert_eq!(run["output"], r#"{"a":"world"}"#);
    assert_eq!(
        (
            run["span_count"].as_u64(),
            run["total_tokens_in"].as_u64(),
            run["total_cost"].as_f64()
        ),
        (Some(1), Some(10), Some(0.5))
    );
    assert_eq!(ok.body["spans"][0]["name"], "llm.reply");
    assert_eq!(ok.body["spans"][0]["run_id"], run["run_id"]);
    let failed = &with_status("error").body["run"];
    assert_eq!(failed["status"], "error");
    assert_eq!(failed["error_summary"], "kaboom");
}

#[tokio::test]
async fn a_wrap_agent_span_that_finishes_after_its_run_was_sent_is_dropped_and_counted() {
    let (ingest, trodo) = trodo().await;
    let handle = std::sync::Arc::new(std::sync::Mutex::new(None));
    let kept = std::sync::Arc::clone(&handle);
    let answer: Result<(), String> = trodo
        .wrap_agent(StartRun::new("chat"), |run| async move {
            run.span(SpanKind::Llm, "llm.on_time").finish();
            *kept.lock().unwrap() = Some(run);
            Ok(())
        })
        .await;
    assert_eq!(answer, Ok(()));
    let run = handle.lock().unwrap().take().unwrap();
    run.span(SpanKind::Llm, "llm.late").finish();
    assert!(trodo.flush(WAIT).await);

    let received = ingest.received();
    assert_eq!(received.len(), 1, "the late span made no call of its own");
    let spans = received[0].body["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["name"], "llm.on_time");
    assert_eq!(received[0].body["run"]["span_count"], 1);
    assert_eq!(trodo.delivery_counters().dropped_after_run_end, 1);
}

#[tokio::test]
async fn a_wrap_agent_cut_short_still_sends_its_run_as_cancelled() {
    let (ingest, trodo) = trodo().await;
    let never = Arc::new(Notify::new());
    let waiting = Arc::clone(&never);
    let agent = trodo.wrap_agent(StartRun::new("chat").input("hello"), |run| async move {
        let mut llm = run.span(SpanKind::Llm, "llm.reply");
        llm.set_tokens(10, 3).set_cost(0.5);
        llm.finish();
        // Still under way when the agent is dropped.
        run.span(SpanKind::Tool, "tool.wait")
            .run(async move {
                waiting.notified().await;
                Ok::<_, String>("late")
            })
            .await
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(20), agent)
            .await
            .is_err()
    );
    assert!(trodo.flush(WAIT).await);

    let received = ingest.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].path, "/api/sdk/runs/ingest");
    let run = &received[0].body["run"];
    assert_eq!(run["agent_name"], "chat");
    assert_eq!(run["input"], "hello");
    assert_eq!(run["status"], "error");
    assert_eq!(run["error_summary"], "cancelled");
    assert!(run.get("output").is_none(), "{run}");
    assert!(run.get("ended_at").is_some(), "{run}");
    assert_eq!(
        (
            run["span_count"].as_u64(),
            run["tool_count"].as_u64(),
            run["error_count"].as_u64(),
            run["total_tokens_in"].as_u64(),
            run["total_cost"].as_f64()
        ),
        (Some(2), Some(1), Some(1), Some(10), Some(0.5))
    );
    let spans = received[0].body["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert_eq!(spans[0]["name"], "llm.reply");
    assert_eq!(spans[0]["status"], "ok");
    assert_eq!(spans[1]["name"], "tool.wait");
    assert_eq!(
        spans[1]["error_type"], "cancelled",
        "the open span went with the run"
    );
    assert_eq!(trodo.delivery_counters().dropped_after_run_end, 0);
}

#[tokio::test]
async fn a_wrap_agent_whose_agent_panics_still_sends_its_run_as_panicked() {
    let (ingest, trodo) = trodo().await;
    let t = trodo.clone();
    let crashed = tokio::spawn(async move {
        t.wrap_agent(StartRun::new("chat").input("hello"), |run| async move {
            let mut llm = run.span(SpanKind::Llm, "llm.reply");
            llm.set_tokens(10, 3);
            llm.finish();
            let _open = run.span(SpanKind::Tool, "tool.crash");
            crash().await
        })
        .await
    })
    .await;
    assert!(crashed.unwrap_err().is_panic());
    assert!(trodo.flush(WAIT).await);

    let received = ingest.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].path, "/api/sdk/runs/ingest");
    let run = &received[0].body["run"];
    assert_eq!(run["status"], "error");
    assert_eq!(run["error_summary"], "panicked");
    assert_eq!(
        (
            run["span_count"].as_u64(),
            run["error_count"].as_u64(),
            run["total_tokens_in"].as_u64()
        ),
        (Some(2), Some(1), Some(10))
    );
    let spans = received[0].body["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert_eq!(spans[0]["name"], "llm.reply");
    assert_eq!(spans[0]["status"], "ok");
    assert_eq!(spans[1]["name"], "tool.crash");
    assert_eq!(spans[1]["error_type"], "panic");
}

/// An agent behind tower-http's `CatchPanicLayer`, which catches the panic
/// in the handler's `poll` and drops the handler's future afterwards. The
/// async blocks between the panic and the catch drop what they hold (the
/// run's guard, the open span) as the panic unwinds through them.
async fn crashing_agent(State(trodo): State<Trodo>) -> &'static str {
    let _ = trodo
        .wrap_agent(StartRun::new("chat").input("hello"), |run| async move {
            run.span(SpanKind::Llm, "llm.reply").finish();
            let _open = run.span(SpanKind::Tool, "tool.crash");
            tokio::task::yield_now().await;
            crash().await
        })
        .await;
    "never answered"
}

#[tokio::test]
async fn a_wrap_agent_whose_panic_a_catch_panic_layer_catches_is_sent_as_panicked() {
    let (ingest, trodo) = trodo().await;
    let app = Router::new()
        .route("/agent", post(crashing_agent))
        .with_state(trodo.clone())
        .layer(CatchPanicLayer::new());
    let request = http::Request::post("/agent")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    assert!(trodo.flush(WAIT).await);

    let received = ingest.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].path, "/api/sdk/runs/ingest");
    let run = &received[0].body["run"];
    assert_eq!(
        (&run["status"], &run["error_summary"]),
        (&json!("error"), &json!("panicked")),
        "not cancelled: the agent panicked"
    );
    assert_eq!(
        (run["span_count"].as_u64(), run["error_count"].as_u64()),
        (Some(2), Some(1))
    );
    let spans = received[0].body["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert_eq!(
        (&spans[0]["name"], &spans[0]["status"]),
        (&json!("llm.reply"), &json!("ok"))
    );
    assert_eq!(spans[1]["name"], "tool.crash");
    assert_eq!(
        (&spans[1]["error_type"], &spans[1]["error_message"]),
        (&json!("panic"), &json!("the span's work panicked")),
        "the span held across the panic is a panic, not a span that ended well"
    );
}

#[tokio::test]
async fn a_span_run_whose_work_panics_under_catch_unwind_is_a_panic_and_a_cut_one_is_cancelled() {
    let (ingest, trodo) = trodo().await;
    let run_id = trodo.start_run(StartRun::new("session"));
    let crashed = AssertUnwindSafe(
        trodo
            .join_run(run_id, SpanKind::Llm, "llm.crash")
            .run(crash()),
    )
    .catch_unwind()
    .await;
    assert!(crashed.is_err());
    // Dropped unfinished without a panic, under the same `catch_unwind`:
    // still a cancellation.
    let cut = AssertUnwindSafe(
        trodo
            .join_run(run_id, SpanKind::Tool, "tool.cut")
            .run(std::future::pending::<Result<(), String>>()),
    )
    .catch_unwind()
    .now_or_never();
    assert!(cut.is_none(), "polled once, then dropped");
    trodo.end_run(run_id, EndRun::ok());
    assert!(trodo.flush(WAIT).await);

    let spans = spans_of(&ingest, &run_id.to_string());
    assert_eq!(spans.len(), 2, "{spans:?}");
    let named = |name: &str| spans.iter().find(|s| s["name"] == name).unwrap();
    assert_eq!(named("llm.crash")["error_type"], "panic");
    assert_eq!(named("tool.cut")["error_type"], "cancelled");
    let end = &ingest.ends()[0].1;
    assert_eq!(
        (end["span_count"].as_u64(), end["error_count"].as_u64()),
        (Some(2), Some(2))
    );
}

#[tokio::test]
async fn a_child_span_past_what_a_request_keeps_before_its_run_is_known_is_counted_as_dropped() {
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    // Without a session, the run is known once the answer's head is decided:
    // every child the handler finishes before that waits for it.
    let app = Router::new()
        .route(
            "/mcp",
            // The layer reads the request as the handler does.
            post(
                |Extension(span): Extension<RequestSpan>, _call: String| async move {
                    for step in 0..1_001 {
                        span.child(SpanKind::Tool, format!("step {step}")).finish();
                    }
                    axum::Json(json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}))
                },
            ),
        )
        .layer(layer);
    let client = RawClient::new(serve(app).await);
    let answer = client
        .send(tool_call_body(1, "many_steps", json!({})))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(trodo.flush(WAIT).await);
    assert_eq!(
        span_count(&ingest.received()),
        1 + 1_000,
        "the request's span and the 1,000 children it kept"
    );
    assert_eq!(trodo.delivery_counters().dropped_queue_full, 1);
}

#[tokio::test]
async fn an_rmcp_tool_adds_an_llm_child_span_that_counts_in_the_run() {
    let ingest = RecordingIngest::start().await.unwrap();
    let config = config(&ingest)
        .with_distinct_id(|parts| Some(parts.headers.get("x-user-id")?.to_str().ok()?.to_owned()));
    let mut client = RawClient::new(serve_demo(DemoTools::new(), TrodoLayer::new(config)).await);
    client.http = reqwest::Client::builder()
        .default_headers(
            [("x-user-id".parse().unwrap(), "user-42".parse().unwrap())]
                .into_iter()
                .collect(),
        )
        .build()
        .unwrap();
    client.initialize("child-test").await;
    let answer = client
        .call_tool(1, "ask_llm", json!({"question": "why?"}))
        .await;
    assert_eq!(
        answer.response()["result"]["content"][0]["text"],
        r#"the answer to "why?" is 42"#
    );
    client.delete().await;
    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();

    assert_eq!(ingest.starts()[0]["distinct_id"], "user-42");
    let spans: Vec<Value> = ingest.spans().into_iter().map(|(_, s)| s).collect();
    assert_eq!(spans.len(), 2);
    let (child, request) = (&spans[0], &spans[1]);
    assert_eq!(request["name"], "tool.ask_llm");
    assert_eq!(child["name"], "llm.answer");
    assert_eq!(child["kind"], "llm");
    assert_eq!(child["parent_span_id"], request["span_id"]);
    assert_eq!(child["run_id"], request["run_id"]);
    assert_eq!(
        (child["model"].as_str(), child["provider"].as_str()),
        (Some("demo-model"), Some("demo"))
    );
    assert_eq!(
        (
            child["input_tokens"].as_u64(),
            child["output_tokens"].as_u64()
        ),
        (Some(4), Some(9))
    );
    assert_eq!(child["temperature"], 0.2);
    assert_eq!(child["input"], "why?");
    let end = &ingest.ends()[0].1;
    assert_eq!(
        (end["span_count"].as_u64(), end["tool_count"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        (
            end["total_tokens_in"].as_u64(),
            end["total_tokens_out"].as_u64()
        ),
        (Some(4), Some(9))
    );
    assert_eq!(end["total_cost"], 0.00042);
}

#[tokio::test]
async fn capture_controls_and_headers_never_captured() {
    let ingest = RecordingIngest::start().await.unwrap();
    let config = config(&ingest)
        .with_output_capture(false)
        .with_redaction(|value: &mut Value| {
            for argument in ["text", "reason", "a"] {
                if let Some(text) = value.pointer_mut(&format!("/params/arguments/{argument}")) {
                    *text = Value::from("[redacted]");
                }
            }
        });
    // Beside the MCP endpoint, a JSON-RPC route whose error quotes a secret.
    let app = Router::new()
        .nest_service("/mcp", mcp(DemoTools::new(), session_manager(None)))
        .route(
            "/rpc",
            post(|| async {
                axum::Json(json!({
                    "jsonrpc": "2.0", "id": 4,
                    "error": {"code": -32000, "message": "refused: my password"}
                }))
            }),
        )
        .layer(TrodoLayer::new(config));
    let mut client = RawClient::new(serve(app).await);
    client.http = reqwest::Client::builder()
        .default_headers(
            [
                (
                    "authorization".parse().unwrap(),
                    "Bearer sk-very-secret".parse().unwrap(),
                ),
                (
                    "cookie".parse().unwrap(),
                    "session=cookie-secret".parse().unwrap(),
                ),
            ]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    client.initialize("capture-test").await;
    client
        .call_tool(1, "echo", json!({"text": "my password"}))
        .await;
    // Error texts from the answer are output too: a tool error's text, and
    // rmcp's JSON-RPC error, which quotes the argument it could not take.
    client
        .call_tool(2, "fail", json!({"reason": "my password"}))
        .await;
    let refused = client
        .call_tool(3, "add", json!({"a": "my password", "b": 1}))
        .await;
    assert!(refused.text().contains("my password"), "{}", refused.text());
    let rpc = client.url.replace("/mcp", "/rpc");
    let refused = read(
        client
            .http
            .post(rpc)
            .header("content-type", "application/json")
            .header("mcp-session-id", client.session.as_deref().unwrap())
            .body(request_body(4, "tools/call", json!({"name": "refuse"})))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(refused.text().contains("my password"), "{}", refused.text());
    client.delete().await;
    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    let spans = ingest.spans();
    assert_eq!(spans.len(), 4, "{spans:?}");
    let span = &spans[0].1;
    assert_eq!(
        json_of(&span["input"])["params"]["arguments"]["text"],
        "[redacted]"
    );
    assert!(span.get("output").is_none(), "output capture is off");
    for (span, error_type) in [
        (&spans[1].1, "tool_error"),
        (&spans[2].1, "tool_error"),
        (&spans[3].1, "server_error"),
    ] {
        assert_eq!(span["status"], "error", "{span}");
        assert_eq!(span["error_type"], error_type, "{span}");
        assert_eq!(
            span["error_message"], "the answer's error text is not captured",
            "{span}"
        );
    }
    let everything = serde_json::to_string(
        &ingest
            .received()
            .iter()
            .map(|r| r.body.clone())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    for secret in ["sk-very-secret", "cookie-secret", "my password"] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}

#[tokio::test]
async fn a_downstream_service_joins_the_callers_run() {
    let ingest = RecordingIngest::start().await.unwrap();
    // Service C: a third process, called by B.
    let last = Router::new()
        .route(
            "/score",
            post(|body: String| async move { format!("{} points", body.len()) }),
        )
        .layer(TrodoLayer::new(config(&ingest)));
    let last = serve(last).await;
    // Service B: another process with its own layer state; its handler
    // passes the run on, from the request's span, before its answer.
    let downstream = Router::new()
        .route(
            "/enrich",
            post(
                move |Extension(span): Extension<RequestSpan>, body: String| async move {
                    let score = reqwest::Client::new()
                        .post(format!("http://{last}/score"))
                        .headers(span.propagation_headers())
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap()
                        .text()
                        .await
                        .unwrap();
                    format!("enriched {body} ({score})")
                },
            ),
        )
        .layer(TrodoLayer::new(config(&ingest)));
    let downstream = serve(downstream).await;
    // Service A: an MCP server whose non-MCP route calls B with the propagation headers.
    let upstream = Router::new()
        .nest_service("/mcp", mcp(DemoTools::new(), session_manager(None)))
        .route(
            "/api/work",
            post(move |Extension(span): Extension<RequestSpan>| async move {
                let response = reqwest::Client::new()
                    .post(format!("http://{downstream}/enrich"))
                    .headers(span.propagation_headers())
                    .body("payload")
                    .send()
                    .await
                    .unwrap();
                response.text().await.unwrap()
            }),
        )
        .layer(TrodoLayer::new(config(&ingest)));
    let mut client = RawClient::new(serve(upstream).await);
    client.initialize("propagation-test").await;
    let base = client.url.trim_end_matches("/mcp").to_owned();
    let answer = client
        .http
        .post(format!("{base}/api/work"))
        .header("mcp-session-id", client.session.as_deref().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(answer, "enriched payload (7 points)");
    client.delete().await;
    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    ingest
        .wait_until(WAIT, |r| span_count(r) == 3)
        .await
        .unwrap();

    let run_id = ingest.starts()[0]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(
        ingest.starts().len(),
        1,
        "the downstream services opened no run of their own"
    );
    let spans = spans_of(&ingest, &run_id);
    let work = spans
        .iter()
        .find(|s| s["name"] == "http.POST /api/work")
        .unwrap();
    let enrich = spans
        .iter()
        .find(|s| s["name"] == "http.POST /enrich")
        .unwrap();
    assert_eq!(enrich["parent_span_id"], work["span_id"]);
    assert_eq!(enrich["input"], "payload");
    assert_eq!(enrich["output"], "enriched payload (7 points)");
    let score = spans
        .iter()
        .find(|s| s["name"] == "http.POST /score")
        .unwrap();
    assert_eq!(score["parent_span_id"], enrich["span_id"], "C under B");
    assert_eq!(score["output"], "7 points");
}

/// Calls `add` as a service called by a Trodo-traced caller would be: with
/// the propagation headers of a caller's run and span, which it returns.
async fn call_add_as_a_callee(client: &RawClient) -> (Uuid, Uuid) {
    let (caller_run, caller_span) = (Uuid::new_v4(), Uuid::new_v4());
    let answer = read(
        client
            .post(tool_call_body(1, "add", json!({"a": 1, "b": 2})))
            .header("x-trodo-run-id", caller_run.to_string())
            .header("x-trodo-parent-span-id", caller_span.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    (caller_run, caller_span)
}

#[tokio::test]
async fn a_sessionless_mcp_call_with_a_callers_headers_joins_the_callers_run() {
    let ingest = RecordingIngest::start().await.unwrap();
    let app = Router::new()
        .nest_service("/mcp", mcp_stateless_json(DemoTools::new()))
        .layer(TrodoLayer::new(config(&ingest)));
    let client = RawClient::new(serve(app).await);
    let (caller_run, caller_span) = call_add_as_a_callee(&client).await;
    ingest
        .wait_until(WAIT, |r| span_count(r) == 1)
        .await
        .unwrap();

    let spans = spans_of(&ingest, &caller_run.to_string());
    assert_eq!(spans.len(), 1, "{:?}", ingest.received());
    assert_eq!(spans[0]["name"], "tool.add");
    assert_eq!(spans[0]["parent_span_id"], caller_span.to_string());
    assert!(ingest.starts().is_empty(), "no run of its own");
}

#[tokio::test]
async fn an_mcp_call_with_a_callers_headers_stays_in_its_sessions_run_and_names_the_caller() {
    let ingest = RecordingIngest::start().await.unwrap();
    let mut client =
        RawClient::new(serve_demo(DemoTools::new(), TrodoLayer::new(config(&ingest))).await);
    client.initialize("called-by-an-agent").await;
    let (caller_run, caller_span) = call_add_as_a_callee(&client).await;
    client.delete().await;
    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();

    let starts = ingest.starts();
    assert_eq!(starts.len(), 1, "only the session's run");
    let run_id = starts[0]["run_id"].as_str().unwrap().to_owned();
    let spans = spans_of(&ingest, &run_id);
    assert_eq!(spans.len(), 1, "{spans:?}");
    let call = &spans[0];
    assert_eq!(call["name"], "tool.add");
    assert!(
        call.get("parent_span_id").is_none(),
        "no parent from another run: {call}"
    );
    assert_eq!(
        call["attributes"]["trodo.caller.run_id"],
        caller_run.to_string()
    );
    assert_eq!(
        call["attributes"]["trodo.caller.span_id"],
        caller_span.to_string()
    );
    assert!(spans_of(&ingest, &caller_run.to_string()).is_empty());
}

#[test]
fn a_handle_made_outside_a_runtime_delivers_once_used_in_one() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ingest = runtime.block_on(RecordingIngest::start()).unwrap();
    let trodo = Trodo::new(&config(&ingest)); // no runtime yet: nothing can be spawned
    runtime.block_on(async {
        let run_id = trodo.start_run(StartRun::new("late"));
        trodo.end_run(run_id, EndRun::ok());
        assert!(trodo.flush(WAIT).await);
    });
    assert_eq!(ingest.starts().len(), 1);
    assert_eq!(ingest.ends().len(), 1);
}

/// A served app whose route outside the MCP endpoint has a handler that
/// makes a child span it finishes at once, and hands out another that it
/// finishes later (through `escaped`).
struct PlainRoute {
    ingest: RecordingIngest,
    trodo: Trodo,
    base: String,
    escaped: tokio::sync::mpsc::UnboundedReceiver<SpanGuard>,
}

async fn serve_plain_route_with_children() -> PlainRoute {
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    let (escape, escaped) = tokio::sync::mpsc::unbounded_channel::<SpanGuard>();
    let handler = move |Extension(span): Extension<RequestSpan>| async move {
        span.child(SpanKind::Retrieval, "retrieval.on_time")
            .finish();
        escape.send(span.child(SpanKind::Llm, "llm.late")).unwrap();
        "ok"
    };
    let app = Router::new()
        .route("/mcp", post(|| async { "mcp" }))
        .route("/health", axum::routing::get(handler))
        .layer(layer);
    let base = format!("http://{}", serve(app).await);
    PlainRoute {
        ingest,
        trodo,
        base,
        escaped,
    }
}

#[tokio::test]
async fn children_of_a_request_in_no_run_are_counted_as_dropped() {
    let PlainRoute {
        ingest,
        trodo,
        base,
        mut escaped,
    } = serve_plain_route_with_children().await;
    // No session and no propagation headers: the request goes into no run.
    let answer = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "ok");
    escaped.recv().await.unwrap().finish();
    assert!(trodo.flush(WAIT).await);

    assert!(ingest.received().is_empty(), "{:?}", ingest.received());
    let counters = trodo.delivery_counters();
    assert_eq!(
        (counters.dropped_no_run, counters.dropped_shutdown),
        (2, 0),
        "the child that waited for a run and the one finished after: {counters:?}"
    );
    assert_eq!(counters.dropped(), 2);
}

#[tokio::test]
async fn children_of_a_request_after_shutdown_count_as_shutdown_drops() {
    let PlainRoute {
        ingest: _ingest,
        trodo,
        base,
        mut escaped,
    } = serve_plain_route_with_children().await;
    assert!(trodo.shutdown(WAIT).await);
    let answer = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(answer.text().await.unwrap(), "ok");
    escaped.recv().await.unwrap().finish();

    let counters = trodo.delivery_counters();
    assert_eq!(
        (counters.dropped_shutdown, counters.dropped_no_run),
        (2, 0),
        "{counters:?}"
    );
}

#[tokio::test]
async fn children_of_a_request_the_client_abandoned_before_its_run_was_known_are_counted_as_dropped()
 {
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    let child_finished = Arc::new(Notify::new());
    let handler = {
        let child_finished = Arc::clone(&child_finished);
        move |Extension(span): Extension<RequestSpan>| async move {
            span.child(SpanKind::Retrieval, "retrieval.before_the_client_left")
                .finish();
            child_finished.notify_one();
            std::future::pending::<&'static str>().await
        }
    };
    let app = Router::new()
        .route("/slow", axum::routing::get(handler))
        .layer(layer);
    let base = format!("http://{}", serve(app).await);
    let call = tokio::spawn(reqwest::get(format!("{base}/slow")));
    child_finished.notified().await;
    call.abort();

    // The server drops the exchange when it sees the connection close.
    wait_for("the waiting child counted", || {
        trodo.delivery_counters().dropped_no_run == 1
    })
    .await;
    assert!(trodo.flush(WAIT).await);
    assert!(ingest.received().is_empty(), "{:?}", ingest.received());
}

/// A redaction hook that masks one secret wherever a string holds it.
fn masking_secret(config: trodo_tower::TrodoConfig) -> trodo_tower::TrodoConfig {
    config.with_redaction(|value: &mut Value| {
        if let Value::String(text) = value {
            *text = text.replace("my password", "[redacted]");
        }
    })
}

#[tokio::test]
async fn error_texts_given_to_the_manual_api_go_through_the_redaction_hook() {
    let ingest = RecordingIngest::start().await.unwrap();
    // Output capture off: texts you give as errors are still sent (redacted).
    let trodo = Trodo::new(&masking_secret(config(&ingest)).with_output_capture(false));
    let run_id = trodo.start_run(StartRun::new("session"));
    let mut span = trodo.join_run(run_id, SpanKind::Tool, "tool.login");
    span.set_error("auth", "refused: my password is wrong");
    span.finish();
    trodo.end_run(run_id, EndRun::error("gave up after my password failed"));
    let failed: Result<(), String> = trodo
        .wrap_agent(StartRun::new("chat"), |_| async {
            Err("the agent quoted my password".to_owned())
        })
        .await;
    assert!(failed.is_err());
    assert!(trodo.flush(WAIT).await);

    let spans = ingest.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].1["error_message"], "refused: [redacted] is wrong");
    assert_eq!(
        ingest.ends()[0].1["error_summary"],
        "gave up after [redacted] failed"
    );
    let whole = ingest
        .received()
        .into_iter()
        .find(|r| r.path == "/api/sdk/runs/ingest")
        .unwrap();
    assert_eq!(
        whole.body["run"]["error_summary"],
        "the agent quoted [redacted]"
    );
    let sent: String = ingest
        .received()
        .iter()
        .map(|r| r.body.to_string())
        .collect();
    assert!(!sent.contains("my password"), "{sent}");
}

#[tokio::test]
async fn an_error_text_whose_redaction_hook_panics_is_withheld() {
    let ingest = RecordingIngest::start().await.unwrap();
    let trodo = Trodo::new(&config(&ingest).with_redaction(|_: &mut Value| panic!("hook bug")));
    let run_id = trodo.start_run(StartRun::new("session"));
    let mut span = trodo.join_run(run_id, SpanKind::Tool, "tool.login");
    span.set_error("auth", "refused: my password is wrong");
    span.finish();
    assert!(trodo.flush(WAIT).await);

    let spans = ingest.spans();
    assert_eq!(
        (&spans[0].1["error_type"], &spans[0].1["error_message"]),
        (
            &json!("auth"),
            &json!("the error text is withheld (the redaction hook panicked)")
        )
    );
    assert_eq!(trodo.delivery_counters().hook_panics, 1);
}

/// The layer's own words for a run an agent left (`cancelled`, `panicked`)
/// are no text of the application's: the redaction hook does not see them.
#[tokio::test]
async fn the_summary_of_a_wrap_agent_cut_short_is_not_given_to_the_redaction_hook() {
    let ingest = RecordingIngest::start().await.unwrap();
    let hook_calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&hook_calls);
    let trodo = Trodo::new(&config(&ingest).with_redaction(move |value: &mut Value| {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *value = Value::from("[redacted]");
    }));
    let agent = trodo.wrap_agent(StartRun::new("chat"), |_| {
        std::future::pending::<Result<(), String>>()
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(1), agent)
            .await
            .is_err()
    );
    assert!(trodo.flush(WAIT).await);

    let received = ingest.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].body["run"]["error_summary"], "cancelled");
    assert_eq!(
        hook_calls.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing of the application's was captured"
    );
}

/// A request in a session whose run its own handler ended: its span comes
/// after the run's `end`, so it is not sent, and it is counted, whether it
/// succeeded or failed.
#[tokio::test]
async fn the_span_of_a_request_whose_run_ended_while_it_was_served_is_counted_as_dropped() {
    use axum::http::StatusCode;
    for status in [StatusCode::OK, StatusCode::INTERNAL_SERVER_ERROR] {
        let ingest = RecordingIngest::start().await.unwrap();
        let layer = TrodoLayer::new(config(&ingest));
        let trodo = layer.trodo();
        let ending = trodo.clone();
        let end_own_run = move |Extension(span): Extension<RequestSpan>| async move {
            // A session this process knows: the run is known in the handler.
            ending.end_run(span.run_id().unwrap(), EndRun::ok());
            (status, "ended")
        };
        let app = Router::new()
            .nest_service("/mcp", mcp(DemoTools::new(), session_manager(None)))
            .route("/finish", axum::routing::get(end_own_run))
            .layer(layer);
        let addr = serve(app).await;
        let mut client = RawClient::new(addr);
        client.initialize("ending-client").await;
        let answer = client
            .http
            .get(format!("http://{addr}/finish"))
            .header("mcp-session-id", client.session.as_deref().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status);
        assert!(trodo.flush(WAIT).await);

        assert_eq!(ingest.ends().len(), 1);
        assert_eq!(ingest.ends()[0].1["span_count"], 0);
        assert!(ingest.spans().is_empty(), "{:?}", ingest.spans());
        let counters = trodo.delivery_counters();
        assert_eq!(
            (counters.dropped_after_run_end, counters.dropped_no_run),
            (1, 0),
            "{status}: {counters:?}"
        );
    }
}

/// A request in its session's run from the start that is no span of its
/// own (here a notification): a child it records after its answer goes
/// into the run without a parent (a span never sent can be no one's), and
/// one after the run's end counts as dropped after the end, not as a span
/// of no run.
#[tokio::test]
async fn children_of_a_request_that_is_no_span_go_to_its_run_until_the_run_ends() {
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    let (kept, mut keeping) = tokio::sync::mpsc::unbounded_channel::<RequestSpan>();
    // Reads the body, as an MCP server does: the layer reads it as it goes.
    let keep_span = move |Extension(span): Extension<RequestSpan>, _body: String| async move {
        kept.send(span).unwrap();
        axum::http::StatusCode::ACCEPTED
    };
    let app = Router::new()
        .nest_service("/mcp", mcp(DemoTools::new(), session_manager(None)))
        .route("/note", post(keep_span))
        .layer(layer);
    let addr = serve(app).await;
    let mut client = RawClient::new(addr);
    client.initialize("noting-client").await;
    let answer = client
        .http
        .post(format!("http://{addr}/note"))
        .header("mcp-session-id", client.session.as_deref().unwrap())
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let span = keeping.recv().await.unwrap();
    let run_id = span.run_id().expect("a session known here: its run");
    // The exchange is read off the request path: once it is, the layer
    // knows the request is no span.
    assert!(trodo.flush(WAIT).await);
    span.child(SpanKind::Tool, "tool.after_answer").finish();
    trodo.end_run(run_id, EndRun::ok());
    span.child(SpanKind::Tool, "tool.after_end").finish();
    assert!(trodo.flush(WAIT).await);

    let spans = spans_of(&ingest, &run_id.to_string());
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0]["name"], "tool.after_answer");
    assert!(spans[0].get("parent_span_id").is_none(), "{}", spans[0]);
    assert_eq!(ingest.ends()[0].1["span_count"], 1);
    let counters = trodo.delivery_counters();
    assert_eq!(
        (counters.dropped_after_run_end, counters.dropped_no_run),
        (1, 0),
        "{counters:?}"
    );
}

/// A DELETE of a session is no span of its own, which the layer knows
/// from its head: a child its handler finishes before answering goes into
/// the run without a parent, not under a span that is never sent.
#[tokio::test]
async fn a_child_of_a_session_delete_goes_into_the_run_without_a_parent() {
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    let note_delete = |request: axum::extract::Request, next: axum::middleware::Next| async move {
        if request.method() == axum::http::Method::DELETE {
            let span = request.extensions().get::<RequestSpan>().unwrap();
            assert_eq!(span.propagation_headers().len(), 0);
            span.child(SpanKind::Tool, "tool.on_delete").finish();
        }
        next.run(request).await
    };
    let app = Router::new()
        .nest_service("/mcp", mcp(DemoTools::new(), session_manager(None)))
        .layer(axum::middleware::from_fn(note_delete))
        .layer(layer);
    let addr = serve(app).await;
    let mut client = RawClient::new(addr);
    client.initialize("deleting-client").await;
    client.call_tool(2, "add", json!({"a": 1, "b": 2})).await;
    client.delete().await;
    assert!(trodo.flush(WAIT).await);

    let (run_id, end) = &ingest.ends()[0];
    let spans = spans_of(&ingest, run_id);
    // The call's exchange is read off the request path: it may come second.
    let mut names: Vec<_> = spans.iter().map(|span| span["name"].clone()).collect();
    names.sort_by_key(ToString::to_string);
    assert_eq!(names, ["tool.add", "tool.on_delete"], "{spans:?}");
    let on_delete = spans.iter().find(|span| span["name"] == "tool.on_delete");
    let on_delete = on_delete.unwrap();
    assert!(on_delete.get("parent_span_id").is_none(), "{on_delete}");
    assert_eq!(end["span_count"], 2);
}

/// A notification is no span of its own, which the layer knows once it
/// has its body: a child its handler finishes after reading the body
/// whole, before the answer, goes into the run without a parent; a
/// call's child in the same place names the call's span.
#[tokio::test]
async fn a_child_of_a_notification_read_whole_goes_into_the_run_without_a_parent() {
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    let note_post = |request: axum::extract::Request, next: axum::middleware::Next| async move {
        if request.method() != axum::http::Method::POST {
            return next.run(request).await;
        }
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let message: Value = serde_json::from_slice(&body).unwrap();
        let span = parts.extensions.get::<RequestSpan>().unwrap();
        let name = format!("on.{}", message["method"].as_str().unwrap());
        span.child(SpanKind::Tool, name).finish();
        let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(body));
        next.run(request).await
    };
    let app = Router::new()
        .nest_service("/mcp", mcp(DemoTools::new(), session_manager(None)))
        .layer(axum::middleware::from_fn(note_post))
        .layer(layer);
    let mut client = RawClient::new(serve(app).await);
    client.initialize("notifying-client").await;
    let progress = json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"});
    assert_eq!(client.send(progress.to_string()).await.status, 202);
    client.call_tool(2, "add", json!({"a": 1, "b": 2})).await;
    client.delete().await;
    assert!(trodo.flush(WAIT).await);

    let (run_id, end) = &ingest.ends()[0];
    let spans = spans_of(&ingest, run_id);
    let span = |name: &str| {
        let found = spans.iter().find(|span| span["name"] == name);
        found
            .unwrap_or_else(|| panic!("no {name} in {spans:?}"))
            .clone()
    };
    for notification in [
        "on.notifications/initialized",
        "on.notifications/roots/list_changed",
    ] {
        let child = span(notification);
        assert!(child.get("parent_span_id").is_none(), "{child}");
    }
    assert_eq!(
        span("on.tools/call")["parent_span_id"],
        span("tool.add")["span_id"]
    );
    assert!(span("on.initialize").get("parent_span_id").is_none());
    assert_eq!(spans.len(), 5, "{spans:?}");
    assert_eq!(end["span_count"], 5);
}

/// A request whose handler ended its run, then hung until the client went
/// away: its span is counted as dropped after the run's end, not lost
/// uncounted, nor put in the newer run the session's next call opened.
#[tokio::test]
async fn a_cancelled_request_whose_run_ended_while_it_was_served_is_counted_as_dropped() {
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    let (ending, ended) = (trodo.clone(), Arc::new(Notify::new()));
    let told = ended.clone();
    let end_own_run_and_hang = move |Extension(span): Extension<RequestSpan>| async move {
        ending.end_run(span.run_id().unwrap(), EndRun::ok());
        told.notify_one();
        std::future::pending::<()>().await
    };
    let app = Router::new()
        .nest_service("/mcp", mcp(DemoTools::new(), session_manager(None)))
        .route("/hang", axum::routing::get(end_own_run_and_hang))
        .layer(layer);
    let addr = serve(app).await;
    let mut client = RawClient::new(addr);
    client.initialize("hanging-client").await;
    let hanging = client
        .http
        .get(format!("http://{addr}/hang"))
        .header("mcp-session-id", client.session.as_deref().unwrap())
        .send();
    let gone = tokio::spawn(hanging);
    ended.notified().await;
    // The session's next call opens a newer run.
    client.call_tool(5, "add", json!({"a": 1, "b": 1})).await;
    gone.abort();
    let _ = gone.await;
    wait_for("the hung request's span is counted", || {
        trodo.delivery_counters().dropped_after_run_end == 1
    })
    .await;
    assert!(trodo.flush(WAIT).await);

    let starts = ingest.starts();
    assert_eq!(starts.len(), 2, "the first run and the newer one");
    let newer = starts[1]["run_id"].as_str().unwrap();
    let ids: Vec<Value> = spans_of(&ingest, newer)
        .iter()
        .map(|s| s["attributes"]["jsonrpc.request.id"].clone())
        .collect();
    assert_eq!(ids, [json!("5")]);
    assert_eq!(ingest.spans().len(), 1);
    assert_eq!(trodo.delivery_counters().dropped_no_run, 0);
}
