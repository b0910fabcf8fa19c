//! Randomized transparency: a few hundred generated exchanges, each sent
//! through the same scripted MCP endpoint bare and behind the layer. The
//! layered one must answer the same status, headers, size hint and body
//! frames, hand the handler the same request frames, catch no panic of its
//! own, and record each exchange that makes a span exactly once, with the
//! input (and, where the model knows the answer, the output) cut from the
//! bytes that went by.
//!
//! Seeded and reproducible: `TRODO_FUZZ_SEED` picks the seed (decimal or
//! `0x` hex), `TRODO_FUZZ_CASES` how many cases, `TRODO_FUZZ_CASE` runs one
//! case alone. A failure prints the seed and the case.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Response, StatusCode};
use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use common::*;
use futures::channel::mpsc;
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, StreamBody};
use serde_json::{Value, json};
use tower::ServiceExt;
use trodo_tower::TrodoLayer;

/// The capture limit: small, so that bodies near and over it, and over the
/// four limits a JSON answer is read to, are cheap to make.
const LIMIT: usize = 96;
const DEFAULT_SEED: u64 = 0x7_20D0_F022;
const DEFAULT_CASES: usize = 600;

/// splitmix64: tiny, seedable, and good enough to pick shapes.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Characters of 1 to 4 UTF-8 bytes, and some JSON must escape.
const ALPHABET: &[&str] = &[
    "a", "Z", "7", " ", "é", "ß", "✓", "€", "😀", "𝄞", "\"", "\\", "\n", "\t", "\u{0}", "\u{2028}",
    "\u{fffd}",
];

/// A text of about `chars` characters.
fn text(rng: &mut Rng, chars: usize) -> String {
    (0..chars).map(|_| rng.pick(ALPHABET)).collect()
}

/// A text length: short, near the capture limit, near the answer window,
/// or past it.
fn length(rng: &mut Rng) -> usize {
    match rng.below(5) {
        0 | 1 => rng.range(0, 8),
        2 => rng.range(LIMIT - 90, LIMIT + 8),
        3 => rng.range(4 * LIMIT - 70, 4 * LIMIT + 10),
        _ => rng.range(4 * LIMIT, 10 * LIMIT),
    }
}

/// What the client POSTed, as the layer should read it.
#[derive(Debug, Clone, PartialEq)]
enum Sent {
    Request {
        id: Value,
        method: String,
        tool: Option<String>,
    },
    Notification,
    Response,
    /// Not one JSON-RPC 2.0 message.
    Other,
}

fn envelope(id: &Value, method: &str, params: Value) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#)
}

/// A valid request: a tool call (most), another method, or an initialize.
fn valid_request(rng: &mut Rng) -> (Sent, String) {
    let id = if rng.chance(70) {
        json!(rng.below(1000))
    } else {
        json!(format!("r-{}", rng.below(1000)))
    };
    let (method, tool, params) = match rng.below(10) {
        0..=5 => {
            let tool = rng.pick(&["echo", "add", "ünï✓"]);
            let n = length(rng);
            let params = json!({"name": tool, "arguments": {"text": text(rng, n)}});
            ("tools/call", Some(tool.to_owned()), params)
        }
        6 => ("tools/list", None, json!({})),
        7 => ("ping", None, json!({"_meta": {"progressToken": 3}})),
        _ => {
            let n = length(rng);
            let params = json!({"protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": text(rng, n), "version": "1.0"}});
            ("initialize", None, params)
        }
    };
    let body = envelope(&id, method, params);
    let sent = Sent::Request {
        id,
        method: method.to_owned(),
        tool,
    };
    (sent, body)
}

