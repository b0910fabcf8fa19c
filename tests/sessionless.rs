//! Runs for clients without sessions: MCP 2026-07-28 (rmcp in discover mode,
//! the captured Python `mcp.Client` traffic), per-request runs, the key
//! chain (application key, vendor conversation id, client identity) and
//! per-call-session grouping.

mod common;

use axum::routing::post;
use axum::{Extension, Json, Router};
use common::*;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, ProtocolVersion,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
use rmcp::transport::StreamableHttpClientTransport;
use serde_json::{Value, json};
use trodo_tower::{RequestSpan, Sessionless, SpanGuard, SpanKind, TrodoConfig, TrodoLayer};

const SHORT_IDLE: std::time::Duration = std::time::Duration::from_millis(300);

async fn layered(config: TrodoConfig, stateless: bool) -> std::net::SocketAddr {
    let service = if stateless {
        mcp_stateless_json(DemoTools::new())
    } else {
        mcp(DemoTools::new(), session_manager(None))
    };
    serve(
        Router::new()
            .nest_service("/mcp", service)
            .layer(TrodoLayer::new(config)),
    )
    .await
}

async fn discover_client(
    url: String,
    name: &str,
) -> rmcp::service::RunningService<rmcp::RoleClient, ClientConfig> {
    let transport = StreamableHttpClientTransport::from_uri(url);
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    };
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new(name, "2.0.0"),
    )
    .serve_with_lifecycle(transport, lifecycle)
    .await
    .unwrap()
}

fn args(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().cloned().unwrap()
}

