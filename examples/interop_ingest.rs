//! Run with: cargo run --example interop_ingest
//!
//! The recording stand-in for the Trodo ingest API
//! ([`RecordingIngest`](ingest::RecordingIngest)) as a process of its own, for
//! the interop suite (`interop/run`), whose clients are not Rust: it records
//! every `POST /api/sdk/...` and serves what it recorded as JSON on a second
//! port.
//!
//! It prints two lines on stdout, then serves until Ctrl-C or SIGTERM:
//!
//! ```text
//! ingest http://127.0.0.1:PORT
//! received http://127.0.0.1:PORT2/received
//! ```
//!
//! Point the layer at the first (`TRODO_API_BASE`); `GET` the second for
//! everything received so far, in arrival order: a JSON array of
//! `{"seq", "path", "site_id", "content_type", "body"}`.

use std::net::Ipv4Addr;

use axum::{Json, Router, extract::State, routing::get};
use serde_json::{Value, json};

#[path = "support/ingest.rs"]
mod ingest;

use ingest::RecordingIngest;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ingest = RecordingIngest::start().await?;

    let dump = Router::new()
        .route("/received", get(received))
        .with_state(ingest.clone());
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let dump_url = format!("http://{}/received", listener.local_addr()?);

    println!("ingest {}", ingest.base_url());
    println!("received {dump_url}");

    axum::serve(listener, dump)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// `GET /received`: every recorded POST, in arrival order.
async fn received(State(ingest): State<RecordingIngest>) -> Json<Value> {
    let records: Vec<Value> = ingest
        .received()
        .into_iter()
        .map(|r| {
            json!({
                "seq": r.seq,
                "path": r.path,
                "site_id": r.site_id,
                "content_type": r.content_type,
                "body": r.body,
            })
        })
        .collect();
    Json(Value::Array(records))
}
