//! Watches a response body as it streams past and turns it into a span (or,
//! for an initialize, into the metadata of the run's `start`).
//!
//! A `text/event-stream` body is decoded event by event: the span ends at the
//! event that carries the JSON-RPC response to the request, its id the
//! request's (numbers compared by value: see [`same_id`]; earlier events are
//! progress, logging or server-to-client requests). Any other body is captured
//! and read at its end.
//!
//! A JSON answer of the MCP endpoint (an SSE event's, or a JSON body) is
//! read up to four times the capture limit, in characters either way, so
//! that one somewhat over the limit is still parsed (its error status
//! seen) and redacted as JSON before it is cut.
//!
//! An event stream that ends before the answer, having carried an event id
//! a client can resume it from, parks its span in its session's run rather
//! than finishing it (see [`crate::resume`]).

use http::StatusCode;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use crate::api::RequestSpan;
use crate::capture::{Capture, truncate_chars};
use crate::capture_policy::{ErrorText, Kept, Side};
use crate::config::Settings;
use crate::exchange::{ResponseHead, encoding_text};
use crate::mcp::answer::{Look, answers, same_id};
use crate::mcp::envelope::{
    Outcome, Response, ServerMessage, parse_response, parse_server_message,
};
use crate::mcp::sse::{SseDecoder, SseEvent};
use crate::mcp::{SERVER_ERROR, error_type};
use crate::moment::Moment;
use crate::resume::{ParkedCall, StreamLeft};
use crate::run::{ClosedVia, RunEnding, UnderWay};
use crate::span_draft::{Destination, Ending, SpanDraft, note_server};
use crate::state::Shared;
use crate::wire::{MAX_ERROR_CHARS, RunStatus};

/// What the recorder is for.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per response, and the large variant is the common one"
)]
enum Purpose {
    /// A request's span, and where it goes.
    Span {
        draft: SpanDraft,
        destination: Destination,
    },
    /// The initialize whose result completes the `start` of the run under `key`.
    Initialize {
        key: Arc<str>,
        run_id: Uuid,
        request_id: Value,
        /// The initialize's span, whose children wait for the start.
        request_span: RequestSpan,
        /// Whether this initialize opened the run (a session id already
        /// open here keeps its run, which a refusal must not end).
        opened: bool,
    },
}

/// How the body is read.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one reader per response, made once and never moved in bulk"
)]
enum Reader {
    /// Event by event, until the response to the request.
    EventStream {
        decoder: SseDecoder,
        found: Option<Found>,
        /// `notifications/progress` events seen before the answer.
        progress_events: u64,
    },
    /// The whole body, up to the read window (JSON) or the capture limit.
    Whole { capture: Capture, json: bool },
    /// An encoded body (see [`ResponseHead::encoding`]): nothing is kept.
    Encoded,
}

/// The SSE event that carried the response.
#[derive(Debug)]
pub(crate) struct Found {
    /// Its data, up to the read window.
    pub(crate) text: String,
    /// Whether `text` is all of it.
    pub(crate) read_whole: bool,
    pub(crate) response: Option<Response>,
}

/// How a response body is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    /// It ended normally (or the answer was seen).
    Complete,
    /// It failed while streaming.
    Broke,
    /// It was dropped before it ended: the client went away.
    Dropped,
}

/// Why a request's stream ended before its answer: `(error_type, error_message)`.
pub(crate) type Interruption = (&'static str, &'static str);

/// An event stream that ended normally without the answer to its request.
pub(crate) const ENDED_EARLY: Interruption = (
    "stream_error",
    "the response stream ended before the answer",
);

/// The error of a call the client cancelled (`notifications/cancelled`)
/// while it waited for a resumed stream.
pub(crate) const CANCELLED_BY_CLIENT: Interruption =
    ("cancelled", "the client cancelled the request");

/// How long a call whose client went away mid-stream waits for the client
/// to resume it (unless the idle timeout is shorter): a dropped connection
/// comes back within a few retries; a client that cancelled or crashed
/// never does, and its call should not wait the idle timeout unsent.
pub(crate) const DROPPED_STREAM_WAIT: Duration = Duration::from_secs(30);

