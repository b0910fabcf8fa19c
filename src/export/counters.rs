//! Counters of delivery: what was sent, retried and dropped, and why.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::log_pace::LogPace;

/// Why records were dropped instead of delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The queue was at its item or byte bound: the oldest records made room.
    QueueFull,
    /// The ingest API kept failing (5xx, 408, network) for the whole retry window.
    GaveUp,
    /// The ingest API answered 413 for a single record, or the record alone
    /// is larger than the queue's byte bound.
    TooLarge,
    /// The ingest API refused the records with a 4xx other than 408, 413, 429.
    Rejected,
    /// Recorded after shutdown, or still queued when shutdown's time ran out.
    Shutdown,
    /// A span finished after its run's `end` (with the run's totals) was
    /// queued: a task that outlived its request, say.
    AfterRunEnd,
    /// A child span of a request that went into no run.
    NoRun,
}

impl DropReason {
    const ALL: [Self; 7] = [
        Self::QueueFull,
        Self::GaveUp,
        Self::TooLarge,
        Self::Rejected,
        Self::Shutdown,
        Self::AfterRunEnd,
        Self::NoRun,
    ];

    /// The name used in logs.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::GaveUp => "gave_up",
            Self::TooLarge => "too_large",
            Self::Rejected => "rejected",
            Self::Shutdown => "shutdown",
            Self::AfterRunEnd => "after_run_end",
            Self::NoRun => "no_run",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The live counters, shared by the request path and the worker.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    sent: AtomicU64,
    retried: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// When a drop of each reason is next logged at `warn`.
    paces: [LogPace; DropReason::ALL.len()],
}

impl Stats {
    /// Counts `records` accepted by the ingest API.
    pub(crate) fn sent(&self, records: usize) {
        self.sent.fetch_add(records as u64, Ordering::Relaxed);
    }

    /// Counts one call that will be tried again.
    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `records` dropped for `reason`, and logs them (with
    /// `detail`): at `warn` the first time for each reason, then at most
    /// once a minute with the records dropped since; at `debug` between.
    pub(crate) fn dropped(&self, reason: DropReason, records: usize, detail: &str) {
        if records == 0 {
            return;
        }
        self.dropped[reason.index()].fetch_add(records as u64, Ordering::Relaxed);
        match self.paces[reason.index()].note(records as u64) {
            Some(records) => tracing::warn!(
                %reason,
                records,
                detail,
                "trodo: telemetry dropped; logged at warn at most once a minute for each \
                 reason, with the records dropped since the last such line \
                 (see Trodo::delivery_counters)"
            ),
            None => tracing::debug!(%reason, records, detail, "trodo: telemetry dropped"),
        }
    }

    /// A snapshot, with the queue's current size.
    pub(crate) fn snapshot(&self, queued_items: usize, queued_bytes: usize) -> DeliveryCounters {
        let dropped = |reason: DropReason| self.dropped[reason.index()].load(Ordering::Relaxed);
        let [
            queue_full,
            gave_up,
            too_large,
            rejected,
            shutdown,
            after_run_end,
            no_run,
        ] = DropReason::ALL.map(dropped);
        DeliveryCounters {
            sent: self.sent.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            failed: gave_up + too_large + rejected + shutdown,
            dropped_queue_full: queue_full,
            dropped_gave_up: gave_up,
            dropped_too_large: too_large,
            dropped_rejected: rejected,
            dropped_shutdown: shutdown,
            dropped_after_run_end: after_run_end,
            dropped_no_run: no_run,
            panics_caught: crate::fence::panics_caught(),
            hook_panics: 0,
            own_runs_past_max_open_runs: 0,
            queued_items: queued_items as u64,
            queued_bytes: queued_bytes as u64,
        }
    }
}

/// Counters of telemetry delivery, from
/// [`Trodo::delivery_counters`](crate::Trodo::delivery_counters).
///
/// Counts are of *records*: a run's start, one span, a run's end, a
/// one-shot run, a feedback. Every
/// record made is, at any moment, exactly one of: sent,
/// queued (`queued_items`, including calls in flight), or dropped for one
/// reason. Export them as metrics: a rising `dropped_*` means records did not
/// reach Trodo. Drops are also logged with `tracing` at `warn`: the first
/// of each reason, then at most once a minute for it, with the count since.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryCounters {
    /// Records the ingest API accepted (or the console printed).
    pub sent: u64,
    /// Calls tried again: after a 5xx, 408, 429, 413 (split) or network error.
    pub retried: u64,
    /// Records given up on, mostly after they were queued: the sum of
    /// `dropped_gave_up`, `dropped_too_large`, `dropped_rejected` and
    /// `dropped_shutdown` (`too_large` and `shutdown` also count records
    /// refused when made). A dropped start takes its run's other records
    /// with it, counted under the start's reason.
    pub failed: u64,
    /// Records dropped because the queue was at its item or byte bound (the
    /// oldest spans go first, see
    /// [`TrodoConfig::with_max_queue_items`](crate::TrodoConfig::with_max_queue_items)),
    /// and child spans past the 1,000 a request keeps while its run is not
    /// known yet.
    pub dropped_queue_full: u64,
    /// Records dropped after the ingest API failed for 10 minutes.
    pub dropped_gave_up: u64,
    /// Records dropped as too large: a 413 for a single record, or a record
    /// larger than the queue's byte bound.
    pub dropped_too_large: u64,
    /// Records the ingest API refused: any status but a 2xx, 408, 413, 429
    /// or 5xx (a redirect is not followed).
    pub dropped_rejected: u64,
    /// Records made after shutdown, or still queued when its time ran out
    /// (or when delivery halted after a panic of its loop, a bug of the
    /// layer).
    pub dropped_shutdown: u64,
    /// Spans that finished after their run's `end` was queued, so could no
    /// longer count in its totals: a child of a request's span, or a span
    /// of [`AgentRun`](crate::AgentRun) or of
    /// [`join_run`](crate::Trodo::join_run), still open when the run ended
    /// (work spawned by a handler that outlives its request, say), or the
    /// span of a request whose session's run, held here, ended while it was
    /// served. The `end` carries the totals the ingest API is told are
    /// final, so such spans are not sent.
    pub dropped_after_run_end: u64,
    /// Child spans of a request that went into no run, so had nowhere to
    /// go: a request the layer records no span for (a route outside the
    /// MCP endpoint without a session or the caller's propagation headers;
    /// a notification outside a session this process knows; a sessionless
    /// call under `Sessionless::Ignore`; a failed request in a session this
    /// process does not know; the children a DELETE or GET of such a
    /// session finishes after its answer's head), whose client went away
    /// before the run was known, or whose own span was lost to a panic of
    /// the layer's before the children could follow it. Those of a request
    /// passed through while the layer is shut down count as
    /// `dropped_shutdown`.
    pub dropped_no_run: u64,
    /// Panics caught in the layer's own work beside a request, in this
    /// process (a bug of the layer; each is also logged with `tracing`).
    /// Each cost the recording of one exchange, which passed through
    /// untouched. Panics in a call to the ingest API (in the HTTP client,
    /// which runs the DNS resolver or connector of a client you gave) are
    /// counted here too: such a call counts as a network error and is tried
    /// again. So is a panic of the delivery loop itself, which halts
    /// delivery (what is left counts in `dropped_shutdown`, and the layer
    /// passes requests through unrecorded from then on). They count
    /// events, not records, so they are not in [`dropped`](Self::dropped).
    pub panics_caught: u64,
    /// Panics of your hooks (`with_redaction`, `with_run_key`,
    /// `with_distinct_id`) caught by the layers of this config. Each is also logged with
    /// `tracing` (the first of each hook at `error`), and costs what the
    /// hook's docs say: a redacted value left out, a request grouped as if
    /// the hook gave no key or no distinct id. Not in
    /// [`dropped`](Self::dropped).
    pub hook_panics: u64,
    /// Calls sent as runs of their own, with `run_table_full: true` in
    /// their metadata, because
    /// [`max_open_runs`](crate::TrodoConfig::with_max_open_runs) runs were
    /// open and their key (of a call without a session, or a session id
    /// this process had not seen) had none of them. Nothing is lost; a rising count
    /// means many conversations at once (or a flood of new keys) split into
    /// one run a call. Not in [`dropped`](Self::dropped).
    pub own_runs_past_max_open_runs: u64,
    /// Records waiting for delivery or in flight now.
    pub queued_items: u64,
    /// Bytes of the records waiting for delivery or in flight now: their
    /// JSON, or for a span not yet serialized, an estimate of it.
    pub queued_bytes: u64,
}