async fn discover_session_is_one_run(stateless: bool) {
    let ingest = RecordingIngest::start().await.unwrap();
    let config = config(&ingest).with_idle_timeout(SHORT_IDLE).unwrap();
    let addr = layered(config, stateless).await;
    let client = discover_client(format!("http://{addr}/mcp"), "discoverer").await;
    client.list_tools(Default::default()).await.unwrap();
    let sum = client
        .call_tool(CallToolRequestParams::new("add").with_arguments(args(json!({"a": 3, "b": 4}))))
        .await
        .unwrap();
    assert_eq!(sum.is_error, Some(false));
    client
        .call_tool(CallToolRequestParams::new("fail"))
        .await
        .unwrap();
    drop(client); // no DELETE in 2026-07-28: the idle gap ends the run

    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    let starts = ingest.starts();
    assert_eq!(starts.len(), 1, "one run for the whole conversation");
    let run = &starts[0];
    // rmcp's client sends no user agent and the test server has no ConnectInfo:
    // the identity is the clientInfo alone.
    assert_eq!(run["conversation_id"], "discoverer/2.0.0");
    assert_eq!(run["metadata"]["era"], "2026-07-28");
    assert_eq!(run["metadata"]["run_key_source"], "client");
    assert_eq!(run["metadata"]["client_name"], "discoverer");
    assert_eq!(run["metadata"]["protocol_version"], "2026-07-28");
    assert_eq!(
        run["metadata"]["server_name"], "trodo-demo",
        "from the first result's _meta"
    );
    let run_id = run["run_id"].as_str().unwrap();
    let spans = spans_of(&ingest, run_id);
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "mcp.server/discover",
            "mcp.tools/list",
            "tool.add",
            "tool.fail"
        ]
    );
    for span in &spans {
        assert_eq!(span["attributes"]["mcp.protocol.version"], "2026-07-28");
        assert_eq!(span["attributes"]["mcp.client.name"], "discoverer");
    }
    assert_eq!(
        json_of(&spans[2]["output"])["result"]["content"][0]["text"],
        "7"
    );
    assert_eq!(spans[3]["error_type"], "tool_error");
    let (end_run, end) = &ingest.ends()[0];
    assert_eq!(end_run, run_id);
    assert_eq!(end["metadata"]["closed_via"], "idle_timeout");
    assert_eq!(
        (end["span_count"].as_u64(), end["error_count"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(end["ended_at"], spans[3]["ended_at"]);
}

#[tokio::test]
async fn rmcp_discover_client_against_a_legacy_server_is_one_run() {
    discover_session_is_one_run(false).await;
}

#[tokio::test]
async fn rmcp_discover_client_against_a_stateless_server_is_one_run() {
    discover_session_is_one_run(true).await;
}

/// The client requests of a wire capture: (headers, body), in order.
fn captured_requests(capture: &str) -> Vec<(Vec<(String, String)>, String)> {
    let marker = regex_lite_split(capture);
    let mut requests = Vec::new();
    let mut pending = String::new();
    for (direction, content) in marker {
        if direction == "C->S" {
            pending.push_str(&content);
        } else if !pending.is_empty() {
            let (head, body) = pending.split_once("\r\n\r\n").unwrap();
            let headers = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            requests.push((headers, body.to_owned()));
            pending.clear();
        }
    }
    requests
}

/// Splits a capture into (direction, raw content) blocks.
fn regex_lite_split(capture: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for piece in capture.split("\n----- ").skip(1) {
        let (marker, content) = piece.split_once(" -----\n").unwrap();
        let direction = marker.split(' ').next().unwrap().to_owned();
        blocks.push((direction, content.to_owned()));
    }
    blocks
}

#[tokio::test]
async fn captured_python_client_traffic_is_one_run() {
    let capture = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/py_high_auto.http.txt"
    ))
    .unwrap();
    let requests = captured_requests(&capture);
    assert_eq!(requests.len(), 3, "server/discover, tools/list, tools/call");

    let ingest = RecordingIngest::start().await.unwrap();
    let addr = layered(
        config(&ingest).with_idle_timeout(SHORT_IDLE).unwrap(),
        false,
    )
    .await;
    let http = reqwest::Client::new();
    for (headers, body) in &requests {
        let mut request = http.post(format!("http://{addr}/mcp"));
        for (name, value) in headers {
            if !matches!(name.as_str(), "host" | "content-length" | "connection") {
                request = request.header(name, value);
            }
        }
        let answer = read(request.body(body.clone()).send().await.unwrap()).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    let starts = ingest.starts();
    assert_eq!(starts.len(), 1);
    assert_eq!(
        starts[0]["conversation_id"],
        "mcp/0.1.0@python-httpx2/2.16.2"
    );
    let spans: Vec<String> = ingest
        .spans()
        .iter()
        .map(|(_, s)| s["name"].as_str().unwrap().to_owned())
        .collect();
    // The captured server had a `sum` tool; the demo server has none, so the
    // replayed call is a caller error, recorded as such.
    assert_eq!(spans, ["mcp.server/discover", "mcp.tools/list", "tool.sum"]);
    assert_eq!(ingest.spans()[2].1["error_type"], "caller_error");
    assert_eq!(ingest.ends()[0].1["span_count"], 3);
}

#[tokio::test]
async fn run_per_request_sends_each_request_whole() {
    let ingest = RecordingIngest::start().await.unwrap();
    let config = config(&ingest).with_sessionless(Sessionless::RunPerRequest);
    let addr = layered(config, true).await;
    let client = RawClient::new(addr);
    client.call_tool(1, "echo", json!({"text": "one"})).await;
    client.call_tool(2, "fail", json!({})).await;
    ingest.wait_until(WAIT, |r| r.len() == 2).await.unwrap();
    let received = ingest.received();
    assert!(
        received.iter().all(|r| r.path == "/api/sdk/runs/ingest"),
        "no start, spans or end calls"
    );
    // Two runs, delivered side by side: find each by its status.
    let with_status = |status: &str| {
        received
            .iter()
            .map(|r| &r.body)
            .find(|body| body["run"]["status"] == status)
            .unwrap_or_else(|| panic!("no {status} run"))
    };
    let (ok, failed) = (with_status("ok"), with_status("error"));
    assert_eq!(ok["spans"].as_array().unwrap().len(), 1);
    let span = &ok["spans"][0];
    assert_eq!(span["run_id"], ok["run"]["run_id"]);
    assert_eq!(span["name"], "tool.echo");
    let run = &ok["run"];
    assert_eq!(run["status"], "ok");
    assert_eq!(run["input"], span["input"]);
    assert_eq!(run["output"], span["output"]);
    assert_eq!(run["ended_at"], span["ended_at"]);
    assert_eq!(run["duration_ms"], span["duration_ms"]);
    assert_eq!(
        (
            run["span_count"].as_u64(),
            run["tool_count"].as_u64(),
            run["error_count"].as_u64()
        ),
        (Some(1), Some(1), Some(0))
    );
    assert!(run.get("conversation_id").is_none());
    assert_eq!(run["metadata"]["era"], "stateless");
    assert_eq!(failed["run"]["status"], "error");
    assert_eq!(failed["run"]["error_summary"], "this tool always fails");
    assert_eq!(failed["run"]["error_count"], 1);
}

#[tokio::test]
async fn a_child_that_finishes_after_its_request_run_was_sent_is_dropped_and_counted() {
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest).with_sessionless(Sessionless::RunPerRequest));
    let trodo = layer.trodo();
    // The handler hands its still-open child out: work that outlives the
    // request. (The layer reads the request as the handler reads it.)
    let (escape, escaped) = tokio::sync::mpsc::unbounded_channel::<SpanGuard>();
    let answer = move |Extension(span): Extension<RequestSpan>, _request: String| async move {
        span.child(SpanKind::Retrieval, "retrieval.on_time")
            .finish();
        escape.send(span.child(SpanKind::Llm, "llm.late")).unwrap();
        Json(json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}))
    };
    let app = Router::new().route("/mcp", post(answer)).layer(layer);
    let client = RawClient::new(serve(app).await);
    assert_eq!(client.call_tool(1, "echo", json!({})).await.status, 200);
    ingest.wait_until(WAIT, |r| r.len() == 1).await.unwrap();
    let mut escaped = escaped;
    escaped.recv().await.unwrap().finish();
    assert!(trodo.flush(WAIT).await);

    let received = ingest.received();
    assert_eq!(received.len(), 1, "the late child made no call of its own");
    let whole = &received[0].body;
    let names: Vec<&str> = whole["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|span| span["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["retrieval.on_time", "tool.echo"]);
    assert_eq!(whole["run"]["span_count"], 2);
    assert_eq!(trodo.delivery_counters().dropped_after_run_end, 1);
}

