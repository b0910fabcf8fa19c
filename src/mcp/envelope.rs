//! The JSON-RPC envelope of MCP messages: what a request asks and how a response ended.
//!
//! Only the few fields the layer needs are deserialised (method, id, the
//! tool/prompt name or resource URI, client and server identity, the
//! protocol version, the outcome); the rest of a message is skipped without
//! building a tree. serde_json's recursion limit turns absurdly nested input
//! into "not JSON-RPC", which then passes through untouched.

use memchr::memmem::Finder;
use serde::Deserialize;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::LazyLock;

use super::CANCELLED;
use super::member::{self, Shape};
use super::meta::Meta;

/// A client or server identity (`clientInfo` / `serverInfo`), read as
/// [`Member::identity`](super::member::Member::identity) reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Implementation {
    pub(crate) name: String,
    pub(crate) version: Option<String>,
}

/// A message a client POSTs, as far as the layer cares.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ClientMessage {
    /// A request: it gets an answer and becomes a span.
    Request(Request),
    /// A notification (no `id`): answered 202, no span. `cancelled` is
    /// the `params.requestId` of a `notifications/cancelled`.
    Notification {
        method: String,
        cancelled: Option<Value>,
    },
    /// The client's answer to a server request (no `method`): answered 202, no span.
    Response,
}

/// A JSON-RPC request from the client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Request {
    pub(crate) id: Value,
    pub(crate) method: String,
    /// `params.name` (tools/call, prompts/get) or `params.uri` (resources/read).
    pub(crate) target: Option<String>,
    /// `params.clientInfo` (initialize) or `params._meta[clientInfo]` (2026-07-28).
    pub(crate) client: Option<Implementation>,
    /// The version the client asks for (`params.protocolVersion` or `_meta`).
    pub(crate) protocol_version: Option<String>,
    /// `params._meta`, where MCP 2026-07-28 puts the protocol version and
    /// client identity and vendors put conversation ids (boxed: most
    /// requests have none).
    pub(crate) meta: Option<Box<Meta>>,
}

impl Request {
    /// A request known only from its headers (`Mcp-Method`, `Mcp-Name`),
    /// its body too large to read: its id is unknown (null).
    pub(crate) fn named(
        method: String,
        target: Option<String>,
        protocol_version: Option<String>,
    ) -> Self {
        Self {
            id: Value::Null,
            method,
            target,
            client: None,
            protocol_version,
            meta: None,
        }
    }

    /// Whether the request carries its own protocol metadata (MCP 2026-07-28).
    pub(crate) fn is_self_contained(&self) -> bool {
        self.meta.as_deref().is_some_and(Meta::has_protocol_version)
    }
}

/// How a JSON-RPC response ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// A result that is not a tool error.
    Success,
    /// A JSON-RPC error: its code, if it is an integer, and its message
    /// (if it has no string message, [`NO_ERROR_MESSAGE`]).
    Error { code: Option<i64>, message: String },
    /// A tool result with `isError: true`; `message` is its first text block.
    ToolError { message: String },
}

/// The message of a JSON-RPC error that has none.
pub(crate) const NO_ERROR_MESSAGE: &str = "JSON-RPC error without a message";

/// A JSON-RPC response from the server.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Response {
    pub(crate) id: Value,
    pub(crate) outcome: Outcome,
    /// `result.protocolVersion`: the negotiated version of an initialize.
    pub(crate) protocol_version: Option<String>,
    /// `result.serverInfo` or `result._meta[serverInfo]`.
    pub(crate) server: Option<Implementation>,
}

