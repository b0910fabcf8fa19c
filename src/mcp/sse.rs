//! An incremental, bounded decoder for Server-Sent Events (`text/event-stream`).
//!
//! The middleware tees every frame of an event-stream response body into a
//! [`SseDecoder`] while passing the frame on untouched, and gets each complete
//! event as soon as its blank line arrives.
//!
//! Why hand-written: the SSE crates (`sse-stream`, `eventsource-stream`) are
//! pull-style streams that own the body, and they hold a whole event in memory
//! without bound. Here decoding is push-style (fed from the side of a body we
//! do not own) and every buffer is bounded: one event keeps the data of at
//! most `max_event_chars` characters, counted as a JSON body's
//! [`Capture`] counts them (so at most `4 * max_event_chars` bytes), plus
//! [`MAX_META_BYTES`] for each of its `event` and `id` values, however long
//! the lines on the wire are. Every decoder's data limit is in characters:
//! the answer's read window (of the recorder, and of a resumed stream),
//! like a JSON answer's, and the prefix a tape looks at.
//!
//! A whole event in one chunk (the common case: servers write an event at a
//! time) is read in place, its data lent straight from the chunk; an event
//! split across chunks, with several `data` lines or `\r` line ends, goes
//! through the general, buffered path.
//!
//! Parsing follows the WHATWG event-stream rules, with one deliberate
//! difference: an event whose data is empty is not reported (the spec would
//! dispatch `data:` alone as an empty message). MCP servers send such
//! "priming" events (`data: \nid: 0\nretry: 3000\n\n`) to set a resumption
//! id; they carry no JSON-RPC message. Their id is kept all the same, by a
//! decoder that keeps ids: it is what a client resumes the stream from.

use crate::capture::{Capture, text_of};
use crate::char_window::prefix_len;

/// The most bytes kept of an `event` or `id` value; longer values are cut.
/// In bytes, unlike the data: these are no text the span keeps, only
/// names compared byte for byte (the id a client resumes from).
pub(crate) const MAX_META_BYTES: usize = 1024;

/// The most room the data buffer keeps between events.
const KEPT_DATA_BYTES: usize = 4096;

/// The UTF-8 byte order mark, ignored once at the start of the stream.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// One decoded SSE event, borrowed from the decoder's buffers (which are
/// reused: decoding allocates nothing once they have grown).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SseEvent<'a> {
    /// The `event` type; empty when not set (the spec's default, `message`).
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "decoded per the spec; the layer reads data only")
    )]
    pub(crate) event: &'a [u8],
    /// The last event id when dispatched (it persists across events, per the
    /// spec); empty while unset, and for a decoder that keeps no ids.
    pub(crate) id: &'a [u8],
    /// The `data` lines joined with `\n`, up to `max_event_chars`
    /// characters (never cut in the middle of one).
    pub(crate) data: &'a [u8],
    /// True when data past `max_event_chars` characters was dropped.
    pub(crate) data_truncated: bool,
}

impl SseEvent<'_> {
    /// The data as text (lossy UTF-8).
    pub(crate) fn text(&self) -> String {
        text_of(self.data.to_vec())
    }
}

/// What the fast path ([`SseDecoder::whole_event`]) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whole {
    /// Read one event: this many bytes.
    Read(usize),
    /// The input ends before the event does.
    Unfinished,
    /// The event needs the general path.
    Unusual,
}

/// Which field the current line sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// `data`: appended to the data buffer.
    Data,
    /// `event`: sets the event type.
    Event,
    /// `id`: sets the last event id.
    Id,
    /// `retry`, unknown fields and comments: ignored.
    Ignored,
}

/// Where in the current line the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the field name, before any `:`.
    Name,
    /// Just after the `:`: one leading space is still to be stripped.
    ValueStart,
    /// Reading the value.
    Value,
}

/// Decodes an event stream fed chunk by chunk, with bounded buffers.
#[derive(Debug)]
pub(crate) struct SseDecoder {
    /// Bytes of the BOM matched at the start of the stream so far.
    bom_matched: usize,
    /// Whether the start of the stream (and so a BOM) is behind us.
    started: bool,
    /// Whether the last byte seen was a `\r` (so a `\n` next is part of it).
    after_cr: bool,
    /// Whether the current line has any byte.
    line_started: bool,
    /// Where in the current line the decoder is.
    phase: Phase,
    /// The field name read so far (only the length of the longest known name).
    name: [u8; 5],
    /// Bytes in `name`.
    name_len: usize,
    /// Whether the field name is longer than any known field.
    name_overflow: bool,
    /// The field of the current line, once its name is complete.
    field: Field,
    /// The data (lines joined with `\n`), up to `max_event_chars`
    /// characters; says whether more was dropped.
    data: Capture,
    /// Whether the event has had a `data` line.
    has_data: bool,
    /// The event type buffer.
    event: Vec<u8>,
    /// Whether `event` types are read.
    keeps_event: bool,
    /// Whether `id`s are read (the last event id).
    keeps_id: bool,
    /// The last event id buffer.
    last_id: Vec<u8>,
    /// The value of the `id` line being read.
    id_line: Vec<u8>,
    /// Calls of the fast path, for tests.
    #[cfg(test)]
    whole_tries: usize,
}

