//! Several workers sharing sessions through the memory store: the same
//! scenarios `tests/redis.rs` runs on Redis, with no server to run.

mod common;
mod workers;

use std::sync::Arc;

use trodo_tower::store::{MemoryStore, SessionStore};
use workers::Backend;

/// Every worker shares one memory store.
struct Memory(Arc<MemoryStore>);

impl Backend for Memory {
    fn store(&self) -> Arc<dyn SessionStore> {
        self.0.clone()
    }
}

fn memory() -> Memory {
    Memory(Arc::new(MemoryStore::new()))
}

#[tokio::test]
async fn alternating_workers_share_one_run() {
    workers::alternating_workers_share_one_run(&memory()).await;
}

#[tokio::test]
async fn a_dead_workers_runs_end_on_another() {
    workers::a_dead_workers_runs_end_on_another(&memory()).await;
}

#[tokio::test]
async fn two_workers_sweep_each_session_once() {
    workers::two_workers_sweep_each_session_once(&memory(), 1000).await;
}

/// A request in a session another worker opened waits for the store's
/// answer before its span is decided; its body is still read (and
/// redacted) once, not again after the wait.
#[tokio::test]
async fn a_request_that_waits_for_the_store_is_read_once() {
    use common::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use trodo_tower::TrodoLayer;

    let ingest = RecordingIngest::start().await.unwrap();
    let backend = memory();
    let service = mcp(DemoTools::new(), session_manager(None));
    let one = workers::worker(&ingest, &backend, Duration::from_secs(60));
    let redactions = Arc::new(AtomicUsize::new(0));
    let counted = redactions.clone();
    let two = TrodoLayer::new(
        config(&ingest)
            .with_session_store(backend.store())
            .with_redaction(move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
            }),
    );
    let mut on_one = RawClient::new(workers::serve_worker(&service, &one).await);
    let mut on_two = RawClient::new(workers::serve_worker(&service, &two).await);
    on_one.initialize("read-once").await;
    assert!(one.trodo().flush(WAIT).await, "the store holds the run");
    on_two.session = on_one.session.clone();
    let answer = on_two
        .call_tool(1, "add", serde_json::json!({"a": 1, "b": 2}))
        .await;
    assert_eq!(workers::text(&answer), "3");
    assert!(two.trodo().flush(WAIT).await);
    assert_eq!(ingest.spans().len(), 1);
    assert_eq!(
        redactions.load(Ordering::SeqCst),
        2,
        "the input once, the output once"
    );
}
