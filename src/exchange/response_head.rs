//! What the layer keeps of a response head: enough to decide what the
//! exchange means for its run, then or later (see [`crate::backlog`]).

use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use std::sync::Arc;

use super::head::session_id_of;
use crate::route_kind::RouteSpanKind;
use crate::span_kind::SpanKind;

/// A response head, as far as the layer reads it. Cheap to take: the
/// header values are shared, not copied.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) content_type: Option<HeaderValue>,
    /// The session header, which the answer to `initialize` sets; read
    /// only for an exchange read live, as taking it may cost an allocation
    /// (a taped one is never `initialize`, and its answer names no other
    /// session: see [`Exchange::tapes`](super::Exchange::tapes)).
    session: Option<HeaderValue>,
    /// The kind a [`SpanKindLayer`](crate::SpanKindLayer) put on the response.
    pub(crate) route_kind: Option<SpanKind>,
}

impl ResponseHead {
    /// What `response` says, but for its session id.
    pub(crate) fn of<B>(response: &Response<B>) -> Self {
        Self {
            status: response.status(),
            content_type: response.headers().get(header::CONTENT_TYPE).cloned(),
            session: None,
            route_kind: response.extensions().get::<RouteSpanKind>().map(|k| k.0),
        }
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

    /// Whether the body is an event stream.
    pub(crate) fn is_event_stream(&self) -> bool {
        self.content_type_starts_with("text/event-stream")
    }

    /// Whether the body is JSON.
    pub(crate) fn is_json(&self) -> bool {
        self.content_type_starts_with("application/json")
    }

    fn content_type_starts_with(&self, prefix: &str) -> bool {
        self.content_type
            .as_ref()
            .is_some_and(|value| value.as_bytes().starts_with(prefix.as_bytes()))
    }
}
