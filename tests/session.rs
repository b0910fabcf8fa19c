//! A real rmcp client session through the layer, checked on the wire of a
//! recording ingest server: paths, headers, every field, order.

mod common;

use std::sync::{Arc, Mutex};

use axum::Router;
use common::*;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::transport::StreamableHttpClientTransport;
use serde_json::{Value, json};
use trodo_tower::TrodoLayer;

fn args(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().cloned().unwrap()
}

#[tokio::test]
async fn rmcp_client_session_becomes_one_run_with_exact_wire() {
    let ingest = RecordingIngest::start().await.unwrap();
    let issued = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&issued);
    let app = Router::new()
        .nest_service("/mcp", mcp(DemoTools::new(), session_manager(None)))
        .layer(TrodoLayer::new(config(&ingest)))
        // Outside the layer: notes the session ids the server hands out.
        .layer(axum::middleware::map_response(
            move |res: axum::response::Response| {
                let seen = Arc::clone(&seen);
                async move {
                    if let Some(id) = res.headers().get("mcp-session-id") {
                        seen.lock().unwrap().push(id.to_str().unwrap().to_owned());
                    }
                    res
                }
            },
        ));
    let addr = serve(app).await;

    let transport = StreamableHttpClientTransport::from_uri(format!("http://{addr}/mcp"));
    let client = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("wire-test", "9.9.9"),
    )
    .serve(transport)
    .await
    .unwrap();
    let tools = client.list_tools(Default::default()).await.unwrap();
    assert_eq!(tools.tools.len(), 6);
    let echo = client
        .call_tool(
            CallToolRequestParams::new("echo").with_arguments(args(json!({"text": "hi there"}))),
        )
        .await
        .unwrap();
    assert_eq!(echo.is_error, Some(false));
    client
        .call_tool(CallToolRequestParams::new("add").with_arguments(args(json!({"a": 2, "b": 40}))))
        .await
        .unwrap();
    let failed = client
        .call_tool(CallToolRequestParams::new("fail"))
        .await
        .unwrap();
    assert_eq!(failed.is_error, Some(true));
    let missing = client
        .call_tool(CallToolRequestParams::new("no_such_tool"))
        .await;
    assert!(missing.is_err());
    client.cancel().await.unwrap(); // DELETE

    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    let session_id = issued
        .lock()
        .unwrap()
        .first()
        .cloned()
        .expect("a session id");
    let received = ingest.received();

    // Every call: POST JSON with the site id; start first, end last.
    for r in &received {
        assert_eq!(r.site_id.as_deref(), Some("test-site"), "{}", r.path);
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/json"),
            "{}",
            r.path
        );
    }
    let starts = ingest.starts();
    assert_eq!(starts.len(), 1);
    let run = &starts[0];
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    assert_eq!(uuid::Uuid::parse_str(&run_id).unwrap().get_version_num(), 4);
    let paths: Vec<String> = received.iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths.first().map(String::as_str),
        Some("/api/sdk/runs/start")
    );
    assert_eq!(
        paths.last().unwrap(),
        &format!("/api/sdk/runs/{run_id}/end")
    );
    assert!(
        paths[1..paths.len() - 1]
            .iter()
            .all(|p| *p == format!("/api/sdk/runs/{run_id}/spans")),
        "{paths:?}"
    );

    // The run.
    assert_eq!(
        keys(run),
        [
            "agent_name",
            "conversation_id",
            "input",
            "metadata",
            "run_id",
            "started_at",
            "status"
        ]
    );
    assert_eq!(run["agent_name"], "mcp_server");
    assert_eq!(run["status"], "running");
    assert_eq!(run["conversation_id"], session_id.as_str());
    assert!(run["started_at"].as_str().unwrap().ends_with('Z'));
    let init = json_of(&run["input"]);
    assert_eq!(init["method"], "initialize");
    assert_eq!(init["params"]["clientInfo"]["name"], "wire-test");
    assert_eq!(
        run["metadata"],
        json!({
            "transport": "streamable_http",
            "era": "sessions",
            "run_key_source": "session",
            "client_name": "wire-test",
            "client_version": "9.9.9",
            "requested_protocol_version": init["params"]["protocolVersion"],
            "protocol_version": "2025-11-25",
            "server_name": "trodo-demo",
            "server_version": "0.1.0",
        })
    );

    // The spans, in order.
    let spans = spans_of(&ingest, &run_id);
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "mcp.tools/list",
            "tool.echo",
            "tool.add",
            "tool.fail",
            "tool.no_such_tool"
        ]
    );
    for span in &spans {
        assert_eq!(span["run_id"], run_id.as_str());
        assert_eq!(
            uuid::Uuid::parse_str(span["span_id"].as_str().unwrap())
                .unwrap()
                .get_version_num(),
            4
        );
        assert!(span["started_at"].as_str().unwrap() <= span["ended_at"].as_str().unwrap());
        assert!(span["duration_ms"].is_u64());
        let input = json_of(&span["input"]);
        let output = json_of(&span["output"]);
        assert_eq!(output["id"], input["id"], "the output answers the input");
        let attributes = &span["attributes"];
        assert_eq!(attributes["mcp.method.name"], input["method"]);
        assert_eq!(attributes["jsonrpc.request.id"], input["id"].to_string());
        assert_eq!(attributes["mcp.protocol.version"], "2025-11-25");
        assert_eq!(attributes["http.response.status_code"], 200);
        assert_eq!(attributes["input_truncated"], false);
        assert_eq!(attributes["output_truncated"], false);
        assert_eq!(
            attributes["http.request.body.size"],
            span["input"].as_str().unwrap().len()
        );
    }
    let list = &spans[0];
    assert_eq!(list["kind"], "generic");
    assert_eq!(list["status"], "ok");
    assert!(list.get("tool_name").is_none());
    assert_eq!(
        json_of(&list["output"])["result"]["tools"]
            .as_array()
            .unwrap()
            .len(),
        6
    );

    let echo = &spans[1];
    assert_eq!(
        (
            echo["kind"].as_str(),
            echo["tool_name"].as_str(),
            echo["status"].as_str()
        ),
        (Some("tool"), Some("echo"), Some("ok"))
    );
    assert_eq!(
        json_of(&echo["input"])["params"]["arguments"],
        json!({"text": "hi there"})
    );
    assert_eq!(
        json_of(&echo["output"])["result"]["content"][0]["text"],
        "echo: hi there"
    );
    assert_eq!(
        json_of(&spans[2]["output"])["result"]["content"][0]["text"],
        "42"
    );

    let fail = &spans[3];
    assert_eq!(fail["status"], "error");
    assert_eq!(fail["error_type"], "tool_error");
    assert_eq!(fail["error_message"], "this tool always fails");

    let missing = &spans[4];
    assert_eq!(missing["status"], "error");
    assert_eq!(missing["error_type"], "caller_error");
    assert_eq!(missing["attributes"]["jsonrpc.error.code"], -32602);
    assert_eq!(missing["tool_name"], "no_such_tool");

    // The end: the true totals.
    let ends = ingest.ends();
    assert_eq!(ends.len(), 1);
    let (end_run, end) = &ends[0];
    assert_eq!(end_run, &run_id);
    assert_eq!(
        keys(end),
        [
            "ended_at",
            "error_count",
            "metadata",
            "span_count",
            "status",
            "tool_count",
            "total_cost",
            "total_tokens_in",
            "total_tokens_out"
        ]
    );
    assert_eq!(end["status"], "ok");
    assert_eq!(end["metadata"], json!({"closed_via": "session_deleted"}));
    assert_eq!(
        (
            end["span_count"].as_u64(),
            end["tool_count"].as_u64(),
            end["error_count"].as_u64()
        ),
        (Some(5), Some(4), Some(2))
    );
    assert_eq!(
        (
            end["total_tokens_in"].as_u64(),
            end["total_tokens_out"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(end["total_cost"], 0.0);
}

#[tokio::test]
async fn progress_events_reach_the_client_before_the_tool_finishes() {
    let ingest = RecordingIngest::start().await.unwrap();
    let (tools, trodo, stream) = call_waiting_tool(&ingest, 7).await;
    let mut seen = String::new();
    // The tool is blocked until released: the progress event must already be here.
    let mut stream = std::pin::pin!(stream);
    read_until(&mut stream, &mut seen, "notifications/progress").await;
    assert!(!seen.contains("released"), "{seen}");
    // Everything recorded so far is delivered: the session's start, no span.
    assert!(trodo.flush(WAIT).await);
    assert_eq!(ingest.starts().len(), 1);
    assert!(ingest.spans().is_empty(), "no span before the answer");
    tools.release();
    read_to_end(&mut stream, &mut seen).await;
    assert!(seen.contains("released"));

    let received = ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/spans")))
        .await
        .unwrap();
    let span = ingest.spans()[0].1.clone();
    assert_eq!(span["name"], "tool.wait_for_release");
    assert_eq!(span["status"], "ok");
    let output = json_of(&span["output"]);
    assert_eq!(
        output["id"], 7,
        "the output is the response, not the progress event"
    );
    assert_eq!(output["result"]["content"][0]["text"], "released");
    assert_eq!(received[0].path, "/api/sdk/runs/start");
}

#[tokio::test]
async fn an_answer_after_its_run_ended_opens_no_run() {
    let ingest = RecordingIngest::start().await.unwrap();
    let (tools, trodo, stream) = call_waiting_tool(&ingest, 7).await;
    let mut seen = String::new();
    let mut stream = std::pin::pin!(stream);
    read_until(&mut stream, &mut seen, "notifications/progress").await;
    assert!(trodo.flush(WAIT).await);
    let run_id = ingest.starts()[0]["run_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // The run ends while the call is under way; then the call answers.
    trodo.end_run(run_id, trodo_tower::EndRun::ok());
    tools.release();
    read_to_end(&mut stream, &mut seen).await;
    assert!(seen.contains("released"), "the client gets its answer");

    assert!(trodo.flush(WAIT).await);
    assert_eq!(ingest.starts().len(), 1, "no run is resumed for the answer");
    assert_eq!(ingest.ends().len(), 1);
    assert_eq!(ingest.ends()[0].1["span_count"], 0);
    assert!(ingest.spans().is_empty(), "the late span goes nowhere");
    assert_eq!(trodo.open_runs(), 0);
}

/// A JSON MCP server in a few lines: `initialize` opens the session
/// `session_id`, `tools/call` answers once `release` is notified (telling
/// `reached` it started), DELETE ends the session. Its answers are plain
/// JSON, so a call's response head comes only when the call is done.
fn json_session_server(
    session_id: &'static str,
    release: Arc<tokio::sync::Notify>,
    reached: tokio::sync::mpsc::Sender<()>,
) -> Router {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::post;
    let answer = move |body: axum::body::Bytes| {
        let (release, reached) = (Arc::clone(&release), reached.clone());
        async move {
            let message: Value = serde_json::from_slice(&body).unwrap();
            let json = [(header::CONTENT_TYPE, "application/json")];
            match message["method"].as_str() {
                Some("initialize") => (
                    [("mcp-session-id", session_id)],
                    json,
                    json!({"jsonrpc": "2.0", "id": message["id"], "result": {
                        "protocolVersion": "2025-11-25", "capabilities": {},
                        "serverInfo": {"name": "json-server", "version": "1"}}})
                    .to_string(),
                )
                    .into_response(),
                Some("tools/call") => {
                    reached.send(()).await.unwrap();
                    release.notified().await;
                    (
                        json,
                        json!({"jsonrpc": "2.0", "id": message["id"], "result": {
                            "content": [{"type": "text", "text": "done"}], "isError": false}})
                        .to_string(),
                    )
                        .into_response()
                }
                _ => StatusCode::ACCEPTED.into_response(),
            }
        }
    };
    Router::new().route("/mcp", post(answer).delete(|| async { StatusCode::OK }))
}

#[tokio::test]
async fn an_answer_whose_head_comes_after_its_run_ended_opens_no_run() {
    let ingest = RecordingIngest::start().await.unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let (reached, mut call_started) = tokio::sync::mpsc::channel(1);
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    let app = json_session_server("s-1", Arc::clone(&release), reached).layer(layer);
    let mut client = RawClient::new(serve(app).await);
    assert_eq!(client.initialize("json-test").await.status, 200);
    assert_eq!(client.session.as_deref(), Some("s-1"));

    let call = {
        let request = client.post(tool_call_body(1, "slow", json!({})));
        tokio::spawn(async move { read(request.send().await.unwrap()).await })
    };
    call_started.recv().await.unwrap();
    // The session ends while the call is under way; then the call answers.
    assert_eq!(client.delete().await.status, 200);
    release.notify_one();
    let answer = call.await.unwrap();
    assert_eq!(answer.status, 200);
    assert!(answer.text().contains("done"), "the client gets its answer");

    assert!(trodo.flush(WAIT).await);
    assert_eq!(ingest.starts().len(), 1, "no run is resumed for the answer");
    assert_eq!(ingest.ends().len(), 1);
    assert_eq!(
        ingest.ends()[0].1["metadata"]["closed_via"],
        "session_deleted"
    );
    assert!(ingest.spans().is_empty(), "the late span goes nowhere");
    assert_eq!(trodo.open_runs(), 0);
}

/// Session ids may be long (a signed token, say): one of 2,000 characters
/// is a session like any other.
#[tokio::test]
async fn a_long_session_id_is_a_session() {
    let long_id: &'static str =
        Box::leak(format!("eyJhbGciOiJIUzI1NiJ9.{}.sig", "x".repeat(1_970)).into_boxed_str());
    let ingest = RecordingIngest::start().await.unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    release.notify_one();
    let (reached, _call_started) = tokio::sync::mpsc::channel(1);
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    let app = json_session_server(long_id, release, reached).layer(layer);
    let mut client = RawClient::new(serve(app).await);
    client.initialize("long-id").await;
    assert_eq!(client.session.as_deref(), Some(long_id));
    assert_eq!(client.call_tool(1, "slow", json!({})).await.status, 200);
    assert_eq!(client.delete().await.status, 200);

    assert!(trodo.flush(WAIT).await);
    let starts = ingest.starts();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0]["conversation_id"], long_id);
    let ends = ingest.ends();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].1["metadata"]["closed_via"], "session_deleted");
    assert_eq!(ends[0].1["span_count"], 1);
}