/// A message's members, each read leniently (see [`super::member`]).
#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(default, borrow, deserialize_with = "member::text")]
    jsonrpc: Option<Cow<'a, str>>,
    /// `"id": null` is kept apart from a missing id.
    #[serde(default, deserialize_with = "member::present")]
    id: Option<Value>,
    #[serde(default, borrow, deserialize_with = "member::text")]
    method: Option<Cow<'a, str>>,
    /// Not an object (by-position params): none the layer reads.
    #[serde(default, borrow)]
    params: Option<Shape<RawParams<'a>>>,
    /// Any value but an object (`null` too) is still a result.
    #[serde(default, borrow, deserialize_with = "member::present")]
    result: Option<Shape<RawResult<'a>>>,
    /// Any value but an object is still an error; `null` is none.
    #[serde(default, borrow, deserialize_with = "member::present")]
    error: Option<Shape<RawError<'a>>>,
}

#[derive(Deserialize, Default)]
struct RawParams<'a> {
    /// `Some(None)`: present, but not a string.
    #[serde(default, deserialize_with = "member::string_or_other")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "member::string_or_other")]
    uri: Option<Option<String>>,
    #[serde(default, rename = "clientInfo", deserialize_with = "member::identity")]
    client_info: Option<Implementation>,
    #[serde(
        default,
        borrow,
        rename = "protocolVersion",
        deserialize_with = "member::text"
    )]
    protocol_version: Option<Cow<'a, str>>,
    #[serde(default, rename = "_meta")]
    meta: Option<Shape<Box<Meta>>>,
    /// The request a `notifications/cancelled` cancels.
    #[serde(default, rename = "requestId", deserialize_with = "member::present")]
    request_id: Option<Value>,
}

#[derive(Deserialize, Default)]
struct RawResult<'a> {
    #[serde(default, rename = "isError", deserialize_with = "member::flag")]
    is_error: Option<bool>,
    /// The first text of `content` (borrowed while it can be; kept only if
    /// `isError` says so).
    #[serde(default, borrow, deserialize_with = "member::list")]
    content: Option<FirstText<'a>>,
    #[serde(
        default,
        borrow,
        rename = "protocolVersion",
        deserialize_with = "member::text"
    )]
    protocol_version: Option<Cow<'a, str>>,
    #[serde(default, rename = "serverInfo", deserialize_with = "member::identity")]
    server_info: Option<Implementation>,
    #[serde(default, rename = "_meta")]
    meta: Option<Shape<Box<Meta>>>,
}

#[derive(Deserialize)]
struct RawContent<'a> {
    #[serde(default, borrow, deserialize_with = "member::text")]
    text: Option<Cow<'a, str>>,
}

/// The first `text` of a list of content blocks, borrowed from the input
/// where it can be: a tool result's text is only copied when it is an
/// error's. Blocks that are not objects are passed over, and `content`
/// that is not a list has none (see [`member::list`]).
struct FirstText<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstText<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(Blocks(PhantomData))
    }
}

struct Blocks<'a>(PhantomData<&'a str>);

impl<'de: 'a, 'a> Visitor<'de> for Blocks<'a> {
    type Value = FirstText<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of content blocks")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut first = None;
        while let Some(block) = seq.next_element::<Shape<RawContent<'a>>>()? {
            if let (None, Shape::Expected(block)) = (&first, block) {
                first = block.text;
            }
        }
        Ok(FirstText(first))
    }
}

#[derive(Deserialize, Default)]
struct RawError<'a> {
    #[serde(default, deserialize_with = "member::integer")]
    code: Option<i64>,
    #[serde(default, borrow, deserialize_with = "member::text")]
    message: Option<Cow<'a, str>>,
}

fn parse_raw(bytes: &[u8]) -> Option<RawMessage<'_>> {
    // One UTF-8 check of the whole message, then serde_json's `str` reader,
    // which does not check each string again as its byte reader does.
    // Invalid UTF-8 is not JSON either way.
    let text = std::str::from_utf8(bytes).ok()?;
    let raw: RawMessage<'_> = serde_json::from_str(text).ok()?;
    (raw.jsonrpc.as_deref() == Some("2.0")).then_some(raw)
}

