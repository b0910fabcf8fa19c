//! The demo MCP server behind [`TrodoLayer`]: rmcp's Streamable HTTP service
//! over [`DemoTools`](crate::tools::DemoTools) at `/mcp`, with TCP_NODELAY and
//! a graceful shutdown that ends the rmcp sessions, then the Trodo runs.
//!
//! Shared by `examples/mcp_server.rs` and `examples/demo.rs` through
//! `#[path = "support/server.rs"] mod server;`; the including crate must also
//! have `#[path = "support/tools.rs"] mod tools;` at its root.

// Items are `pub` for whichever crate includes the module; under this crate's
// `unreachable_pub` lint a private `mod server;` would flag each one.
#![allow(unreachable_pub)]

use std::{future::Future, time::Duration};

use axum::{Router, serve::ListenerExt};
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, session::local::LocalSessionManager,
};
use tokio::{net::TcpListener, sync::oneshot};
use trodo_tower::TrodoLayer;

use crate::tools::mcp_service;

/// How long open connections get to finish after the shutdown signal before
/// the server stops waiting for them.
pub const GRACEFUL_WAIT: Duration = Duration::from_secs(5);

/// How long [`Trodo::shutdown`](trodo_tower::Trodo::shutdown) may take to
/// deliver what is still queued.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The rmcp settings the examples let you change.
#[derive(Clone, Debug)]
pub struct McpOptions {
    /// The `Host` header values rmcp accepts; `None` keeps rmcp's default
    /// (loopback only: `localhost`, `127.0.0.1`, `::1`).
    pub allowed_hosts: Option<Vec<String>>,
    /// How long a session may stay idle before rmcp forgets it (later requests
    /// get 404); `None` means never.
    pub keep_alive: Option<Duration>,
}

impl Default for McpOptions {
    /// rmcp's defaults.
    fn default() -> Self {
        Self {
            allowed_hosts: None,
            keep_alive: LocalSessionManager::default().session_config.keep_alive,
        }
    }
}

/// Serves the demo MCP server, wrapped by `layer`, on `listener` until
/// `shutdown` resolves. Then it stops accepting connections, ends every rmcp
/// session (which also ends their SSE streams, a GET stream would otherwise
/// stay open forever), waits at most [`GRACEFUL_WAIT`] for the open
/// connections, and finally shuts the layer down: runs still open end with
/// `closed_via: "server_shutdown"` and the delivery queue is flushed.
///
/// # Errors
/// An I/O error of the listener.
pub async fn serve(
    listener: TcpListener,
    layer: TrodoLayer,
    options: McpOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let trodo = layer.trodo();

    let mut config = StreamableHttpServerConfig::default();
    if let Some(hosts) = options.allowed_hosts {
        config = config.with_allowed_hosts(hosts);
    }
    // Cancelling this token ends every rmcp session and its response streams.
    let sessions = config.cancellation_token.clone();
    let app = Router::new()
        .nest_service("/mcp", mcp_service(config, options.keep_alive))
        .layer(layer);

    // SSE answers are written in small pieces; with Nagle's algorithm on, the
    // last piece waits for the client's delayed ACK, ~40 ms on every answer.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });

    let (signalled_tx, signalled_rx) = oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: closing MCP sessions");
        sessions.cancel();
        let _ = signalled_tx.send(());
    };
    // The peer address lets the layer tell apart sessionless clients on
    // different hosts (the client identity key); see the README.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .into_future();
    // Starts counting once the signal came; never fires before.
    let deadline = async move {
        match signalled_rx.await {
            Ok(()) => tokio::time::sleep(GRACEFUL_WAIT).await,
            Err(_) => std::future::pending().await,
        }
    };
    let served = tokio::select! {
        served = server => served,
        () = deadline => {
            tracing::warn!(
                "connections still open {GRACEFUL_WAIT:?} after the shutdown signal; not waiting for them"
            );
            Ok(())
        }
    };

    let flushed = trodo.shutdown(FLUSH_TIMEOUT).await;
    let counters = trodo.delivery_counters();
    if flushed {
        tracing::info!(
            sent = counters.sent,
            failed = counters.failed,
            dropped = counters.dropped_queue_full,
            "trodo: open runs ended, queue flushed"
        );
    } else {
        tracing::warn!(
            sent = counters.sent,
            failed = counters.failed,
            dropped = counters.dropped_queue_full,
            "trodo: queue not flushed within {FLUSH_TIMEOUT:?}"
        );
    }
    served
}
