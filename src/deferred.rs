//! What a layer's [backlog](crate::backlog) holds: the work finished on
//! the request path, in the order it finished, to be read off it.

use crate::backlog::Later;
use crate::span_draft::FinishedSpan;
use crate::tape::{Ended, Tape};

/// One piece of finished work.
#[derive(Debug)]
pub(crate) enum Deferred {
    /// An exchange to read from its tape (see [`crate::tape`]).
    Taped(Ended),
    /// A span read live, to record after the exchanges that ended before it.
    Span(Box<FinishedSpan>),
}

impl Later for Deferred {
    /// A played tape, which holds what the request path allocated for it.
    type Leftover = Box<Tape>;

    fn weight(&self) -> usize {
        match self {
            Self::Taped(ended) => ended.weight(),
            Self::Span(span) => span.weight(),
        }
    }

    fn read(self) -> Option<Box<Tape>> {
        match self {
            Self::Taped(ended) => Some(ended.read()),
            Self::Span(span) => {
                span.record();
                None
            }
        }
    }
}
