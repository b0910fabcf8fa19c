//! One HTTP exchange from the request to the response head: what the layer
//! learns of the request, and what the response head decides (open, resume
//! or close a run; record a span or not).
//!
//! With a session store, a request in a session this process does not know
//! starts looking the session up in the store when it arrives, and the
//! response head waits for the answer (at most the store timeout) before it
//! decides: the run may be another worker's. The response to `initialize`
//! waits (as long at most) until the store holds the new run. Either wait
//! holds the response head back, never the body; a store that does not
//! answer in time is left to finish in the background, and the exchange
//! goes on as without a store.

use axum::extract::MatchedPath;
use http::request::Parts;
use http::{HeaderValue, Method, Response};
use std::borrow::Cow;
use std::sync::Arc;
use uuid::Uuid;

use crate::api::{RequestSpan, inbound_propagation};
use crate::capture::Capture;
use crate::capture_policy::{Kept, Side};
use crate::config::Sessionless;
use crate::mcp::envelope::{
    ClientMessage, Request as McpRequest, mentions_initialize, parse_client_message,
};
use crate::mcp::published_version;
use crate::mcp::sse::MAX_META_BYTES;
use crate::moment::Moment;
use crate::recorder::Recorder;
use crate::run::{RunKey, UnderWay};
use crate::span_draft::{Destination, SpanDraft};
use crate::state::Shared;
use crate::store::{Prefetch, Resolved};

mod destination;
use destination::SessionlessRun;
mod draft;
mod encoding;
mod head;
mod pending;
mod response_head;

pub(crate) use encoding::encoding_text;
use head::{RequestHeaders, accepts_event_stream, caller, naming_text, session_id_text};
pub(crate) use pending::{Head, Pending, Resolving};
pub(crate) use response_head::ResponseHead;

/// A request under way, until its response head (or its failure).
#[derive(Debug)]
pub(crate) struct Exchange {
    shared: Arc<Shared>,
    /// When the request arrived.
    arrived: Moment,
    method: Method,
    /// The request's path and axum's matched route.
    target: Target,
    /// The session id, unless the config groups sessions by the key chain.
    session_id: Option<Arc<str>>,
    /// `Mcp-Protocol-Version`, if it is text.
    /// A published version lent, any other text copied.
    protocol_header: Option<Cow<'static, str>>,
    /// `Mcp-Method` / `Mcp-Name` (MCP 2026-07-28), if text: name a request too large to parse.
    method_header: Option<Box<str>>,
    name_header: Option<Box<str>>,
    /// The request body's `content-encoding`, if it is encoded: the layer
    /// neither reads nor keeps it.
    encoding: Option<Box<str>>,
    /// Whether the body is empty, as it says before anyone reads it: a
    /// body no one read (refused by an auth layer, say) reads as empty too,
    /// and may not be.
    empty_body: bool,
    wants_event_stream: bool,
    /// The `Last-Event-ID` of a GET event stream: a resumed stream (on a
    /// POST it means nothing, and is not kept).
    last_event_id: Option<Box<[u8]>>,
    /// The application's run key, for requests without a session.
    app_key: Option<String>,
    /// The caller's address (or user agent), for requests without a session.
    caller: Option<String>,
    /// The run's end user, from the configured extractor.
    distinct_id: Option<String>,
    /// The caller's run and span, from the propagation headers.
    joined: Option<(Uuid, Option<Uuid>)>,
    /// The request's span, also in the request's extensions for handlers;
    /// it holds the request body as read (the span's input).
    request_span: RequestSpan,
    /// The session's run, if it was open in this process when the request came.
    known_run: Option<Uuid>,
    /// This request, under way in `known_run` until its answer has passed
    /// (the idle sweep does not end the run meanwhile).
    under_way: Option<UnderWay>,
    /// Whether the exchange is read later (see [`crate::tape`]).
    reading: Reading,
    /// What a session store's lookup left (only with a store): boxed, as
    /// most exchanges have none and the exchange is moved and copied
    /// between threads.
    store: Option<Box<StoreWait>>,
}

/// How an exchange is read: as its response streams, or later (see
/// [`crate::tape`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    Live,
    /// Read later; in a session, `run` is the run the response head found
    /// open: the span goes there, or nowhere.
    Taped {
        run: Option<Uuid>,
    },
}