impl SseDecoder {
    /// `max_event_chars`: the most characters of data kept for one event
    /// (counted as [`Capture`] counts them); more is dropped and the event
    /// is marked `data_truncated`.
    pub(crate) fn new(max_event_chars: usize) -> Self {
        Self {
            keeps_event: true,
            keeps_id: true,
            bom_matched: 0,
            started: false,
            after_cr: false,
            line_started: false,
            phase: Phase::Name,
            name: [0; 5],
            name_len: 0,
            name_overflow: false,
            field: Field::Ignored,
            data: Capture::new(max_event_chars),
            has_data: false,
            event: Vec::new(),
            last_id: Vec::new(),
            id_line: Vec::new(),
            #[cfg(test)]
            whole_tries: 0,
        }
    }

    /// Feeds a chunk; calls `on_event` for every event completed by it, in order.
    ///
    /// An event is complete at its blank line: a last event without one is
    /// never dispatched (per the spec), so there is nothing to do at the end
    /// of the stream.
    pub(crate) fn push(&mut self, chunk: &[u8], mut on_event: impl FnMut(SseEvent<'_>)) {
        let mut chunk = chunk;
        while !self.started {
            let Some((&b, rest)) = chunk.split_first() else {
                return;
            };
            if b == BOM[self.bom_matched] {
                chunk = rest;
                self.bom_matched += 1;
                self.started = self.bom_matched == BOM.len();
            } else {
                self.started = true;
                let matched = self.bom_matched;
                self.feed(&BOM[..matched], &mut on_event);
            }
        }
        self.feed(chunk, &mut on_event);
    }

    /// Takes `chunk` without reading it, if that changes nothing but its
    /// events (which go unreported): a data-only decoder (no id to keep)
    /// between events, and a chunk that ends with a blank line, after
    /// which the decoder is between events again. For a caller that knows
    /// no event in `chunk` matters to it. Returns whether it took it.
    pub(crate) fn pass_over(&mut self, chunk: &[u8]) -> bool {
        if self.keeps_event || self.keeps_id || !self.between_events() || !chunk.ends_with(b"\n\n")
        {
            return false;
        }
        // Any BOM was at the start of `chunk`, which is behind us now.
        self.started = true;
        true
    }

    /// Splits `input` into line contents and line ends.
    fn feed(&mut self, mut input: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
        // Whether the fast path may take the next event in `input`: not
        // once `input` ran out before an event's end, and not again within
        // an event it left to the general path (each try scans to the end
        // of the event, so trying on every line would be quadratic).
        let mut whole_events = true;
        while let Some(&first) = input.first() {
            if whole_events && self.between_events() {
                match self.whole_event(input, on_event) {
                    Whole::Read(used) => {
                        input = &input[used..];
                        continue;
                    }
                    Whole::Unfinished | Whole::Unusual => whole_events = false,
                }
            }
            if self.after_cr {
                self.after_cr = false;
                if first == b'\n' {
                    input = &input[1..];
                    continue;
                }
            }
            let Some(end) = memchr::memchr2(b'\n', b'\r', input) else {
                self.line_content(input);
                return;
            };
            self.line_content(&input[..end]);
            self.after_cr = input[end] == b'\r';
            input = &input[end + 1..];
            let blank = !self.line_started;
            self.end_line(on_event);
            // A blank line ends the event: the next may be a whole one.
            whole_events |= blank && memchr::memchr2(b'\n', b'\r', input).is_some();
        }
    }

    /// Whether the decoder is at the start of a line, with nothing of an
    /// event read yet but the last id.
    fn between_events(&self) -> bool {
        !self.after_cr
            && !self.line_started
            && !self.has_data
            && self.data.bytes().is_empty()
            && self.event.is_empty()
    }

    /// The fast path, for a decoder [between events](Self::between_events):
    /// reads the event at the start of `input` in place, without copying its
    /// data, if `input` holds all of it and it is a common one (`\n` line
    /// ends, at most one `data` line, and no `event` line that this decoder
    /// keeps; an `id` line is kept once the event is read). Otherwise reads
    /// nothing and says why.
    fn whole_event(&mut self, input: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) -> Whole {
        #[cfg(test)]
        {
            self.whole_tries += 1;
        }
        let mut used = 0;
        let mut data: Option<&[u8]> = None;
        let mut id: Option<&[u8]> = None;
        loop {
            let rest = &input[used..];
            let Some(end) = memchr::memchr2(b'\n', b'\r', rest) else {
                return Whole::Unfinished;
            };
            if rest[end] == b'\r' {
                return Whole::Unusual;
            }
            let line = &rest[..end];
            used += end + 1;
            if line.is_empty() {
                if let Some(id) = id {
                    self.last_id.clear();
                    push_bounded(&mut self.last_id, id, MAX_META_BYTES);
                }
                if let Some(data) = data.filter(|data| !data.is_empty()) {
                    let kept = &data[..prefix_len(data, self.data.limit())];
                    on_event(SseEvent {
                        event: b"",
                        id: &self.last_id,
                        data: kept,
                        data_truncated: kept.len() < data.len(),
                    });
                }
                return Whole::Read(used);
            }
            let (name, value) = match memchr::memchr(b':', line) {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &line[line.len()..]),
            };
            match name {
                b"data" if data.is_some() => return Whole::Unusual,
                b"data" => data = Some(value),
                b"event" if self.keeps_event => return Whole::Unusual,
                // An id line with a NUL is ignored (an earlier one stands),
                // as the general path does.
                b"id" if self.keeps_id && !value.contains(&0) => id = Some(value),
                _ => {}
            }
        }
    }