impl BodyEnd {
    /// How long a call whose stream ended this way, resumable and before
    /// its answer, waits for a resumed stream: the idle timeout for a
    /// stream the server closed (it polls, and the work may be long) or
    /// that broke, [`DROPPED_STREAM_WAIT`] at most for one the client
    /// dropped. A client resuming in the session renews the wait to the
    /// idle timeout either way.
    pub(crate) fn resumption_wait(self, idle_timeout: Duration) -> Duration {
        match self {
            Self::Complete | Self::Broke => idle_timeout,
            Self::Dropped => idle_timeout.min(DROPPED_STREAM_WAIT),
        }
    }

    /// What a body that is over this way says of a request whose answer
    /// it did not carry, if anything: a stream that ended normally says
    /// nothing (a body that is no event stream may end with its answer).
    pub(crate) fn interruption(self) -> Option<Interruption> {
        match self {
            Self::Complete => None,
            Self::Broke => Some(("stream_error", "the response stream broke")),
            Self::Dropped => Some(("cancelled", "the client went away before the answer")),
        }
    }
}

/// What a request's response said of it, for its span.
#[derive(Debug)]
pub(crate) struct Said {
    pub(crate) status: StatusCode,
    pub(crate) bytes_out: u64,
    /// `notifications/progress` events before the answer.
    pub(crate) progress_events: u64,
    /// The answer's text as read (up to the read window), if there is one.
    pub(crate) output: Option<String>,
    /// Whether `output` is all of the answer.
    pub(crate) read_whole: bool,
    /// The JSON-RPC response in it.
    pub(crate) response: Option<Response>,
    /// How the stream ended before the answer, if it did.
    pub(crate) interruption: Option<Interruption>,
}

/// Watches one response body; see the module docs.
#[derive(Debug)]
pub(crate) struct Recorder {
    shared: Arc<Shared>,
    purpose: Purpose,
    reader: Reader,
    status: StatusCode,
    bytes_out: u64,
    /// The request under way in its run, until the recorder is done.
    under_way: Option<UnderWay>,
}

impl Recorder {
    /// Watches the body of a request that becomes a span (`from_mcp`: an
    /// answer of the MCP endpoint, whose JSON is read up to the read
    /// window; any other body up to the capture limit). Boxed where it is
    /// made: it rides along with the response body, which moves.
    pub(crate) fn span(
        shared: Arc<Shared>,
        mut draft: SpanDraft,
        destination: Destination,
        head: &ResponseHead,
        from_mcp: bool,
        under_way: Option<UnderWay>,
    ) -> Box<Self> {
        if let Some(encoding) = head.encoding() {
            draft
                .attributes
                .insert("http.response.content_encoding", encoding_text(encoding));
        }
        let reader = Reader::for_body(head, &shared.settings, from_mcp);
        Box::new(Self {
            shared,
            purpose: Purpose::Span { draft, destination },
            reader,
            status: head.status,
            bytes_out: 0,
            under_way,
        })
    }

    /// Watches the body of an initialize response for the negotiated
    /// version and the server's identity (boxed, as [`span`](Self::span)).
    pub(crate) fn initialize(
        shared: Arc<Shared>,
        key: Arc<str>,
        run_id: Uuid,
        request_id: Value,
        request_span: RequestSpan,
        opened: bool,
        head: &ResponseHead,
    ) -> Box<Self> {
        let reader = Reader::for_body(head, &shared.settings, true);
        Box::new(Self {
            shared,
            purpose: Purpose::Initialize {
                key,
                run_id,
                request_id,
                request_span,
                opened,
            },
            reader,
            status: StatusCode::OK,
            bytes_out: 0,
            under_way: None,
        })
    }