/// An exchange's dealings with the session store.
#[derive(Debug, Default)]
struct StoreWait {
    /// The session store's lookup of a session this process does not know.
    prefetch: Option<Prefetch>,
    /// The session store's answer for a run key, once it came.
    resolved: Option<(Arc<str>, Resolved)>,
    /// The request as read before waiting for the store, so that the
    /// decision after the wait does not read (and redact) it again.
    read: Option<(Option<ClientMessage>, Input)>,
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
    /// Notes what the request head says (and whether the body is empty,
    /// `empty_body`), makes the capture its body will fill, and puts the
    /// request's [`RequestSpan`] in its extensions.
    pub(crate) fn new(shared: Arc<Shared>, parts: &mut Parts, empty_body: bool) -> Self {
        let settings = &shared.settings;
        let found = RequestHeaders::of(&parts.headers, &settings.session_header);
        // An encoded body is not read: its capture only counts its bytes.
        let encoding = found
            .content_encoding
            .map(|value| encoding_text(value).into_boxed_str());
        // A POST to the MCP endpoint (or, before it is known, to any path)
        // is read far enough to be understood; any other body only up to
        // the capture limit.
        let to_mcp = parts.method == Method::POST
            && shared.is_mcp_path(endpoint(parts.extensions.get(), parts.uri.path()));
        let input_limit = match (&encoding, to_mcp) {
            (Some(_), _) => 0,
            (None, true) => settings.capture_limit.max(REQUEST_READ_CHARS),
            (None, false) => settings.capture_limit,
        };
        let request_span = RequestSpan::new(Arc::clone(&shared), input_limit);
        parts.extensions.insert(request_span.clone());
        let headers = &parts.headers;
        let session_text = found
            .session
            .and_then(session_id_text)
            .filter(|_| !settings.group_sessions);
        let (app_key, caller) =
            if session_text.is_none() && settings.sessionless == Sessionless::Group {
                let app_key = settings
                    .run_key
                    .as_ref()
                    .and_then(|resolve| resolve.call(parts, &settings.hook_panics));
                (app_key, caller(parts))
            } else {
                (None, None)
            };
        let wants_event_stream = parts.method == Method::GET && accepts_event_stream(headers);
        let control = is_session_control(
            &parts.method,
            wants_event_stream,
            &shared,
            endpoint(parts.extensions.get(), parts.uri.path()),
        );
        let mut prefetch = None;
        let mut known_run = None;
        let mut under_way = None;
        let mut session_id = None;
        if let Some(text) = session_text {
            let (id, known) = match &shared.mirror {
                // A known session lends the table's copy of its id.
                None => match shared.sessions.open_key(text) {
                    Some((id, run_id, request)) => (id, Some((run_id, request))),
                    None => (Arc::from(text), None),
                },
                Some(mirror) => {
                    let session_id: Arc<str> = Arc::from(text);
                    let known = shared.sessions.fresh_run_id(
                        &session_id,
                        settings.idle_timeout,
                        &shared.exporter,
                    );
                    if known.is_none() && !control {
                        // Another worker may hold the session: ask the store
                        // now, while the inner service works.
                        prefetch = mirror.prefetch(&session_id);
                    }
                    (session_id, known)
                }
            };
            let known = known.map(|(run_id, request)| {
                under_way = Some(request);
                run_id
            });
            known_run = known;
            // A session known here already has its run: handlers can use it
            // (child spans, propagation headers) before the answer. A GET
            // or DELETE of the session is no span of its own: its children
            // go into the run without a parent.
            if let Some(run_id) = known {
                let destination = Destination::Run {
                    key: Arc::clone(&id),
                    run_id,
                    opened: false,
                };
                if control {
                    request_span.attach_without_own_span(&destination);
                } else {
                    request_span.attach_unread(&destination);
                }
            }
            session_id = Some(id);
        }
        // Only a run opened for this request takes its distinct id: a
        // request in a session whose run is open here opens none.
        let distinct_id = settings
            .distinct_id
            .as_ref()
            .filter(|_| known_run.is_none())
            .and_then(|extract| extract.call(parts, &settings.hook_panics));
        let joined = inbound_propagation(found.run_id, found.parent_span_id);
        // Without a session, a request with the caller's headers goes to the
        // caller's run whatever its answer: its handler can use the run
        // (child spans, propagation headers onwards) from the start.
        if session_id.is_none()
            && let Some((run_id, _)) = joined
        {
            request_span.attach_unread(&Destination::Joined { run_id });
        }
        Self {
            session_id,
            app_key,
            caller,
            distinct_id,
            joined,
            request_span,
            protocol_header: found.protocol_version.and_then(version_text),
            method_header: found.method.and_then(owned_text),
            name_header: found.name.and_then(owned_text),
            encoding,
            empty_body,
            wants_event_stream,
            last_event_id: found
                .last_event_id
                .filter(|_| wants_event_stream)
                .map(|value| event_id_of(value).into()),
            target: Target::of(parts),
            method: parts.method.clone(),
            arrived: Moment::now(),
            known_run,
            under_way,
            reading: Reading::Live,
            store: prefetch.map(|prefetch| {
                Box::new(StoreWait {
                    prefetch: Some(prefetch),
                    ..StoreWait::default()
                })
            }),
            shared,
        }
    }

