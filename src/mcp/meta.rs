//! `_meta` of a JSON-RPC message, as far as the layer reads it.
//!
//! MCP 2026-07-28 clients put their protocol version, capabilities and
//! identity in every request's `params._meta`, and vendors put conversation
//! ids there. Building the whole object as `serde_json` values (and
//! cloning the identity out of it) cost about twice what parsing the rest
//! of a `tools/call` request did; this reads each member once and keeps
//! only what the layer asks for.

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

use super::envelope::Implementation;
use super::member::Member;

/// The `_meta` key that carries the protocol version in MCP 2026-07-28 requests.
pub(crate) const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// The `_meta` key that carries the client's identity in MCP 2026-07-28 requests.
pub(crate) const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
/// The `_meta` key that carries the server's identity in MCP 2026-07-28 results.
pub(crate) const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// The most members of a `_meta` kept as text (a client sends a handful).
pub(crate) const MAX_META_TEXTS: usize = 64;

/// `params._meta` or `result._meta`: the identities and protocol version
/// MCP 2026-07-28 puts there, and every other member whose value is a
/// non-empty string or a number (a conversation id, perhaps), as text.
/// Other values are skipped without being built. Of a key given twice,
/// the last counts. At most [`MAX_META_TEXTS`] such members are kept (the
/// first ones), so that a hostile `_meta` of many members costs time and
/// memory in proportion to its size.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Meta {
    /// Whether the protocol version is there, whatever its value.
    has_protocol_version: bool,
    /// The protocol version, if it is a string.
    protocol_version: Option<String>,
    client_info: Option<Implementation>,
    server_info: Option<Implementation>,
    /// Members whose value is a non-empty string or a number, as text.
    texts: Vec<(String, String)>,
}

impl Meta {
    /// Whether the protocol version is there: the request carries its own
    /// protocol metadata (MCP 2026-07-28).
    pub(crate) fn has_protocol_version(&self) -> bool {
        self.has_protocol_version
    }

    /// The protocol version, if it is a string.
    pub(crate) fn protocol_version(&self) -> Option<&str> {
        self.protocol_version.as_deref()
    }

    /// The client's identity, taken out.
    pub(crate) fn take_client_info(&mut self) -> Option<Implementation> {
        self.client_info.take()
    }

    /// The server's identity, taken out.
    pub(crate) fn take_server_info(&mut self) -> Option<Implementation> {
        self.server_info.take()
    }

    /// Keeps member `key` as `text`, unless [`MAX_META_TEXTS`] are kept.
    fn keep_text(&mut self, key: Cow<'_, str>, text: String) {
        if self.texts.len() < MAX_META_TEXTS {
            self.texts.push((key.into_owned(), text));
        }
    }

    /// The member `key` as text, if it is a non-empty string or a number.
    pub(crate) fn text(&self, key: &str) -> Option<&str> {
        self.texts
            .iter()
            .find(|(member, _)| member == key)
            .map(|(_, text)| text.as_str())
    }
}

impl<'de> Deserialize<'de> for Meta {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MetaVisitor)
    }
}

/// A member's name, borrowed from the message unless it has escapes: most
/// names are only compared, and a 2026-07-28 request has three of them.
#[derive(Deserialize)]
#[serde(transparent)]
struct MemberName<'a>(#[serde(borrow)] Cow<'a, str>);

struct MetaVisitor;

