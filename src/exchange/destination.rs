//! Which run an exchange's span goes to, decided on the response head:
//! the run of its session (opened by `initialize`, closed by a DELETE or
//! a 404), the run its key chain names for a request without a session, a
//! run of its own, or its caller's run. With a session store, a key this
//! process does not know is first looked up there (see [`super`]).

use http::{Method, StatusCode};
use serde_json::Value;
use std::sync::Arc;
use std::time::SystemTime;
use uuid::Uuid;

use super::{Exchange, Head, Input, Pending, Reading, Resolving, ResponseHead};
use crate::config::Sessionless;
use crate::log_pace::LogPace;
use crate::mcp::INITIALIZE;
use crate::mcp::envelope::{ClientMessage, Request as McpRequest};
use crate::recorder::Recorder;
use crate::resume::{ParkedCall, ResumedStream};
use crate::run::{
    ClosedVia, KeySource, MAX_RUN_KEY_LEN, RunFor, RunKey, UnderWay, client_identity,
    meta_conversation,
};
use crate::span_draft::Destination;
use crate::store::NewRun;
use crate::wire::Run;

/// Where a JSON-RPC request without a session goes.
pub(super) enum SessionlessRun {
    /// Nowhere: such requests are ignored ([`Sessionless::Ignore`]).
    Nowhere,
    /// To this run, with the request under way in it (a run of the table).
    To(Destination, Option<UnderWay>),
    /// To the run the session store holds for this key, once it answers.
    AskStore(Arc<str>),
}

impl Exchange {
    /// What the response head means for the exchange's run: the recorder
    /// of its span, nothing, or first a wait for the session store.
    pub(super) fn decide(mut self: Box<Self>, response: &ResponseHead) -> Head {
        let (message, input) = self.read_request();
        let request = match message {
            Some(ClientMessage::Request(request)) => {
                // Only an endpoint that answered it: JSON-RPC sent to a
                // wrong path (a client's probe, a scanner) teaches nothing.
                if response.status.is_success()
                    && (response.is_json() || response.is_event_stream())
                {
                    self.shared.learn_mcp_path(self.endpoint());
                }
                Some(request)
            }
            Some(message @ (ClientMessage::Notification { .. } | ClientMessage::Response)) => {
                if let Some(session_id) = &self.session_id
                    && !self.closed_as_expired(session_id, response)
                {
                    self.shared.sessions.touch(session_id, self.arrived);
                    if let ClientMessage::Notification {
                        cancelled: Some(id),
                        ..
                    } = message
                    {
                        ParkedCall::cancelled(&self.shared, session_id, &id, self.arrived);
                    }
                }
                return Head::Ready(None);
            }
            None => None,
        };
        let grouping = self.shared.settings.group_sessions;
        // A refused initialize opens no session, whatever its headers say.
        if let Some(request) = request
            .as_ref()
            .filter(|r| r.method == INITIALIZE && !grouping)
            && response.status.is_success()
            && let Some(new_session) = response.session_id()
        {
            return self.open_session(new_session, response, request, input);
        }
        match (self.session_id.clone(), request, self.joined) {
            (Some(session_id), request, _) => self.in_session(session_id, request, input, response),
            // Another service's call (MCP or not), joining its caller's run.
            (None, request, Some((run_id, _))) => {
                let draft = self.draft(request, input, response.route_kind, Some(response.status));
                let destination = Destination::Joined { run_id };
                Head::Ready(Some(self.recorder(draft, destination, response)))
            }
            // An unread POST whose answer opens a session (an encoded
            // `initialize`) belongs to that session, not to a run here.
            (None, request, None)
                if request.is_some()
                    || (self.is_unread_mcp_post(&input) && response.session_id().is_none()) =>
            {
                self.sessionless(request, input, response)
            }
            (None, _, None) => Head::Ready(None),
        }
    }

    /// The run of `table_key`: the run table's; with a session store, for a
    /// key this process does not know, the store's answer once it came
    /// (`None` before: ask the store). `open` makes the `start` of a run
    /// opened here.
    fn run_of(&self, table_key: &str, open: impl FnOnce(Uuid) -> Run) -> Option<RunFor> {
        let sessions = &self.shared.sessions;
        if self.shared.mirror.is_none() {
            return Some(sessions.run_for(table_key, self.arrived, || open(Uuid::new_v4())));
        }
        match self
            .store
            .as_ref()
            .and_then(|store| store.resolved.as_ref())
        {
            Some((key, resolved)) if **key == *table_key => {
                Some(sessions.settle(table_key, *resolved, self.arrived, open))
            }
            _ => sessions.run_for_known(table_key, self.arrived),
        }
    }