impl DeliveryCounters {
    /// Every record dropped, whatever the reason.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.failed + self.dropped_queue_full + self.dropped_after_run_end + self.dropped_no_run
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sums_drops_by_reason() {
        let stats = Stats::default();
        stats.sent(5);
        stats.retried();
        stats.dropped(DropReason::QueueFull, 3, "");
        stats.dropped(DropReason::GaveUp, 1, "HTTP 503");
        stats.dropped(DropReason::TooLarge, 2, "HTTP 413");
        stats.dropped(DropReason::Rejected, 4, "HTTP 400");
        stats.dropped(DropReason::Shutdown, 8, "");
        stats.dropped(DropReason::AfterRunEnd, 16, "");
        stats.dropped(DropReason::NoRun, 32, "");
        let c = stats.snapshot(7, 700);
        assert_eq!((c.sent, c.retried), (5, 1));
        assert_eq!(
            (
                c.dropped_queue_full,
                c.dropped_gave_up,
                c.dropped_too_large,
                c.dropped_rejected,
                c.dropped_shutdown,
                c.dropped_after_run_end,
                c.dropped_no_run
            ),
            (3, 1, 2, 4, 8, 16, 32)
        );
        assert_eq!(c.failed, 15);
        assert_eq!(c.dropped(), 66);
        assert_eq!((c.queued_items, c.queued_bytes), (7, 700));
    }

    #[test]
    fn each_reason_keeps_its_own_pace() {
        let stats = Stats::default();
        stats.dropped(DropReason::Rejected, 1, "HTTP 400");
        stats.dropped(DropReason::Rejected, 1, "HTTP 400");
        stats.dropped(DropReason::QueueFull, 0, "");
        // Within the minute, only the reason already logged has no line due.
        let due: Vec<bool> = stats
            .paces
            .iter()
            .map(|pace| pace.note(0).is_some())
            .collect();
        assert_eq!(due, [true, true, true, false, true, true, true]);
    }
}
