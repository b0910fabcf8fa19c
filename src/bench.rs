//! Crate internals for the micro benchmarks (`benches/micro.rs`), behind the
//! `bench-internals` feature. Not part of the API: hidden, unstable, and
//! only as wide as the benchmarks need.

use crate::attributes::Attributes;
use serde_json::{Map, Value};
use std::time::{Duration, Instant, SystemTime};
use uuid::Uuid;

use crate::capture::Capture;
use crate::export::{ConsoleSink, DeliveryOptions, Exporter, Sink};
use crate::mcp::envelope::{parse_client_message, parse_server_message};
use crate::mcp::sse::SseDecoder;
use crate::run::Sessions;
use crate::span_kind::SpanKind;
use crate::wire::{Run, RunStatus, Span, Timestamp};

/// Reads a POSTed body as the layer does on every request: `true` when it
/// is one JSON-RPC message.
pub fn peek_request(body: &[u8]) -> bool {
    parse_client_message(body).is_some()
}

/// Reads a server message as the layer does for every SSE event: `true`
/// when it is one JSON-RPC message.
pub fn peek_response(body: &[u8]) -> bool {
    parse_server_message(body).is_some()
}

/// Decodes an event stream fed in `chunks` with a decoder that keeps data
/// and event ids (as the layer's recorder) and at most `max_event_chars`
/// characters of an event's data; returns the data bytes of the events.
pub fn decode_sse<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, max_event_chars: usize) -> usize {
    let mut decoder = SseDecoder::data_and_id(max_event_chars);
    let mut data = 0;
    for chunk in chunks {
        decoder.push(chunk, |event| data += event.data.len());
    }
    data
}

/// Captures a body fed in `chunks` up to `limit_chars` characters, as the
/// request and JSON response bodies are; returns the length of the text kept.
pub fn capture<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, limit_chars: usize) -> usize {
    let mut capture = Capture::new(limit_chars);
    for chunk in chunks {
        capture.push(chunk);
    }
    capture.into_text().len()
}

/// A finished span like the layer records for a `tools/call`.
#[derive(Debug, Clone)]
pub struct SampleSpan(Span);

impl SampleSpan {
    /// The span of a `tools/call add` with its request and SSE answer.
    pub fn tool_call() -> Self {
        let now = Timestamp(SystemTime::now());
        let mut attributes = Attributes::for_request();
        for (key, value) in [
            ("mcp.method.name", Value::from("tools/call")),
            ("jsonrpc.request.id", Value::from("7")),
            ("mcp.protocol.version", Value::from("2025-11-25")),
            ("http.response.status_code", Value::from(200)),
            ("http.request.body.size", Value::from(88)),
            ("input_truncated", Value::Bool(false)),
            ("http.response.body.size", Value::from(142)),
            ("output_truncated", Value::Bool(false)),
        ] {
            attributes.insert(key, value);
        }
        Self(Span {
            input: Some(
                r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add","arguments":{"a":7,"b":2}}}"#
                    .to_owned(),
            ),
            output: Some(
                r#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"9"}],"isError":false}}"#
                    .to_owned(),
            ),
            tool_name: Some("add".to_owned()),
            attributes,
            ..Span::new(Uuid::new_v4(), Uuid::new_v4(), SpanKind::Tool, "tool.add".to_owned(), now)
        })
    }

    /// The span's JSON, as the delivery thread serializes it.
    pub fn to_json(&self) -> Vec<u8> {
        self.0.to_json()
    }
}

/// A session table with open runs, for timing the idle sweep.
#[derive(Debug)]
pub struct IdleTable {
    sessions: Sessions,
    exporter: Exporter,
    /// The exporter that took the starts: kept, so that freeing them does
    /// not fall into the timed sweep.
    _setup: Exporter,
    /// The sweep's "now": the first `expired` runs are idle for the timeout, the rest not.
    now: Instant,
    timeout: Duration,
}

impl IdleTable {
    /// `total` open runs (as after their `start`), of which the `expired`
    /// opened first have been idle for the idle timeout at the sweep.
    pub fn new(total: usize, expired: usize) -> Self {
        let timeout = Duration::from_secs(300);
        let sessions = Sessions::default();
        // The starts queue here: the sweep gets an empty queue of its own.
        let (setup, _worker) = exporter();
        let open = |i: usize| {
            let run = run(format!("session-{i:08}"));
            let key = run.conversation_id.clone().unwrap_or_default();
            sessions.open_started(&key, run, true, &setup);
        };
        (0..expired).for_each(open);
        let boundary = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        (expired..total).for_each(open);
        let (exporter, _worker) = exporter();
        Self {
            sessions,
            exporter,
            _setup: setup,
            now: boundary + timeout,
            timeout,
        }
    }

    /// One sweep; returns how many runs it ended.
    pub fn sweep(&self) -> usize {
        self.sessions
            .sweep_idle(self.now, self.timeout, &self.exporter)
    }
}

fn exporter() -> (Exporter, crate::export::Worker) {
    let options = DeliveryOptions {
        max_queue_items: 1_000_000,
        ..DeliveryOptions::default()
    };
    Exporter::new(Sink::Console(ConsoleSink), options)
}

/// A run as the layer opens it for a session.
fn run(session_id: String) -> Run {
    let mut metadata = Map::new();
    metadata.insert("transport".to_owned(), Value::from("streamable_http"));
    metadata.insert("era".to_owned(), Value::from("sessions"));
    metadata.insert("client_name".to_owned(), Value::from("bench"));
    Run {
        run_id: Uuid::new_v4(),
        agent_name: "mcp_server".to_owned(),
        distinct_id: None,
        conversation_id: Some(session_id),
        parent_run_id: None,
        status: RunStatus::Running,
        input: None,
        output: None,
        started_at: Timestamp::now(),
        ended_at: None,
        duration_ms: None,
        error_summary: None,
        metadata,
        totals: None,
    }
}
