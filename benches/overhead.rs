//! The overhead of `TrodoLayer` on a real MCP server, in plain Rust
//! (`cargo bench --bench overhead`).
//!
//! One process serves the demo rmcp server (the example's tools; sessions,
//! SSE answers, rmcp's defaults) twice: bare, and behind `TrodoLayer`
//! delivering to a local ingest over HTTP (or, with `OVERHEAD_LAYER=floor`,
//! behind a minimal recording layer, to compare). Both set `TCP_NODELAY`, as the
//! example server does. N clients, each in its own MCP session on its own
//! keep-alive connection, call `tools/call add` back to back (or, with
//! `OVERHEAD_TOOL_MS`, a tool that waits that long, reports progress once and answers). After a
//! warm-up the rounds alternate bare / layered (and which goes first), so
//! that drift of the machine hits both alike. Printed: requests/s, p50 and
//! p99 latency of both, and layered / bare ratios against the targets
//! (throughput ratio >= 0.97, p99 ratio <= 1.05).
//!
//! The server and the load generator run on separate Tokio runtimes (their
//! own threads), so that the generator cannot steal the server's workers;
//! on a small machine they still share the cores, which is why both servers
//! are measured under the same generator.
//!
//! Environment (all optional; a value not understood stops the bench with
//! a message that names the variable):
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `OVERHEAD_CLIENTS` | concurrent clients (sessions, connections) | 32 |
//! | `OVERHEAD_ROUNDS` | measured rounds per server | 5 |
//! | `OVERHEAD_ROUND_SECS` | length of one round | 5 |
//! | `OVERHEAD_WARMUP_SECS` | warm-up per server | 2 |
//! | `OVERHEAD_SERVER_THREADS` | worker threads of the server runtime | 1 |
//! | `OVERHEAD_CLIENT_THREADS` | worker threads of the load generator | 1 |
//! | `OVERHEAD_ONLY` | `bare` or `layered`: load one server only (for a profiler) | both |
//! | `OVERHEAD_TOOL_MS` | above 0: call `slow_progress` (waits this many ms, sends one progress event, then answers) instead of `add` | 0 |
//! | `OVERHEAD_PLACEMENT` | `route`: `Router::layer(TrodoLayer)` (the README's one line); `outer`: the layer wraps the whole router (`ServiceBuilder::new().map_response(IntoResponse::into_response).layer(layer).service(router)`), which spares axum one clone of the inner service per request | `route` |
//! | `OVERHEAD_LAYER` | `trodo`: the layered server runs `TrodoLayer`; `floor`: it runs instead a minimal recording layer (copies both bodies, hands them to another thread; see `support/floor_layer.rs`); `identity`: a layer that does nothing (`tower::layer::util::Identity`), which measures what axum's `Router::layer` itself costs; `floor` and `identity` go on the routes (not with `OVERHEAD_PLACEMENT=outer` or `OVERHEAD_TRODO_ENABLED=false`) | `trodo` |
//! | `OVERHEAD_FLOOR_BURN_US` | with `OVERHEAD_LAYER=floor` only: the floor layer's other thread also spins this many µs per exchange (at most 1000), as a layer's delivery work would | 0 |
//! | `OVERHEAD_PROTOCOL` | `2025-11-25`: each client opens a session (`initialize`) and calls in it; `2026-07-28`: no session, every call names the client in `params._meta` and the method in `Mcp-Method` / `Mcp-Name`, as Python's `mcp.Client` and `fastmcp.Client` do by default (the layer groups the calls by the client's identity) | `2025-11-25` |
//! | `OVERHEAD_TRODO_ENABLED` | `false`: the layered server's layer is switched off (`TRODO_ENABLED=false`), to measure the pass-through | `true` |

#[path = "support/counting_ingest.rs"]
mod counting_ingest;
#[path = "support/env.rs"]
mod env;
#[path = "support/floor_layer.rs"]
mod floor_layer;
#[path = "support/machine.rs"]
mod machine;
#[path = "../examples/support/tools.rs"]
mod tools;

use std::net::SocketAddr;