/// A request body, valid or nasty, and what it is.
fn request_body(rng: &mut Rng) -> (Sent, Vec<u8>) {
    let (valid, body) = valid_request(rng);
    let (sent, body) = match rng.below(100) {
        0..=39 => (valid, body),
        40..=47 => {
            let n = length(rng);
            let body = match rng.below(3) {
                0 => r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_owned(),
                1 => json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                    "params": {"requestId": rng.below(9), "reason": text(rng, n)}})
                .to_string(),
                _ => json!({"jsonrpc": "2.0", "method": "notifications/progress",
                    "params": {"progressToken": 1, "progress": 1, "message": text(rng, n)}})
                .to_string(),
            };
            (Sent::Notification, body)
        }
        48..=52 => {
            let n = length(rng);
            let body = if rng.chance(50) {
                json!({"jsonrpc": "2.0", "id": "srv-1", "result": {"text": text(rng, n)}})
            } else {
                json!({"jsonrpc": "2.0", "id": 2, "error": {"code": -1, "message": text(rng, n)}})
            };
            (Sent::Response, body.to_string())
        }
        53..=59 => {
            // Cut short: never whole JSON.
            let cut = rng.range(1, body.len() - 1);
            return (Sent::Other, body.as_bytes()[..cut].to_vec());
        }
        60..=65 => {
            // Invalid UTF-8 (a stray byte, a lead byte alone, a
            // surrogate's encoding, a character cut short) next to a quote
            // after a random point.
            let bad: &[u8] = rng.pick(&[&b"\xff"[..], b"\xc3", b"\xed\xa0\x80", b"\xf0\x9f\x98"]);
            let mut bytes = body.into_bytes();
            let at = rng.range(1, bytes.len() - 1);
            let at = (at..bytes.len())
                .find(|i| bytes[*i - 1] == b'"' && bytes[*i] != b':' && bytes[*i] != b',')
                .unwrap_or(1);
            bytes.splice(at..at, bad.iter().copied());
            return (Sent::Other, bytes);
        }
        66..=69 => {
            let (_, second) = valid_request(rng);
            (Sent::Other, format!("[{body},{second}]"))
        }
        70..=75 => {
            // A member the layer reads, twice.
            let twice = rng.pick(&[
                r#""method":"tools/list","#,
                r#""id":5,"#,
                r#""jsonrpc":"2.0","#,
            ]);
            (Sent::Other, body.replacen('{', &format!("{{{twice}"), 1))
        }
        76..=80 => {
            // A member the layer does not read, twice: still the message.
            (valid, body.replacen('{', r#"{"x":1,"x":[2],"#, 1))
        }
        81..=83 => (Sent::Other, body.replacen("\"2.0\"", "\"1.0\"", 1)),
        84..=86 => (valid, format!(" \r\n\t{body}\n ")),
        87..=89 => return (Sent::Other, Vec::new()),
        90..=95 => {
            let n = rng.range(1, 40);
            let garbage = (0..n).map(|_| rng.next_u64() as u8).collect();
            return (Sent::Other, garbage);
        }
        96..=98 => (Sent::Other, "null".to_owned()),
        _ => {
            // Over what the layer reads to understand a request.
            let huge = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{}"}}"#,
                "é".repeat(1 << 20)
            );
            (Sent::Other, huge)
        }
    };
    (sent, body.into_bytes())
}

/// `bytes` cut into chunks: whole, byte by byte, at random sizes, or
/// around every multi-byte character; sometimes with empty chunks.
fn chunks(rng: &mut Rng, bytes: &[u8]) -> Vec<Bytes> {
    let mut cuts: Vec<usize> = match rng.below(4) {
        0 => Vec::new(),
        1 if bytes.len() <= 600 => (1..bytes.len()).collect(),
        2 if bytes.len() <= 1 << 16 => {
            // Inside multi-byte characters (their continuation bytes).
            let inside: Vec<usize> = (1..bytes.len())
                .filter(|i| bytes[*i] & 0xC0 == 0x80)
                .collect();
            inside.into_iter().filter(|_| rng.chance(40)).collect()
        }
        _ => {
            let mut cuts = Vec::new();
            let mut at = 0;
            let most = if bytes.len() > 1 << 16 {
                rng.pick(&[4096, 65_536]) // a huge body: not a million frames
            } else {
                rng.pick(&[1, 2, 3, 7, 16, 64, 1000])
            };
            while !bytes.is_empty() {
                at += rng.range(1, most);
                if at >= bytes.len() {
                    break;
                }
                cuts.push(at);
            }
            cuts
        }
    };
    if rng.chance(5) {
        let at = rng.range(0, bytes.len());
        cuts.push(at);
        cuts.push(at);
    }
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut from = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        chunks.push(Bytes::copy_from_slice(&bytes[from..cut]));
        from = cut;
    }
    if bytes.is_empty() && rng.chance(50) {
        chunks.clear();
    }
    chunks
}

/// The answer to a request with `id`: a result, an error, a failed tool;
/// its JSON-RPC error (or failed tool) says the span fails.
fn answer(rng: &mut Rng, id: &Value) -> (Value, bool) {
    let n = length(rng);
    match rng.below(6) {
        0..=2 => (
            json!({"jsonrpc": "2.0", "id": id,
                "result": {"content": [{"type": "text", "text": text(rng, n)}]}}),
            false,
        ),
        3 => (
            json!({"jsonrpc": "2.0", "id": id,
                "result": {"content": [{"type": "text", "text": text(rng, n)}], "isError": true}}),
            true,
        ),
        _ => {
            let code = rng.pick(&[-32601, -32602, -32603, 42]);
            (
                json!({"jsonrpc": "2.0", "id": id,
                    "error": {"code": code, "message": text(rng, n)}}),
                true,
            )
        }
    }
}

/// The answer the span should carry: its text, and whether it fails.
#[derive(Debug, Clone)]
struct Expected {
    text: String,
    fails: bool,
    /// Whether the layer reads it whole (within four capture limits:
    /// characters of a JSON body, bytes of an event's data); one it does
    /// not takes its status from HTTP.
    read_whole: bool,
}

