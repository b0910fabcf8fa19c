//! The layer's own cost per MCP exchange, without a network
//! (`cargo bench --bench exchange`).
//!
//! One thread drives `tools/call` exchanges through an in-process axum
//! service (no sockets, no rmcp), in one open session. The service answers
//! the way rmcp does: it reads the whole request body, then answers one SSE
//! event with the JSON-RPC result. It runs bare and behind `TrodoLayer`,
//! which delivers to a local counting ingest on a thread of its own. Rounds
//! alternate bare / layered, so that drift of the machine hits both alike.
//!
//! The driver pauses for a millisecond after every [`BURST`] exchanges
//! (in both services), so that the layer's delivery thread keeps up, as it
//! does in a real server: unpaced, one thread drives about 120,000
//! exchanges a second, more than the delivery thread can read and send,
//! and requests then read the backlog themselves (see the crate's
//! `backlog` module).
//!
//! Printed per round, then as medians: the CPU time the driving thread spent
//! per exchange (from `/proc/thread-self/schedstat`), what the layer added
//! and the layered / bare ratio; the CPU time of the layer's delivery
//! thread per exchange (where it reads exchanges and delivers); and the
//! heap bytes allocated per exchange
//! (all threads of the process, so the delivery thread's and the local
//! ingest's share are included). This isolates
//! what the layer costs a request. It is much steadier than the load bench
//! (`benches/overhead.rs`), where the network, rmcp and the load generator
//! share the machine.
//!
//! Environment (all optional; a value not understood stops the bench with
//! a message that names the variable):
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `EXCHANGE_CALLS` | exchanges per round | 100000 |
//! | `EXCHANGE_ROUNDS` | measured rounds per service | 5 |
//! | `EXCHANGE_TRODO_ENABLED` | `false`: the layer is switched off (`TRODO_ENABLED=false`), to measure the pass-through | `true` |
//! | `EXCHANGE_PROTOCOL` | `2025-11-25`: `initialize`, then every call in the session; `2026-07-28`: no session, every call names the client in `params._meta` and the method in `Mcp-Method` / `Mcp-Name` (as Python's `mcp.Client` and `fastmcp.Client` do by default), grouped into one run by the client's identity | `2025-11-25` |

#[path = "support/counting_ingest.rs"]
mod counting_ingest;
#[path = "support/env.rs"]
mod env;
#[path = "support/machine.rs"]
mod machine;

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::post;
use cap::Cap;
use counting_ingest::CountingIngest;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Service, ServiceExt};
use trodo_tower::{TrodoConfig, TrodoLayer};

#[global_allocator]
static ALLOCATOR: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

/// Exchanges between two pauses of the driver.
const BURST: usize = 64;

const SESSION_ID: &str = "7f3c2a9e41b04d5f8a6e2c1b9d0e4f37";
const PROTOCOL_VERSION: &str = "2025-11-25";
const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"exchange-bench","version":"1"}}}"#;
const TOOLS_CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}}"#;
/// `TOOLS_CALL` as a 2026-07-28 client sends it, without a session.
const SESSIONLESS_PROTOCOL_VERSION: &str = "2026-07-28";
const SESSIONLESS_TOOLS_CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"exchange-bench","version":"1"}}}}"#;
/// rmcp's SSE answer to `TOOLS_CALL`, frame by frame: a priming event, then
/// the result (as in the wire captures of the official clients).
const ANSWER: [&str; 2] = [
    "data: \nid: 0/1\nretry: 3000\n\n",
    "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"3\"}],\"isError\":false}}\nid: 1/1\n\n",
];
/// rmcp's answer to `SESSIONLESS_TOOLS_CALL`: the result alone, no event ids.
const SESSIONLESS_ANSWER: [&str; 1] = [
    "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"3\"}],\"isError\":false}}\n\n",
];
const INITIALIZE_ANSWER: [&str; 2] = [
    "data: \nid: 0/0\nretry: 3000\n\n",
    "data: {\"jsonrpc\":\"2.0\",\"id\":0,\"result\":{\"protocolVersion\":\"2025-11-25\",\"capabilities\":{\"tools\":{}},\"serverInfo\":{\"name\":\"rmcp\",\"version\":\"1\"}}}\nid: 1/0\n\n",
];

