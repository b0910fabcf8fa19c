//! Shared by the integration tests: a real rmcp server behind the layer, a
//! recording ingest server, and a raw MCP client over reqwest for exact
//! control of headers and bytes.
#![allow(unreachable_pub, dead_code)]

#[path = "../../examples/support/ingest.rs"]
pub mod ingest;
#[path = "../../examples/support/tools.rs"]
pub mod tools;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use serde_json::{Value, json};
use trodo_tower::TrodoConfig;

pub use ingest::RecordingIngest;
pub use tools::DemoTools;

/// How long a test waits for telemetry before failing.
pub const WAIT: Duration = Duration::from_secs(15);

/// A config that sends to the recording ingest.
pub fn config(ingest: &RecordingIngest) -> TrodoConfig {
    TrodoConfig::new()
        .with_site_id("test-site")
        .unwrap()
        .with_api_base(&ingest.base_url())
        .unwrap()
}

/// rmcp's session manager with the given idle keep-alive.
pub fn session_manager(keep_alive: Option<Duration>) -> Arc<LocalSessionManager> {
    let mut manager = LocalSessionManager::default();
    manager.session_config.keep_alive = keep_alive;
    Arc::new(manager)
}

/// The demo tools served by rmcp with sessions and SSE (rmcp's defaults).
pub fn mcp(
    tools: DemoTools,
    manager: Arc<LocalSessionManager>,
) -> StreamableHttpService<DemoTools, LocalSessionManager> {
    StreamableHttpService::new(
        move || Ok(tools.clone()),
        manager,
        StreamableHttpServerConfig::default(),
    )
}

/// The demo tools served statelessly with JSON responses.
pub fn mcp_stateless_json(
    tools: DemoTools,
) -> StreamableHttpService<DemoTools, LocalSessionManager> {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true);
    StreamableHttpService::new(move || Ok(tools.clone()), session_manager(None), config)
}

/// Serves `app` on a fresh loopback port with TCP_NODELAY.
pub async fn serve(app: Router) -> SocketAddr {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The demo MCP server (`tools`, with sessions) at `/mcp` behind `layer`,
/// on a loopback port.
pub async fn serve_demo(tools: DemoTools, layer: trodo_tower::TrodoLayer) -> SocketAddr {
    let app = Router::new()
        .nest_service("/mcp", mcp(tools, session_manager(None)))
        .layer(layer);
    serve(app).await
}

/// An HTTP answer, fully read.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The JSON-RPC response in the body: the JSON body itself, or the SSE
    /// event that carries a result or an error.
    pub fn response(&self) -> Value {
        let text = self.text();
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            return v;
        }
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find(|v| v.get("result").is_some() || v.get("error").is_some())
            .unwrap_or(Value::Null)
    }
}

/// A raw MCP client: exact requests, exact bytes back.
#[derive(Debug, Clone)]
pub struct RawClient {
    pub http: reqwest::Client,
    pub url: String,
    pub session: Option<String>,
}

impl RawClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: format!("http://{addr}/mcp"),
            session: None,
        }
    }

    /// A POST of `body` to the MCP endpoint with the MCP headers.
    pub fn post(&self, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(session) = &self.session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25");
        }
        request.body(body)
    }

    pub async fn send(&self, body: impl Into<reqwest::Body>) -> Answer {
        read(self.post(body).send().await.unwrap()).await
    }

    /// initialize + notifications/initialized; keeps the session id.
    pub async fn initialize(&mut self, client_name: &str) -> Answer {
        let answer = self.send(initialize_body(client_name)).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        self.session = answer
            .headers
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap().to_owned());
        let notified = self
            .send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await;
        assert_eq!(notified.status, 202);
        answer
    }

    pub async fn request(&self, id: i64, method: &str, params: Value) -> Answer {
        self.send(request_body(id, method, params)).await
    }

    pub async fn call_tool(&self, id: i64, name: &str, arguments: Value) -> Answer {
        self.send(tool_call_body(id, name, arguments)).await
    }

    pub async fn delete(&self) -> Answer {
        let mut request = self.http.delete(&self.url);
        if let Some(session) = &self.session {
            request = request.header("mcp-session-id", session);
        }
        read(request.send().await.unwrap()).await
    }
}

