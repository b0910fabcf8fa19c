//! Many sessions at once: every span lands in its own session's run.

mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use serde_json::json;
use trodo_tower::TrodoLayer;

const SESSIONS: usize = 50;
const CALLS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_sessions_of_ten_calls_each() {
    let ingest = RecordingIngest::start().await.unwrap();
    let addr = serve_demo(DemoTools::new(), TrodoLayer::new(config(&ingest))).await;

    let sessions = futures::future::join_all((0..SESSIONS).map(|s| async move {
        let mut client = RawClient::new(addr);
        client.initialize(&format!("client-{s}")).await;
        for c in 0..CALLS {
            let answer = client
                .call_tool(c as i64 + 1, "add", json!({"a": s, "b": c * 1000}))
                .await;
            let expected = (s + c * 1000).to_string();
            assert_eq!(
                answer.response()["result"]["content"][0]["text"],
                expected.as_str()
            );
        }
        assert_eq!(client.delete().await.status, 202);
        client.session.unwrap()
    }))
    .await;

    wait_for_ends(&ingest, SESSIONS).await;
    let starts = ingest.starts();
    assert_eq!(starts.len(), SESSIONS);
    let run_of_session: HashMap<String, String> = starts
        .iter()
        .map(|run| {
            let client = run["metadata"]["client_name"].as_str().unwrap();
            let s: usize = client.strip_prefix("client-").unwrap().parse().unwrap();
            assert_eq!(run["conversation_id"], sessions[s].as_str());
            (s.to_string(), run["run_id"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        run_of_session.values().collect::<HashSet<_>>().len(),
        SESSIONS
    );

    let spans = ingest.spans();
    assert_eq!(spans.len(), SESSIONS * CALLS);
    for (run_id, span) in &spans {
        assert_eq!(span["run_id"], run_id.as_str());
        let a = json_of(&span["input"])["params"]["arguments"]["a"]
            .as_u64()
            .unwrap();
        assert_eq!(
            &run_of_session[&a.to_string()],
            run_id,
            "span of session {a} in another run"
        );
    }
    let ends = ingest.ends();
    assert_eq!(ends.len(), SESSIONS);
    assert_eq!(
        ends.iter().map(|(id, _)| id).collect::<HashSet<_>>().len(),
        SESSIONS
    );
    for (run_id, end) in &ends {
        assert_eq!(end["span_count"], CALLS, "{run_id}");
        assert_eq!(end["tool_count"], CALLS);
        assert_eq!(end["error_count"], 0);
        assert_eq!(end["metadata"]["closed_via"], "session_deleted");
        // Per run: start, then its spans, then its end.
        let order: Vec<usize> = ingest
            .received()
            .iter()
            .filter(|r| {
                r.path.contains(run_id.as_str()) || r.body["run"]["run_id"] == run_id.as_str()
            })
            .map(|r| r.seq)
            .collect();
        let received = ingest.received();
        assert!(received[order[0]].path.ends_with("/start"));
        assert!(received[*order.last().unwrap()].path.ends_with("/end"));
    }
}
