//! The client gets exactly what the inner service sent; bad input passes
//! through untouched; telemetry stays bounded and never reaches the client.

mod common;

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::routing::{get, post};
use axum::{Extension, Router};
use common::*;
use serde_json::json;
use trodo_tower::{RequestSpan, SpanKind, TrodoConfig, TrodoLayer};
use uuid::Uuid;

const TEN_MB: usize = 10 * 1024 * 1024;

/// The demo MCP server plus an echo route and a 10 MB route, bare or layered.
async fn server(layer: Option<TrodoLayer>) -> SocketAddr {
    let app = Router::new()
        .nest_service("/mcp", mcp(DemoTools::new(), session_manager(None)))
        .route("/echo", post(|body: Bytes| async move { body }))
        .route("/big", get(|| async { "x".repeat(TEN_MB) }));
    serve(match layer {
        Some(layer) => app.layer(layer),
        None => app,
    })
    .await
}

/// One fixed session, every answer's status, headers that do not vary, and body bytes.
async fn conversation(addr: SocketAddr) -> Vec<(u16, Option<String>, Bytes)> {
    let mut client = RawClient::new(addr);
    let mut answers = Vec::new();
    let mut keep = |a: Answer| {
        let content_type = a
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        answers.push((a.status, content_type, a.body));
    };
    keep(client.initialize("bytes-test").await);
    keep(client.request(1, "tools/list", json!({})).await);
    keep(
        client
            .call_tool(2, "echo", json!({"text": "héllo ✓"}))
            .await,
    );
    keep(
        client
            .call_tool(3, "slow_progress", json!({"steps": 2, "delay_ms": 1}))
            .await,
    );
    keep(client.call_tool(4, "fail", json!({})).await);
    keep(client.send("{not json").await);
    keep(client.send(&b"\xff\xfe\x00 not utf-8"[..]).await);
    keep(
        client
            .send(format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)))
            .await,
    );
    keep(client.send("").await);
    keep(client.delete().await);
    answers
}

/// Runs the same conversation against a bare and a layered server and
/// asserts the answers are identical, byte for byte.
async fn assert_same_answers_as_bare(layer: TrodoLayer) {
    let layered = conversation(server(Some(layer)).await).await;
    let bare = conversation(server(None).await).await;
    assert_eq!(bare, layered);
}

#[tokio::test]
async fn responses_are_byte_identical_with_and_without_the_layer() {
    let ingest = RecordingIngest::start().await.unwrap();
    let bare = conversation(server(None).await).await;
    let layered = conversation(server(Some(TrodoLayer::new(config(&ingest)))).await).await;
    assert_eq!(bare.len(), layered.len());
    for (i, (b, l)) in bare.iter().zip(&layered).enumerate() {
        assert_eq!(b, l, "answer {i} differs");
    }
    // The malformed requests were answered by rmcp itself, with 4xx.
    assert!(bare[5..9].iter().all(|answer| answer.0 >= 400), "{bare:?}");
    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    let end = &ingest.ends()[0].1;
    assert_eq!(
        end["span_count"], 8,
        "tools/list, three tool calls, three malformed bodies and an empty one"
    );
    assert_eq!(
        end["error_count"], 5,
        "the failing tool and the malformed and empty bodies"
    );
    let spans: Vec<_> = ingest.spans().into_iter().map(|(_, s)| s).collect();
    assert_eq!(spans.len(), 8);
    for (span, answer) in spans[4..].iter().zip(&bare[5..9]) {
        assert_eq!(span["name"], "mcp.invalid_message");
        assert_eq!(span["status"], "error");
        assert_eq!(span["error_type"], "invalid_message");
        assert_eq!(span["attributes"]["http.response.status_code"], answer.0);
        assert_eq!(
            span["output"].as_str().unwrap().as_bytes(),
            &answer.2[..],
            "the server's answer"
        );
    }
    assert_eq!(spans[4]["input"], "{not json");
    assert_eq!(spans[7]["error_message"], "the request body is empty");
    assert!(spans[7].get("input").is_none(), "{:#}", spans[7]);
}

#[tokio::test]
async fn malformed_and_non_utf8_bodies_reach_the_inner_service_untouched() {
    let ingest = RecordingIngest::start().await.unwrap();
    let addr = server(Some(TrodoLayer::new(config(&ingest)))).await;
    let mut client = RawClient::new(addr);
    client.initialize("bytes-test").await;
    let session = client.session.clone().unwrap();
    let bodies: [&[u8]; 3] = [
        b"{not json",
        b"\xff\xfe\x00\xc3 bytes",
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":",
    ];
    for body in bodies {
        let echoed = client
            .http
            .post(format!("http://{addr}/echo"))
            .header("mcp-session-id", &session)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&echoed[..], body);
    }
    client.delete().await;
    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    let spans: Vec<_> = ingest.spans().into_iter().map(|(_, s)| s).collect();
    assert_eq!(spans.len(), 3);
    assert_eq!(spans[0]["input"], "{not json");
    assert_eq!(
        spans[1]["input"], "\u{fffd}\u{fffd}\u{0}\u{fffd} bytes",
        "lossy text of invalid UTF-8"
    );
    assert_eq!(spans[1]["attributes"]["http.request.body.size"], 10);
    assert!(spans.iter().all(|s| s["name"] == "http.POST /echo"));
}

