//! A response head waiting for the session store.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use uuid::Uuid;

use super::{Exchange, Failure, ResponseHead};
use crate::fence::{Stage, fenced};
use crate::moment::Moment;
use crate::recorder::{BodyEnd, Recorder};
use crate::resume::ResumedStream;
use crate::state::Shared;
use crate::store::{HeadWait, Resolved};
use crate::watch::Watch;

/// What the response head decided.
#[derive(Debug)]
pub(crate) enum Head {
    /// The recorder of the response body, if the exchange is recorded.
    Ready(Option<Box<Recorder>>),
    /// A resumed event stream, read for the answers of calls parked in its
    /// session's run (see [`crate::resume`]).
    Resumed(Box<ResumedStream>),
    /// The response waits for the session store first.
    Wait(Pending),
}

impl Head {
    /// How the response body is watched, for a head decided at once
    /// (`None` for one that waits, or is not recorded).
    pub(crate) fn into_watch(self) -> Option<Watch> {
        match self {
            Self::Ready(recorder) => recorder.map(Watch::Live),
            Self::Resumed(stream) => Some(Watch::Resumed(stream)),
            Self::Wait(_) => None,
        }
    }
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
    pub(super) shared: Arc<Shared>,
}

impl Drop for Resolving {
    /// However the wait ends (settled, cancelled, given up, or a panic
    /// fenced while it was polled), this request no longer asks the store
    /// for its key's run with this id: one fewer does (see
    /// [`Sessions::run_id_to_resolve`]).
    ///
    /// [`Sessions::run_id_to_resolve`]: crate::run::Sessions::run_id_to_resolve
    fn drop(&mut self) {
        self.shared
            .sessions
            .forget_resolving(&self.key, self.run_id);
    }
}

impl Pending {
    /// How the response body is watched once the store answered (or the
    /// store timeout passed).
    pub(crate) fn poll_settle(
        &mut self,
        cx: &mut Context<'_>,
        response: &ResponseHead,
    ) -> Poll<Option<Watch>> {
        match self {
            Self::Resolve(resolving) => {
                let resolved = ready!(resolving.wait.poll_wait(cx))
                    .unwrap_or(Resolved::Local(resolving.run_id));
                let Some(mut exchange) = resolving.exchange.take() else {
                    return Poll::Ready(None);
                };
                exchange.note_resolved(resolving.key.clone(), resolved);
                // Decided with the answer at hand: no second wait.
                Poll::Ready(exchange.on_response(response).into_watch())
            }
            Self::Publish(recorder, wait) => {
                ready!(wait.poll_wait(cx));
                Poll::Ready(recorder.take().map(Watch::Live))
            }
        }
    }

    /// The client went away while the response head waited. A call that
    /// waited for the store's answer on its key's run still goes into the
    /// run the store names, once it names it (at most the store timeout
    /// later, in a task of its own): the store may open the run it was
    /// asked to, whose start must then be this process's, or name another
    /// worker's, which must not be split. A store slower than its timeout
    /// here is not counted as a request timeout: nobody waited on it.
    pub(crate) fn cancel(self) {
        let Self::Resolve(mut resolving) = self else {
            return self.abandon();
        };
        let Some(exchange) = resolving.exchange.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return exchange.on_failure(Failure::Cancelled);
        };
        resolving.wait.unwatched();
        runtime.spawn(async move {
            let resolved = poll_fn(|cx| resolving.wait.poll_wait(cx))
                .await
                .unwrap_or(Resolved::Local(resolving.run_id));
            let mut exchange = exchange;
            exchange.note_resolved(resolving.key.clone(), resolved);
            fenced(Stage::ResponseHead, || {
                exchange.on_failure(Failure::Cancelled)
            });
        });
    }

    /// Gives up the wait: the exchange ends as cancelled, without the
    /// store's answer (so a call whose key's run was not known here goes
    /// unrecorded).
    pub(crate) fn abandon(self) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrodoConfig;
    use crate::store::{MemoryStore, NewRun};
    use std::time::SystemTime;

    #[tokio::test]
    async fn a_wait_given_up_unsettled_lets_its_key_be_resolved_afresh() {
        let config = TrodoConfig::new().with_session_store(Arc::new(MemoryStore::new()));
        let shared = Shared::of(&config);
        let key: Arc<str> = " client:agent".into();
        let run_id = shared.sessions.run_id_to_resolve(&key);
        let run = NewRun::new(&*key, run_id, SystemTime::now());
        let wait = shared.mirror.as_ref().unwrap().resolve(&shared, None, run);
        let (mut parts, ()) = http::Request::post("/mcp").body(()).unwrap().into_parts();
        let exchange = Exchange::new(Arc::clone(&shared), &mut parts, false);
        let pending = Pending::Resolve(Box::new(Resolving {
            exchange: Some(Box::new(exchange)),
            key: Arc::clone(&key),
            run_id,
            wait,
            shared: Arc::clone(&shared),
        }));
        // A second request of the key asks with the same id, then settles.
        assert_eq!(shared.sessions.run_id_to_resolve(&key), run_id);
        shared.sessions.forget_resolving(&key, run_id);
        pending.abandon();
        assert_ne!(shared.sessions.run_id_to_resolve(&key), run_id);
    }
}