#[tokio::test]
async fn the_application_key_comes_first_then_the_vendor_conversation_id() {
    let ingest = RecordingIngest::start().await.unwrap();
    let config = config(&ingest)
        .with_idle_timeout(SHORT_IDLE)
        .unwrap()
        .with_run_key(|parts| {
            let user = parts.headers.get("x-user")?.to_str().ok()?;
            Some(format!("user:{user}"))
        });
    let addr = layered(config, true).await;
    let client = RawClient::new(addr);
    let meta = |conversation: &str| {
        json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
               "io.modelcontextprotocol/clientInfo": {"name": "chatgpt", "version": "1"},
               "io.modelcontextprotocol/clientCapabilities": {},
               "openai/session": conversation})
    };
    let call = |id: i64, conversation: &str, user: Option<&str>| {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": id.to_string()}, "_meta": meta(conversation)}});
        let mut request = client
            .post(body.to_string())
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "echo");
        if let Some(user) = user {
            request = request.header("x-user", user);
        }
        request.send()
    };
    for (id, conversation, user) in [
        (1, "c-1", None),
        (2, "c-2", None),
        (3, "c-1", None),
        (4, "c-2", Some("ann")),
        (5, "c-1", Some("ann")),
    ] {
        let answer = read(call(id, conversation, user).await.unwrap()).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    wait_for_ends(&ingest, 3).await;
    let mut runs: Vec<(String, String, Vec<String>)> = ingest
        .starts()
        .iter()
        .map(|run| {
            let inputs = spans_of(&ingest, run["run_id"].as_str().unwrap())
                .iter()
                .map(|s| json_of(&s["input"])["id"].to_string())
                .collect();
            let key = run["conversation_id"].as_str().unwrap().to_owned();
            (
                key,
                run["metadata"]["run_key_source"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                inputs,
            )
        })
        .collect();
    runs.sort();
    assert_eq!(
        runs,
        [
            (
                "c-1".to_owned(),
                "meta:openai/session".to_owned(),
                vec!["1".to_owned(), "3".to_owned()]
            ),
            (
                "c-2".to_owned(),
                "meta:openai/session".to_owned(),
                vec!["2".to_owned()]
            ),
            (
                "user:ann".to_owned(),
                "app".to_owned(),
                vec!["4".to_owned(), "5".to_owned()]
            ),
        ]
    );
}

/// A conversation's first call opens its run; the LLM span its handler
/// records while it works waits for the answer, so the run's `start`
/// carries the server's identity from the answer's `_meta` (which a
/// 2026-07-28 server puts in every result, unlike rmcp's stateless
/// server today), and the child follows its parent.
#[tokio::test]
async fn a_child_of_the_call_that_opens_a_run_waits_for_the_server_identity() {
    let ingest = RecordingIngest::start().await.unwrap();
    let config = config(&ingest).with_idle_timeout(SHORT_IDLE).unwrap();
    let answer_with_identity = |Extension(span): Extension<RequestSpan>,
                                Json(request): Json<Value>| async move {
        span.child(SpanKind::Llm, "llm.answer").finish();
        Json(json!({"jsonrpc": "2.0", "id": request["id"], "result": {
                "resultType": "complete",
                "content": [{"type": "text", "text": "42"}],
                "_meta": {"io.modelcontextprotocol/serverInfo":
                    {"name": "spec-server", "version": "3.1.0"}}}}))
    };
    let app = Router::new()
        .route("/mcp", post(answer_with_identity))
        .layer(TrodoLayer::new(config));
    let client = RawClient::new(serve(app).await);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "ask", "arguments": {},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "claude", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {},
                "openai/session": "c-llm"}}});
    let answer = client
        .post(body.to_string())
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "ask")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    wait_for_ends(&ingest, 1).await;

    let starts = ingest.starts();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0]["conversation_id"], "c-llm");
    assert_eq!(starts[0]["metadata"]["server_name"], "spec-server");
    assert_eq!(starts[0]["metadata"]["server_version"], "3.1.0");
    let run_id = starts[0]["run_id"].as_str().unwrap();
    let spans = spans_of(&ingest, run_id);
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["tool.ask", "llm.answer"]);
    assert_eq!(spans[1]["parent_span_id"], spans[0]["span_id"]);
    assert_eq!(ingest.ends()[0].1["span_count"], 2);
}