fn main() {
    let calls = env::positive("EXCHANGE_CALLS", 100_000) as usize;
    let rounds = env::positive("EXCHANGE_ROUNDS", 5) as usize;
    let enabled = env::layer_enabled("EXCHANGE_TRODO_ENABLED");
    let protocol = Protocol::from_env();
    let ingest = serve_ingest();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!("machine: {}", machine::describe());
    if !enabled {
        println!("the layer is switched off (EXCHANGE_TRODO_ENABLED=false)");
    }
    runtime.block_on(async {
        let layer = TrodoLayer::new(
            TrodoConfig::new()
                .with_site_id("bench")
                .expect("a site id")
                .with_api_base(&ingest.base_url)
                .expect("a loopback URL")
                .with_enabled(enabled),
        );
        let trodo = layer.trodo();
        let mut bare = app();
        let mut layered = app().layer(layer);
        if protocol == Protocol::InSession {
            let initialize = mcp_post().body(Body::from(INITIALIZE)).expect("a request");
            call(&mut layered, initialize).await;
        }
        let (mut bare_rounds, mut layered_rounds) = (Vec::new(), Vec::new());
        // A warm-up round of each, not counted.
        for round in 0..=rounds {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for with_layer in order {
                let result = if with_layer {
                    drive(&mut layered, calls, protocol).await
                } else {
                    drive(&mut bare, calls, protocol).await
                };
                if round == 0 {
                    continue;
                }
                let name = if with_layer { "layered" } else { "bare" };
                println!(
                    "  round {round} {name:<8} {:7.0} ns CPU (+ {:5.0} ns delivery thread), {:6.0} B allocated per exchange",
                    result.cpu_ns, result.delivery_ns, result.bytes
                );
                if with_layer {
                    layered_rounds.push(result);
                } else {
                    bare_rounds.push(result);
                }
            }
        }
        let (bare, layered) = (Cost::median(bare_rounds), Cost::median(layered_rounds));
        println!(
            "tools/call exchanges in process ({}), {rounds} rounds of {calls}; medians:",
            protocol.describe()
        );
        println!(
            "  bare    {:7.0} ns CPU, {:6.0} B allocated per exchange",
            bare.cpu_ns, bare.bytes
        );
        println!(
            "  layered {:7.0} ns CPU (+ {:5.0} ns delivery thread), {:6.0} B allocated per exchange",
            layered.cpu_ns, layered.delivery_ns, layered.bytes
        );
        println!(
            "  the layer adds {:.0} ns CPU ({:.2} x bare) and {:.0} B per exchange",
            layered.cpu_ns - bare.cpu_ns,
            layered.cpu_ns / bare.cpu_ns,
            layered.bytes - bare.bytes
        );
        let flushed = trodo.shutdown(Duration::from_secs(30)).await;
        ingest.print_delivery(&trodo, flushed);
    });
}

/// The counting ingest, served on a thread of its own.
fn serve_ingest() -> CountingIngest {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("ingest".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(async move {
                let _ = sender.send(CountingIngest::start().await);
                std::future::pending::<()>().await;
            });
        })
        .expect("the ingest thread");
    receiver.recv().expect("the ingest started")
}

/// The stand-in MCP endpoint: reads the request, answers like rmcp.
fn app() -> Router {
    Router::new().route(
        "/mcp",
        post(|request: Request<Body>| async move {
            let body = request
                .into_body()
                .collect()
                .await
                .expect("a body")
                .to_bytes();
            let initialize = body.starts_with(&INITIALIZE.as_bytes()[..40]);
            let sessionless = body.len() == SESSIONLESS_TOOLS_CALL.len();
            let mut response = Response::builder()
                .header(CONTENT_TYPE, "text/event-stream")
                .header("cache-control", "no-cache");
            if initialize {
                response = response.header("mcp-session-id", SESSION_ID);
            }
            let answer: &[&'static str] = if initialize {
                &INITIALIZE_ANSWER
            } else if sessionless {
                &SESSIONLESS_ANSWER
            } else {
                &ANSWER
            };
            let frames = answer
                .iter()
                .map(|frame| Ok::<_, Infallible>(Bytes::from_static(frame.as_bytes())));
            response
                .body(Body::from_stream(futures::stream::iter(frames)))
                .expect("a response")
        }),
    )
}

