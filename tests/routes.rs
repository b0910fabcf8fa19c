//! Non-MCP routes in a session, and the three ways to choose a span's kind.

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::Response;
use axum::routing::{get, post};
use common::*;
use serde_json::json;
use trodo_tower::{SpanKind, SpanKindLayer, TrodoLayer};

async fn app_with_kinds(ingest: &RecordingIngest) -> RawClient {
    let config = config(ingest)
        .with_method_kind("tools/list", SpanKind::Retrieval)
        .with_tool_kind("add", SpanKind::Llm);
    let notes = Router::new()
        .route(
            "/api/notes/{id}",
            post(|body: String| async move { format!("saved {body}") }),
        )
        .route_layer(SpanKindLayer::new(SpanKind::Agent));
    let app = Router::new()
        .nest_service("/mcp", mcp(DemoTools::new(), session_manager(None)))
        .route("/api/plain", get(|| async { "plain answer" }))
        .merge(notes)
        .layer(TrodoLayer::new(config));
    RawClient::new(serve(app).await)
}

#[tokio::test]
async fn kinds_per_method_per_tool_and_per_route() {
    let ingest = RecordingIngest::start().await.unwrap();
    let mut client = app_with_kinds(&ingest).await;
    client.initialize("kinds-test").await;
    client.request(1, "tools/list", json!({})).await;
    client.call_tool(2, "add", json!({"a": 1, "b": 1})).await;
    client.call_tool(3, "echo", json!({"text": "t"})).await;
    let base = client.url.trim_end_matches("/mcp").to_owned();
    let session = client.session.clone().unwrap();
    let saved = client
        .http
        .post(format!("{base}/api/notes/7"))
        .header("mcp-session-id", &session)
        .body(r#"{"note":"remember"}"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(saved, r#"saved {"note":"remember"}"#);
    let plain = client
        .http
        .get(format!("{base}/api/plain"))
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.text().await.unwrap(), "plain answer");
    // Without the session header a non-MCP route is not part of any run.
    client
        .http
        .get(format!("{base}/api/plain"))
        .send()
        .await
        .unwrap();
    client.delete().await;

    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    let spans: Vec<_> = ingest.spans().into_iter().map(|(_, s)| s).collect();
    let summary: Vec<(&str, &str)> = spans
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("mcp.tools/list", "retrieval"),
            ("tool.add", "llm"),
            ("tool.echo", "tool"),
            ("http.POST /api/notes/{id}", "agent"),
            ("http.GET /api/plain", "tool"),
        ]
    );
    let note = &spans[3];
    assert_eq!(note["input"], r#"{"note":"remember"}"#);
    assert_eq!(note["output"], r#"saved {"note":"remember"}"#);
    assert_eq!(note["attributes"]["http.request.method"], "POST");
    assert_eq!(note["attributes"]["http.route"], "/api/notes/{id}");
    assert_eq!(note["attributes"]["http.response.status_code"], 200);
    assert!(note.get("tool_name").is_none());
    let plain = &spans[4];
    assert!(plain.get("input").is_none(), "a GET has no body");
    assert_eq!(plain["output"], "plain answer");
    let end = &ingest.ends()[0].1;
    assert_eq!(end["span_count"], 5);
    assert_eq!(end["tool_count"], 2, "echo and the plain route are tools");
}

/// One MCP route with a parameter (an endpoint per tenant) is one endpoint
/// however many tenants use it: every tenant's DELETE ends its run, past
/// the number of distinct endpoints the layer remembers.
#[tokio::test]
async fn an_mcp_route_with_a_parameter_is_one_endpoint_for_every_tenant() {
    let ingest = RecordingIngest::start().await.unwrap();
    let app = Router::new()
        .route_service(
            "/t/{tenant}/mcp",
            mcp(DemoTools::new(), session_manager(None)),
        )
        .layer(TrodoLayer::new(config(&ingest)));
    let addr = serve(app).await;
    let tenants = 20;
    for tenant in 0..tenants {
        let mut client = RawClient::new(addr);
        client.url = format!("http://{addr}/t/{tenant}/mcp");
        client.initialize(&format!("tenant-{tenant}")).await;
        client.call_tool(1, "echo", json!({"text": "hi"})).await;
        assert_eq!(client.delete().await.status, 202);
    }
    wait_for_ends(&ingest, tenants).await;
    let ends = ingest.ends();
    assert!(
        ends.iter()
            .all(|(_, end)| end["metadata"]["closed_via"] == "session_deleted"),
        "{ends:?}"
    );
    let names: Vec<String> = ingest
        .spans()
        .iter()
        .map(|(_, span)| span["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["tool.echo".to_owned(); tenants]);
}

/// A body that yields its frames but never says it is over: hyper stops
/// polling it once it sent the exact length it gave, or after trailers.
struct NeverOver {
    frames: std::collections::VecDeque<http_body::Frame<bytes::Bytes>>,
    exact_len: Option<u64>,
}

impl http_body::Body for NeverOver {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        match self.frames.pop_front() {
            Some(frame) => std::task::Poll::Ready(Some(Ok(frame))),
            None => std::task::Poll::Pending,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.exact_len.map_or_else(
            http_body::SizeHint::default,
            http_body::SizeHint::with_exact,
        )
    }
}

/// A response whose body is `frames`, of `exact_len` if given, never over.
fn never_over(
    frames: Vec<http_body::Frame<bytes::Bytes>>,
    exact_len: Option<u64>,
) -> Response<Body> {
    let frames = frames.into();
    Response::new(Body::new(NeverOver { frames, exact_len }))
}

/// Bodies a server drops once it sent what the head promised are complete,
/// not cancelled: the answer to a HEAD request (never sent), a 204, a
/// streamed body with a `content-length` or an exact size hint (hyper stops
/// polling at that length), and one that ends with trailers.
#[tokio::test]
async fn bodies_dropped_once_their_declared_length_went_out_are_complete() {
    let ingest = RecordingIngest::start().await.unwrap();
    let app = Router::new()
        .nest_service("/mcp", mcp(DemoTools::new(), session_manager(None)))
        .route("/api/plain", get(|| async { "plain answer" }))
        .route(
            "/api/empty",
            post(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .route(
            "/api/file",
            get(|| async {
                let chunks = ["hello ", "world"].map(Ok::<_, std::io::Error>);
                Response::builder()
                    .header("content-length", "11")
                    .body(Body::from_stream(futures::stream::iter(chunks)))
                    .unwrap()
            }),
        )
        .route(
            "/api/sized",
            get(|| async {
                let frame = http_body::Frame::data(bytes::Bytes::from("sized"));
                never_over(vec![frame], Some(5))
            }),
        )
        .route(
            "/api/trailers",
            get(|| async {
                let mut trailers = axum::http::HeaderMap::new();
                trailers.insert("x-checksum", "1".parse().unwrap());
                let frames = vec![
                    http_body::Frame::data(bytes::Bytes::from("with trailers")),
                    http_body::Frame::trailers(trailers),
                ];
                never_over(frames, None)
            }),
        )
        .layer(TrodoLayer::new(config(&ingest)));
    let mut client = RawClient::new(serve(app).await);
    client.initialize("lengths-test").await;
    let base = client.url.trim_end_matches("/mcp").to_owned();
    let session = client.session.clone().unwrap();
    let http = &client.http;
    let requests = [
        http.head(format!("{base}/api/plain")),
        http.post(format!("{base}/api/empty")),
        http.get(format!("{base}/api/file")),
        http.get(format!("{base}/api/sized")),
        http.get(format!("{base}/api/trailers")),
    ];
    let mut bodies = Vec::new();
    for request in requests {
        let answer = request
            .header("mcp-session-id", &session)
            .send()
            .await
            .unwrap();
        bodies.push(answer.text().await.unwrap());
    }
    assert_eq!(bodies, ["", "", "hello world", "sized", "with trailers"]);
    client.delete().await;
    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    let spans = ingest.spans();
    for name in [
        "http.HEAD /api/plain",
        "http.POST /api/empty",
        "http.GET /api/file",
        "http.GET /api/sized",
        "http.GET /api/trailers",
    ] {
        let span = &spans.iter().find(|(_, s)| s["name"] == name).unwrap().1;
        assert_eq!(span["status"], "ok", "{span}");
    }
    assert_eq!(ingest.ends()[0].1["error_count"], 0);
}

/// Only the MCP endpoint's answers are read past the capture limit: a
/// large JSON answer of another route is read up to the limit, so the
/// redaction hook sees its first part as a string.
#[tokio::test]
async fn another_routes_json_is_read_only_up_to_the_capture_limit() {
    let ingest = RecordingIngest::start().await.unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let noted = std::sync::Arc::clone(&seen);
    let config = config(&ingest).with_redaction(move |value: &mut serde_json::Value| {
        let text = value.to_string();
        if text.contains("blob") {
            noted.lock().unwrap().push(value.is_string());
        }
    });
    let blob = "x".repeat(70_000);
    let app = Router::new()
        .nest_service("/mcp", mcp(DemoTools::new(), session_manager(None)))
        .route(
            "/api/big",
            get(move || {
                let body = json!({ "blob": blob }).to_string();
                async move {
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(Body::from(body))
                        .unwrap()
                }
            }),
        )
        .layer(TrodoLayer::new(config));
    let mut client = RawClient::new(serve(app).await);
    client.initialize("big-json-test").await;
    let base = client.url.trim_end_matches("/mcp").to_owned();
    let session = client.session.clone().unwrap();
    let answer = client
        .http
        .get(format!("{base}/api/big"))
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.text().await.unwrap().len(), 70_011);
    client.delete().await;
    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [true],
        "the hook saw the cut body as a string"
    );
    let spans = ingest.spans();
    let span = &spans
        .iter()
        .find(|(_, s)| s["name"] == "http.GET /api/big")
        .unwrap()
        .1;
    assert_eq!(span["attributes"]["output_truncated"], true);
    assert_eq!(span["output"].as_str().unwrap().chars().count(), 64_000);
}

/// JSON-RPC sent to paths that read it and refuse it (a gateway's
/// wildcard route answering a client that tries URLs, or a scanner) does
/// not fill the endpoints the layer remembers: the real endpoint, answered
/// later, is still learnt, and its DELETE ends the run.
#[tokio::test]
async fn refused_json_rpc_on_other_paths_does_not_hide_the_endpoint() {
    let ingest = RecordingIngest::start().await.unwrap();
    let refuse = |body: String| async move { (axum::http::StatusCode::NOT_FOUND, body) };
    let app = Router::new()
        .nest_service("/mcp", mcp(DemoTools::new(), session_manager(None)))
        .route("/{*rest}", post(refuse))
        .layer(TrodoLayer::new(config(&ingest)));
    let mut client = RawClient::new(serve(app).await);
    let base = client.url.trim_end_matches("/mcp").to_owned();
    for probe in 0..20 {
        let answer = client
            .http
            .post(format!("{base}/probe{probe}"))
            .header("content-type", "application/json")
            .body(request_body(1, "tools/list", json!({})))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 404);
    }
    client.initialize("probing-client").await;
    client.call_tool(2, "echo", json!({"text": "t"})).await;
    assert_eq!(client.delete().await.status, 202);
    wait_for_ends(&ingest, 1).await;
    let ends = ingest.ends();
    assert_eq!(ends[0].1["metadata"]["closed_via"], "session_deleted");
    assert_eq!(ends[0].1["span_count"], 1);
}
