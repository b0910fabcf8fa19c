//! Several workers (layers with state of their own) sharing a session
//! store, in front of one rmcp service: the scenarios of `tests/store.rs`
//! (memory store) and `tests/redis.rs` (Redis).
#![allow(unreachable_pub, dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use trodo_tower::store::SessionStore;
use trodo_tower::{Trodo, TrodoLayer};

use crate::common::*;

pub mod stores;

/// Where workers get their stores: every store from one backend shares
/// sessions with the others.
pub trait Backend {
    /// A store for one more worker.
    fn store(&self) -> Arc<dyn SessionStore>;
}

/// A worker sending to `ingest`, sharing sessions through `backend`.
pub fn worker(ingest: &RecordingIngest, backend: &dyn Backend, idle: Duration) -> TrodoLayer {
    TrodoLayer::new(
        config(ingest)
            .with_session_store(backend.store())
            .with_idle_timeout(idle)
            .unwrap(),
    )
}

/// Serves the rmcp service behind `layer` on a loopback port.
pub async fn serve_worker(service: &StreamableService, layer: &TrodoLayer) -> std::net::SocketAddr {
    serve(
        Router::new()
            .nest_service("/mcp", service.clone())
            .layer(layer.clone()),
    )
    .await
}

pub type StreamableService = rmcp::transport::streamable_http_server::StreamableHttpService<
    DemoTools,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
>;

/// The tool result text of an answer.
pub fn text(answer: &Answer) -> Value {
    answer.response()["result"]["content"][0]["text"].clone()
}

/// A session initialized on one worker, its requests alternating between
/// the workers, deleted on the other: one run, every span in it, one end
/// with the totals of all of them.
pub async fn alternating_workers_share_one_run(backend: &dyn Backend) {
    let ingest = RecordingIngest::start().await.unwrap();
    let service = mcp(DemoTools::new(), session_manager(None));
    let idle = Duration::from_secs(60);
    let (one, two) = (
        worker(&ingest, backend, idle),
        worker(&ingest, backend, idle),
    );
    let mut on_one = RawClient::new(serve_worker(&service, &one).await);
    let mut on_two = RawClient::new(serve_worker(&service, &two).await);
    on_one.initialize("alternating").await;
    let session = on_one.session.clone().unwrap();
    on_two.session = Some(session.clone());

    assert_eq!(
        text(&on_two.call_tool(1, "add", json!({"a": 1, "b": 2})).await),
        "3"
    );
    on_one
        .call_tool(2, "ask_llm", json!({"question": "why"}))
        .await;
    on_two.call_tool(3, "fail", json!({"reason": "nope"})).await;
    on_one.call_tool(4, "echo", json!({"text": "x"})).await;
    on_two
        .call_tool(5, "ask_llm", json!({"question": "how"}))
        .await;
    // What each worker counted reaches the store before the other's DELETE.
    assert!(one.trodo().flush(WAIT).await && two.trodo().flush(WAIT).await);
    assert_eq!(on_two.delete().await.status, 202);

    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    assert!(one.trodo().flush(WAIT).await && two.trodo().flush(WAIT).await);
    let starts = ingest.starts();
    assert_eq!(starts.len(), 1, "one run: {starts:?}");
    let run_id = starts[0]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(starts[0]["conversation_id"], session.as_str());
    assert!(starts[0]["metadata"].get("resumed").is_none());
    let spans = ingest.spans();
    assert_eq!(spans.len(), 7, "five requests and two LLM calls");
    assert!(
        spans.iter().all(|(id, _)| *id == run_id),
        "every span in the run"
    );
    let ends = ingest.ends();
    assert_eq!(ends.len(), 1);
    let (ended, end) = &ends[0];
    assert_eq!(*ended, run_id);
    assert_eq!(end["metadata"]["closed_via"], "session_deleted");
    assert_eq!(
        (
            &end["span_count"],
            &end["tool_count"],
            &end["error_count"],
            &end["total_tokens_in"],
            &end["total_tokens_out"],
            &end["total_cost"],
        ),
        (
            &json!(7),
            &json!(5),
            &json!(1),
            &json!(6),
            &json!(18),
            &json!(0.00084)
        ),
        "the totals of both workers' spans"
    );
    assert_eq!(two.trodo().store_counters().unwrap().ended, 1);

    // Shutting down leaves nothing to end twice.
    assert!(one.trodo().shutdown(WAIT).await && two.trodo().shutdown(WAIT).await);
    assert_eq!(ingest.ends().len(), 1);
}

/// One request to `app` in-process: status, session header, body.
async fn call(app: &Router, session: Option<&str>, body: String) -> (u16, Option<String>, String) {
    let mut request = http::Request::post("/mcp")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25");
    }
    let response = app
        .clone()
        .oneshot(request.body(axum::body::Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let session = response
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, session, String::from_utf8_lossy(&body).into_owned())
}