/// A small capture limit cuts what is kept, not what is understood: the
/// `initialize` still opens the run with the client's identity, and calls
/// are still named from their bodies.
#[tokio::test]
async fn a_small_capture_limit_still_opens_and_names_everything() {
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest).with_capture_limit(100).unwrap());
    let trodo = layer.trodo();
    let mut client = RawClient::new(serve_demo(DemoTools::new(), layer).await);
    client.initialize("small-capture").await;
    client
        .call_tool(1, "echo", json!({"text": "y".repeat(500)}))
        .await;
    assert_eq!(client.delete().await.status, 202);
    assert!(trodo.flush(WAIT).await);

    let starts = ingest.starts();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0]["metadata"]["client_name"], "small-capture");
    assert!(starts[0].get("metadata").unwrap().get("resumed").is_none());
    assert_eq!(starts[0]["input"].as_str().unwrap().chars().count(), 100);
    let spans = ingest.spans();
    assert_eq!(spans.len(), 1);
    let call = &spans[0].1;
    assert_eq!(call["name"], "tool.echo");
    assert_eq!(call["kind"], "tool");
    assert_eq!(call["attributes"]["input_truncated"], true);
    assert_eq!(call["input"].as_str().unwrap().chars().count(), 100);
    assert_eq!(
        ingest.ends()[0].1["metadata"]["closed_via"],
        "session_deleted"
    );
}

