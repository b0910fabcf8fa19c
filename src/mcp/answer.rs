//! Telling a JSON-RPC response, and the request it answers, from a
//! message's first bytes: a look (no parse), the first top-level members
//! (a few members' parse), or the ids as written (a byte comparison).
//!
//! The layer must find the answer among the events of a response stream
//! without reading every event whole: progress, logging and
//! server-to-client requests come first, and may be long.

use memchr::memmem::Finder;
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use std::fmt;
use std::sync::LazyLock;

use super::member;

/// What a message's first bytes suggest it is, without parsing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Look {
    /// A `result` or `error` member and no `method`: a response.
    Response,
    /// Neither: a request or a notification.
    Other,
    /// Both: only parsing can tell.
    Unsure,
}

static RESULT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"result\""));
static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\""));

/// What the first 512 bytes of a message suggest it is.
pub(crate) fn look(prefix: &[u8]) -> Look {
    static METHOD: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"method\""));
    let head = &prefix[..prefix.len().min(512)];
    match (mentions_outcome(head), METHOD.find(head).is_some()) {
        (true, false) => Look::Response,
        (true, true) => Look::Unsure,
        (false, _) => Look::Other,
    }
}

/// Whether `bytes` mention a `"result"` or an `"error"` anywhere: a
/// message without either can be no response (see [`look`]), nor can any
/// of several in `bytes`.
pub(crate) fn mentions_outcome(bytes: &[u8]) -> bool {
    RESULT.find(bytes).is_some() || ERROR.find(bytes).is_some()
}

/// Whether two JSON-RPC ids name the same request. Numbers compare by
/// value, as a server in JavaScript reads them: `1.0`, `1e0` and `1` are
/// one id, and so are integers above 2^53 that round to the same double.
/// Anything else compares as JSON (a string is never a number).
pub(crate) fn same_id(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => {
            a == b || a.as_f64().is_some_and(|a| b.as_f64() == Some(a))
        }
        _ => a == b,
    }
}

/// Whether `message` (whole, or only its first bytes) is the JSON-RPC
/// response to the request with id `request_id` (to any request if
/// `None`), as far as its top-level members up to the first that tell say:
/// `jsonrpc` `"2.0"`, an `id`, and a `result` or a non-null `error` before
/// any `method`. Nested members do not count, nor does what follows once
/// these are read. [`Look::Unsure`]: the bytes end before they tell (an
/// `id` or `jsonrpc` after a `result` cut off); [`Look::Other`] for
/// anything that is no response, or answers another request.
///
/// Costs a few members' parse: rmcp, the Python SDK and most servers
/// write `jsonrpc`, `id`, `result` first, and the result is not read.
pub(crate) fn answers(message: &[u8], request_id: Option<&Value>) -> Look {
    let mut members = TopMembers {
        stop_at_id: false,
        ..TopMembers::default()
    };
    members.read(message);
    if members.method || !members.outcome || members.jsonrpc == Some(false) {
        return Look::Other;
    }
    let id = match members.id {
        Some(id) => id,
        None if members.whole => Value::Null,
        None => return Look::Unsure,
    };
    match members.jsonrpc {
        Some(_) => {}
        None if members.whole => return Look::Other,
        None => return Look::Unsure,
    }
    if request_id.is_some_and(|request_id| !same_id(request_id, &id)) {
        return Look::Other;
    }
    Look::Response
}

/// How a message written the common way starts: rmcp, the Python SDK and
/// most clients write `jsonrpc`, then `id`, compactly.
const PLAIN_START: &[u8] = br#"{"jsonrpc":"2.0","id":"#;

/// How the TypeScript SDK ends a request (`{...request, jsonrpc, id}`):
/// `jsonrpc`, then `id`, last.
const PLAIN_END: &[u8] = br#","jsonrpc":"2.0","id":"#;

