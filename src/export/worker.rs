//! The background delivery loop.

use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::task::Poll;
use tokio::time::Instant;

use super::batch::Batch;
use super::core::Core;
use super::counters::DropReason;
use super::inflight::InFlight;
use super::outcome::Outcome;
use super::trouble::Trouble;
use super::{DeliveryOptions, Sink};
use crate::fence::{Stage, fenced};

/// Takes due batches off the queue, delivers them (a few at a time, one per
/// run) and acts on each answer: done, back off, pause, split or drop.
#[derive(Debug)]
pub(crate) struct Worker {
    core: Arc<Core>,
    sink: Arc<Sink>,
    options: DeliveryOptions,
    in_flight: InFlight,
    /// Whether the API fails every run's calls.
    trouble: Trouble,
    /// Once every handle is gone: the worker stops then at the latest.
    orphan_deadline: Option<Instant>,
}

/// What the loop does next.
enum Next {
    /// Wait for an answer, a wake-up, or this instant if any.
    Wait(Option<Instant>),
    /// Stop: shut down, drained, or out of time.
    Stop,
}

impl Worker {
    pub(super) fn new(core: Arc<Core>, sink: Sink, options: DeliveryOptions) -> Self {
        Self {
            core,
            sink: Arc::new(sink),
            options,
            in_flight: InFlight::default(),
            trouble: Trouble::default(),
            orphan_deadline: None,
        }
    }

    /// Runs until shutdown has drained the queue (or ran out of time), or
    /// for a bounded time once every [`Exporter`](super::Exporter) is gone.
    ///
    /// The loop runs behind the layer's panic fence: a panic of its own (a
    /// bug of the layer) is logged and counted, and halts delivery for good
    /// (see [`Core::halt`]) rather than leave records to pile up for a
    /// thread that is gone.
    pub(crate) async fn run(self) {
        let core = Arc::clone(&self.core);
        let mut delivering = Box::pin(self.deliver());
        let finished =
            poll_fn(
                |cx| match fenced(Stage::DeliveryLoop, || delivering.as_mut().poll(cx)) {
                    Some(Poll::Pending) => Poll::Pending,
                    Some(Poll::Ready(())) => Poll::Ready(true),
                    None => Poll::Ready(false),
                },
            )
            .await;
        if finished {
            return;
        }
        // Dropping the loop drops its calls in flight, which may run the
        // HTTP client's code.
        fenced(Stage::Delivery, || drop(delivering));
        core.halt();
        // The runtime this runs on also reads the backlog (see
        // `export::thread`): it stays until shutdown or until every handle
        // is gone, so that exchanges under way at the halt are still read,
        // and their records counted as dropped.
        while !core.must_stop() && !core.is_orphaned() {
            core.wake.notified().await;
        }
    }

