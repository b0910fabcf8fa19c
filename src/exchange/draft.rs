//! What an exchange's run and span records say: metadata, names, kinds,
//! attributes.

use http::{Method, StatusCode};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Exchange, Input, route_or_path};
use crate::attributes::Attributes;
use crate::mcp::{
    self,
    envelope::{Implementation, Request as McpRequest},
};
use crate::run::RunKey;
use crate::span_draft::SpanDraft;
use crate::span_kind::SpanKind;
use crate::wire::Run;

/// The MCP protocol version without sessions.
const SESSIONLESS_VERSION: &str = "2026-07-28";

impl Exchange {
    /// What a run learns at its start: transport era, client, protocol version, key source.
    pub(super) fn metadata(
        &self,
        key: &RunKey,
        request: Option<&McpRequest>,
    ) -> Map<String, Value> {
        let mut metadata = self.metadata_without_key(matches!(key, RunKey::Session(_)), request);
        metadata.insert("run_key_source".to_owned(), Value::from(key.source()));
        metadata
    }

    /// `era`: `sessions` (Streamable HTTP with sessions), `2026-07-28`
    /// (self-contained requests) or `stateless` (a legacy client of a server
    /// without sessions).
    pub(super) fn metadata_without_key(
        &self,
        in_session: bool,
        request: Option<&McpRequest>,
    ) -> Map<String, Value> {
        let mut metadata = Map::new();
        metadata.insert("transport".to_owned(), Value::from("streamable_http"));
        let era = if request.is_some_and(McpRequest::is_self_contained) {
            SESSIONLESS_VERSION
        } else if in_session {
            "sessions"
        } else {
            "stateless"
        };
        metadata.insert("era".to_owned(), Value::from(era));
        insert_client(&mut metadata, request.and_then(|r| r.client.as_ref()));
        let version = request
            .and_then(|r| r.protocol_version.clone())
            .or_else(|| self.protocol_header().map(str::to_owned));
        if let Some(version) = version {
            metadata.insert("protocol_version".to_owned(), Value::from(version));
        }
        metadata
    }

    pub(super) fn run(
        &self,
        key: &RunKey,
        run_id: Uuid,
        input: Option<String>,
        metadata: Map<String, Value>,
    ) -> Run {
        let mut run = self.run_without_key(metadata);
        run.run_id = run_id;
        run.conversation_id = key.conversation_id().map(str::to_owned);
        run.input = input;
        run
    }

    pub(super) fn run_without_key(&self, metadata: Map<String, Value>) -> Run {
        let agent_name = self.shared.settings.agent_name.clone();
        Run {
            distinct_id: self.distinct_id.clone(),
            metadata,
            ..Run::new(Uuid::new_v4(), agent_name, self.arrived.at)
        }
    }

    /// The kind of an MCP request's span: the route's, else the tool's, else
    /// the method's, else the default.
    pub(super) fn kind_of(
        &self,
        method: &str,
        tool: Option<&str>,
        route_kind: Option<SpanKind>,
    ) -> SpanKind {
        let settings = &self.shared.settings;
        route_kind
            .or_else(|| tool.and_then(|t| settings.tool_kinds.get(t).copied()))
            .or_else(|| settings.method_kinds.get(method).copied())
            .unwrap_or_else(|| mcp::default_kind(method))
    }