/// With a session store an exchange is read as it streams: the run of a
/// call without a session is decided on its SSE answer's head, before the
/// handler's stream records `children` spans and then answers.
async fn children_of_a_streaming_call_that_opens_a_run(children: usize) -> (Value, Vec<Value>) {
    use axum::response::sse::{Event, Sse};
    use futures::StreamExt;
    use std::convert::Infallible;
    let ingest = RecordingIngest::start().await.unwrap();
    let store = std::sync::Arc::new(trodo_tower::store::MemoryStore::new());
    let config = config(&ingest).with_idle_timeout(SHORT_IDLE).unwrap();
    let layer = TrodoLayer::new(config.with_session_store(store));
    let stream_answer = move |Extension(span): Extension<RequestSpan>,
                              Json(request): Json<Value>| async move {
        let answer = json!({"jsonrpc": "2.0", "id": request["id"], "result": {
            "resultType": "complete", "content": [],
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "spec-server"}}}});
        let events = futures::stream::iter(0..2).map(move |step| {
            if step == 0 {
                return Ok::<_, Infallible>(Event::default().comment("working"));
            }
            for _ in 0..children {
                span.child(SpanKind::Llm, "llm.step").finish();
            }
            Ok(Event::default().data(answer.to_string()))
        });
        Sse::new(events)
    };
    let app = Router::new()
        .route("/mcp", post(stream_answer))
        .layer(layer);
    let client = RawClient::new(serve(app).await);
    let answer = client
        .post(request_body(1, "tools/call", json!({"name": "ask"})))
        .header("user-agent", "streamer/1")
        .send()
        .await
        .unwrap();
    assert!(read(answer).await.text().contains("spec-server"));
    wait_for_ends(&ingest, 1).await;
    let start = ingest.starts()[0].clone();
    let spans = spans_of(&ingest, start["run_id"].as_str().unwrap());
    assert_eq!(ingest.ends()[0].1["span_count"], children + 1);
    let parent = spans
        .iter()
        .find(|span| span["name"] == "tool.ask")
        .unwrap();
    let under_it = spans
        .iter()
        .filter(|span| span["parent_span_id"] == parent["span_id"]);
    assert_eq!(under_it.count(), children);
    (start, spans)
}

#[tokio::test]
async fn children_of_a_streaming_call_that_opens_a_run_follow_its_span() {
    let (start, spans) = children_of_a_streaming_call_that_opens_a_run(2).await;
    assert_eq!(start["metadata"]["server_name"], "spec-server");
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["tool.ask", "llm.step", "llm.step"]);
}

/// Past the bound on children kept waiting, the run's `start` goes
/// without the server's identity rather than a child being dropped.
#[tokio::test]
async fn children_past_the_waiting_bound_send_the_start_of_the_run_at_once() {
    let (start, spans) = children_of_a_streaming_call_that_opens_a_run(1_001).await;
    assert!(start["metadata"].get("server_name").is_none(), "{start}");
    assert_eq!(spans.len(), 1_002);
    assert_eq!(
        spans[0]["name"], "llm.step",
        "the first sent is the one past the bound"
    );
}