    /// The run of a session this process does not know (restarted, or
    /// another worker's that the store does not hold): as for any key,
    /// with `resumed` in its metadata if this process opens it.
    pub(super) fn unknown_session_run(
        &self,
        key: &RunKey,
        table_key: &str,
        request: Option<&McpRequest>,
    ) -> Option<RunFor> {
        self.run_of(table_key, |run_id| {
            let mut metadata = self.metadata(key, request);
            metadata.insert("resumed".to_owned(), Value::Bool(true));
            self.run(key, run_id, None, metadata)
        })
    }

    /// Asks the session store for the run of `table_key` (using the lookup
    /// started with the request, if it is of this key); the head decides
    /// again with the answer.
    fn resolve(
        mut self: Box<Self>,
        table_key: Arc<str>,
        request: Option<McpRequest>,
        input: Input,
    ) -> Head {
        let Some(mirror) = self.shared.mirror.as_ref() else {
            return Head::Ready(None);
        };
        let store = self.store.get_or_insert_default();
        store.read = Some((request.map(ClientMessage::Request), input));
        let prefetch = store.prefetch.take().filter(|p| p.is_for(&table_key));
        let run_id = self.shared.sessions.run_id_to_resolve(&table_key);
        let run = NewRun::new(&*table_key, run_id, SystemTime::now());
        let wait = mirror.resolve(&self.shared, prefetch, run);
        let shared = Arc::clone(&self.shared);
        Head::Wait(Pending::Resolve(Box::new(Resolving {
            exchange: Some(self),
            key: table_key,
            run_id,
            wait,
            shared,
        })))
    }

    /// A 404 from the MCP endpoint to any message in a session: the server
    /// forgot the session, whose run ends (`true` then).
    fn closed_as_expired(&self, session_id: &Arc<str>, response: &ResponseHead) -> bool {
        if response.status != StatusCode::NOT_FOUND || !self.shared.is_mcp_path(self.endpoint()) {
            return false;
        }
        // The end's totals count every request answered before it.
        self.shared
            .close_session(session_id, ClosedVia::SessionExpired);
        true
    }

    /// A request that carries a session id.
    fn in_session(
        mut self: Box<Self>,
        session_id: Arc<str>,
        request: Option<McpRequest>,
        input: Input,
        response: &ResponseHead,
    ) -> Head {
        let status = response.status;
        let sessions = &self.shared.sessions;
        let exporter = &self.shared.exporter;
        if self.closed_as_expired(&session_id, response) {
            return Head::Ready(None);
        }
        if request.is_none() && self.is_session_control() {
            if self.method == Method::DELETE && status.is_success() {
                self.shared
                    .close_session(&session_id, ClosedVia::SessionDeleted);
            } else if let Some(resumed) = self.resumed_stream(&session_id, response) {
                return Head::Resumed(resumed);
            }
            return Head::Ready(None);
        }
        if !status.is_success() && !sessions.contains(&session_id) {
            if self.known_run.is_some() {
                // Its run ended while it was served.
                exporter.drop_after_run_end(1);
            }
            return Head::Ready(None);
        }
        let key = RunKey::Session(session_id);
        let table_key = key.table_key();
        let (run_id, opened) = if let Reading::Taped {
            run: Some(taped_run),
        } = self.reading
        {
            // Read later: the run the head found open. Recording the span
            // checks that it still is (a span after its run ended goes
            // nowhere, as a recorder's would), so the run table, which every
            // request locks, is not locked here once more.
            (taped_run, false)
        } else if let Some(known_run) = self.known_run {
            // The run was open here when the request came: the span goes
            // there, or nowhere if it ended meanwhile (a DELETE, a 404, the
            // idle sweep, `end_run`), as a taped exchange's does. A new
            // run for the session would outlive its end.
            match sessions.run_if_open(&table_key, self.arrived) {
                Some(run_id) if run_id == known_run => (run_id, false),
                _ => {
                    exporter.drop_after_run_end(1);
                    return Head::Ready(None);
                }
            }
        } else if let Some(own_run) = self.own_run_if_full(&table_key, request.as_ref()) {
            let draft = self.draft(request, input, response.route_kind, Some(status));
            return Head::Ready(Some(self.recorder(draft, own_run, response)));
        } else {
            let Some(run) = self.unknown_session_run(&key, &table_key, request.as_ref()) else {
                return self.resolve(table_key, request, input);
            };
            self.under_way = Some(run.under_way);
            (run.run_id, run.opened)
        };
        let draft = self.draft(request, input, response.route_kind, Some(status));
        let destination = Destination::Run {
            key: table_key,
            run_id,
            opened,
        };
        Head::Ready(Some(self.recorder(draft, destination, response)))
    }

