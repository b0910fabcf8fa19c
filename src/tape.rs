//! The common exchange, read later: a request in a session this process
//! already knows keeps only its bytes and times on the request path, and
//! the [backlog](crate::backlog) reads them on the delivery thread.
//!
//! Reading an exchange (parsing the JSON-RPC request and its answer,
//! naming the span, redacting, totting up the run) costs several times
//! what the server's own work on a small `tools/call` leaves for a layer
//! that must not show in its throughput. A [`Tape`] keeps the response's
//! chunks (shared, not copied) until the answer, then hands the exchange
//! to the backlog. The response head only notes the session's run (a
//! table lookup); the backlog builds the span as a recorder made on the
//! head would have, ending it at the time the tape saw the end, and a span
//! whose run ended meanwhile goes nowhere, as a recorder's would.
//!
//! Only what changes nothing the next request can see is put off: an
//! `initialize` (it opens a run), a DELETE or a 404 (they close one), a
//! session this process does not know (the head may wait for the store),
//! anything but a 2xx and a batch are decided on the response head, as
//! before. A stream that outgrows [`MAX_TAPED_BYTES`] before its answer is
//! decided at once and read live from there on.

use bytes::Bytes;
use std::sync::Arc;

use crate::deferred::Deferred;
use crate::exchange::{Exchange, Head, ResponseHead};
use crate::mcp::envelope::looks_like_response;
use crate::mcp::sse::SseDecoder;
use crate::moment::Moment;
use crate::recorder::{BodyEnd, Recorder};

/// The most response bytes a tape keeps; a longer answer is read live.
pub(crate) const MAX_TAPED_BYTES: usize = 64 * 1024;

/// How much of an event the tape reads to tell the answer (as much as
/// [`looks_like_response`] looks at).
const ANSWER_PREFIX_BYTES: usize = 512;

/// The bytes of one exchange, kept for the backlog to read.
#[derive(Debug)]
pub(crate) struct Tape {
    exchange: Box<Exchange>,
    head: ResponseHead,
    chunks: Vec<Bytes>,
    bytes: usize,
    /// For an event stream: finds the event that carries the answer, so
    /// that the exchange is handed on before the client sees it (as a
    /// live recorder ends the span then).
    answer: Option<SseDecoder>,
}

/// What one chunk did to a tape.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Keep taping.
    Going,
    /// The answer went by: the exchange can be handed on.
    Answered,
    /// Too many bytes before the answer: read live from now on.
    Full,
}

/// A taped exchange whose body is over, waiting in the backlog.
#[derive(Debug)]
pub(crate) struct Ended {
    tape: Box<Tape>,
    how: BodyEnd,
    at: Moment,
}

impl Tape {
    /// Tapes the body of `exchange`'s answer `head`.
    pub(crate) fn new(exchange: Box<Exchange>, head: ResponseHead) -> Box<Self> {
        let answer = head
            .is_event_stream()
            .then(|| SseDecoder::data_only(ANSWER_PREFIX_BYTES));
        Box::new(Self {
            exchange,
            head,
            chunks: Vec::new(),
            bytes: 0,
            answer,
        })
    }

    /// Keeps a chunk of the body (a shared reference to it).
    pub(crate) fn on_data(&mut self, data: &Bytes) -> Step {
        self.bytes += data.len();
        self.chunks.push(data.clone());
        if self.bytes > MAX_TAPED_BYTES {
            return Step::Full;
        }
        let Some(decoder) = &mut self.answer else {
            return Step::Going;
        };
        let mut answered = false;
        decoder.push(data, |event| {
            answered |= looks_like_response(event.data);
        });
        if answered {
            Step::Answered
        } else {
            Step::Going
        }
    }

    /// The body is over: hands the exchange to the backlog.
    pub(crate) fn end(self: Box<Self>, how: BodyEnd) {
        let at = Moment::now();
        let shared = Arc::clone(self.exchange.shared());
        shared.backlog.push(Deferred::Taped(Ended {
            tape: self,
            how,
            at,
        }));
    }

    /// Too much to keep: decides now and gives the recorder what was
    /// taped. `None` when there is nothing more to watch.
    pub(crate) fn go_live(self: Box<Self>) -> Option<Box<Recorder>> {
        let Self {
            exchange,
            head,
            chunks,
            ..
        } = *self;
        let mut recorder = decide(exchange, &head)?;
        if play(&mut recorder, &chunks) {
            recorder.end(BodyEnd::Complete, Moment::now());
            return None;
        }
        Some(recorder)
    }

    /// Bytes held, for the backlog's bound.
    fn weight(&self) -> usize {
        self.bytes + self.exchange.request_bytes()
    }
}

impl Ended {
    /// Bytes held, for the backlog's bound.
    pub(crate) fn weight(&self) -> usize {
        self.tape.weight()
    }

    /// Decides what the response head would have, and records the span as
    /// a live recorder would have, ending when the tape saw the end.
    pub(crate) fn read(self) {
        let Self { tape, how, at } = self;
        let Tape {
            exchange,
            head,
            chunks,
            ..
        } = *tape;
        if let Some(mut recorder) = decide(exchange, &head) {
            let how = if play(&mut recorder, &chunks) {
                BodyEnd::Complete
            } else {
                how
            };
            recorder.end(how, at);
        }
    }
}

/// What the response head decides for a taped exchange. It never waits
/// for the session store: its run was open when the head came (see
/// [`Exchange::tapes`]).
fn decide(exchange: Box<Exchange>, head: &ResponseHead) -> Option<Box<Recorder>> {
    match exchange.on_response(head) {
        Head::Ready(recorder) => recorder,
        Head::Wait(pending) => {
            pending.cancel();
            None
        }
    }
}

/// Feeds the taped chunks to a recorder; `true` once it saw the answer.
fn play(recorder: &mut Recorder, chunks: &[Bytes]) -> bool {
    chunks.iter().any(|chunk| recorder.on_data(chunk))
}