#[tokio::test]
async fn per_call_sessions_are_grouped_when_configured() {
    let ingest = RecordingIngest::start().await.unwrap();
    let config = config(&ingest)
        .with_idle_timeout(SHORT_IDLE)
        .unwrap()
        .with_session_grouping(true)
        .with_run_key(|parts| Some(parts.headers.get("user-agent")?.to_str().ok()?.to_owned()));
    let addr = layered(config, false).await;
    // A client that opens a new session for every call and never deletes it.
    let mut sessions = Vec::new();
    for call in 0..3 {
        let mut client = RawClient::new(addr);
        client.http = reqwest::Client::builder()
            .user_agent("per-call-client/1")
            .build()
            .unwrap();
        client.initialize("per-call").await;
        client.call_tool(1, "add", json!({"a": call, "b": 0})).await;
        sessions.push(client.session.unwrap());
    }
    assert_eq!(
        sessions
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3
    );
    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    let starts = ingest.starts();
    assert_eq!(starts.len(), 1, "three sessions, one run");
    assert_eq!(starts[0]["conversation_id"], "per-call-client/1");
    let names: Vec<String> = ingest
        .spans()
        .iter()
        .map(|(_, s)| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "mcp.initialize",
            "tool.add",
            "mcp.initialize",
            "tool.add",
            "mcp.initialize",
            "tool.add"
        ]
    );
    assert_eq!(ingest.ends()[0].1["closed_via"], Value::Null);
    assert_eq!(ingest.ends()[0].1["metadata"]["closed_via"], "idle_timeout");
}

/// Serves the stateless JSON demo server behind a layer that keeps at
/// most one run open, and posts an `echo` call of each id with its header
/// `name: value`; returns the ingest, once the layer flushed.
async fn calls_past_one_open_run(name: &str, calls: &[(i64, &str)]) -> RecordingIngest {
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest).with_max_open_runs(1).unwrap());
    let trodo = layer.trodo();
    let addr = serve(
        Router::new()
            .nest_service("/mcp", mcp_stateless_json(DemoTools::new()))
            .layer(layer),
    )
    .await;
    let client = RawClient::new(addr);
    for &(id, value) in calls {
        let answer = client
            .post(tool_call_body(id, "echo", json!({"text": value})))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        let _ = answer.bytes().await;
    }
    assert!(trodo.flush(WAIT).await);
    let counters = trodo.delivery_counters();
    let whole = whole_runs(&ingest);
    assert_eq!(counters.own_runs_past_max_open_runs, whole.len() as u64);
    assert!(
        whole
            .iter()
            .all(|run| run["metadata"]["run_table_full"] == true)
    );
    ingest
}

/// The runs sent whole (`POST /runs/ingest`).
fn whole_runs(ingest: &RecordingIngest) -> Vec<Value> {
    ingest
        .received()
        .into_iter()
        .filter(|r| r.path.ends_with("/runs/ingest"))
        .map(|r| r.body["run"].clone())
        .collect()
}

/// The JSON-RPC ids of `spans`' requests.
fn request_ids(spans: &[Value]) -> Vec<Value> {
    spans
        .iter()
        .map(|s| json_of(&s["input"])["id"].clone())
        .collect()
}

/// Past `max_open_runs`, a call whose key has no open run is a run of its
/// own, sent whole and marked; a key whose run is open keeps using it.
#[tokio::test]
async fn past_the_most_open_runs_a_new_keys_call_is_a_run_of_its_own() {
    let calls = [(1, "first/1"), (2, "second/1"), (3, "first/1")];
    let ingest = calls_past_one_open_run("user-agent", &calls).await;

    let starts = ingest.starts();
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert_eq!(starts[0]["conversation_id"], "@first/1");
    let kept = spans_of(&ingest, starts[0]["run_id"].as_str().unwrap());
    assert_eq!(request_ids(&kept), [json!(1), json!(3)]);
    let whole = whole_runs(&ingest);
    assert_eq!(whole.len(), 1, "{whole:?}");
    assert_eq!(whole[0]["metadata"]["run_key_source"], "request");
    assert_eq!(request_ids(&whole), [json!(2)]);
}

/// Session ids are the client's text: on a server that answers whatever
/// session id a request carries (a stateless one), each new id would open
/// a run here. Past `max_open_runs` such a call is a run of its own too.
#[tokio::test]
async fn past_the_most_open_runs_a_new_session_ids_call_is_a_run_of_its_own() {
    let calls = [(1, "made-up-1"), (2, "made-up-2"), (3, "made-up-3")];
    let ingest = calls_past_one_open_run("mcp-session-id", &calls).await;

    let starts = ingest.starts();
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert_eq!(starts[0]["conversation_id"], "made-up-1");
    assert_eq!(request_ids(&whole_runs(&ingest)), [json!(2), json!(3)]);
}

