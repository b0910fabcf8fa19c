//! How runs end (idle, 404, shutdown) and open (resumed), and JSON responses.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use common::*;
use rmcp::transport::streamable_http_server::session::SessionManager;
use serde_json::json;
use trodo_tower::TrodoLayer;
use trodo_tower::store::{MemoryStore, SessionStore};

#[tokio::test]
async fn idle_session_ends_at_its_last_activity() {
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(
        config(&ingest)
            .with_idle_timeout(Duration::from_millis(300))
            .unwrap(),
    );
    let mut client = RawClient::new(serve_demo(DemoTools::new(), layer.clone()).await);
    client.initialize("idle-test").await;
    let answer = client.call_tool(1, "add", json!({"a": 1, "b": 2})).await;
    assert_eq!(answer.response()["result"]["content"][0]["text"], "3");

    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    let spans = ingest.spans();
    assert_eq!(spans.len(), 1);
    let (run_id, end) = &ingest.ends()[0];
    assert_eq!(run_id, &spans[0].0);
    assert_eq!(end["metadata"]["closed_via"], "idle_timeout");
    assert_eq!(
        end["ended_at"], spans[0].1["ended_at"],
        "ended at the last activity, not at the sweep"
    );
    assert_eq!(end["span_count"], 1);
    assert_eq!(layer.trodo().open_runs(), 0);
}

/// The message that meets the server's 404 ends the run, be it a request
/// or a notification (which has no span of its own).
#[tokio::test]
async fn server_404_for_the_session_ends_the_run_as_expired() {
    for message in messages_in_a_forgotten_session(2) {
        let ingest = RecordingIngest::start().await.unwrap();
        let manager = session_manager(Some(Duration::from_millis(200)));
        let app = Router::new()
            .nest_service("/mcp", mcp(DemoTools::new(), manager.clone()))
            .layer(TrodoLayer::new(config(&ingest)));
        let mut client = RawClient::new(serve(app).await);
        client.initialize("expiry-test").await;
        client.call_tool(1, "echo", json!({"text": "x"})).await;

        // rmcp drops the session after its keep-alive; wait for that condition.
        let session = client.session.clone().unwrap().into();
        tokio::time::timeout(WAIT, async {
            while manager.has_session(&session).await.unwrap() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("rmcp expires the session");

        let answer = client.send(message.to_string()).await;
        assert_eq!(answer.status, 404, "{message}");
        ingest
            .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
            .await
            .unwrap();
        let ends = ingest.ends();
        assert_eq!(ends.len(), 1, "{message}");
        assert_eq!(ends[0].1["metadata"]["closed_via"], "session_expired");
        assert_eq!(ends[0].1["span_count"], 1, "the 404 message is not a span");
        assert_eq!(ingest.spans().len(), 1);
    }
}

/// What a client may send in a session the server forgot: a call (with
/// JSON-RPC id `id`), or a notification.
fn messages_in_a_forgotten_session(id: i64) -> [serde_json::Value; 2] {
    let call = tool_call_body(id, "echo", json!({"text": "late"}));
    let cancelled =
        json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}});
    [serde_json::from_str(&call).unwrap(), cancelled]
}

#[tokio::test]
async fn unknown_session_is_resumed_on_another_worker() {
    let ingest = RecordingIngest::start().await.unwrap();
    // Two workers with their own layer state in front of one rmcp session store.
    let service = mcp(DemoTools::new(), session_manager(None));
    let first = TrodoLayer::new(config(&ingest));
    let second = TrodoLayer::new(config(&ingest));
    let one = serve(
        Router::new()
            .nest_service("/mcp", service.clone())
            .layer(first.clone()),
    )
    .await;
    let two = serve(
        Router::new()
            .nest_service("/mcp", service)
            .layer(second.clone()),
    )
    .await;

    let mut client = RawClient::new(one);
    client.initialize("resume-test").await;
    let session = client.session.clone().unwrap();
    let mut elsewhere = RawClient::new(two);
    elsewhere.session = Some(session.clone());
    let answer = elsewhere
        .call_tool(5, "add", json!({"a": 20, "b": 22}))
        .await;
    assert_eq!(answer.response()["result"]["content"][0]["text"], "42");
    assert_eq!(elsewhere.delete().await.status, 202);

    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    let starts = ingest.starts();
    assert_eq!(starts.len(), 2, "one run per worker that saw the session");
    // The two workers deliver side by side: find each run by what it is.
    let (resumed, first_run) = match starts[0]["metadata"].get("resumed") {
        Some(_) => (&starts[0], &starts[1]),
        None => (&starts[1], &starts[0]),
    };
    assert_eq!(resumed["conversation_id"], session.as_str());
    assert_eq!(resumed["metadata"]["resumed"], true);
    assert_eq!(resumed["metadata"]["protocol_version"], "2025-11-25");
    assert!(resumed.get("input").is_none());
    assert!(first_run["metadata"].get("resumed").is_none());
    let resumed_id = resumed["run_id"].as_str().unwrap();
    let spans = spans_of(&ingest, resumed_id);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["name"], "tool.add");
    let ends = ingest.ends();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].0, resumed_id);
    assert_eq!(ends[0].1["metadata"]["closed_via"], "session_deleted");
    assert_eq!(ends[0].1["span_count"], 1);

    // The first worker still holds its run; shutdown ends it.
    assert_eq!(first.trodo().open_runs(), 1);
    assert!(first.trodo().shutdown(WAIT).await);
    let ends = ingest.ends();
    assert_eq!(ends.len(), 2);
    assert_eq!(ends[1].0, first_run["run_id"].as_str().unwrap());
    assert_eq!(ends[1].1["metadata"]["closed_via"], "server_shutdown");
    assert!(
        first.trodo().shutdown(WAIT).await,
        "a second shutdown is harmless"
    );
    assert_eq!(ingest.ends().len(), 2);
}

