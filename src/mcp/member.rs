//! One member of a JSON-RPC message, read leniently.
//!
//! The layer only describes what it reads: the bytes go to the inner
//! service untouched, and the server decides whether they are valid. So a
//! member the layer reads (a client's identity, a protocol version, a tool
//! result's `isError`, an error's `code`) that has a shape it does not
//! expect is taken as absent, never as a reason to drop the whole message:
//! an `initialize` whose `clientInfo.version` is a number still opens its
//! run, and a `result` that is `null` is still an answer. Only JSON that
//! does not parse, is not JSON-RPC 2.0, or gives a member the layer reads
//! twice in one object (serde's derived structs refuse that; in `_meta`
//! and in an identity the last one counts) makes a message unreadable.

use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use super::envelope::Implementation;

/// A JSON value, as far as the layer reads it: a string (borrowed from the
/// message unless it has escapes), a number (written as `serde_json`
/// writes it), a boolean, null, an object read as an identity (see
/// [`Member::identity`]), or anything else. Nothing else is built.
pub(crate) enum Member<'a> {
    Text(Cow<'a, str>),
    Number(String),
    Bool(bool),
    Null,
    /// An object: its identity, if it has a string `name`.
    Object(Option<Implementation>),
    Other,
}

impl<'a> Member<'a> {
    /// The identity an object gives (`clientInfo`, `serverInfo`): its
    /// `name`, which must be a string, and its `version`, if it is a
    /// string or a number (as text).
    pub(crate) fn identity(self) -> Option<Implementation> {
        match self {
            Self::Object(identity) => identity,
            _ => None,
        }
    }

    /// The text of a string.
    pub(crate) fn text(self) -> Option<Cow<'a, str>> {
        match self {
            Self::Text(text) => Some(text),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Member<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MemberVisitor)
    }
}

struct MemberVisitor;

impl<'de> Visitor<'de> for MemberVisitor {
    type Value = Member<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Member::Text(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Member::Text(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Member::Text(Cow::Owned(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Member::Number(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Member::Number(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(
            serde_json::Number::from_f64(v)
                .map_or(Member::Other, |n| Member::Number(n.to_string())),
        )
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Member::Bool(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Member::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Member::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Member::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut name, mut version) = (None, None);
        while let Some(field) = map.next_key::<IdentityField>()? {
            match field {
                IdentityField::Name => name = map.next_value::<Member<'_>>()?.text(),
                IdentityField::Version => {
                    version = match map.next_value::<Member<'_>>()? {
                        Member::Text(text) => Some(text.into_owned()),
                        Member::Number(number) => Some(number),
                        _ => None,
                    }
                }
                IdentityField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Member::Object(name.map(|name| Implementation {
            name: name.into_owned(),
            version,
        })))
    }
}

/// A key of an object read as an identity, told without copying it.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum IdentityField {
    Name,
    Version,
    #[serde(other)]
    Other,
}

/// A member that should be an object of type `T` (or, read with
/// [`list`], a list): `Null`, or `Other` for any other value (skipped, not
/// built).
pub(crate) enum Shape<T> {
    Expected(T),
    Null,
    Other,
}

impl<T> Shape<T> {
    /// The value, if it has the expected shape.
    pub(crate) fn expected(self) -> Option<T> {
        match self {
            Self::Expected(value) => Some(value),
            Self::Null | Self::Other => None,
        }
    }
}

impl<T: Default> Shape<T> {
    /// The value; the default for any other value but null.
    pub(crate) fn unless_null(self) -> Option<T> {
        match self {
            Self::Expected(value) => Some(value),
            Self::Null => None,
            Self::Other => Some(T::default()),
        }
    }
}

/// An object read as `T`.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Shape<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShapeVisitor {
            list: false,
            read: PhantomData,
        })
    }
}

/// Reads a [`Shape`]: `T` from an object, or from a list if `list` is set.
struct ShapeVisitor<T> {
    list: bool,
    read: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for ShapeVisitor<T> {
    type Value = Shape<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        if self.list {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(Shape::Other);
        }
        T::deserialize(MapAccessDeserializer::new(map)).map(Shape::Expected)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        if self.list {
            return T::deserialize(SeqAccessDeserializer::new(seq)).map(Shape::Expected);
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Shape::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Shape::Null)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
}

/// `deserialize_with`: a member that should be a list, read as `T` from its
/// items; `None` for null or any other value (skipped, not built).
pub(crate) fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    let list = ShapeVisitor {
        list: true,
        read: PhantomData,
    };
    d.deserialize_any(list).map(Shape::expected)
}

/// `deserialize_with`: a member that is there, whatever its value: `null`
/// is `Some` too (serde reads it as a missing member's `None`).
pub(crate) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `deserialize_with`: a string member's text, borrowed where it can be;
/// `None` for any other value.
pub(crate) fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Member::deserialize(d).map(Member::text)
}

/// `deserialize_with`: an identity member (see [`Member::identity`]).
pub(crate) fn identity<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Implementation>, D::Error> {
    Member::deserialize(d).map(Member::identity)
}

