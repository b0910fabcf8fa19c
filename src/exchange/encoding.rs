//! A body's `content-encoding`. The layer does not decode bodies: one it
//! sees encoded (compressed by a layer inside it, say) is passed on
//! untouched and kept out of the span, which names the encoding instead.

use http::HeaderValue;

/// Whether a `content-encoding` says the body is encoded (compressed,
/// say): anything but `identity`. The layer does not decode bodies.
pub(crate) fn is_encoded(content_encoding: &HeaderValue) -> bool {
    let name = content_encoding.as_bytes().trim_ascii();
    !name.is_empty() && !name.eq_ignore_ascii_case(b"identity")
}

/// A `content-encoding` as text, for a span's attribute.
pub(crate) fn encoding_text(content_encoding: &HeaderValue) -> String {
    String::from_utf8_lossy(content_encoding.as_bytes()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anything_but_identity_is_an_encoding() {
        for (value, encoded) in [
            ("gzip", true),
            ("br", true),
            ("gzip, identity", true),
            ("x-custom", true),
            ("identity", false),
            (" IDENTITY ", false),
            ("", false),
            ("  ", false),
        ] {
            assert_eq!(
                is_encoded(&HeaderValue::from_static(value)),
                encoded,
                "{value:?}"
            );
        }
        assert_eq!(encoding_text(&HeaderValue::from_static("gzip")), "gzip");
    }
}