    /// Notes the session store's answer for `key`.
    pub(super) fn note_resolved(&mut self, key: Arc<str>, resolved: Resolved) {
        self.store.get_or_insert_default().resolved = Some((key, resolved));
    }

    /// Whether the session store's answer for `key` is noted.
    fn resolved_for(&self, key: &str) -> bool {
        self.store
            .as_ref()
            .and_then(|store| store.resolved.as_ref())
            .is_some_and(|(resolved, _)| **resolved == *key)
    }

    /// The request's span, whose input the request body fills as the inner
    /// service reads it.
    pub(crate) fn request_span(&self) -> RequestSpan {
        self.request_span.clone()
    }

    /// The request's path.
    fn path(&self) -> &str {
        self.target.path()
    }

    /// axum's matched route, if the layer is on a route.
    fn route(&self) -> Option<&MatchedPath> {
        self.target.route()
    }

    /// What identifies the endpoint (see [`endpoint`]).
    fn endpoint(&self) -> &str {
        endpoint(self.target.route(), self.path())
    }

    /// The state of the layer this exchange went through.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Whether the request is a HEAD, whose answer has no body.
    pub(crate) fn is_head_request(&self) -> bool {
        self.method == Method::HEAD
    }

    /// `head` with the session id `response` gives, for an exchange read
    /// live (a new session's id comes with the answer to `initialize`).
    pub(crate) fn with_session<B>(
        &self,
        head: ResponseHead,
        response: &Response<B>,
    ) -> ResponseHead {
        head.with_session(response, &self.shared.settings.session_header)
    }

    /// Whether reading this exchange can wait for the backlog (see
    /// [`crate::tape`]): a 2xx answer to one JSON-RPC message POSTed
    /// (neither body encoded) without a session store (other workers must see a run's totals at
    /// once), which is not an `initialize`, and which is either in a
    /// session whose run this process knows or in none. In a session, the
    /// exchange belongs to the run open now, as a recorder made now would;
    /// without one, the backlog finds its run (by the key chain, or a run
    /// of its own) as the response head would have. If so, the bytes of
    /// the request it keeps are returned.
    ///
    /// An answer that names a session is read live, whatever the request
    /// looked like by then (the taped head does not keep it).
    pub(crate) fn tapes<B>(
        &mut self,
        head: &ResponseHead,
        response: &Response<B>,
    ) -> Option<usize> {
        if !(self.method == Method::POST
            && self.shared.mirror.is_none()
            && head.status.is_success()
            && self.store.is_none())
        {
            return None;
        }
        let answered_session = response.headers().get(&self.shared.settings.session_header);
        let known_run = match (&self.session_id, self.known_run) {
            (Some(session_id), Some(known_run))
                if answered_session
                    .is_none_or(|value| value.as_bytes() == session_id.as_bytes()) =>
            {
                Some(known_run)
            }
            (None, _) if answered_session.is_none() => None,
            _ => return None,
        };
        let capture = self.request_span.input();
        let body = capture.bytes();
        // One message, neither body encoded: the tape tells the answer by
        // its look alone. Any mention of initialize is decided now, as it
        // may open a run.
        let one_message = !capture.is_truncated()
            && self.encoding.is_none()
            && head.encoding().is_none()
            && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
            && !mentions_initialize(body);
        let request_bytes = body.len();
        drop(capture);
        if !one_message {
            return None;
        }
        let run = match (known_run, &self.session_id) {
            (Some(known_run), Some(session_id)) => {
                // The head is activity, as it is for a recorder made now.
                let open = self.shared.sessions.run_if_open(session_id, Moment::now());
                Some(open.filter(|run_id| *run_id == known_run)?)
            }
            _ => None,
        };
        self.reading = Reading::Taped { run };
        Some(request_bytes)
    }