/// Reads what a client POSTed; `None` when it is not one JSON-RPC 2.0 message
/// (invalid JSON, invalid UTF-8, a batch, something else).
pub(crate) fn parse_client_message(bytes: &[u8]) -> Option<ClientMessage> {
    let raw = parse_raw(bytes)?;
    match (raw.method, raw.id) {
        (Some(method), Some(id)) => {
            let params = match raw.params {
                Some(Shape::Expected(params)) => params,
                _ => RawParams::default(),
            };
            let target = params.name.or(params.uri).flatten();
            let mut meta = params.meta.and_then(Shape::expected);
            let client = params
                .client_info
                .or_else(|| meta.as_mut()?.take_client_info());
            let protocol_version = params
                .protocol_version
                .map(Cow::into_owned)
                .or_else(|| Some(meta.as_ref()?.protocol_version()?.to_owned()));
            Some(ClientMessage::Request(Request {
                id,
                method: method.into_owned(),
                target,
                client,
                protocol_version,
                meta,
            }))
        }
        (Some(method), None) => {
            let cancelled = match raw.params {
                Some(Shape::Expected(params)) if method == CANCELLED => params.request_id,
                _ => None,
            };
            Some(ClientMessage::Notification {
                method: method.into_owned(),
                cancelled,
            })
        }
        (None, Some(_))
            if raw.result.is_some() || raw.error.and_then(Shape::unless_null).is_some() =>
        {
            Some(ClientMessage::Response)
        }
        (None, _) => None,
    }
}

/// Reads a server message; `Some` only for a JSON-RPC response (a result or
/// an error), `None` for requests, notifications and anything else.
pub(crate) fn parse_response(bytes: &[u8]) -> Option<Response> {
    match parse_server_message(bytes)? {
        ServerMessage::Response(response) => Some(response),
        ServerMessage::Notification { .. } | ServerMessage::Request { .. } => None,
    }
}

/// A message the server sends on an SSE stream.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ServerMessage {
    /// The answer to a client request.
    Response(Response),
    /// A notification, e.g. `notifications/progress` or `notifications/message`.
    Notification { method: String },
    /// A request to the client, e.g. `sampling/createMessage`.
    Request { method: String },
}

/// Reads a server message; `None` when it is not one JSON-RPC 2.0 message.
pub(crate) fn parse_server_message(bytes: &[u8]) -> Option<ServerMessage> {
    let raw = parse_raw(bytes)?;
    if let Some(method) = raw.method {
        let method = method.into_owned();
        return Some(match raw.id {
            Some(_) => ServerMessage::Request { method },
            None => ServerMessage::Notification { method },
        });
    }
    let id = raw.id.unwrap_or(Value::Null);
    if let Some(error) = raw.error.and_then(Shape::unless_null) {
        return Some(ServerMessage::Response(Response {
            id,
            outcome: Outcome::Error {
                code: error.code,
                message: error
                    .message
                    .map_or_else(|| NO_ERROR_MESSAGE.to_owned(), Cow::into_owned),
            },
            protocol_version: None,
            server: None,
        }));
    }
    let result = match raw.result? {
        Shape::Expected(result) => result,
        Shape::Null | Shape::Other => RawResult::default(),
    };
    let outcome = if result.is_error == Some(true) {
        let message = result
            .content
            .and_then(|c| c.0)
            .map_or_else(|| "tool returned isError: true".to_owned(), Cow::into_owned);
        Outcome::ToolError { message }
    } else {
        Outcome::Success
    };
    let server = result
        .server_info
        .or_else(|| result.meta.and_then(Shape::expected)?.take_server_info());
    Some(ServerMessage::Response(Response {
        id,
        outcome,
        protocol_version: result.protocol_version.map(Cow::into_owned),
        server,
    }))
}

