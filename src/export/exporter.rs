//! The request path's handle on delivery: queue, flush, shut down, count.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use super::core::Core;
use super::counters::{DeliveryCounters, DropReason};
use super::item::Encoded;
use super::queue::Queue;
use super::span_records::SpanRecords;
use super::{DeliveryOptions, IngestCall, Sink, Worker};

/// How long shutdown waits, past its timeout, for the worker to abandon the
/// calls in flight (it does so as soon as it is told).
const STOP_GRACE: Duration = Duration::from_millis(100);

/// The handle on one delivery worker. Dropping it lets the worker deliver
/// what is queued for a bounded time, then stop.
#[derive(Debug)]
pub(crate) struct Exporter {
    core: Arc<Core>,
    /// A switched-off layer's: records are dropped at once, uncounted (no
    /// worker runs to deliver them).
    switched_off: bool,
}

impl Exporter {
    /// An exporter and the worker that serves it (not yet running).
    pub(crate) fn new(sink: Sink, options: DeliveryOptions) -> (Self, Worker) {
        let core = Arc::new(Core::new(Queue::new(options.clone())));
        let worker = Worker::new(Arc::clone(&core), sink, options);
        let exporter = Self {
            core,
            switched_off: false,
        };
        (exporter, worker)
    }

    /// The exporter of a switched-off layer: it queues nothing, so flush
    /// and shutdown have nothing to wait for.
    pub(crate) fn switched_off(mut self) -> Self {
        self.switched_off = true;
        self
    }

    /// Queues a call's records without waiting. Never blocks on delivery:
    /// it takes one short lock and may drop the oldest queued records to
    /// make room (see [`Queue::push`]).
    pub(crate) fn send(&self, call: IngestCall) {
        self.queue(Encoded::of(call));
    }

    /// Queues spans made ready beforehand (see [`SpanRecords`]), as
    /// [`send`](Self::send) queues a call's.
    pub(crate) fn send_spans(&self, spans: SpanRecords) {
        self.queue(spans.records);
    }

    /// Counts `spans` that finished after their run's `end` was queued:
    /// they are not sent, as the `end`'s totals are final (see
    /// [`DeliveryCounters::dropped_after_run_end`]).
    pub(crate) fn drop_after_run_end(&self, spans: usize) {
        if !self.switched_off {
            let detail = "a span finished after its run ended";
            self.core
                .stats
                .dropped(DropReason::AfterRunEnd, spans, detail);
        }
    }

    /// Counts a child span dropped because its request already kept the
    /// most child spans that wait for the run to be known (counted with
    /// the queue's drops: [`DeliveryCounters::dropped_queue_full`]).
    pub(crate) fn drop_waiting_child(&self) {
        if !self.switched_off {
            let detail = "too many child spans waited for their request's run";
            self.core.stats.dropped(DropReason::QueueFull, 1, detail);
        }
    }

    /// Counts child `spans` of a request that went into no run (see
    /// [`DeliveryCounters::dropped_no_run`]); after shutdown, they count as
    /// made after shutdown.
    pub(crate) fn drop_without_run(&self, spans: usize) {
        if self.switched_off || spans == 0 {
            return;
        }
        let stats = &self.core.stats;
        let shut_down = self.core.queue().is_closed();
        if shut_down {
            stats.dropped(
                DropReason::Shutdown,
                spans,
                "a child span made after shutdown",
            );
        } else {
            let detail = "a child span of a request that went into no run";
            stats.dropped(DropReason::NoRun, spans, detail);
        }
    }

    /// Whether delivery stopped for good, its loop having panicked (a bug
    /// of the layer): nothing recorded from now on would be sent.
    pub(crate) fn has_halted(&self) -> bool {
        self.core.is_halted()
    }

    /// Halts delivery as a panic of its loop does (see [`Core::halt`]).
    #[cfg(test)]
    pub(crate) fn halt(&self) {
        self.core.halt();
    }

    /// Puts records on the queue, in order, and wakes the worker if one is due.
    fn queue(&self, records: Vec<Encoded>) {
        if self.switched_off {
            return;
        }
        let now = Instant::now();
        let stats = &self.core.stats;
        let wake = self.core.update(|queue| {
            records
                .into_iter()
                .fold(false, |wake, record| queue.push(record, now, stats) | wake)
        });
        if wake {
            self.core.wake.notify_one();
        }
    }

    /// Sends every record queued so far without waiting for the flush
    /// interval, and waits until each is delivered or dropped, at most
    /// `timeout`. Returns `false` on timeout (e.g. while the ingest API is
    /// down: records keep their place and their retries).
    pub(crate) async fn flush(&self, timeout: Duration) -> bool {
        let target = self.core.update(|queue| {
            queue.make_due();
            queue.next_seq()
        });
        self.core.wake.notify_one();
        tokio::time::timeout(timeout, self.core.reached(target))
            .await
            .is_ok()
    }

    /// Refuses records from now on (they count as `dropped_shutdown`),
    /// delivers what is queued within `timeout`, then stops the worker.
    /// Whatever is left when time runs out is dropped as `shutdown` (calls in
    /// flight are abandoned; that takes at most [`STOP_GRACE`] more).
    /// Returns whether everything was delivered or dropped for another
    /// reason in time. A second call finds nothing to do.
    pub(crate) async fn shutdown(&self, timeout: Duration) -> bool {
        let target = self.core.update(|queue| {
            queue.close();
            queue.next_seq()
        });
        self.core.wake.notify_one();
        let drained = tokio::time::timeout(timeout, self.core.reached(target))
            .await
            .is_ok();
        if !drained {
            let stats = &self.core.stats;
            let in_flight = self.core.update(|queue| {
                queue.drop_queued(DropReason::Shutdown, stats);
                queue.size() != (0, 0)
            });
            self.core.stop();
            if in_flight {
                // Only a running worker has calls in flight: it counts them
                // as dropped when it stops, at once.
                let _ = tokio::time::timeout(STOP_GRACE, self.core.reached(target)).await;
            }
        }
        // A worker that drained stops by itself; one whose loop halted
        // waits to be told (see `Worker::run`).
        self.core.stop();
        let counters = self.counters();
        tracing::debug!(
            drained,
            sent = counters.sent,
            retried = counters.retried,
            dropped = counters.dropped(),
            "trodo: delivery shut down"
        );
        drained
    }

    /// A snapshot of the delivery counters, taken under the queue's lock
    /// (records move between queued, sent and dropped under it), so each
    /// record is counted exactly once.
    pub(crate) fn counters(&self) -> DeliveryCounters {
        let queue = self.core.queue();
        let (items, bytes) = queue.size();
        self.core.stats.snapshot(items, bytes)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.core.orphan();
    }
}