    /// Takes bytes of the current line (no line end among them).
    fn line_content(&mut self, mut bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.line_started = true;
        if self.phase == Phase::Name {
            let Some(colon) = memchr::memchr(b':', bytes) else {
                self.push_name(bytes);
                return;
            };
            self.push_name(&bytes[..colon]);
            self.begin_value();
            self.phase = Phase::ValueStart;
            bytes = &bytes[colon + 1..];
        }
        if self.phase == Phase::ValueStart {
            let Some(&first) = bytes.first() else {
                return;
            };
            if first == b' ' {
                bytes = &bytes[1..];
            }
            self.phase = Phase::Value;
        }
        match self.field {
            Field::Data => self.data.push(bytes),
            Field::Event => push_bounded(&mut self.event, bytes, MAX_META_BYTES),
            // A NUL anywhere in the value, kept or not, makes the line ignored.
            Field::Id if bytes.contains(&0) => self.field = Field::Ignored,
            Field::Id => push_bounded(&mut self.id_line, bytes, MAX_META_BYTES),
            Field::Ignored => {}
        }
    }

    /// A decoder that reads only `data` lines: its events have no `event`
    /// type or `id`, and it allocates nothing for them.
    pub(crate) fn data_only(max_event_chars: usize) -> Self {
        Self {
            keeps_event: false,
            keeps_id: false,
            ..Self::new(max_event_chars)
        }
    }

    /// A decoder that reads `data` and `id` lines: its events have no
    /// `event` type, and [`last_id`](Self::last_id) says where a client
    /// would resume the stream from.
    pub(crate) fn data_and_id(max_event_chars: usize) -> Self {
        Self {
            keeps_event: false,
            ..Self::new(max_event_chars)
        }
    }

    /// The last event id the stream set (empty while unset, and for a
    /// decoder that keeps no ids), cut at [`MAX_META_BYTES`].
    pub(crate) fn last_id(&self) -> &[u8] {
        &self.last_id
    }

    /// Adds bytes to the field name, remembering only a known name's length.
    fn push_name(&mut self, bytes: &[u8]) {
        let end = self.name_len + bytes.len();
        if self.name_overflow || end > self.name.len() {
            self.name_overflow = true;
            return;
        }
        self.name[self.name_len..end].copy_from_slice(bytes);
        self.name_len = end;
    }

    /// The field name is complete: picks the field and starts its value.
    fn begin_value(&mut self) {
        self.field = match &self.name[..self.name_len] {
            _ if self.name_overflow => Field::Ignored,
            b"data" => Field::Data,
            b"event" if self.keeps_event => Field::Event,
            b"id" if self.keeps_id => Field::Id,
            _ => Field::Ignored,
        };
        match self.field {
            Field::Data => {
                if self.has_data {
                    self.data.push(b"\n");
                }
                self.has_data = true;
            }
            Field::Event => self.event.clear(),
            Field::Id => self.id_line.clear(),
            Field::Ignored => {}
        }
    }

