//! Writing a JSON object field by field, with strings escaped many bytes
//! at a time.
//!
//! A span's `input` and `output` are JSON-RPC messages kept as text, so
//! every `"` in them is escaped in the span's JSON. serde_json escapes a
//! string byte by byte, which was most of the time the delivery thread
//! spent writing a span; [`json_escape_simd`] finds the bytes to escape a
//! vector register at a time. serde_json's escaping cannot be swapped out
//! (its `Formatter` sees only the runs between escapes), so the span's
//! object is written here, and serde_json writes the values that are not
//! strings.

use serde::Serialize;
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

    /// Writes `key` and the colon.
    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        write_json_string(key, self.out);
        self.out.push(b':');
        self.out
    }

    /// A string member.
    pub(crate) fn text(&mut self, key: &str, text: &str) {
        write_json_string(text, self.key(key));
    }

    /// A string member, if there is a string.
    pub(crate) fn optional_text(&mut self, key: &str, text: Option<&str>) {
        if let Some(text) = text {
            self.text(key, text);
        }
    }

    /// A UUID member, hyphenated, as its `Serialize` writes it.
    pub(crate) fn uuid(&mut self, key: &str, id: Uuid) {
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
    pub(crate) fn with(&mut self, key: &str, write: impl FnOnce(&mut Vec<u8>)) {
        write(self.key(key));
    }

    /// A member serde_json writes.
    pub(crate) fn value(&mut self, key: &str, value: &impl Serialize) {
        // Our wire types hold only strings, numbers and string-keyed maps:
        // serializing them cannot fail.
        let _ = serde_json::to_writer(&mut *self.key(key), value);
    }

    /// A member serde_json writes, if there is a value.
    pub(crate) fn optional_value(&mut self, key: &str, value: Option<&impl Serialize>) {
        if let Some(value) = value {
            self.value(key, value);
        }
    }

    /// Closes the object.
    pub(crate) fn end(self) {
        self.out.push(b'}');
    }
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
        object.value("map", &serde_json::json!({"k": [1, null]}));
        object.with("raw", |out| out.extend_from_slice(b"[]"));
        object.text("\n", "");
        object.end();
        out.push(b',');
        JsonObject::new(&mut out).end();
        out.push(b']');
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"[{"id":"01234567-89ab-cdef-0123-456789abcdef","name":"a \"b\"","cost":0.25,"map":{"k":[1,null]},"raw":[],"\n":""},{}]"#
        );
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
