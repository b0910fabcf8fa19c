//! What the layer reads off a request head: the session id, the MCP
//! headers, the caller.

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use std::net::SocketAddr;
use std::sync::Arc;

use super::encoding::is_encoded;
use crate::api::{PARENT_SPAN_ID_HEADER, RUN_ID_HEADER};

const FORWARDED_FOR_HEADER: HeaderName = HeaderName::from_static("x-forwarded-for");
/// Longest text taken from a header that names something (`Mcp-Method`,
/// `Mcp-Name`, the caller's first `X-Forwarded-For` hop or user agent);
/// a longer one is bogus and passed over, rather than copied into the
/// span or the run key. Room for a resource's URI in `Mcp-Name`, or a
/// long user agent; a run key holds no more anyway.
pub(super) const MAX_NAMING_TEXT_LEN: usize = crate::run::MAX_RUN_KEY_LEN;
/// Longest session id taken from a header; longer ones are ignored as
/// bogus. MCP sets no bound, and servers may issue signed tokens (a JWT
/// is often 1 to 2 KB); a header much past this is refused by most proxies.
pub(super) const MAX_SESSION_ID_LEN: usize = crate::run::MAX_RUN_KEY_LEN;

/// The headers the layer reads off every request, found in one pass over
/// them (rather than a hash of each name in turn). A name given twice
/// counts with its first value, as [`HeaderMap::get`] does.
#[derive(Debug, Default)]
pub(super) struct RequestHeaders<'a> {
    /// The configured session header.
    pub(super) session: Option<&'a HeaderValue>,
    pub(super) protocol_version: Option<&'a HeaderValue>,
    pub(super) method: Option<&'a HeaderValue>,
    pub(super) name: Option<&'a HeaderValue>,
    /// The caller's run and span ([`RUN_ID_HEADER`],
    /// [`PARENT_SPAN_ID_HEADER`]).
    pub(super) run_id: Option<&'a HeaderValue>,
    pub(super) parent_span_id: Option<&'a HeaderValue>,
    /// A `content-encoding` that says the body is encoded (see [`is_encoded`]).
    pub(super) content_encoding: Option<&'a HeaderValue>,
    /// `Last-Event-ID`: where a client resumes an event stream from.
    pub(super) last_event_id: Option<&'a HeaderValue>,
}