/// Whether `message` mentions `"initialize"` anywhere (a cheap, cautious
/// look: a request that does may open a run).
pub(crate) fn mentions_initialize(message: &[u8]) -> bool {
    static INITIALIZE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"initialize\""));
    INITIALIZE.find(message).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ts_initialize_request() {
        let body = br#"{"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"ts-v1-client","version":"1.0.0"}},"jsonrpc":"2.0","id":0}"#;
        let Some(ClientMessage::Request(r)) = parse_client_message(body) else {
            panic!("not a request")
        };
        assert_eq!(r.id, json!(0));
        assert_eq!(r.method, "initialize");
        assert_eq!(r.protocol_version.as_deref(), Some("2025-11-25"));
        assert_eq!(
            r.client,
            Some(Implementation {
                name: "ts-v1-client".into(),
                version: Some("1.0.0".into())
            })
        );
    }

    #[test]
    fn tool_call_names_its_tool_and_2026_meta_is_read() {
        let body = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"sum","arguments":{"a":2,"b":3},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"mcp","version":"0.1.0"},"io.modelcontextprotocol/clientCapabilities":{}}}}"#;
        let Some(ClientMessage::Request(r)) = parse_client_message(body) else {
            panic!("not a request")
        };
        assert_eq!(r.target.as_deref(), Some("sum"));
        assert_eq!(r.protocol_version.as_deref(), Some("2026-07-28"));
        assert_eq!(r.client.unwrap().name, "mcp");
    }

    #[test]
    fn resource_read_target_is_the_uri() {
        let body =
            br#"{"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"file:///x"}}"#;
        let Some(ClientMessage::Request(r)) = parse_client_message(body) else {
            panic!("not a request")
        };
        assert_eq!(r.id, json!("a"));
        assert_eq!(r.target.as_deref(), Some("file:///x"));
    }

    #[test]
    fn notifications_and_client_responses() {
        assert_eq!(
            parse_client_message(br#"{"method":"notifications/initialized","jsonrpc":"2.0"}"#),
            Some(ClientMessage::Notification {
                method: "notifications/initialized".into(),
                cancelled: None,
            })
        );
        let cancel = br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"a-1","reason":"no"}}"#;
        assert_eq!(
            parse_client_message(cancel),
            Some(ClientMessage::Notification {
                method: "notifications/cancelled".into(),
                cancelled: Some(json!("a-1")),
            })
        );
        assert_eq!(
            parse_client_message(br#"{"jsonrpc":"2.0","id":0,"result":{"roots":[]}}"#),
            Some(ClientMessage::Response)
        );
    }

    #[test]
    fn not_json_rpc() {
        for body in [
            &b"{not json"[..],
            b"\xff\xfe\x00garbage",
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            br#"{"id":1,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0"}"#,
            b"",
        ] {
            assert_eq!(parse_client_message(body), None, "{body:?}");
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse_client_message(deep.as_bytes()), None);
    }

    fn request(body: &[u8]) -> Request {
        match parse_client_message(body) {
            Some(ClientMessage::Request(request)) => request,
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn a_request_whose_members_have_unexpected_shapes_is_still_read() {
        let odd_identity = request(
            br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":20251125,"capabilities":{},"clientInfo":{"name":"odd-client","version":3}}}"#,
        );
        assert_eq!(odd_identity.method, "initialize");
        assert_eq!(odd_identity.protocol_version, None);
        assert_eq!(
            odd_identity.client,
            Some(Implementation {
                name: "odd-client".into(),
                version: Some("3".into())
            })
        );
        let no_identity = request(
            br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","clientInfo":"odd-client"}}"#,
        );
        assert_eq!(no_identity.client, None);
        assert_eq!(no_identity.protocol_version.as_deref(), Some("2025-11-25"));
        let by_position =
            request(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["add",{"a":1}]}"#);
        assert_eq!((by_position.id, by_position.target), (json!(1), None));
        let odd_meta = request(
            br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add","_meta":"x"}}"#,
        );
        assert_eq!(odd_meta.target.as_deref(), Some("add"));
        assert_eq!(odd_meta.meta, None);
        assert_eq!(
            parse_client_message(br#"{"jsonrpc":"2.0","id":0,"result":null}"#),
            Some(ClientMessage::Response)
        );
        assert_eq!(
            parse_client_message(br#"{"jsonrpc":"2.0","id":0,"error":null}"#),
            None,
            "an error that is null is none"
        );
    }

    #[test]
    fn a_response_whose_members_have_unexpected_shapes_is_still_an_answer() {
        let outcome = |body: &[u8]| parse_response(body).map(|r| r.outcome);
        for result in [r#"null"#, r#""ok""#, "[1]", "7", r#"{"isError":"yes"}"#] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{result}}}"#);
            assert_eq!(outcome(body.as_bytes()), Some(Outcome::Success), "{result}");
        }
        assert_eq!(
            outcome(br#"{"jsonrpc":"2.0","id":1,"result":{"isError":true,"content":"boom"}}"#),
            Some(Outcome::ToolError {
                message: "tool returned isError: true".into()
            })
        );
        assert_eq!(
            outcome(
                br#"{"jsonrpc":"2.0","id":1,"result":{"isError":true,"content":[1,"x",{"type":"image"},{"text":7},{"text":"boom"},{"text":"later"}]}}"#
            ),
            Some(Outcome::ToolError {
                message: "boom".into()
            })
        );
        for error in [
            r#"{"code":"-32602","message":42}"#,
            r#"{"code":-32602.5}"#,
            r#""boom""#,
            "[]",
        ] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":1,"error":{error}}}"#);
            let expected = Outcome::Error {
                code: None,
                message: NO_ERROR_MESSAGE.into(),
            };
            assert_eq!(outcome(body.as_bytes()), Some(expected), "{error}");
        }
        assert_eq!(
            outcome(br#"{"jsonrpc":"2.0","id":1,"error":null,"result":{}}"#),
            Some(Outcome::Success)
        );
        let initialized = parse_response(
            br#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":2025,"serverInfo":{"name":"calc","version":1},"_meta":7}}"#,
        )
        .unwrap();
        assert_eq!(initialized.protocol_version, None);
        assert_eq!(
            initialized.server,
            Some(Implementation {
                name: "calc".into(),
                version: Some("1".into())
            })
        );
    }

    #[test]
    fn initialize_result_gives_version_and_server() {
        let body = br#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"calc","version":"0.1.0"}}}"#;
        let r = parse_response(body).unwrap();
        assert_eq!(r.outcome, Outcome::Success);
        assert_eq!(r.protocol_version.as_deref(), Some("2025-11-25"));
        assert_eq!(r.server.unwrap().name, "calc");
    }

    #[test]
    fn discover_result_server_from_meta() {
        let body = br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","supportedVersions":["2026-07-28"],"_meta":{"io.modelcontextprotocol/serverInfo":{"name":"calc","version":"0.1.0"}}}}"#;
        assert_eq!(
            parse_response(body)
                .unwrap()
                .server
                .unwrap()
                .version
                .as_deref(),
            Some("0.1.0")
        );
    }

    #[test]
    fn outcomes() {
        let err = parse_response(
            br#"{"jsonrpc":"2.0","id":5,"error":{"code":-32602,"message":"tool not found"}}"#,
        )
        .unwrap();
        assert_eq!(
            err.outcome,
            Outcome::Error {
                code: Some(-32602),
                message: "tool not found".into()
            }
        );
        let tool = parse_response(br#"{"jsonrpc":"2.0","id":6,"result":{"content":[{"type":"text","text":"boom"}],"isError":true}}"#).unwrap();
        assert_eq!(
            tool.outcome,
            Outcome::ToolError {
                message: "boom".into()
            }
        );
        let ok =
            parse_response(br#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"isError":false}}"#)
                .unwrap();
        assert_eq!(ok.outcome, Outcome::Success);
        let progress = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#;
        assert_eq!(parse_response(progress), None);
        assert_eq!(
            parse_server_message(progress),
            Some(ServerMessage::Notification {
                method: "notifications/progress".into()
            })
        );
        assert_eq!(
            parse_server_message(br#"{"jsonrpc":"2.0","id":0,"method":"roots/list"}"#),
            Some(ServerMessage::Request {
                method: "roots/list".into()
            })
        );
    }
}
