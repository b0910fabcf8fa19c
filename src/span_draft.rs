//! A span known from its request, finished when its response is known, and
//! where it then goes: into its session's run, or into a run of its own.

use crate::attributes::Attributes;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

use crate::api::{RequestSpan, record_in_run};
use crate::backlog::is_reading;
use crate::capture::truncate_chars;
use crate::capture_policy::{ErrorText, Kept};
use crate::config::Settings;
use crate::deferred::Deferred;
use crate::export::IngestCall;
use crate::mcp::envelope::Response;
use crate::moment::Moment;
use crate::run::is_session_key;
use crate::span_kind::SpanKind;
use crate::state::Shared;
use crate::wire::{MAX_ERROR_CHARS, Run, RunStatus, Span, SpanStatus, Timestamp, Totals};

/// Where a finished span goes.
#[derive(Debug)]
pub(crate) enum Destination {
    /// Into the open run under `key` in the session table; `opened` when
    /// this request opened it (its `start` is still pending).
    Run {
        key: Arc<str>,
        run_id: Uuid,
        opened: bool,
    },
    /// A run of its own, sent whole with `runs/ingest`.
    OwnRun(Box<Run>),
    /// Another service's run, joined through the propagation headers.
    Joined { run_id: Uuid },
}

impl Destination {
    /// The run's id.
    pub(crate) fn run_id(&self) -> Uuid {
        match self {
            Self::Run { run_id, .. } | Self::Joined { run_id } => *run_id,
            Self::OwnRun(run) => run.run_id,
        }
    }

    /// The key and id of the run, if it is a session's (a client can
    /// resume the session's event streams).
    pub(crate) fn session_run(&self) -> Option<(&Arc<str>, Uuid)> {
        match self {
            Self::Run { key, run_id, .. } if is_session_key(key) => Some((key, *run_id)),
            _ => None,
        }
    }
}

/// A span known from the request, waiting for its response.
#[derive(Debug)]
pub(crate) struct SpanDraft {
    /// The request's span: its id, and where its children go.
    pub(crate) request_span: RequestSpan,
    /// The caller's run and span, from the propagation headers: the span's
    /// parent if the span goes into that run, else only noted (see
    /// `into_span`).
    pub(crate) caller: Option<(Uuid, Option<Uuid>)>,
    pub(crate) name: String,
    pub(crate) kind: SpanKind,
    pub(crate) tool_name: Option<String>,
    /// The JSON-RPC id whose response ends the span (`None`: not JSON-RPC).
    pub(crate) request_id: Option<Value>,
    pub(crate) started_at: Timestamp,
    pub(crate) started: Instant,
    /// The request body, redacted and cut where the span is recorded
    /// (its `input_truncated` attribute is set then).
    pub(crate) input: Kept,
    pub(crate) attributes: Attributes,
    /// `(error_type, error_message)` known from the request alone, used when
    /// the response gives no JSON-RPC outcome.
    pub(crate) preset_error: Option<(String, String)>,
}

/// How a span ended: its output and, if it failed, why.
#[derive(Debug)]
pub(crate) struct Ending {
    /// When the response (or its failure) was seen.
    pub(crate) ended: Moment,
    /// The response body, redacted and cut where the span is recorded.
    pub(crate) output: Kept,
    pub(crate) bytes_out: u64,
    /// `(error_type, error_message, JSON-RPC code)`.
    pub(crate) error: Option<(String, ErrorText, Option<i64>)>,
    /// The JSON-RPC response, for the server identity it may carry.
    pub(crate) response: Option<Response>,
}

impl SpanDraft {
    /// Finishes the span as failed, with no output.
    pub(crate) fn fail(
        self,
        shared: &Arc<Shared>,
        destination: Destination,
        error_type: &str,
        message: &str,
    ) {
        let ending = Ending {
            ended: Moment::now(),
            output: Kept::Final(None, false),
            bytes_out: 0,
            error: Some((
                error_type.to_owned(),
                ErrorText::Own(message.to_owned()),
                None,
            )),
            response: None,
        };
        self.finish(shared, destination, ending);
    }

    /// Finishes the span and hands it on to its run, after the spans of
    /// every exchange that ended before it: through the layer's
    /// [backlog](crate::backlog), unless this thread is reading it now (so
    /// the redaction hook runs on the delivery thread, mostly). With
    /// a session store nothing is taped, and spans are recorded at once:
    /// their totals are queued for the store before the answer goes out.
    pub(crate) fn finish(self, shared: &Arc<Shared>, destination: Destination, ending: Ending) {
        if is_reading() || shared.mirror.is_some() {
            self.record(shared, destination, ending);
            return;
        }
        shared.backlog.push(Deferred::Span(Box::new(FinishedSpan {
            shared: Arc::clone(shared),
            draft: self,
            destination,
            ending,
        })));
    }