/// A JSON-RPC request's body.
pub fn request_body(id: i64, method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

/// The body of a `tools/call` of `name`.
pub fn tool_call_body(id: i64, name: &str, arguments: Value) -> String {
    request_body(
        id,
        "tools/call",
        json!({"name": name, "arguments": arguments}),
    )
}

pub fn initialize_body(client_name: &str) -> String {
    json!({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": client_name, "version": "1.2.3"}}
    })
    .to_string()
}

pub async fn read(response: reqwest::Response) -> Answer {
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap(),
    }
}

/// A session on the layered demo server with a `wait_for_release` call
/// (JSON-RPC id `id`) under way: the tools, to release the call, the
/// layer's handle, and the call's response as a byte stream.
pub async fn call_waiting_tool(
    ingest: &RecordingIngest,
    id: i64,
) -> (
    DemoTools,
    trodo_tower::Trodo,
    impl futures::Stream<Item = reqwest::Result<bytes::Bytes>>,
) {
    let tools = DemoTools::new();
    let layer = trodo_tower::TrodoLayer::new(config(ingest));
    let trodo = layer.trodo();
    let mut client = RawClient::new(serve_demo(tools.clone(), layer).await);
    client.initialize("waiting-test").await;
    let response = client.post(waiting_call_body(id)).send().await.unwrap();
    (tools, trodo, response.bytes_stream())
}

/// The body of a `wait_for_release` call that asks for progress (the tool
/// reports "started", then waits until the test releases it).
pub fn waiting_call_body(id: i64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "wait_for_release", "arguments": {}, "_meta": {"progressToken": id}}})
    .to_string()
}

/// Waits until the ingest has received `count` run ends.
#[allow(dead_code)]
pub async fn wait_for_ends(ingest: &RecordingIngest, count: usize) {
    ingest
        .wait_until(WAIT, |r| {
            r.iter().filter(|r| r.path.ends_with("/end")).count() == count
        })
        .await
        .unwrap();
}

/// With a call under way on `stream` (read until its progress shows),
/// opens a second session on `addr`, idle from then on, and waits for the
/// first run end (the idle session's, as its run was idle the shorter
/// time). Returns the run ids of the busy session (the first started) and
/// of the idle one.
#[allow(dead_code)]
pub async fn an_idle_session_beside_a_busy_call(
    ingest: &RecordingIngest,
    addr: SocketAddr,
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    seen: &mut String,
) -> (String, String) {
    read_until(stream, seen, "notifications/progress").await;
    let mut idle = RawClient::new(addr);
    idle.initialize("idle-session").await;
    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    let starts = ingest.starts();
    let run_of = |i: usize| starts[i]["run_id"].as_str().unwrap().to_owned();
    (run_of(0), run_of(1))
}

/// Releases the busy call of [`an_idle_session_beside_a_busy_call`],
/// reads its answer to the end, waits for both runs' ends and returns the
/// busy run's, which the idle sweep made after the call.
#[allow(dead_code)]
pub async fn end_of_the_released_call(
    ingest: &RecordingIngest,
    tools: &DemoTools,
    busy_run: &str,
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    seen: &mut String,
) -> Value {
    tools.release();
    read_to_end(stream, seen).await;
    assert!(seen.contains("released"), "the client gets its answer");
    wait_for_ends(ingest, 2).await;
    let ends = ingest.ends();
    let (_, busy_end) = ends.iter().find(|(id, _)| *id == busy_run).unwrap();
    assert_eq!(busy_end["metadata"]["closed_via"], "idle_timeout");
    busy_end.clone()
}

