//! The layer next to tower-http's compression: inside it, the layer reads
//! the server's bodies as usual; outside it, it sees them compressed, keeps
//! none of them, and says so on the span.

mod common;

use axum::Router;
use common::*;
use serde_json::{Value, json};
use tower_http::compression::CompressionLayer;
use trodo_tower::TrodoLayer;

/// Calls the `echo` tool of a JSON-answering rmcp server in `app` (made
/// with the ingest's config) twice, asking for gzip: the last answer, and
/// the spans of both calls (the first read as it streams, as the session's
/// first request here; the second from its tape, on the delivery thread).
async fn echo_twice_through(app: impl FnOnce(TrodoLayer) -> Router) -> (Answer, Vec<Value>) {
    let ingest = RecordingIngest::start().await.unwrap();
    let mut client = RawClient::new(serve(app(TrodoLayer::new(config(&ingest)))).await);
    client.session = Some("sticky-session-1".to_owned());
    let mut answer = None;
    for id in 1..=2 {
        let body = tool_call_body(id, "echo", json!({"text": "squeezed"}));
        let response = client
            .post(body)
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        let read = read(response).await;
        assert_eq!(read.status, 200);
        assert_eq!(read.headers["content-encoding"], "gzip");
        assert_eq!(&read.body[..2], [0x1f, 0x8b], "a gzip stream");
        answer = Some(read);
    }
    ingest
        .wait_until(WAIT, |r| span_count(r) == 2)
        .await
        .unwrap();
    let spans = ingest.spans().into_iter().map(|(_, span)| span).collect();
    (answer.unwrap(), spans)
}

fn json_server() -> Router {
    Router::new().nest_service("/mcp", mcp_stateless_json(DemoTools::new()))
}

#[tokio::test]
async fn inside_a_compression_layer_the_layer_reads_the_answer() {
    let (_, spans) =
        echo_twice_through(|layer| json_server().layer(layer).layer(CompressionLayer::new())).await;
    for span in spans {
        let output: Value = serde_json::from_str(span["output"].as_str().unwrap()).unwrap();
        assert_eq!(output["result"]["content"][0]["text"], "echo: squeezed");
        assert_eq!(span["status"], "ok");
        assert!(
            span["attributes"]
                .get("http.response.content_encoding")
                .is_none()
        );
    }
}

#[tokio::test]
async fn outside_a_compression_layer_the_layer_keeps_none_of_the_answer_and_says_so() {
    let (answer, spans) =
        echo_twice_through(|layer| json_server().layer(CompressionLayer::new()).layer(layer)).await;
    for span in spans {
        assert_eq!(span["name"], "tool.echo");
        assert_eq!(span["status"], "ok");
        assert!(span.get("output").is_none(), "{span}");
        let attributes = &span["attributes"];
        assert_eq!(attributes["http.response.content_encoding"], "gzip");
        assert_eq!(attributes["output_truncated"], false);
        assert_eq!(attributes["http.response.body.size"], answer.body.len());
    }
}

/// `body` compressed with gzip.
fn gzip(body: &str) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(body.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn outside_a_request_decompression_layer_the_layer_keeps_none_of_the_request_and_says_so() {
    use tower_http::decompression::RequestDecompressionLayer;
    let ingest = RecordingIngest::start().await.unwrap();
    let app = json_server()
        .layer(RequestDecompressionLayer::new())
        .layer(TrodoLayer::new(config(&ingest)));
    let mut client = RawClient::new(serve(app).await);
    client.session = Some("sticky-session-1".to_owned());
    let call = |id: i64| tool_call_body(id, "echo", json!({"text": "packed"}));
    client.send(call(1)).await;
    let packed = gzip(&call(2));
    let response = client
        .post(packed.clone())
        .header("content-encoding", "gzip")
        .send()
        .await
        .unwrap();
    let answer = read(response).await;
    assert_eq!(
        answer.response()["result"]["content"][0]["text"],
        "echo: packed"
    );
    // A client that names the method and tool in headers (as MCP
    // 2026-07-28 clients do) names the span of its encoded request.
    let named = client
        .post(gzip(&call(3)))
        .header("content-encoding", "gzip")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo")
        .send()
        .await
        .unwrap();
    assert_eq!(read(named).await.status, 200);

    ingest
        .wait_until(WAIT, |r| span_count(r) == 3)
        .await
        .unwrap();
    let spans: Vec<Value> = ingest.spans().into_iter().map(|(_, s)| s).collect();
    assert_eq!(spans[0]["name"], "tool.echo", "the plain request is read");
    assert!(
        spans[0]["attributes"]
            .get("http.request.content_encoding")
            .is_none()
    );
    let span = &spans[1];
    assert_eq!(
        span["name"], "mcp.request",
        "the method of an encoded request is unknown"
    );
    assert_eq!(span["status"], "ok");
    assert!(span.get("input").is_none(), "{span}");
    assert_eq!(span["output"].as_str().unwrap(), answer.text());
    let attributes = &span["attributes"];
    assert_eq!(attributes["http.request.content_encoding"], "gzip");
    assert_eq!(attributes["http.request.body.size"], packed.len());
    assert_eq!(attributes["input_truncated"], false, "not read, so not cut");
    let named = &spans[2];
    assert_eq!(named["name"], "tool.echo");
    assert_eq!(named["tool_name"], "echo");
    assert!(named.get("input").is_none(), "{named}");
    assert_eq!(named["attributes"]["http.request.content_encoding"], "gzip");
}
