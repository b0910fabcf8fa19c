//! Memory of `TrodoLayer`, in plain Rust (`cargo bench --bench memory`).
//!
//! A counting global allocator (the `cap` crate, with its peak statistic)
//! measures the heap; `/proc/self/status` gives the resident set too.
//!
//! 1. A 100 MB SSE response streamed through the layer, in-process (tower's
//!    `oneshot`, no sockets): the peak heap growth while it streams, against
//!    the target of the capture limit + 1 MB. Two shapes: 1,525 progress
//!    events of 64 KiB then the answer, and one 100 MB answer event. The
//!    same stream without the layer is the baseline. Each of the four runs
//!    in a process of its own (this bench, started again with
//!    `MEMORY_BENCH_STREAM`), as the allocator's peak cannot be reset.
//! 2. 10,000 open idle sessions, each opened by a real `initialize` through
//!    the layer (the inner service is a stub that answers with a new session
//!    id, so that only the layer's memory is counted): heap bytes per
//!    session in the session table, against the target of 512 B. The
//!    delivery queue holds one record and sends to a closed port, so that
//!    the queued `start` of each run (sent, then freed, by a live server)
//!    does not count: the others are dropped as the queue is full.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, header};
use axum::response::Response;
use axum::routing::post;
use cap::Cap;
use futures::stream;
use http_body_util::BodyExt;
use tower::ServiceExt;
use trodo_tower::{DEFAULT_CAPTURE_LIMIT, Trodo, TrodoConfig, TrodoLayer};

#[global_allocator]
static ALLOCATOR: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

/// Sessions opened for the table measurement.
const SESSIONS: usize = 10_000;
/// Bytes per idle session, at most.
const TARGET_SESSION_BYTES: f64 = 512.0;
/// Size of the streamed responses.
const STREAM_BYTES: usize = 100 * 1000 * 1000;
/// One chunk of the stream.
const CHUNK: usize = 64 * 1024;
static PADDING: [u8; CHUNK] = [b'x'; CHUNK];

/// Set for a child process that measures one stream: `bare/progress`,
/// `layered/one-event`, ...
const STREAM_CASE: &str = "MEMORY_BENCH_STREAM";

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Ok(case) = std::env::var(STREAM_CASE) {
        runtime.block_on(stream_case(&case));
        return;
    }
    streams();
    runtime.block_on(sessions());
}

/// A layer whose delivery keeps one record and cannot send it: the others
/// are dropped (and counted), so the heap holds only what the layer keeps
/// per session or stream. (A layer shut down would pass requests through
/// unrecorded.)
async fn quiet_layer() -> (TrodoLayer, Trodo) {
    let config = TrodoConfig::new()
        .with_site_id("bench")
        .expect("a site id")
        .with_api_base("http://127.0.0.1:9")
        .expect("a URL")
        .with_max_queue_items(1)
        .expect("a queue bound");
    let layer = TrodoLayer::new(config);
    let trodo = layer.trodo();
    (layer, trodo)
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// The stub MCP endpoint: `initialize` gets a new session id (a UUID, as
/// rmcp's), `tools/call` an SSE stream shaped by the `x-shape` header.
async fn stub(request: Request<Body>) -> Response {
    let shape = request
        .headers()
        .get("x-shape")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = request
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    let response = Response::builder().header(header::CONTENT_TYPE, "application/json");
    if body.windows(12).any(|w| w == b"\"initialize\"") {
        let n = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let session = format!("{:08x}-0000-4000-8000-{:012x}", n >> 16, n);
        let result = r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"stub","version":"1"}}}"#;
        return response
            .header("mcp-session-id", session)
            .body(Body::from(result))
            .expect("a response");
    }
    let stream = match shape.as_deref() {
        Some("one-event") => one_event_stream(),
        _ => progress_stream(),
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("a response")
}

type Chunks = stream::Iter<std::vec::IntoIter<Result<Bytes, Infallible>>>;

/// 64 KiB progress events, then the answer: about [`STREAM_BYTES`] in all.
fn progress_stream() -> Chunks {
    let head: &'static [u8] = br#"data: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":1,"message":""#;
    let tail: &'static [u8] = b"\"}}\n\n";
    let pad = &PADDING[..CHUNK - head.len() - tail.len()];
    let mut chunks = Vec::new();
    for _ in 0..STREAM_BYTES / CHUNK {
        chunks.push(Ok(Bytes::from_static(head)));
        chunks.push(Ok(Bytes::from_static(pad)));
        chunks.push(Ok(Bytes::from_static(tail)));
    }
    chunks.push(Ok(Bytes::from_static(
        br#"data: {"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"done"}],"isError":false}}

"#,
    )));
    stream::iter(chunks)
}

/// One answer event of about [`STREAM_BYTES`].
fn one_event_stream() -> Chunks {
    let mut chunks = vec![Ok(Bytes::from_static(
        br#"data: {"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":""#,
    ))];
    for _ in 0..STREAM_BYTES / CHUNK {
        chunks.push(Ok(Bytes::from_static(&PADDING)));
    }
    chunks.push(Ok(Bytes::from_static(b"\"}],\"isError\":false}}\n\n")));
    stream::iter(chunks)
}

