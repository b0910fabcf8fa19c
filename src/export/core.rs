//! The state the request path and the worker share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::sync::{Notify, watch};

use super::counters::{DropReason, Stats};
use super::item::Seq;
use super::queue::Queue;

/// The queue behind one lock, the counters, and the signals between the
/// request path, the worker and whoever waits on a flush or a shutdown.
#[derive(Debug)]
pub(crate) struct Core {
    queue: Mutex<Queue>,
    pub(crate) stats: Stats,
    /// Wakes the worker: a record to schedule, records due, flush, shutdown.
    pub(crate) wake: Notify,
    /// The queue's low watermark: every record before it is delivered or
    /// dropped. Flush and shutdown wait on it.
    progress: watch::Sender<Seq>,
    /// Shutdown ran out of time: the worker stops at once.
    stop: AtomicBool,
    /// Every handle is gone: the worker drains for a bounded time, then stops.
    orphaned: AtomicBool,
    /// The worker's loop panicked: delivery stopped for good.
    halted: AtomicBool,
}

impl Core {
    /// A core around an empty queue.
    pub(crate) fn new(queue: Queue) -> Self {
        Self {
            queue: Mutex::new(queue),
            stats: Stats::default(),
            wake: Notify::new(),
            progress: watch::Sender::new(0),
            stop: AtomicBool::new(false),
            orphaned: AtomicBool::new(false),
            halted: AtomicBool::new(false),
        }
    }

    /// The queue, for reading. Changes go through [`update`](Self::update).
    pub(crate) fn queue(&self) -> MutexGuard<'_, Queue> {
        // Every queue operation leaves it consistent before anything can
        // panic, so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the queue, then publishes how far delivery got.
    pub(crate) fn update<R>(&self, change: impl FnOnce(&mut Queue) -> R) -> R {
        let (result, low) = {
            let mut queue = self.queue();
            let result = change(&mut queue);
            (result, queue.low_watermark())
        };
        self.progress.send_if_modified(|published| {
            // Two updates may publish out of order; the watermark only rises.
            let rises = *published < low;
            if rises {
                *published = low;
            }
            rises
        });
        result
    }

    /// Waits until every record before `target` is delivered or dropped.
    pub(crate) async fn reached(&self, target: Seq) {
        let mut progress = self.progress.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot fail here.
        let _ = progress.wait_for(|low| *low >= target).await;
    }

    /// Tells the worker to stop now.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Whether the worker must stop now.
    pub(crate) fn must_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Tells the worker that nobody will flush or shut it down.
    pub(crate) fn orphan(&self) {
        self.orphaned.store(true, Ordering::Relaxed);
        self.update(Queue::close);
        self.wake.notify_one();
    }

    /// Stops delivery for good (the worker's loop panicked): every record
    /// queued or in flight is dropped as `shutdown`, and so is every record
    /// made later; flush and shutdown wait for nothing.
    pub(crate) fn halt(&self) {
        self.halted.store(true, Ordering::Relaxed);
        let stats = &self.stats;
        self.update(|queue| {
            queue.abandon_all(DropReason::Shutdown, "the delivery loop panicked", stats);
        });
    }

    /// Whether delivery stopped for good.
    pub(crate) fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Relaxed)
    }

    /// Whether every handle is gone.
    pub(crate) fn is_orphaned(&self) -> bool {
        self.orphaned.load(Ordering::Relaxed)
    }
}