    /// Reads one chunk of the body; `true` once the response was seen, so
    /// that the span can end without waiting for the stream to close.
    pub(crate) fn on_data(&mut self, chunk: &[u8]) -> bool {
        self.bytes_out += chunk.len() as u64;
        let request_id = match &self.purpose {
            Purpose::Span { draft, .. } => draft.request_id.as_ref(),
            Purpose::Initialize { request_id, .. } => Some(request_id),
        };
        match &mut self.reader {
            Reader::EventStream {
                decoder,
                found,
                progress_events,
            } => {
                decoder.push(chunk, |event| {
                    if found.is_some() {
                        return;
                    }
                    match Found::from_event(event, request_id) {
                        EventMeaning::Answer(answer) => *found = Some(answer),
                        EventMeaning::Progress => *progress_events += 1,
                        EventMeaning::Other => {}
                    }
                });
                found.is_some()
            }
            Reader::Whole { capture, .. } => {
                capture.push(chunk);
                false
            }
            Reader::Encoded => false,
        }
    }

    /// The body is over (`how`), as seen at `ended`: finishes the span, or
    /// parks it in its session's run if a resumed stream may still bring
    /// its answer (see [`crate::resume`]).
    pub(crate) fn end(self, how: BodyEnd, ended: Moment) {
        let Self {
            shared,
            purpose,
            reader,
            status,
            bytes_out,
            under_way,
        } = self;
        let (mut draft, destination) = match purpose {
            Purpose::Initialize {
                key,
                run_id,
                request_span,
                opened,
                ..
            } => {
                let (_, _, response) = reader.into_output();
                shared
                    .sessions
                    .complete_start(&key, run_id, &shared.exporter, |run| {
                        note_server(run, response.as_ref());
                    });
                request_span.attach_initialize(key, run_id);
                if let (true, Some(Outcome::Error { message, .. })) =
                    (opened, response.map(|r| r.outcome))
                {
                    refused_session(&shared, run_id, message);
                }
                return;
            }
            Purpose::Span { draft, destination } => (draft, destination),
        };
        let ended_early = reader.ended_unanswered() && draft.request_id.is_some();
        let interruption = how.interruption().or(ended_early.then_some(ENDED_EARLY));
        let progress_events = reader.progress_events();
        if let (Some(interruption), Some(last_event_id)) = (interruption, reader.resumable_from())
            && ended_early
            && status.is_success()
            && destination.session_run().is_some()
        {
            let left = StreamLeft {
                status,
                bytes_out,
                progress_events,
                interruption,
                ended,
                last_event_id: last_event_id.into(),
            };
            let wait = how.resumption_wait(shared.settings.idle_timeout);
            ParkedCall::new(draft, destination, left, under_way, wait).park(&shared);
            return;
        }
        let (output, read_whole, response) = reader.into_output();
        let said = Said {
            status,
            bytes_out,
            progress_events,
            output,
            read_whole,
            response,
            interruption,
        };
        let ending = span_ending(&shared.settings, &mut draft, said, ended);
        draft.finish(&shared, destination, ending);
        // Under way until its span is recorded or deferred (a deferred one
        // is recorded before the idle sweep could end the run: see
        // `OpenRun::idleness_at`).
        drop(under_way);
    }
}

/// How a request's span ends, from what its response said, seen at
/// `ended`: its output as the span keeps it (redacted and cut to the
/// capture limit where the span is recorded), its progress, and its error
/// if it failed.
pub(crate) fn span_ending(
    settings: &Settings,
    draft: &mut SpanDraft,
    said: Said,
    ended: Moment,
) -> Ending {
    let output = match said.output {
        Some(text) => settings.keep(Side::Output, text, said.read_whole),
        None => Kept::Final(None, false),
    };
    if said.progress_events > 0 {
        draft
            .attributes
            .insert("mcp.progress_events", said.progress_events);
    }
    let error = classify(said.status, said.response.as_ref(), said.interruption).or_else(|| {
        draft
            .preset_error
            .take()
            .map(|(kind, message)| (kind, ErrorText::Own(message), None))
    });
    Ending {
        ended,
        output,
        bytes_out: said.bytes_out,
        error,
        response: said.response,
    }
}

