//! Delivery of runs and spans to the ingest API, off the request path.
//!
//! The request path only calls [`Exporter::send`], which never waits: it puts
//! the call on a bounded queue (dropping and counting it when the queue is
//! full). One background [`worker`] takes calls in queue order, so per run the
//! `start` goes before its spans and the `end` after them, and delivers them
//! through a [`Sink`]: the ingest API over HTTP, or the console.

mod call;
mod console;
mod http;
mod worker;

pub(crate) use call::IngestCall;
pub(crate) use console::ConsoleSink;
pub(crate) use http::HttpSink;
pub(crate) use worker::Worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How many calls may wait for delivery before new ones are dropped.
pub(crate) const QUEUE_CAPACITY: usize = 10_000;

/// Where the worker delivers calls.
#[derive(Debug)]
pub(crate) enum Sink {
    /// The Trodo ingest API.
    Http(HttpSink),
    /// Standard output, one line per call.
    Console(ConsoleSink),
}

impl Sink {
    /// Delivers one call; `Err` says whether trying again may help.
    async fn deliver(&self, call: &IngestCall) -> Result<(), DeliveryError> {
        match self {
            Self::Http(sink) => sink.deliver(call).await,
            Self::Console(sink) => {
                sink.deliver(call);
                Ok(())
            }
        }
    }
}

/// Why a delivery failed.
#[derive(Debug)]
pub(crate) enum DeliveryError {
    /// A network error, a timeout, 408, 429 or a 5xx: worth another try.
    Transient(String),
    /// Any other answer: trying again would get the same.
    Rejected(String),
}

/// What goes to the worker.
#[derive(Debug)]
pub(crate) enum Message {
    /// A call to deliver.
    Call(IngestCall),
    /// Answer once every call queued before this one was handled.
    Flush(oneshot::Sender<()>),
    /// Deliver what is queued, answer, and stop.
    Shutdown(oneshot::Sender<()>),
}

/// Counters of the delivery, readable by the application.
#[derive(Debug, Default)]
pub(crate) struct DeliveryStats {
    pub(crate) sent: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    warned_full: AtomicBool,
}

/// Counters of telemetry delivery, from [`Trodo::delivery_counters`](crate::Trodo::delivery_counters).
///
/// Export them as metrics: a rising `failed` or `dropped_queue_full` means
/// runs or spans did not reach Trodo (the reasons are logged with `tracing`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryCounters {
    /// Calls the ingest API (or the console) accepted.
    pub sent: u64,
    /// Tries repeated after a transient failure.
    pub retried: u64,
    /// Calls given up on: rejected, failing after every retry, or queued after shutdown.
    pub failed: u64,
    /// Calls dropped because the delivery queue was full.
    pub dropped_queue_full: u64,
}

/// The request path's handle on the delivery worker. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Exporter {
    tx: mpsc::Sender<Message>,
    stats: Arc<DeliveryStats>,
}

impl Exporter {
    /// An exporter and the worker that serves it (not yet running).
    pub(crate) fn new(sink: Sink) -> (Self, Worker) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let stats = Arc::new(DeliveryStats::default());
        let worker = Worker::new(rx, sink, Arc::clone(&stats));
        (Self { tx, stats }, worker)
    }

    /// Queues a call without waiting; a full or closed queue drops it and counts it.
    pub(crate) fn send(&self, call: IngestCall) {
        match self.tx.try_send(Message::Call(call)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                if !self.stats.warned_full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        capacity = QUEUE_CAPACITY,
                        "trodo: delivery queue full, dropping telemetry (logged once)"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("trodo: telemetry after shutdown dropped");
            }
        }
    }

    /// Waits until every call queued so far was handled, at most `timeout`.
    /// Returns `false` on timeout or when the worker is gone.
    pub(crate) async fn flush(&self, timeout: Duration) -> bool {
        self.control(Message::Flush, timeout).await
    }

    /// Delivers what is queued and stops the worker, within `timeout`.
    pub(crate) async fn shutdown(&self, timeout: Duration) -> bool {
        self.control(Message::Shutdown, timeout).await
    }

    async fn control(&self, make: fn(oneshot::Sender<()>) -> Message, timeout: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        let round_trip = async { self.tx.send(make(done)).await.is_ok() && wait.await.is_ok() };
        tokio::time::timeout(timeout, round_trip)
            .await
            .unwrap_or(false)
    }

    /// A snapshot of the delivery counters.
    pub(crate) fn counters(&self) -> DeliveryCounters {
        let stats = &self.stats;
        DeliveryCounters {
            sent: stats.sent.load(Ordering::Relaxed),
            retried: stats.retried.load(Ordering::Relaxed),
            failed: stats.failed.load(Ordering::Relaxed),
            dropped_queue_full: stats.dropped_queue_full.load(Ordering::Relaxed),
        }
    }
}
