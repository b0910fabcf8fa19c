//! The state every layer built from one config shares, and the [`Trodo`] handle on it.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use crate::backlog::{self, Backlog};
use crate::config::{Settings, TrodoConfig};
use crate::deferred::{Closing, Deferred};
use crate::export::{self, ConsoleSink, DeliveryOptions, Exporter, HttpSink, Sink, Worker};
use crate::moment::instant_now;
use crate::resume::ParkedCall;
use crate::run::{ClosedVia, Sessions};
use crate::store::{Mirror, StoreCounters};
use crate::wire::Timestamp;

/// Most distinct MCP endpoints remembered (a scanner must not grow the
/// list): axum routes, so one route with parameters counts once.
const MAX_MCP_PATHS: usize = 16;

/// Sessions, delivery and settings of one layer (and its clones).
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) sessions: Sessions,
    pub(crate) exporter: Exporter,
    /// Work finished on the request path (taped exchanges, spans read
    /// live), read off it in order; see [`crate::backlog`].
    pub(crate) backlog: Arc<Backlog<Deferred>>,
    /// The link to the session store shared with other workers, if configured.
    pub(crate) mirror: Option<Mirror>,
    /// The delivery worker, if it has no thread, until it runs on the runtime.
    worker: std::sync::Mutex<Option<Worker>>,
    /// Set once delivery (without its thread) and the store link were
    /// spawned on a runtime.
    background: OnceLock<()>,
    /// Whether the idle sweep runs: cleared when its task ends, dropped
    /// with the runtime it ran on, so that the next request starts it again.
    sweeping: Arc<AtomicBool>,
    /// Endpoints (axum's route, else the path) where JSON-RPC requests were
    /// seen: a DELETE or GET there is about the MCP session, elsewhere it
    /// is an ordinary route.
    mcp_paths: RwLock<Vec<Box<str>>>,
    shut_down: OnceLock<()>,
    /// What shutdown returned, for every later call (a second call waits
    /// for the first one's).
    shutdown_outcome: tokio::sync::OnceCell<bool>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("settings", &self.settings)
            .field("open_runs", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.backlog.abandon();
    }
}

impl Shared {
    /// The state of `config`, made on first use and shared by its clones.
    pub(crate) fn of(config: &TrodoConfig) -> Arc<Self> {
        let shared = config
            .state
            .get_or_init(|| Arc::new(Self::new(config.settings.clone())));
        shared.start_background();
        Arc::clone(shared)
    }

    /// The state of a layer switched off (no delivery thread, nothing
    /// sent), for unit tests of what it holds.
    #[cfg(test)]
    pub(crate) fn switched_off() -> Arc<Self> {
        Self::of(&TrodoConfig::new().with_enabled(false))
    }

    fn new(mut settings: Settings) -> Self {
        // A config edited after it made a state makes another: each counts
        // its own hook panics.
        settings.hook_panics = Arc::default();
        let sink = match &settings.site_id {
            Some(site_id) => Sink::Http(HttpSink::new(
                settings.api_base.clone(),
                site_id.clone(),
                settings.http_client.clone(),
            )),
            None => Sink::Console(ConsoleSink),
        };
        let delivery = DeliveryOptions {
            max_queue_items: settings.max_queue_items,
            max_queue_bytes: settings.max_queue_bytes,
            max_in_flight: settings.max_concurrent_calls,
            ..DeliveryOptions::default()
        };
        let (exporter, worker) = Exporter::new(sink, delivery);
        let exporter = if settings.enabled {
            exporter
        } else {
            exporter.switched_off()
        };
        let backlog = Arc::new(Backlog::default());
        // Delivery, and reading the backlog, run on a thread of their own;
        // if that cannot be made, on the server's runtime once one is at hand.
        let worker = match settings.enabled.then(|| export::spawn_thread(worker)) {
            Some(Ok(thread)) => {
                thread.spawn(backlog::read(Arc::clone(&backlog)));
                None
            }
            Some(Err(worker)) => Some(*worker),
            None => None,
        };
        // Switched off, nothing is recorded, so nothing is shared either.
        let mirror = settings
            .store
            .as_ref()
            .filter(|_| settings.enabled)
            .map(|store| {
                Mirror::new(
                    Arc::clone(store),
                    settings.idle_timeout,
                    settings.store_timeout,
                )
            });
        Self {
            sessions: Sessions::new(mirror.as_ref().map(Mirror::queue)),
            mirror,
            settings,
            exporter,
            backlog,
            worker: std::sync::Mutex::new(worker),
            background: OnceLock::new(),
            sweeping: Arc::default(),
            mcp_paths: RwLock::new(Vec::new()),
            shut_down: OnceLock::new(),
            shutdown_outcome: tokio::sync::OnceCell::new(),
        }
    }