/// Grouped requests are treated as requests without a session, so
/// `Sessionless` decides for them too: under `Ignore` nothing is recorded.
#[tokio::test]
async fn grouped_sessions_are_ignored_under_sessionless_ignore() {
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(
        config(&ingest)
            .with_session_grouping(true)
            .with_sessionless(Sessionless::Ignore),
    );
    let trodo = layer.trodo();
    let addr = serve(
        Router::new()
            .nest_service("/mcp", mcp(DemoTools::new(), session_manager(None)))
            .layer(layer),
    )
    .await;
    let mut client = RawClient::new(addr);
    client.initialize("per-call").await;
    let sum = client.call_tool(1, "add", json!({"a": 1, "b": 2})).await;
    assert_eq!(sum.response()["result"]["content"][0]["text"], "3");
    client.delete().await;
    assert!(trodo.flush(WAIT).await);
    assert_eq!(ingest.received().len(), 0, "{:?}", ingest.received());
    assert_eq!(trodo.delivery_counters().sent, 0);
}

/// A request past the capture limit is still read whole to be understood
/// (up to 1 Mi characters): a large `tools/call` stays in its
/// conversation's run and is named from its body; its input is cut.
#[tokio::test]
async fn a_request_past_the_capture_limit_is_still_understood() {
    let ingest = RecordingIngest::start().await.unwrap();
    let config = config(&ingest).with_idle_timeout(SHORT_IDLE).unwrap();
    let addr = layered(config, true).await;
    let client = RawClient::new(addr);
    let call = |id: i64, text: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": text},
                       "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                 "io.modelcontextprotocol/clientInfo": {"name": "big", "version": "1"},
                                 "io.modelcontextprotocol/clientCapabilities": {},
                                 "openai/session": "conv-1"}}})
        .to_string()
    };
    for (id, text) in [(1, "small".to_owned()), (2, "x".repeat(100_000))] {
        let answer = client
            .post(call(id, &text))
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "echo")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    // The run and the request id come from the body, not the headers.
    assert_eq!(ingest.starts().len(), 1, "one run for the conversation");
    let spans = ingest.spans();
    assert_eq!(spans.len(), 2);
    let big = &spans[1].1;
    assert_eq!(big["name"], "tool.echo");
    assert_eq!(big["attributes"]["jsonrpc.request.id"], "2");
    assert_eq!(big["attributes"]["input_truncated"], true);
    assert_eq!(big["input"].as_str().unwrap().chars().count(), 64_000);
    assert_eq!(spans[0].1["attributes"]["input_truncated"], false);
}

#[tokio::test]
async fn a_request_too_large_to_parse_is_named_by_its_headers() {
    let ingest = RecordingIngest::start().await.unwrap();
    let config = config(&ingest)
        .with_idle_timeout(SHORT_IDLE)
        .unwrap()
        .with_sessionless(Sessionless::RunPerRequest);
    let addr = layered(config, true).await;
    let client = RawClient::new(addr);
    let text = "x".repeat(1_100_000); // over the 1 Mi characters read to understand it
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": text},
                   "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                             "io.modelcontextprotocol/clientInfo": {"name": "big", "version": "1"},
                             "io.modelcontextprotocol/clientCapabilities": {}}}});
    let answer = read(
        client
            .post(body.to_string())
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "echo")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200);
    ingest
        .wait_until(WAIT, |r| span_count(r) == 1)
        .await
        .unwrap();
    let span = &ingest.received()[0].body["spans"][0];
    assert_eq!(span["name"], "tool.echo");
    assert_eq!(span["kind"], "tool");
    assert_eq!(span["tool_name"], "echo");
    assert_eq!(span["status"], "ok");
    assert_eq!(span["attributes"]["mcp.method.name"], "tools/call");
    assert_eq!(span["attributes"]["input_truncated"], true);
    assert_eq!(span["input"].as_str().unwrap().chars().count(), 64_000);
}

/// A call without a session whose body the layer cannot read (over the
/// 1 Mi characters read to understand it, or gzip-encoded for a
/// decompression layer inside) and whose method no header names is an
/// `mcp.request` span in its key's run, as it is in a session.
#[tokio::test]
async fn a_call_without_a_session_too_large_to_read_or_encoded_is_an_mcp_request() {
    use std::io::Write;
    use tower_http::decompression::RequestDecompressionLayer;
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    let app = Router::new()
        .nest_service("/mcp", mcp_stateless_json(DemoTools::new()))
        .layer(RequestDecompressionLayer::new())
        .layer(layer);
    let client = RawClient::new(serve(app).await);
    let mut packed = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let packed_call = tool_call_body(3, "echo", json!({"text": "packed"}));
    packed.write_all(packed_call.as_bytes()).unwrap();
    let calls = [
        (
            tool_call_body(1, "echo", json!({"text": "small"})).into_bytes(),
            None,
        ),
        (
            tool_call_body(2, "echo", json!({"text": "x".repeat(1_100_000)})).into_bytes(),
            None,
        ),
        (packed.finish().unwrap(), Some("gzip")),
    ];
    for (body, encoding) in calls {
        let mut request = client.post(body).header("user-agent", "legacy/1");
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        let answer = read(request.send().await.unwrap()).await;
        assert_eq!(answer.status, 200);
        assert!(answer.text().contains("echo: "), "{}", answer.text());
    }
    assert!(trodo.flush(WAIT).await);

    let starts = ingest.starts();
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert_eq!(starts[0]["conversation_id"], "@legacy/1");
    let spans = spans_of(&ingest, starts[0]["run_id"].as_str().unwrap());
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["tool.echo", "mcp.request", "mcp.request"]);
    assert_eq!(spans[1]["attributes"]["input_truncated"], true);
    assert_eq!(
        spans[2]["attributes"]["http.request.content_encoding"],
        "gzip"
    );
    assert!(spans.iter().all(|s| s["status"] == "ok"), "{spans:?}");
}