    /// The loop [`run`](Self::run) fences.
    async fn deliver(mut self) {
        while let Next::Wait(deadline) = self.dispatch(Instant::now()) {
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                (batch, outcome) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.settle(batch, outcome, Instant::now());
                }
                () = self.core.wake.notified() => {}
                () = timer => {}
            }
        }
        self.abandon();
    }

    /// Starts every call that may start at `now` and says what to wait for.
    fn dispatch(&mut self, now: Instant) -> Next {
        if self.core.must_stop() {
            return Next::Stop;
        }
        if self.core.is_orphaned() {
            let deadline = *self
                .orphan_deadline
                .get_or_insert(now + self.options.drain_on_drop);
            if now >= deadline {
                return Next::Stop;
            }
        }
        let max_in_flight = self.options.max_in_flight;
        let allowed = self.trouble.max_in_flight(max_in_flight);
        let in_flight = self.in_flight.len();
        let busy = in_flight > 0;
        let (batches, done, wake_at) = self.core.update(|queue| {
            // Once shutdown began, no probe holds the other runs back: it
            // is their last chance.
            let allowed = if queue.is_closed() {
                max_in_flight
            } else {
                allowed
            };
            let free = allowed.saturating_sub(in_flight);
            if queue.next_due().is_some_and(|at| at <= now) {
                queue.make_due();
            }
            queue.wake_waiting(now);
            let mut batches = Vec::new();
            while batches.len() < free {
                match queue.take_batch() {
                    Some(batch) => batches.push(batch),
                    None => break,
                }
            }
            let done = queue.is_closed() && queue.size() == (0, 0) && !busy;
            let wake_at = [queue.next_due(), queue.next_wake()]
                .into_iter()
                .flatten()
                .min();
            (batches, done, wake_at)
        });
        if done {
            return Next::Stop;
        }
        for batch in batches {
            self.in_flight
                .start(batch, &self.sink, self.options.request_timeout);
        }
        let wake_at = [wake_at, self.orphan_deadline].into_iter().flatten().min();
        Next::Wait(wake_at)
    }

    /// Acts on the answer to a batch.
    fn settle(&mut self, mut batch: Batch, outcome: Outcome, now: Instant) {
        let stats = &self.core.stats;
        let backoff = &self.options.backoff;
        match &outcome {
            Outcome::Delivered | Outcome::TooLarge | Outcome::Rejected { .. } => {
                self.trouble.answered();
            }
            Outcome::Transient { .. } => {
                // Not after shutdown began: it is every run's last chance.
                if let Some(until) = self.trouble.failed(now, backoff) {
                    self.core.update(|queue| {
                        if !queue.is_closed() {
                            queue.pause(until);
                        }
                    });
                }
            }
            Outcome::Throttled { .. } => self.trouble.throttled(),
        }
        match outcome {
            Outcome::Delivered => {
                // Counted under the queue's lock, as it leaves the queue: a
                // snapshot never sees a record both sent and queued.
                self.core.update(|queue| {
                    stats.sent(batch.len());
                    queue.delivered(&batch);
                });
            }
            Outcome::Transient {
                retry_after,
                detail,
            } => match batch.retry.failed(now, backoff, retry_after) {
                Some(wait) => self.retry(batch, Some(now + wait)),
                None => self.drop_batch(&batch, DropReason::GaveUp, &detail),
            },
            // A 429 is a failure like the others: it counts toward giving
            // up, or an API that keeps throttling holds the records forever.
            Outcome::Throttled { retry_after } => match batch.retry.failed(now, backoff, None) {
                Some(step) => {
                    // `Retry-After` paces the calls, not the back-off step.
                    // One of 0 (or a date past on this clock) still waits
                    // the first step: never a loop of calls against a
                    // throttling API.
                    let wait = retry_after.map_or(step, |wait| {
                        wait.max(backoff.base).min(self.options.max_throttle)
                    });
                    // Once shutdown began, only this run waits: the others'
                    // last chance is not spent on its pause.
                    let closed = self.core.update(|queue| {
                        let closed = queue.is_closed();
                        if !closed {
                            queue.pause(now + wait);
                        }
                        closed
                    });
                    self.retry(batch, closed.then_some(now + wait));
                }
                None => self.drop_batch(&batch, DropReason::GaveUp, "HTTP 429"),
            },
            Outcome::TooLarge if batch.len() > 1 => {
                batch.max_items = batch.len() / 2;
                self.retry(batch, None);
            }
            Outcome::TooLarge => self.drop_batch(&batch, DropReason::TooLarge, "HTTP 413"),
            Outcome::Rejected { detail } => self.drop_batch(&batch, DropReason::Rejected, &detail),
        }
    }

    /// Puts a batch back to be tried again (after `until`, if given), counted.
    fn retry(&self, batch: Batch, until: Option<Instant>) {
        self.core.stats.retried();
        self.core.update(|queue| queue.retry(batch, until));
    }

    fn drop_batch(&self, batch: &Batch, reason: DropReason, detail: &str) {
        let stats = &self.core.stats;
        self.core
            .update(|queue| queue.drop_batch(batch, reason, detail, stats));
    }

    /// On the way out: calls in flight and records still queued count as
    /// dropped by shutdown.
    fn abandon(&mut self) {
        let abandoned = self.in_flight.abandon();
        let stats = &self.core.stats;
        self.core.update(|queue| {
            for batch in &abandoned {
                queue.drop_batch(batch, DropReason::Shutdown, "in flight at shutdown", stats);
            }
            queue.close();
            queue.drop_queued(DropReason::Shutdown, stats);
        });
    }
}