    /// Spawns the idle sweep when a Tokio runtime is at hand: at
    /// construction, else on the first request, and again on a later
    /// request if the runtime it ran on was dropped (a layer built in a
    /// setup runtime, a config shared by tests' runtimes). The store link,
    /// and delivery if it has no thread, are spawned with the first sweep.
    pub(crate) fn start_background(self: &Arc<Self>) {
        if self.sweeping.load(Ordering::Acquire) || !self.settings.enabled {
            return;
        }
        self.start_sweep();
    }

    #[cold]
    fn start_sweep(self: &Arc<Self>) {
        if self.is_shut_down() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return; // another request started it just now
        }
        if self.background.set(()).is_ok() {
            let worker = self
                .worker
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(worker) = worker {
                runtime.spawn(worker.run());
                runtime.spawn(backlog::read(Arc::clone(&self.backlog)));
            }
            if let Some(mirror) = &self.mirror {
                mirror.spawn(Arc::downgrade(self), &runtime);
            }
        }
        let running = Sweeping(Arc::clone(&self.sweeping));
        let shared = Arc::downgrade(self);
        runtime.spawn(async move {
            let _running = running;
            sweep_idle_sessions(shared).await;
        });
    }

    /// Ends the run of session `key`, which an answer closed `via` a
    /// DELETE or a 404, after the spans of every exchange that ended
    /// before it. Without a session store those may wait in the backlog:
    /// the close joins them there, so the answer waits for none of them
    /// (but for the two a request past the backlog's bounds reads); the
    /// run stays open here until the backlog reads the close. With a
    /// store, nothing waits there, and the run ends at once, so that other
    /// workers see it.
    pub(crate) fn close_session(self: &Arc<Self>, key: &Arc<str>, via: ClosedVia) {
        if self.mirror.is_some() {
            self.backlog.catch_up();
            self.sessions.close(key, via, &self.exporter);
        } else if let Some(run_id) = self.sessions.run_id(key) {
            self.backlog.push(Deferred::Close(Box::new(Closing {
                shared: Arc::clone(self),
                key: Arc::clone(key),
                run_id,
                via,
                at: Timestamp::now(),
            })));
        }
    }

    /// One idle sweep: the backlog is read (its exchanges may park calls),
    /// then calls whose wait for a resumed stream ran out are recorded in
    /// their runs (in the look at the run table that takes them out, so a
    /// run a DELETE closed, whose close waits in the backlog, ends with
    /// them either way), then the backlog is read again (requests read
    /// later count as activity), then idle runs end. Returns how many
    /// runs left the table.
    pub(crate) fn sweep(self: &Arc<Self>) -> usize {
        self.backlog.catch_up();
        ParkedCall::give_up_expired(self, instant_now());
        self.backlog.catch_up();
        self.sessions
            .sweep_idle(instant_now(), self.settings.idle_timeout, &self.exporter)
    }

    /// Whether the layer records nothing more: [`Trodo::shutdown`] was
    /// called, or delivery stopped for good (its loop panicked, a bug of
    /// the layer; see [`crate::fence`]).
    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down.get().is_some() || self.exporter.has_halted()
    }

    /// Remembers a path that serves JSON-RPC.
    pub(crate) fn learn_mcp_path(&self, path: &str) {
        let (known, full) = self.mcp_paths_with(|known| {
            (
                known.iter().any(|p| &**p == path),
                known.len() >= MAX_MCP_PATHS,
            )
        });
        if known || full {
            return;
        }
        let mut known = self
            .mcp_paths
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !known.iter().any(|p| &**p == path) && known.len() < MAX_MCP_PATHS {
            known.push(path.into());
        }
    }

    /// Whether `path` may be the MCP endpoint: a path where JSON-RPC was
    /// seen, or any path before that (a fresh process, which must still
    /// close a session on its DELETE or 404).
    pub(crate) fn is_mcp_path(&self, path: &str) -> bool {
        self.mcp_paths_with(|known| known.is_empty() || known.iter().any(|p| &**p == path))
    }

    /// Whether JSON-RPC was seen on `path`.
    pub(crate) fn is_known_mcp_path(&self, path: &str) -> bool {
        self.mcp_paths_with(|known| known.iter().any(|p| &**p == path))
    }

    /// Reads the paths where JSON-RPC was seen.
    fn mcp_paths_with<R>(&self, read: impl FnOnce(&[Box<str>]) -> R) -> R {
        read(
            &self
                .mcp_paths
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Shuts down once: a call while another runs waits for it, and every
    /// call returns what the first one did.
    async fn shutdown(&self, timeout: Duration) -> bool {
        *self
            .shutdown_outcome
            .get_or_init(|| self.shut_down_now(timeout))
            .await
    }

    /// Ends every open run (with a session store: those no other worker
    /// can continue), then delivers what is queued, within `timeout`.
    async fn shut_down_now(&self, timeout: Duration) -> bool {
        let _ = self.shut_down.set(());
        let start = tokio::time::Instant::now();
        self.backlog.close();
        let store_drained = match &self.mirror {
            None => {
                let ended = self
                    .sessions
                    .close_all(ClosedVia::ServerShutdown, &self.exporter);
                tracing::debug!(ended, "trodo: ended open runs on shutdown");
                true
            }
            Some(mirror) => {
                let (left, ended) = self.sessions.release_all(&self.exporter);
                // At most half the time for the store: a slow store must
                // not leave delivery none.
                let drained = mirror.drain(timeout / 2).await;
                tracing::debug!(
                    left,
                    ended,
                    drained,
                    "trodo: left shared runs to the store's idle sweep on shutdown"
                );
                drained
            }
        };
        self.exporter.shutdown(left_of(timeout, start)).await && store_drained
    }

    /// Works off the store queue (in at most half the time), then delivers
    /// what is queued, within `timeout`.
    async fn flush(&self, timeout: Duration) -> bool {
        let start = tokio::time::Instant::now();
        self.backlog.catch_up();
        let store_drained = match &self.mirror {
            Some(mirror) => mirror.drain(timeout / 2).await,
            None => true,
        };
        self.exporter.flush(left_of(timeout, start)).await && store_drained
    }
}

/// What is left of `timeout`, begun at `start`. No deadline is added up:
/// any timeout is taken, `Duration::MAX` for no bound.
fn left_of(timeout: Duration, start: tokio::time::Instant) -> Duration {
    timeout.saturating_sub(start.elapsed())
}

/// How often an idle sweep looks: a quarter of the idle timeout, within 10 ms..5 s.
pub(crate) fn sweep_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
}