use std::time::{Duration, Instant};

use axum::Router;
use axum::ServiceExt;
use axum::body::Bytes;
use axum::response::IntoResponse;
use axum::serve::ListenerExt;
use counting_ingest::CountingIngest;
use floor_layer::FloorLayer;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rmcp::transport::streamable_http_server::StreamableHttpServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tower::layer::util::Identity;
use trodo_tower::{TrodoConfig, TrodoLayer};

/// Throughput of the layered server over the bare one, at least.
const TARGET_THROUGHPUT: f64 = 0.97;
/// p99 latency of the layered server over the bare one, at most.
const TARGET_P99: f64 = 1.05;
/// The most CPU the floor layer's thread may spin per exchange, in µs:
/// beyond it the thread falls behind the server for good.
const MAX_FLOOR_BURN_US: u64 = 1_000;
const PROTOCOL_VERSION: &str = "2025-11-25";
/// The protocol version without sessions.
const SESSIONLESS_PROTOCOL_VERSION: &str = "2026-07-28";
/// The name of the server runtime's threads.
const SERVER_THREAD: &str = "server";
/// The name of the load generator's (and the ingest's) threads.
const LOAD_THREAD: &str = "load";
/// The name of the layer's delivery thread.
const EXPORT_THREAD: &str = "trodo-export";

#[derive(Debug, Clone, Copy)]
struct Options {
    clients: usize,
    rounds: usize,
    round: Duration,
    warmup: Duration,
    server_threads: usize,
    client_threads: usize,
    /// Load only the bare (`Some(false)`) or the layered server.
    only: Option<bool>,
    /// Whether the layer of the layered server is switched on.
    trodo_enabled: bool,
    /// Whether the layer wraps the whole router instead of its routes.
    outer: bool,
    /// Above 0: how long the called tool waits (`slow_progress`), in ms.
    tool_ms: u64,
    /// Which layer the layered server runs.
    layer: LayerChoice,
    /// Whether the clients speak 2026-07-28, without sessions.
    sessionless: bool,
    /// The floor layer's CPU per exchange on its thread, in µs.
    floor_burn_us: u64,
}

impl Options {
    fn from_env() -> Self {
        let var = env::positive;
        Self {
            clients: var("OVERHEAD_CLIENTS", 32) as usize,
            rounds: var("OVERHEAD_ROUNDS", 5) as usize,
            round: Duration::from_secs(var("OVERHEAD_ROUND_SECS", 5)),
            warmup: Duration::from_secs(env::whole("OVERHEAD_WARMUP_SECS", 2)),
            server_threads: var("OVERHEAD_SERVER_THREADS", 1) as usize,
            client_threads: var("OVERHEAD_CLIENT_THREADS", 1) as usize,
            only: env::choice("OVERHEAD_ONLY", &["bare", "layered"]).map(|s| s == "layered"),
            trodo_enabled: env::layer_enabled("OVERHEAD_TRODO_ENABLED"),
            outer: env::choice("OVERHEAD_PLACEMENT", &["route", "outer"]) == Some("outer"),
            tool_ms: env::whole("OVERHEAD_TOOL_MS", 0),
            layer: match env::choice("OVERHEAD_LAYER", &["trodo", "floor", "identity"]) {
                Some("floor") => LayerChoice::Floor,
                Some("identity") => LayerChoice::Identity,
                _ => LayerChoice::Trodo,
            },
            sessionless: env::choice(
                "OVERHEAD_PROTOCOL",
                &[PROTOCOL_VERSION, SESSIONLESS_PROTOCOL_VERSION],
            ) == Some(SESSIONLESS_PROTOCOL_VERSION),
            floor_burn_us: env::whole("OVERHEAD_FLOOR_BURN_US", 0),
        }
        .checked()
    }