    /// The span this exchange will become: its name, kind, input and attributes.
    pub(super) fn draft(
        &self,
        request: Option<McpRequest>,
        input: Input,
        route_kind: Option<SpanKind>,
        status: Option<StatusCode>,
    ) -> SpanDraft {
        let mut attributes = Attributes::for_request();
        let mut preset_error = None;
        let (name, kind, tool_name, request_id) = match request {
            Some(request) => {
                // The request's strings are moved into the span, not copied:
                // every span is drafted on the delivery thread.
                let name = mcp::span_name(&request.method, request.target.as_deref());
                let self_contained = request.is_self_contained();
                let tool = if request.method == mcp::TOOLS_CALL {
                    request.target
                } else {
                    None
                };
                let kind = self.kind_of(&request.method, tool.as_deref(), route_kind);
                attributes.insert("mcp.method.name", Value::String(request.method));
                if !request.id.is_null() {
                    attributes.insert("jsonrpc.request.id", Value::from(id_text(&request.id)));
                }
                let version = request
                    .protocol_version
                    .map(Value::String)
                    .or_else(|| self.protocol_header().map(Value::from));
                if let Some(version) = version {
                    attributes.insert("mcp.protocol.version", version);
                }
                if self_contained && let Some(client) = request.client {
                    attributes.insert("mcp.client.name", Value::String(client.name));
                    if let Some(version) = client.version {
                        attributes.insert("mcp.client.version", Value::String(version));
                    }
                }
                // A null id is an unknown one: any response answers it.
                let id = (!request.id.is_null()).then_some(request.id);
                (name, kind, tool, id)
            }
            None if self.method == Method::POST
                && (input.bytes > 0 || input.empty)
                && self.shared.is_known_mcp_path(self.endpoint()) =>
            {
                // A POST to the MCP endpoint that is not one JSON-RPC message.
                attributes.insert("http.route", Value::from(self.endpoint()));
                let kind = route_kind.unwrap_or(SpanKind::Generic);
                let wrong = if input.empty {
                    Some("the request body is empty")
                } else if input.unread() {
                    // Too large to read whole, or encoded: its method is
                    // unknown, not wrong.
                    None
                } else {
                    Some("the request body is not one JSON-RPC 2.0 message")
                };
                match wrong {
                    Some(why) => {
                        preset_error = Some(("invalid_message".to_owned(), why.to_owned()));
                        ("mcp.invalid_message".to_owned(), kind, None, None)
                    }
                    None => ("mcp.request".to_owned(), kind, None, None),
                }
            }
            None => {
                let route = route_or_path(self.route(), self.path());
                attributes.insert("http.request.method", Value::from(self.method.as_str()));
                attributes.insert("http.route", Value::from(route));
                let name = format!("http.{} {route}", self.method);
                (name, route_kind.unwrap_or(SpanKind::Tool), None, None)
            }
        };
        if let Some(status) = status {
            attributes.insert("http.response.status_code", Value::from(status.as_u16()));
        }
        attributes.insert("http.request.body.size", Value::from(input.bytes));
        if let Some(encoding) = input.encoding {
            attributes.insert(
                "http.request.content_encoding",
                Value::from(String::from(encoding)),
            );
        }
        // Known where the input is redacted (see `SpanDraft::into_span`):
        // its place is kept.
        attributes.insert("input_truncated", Value::Bool(false));
        SpanDraft {
            request_span: self.request_span.clone(),
            caller: self.joined,
            name,
            kind,
            tool_name,
            request_id,
            started_at: self.arrived.at,
            started: self.arrived.instant,
            input: input.text,
            attributes,
            preset_error,
        }
    }
}

/// A JSON-RPC id as text: a string as it is, a number as JSON writes it.
fn id_text(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        // Most ids are integers: written without the formatting machinery
        // JSON's `Display` goes through, on every span.
        Value::Number(n) => n.as_i64().map_or_else(|| n.to_string(), |i| i.to_string()),
        other => other.to_string(),
    }
}

fn insert_client(metadata: &mut Map<String, Value>, client: Option<&Implementation>) {
    if let Some(client) = client {
        metadata.insert("client_name".to_owned(), Value::from(client.name.as_str()));
        if let Some(version) = &client.version {
            metadata.insert("client_version".to_owned(), Value::from(version.as_str()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::id_text;
    use serde_json::json;

    #[test]
    fn an_id_is_written_as_json_writes_it_and_a_string_as_it_is() {
        let cases = [
            (json!(7), "7"),
            (json!(-3), "-3"),
            (json!(u64::MAX), "18446744073709551615"),
            (json!(1.5), "1.5"),
            (json!("req-7"), "req-7"),
            (json!(true), "true"),
        ];
        for (id, text) in cases {
            assert_eq!(id_text(&id), text, "{id}");
            if !id.is_string() {
                assert_eq!(id_text(&id), id.to_string());
            }
        }
    }
}
