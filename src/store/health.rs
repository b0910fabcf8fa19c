//! Whether the session store answers, and what it cost: the counters, and
//! two gates. A store that failed is left alone for [`RETRY_AFTER`]
//! (nothing waits on it, the background task does not try it); a store that
//! was merely too slow for a request is left alone by requests for as long,
//! while the background task goes on using it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

use crate::log_pace::LogPace;

/// How long the store is left alone after it failed or was too slow.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The live counters and the breaker of one process's store link.
#[derive(Debug)]
pub(crate) struct Health {
    /// On Tokio's clock, like the store task's timers (paused in tests).
    epoch: Instant,
    /// Until when (microseconds after `epoch`) the store is skipped; 0: never.
    skip_until: AtomicU64,
    /// Until when requests do not wait for the store (it was too slow).
    request_skip_until: AtomicU64,
    /// When a request that gave up waiting is next logged at `warn`.
    slow_pace: LogPace,
    /// Whether the last outage was logged and not yet recovered from.
    down: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
    request_timeouts: AtomicU64,
    bypassed: AtomicU64,
    dropped: AtomicU64,
    deferred_lost: AtomicU64,
    ended: AtomicU64,
    local_ends: AtomicU64,
    sweeps: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            skip_until: AtomicU64::new(0),
            request_skip_until: AtomicU64::new(0),
            slow_pace: LogPace::new(),
            down: AtomicBool::new(false),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            request_timeouts: AtomicU64::new(0),
            bypassed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            deferred_lost: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            local_ends: AtomicU64::new(0),
            sweeps: AtomicU64::new(0),
        }
    }
}

impl Health {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Whether the store may be asked now: not within [`RETRY_AFTER`] of a failure.
    pub(crate) fn available(&self) -> bool {
        self.skip_until.load(Ordering::Relaxed) <= self.now()
    }

    /// How long the store is still left alone: zero when it may be asked.
    pub(crate) fn skipped_for(&self) -> Duration {
        let until = self.skip_until.load(Ordering::Relaxed);
        Duration::from_micros(until.saturating_sub(self.now()))
    }

    /// Whether a request may wait for the store now: it is available, and
    /// no request gave up waiting within [`RETRY_AFTER`].
    pub(crate) fn request_path_open(&self) -> bool {
        self.available() && self.request_skip_until.load(Ordering::Relaxed) <= self.now()
    }

    fn retry_at(&self) -> u64 {
        self.now() + u64::try_from(RETRY_AFTER.as_micros()).unwrap_or(0)
    }

    /// A store operation succeeded: the store is back if it was down.
    pub(crate) fn succeeded(&self) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        if self.down.swap(false, Ordering::Relaxed) {
            self.skip_until.store(0, Ordering::Relaxed);
            tracing::info!("trodo: the session store answers again");
        }
    }

    /// A store operation failed or ran out of time: skip the store for a while.
    pub(crate) fn failed(&self, operation: &str, error: &dyn std::fmt::Display) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.skip_until.store(self.retry_at(), Ordering::Relaxed);
        if self.down.swap(true, Ordering::Relaxed) {
            tracing::debug!(operation, %error, "trodo: session store still failing");
        } else {
            tracing::warn!(
                operation,
                %error,
                "trodo: session store failed; requests go on without it, runs of sessions \
                 this worker knows continue here (see Trodo::store_counters)"
            );
        }
    }

    /// A request stopped waiting for the store at its timeout (the store
    /// work goes on in the background, and counts as it ends).
    pub(crate) fn request_timed_out(&self) {
        self.request_timeouts.fetch_add(1, Ordering::Relaxed);
        self.request_skip_until
            .store(self.retry_at(), Ordering::Relaxed);
        match self.slow_pace.note(1) {
            Some(times) => tracing::warn!(
                times,
                "trodo: a request stopped waiting for the session store at the store timeout; \
                 requests do not wait for it for a second after each such time \
                 (logged at warn at most once a minute, with the times since the last such \
                 line; see Trodo::store_counters, TrodoConfig::with_store_timeout)"
            ),
            None => tracing::debug!("trodo: a request stopped waiting for the session store"),
        }
    }

    /// A request did not ask the store because it was failing.
    pub(crate) fn bypassed(&self) {
        self.bypassed.fetch_add(1, Ordering::Relaxed);
    }

    /// A background operation did not fit in the store queue, or was
    /// skipped while the store was failing, or failed.
    pub(crate) fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// `count` claims or openings that waited for the store were lost.
    pub(crate) fn deferred_lost(&self, count: u64) {
        self.deferred_lost.fetch_add(count, Ordering::Relaxed);
    }

    /// This process won a run's end claim and sent its end.
    pub(crate) fn ended(&self) {
        self.ended.fetch_add(1, Ordering::Relaxed);
    }

    /// This process ended a run with its own totals, the store unable to say.
    pub(crate) fn ended_locally(&self) {
        self.local_ends.fetch_add(1, Ordering::Relaxed);
    }

    /// A sweep of the store's idle runs finished.
    pub(crate) fn swept(&self) {
        self.sweeps.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot.
    pub(crate) fn snapshot(&self) -> StoreCounters {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StoreCounters {
            ok: load(&self.ok),
            failed: load(&self.failed),
            request_timeouts: load(&self.request_timeouts),
            bypassed: load(&self.bypassed),
            dropped: load(&self.dropped),
            deferred_lost: load(&self.deferred_lost),
            ended: load(&self.ended),
            local_ends: load(&self.local_ends),
            sweeps: load(&self.sweeps),
            available: self.available(),
        }
    }
}

