//! How the layer watches a response body: live, on tape for later, or as
//! a resumed stream.

use bytes::Bytes;

use crate::moment::Moment;
use crate::recorder::{BodyEnd, Recorder};
use crate::resume::ResumedStream;
use crate::tape::{Step, Tape};

/// The layer's watch on one response body.
#[derive(Debug)]
pub(crate) enum Watch {
    /// Read as it streams: the span ends when its answer goes by.
    Live(Box<Recorder>),
    /// Kept for the backlog to read (see [`crate::tape`]).
    Taped(Box<Tape>),
    /// Read for the answers of calls parked in its session's run (see
    /// [`crate::resume`]).
    Resumed(Box<ResumedStream>),
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
            Self::Resumed(mut stream) => {
                if stream.on_data(data) {
                    return None;
                }
                Some(Self::Resumed(stream))
            }
        }
    }

    /// The body is over.
    pub(crate) fn end(self, how: BodyEnd) {
        match self {
            Self::Live(recorder) => recorder.end(how, Moment::now()),
            Self::Taped(tape) => tape.end(how),
            Self::Resumed(stream) => stream.end(how),
        }
    }
}
