//! A local stand-in for the Trodo ingest API, shared by the benches through
//! `#[path = "support/counting_ingest.rs"] mod counting_ingest;`.
//!
//! It answers every `POST /api/sdk/...` with `200 {"ok":true}` and only
//! counts what it gets: recording every span would cost the machine CPU that
//! a remote ingest does not.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use axum::serve::ListenerExt;
use http::header::CONTENT_TYPE;
use tokio::net::TcpListener;
use trodo_tower::Trodo;

/// The counting ingest, served on the runtime that started it.
pub(crate) struct CountingIngest {
    /// `http://127.0.0.1:<port>`, for `TrodoConfig::with_api_base`.
    pub(crate) base_url: String,
    calls: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl CountingIngest {
    /// Listens on a loopback port and serves on the current runtime.
    pub(crate) async fn start() -> Self {
        let calls = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (c, b) = (Arc::clone(&calls), Arc::clone(&bytes));
        let app = Router::new().route(
            "/api/sdk/{*rest}",
            post(move |body: Bytes| async move {
                c.fetch_add(1, Ordering::Relaxed);
                b.fetch_add(body.len() as u64, Ordering::Relaxed);
                ([(CONTENT_TYPE, "application/json")], r#"{"ok":true}"#)
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let base_url = format!("http://{}", listener.local_addr().expect("an address"));
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base_url,
            calls,
            bytes,
        }
    }

    /// Prints what the layer of `trodo` delivered here.
    pub(crate) fn print_delivery(&self, trodo: &Trodo, flushed: bool) {
        let counters = trodo.delivery_counters();
        println!(
            "delivery: {} records sent in {} calls ({:.1} MB) to the local ingest, {} dropped, flushed: {flushed}",
            counters.sent,
            self.calls.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed) as f64 / 1e6,
            counters.dropped(),
        );
    }
}