/// The `initialize` of a session is no span of its own (it fills the run's
/// `start`), so the child spans its handler makes go into the run it opens
/// without a parent, once the start is complete.
#[tokio::test]
async fn child_spans_of_the_initialize_handler_go_into_the_session_run() {
    use axum::Extension;
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::post;
    use trodo_tower::{RequestSpan, SpanGuard, SpanKind};

    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    let (escape, mut escaped) = tokio::sync::mpsc::unbounded_channel::<SpanGuard>();
    let (keep, mut kept) = tokio::sync::mpsc::unbounded_channel::<RequestSpan>();
    let answer = move |Extension(span): Extension<RequestSpan>, body: axum::body::Bytes| {
        let (escape, keep) = (escape.clone(), keep.clone());
        async move {
            let message: Value = serde_json::from_slice(&body).unwrap();
            let json = [(header::CONTENT_TYPE, "application/json")];
            let result = match message["method"].as_str() {
                Some("initialize") => {
                    span.child(SpanKind::Retrieval, "auth.lookup").finish();
                    escape.send(span.child(SpanKind::Llm, "auth.late")).unwrap();
                    keep.send(span.clone()).unwrap();
                    json!({"protocolVersion": "2025-11-25", "capabilities": {},
                           "serverInfo": {"name": "json-server", "version": "1"}})
                }
                Some("tools/call") => json!({"content": [], "isError": false}),
                _ => return StatusCode::ACCEPTED.into_response(),
            };
            let body = json!({"jsonrpc": "2.0", "id": message["id"], "result": result});
            ([("mcp-session-id", "s-init")], json, body.to_string()).into_response()
        }
    };
    let app = Router::new()
        .route("/mcp", post(answer).delete(|| async { StatusCode::OK }))
        .layer(layer);
    let mut client = RawClient::new(serve(app).await);
    assert_eq!(client.initialize("init-children").await.status, 200);
    escaped.recv().await.unwrap().finish();
    assert_eq!(client.call_tool(1, "work", json!({})).await.status, 200);
    assert_eq!(client.delete().await.status, 200);
    wait_for_ends(&ingest, 1).await;

    let starts = ingest.starts();
    assert_eq!(starts.len(), 1);
    let run_id = starts[0]["run_id"].as_str().unwrap();
    assert_eq!(
        starts[0]["metadata"]["server_name"], "json-server",
        "the start waited for the answer: {}",
        starts[0]
    );
    let spans = spans_of(&ingest, run_id);
    let mut names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["auth.late", "auth.lookup", "tool.work"]);
    for span in &spans {
        assert_eq!(span["run_id"], run_id);
        assert!(span.get("parent_span_id").is_none(), "{span}");
    }
    assert_eq!(ingest.ends()[0].1["span_count"], 3);
    assert_eq!(trodo.delivery_counters().dropped(), 0);
    // Its span, never sent, is no one's parent.
    let initialize = kept.recv().await.unwrap();
    assert_eq!(initialize.run_id().unwrap().to_string(), run_id);
    assert!(initialize.propagation_headers().is_empty());
}

