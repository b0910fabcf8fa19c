//! [`RequestSpan`]: the span of the request a handler is serving, reachable
//! through request extensions, for child spans and propagation.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;
use uuid::Uuid;

use super::span::{SpanGuard, SpanSink};
use crate::capture::Capture;
use crate::export::SpanRecords;
use crate::mcp::envelope::{ClientMessage, parse_client_message};
use crate::moment::instant_now;
use crate::run::NotOpenHere;
use crate::span_draft::Destination;
use crate::span_kind::SpanKind;
use crate::state::Shared;
use crate::wire::Span;

/// Most child spans kept for one request while its run is not known yet.
const MAX_WAITING_CHILDREN: usize = 1_000;

/// The span of the request being handled under [`TrodoLayer`](crate::TrodoLayer).
///
/// The layer puts it in the request's extensions before calling your
/// service. Take it with axum's `Extension<RequestSpan>`, or in an rmcp tool
/// from the HTTP request parts rmcp hands to the handler
/// (`ctx.extensions.get::<http::request::Parts>()`, then [`RequestSpan::of`]).
/// Its children (LLM calls, retrievals, ...) have the request's span as
/// parent and count in the run's totals (an `initialize`, which is no span
/// of its own, puts its children in the session's run without a parent;
/// so does a GET or DELETE of a session, and a notification or a client's
/// answer for children it finishes once its body was read whole). The children of a
/// call that opens its run (the first of a conversation without a
/// session, or of a session this process had not seen) are sent once its
/// answer is read, after the run's `start`, which then carries the
/// server's identity the answer gives (unless the run started sooner,
/// see the README's "Child spans from tool handlers").
/// A layer switched off
/// ([`TrodoConfig::with_enabled`](crate::TrodoConfig::with_enabled), `TRODO_ENABLED=false`)
/// puts a span there too, one that is part of no run: its id is nil, it
/// gives no propagation headers, and its children are dropped, so your
/// handlers need no change to run without the layer's recording.
///
/// ```
/// use axum::{Extension, Router, routing::post};
/// use trodo_tower::{RequestSpan, SpanKind, TrodoConfig, TrodoLayer};
///
/// async fn answer(Extension(span): Extension<RequestSpan>) -> &'static str {
///     let mut llm = span.child(SpanKind::Llm, "llm.answer");
///     llm.set_model("claude-sonnet", "anthropic").set_tokens(120, 40).set_cost(0.0009);
///     llm.finish();
///     "done"
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let app: Router = Router::new()
///     .route("/answer", post(answer))
///     .layer(TrodoLayer::new(TrodoConfig::new()));
/// # }
/// ```
#[derive(Clone)]
pub struct RequestSpan {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    span_id: Uuid,
    state: Mutex<State>,
    /// The request body as the inner service read it (the span's input),
    /// filled by [`RequestBody`](crate::body::RequestBody) and taken when
    /// the exchange is read. It lives here to spare the request an
    /// allocation of its own.
    input: Mutex<Capture>,
}

/// Where the request's children go.
#[derive(Debug)]
enum State {
    /// The run is not known yet (it is decided on the response head).
    Waiting(Vec<Span>),
    /// Into the run the request opened under `key`, whose `start` waits
    /// for what the answer says of the server: children wait with it, and
    /// follow the request's own span (see [`RequestSpan::run_started`]).
    Opening {
        key: Arc<str>,
        run_id: Uuid,
        spans: Vec<Span>,
    },
    /// Into an open run: under `key` in the run table, or by id (a joined run).
    InRun {
        key: Option<Arc<str>>,
        run_id: Uuid,
        /// Whether the request's own span is sent. An `initialize`'s is not
        /// (the exchange goes into its run's `start`): its children go into
        /// the run without a parent.
        own_span: bool,
        /// Whether the request was bound to its run before the layer read
        /// it: then it may yet be no span (a notification, a client's
        /// answer), which its body tells once read whole.
        unread: bool,
    },
    /// Into the span list of the request's own run, sent whole at its end.
    Collecting { run_id: Uuid, spans: Vec<Span> },
    /// The request's own run was sent: later children are dropped (and
    /// counted, see [`Exporter::drop_after_run_end`](crate::export::Exporter::drop_after_run_end)).
    Sent { run_id: Uuid },
    /// The request is part of no run: children are dropped (and counted,
    /// see [`Exporter::drop_without_run`](crate::export::Exporter::drop_without_run)).
    Detached,
}

