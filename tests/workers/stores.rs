//! Session stores for tests: one that never answers, one slow to open
//! runs, one that can lose everything it holds, and one that fails while
//! told to.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use trodo_tower::store::{
    Claim, ClaimedRun, MemoryStore, NewRun, Opened, RunTotals, SessionStore, StoreFuture,
};
use uuid::Uuid;

/// A store that never answers.
#[derive(Debug)]
pub struct Hanging;

impl SessionStore for Hanging {
    fn find<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Option<Uuid>> {
        Box::pin(std::future::pending())
    }
    fn open<'a>(&'a self, _: &'a NewRun, _: Duration) -> StoreFuture<'a, Opened> {
        Box::pin(std::future::pending())
    }
    fn record(&self, _: Uuid, _: RunTotals, _: SystemTime, _: Duration) -> StoreFuture<'_, bool> {
        Box::pin(std::future::pending())
    }
    fn claim(&self, _: Uuid, _: Option<SystemTime>, _: Duration) -> StoreFuture<'_, Claim> {
        Box::pin(std::future::pending())
    }
    fn claim_idle(&self, _: SystemTime, _: usize, _: Duration) -> StoreFuture<'_, Vec<ClaimedRun>> {
        Box::pin(std::future::pending())
    }
}

/// A memory store that can lose everything at once (a Redis restarted
/// without persistence), and counts the runs opened and the records
/// (aggregates, activity, renewals) since.
#[derive(Debug, Default)]
pub struct Forgetful {
    inner: Mutex<Arc<MemoryStore>>,
    /// Calls of `open` since the store was made or last lost everything.
    pub opens: AtomicUsize,
    /// Calls of `record` since the store was made.
    pub records: AtomicUsize,
}

impl Forgetful {
    fn inner(&self) -> Arc<MemoryStore> {
        self.inner.lock().unwrap().clone()
    }

    pub fn forget_everything(&self) {
        *self.inner.lock().unwrap() = Arc::new(MemoryStore::new());
        self.opens.store(0, Ordering::SeqCst);
    }
}

impl SessionStore for Forgetful {
    fn find<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Uuid>> {
        let inner = self.inner();
        Box::pin(async move { inner.find(key).await })
    }
    fn open<'a>(&'a self, run: &'a NewRun, ttl: Duration) -> StoreFuture<'a, Opened> {
        let inner = self.inner();
        Box::pin(async move {
            let opened = inner.open(run, ttl).await;
            self.opens.fetch_add(1, Ordering::SeqCst);
            opened
        })
    }
    fn record(
        &self,
        run_id: Uuid,
        delta: RunTotals,
        last: SystemTime,
        ttl: Duration,
    ) -> StoreFuture<'_, bool> {
        let inner = self.inner();
        Box::pin(async move {
            let recorded = inner.record(run_id, delta, last, ttl).await;
            self.records.fetch_add(1, Ordering::SeqCst);
            recorded
        })
    }
    fn claim(
        &self,
        run_id: Uuid,
        idle_before: Option<SystemTime>,
        ttl: Duration,
    ) -> StoreFuture<'_, Claim> {
        let inner = self.inner();
        Box::pin(async move { inner.claim(run_id, idle_before, ttl).await })
    }
    fn claim_idle(
        &self,
        idle_before: SystemTime,
        limit: usize,
        ttl: Duration,
    ) -> StoreFuture<'_, Vec<ClaimedRun>> {
        let inner = self.inner();
        Box::pin(async move { inner.claim_idle(idle_before, limit, ttl).await })
    }
}

/// A memory store whose `open` waits to be let through, and says when a
/// request asked for it.
#[derive(Debug)]
pub struct SlowToOpen {
    inner: MemoryStore,
    /// Notified as `open` is called.
    pub asked: tokio::sync::Notify,
    /// A permit lets one `open` through.
    pub let_through: tokio::sync::Semaphore,
    /// While set, `open` fails at once.
    pub failing_opens: AtomicBool,
    /// Whether `open` takes effect at once and only its answer waits.
    writes_first: bool,
}