/// A malformed body is read whole to be understood, however small the
/// capture limit that cuts its input: it is an invalid message, not one
/// too large to read (`mcp.request`, which is not an error).
#[tokio::test]
async fn a_malformed_body_longer_than_the_capture_limit_is_an_invalid_message() {
    let ingest = RecordingIngest::start().await.unwrap();
    let config = config(&ingest).with_capture_limit(16).unwrap();
    let mut client = RawClient::new(server(Some(TrodoLayer::new(config))).await);
    client.initialize("long-malformed-test").await;
    let body = "{not json, and longer than the capture limit";
    assert!(client.send(body).await.status >= 400);
    client.delete().await;
    wait_for_ends(&ingest, 1).await;
    let spans: Vec<_> = ingest.spans().into_iter().map(|(_, s)| s).collect();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["name"], "mcp.invalid_message");
    assert_eq!(spans[0]["status"], "error");
    assert_eq!(spans[0]["error_type"], "invalid_message");
    assert_eq!(spans[0]["input"], &body[..16]);
    assert_eq!(spans[0]["attributes"]["input_truncated"], true);
}

#[tokio::test]
async fn a_10_mb_response_streams_whole_with_a_bounded_capture() {
    let ingest = RecordingIngest::start().await.unwrap();
    let addr = server(Some(TrodoLayer::new(config(&ingest)))).await;
    let mut client = RawClient::new(addr);
    client.initialize("big-test").await;
    let body = client
        .http
        .get(format!("http://{addr}/big"))
        .header("mcp-session-id", client.session.as_deref().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), TEN_MB);
    assert!(body.iter().all(|b| *b == b'x'));
    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/spans")))
        .await
        .unwrap();
    let span = &ingest.spans()[0].1;
    assert_eq!(span["output"].as_str().unwrap().chars().count(), 64_000);
    assert_eq!(span["attributes"]["output_truncated"], true);
    assert_eq!(span["attributes"]["http.response.body.size"], TEN_MB);
}

/// The client goes away before the answer. Its stream carried an event id,
/// so it might resume it (see tests/resumption.rs): the call waits for
/// that, for the idle timeout, and is then sent as cancelled.
#[tokio::test]
async fn client_gone_mid_stream_gives_a_cancelled_span() {
    use futures::StreamExt;
    let ingest = RecordingIngest::start().await.unwrap();
    let tools = DemoTools::new();
    let config = config(&ingest).with_idle_timeout(std::time::Duration::from_millis(200));
    let mut client =
        RawClient::new(serve_demo(tools.clone(), TrodoLayer::new(config.unwrap())).await);
    client.initialize("gone-test").await;
    let response = client.post(waiting_call_body(9)).send().await.unwrap();
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    tools.started().await; // the tool runs: the answer is still to come
    drop(stream); // the client goes away before the answer

    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/spans")))
        .await
        .unwrap();
    tools.release();
    let span = &ingest.spans()[0].1;
    assert_eq!(span["name"], "tool.wait_for_release");
    assert_eq!(span["status"], "error");
    assert_eq!(span["error_type"], "cancelled");
    assert!(span.get("output").is_none());
}

#[tokio::test]
async fn a_failing_ingest_never_changes_a_response() {
    let ingest = RecordingIngest::start().await.unwrap();
    ingest.fail_next(1_000, 400);
    let layer = TrodoLayer::new(config(&ingest));
    assert_same_answers_as_bare(layer.clone()).await;
    assert!(layer.trodo().flush(WAIT).await);
    let counters = layer.trodo().delivery_counters();
    assert_eq!(counters.sent, 0);
    assert!(
        counters.failed >= 3,
        "at least start, spans and end were rejected: {counters:?}"
    );
    assert_eq!(counters.retried, 0, "a 400 is not retried");
}

#[tokio::test]
async fn an_unreachable_ingest_never_changes_a_response() {
    // Nothing listens on this port: every delivery fails with a network error.
    let config = TrodoConfig::new()
        .with_site_id("s")
        .unwrap()
        .with_api_base("http://127.0.0.1:9")
        .unwrap();
    assert_same_answers_as_bare(TrodoLayer::new(config)).await;
}

#[tokio::test]
async fn without_a_site_id_the_layer_prints_and_serves_the_same() {
    let layer = TrodoLayer::new(TrodoConfig::new());
    assert_same_answers_as_bare(layer.clone()).await;
    assert!(layer.trodo().flush(WAIT).await);
    let counters = layer.trodo().delivery_counters();
    assert_eq!(counters.failed, 0);
    assert!(
        counters.sent >= 3,
        "start, spans and end printed: {counters:?}"
    );
}