    /// Decides, on the response head, what this exchange means for its
    /// run: the recorder that watches the response body, or first a wait
    /// for the session store.
    pub(crate) fn on_response(self: Box<Self>, response: &ResponseHead) -> Head {
        let request_span = self.request_span.clone();
        let head = self.decide(response);
        if let Head::Ready(None) | Head::Resumed(_) = head {
            request_span.detach();
        }
        head
    }

    /// The recorder of a span, once its run is decided; the request stays
    /// under way in its run until the recorder is done.
    fn recorder(
        &mut self,
        draft: SpanDraft,
        destination: Destination,
        response: &ResponseHead,
    ) -> Box<Recorder> {
        self.request_span.attach(&destination);
        let shared = Arc::clone(&self.shared);
        let from_mcp = shared.is_mcp_path(self.endpoint());
        let under_way = self.under_way.take();
        Recorder::span(shared, draft, destination, response, from_mcp, under_way)
    }

    /// Records a span for an exchange that ended without a response head:
    /// in its session's run, the run a request without a session goes to
    /// (unless that is for the session store to say: there is no waiting
    /// for it now), or its caller's run. A head that waited for the
    /// store's answer on its key's run, and was cancelled, settles that run
    /// here with the answer (see [`Pending::cancel`]).
    pub(crate) fn on_failure(mut self: Box<Self>, failure: Failure) {
        let known_run = match &self.session_id {
            // The store was asked for the session's run, and may have
            // opened it: the run is settled here, so that its start is
            // sent, even if another request of the session settled first.
            Some(key) if self.resolved_for(key) => Some(None),
            // The run open when the request came (recording finds out if it
            // ended meanwhile: then the span is dropped, counted, rather
            // than put in a newer run of the session), else the one open now.
            Some(key) => match self.known_run.or_else(|| self.shared.sessions.run_id(key)) {
                Some(run_id) => Some(Some(run_id)),
                None => return,
            },
            None => None,
        };
        let (message, input) = self.read_request();
        let request = match message {
            Some(ClientMessage::Request(request)) => Some(request),
            Some(_) => return,
            None if self.is_session_control() => return,
            None => None,
        };
        let in_session = match (self.session_id.clone(), known_run) {
            (Some(key), Some(Some(run_id))) => Some(Destination::Run {
                key,
                run_id,
                opened: false,
            }),
            (Some(session_id), Some(None)) => {
                let key = RunKey::Session(session_id);
                let table_key = key.table_key();
                if let Some(own_run) = self.own_run_if_full(&table_key, request.as_ref()) {
                    Some(own_run)
                } else {
                    let run = self.unknown_session_run(&key, &table_key, request.as_ref());
                    let Some(run) = run else {
                        return;
                    };
                    Some(Destination::Run {
                        key: table_key,
                        run_id: run.run_id,
                        opened: run.opened,
                    })
                }
            }
            _ => None,
        };
        let destination = match (in_session, &request, self.joined) {
            (Some(destination), _, _) => destination,
            (None, _, Some((run_id, _))) => Destination::Joined { run_id },
            (None, request, None) if request.is_some() || self.is_unread_mcp_post(&input) => {
                match self.sessionless_run(request.as_ref()) {
                    SessionlessRun::To(destination, _) => destination,
                    SessionlessRun::Nowhere | SessionlessRun::AskStore(_) => return,
                }
            }
            (None, _, None) => return,
        };
        let draft = self.draft(request, input, None, None);
        let (error_type, message) = match failure {
            Failure::Service => ("server_error", "the service failed before answering"),
            Failure::Cancelled => ("cancelled", "the client went away before the answer"),
        };
        self.request_span.attach(&destination);
        draft.fail(&self.shared, destination, error_type, message);
    }