/// How the bench's client calls the tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// 2025-11-25: in the session `initialize` opened.
    InSession,
    /// 2026-07-28: no session; the client named in every request.
    Sessionless,
}

impl Protocol {
    fn from_env() -> Self {
        match env::choice(
            "EXCHANGE_PROTOCOL",
            &[PROTOCOL_VERSION, SESSIONLESS_PROTOCOL_VERSION],
        ) {
            Some(SESSIONLESS_PROTOCOL_VERSION) => Self::Sessionless,
            _ => Self::InSession,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::InSession => "2025-11-25, in a session",
            Self::Sessionless => "2026-07-28, without a session",
        }
    }

    /// A `tools/call` request as this client sends it.
    fn tools_call(self) -> Request<Body> {
        match self {
            Self::InSession => mcp_post()
                .header("mcp-session-id", SESSION_ID)
                .header("mcp-protocol-version", PROTOCOL_VERSION)
                .body(Body::from(TOOLS_CALL)),
            Self::Sessionless => mcp_post()
                .header("mcp-protocol-version", SESSIONLESS_PROTOCOL_VERSION)
                .header("mcp-method", "tools/call")
                .header("mcp-name", "add")
                .body(Body::from(SESSIONLESS_TOOLS_CALL)),
        }
        .expect("a request")
    }
}

/// A POST to the endpoint, as an MCP client sends it.
fn mcp_post() -> http::request::Builder {
    Request::post("/mcp")
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "application/json, text/event-stream")
}

/// One exchange: sends `request` and reads the whole answer.
async fn call(service: &mut Router, request: Request<Body>) {
    let response: Response<Body> = ServiceExt::<Request<Body>>::ready(service)
        .await
        .unwrap_or_else(|e: Infallible| match e {})
        .call(request)
        .await
        .unwrap_or_else(|e: Infallible| match e {});
    assert_eq!(response.status(), StatusCode::OK);
    let answer = response
        .into_body()
        .collect()
        .await
        .expect("an answer")
        .to_bytes();
    assert!(answer.ends_with(b"\n\n"), "a whole SSE event");
}

/// What one round cost per exchange.
#[derive(Debug, Clone, Copy)]
struct Cost {
    cpu_ns: f64,
    delivery_ns: f64,
    bytes: f64,
}

impl Cost {
    /// The median of each figure over the rounds.
    fn median(mut rounds: Vec<Self>) -> Self {
        let middle = rounds.len() / 2;
        rounds.sort_by(|a, b| a.cpu_ns.total_cmp(&b.cpu_ns));
        let cpu_ns = rounds[middle].cpu_ns;
        rounds.sort_by(|a, b| a.delivery_ns.total_cmp(&b.delivery_ns));
        let delivery_ns = rounds[middle].delivery_ns;
        rounds.sort_by(|a, b| a.bytes.total_cmp(&b.bytes));
        Self {
            cpu_ns,
            delivery_ns,
            bytes: rounds[middle].bytes,
        }
    }
}

/// `calls` tools/call exchanges, in bursts of [`BURST`].
async fn drive(service: &mut Router, calls: usize, protocol: Protocol) -> Cost {
    let allocated = ALLOCATOR.total_allocated();
    let cpu = cpu_ns("/proc/thread-self/schedstat");
    let delivery = delivery_cpu_ns();
    for call_number in 0..calls {
        call(service, protocol.tools_call()).await;
        if call_number % BURST == BURST - 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let n = calls as f64;
    Cost {
        cpu_ns: (cpu_ns("/proc/thread-self/schedstat") - cpu) as f64 / n,
        delivery_ns: (delivery_cpu_ns() - delivery) as f64 / n,
        bytes: (ALLOCATOR.total_allocated() - allocated) as f64 / n,
    }
}

/// Nanoseconds the thread of `schedstat` spent on a CPU (0 where `/proc`
/// cannot tell).
fn cpu_ns(schedstat: &str) -> u64 {
    std::fs::read_to_string(schedstat)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Nanoseconds the layer's delivery thread (`trodo-export`) spent on a CPU.
fn delivery_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim() == "trodo-export")
        })
        .map(|task| cpu_ns(&task.path().join("schedstat").to_string_lossy()))
        .sum()
}
