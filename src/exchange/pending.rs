//! A response head waiting for the session store.

use std::sync::Arc;
use std::task::{Context, Poll, ready};
use uuid::Uuid;

use super::{Exchange, Failure, ResponseHead};
use crate::moment::Moment;
use crate::recorder::{BodyEnd, Recorder};
use crate::store::{HeadWait, Resolved};

/// What the response head decided.
#[derive(Debug)]
pub(crate) enum Head {
    /// The recorder of the response body, if the exchange is recorded.
    Ready(Option<Box<Recorder>>),
    /// The response waits for the session store first.
    Wait(Pending),
}

/// What a response head waits for from the session store.
#[derive(Debug)]
pub(crate) enum Pending {
    /// The run of a key this process does not know; then the exchange decides.
    Resolve(Box<Resolving>),
    /// The store taking a new session's run, before the client learns of it.
    Publish(Option<Box<Recorder>>, HeadWait<()>),
}

/// An exchange waiting for the store's answer on a run key.
#[derive(Debug)]
pub(crate) struct Resolving {
    pub(super) exchange: Option<Box<Exchange>>,
    pub(super) key: Arc<str>,
    /// The run this process opens if the store has none (or cannot say).
    pub(super) run_id: Uuid,
    pub(super) wait: HeadWait<Resolved>,
}

impl Pending {
    /// The recorder of the response body once the store answered (or the
    /// store timeout passed).
    pub(crate) fn poll_settle(
        &mut self,
        cx: &mut Context<'_>,
        response: &ResponseHead,
    ) -> Poll<Option<Box<Recorder>>> {
        match self {
            Self::Resolve(resolving) => {
                let resolved = ready!(resolving.wait.poll_wait(cx))
                    .unwrap_or(Resolved::Local(resolving.run_id));
                let Some(mut exchange) = resolving.exchange.take() else {
                    return Poll::Ready(None);
                };
                exchange.note_resolved(resolving.key.clone(), resolved);
                Poll::Ready(match exchange.on_response(response) {
                    Head::Ready(recorder) => recorder,
                    // Decided with the answer at hand: no second wait.
                    Head::Wait(_) => None,
                })
            }
            Self::Publish(recorder, wait) => {
                ready!(wait.poll_wait(cx));
                Poll::Ready(recorder.take())
            }
        }
    }

    /// The client went away while the response head waited.
    pub(crate) fn cancel(self) {
        match self {
            Self::Resolve(mut resolving) => {
                if let Some(exchange) = resolving.exchange.take() {
                    exchange.on_failure(Failure::Cancelled);
                }
            }
            Self::Publish(recorder, _) => {
                if let Some(recorder) = recorder {
                    recorder.end(BodyEnd::Dropped, Moment::now());
                }
            }
        }
    }
}