    /// The request as one JSON-RPC message (if it is one) and as text: as
    /// read before a wait for the store, else read now.
    fn read_request(&mut self) -> (Option<ClientMessage>, Input) {
        if let Some(read) = self.store.as_mut().and_then(|store| store.read.take()) {
            return read;
        }
        // Read once (a wait for the store keeps what was read). A live
        // reading takes the capture, so that its bytes become the input
        // text without a copy. A taped exchange is read on the delivery
        // thread (but for a stream too long to tape, which goes live on
        // the request's): it copies the bytes and leaves the capture's room
        // with the request's span, which the tape holds until the request
        // path fills it again, so that the room is freed on the thread
        // that allocated it (see `crate::leftovers`).
        let capture = if matches!(self.reading, Reading::Taped { .. }) {
            self.request_span.input().clone()
        } else {
            std::mem::replace(&mut *self.request_span.input(), Capture::new(0))
        };
        let message = if capture.total_bytes() == 0 {
            None
        } else if capture.is_truncated() || self.encoding.is_some() {
            // Too large to read whole, or encoded; a 2026-07-28 client names
            // the method (and tool) in headers.
            self.method_header.take().map(|method| {
                ClientMessage::Request(McpRequest::named(
                    method.into(),
                    self.name_header.take().map(String::from),
                    self.protocol_header().map(str::to_owned),
                ))
            })
        } else {
            parse_client_message(capture.bytes())
        };
        let settings = &self.shared.settings;
        let encoding = self.encoding.take();
        let read_whole = !capture.is_truncated();
        let bytes = capture.total_bytes();
        let empty = bytes == 0 && (self.empty_body || capture.is_ended());
        // A notification or a client's response makes no span: its text is
        // not redacted for nothing.
        let spanless = matches!(
            message,
            Some(ClientMessage::Notification { .. } | ClientMessage::Response)
        );
        // Read past the capture limit to be understood; kept only up to it,
        // and redacted where its span is recorded.
        let text = if bytes > 0 && encoding.is_none() && !spanless {
            settings.keep(Side::Input, capture.into_text(), read_whole)
        } else {
            // An encoded body's capture keeps nothing: it is not read, not cut.
            Kept::Final(None, !read_whole && encoding.is_none())
        };
        let input = Input {
            text,
            read_whole,
            bytes,
            empty,
            encoding,
        };
        (message, input)
    }

    /// The `Mcp-Protocol-Version` header, if it is text.
    fn protocol_header(&self) -> Option<&str> {
        self.protocol_header.as_deref()
    }

    /// A POST to the MCP endpoint whose body the layer could not read
    /// (too large, or encoded) and whose method no header named: a
    /// request of an unknown method (an `mcp.request` span).
    fn is_unread_mcp_post(&self, input: &Input) -> bool {
        self.method == Method::POST
            && input.unread()
            && self.shared.is_known_mcp_path(self.endpoint())
    }

    /// A DELETE or a GET event stream on the MCP endpoint: about the session itself.
    fn is_session_control(&self) -> bool {
        is_session_control(
            &self.method,
            self.wants_event_stream,
            &self.shared,
            self.endpoint(),
        )
    }
}

/// What identifies the endpoint a request went to: axum's matched route
/// (`/t/{tenant}/mcp` for every tenant), else its path. The MCP endpoints
/// the layer learns are these, so one route serves any number of paths.
/// A route with a wildcard (`/{*rest}`, a gateway's) could be every path
/// of the server: its paths count one by one.
fn endpoint<'a>(route: Option<&'a MatchedPath>, path: &'a str) -> &'a str {
    route_or_path(route.filter(|route| !route.as_str().contains("{*")), path)
}

/// axum's matched route, else the path: what names a route's span.
fn route_or_path<'a>(route: Option<&'a MatchedPath>, path: &'a str) -> &'a str {
    route.map_or(path, MatchedPath::as_str)
}

/// A DELETE or a GET event stream on the MCP endpoint: about the session itself.
fn is_session_control(
    method: &Method,
    wants_event_stream: bool,
    shared: &Shared,
    path: &str,
) -> bool {
    (*method == Method::DELETE || wants_event_stream) && shared.is_mcp_path(path)
}

