//! Writing a JSON object field by field, with strings escaped many bytes
//! at a time.
//!
//! A span's `input` and `output` are JSON-RPC messages kept as text, so
//! every `"` in them is escaped in the span's JSON. serde_json escapes a
//! string byte by byte, which was most of the time the delivery thread
//! spent writing a span; [`json_escape_simd`] finds the bytes to escape a
//! vector register at a time. serde_json's escaping cannot be swapped out
//! (its `Formatter` sees only the runs between escapes), so the span's
//! object is written here. The layer's own member names need no escaping
//! and are copied as they are; integers, booleans and null are written
//! directly, and serde_json writes only the rest (floats, arrays, objects).

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// The most bytes escaped in one go. The escaper reserves room for the
/// worst case (six output bytes per input byte) before it writes, so a
/// long text is escaped in pieces: the room it reserves past what it
/// writes stays small whatever the capture limit.
const PIECE_BYTES: usize = 4 * 1024;

/// A JSON object being appended to a buffer; [`JsonObject::end`] closes it.
pub(crate) struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> JsonObject<'a> {
    /// Opens an object at the end of `out`.
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    /// Writes the name of one of the layer's own members and the colon,
    /// as it is: a name the layer writes needs no escaping (see
    /// [`is_plain`]), so it is copied rather than escaped.
    pub(crate) fn key(&mut self, key: &'static str) -> &mut Vec<u8> {
        debug_assert!(is_plain(key), "{key:?} needs escaping");
        self.separate();
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    /// Writes any name, escaped, and the colon.
    pub(crate) fn escaped_key(&mut self, key: &str) -> &mut Vec<u8> {
        self.separate();
        write_json_string(key, self.out);
        self.out.push(b':');
        self.out
    }

    /// The comma before every member but the first.
    fn separate(&mut self) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
    }

    /// A string member.
    pub(crate) fn text(&mut self, key: &'static str, text: &str) {
        write_json_string(text, self.key(key));
    }

    /// A string member, if there is a string.
    pub(crate) fn optional_text(&mut self, key: &'static str, text: Option<&str>) {
        if let Some(text) = text {
            self.text(key, text);
        }
    }

    /// An integer member.
    pub(crate) fn integer(&mut self, key: &'static str, number: u64) {
        write_integer(number, self.key(key));
    }

    /// An integer member, if there is one.
    pub(crate) fn optional_integer(&mut self, key: &'static str, number: Option<u64>) {
        if let Some(number) = number {
            self.integer(key, number);
        }
    }

    /// A UUID member, hyphenated, as its `Serialize` writes it.
    pub(crate) fn uuid(&mut self, key: &'static str, id: Uuid) {
        let out = self.key(key);
        out.push(b'"');
        out.extend_from_slice(
            id.hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        );
        out.push(b'"');
    }

    /// A member whose value `write` appends.
    pub(crate) fn with(&mut self, key: &'static str, write: impl FnOnce(&mut Vec<u8>)) {
        write(self.key(key));
    }

    /// A member serde_json writes, if there is a value.
    pub(crate) fn optional_value(&mut self, key: &'static str, value: Option<&impl Serialize>) {
        if let Some(value) = value {
            write_serialized(value, self.key(key));
        }
    }

    /// Closes the object.
    pub(crate) fn end(self) {
        self.out.push(b'}');
    }
}

/// Whether `key` is written the same escaped or not: no `"`, no `\`, no
/// control character.
fn is_plain(key: &str) -> bool {
    !key.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

/// Appends `value` to `out` as serde_json would write it.
pub(crate) fn write_json_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::String(text) => write_json_string(text, out),
        Value::Number(number) => match (number.as_u64(), number.as_i64()) {
            (Some(unsigned), _) => write_integer(unsigned, out),
            (None, Some(signed)) => write_integer(signed, out),
            (None, None) => write_serialized(number, out),
        },
        Value::Array(_) | Value::Object(_) => write_serialized(value, out),
    }
}

/// Appends `number` to `out`.
fn write_integer(number: impl itoa::Integer, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(number).as_bytes());
}

