//! Delivery benchmarks, in plain Rust (`cargo bench --bench delivery`):
//!
//! 1. Throughput of the delivery worker: spans are recorded in-process by
//!    the layer (no network on the request side) while the local recording
//!    ingest holds its answers, so that they all wait in the queue; then the
//!    ingest answers and the clock runs until everything is delivered.
//! 2. Request latency of a real MCP server (rmcp, the demo tools) behind
//!    the layer, with a healthy ingest vs one that takes 500 ms per answer.
//!    Calls alternate between the two servers so that machine noise hits
//!    both alike; the target is under 5 % apart.

#[path = "../examples/support/ingest.rs"]
mod ingest;
#[path = "../examples/support/tools.rs"]
mod tools;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::post;
use http_body_util::BodyExt;
use ingest::RecordingIngest;
use rmcp::transport::streamable_http_server::StreamableHttpServerConfig;
use serde_json::{Value, json};
use tower::ServiceExt;
use trodo_tower::{TrodoConfig, TrodoLayer};

/// Spans recorded for the throughput run (with their runs' starts, within
/// the default queue bound of 10,000 records).
const SPANS: usize = 9_000;
/// Sessions they are spread over.
const SESSIONS: usize = 50;
/// Timed calls per server in the latency run (after a warm-up).
const CALLS: usize = 1_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        throughput().await;
        latency().await;
    });
}

fn config(ingest: &RecordingIngest) -> TrodoConfig {
    TrodoConfig::new()
        .with_site_id("bench")
        .expect("a site id")
        .with_api_base(&ingest.base_url())
        .expect("a loopback URL")
}

async fn throughput() {
    let ingest = RecordingIngest::start().await.expect("an ingest server");
    let layer = TrodoLayer::new(config(&ingest));
    let answer = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
    let app = Router::new()
        .route(
            "/mcp",
            post(move |_: Bytes| async move { ([("content-type", "application/json")], answer) }),
        )
        .layer(layer.clone());
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                         "params": {"name": "echo", "arguments": {"text": "hello"}}})
    .to_string();

    ingest.hold();
    let started = Instant::now();
    for i in 0..SPANS {
        let call = http::Request::post("/mcp")
            .header("content-type", "application/json")
            .header("mcp-session-id", format!("bench-session-{}", i % SESSIONS))
            .body(Body::from(request.clone()))
            .expect("a request");
        let response = app.clone().oneshot(call).await.expect("infallible");
        let _ = response.into_body().collect().await;
    }
    let recorded = started.elapsed();
    let released = Instant::now();
    ingest.release();
    assert!(
        layer.trodo().flush(Duration::from_secs(120)).await,
        "flushed"
    );
    let delivered = released.elapsed();
    let counters = layer.trodo().delivery_counters();
    let spans = ingest.spans().len();
    println!("throughput of the delivery worker");
    println!(
        "  {spans} spans of {SESSIONS} runs recorded in {recorded:.2?} (ingest holding), delivered in {delivered:.2?} once it answers"
    );
    println!(
        "  {:.0} spans/s delivered to a local ingest, in {} calls ({} records sent, {} dropped)",
        spans as f64 / delivered.as_secs_f64(),
        ingest.received().len(),
        counters.sent,
        counters.dropped(),
    );
}

/// A raw MCP client on one session.
struct Client {
    http: reqwest::Client,
    url: String,
    session: String,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let http = reqwest::Client::new();
        let url = format!("http://{addr}/mcp");
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "bench", "version": "1"}}});
        let response = http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .json(&init)
            .send()
            .await
            .expect("initialize");
        let session = response.headers()["mcp-session-id"]
            .to_str()
            .expect("a session id")
            .to_owned();
        let _ = response.bytes().await;
        let client = Self { http, url, session };
        client
            .post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        client
    }

    async fn post(&self, body: Value) -> Bytes {
        self.http
            .post(&self.url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &self.session)
            .header("mcp-protocol-version", "2025-11-25")
            .json(&body)
            .send()
            .await
            .expect("a response")
            .bytes()
            .await
            .expect("a body")
    }

    /// One `echo` call; returns how long it took.
    async fn echo(&self, id: usize) -> Duration {
        let started = Instant::now();
        let body = self
            .post(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                         "params": {"name": "echo", "arguments": {"text": "hello"}}}))
            .await;
        let took = started.elapsed();
        assert!(
            body.starts_with(b"data:") || body.starts_with(b"{"),
            "an answer"
        );
        took
    }
}

/// The demo MCP server behind a layer that delivers to `ingest`.
async fn mcp_server(ingest: &RecordingIngest) -> (SocketAddr, TrodoLayer) {
    use axum::serve::ListenerExt;
    let layer = TrodoLayer::new(config(ingest));
    let app = Router::new()
        .nest_service(
            "/mcp",
            tools::mcp_service(StreamableHttpServerConfig::default(), None),
        )
        .layer(layer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, layer)
}

/// Mean, median and 99th percentile.
fn stats(mut took: Vec<Duration>) -> (Duration, Duration, Duration) {
    took.sort();
    let mean = took.iter().sum::<Duration>() / took.len() as u32;
    (mean, took[took.len() / 2], took[took.len() * 99 / 100])
}

async fn latency() {
    let healthy_ingest = RecordingIngest::start().await.expect("an ingest server");
    let slow_ingest = RecordingIngest::start().await.expect("an ingest server");
    slow_ingest.set_delay(Duration::from_millis(500));
    let (healthy_addr, healthy_layer) = mcp_server(&healthy_ingest).await;
    let (slow_addr, slow_layer) = mcp_server(&slow_ingest).await;
    let healthy = Client::connect(healthy_addr).await;
    let slow = Client::connect(slow_addr).await;
    for id in 0..100 {
        healthy.echo(id).await;
        slow.echo(id).await;
    }
    let (mut on_healthy, mut on_slow) = (Vec::new(), Vec::new());
    for id in 0..CALLS {
        // Alternate which goes first, too.
        if id % 2 == 0 {
            on_healthy.push(healthy.echo(id).await);
            on_slow.push(slow.echo(id).await);
        } else {
            on_slow.push(slow.echo(id).await);
            on_healthy.push(healthy.echo(id).await);
        }
    }
    let (h_mean, h_p50, h_p99) = stats(on_healthy);
    let (s_mean, s_p50, s_p99) = stats(on_slow);
    println!("request latency of an MCP server (rmcp echo tool, {CALLS} calls each)");
    println!("  healthy ingest:       mean {h_mean:.2?}  p50 {h_p50:.2?}  p99 {h_p99:.2?}");
    println!("  500 ms slow ingest:   mean {s_mean:.2?}  p50 {s_p50:.2?}  p99 {s_p99:.2?}");
    let ratio = s_mean.as_secs_f64() / h_mean.as_secs_f64();
    let median_ratio = s_p50.as_secs_f64() / h_p50.as_secs_f64();
    println!(
        "  slow / healthy: mean {ratio:.3} ({:+.1} %), median {median_ratio:.3} ({:+.1} %); target under 5 % apart",
        (ratio - 1.0) * 100.0,
        (median_ratio - 1.0) * 100.0
    );
    for (name, layer) in [("healthy", healthy_layer), ("slow", slow_layer)] {
        let flushed = layer.trodo().shutdown(Duration::from_secs(30)).await;
        let c = layer.trodo().delivery_counters();
        println!(
            "  {name}: flushed {flushed}, {} records sent in {} calls, {} dropped",
            c.sent,
            match name {
                "healthy" => healthy_ingest.received().len(),
                _ => slow_ingest.received().len(),
            },
            c.dropped()
        );
    }
}