#[tokio::test]
async fn json_responses_are_captured_whole() {
    let ingest = RecordingIngest::start().await.unwrap();
    let app = Router::new()
        .nest_service("/mcp", mcp_stateless_json(DemoTools::new()))
        .layer(TrodoLayer::new(config(&ingest)));
    let mut client = RawClient::new(serve(app).await);
    client.session = Some("sticky-session-1".to_owned());
    let ok = client.call_tool(1, "echo", json!({"text": "json"})).await;
    assert_eq!(ok.headers["content-type"], "application/json");
    let failed = client.call_tool(2, "fail", json!({"reason": "nope"})).await;
    assert_eq!(failed.headers["content-type"], "application/json");

    ingest
        .wait_until(WAIT, |r| span_count(r) == 2)
        .await
        .unwrap();
    let spans = ingest.spans();
    assert_eq!(spans[0].1["output"].as_str().unwrap(), ok.text());
    assert_eq!(spans[0].1["status"], "ok");
    assert_eq!(spans[1].1["output"].as_str().unwrap(), failed.text());
    assert_eq!(spans[1].1["status"], "error");
    assert_eq!(spans[1].1["error_type"], "tool_error");
    assert_eq!(spans[1].1["error_message"], "nope");
}

/// The delivery thread reads finished exchanges a little later; a DELETE
/// must still end the run with every call answered before it, and its
/// answer must not wait for that. Here the delivery thread is held in the
/// redaction hook, in the middle of its turn, while the calls are answered
/// and the DELETE is: the run's end waits behind the calls in the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_counts_the_calls_before_it_while_delivery_is_held() {
    use std::sync::{Mutex, mpsc};
    let ingest = RecordingIngest::start().await.unwrap();
    let (release, released) = mpsc::channel::<()>();
    let (held, holding) = mpsc::channel::<()>();
    let gate = Mutex::new(Some((released, held)));
    // Should the DELETE wait for the delivery thread, the hook lets go
    // after a while rather than never, and says so.
    let waited_out = Arc::new(AtomicBool::new(false));
    let waiting = Arc::clone(&waited_out);
    let config = config(&ingest).with_redaction(move |_: &mut serde_json::Value| {
        if std::thread::current().name() != Some("trodo-export") {
            return;
        }
        let Some((released, held)) = gate.lock().unwrap().take() else {
            return;
        };
        held.send(()).unwrap();
        if released.recv_timeout(WAIT).is_err() {
            waiting.store(true, Ordering::SeqCst);
        }
    });
    let manager = session_manager(None);
    let app = Router::new()
        .nest_service("/mcp", mcp(DemoTools::new(), manager.clone()))
        .layer(TrodoLayer::new(config));
    let mut client = RawClient::new(serve(app).await);
    client.initialize("held-delivery").await;
    let answer = client.call_tool(1, "add", json!({"a": 1, "b": 1})).await;
    assert_eq!(answer.status, 200);
    // The delivery thread reads the first call, and stays there.
    tokio::task::spawn_blocking(move || holding.recv().unwrap())
        .await
        .unwrap();
    for id in 2..=3 {
        let answer = client.call_tool(id, "add", json!({"a": id, "b": 1})).await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(client.delete().await.status, 202);
    assert!(
        !waited_out.load(Ordering::SeqCst),
        "the DELETE is answered while delivery is held"
    );
    release.send(()).unwrap();
    let session = client.session.clone().unwrap().into();
    assert!(
        !manager.has_session(&session).await.unwrap(),
        "rmcp ended it"
    );

    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    let end = &ingest.ends()[0].1;
    assert_eq!(end["metadata"]["closed_via"], "session_deleted");
    assert_eq!(
        end["span_count"], 3,
        "every call answered before the DELETE"
    );
    assert_eq!(end["tool_count"], 3);
    assert_eq!(ingest.starts().len(), 1);
}