    /// Stops the bench on settings that do not go together.
    fn checked(self) -> Self {
        if self.floor_burn_us > MAX_FLOOR_BURN_US {
            env::refuse(
                "OVERHEAD_FLOOR_BURN_US",
                &self.floor_burn_us.to_string(),
                &format!("at most {MAX_FLOOR_BURN_US}"),
            );
        }
        if self.layer != LayerChoice::Floor && self.floor_burn_us > 0 {
            env::refuse(
                "OVERHEAD_FLOOR_BURN_US",
                &self.floor_burn_us.to_string(),
                "0 or unset, unless OVERHEAD_LAYER=floor",
            );
        }
        if self.layer == LayerChoice::Trodo {
            return self;
        }
        if self.outer {
            env::refuse(
                "OVERHEAD_PLACEMENT",
                "outer",
                "route or unset with OVERHEAD_LAYER=floor or identity (those layers go on the routes)",
            );
        }
        if !self.trodo_enabled {
            env::refuse(
                "OVERHEAD_TRODO_ENABLED",
                "false",
                "true or unset with OVERHEAD_LAYER=floor or identity (no TrodoLayer runs)",
            );
        }
        self
    }
}

fn runtime(name: &str, threads: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn main() {
    let options = Options::from_env();
    let server_rt = runtime(SERVER_THREAD, options.server_threads);
    let client_rt = runtime(LOAD_THREAD, options.client_threads);

    // The ingest stands for the remote Trodo API: it runs with the load
    // generator, not on the server's runtime.
    let ingest = client_rt.block_on(CountingIngest::start());
    let (bare, layered, trodo) = server_rt.block_on(async {
        let bare = serve(Layered::Bare).await;
        if options.layer == LayerChoice::Identity {
            return (bare, serve(Layered::Identity).await, None);
        }
        if options.layer == LayerChoice::Floor {
            let burn = Duration::from_micros(options.floor_burn_us);
            // Named as the delivery thread, so that its CPU is counted there.
            let floor = FloorLayer::new(EXPORT_THREAD, burn);
            return (bare, serve(Layered::Floor(floor)).await, None);
        }
        let layer = TrodoLayer::new(
            TrodoConfig::new()
                .with_site_id("bench")
                .expect("a site id")
                .with_api_base(&ingest.base_url)
                .expect("a loopback URL")
                .with_enabled(options.trodo_enabled),
        );
        let trodo = layer.trodo();
        let layered = if options.outer {
            serve(Layered::TrodoOuter(layer)).await
        } else {
            serve(Layered::Trodo(layer)).await
        };
        (bare, layered, Some(trodo))
    });

    print_machine(&options);
    let results = client_rt.block_on(measure(options, bare, layered));
    if options.only.is_none() {
        report(&options, &results);
    }

    if let Some(trodo) = trodo {
        let flushed = server_rt.block_on(trodo.shutdown(Duration::from_secs(30)));
        ingest.print_delivery(&trodo, flushed);
    }
}

/// What the demo MCP server runs behind.
enum Layered {
    Bare,
    /// `TrodoLayer` on the routes (`Router::layer`).
    Trodo(TrodoLayer),
    /// `TrodoLayer` around the whole router.
    TrodoOuter(TrodoLayer),
    /// The floor layer on the routes.
    Floor(FloorLayer),
    /// A layer that does nothing, on the routes.
    Identity,
}

/// The layer the layered server runs (`OVERHEAD_LAYER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LayerChoice {
    Trodo,
    Floor,
    Identity,
}

