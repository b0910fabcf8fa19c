//! What the layer reads off a request head: the session id, the MCP
//! headers, the caller.

use http::header::AsHeaderName;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use std::net::SocketAddr;
use std::sync::Arc;

// Header names are parsed once, here, not on every request.
/// The MCP protocol version header of requests after initialize.
pub(super) const PROTOCOL_VERSION_HEADER: HeaderName =
    HeaderName::from_static("mcp-protocol-version");
/// The header of MCP 2026-07-28 requests that names their method.
pub(super) const METHOD_HEADER: HeaderName = HeaderName::from_static("mcp-method");
/// The header of MCP 2026-07-28 requests that names their tool, prompt or resource.
pub(super) const NAME_HEADER: HeaderName = HeaderName::from_static("mcp-name");
const FORWARDED_FOR_HEADER: HeaderName = HeaderName::from_static("x-forwarded-for");
/// Longest session id taken from a header; longer ones are ignored as bogus.
pub(super) const MAX_SESSION_ID_LEN: usize = 256;

/// The caller for the client identity key: the first `X-Forwarded-For` hop,
/// else the peer address (axum's `ConnectInfo`), else the user agent.
pub(super) fn caller(parts: &Parts) -> Option<String> {
    let forwarded = header_text(&parts.headers, FORWARDED_FOR_HEADER)
        .and_then(|v| v.split(',').next().map(|hop| hop.trim().to_owned()))
        .filter(|hop| !hop.is_empty());
    forwarded
        .or_else(|| {
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip().to_string())
        })
        .or_else(|| header_text(&parts.headers, header::USER_AGENT))
}

/// A session id from `name`, if it is one MCP allows: 1 to 256 visible ASCII characters.
pub(crate) fn session_id(headers: &HeaderMap, name: &http::HeaderName) -> Option<Arc<str>> {
    session_id_of(headers.get(name)?)
}

/// The session id in a header value, if it is one MCP allows.
pub(super) fn session_id_of(value: &HeaderValue) -> Option<Arc<str>> {
    let value = value.as_bytes();
    let valid = !value.is_empty()
        && value.len() <= MAX_SESSION_ID_LEN
        && value.iter().all(|b| (0x21..=0x7e).contains(b));
    // Visible ASCII is valid UTF-8.
    valid.then(|| Arc::from(String::from_utf8_lossy(value)))
}

fn header_text(headers: &HeaderMap, name: impl AsHeaderName) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_owned)
}

pub(super) fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}
