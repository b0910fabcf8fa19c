//! Agent analytics for MCP servers in [Trodo], with one line.
//!
//! Put [`TrodoLayer`] in front of your MCP server (any tower HTTP service,
//! e.g. rmcp's `StreamableHttpService` in an axum router) and every MCP
//! session becomes one Trodo run, every request in it one span whose input
//! and output are the request and response bodies.
//!
//! ```no_run
//! use axum::Router;
//! use trodo_tower::{TrodoConfig, TrodoLayer};
//!
//! # async fn run(mcp_service: axum::routing::Router) -> Result<(), Box<dyn std::error::Error>> {
//! let layer = TrodoLayer::new(TrodoConfig::from_env()?);
//! let trodo = layer.trodo();
//! let app = Router::new()
//!     .nest_service("/mcp", mcp_service) // e.g. rmcp's StreamableHttpService
//!     .layer(layer);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! trodo.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(())
//! # }
//! ```
//!
//! # The run model
//!
//! - The run opens when the response to a POSTed `initialize` carries a new
//!   `Mcp-Session-Id`; `conversation_id` is that session id, `input` the
//!   initialize request, `metadata` the client and server names and
//!   versions and the negotiated protocol version.
//! - Every later JSON-RPC request of the session is a span: `tools/call` is
//!   `tool.<name>` (kind `tool`), `resources/read` `resource.<uri>`,
//!   `prompts/get` `prompt.<name>`, others `mcp.<method>` (kind `generic`).
//!   Requests on other routes of the same router that carry the session
//!   header are spans `http.<METHOD> <route>` (kind `tool`). Notifications
//!   and client responses (answered 202) make no span.
//! - A span's `output` is the JSON-RPC response: the JSON body, or the SSE
//!   event that carries the response to the request's id. It is an error for
//!   a JSON-RPC error (`caller_error` or `server_error`), a tool result with
//!   `isError: true` (`tool_error`), an HTTP 5xx (`http_error`), a broken
//!   stream (`stream_error`) or a client that went away (`cancelled`).
//! - An event stream that ends before its answer but can be resumed (it
//!   carried an event id: MCP 2025-11-25 SSE polling, or a broken
//!   connection) leaves its span waiting in the session's run: a GET of the
//!   session that resumes the stream (`Last-Event-ID`) and brings the
//!   answer ends the span with it (`mcp.stream_resumed`). No answer within
//!   the idle timeout (30 s if the client dropped the stream; a GET that
//!   continues the call renews it), or the session's end first, sends the
//!   span as before; so do more than 16 waiting calls in a session or
//!   1,024 in the process, and every call with a session store.
//! - The run ends once, with the totals of all its spans and
//!   `metadata.closed_via`: `session_deleted` (DELETE answered 2xx),
//!   `idle_timeout`, `session_expired` (the server answered 404),
//!   `initialize_failed` (the server answered `initialize` with a JSON-RPC
//!   error) or `server_shutdown` ([`Trodo::shutdown`]).
//! - A session this process does not know (after a restart, or on another
//!   worker) opens its run on the fly with `metadata.resumed: true`, unless
//!   a [session store](store) shared by the workers holds its run.
//! - Requests without a session (MCP 2026-07-28, stateless servers) are
//!   grouped into runs by the first key that resolves: the application's
//!   ([`TrodoConfig::with_run_key`]), a vendor conversation id in
//!   `params._meta`, or the client's identity; an idle gap ends such a run.
//!   See [`Sessionless`].
//!
//! The client receives byte for byte what the inner service sent, as it was
//! sent; delivery runs on a thread of its own, so no request waits on the
//! ingest API and no failure of it reaches a client (see
//! [`Trodo::delivery_counters`] for what was sent, retried and dropped).
//!
//! # Where to put the layer
//!
//! - `Router::layer` on the router that nests the MCP service records MCP
//!   requests and, for requests that carry the session header, the router's
//!   other routes. `route_layer` records only matched routes.
//! - Around any `Service<http::Request<B>>` whose bodies yield `Bytes`
//!   (hyper's and axum's do), with `tower::ServiceBuilder`.
//! - [`SpanKindLayer`] with `route_layer` sets the span kind of some routes.
//!
//! # Beyond the layer
//!
//! - Handlers reach the request's span through request extensions
//!   ([`RequestSpan`]) to add child spans (LLM calls with tokens and cost)
//!   and to propagate the run to services they call.
//! - [`Trodo`] has the Python SDK's manual API: [`Trodo::start_run`],
//!   [`Trodo::join_run`], [`Trodo::end_run`], [`Trodo::feedback`],
//!   [`Trodo::wrap_agent`].
//!
//! # Feature flags
//!
//! | name | what | default |
//! |---|---|---|
//! | `rustls` | TLS to the ingest API through rustls | yes |
//! | `redis` | `store::RedisStore`, `TRODO_REDIS_URL`: many workers share runs | no |
//!
//! [Trodo]: https://trodo.ai

/// Crate internals for `benches/micro.rs`; not part of the API.
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
#[path = "bench.rs"]
pub mod __bench;
mod api;
mod attributes;
mod backlog;
mod body;
mod capture;
mod capture_policy;
mod char_window;
mod config;
mod deferred;
mod error;
mod exchange;
mod export;
mod fence;
mod future;
mod hook;
mod json_writer;
mod layer;
mod leftovers;
mod log_pace;
mod mcp;
mod moment;
mod recorder;
mod resume;
mod route_kind;
mod run;
mod service;
mod span_draft;
mod span_kind;
mod state;
pub mod store;
mod tape;
mod watch;
#[cfg(test)]
mod watched_bytes;
mod wire;

pub use api::{
    AgentRun, EndRun, Feedback, PARENT_SPAN_ID_HEADER, RUN_ID_HEADER, RequestSpan, SpanGuard,
    StartRun,
};
pub use body::{RequestBody, ResponseBody};
pub use config::{
    DEFAULT_AGENT_NAME, DEFAULT_API_BASE, DEFAULT_CAPTURE_LIMIT, DEFAULT_CONVERSATION_META_KEYS,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_OPEN_RUNS, DEFAULT_SESSION_HEADER, DEFAULT_STORE_TIMEOUT,
    MAX_IDLE_TIMEOUT, Sessionless, TrodoConfig,
};
pub use error::ConfigError;
pub use export::DeliveryCounters;
pub use future::ResponseFuture;
pub use layer::TrodoLayer;
pub use route_kind::{SetSpanKind, SetSpanKindFuture, SpanKindLayer};
pub use service::TrodoService;
pub use span_kind::{SpanKind, UnknownSpanKind};
pub use state::Trodo;
pub use wire::{MAX_ERROR_CHARS, MAX_IO_CHARS};

/// The README's Rust examples, compiled and run as doctests: users copy them.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