/// Ends at once the run of a session whose `initialize` the server answered
/// with a JSON-RPC error: the client will not use the session, and an idle
/// timeout would end it with a misleading `ok`.
fn refused_session(shared: &Shared, run_id: Uuid, message: String) {
    let via = ClosedVia::InitializeFailed;
    let summary = shared.settings.answered_error_text(message);
    let ending = RunEnding {
        status: RunStatus::Error,
        error_summary: Some(truncate_chars(&summary, MAX_ERROR_CHARS).0.to_owned()),
        ..RunEnding::from(via)
    };
    shared.sessions.close_run(run_id, ending, &shared.exporter);
}

/// Why a span failed, if it did: the JSON-RPC response decides when there
/// is one; else an HTTP 5xx; else a stream that broke or was dropped before
/// the answer (a recorder that saw the answer is finished at once, so an
/// interruption always came first).
fn classify(
    status: StatusCode,
    response: Option<&Response>,
    interruption: Option<Interruption>,
) -> Option<(String, ErrorText, Option<i64>)> {
    // A text the answer carried is output; the layer's own texts are not.
    match response.map(|r| &r.outcome) {
        Some(Outcome::Error { code, message }) => {
            let error_type = code.map_or(SERVER_ERROR, error_type);
            let message = ErrorText::Answered(message.clone());
            return Some((error_type.to_owned(), message, *code));
        }
        Some(Outcome::ToolError { message }) => {
            let message = ErrorText::Answered(message.clone());
            return Some(("tool_error".to_owned(), message, None));
        }
        Some(Outcome::Success) => return None,
        None => {}
    }
    if status.is_server_error() {
        let message = ErrorText::Own(format!("HTTP {status}"));
        return Some(("http_error".to_owned(), message, None));
    }
    interruption.map(|(kind, message)| (kind.to_owned(), ErrorText::Own(message.to_owned()), None))
}

impl Reader {
    fn for_body(head: &ResponseHead, settings: &Settings, from_mcp: bool) -> Self {
        let read_window = if from_mcp {
            settings.answer_read_window()
        } else {
            settings.capture_limit
        };
        if head.encoding().is_some() {
            Self::Encoded
        } else if head.is_event_stream() {
            Self::EventStream {
                // The last event id says whether a client can resume the stream.
                decoder: SseDecoder::data_and_id(read_window),
                found: None,
                progress_events: 0,
            }
        } else {
            let json = head.is_json();
            Self::Whole {
                capture: Capture::new(if json {
                    read_window
                } else {
                    settings.capture_limit
                }),
                json,
            }
        }
    }

    /// An event stream that is over without the answer to the request.
    fn ended_unanswered(&self) -> bool {
        matches!(self, Self::EventStream { found: None, .. })
    }

    /// The last event id of an event stream without the answer, which a
    /// client would resume it from; `None` if it carried none.
    fn resumable_from(&self) -> Option<&[u8]> {
        match self {
            Self::EventStream {
                found: None,
                decoder,
                ..
            } => Some(decoder.last_id()).filter(|id| !id.is_empty()),
            _ => None,
        }
    }

    /// How many progress notifications came before the answer.
    fn progress_events(&self) -> u64 {
        match self {
            Self::EventStream {
                progress_events, ..
            } => *progress_events,
            Self::Whole { .. } | Self::Encoded => 0,
        }
    }

    /// The output text as read, whether it was read whole, and the
    /// JSON-RPC response it holds.
    fn into_output(self) -> (Option<String>, bool, Option<Response>) {
        match self {
            Self::EventStream {
                found: Some(found), ..
            } => (Some(found.text), found.read_whole, found.response),
            Self::EventStream { found: None, .. } | Self::Encoded => (None, true, None),
            Self::Whole { capture, json } => {
                if capture.total_bytes() == 0 {
                    return (None, true, None);
                }
                let read_whole = !capture.is_truncated();
                let response = (json && read_whole)
                    .then(|| parse_response(capture.bytes()))
                    .flatten();
                (Some(capture.into_text()), read_whole, response)
            }
        }
    }
}