/// A run ends no sooner than its last span. A handler's child span that
/// ends after the DELETE was answered, while the run's close still waits
/// for the backlog's reader, goes into the run: the run then ends when
/// that span does, not at the DELETE's answer before it. A call answered
/// later still, whose span is read after the close, moves the end no
/// further.
#[tokio::test]
async fn a_run_closed_by_a_delete_ends_no_sooner_than_its_last_span() {
    use axum::Extension;
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::post;
    use trodo_tower::{RequestSpan, SpanGuard, SpanKind};

    let ingest = RecordingIngest::start().await.unwrap();
    let (layer, mut delivery) = HeldDelivery::layer(&ingest);
    let trodo = layer.trodo();
    let (escape, mut escaped) = tokio::sync::mpsc::unbounded_channel::<SpanGuard>();
    let answer = move |Extension(span): Extension<RequestSpan>, body: axum::body::Bytes| {
        let escape = escape.clone();
        async move {
            let message: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let result = match message["method"].as_str() {
                Some("initialize") => {
                    json!({"protocolVersion": "2025-11-25", "capabilities": {},
                           "serverInfo": {"name": "json-server", "version": "1"}})
                }
                Some("tools/call") => {
                    if message["id"] == 1 {
                        escape.send(span.child(SpanKind::Llm, "llm.late")).unwrap();
                    }
                    json!({"content": [], "isError": false})
                }
                _ => return StatusCode::ACCEPTED.into_response(),
            };
            let body = json!({"jsonrpc": "2.0", "id": message["id"], "result": result});
            let json = [(header::CONTENT_TYPE, "application/json")];
            ([("mcp-session-id", "s-late")], json, body.to_string()).into_response()
        }
    };
    let app = Router::new()
        .route("/mcp", post(answer).delete(|| async { StatusCode::OK }))
        .layer(layer);
    let mut client = RawClient::new(serve(app).await);
    assert_eq!(client.initialize("late-child").await.status, 200);
    delivery.until_held().await;
    assert_eq!(client.call_tool(1, "work", json!({})).await.status, 200);
    let late = escaped.recv().await.unwrap();
    assert_eq!(client.delete().await.status, 200);
    // The DELETE's close waits for the backlog's reader, which is held:
    // the run is still open, so the late span goes into it.
    late.finish();
    // A call the server still answers: the layer reads it after the close.
    assert_eq!(client.call_tool(2, "work", json!({})).await.status, 200);
    delivery.release();

    wait_for_ends(&ingest, 1).await;
    let (run_id, end) = ingest.ends().pop().unwrap();
    assert_eq!(end["metadata"]["closed_via"], "session_deleted");
    assert_eq!(end["span_count"], 2, "{end}");
    let spans = spans_of(&ingest, &run_id);
    let ended = |name: &str| {
        let span = spans.iter().find(|s| s["name"] == name).unwrap();
        span["ended_at"].as_str().unwrap().to_owned()
    };
    let (call, late) = (ended("tool.work"), ended("llm.late"));
    assert!(
        call < late,
        "the late span ended after the call: {call}, {late}"
    );
    assert_eq!(
        end["ended_at"].as_str().unwrap(),
        late,
        "the run ended with its last span, after the DELETE's answer, \
         before the call that came after it"
    );
    trodo.flush(WAIT).await;
    let counters = trodo.delivery_counters();
    assert_eq!(counters.dropped_after_run_end, 1, "the later call");
    assert_eq!(counters.dropped(), 1);
}

