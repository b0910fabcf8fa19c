//! Session stores: what several workers behind a load balancer share about
//! their runs, so that a session opened on one worker is continued, counted
//! and ended once on any of them.
//!
//! Without a store (the default) each process keeps its runs in memory and
//! needs no setup; that is right for one process. With a store, every layer
//! that shares it (in one process or many) shares:
//!
//! - the run of each session (or resolved run key), opened atomically: the
//!   first worker to see a session opens its run, the others find it;
//! - each run's last activity, kept in an order the idle sweep can read
//!   from the oldest, so that finding idle runs costs in proportion to the
//!   idle ones;
//! - each run's aggregates (span, tool and error counts, tokens, cost),
//!   added to atomically, so that `end` carries the true totals whichever
//!   worker sent the spans;
//! - an atomic end claim, so that exactly one worker sends `end`, whoever
//!   sees the DELETE, the 404 or the idle timeout first, and however many
//!   sweep at once. A claimed run leaves a marker (for the time to live) so
//!   that a late open or claim cannot bring it back.
//!
//! Entries expire after a time to live (a multiple of the idle timeout,
//! renewed on activity), so abandoned sessions do not pile up.
//!
//! # Backends
//!
//! | store | for |
//! |---|---|
//! | none (the default) | one process |
//! | [`MemoryStore`] | several layers in one process (and tests) |
//! | `RedisStore` (feature `redis`) | several processes: set `TRODO_REDIS_URL` or [`TrodoConfig::with_redis_url`](crate::TrodoConfig) |
//!
//! ```
//! use std::sync::Arc;
//! use trodo_tower::TrodoConfig;
//! use trodo_tower::store::MemoryStore;
//!
//! // Two layers in one process sharing their sessions:
//! let store = Arc::new(MemoryStore::new());
//! let first = TrodoConfig::new().with_session_store(store.clone());
//! let second = TrodoConfig::new().with_session_store(store);
//! # let _ = (first, second);
//! ```
//!
//! # How the layer uses a store
//!
//! The layer keeps its own in-memory table in front of the store: requests
//! of a session this process knows never wait on the store. For a session it
//! does not know, the lookup starts when the request arrives and the
//! response head waits for it at most the store timeout
//! ([`TrodoConfig::with_store_timeout`](crate::TrodoConfig::with_store_timeout),
//! 50 ms by default); the response to `initialize` waits (as long at most)
//! until the store holds the new run, so that the next request can land on
//! any worker. Everything else (aggregates, activity, end claims, the idle
//! sweep) runs in one background task per process, through a bounded queue.
//! A store that fails is left alone for a second at a time, and one too
//! slow for a request is left alone by requests for as long: requests are
//! served as without a store, runs end with this process's totals when the
//! store cannot be asked (and are claimed in the store, sending nothing,
//! once it answers, so that no sweep ends them again), and the layer logs,
//! counts ([`Trodo::store_counters`](crate::Trodo::store_counters)) and
//! recovers.
//! A worker's shutdown leaves the sessions it holds to the shared idle
//! sweep (see [`Trodo::shutdown`](crate::Trodo::shutdown)).
//!
//! # Writing a store
//!
//! Implement [`SessionStore`]; each method returns a boxed future
//! ([`StoreFuture`]). Every method that changes the store must be atomic as
//! a whole (the Redis store uses Lua scripts). [`MemoryStore`] is the
//! reference implementation.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use trodo_tower::store::{Claim, MemoryStore, NewRun, Opened, SessionStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), trodo_tower::store::StoreError> {
//! let store = MemoryStore::new();
//! let ttl = Duration::from_secs(3600);
//! let run = NewRun::new("session-1", uuid::Uuid::new_v4(), SystemTime::now());
//! assert_eq!(store.open(&run, ttl).await?, Opened::Opened);
//! assert_eq!(store.find("session-1").await?, Some(run.run_id));
//! assert!(matches!(store.claim(run.run_id, None, ttl).await?, Claim::Won(_)));
//! assert_eq!(store.claim(run.run_id, None, ttl).await?, Claim::AlreadyEnded);
//! # Ok(())
//! # }
//! ```

mod health;
mod memory;
mod mirror;
#[cfg(feature = "redis")]
mod redis;
mod task;
mod wait;

#[cfg(test)]
mod conformance;

#[cfg(feature = "redis")]
pub(crate) use self::redis::EXPECTED_REDIS_URL;
#[cfg(feature = "redis")]
pub use self::redis::{DEFAULT_REDIS_PREFIX, RedisStore};
pub use health::StoreCounters;
pub use memory::MemoryStore;

pub(crate) use mirror::{Mirror, Prefetch, Resolved};
pub(crate) use task::{EndOp, StoreQueue};
pub(crate) use wait::HeadWait;

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};
use uuid::Uuid;

use crate::wire::Totals;

/// An error of a [`SessionStore`]: anything the backend reports.
pub type StoreError = Box<dyn Error + Send + Sync>;