/// Whether `event` is, plainly, the answer to `request`: the event starts
/// [`PLAIN_START`], the request starts so too or ends [`PLAIN_END`], with
/// the same id as written (a number, or a string without escapes), and
/// the event's next member is a `result` or an `error` object. A byte
/// comparison, no parse: `false` says only that [`answers`] must tell.
pub(crate) fn plainly_answers(event: &[u8], request: &[u8]) -> bool {
    let Some((id, rest)) = plain_id(event) else {
        return false;
    };
    let request_id = plain_id(request)
        .map(|(id, _)| id)
        .or_else(|| trailing_id(request));
    request_id == Some(id)
        && (rest.starts_with(br#""result":"#) || rest.starts_with(br#""error":{"#))
}

/// The id of a message that starts [`PLAIN_START`], as written, and what
/// follows its comma.
fn plain_id(message: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = message.strip_prefix(PLAIN_START)?;
    let len = match rest.first()? {
        b'"' => {
            let text_len = memchr::memchr(b'"', &rest[1..])?;
            if rest[1..=text_len].contains(&b'\\') {
                return None;
            }
            text_len + 2
        }
        _ => rest.iter().position(|&b| !in_number(b))?,
    };
    let (id, after) = rest.split_at(len);
    Some((id, after.strip_prefix(b",")?)).filter(|(id, _)| !id.is_empty())
}

/// The id of a message that ends [`PLAIN_END`], an id and `}`, as
/// written: the top-level object's last member, as nothing follows it.
fn trailing_id(message: &[u8]) -> Option<&[u8]> {
    let body = message.trim_ascii_end().strip_suffix(b"}")?;
    let start = match body.last()? {
        b'"' => {
            let text = &body[..body.len() - 1];
            let open = memchr::memrchr(b'"', text)?;
            if text[open + 1..].contains(&b'\\') {
                return None;
            }
            open
        }
        _ => body.iter().rposition(|&b| !in_number(b))? + 1,
    };
    let (before, id) = body.split_at(start);
    (!id.is_empty() && before.ends_with(PLAIN_END)).then_some(id)
}

/// Whether a byte may be part of a JSON number.
fn in_number(byte: u8) -> bool {
    matches!(byte, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
}

/// The top-level `id` of a message, if it has one, read no further than
/// that member (or, in a message that is not a JSON object, none).
pub(crate) fn top_level_id(message: &[u8]) -> Option<Value> {
    let mut members = TopMembers {
        stop_at_id: true,
        ..TopMembers::default()
    };
    members.read(message);
    members.id
}

/// What the top-level members of a message read so far said (see [`answers`]).
#[derive(Default)]
struct TopMembers {
    /// Stop at the `id` (else at whatever tells an answer).
    stop_at_id: bool,
    /// Whether `jsonrpc` was `"2.0"`, if it was read.
    jsonrpc: Option<bool>,
    id: Option<Value>,
    /// A `result`, or an `error` that is not `null`.
    outcome: bool,
    method: bool,
    /// Whether every member was read (the message was not cut short).
    whole: bool,
}

/// A top-level member's name, as [`TopMembers`] reads it.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum TopKey {
    Jsonrpc,
    Id,
    Method,
    Result,
    Error,
    #[serde(other)]
    Other,
}

impl TopMembers {
    /// Reads `message`'s members until they tell, or until it is cut off
    /// or unreadable (whatever was read by then stays).
    fn read(&mut self, message: &[u8]) {
        let mut reader = serde_json::Deserializer::from_slice(message);
        let _ = reader.deserialize_map(&mut *self);
    }

    /// Whether the members read tell all [`answers`] asks.
    fn told(&self) -> bool {
        if self.stop_at_id {
            return self.id.is_some();
        }
        self.outcome && self.id.is_some() && self.jsonrpc.is_some()
    }
}

impl<'de> Visitor<'de> for &mut TopMembers {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC message")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<TopKey>()? {
            match key {
                TopKey::Jsonrpc => {
                    let text = map.next_value::<member::Member<'de>>()?.text();
                    self.jsonrpc = Some(text.as_deref() == Some("2.0"));
                }
                TopKey::Id => self.id = Some(map.next_value()?),
                TopKey::Method if !self.stop_at_id => {
                    // A request or a notification: nothing more to read.
                    self.method = true;
                    return Ok(());
                }
                TopKey::Result if !self.stop_at_id => {
                    self.outcome = true;
                    // The result itself is not read, unless needed to go on.
                    if self.told() {
                        return Ok(());
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                TopKey::Error if !self.stop_at_id => {
                    // An error cut short is no `null`: an outcome all the same.
                    let before = self.outcome;
                    self.outcome = true;
                    self.outcome = map.next_value::<Option<IgnoredAny>>()?.is_some() || before;
                }
                TopKey::Method | TopKey::Result | TopKey::Error | TopKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            if self.told() {
                return Ok(());
            }
        }
        self.whole = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prefix_of_a_large_response() {
        assert_eq!(
            look(br#"{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"xxxx"#),
            Look::Response
        );
        assert_eq!(
            look(br#"{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"xxx"#),
            Look::Other
        );
        assert_eq!(
            look(br#"{"jsonrpc":"2.0","id":2,"result":{"structuredContent":{"method":"GET"}}}"#),
            Look::Unsure
        );
        assert_eq!(
            look(br#"{"jsonrpc":"2.0","method":"x","params":{}}"#),
            Look::Other
        );
        // Only the first 512 bytes count, whatever characters they cut.
        let late = format!(
            r#"{{"jsonrpc":"2.0","id":2,"x":"{}","result":1}}"#,
            "é".repeat(300)
        );
        assert_eq!(look(late.as_bytes()), Look::Other);
    }

    #[test]
    fn an_answer_is_told_by_its_top_level_members() {
        let one = json!(1);
        let answers_one = |message: &str| answers(message.as_bytes(), Some(&one));
        // The result is not read: a cut one is still an answer.
        let cut = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"xx"#;
        assert_eq!(answers_one(cut), Look::Response);
        assert_eq!(
            answers_one(r#"{"jsonrpc":"2.0","id":1,"error":{}}"#),
            Look::Response
        );
        assert_eq!(
            answers_one(r#"{"result":{},"jsonrpc":"2.0","id":1}"#),
            Look::Response
        );
        // Nested members do not count.
        let nested = r#"{"jsonrpc":"2.0","id":1,"result":{"method":"GET","id":2}}"#;
        assert_eq!(answers_one(nested), Look::Response);
        // Another request's answer, or one to none.
        assert_eq!(
            answers_one(r#"{"jsonrpc":"2.0","id":2,"result":{}}"#),
            Look::Other
        );
        assert_eq!(answers_one(r#"{"jsonrpc":"2.0","result":{}}"#), Look::Other);
        assert_eq!(
            answers(br#"{"jsonrpc":"2.0","id":2,"result":{}}"#, None),
            Look::Response
        );
        // A notification with an error early and its method late, whole or cut.
        let late_method = format!(
            r#"{{"jsonrpc":"2.0","params":{{"level":"error","data":"{}"}},"method":"notifications/message"}}"#,
            "x".repeat(600)
        );
        assert_eq!(answers_one(&late_method), Look::Other);
        assert_eq!(answers_one(&late_method[..512]), Look::Other);
        // No response: a null error, another jsonrpc, a method first.
        assert_eq!(
            answers_one(r#"{"jsonrpc":"2.0","id":1,"error":null}"#),
            Look::Other
        );
        assert_eq!(
            answers_one(r#"{"jsonrpc":"1.0","id":1,"result":{}}"#),
            Look::Other
        );
        assert_eq!(
            answers_one(r#"{"jsonrpc":"2.0","id":1,"method":"x","result":{}}"#),
            Look::Other
        );
        assert_eq!(
            answers_one(r#"{"jsonrpc":"2.0","id":1,"result":{}"#),
            Look::Response
        );
        // Cut before the id (or jsonrpc) that follows the result, or in
        // the result or the error that comes first.
        assert_eq!(
            answers_one(r#"{"result":{"content":[]},"jsonrpc":"2.0","i"#),
            Look::Unsure
        );
        assert_eq!(answers_one(r#"{"result":{"content":[{"te"#), Look::Unsure);
        assert_eq!(
            answers_one(r#"{"error":{"code":-32601,"message":"no such"#),
            Look::Unsure
        );
        assert_eq!(
            answers_one(r#"{"result":{"content":[]},"id":1,"js"#),
            Look::Unsure
        );
        assert_eq!(answers_one(r#"{"result":{},"id":1}"#), Look::Other);
    }

    #[test]
    fn numeric_ids_are_the_same_by_value() {
        let one = json!(1);
        for echoed in ["1", "1.0", "1e0", "10e-1"] {
            let echoed: Value = serde_json::from_str(echoed).unwrap();
            assert!(same_id(&one, &echoed), "{echoed}");
            assert!(same_id(&echoed, &one), "{echoed}");
        }
        // A JavaScript server echoes an integer past 2^53 as its double.
        let big: Value = serde_json::from_str("9007199254740993").unwrap();
        let echoed: Value = serde_json::from_str("9007199254740992").unwrap();
        assert!(same_id(&big, &echoed));
        assert!(same_id(&json!(-3), &json!(-3.0)));
        assert!(!same_id(&one, &json!(2)));
        assert!(!same_id(&one, &json!("1")));
        assert!(!same_id(&json!(null), &json!(0)));
        assert!(same_id(&json!("a"), &json!("a")));
        let answer = br#"{"jsonrpc":"2.0","id":1.0,"result":{}}"#;
        assert_eq!(answers(answer, Some(&one)), Look::Response);
    }

    /// Asserts whether `event` plainly answers `request`; if it does, the
    /// parse of their first members must agree.
    fn assert_plain(event: &[u8], request: &[u8], plain: bool) {
        let both = || {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            format!("{} to {}", text(event), text(request))
        };
        assert_eq!(plainly_answers(event, request), plain, "{}", both());
        if plain {
            let id = top_level_id(request);
            assert_eq!(answers(event, id.as_ref()), Look::Response, "{}", both());
        }
    }

    #[test]
    fn a_plain_answer_is_told_by_its_bytes() {
        let request = br#"{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{}}"#;
        let text = br#"{"jsonrpc":"2.0","id":"a,b","method":"tools/call"}"#;
        for (event, request, plain) in [
            (
                &br#"{"jsonrpc":"2.0","id":12,"result":{"content":[]}}"#[..],
                &request[..],
                true,
            ),
            (
                br#"{"jsonrpc":"2.0","id":12,"error":{"code":-1}}"#,
                request,
                true,
            ),
            (br#"{"jsonrpc":"2.0","id":"a,b","result":{}}"#, text, true),
            // Another id, one that only starts the same, another member.
            (br#"{"jsonrpc":"2.0","id":1,"result":{}}"#, request, false),
            (br#"{"jsonrpc":"2.0","id":123,"result":{}}"#, request, false),
            (
                br#"{"jsonrpc":"2.0","id":12,"method":"x","result":{}}"#,
                request,
                false,
            ),
            (br#"{"jsonrpc":"2.0","id":12,"error":null}"#, request, false),
            // Not written plainly: for the parse to tell.
            (br#"{"result":{},"jsonrpc":"2.0","id":12}"#, request, false),
            (
                br#"{"jsonrpc":"2.0","id":12.0,"result":{}}"#,
                request,
                false,
            ),
            (
                br#"{"jsonrpc":"2.0","id":"a\"b","result":{}}"#,
                br#"{"jsonrpc":"2.0","id":"a\"b","method":"x"}"#,
                false,
            ),
            (
                br#"{"jsonrpc":"2.0","id":null,"result":{}}"#,
                br#"{"jsonrpc":"2.0","id":null,"method":"x"}"#,
                false,
            ),
        ] {
            assert_plain(event, request, plain);
        }
    }

    #[test]
    fn a_request_written_as_the_typescript_sdk_writes_it_is_plain_too() {
        let answer = br#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#;
        let text_answer = br#"{"jsonrpc":"2.0","id":"r-1","result":{}}"#;
        for (event, request, plain) in [
            (
                &answer[..],
                &br#"{"method":"tools/call","params":{"name":"add"},"jsonrpc":"2.0","id":3}"#[..],
                true,
            ),
            (
                answer,
                b"{\"method\":\"x\",\"params\":{},\"jsonrpc\":\"2.0\",\"id\":3}\n",
                true,
            ),
            (
                text_answer,
                br#"{"method":"x","jsonrpc":"2.0","id":"r-1"}"#,
                true,
            ),
            // Another id, one that only ends the same, a nested one.
            (answer, br#"{"method":"x","jsonrpc":"2.0","id":13}"#, false),
            (answer, br#"{"method":"x","jsonrpc":"2.0","id":4}"#, false),
            (
                answer,
                br#"{"method":"x","params":{"jsonrpc":"2.0","id":3}}"#,
                false,
            ),
            (
                text_answer,
                br#"{"method":"x","jsonrpc":"2.0","id":"r-\"1"}"#,
                false,
            ),
            (answer, br#"{"method":"x","params":{"id":3}}"#, false),
        ] {
            assert_plain(event, request, plain);
        }
    }

    #[test]
    fn a_request_id_is_read_from_the_top_level() {
        assert_eq!(
            top_level_id(br#"{"method":"tools/call","params":{"id":2},"jsonrpc":"2.0","id":"a"}"#),
            Some(json!("a"))
        );
        assert_eq!(
            top_level_id(br#"{"jsonrpc":"2.0","id":7,"method":"x""#),
            Some(json!(7))
        );
        assert_eq!(top_level_id(br#"{"jsonrpc":"2.0","method":"x"}"#), None);
        assert_eq!(top_level_id(br#"[{"id":1}]"#), None);
    }
}