    /// A GET that resumes an event stream of the session (`Last-Event-ID`),
    /// answered with one, while calls are parked in the session's run: read
    /// for their answers (see [`crate::resume`]).
    fn resumed_stream(
        &mut self,
        session_id: &Arc<str>,
        response: &ResponseHead,
    ) -> Option<Box<ResumedStream>> {
        let last_event_id = self.last_event_id.take()?;
        let readable = response.status.is_success()
            && response.is_event_stream()
            && response.encoding().is_none();
        let own = usize::from(self.under_way.is_some());
        if !readable || !self.shared.sessions.may_resume(session_id, own) {
            return None;
        }
        // A call read off the request path (under way until then) parks
        // when the backlog reads it.
        self.shared.backlog.catch_up();
        ResumedStream::open(&self.shared, session_id, &last_event_id)
    }

    /// A JSON-RPC request without a session (`None`: one too large to read
    /// or encoded): grouped by the key chain, or a run of its own.
    fn sessionless(
        mut self: Box<Self>,
        request: Option<McpRequest>,
        input: Input,
        response: &ResponseHead,
    ) -> Head {
        let destination = match self.sessionless_run(request.as_ref()) {
            SessionlessRun::Nowhere => return Head::Ready(None),
            SessionlessRun::AskStore(table_key) => {
                return self.resolve(table_key, request, input);
            }
            SessionlessRun::To(destination, under_way) => {
                self.under_way = under_way;
                destination
            }
        };
        let draft = self.draft(request, input, response.route_kind, Some(response.status));
        Head::Ready(Some(self.recorder(draft, destination, response)))
    }

    /// Where a JSON-RPC request without a session goes (`None`: one too
    /// large to read or encoded, grouped by what its head says).
    pub(super) fn sessionless_run(&self, request: Option<&McpRequest>) -> SessionlessRun {
        let key = match self.shared.settings.sessionless {
            Sessionless::Ignore => return SessionlessRun::Nowhere,
            Sessionless::RunPerRequest => None,
            Sessionless::Group => self.resolve_key(request),
        };
        let Some(key) = key else {
            return SessionlessRun::To(self.own_run(request, false), None);
        };
        let table_key = key.table_key();
        if let Some(own_run) = self.own_run_if_full(&table_key, request) {
            return SessionlessRun::To(own_run, None);
        }
        let run = self.run_of(&table_key, |run_id| {
            let metadata = self.metadata(&key, request);
            self.run(&key, run_id, None, metadata)
        });
        match run {
            Some(run) => {
                let destination = Destination::Run {
                    key: table_key,
                    run_id: run.run_id,
                    opened: run.opened,
                };
                SessionlessRun::To(destination, Some(run.under_way))
            }
            None => SessionlessRun::AskStore(table_key),
        }
    }

    /// The first key of the chain: the application's, a conversation id in
    /// `_meta`, the client's identity.
    fn resolve_key(&self, request: Option<&McpRequest>) -> Option<RunKey> {
        if let Some(key) = &self.app_key {
            match RunKey::resolved(key.clone(), KeySource::App) {
                Some(key) => return Some(key),
                None => warn_of_a_long_app_key(),
            }
        }
        let meta_keys = &self.shared.settings.conversation_meta_keys;
        let meta = request.and_then(|request| request.meta.as_deref());
        if let Some(key) = meta_conversation(meta, meta_keys)
            .and_then(|(meta_key, id)| RunKey::resolved(id, KeySource::Meta(meta_key)))
        {
            return Some(key);
        }
        // Only a self-contained request's clientInfo: a stateless legacy
        // client names itself in initialize alone, and its later requests
        // must land in the same run.
        let client = request
            .filter(|request| request.is_self_contained())
            .and_then(|request| request.client.as_ref())
            .map(|c| (c.name.as_str(), c.version.as_deref()));
        client_identity(client, self.caller.as_deref())
            .and_then(|key| RunKey::resolved(key, KeySource::Client))
    }

