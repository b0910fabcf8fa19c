//! What a layer's [backlog](crate::backlog) holds: the work finished on
//! the request path, in the order it finished, to be read off it (and the
//! closes of runs that must come after it).

use std::sync::Arc;
use uuid::Uuid;

use crate::backlog::Later;
use crate::run::ClosedVia;
use crate::span_draft::FinishedSpan;
use crate::state::Shared;
use crate::tape::{Ended, Tape};
use crate::wire::Timestamp;

/// One piece of finished work.
#[derive(Debug)]
pub(crate) enum Deferred {
    /// An exchange to read from its tape (see [`crate::tape`]).
    Taped(Ended),
    /// A span read live, to record after the exchanges that ended before it.
    Span(Box<FinishedSpan>),
    /// A session's run that an answer closed (a DELETE's, a 404's), to end
    /// after the exchanges that ended before it: the answer does not wait
    /// for them.
    Close(Box<Closing>),
}

/// A session's run to end, as an answer closed it.
#[derive(Debug)]
pub(crate) struct Closing {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: Arc<str>,
    /// The run open under `key` when the answer closed it: a later run of
    /// the key is not this close's.
    pub(crate) run_id: Uuid,
    pub(crate) via: ClosedVia,
    /// When the answer that closed it was seen: the run's end, unless a
    /// span counted in the run ended later.
    pub(crate) at: Timestamp,
}

impl Later for Deferred {
    /// A played tape, which holds what the request path allocated for it.
    type Leftover = Box<Tape>;

    fn weight(&self) -> usize {
        match self {
            Self::Taped(ended) => ended.weight(),
            Self::Span(span) => span.weight(),
            Self::Close(_) => 0,
        }
    }

    fn read(self) -> Option<Box<Tape>> {
        match self {
            Self::Taped(ended) => Some(ended.read()),
            Self::Span(span) => {
                span.record();
                None
            }
            Self::Close(closing) => {
                let Closing {
                    shared,
                    key,
                    run_id,
                    via,
                    at,
                } = *closing;
                let exporter = &shared.exporter;
                shared.sessions.close_at(&key, run_id, via, at, exporter);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moment::Moment;
    use crate::wire::Run;

    /// Opens a run under `key`; its id.
    fn open(shared: &Shared, key: &str) -> Uuid {
        let run = shared.sessions.run_for(key, Moment::now(), || {
            Run::new(Uuid::new_v4(), "agent".to_owned(), Timestamp::now())
        });
        run.run_id
    }

    #[test]
    fn a_close_ends_the_run_its_answer_closed_and_no_later_one() {
        let shared = Shared::switched_off();
        let key: Arc<str> = Arc::from("s-1");
        let first = open(&shared, &key);
        shared.close_session(&key, ClosedVia::SessionDeleted);
        assert_eq!(
            shared.sessions.run_id(&key),
            Some(first),
            "open until the backlog reads the close"
        );
        // Meanwhile the run ends otherwise, and another opens under the key.
        assert!(
            shared
                .sessions
                .close(&key, ClosedVia::SessionExpired, &shared.exporter)
        );
        let second = open(&shared, &key);
        assert_eq!(shared.backlog.catch_up(), 1);
        assert_eq!(
            shared.sessions.run_id(&key),
            Some(second),
            "not this close's"
        );

        shared.close_session(&key, ClosedVia::SessionDeleted);
        assert_eq!(shared.backlog.catch_up(), 1);
        assert_eq!(shared.sessions.run_id(&key), None);
    }
}
