//! Cross-service propagation: the headers that let a service you call join
//! the caller's run, as the Trodo Python SDK's middleware does.

use http::{HeaderMap, HeaderName, HeaderValue};
use uuid::Uuid;

/// The header that carries the caller's run id.
pub const RUN_ID_HEADER: &str = "x-trodo-run-id";
/// The header that carries the caller's span id, the parent of the callee's spans.
pub const PARENT_SPAN_ID_HEADER: &str = "x-trodo-parent-span-id";

// The names above, parsed once.
const RUN_ID: HeaderName = HeaderName::from_static(RUN_ID_HEADER);
const PARENT_SPAN_ID: HeaderName = HeaderName::from_static(PARENT_SPAN_ID_HEADER);

/// The propagation headers for a span of a run.
pub(crate) fn headers(run_id: Option<Uuid>, span_id: Uuid) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(run_id) = run_id {
        headers.insert(RUN_ID, uuid_value(run_id));
        headers.insert(PARENT_SPAN_ID, uuid_value(span_id));
    }
    headers
}

fn uuid_value(id: Uuid) -> HeaderValue {
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_str(&id.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The caller's run and parent span, from inbound headers.
#[cfg(test)]
fn inbound(headers: &HeaderMap) -> Option<(Uuid, Option<Uuid>)> {
    inbound_from(headers.get(RUN_ID), headers.get(PARENT_SPAN_ID))
}

/// The caller's run and parent span, from the values of the
/// [`RUN_ID_HEADER`] and [`PARENT_SPAN_ID_HEADER`] headers.
pub(crate) fn inbound_from(
    run_id: Option<&HeaderValue>,
    parent_span_id: Option<&HeaderValue>,
) -> Option<(Uuid, Option<Uuid>)> {
    let id = |value: Option<&HeaderValue>| {
        value
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Uuid::parse_str(v.trim()).ok())
    };
    Some((id(run_id)?, id(parent_span_id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let (run, span) = (Uuid::new_v4(), Uuid::new_v4());
        let sent = headers(Some(run), span);
        assert_eq!(sent[RUN_ID_HEADER], run.to_string().as_str());
        assert_eq!(inbound(&sent), Some((run, Some(span))));
        assert!(headers(None, span).is_empty());
        let mut bogus = HeaderMap::new();
        bogus.insert(RUN_ID_HEADER, HeaderValue::from_static("not-a-uuid"));
        assert_eq!(inbound(&bogus), None);
    }
}