/// How a line of an event stream ends, the line before having ended
/// with `previous`; `blank`: the line is empty (it ends an event).
fn line_end(rng: &mut Rng, previous: &str, blank: bool) -> &'static str {
    // A `\r` then a blank line's `\n` would be one `\r\n`, not two ends.
    if previous == "\r" && blank {
        return "\r";
    }
    rng.pick(&["\n", "\n", "\r\n", "\r"])
}

/// The SSE value of a field line (`data:x`, `data: x`).
fn field_value<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(field)?;
    if rest.is_empty() {
        return Some("");
    }
    let rest = rest.strip_prefix(':')?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

/// An event stream answering `request`: its bytes, the answer event's
/// data if the stream dispatches one, and the last event id it sets (not
/// for a stream that ends inside an event).
fn event_stream(
    rng: &mut Rng,
    request: Option<&Value>,
) -> (Vec<u8>, Option<Expected>, Option<String>) {
    // Each event's lines and, for a response, whether it has the
    // request's id and whether it fails.
    let mut events: Vec<(Vec<String>, Option<(bool, bool)>)> = Vec::new();
    if rng.chance(40) {
        events.push((
            vec!["id: 0".into(), "retry: 3000".into(), "data:".into()],
            None,
        ));
    }
    let small = |rng: &mut Rng| {
        let n = rng.range(0, 8);
        text(rng, n)
    };
    for _ in 0..rng.below(4) {
        let lines = match rng.below(7) {
            0 => vec![format!(": keep-alive {}", small(rng))],
            1 => vec![],
            2 => vec![format!("retry: {}", rng.below(9999))],
            3 => vec!["event: message".into(), "id: 7\0x".into()],
            4 => vec![
                "event: message".into(),
                format!(
                    "data: {}",
                    json!({"jsonrpc": "2.0", "id": "srv-1", "method": "sampling/createMessage", "params": {}})
                ),
            ],
            5 => vec!["data".into(), "foo: bar".into()],
            _ => vec![format!(
                "data: {}",
                json!({"jsonrpc": "2.0", "method": "notifications/progress",
                    "params": {"progressToken": 1, "progress": 1, "message": small(rng)}})
            )],
        };
        events.push((lines, None));
    }
    if let Some(id) = request.filter(|_| rng.chance(70)) {
        let (value, fails) = answer(rng, id);
        let mut value = value;
        if rng.chance(10) {
            value["id"] = json!(999_999);
        }
        let answers = value["id"] == *request.unwrap();
        let json = if rng.chance(30) {
            serde_json::to_string_pretty(&value).unwrap()
        } else {
            value.to_string()
        };
        let mut lines: Vec<String> = Vec::new();
        if rng.chance(30) {
            lines.push("event: message".into());
        }
        if rng.chance(30) {
            lines.push(rng.pick(&["id: 12", "id: 5\0", "id:"]).into());
        }
        if rng.chance(10) {
            lines.push("data".into());
        }
        for piece in json.lines() {
            let space = if rng.chance(50) { " " } else { "" };
            lines.push(format!("data:{space}{piece}"));
        }
        if rng.chance(20) {
            lines.push(": comment inside".into());
        }
        events.push((lines, Some((answers, fails))));
        for _ in 0..rng.below(2) {
            events.push((vec![format!(": after {}", small(rng))], None));
        }
    }
    let mut stream = Vec::new();
    if rng.chance(15) {
        stream.extend_from_slice(b"\xEF\xBB\xBF");
    }
    let unterminated = rng.chance(8);
    let mut expected = None;
    let mut last_id = String::new();
    let mut previous = "";
    let count = events.len();
    for (i, (lines, answers)) in events.into_iter().enumerate() {
        for line in &lines {
            stream.extend_from_slice(line.as_bytes());
            previous = line_end(rng, previous, false);
            stream.extend_from_slice(previous.as_bytes());
        }
        let last = i + 1 == count;
        if last && unterminated {
            break;
        }
        previous = line_end(rng, previous, true);
        stream.extend_from_slice(previous.as_bytes());
        // An id with a NUL is ignored (WHATWG).
        let mut ids = lines.iter().filter_map(|l| field_value(l, "id"));
        if let Some(id) = ids.rfind(|id| !id.contains('\0')) {
            id.clone_into(&mut last_id);
        }
        let data: Vec<&str> = lines
            .iter()
            .filter_map(|l| field_value(l, "data"))
            .collect();
        let data = data.join("\n");
        // An event cut by the read window is the answer if it starts as
        // a response, whatever its id (README, "Resumed streams").
        let read_whole = data.len() <= 4 * LIMIT;
        if let (Some((answers, fails)), None) = (answers, &expected)
            && (answers || !read_whole)
        {
            expected = Some(Expected {
                text: data,
                fails: fails && read_whole,
                read_whole,
            });
        }
    }
    let last_id = (!unterminated).then_some(last_id);
    (stream, expected, last_id)
}

/// What the response body is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Empty,
    Json,
    EventStream,
    Text,
}

/// How the response body reaches the layer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Delivery {
    /// One full body (`Body::from`), with an exact size hint.
    Full,
    /// A stream whose frames are all ready.
    Ready,
    /// A channel: each frame sent only once the last came out.
    OneAtATime,
}