    /// Builds the span and records it in its run, as activity when it
    /// ended.
    fn record(self, shared: &Shared, destination: Destination, mut ending: Ending) {
        let response = ending.response.take();
        let seen = ending.ended.instant;
        match destination {
            Destination::Run {
                key,
                run_id,
                opened,
            } => {
                let request_span = opened.then(|| self.request_span.clone());
                let span = self.into_span(&shared.settings, run_id, ending);
                if opened {
                    shared
                        .sessions
                        .complete_start(&key, run_id, &shared.exporter, |run| {
                            note_server(run, response.as_ref())
                        });
                }
                record_in_run(shared, Some(&key), run_id, vec![span], seen);
                // The children that waited for the start follow their parent.
                if let Some(request_span) = request_span {
                    request_span.run_started();
                }
            }
            Destination::Joined { run_id } => {
                let span = self.into_span(&shared.settings, run_id, ending);
                record_in_run(shared, None, run_id, vec![span], seen);
            }
            Destination::OwnRun(mut run) => {
                note_server(&mut run, response.as_ref());
                let mut spans = self.request_span.take_collected();
                spans.push(self.into_span(&shared.settings, run.run_id, ending));
                send_own_run(shared, *run, spans);
            }
        }
    }

    /// Runs the redaction hook on the request body now, if it waits for
    /// it: for a span that may be recorded where no hook may run (under
    /// the run table's lock).
    pub(crate) fn redact_input(&mut self, settings: &Settings) {
        let input = std::mem::replace(&mut self.input, Kept::Final(None, false));
        self.input = settings.redacted_now(input);
    }

    /// The span's record in run `run_id`, ended as `ending` says (its
    /// response, if any, is left unread): its input, output and answered
    /// error text go through the redaction hook here, if they wait for it.
    pub(crate) fn into_span(mut self, settings: &Settings, run_id: Uuid, ending: Ending) -> Span {
        let ended = ending.ended;
        let (input, input_truncated) = settings.kept_text(self.input);
        let (output, output_truncated) = settings.kept_text(ending.output);
        // In the place `draft` kept for it.
        self.attributes.insert("input_truncated", input_truncated);
        self.attributes
            .insert("http.response.body.size", ending.bytes_out);
        self.attributes.insert("output_truncated", output_truncated);
        let (status, error_type, error_message) = match ending.error {
            Some((kind, message, code)) => {
                if let Some(code) = code {
                    self.attributes.insert("jsonrpc.error.code", code);
                }
                let message = settings.error_text(message);
                let message = truncate_chars(&message, MAX_ERROR_CHARS).0.to_owned();
                (SpanStatus::Error, Some(kind), Some(message))
            }
            None => (SpanStatus::Ok, None, None),
        };
        // A parent in another run (a caller's span, while this span goes
        // into its session's run) would name a span its run does not hold:
        // the caller is kept as attributes instead.
        let parent_span_id = match self.caller {
            Some((caller_run, parent)) if caller_run == run_id => parent,
            Some((caller_run, parent)) => {
                self.attributes
                    .insert("trodo.caller.run_id", caller_run.to_string());
                if let Some(parent) = parent {
                    self.attributes
                        .insert("trodo.caller.span_id", parent.to_string());
                }
                None
            }
            None => None,
        };
        Span {
            parent_span_id,
            status,
            ended_at: ended.at,
            duration_ms: u64::try_from(
                ended
                    .instant
                    .saturating_duration_since(self.started)
                    .as_millis(),
            )
            .unwrap_or(u64::MAX),
            input,
            output,
            error_type,
            error_message,
            tool_name: self.tool_name,
            attributes: self.attributes,
            ..Span::new(
                self.request_span.span_id(),
                run_id,
                self.kind,
                self.name,
                self.started_at,
            )
        }
    }
}

/// A span finished on the request path, waiting in the backlog behind the
/// exchanges that ended before it.
#[derive(Debug)]
pub(crate) struct FinishedSpan {
    shared: Arc<Shared>,
    draft: SpanDraft,
    destination: Destination,
    ending: Ending,
}

impl FinishedSpan {
    /// Bytes of text it holds, for the backlog's bound.
    pub(crate) fn weight(&self) -> usize {
        self.draft.input.len() + self.ending.output.len()
    }

    /// Records the span in its run.
    pub(crate) fn record(self) {
        let Self {
            shared,
            draft,
            destination,
            ending,
        } = self;
        draft.record(&shared, destination, ending);
    }
}

/// Records what a response says of the server in a run's metadata:
/// `protocol_version` (the negotiated one), `server_name`, `server_version`.
pub(crate) fn note_server(run: &mut Run, response: Option<&Response>) {
    let Some(response) = response else { return };
    if let Some(version) = &response.protocol_version {
        run.metadata
            .insert("protocol_version".to_owned(), Value::from(version.as_str()));
    }
    if let Some(server) = &response.server {
        run.metadata
            .insert("server_name".to_owned(), Value::from(server.name.as_str()));
        if let Some(version) = &server.version {
            run.metadata
                .insert("server_version".to_owned(), Value::from(version.as_str()));
        }
    }
}

/// Sends a one-request run whole: the run ends with its request's span
/// (the last of `spans`; the others are its children).
fn send_own_run(shared: &Shared, mut run: Run, spans: Vec<Span>) {
    let Some(span) = spans.last() else { return };
    let totals = Totals::of(&spans);
    run.status = match span.status {
        SpanStatus::Ok => RunStatus::Ok,
        SpanStatus::Error => RunStatus::Error,
    };
    run.ended_at = Some(span.ended_at);
    run.duration_ms = Some(span.duration_ms);
    run.input.clone_from(&span.input);
    run.output.clone_from(&span.output);
    run.error_summary.clone_from(&span.error_message);
    run.totals = Some(totals);
    shared.exporter.send(IngestCall::Ingest {
        run: Box::new(run),
        spans,
    });
}