/// A worker that opened runs and died (no shutdown, nothing of it left
/// running): another worker's idle sweep ends its runs, at their last
/// activity, with the totals of their spans.
pub async fn a_dead_workers_runs_end_on_another(backend: &dyn Backend) {
    let idle = Duration::from_millis(300);
    let service = mcp(DemoTools::new(), session_manager(None));
    let victim_ingest = RecordingIngest::start().await.unwrap();
    let ingest = RecordingIngest::start().await.unwrap();
    {
        // Driven in-process, so that no server task keeps its state alive.
        let victim = worker(&victim_ingest, backend, idle);
        let app = Router::new()
            .nest_service("/mcp", service.clone())
            .layer(victim.clone());
        for calls in 1..=3 {
            let (status, session, _) = call(&app, None, initialize_body("doomed")).await;
            assert_eq!(status, 200);
            let session = session.unwrap();
            for id in 0..calls {
                let body = json!({"jsonrpc": "2.0", "id": id + 1, "method": "tools/call",
                    "params": {"name": "ask_llm", "arguments": {"question": "q"}}});
                let (status, _, _) = call(&app, Some(&session), body.to_string()).await;
                assert_eq!(status, 200);
            }
        }
        let trodo = victim.trodo();
        assert!(
            trodo.flush(WAIT).await,
            "its records were out before it died"
        );
        assert_eq!(trodo.open_runs(), 3);
        // Dropped without shutdown: its tasks hold only weak references and stop.
    }
    let survivor = worker(&ingest, backend, idle);

    ingest
        .wait_until(WAIT, |r| {
            r.iter().filter(|r| r.path.ends_with("/end")).count() >= 3
        })
        .await
        .unwrap();
    assert!(survivor.trodo().flush(WAIT).await);
    assert!(
        victim_ingest.ends().is_empty(),
        "the dead worker ended nothing"
    );
    let starts: HashSet<String> = victim_ingest
        .starts()
        .iter()
        .map(|s| s["run_id"].as_str().unwrap().to_owned())
        .collect();
    let ends = ingest.ends();
    assert_eq!(ends.len(), 3);
    let mut span_counts = Vec::new();
    for (run_id, end) in &ends {
        assert!(starts.contains(run_id), "an end of the dead worker's run");
        let spans = spans_of(&victim_ingest, run_id);
        assert_eq!(end["metadata"]["closed_via"], "idle_timeout");
        assert_eq!(end["span_count"], spans.len());
        assert_eq!(end["tool_count"], spans.len() / 2);
        assert_eq!(end["total_tokens_in"], spans.len() / 2);
        let last = spans.iter().map(|s| s["ended_at"].as_str().unwrap()).max();
        assert_eq!(end["ended_at"].as_str(), last, "ended at its last activity");
        span_counts.push(spans.len());
    }
    span_counts.sort_unstable();
    assert_eq!(span_counts, [2, 4, 6]);
    assert_eq!(survivor.trodo().store_counters().unwrap().ended, 3);
}

/// Both workers sweep the same expired sessions at once: exactly one end
/// per session.
pub async fn two_workers_sweep_each_session_once(backend: &dyn Backend, sessions: usize) {
    let ingest = RecordingIngest::start().await.unwrap();
    let service = mcp(DemoTools::new(), session_manager(None));
    let idle = Duration::from_millis(500);
    let (one, two) = (
        worker(&ingest, backend, idle),
        worker(&ingest, backend, idle),
    );
    let addr = serve_worker(&service, &one).await;
    let _ = serve_worker(&service, &two).await;
    let clients = 16;
    // One HTTP client for all: making a client per session costs more than the session.
    let http = reqwest::Client::new();
    let openers: Vec<_> = (0..clients)
        .map(|c| {
            let http = http.clone();
            tokio::spawn(async move {
                let mut opened = Vec::new();
                for i in (c..sessions).step_by(clients) {
                    let mut client = RawClient {
                        http: http.clone(),
                        url: format!("http://{addr}/mcp"),
                        session: None,
                    };
                    client.initialize("sweep").await;
                    if i % 10 == 0 {
                        client.call_tool(1, "echo", json!({"text": "x"})).await;
                    }
                    opened.push((client.session.unwrap(), i % 10 == 0));
                }
                opened
            })
        })
        .collect();
    let mut opened = HashMap::new();
    let started = std::time::Instant::now();
    for opener in openers {
        opened.extend(opener.await.unwrap());
    }
    eprintln!("{sessions} sessions opened in {:?}", started.elapsed());
    assert_eq!(opened.len(), sessions);

    let ends_arrived =
        |r: &[ingest::Received]| r.iter().filter(|r| r.path.ends_with("/end")).count() >= sessions;
    ingest
        .wait_until(Duration::from_secs(90), ends_arrived)
        .await
        .unwrap();
    // Let both sweep twice more, then count: no end came twice.
    let sweeps = |t: &Trodo| t.store_counters().unwrap().sweeps;
    let (one_trodo, two_trodo) = (one.trodo(), two.trodo());
    let (a, b) = (sweeps(&one_trodo), sweeps(&two_trodo));
    tokio::time::timeout(WAIT, async {
        while sweeps(&one_trodo) < a + 2 || sweeps(&two_trodo) < b + 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both workers keep sweeping");
    assert!(one_trodo.flush(WAIT).await && two_trodo.flush(WAIT).await);

    let conversation: HashMap<String, String> = ingest
        .starts()
        .iter()
        .map(|s| {
            (
                s["run_id"].as_str().unwrap().to_owned(),
                s["conversation_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(conversation.len(), sessions, "one start per session");
    let ends = ingest.ends();
    let ended: HashSet<&String> = ends.iter().map(|(id, _)| id).collect();
    assert_eq!(ends.len(), sessions, "exactly one end per session");
    assert_eq!(ended.len(), sessions);
    for (run_id, end) in &ends {
        let session = &conversation[run_id];
        assert_eq!(end["metadata"]["closed_via"], "idle_timeout");
        assert_eq!(end["span_count"], u64::from(opened[session]));
    }
    let (one_ended, two_ended) = (
        one_trodo.store_counters().unwrap().ended,
        two_trodo.store_counters().unwrap().ended,
    );
    assert_eq!(one_ended + two_ended, sessions as u64);
    eprintln!("ends sent: {one_ended} by the worker that served them, {two_ended} by the other");
}