/// An `initialize` the server refuses opens no session, even if its answer
/// carries a session header: the client will not use that session, so its
/// run would wait for the idle timeout.
#[tokio::test]
async fn a_refused_initialize_with_a_session_header_opens_no_session_run() {
    use axum::http::StatusCode;
    use axum::routing::post;

    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    // It reads the request, as a server does (the layer reads it alongside).
    let refuse = |_request: String| async {
        (
            StatusCode::UNAUTHORIZED,
            [("mcp-session-id", "s-refused")],
            "sign in first",
        )
    };
    let app = Router::new().route("/mcp", post(refuse)).layer(layer);
    let client = RawClient::new(serve(app).await);
    let answer = client.send(initialize_body("refused")).await;
    assert_eq!(answer.status, 401);
    assert_eq!(trodo.open_runs(), 0, "no session run waits for a DELETE");
    assert!(trodo.flush(WAIT).await);
    // It is recorded as any refused initialize is: a call of its own.
    let received = ingest.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].path, "/api/sdk/runs/ingest");
    let whole = &received[0].body;
    assert!(whole["run"].get("conversation_id").is_none(), "{whole}");
    assert_eq!(whole["spans"][0]["name"], "mcp.initialize");
    assert_eq!(
        whole["spans"][0]["attributes"]["http.response.status_code"],
        401
    );
}