#[derive(Clone)]
struct Case {
    number: usize,
    session: bool,
    /// Whether the layer knows the session (a ping went first).
    known: bool,
    sent: Sent,
    /// Whether the request says its body is gzip (it is not: the layer
    /// neither decodes nor reads an encoded body).
    encoded: bool,
    request: Vec<u8>,
    request_chunks: Vec<Bytes>,
    status: u16,
    headers: Vec<(&'static str, String)>,
    kind: Kind,
    /// Whether the answer says it is gzip.
    answer_encoded: bool,
    answer_session: bool,
    response: Vec<Bytes>,
    delivery: Delivery,
    trailers: bool,
    breaks: bool,
    /// Whether the head declares the body's length.
    declared: bool,
    /// The client drops the body after this many frames.
    reads: Option<usize>,
    expected: Option<Expected>,
    /// The GET that resumes the stream, if the client resumes it.
    resume: Option<Resume>,
    /// Whether the client then deletes the session.
    deleted: bool,
}

/// A GET that resumes a call's event stream from `last_id` and brings
/// its answer.
#[derive(Debug, Clone)]
struct Resume {
    last_id: String,
    body: Bytes,
    expected: Expected,
}

/// Bodies as (lossy) text, chunk by chunk.
fn texts(chunks: &[Bytes]) -> Vec<std::borrow::Cow<'_, str>> {
    chunks.iter().map(|c| String::from_utf8_lossy(c)).collect()
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("number", &self.number)
            .field("session", &self.session)
            .field("known", &self.known)
            .field("sent", &self.sent)
            .field("encoded", &self.encoded)
            .field("request_chunks", &texts(&self.request_chunks))
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("kind", &self.kind)
            .field("answer_encoded", &self.answer_encoded)
            .field("answer_session", &self.answer_session)
            .field("response", &texts(&self.response))
            .field("delivery", &self.delivery)
            .field("trailers", &self.trailers)
            .field("breaks", &self.breaks)
            .field("declared", &self.declared)
            .field("reads", &self.reads)
            .field("expected", &self.expected)
            .field("resume", &self.resume)
            .field("deleted", &self.deleted)
            .finish_non_exhaustive()
    }
}

impl Case {
    fn generate(rng: &mut Rng, number: usize) -> Self {
        let (sent, request) = request_body(rng);
        let request_chunks = chunks(rng, &request);
        let session = rng.chance(80);
        let known = session && rng.chance(50);
        let encoded = rng.chance(4);
        let status = if rng.chance(75) {
            200
        } else {
            rng.pick(&[202, 400, 404, 500, 503])
        };
        let request_id = match &sent {
            Sent::Request { id, .. } => Some(id),
            _ => None,
        };
        let mut headers = Vec::new();
        let mut resume = None;
        let (kind, body, expected) = match rng.below(100) {
            _ if status == 202 && rng.chance(70) => (Kind::Empty, Vec::new(), None),
            0..=39 => {
                let (body, expected) = match request_id {
                    Some(id) if rng.chance(85) => {
                        let (value, fails) = answer(rng, id);
                        let text = value.to_string();
                        let read_whole = text.chars().count() <= 4 * LIMIT;
                        let expected = Expected {
                            text: text.clone(),
                            fails: fails && read_whole,
                            read_whole,
                        };
                        (text.into_bytes(), Some(expected))
                    }
                    _ => (b"{\"jsonrpc\":\"2.0\",\"id\":".to_vec(), None),
                };
                (Kind::Json, body, expected)
            }
            40..=89 => {
                let (body, found, last_id) = event_stream(rng, request_id);
                // A stream that ended without the answer, after an event
                // id: the client resumes it with a GET, which brings the
                // answer (README, "Resumed streams").
                if let (Some(id), None, Some(last_id)) = (request_id, &found, last_id)
                    && !last_id.is_empty()
                    && session
                {
                    let (value, fails) = answer(rng, id);
                    let text = value.to_string();
                    let body = format!("id: {last_id}-1\ndata: {text}\n\n");
                    let read_whole = text.len() <= 4 * LIMIT;
                    resume = Some(Resume {
                        last_id,
                        body: Bytes::from(body),
                        expected: Expected {
                            text,
                            fails: fails && read_whole,
                            read_whole,
                        },
                    });
                }
                (Kind::EventStream, body, found)
            }
            _ => (Kind::Text, b"oops \xff".to_vec(), None),
        };
        let content_type = match kind {
            Kind::Empty => None,
            // Media types are case-insensitive and may have parameters.
            Kind::Json => Some(rng.pick(&[
                "application/json",
                "application/json; charset=utf-8",
                "Application/JSON",
            ])),
            Kind::EventStream => Some(rng.pick(&[
                "text/event-stream",
                "text/event-stream;charset=UTF-8",
                "Text/Event-Stream",
            ])),
            Kind::Text => Some("text/plain"),
        };
        if let Some(content_type) = content_type {
            headers.push(("content-type", content_type.to_owned()));
        }
        // `identity` is no encoding; an answer that says gzip (and is
        // not) is passed on unread.
        let answer_encoded = match rng.below(100) {
            0..=3 => true,
            4..=8 => {
                headers.push(("content-encoding", "identity".to_owned()));
                false
            }
            _ => false,
        };
        if answer_encoded {
            headers.push(("content-encoding", "gzip".to_owned()));
        }
        let answer_session = rng.chance(15);
        if answer_session {
            headers.push(("mcp-session-id", format!("n-{number}")));
        }
        if rng.chance(10) {
            headers.push(("x-served-by", "scripted".to_owned()));
        }
        let delivery = rng.pick(&[Delivery::Full, Delivery::Ready, Delivery::OneAtATime]);
        let response = match delivery {
            Delivery::Full => vec![Bytes::from(body)],
            _ => chunks(rng, &body),
        };
        let streamed = delivery != Delivery::Full;
        let trailers = streamed && rng.chance(5);
        let breaks = streamed && rng.chance(5);
        // A declared length, at which a client (hyper) stops: it drops the
        // body once all of it is sent, without polling it to its end.
        let declared = !trailers && !breaks && rng.chance(if streamed { 25 } else { 50 });
        if declared {
            let length: usize = response.iter().map(Bytes::len).sum();
            headers.push(("content-length", length.to_string()));
        }
        let reads = if declared && rng.chance(50) {
            Some(response.len())
        } else {
            rng.chance(10).then(|| rng.below(response.len() + 1))
        };
        let mut case = Self {
            number,
            session,
            known,
            sent,
            encoded,
            request,
            request_chunks,
            status,
            headers,
            kind,
            answer_encoded,
            answer_session,
            response,
            delivery,
            trailers,
            breaks,
            declared,
            reads,
            expected,
            resume,
            deleted: known && rng.chance(25),
        };
        // A client resumes from the last id it read; the layer, too, knows
        // only the ids that went by.
        case.resume = case.resume.take().filter(|_| {
            case.is_success() && case.all_read() && !case.encoded && !case.answer_encoded
        });
        case
    }