/// How much of a POST to the MCP endpoint is read to understand it (its
/// method, id, tool and `_meta`), whatever the capture limit: a body read
/// whole is parsed, one cut is not. rmcp refuses bodies over 4 MiB.
const REQUEST_READ_CHARS: usize = 1 << 20;

/// Where a request went: its path and the route axum matched for it.
///
/// The path is copied unless it is the route's text (a route without
/// parameters, such as the usual `/mcp`), which the exchange holds anyway
/// (shared, not copied). A copy is mostly freed where the exchange is
/// read, on the delivery thread: the block then stays in that thread's
/// cache, and the request path's allocator must find a new one for the
/// next request (see `crate::leftovers`). Copied, as are the header texts:
/// a shared URI would hold hyper's whole read buffer until the exchange is
/// read (see [`owned_text`]).
#[derive(Debug)]
enum Target {
    /// The path is this route's text.
    Route(MatchedPath),
    /// The path, copied, and the route it matched, if any.
    Path(Box<str>, Option<MatchedPath>),
}

impl Target {
    fn of(parts: &Parts) -> Self {
        let path = parts.uri.path();
        match parts.extensions.get::<MatchedPath>() {
            Some(route) if route.as_str() == path => Self::Route(route.clone()),
            route => Self::Path(Box::from(path), route.cloned()),
        }
    }

    fn path(&self) -> &str {
        match self {
            Self::Route(route) => route.as_str(),
            Self::Path(path, _) => path,
        }
    }

    fn route(&self) -> Option<&MatchedPath> {
        match self {
            Self::Route(route) | Self::Path(_, Some(route)) => Some(route),
            Self::Path(_, None) => None,
        }
    }
}

/// A header's text, copied: the exchange must not keep a share of the
/// buffer hyper read the request head into. Held until the exchange is
/// read (on the delivery thread, for a taped one), such a share keeps
/// hyper from reusing its buffer, and the delivery thread then frees that
/// large block of the server thread's allocator arena, taking the arena's
/// lock while the server allocates. The copies are small blocks, which
/// glibc mostly frees from another thread without that lock (its
/// per-thread cache, and its lock-free bins up to 128 bytes).
/// A naming header (see [`naming_text`]) is copied only within its bound.
fn owned_text(value: &HeaderValue) -> Option<Box<str>> {
    naming_text(value).map(Box::from)
}

/// The event id in a `Last-Event-ID` header, cut as the layer's SSE
/// decoder cuts the ids it keeps, so that a long one still matches.
fn event_id_of(value: &HeaderValue) -> &[u8] {
    let id = value.as_bytes();
    &id[..id.len().min(MAX_META_BYTES)]
}

/// The text of an `Mcp-Protocol-Version` header, lent when it is a
/// published version (as it nearly always is): copying it would cost every
/// request an allocation, which the delivery thread would free.
fn version_text(value: &HeaderValue) -> Option<Cow<'static, str>> {
    let text = value.to_str().ok()?;
    Some(published_version(text).map_or_else(|| Cow::Owned(text.to_owned()), Cow::Borrowed))
}

/// The request body as the span's input.
#[derive(Debug)]
struct Input {
    /// The text, and whether the span says it was cut (at the capture
    /// limit, or as the body was not read whole).
    text: Kept,
    /// Whether the body was read whole, to be understood (a body read
    /// whole may still be cut to the capture limit).
    read_whole: bool,
    bytes: u64,
    /// Whether the body is known to be empty: it said so before anyone read
    /// it, or was read to its end without a byte (one refused unread reads
    /// as no bytes too).
    empty: bool,
    /// The body's `content-encoding`, if it is encoded (and so not read).
    encoding: Option<Box<str>>,
}