#[tokio::test]
async fn switched_off_the_layer_serves_the_same_sends_nothing_and_lends_handlers_a_span() {
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest).with_enabled(false));
    assert_same_answers_as_bare(layer.clone()).await;

    // A handler that takes the request's span, as the README shows.
    let answer = |Extension(span): Extension<RequestSpan>| async move {
        let mut llm = span.child(SpanKind::Llm, "llm.answer");
        llm.set_tokens(10, 2);
        llm.finish();
        format!("{} {}", span.span_id(), span.propagation_headers().len())
    };
    let app = Router::new()
        .route("/answer", post(answer))
        .layer(layer.clone());
    let response = reqwest::Client::new()
        .post(format!("http://{}/answer", serve(app).await))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), format!("{} 0", Uuid::nil()));

    assert!(layer.trodo().flush(WAIT).await);
    assert_eq!(layer.trodo().delivery_counters().sent, 0);
    assert!(ingest.received().is_empty(), "{:?}", ingest.received());
}

/// A redaction hook that panics costs the values it saw, never an answer:
/// the same conversation as bare, read on the delivery thread and, with a
/// session store, on the requests' own threads.
#[tokio::test]
async fn a_panicking_redaction_hook_never_reaches_the_client() {
    for store in [false, true] {
        let ingest = RecordingIngest::start().await.unwrap();
        let mut config = config(&ingest).with_redaction(|_: &mut serde_json::Value| {
            panic!("a bug in the hook");
        });
        if store {
            config = config
                .with_session_store(std::sync::Arc::new(trodo_tower::store::MemoryStore::new()));
        }
        let layer = TrodoLayer::new(config);
        assert_same_answers_as_bare(layer.clone()).await;
        assert!(layer.trodo().flush(WAIT).await);

        let starts = ingest.starts();
        assert_eq!(starts.len(), 1, "store: {store}");
        assert!(starts[0].get("input").is_none(), "{:?}", starts[0]);
        let spans = ingest.spans();
        assert!(!spans.is_empty());
        for (_, span) in &spans {
            assert!(
                span.get("input").is_none() && span.get("output").is_none(),
                "{span}"
            );
        }
        // Each panic counted: the input and output of each of the 7 spans
        // with a body, the output of the empty POST's span, the
        // `initialize` (the run's input), and the failing tool's error
        // text (the `initialized` notification makes no span: its text
        // is not redacted).
        assert_eq!(spans.len(), 8);
        let counters = layer.trodo().delivery_counters();
        assert_eq!(counters.hook_panics, 7 * 2 + 1 + 1 + 1, "{counters:?}");
        assert_eq!(
            counters.panics_caught, 0,
            "the layer's own code did not panic"
        );
    }
}

/// Run-key and distinct-id hooks that panic cost the run its key and its
/// `distinct_id`, never an answer: the same conversation as bare, and the
/// session's run is still recorded.
#[tokio::test]
async fn panicking_run_key_and_distinct_id_hooks_never_reach_the_client() {
    let ingest = RecordingIngest::start().await.unwrap();
    let config = config(&ingest)
        .with_run_key(|_| panic!("a bug in the run key hook"))
        .with_distinct_id(|_| panic!("a bug in the distinct id hook"));
    let layer = TrodoLayer::new(config);
    assert_same_answers_as_bare(layer.clone()).await;
    assert!(layer.trodo().flush(WAIT).await);

    let starts = ingest.starts();
    assert_eq!(starts.len(), 1);
    assert!(starts[0].get("distinct_id").is_none(), "{:?}", starts[0]);
    assert!(!ingest.spans().is_empty());
    // Both hooks were called for the one request that opened a run, the
    // initialize (the session's others could open none), and panicked.
    assert_eq!(layer.trodo().delivery_counters().hook_panics, 2);
}

/// A POST refused before anyone read its body (an auth layer's 401, say)
/// is no empty message: only a body said to be empty (`content-length: 0`)
/// is one.
#[tokio::test]
async fn a_post_refused_unread_is_not_an_empty_message() {
    use axum::http::{Request, StatusCode};
    use axum::middleware::{Next, from_fn};
    use axum::response::IntoResponse;
    let ingest = RecordingIngest::start().await.unwrap();
    let deny_tagged = |request: Request<axum::body::Body>, next: Next| async move {
        if request.headers().contains_key("x-deny") {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        next.run(request).await
    };
    let app = Router::new()
        .nest_service("/mcp", mcp(DemoTools::new(), session_manager(None)))
        .layer(from_fn(deny_tagged))
        .layer(TrodoLayer::new(config(&ingest)));
    let mut client = RawClient::new(serve(app).await);
    client.initialize("refused-client").await;
    let refused = client
        .post(tool_call_body(2, "echo", json!({"text": "t"})))
        .header("x-deny", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        client.send("").await.status,
        415,
        "rmcp refuses an empty body"
    );
    client.delete().await;
    wait_for_ends(&ingest, 1).await;

    let spans: Vec<_> = ingest.spans().into_iter().map(|(_, s)| s).collect();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert_eq!(spans[0]["name"], "http.POST /mcp", "{:#}", spans[0]);
    assert_eq!(
        spans[0]["status"], "ok",
        "a 4xx is the caller's: {:#}",
        spans[0]
    );
    assert_eq!(spans[1]["name"], "mcp.invalid_message");
    assert_eq!(spans[1]["error_message"], "the request body is empty");
}
