//! The common exchange, read later: a request in a session this process
//! already knows, or in none (MCP 2026-07-28), keeps only its bytes and
//! times on the request path, and the [backlog](crate::backlog) reads them
//! on the delivery thread.
//!
//! Reading an exchange (parsing the JSON-RPC request and its answer,
//! naming the span, redacting, totting up the run) costs several times
//! what the server's own work on a small `tools/call` leaves for a layer
//! that must not show in its throughput. A [`Tape`] keeps the response's
//! chunks (small ones copied, large ones shared) until the answer, then
//! hands the exchange to the backlog. In a session, the response head
//! only notes the session's run (a table lookup); the backlog builds the
//! span as a recorder made on the head would have, ending it at the time
//! the tape saw the end, and a span whose run ended meanwhile goes
//! nowhere, as a recorder's would. Without a session, the head notes
//! nothing: the backlog finds the run by the key chain (opening it if
//! none is open), or makes the request a run of its own, as the head
//! would have.
//!
//! Only what changes nothing the next request can see is put off: an
//! `initialize` (it opens a run), a DELETE or a 404 (they close one: the
//! head decides it, though the close itself then waits in the backlog
//! behind the exchanges before it, the run open meanwhile; see
//! [`Shared::close_session`](crate::state::Shared::close_session)), a
//! session this process does not know (the head may wait for the store),
//! an answer that names a session, anything but a 2xx, a batch, an
//! encoded request or answer, and every exchange of a layer with a
//! session store (other workers must see a run's totals at once) are
//! decided on the response head, as before. The
//! one thing a sessionless request read later changes is the opening of
//! its key's run: a later request of that key decided on its head (one of
//! the above) may open the run first, and the run's `start` then comes
//! from that request. The run is the same either way.
//!
//! Small chunks are copied onto the tape, large ones kept shared (see
//! [`COPIED_CHUNK_BYTES`]).
//!
//! Once the backlog's reader has read it, the tape goes back to the
//! request path, with the request's span but without its large chunks
//! (those, and a copy merged into them before a large one, are freed
//! where it was read): the next exchange to be taped fills it again, so
//! that its box and its copy's room are neither allocated nor freed (see
//! [`crate::leftovers`]).
//!
//! The tape tells the answer by a look at each event's first bytes: one
//! that mentions a `result` or an `error` is the answer only if it is a
//! response to the request's id. Most say so in their first bytes, as
//! their request does (see [`plainly_answers`]: a byte comparison); the
//! others have their first top-level members read (see [`answers`]), and
//! the request's id with them.
//! What they cannot tell (an `id` past the event's first
//! [`ANSWER_PREFIX_CHARS`] characters), a stream of more than
//! [`MAX_TAPED_CHUNKS`] chunks or [`MAX_TAPED_BYTES`] bytes (or the
//! answer's read window, if less) before the answer, is decided at once
//! and read live from there on.

use bytes::Bytes;
use std::sync::Arc;

use crate::api::RequestSpan;
use crate::deferred::Deferred;
use crate::exchange::{Exchange, Head, ResponseHead};
use crate::leftovers::Leftover;
use crate::mcp::answer::{Look, answers, look, mentions_outcome, plainly_answers, top_level_id};
use crate::mcp::sse::SseDecoder;
use crate::moment::Moment;
use crate::recorder::{BodyEnd, Recorder};

/// The most response bytes a tape keeps (less with a small capture limit:
/// at most what a live reading would keep); a longer answer is read live.
pub(crate) const MAX_TAPED_BYTES: usize = 64 * 1024;

/// The most chunks a tape keeps; a stream of more small ones is read live.
pub(crate) const MAX_TAPED_CHUNKS: usize = 64;

/// How many characters of an event the tape reads to tell the answer: as
/// many as the bytes [`look`] looks at, so at least those bytes.
const ANSWER_PREFIX_CHARS: usize = 512;

/// Chunks up to this size are copied onto the tape; larger ones are kept
/// shared. A copy lets the server free or reuse its buffer at once, on its
/// own thread (a shared chunk is freed on the delivery thread once read),
/// and spares the allocation a shared handle to a `Vec`-backed chunk
/// takes; past a few KiB the copy would cost more.
const COPIED_CHUNK_BYTES: usize = 4 * 1024;

/// The room the first copied chunk reserves.
const FIRST_COPY_BYTES: usize = 512;

/// The most room for copies a tape keeps when it is filled again.
const MAX_REUSED_COPY_BYTES: usize = 8 * 1024;

