//! The `attributes` object of a span.

use serde_json::Value;
use std::borrow::Cow;

use crate::json_writer::{JsonObject, write_json_value};

/// How many attributes the layer sets on a request's span, at most: room
/// made once, so that recording them never grows the list.
const TYPICAL: usize = 10;

/// A span's attributes: string keys, JSON values, each key once, sent as one
/// JSON object in the order they were first set.
///
/// The keys the layer sets are static strings, so the span of a request
/// allocates none of them, where a JSON map would allocate every key and
/// its tree nodes; the span is built on the request path and freed on the
/// delivery thread, so every allocation saved counts twice.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Attributes(Vec<(Cow<'static, str>, Value)>);

impl Attributes {
    /// Room for the attributes of a request's span.
    pub(crate) fn for_request() -> Self {
        Self(Vec::with_capacity(TYPICAL))
    }

    /// Sets `key` to `value`, replacing (in place) an earlier value of it.
    /// A static key is one of the layer's own and is written as it is: it
    /// must need no escaping (no `"`, no `\`, no control character).
    pub(crate) fn insert(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<Value>) {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => *old = value,
            None => self.0.push((key, value)),
        }
    }

    /// Whether none is set (the span then leaves `attributes` out).
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// About the size of their JSON, without making it (see
    /// [`Span::json_size_estimate`](crate::wire::Span::json_size_estimate)):
    /// a value set through the manual API may be of any size.
    pub(crate) fn json_size_estimate(&self) -> usize {
        self.0
            .iter()
            .map(|(key, value)| entry_size_estimate(key, value))
            .sum()
    }
}

/// A JSON string's size: quotes, and a quarter more for escapes.
fn text_size_estimate(text: &str) -> usize {
    text.len() + text.len() / 4 + 2
}

/// About the size of a JSON value.
fn value_size_estimate(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 24,
        Value::String(text) => text_size_estimate(text),
        Value::Array(items) => {
            2 + items
                .iter()
                .map(|v| value_size_estimate(v) + 1)
                .sum::<usize>()
        }
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(key, value)| entry_size_estimate(key, value))
                .sum::<usize>()
        }
    }
}

/// An object entry's size: key, colon, value, comma.
fn entry_size_estimate(key: &str, value: &Value) -> usize {
    text_size_estimate(key) + 1 + value_size_estimate(value) + 1
}

impl Attributes {
    /// Appends them to `out` as one JSON object, in the order they were set.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        let mut object = JsonObject::new(out);
        for (key, value) in &self.0 {
            let out = match key {
                Cow::Borrowed(key) => object.key(key),
                Cow::Owned(key) => object.escaped_key(key),
            };
            write_json_value(value, out);
        }
        object.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_key_is_set_once_and_serialized_as_an_object() {
        let mut attributes = Attributes::for_request();
        assert!(attributes.is_empty());
        attributes.insert("mcp.method.name", "tools/call");
        attributes.insert("http.request.body.size", 96);
        attributes.insert(String::from("custom"), json!({"nested": [1, 2]}));
        attributes.insert("http.request.body.size", 97);
        attributes.insert(String::from("a \"quoted\" key"), "a\nb");
        let mut json = Vec::new();
        attributes.write_json(&mut json);
        let json = String::from_utf8(json).unwrap();
        assert!(json.len() <= attributes.json_size_estimate(), "{json}");
        assert_eq!(
            json,
            r#"{"mcp.method.name":"tools/call","http.request.body.size":97,"custom":{"nested":[1,2]},"a \"quoted\" key":"a\nb"}"#
        );
    }
}