    /// A line end: finishes the line's field, or dispatches on a blank line.
    fn end_line(&mut self, on_event: &mut impl FnMut(SseEvent<'_>)) {
        if !self.line_started {
            self.dispatch(on_event);
            return;
        }
        if self.phase == Phase::Name {
            // A field name without a colon: the value is empty.
            self.begin_value();
        }
        if self.field == Field::Id {
            std::mem::swap(&mut self.last_id, &mut self.id_line);
        }
        self.line_started = false;
        self.phase = Phase::Name;
        self.name_len = 0;
        self.name_overflow = false;
        self.field = Field::Ignored;
    }

    /// A blank line: reports the event when it has data, and resets it.
    fn dispatch(&mut self, on_event: &mut impl FnMut(SseEvent<'_>)) {
        let data_truncated = self.data.is_truncated();
        self.has_data = false;
        if !self.data.bytes().is_empty() || data_truncated {
            on_event(SseEvent {
                event: &self.event,
                id: &self.last_id,
                data: self.data.bytes(),
                data_truncated,
            });
        }
        // A large event's room goes back; a long stream keeps little.
        self.data.restart(KEPT_DATA_BYTES);
        self.event.clear();
    }

    /// Bytes held in the decoder's buffers (their capacities), for tests.
    #[cfg(test)]
    fn buffered_bytes(&self) -> usize {
        self.name.len()
            + self.data.room()
            + self.event.capacity()
            + self.last_id.capacity()
            + self.id_line.capacity()
    }
}

/// Appends to `buf` what fits under `max` bytes, growing it amortised but
/// never past `max`.
fn push_bounded(buf: &mut Vec<u8>, bytes: &[u8], max: usize) {
    let take = bytes.len().min(max - buf.len());
    let needed = buf.len() + take;
    if needed > buf.capacity() {
        let target = (buf.capacity() * 2).min(max).max(needed);
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(&bytes[..take]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event as the tests compare it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct SseEvent {
        event: Option<String>,
        id: Option<String>,
        data: String,
        data_truncated: bool,
    }

    fn owned(event: &super::SseEvent<'_>) -> SseEvent {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        SseEvent {
            event: (!event.event.is_empty()).then(|| text(event.event)),
            id: (!event.id.is_empty()).then(|| text(event.id)),
            data: event.text(),
            data_truncated: event.data_truncated,
        }
    }

    const RMCP: &str = concat!(
        "data: \nid: 0/0\nretry: 3000\n\n",
        "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"message\":\"step 1\",\"progress\":1.0,\"progressToken\":\"tok-1\",\"total\":2.0}}\nid: 1/0\n\n",
        "data: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"5\"}],\"isError\":false}}\nid: 2/0\n\n",
    );

    fn rmcp_events() -> Vec<SseEvent> {
        vec![
            SseEvent {
                event: None,
                id: Some("1/0".into()),
                data: r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"message":"step 1","progress":1.0,"progressToken":"tok-1","total":2.0}}"#.into(),
                data_truncated: false,
            },
            SseEvent {
                event: None,
                id: Some("2/0".into()),
                data: r#"{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"5"}],"isError":false}}"#.into(),
                data_truncated: false,
            },
        ]
    }

    /// Decodes `chunks` in order with a decoder keeping `max` characters of data.
    /// A data-only decoder and one that keeps ids (which take the fast
    /// path for more events) must find the same events, without their type
    /// (and id), and the latter the same last id.
    fn decode_chunks(max: usize, chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut decoder = SseDecoder::new(max);
        let mut data_only = SseDecoder::data_only(max);
        let mut data_and_id = SseDecoder::data_and_id(max);
        let mut events = Vec::new();
        let mut data_events = Vec::new();
        let mut id_events = Vec::new();
        for chunk in chunks {
            decoder.push(chunk, |e| events.push(owned(&e)));
            data_only.push(chunk, |e| data_events.push(owned(&e)));
            data_and_id.push(chunk, |e| id_events.push(owned(&e)));
        }
        let without_event: Vec<SseEvent> = events
            .iter()
            .map(|e| SseEvent {
                event: None,
                ..e.clone()
            })
            .collect();
        assert_eq!(id_events, without_event, "decoding data and ids");
        assert_eq!(data_and_id.last_id(), decoder.last_id(), "the last id");
        let without_meta: Vec<SseEvent> = without_event
            .into_iter()
            .map(|e| SseEvent { id: None, ..e })
            .collect();
        assert_eq!(data_events, without_meta, "data-only decoding");
        assert_eq!(data_only.last_id(), b"", "a data-only decoder keeps no id");
        events
    }

    fn decode(input: &str) -> Vec<SseEvent> {
        decode_chunks(1 << 20, &[input.as_bytes()])
    }

    fn data_event(data: &str) -> SseEvent {
        SseEvent {
            event: None,
            id: None,
            data: data.into(),
            data_truncated: false,
        }
    }

    #[test]
    fn rmcp_capture_decodes_to_two_events() {
        assert_eq!(decode(RMCP), rmcp_events());
    }

    #[test]
    fn rmcp_capture_split_at_every_byte_gives_the_same_events() {
        let bytes = RMCP.as_bytes();
        for at in 0..=bytes.len() {
            let events = decode_chunks(1 << 20, &[&bytes[..at], &bytes[at..]]);
            assert_eq!(events, rmcp_events(), "split at {at}");
        }
        for (a, b) in [(1, 2), (5, 7), (6, 40), (27, 28), (28, 29)] {
            let events =
                decode_chunks(1 << 20, &[&bytes[..a], &bytes[a..b], &bytes[b..], b"", b""]);
            assert_eq!(events, rmcp_events(), "split at {a} and {b}");
        }
    }

    #[test]
    fn rmcp_capture_fed_byte_by_byte_gives_the_same_events() {
        let chunks: Vec<&[u8]> = RMCP.as_bytes().chunks(1).collect();
        assert_eq!(decode_chunks(1 << 20, &chunks), rmcp_events());
    }

    #[test]
    fn events_are_reported_as_their_blank_line_arrives() {
        let mut decoder = SseDecoder::new(1024);
        let mut events = Vec::new();
        decoder.push(b"data: a\n", |e| events.push(owned(&e)));
        assert!(events.is_empty());
        decoder.push(b"\ndata: b\n", |e| events.push(owned(&e)));
        assert_eq!(events, vec![data_event("a")]);
        decoder.push(b"\n", |e| events.push(owned(&e)));
        assert_eq!(events, vec![data_event("a"), data_event("b")]);
    }

    #[test]
    fn whole_events_are_passed_over_only_between_events() {
        let priming = b"data: \nid: 0/1\nretry: 3000\n\n";
        let answer = b"data: {\"id\":1,\"result\":{}}\n\n";
        let mut events = Vec::new();

        let mut decoder = SseDecoder::data_only(1024);
        assert!(decoder.pass_over(priming));
        assert_eq!(decoder.whole_tries, 0, "not read");
        decoder.push(answer, |e| events.push(owned(&e)));
        assert_eq!(events, [data_event(r#"{"id":1,"result":{}}"#)]);

        // Not inside an event, not a chunk that ends inside one, and not
        // for a decoder that keeps the last id.
        let mut decoder = SseDecoder::data_only(1024);
        decoder.push(b"data: {\"id\":1,", |_| {});
        assert!(!decoder.pass_over(b"\"result\":{}}\n\n"));
        assert!(!SseDecoder::data_only(1024).pass_over(b"data: x\n"));
        assert!(!SseDecoder::new(1024).pass_over(priming));
    }

    #[test]
    fn priming_event_with_empty_data_is_dropped() {
        assert_eq!(decode("data: \nid: 0\nretry: 3000\n\n"), vec![]);
        assert_eq!(decode("data\n\n"), vec![]);
        assert_eq!(decode("id: 7\n\n"), vec![]);
        // The id still becomes the last event id.
        let events = decode("data: \nid: 0\nretry: 3000\n\ndata: x\n\n");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id.as_deref(), Some("0"));
        assert_eq!(events[0].data, "x");
    }

    #[test]
    fn crlf_line_endings() {
        let events = decode("event: ping\r\ndata: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: Some("ping".into()),
                    ..data_event("a\nb")
                },
                data_event("c"),
            ]
        );
    }

    #[test]
    fn cr_line_endings() {
        let events = decode("data: a\rdata: b\r\rdata: c\r\r");
        assert_eq!(events, vec![data_event("a\nb"), data_event("c")]);
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        let events = decode_chunks(1024, &[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(events, vec![data_event("a\nb")]);
        let events = decode_chunks(1024, &[b"data: a\r", b"", b"\n", b"\r", b"\n", b"x"]);
        assert_eq!(events, vec![data_event("a")]);
    }

    #[test]
    fn cr_then_cr_is_a_blank_line() {
        let events = decode_chunks(1024, &[b"data: a\r", b"\r", b"data: b\n\n"]);
        assert_eq!(events, vec![data_event("a"), data_event("b")]);
    }

    #[test]
    fn comments_are_ignored() {
        let events = decode(": keep-alive\n\n:\n\ndata: a\n: in the middle\ndata: b\n\n");
        assert_eq!(events, vec![data_event("a\nb")]);
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        let events = decode("data: one\ndata:two\ndata\ndata:  three\n\n");
        assert_eq!(events, vec![data_event("one\ntwo\n\n three")]);
    }

    #[test]
    fn only_one_leading_space_is_stripped_even_across_chunks() {
        let events = decode_chunks(1024, &[b"data:", b" ", b" x\n\n"]);
        assert_eq!(events, vec![data_event(" x")]);
        let events = decode_chunks(1024, &[b"data:", b"", b"x\n\n"]);
        assert_eq!(events, vec![data_event("x")]);
    }

    #[test]
    fn event_type_resets_and_id_persists() {
        let events = decode("event: a\nid: 1\ndata: x\n\ndata: y\n\nid\ndata: z\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: Some("a".into()),
                    id: Some("1".into()),
                    ..data_event("x")
                },
                SseEvent {
                    id: Some("1".into()),
                    ..data_event("y")
                },
                data_event("z"),
            ]
        );
    }

    #[test]
    fn event_type_is_reset_by_a_dropped_event_too() {
        assert_eq!(decode("event: a\n\ndata: x\n\n"), vec![data_event("x")]);
    }

    #[test]
    fn id_with_nul_is_ignored() {
        let events = decode("id: 1\ndata: x\n\nid: 2\0\ndata: y\n\n");
        assert_eq!(events[1].id.as_deref(), Some("1"));
    }

    #[test]
    fn an_id_line_with_a_nul_anywhere_is_ignored_alone() {
        // A later id line of the event with a NUL leaves the one before it;
        // a NUL past the bytes an id keeps counts too. Whole (the fast
        // path) and byte by byte (the general path).
        let long = format!("id: 7\ndata: x\n\nid: {}\0\ndata: y\n\n", "a".repeat(2_000));
        for (case, input, ids) in [
            (
                "a later id",
                "id: 5\nid: a\0\ndata: x\n\n",
                ["5"].as_slice(),
            ),
            ("a long id", long.as_str(), ["7", "7"].as_slice()),
        ] {
            let bytes = input.as_bytes();
            let byte_by_byte: Vec<&[u8]> = bytes.chunks(1).collect();
            for events in [decode(input), decode_chunks(1 << 20, &byte_by_byte)] {
                let read: Vec<_> = events.iter().map(|e| e.id.as_deref().unwrap()).collect();
                assert_eq!(read, ids, "{case}");
            }
        }
    }

    #[test]
    fn unknown_fields_and_retry_are_ignored() {
        let events = decode("retry: 10\nfoo: bar\ndatax: no\nDATA: no\nidentifier: 3\ndata: a\n\n");
        assert_eq!(events, vec![data_event("a")]);
    }

    #[test]
    fn final_event_without_blank_line_is_not_dispatched() {
        assert_eq!(decode("data: a\n\ndata: b\n"), vec![data_event("a")]);
        assert_eq!(decode("data: a"), vec![]);
    }

    #[test]
    fn leading_bom_is_ignored() {
        assert_eq!(decode("\u{FEFF}data: a\n\n"), vec![data_event("a")]);
        let bom = "\u{FEFF}data: a\n\n".as_bytes();
        for at in 0..=3 {
            let events = decode_chunks(1024, &[&bom[..at], &bom[at..]]);
            assert_eq!(events, vec![data_event("a")], "split at {at}");
        }
        let events = decode_chunks(1024, &[&bom[..1], &bom[1..2], &bom[2..3], &bom[3..]]);
        assert_eq!(events, vec![data_event("a")]);
    }

    #[test]
    fn only_the_first_bom_is_ignored() {
        // A second BOM is part of the field name, which is then unknown.
        assert_eq!(decode("\u{FEFF}\u{FEFF}data: a\n\n"), vec![]);
        // A BOM later in the stream is too.
        assert_eq!(
            decode("data: a\n\n\u{FEFF}data: b\n\n"),
            vec![data_event("a")]
        );
    }

    #[test]
    fn partial_bom_is_kept_as_data() {
        // "\xEF\xBB" then "x": not a BOM, so the bytes are part of the line.
        let events = decode_chunks(1024, &[b"\xEF", b"\xBB:x\ndata: a\n\n"]);
        assert_eq!(events, vec![data_event("a")]);
        let events = decode_chunks(1024, &[b"\xEF", b"data: a\n\n"]);
        assert_eq!(events, vec![]);
    }

    #[test]
    fn invalid_utf8_data_is_decoded_lossily() {
        let events = decode_chunks(1024, &[b"data: a\xFFb\n\n"]);
        assert_eq!(events, vec![data_event("a\u{FFFD}b")]);
    }

    #[test]
    fn oversized_data_is_truncated_and_flagged() {
        let events = decode_chunks(8, &[b"data: 0123\ndata: 456789\n\ndata: ok\n\n"]);
        assert_eq!(
            events,
            vec![
                SseEvent {
                    data_truncated: true,
                    ..data_event("0123\n456")
                },
                data_event("ok"),
            ]
        );
    }

    #[test]
    fn data_exactly_at_the_limit_is_not_truncated() {
        let events = decode_chunks(8, &[b"data: 0123\ndata: 456\n\n"]);
        assert_eq!(events, vec![data_event("0123\n456")]);
    }

    #[test]
    fn the_data_limit_counts_characters_not_bytes() {
        // Four 3-byte characters: exactly at a limit of 4, whole or split
        // (the general path), on one data line or two.
        for chunks in [
            &["data: 中文字符\n\n".as_bytes()][..],
            &["data: 中文".as_bytes(), "字符\n\n".as_bytes()],
        ] {
            assert_eq!(decode_chunks(4, chunks), vec![data_event("中文字符")]);
        }
        assert_eq!(
            decode_chunks(4, &["data: 中文\ndata: 字\n\n".as_bytes()]),
            vec![data_event("中文\n字")]
        );
        // One character over: cut after the fourth.
        for chunks in [
            &["data: 中文字符号\n\n".as_bytes()][..],
            &["data: 中文".as_bytes(), "字符号\n\n".as_bytes()],
        ] {
            let cut = SseEvent {
                data_truncated: true,
                ..data_event("中文字符")
            };
            assert_eq!(decode_chunks(4, chunks), vec![cut]);
        }
        let cut = SseEvent {
            data_truncated: true,
            ..data_event("中文\n字")
        };
        let two_lines = "data: 中文\ndata: 字符\n\n".as_bytes();
        assert_eq!(decode_chunks(4, &[two_lines]), vec![cut]);
    }

    #[test]
    fn a_character_split_across_pushes_is_counted_once() {
        let event = "data: a中b\n\n".as_bytes();
        // Every split, the 3-byte character's among them.
        for at in 0..=event.len() {
            let chunks = [&event[..at], &event[at..]];
            assert_eq!(decode_chunks(3, &chunks), vec![data_event("a中b")], "{at}");
            let cut = SseEvent {
                data_truncated: true,
                ..data_event("a中")
            };
            assert_eq!(decode_chunks(2, &chunks), vec![cut], "split at {at}");
        }
        let zhong = "中".as_bytes();
        let chunks = [b"data: a", &zhong[..1], &zhong[1..], b"b\n\n"];
        assert_eq!(decode_chunks(3, &chunks), vec![data_event("a中b")]);
    }

    #[test]
    fn a_character_cut_by_a_line_end_counts_as_lossy_decoding_makes_it() {
        // A lead byte, a line end, then its continuation bytes on the next
        // data line: each is a U+FFFD, and the `\n` between a character.
        let event = [&b"data: "[..], "中".as_bytes(), b"\xE4\ndata: \xB8\xAD\n\n"].concat();
        assert_eq!(
            decode_chunks(5, &[&event]),
            vec![data_event("中\u{FFFD}\n\u{FFFD}\u{FFFD}")]
        );
        let cut = SseEvent {
            data_truncated: true,
            ..data_event("中\u{FFFD}\n\u{FFFD}")
        };
        assert_eq!(decode_chunks(4, &[&event]), vec![cut]);
    }

    #[test]
    fn truncation_does_not_leave_half_a_character() {
        let cut = SseEvent {
            data_truncated: true,
            ..data_event("abé")
        };
        assert_eq!(decode_chunks(3, &["data: abé😀\n\n".as_bytes()]), vec![cut]);
        let events = decode_chunks(4, &["data: abé😀\n\n".as_bytes()]);
        assert_eq!(events, vec![data_event("abé😀")]);
        let events = decode_chunks(1, &["data: 😀b\n\n".as_bytes()]);
        assert_eq!(events[0].data, "😀");
    }

    #[test]
    fn one_huge_multi_byte_data_line_keeps_max_chars_in_bounded_memory() {
        const MAX: usize = 1000;
        let mut decoder = SseDecoder::data_and_id(MAX);
        let mut events = Vec::new();
        decoder.push(b"data: ", |e| events.push(owned(&e)));
        let chunk = "中".repeat(1000);
        for _ in 0..100 {
            decoder.push(chunk.as_bytes(), |e| events.push(owned(&e)));
            // 3 bytes a character, with the room of the id buffers.
            assert!(decoder.buffered_bytes() <= 3 * MAX + 64);
        }
        decoder.push(b"\n\n", |e| events.push(owned(&e)));
        let cut = SseEvent {
            data_truncated: true,
            ..data_event(&"中".repeat(MAX))
        };
        assert_eq!(events, vec![cut]);
    }

    #[test]
    fn one_huge_data_line_keeps_max_bytes_in_bounded_memory() {
        const MAX: usize = 64 * 1024;
        const SLACK: usize = 64;
        let mut decoder = SseDecoder::new(MAX);
        let mut events = Vec::new();
        decoder.push(b"id: 9\ndata: ", |e| events.push(owned(&e)));
        let chunk = [b'x'; 8192];
        let mut fed = 0;
        while fed < 10_000_000 {
            decoder.push(&chunk, |e| events.push(owned(&e)));
            fed += chunk.len();
            assert!(decoder.buffered_bytes() <= MAX + SLACK);
        }
        assert!(events.is_empty());
        decoder.push(b"\n\ndata: after\n\n", |e| events.push(owned(&e)));
        assert!(decoder.buffered_bytes() <= MAX + SLACK);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data.len(), MAX);
        assert!(events[0].data.bytes().all(|b| b == b'x'));
        assert!(events[0].data_truncated);
        assert_eq!(events[0].id.as_deref(), Some("9"));
        assert_eq!(
            events[1],
            SseEvent {
                id: Some("9".into()),
                ..data_event("after")
            }
        );
    }

