//! One HTTP exchange from the request to the response head: what the layer
//! learns of the request, and what the response head decides (open, resume
//! or close a run; record a span or not).

use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use uuid::Uuid;

use crate::capture::Capture;
use crate::mcp::envelope::{ClientMessage, Request as McpRequest, parse_client_message};
use crate::mcp::{self, INITIALIZE};
use crate::recorder::{Recorder, SpanDraft};
use crate::route_kind::RouteSpanKind;
use crate::run::ClosedVia;
use crate::span_kind::SpanKind;
use crate::state::Shared;
use crate::wire::{Run, RunStatus, Timestamp};

/// The MCP protocol version header of requests after initialize.
const PROTOCOL_VERSION_HEADER: &str = "mcp-protocol-version";
/// Longest session id taken from a header; longer ones are ignored as bogus.
const MAX_SESSION_ID_LEN: usize = 256;

/// The request body as the inner service read it, shared with
/// [`RequestBody`](crate::body::RequestBody).
#[derive(Debug)]
pub(crate) struct RequestCapture {
    pub(crate) capture: Capture,
}

/// A request under way, until its response head (or its failure).
#[derive(Debug)]
pub(crate) struct Exchange {
    shared: Arc<Shared>,
    started_at: Timestamp,
    started: Instant,
    method: Method,
    path: String,
    route: Option<String>,
    session_id: Option<String>,
    protocol_header: Option<String>,
    wants_event_stream: bool,
    request: Arc<Mutex<RequestCapture>>,
}

/// How an exchange ended without a response head.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Failure {
    /// The inner service returned an error.
    Service,
    /// The client went away before the answer (the future was dropped).
    Cancelled,
}

impl Exchange {
    /// Notes what the request says and makes the capture its body will fill.
    pub(crate) fn new<B>(shared: Arc<Shared>, request: &Request<B>) -> Self {
        let headers = request.headers();
        let capture = Capture::new(shared.settings.capture_limit);
        Self {
            session_id: session_id(headers, &shared.settings.session_header),
            protocol_header: header_text(headers, PROTOCOL_VERSION_HEADER),
            wants_event_stream: request.method() == Method::GET && accepts_event_stream(headers),
            route: request
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map(|p| p.as_str().to_owned()),
            path: request.uri().path().to_owned(),
            method: request.method().clone(),
            started_at: Timestamp::now(),
            started: Instant::now(),
            request: Arc::new(Mutex::new(RequestCapture { capture })),
            shared,
        }
    }

    /// The capture the request body fills as the inner service reads it.
    pub(crate) fn request_capture(&self) -> Arc<Mutex<RequestCapture>> {
        Arc::clone(&self.request)
    }

    /// Decides, on the response head, what this exchange means for its
    /// session's run; returns the recorder that watches the response body.
    pub(crate) fn on_response<B>(self, response: &Response<B>) -> Option<Recorder> {
        let status = response.status();
        let (message, input) = self.read_request();
        if let Some(ClientMessage::Request(request)) = &message {
            self.shared.learn_mcp_path(&self.path);
            if request.method == INITIALIZE {
                return self.open_session(response, request.clone(), input);
            }
        }
        let session_id = self.session_id.clone()?;
        let sessions = &self.shared.sessions;
        let exporter = &self.shared.exporter;
        if status == StatusCode::NOT_FOUND && self.shared.is_mcp_path(&self.path) {
            sessions.close(&session_id, ClosedVia::SessionExpired, exporter);
            return None;
        }
        match message {
            Some(ClientMessage::Notification { .. } | ClientMessage::Response) => {
                sessions.touch(&session_id);
                None
            }
            None if self.is_session_control() => {
                if self.method == Method::DELETE && status.is_success() {
                    sessions.close(&session_id, ClosedVia::SessionDeleted, exporter);
                }
                None
            }
            request => {
                if !status.is_success() && !sessions.contains(&session_id) {
                    return None;
                }
                let route_kind = response.extensions().get::<RouteSpanKind>().map(|k| k.0);
                let request = match request {
                    Some(ClientMessage::Request(request)) => Some(request),
                    _ => None,
                };
                let run_id = self.run_for(&session_id, request.as_ref());
                let draft = self.draft(request, input, route_kind, Some(status));
                Some(Recorder::span(
                    Arc::clone(&self.shared),
                    session_id,
                    run_id,
                    draft,
                    status,
                    response.headers(),
                ))
            }
        }
    }