/// Appends `value` to `out` as serde_json writes it.
fn write_serialized(value: &impl Serialize, out: &mut Vec<u8>) {
    // Our wire types hold only strings, numbers and string-keyed maps:
    // serializing them cannot fail.
    let _ = serde_json::to_writer(out, value);
}

/// Appends `text` to `out` as a JSON string, quotes included, as
/// serde_json would write it.
pub(crate) fn write_json_string(text: &str, out: &mut Vec<u8>) {
    if text.len() <= PIECE_BYTES {
        json_escape_simd::escape_into(text, out);
        return;
    }
    out.push(b'"');
    let mut piece = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(PIECE_BYTES);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (head, tail) = rest.split_at(end);
        piece.clear();
        json_escape_simd::escape_into(head, &mut piece);
        // Without the quotes the escaper puts around each piece.
        out.extend_from_slice(&piece[1..piece.len() - 1]);
        rest = tail;
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(text: &str) -> String {
        let mut out = b"prefix ".to_vec();
        write_json_string(text, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_object_is_written_as_serde_json_writes_it() {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let mut out = b"[".to_vec();
        let mut object = JsonObject::new(&mut out);
        object.uuid("id", id);
        object.text("name", "a \"b\"");
        object.optional_text("absent", None);
        object.optional_value("cost", Some(&0.25));
        object.optional_value("tokens", None::<&u64>);
        object.integer("count", 42);
        object.optional_integer("none", None);
        object.optional_integer("size", Some(u64::MAX));
        write_json_value(&serde_json::json!({"k": [1, null]}), object.key("map"));
        object.with("raw", |out| out.extend_from_slice(b"[]"));
        write_json_string("", object.escaped_key("\n"));
        object.end();
        out.push(b',');
        JsonObject::new(&mut out).end();
        out.push(b']');
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"[{"id":"01234567-89ab-cdef-0123-456789abcdef","name":"a \"b\"","cost":0.25,"count":42,"size":18446744073709551615,"map":{"k":[1,null]},"raw":[],"\n":""},{}]"#
        );
    }

    #[test]
    fn a_value_is_written_as_serde_json_writes_it() {
        let values = serde_json::json!([
            null, true, false, 0, 7, -3, u64::MAX, i64::MIN, 1.5, -0.25, 1e300,
            "a \"b\"\n", [], [1, "x"], {}, {"k\"": {"n": [null]}}
        ]);
        for value in values.as_array().unwrap() {
            let mut out = Vec::new();
            write_json_value(value, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), value.to_string());
        }
    }

    #[test]
    fn only_a_name_without_quotes_backslashes_or_control_characters_is_plain() {
        assert!(is_plain("mcp.method.name"));
        assert!(is_plain("é ✓"));
        for name in ["a\"b", "a\\b", "a\nb", "\u{1f}"] {
            assert!(!is_plain(name), "{name:?}");
        }
    }

    #[test]
    fn a_string_is_written_as_serde_json_writes_it() {
        let every_ascii: String = (0u8..0x80).map(char::from).collect();
        let texts = [
            String::new(),
            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"a \"quoted\" \\ line\n"}]}}"#.to_owned(),
            every_ascii.clone(),
            "héllo wörld ✓ 🦀 \u{2028}\u{7f}".to_owned(),
            // Longer than a piece: pieces end on character boundaries.
            "é\"🦀\n".repeat(PIECE_BYTES),
            every_ascii.repeat(PIECE_BYTES / 64 + 3),
        ];
        for text in texts {
            let expected = format!("prefix {}", serde_json::to_string(&text).unwrap());
            assert_eq!(written(&text), expected, "{} bytes", text.len());
        }
    }

    #[test]
    fn a_piece_boundary_inside_a_character_moves_back_to_its_start() {
        // The 4-byte crab straddles the first piece's end.
        let text = format!("{}🦀{}", "a".repeat(PIECE_BYTES - 2), "b".repeat(10));
        assert!(!text.is_char_boundary(PIECE_BYTES));
        assert_eq!(written(&text), format!("prefix \"{text}\""));
    }
}