impl SlowToOpen {
    pub fn new() -> Self {
        Self {
            inner: MemoryStore::new(),
            asked: tokio::sync::Notify::new(),
            let_through: tokio::sync::Semaphore::new(0),
            failing_opens: AtomicBool::new(false),
            writes_first: false,
        }
    }

    /// A store whose `open` takes effect at once, its answer held back
    /// until a permit lets it through (a reply lost in a slow network).
    pub fn answering_late() -> Self {
        Self {
            writes_first: true,
            ..Self::new()
        }
    }
}

impl SessionStore for SlowToOpen {
    fn find<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Uuid>> {
        self.inner.find(key)
    }
    fn open<'a>(&'a self, run: &'a NewRun, ttl: Duration) -> StoreFuture<'a, Opened> {
        if self.failing_opens.load(Ordering::SeqCst) {
            return Box::pin(async { Err("connection reset".into()) });
        }
        Box::pin(async move {
            let written = match self.writes_first {
                true => Some(self.inner.open(run, ttl).await),
                false => None,
            };
            self.asked.notify_one();
            self.let_through.acquire().await.unwrap().forget();
            match written {
                Some(opened) => opened,
                None => self.inner.open(run, ttl).await,
            }
        })
    }
    fn record(
        &self,
        run_id: Uuid,
        delta: RunTotals,
        last: SystemTime,
        ttl: Duration,
    ) -> StoreFuture<'_, bool> {
        self.inner.record(run_id, delta, last, ttl)
    }
    fn claim(
        &self,
        run_id: Uuid,
        idle_before: Option<SystemTime>,
        ttl: Duration,
    ) -> StoreFuture<'_, Claim> {
        self.inner.claim(run_id, idle_before, ttl)
    }
    fn claim_idle(
        &self,
        idle_before: SystemTime,
        limit: usize,
        ttl: Duration,
    ) -> StoreFuture<'_, Vec<ClaimedRun>> {
        self.inner.claim_idle(idle_before, limit, ttl)
    }
}

/// A memory store that fails every call while `down` (a Redis
/// unreachable for a while).
#[derive(Debug, Default)]
pub struct Flaky {
    pub inner: MemoryStore,
    pub down: AtomicBool,
}

impl Flaky {
    /// The error of a call while down; `None` while up.
    fn failure<'a, T: Send + 'a>(&self) -> Option<StoreFuture<'a, T>> {
        let down = self.down.load(Ordering::SeqCst);
        down.then(|| Box::pin(async { Err("connection refused".into()) }) as StoreFuture<'a, T>)
    }
}

impl SessionStore for Flaky {
    fn find<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Uuid>> {
        self.failure().unwrap_or_else(|| self.inner.find(key))
    }
    fn open<'a>(&'a self, run: &'a NewRun, ttl: Duration) -> StoreFuture<'a, Opened> {
        self.failure().unwrap_or_else(|| self.inner.open(run, ttl))
    }
    fn record(
        &self,
        run_id: Uuid,
        delta: RunTotals,
        last: SystemTime,
        ttl: Duration,
    ) -> StoreFuture<'_, bool> {
        self.failure()
            .unwrap_or_else(|| self.inner.record(run_id, delta, last, ttl))
    }
    fn claim(
        &self,
        run_id: Uuid,
        idle_before: Option<SystemTime>,
        ttl: Duration,
    ) -> StoreFuture<'_, Claim> {
        self.failure()
            .unwrap_or_else(|| self.inner.claim(run_id, idle_before, ttl))
    }
    fn claim_idle(
        &self,
        idle_before: SystemTime,
        limit: usize,
        ttl: Duration,
    ) -> StoreFuture<'_, Vec<ClaimedRun>> {
        self.failure()
            .unwrap_or_else(|| self.inner.claim_idle(idle_before, limit, ttl))
    }
}