    /// Whether the client read the body to its end, or to the end of its
    /// declared length.
    fn all_read(&self) -> bool {
        self.reads.is_none() || self.declared && self.reads == Some(self.response.len())
    }

    /// A ping in the session of case `number`, answered: it makes the
    /// session known (the layer tapes the exchanges of a session it knows
    /// and reads them later) and, as the first exchange, teaches the layer
    /// its MCP endpoint.
    fn ping(number: usize) -> Self {
        let request = br#"{"jsonrpc":"2.0","id":"warm-up","method":"ping"}"#.to_vec();
        let answer = Bytes::from_static(br#"{"jsonrpc":"2.0","id":"warm-up","result":{}}"#);
        Self {
            number,
            session: true,
            known: false,
            encoded: false,
            sent: Sent::Request {
                id: json!("warm-up"),
                method: "ping".to_owned(),
                tool: None,
            },
            request_chunks: vec![Bytes::from(request.clone())],
            request,
            status: 200,
            headers: vec![("content-type", "application/json".to_owned())],
            kind: Kind::Json,
            answer_encoded: false,
            answer_session: false,
            response: vec![answer],
            delivery: Delivery::Full,
            trailers: false,
            breaks: false,
            declared: false,
            reads: None,
            expected: None,
            resume: None,
            deleted: false,
        }
    }

    /// The response body's items, as the handler's stream yields them.
    fn response_items(&self) -> Vec<Result<Frame<Bytes>, std::io::Error>> {
        let mut items: Vec<_> = self
            .response
            .iter()
            .map(|chunk| Ok(Frame::data(chunk.clone())))
            .collect();
        if self.trailers {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", "abc".parse().unwrap());
            items.push(Ok(Frame::trailers(trailers)));
        }
        if self.breaks {
            items.push(Err(std::io::Error::other("backend died")));
        }
        items
    }

    fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// How many spans this exchange makes (README, "What is recorded"):
    /// none for a notification or a client's response; none for an
    /// initialize whose answer opens a session; in a session the layer
    /// knows, one unless the server answers 404 (it forgot the session:
    /// the run ends); in a session the layer does not know yet, one for
    /// any 2xx; without a session, one for a JSON-RPC request (in the run
    /// of its run key).
    /// An encoded body is not read: it is no message the layer knows.
    fn expected_spans(&self) -> usize {
        let sent = if self.encoded {
            &Sent::Other
        } else {
            &self.sent
        };
        let initialize = matches!(sent, Sent::Request { method, .. } if method == "initialize");
        match sent {
            Sent::Notification | Sent::Response => 0,
            Sent::Request { .. } if initialize && self.answer_session => 0,
            _ if self.known => usize::from(self.status != 404),
            _ if self.session => usize::from(self.is_success()),
            Sent::Request { .. } => 1,
            Sent::Other => 0,
        }
    }

    /// The conversation ids of this case's runs.
    fn conversations(&self) -> [String; 3] {
        let n = self.number;
        [format!("s-{n}"), format!("k-{n}"), format!("n-{n}")]
    }
}

/// What the handler is told to answer, and what it saw of the request.
#[derive(Debug)]
struct Script {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Mutex<Option<Body>>,
    seen: Mutex<Vec<Bytes>>,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn scripted(Extension(script): Extension<Arc<Script>>, request: Request) -> Response<Body> {
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("the request body never fails").into_data() {
            locked(&script.seen).push(data);
        }
    }
    let mut response = Response::builder().status(StatusCode::from_u16(script.status).unwrap());
    for (name, value) in &script.headers {
        response = response.header(*name, value);
    }
    let body = locked(&script.body).take().expect("one answer per script");
    response.body(body).unwrap()
}

/// What one side (bare or layered) gave, and what its handler saw.
#[derive(Debug, PartialEq)]
struct Seen {
    status: StatusCode,
    headers: HeaderMap,
    size_hint: (u64, Option<u64>),
    end_stream: bool,
    frames: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    error: Option<String>,
    request: Vec<Bytes>,
    /// The status and body of the GET that resumed the stream.
    resumed: Option<(StatusCode, Bytes)>,
    /// The status of the DELETE of the session.
    deleted: Option<StatusCode>,
}

/// Runs `case` through `app`, as a client that reads the body frame by
/// frame (and drops it early if the case says so).
async fn exchange(app: Router, case: &Case) -> Seen {
    let items = case.response_items();
    let (body, mut outbox) = match case.delivery {
        Delivery::Full => (Body::from(case.response[0].clone()), None),
        Delivery::Ready => (
            Body::new(StreamBody::new(futures::stream::iter(items))),
            None,
        ),
        Delivery::OneAtATime => {
            let (sender, receiver) = mpsc::unbounded();
            (
                Body::new(StreamBody::new(receiver)),
                Some((sender, items.into_iter())),
            )
        }
    };
    let script = Arc::new(Script {
        status: case.status,
        headers: case.headers.clone(),
        body: Mutex::new(Some(body)),
        seen: Mutex::new(Vec::new()),
    });
    let frames = case
        .request_chunks
        .iter()
        .map(|chunk| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone())))
        .collect::<Vec<_>>();
    let mut request = Request::post("/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("x-case", format!("k-{}", case.number))
        .extension(Arc::clone(&script));
    if case.encoded {
        request = request.header("content-encoding", "gzip");
    }
    if case.session {
        request = request
            .header("mcp-session-id", format!("s-{}", case.number))
            .header("mcp-protocol-version", "2025-11-25");
    }
    let request = request
        .body(Body::new(StreamBody::new(futures::stream::iter(frames))))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, mut body) = response.into_parts();
    let hint = body.size_hint();
    let mut seen = Seen {
        status: parts.status,
        headers: parts.headers,
        size_hint: (hint.lower(), hint.upper()),
        end_stream: body.is_end_stream(),
        frames: Vec::new(),
        trailers: None,
        error: None,
        request: Vec::new(),
        resumed: None,
        deleted: None,
    };
    let mut read = 0;
    loop {
        if case.reads == Some(read) {
            break; // the client goes away
        }
        if let Some((sender, items)) = &mut outbox {
            match items.next() {
                Some(item) => sender.unbounded_send(item).unwrap(),
                None => sender.close_channel(),
            }
        }
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => seen.frames.push(data),
                Err(frame) => seen.trailers = frame.into_trailers().ok(),
            },
            Some(Err(error)) => {
                seen.error = Some(error.to_string());
                break;
            }
        }
        read += 1;
    }
    drop(body);
    seen.request = std::mem::take(&mut *locked(&script.seen));
    if let Some(resume) = &case.resume {
        seen.resumed = Some(resumed(app.clone(), case.number, resume).await);
    }
    if case.deleted {
        seen.deleted = Some(deleted(app, case.number).await);
    }
    seen
}