    #[test]
    fn huge_lines_of_other_fields_stay_bounded() {
        let mut decoder = SseDecoder::new(16);
        let mut events = Vec::new();
        let chunk = [b'y'; 8192];
        for line in ["event: ", "id: ", "retry: ", "unknownfield: ", ": ", "yyy"] {
            decoder.push(line.as_bytes(), |e| events.push(owned(&e)));
            for _ in 0..100 {
                decoder.push(&chunk, |e| events.push(owned(&e)));
                assert!(decoder.buffered_bytes() <= 16 + 3 * MAX_META_BYTES + 8);
            }
            decoder.push(b"\n", |e| events.push(owned(&e)));
        }
        decoder.push(b"data: z\n\n", |e| events.push(owned(&e)));
        let cut = "y".repeat(MAX_META_BYTES);
        assert_eq!(
            events,
            vec![SseEvent {
                event: Some(cut.clone()),
                id: Some(cut),
                ..data_event("z")
            }]
        );
    }

    #[test]
    fn a_data_only_decoder_reads_data_and_skips_event_and_id() {
        let mut decoder = SseDecoder::data_only(1024);
        let mut events = Vec::new();
        decoder.push(b"event: ping\nid: 7\ndata: a\n\n", |e| {
            events.push(owned(&e));
        });
        assert_eq!(events, vec![data_event("a")]);
        assert_eq!(
            decoder.buffered_bytes(),
            5,
            "a whole event is read in place"
        );
        decoder.push(b"event: ping\nid: 8\ndata: b", |e| events.push(owned(&e)));
        decoder.push(b"\n\n", |e| events.push(owned(&e)));
        assert_eq!(events, vec![data_event("a"), data_event("b")]);
        assert_eq!(decoder.buffered_bytes(), 5 + 1, "only the data buffer grew");
    }