/// What one SSE event means for the span.
#[derive(Debug)]
pub(crate) enum EventMeaning {
    /// The response to the request.
    Answer(Found),
    /// A `notifications/progress` about it.
    Progress,
    /// Anything else: logging, server-to-client requests, other responses.
    Other,
}

impl Found {
    /// Reads one event: the response to `request_id` (any response when the
    /// id is unknown), a progress notification, or something else. An event
    /// cut by the read window is taken as the answer when its first
    /// top-level members say it is a response to `request_id` (see
    /// [`answers`]), or a response whose id the window cut off.
    pub(crate) fn from_event(event: SseEvent<'_>, request_id: Option<&Value>) -> EventMeaning {
        if event.data_truncated {
            if answers(event.data, request_id) == Look::Other {
                return EventMeaning::Other;
            }
            return EventMeaning::Answer(Self {
                text: event.text(),
                read_whole: false,
                response: None,
            });
        }
        let response = match parse_server_message(event.data) {
            Some(ServerMessage::Response(response)) => response,
            Some(ServerMessage::Notification { method }) if method == "notifications/progress" => {
                return EventMeaning::Progress;
            }
            _ => return EventMeaning::Other,
        };
        if request_id.is_some_and(|id| !same_id(id, &response.id)) {
            return EventMeaning::Other;
        }
        EventMeaning::Answer(Self {
            text: event.text(),
            read_whole: true,
            response: Some(response),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What an event whose data the read window cut after `data` means to
    /// the request with id 1.
    fn cut_event(data: &str) -> EventMeaning {
        let event = SseEvent {
            event: b"",
            id: b"",
            data: data.as_bytes(),
            data_truncated: true,
        };
        Found::from_event(event, Some(&json!(1)))
    }

    #[test]
    fn an_answer_whose_id_is_the_same_number_written_otherwise_is_the_answer() {
        for request_id in ["1", "1.0", "1e0"] {
            let request_id: Value = serde_json::from_str(request_id).unwrap();
            let event = SseEvent {
                event: b"",
                id: b"",
                data: br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
                data_truncated: false,
            };
            let meaning = Found::from_event(event, Some(&request_id));
            assert!(matches!(meaning, EventMeaning::Answer(_)), "{request_id}");
        }
    }

    #[test]
    fn an_event_cut_by_the_read_window_is_the_answer_only_if_it_answers_the_request() {
        let answer = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"xx"#;
        assert!(matches!(
            cut_event(answer),
            EventMeaning::Answer(Found {
                read_whole: false,
                response: None,
                ..
            })
        ));
        let other = r#"{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"xx"#;
        assert!(matches!(cut_event(other), EventMeaning::Other));
        let notification = format!(
            r#"{{"jsonrpc":"2.0","params":{{"level":"error","data":"{}"#,
            "x".repeat(600)
        );
        assert!(matches!(cut_event(&notification), EventMeaning::Other));
        // An id the window cut off: a response all the same, as it cannot be told.
        let late_id = r#"{"result":{"content":[{"type":"text","text":"xx"#;
        assert!(matches!(cut_event(late_id), EventMeaning::Answer(_)));
        let error_first = r#"{"error":{"code":-32601,"message":"no such method: xx"#;
        assert!(matches!(cut_event(error_first), EventMeaning::Answer(_)));
    }

    #[test]
    fn a_call_dropped_by_its_client_waits_less_for_a_resumption() {
        let idle = Duration::from_secs(300);
        assert_eq!(BodyEnd::Complete.resumption_wait(idle), idle);
        assert_eq!(BodyEnd::Broke.resumption_wait(idle), idle);
        assert_eq!(BodyEnd::Dropped.resumption_wait(idle), DROPPED_STREAM_WAIT);
        let short = Duration::from_secs(5);
        assert_eq!(BodyEnd::Dropped.resumption_wait(short), short);
    }
}