/// A DELETE ends the run with every call answered before it, though the
/// backlog has read none of them: its reader (the delivery thread) is held
/// from before the calls until the DELETE was answered, and the run's end
/// waits behind them.
#[tokio::test]
async fn a_delete_counts_the_calls_the_backlog_has_not_read() {
    let ingest = RecordingIngest::start().await.unwrap();
    let (layer, mut delivery) = HeldDelivery::layer(&ingest);
    let mut client = RawClient::new(serve_demo(DemoTools::new(), layer).await);
    client.initialize("unread-delete").await;
    delivery.until_held().await;
    for id in 1..=3 {
        let answer = client.call_tool(id, "add", json!({"a": id, "b": 1})).await;
        assert_eq!(
            answer.response()["result"]["content"][0]["text"],
            (id + 1).to_string()
        );
    }
    assert_eq!(client.delete().await.status, 202);
    delivery.release();

    wait_for_ends(&ingest, 1).await;
    let (run_id, end) = ingest.ends().pop().unwrap();
    assert_eq!(end["metadata"]["closed_via"], "session_deleted");
    assert_eq!(
        totals(&end),
        (3, 3, 0),
        "every call answered before the DELETE: {end}"
    );
    let spans = spans_of(&ingest, &run_id);
    let ids: Vec<_> = spans
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                &s["attributes"]["jsonrpc.request.id"],
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("tool.add", &json!("1")),
            ("tool.add", &json!("2")),
            ("tool.add", &json!("3"))
        ]
    );
}

/// The message that meets the server's 404 ends the run with every call
/// answered before it, though the backlog has read none of them (its
/// reader is held, as for a DELETE above), be the message a request or a
/// notification.
#[tokio::test]
async fn a_404_counts_the_calls_the_backlog_has_not_read() {
    for message in messages_in_a_forgotten_session(4) {
        let ingest = RecordingIngest::start().await.unwrap();
        let (layer, mut delivery) = HeldDelivery::layer(&ingest);
        let manager = session_manager(None);
        let app = Router::new()
            .nest_service("/mcp", mcp(DemoTools::new(), manager.clone()))
            .layer(layer);
        let mut client = RawClient::new(serve(app).await);
        client.initialize("unread-expiry").await;
        delivery.until_held().await;
        for id in 1..=3 {
            let answer = client
                .call_tool(id, "echo", json!({"text": format!("call {id}")}))
                .await;
            assert_eq!(answer.status, 200, "{}", answer.text());
        }
        // The server forgets the session, as when it expires.
        let session = client.session.clone().unwrap().into();
        manager.close_session(&session).await.unwrap();
        assert_eq!(
            client.send(message.to_string()).await.status,
            404,
            "{message}"
        );
        delivery.release();

        wait_for_ends(&ingest, 1).await;
        let (run_id, end) = ingest.ends().pop().unwrap();
        assert_eq!(
            end["metadata"]["closed_via"], "session_expired",
            "{message}"
        );
        assert_eq!(
            totals(&end),
            (3, 3, 0),
            "every call answered before the 404, which is no span: {message} {end}"
        );
        let names: Vec<_> = spans_of(&ingest, &run_id)
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["tool.echo"; 3], "{message}");
    }
}

/// A server other than rmcp may take an `initialize` whose identities have
/// odd shapes (a number for a version); the layer reads what it can and
/// still opens the session's run on it, rather than resuming the run on the
/// next request with nothing known of the client.
#[tokio::test]
async fn an_initialize_with_odd_identities_still_opens_the_run() {
    use axum::body::Body;
    use axum::http::Response;
    use axum::routing::post;

    let ingest = RecordingIngest::start().await.unwrap();
    let app = Router::new()
        .route(
            "/mcp",
            post(|body: String| async move {
                let request: serde_json::Value = serde_json::from_str(&body).unwrap();
                let answer = match request["method"].as_str().unwrap() {
                    "initialize" => json!({"jsonrpc": "2.0", "id": 0, "result": {
                        "protocolVersion": "2025-11-25", "capabilities": {},
                        "serverInfo": {"name": "odd-server", "version": 2}}}),
                    _ => json!({"jsonrpc": "2.0", "id": request["id"], "result": null}),
                };
                Response::builder()
                    .header("content-type", "application/json")
                    .header("mcp-session-id", "odd-session")
                    .body(Body::from(answer.to_string()))
                    .unwrap()
            }),
        )
        .layer(TrodoLayer::new(config(&ingest)));
    let mut client = RawClient::new(serve(app).await);
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "odd-client", "version": 3}}});
    assert_eq!(client.send(initialize.to_string()).await.status, 200);
    client.session = Some("odd-session".to_owned());
    let ping = client.request(1, "ping", json!({})).await;
    assert_eq!(ping.response()["result"], serde_json::Value::Null);

    ingest
        .wait_until(WAIT, |r| span_count(r) == 1)
        .await
        .unwrap();
    let starts = ingest.starts();
    assert_eq!(starts.len(), 1);
    let metadata = &starts[0]["metadata"];
    assert!(metadata.get("resumed").is_none(), "{metadata}");
    assert_eq!(metadata["client_name"], "odd-client");
    assert_eq!(metadata["client_version"], "3");
    assert_eq!(metadata["server_name"], "odd-server");
    assert_eq!(metadata["server_version"], "2");
    assert_eq!(metadata["protocol_version"], "2025-11-25");
    let spans = spans_of(&ingest, starts[0]["run_id"].as_str().unwrap());
    let names: Vec<_> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["mcp.ping"]);
    assert_eq!(spans[0]["status"], "ok", "a null result is an answer");
}