    /// A run of its own for a call whose key (a new session id, or the
    /// key of a call without a session) has no open run here while
    /// [`max_open_runs`](crate::TrodoConfig::with_max_open_runs) are open:
    /// `None` when it may open or join its key's run. Once the session
    /// store answered for the key, its answer is taken whatever the room:
    /// it may have opened this process's run for the key, to be started
    /// here.
    pub(super) fn own_run_if_full(
        &self,
        table_key: &str,
        request: Option<&McpRequest>,
    ) -> Option<Destination> {
        let max_open_runs = self.shared.settings.max_open_runs;
        if self.resolved_for(table_key)
            || self.shared.sessions.has_room_for(table_key, max_open_runs)
        {
            return None;
        }
        warn_of_a_full_run_table(max_open_runs);
        Some(self.own_run(request, true))
    }

    /// A run of the call alone, sent whole (marked `run_table_full` when
    /// it is one because the run table is full).
    fn own_run(&self, request: Option<&McpRequest>, table_full: bool) -> Destination {
        let mut metadata = self.metadata_without_key(false, request);
        metadata.insert("run_key_source".to_owned(), Value::from("request"));
        if table_full {
            metadata.insert("run_table_full".to_owned(), Value::Bool(true));
        }
        Destination::OwnRun(Box::new(self.run_without_key(metadata)))
    }

    /// Opens the run of the session an initialize response creates.
    fn open_session(
        self: Box<Self>,
        session_id: Arc<str>,
        response: &ResponseHead,
        request: &McpRequest,
        input: Input,
    ) -> Head {
        let key = RunKey::Session(session_id);
        let mut metadata = self.metadata(&key, Some(request));
        if let Some(version) = &request.protocol_version {
            metadata.insert(
                "requested_protocol_version".to_owned(),
                Value::from(version.as_str()),
            );
        }
        // The negotiated version comes from the result, not the request.
        metadata.remove("protocol_version");
        let made = Uuid::new_v4();
        // The run's input waits in its `start`, which the table holds
        // from now on: redacted now.
        let (text, _) = self.shared.settings.kept_text(input.text);
        let run = self.run(&key, made, text, metadata);
        let table_key = key.table_key();
        let run_id = self.shared.sessions.open_pending(&table_key, run);
        let publish = self.shared.mirror.as_ref().map(|mirror| {
            let run = NewRun::new(&*table_key, run_id, self.arrived.at.0);
            mirror.publish(&self.shared, run)
        });
        let recorder = Recorder::initialize(
            Arc::clone(&self.shared),
            table_key,
            run_id,
            request.id.clone(),
            self.request_span(),
            run_id == made,
            response,
        );
        match publish {
            Some(wait) => Head::Wait(Pending::Publish(Some(recorder), wait)),
            None => Head::Ready(Some(recorder)),
        }
    }
}

/// A call whose key would open a run past `max_open_runs` is a run of its
/// own: said at `warn` at most once a minute.
fn warn_of_a_full_run_table(max_open_runs: usize) {
    static PACE: LogPace = LogPace::new();
    if let Some(times) = PACE.note(1) {
        tracing::warn!(
            times,
            max_open_runs,
            "trodo: {max_open_runs} runs are open (with_max_open_runs); a call whose key (a \
             session id, or the key of a call without a session) has no open run here is \
             sent as a run of its own \
             (said at most once a minute, with the times since the last such line)"
        );
    }
}

/// An application's run key longer than the cap is passed over (the
/// request is grouped by the next link of the chain): said at `warn` at
/// most once a minute.
fn warn_of_a_long_app_key() {
    static PACE: LogPace = LogPace::new();
    if let Some(times) = PACE.note(1) {
        tracing::warn!(
            times,
            "trodo: a run key from with_run_key is longer than {MAX_RUN_KEY_LEN} bytes and is \
             passed over; such requests are grouped by the next link of the key chain \
             (said at most once a minute, with the times since the last such line)"
        );
    }
}