/// `deserialize_with`: a boolean member; `None` for any other value.
pub(crate) fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match Member::deserialize(d)? {
        Member::Bool(flag) => Some(flag),
        _ => None,
    })
}

/// `deserialize_with`: an integer member; `None` for any other value.
pub(crate) fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match Member::deserialize(d)? {
        Member::Number(number) => number.parse().ok(),
        _ => None,
    })
}

/// `deserialize_with`: `None` for null, `Some(Some(text))` for a string,
/// `Some(None)` for anything else (not built).
pub(crate) fn string_or_other<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Ok(match Member::deserialize(d)? {
        Member::Text(text) => Some(Some(text.into_owned())),
        Member::Null => None,
        _ => Some(None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identity_of(value: serde_json::Value) -> Option<Implementation> {
        let text = value.to_string();
        serde_json::from_str::<Member<'_>>(&text)
            .unwrap()
            .identity()
    }

    fn named(name: &str, version: Option<&str>) -> Option<Implementation> {
        Some(Implementation {
            name: name.to_owned(),
            version: version.map(str::to_owned),
        })
    }

    #[test]
    fn an_identity_needs_a_string_name_and_keeps_a_version_that_is_text_or_a_number() {
        let cases = [
            (
                json!({"name": "mcp", "version": "1.2.0"}),
                named("mcp", Some("1.2.0")),
            ),
            (json!({"name": "mcp"}), named("mcp", None)),
            (json!({"name": "mcp", "version": null}), named("mcp", None)),
            (
                json!({"name": "mcp", "version": 2}),
                named("mcp", Some("2")),
            ),
            (
                json!({"name": "mcp", "version": 1.5}),
                named("mcp", Some("1.5")),
            ),
            (
                json!({"name": "mcp", "version": {"major": 1}}),
                named("mcp", None),
            ),
            (
                json!({"name": "mcp", "version": [1, 2]}),
                named("mcp", None),
            ),
            (
                json!({"name": "mcp", "icons": [{"src": "x"}], "title": "T"}),
                named("mcp", None),
            ),
            (json!({"name": 7, "version": "1"}), None),
            (json!({"name": null}), None),
            (json!({"version": "1"}), None),
            (json!("mcp"), None),
            (json!(null), None),
            (json!([{"name": "mcp"}]), None),
        ];
        for (case, expected) in cases {
            assert_eq!(identity_of(case.clone()), expected, "{case}");
        }
    }

    #[test]
    fn a_string_is_borrowed_unless_it_has_escapes() {
        let plain = r#""2025-11-25""#;
        let escaped = r#""2025\u002d11""#;
        assert!(matches!(
            serde_json::from_str::<Member<'_>>(plain).unwrap(),
            Member::Text(Cow::Borrowed("2025-11-25"))
        ));
        assert!(matches!(
            serde_json::from_str::<Member<'_>>(escaped).unwrap().text(),
            Some(Cow::Owned(text)) if text == "2025-11"
        ));
    }

    #[test]
    fn a_shape_tells_an_object_from_null_and_from_any_other_value() {
        #[derive(Deserialize, Default, Debug, PartialEq)]
        struct Pair {
            #[serde(default)]
            a: i64,
        }
        let read = |text: &str| serde_json::from_str::<Shape<Pair>>(text).unwrap();
        assert_eq!(read(r#"{"a":3}"#).expected(), Some(Pair { a: 3 }));
        assert_eq!(read(r#"{"a":3}"#).unless_null(), Some(Pair { a: 3 }));
        assert_eq!(read("null").unless_null(), None);
        for other in [r#"[{"a":3}]"#, r#""a""#, "true", "-1", "7", "2.5"] {
            assert_eq!(read(other).expected(), None, "{other}");
            assert_eq!(read(other).unless_null(), Some(Pair::default()), "{other}");
        }
        // A value that is not JSON still fails.
        assert!(serde_json::from_str::<Shape<Pair>>("{").is_err());
    }

    #[test]
    fn a_list_member_is_read_from_a_list_and_any_other_value_is_absent() {
        #[derive(Deserialize)]
        struct Holder {
            #[serde(default, deserialize_with = "list")]
            items: Option<Vec<i64>>,
        }
        let read = |text: &str| serde_json::from_str::<Holder>(text).unwrap().items;
        assert_eq!(read(r#"{"items":[1,2]}"#), Some(vec![1, 2]));
        assert_eq!(read(r#"{"items":[]}"#), Some(vec![]));
        assert_eq!(read(r#"{}"#), None);
        for other in ["null", r#"{"a":[1]}"#, r#""a""#, "true", "-1", "7", "2.5"] {
            assert_eq!(read(&format!(r#"{{"items":{other}}}"#)), None, "{other}");
        }
        // A list whose items are not `T` still fails.
        assert!(serde_json::from_str::<Holder>(r#"{"items":["x"]}"#).is_err());
    }
}