/// The bytes of one exchange, kept for the backlog to read.
#[derive(Debug)]
pub(crate) struct Tape {
    // Not boxed on its own: one allocation holds the exchange and its tape.
    /// The exchange, until the tape is played.
    exchange: Option<Exchange>,
    /// The request's span, held so that its allocation (made on the
    /// request path) and the request body it captured are freed with the
    /// tape, on a request's thread (see [`crate::leftovers`]).
    request_span: RequestSpan,
    head: ResponseHead,
    /// Large chunks, shared, and small ones before them copied into one;
    /// all come before `copied`.
    chunks: Vec<Bytes>,
    /// The latest small chunks, copied.
    copied: Vec<u8>,
    /// Chunks taped, for the chunk bound.
    chunk_count: usize,
    bytes: usize,
    /// The most bytes this tape keeps.
    max_bytes: usize,
    /// Bytes of the request body the exchange keeps.
    request_bytes: usize,
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
    /// Too much before the answer, or an event only parsing can tell: read
    /// live from now on.
    Live,
}

/// A taped exchange whose body is over, waiting in the backlog.
#[derive(Debug)]
pub(crate) struct Ended {
    tape: Box<Tape>,
    how: BodyEnd,
    at: Moment,
}

impl Tape {
    /// Tapes the body of `exchange`'s answer `head`; `request_bytes`: what
    /// the exchange keeps of the request. Fills a tape the delivery thread
    /// has read, if one waits (its box and its copy's room), else a new one.
    pub(crate) fn new(exchange: Exchange, head: ResponseHead, request_bytes: usize) -> Box<Self> {
        let answer = head
            .is_event_stream()
            .then(|| SseDecoder::data_only(ANSWER_PREFIX_CHARS));
        let shared = exchange.shared();
        let max_bytes = MAX_TAPED_BYTES.min(shared.settings.answer_read_window());
        let reused = shared.backlog.leftovers().reuse();
        let fill = |chunks, copied| Self {
            request_span: exchange.request_span(),
            head,
            chunks,
            copied,
            chunk_count: 0,
            bytes: 0,
            max_bytes,
            request_bytes,
            answer,
            exchange: Some(exchange),
        };
        let Some(mut tape) = reused else {
            return Box::new(fill(Vec::new(), Vec::new()));
        };
        debug_assert!(
            tape.exchange.is_none(),
            "only a played tape is filled again"
        );
        let mut chunks = std::mem::take(&mut tape.chunks);
        chunks.clear();
        let mut copied = std::mem::take(&mut tape.copied);
        copied.clear();
        if copied.capacity() > MAX_REUSED_COPY_BYTES {
            copied = Vec::new();
        }
        // The read tape's request span and head are dropped here.
        *tape = fill(chunks, copied);
        tape
    }

    /// Keeps a chunk of the body: a copy of a small one, a shared
    /// reference to a large one.
    pub(crate) fn on_data(&mut self, data: &Bytes) -> Step {
        self.bytes += data.len();
        self.chunk_count += 1;
        if data.len() <= COPIED_CHUNK_BYTES {
            if self.copied.capacity() == 0 {
                // Room for a typical answer and what comes before it at once.
                self.copied.reserve(FIRST_COPY_BYTES.max(data.len()));
            }
            self.copied.extend_from_slice(data);
        } else {
            if !self.copied.is_empty() {
                self.chunks
                    .push(Bytes::from(std::mem::take(&mut self.copied)));
            }
            self.chunks.push(data.clone());
        }
        if self.bytes > self.max_bytes || self.chunk_count > MAX_TAPED_CHUNKS {
            return Step::Live;
        }
        let Some(decoder) = &mut self.answer else {
            return Step::Going;
        };
        // Whole events of which none can be the answer (a priming event,
        // progress): nothing to decode.
        if !mentions_outcome(data) && decoder.pass_over(data) {
            return Step::Going;
        }
        let mut step = Step::Going;
        let request_span = &self.request_span;
        decoder.push(data, |event| {
            if step != Step::Going || look(event.data) == Look::Other {
                return;
            }
            // It may be the answer: its first members tell whether it is
            // this request's (a notification may mention a result or an
            // error early, its method late; a response may answer another
            // id). What they cannot tell is read live. Most answers say it
            // in their first bytes, as their request does.
            let input = request_span.input();
            if plainly_answers(event.data, input.bytes()) {
                step = Step::Answered;
                return;
            }
            let request_id = top_level_id(input.bytes());
            step = match answers(event.data, request_id.as_ref()) {
                Look::Response => Step::Answered,
                Look::Unsure => Step::Live,
                Look::Other => Step::Going,
            };
        });
        step
    }

    /// The body is over: hands the exchange to the backlog.
    pub(crate) fn end(self: Box<Self>, how: BodyEnd) {
        let at = Moment::now();
        let shared = Arc::clone(self.request_span.shared());
        shared.backlog.push(Deferred::Taped(Ended {
            tape: self,
            how,
            at,
        }));
    }

