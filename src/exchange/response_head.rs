//! What the layer keeps of a response head: enough to decide what the
//! exchange means for its run, then or later (see [`crate::backlog`]).

use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use std::sync::Arc;

use super::encoding::is_encoded;
use super::head::session_id_of;
use crate::route_kind::RouteSpanKind;
use crate::span_kind::SpanKind;

/// A response head, as far as the layer reads it. Cheap to take: the
/// content type is read into [`BodyType`], the session header shared.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    body_type: BodyType,
    /// The `content-encoding`, if the body is encoded (not `identity`).
    encoding: Option<HeaderValue>,
    /// The session header, which the answer to `initialize` sets; read
    /// only for an exchange read live, as taking it may cost an allocation
    /// (a taped one is never `initialize`, and its answer names no other
    /// session: see [`Exchange::tapes`](super::Exchange::tapes)).
    session: Option<HeaderValue>,
    /// The kind a [`SpanKindLayer`](crate::SpanKindLayer) put on the response.
    pub(crate) route_kind: Option<SpanKind>,
    /// How many body bytes the head promises (`content-length`; none for
    /// a 204 or 304, or the answer to a HEAD request), if it says.
    pub(crate) declared_len: Option<u64>,
}

/// What the `content-type` of a response says its body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyType {
    EventStream,
    Json,
    Other,
}

impl BodyType {
    /// Read, not kept: a clone of a header value made from a `&str` (as
    /// rmcp's are) would allocate to share it.
    fn of(content_type: Option<&HeaderValue>) -> Self {
        let Some(value) = content_type else {
            return Self::Other;
        };
        // The media type, before any parameters; case does not count.
        let value = value.as_bytes();
        let media_type = value
            .split(|&b| b == b';')
            .next()
            .unwrap_or(value)
            .trim_ascii();
        if media_type.eq_ignore_ascii_case(b"text/event-stream") {
            Self::EventStream
        } else if media_type.eq_ignore_ascii_case(b"application/json") {
            Self::Json
        } else {
            Self::Other
        }
    }
}

impl ResponseHead {
    /// What `response` says, but for its session id.
    pub(crate) fn of<B>(response: &Response<B>) -> Self {
        let headers = response.headers();
        Self {
            status: response.status(),
            body_type: BodyType::of(headers.get(header::CONTENT_TYPE)),
            encoding: headers
                .get_all(header::CONTENT_ENCODING)
                .iter()
                .find(|value| is_encoded(value))
                .cloned(),
            session: None,
            route_kind: response.extensions().get::<RouteSpanKind>().map(|k| k.0),
            declared_len: declared_len(response),
        }
    }

    /// The head of the answer to a HEAD request, whose body is never sent.
    pub(crate) fn for_head_request(mut self) -> Self {
        self.declared_len = Some(0);
        self
    }

    /// Adds the session id `response` gives under `session_header`.
    pub(crate) fn with_session<B>(
        mut self,
        response: &Response<B>,
        session_header: &HeaderName,
    ) -> Self {
        self.session = response.headers().get(session_header).cloned();
        self
    }

    /// The session id the response gives, if it is one MCP allows.
    pub(crate) fn session_id(&self) -> Option<Arc<str>> {
        session_id_of(self.session.as_ref()?)
    }

    /// Whether the body is an event stream the layer can read (not encoded).
    pub(crate) fn is_event_stream(&self) -> bool {
        self.body_type == BodyType::EventStream && self.encoding.is_none()
    }

    /// Whether the body is JSON the layer can read (not encoded).
    pub(crate) fn is_json(&self) -> bool {
        self.body_type == BodyType::Json && self.encoding.is_none()
    }

    /// The body's `content-encoding`, if it is encoded: the layer does not
    /// decode it, so it keeps none of it.
    pub(crate) fn encoding(&self) -> Option<&HeaderValue> {
        self.encoding.as_ref()
    }
}

/// How many body bytes `response` promises: none for a status that has
/// no body, else its `content-length`, if valid.
pub(crate) fn declared_len<B>(response: &Response<B>) -> Option<u64> {
    let status = response.status();
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Some(0);
    }
    response
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(content_type: &str) -> ResponseHead {
        let response = Response::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(())
            .unwrap();
        ResponseHead::of(&response)
    }

    #[test]
    fn the_declared_length_is_the_content_length_or_none_for_bodiless_statuses() {
        let with = |status: u16, length: Option<&str>| {
            let mut response = Response::builder().status(status);
            if let Some(length) = length {
                response = response.header(header::CONTENT_LENGTH, length);
            }
            ResponseHead::of(&response.body(()).unwrap()).declared_len
        };
        assert_eq!(with(200, Some("11")), Some(11));
        assert_eq!(with(200, None), None);
        assert_eq!(with(200, Some("eleven")), None);
        assert_eq!(with(204, None), Some(0));
        assert_eq!(with(304, Some("11")), Some(0));
        let head = ResponseHead::of(&Response::builder().body(()).unwrap());
        assert_eq!(head.for_head_request().declared_len, Some(0));
    }

    #[test]
    fn the_first_encoding_of_several_header_lines_counts() {
        let response = Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_ENCODING, "identity")
            .header(header::CONTENT_ENCODING, "gzip")
            .body(())
            .unwrap();
        let head = ResponseHead::of(&response);
        assert_eq!(
            head.encoding().map(HeaderValue::as_bytes),
            Some(&b"gzip"[..])
        );
        assert!(!head.is_json());
    }

    #[test]
    fn the_media_type_counts_whatever_its_case_and_parameters() {
        for json in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
            " application/json ",
        ] {
            assert!(head_of(json).is_json(), "{json}");
        }
        for stream in ["text/event-stream", "Text/Event-Stream; charset=utf-8"] {
            assert!(head_of(stream).is_event_stream(), "{stream}");
        }
        for other in [
            "application/jsonl",
            "application/json-seq",
            "text/plain",
            "text/event-streams",
        ] {
            let head = head_of(other);
            assert!(!head.is_json() && !head.is_event_stream(), "{other}");
        }
    }

    #[test]
    fn an_encoded_body_is_neither_json_nor_an_event_stream_to_the_layer() {
        let cases = [
            (None, false),
            (Some(""), false),
            (Some("identity"), false),
            (Some(" Identity "), false),
            (Some("gzip"), true),
            (Some("br"), true),
            (Some("gzip, identity"), true),
        ];
        for content_type in ["application/json", "text/event-stream"] {
            for (encoding, encoded) in cases {
                let mut response = Response::builder().header(header::CONTENT_TYPE, content_type);
                if let Some(encoding) = encoding {
                    response = response.header(header::CONTENT_ENCODING, encoding);
                }
                let head = ResponseHead::of(&response.body(()).unwrap());
                let case = format!("{content_type} {encoding:?}");
                assert_eq!(head.encoding().is_some(), encoded, "{case}");
                assert_eq!(
                    head.encoding().map(HeaderValue::as_bytes),
                    encoding.filter(|_| encoded).map(str::as_bytes),
                    "{case}"
                );
                let readable = !encoded;
                assert_eq!(
                    head.is_json(),
                    readable && content_type == "application/json",
                    "{case}"
                );
                assert_eq!(
                    head.is_event_stream(),
                    readable && content_type == "text/event-stream",
                    "{case}"
                );
            }
        }
    }
}
