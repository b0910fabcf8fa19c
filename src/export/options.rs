//! The limits and timings of delivery, with their defaults.

use std::time::Duration;

use super::retry::Backoff;

/// Most calls to the ingest API in flight at once. A run's calls go one
/// at a time (its start, then its spans, then its end), so this is how many
/// runs deliver side by side: at a round trip of 50 ms, 640 calls a second.
pub(crate) const DEFAULT_MAX_CONCURRENT_CALLS: usize = 32;
/// The most calls in flight a configuration may ask for.
pub(crate) const MAX_CONCURRENT_CALLS: usize = 256;
/// Most records (run starts, spans, run ends) held for delivery.
pub(crate) const DEFAULT_MAX_QUEUE_ITEMS: usize = 10_000;
/// Most JSON bytes of records held for delivery: 64 MiB.
pub(crate) const DEFAULT_MAX_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Most runs whose start was dropped that are remembered, so that their
/// later records are dropped too rather than sent for a run that does not
/// exist. A run is forgotten when its end comes; this bounds what an
/// outage of many long sessions leaves (about 50 bytes a run), apart from
/// the queue's bound, which a user may set low.
pub(crate) const DEFAULT_MAX_DEAD_RUNS: usize = 100_000;
/// Most spans in one call, and how many records of one run make a full
/// call that goes at once: OpenTelemetry's batch size. Each call costs the
/// delivery thread about as much as reading a few spans (reqwest, hyper,
/// the answer), so under load fewer, fuller calls spare it; records still
/// wait at most the flush interval.
pub(crate) const DEFAULT_MAX_BATCH_ITEMS: usize = 512;

/// How delivery behaves. Built from the [`TrodoConfig`](crate::TrodoConfig)
/// queue settings; tests shorten the timings.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryOptions {
    /// Most records queued or in flight; past it the oldest are dropped.
    pub(crate) max_queue_items: usize,
    /// Most runs remembered as dropped with their start; past it the oldest
    /// are forgotten.
    pub(crate) max_dead_runs: usize,
    /// Most bytes queued or in flight (JSON, or a span's estimate); past it the oldest are dropped.
    pub(crate) max_queue_bytes: usize,
    /// Most spans in one `runs/{id}/spans` call.
    pub(crate) max_batch_items: usize,
    /// Most span bytes (JSON, or its estimate) in one call (a larger single span goes alone).
    pub(crate) max_batch_bytes: usize,
    /// Records wait at most this long before they are sent...
    pub(crate) flush_interval: Duration,
    /// ...or until this many of one run wait (a full batch).
    pub(crate) flush_items: usize,
    /// How long one HTTP call may take before it counts as a network error.
    pub(crate) request_timeout: Duration,
    /// Most calls in flight at once (never two of the same run).
    pub(crate) max_in_flight: usize,
    /// Waits between tries of a call that failed transiently.
    pub(crate) backoff: Backoff,
    /// Longest pause a 429's `Retry-After` can impose.
    pub(crate) max_throttle: Duration,
    /// How long the worker keeps delivering once every handle on it is gone
    /// without a [`shutdown`](super::Exporter::shutdown).
    pub(crate) drain_on_drop: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            max_queue_items: DEFAULT_MAX_QUEUE_ITEMS,
            max_dead_runs: DEFAULT_MAX_DEAD_RUNS,
            max_queue_bytes: DEFAULT_MAX_QUEUE_BYTES,
            max_batch_items: DEFAULT_MAX_BATCH_ITEMS,
            max_batch_bytes: 1024 * 1024,
            flush_interval: Duration::from_secs(1),
            flush_items: DEFAULT_MAX_BATCH_ITEMS,
            request_timeout: Duration::from_secs(10),
            max_in_flight: DEFAULT_MAX_CONCURRENT_CALLS,
            backoff: Backoff::default(),
            max_throttle: Duration::from_secs(60),
            drain_on_drop: Duration::from_secs(5),
        }
    }
}