#[tokio::test]
async fn a_call_longer_than_the_idle_timeout_keeps_its_run_open() {
    a_call_longer_than_the_idle_timeout(None).await;
}

/// With a session store, the store's sweep (any worker's, here this one's)
/// sees only the store's activity: the worker answering keeps it fresh.
#[tokio::test]
async fn with_a_store_a_call_longer_than_the_idle_timeout_keeps_its_run_open() {
    a_call_longer_than_the_idle_timeout(Some(Arc::new(MemoryStore::new()))).await;
}

async fn a_call_longer_than_the_idle_timeout(store: Option<Arc<dyn SessionStore>>) {
    let ingest = RecordingIngest::start().await.unwrap();
    let tools = DemoTools::new();
    let mut config = config(&ingest)
        .with_idle_timeout(Duration::from_millis(300))
        .unwrap();
    if let Some(store) = store {
        config = config.with_session_store(store);
    }
    let layer = TrodoLayer::new(config);
    let trodo = layer.trodo();
    let addr = serve_demo(tools.clone(), layer).await;
    let mut busy = RawClient::new(addr);
    busy.initialize("busy-session").await;
    let response = busy.post(waiting_call_body(7)).send().await.unwrap();
    let mut stream = std::pin::pin!(response.bytes_stream());
    let mut seen = String::new();
    // By the sweep that ends the idle session's run, the busy session's
    // run was idle longer.
    let (busy_run, idle_run) =
        an_idle_session_beside_a_busy_call(&ingest, addr, &mut stream, &mut seen).await;
    assert_eq!(
        ingest.ends()[0].0,
        idle_run,
        "the idle session's run ends first"
    );
    assert_eq!(
        trodo.open_runs(),
        1,
        "the run of the call under way stays open"
    );

    let busy_end =
        end_of_the_released_call(&ingest, &tools, &busy_run, &mut stream, &mut seen).await;
    assert_eq!(busy_end["span_count"], 1, "the long call's span counts");
    let spans = spans_of(&ingest, &busy_run);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["name"], "tool.wait_for_release");
    assert_eq!(ingest.starts().len(), 2, "no run was resumed");
}

#[tokio::test]
async fn after_shutdown_requests_are_served_unrecorded_and_open_no_run() {
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    let addr = serve_demo(DemoTools::new(), layer).await;
    RawClient::new(addr).initialize("before-shutdown").await;
    assert!(trodo.shutdown(WAIT).await);
    let sent = ingest.received().len();

    // The server goes on serving (graceful shutdown drains connections).
    let mut late = RawClient::new(addr);
    late.initialize("after-shutdown").await;
    let answer = late.call_tool(1, "add", json!({"a": 1, "b": 2})).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.response()["result"]["content"][0]["text"], "3");
    assert_eq!(late.delete().await.status, 202);

    assert_eq!(trodo.open_runs(), 0, "no run that no sweep would end");
    assert_eq!(ingest.received().len(), sent, "nothing more was sent");
    assert_eq!(trodo.delivery_counters().dropped_shutdown, 0, "nor made");
}

/// A layer built on a runtime that is gone by the time it serves (a setup
/// runtime, or a config shared by tests' runtimes) still ends idle runs:
/// its idle sweep starts again on the runtime that serves.
#[test]
fn a_layer_built_on_a_runtime_since_dropped_still_ends_idle_runs() {
    let serving = tokio::runtime::Runtime::new().unwrap();
    let ingest = serving.block_on(RecordingIngest::start()).unwrap();
    let config = config(&ingest)
        .with_idle_timeout(Duration::from_millis(300))
        .unwrap();
    let setup = tokio::runtime::Runtime::new().unwrap();
    let layer = setup.block_on(async { TrodoLayer::new(config) });
    drop(setup);
    serving.block_on(async {
        let mut client = RawClient::new(serve_demo(DemoTools::new(), layer.clone()).await);
        client.initialize("built-elsewhere").await;
        client.call_tool(1, "add", json!({"a": 1, "b": 2})).await;
        wait_for_ends(&ingest, 1).await;
        let (_, end) = &ingest.ends()[0];
        assert_eq!(end["metadata"]["closed_via"], "idle_timeout");
        assert_eq!(end["span_count"], 1);
        assert_eq!(layer.trodo().open_runs(), 0);
    });
}