    #[test]
    fn a_decoder_that_keeps_ids_reads_rmcps_events_in_place() {
        let mut decoder = SseDecoder::data_and_id(1 << 20);
        let mut events = Vec::new();
        for event in RMCP.split_inclusive("\n\n") {
            decoder.push(event.as_bytes(), |e| events.push(owned(&e)));
        }
        assert_eq!(events, rmcp_events());
        assert_eq!(decoder.whole_tries, 3, "each event by the fast path");
        assert_eq!(decoder.data.room(), 0, "no data was copied");
        assert_eq!(decoder.last_id(), b"2/0");

        // A priming event alone sets the id a client resumes from.
        let mut decoder = SseDecoder::data_and_id(1024);
        decoder.push(b"data: \nid: 0/3\nretry: 3000\n\n", |_| unreachable!());
        assert_eq!(decoder.last_id(), b"0/3");
        // An id with a NUL is ignored, and an empty one unsets it; in an
        // event split across chunks, as soon as its line is read.
        decoder.push(b"id: 1\0\n\n", |_| unreachable!());
        assert_eq!(decoder.last_id(), b"0/3");
        decoder.push(b"id: 5/3\ndata: x", |_| unreachable!());
        assert_eq!(decoder.last_id(), b"5/3");
        decoder.push(b"\n\nid\n\n", |e| assert_eq!(e.id, b"5/3"));
        assert_eq!(decoder.last_id(), b"");
    }