    /// Too much to keep: decides now and gives the recorder what was
    /// taped. `None` when there is nothing more to watch.
    pub(crate) fn go_live(mut self: Box<Self>) -> Option<Box<Recorder>> {
        let (recorder, answered) = self.play()?;
        if answered {
            recorder.end(BodyEnd::Complete, Moment::now());
            return None;
        }
        Some(recorder)
    }

    /// Decides what the response head would have (without waiting for the
    /// session store: the run was open when the head came, see
    /// [`Exchange::tapes`]) and feeds the recorder the taped chunks.
    /// Returns it, and whether it saw the answer among them. It plays once.
    fn play(&mut self) -> Option<(Box<Recorder>, bool)> {
        let exchange = self.exchange.take()?;
        let mut recorder = match Box::new(exchange).on_response(&self.head) {
            Head::Ready(recorder) => recorder?,
            // A POST: never a resumed stream.
            Head::Resumed(_) => return None,
            Head::Wait(pending) => {
                pending.abandon();
                return None;
            }
        };
        let answered = self
            .chunks
            .iter()
            .map(|chunk| &chunk[..])
            .chain((!self.copied.is_empty()).then_some(&self.copied[..]))
            .any(|chunk| recorder.on_data(chunk));
        Some((recorder, answered))
    }

    /// Bytes held, for the backlog's bound.
    fn weight(&self) -> usize {
        self.bytes
            + self.copied.capacity().saturating_sub(self.copied.len())
            + self.chunks.len() * std::mem::size_of::<Bytes>()
            + self.request_bytes
    }
}

impl Ended {
    /// Bytes held, for the backlog's bound.
    pub(crate) fn weight(&self) -> usize {
        self.tape.weight()
    }

    /// Records the span as a live recorder would have, ending when the
    /// tape saw the end (complete, if the answer was among the chunks).
    /// Returns the played tape, for the backlog to hand back to the
    /// request path. Its large chunks are let go here: a tape waiting to
    /// be filled again must not keep the server's buffers.
    pub(crate) fn read(self) -> Box<Tape> {
        let Self { mut tape, how, at } = self;
        if let Some((recorder, answered)) = tape.play() {
            recorder.end(if answered { BodyEnd::Complete } else { how }, at);
        }
        tape.chunks.clear();
        tape
    }
}

