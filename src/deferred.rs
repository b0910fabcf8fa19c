//! What a layer's [backlog](crate::backlog) holds: the work finished on
//! the request path, in the order it finished, to be read off it (and the
//! closes of runs that must come after it).

use std::sync::Arc;

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
    pub(crate) via: ClosedVia,
    /// When the answer that closed it was seen: the run's end.
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
                    via,
                    at,
                } = *closing;
                shared.sessions.close_at(&key, via, at, &shared.exporter);
                None
            }
        }
    }
}