/// The demo MCP server behind `layered`, on a loopback port.
async fn serve(layered: Layered) -> SocketAddr {
    let mcp = tools::mcp_service(StreamableHttpServerConfig::default(), None);
    let app = Router::new().nest_service("/mcp", mcp);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let addr = listener.local_addr().expect("an address");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = match layered {
        Layered::Bare => app,
        Layered::Trodo(layer) => app.layer(layer),
        Layered::Floor(layer) => app.layer(layer),
        Layered::Identity => app.layer(Identity::new()),
        Layered::TrodoOuter(layer) => {
            // axum::serve wants axum's body: map the layer's back into it.
            let app = tower::ServiceBuilder::new()
                .map_response(IntoResponse::into_response)
                .layer(layer)
                .service(app);
            let app = ServiceExt::<Request<axum::body::Body>>::into_make_service_with_connect_info::<
                SocketAddr,
            >(app);
            tokio::spawn(async move { axum::serve(listener, app).await });
            return addr;
        }
    };
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// One MCP client: its own session (unless it speaks 2026-07-28) on its
/// own keep-alive connection.
struct Client {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
    /// The session id; empty without one.
    session: String,
    sessionless: bool,
    next_id: u64,
}

impl Client {
    async fn connect(addr: SocketAddr, sessionless: bool) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("a connection");
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        let (sender, connection) = http1::handshake(TokioIo::new(tcp))
            .await
            .expect("an HTTP/1.1 handshake");
        tokio::spawn(connection);
        let mut client = Self {
            sender,
            authority: addr.to_string(),
            session: String::new(),
            sessionless,
            next_id: 1,
        };
        if sessionless {
            return client;
        }
        let init = format!(
            r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{PROTOCOL_VERSION}","capabilities":{{}},"clientInfo":{{"name":"overhead-bench","version":"1"}}}}}}"#
        );
        let (status, session, _) = client.post(init, None).await;
        assert_eq!(status, StatusCode::OK, "initialize");
        client.session = session.expect("a session id");
        let (status, _, _) = client
            .post(
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_owned(),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "notifications/initialized");
        client
    }

    /// POSTs `body` to `/mcp` (a call of `tool`, if named); the status, the
    /// session id answered, the body.
    async fn post(
        &mut self,
        body: String,
        tool: Option<&str>,
    ) -> (StatusCode, Option<String>, Bytes) {
        let mut request = Request::post("/mcp")
            .header(HOST, &self.authority)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream");
        if !self.session.is_empty() {
            request = request
                .header("mcp-session-id", &self.session)
                .header("mcp-protocol-version", PROTOCOL_VERSION);
        }
        if self.sessionless {
            request = request
                .header("mcp-protocol-version", SESSIONLESS_PROTOCOL_VERSION)
                .header("mcp-method", "tools/call")
                .header("mcp-name", tool.unwrap_or_default());
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .expect("a request");
        self.sender.ready().await.expect("the connection is open");
        let response = self.sender.send_request(request).await.expect("a response");
        let status = response.status();
        let session = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        (status, session, body)
    }

    /// One `tools/call`: `add`, or with `tool_ms` above 0, `slow_progress`.
    async fn call(&mut self, tool_ms: u64) {
        let id = self.next_id;
        self.next_id += 1;
        // What a 2026-07-28 client adds to every request's `_meta`.
        let client_meta = if self.sessionless {
            format!(
                r#""io.modelcontextprotocol/protocolVersion":"{SESSIONLESS_PROTOCOL_VERSION}","io.modelcontextprotocol/clientInfo":{{"name":"overhead-bench","version":"1"}},"io.modelcontextprotocol/clientCapabilities":{{}}"#
            )
        } else {
            String::new()
        };
        let add_meta = if client_meta.is_empty() {
            String::new()
        } else {
            format!(r#","_meta":{{{client_meta}}}"#)
        };
        let progress_meta = if client_meta.is_empty() {
            String::new()
        } else {
            format!(",{client_meta}")
        };
        let (tool, body, expected) = if tool_ms == 0 {
            (
                "add",
                format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"add","arguments":{{"a":{id},"b":2}}{add_meta}}}}}"#
                ),
                format!("\"text\":\"{}\"", id + 2),
            )
        } else {
            (
                "slow_progress",
                format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"slow_progress","arguments":{{"steps":1,"delay_ms":{tool_ms}}},"_meta":{{"progressToken":{id}{progress_meta}}}}}}}"#
                ),
                "done after 1 steps".to_owned(),
            )
        };
        let (status, _, answer) = self.post(body, Some(tool)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            answer
                .windows(expected.len())
                .any(|w| w == expected.as_bytes()),
            "the sum in {answer:?}"
        );
    }
}

/// What one round on one server did.
#[derive(Debug, Default)]
struct Round {
    requests: usize,
    elapsed: Duration,
    /// Latency of every request, in microseconds.
    latencies: Vec<u32>,
    /// CPU time the round took, by thread name.
    cpu: CpuTimes,
}