/// The future a [`SessionStore`] method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What workers share about their runs. See the [module docs](self).
///
/// Keys are the layer's run keys: an MCP session id, or a key resolved for
/// traffic without sessions. Times are wall-clock times; `ttl` is how long
/// an entry (and the marker a claim leaves) lives without activity.
pub trait SessionStore: fmt::Debug + Send + Sync + 'static {
    /// The open run of `key`, if there is one.
    fn find<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Uuid>>;

    /// Opens `run` under its key unless the key has an open run already, in
    /// one atomic step. A run id that was claimed before is not opened again
    /// ([`Opened::Ended`]): the layer also asks this way whether another
    /// worker ended a run of `start_run` it holds.
    fn open<'a>(&'a self, run: &'a NewRun, ttl: Duration) -> StoreFuture<'a, Opened>;

    /// Adds `delta` to the aggregates of an open run and moves its last
    /// activity forward to `last_activity` (never back), renewing its time
    /// to live. Returns `false`, changing nothing, when the run is not open.
    /// A count that would pass what the store holds stays at its largest
    /// (at least `i64::MAX`); the rest of the update still counts.
    fn record(
        &self,
        run_id: Uuid,
        delta: RunTotals,
        last_activity: SystemTime,
        ttl: Duration,
    ) -> StoreFuture<'_, bool>;

    /// Claims the end of a run, atomically: exactly one claim of a run
    /// [wins](Claim::Won). With `idle_before`, only a run whose last activity
    /// is at or before it can be claimed (else [`Claim::Active`]).
    fn claim(
        &self,
        run_id: Uuid,
        idle_before: Option<SystemTime>,
        ttl: Duration,
    ) -> StoreFuture<'_, Claim>;

    /// Claims, atomically, up to `limit` sweepable runs whose last activity
    /// is at or before `idle_before`, oldest first. Costs in proportion to
    /// the runs it looks at, not to all runs.
    fn claim_idle(
        &self,
        idle_before: SystemTime,
        limit: usize,
        ttl: Duration,
    ) -> StoreFuture<'_, Vec<ClaimedRun>>;
}

/// The six aggregates of a run, summed over its spans.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct RunTotals {
    /// Spans.
    pub span_count: u64,
    /// Spans of kind `tool`.
    pub tool_count: u64,
    /// Spans with status `error`.
    pub error_count: u64,
    /// Input tokens.
    pub tokens_in: u64,
    /// Output tokens.
    pub tokens_out: u64,
    /// Cost.
    pub cost: f64,
}

impl RunTotals {
    /// Adds `other` to these totals.
    pub fn add(&mut self, other: &Self) {
        // One sum for the store's totals and the wire's.
        let mut sum = Totals::from(*self);
        sum.add_totals(&Totals::from(*other));
        *self = sum.into();
    }

    /// Whether every aggregate is zero.
    #[must_use]
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

impl From<Totals> for RunTotals {
    fn from(t: Totals) -> Self {
        Self {
            span_count: t.span_count,
            tool_count: t.tool_count,
            error_count: t.error_count,
            tokens_in: t.total_tokens_in,
            tokens_out: t.total_tokens_out,
            cost: t.total_cost,
        }
    }
}

impl From<RunTotals> for Totals {
    fn from(t: RunTotals) -> Self {
        Self {
            total_tokens_in: t.tokens_in,
            total_tokens_out: t.tokens_out,
            total_cost: t.cost,
            span_count: t.span_count,
            tool_count: t.tool_count,
            error_count: t.error_count,
        }
    }
}

/// A run to open in the store ([`SessionStore::open`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewRun {
    /// The run key (session id or resolved key).
    pub key: String,
    /// The run's id.
    pub run_id: Uuid,
    /// When the run was last active (its start).
    pub last_activity: SystemTime,
    /// Whether the idle sweep may end it ([`SessionStore::claim_idle`]);
    /// runs of `start_run` end by `end_run` only.
    pub sweepable: bool,
}

impl NewRun {
    /// A sweepable run.
    #[must_use]
    pub fn new(key: impl Into<String>, run_id: Uuid, last_activity: SystemTime) -> Self {
        Self {
            key: key.into(),
            run_id,
            last_activity,
            sweepable: true,
        }
    }

    /// Sets whether the idle sweep may end the run.
    #[must_use]
    pub fn sweepable(mut self, sweepable: bool) -> Self {
        self.sweepable = sweepable;
        self
    }
}

/// What [`SessionStore::open`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Opened {
    /// The run is open under its key now.
    Opened,
    /// The key has this open run already (another worker's, or this one).
    Existing(Uuid),
    /// The run id was claimed before: it stays ended.
    Ended,
}

/// What [`SessionStore::claim`] found.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Claim {
    /// This claim won: the run is removed, and its end is the claimer's to send.
    Won(ClaimedRun),
    /// The run was active after `idle_before`: nothing changed.
    Active,
    /// Another claim won before.
    AlreadyEnded,
    /// The store does not know the run (never opened here, or expired).
    /// The claim is remembered: a later claim finds it ended.
    Unknown,
}

/// A run whose end claim was won: what its `end` needs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClaimedRun {
    /// The run's id.
    pub run_id: Uuid,
    /// The run key it was open under.
    pub key: String,
    /// The aggregates of every span recorded in it, from every worker.
    pub totals: RunTotals,
    /// Its last activity: the `ended_at` of an idle end.
    pub last_activity: SystemTime,
}

impl ClaimedRun {
    /// A claimed run.
    #[must_use]
    pub fn new(run_id: Uuid, key: String, totals: RunTotals, last_activity: SystemTime) -> Self {
        Self {
            run_id,
            key,
            totals,
            last_activity,
        }
    }
}

/// Microseconds since the Unix epoch: how stores keep times (exact in a
/// double, which Redis sorted sets score with, until the year 2255).
pub(crate) fn micros(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The time `micros` microseconds after the Unix epoch.
pub(crate) fn from_micros(micros: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(micros)
}

/// `url` with any password replaced by `***`, for error messages.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| scheme_end + i);
    match url[scheme_end..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &url[scheme_end..scheme_end + at];
            let user = userinfo.split(':').next().unwrap_or("");
            let hidden = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{}{hidden}{}", &url[..scheme_end], &url[scheme_end + at..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod url_tests {
    use super::redact_url;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_url("redis://default:s3cret@cache:6379/1"),
            "redis://default:***@cache:6379/1"
        );
        assert_eq!(redact_url("redis://s3cret@cache"), "redis://***@cache");
        assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