impl Leftover for Box<Tape> {
    fn bytes(&self) -> usize {
        std::mem::size_of::<Tape>()
            + self.copied.capacity()
            + self.chunks.capacity() * std::mem::size_of::<Bytes>()
            + self.chunks.iter().map(Bytes::len).sum::<usize>()
            // The request body, which its span keeps once read.
            + self.request_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Shared;
    use crate::watched_bytes::watched;

    /// A new tape of a POST in a session, answered with JSON.
    fn tape(shared: &Arc<Shared>) -> Box<Tape> {
        tape_of(shared, "application/json")
    }

    /// A new tape of a POST in a session, answered with `content_type`.
    fn tape_of(shared: &Arc<Shared>, content_type: &str) -> Box<Tape> {
        let (mut parts, ()) = http::Request::post("/mcp")
            .header("mcp-session-id", "s-1")
            .body(())
            .unwrap()
            .into_parts();
        let exchange = Exchange::new(Arc::clone(shared), &mut parts, false);
        let response = http::Response::builder()
            .header("content-type", content_type)
            .body(())
            .unwrap();
        Tape::new(exchange, ResponseHead::of(&response), 0)
    }

    /// The steps of an event stream's tape fed `chunks`.
    fn steps(chunks: &[&[u8]]) -> Vec<Step> {
        steps_after(b"", chunks)
    }

    /// The steps of the tape of `request`'s event stream fed `chunks`.
    fn steps_after(request: &[u8], chunks: &[&[u8]]) -> Vec<Step> {
        let shared = Shared::switched_off();
        let mut tape = tape_of(&shared, "text/event-stream");
        tape.request_span.input().push(request);
        chunks
            .iter()
            .map(|chunk| tape.on_data(&Bytes::copy_from_slice(chunk)))
            .collect()
    }

    const PRIMING: &[u8] = b"data: \nid: 0/1\nretry: 3000\n\n";
    const PROGRESS: &[u8] = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\n";
    const ANSWER: &[u8] = b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\nid: 1/1\n\n";

    #[tokio::test]
    async fn an_event_stream_tape_finds_the_answer_after_events_it_passes_over() {
        assert_eq!(
            steps(&[PRIMING, PROGRESS, ANSWER]),
            [Step::Going, Step::Going, Step::Answered]
        );
        // A BOM before the first event; the answer and progress together.
        let first = [b"\xEF\xBB\xBF", PRIMING].concat();
        let both = [PROGRESS, ANSWER].concat();
        assert_eq!(steps(&[&first, &both]), [Step::Going, Step::Answered]);
        // A method in the result is no request's.
        let nested = b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"method\":\"x\"}}\n\n";
        assert_eq!(steps(&[PRIMING, nested]), [Step::Going, Step::Answered]);
        // An id the event's first characters do not hold: read live.
        let late_id = format!(
            "data: {{\"result\":{{\"text\":\"{}\"}},\"jsonrpc\":\"2.0\",\"id\":1}}\n\n",
            "x".repeat(600)
        );
        assert_eq!(steps(&[late_id.as_bytes()]), [Step::Live]);
    }

    #[tokio::test]
    async fn an_event_is_the_answer_only_if_it_answers_the_request() {
        const REQUEST: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\"}";
        // A notification that mentions an error early and its method late.
        let late_method = format!(
            "data: {{\"jsonrpc\":\"2.0\",\"params\":{{\"level\":\"error\",\"data\":\"{}\"}},\"method\":\"notifications/message\"}}\n\n",
            "x".repeat(600)
        );
        assert_eq!(
            steps_after(REQUEST, &[late_method.as_bytes(), ANSWER]),
            [Step::Going, Step::Answered]
        );
        // Another request's answer.
        let other = b"data: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}}\n\n";
        assert_eq!(
            steps_after(REQUEST, &[other, ANSWER]),
            [Step::Going, Step::Answered]
        );
    }

    #[tokio::test]
    async fn an_answer_split_across_chunks_is_found() {
        // Neither piece mentions "result" whole; the first ends inside an
        // event, so it is decoded, not passed over.
        let at = ANSWER.windows(4).position(|w| w == b"\"res").unwrap() + 4;
        let (head, tail) = ANSWER.split_at(at);
        assert_eq!(
            steps(&[PRIMING, head, tail]),
            [Step::Going, Step::Going, Step::Answered]
        );
        // A chunk that ends with a blank line but starts inside an event.
        let (head, tail) = ANSWER.split_at(10);
        assert_eq!(steps(&[head, tail]), [Step::Going, Step::Answered]);
    }

    /// `tape`, with `bytes` copied onto it in small chunks, read.
    fn read(mut tape: Box<Tape>, bytes: usize) -> Box<Tape> {
        let chunk = Bytes::from(vec![b' '; bytes.min(COPIED_CHUNK_BYTES)]);
        let mut left = bytes;
        while left > 0 {
            let piece = chunk.slice(..left.min(chunk.len()));
            left -= piece.len();
            assert_eq!(tape.on_data(&piece), Step::Going);
        }
        Ended {
            tape,
            how: BodyEnd::Complete,
            at: Moment::now(),
        }
        .read()
    }

    #[tokio::test]
    async fn a_read_tape_is_filled_again_with_its_room_for_copies() {
        let shared = Shared::switched_off();
        let first = read(tape(&shared), 1_000);
        let (address, room) = (&raw const *first, first.copied.capacity());
        assert!(room >= 1_000);
        shared.backlog.leftovers().give_back(vec![first]);

        let second = tape(&shared);
        assert!(std::ptr::eq(&raw const *second, address), "the same box");
        assert!(second.exchange.is_some(), "holding the new exchange");
        assert_eq!((second.copied.len(), second.copied.capacity()), (0, room));
        assert_eq!((second.bytes, second.chunk_count), (0, 0));

        // A tape that copied much gives its room back instead.
        let large = read(second, MAX_REUSED_COPY_BYTES + 1);
        assert!(large.copied.capacity() > MAX_REUSED_COPY_BYTES);
        shared.backlog.leftovers().give_back(vec![large]);
        assert_eq!(tape(&shared).copied.capacity(), 0);
        assert!(shared.backlog.leftovers().reuse().is_none());
    }

    #[tokio::test]
    async fn a_read_tape_lets_its_large_chunks_go_and_keeps_its_span_and_room() {
        let shared = Shared::switched_off();
        let mut tape = tape(&shared);
        // Larger than a tape copies: kept shared.
        let (large, freed) = watched(vec![b' '; COPIED_CHUNK_BYTES + 1]);
        assert_eq!(tape.on_data(&large), Step::Going);
        drop(large);
        assert!(!freed.is_freed(), "taped");
        let span_id = tape.request_span.span_id();

        let tape = read(tape, 2);
        assert!(tape.exchange.is_none(), "played");
        assert!(freed.is_freed(), "the large chunk is let go");
        assert!(tape.chunks.is_empty());
        assert_eq!(tape.request_span.span_id(), span_id, "the span stays");
        assert!(tape.copied.capacity() >= FIRST_COPY_BYTES, "and the room");
        assert!(
            tape.bytes() < std::mem::size_of::<Tape>() + COPIED_CHUNK_BYTES,
            "the chunk no longer counts: {}",
            tape.bytes()
        );
    }
}