/// CPU time of this process's threads, summed by thread name: `server`
/// (the server's runtime), `trodo-export` (the layer's delivery thread),
/// `load` (the load generator and the ingest). Read from
/// `/proc/self/task/*/schedstat` (nanoseconds on CPU); empty elsewhere.
#[derive(Debug, Default, Clone)]
struct CpuTimes(std::collections::BTreeMap<String, Duration>);

impl CpuTimes {
    fn now() -> Self {
        let mut times = std::collections::BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Self(times);
        };
        for task in tasks.flatten() {
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let on_cpu = std::fs::read_to_string(path.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            *times
                .entry(name.trim().to_owned())
                .or_insert(Duration::ZERO) += Duration::from_nanos(on_cpu);
        }
        Self(times)
    }

    /// What the threads used since `earlier` (threads gone since are not counted).
    fn since(&self, earlier: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(name, t)| {
                    let before = earlier.0.get(name).copied().unwrap_or_default();
                    (name.clone(), t.saturating_sub(before))
                })
                .collect(),
        )
    }

    fn add(&mut self, other: &Self) {
        for (name, t) in &other.0 {
            *self.0.entry(name.clone()).or_insert(Duration::ZERO) += *t;
        }
    }

    /// CPU microseconds per request of the threads called `name`.
    fn per_request(&self, name: &str, requests: usize) -> f64 {
        let t = self.0.get(name).copied().unwrap_or_default();
        t.as_secs_f64() * 1e6 / requests.max(1) as f64
    }
}

/// Every client calls its tool back to back until `duration` is over.
async fn round(clients: &mut Vec<Client>, duration: Duration, tool_ms: u64) -> Round {
    let cpu_before = CpuTimes::now();
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = clients
        .drain(..)
        .map(|mut client| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(64 * 1024);
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    client.call(tool_ms).await;
                    let took = sent.elapsed().as_micros();
                    latencies.push(u32::try_from(took).unwrap_or(u32::MAX));
                }
                (client, latencies)
            })
        })
        .collect();
    let mut result = Round::default();
    for task in tasks {
        let (client, latencies) = task.await.expect("a client task");
        clients.push(client);
        result.latencies.extend(latencies);
    }
    result.elapsed = started.elapsed();
    result.cpu = CpuTimes::now().since(&cpu_before);
    result.requests = result.latencies.len();
    result
}

/// The rounds of both servers.
struct Results {
    bare: Vec<Round>,
    layered: Vec<Round>,
}

async fn measure(options: Options, bare: SocketAddr, layered: SocketAddr) -> Results {
    let mut bare_clients = Vec::new();
    let mut layered_clients = Vec::new();
    for _ in 0..options.clients {
        bare_clients.push(Client::connect(bare, options.sessionless).await);
        layered_clients.push(Client::connect(layered, options.sessionless).await);
    }
    if options.only != Some(true) {
        round(&mut bare_clients, options.warmup, options.tool_ms).await;
    }
    if options.only != Some(false) {
        round(&mut layered_clients, options.warmup, options.tool_ms).await;
    }
    let mut results = Results {
        bare: Vec::new(),
        layered: Vec::new(),
    };
    for r in 0..options.rounds {
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_layer in order {
            if options.only.is_some_and(|only| only != with_layer) {
                continue;
            }
            if with_layer {
                let done = round(&mut layered_clients, options.round, options.tool_ms).await;
                print_round(r, "layered", &done);
                results.layered.push(done);
            } else {
                let done = round(&mut bare_clients, options.round, options.tool_ms).await;
                print_round(r, "bare", &done);
                results.bare.push(done);
            }
        }
    }
    results
}

fn print_round(r: usize, name: &str, round: &Round) {
    let mut latencies = round.latencies.clone();
    let (p50, p99) = percentiles(&mut latencies);
    println!(
        "  round {} {name:<8} {:>8.0} req/s  p50 {:>5} us  p99 {:>5} us  CPU/request: server {:>5.1} us, delivery {:>4.1} us, load {:>4.1} us",
        r + 1,
        round.requests as f64 / round.elapsed.as_secs_f64(),
        p50,
        p99,
        round.cpu.per_request(SERVER_THREAD, round.requests),
        round.cpu.per_request(EXPORT_THREAD, round.requests),
        round.cpu.per_request(LOAD_THREAD, round.requests),
    );
}