impl<'de> Visitor<'de> for MetaVisitor {
    type Value = Meta;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a `_meta` object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Meta, A::Error> {
        let mut meta = Meta::default();
        while let Some(MemberName(key)) = map.next_key()? {
            let member = map.next_value::<Member<'_>>()?;
            meta.texts.retain(|(text_key, _)| **text_key != *key);
            match (&*key, member) {
                (META_CLIENT_INFO, member) => meta.client_info = member.identity(),
                (META_SERVER_INFO, member) => meta.server_info = member.identity(),
                (META_PROTOCOL_VERSION, member) => {
                    meta.has_protocol_version = true;
                    meta.protocol_version = member.text().map(Cow::into_owned);
                }
                (_, Member::Text(text)) if !text.is_empty() => {
                    meta.keep_text(key, text.into_owned());
                }
                (_, Member::Number(number)) => meta.keep_text(key, number),
                _ => {}
            }
        }
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn meta(value: Value) -> Meta {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_identities_and_the_protocol_version_are_read() {
        let mut read = meta(json!({
            META_PROTOCOL_VERSION: "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"roots": {"listChanged": true}},
            META_CLIENT_INFO: {"name": "mcp", "version": "0.1.0", "title": "MCP"},
            META_SERVER_INFO: {"name": "rmcp"},
        }));
        assert!(read.has_protocol_version());
        assert_eq!(read.protocol_version(), Some("2026-07-28"));
        assert_eq!(
            read.take_client_info(),
            Some(Implementation {
                name: "mcp".into(),
                version: Some("0.1.0".into())
            })
        );
        assert_eq!(read.take_server_info().unwrap().name, "rmcp");
        assert_eq!(
            read.text("io.modelcontextprotocol/clientCapabilities"),
            None
        );
    }

    #[test]
    fn members_are_text_when_they_are_non_empty_strings_or_numbers() {
        let read = meta(json!({
            "a": "conv-1", "b": 7, "c": -3, "d": 2.5, "e": "", "f": true,
            "g": null, "h": [1, {"x": 2}], "i": {"y": [3]},
        }));
        let texts: Vec<_> = ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
            .map(|key| read.text(key))
            .to_vec();
        assert_eq!(
            texts,
            [
                Some("conv-1"),
                Some("7"),
                Some("-3"),
                Some("2.5"),
                None,
                None,
                None,
                None,
                None
            ]
        );
        // A number is written as serde_json writes it.
        assert_eq!(read.text("d"), Some(&*json!(2.5).to_string()));
    }

    #[test]
    fn a_member_name_with_escapes_is_read_as_its_text() {
        let mut read: Meta = serde_json::from_str(
            r#"{"io.modelcontextprotocol\/clientInfo":{"name":"mcp"},
                "io.modelcontextprotocol/protocolVersion":"2026-07-28",
                "conversation\u005fid":"conv-1"}"#,
        )
        .unwrap();
        assert_eq!(read.take_client_info().map(|c| c.name), Some("mcp".into()));
        assert_eq!(read.protocol_version(), Some("2026-07-28"));
        assert_eq!(read.text("conversation_id"), Some("conv-1"));
    }

    #[test]
    fn a_malformed_identity_or_version_is_none_and_the_last_of_a_key_counts() {
        let read: Meta = serde_json::from_str(
            r#"{"io.modelcontextprotocol/clientInfo":{"version":"1"},
                "io.modelcontextprotocol/protocolVersion":7,
                "k":"first","k":{"nested":true},"m":{"x":1},"m":"last"}"#,
        )
        .unwrap();
        assert_eq!(read.client_info, None);
        assert!(read.has_protocol_version(), "present, if not a string");
        assert_eq!(read.protocol_version(), None);
        assert_eq!(read.text("k"), None);
        assert_eq!(read.text("m"), Some("last"));
    }

    #[test]
    fn a_wide_meta_keeps_only_its_first_texts() {
        let mut text = String::from(r#"{"k00000":"first""#);
        for i in 1..20_000 {
            text.push_str(&format!(r#","k{i:05}":{i}"#));
        }
        text.push_str(r#","k00000":"last"}"#);
        // Every member was compared with every text kept before it.
        let read: Meta = serde_json::from_str(&text).unwrap();
        assert_eq!(read.texts.len(), MAX_META_TEXTS);
        assert_eq!(read.text("k00000"), Some("last"), "a kept key's last value");
        assert_eq!(read.text("k00063"), Some("63"));
        assert_eq!(read.text("k00064"), None, "past the cap");
    }
}
