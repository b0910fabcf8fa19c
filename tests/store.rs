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