impl State {
    /// The run the request's spans go to, once known.
    fn run_id(&self) -> Option<Uuid> {
        match self {
            Self::InRun { run_id, .. }
            | Self::Opening { run_id, .. }
            | Self::Collecting { run_id, .. }
            | Self::Sent { run_id } => Some(*run_id),
            Self::Waiting(_) | Self::Detached => None,
        }
    }
}

impl Drop for Inner {
    /// Children still waiting when the request is done never got a run, or
    /// waited for the request's span, whose recording was lost (a panic of
    /// the layer's, fenced). Nothing here takes the run table's lock, which
    /// the thread dropping the last clone may hold.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let State::Waiting(spans) | State::Opening { spans, .. } = state {
            self.shared.exporter.drop_without_run(spans.len());
        }
    }
}

impl fmt::Debug for RequestSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSpan")
            .field("span_id", &self.inner.span_id)
            .field("run_id", &self.run_id())
            .finish()
    }
}

impl RequestSpan {
    /// A request's span, whose capture of the request body keeps up to
    /// `input_limit` characters.
    pub(crate) fn new(shared: Arc<Shared>, input_limit: usize) -> Self {
        let input = Capture::new(input_limit);
        Self {
            inner: Arc::new(Inner {
                shared,
                span_id: Uuid::new_v4(),
                state: Mutex::new(State::Waiting(Vec::new())),
                input: Mutex::new(input),
            }),
        }
    }

    /// The span a switched-off layer lends every request: part of no run,
    /// so its children are dropped, and a nil id. Handlers that take a
    /// `RequestSpan` work the same with the layer switched off.
    pub(crate) fn switched_off(shared: Arc<Shared>) -> Self {
        Self {
            inner: Arc::new(Inner {
                shared,
                span_id: Uuid::nil(),
                state: Mutex::new(State::Detached),
                input: Mutex::new(Capture::new(0)),
            }),
        }
    }

    /// The state of the layer the request went through.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The request body read so far (the span's input).
    pub(crate) fn input(&self) -> MutexGuard<'_, Capture> {
        self.inner
            .input
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The request span in the extensions of a request head, if the layer put one there.
    #[must_use]
    pub fn of(parts: &http::request::Parts) -> Option<&Self> {
        parts.extensions.get::<Self>()
    }

    /// The id the request's span will have.
    #[must_use]
    pub fn span_id(&self) -> Uuid {
        self.inner.span_id
    }

    /// The request's run, once known (it is known inside handlers of
    /// requests in a session the process knows, and always after the answer).
    #[must_use]
    pub fn run_id(&self) -> Option<Uuid> {
        self.lock().run_id()
    }

    /// A child span of the request's span.
    pub fn child(&self, kind: SpanKind, name: impl Into<String>) -> SpanGuard {
        let run_id = self.run_id().unwrap_or_else(Uuid::nil);
        let shared = Arc::clone(&self.inner.shared);
        SpanGuard::new(
            shared,
            SpanSink::Request(self.clone()),
            run_id,
            Some(self.span_id()),
            kind,
            name.into(),
        )
    }

