//! Run with: cargo run --example mcp_server
//!
//! An MCP server (rmcp's Streamable HTTP service with the demo tools `echo`,
//! `add`, `fail`, `slow_progress` and `wait_for_release`) at
//! `http://MCP_ADDR/mcp`, recorded by [`TrodoLayer`]: every MCP session is a
//! Trodo run, every request in it a span.
//!
//! Environment:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `MCP_ADDR` | address to listen on | `127.0.0.1:8080` |
//! | `MCP_ALLOWED_HOSTS` | comma-separated `Host` header values rmcp accepts (e.g. `mcp.example.com,mcp.example.com:443`); needed when clients reach the server under a name that is not loopback | rmcp's: `localhost,127.0.0.1,::1` |
//! | `MCP_SESSION_KEEP_ALIVE_SECS` | seconds an idle MCP session lives before rmcp forgets it (later requests get 404) | rmcp's: `300` |
//! | `TRODO_SITE_ID` | your Trodo site id; unset: runs and spans are printed to stdout | unset |
//! | `TRODO_API_BASE` | base URL of the Trodo ingest API | `https://sdkapi.trodo.ai` |
//! | `TRODO_AGENT_NAME` | `agent_name` of every run | `mcp_server` |
//! | `TRODO_IDLE_TIMEOUT_SECS` | seconds without a request before a run ends; keep it at least `MCP_SESSION_KEEP_ALIVE_SECS` | `300` |
//! | `TRODO_ENABLED` | `false` makes the layer a pass-through | `true` |
//! | `RUST_LOG` | log filter (logs go to stderr) | `info` |
//!
//! A bad value of any of these stops the server at startup with a message
//! naming the variable.
//!
//! Ctrl-C or SIGTERM shuts down gracefully: no new connections, the MCP
//! sessions are closed, then the runs still open end with
//! `closed_via: "server_shutdown"` and what is queued for Trodo is delivered.
//!
//! Try it with curl:
//!
//! ```text
//! curl -si http://127.0.0.1:8080/mcp -H 'content-type: application/json' \
//!   -H 'accept: application/json, text/event-stream' \
//!   -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}'
//! # then the same headers plus `mcp-session-id: <from the answer>` for
//! # notifications/initialized, tools/call, ... and finally `curl -X DELETE`.
//! ```

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;
use trodo_tower::{TrodoConfig, TrodoLayer};

#[path = "support/server.rs"]
mod server;
#[path = "support/tools.rs"]
mod tools;

use server::McpOptions;

const DEFAULT_ADDR: &str = "127.0.0.1:8080";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}`: the message and its causes on one line, never a backtrace.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let config = TrodoConfig::from_env()?;
    let trodo = match (config.is_enabled(), config.site_id()) {
        (false, _) => "disabled".to_owned(),
        (true, Some(_)) => format!("sending to {}", config.api_base()),
        (true, None) => "printing to console".to_owned(),
    };
    let layer = TrodoLayer::new(config);
    let options = mcp_options_from_env()?;

    let addr = env("MCP_ADDR").unwrap_or_else(|| DEFAULT_ADDR.to_owned());
    let listener = tokio::net::TcpListener::bind(addr.trim())
        .await
        .with_context(|| format!("cannot listen on MCP_ADDR = {addr:?}"))?;
    let local = listener.local_addr()?;

    println!("MCP server on http://{local}/mcp (trodo: {trodo})");

    server::serve(listener, layer, options, shutdown_signal()).await?;
    Ok(())
}

/// A variable's value; unset and not-unicode both count as unset.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `MCP_ALLOWED_HOSTS` and `MCP_SESSION_KEEP_ALIVE_SECS` over rmcp's defaults.
fn mcp_options_from_env() -> anyhow::Result<McpOptions> {
    let mut options = McpOptions::default();
    if let Some(list) = env("MCP_ALLOWED_HOSTS") {
        let hosts: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        anyhow::ensure!(
            !hosts.is_empty(),
            "invalid MCP_ALLOWED_HOSTS = {list:?}: expected a comma-separated list of host names"
        );
        options.allowed_hosts = Some(hosts);
    }
    if let Some(secs) = env("MCP_SESSION_KEEP_ALIVE_SECS") {
        let seconds = secs
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| *s > 0)
            .with_context(|| {
                format!(
                    "invalid MCP_SESSION_KEEP_ALIVE_SECS = {secs:?}: expected a whole number of seconds greater than zero"
                )
            })?;
        options.keep_alive = Some(Duration::from_secs(seconds));
    }
    Ok(options)
}

/// Resolves on Ctrl-C, or on SIGTERM on unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {err}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(err) => {
                tracing::error!("cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