impl<'a> RequestHeaders<'a> {
    pub(super) fn of(headers: &'a HeaderMap, session_header: &HeaderName) -> Self {
        let mut found = Self::default();
        for (name, value) in headers {
            // The session header may be configured as one of the others.
            if name == session_header {
                found.session.get_or_insert(value);
            }
            let slot = match name.as_str() {
                "mcp-protocol-version" => &mut found.protocol_version,
                "mcp-method" => &mut found.method,
                "mcp-name" => &mut found.name,
                RUN_ID_HEADER => &mut found.run_id,
                PARENT_SPAN_ID_HEADER => &mut found.parent_span_id,
                "last-event-id" => &mut found.last_event_id,
                // The first value that says the body is encoded.
                "content-encoding" if is_encoded(value) => &mut found.content_encoding,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        found
    }
}

/// The caller for the client identity key: the first `X-Forwarded-For` hop,
/// else the peer address (axum's `ConnectInfo`), else the user agent. A hop
/// or user agent longer than [`MAX_NAMING_TEXT_LEN`] is passed over.
pub(super) fn caller(parts: &Parts) -> Option<String> {
    let headers = &parts.headers;
    let forwarded = headers
        .get(FORWARDED_FOR_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|hops| hops.split(',').next())
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .and_then(within_naming_bound);
    let peer = || {
        parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip().to_string())
    };
    forwarded.map(str::to_owned).or_else(peer).or_else(|| {
        let user_agent = headers.get(header::USER_AGENT)?;
        naming_text(user_agent).map(str::to_owned)
    })
}

/// A header's text (ASCII without control characters but tab) if it is
/// at most [`MAX_NAMING_TEXT_LEN`] bytes long.
pub(super) fn naming_text(value: &HeaderValue) -> Option<&str> {
    within_naming_bound(value.to_str().ok()?)
}

fn within_naming_bound(text: &str) -> Option<&str> {
    (text.len() <= MAX_NAMING_TEXT_LEN).then_some(text)
}

/// The session id in a header value, if it is one the layer takes: 1 to
/// [`MAX_SESSION_ID_LEN`] visible ASCII characters (MCP asks for visible
/// ASCII; the bound keeps a client's header from growing the run table).
pub(super) fn session_id_of(value: &HeaderValue) -> Option<Arc<str>> {
    session_id_text(value).map(Arc::from)
}

/// The session id in a header value, borrowed, if it is one MCP allows.
pub(super) fn session_id_text(value: &HeaderValue) -> Option<&str> {
    let bytes = value.as_bytes();
    // Every byte is looked at (no early exit), which the compiler does a
    // vector at a time: it is read on every request.
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_SESSION_ID_LEN
        && bytes
            .iter()
            .fold(true, |visible, b| visible & (0x21..=0x7e).contains(b));
    // Visible ASCII is valid UTF-8.
    valid.then(|| std::str::from_utf8(bytes).ok()).flatten()
}

/// Whether an `Accept` header names `text/event-stream` (media types are
/// case-insensitive): a GET that does opens the session's own event stream.
pub(super) fn accepts_event_stream(headers: &HeaderMap) -> bool {
    const EVENT_STREAM: &[u8] = b"text/event-stream";
    headers.get_all(header::ACCEPT).iter().any(|value| {
        value
            .as_bytes()
            .windows(EVENT_STREAM.len())
            .any(|media_type| media_type.eq_ignore_ascii_case(EVENT_STREAM))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stream_is_accepted_whatever_the_case_and_among_others() {
        let accepts = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(header::ACCEPT, HeaderValue::from_str(value).unwrap());
            }
            accepts_event_stream(&headers)
        };
        assert!(accepts(&["text/event-stream"]));
        assert!(accepts(&["application/json, Text/Event-Stream;q=0.9"]));
        assert!(accepts(&["application/json", "text/event-stream"]));
        assert!(!accepts(&["application/json"]));
        assert!(!accepts(&["text/event"]));
        assert!(!accepts(&[]));
    }

    #[test]
    fn a_session_id_is_1_to_256_visible_ascii_characters() {
        let text_of = |bytes: &[u8]| {
            session_id_text(&HeaderValue::from_bytes(bytes).unwrap()).map(str::to_owned)
        };
        let longest = "~".repeat(MAX_SESSION_ID_LEN);
        for good in ["a", "4f1c0e0e-7f7a-4b8e-9a53-0c3b1f7f2d11", "!~", &longest] {
            assert_eq!(text_of(good.as_bytes()).as_deref(), Some(good));
        }
        let too_long = "a".repeat(MAX_SESSION_ID_LEN + 1);
        // A bad byte last, after a vector's worth of good ones, is found too.
        let bad = |byte: u8| [&[b'a'; 40][..], &[byte]].concat();
        for wrong in [
            Vec::new(),
            too_long.into_bytes(),
            bad(b' '),
            bad(b'\t'),
            bad(0x80),
            bad(0xff),
        ] {
            assert_eq!(text_of(&wrong), None, "{wrong:?}");
        }
    }

    #[test]
    fn the_caller_is_the_first_forwarded_hop_then_the_user_agent_within_bounds() {
        let caller_of = |forwarded: Option<&str>, user_agent: Option<&str>| {
            let mut request = http::Request::post("/mcp");
            if let Some(hops) = forwarded {
                request = request.header("x-forwarded-for", hops);
            }
            if let Some(agent) = user_agent {
                request = request.header("user-agent", agent);
            }
            caller(&request.body(()).unwrap().into_parts().0)
        };
        let longest = "a".repeat(MAX_NAMING_TEXT_LEN);
        let too_long = "a".repeat(MAX_NAMING_TEXT_LEN + 1);
        let many_hops = format!("10.0.0.1, {}", ["10.0.0.2"; 100].join(", "));
        assert_eq!(
            caller_of(Some(&many_hops), Some("agent")).as_deref(),
            Some("10.0.0.1"),
            "however many hops follow"
        );
        assert_eq!(
            caller_of(Some(" 10.0.0.1 ,x"), None).as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(caller_of(Some(&longest), None).as_deref(), Some(&*longest));
        assert_eq!(
            caller_of(Some(&too_long), Some("agent")).as_deref(),
            Some("agent"),
            "a bogus hop is passed over"
        );
        assert_eq!(
            caller_of(Some(" ,10.0.0.1"), Some("agent")).as_deref(),
            Some("agent")
        );
        assert_eq!(caller_of(None, Some(&too_long)), None);
        assert_eq!(caller_of(None, None), None);
    }

    #[test]
    fn one_pass_finds_each_header_with_its_first_value() {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_static;
        headers.insert("content-type", value("application/json"));
        headers.insert("x-session", value("s-1"));
        headers.append("x-session", value("s-2"));
        headers.insert("mcp-session-id", value("not the configured one"));
        headers.insert("mcp-protocol-version", value("2025-11-25"));
        headers.insert("mcp-method", value("tools/call"));
        headers.insert("mcp-name", value("add"));
        headers.insert(RUN_ID_HEADER, value("run"));
        headers.insert(PARENT_SPAN_ID_HEADER, value("span"));
        headers.insert("last-event-id", value("2/0"));
        let found = RequestHeaders::of(&headers, &HeaderName::from_static("x-session"));
        let text = |v: Option<&HeaderValue>| v.map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(text(found.session).as_deref(), Some("s-1"));
        assert_eq!(text(found.protocol_version).as_deref(), Some("2025-11-25"));
        assert_eq!(text(found.method).as_deref(), Some("tools/call"));
        assert_eq!(text(found.name).as_deref(), Some("add"));
        assert_eq!(text(found.run_id).as_deref(), Some("run"));
        assert_eq!(text(found.parent_span_id).as_deref(), Some("span"));
        assert_eq!(text(found.last_event_id).as_deref(), Some("2/0"));

        // A session header named like another fills both.
        let same = RequestHeaders::of(&headers, &HeaderName::from_static("mcp-name"));
        assert_eq!(text(same.session).as_deref(), Some("add"));
        assert_eq!(text(same.name).as_deref(), Some("add"));

        let empty = HeaderMap::new();
        let none = RequestHeaders::of(&empty, &HeaderName::from_static("x-session"));
        assert!(none.session.is_none() && none.method.is_none() && none.run_id.is_none());
    }
}