    /// Headers that let a service you call join this request's run under
    /// its span: `X-Trodo-Run-Id` and `X-Trodo-Parent-Span-Id`. Empty while
    /// the run is not known: a request in a session this process knows, or
    /// one without a session that came with its caller's propagation
    /// headers, has its run from the start; another sessionless call or a
    /// session another worker opened gets it once the answer's head is
    /// decided, after the handler. A new session's `initialize` gives none:
    /// its span is never sent (it fills its run's `start`), so it can be no
    /// one's parent.
    #[must_use]
    pub fn propagation_headers(&self) -> http::HeaderMap {
        let run_id = match &*self.lock() {
            State::InRun {
                own_span: false, ..
            } => None,
            state => state.run_id(),
        };
        super::propagation::headers(run_id, self.span_id())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a finished child where the request's spans go.
    pub(crate) fn record_child(&self, mut span: Span) {
        let shared = &self.inner.shared;
        let mut state = self.lock();
        match &mut *state {
            State::Waiting(spans) => {
                if spans.len() < MAX_WAITING_CHILDREN {
                    spans.push(span);
                } else {
                    shared.exporter.drop_waiting_child();
                }
            }
            State::Opening { run_id, spans, .. } if spans.len() < MAX_WAITING_CHILDREN => {
                span.run_id = *run_id;
                spans.push(span);
            }
            // Too many to wait: the run's `start` goes now.
            State::Opening { key, run_id, .. } => {
                span.run_id = *run_id;
                let (key, run_id) = (key.clone(), *run_id);
                drop(state);
                record_in_run(shared, Some(&key), run_id, vec![span], instant_now());
            }
            State::InRun {
                key,
                run_id,
                own_span,
                unread,
            } => {
                if *unread && let Some(is_request) = self.body_is_request() {
                    (*own_span, *unread) = (*own_span && is_request, false);
                }
                place(&mut span, *run_id, self.unsent_parent(*own_span));
                let (key, run_id) = (key.clone(), *run_id);
                drop(state);
                record_in_run(shared, key.as_deref(), run_id, vec![span], instant_now());
            }
            State::Collecting { run_id, spans } => {
                span.run_id = *run_id;
                spans.push(span);
            }
            State::Sent { .. } => {
                drop(state);
                shared.exporter.drop_after_run_end(1);
            }
            State::Detached => {
                drop(state);
                shared.exporter.drop_without_run(1);
            }
        }
    }

    /// Binds the request to its run once the response head decided it, and
    /// sends the children that waited for it.
    pub(crate) fn attach(&self, destination: &Destination) {
        self.attach_with(destination, true, false);
    }

    /// Binds a request to its run from its head on, before the layer read
    /// it (a request in a session known here, or with its caller's
    /// propagation headers). It may yet be no span: a child finished once
    /// its body is read whole, and holds a notification or a client's
    /// answer, goes into the run without a parent.
    pub(crate) fn attach_unread(&self, destination: &Destination) {
        self.attach_with(destination, true, true);
    }

    /// Binds a request that is no span of its own (a GET or DELETE of its
    /// session) to its run: its children go into the run without a parent.
    pub(crate) fn attach_without_own_span(&self, destination: &Destination) {
        self.attach_with(destination, false, false);
    }

    /// Binds an `initialize` to the run it opened, once the run's `start`
    /// is complete (a child recorded sooner would send the start without
    /// what the answer says). Its own span is never sent, so its children
    /// go into the run without a parent.
    pub(crate) fn attach_initialize(&self, key: Arc<str>, run_id: Uuid) {
        self.attach_without_own_span(&Destination::Run {
            key,
            run_id,
            opened: true,
        });
    }

    fn attach_with(&self, destination: &Destination, own_span: bool, unread: bool) {
        let mut state = self.lock();
        let waiting = match std::mem::replace(&mut *state, State::Detached) {
            State::Waiting(spans) => spans,
            other => {
                *state = other;
                return;
            }
        };
        let (key, run_id) = match destination {
            // A run this request opened: its `start` waits for the answer.
            Destination::Run {
                key,
                run_id,
                opened: true,
            } if own_span => {
                *state = State::Opening {
                    key: key.clone(),
                    run_id: *run_id,
                    spans: placed(waiting, *run_id, None),
                };
                return;
            }
            Destination::Run { key, run_id, .. } => (Some(key.clone()), *run_id),
            Destination::Joined { run_id, .. } => (None, *run_id),
            Destination::OwnRun(run) => {
                let spans = placed(waiting, run.run_id, None);
                *state = State::Collecting {
                    run_id: run.run_id,
                    spans,
                };
                return;
            }
        };
        *state = State::InRun {
            key: key.clone(),
            run_id,
            own_span,
            unread,
        };
        drop(state);
        if !waiting.is_empty() {
            let waiting = placed(waiting, run_id, self.unsent_parent(own_span));
            record_in_run(
                &self.inner.shared,
                key.as_deref(),
                run_id,
                waiting,
                instant_now(),
            );
        }
    }

    /// The run the request opened has its `start` complete and the
    /// request's span: the children that waited go into the run, and later
    /// ones as they finish.
    pub(crate) fn run_started(&self) {
        let Some((key, run_id, spans)) = self.leave_opening() else {
            return;
        };
        if !spans.is_empty() {
            record_in_run(&self.inner.shared, Some(&key), run_id, spans, instant_now());
        }
    }

    /// [`run_started`](Self::run_started) for a caller that records the
    /// request's span itself under the run table's lock (a parked call
    /// given up): the children that waited, taken out for it to record
    /// after that span. Later ones go into the run as they finish.
    pub(crate) fn take_waiting_children(&self) -> Vec<Span> {
        self.leave_opening()
            .map(|(_, _, spans)| spans)
            .unwrap_or_default()
    }

    /// From `Opening` to the run: its key and id, and the children that
    /// waited. Takes no lock but the request's own, so that it may be
    /// called under the run table's.
    fn leave_opening(&self) -> Option<(Arc<str>, Uuid, Vec<Span>)> {
        let mut state = self.lock();
        let State::Opening { key, run_id, spans } = &mut *state else {
            return None;
        };
        let (key, run_id, spans) = (key.clone(), *run_id, std::mem::take(spans));
        *state = State::InRun {
            key: Some(key.clone()),
            run_id,
            own_span: true,
            unread: false,
        };
        Some((key, run_id, spans))
    }

    /// The request's span id if its span is not sent (`own_span` unset).
    fn unsent_parent(&self, own_span: bool) -> Option<Uuid> {
        (!own_span).then_some(self.inner.span_id)
    }

    /// Whether the request body, once read whole, is a JSON-RPC request
    /// (one that is not JSON-RPC, or too large or encoded to tell, counts
    /// as one: its span is sent); `None` while it is being read. Reads
    /// the body as the layer keeps it for the exchange, whose own reading
    /// may take it first (then the request has been decided).
    fn body_is_request(&self) -> Option<bool> {
        let input = self.input();
        if !input.is_ended() {
            return None;
        }
        let message = parse_client_message(input.bytes());
        let no_span = matches!(
            message,
            Some(ClientMessage::Notification { .. } | ClientMessage::Response)
        );
        Some(!no_span)
    }

    /// The request is no span of its own (a notification, a GET or DELETE
    /// of its session, a call whose run ended while it was served, an
    /// exchange of no run). One whose run was not known is part of none:
    /// the children that waited for one are dropped, as are later ones.
    /// One in its session's run from the start stays there: later children
    /// go into the run without a parent, or count as dropped after its end.
    pub(crate) fn detach(&self) {
        let mut state = self.lock();
        let waiting = match &mut *state {
            State::Waiting(spans) => spans.len(),
            State::InRun {
                own_span, unread, ..
            } => {
                (*own_span, *unread) = (false, false);
                return;
            }
            _ => return,
        };
        *state = State::Detached;
        drop(state);
        self.inner.shared.exporter.drop_without_run(waiting);
    }

    /// The children collected for the request's own run, which is being
    /// sent: children that finish later are dropped.
    pub(crate) fn take_collected(&self) -> Vec<Span> {
        let mut state = self.lock();
        match &mut *state {
            State::Collecting { run_id, spans } => {
                let spans = std::mem::take(spans);
                *state = State::Sent { run_id: *run_id };
                spans
            }
            _ => Vec::new(),
        }
    }
}

/// Puts `span` in the run `run_id`; a child of `unsent_parent` (a span
/// that is not sent) loses its parent.
fn place(span: &mut Span, run_id: Uuid, unsent_parent: Option<Uuid>) {
    span.run_id = run_id;
    if unsent_parent.is_some() && span.parent_span_id == unsent_parent {
        span.parent_span_id = None;
    }
}

/// [`place`] for each of `spans`.
fn placed(mut spans: Vec<Span>, run_id: Uuid, unsent_parent: Option<Uuid>) -> Vec<Span> {
    for span in &mut spans {
        place(span, run_id, unsent_parent);
    }
    spans
}

/// Records spans, activity `seen` then, in their run. Under a key: into
/// that open run, or nowhere if it has ended meanwhile (its `end` and
/// totals are out already). By id alone: into the run if it is open here,
/// nowhere if it ended here, else sent as they are (the run belongs to
/// another process).
pub(crate) fn record_in_run(
    shared: &Shared,
    key: Option<&str>,
    run_id: Uuid,
    spans: Vec<Span>,
    seen: Instant,
) {
    let sessions = &shared.sessions;
    let exporter = &shared.exporter;
    // Serialized before the run table is locked (see `SpanRecords`).
    let spans = SpanRecords::new(run_id, spans);
    match key {
        Some(key) => {
            if let Err(spans) = sessions.record_spans(key, spans, seen, exporter) {
                exporter.drop_after_run_end(spans.len());
            }
        }
        None => match sessions.record_spans_in_run(spans, seen, exporter) {
            Ok(()) => {}
            Err(NotOpenHere::Ended(spans)) => exporter.drop_after_run_end(spans.len()),
            Err(NotOpenHere::Elsewhere(spans)) => {
                // Another process's run: the session store (if any) counts them.
                sessions.record_elsewhere(&spans);
                exporter.send_spans(spans);
            }
        },
    }
}