    /// Records a span for an exchange that ended without a response head.
    pub(crate) fn on_failure(self, failure: Failure) {
        let Some(session_id) = self.session_id.clone() else {
            return;
        };
        if !self.shared.sessions.contains(&session_id) {
            return;
        }
        let (message, input) = self.read_request();
        let request = match message {
            Some(ClientMessage::Request(request)) => Some(request),
            Some(_) => return,
            None if self.is_session_control() => return,
            None => None,
        };
        let run_id = self.run_for(&session_id, request.as_ref());
        let draft = self.draft(request, input, None, None);
        let (error_type, message) = match failure {
            Failure::Service => ("server_error", "the service failed before answering"),
            Failure::Cancelled => ("cancelled", "the client went away before the answer"),
        };
        draft.fail(&self.shared, &session_id, run_id, error_type, message);
    }

    /// The request as one JSON-RPC message (if it is one) and as text.
    fn read_request(&self) -> (Option<ClientMessage>, Input) {
        let request = self
            .request
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let capture = &request.capture;
        let message = if capture.is_truncated() || capture.total_bytes() == 0 {
            None
        } else {
            parse_client_message(capture.bytes())
        };
        let input = Input {
            text: (capture.total_bytes() > 0).then(|| capture.text()),
            truncated: capture.is_truncated(),
            bytes: capture.total_bytes(),
        };
        (message, input)
    }

    /// A DELETE or a GET event stream on the MCP endpoint: about the session itself.
    fn is_session_control(&self) -> bool {
        (self.method == Method::DELETE || self.wants_event_stream)
            && self.shared.is_mcp_path(&self.path)
    }

    /// Opens the run of the session an initialize response creates.
    fn open_session<B>(
        self,
        response: &Response<B>,
        request: McpRequest,
        input: Input,
    ) -> Option<Recorder> {
        let session_id = session_id(response.headers(), &self.shared.settings.session_header)?;
        let mut metadata = Map::new();
        metadata.insert("transport".to_owned(), Value::from("streamable_http"));
        insert_client(&mut metadata, request.client.as_ref());
        if let Some(version) = &request.protocol_version {
            metadata.insert(
                "requested_protocol_version".to_owned(),
                Value::from(version.as_str()),
            );
        }
        let run = self.run(&session_id, input.text, metadata);
        let run_id = self.shared.sessions.open_pending(&session_id, run);
        Some(Recorder::initialize(
            Arc::clone(&self.shared),
            session_id,
            run_id,
            request.id,
            response.headers(),
        ))
    }

    /// The run of a session, opened on the fly (`resumed`) if this process does not know it.
    fn run_for(&self, session_id: &str, request: Option<&McpRequest>) -> Uuid {
        self.shared
            .sessions
            .run_for(session_id, &self.shared.exporter, || {
                let mut metadata = Map::new();
                metadata.insert("transport".to_owned(), Value::from("streamable_http"));
                metadata.insert("resumed".to_owned(), Value::Bool(true));
                insert_client(&mut metadata, request.and_then(|r| r.client.as_ref()));
                let version = request
                    .and_then(|r| r.protocol_version.clone())
                    .or_else(|| self.protocol_header.clone());
                if let Some(version) = version {
                    metadata.insert("protocol_version".to_owned(), Value::from(version));
                }
                self.run(session_id, None, metadata)
            })
    }

    fn run(&self, session_id: &str, input: Option<String>, metadata: Map<String, Value>) -> Run {
        Run {
            run_id: Uuid::new_v4(),
            agent_name: self.shared.settings.agent_name.clone(),
            distinct_id: None,
            conversation_id: Some(session_id.to_owned()),
            parent_run_id: None,
            status: RunStatus::Running,
            input,
            output: None,
            started_at: self.started_at,
            ended_at: None,
            metadata,
        }
    }

