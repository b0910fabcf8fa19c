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
use crate::fence::{Stage, fenced};

/// The failure of a call that panicked.
const PANICKED: &str = "the HTTP client panicked";

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
        self.push(batch, call);
    }

    fn push(&mut self, batch: Batch, call: Call) {
        self.calls.push((batch, call));
    }

    /// The next call to finish, with its batch. Pending forever when none is
    /// in flight. Cancel-safe: a call not finished stays in flight.
    ///
    /// A call that panics (the HTTP client runs the application's DNS
    /// resolver or connector, if it gave one) is over: it counts as a
    /// network error, logged and counted as the layer's caught panics, and
    /// delivery goes on. Unwinding through here would end the delivery
    /// thread, and every record after it would wait in the queue for good.
    pub(crate) async fn next(&mut self) -> (Batch, Outcome) {
        poll_fn(|cx| {
            for i in 0..self.calls.len() {
                let polled = fenced(Stage::Delivery, || self.calls[i].1.as_mut().poll(cx));
                let outcome = match polled {
                    Some(Poll::Pending) => continue,
                    Some(Poll::Ready(outcome)) => outcome,
                    None => Outcome::network_error(PANICKED),
                };
                // `remove` keeps the others in start order: answers that
                // arrive together are acted on in that order.
                let (batch, call) = self.calls.remove(i);
                drop_call(call);
                return Poll::Ready((batch, outcome));
            }
            Poll::Pending
        })
        .await
    }

    /// Cancels every call and hands back their batches.
    pub(crate) fn abandon(&mut self) -> Vec<Batch> {
        let calls = std::mem::take(&mut self.calls);
        calls
            .into_iter()
            .map(|(batch, call)| {
                drop_call(call);
                batch
            })
            .collect()
    }
}

/// Drops a call behind the fence: dropping it may run the HTTP client's
/// code (and the application's, in it) as polling it does.
fn drop_call(call: Call) {
    fenced(Stage::Delivery, || drop(call));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::item::ItemKind;
    use crate::export::retry::RetryState;
    use crate::fence::{faults, panics_caught};
    use uuid::Uuid;

    fn batch(run: u128) -> Batch {
        Batch {
            run_id: Uuid::from_u128(run),
            kind: ItemKind::Start,
            items: Vec::new(),
            retry: RetryState::default(),
            max_items: 1,
        }
    }

    #[test]
    fn a_call_that_panics_is_a_network_error_and_the_others_go_on() {
        let _turn = faults::counting();
        let before = panics_caught();
        let mut in_flight = InFlight::default();
        in_flight.push(batch(1), Box::pin(async { panic!("a resolver's bug") }));
        in_flight.push(batch(2), Box::pin(async { Outcome::Delivered }));

        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (failed, outcome) = runtime.block_on(in_flight.next());
        assert_eq!(failed.run_id, Uuid::from_u128(1));
        assert_eq!(outcome, Outcome::network_error(PANICKED));
        assert_eq!(panics_caught() - before, 1);
        let (delivered, outcome) = runtime.block_on(in_flight.next());
        assert_eq!(
            (delivered.run_id, outcome),
            (Uuid::from_u128(2), Outcome::Delivered)
        );
        assert!(in_flight.is_empty());
    }

    #[test]
    fn a_call_that_panics_as_it_is_dropped_costs_nothing_else() {
        struct PanicsOnDrop;
        impl Drop for PanicsOnDrop {
            fn drop(&mut self) {
                panic!("a connector's bug");
            }
        }
        let _turn = faults::counting();
        let before = panics_caught();
        let mut in_flight = InFlight::default();
        let unanswered = PanicsOnDrop;
        in_flight.push(
            batch(1),
            Box::pin(async move {
                let _unanswered = unanswered;
                std::future::pending().await
            }),
        );
        let abandoned = in_flight.abandon();
        assert_eq!(abandoned.len(), 1);
        assert_eq!(panics_caught() - before, 1);
    }
}