/// Reads `stream` into `seen` until it holds `needle`.
#[allow(dead_code)]
pub async fn read_until(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    seen: &mut String,
    needle: &str,
) {
    use futures::StreamExt;
    while !seen.contains(needle) {
        let chunk = stream.next().await.expect("stream open").unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Reads the rest of `stream` into `seen`.
#[allow(dead_code)]
pub async fn read_to_end(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    seen: &mut String,
) {
    use futures::StreamExt;
    while let Some(chunk) = stream.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
}

/// Waits until `condition` holds, checking every 10 ms, for at most
/// [`WAIT`]; fails the test with `what` if it never does.
#[allow(dead_code)]
pub async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How many spans the ingest received (spans of one run may share a call).
pub fn span_count(received: &[ingest::Received]) -> usize {
    received
        .iter()
        .filter_map(|r| r.body["spans"].as_array())
        .map(Vec::len)
        .sum()
}

/// The spans of one run, in arrival order.
pub fn spans_of(ingest: &RecordingIngest, run_id: &str) -> Vec<Value> {
    ingest
        .spans()
        .into_iter()
        .filter(|(id, _)| id == run_id)
        .map(|(_, span)| span)
        .collect()
}

/// A run end's totals: `span_count`, `tool_count`, `error_count`.
pub fn totals(end: &Value) -> (u64, u64, u64) {
    let count = |field: &str| {
        end[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no {field}: {end}"))
    };
    (
        count("span_count"),
        count("tool_count"),
        count("error_count"),
    )
}

/// The keys of a JSON object, sorted.
pub fn keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

/// A span's input or output parsed as JSON.
pub fn json_of(field: &Value) -> Value {
    serde_json::from_str(field.as_str().unwrap()).unwrap()
}

/// A hold on a layer's delivery thread, which also reads the backlog of
/// exchanges taped on the request path (`src/backlog.rs`): it is held
/// where it first connects to the ingest, in the DNS resolver of the HTTP
/// client the layer is given, so outside any turn of the backlog. While
/// it is held, nothing reads the backlog but a request that catches up
/// (on its own thread, at once): a call answered then is counted in its
/// run's end only if the request that ends the run catches up first.
/// The layer's idle sweep, which catches up every few seconds as well, is
/// left on a runtime that never runs, so that it cannot count them by
/// chance.
pub struct HeldDelivery {
    held: Option<tokio::sync::oneshot::Receiver<String>>,
    release: Option<std::sync::mpsc::Sender<()>>,
    /// Where the idle sweep was spawned: never driven.
    sweep: Option<tokio::runtime::Runtime>,
}

impl HeldDelivery {
    /// A layer that delivers to `ingest` once released, and the hold on it.
    pub fn layer(ingest: &RecordingIngest) -> (trodo_tower::TrodoLayer, Self) {
        let (held, held_on) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel();
        let config = config_resolving_through(ingest, |ingest| HoldingResolver {
            ingest,
            gate: std::sync::Mutex::new(Some((held, released))),
        });
        let sweep = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The layer spawns its idle sweep on the runtime at hand.
        let layer = {
            let _sweep = sweep.enter();
            trodo_tower::TrodoLayer::new(config)
        };
        let hold = Self {
            held: Some(held_on),
            release: Some(release),
            sweep: Some(sweep),
        };
        (layer, hold)
    }

    /// Waits until the delivery thread is held: when it first delivers (a
    /// run's `start`, within the one-second batching interval).
    pub async fn until_held(&mut self) {
        let held = self.held.take().expect("held once");
        let thread = tokio::time::timeout(WAIT, held)
            .await
            .expect("delivery connects to the ingest")
            .unwrap();
        assert_eq!(thread, "trodo-export", "the delivery thread is held");
    }

    /// Lets delivery (and the backlog's reader) go on.
    pub fn release(&mut self) {
        if let Some(release) = self.release.take() {
            release.send(()).unwrap();
        }
    }
}

impl Drop for HeldDelivery {
    fn drop(&mut self) {
        // A failed test releases delivery too (its sender is gone).
        self.release.take();
        if let Some(sweep) = self.sweep.take() {
            sweep.shutdown_background();
        }
    }
}

/// A config delivering to `ingest` by a name, with a client whose DNS
/// resolver `resolver` makes (given the ingest's address): the delivery
/// thread runs it before each new connection.
pub fn config_resolving_through<R: reqwest::dns::Resolve + 'static>(
    ingest: &RecordingIngest,
    resolver: impl FnOnce(SocketAddr) -> R,
) -> TrodoConfig {
    let ingest_addr: SocketAddr = ingest
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(resolver(ingest_addr))
        .build()
        .unwrap();
    // A name, not the address: a client connects to an address as is.
    TrodoConfig::new()
        .with_site_id("test-site")
        .unwrap()
        .with_api_base(&format!("http://localhost:{}", ingest_addr.port()))
        .unwrap()
        .with_http_client(client)
}

/// Resolves every name to the ingest; the first time, waits for the test
/// to release it, having told it so (with the name of its thread).
struct HoldingResolver {
    ingest: SocketAddr,
    gate: std::sync::Mutex<
        Option<(
            tokio::sync::oneshot::Sender<String>,
            std::sync::mpsc::Receiver<()>,
        )>,
    >,
}

impl reqwest::dns::Resolve for HoldingResolver {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let gate = self.gate.lock().unwrap().take();
        if let Some((held, released)) = gate {
            let thread = std::thread::current().name().unwrap_or("").to_owned();
            let _ = held.send(thread);
            let _ = released.recv();
        }
        let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(self.ingest));
        Box::pin(std::future::ready(Ok(addrs)))
    }
}
