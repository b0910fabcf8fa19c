//! The generators: a seedable Rng, and from it texts, lengths, request
//! bodies (valid and nasty) and what they are, chunkings, JSON-RPC answers
//! and event streams, with the answer each should yield.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::LIMIT;

/// splitmix64: tiny, seedable, and good enough to pick shapes.
#[derive(Debug, Clone)]
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A number in `lo..=hi`.
    pub(super) fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub(super) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
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
pub(super) enum Sent {
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

/// A request as clients write it: `jsonrpc` and `id` first (rmcp, the
/// Python SDK), or last (the TypeScript SDK).
fn envelope(rng: &mut Rng, id: &Value, method: &str, params: Value) -> String {
    if rng.chance(40) {
        format!(r#"{{"method":"{method}","params":{params},"jsonrpc":"2.0","id":{id}}}"#)
    } else {
        format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#)
    }
}

/// A response as servers write it: members by name (serde_json without
/// `preserve_order`; pretty or not), `jsonrpc` and `id` first (rmcp, the
/// Python SDK), or the outcome first (the TypeScript SDK). With whether
/// its id comes after its outcome, where a cut of a long outcome hides it.
fn response_text(rng: &mut Rng, value: &Value) -> (String, bool) {
    let outcome = if value.get("error").is_some() {
        "error"
    } else {
        "result"
    };
    let (id, body) = (&value["id"], &value[outcome]);
    match rng.below(4) {
        0 => (
            serde_json::to_string_pretty(value).unwrap(),
            outcome == "error",
        ),
        1 => (value.to_string(), outcome == "error"),
        2 => (
            format!(r#"{{"jsonrpc":"2.0","id":{id},"{outcome}":{body}}}"#),
            false,
        ),
        _ => (
            format!(r#"{{"{outcome}":{body},"jsonrpc":"2.0","id":{id}}}"#),
            true,
        ),
    }
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
    let body = envelope(rng, &id, method, params);
    let sent = Sent::Request {
        id,
        method: method.to_owned(),
        tool,
    };
    (sent, body)
}

/// A request body, valid or nasty, and what it is.
pub(super) fn request_body(rng: &mut Rng) -> (Sent, Vec<u8>) {
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
pub(super) fn chunks(rng: &mut Rng, bytes: &[u8]) -> Vec<Bytes> {
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
pub(super) fn answer(rng: &mut Rng, id: &Value) -> (Value, bool) {
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
pub(super) struct Expected {
    pub(super) text: String,
    pub(super) fails: bool,
    /// Whether the layer reads it whole (within four capture limits, in
    /// characters, of a JSON body or an event's data); one it does not
    /// takes its status from HTTP.
    pub(super) read_whole: bool,
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
pub(super) fn event_stream(
    rng: &mut Rng,
    request: Option<&Value>,
) -> (Vec<u8>, Option<Expected>, Option<String>) {
    // Each event's lines and, for a response, whether it has the
    // request's id, whether it fails, and whether its id comes after a
    // member that a cut would fall in.
    let mut events: Vec<(Vec<String>, Option<(bool, bool, bool)>)> = Vec::new();
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
        let lines = match rng.below(8) {
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
            // Another request's answer, written as rmcp writes one.
            6 => vec![r#"data: {"jsonrpc":"2.0","id":999998,"result":{"content":[]}}"#.into()],
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
        // A long answer is long for its outcome: a cut falls in it.
        let (json, id_late) = response_text(rng, &value);
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
        events.push((lines, Some((answers, fails, id_late))));
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
        // a response whose id the cut hides, or is the request's (README,
        // "Resumed streams").
        let read_whole = data.chars().count() <= 4 * LIMIT;
        if let (Some((answers, fails, id_late)), None) = (answers, &expected)
            && (answers || (!read_whole && id_late))
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