/// An encoded `initialize` (a client that compresses every request) is
/// unread too, but its answer opens a session: it is no call without a
/// session, and opens no run of its own.
#[tokio::test]
async fn an_encoded_initialize_opens_no_run_without_a_session() {
    use std::io::Write;
    use tower_http::decompression::RequestDecompressionLayer;
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    let app = Router::new()
        .nest_service("/mcp", mcp(DemoTools::new(), session_manager(None)))
        .layer(RequestDecompressionLayer::new())
        .layer(layer);
    let addr = serve(app).await;
    let mut client = RawClient::new(addr);
    client.initialize("learns-the-path").await;
    let mut packed = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    packed
        .write_all(initialize_body("packed").as_bytes())
        .unwrap();
    let mut packed_client = RawClient::new(addr);
    let answer = read(
        packed_client
            .post(packed.finish().unwrap())
            .header("content-encoding", "gzip")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200);
    packed_client.session = answer
        .headers
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(packed_client.session.is_some());
    assert!(trodo.flush(WAIT).await);
    assert!(whole_runs(&ingest).is_empty(), "{:?}", whole_runs(&ingest));
    assert_eq!(ingest.starts().len(), 1, "the first session's run only");
}

/// A request without a session whose client goes away before the answer
/// (a JSON server answers only when the tool is done): a cancelled span,
/// in the run its key chain names: a run of its own for a client that says
/// nothing of itself, its key's run for one that names itself.
#[tokio::test]
async fn a_request_without_a_session_cancelled_before_its_answer_gets_a_cancelled_span() {
    for user_agent in [None, Some("agent/1")] {
        let ingest = RecordingIngest::start().await.unwrap();
        let tools = DemoTools::new();
        let addr = serve(
            Router::new()
                .nest_service("/mcp", mcp_stateless_json(tools.clone()))
                .layer(TrodoLayer::new(config(&ingest))),
        )
        .await;
        let mut request =
            RawClient::new(addr).post(tool_call_body(5, "wait_for_release", json!({})));
        if let Some(user_agent) = user_agent {
            request = request.header("user-agent", user_agent);
        }
        let call = tokio::spawn(request.send());
        tools.started().await;
        call.abort(); // the client goes away before the answer
        let _ = call.await;
        ingest
            .wait_until(WAIT, |r| span_count(r) == 1)
            .await
            .unwrap();
        tools.release();
        let received = ingest.received();
        let span = match user_agent {
            None => {
                assert_eq!(received.len(), 1);
                assert_eq!(received[0].path, "/api/sdk/runs/ingest");
                assert_eq!(received[0].body["run"]["error_count"], 1);
                received[0].body["spans"][0].clone()
            }
            Some(_) => {
                let starts = ingest.starts();
                assert_eq!(starts.len(), 1);
                let spans = spans_of(&ingest, starts[0]["run_id"].as_str().unwrap());
                assert_eq!(spans.len(), 1);
                spans[0].clone()
            }
        };
        assert_eq!(span["name"], "tool.wait_for_release");
        assert_eq!(span["status"], "error");
        assert_eq!(span["error_type"], "cancelled");
        assert_eq!(span["attributes"]["jsonrpc.request.id"], "5");
    }
}

