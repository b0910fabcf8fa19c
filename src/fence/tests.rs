//! A panic of the layer's own work, at any stage of an exchange, costs
//! the recording only: the request and its answer pass untouched, the
//! panic is counted, and the layer goes on recording.

// The turn to count caught panics is held across awaits: it orders tests
// on different threads, and nothing on a test's own runtime takes it.
#![allow(clippy::await_holding_lock)]

#[path = "../../examples/support/ingest.rs"]
mod ingest;

use axum::body::{Body, Bytes};
use axum::routing::post;
use axum::{Extension, Json, Router};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

use super::{Stage, faults, panics_caught};
use crate::state::Shared;
use crate::{RequestSpan, TrodoConfig, TrodoLayer};
use ingest::RecordingIngest;

const WAIT: Duration = Duration::from_secs(15);

const CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}}"#;

/// A JSON-RPC endpoint that answers every call with `3`; its handler
/// takes the request's span, as handlers that add child spans do.
fn endpoint() -> Router {
    Router::new().route(
        "/mcp",
        post(
            |Extension(_span): Extension<RequestSpan>, body: String| async move {
                let request: Value = serde_json::from_str(&body).unwrap();
                Json(json!({
                    "jsonrpc": "2.0",
                    "id": request["id"],
                    "result": {"content": [{"type": "text", "text": "3"}]}
                }))
            },
        ),
    )
}

fn call_request() -> Request<Body> {
    Request::post("/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("user-agent", "fence-test")
        .body(Body::from(CALL))
        .unwrap()
}

async fn answer(app: &Router) -> (StatusCode, Bytes) {
    let response = app.clone().oneshot(call_request()).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

fn config(ingest: &RecordingIngest) -> TrodoConfig {
    TrodoConfig::new()
        .with_site_id("test-site")
        .unwrap()
        .with_api_base(&ingest.base_url())
        .unwrap()
}

#[tokio::test]
async fn a_panic_at_any_stage_passes_the_exchange_through_and_is_counted() {
    let _turn = faults::counting();
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    let span = RequestSpan::switched_off(Shared::switched_off());
    let bare = answer(&endpoint().layer(Extension(span))).await;
    assert_eq!(bare.0, StatusCode::OK);
    let app = endpoint().layer(layer);
    for stage in [
        Stage::RequestHead,
        Stage::RequestBody,
        Stage::ResponseHead,
        Stage::ResponseBody,
        Stage::BodyEnd,
    ] {
        let caught = panics_caught();
        faults::arm(stage);
        assert_eq!(
            answer(&app).await,
            bare,
            "the answer with a panic at {stage:?}"
        );
        assert_eq!(panics_caught(), caught + 1, "{stage:?}");
    }
    // The layer goes on: the next exchange is recorded, and only it.
    assert_eq!(answer(&app).await, bare);
    assert!(trodo.flush(WAIT).await);
    let spans = ingest.spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0].1["name"], "tool.add");
    assert_eq!(spans[0].1["status"], "ok");
    assert_eq!(
        serde_json::from_str::<Value>(spans[0].1["output"].as_str().unwrap()).unwrap(),
        serde_json::from_slice::<Value>(&bare.1).unwrap()
    );
}

#[tokio::test]
async fn a_panic_while_a_cancelled_exchange_ends_stays_in_the_layer() {
    let _turn = faults::counting();
    let ingest = RecordingIngest::start().await.unwrap();
    let mut service = TrodoLayer::new(config(&ingest)).layer(tower::service_fn(
        |_: Request<crate::RequestBody<Body>>| {
            std::future::pending::<Result<http::Response<Body>, std::convert::Infallible>>()
        },
    ));
    let caught = panics_caught();
    let future = service.call(call_request());
    faults::arm(Stage::ResponseHead);
    drop(future); // the client went away: the layer ends the exchange
    assert_eq!(panics_caught(), caught + 1);
}

/// Once delivery halted (its loop panicked: see `export::Worker::run`),
/// the layer passes requests through unrecorded, as after a shutdown:
/// nothing is read, queued or dropped for a delivery that is gone.
#[tokio::test]
async fn after_delivery_halted_requests_pass_through_unrecorded() {
    let ingest = RecordingIngest::start().await.unwrap();
    let config = config(&ingest);
    let layer = TrodoLayer::new(config.clone());
    let trodo = layer.trodo();
    let app = endpoint().layer(layer);
    assert_eq!(answer(&app).await.0, StatusCode::OK);
    assert!(trodo.flush(WAIT).await);
    assert_eq!(trodo.open_runs(), 1);

    Shared::of(&config).exporter.halt();
    let halted = trodo.delivery_counters();
    assert_eq!(halted.dropped_shutdown, 0, "everything was delivered");
    let (status, body) = answer(&app).await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["result"]["content"][0]["text"], "3");
    assert!(trodo.flush(WAIT).await);
    let after = trodo.delivery_counters();
    assert_eq!(after.dropped_shutdown, 0, "nothing was made to drop");
    assert_eq!(after.sent, halted.sent);
}
