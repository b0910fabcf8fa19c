//! How the layer watches a response body: live, or on tape for later.

use bytes::Bytes;

use crate::moment::Moment;
use crate::recorder::{BodyEnd, Recorder};
use crate::tape::{Step, Tape};

/// The layer's watch on one response body.
#[derive(Debug)]
pub(crate) enum Watch {
    /// Read as it streams: the span ends when its answer goes by.
    Live(Box<Recorder>),
    /// Kept for the backlog to read (see [`crate::tape`]).
    Taped(Box<Tape>),
}

impl Watch {
    /// Watches one chunk; `None` once the watch is over (the answer was seen).
    pub(crate) fn on_data(self, data: &Bytes) -> Option<Self> {
        match self {
            Self::Live(mut recorder) => {
                if recorder.on_data(data) {
                    recorder.end(BodyEnd::Complete, Moment::now());
                    return None;
                }
                Some(Self::Live(recorder))
            }
            Self::Taped(mut tape) => match tape.on_data(data) {
                Step::Going => Some(Self::Taped(tape)),
                Step::Answered => {
                    tape.end(BodyEnd::Complete);
                    None
                }
                Step::Live => tape.go_live().map(Self::Live),
            },
        }
    }

    /// The body is over.
    pub(crate) fn end(self, how: BodyEnd) {
        match self {
            Self::Live(recorder) => recorder.end(how, Moment::now()),
            Self::Taped(tape) => tape.end(how),
        }
    }
}
