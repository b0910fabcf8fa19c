//! The background delivery loop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

use super::{DeliveryError, DeliveryStats, IngestCall, Message, Sink};

/// Waits before the second and third try of a call that failed transiently,
/// as the Python SDK does.
const RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(2)];
/// Most spans sent in one `runs/{id}/spans` call.
const MAX_SPANS_PER_CALL: usize = 50;

/// Takes calls off the queue in order and delivers them.
#[derive(Debug)]
pub(crate) struct Worker {
    rx: mpsc::Receiver<Message>,
    sink: Sink,
    stats: Arc<DeliveryStats>,
    /// A message taken off the queue while batching, handled next.
    lookahead: Option<Message>,
}

impl Worker {
    pub(super) fn new(rx: mpsc::Receiver<Message>, sink: Sink, stats: Arc<DeliveryStats>) -> Self {
        Self {
            rx,
            sink,
            stats,
            lookahead: None,
        }
    }

    /// Runs until shutdown or until every [`Exporter`](super::Exporter) is gone.
    pub(crate) async fn run(mut self) {
        while let Some(message) = self.next().await {
            match message {
                Message::Call(call) => {
                    let call = self.batch(call);
                    self.deliver(call).await;
                }
                Message::Flush(done) => {
                    let _ = done.send(());
                }
                Message::Shutdown(done) => {
                    self.rx.close();
                    while let Some(message) = self.next().await {
                        match message {
                            Message::Call(call) => {
                                let call = self.batch(call);
                                self.deliver(call).await;
                            }
                            Message::Flush(other) | Message::Shutdown(other) => {
                                let _ = other.send(());
                            }
                        }
                    }
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    async fn next(&mut self) -> Option<Message> {
        match self.lookahead.take() {
            Some(message) => Some(message),
            None => self.rx.recv().await,
        }
    }

    /// Joins the spans of one run that wait right behind `call` into one call.
    fn batch(&mut self, call: IngestCall) -> IngestCall {
        let IngestCall::Spans { run_id, mut spans } = call else {
            return call;
        };
        while spans.len() < MAX_SPANS_PER_CALL {
            match self.rx.try_recv() {
                Ok(Message::Call(IngestCall::Spans {
                    run_id: next,
                    spans: more,
                })) if next == run_id => {
                    spans.extend(more);
                }
                Ok(other) => {
                    self.lookahead = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        IngestCall::Spans { run_id, spans }
    }

    async fn deliver(&self, call: IngestCall) {
        let mut delays = RETRY_DELAYS.iter();
        loop {
            match self.sink.deliver(&call).await {
                Ok(()) => {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(DeliveryError::Transient(reason)) => {
                    if let Some(delay) = delays.next() {
                        self.stats.retried.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(path = %call.path(), %reason, "trodo: delivery failed, retrying");
                        tokio::time::sleep(*delay).await;
                        continue;
                    }
                    self.give_up(&call, &reason);
                    return;
                }
                Err(DeliveryError::Rejected(reason)) => {
                    self.give_up(&call, &reason);
                    return;
                }
            }
        }
    }

    fn give_up(&self, call: &IngestCall, reason: &str) {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(path = %call.path(), run_id = %call.run_id(), %reason, "trodo: telemetry not delivered");
    }
}