/// Clears the flag that the idle sweep runs when its task ends or is
/// dropped (with its runtime).
struct Sweeping(Arc<AtomicBool>);

impl Drop for Sweeping {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Ends idle runs until the state is dropped (or shut down).
async fn sweep_idle_sessions(shared: std::sync::Weak<Shared>) {
    let Some(interval) = shared
        .upgrade()
        .map(|s| sweep_interval(s.settings.idle_timeout))
    else {
        return;
    };
    loop {
        tokio::time::sleep(interval).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.is_shut_down() {
            return;
        }
        shared.sweep();
    }
}

/// A cheap-to-clone handle on the layer's state: flush and shut down
/// delivery, read counters.
///
/// Get it from [`TrodoLayer::trodo`](crate::TrodoLayer::trodo).
///
/// ```
/// use std::time::Duration;
/// use trodo_tower::{TrodoConfig, TrodoLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = TrodoLayer::new(TrodoConfig::new());
/// let trodo = layer.trodo();
/// // ... serve, then on Ctrl-C / SIGTERM:
/// trodo.shutdown(Duration::from_secs(5)).await;
/// # }
/// ```
#[derive(Clone)]
pub struct Trodo {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Trodo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trodo")
            .field("shared", &self.shared)
            .finish()
    }
}

impl Trodo {
    /// Sends everything recorded so far without waiting for the one-second
    /// batching interval, and waits until each record is delivered to the
    /// ingest API (or printed), or dropped, at most `timeout`. Returns `false`
    /// on timeout: records still waiting (e.g. for an ingest API that is down)
    /// keep their place and their retries. With a session store, what is
    /// queued for the store (aggregates, activity, end claims) is worked off
    /// first, in at most half of `timeout` (the same holds for
    /// [`shutdown`](Self::shutdown)), so that a slow store leaves delivery
    /// the rest. `Duration::MAX` waits without bound.
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.shared.flush(timeout).await
    }

    /// Graceful shutdown: ends every run this process holds open with
    /// `closed_via: "server_shutdown"`, then delivers what is queued, at most
    /// `timeout` (plus up to 100 ms to abandon calls in flight;
    /// `Duration::MAX` waits without bound), and stops the delivery thread.
    ///
    /// With a session store, runs of sessions (and resolved keys) the store
    /// holds are not ended: clients keep their sessions on other workers, so
    /// those runs are left to the store's idle sweep (run by any worker,
    /// including this one when it restarts), which ends them at their last
    /// activity with their true totals. Runs of `start_run` and runs the
    /// store does not hold end as without a store. Returns `false` if delivery did not finish in time;
    /// what was left is counted in
    /// [`DeliveryCounters::dropped_shutdown`](crate::DeliveryCounters::dropped_shutdown).
    /// Shutdown happens once: a second call (from a signal handler and from
    /// `main`, say) waits for the first to finish and returns its result.
    /// Requests after shutdown are still served, passed through unrecorded
    /// (they open no run); what the manual API records after it is dropped
    /// and counted the same way.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.shared.shutdown(timeout).await
    }

    /// The delivery counters so far: records sent, calls retried, records
    /// dropped by reason, and what is queued now. Cheap; export them as metrics.
    #[must_use]
    pub fn delivery_counters(&self) -> crate::DeliveryCounters {
        let mut counters = self.shared.exporter.counters();
        counters.hook_panics = self.shared.settings.hook_panics.load(Ordering::Relaxed);
        counters.own_runs_past_max_open_runs = self.shared.sessions.refused_for_room();
        counters
    }

    /// How many runs (sessions) are open in this process. A run that a
    /// DELETE (or a 404) closed counts until the layer has read the
    /// exchanges answered before it: within milliseconds while its delivery
    /// thread keeps up, else at the next idle sweep, `flush` or `end_run`
    /// (see the README's "Delivery guarantees").
    #[must_use]
    pub fn open_runs(&self) -> usize {
        self.shared.sessions.len()
    }

    /// The counters of the session store link, if a store is configured
    /// ([`TrodoConfig::with_session_store`](crate::TrodoConfig::with_session_store)):
    /// operations done and failed, requests that went on without the store,
    /// runs ended. Cheap; export them as metrics.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use trodo_tower::{Trodo, TrodoConfig};
    /// use trodo_tower::store::MemoryStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let config = TrodoConfig::new().with_session_store(Arc::new(MemoryStore::new()));
    /// let counters = Trodo::new(&config).store_counters().unwrap();
    /// assert!(counters.available);
    /// assert_eq!(Trodo::new(&TrodoConfig::new()).store_counters(), None);
    /// # }
    /// ```
    #[must_use]
    pub fn store_counters(&self) -> Option<StoreCounters> {
        self.shared.mirror.as_ref().map(Mirror::counters)
    }
}