fn mcp_post(body: &str, session: Option<&str>, shape: &str) -> Request<Body> {
    let mut request = Request::post("/mcp")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header("x-shape", shape);
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25");
    }
    request
        .body(Body::from(body.to_owned()))
        .expect("a request")
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"memory-bench","version":"1"}}}"#;
const TOOLS_CALL: &str =
    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"stream","arguments":{}}}"#;

/// Opens a session through `app`; returns its id.
async fn initialize(app: &Router) -> String {
    let response = app
        .clone()
        .oneshot(mcp_post(INITIALIZE, None, ""))
        .await
        .expect("infallible");
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .expect("a session id")
        .to_owned();
    let _ = response.into_body().collect().await;
    session
}

/// Streams one response of `shape` through `app`, frame by frame, dropping
/// each; returns the bytes received and the peak heap growth over `base`.
async fn stream_through(app: &Router, session: Option<&str>, shape: &str) -> (usize, usize) {
    let base = ALLOCATOR.allocated();
    let response = app
        .clone()
        .oneshot(mcp_post(TOOLS_CALL, session, shape))
        .await
        .expect("infallible");
    let mut body = response.into_body();
    let mut received = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.expect("a frame").data_ref() {
            received += data.len();
        }
    }
    drop(body);
    (received, ALLOCATOR.max_allocated().saturating_sub(base))
}

/// Peak resident set (VmHWM) in bytes, after resetting it when `reset`.
fn peak_rss(reset: bool) -> Option<u64> {
    if reset {
        std::fs::write("/proc/self/clear_refs", "5").ok()?;
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Measures every stream, each in a child process of its own.
fn streams() {
    let target = DEFAULT_CAPTURE_LIMIT + 1024 * 1024;
    println!(
        "a 100 MB SSE response streamed through the layer (capture limit {DEFAULT_CAPTURE_LIMIT} characters; target: peak growth <= {target} bytes)"
    );
    let exe = std::env::current_exe().expect("this bench's path");
    for case in [
        "bare/progress",
        "bare/one-event",
        "layered/progress",
        "layered/one-event",
    ] {
        let output = std::process::Command::new(&exe)
            .env(STREAM_CASE, case)
            .output()
            .expect("a child process");
        assert!(output.status.success(), "{case}: {output:?}");
        print!("{}", String::from_utf8_lossy(&output.stdout));
    }
}

/// Measures one stream (`server/shape`) in this process and prints it.
async fn stream_case(case: &str) {
    let target = DEFAULT_CAPTURE_LIMIT + 1024 * 1024;
    let (name, shape) = case.split_once('/').expect("server/shape");
    let (app, session, trodo) = if name == "layered" {
        let (layer, trodo) = quiet_layer().await;
        let app = Router::new().route("/mcp", post(stub)).layer(layer);
        let session = initialize(&app).await;
        (app, Some(session), Some(trodo))
    } else {
        (Router::new().route("/mcp", post(stub)), None, None)
    };
    let rss_before = peak_rss(true);
    let (received, growth) = stream_through(&app, session.as_deref(), shape).await;
    let rss_growth = peak_rss(false)
        .zip(rss_before)
        .map(|(after, before)| after.saturating_sub(before));
    let verdict = match trodo {
        None => "",
        Some(_) if growth <= target => "  met",
        Some(_) => "  MISSED",
    };
    let shape = match shape {
        "progress" => format!("{} progress events then the answer", STREAM_BYTES / CHUNK),
        _ => "one 100 MB answer event".to_owned(),
    };
    println!(
        "  {name:<8} {shape:<38} {:>6.1} MB streamed: peak heap growth {growth:>9} bytes, peak RSS growth {:>9} bytes{verdict}",
        received as f64 / 1e6,
        rss_growth.map_or("?".to_owned(), |b| b.to_string()),
    );
    if let Some(trodo) = trodo {
        println!(
            "  (layered: {} records dropped by the one-record queue, as intended)",
            trodo.delivery_counters().dropped_queue_full
        );
    }
}

async fn sessions() {
    let (layer, trodo) = quiet_layer().await;
    let app = Router::new().route("/mcp", post(stub)).layer(layer);
    // Warm up: lazily made state, the first growth of the table.
    for _ in 0..100 {
        initialize(&app).await;
    }
    let before = ALLOCATOR.allocated();
    for _ in 0..SESSIONS {
        initialize(&app).await;
    }
    let after = ALLOCATOR.allocated();
    let per_session = after.saturating_sub(before) as f64 / SESSIONS as f64;
    let verdict = if per_session <= TARGET_SESSION_BYTES {
        "met"
    } else {
        "MISSED"
    };
    println!(
        "{SESSIONS} idle sessions opened through the layer ({} runs open): {per_session:.0} bytes per session (target <= {TARGET_SESSION_BYTES}: {verdict})",
        trodo.open_runs()
    );
}
