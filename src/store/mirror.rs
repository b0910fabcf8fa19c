//! [`Mirror`]: one process's link to a session store: what the request
//! path asks it (and how long it waits), and the background task.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::health::Health;
use super::task::{LaterPause, Receiver, StoreTask, call, is_opened};
use super::{HeadWait, NewRun, Opened, SessionStore, StoreCounters, StoreQueue};
use crate::state::Shared;

/// How many idle timeouts an entry lives in the store without activity.
const TTL_IDLE_TIMEOUTS: u32 = 12;
/// The shortest time to live, whatever the idle timeout.
const MIN_TTL: Duration = Duration::from_secs(60);

/// What the store said of a key this process did not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// Another worker's run (or one this process opened and forgot): continue it.
    /// Never the run asked for (that one is `Opened`).
    Found(Uuid),
    /// The store took this process's new run for the key: start it here.
    Opened(Uuid),
    /// The store could not say in time: this process's own run, as without a store.
    Local(Uuid),
}

/// A lookup of a key in the store, started when the request arrived.
#[derive(Debug)]
pub(crate) struct Prefetch {
    key: String,
    /// `None`: the store failed or was skipped.
    found: JoinHandle<Option<Option<Uuid>>>,
}

impl Prefetch {
    /// Whether this lookup is of `key`.
    pub(crate) fn is_for(&self, key: &str) -> bool {
        self.key == key
    }
}

/// One process's link to its session store.
pub(crate) struct Mirror {
    store: Arc<dyn SessionStore>,
    health: Arc<Health>,
    queue: StoreQueue,
    /// The queue's receiving end until the task is spawned.
    receiver: Mutex<Option<Receiver>>,
    request_timeout: Duration,
    idle_timeout: Duration,
    ttl: Duration,
}