/// p50 and p99 in microseconds.
fn percentiles(latencies: &mut [u32]) -> (u32, u32) {
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (at(0.50), at(0.99))
}

/// Requests/s over all rounds, p50 and p99 over all requests.
fn summary(rounds: &[Round]) -> (f64, u32, u32) {
    let requests = total_requests(rounds);
    let elapsed: f64 = rounds.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    let mut latencies: Vec<u32> = rounds
        .iter()
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    let (p50, p99) = percentiles(&mut latencies);
    (requests as f64 / elapsed, p50, p99)
}

fn total_requests(rounds: &[Round]) -> usize {
    rounds.iter().map(|r| r.requests).sum()
}

/// Server and delivery CPU microseconds per request over all rounds.
fn cpu_per_request(rounds: &[Round]) -> (f64, f64) {
    let mut cpu = CpuTimes::default();
    for round in rounds {
        cpu.add(&round.cpu);
    }
    let requests = total_requests(rounds);
    (
        cpu.per_request(SERVER_THREAD, requests),
        cpu.per_request(EXPORT_THREAD, requests),
    )
}

fn report(options: &Options, results: &Results) {
    let (bare_rps, bare_p50, bare_p99) = summary(&results.bare);
    let (layered_rps, layered_p50, layered_p99) = summary(&results.layered);
    let throughput = layered_rps / bare_rps;
    let p50 = f64::from(layered_p50) / f64::from(bare_p50);
    let p99 = f64::from(layered_p99) / f64::from(bare_p99);
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let tool = match options.tool_ms {
        0 => "add".to_owned(),
        ms => format!("slow_progress ({ms} ms, one progress event)"),
    };
    println!(
        "tools/call {tool}, {} clients, {} rounds of {:?} each:",
        options.clients, options.rounds, options.round
    );
    println!("  {:<8} {:>8} {:>9} {:>9}", "", "req/s", "p50", "p99");
    println!(
        "  {:<8} {bare_rps:>8.0} {bare_p50:>6} us {bare_p99:>6} us",
        "bare"
    );
    println!(
        "  {:<8} {layered_rps:>8.0} {layered_p50:>6} us {layered_p99:>6} us",
        "layered"
    );
    println!(
        "  layered / bare: throughput {throughput:.3} (target >= {TARGET_THROUGHPUT}: {}), p50 {p50:.3}, p99 {p99:.3} (target <= {TARGET_P99}: {})",
        verdict(throughput >= TARGET_THROUGHPUT),
        verdict(p99 <= TARGET_P99),
    );
    let (bare_server, _) = cpu_per_request(&results.bare);
    let (layered_server, layered_export) = cpu_per_request(&results.layered);
    println!(
        "  CPU per request: bare server {bare_server:.1} us; layered server {layered_server:.1} us + delivery thread {layered_export:.1} us = {:.3} x bare",
        (layered_server + layered_export) / bare_server
    );
}

fn print_machine(options: &Options) {
    println!("machine: {}", machine::describe());
    println!(
        "server runtime: {} worker thread(s); load generator and ingest: {} worker thread(s)",
        options.server_threads, options.client_threads
    );
    if options.layer == LayerChoice::Identity {
        println!("the layered server runs a layer that does nothing (OVERHEAD_LAYER=identity)");
    } else if options.layer == LayerChoice::Floor {
        println!(
            "the layered server runs the floor layer (OVERHEAD_LAYER=floor), its thread spinning {} us per exchange",
            options.floor_burn_us
        );
    } else if options.outer {
        println!("the layer wraps the whole router (OVERHEAD_PLACEMENT=outer)");
    }
    if !options.trodo_enabled {
        println!("the layered server's layer is switched off (OVERHEAD_TRODO_ENABLED=false)");
    }
}