/// Counters of the session store link of one process, from
/// [`Trodo::store_counters`](crate::Trodo::store_counters).
///
/// A rising `failed` means the store is unreachable or slow: requests are
/// then served without it (`bypassed`, `request_timeouts`) and runs this
/// process knows end with its own totals (`local_ends`). The first failure
/// of an outage is logged with `tracing`, and so is the recovery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreCounters {
    /// Store operations that succeeded.
    pub ok: u64,
    /// Store operations that failed or ran out of time (1 s).
    pub failed: u64,
    /// Requests whose response stopped waiting for the store at the store
    /// timeout (the store's answer is still applied when it comes). Not
    /// those whose client had gone away.
    pub request_timeouts: u64,
    /// Requests that did not wait for the store because it had just failed
    /// or been too slow.
    pub bypassed: u64,
    /// Background operations dropped: the store queue was full (or its
    /// task gone with its runtime), or the store had just failed (or
    /// failed them). Aggregates and activity; questions whether another
    /// worker ended a run this process holds (asked again at the next
    /// sweep); ends of runs of sessions this process does not hold
    /// (a DELETE or a 404 of another worker's session), which a sweep then ends as
    /// `idle_timeout`; and end claims of runs it holds that the queue
    /// refused, full or its task gone (those end with its totals, in
    /// `local_ends`).
    pub dropped: u64,
    /// What waited for the store to answer again, lost: claims of runs
    /// ended here without it (a sweep may then end such a run a second
    /// time), and openings of runs of `start_run` started while it failed
    /// (they stay this process's). Lost past the 10,000 of a kind that
    /// wait, still waiting (or being tried again) when the store task ends (its runtime shut
    /// down, as a process exits after shutdown while the store is down, or
    /// every layer and `Trodo` handle of its config dropped), which is
    /// logged with `tracing` (`warn`) with how many, or kept after that.
    pub deferred_lost: u64,
    /// Runs whose end claim this process won, and whose end it sent.
    pub ended: u64,
    /// Runs this process ended with its own totals because the store could
    /// not be reached or no longer knew them.
    pub local_ends: u64,
    /// Sweeps of the store's idle runs done by this process.
    pub sweeps: u64,
    /// Whether the store is being used now (not skipped after a failure).
    pub available: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_skips_the_store_until_a_success() {
        let health = Health::default();
        assert!(health.available());
        health.failed("find", &"connection refused");
        assert!(!health.available());
        health.succeeded();
        assert!(health.available());
        let c = health.snapshot();
        assert_eq!((c.ok, c.failed, c.available), (1, 1, true));
    }

    #[test]
    fn a_slow_store_is_skipped_by_requests_only() {
        let health = Health::default();
        health.request_timed_out();
        assert!(!health.request_path_open());
        assert!(health.available(), "the background goes on");
        health.succeeded();
        assert!(!health.request_path_open(), "until the retry time");
        let c = health.snapshot();
        assert_eq!((c.request_timeouts, c.failed, c.available), (1, 0, true));
    }
}
