//! MCP knowledge: the JSON-RPC envelope, SSE decoding, span names and kinds.
//! Pure functions, no I/O.

pub(crate) mod answer;
pub(crate) mod envelope;
pub(crate) mod member;
pub(crate) mod meta;
pub(crate) mod sse;

use crate::span_kind::SpanKind;

/// The MCP method that opens a session.
pub(crate) const INITIALIZE: &str = "initialize";
/// The MCP method that calls a tool.
pub(crate) const TOOLS_CALL: &str = "tools/call";
/// The notification by which a client cancels one of its requests.
pub(crate) const CANCELLED: &str = "notifications/cancelled";

/// The protocol versions published so far, oldest first.
const PROTOCOL_VERSIONS: [&str; 5] = [
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    "2026-07-28",
];

/// `version` as a published protocol version's own text, if it is one:
/// kept without a copy.
pub(crate) fn published_version(version: &str) -> Option<&'static str> {
    PROTOCOL_VERSIONS
        .into_iter()
        .find(|known| *known == version)
}

/// The span name of an MCP request: `tool.<name>` for `tools/call`,
/// `resource.<uri>` for `resources/read`, `prompt.<name>` for `prompts/get`,
/// `mcp.<method>` otherwise.
pub(crate) fn span_name(method: &str, target: Option<&str>) -> String {
    let (prefix, rest) = match (method, target) {
        (TOOLS_CALL, Some(name)) => ("tool.", name),
        ("resources/read", Some(uri)) => ("resource.", uri),
        ("prompts/get", Some(name)) => ("prompt.", name),
        _ => ("mcp.", method),
    };
    // Not `format!`: every span is named on the delivery thread, and the
    // formatting machinery costs several times the two copies.
    let mut name = String::with_capacity(prefix.len() + rest.len());
    name.push_str(prefix);
    name.push_str(rest);
    name
}

/// The kind of an MCP request's span when the config says nothing else.
pub(crate) fn default_kind(method: &str) -> SpanKind {
    if method == TOOLS_CALL {
        SpanKind::Tool
    } else {
        SpanKind::Generic
    }
}

/// The span `error_type` of a JSON-RPC error code: `caller_error` for the
/// codes that say the request was wrong (parse error, invalid request, method
/// not found, invalid params, resource not found), `server_error` for the rest.
pub(crate) fn error_type(code: i64) -> &'static str {
    match code {
        -32700 | -32600 | -32601 | -32602 | -32002 => "caller_error",
        _ => SERVER_ERROR,
    }
}

/// The span `error_type` of a JSON-RPC error the layer cannot blame on the
/// request (also when its code is not an integer).
pub(crate) const SERVER_ERROR: &str = "server_error";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_names() {
        assert_eq!(span_name("tools/call", Some("add")), "tool.add");
        assert_eq!(
            span_name("resources/read", Some("file:///a")),
            "resource.file:///a"
        );
        assert_eq!(span_name("prompts/get", Some("greet")), "prompt.greet");
        assert_eq!(span_name("tools/list", None), "mcp.tools/list");
        assert_eq!(span_name("tools/call", None), "mcp.tools/call");
    }

    #[test]
    fn published_versions_are_lent_and_others_are_not() {
        let header = String::from("2025-11-25");
        let known = published_version(&header).unwrap();
        assert_eq!(known, "2025-11-25");
        assert_ne!(known.as_ptr(), header.as_ptr(), "not the header's bytes");
        assert_eq!(published_version("2025-11-26"), None);
        assert_eq!(published_version("2025-11-25 "), None);
    }

    #[test]
    fn error_types() {
        assert_eq!(error_type(-32602), "caller_error");
        assert_eq!(error_type(-32603), "server_error");
        assert_eq!(error_type(-32000), "server_error");
    }
}