    /// The span this exchange will become: its name, kind, input and attributes.
    fn draft(
        &self,
        request: Option<McpRequest>,
        input: Input,
        route_kind: Option<SpanKind>,
        status: Option<StatusCode>,
    ) -> SpanDraft {
        let settings = &self.shared.settings;
        let mut attributes = Map::new();
        let mut preset_error = None;
        let (name, kind, tool_name, request_id) = match request {
            Some(request) => {
                let tool = (request.method == mcp::TOOLS_CALL)
                    .then(|| request.target.clone())
                    .flatten();
                let kind = route_kind
                    .or_else(|| {
                        tool.as_ref()
                            .and_then(|t| settings.tool_kinds.get(t).copied())
                    })
                    .or_else(|| settings.method_kinds.get(&request.method).copied())
                    .unwrap_or_else(|| mcp::default_kind(&request.method));
                attributes.insert(
                    "mcp.method.name".to_owned(),
                    Value::from(request.method.as_str()),
                );
                attributes.insert(
                    "jsonrpc.request.id".to_owned(),
                    Value::from(id_text(&request.id)),
                );
                let version = request
                    .protocol_version
                    .as_ref()
                    .or(self.protocol_header.as_ref());
                if let Some(version) = version {
                    attributes.insert(
                        "mcp.protocol.version".to_owned(),
                        Value::from(version.as_str()),
                    );
                }
                let name = mcp::span_name(&request.method, request.target.as_deref());
                (name, kind, tool, Some(request.id))
            }
            None if self.method == Method::POST
                && input.bytes > 0
                && self.shared.is_mcp_path(&self.path) =>
            {
                // A POST to the MCP endpoint that is not one JSON-RPC message.
                attributes.insert("http.route".to_owned(), Value::from(self.path.as_str()));
                if input.truncated {
                    // Too large to read whole: its method is unknown, not wrong.
                    let name = "mcp.request".to_owned();
                    (name, route_kind.unwrap_or(SpanKind::Generic), None, None)
                } else {
                    preset_error = Some((
                        "invalid_message".to_owned(),
                        "the request body is not one JSON-RPC 2.0 message".to_owned(),
                    ));
                    let name = "mcp.invalid_message".to_owned();
                    (name, route_kind.unwrap_or(SpanKind::Generic), None, None)
                }
            }
            None => {
                let route = self.route.as_deref().unwrap_or(&self.path);
                attributes.insert(
                    "http.request.method".to_owned(),
                    Value::from(self.method.as_str()),
                );
                attributes.insert("http.route".to_owned(), Value::from(route));
                let name = format!("http.{} {route}", self.method);
                (name, route_kind.unwrap_or(SpanKind::Tool), None, None)
            }
        };
        if let Some(status) = status {
            attributes.insert(
                "http.response.status_code".to_owned(),
                Value::from(status.as_u16()),
            );
        }
        attributes.insert(
            "http.request.body.size".to_owned(),
            Value::from(input.bytes),
        );
        attributes.insert("input_truncated".to_owned(), Value::Bool(input.truncated));
        SpanDraft {
            name,
            kind,
            tool_name,
            request_id,
            started_at: self.started_at,
            started: self.started,
            input: input.text,
            attributes,
            preset_error,
        }
    }
}

/// The request body as the span's input.
#[derive(Debug)]
struct Input {
    text: Option<String>,
    truncated: bool,
    bytes: u64,
}

/// The JSON-RPC id as text: a string as it is, a number in decimal.
fn id_text(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn insert_client(
    metadata: &mut Map<String, Value>,
    client: Option<&mcp::envelope::Implementation>,
) {
    if let Some(client) = client {
        metadata.insert("client_name".to_owned(), Value::from(client.name.as_str()));
        if let Some(version) = &client.version {
            metadata.insert("client_version".to_owned(), Value::from(version.as_str()));
        }
    }
}

/// A session id from `name`, if it is one MCP allows: 1 to 256 visible ASCII characters.
pub(crate) fn session_id(headers: &HeaderMap, name: &http::HeaderName) -> Option<String> {
    let value = headers.get(name)?.as_bytes();
    let valid = !value.is_empty()
        && value.len() <= MAX_SESSION_ID_LEN
        && value.iter().all(|b| (0x21..=0x7e).contains(b));
    // Visible ASCII is valid UTF-8.
    valid.then(|| String::from_utf8_lossy(value).into_owned())
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_owned)
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}