/// The client deletes case `number`'s session: its run ends, counting the
/// spans answered before (some perhaps still waiting to be read).
async fn deleted(app: Router, number: usize) -> StatusCode {
    let script = Arc::new(Script {
        status: 200,
        headers: Vec::new(),
        body: Mutex::new(Some(Body::empty())),
        seen: Mutex::new(Vec::new()),
    });
    let request = Request::delete("/mcp")
        .header("mcp-session-id", format!("s-{number}"))
        .extension(script)
        .body(Body::empty())
        .unwrap();
    app.oneshot(request).await.unwrap().status()
}

/// The client resumes case `number`'s stream with a GET.
async fn resumed(app: Router, number: usize, resume: &Resume) -> (StatusCode, Bytes) {
    let script = Arc::new(Script {
        status: 200,
        headers: vec![("content-type", "text/event-stream".to_owned())],
        body: Mutex::new(Some(Body::from(resume.body.clone()))),
        seen: Mutex::new(Vec::new()),
    });
    let request = Request::get("/mcp")
        .header("accept", "text/event-stream")
        .header("mcp-session-id", format!("s-{number}"))
        .header("mcp-protocol-version", "2025-11-25")
        .header("last-event-id", &resume.last_id)
        .extension(script)
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// The first `chars` characters of `text`.
fn cut(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

/// Prints how to run a failing case again.
struct Reproduce {
    seed: u64,
    case: Option<usize>,
}

impl Drop for Reproduce {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let case = self
                .case
                .map_or_else(String::new, |case| format!(" TRODO_FUZZ_CASE={case}"));
            eprintln!(
                "randomized transparency failed; run again with TRODO_FUZZ_SEED={:#x}{case}",
                self.seed
            );
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text} is not a number")))
}

/// The seed of case `number` of a run seeded with `seed`.
fn case_seed(seed: u64, number: usize) -> u64 {
    Rng(seed ^ (number as u64).wrapping_mul(0xA076_1D64_78BD_642F)).next_u64()
}

#[tokio::test]
async fn generated_exchanges_pass_through_the_layer_untouched_and_are_recorded_once() {
    drive(None).await;
}

/// With a session store every exchange is read as it streams, and the
/// response heads of sessions the worker does not know wait for the store.
#[tokio::test]
async fn with_a_session_store_too() {
    drive(Some(Arc::new(trodo_tower::store::MemoryStore::new()))).await;
}

/// Generates the cases, runs each bare and layered (a layer with `store`,
/// if any), compares, and counts and checks the spans once all are sent.
async fn drive(store: Option<Arc<trodo_tower::store::MemoryStore>>) {
    let seed = env_number("TRODO_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let numbers: Vec<usize> = match env_number("TRODO_FUZZ_CASE") {
        Some(only) => vec![only as usize],
        None => (0..env_number("TRODO_FUZZ_CASES").map_or(DEFAULT_CASES, |n| n as usize)).collect(),
    };
    let mut reproduce = Reproduce { seed, case: None };

    let ingest = RecordingIngest::start().await.unwrap();
    let config = config(&ingest)
        .with_capture_limit(LIMIT)
        .unwrap()
        .with_run_key(|parts| Some(parts.headers.get("x-case")?.to_str().ok()?.to_owned()));
    let parks = store.is_none();
    let config = match store {
        Some(store) => config.with_session_store(store),
        None => config,
    };
    let layer = TrodoLayer::new(config);
    let trodo = layer.trodo();
    let app = Router::new().route("/mcp", post(scripted).get(scripted).delete(scripted));
    let layered = app.clone().layer(layer);
    // The layer learns its MCP endpoint from the first request it reads;
    // from then on a body that is not JSON-RPC is an invalid message.
    exchange(layered.clone(), &Case::ping(usize::MAX)).await;

    let mut cases = Vec::new();
    for &number in &numbers {
        reproduce.case = Some(number);
        let case = Case::generate(&mut Rng(case_seed(seed, number)), number);
        let run = async {
            let bare = exchange(app.clone(), &case).await;
            if case.known {
                exchange(layered.clone(), &Case::ping(number)).await;
            }
            let through = exchange(layered.clone(), &case).await;
            (bare, through)
        };
        let (bare, through) = tokio::time::timeout(WAIT, run)
            .await
            .unwrap_or_else(|_| panic!("case {number} hangs: {case:#?}"));
        assert_eq!(bare, through, "case {number}: {case:#?}");
        assert_eq!(
            bare.request.concat(),
            case.request,
            "case {number}: the handler read the whole request"
        );
        assert_eq!(
            trodo.delivery_counters().panics_caught,
            0,
            "case {number}: {case:#?}"
        );
        cases.push(case);
    }
    reproduce.case = None;

    assert!(trodo.shutdown(WAIT).await, "everything delivered");
    assert_eq!(trodo.delivery_counters().panics_caught, 0);
    let runs: HashMap<String, String> = ingest
        .starts()
        .into_iter()
        .map(|run| {
            let id = run["run_id"].as_str().unwrap().to_owned();
            let conversation = run["conversation_id"].as_str().unwrap_or("").to_owned();
            (id, conversation)
        })
        .collect();
    let mut spans: HashMap<&str, Vec<Value>> = HashMap::new();
    for (run_id, span) in ingest.spans() {
        let conversation = runs.get(&run_id).map_or("", String::as_str);
        spans.entry(conversation).or_default().push(span);
    }
    for case in &cases {
        reproduce.case = Some(case.number);
        let (pings, mine): (Vec<&Value>, Vec<&Value>) = case
            .conversations()
            .iter()
            .flat_map(|c| spans.get(c.as_str()).into_iter().flatten())
            .partition(|span| span["attributes"]["jsonrpc.request.id"] == "warm-up");
        assert_eq!(pings.len(), usize::from(case.known), "case {}", case.number);
        assert_eq!(
            mine.len(),
            case.expected_spans(),
            "case {}: {mine:#?} {case:#?}",
            case.number
        );
        if let [span] = mine[..] {
            check_span(case, span, parks);
        }
    }
    reproduce.case = None;
    // A worker with a session store leaves its sessions open at shutdown
    // (README, "Shutdown and dead workers"): others may serve them.
    check_ends(&ingest, &runs, parks);
}

/// Each run (`runs`: run id to conversation id) ends at most once, and
/// once if `all_end`, with the true totals of the spans it sent (README,
/// "What is recorded").
fn check_ends(ingest: &RecordingIngest, runs: &HashMap<String, String>, all_end: bool) {
    let ends = ingest.ends();
    let mut ended: Vec<&str> = ends.iter().map(|(id, _)| id.as_str()).collect();
    ended.sort_unstable();
    ended.dedup();
    assert_eq!(ended.len(), ends.len(), "a run ends at most once");
    if all_end {
        assert_eq!(ends.len(), runs.len(), "every run ends");
    }
    let spans = ingest.spans();
    for (run_id, end) in &ends {
        let conversation = runs.get(run_id).expect("an end of a run that started");
        let sent: Vec<&Value> = spans
            .iter()
            .filter(|(id, _)| id == run_id)
            .map(|(_, span)| span)
            .collect();
        let errors = sent.iter().filter(|span| span["status"] == "error").count();
        assert_eq!(end["span_count"], sent.len(), "{conversation}: {end}");
        assert_eq!(end["error_count"], errors, "{conversation}: {end}");
    }
}

/// A case's span says what went by: its input, and the answer the model
/// knows of.
/// `parks`: whether a call whose stream ended without its answer waits
/// for the stream to be resumed (without a session store).
fn check_span(case: &Case, span: &Value, parks: bool) {
    let context = || format!("case {}: {span:#} {case:#?}", case.number);
    let attributes = &span["attributes"];
    assert_eq!(
        attributes["http.request.body.size"],
        case.request.len(),
        "{}",
        context()
    );
    if case.encoded {
        // Kept out of the span, named from its size alone (README, "What
        // is captured").
        assert!(span.get("input").is_none(), "{}", context());
        assert_eq!(attributes["input_truncated"], false, "{}", context());
        assert_eq!(
            attributes["http.request.content_encoding"],
            "gzip",
            "{}",
            context()
        );
        let name = if case.request.is_empty() {
            "http.POST /mcp"
        } else {
            "mcp.request"
        };
        assert_eq!(span["name"], name, "{}", context());
        return;
    }
    let input = String::from_utf8_lossy(&case.request);
    if case.request.is_empty() {
        assert!(span.get("input").is_none(), "{}", context());
    } else {
        assert_eq!(span["input"], cut(&input, LIMIT), "{}", context());
        let over = input.chars().count() > LIMIT;
        assert_eq!(attributes["input_truncated"], over, "{}", context());
    }
    let (name, fails) = match &case.sent {
        Sent::Request {
            tool: Some(tool), ..
        } => (format!("tool.{tool}"), None),
        Sent::Request { method, .. } => (format!("mcp.{method}"), None),
        // Not read whole to be understood: of an unknown method.
        _ if input.chars().count() > 1 << 20 => ("mcp.request".to_owned(), None),
        _ if !case.request.is_empty() => ("mcp.invalid_message".to_owned(), Some(true)),
        _ => ("http.POST /mcp".to_owned(), None),
    };
    assert_eq!(span["name"], name, "{}", context());
    if let Some(fails) = fails {
        assert_eq!(span["status"] == "error", fails, "{}", context());
    }
    if case.answer_encoded {
        // Kept out of the span (README, "What is captured").
        assert!(span.get("output").is_none(), "{}", context());
        let encoding = &attributes["http.response.content_encoding"];
        assert_eq!(encoding, "gzip", "{}", context());
        return;
    }
    let whole = case.all_read() && !case.breaks;
    let answered = |expected: &Expected| {
        assert_eq!(span["output"], cut(&expected.text, LIMIT), "{}", context());
        let over = expected.text.chars().count() > LIMIT || !expected.read_whole;
        assert_eq!(attributes["output_truncated"], over, "{}", context());
        let status = if expected.fails { "error" } else { "ok" };
        assert_eq!(span["status"], status, "{}", context());
    };
    if let Some(resume) = case.resume.as_ref().filter(|_| parks) {
        // The call waited, and the GET that resumed its stream answered.
        assert_eq!(attributes["mcp.stream_resumed"], true, "{}", context());
        answered(&resume.expected);
        return;
    }
    let request = matches!(case.sent, Sent::Request { .. });
    if request && whole && case.is_success() && case.kind == Kind::EventStream {
        // The stream ended without the answer: broken off.
        if case.expected.is_none() {
            assert_eq!(span["error_type"], "stream_error", "{}", context());
        }
    }
    let Some(expected) = case
        .expected
        .as_ref()
        .filter(|_| whole && case.is_success())
    else {
        return;
    };
    answered(expected);
}