impl fmt::Debug for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirror")
            .field("store", &self.store)
            .field("request_timeout", &self.request_timeout)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Mirror {
    /// A link to `store` for runs that idle out after `idle_timeout`; the
    /// request path waits at most `request_timeout` for the store.
    pub(crate) fn new(
        store: Arc<dyn SessionStore>,
        idle_timeout: Duration,
        request_timeout: Duration,
    ) -> Self {
        let health = Arc::new(Health::default());
        let (queue, receiver) = StoreQueue::new(Arc::clone(&health));
        Self {
            store,
            health,
            queue,
            receiver: Mutex::new(Some(receiver)),
            request_timeout,
            idle_timeout,
            ttl: idle_timeout.saturating_mul(TTL_IDLE_TIMEOUTS).max(MIN_TTL),
        }
    }

    /// The background queue (for the run table).
    pub(crate) fn queue(&self) -> StoreQueue {
        self.queue.clone()
    }

    /// Spawns the store task, once.
    pub(crate) fn spawn(&self, shared: Weak<Shared>, runtime: &tokio::runtime::Handle) {
        let receiver = self
            .receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(receiver) = receiver else { return };
        let task = StoreTask {
            store: Arc::clone(&self.store),
            health: Arc::clone(&self.health),
            queue: self.queue.clone(),
            ttl: self.ttl,
            idle_timeout: self.idle_timeout,
            later_pause: LaterPause::default(),
        };
        runtime.spawn(task.run(receiver, shared));
    }

    /// Starts looking `key` up, to be awaited on the response head; `None`
    /// while requests do not wait for the store (or outside a runtime).
    pub(crate) fn prefetch(&self, key: &str) -> Option<Prefetch> {
        if !self.health.request_path_open() {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (store, health) = (Arc::clone(&self.store), Arc::clone(&self.health));
        let owned = key.to_owned();
        let found =
            runtime.spawn(async move { call(&health, "find", || store.find(&owned)).await });
        Some(Prefetch {
            key: key.to_owned(),
            found,
        })
    }

    /// The run of a key this process does not know: the store's, else
    /// `run` opened in the store, else (the store failing or slow) `run`
    /// as this process's own. The response waits for it at most the store
    /// timeout; a run the store opens later is marked shared then.
    pub(crate) fn resolve(
        &self,
        shared: &Arc<Shared>,
        prefetch: Option<Prefetch>,
        run: NewRun,
    ) -> HeadWait<Resolved> {
        let (store, health, ttl) = (Arc::clone(&self.store), Arc::clone(&self.health), self.ttl);
        let run_id = run.run_id;
        let work = async move {
            if let Some(prefetch) = prefetch {
                match prefetch.found.await {
                    // The run asked for, opened by another request of
                    // the key here: this process's to start.
                    Ok(Some(Some(found))) if found == run_id => return Resolved::Opened(run_id),
                    Ok(Some(Some(found))) => return Resolved::Found(found),
                    Ok(Some(None)) => {}
                    // The lookup failed: no second try on this request.
                    Ok(None) | Err(_) => return Resolved::Local(run_id),
                }
            }
            match call(&health, "open", || store.open(&run, ttl)).await {
                Some(Opened::Existing(found)) if found != run_id => Resolved::Found(found),
                opened if is_opened(opened, run_id) => Resolved::Opened(run_id),
                _ => Resolved::Local(run_id),
            }
        };
        let shared = Arc::downgrade(shared);
        HeadWait::new(
            work,
            self.wait_budget(),
            Arc::clone(&self.health),
            move |resolved| {
                if let (Resolved::Opened(run_id), Some(shared)) = (resolved, shared.upgrade()) {
                    shared.sessions.mark_shared(run_id);
                }
            },
        )
    }

    /// Opens a new session's run in the store before the client learns of
    /// the session, so that its next request may land on any worker; the
    /// run is marked shared when the store has it (even after the timeout).
    pub(crate) fn publish(&self, shared: &Arc<Shared>, run: NewRun) -> HeadWait<()> {
        let (store, health, ttl) = (Arc::clone(&self.store), Arc::clone(&self.health), self.ttl);
        let shared = Arc::downgrade(shared);
        let work = async move {
            let opened = call(&health, "open", || store.open(&run, ttl)).await;
            if is_opened(opened, run.run_id) {
                if let Some(shared) = shared.upgrade() {
                    shared.sessions.mark_shared(run.run_id);
                }
            } else if opened.is_some() {
                tracing::debug!(
                    run_id = %run.run_id,
                    "trodo: the store holds another run for a new session; this one stays local"
                );
            }
        };
        HeadWait::new(work, self.wait_budget(), Arc::clone(&self.health), |()| {})
    }

    /// How long a response may wait for the store now: the store timeout,
    /// or not at all (counted) while the store has just failed or been too slow.
    fn wait_budget(&self) -> Option<Duration> {
        if self.health.request_path_open() {
            Some(self.request_timeout)
        } else {
            self.health.bypassed();
            None
        }
    }

    /// Waits until the background queue is worked off, at most `timeout`.
    pub(crate) async fn drain(&self, timeout: Duration) -> bool {
        self.queue.drain(timeout).await
    }

    /// A snapshot of the store counters.
    pub(crate) fn counters(&self) -> StoreCounters {
        self.health.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrodoConfig;
    use crate::store::MemoryStore;
    use std::time::SystemTime;

    /// Another request of the key opened the run asked for, and the
    /// lookup finds it: the run is this process's to start, not another
    /// worker's to join.
    #[tokio::test]
    async fn a_lookup_that_finds_the_run_asked_for_says_it_is_opened_here() {
        let store = Arc::new(MemoryStore::new());
        let shared = Shared::of(&TrodoConfig::new().with_session_store(store.clone()));
        let run = NewRun::new("s", Uuid::new_v4(), SystemTime::now());
        store.open(&run, Duration::from_secs(60)).await.unwrap();
        let mirror = shared.mirror.as_ref().unwrap();
        let prefetch = mirror.prefetch("s");
        let mut wait = mirror.resolve(&shared, prefetch, run.clone());
        let resolved = std::future::poll_fn(|cx| wait.poll_wait(cx)).await;
        assert_eq!(resolved, Some(Resolved::Opened(run.run_id)));
    }
}