    #[test]
    fn an_event_the_fast_path_leaves_is_not_tried_again_on_every_line() {
        // Many comment lines, then two data lines: the fast path scans to
        // the second data line once and leaves the event to the general
        // path, which must not hand each of its lines back to it.
        let mut chunk = ":\n".repeat(10_000).into_bytes();
        chunk.extend_from_slice(b"data: a\ndata: b\n\ndata: c\n\n");
        let mut decoder = SseDecoder::data_only(1024);
        let mut events = Vec::new();
        decoder.push(&chunk, |e| events.push(owned(&e)));
        assert_eq!(events, vec![data_event("a\nb"), data_event("c")]);
        assert_eq!(decoder.whole_tries, 2, "once for each event");
    }

    #[test]
    fn whole_events_are_read_in_place_and_the_rest_as_usual() {
        // One chunk: a priming event, a whole event, a two-line event (the
        // general path), a truncated one, and the start of one more.
        let mut decoder = SseDecoder::data_only(8);
        let mut events = Vec::new();
        decoder.push(
            b"data: \nid: 0\nretry: 3000\n\ndata: {\"a\":1}\n\ndata: x\ndata: y\n\n: note\ndata: 0123456789\n\ndata: la",
            |e| events.push(owned(&e)),
        );
        assert_eq!(
            events,
            vec![
                data_event(r#"{"a":1}"#),
                data_event("x\ny"),
                SseEvent {
                    data_truncated: true,
                    ..data_event("01234567")
                },
            ]
        );
        decoder.push(b"st\n\n", |e| events.push(owned(&e)));
        assert_eq!(events.last(), Some(&data_event("last")));
    }

    #[test]
    fn zero_limit_reports_truncated_empty_events() {
        let events = decode_chunks(0, &[b"data: a\n\ndata:\n\n"]);
        assert_eq!(
            events,
            vec![SseEvent {
                data_truncated: true,
                ..data_event("")
            }]
        );
    }
}
