//! The calls in flight: at most a few, at most one per run.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use super::Sink;
use super::batch::Batch;
use super::outcome::Outcome;

/// A call to the sink, bounded by the request timeout.
type Call = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// The calls the worker has started and not yet heard back from, each with
/// its batch (kept here, so that an abandoned call's records are counted).
#[derive(Default)]
pub(crate) struct InFlight {
    calls: Vec<(Batch, Call)>,
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("calls", &self.calls.len())
            .finish()
    }
}

impl InFlight {
    /// How many calls are in flight.
    pub(crate) fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether no call is in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Starts delivering `batch`; no answer within `timeout` is a network error.
    pub(crate) fn start(&mut self, batch: Batch, sink: &Arc<Sink>, timeout: Duration) {
        let sink = Arc::clone(sink);
        let path = batch.path();
        let body = batch.body();
        let call = Box::pin(async move {
            tokio::time::timeout(timeout, sink.deliver(&path, body))
                .await
                .unwrap_or_else(|_| Outcome::network_error(format!("no answer in {timeout:?}")))
        });
        self.calls.push((batch, call));
    }

    /// The next call to finish, with its batch. Pending forever when none is
    /// in flight. Cancel-safe: a call not finished stays in flight.
    pub(crate) async fn next(&mut self) -> (Batch, Outcome) {
        poll_fn(|cx| {
            for i in 0..self.calls.len() {
                if let Poll::Ready(outcome) = self.calls[i].1.as_mut().poll(cx) {
                    // `remove` keeps the others in start order: answers that
                    // arrive together are acted on in that order.
                    let (batch, _) = self.calls.remove(i);
                    return Poll::Ready((batch, outcome));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Cancels every call and hands back their batches.
    pub(crate) fn abandon(&mut self) -> Vec<Batch> {
        self.calls.drain(..).map(|(batch, _)| batch).collect()
    }
}