/// A call without a session that lasts longer than the idle timeout keeps
/// its key's run open until it is answered. With a session store its
/// exchange is read as it streams, so its run is decided on the response
/// head (an SSE answer's comes at once) and must outlast the call.
#[tokio::test]
async fn a_long_call_without_a_session_keeps_its_run_open() {
    let ingest = RecordingIngest::start().await.unwrap();
    let tools = DemoTools::new();
    let stateless_sse = rmcp::transport::StreamableHttpService::new(
        {
            let tools = tools.clone();
            move || Ok(tools.clone())
        },
        session_manager(None),
        rmcp::transport::StreamableHttpServerConfig::default().with_legacy_session_mode(false),
    );
    let store = std::sync::Arc::new(trodo_tower::store::MemoryStore::new());
    let config = config(&ingest).with_idle_timeout(SHORT_IDLE).unwrap();
    let layer = TrodoLayer::new(config.with_session_store(store));
    let addr = serve(
        Router::new()
            .nest_service("/mcp", stateless_sse)
            .layer(layer),
    )
    .await;
    let client = RawClient::new(addr);
    let response = client
        .post(tool_call_body(7, "wait_for_release", json!({})))
        .header("user-agent", "busy/1")
        .send()
        .await
        .unwrap();
    let mut stream = std::pin::pin!(response.bytes_stream());
    tools.started().await;

    // A second client, idle from after the call began: by the sweep that
    // ends its run, the busy client's run was idle longer.
    let idle = client
        .post(tool_call_body(1, "echo", json!({"text": "hi"})))
        .header("user-agent", "idle/1")
        .send()
        .await
        .unwrap();
    assert_eq!(idle.status(), 200);
    let _ = idle.bytes().await;
    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    assert_eq!(ingest.ends().len(), 1);
    let idle_run = ingest.ends()[0].0.clone();
    assert_eq!(spans_of(&ingest, &idle_run)[0]["name"], "tool.echo");

    tools.release();
    let mut seen = String::new();
    read_to_end(&mut stream, &mut seen).await;
    assert!(seen.contains("released"), "the client gets its answer");
    wait_for_ends(&ingest, 2).await;
    let ends = ingest.ends();
    let (busy_run, busy_end) = ends.iter().find(|(id, _)| *id != idle_run).unwrap();
    assert_eq!(busy_end["span_count"], 1, "the long call's span counts");
    assert_eq!(
        spans_of(&ingest, busy_run)[0]["name"],
        "tool.wait_for_release"
    );
}

/// The distinct id hook is called for each request that may open a run:
/// every call without a session, and a session's `initialize`, but not the
/// later requests of a session whose run is open.
#[tokio::test]
async fn the_distinct_id_hook_is_asked_only_by_requests_that_may_open_a_run() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let ingest = RecordingIngest::start().await.unwrap();
    let asked = std::sync::Arc::new(AtomicUsize::new(0));
    let config = {
        let asked = std::sync::Arc::clone(&asked);
        config(&ingest).with_distinct_id(move |parts| {
            asked.fetch_add(1, Ordering::Relaxed);
            Some(parts.headers.get("x-user-id")?.to_str().ok()?.to_owned())
        })
    };
    let layer = TrodoLayer::new(config);
    let trodo = layer.trodo();
    let app = Router::new()
        .nest_service("/mcp", mcp(DemoTools::new(), session_manager(None)))
        .nest_service("/stateless", mcp_stateless_json(DemoTools::new()))
        .layer(layer);
    let addr = serve(app).await;
    let with_user = |user: &str| {
        reqwest::Client::builder()
            .default_headers(
                [("x-user-id".parse().unwrap(), user.parse().unwrap())]
                    .into_iter()
                    .collect(),
            )
            .build()
            .unwrap()
    };
    let mut stateless = RawClient::new(addr);
    stateless.url = format!("http://{addr}/stateless");
    stateless.http = with_user("user-sessionless");
    for id in 1..=2 {
        let answer = stateless
            .call_tool(id, "add", json!({"a": 1, "b": 2}))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    assert_eq!(
        asked.load(Ordering::Relaxed),
        2,
        "each call without a session"
    );

    let mut session = RawClient::new(addr);
    session.http = with_user("user-session");
    session.initialize("asker").await;
    for id in 1..=3 {
        session.call_tool(id, "add", json!({"a": 1, "b": 2})).await;
    }
    session.delete().await;
    assert_eq!(
        asked.load(Ordering::Relaxed),
        2 + 1,
        "the initialize only, of the session's 6 requests"
    );

    assert!(trodo.shutdown(WAIT).await);
    // Calls without a key are runs of their own, sent whole.
    let whole_runs = ingest
        .received()
        .into_iter()
        .filter(|r| r.path == "/api/sdk/runs/ingest")
        .map(|r| r.body["run"].clone());
    let mut distinct_ids: Vec<String> = ingest
        .starts()
        .into_iter()
        .chain(whole_runs)
        .map(|run| run["distinct_id"].as_str().unwrap().to_owned())
        .collect();
    distinct_ids.sort_unstable();
    assert_eq!(
        distinct_ids,
        ["user-session", "user-sessionless", "user-sessionless"]
    );
}