/// An rmcp server whose `initialize` refuses every client.
#[derive(Clone)]
struct Refusing;

impl rmcp::ServerHandler for Refusing {
    async fn initialize(
        &self,
        _request: rmcp::model::InitializeRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::InitializeResult, rmcp::ErrorData> {
        // Longer than an error text is kept (4,000 characters).
        let message = format!("unsupported protocol version {}", "x".repeat(5_000));
        Err(rmcp::ErrorData::invalid_params(message, None))
    }
}

/// An `initialize` answered with a JSON-RPC error ends its run at once, as
/// an error: rmcp makes the session before its handler answers, so the
/// answer carries a session id, but the client will not use the session.
#[tokio::test]
async fn an_initialize_answered_with_an_error_ends_its_run_at_once() {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };

    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    let service = StreamableHttpService::new(
        || Ok(Refusing),
        session_manager(None),
        StreamableHttpServerConfig::default(),
    );
    let app = Router::new().nest_service("/mcp", service).layer(layer);
    let client = RawClient::new(serve(app).await);
    let answer = client.send(initialize_body("refused")).await;
    assert_eq!(answer.status, 200);
    assert!(answer.headers.contains_key("mcp-session-id"));
    assert!(
        answer.text().contains("unsupported protocol version"),
        "{}",
        answer.text()
    );
    wait_for_ends(&ingest, 1).await;