impl Input {
    /// Whether the body has bytes the layer could not understand: too
    /// large to read whole, or encoded.
    fn unread(&self) -> bool {
        self.bytes > 0 && (!self.read_whole || self.encoding.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watched_bytes::watched;
    use axum::Router;

    #[tokio::test]
    async fn an_exchange_keeps_no_share_of_the_request_heads_buffer() {
        // As hyper's read buffer, which the request head's parts share.
        let (buffer, freed) = watched(&b"/mcp?x=1 2025-11-25 tools/call add s-1"[..]);
        let shared_text = |range: std::ops::Range<usize>| {
            HeaderValue::from_maybe_shared(buffer.slice(range)).unwrap()
        };
        let mut request =
            http::Request::post(http::Uri::from_maybe_shared(buffer.slice(0..8)).unwrap())
                .body(())
                .unwrap();
        let headers = request.headers_mut();
        headers.insert("mcp-session-id", shared_text(35..38));
        headers.insert("mcp-protocol-version", shared_text(9..19));
        headers.insert("mcp-method", shared_text(20..30));
        headers.insert("mcp-name", shared_text(31..34));
        let (mut parts, ()) = request.into_parts();
        drop(buffer);

        let exchange = Exchange::new(Shared::switched_off(), &mut parts, false);
        drop(parts);
        assert!(freed.is_freed(), "no share is kept");
        assert_eq!(exchange.path(), "/mcp");
        assert_eq!(exchange.protocol_header(), Some("2025-11-25"));
        assert!(
            matches!(exchange.protocol_header, Some(Cow::Borrowed(_))),
            "a published version is lent"
        );
        assert_eq!(exchange.method_header.as_deref(), Some("tools/call"));
        assert_eq!(exchange.name_header.as_deref(), Some("add"));
        assert_eq!(exchange.session_id.as_deref(), Some("s-1"));
    }

    #[test]
    fn naming_headers_are_taken_within_their_bound_and_event_ids_cut_as_kept() {
        let longest = "n".repeat(head::MAX_NAMING_TEXT_LEN);
        let too_long = "n".repeat(head::MAX_NAMING_TEXT_LEN + 1);
        let long_id = "7".repeat(MAX_META_BYTES + 10);
        let exchange_of = |method: &str, name: &str| {
            let request = http::Request::get("/mcp")
                .header("mcp-method", method)
                .header("mcp-name", name)
                .header("accept", "text/event-stream")
                .header("mcp-session-id", "s-1")
                .header("last-event-id", &long_id)
                .body(())
                .unwrap();
            let (mut parts, ()) = request.into_parts();
            Exchange::new(Shared::switched_off(), &mut parts, false)
        };
        let exchange = exchange_of("tools/call", &longest);
        assert_eq!(exchange.method_header.as_deref(), Some("tools/call"));
        assert_eq!(exchange.name_header.as_deref(), Some(&*longest));
        assert_eq!(
            exchange.last_event_id.as_deref(),
            Some(&long_id.as_bytes()[..MAX_META_BYTES]),
            "cut where the SSE decoder cuts the ids it keeps"
        );
        let bogus = exchange_of(&too_long, &too_long);
        assert_eq!(bogus.method_header, None);
        assert_eq!(bogus.name_header, None);
    }

    /// `path` served by `app`, whose routes hand the exchange their
    /// request makes to `made`.
    async fn exchange_of(app: Router, path: &str) -> Exchange {
        let (made, mut received) = tokio::sync::mpsc::unbounded_channel();
        let app = app.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let (mut parts, body) = request.into_parts();
                made.send(Exchange::new(Shared::switched_off(), &mut parts, false))
                    .unwrap();
                next.run(axum::extract::Request::from_parts(parts, body))
            },
        ));
        let request = http::Request::post(path).body(axum::body::Body::empty());
        tower::ServiceExt::oneshot(app, request.unwrap())
            .await
            .unwrap();
        received.recv().await.unwrap()
    }

    #[tokio::test]
    async fn the_endpoint_is_the_route_unless_it_has_a_wildcard() {
        let app = Router::new()
            .route("/t/{tenant}/mcp", axum::routing::post(|| async {}))
            .route("/gateway/{*rest}", axum::routing::post(|| async {}));
        let exchange = exchange_of(app.clone(), "/t/7/mcp").await;
        assert_eq!(exchange.endpoint(), "/t/{tenant}/mcp");
        let exchange = exchange_of(app, "/gateway/a/mcp").await;
        assert_eq!(exchange.endpoint(), "/gateway/a/mcp");
        assert_eq!(exchange.route().unwrap().as_str(), "/gateway/{*rest}");
    }

    #[test]
    fn only_a_post_to_the_mcp_endpoint_is_read_past_the_capture_limit() {
        let shared = Shared::switched_off();
        shared.learn_mcp_path("/mcp");
        let read_whole = |method: Method, path: &str| {
            let request = http::Request::builder().method(method).uri(path);
            let (mut parts, ()) = request.body(()).unwrap().into_parts();
            let exchange = Exchange::new(Arc::clone(&shared), &mut parts, false);
            let mut input = exchange.request_span.input();
            input.push(&[b'x'; 100_000]);
            !input.is_truncated()
        };
        assert!(read_whole(Method::POST, "/mcp"), "read to be understood");
        assert!(
            !read_whole(Method::POST, "/upload"),
            "cut at the capture limit"
        );
        assert!(!read_whole(Method::PUT, "/mcp"));
    }

    #[tokio::test]
    async fn the_path_is_copied_only_when_it_is_not_the_matched_route() {
        let app = Router::new()
            .route("/mcp", axum::routing::post(|| async {}))
            .route("/items/{id}", axum::routing::post(|| async {}));

        let exchange = exchange_of(app.clone(), "/mcp").await;
        assert!(matches!(exchange.target, Target::Route(_)), "not copied");
        assert_eq!(exchange.path(), "/mcp");
        assert_eq!(exchange.route().unwrap().as_str(), "/mcp");

        let exchange = exchange_of(app, "/items/7").await;
        assert!(matches!(&exchange.target, Target::Path(path, _) if &**path == "/items/7"));
        assert_eq!(exchange.path(), "/items/7");
        assert_eq!(exchange.route().unwrap().as_str(), "/items/{id}");

        // Outside any route (the layer around the router): copied.
        let (mut parts, ()) = http::Request::post("/mcp").body(()).unwrap().into_parts();
        let exchange = Exchange::new(Shared::switched_off(), &mut parts, false);
        assert!(matches!(&exchange.target, Target::Path(path, None) if &**path == "/mcp"));
        assert!(exchange.route().is_none());
    }

    #[tokio::test]
    async fn a_sessionless_request_is_taped_unless_it_may_open_a_session() {
        const CALL: &[u8] =
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}"#;
        const INITIALIZE: &[u8] = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#;
        // (what `tapes` returns, whether it marked the exchange taped outside any run)
        let tapes = |body: &[u8], status: u16, answer_session: Option<&str>| {
            let (mut parts, ()) = http::Request::post("/mcp").body(()).unwrap().into_parts();
            let mut exchange = Exchange::new(Shared::switched_off(), &mut parts, false);
            exchange.request_span.input().push(body);
            let mut response = http::Response::builder()
                .status(status)
                .header("content-type", "text/event-stream");
            if let Some(id) = answer_session {
                response = response.header("mcp-session-id", id);
            }
            let response = response.body(()).unwrap();
            let taped = exchange.tapes(&ResponseHead::of(&response), &response);
            (
                taped,
                matches!(exchange.reading, Reading::Taped { run: None }),
            )
        };
        assert_eq!(tapes(CALL, 200, None), (Some(CALL.len()), true));
        assert_eq!(
            tapes(CALL, 200, Some("s-1")),
            (None, false),
            "names a session"
        );
        assert_eq!(
            tapes(INITIALIZE, 200, None),
            (None, false),
            "may open a run"
        );
        assert_eq!(tapes(b"[{}]", 200, None), (None, false), "a batch");
        assert_eq!(tapes(CALL, 500, None), (None, false), "not a 2xx");
    }

    #[tokio::test]
    async fn a_taped_exchange_reads_a_copy_and_leaves_the_capture_to_its_span() {
        const BODY: &[u8] =
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}"#;
        let exchange = || {
            let (mut parts, ()) = http::Request::post("/mcp").body(()).unwrap().into_parts();
            let exchange = Exchange::new(Shared::switched_off(), &mut parts, false);
            exchange.request_span.input().push(BODY);
            exchange
        };

        let mut taped = exchange();
        taped.reading = Reading::Taped { run: None };
        let (message, input) = taped.read_request();
        assert!(matches!(message, Some(ClientMessage::Request(_))));
        assert!(matches!(input.text, Kept::Final(Some(text), false) if text.as_bytes() == BODY));
        assert_eq!(taped.request_span.input().bytes(), BODY, "left to the span");

        let mut live = exchange();
        let (_, input) = live.read_request();
        assert!(matches!(input.text, Kept::Final(Some(text), false) if text.as_bytes() == BODY));
        assert_eq!(live.request_span.input().bytes(), b"", "taken");
    }
}