    assert_eq!(trodo.open_runs(), 0);
    let starts = ingest.starts();
    assert_eq!(starts.len(), 1);
    assert_eq!(
        starts[0]["conversation_id"],
        answer.headers["mcp-session-id"].to_str().unwrap()
    );
    let ends = ingest.ends();
    assert_eq!(ends[0].0, starts[0]["run_id"].as_str().unwrap());
    let end = &ends[0].1;
    assert_eq!(
        (
            &end["status"],
            &end["metadata"]["closed_via"],
            &end["span_count"]
        ),
        (&json!("error"), &json!("initialize_failed"), &json!(0))
    );
    let summary = end["error_summary"].as_str().unwrap();
    assert!(
        summary.starts_with("unsupported protocol version x"),
        "{summary}"
    );
    assert_eq!(summary.chars().count(), 4_000);
}

/// A session re-initialized in place (its server answering with an error
/// and the same session id) keeps its run: only a run the refused
/// `initialize` opened is ended for it.
#[tokio::test]
async fn a_refused_initialize_of_an_open_session_leaves_its_run_open() {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::post;
    use std::sync::atomic::{AtomicBool, Ordering};

    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    let initialized = Arc::new(AtomicBool::new(false));
    let answer = move |request: String| {
        let initialized = Arc::clone(&initialized);
        async move {
            let request: Value = serde_json::from_str(&request).unwrap();
            let id = &request["id"];
            if request.get("id").is_none() {
                return StatusCode::ACCEPTED.into_response();
            }
            let body = match request["method"].as_str() {
                Some("initialize") if initialized.swap(true, Ordering::Relaxed) => {
                    json!({"jsonrpc": "2.0", "id": id,
                           "error": {"code": -32600, "message": "already initialized"}})
                }
                Some("initialize") => json!({"jsonrpc": "2.0", "id": id, "result": {
                    "protocolVersion": "2025-11-25", "capabilities": {},
                    "serverInfo": {"name": "json-server", "version": "1"}}}),
                _ => json!({"jsonrpc": "2.0", "id": id, "result": {"content": []}}),
            };
            (
                [("mcp-session-id", "s-open")],
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response()
        }
    };
    let app = Router::new().route("/mcp", post(answer)).layer(layer);
    let mut client = RawClient::new(serve(app).await);
    assert_eq!(client.initialize("again").await.status, 200);
    assert_eq!(client.call_tool(1, "work", json!({})).await.status, 200);
    let again = client.send(initialize_body("again")).await;
    assert!(again.text().contains("already initialized"));
    assert!(trodo.flush(WAIT).await);

    assert_eq!(trodo.open_runs(), 1, "the session's run is still open");
    assert!(ingest.ends().is_empty(), "{:?}", ingest.ends());
    assert_eq!(ingest.starts().len(), 1);
}
