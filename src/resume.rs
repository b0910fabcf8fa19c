//! Resumed event streams (MCP 2025-11-25, SEP-1699 "SSE polling"): the
//! answer to a POST whose event stream ended early, brought by a GET of
//! the same session that resumes the stream with `Last-Event-ID`.
//!
//! A request's event stream that carried an event id (a client can resume
//! it from there) and ended before the answer (the server closed it, it
//! broke, or the client went away) does not finish the request's span:
//! the call is parked in its session's run, keyed by its JSON-RPC id, for
//! at most the idle timeout from its stream's end; at most
//! [`DROPPED_STREAM_WAIT`](crate::recorder::DROPPED_STREAM_WAIT) if its
//! client dropped the stream. The run does not end idle while the server
//! may still be working on it, but the wait is no activity: a run left
//! with waiting calls only ends an idle timeout after its last activity,
//! or when their wait runs out, whichever is later. Only a resumed stream
//! that continues the call (from the last event id the layer saw of it)
//! renews its wait: when it opens, or when it reaches that event if it
//! was resumed from an earlier one, and when it ends early. Calls whose
//! wait ran out are taken out under the run table's lock and recorded
//! after it.
//!
//! A GET event stream of the session with `Last-Event-ID`, answered while
//! calls are parked in the session's run, is read for their answers: a
//! JSON-RPC response (result or error) whose id is a parked call's
//! finishes that call's span as a live stream would have (the output
//! captured, cut and redacted alike; the status, the error of a JSON-RPC
//! error or an `isError` result, the duration up to the answer), marked
//! `mcp.stream_resumed`. The GET itself makes no span, as before.
//!
//! `mcp.progress_events` counts the progress on the POST's stream, then on
//! the resumed stream that continues it, from the last event the layer saw
//! of the call (a server replays from the client's `Last-Event-ID`, which
//! may be that event, or an earlier one the client saw last): the replay
//! is not counted twice. A resumed stream that ends before the answer
//! (the server polls again) hands its progress and its last event id on
//! to the call, and renews the call's wait. An answer too large to read
//! whole (no id to read) answers the call the stream continues, as a live
//! one would: output cut, status from HTTP. `http.response.body.size`
//! stays the POST's.
//!
//! A GET with `Last-Event-ID` is read only if its session's run has calls
//! parked or requests under way (one read later parks when the backlog
//! reads it, which is caught up first).
//!
//! A parked call whose answer does not come in time, a call past the
//! [`MAX_PARKED_CALLS`] of its run or the [`MAX_PARKED_CALLS_IN_PROCESS`]
//! of the process, a call of a layer with a session store (another worker
//! may end the run, and the span would come after its end), and the
//! parked calls of a run that ends (DELETE, 404, the idle sweep,
//! shutdown) are recorded as their streams left them: with the error they
//! had before streams could be resumed (`stream_error`, or `cancelled`),
//! before the run's `end`. A parked call the client cancels
//! (`notifications/cancelled` naming its request id) is recorded then,
//! `cancelled`; one cancelled while its stream still ran is recorded
//! `cancelled` as that stream ends, instead of parking.
//!
//! Parking is for one process without a session store: rmcp's
//! `LocalSessionManager` resumes a stream only on the process that holds
//! the session anyway.

use http::StatusCode;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::mcp::answer::same_id;
use crate::mcp::sse::SseDecoder;
use crate::moment::{Moment, instant_now};
use crate::recorder::{
    BodyEnd, CANCELLED_BY_CLIENT, ENDED_EARLY, EventMeaning, Found, Interruption, Said, span_ending,
};
use crate::run::UnderWay;
use crate::span_draft::{Destination, SpanDraft};
use crate::state::Shared;
use crate::wire::Span;

/// The most calls parked in one run: a call past it is recorded at once,
/// as its stream left it.
pub(crate) const MAX_PARKED_CALLS: usize = 16;

/// The most calls parked in this process, over all its runs: a call past
/// it is recorded at once, as its stream left it.
pub(crate) const MAX_PARKED_CALLS_IN_PROCESS: usize = 1_024;

/// What a call's latest stream left of it.
#[derive(Debug)]
pub(crate) struct StreamLeft {
    /// The POST's HTTP status.
    pub(crate) status: StatusCode,
    /// The POST's response bytes.
    pub(crate) bytes_out: u64,
    /// Progress notifications so far.
    pub(crate) progress_events: u64,
    /// How the stream ended, and when: the span's error and end if no
    /// answer comes.
    pub(crate) interruption: Interruption,
    pub(crate) ended: Moment,
    /// The last event id the stream carried, which a client resumes from.
    pub(crate) last_event_id: Box<[u8]>,
}

impl StreamLeft {
    /// What the call's streams said of it without an answer.
    fn said(&self) -> Said {
        Said {
            status: self.status,
            bytes_out: self.bytes_out,
            progress_events: self.progress_events,
            output: None,
            read_whole: true,
            response: None,
            interruption: Some(self.interruption),
        }
    }
}

/// A request whose event stream ended before its answer, waiting in its
/// session's run for a resumed stream to bring the answer.
#[derive(Debug)]
pub(crate) struct ParkedCall {
    draft: SpanDraft,
    /// Its session's run.
    destination: Destination,
    left: StreamLeft,
    /// When it stops waiting.
    deadline: Instant,
    /// Its request under way in the run while it is not parked: until it
    /// is, and once taken out, until its span is recorded. Parked, it
    /// keeps its run open without its wait counting as activity (see
    /// `OpenRun::idleness_at`).
    under_way: Option<UnderWay>,
}

impl ParkedCall {
    /// The call of `draft`, whose stream ended as `left` says, to wait
    /// `wait` for its answer in the session's run `destination`, under way
    /// there (`under_way`) until it is parked.
    pub(crate) fn new(
        draft: SpanDraft,
        destination: Destination,
        left: StreamLeft,
        under_way: Option<UnderWay>,
        wait: Duration,
    ) -> Self {
        Self {
            deadline: left.ended.instant + wait,
            draft,
            destination,
            left,
            under_way,
        }
    }

    /// Parks the call in its session's run; a call that cannot wait there
    /// (see [`Sessions::park`](crate::run::Sessions::park)) is recorded at
    /// once, as its stream left it.
    pub(crate) fn park(self, shared: &Arc<Shared>) {
        let Some((key, run_id)) = self.destination.session_run() else {
            return self.give_up(shared);
        };
        let key = Arc::clone(key);
        // A parked call may be recorded under the run table's lock, where
        // no hook may run (see `into_failed_spans`).
        let mut call = self;
        call.draft.redact_input(&shared.settings);
        if let Some(call) = shared.sessions.park(&key, run_id, call) {
            call.give_up(shared);
        }
    }

    /// The client cancelled request `id` of session `key`
    /// (`notifications/cancelled`): if that call is parked, it is recorded
    /// at once, `cancelled` at `at`; if it is still streaming, it is
    /// recorded `cancelled` when its stream ends, instead of parking.
    pub(crate) fn cancelled(shared: &Arc<Shared>, key: &str, id: &Value, at: Moment) {
        if let Some(mut call) = shared.sessions.cancel_parked(key, id) {
            call.left.interruption = CANCELLED_BY_CLIENT;
            call.left.ended = at;
            call.give_up(shared);
        }
    }

    /// The JSON-RPC id of its request.
    pub(crate) fn request_id(&self) -> Option<&Value> {
        self.draft.request_id.as_ref()
    }

    /// The call taken out of its run, `under_way` there again until its
    /// span is recorded.
    pub(crate) fn taken_out(mut self, under_way: UnderWay) -> Self {
        self.under_way = Some(under_way);
        self
    }

    /// When its stream ended (or was last continued): activity of its run.
    pub(crate) fn stream_ended(&self) -> Instant {
        self.left.ended.instant
    }

    /// Whether its wait ran out by `now`.
    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.deadline <= now
    }

    /// Finishes the span with the answer `found` on a resumed stream at
    /// `at`, after `progress_events` more progress notifications there.
    fn answer(mut self, shared: &Arc<Shared>, found: Found, progress_events: u64, at: Moment) {
        self.draft.attributes.insert("mcp.stream_resumed", true);
        let said = Said {
            progress_events: self.left.progress_events + progress_events,
            output: Some(found.text),
            read_whole: found.read_whole,
            response: found.response,
            interruption: None,
            ..self.left.said()
        };
        self.finish(shared, said, at);
    }

    /// Finishes the span as its stream left it, with no answer.
    fn give_up(self, shared: &Arc<Shared>) {
        let (said, ended) = (self.left.said(), self.left.ended);
        self.finish(shared, said, ended);
    }

    /// Finishes the span with what its streams `said`, seen at `ended`.
    fn finish(self, shared: &Arc<Shared>, said: Said, ended: Moment) {
        let Self {
            mut draft,
            destination,
            under_way,
            ..
        } = self;
        let ending = span_ending(&shared.settings, &mut draft, said, ended);
        draft.finish(shared, destination, ending);
        // Under way until its span is recorded or deferred, as a recorder's.
        drop(under_way);
    }

    /// Records the calls whose wait ran out by `now` as their streams left
    /// them, in their runs (see
    /// [`Sessions::record_expired_calls`](crate::run::Sessions::record_expired_calls)).
    /// Returns how many.
    pub(crate) fn give_up_expired(shared: &Shared, now: Instant) -> usize {
        shared.sessions.record_expired_calls(now, &shared.exporter)
    }

    /// The span's record as its stream left it, with no answer, then the
    /// child spans that waited for it (of a call that opened its run), for
    /// the run table to record while it holds the run (no output is
    /// captured, so no redaction hook runs).
    pub(crate) fn into_failed_spans(self) -> Vec<Span> {
        let Self {
            mut draft,
            destination,
            left,
            ..
        } = self;
        let shared = Arc::clone(draft.request_span.shared());
        let children = draft.request_span.take_waiting_children();
        let ending = span_ending(&shared.settings, &mut draft, left.said(), left.ended);
        let span = draft.into_span(&shared.settings, destination.run_id(), ending);
        let mut spans = Vec::with_capacity(1 + children.len());
        spans.push(span);
        spans.extend(children);
        spans
    }

    /// A resumed stream continues the call: it waits until `deadline` at
    /// least.
    fn renew(&mut self, deadline: Instant) {
        self.deadline = self.deadline.max(deadline);
    }

    /// A resumed stream that continued the call ended before its answer:
    /// its progress counts, its end is now the call's, and the call waits
    /// `wait` from there, for a client resuming from its last event id.
    fn continued(&mut self, by: Continued, wait: Duration) {
        self.left.progress_events += by.progress_events;
        self.left.interruption = by.interruption;
        self.left.ended = by.ended;
        if !by.last_event_id.is_empty() {
            self.left.last_event_id = by.last_event_id;
        }
        self.deadline = by.ended.instant + wait;
    }
}

/// The calls parked in one run, and the requests its client cancelled
/// before their calls could park. A run's entry in the run table grows by
/// a pointer: most runs park no call and cancel nothing.
#[derive(Debug, Default)]
pub(crate) struct ParkedCalls(Option<Box<Parked>>);

#[derive(Debug, Default)]
struct Parked {
    calls: Vec<ParkedCall>,
    /// The JSON-RPC ids of requests cancelled while no call of theirs was
    /// parked, the latest [`MAX_CANCELLED_NOTED`].
    cancelled: VecDeque<Value>,
}

/// The most cancellations one run remembers for calls yet to park. A
/// cancelled call's stream ends within moments of its cancellation, so
/// only the latest few can still come to park.
const MAX_CANCELLED_NOTED: usize = 8;

/// The longest string id of a cancelled request a run notes: ids are a
/// client's counters or UUIDs, and a note must not hold a client's megabyte.
const MAX_NOTED_ID_LEN: usize = 128;

impl ParkedCalls {
    /// Parks a call, no longer under way, unless [`MAX_PARKED_CALLS`] are
    /// parked already, or its client cancelled it: then it is given back
    /// (a cancelled one marked so).
    pub(crate) fn park(&mut self, mut call: ParkedCall) -> Option<ParkedCall> {
        if self.was_cancelled(&mut call) {
            return Some(call);
        }
        let calls = &mut self.0.get_or_insert_default().calls;
        if calls.len() >= MAX_PARKED_CALLS {
            self.free_if_empty();
            return Some(call);
        }
        call.under_way = None;
        calls.push(call);
        None
    }

    /// Whether the client cancelled `call`'s request before the call came
    /// to park (its cancellation read first): then the call is marked
    /// cancelled, and the note forgotten.
    pub(crate) fn was_cancelled(&mut self, call: &mut ParkedCall) -> bool {
        let Some(parked) = self.0.as_mut() else {
            return false;
        };
        let Some(at) = call.request_id().and_then(|id| {
            parked
                .cancelled
                .iter()
                .position(|cancelled| same_id(cancelled, id))
        }) else {
            return false;
        };
        parked.cancelled.remove(at);
        self.free_if_empty();
        call.left.interruption = CANCELLED_BY_CLIENT;
        true
    }

    /// The call whose request has JSON-RPC id `id`, taken out.
    pub(crate) fn take(&mut self, id: &Value) -> Option<ParkedCall> {
        let calls = &mut self.0.as_mut()?.calls;
        let at = calls
            .iter()
            .position(|c| c.request_id().is_some_and(|c| same_id(c, id)))?;
        let call = calls.swap_remove(at);
        self.free_if_empty();
        Some(call)
    }

    /// The client cancelled request `id`: its call, if parked, taken out;
    /// else the cancellation is noted, so that the call is recorded
    /// `cancelled` if it comes to park (its stream ending after the
    /// cancellation was read).
    pub(crate) fn cancel(&mut self, id: &Value) -> Option<ParkedCall> {
        if let Some(call) = self.take(id) {
            return Some(call);
        }
        // Only an id a request may have: a number or a short string (the
        // client chooses what it names).
        let notable = match id {
            Value::Number(_) => true,
            Value::String(id) => id.len() <= MAX_NOTED_ID_LEN,
            _ => false,
        };
        if !notable {
            return None;
        }
        let cancelled = &mut self.0.get_or_insert_default().cancelled;
        if cancelled.len() == MAX_CANCELLED_NOTED {
            cancelled.pop_front();
        }
        cancelled.push_back(id.clone());
        None
    }

    /// What a stream resumed from `last_event_id` may continue: each
    /// call's JSON-RPC id and last event id. Only the call whose stream
    /// the layer saw end at `last_event_id` (the one the stream continues)
    /// has its wait renewed to `deadline`: a resumption does not keep the
    /// other calls waiting.
    pub(crate) fn resumable(&mut self, last_event_id: &[u8], deadline: Instant) -> Vec<Resumable> {
        let Some(parked) = self.0.as_mut() else {
            return Vec::new();
        };
        parked
            .calls
            .iter_mut()
            .filter_map(|call| {
                if *call.left.last_event_id == *last_event_id {
                    call.renew(deadline);
                }
                Some(Resumable {
                    id: call.request_id()?.clone(),
                    last_event_id: call.left.last_event_id.clone(),
                })
            })
            .collect()
    }

    /// The call whose request has JSON-RPC id `id`.
    pub(crate) fn get_mut(&mut self, id: &Value) -> Option<&mut ParkedCall> {
        self.0
            .as_mut()?
            .calls
            .iter_mut()
            .find(|c| c.request_id().is_some_and(|c| same_id(c, id)))
    }

    /// The calls whose wait ran out by `now`, taken out.
    pub(crate) fn take_expired(&mut self, now: Instant) -> Vec<ParkedCall> {
        let Some(parked) = self.0.as_mut() else {
            return Vec::new();
        };
        let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut parked.calls)
            .into_iter()
            .partition(|call| call.expired(now));
        parked.calls = waiting;
        self.free_if_empty();
        expired
    }

    /// Every call, taken out (and the cancellations noted, forgotten: the
    /// run ends).
    pub(crate) fn take_all(&mut self) -> Vec<ParkedCall> {
        self.0.take().map(|parked| parked.calls).unwrap_or_default()
    }

    /// Whether no call is parked.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many calls are parked.
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |parked| parked.calls.len())
    }

    fn free_if_empty(&mut self) {
        let empty = |parked: &Parked| parked.calls.is_empty() && parked.cancelled.is_empty();
        if self.0.as_deref().is_some_and(empty) {
            self.0 = None;
        }
    }
}

/// A parked call as a resumed stream knows it.
#[derive(Debug)]
pub(crate) struct Resumable {
    /// The JSON-RPC id of its request.
    pub(crate) id: Value,
    /// The last event id of its latest stream.
    pub(crate) last_event_id: Box<[u8]>,
}

/// What a resumed stream that continued a parked call and ended before its
/// answer says of the call.
#[derive(Debug)]
pub(crate) struct Continued {
    progress_events: u64,
    interruption: Interruption,
    ended: Moment,
    /// Its last event id (empty if it carried none).
    last_event_id: Box<[u8]>,
}

/// Where a resumed stream is among the calls parked in its run.
#[derive(Debug)]
enum Place {
    /// Not past the last event the layer saw of any of these calls yet:
    /// what comes first may be a server's replay of what the layer saw.
    Before(Vec<Resumable>),
    /// Past the last event the layer saw of this call: its stream,
    /// continued, with this much progress since.
    Continuing {
        call: Resumable,
        progress_events: u64,
    },
}

impl Place {
    /// Where a stream resumed from `last_event_id` starts: continuing the
    /// call whose stream the layer saw end there, else before all of them.
    fn start(mut calls: Vec<Resumable>, last_event_id: &[u8]) -> Self {
        match calls
            .iter()
            .position(|c| *c.last_event_id == *last_event_id)
        {
            Some(at) => Self::Continuing {
                call: calls.swap_remove(at),
                progress_events: 0,
            },
            None => Self::Before(calls),
        }
    }

    /// Notes that the stream reached event id `id`: past the last event
    /// the layer saw of a call, it continues that call. Returns the call's
    /// JSON-RPC id when the stream catches up with it here.
    fn reach(&mut self, id: &[u8]) -> Option<&Value> {
        if let Self::Before(calls) = self
            && let Some(at) = calls.iter().position(|c| *c.last_event_id == *id)
        {
            *self = Self::Continuing {
                call: calls.swap_remove(at),
                progress_events: 0,
            };
            return self.continuing();
        }
        None
    }

    /// Counts a progress event with (last) event id `id` for the call the
    /// stream continues, unless it replays the last one the layer saw.
    fn count_progress(&mut self, id: &[u8]) {
        if let Self::Continuing {
            call,
            progress_events,
        } = self
            && *call.last_event_id != *id
        {
            *progress_events += 1;
        }
    }

    /// The JSON-RPC id of the call the stream continues, if any.
    fn continuing(&self) -> Option<&Value> {
        match self {
            Self::Continuing { call, .. } => Some(&call.id),
            Self::Before(_) => None,
        }
    }

    /// The progress this stream counted for call `id`, which it answered:
    /// nothing is counted from here on.
    fn answered(&mut self, id: &Value) -> u64 {
        match self {
            Self::Continuing {
                call,
                progress_events,
            } if same_id(&call.id, id) => {
                let counted = *progress_events;
                *self = Self::Before(Vec::new());
                counted
            }
            _ => 0,
        }
    }
}

/// A resumed event stream (a GET with `Last-Event-ID`) of a session whose
/// run has parked calls: read for their answers (see the module docs).
#[derive(Debug)]
pub(crate) struct ResumedStream {
    shared: Arc<Shared>,
    key: Arc<str>,
    run_id: Uuid,
    decoder: SseDecoder,
    place: Place,
}

impl ResumedStream {
    /// The resumed stream of session `key` from `last_event_id`, if calls
    /// are parked in the session's run (the wait of the one it continues
    /// is renewed).
    pub(crate) fn open(
        shared: &Arc<Shared>,
        key: &Arc<str>,
        last_event_id: &[u8],
    ) -> Option<Box<Self>> {
        let deadline = renewed_wait(shared);
        let (run_id, calls) = shared.sessions.resumable(key, last_event_id, deadline)?;
        Some(Box::new(Self {
            shared: Arc::clone(shared),
            key: Arc::clone(key),
            run_id,
            decoder: SseDecoder::data_and_id(shared.settings.answer_read_window()),
            place: Place::start(calls, last_event_id),
        }))
    }

    /// Reads one chunk; `true` once no call is parked in the run any more.
    pub(crate) fn on_data(&mut self, chunk: &[u8]) -> bool {
        let Self {
            shared,
            key,
            run_id,
            decoder,
            place,
        } = self;
        let mut any_left = true;
        decoder.push(chunk, |event| {
            if let Some(id) = place.reach(event.id) {
                renew(shared, key, *run_id, id);
            }
            match Found::from_event(event, None) {
                EventMeaning::Progress => place.count_progress(event.id),
                EventMeaning::Answer(found) => {
                    // An answer too large to read whole has no id to read:
                    // it answers the call the stream continues, if any, as
                    // on a live stream.
                    let id = found.response.as_ref().map(|r| &r.id);
                    let Some(id) = id.or_else(|| place.continuing()).cloned() else {
                        return;
                    };
                    let (call, left) = shared.sessions.unpark(key, Some(*run_id), &id);
                    any_left = left;
                    if let Some(call) = call {
                        call.answer(shared, found, place.answered(&id), Moment::now());
                    }
                }
                EventMeaning::Other => {}
            }
        });
        // An event without data (a server's priming event) is not reported;
        // its id may be the one the layer saw last of a call all the same.
        if let Some(id) = place.reach(decoder.last_id()) {
            renew(shared, key, *run_id, id);
        }
        !any_left
    }

    /// The stream is over (`how`) before the answer of the call it
    /// continued, if any: the call takes its progress and last event id,
    /// and waits for the next resumption.
    pub(crate) fn end(self, how: BodyEnd) {
        let Place::Continuing {
            call,
            progress_events,
        } = self.place
        else {
            return;
        };
        let continued = Continued {
            progress_events,
            interruption: how.interruption().unwrap_or(ENDED_EARLY),
            ended: Moment::now(),
            last_event_id: self.decoder.last_id().into(),
        };
        let wait = how.resumption_wait(self.shared.settings.idle_timeout);
        self.shared
            .sessions
            .change_parked(&self.key, self.run_id, &call.id, |parked| {
                parked.continued(continued, wait);
            });
    }
}

/// When the wait of a call a resumed stream continues from now on ends.
fn renewed_wait(shared: &Shared) -> Instant {
    instant_now() + shared.settings.idle_timeout
}

/// A resumed stream caught up with call `id`, parked in run `run_id`
/// under `key`: it continues the call from here, whose wait is renewed.
fn renew(shared: &Shared, key: &str, run_id: Uuid, id: &Value) {
    let deadline = renewed_wait(shared);
    shared
        .sessions
        .change_parked(key, run_id, id, |call| call.renew(deadline));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrodoConfig;
    use crate::api::RequestSpan;
    use crate::attributes::Attributes;
    use crate::capture_policy::Kept;
    use crate::run::ClosedVia;
    use crate::span_kind::SpanKind;
    use crate::state::sweep_interval;
    use crate::wire::{Run, Timestamp};
    use serde_json::json;

    /// Call `id`, whose stream ended at `ended` with last event id `0/<id>`,
    /// parked to wait `wait`.
    fn call(shared: &Arc<Shared>, id: i64, ended: Moment, wait: Duration) -> ParkedCall {
        call_in(shared, Uuid::nil(), None, id, ended, wait)
    }

    /// [`call`], in run `run_id` of session `s-1`, under way there.
    fn call_in(
        shared: &Arc<Shared>,
        run_id: Uuid,
        under_way: Option<UnderWay>,
        id: i64,
        ended: Moment,
        wait: Duration,
    ) -> ParkedCall {
        let draft = SpanDraft {
            request_span: RequestSpan::new(Arc::clone(shared), 0),
            caller: None,
            name: "tool.wait".to_owned(),
            kind: SpanKind::Tool,
            tool_name: Some("wait".to_owned()),
            request_id: Some(json!(id)),
            started_at: Timestamp::now(),
            started: Instant::now(),
            input: Kept::Final(None, false),
            attributes: Attributes::for_request(),
            preset_error: None,
        };
        let destination = Destination::Run {
            key: Arc::from("s-1"),
            run_id,
            opened: false,
        };
        let left = StreamLeft {
            status: StatusCode::OK,
            bytes_out: 10,
            progress_events: 1,
            interruption: ENDED_EARLY,
            ended,
            last_event_id: format!("0/{id}").into_bytes().into(),
        };
        ParkedCall::new(draft, destination, left, under_way, wait)
    }

    /// Opens the run of session `s-1` and parks [`call`] 1 there, under way
    /// in it until it is parked. Returns the run's id.
    fn park_in_a_session(shared: &Arc<Shared>, ended: Moment, wait: Duration) -> Uuid {
        let sessions = &shared.sessions;
        let run = sessions.run_for("s-1", Moment::now(), || {
            Run::new(Uuid::new_v4(), "agent".to_owned(), Timestamp::now())
        });
        let parked = call_in(shared, run.run_id, Some(run.under_way), 1, ended, wait);
        assert!(sessions.park("s-1", run.run_id, parked).is_none());
        run.run_id
    }

    fn ids(calls: &[ParkedCall]) -> Vec<i64> {
        calls
            .iter()
            .map(|c| c.request_id().unwrap().as_i64().unwrap())
            .collect()
    }

    /// A cancellation read before its call parks marks the call, once;
    /// the notes are bounded in number and in the size of an id, and an
    /// id no request may have is not noted.
    #[test]
    fn cancellations_noted_before_a_call_parks_are_bounded() {
        let shared = Shared::switched_off();
        let (now, wait) = (Moment::now(), Duration::from_secs(60));
        let mut parked = ParkedCalls::default();
        assert!(parked.cancel(&json!(4)).is_none());
        let back = parked.park(call(&shared, 4, now, wait)).expect("cancelled");
        assert_eq!(back.left.interruption, CANCELLED_BY_CLIENT);
        assert!(
            parked.is_empty() && parked.0.is_none(),
            "the note is used up"
        );

        for id in [
            json!("x".repeat(MAX_NOTED_ID_LEN + 1)),
            json!({"id": 1}),
            json!(null),
        ] {
            assert!(parked.cancel(&id).is_none());
            assert!(parked.0.is_none(), "{id} is not noted");
        }
        for id in 0..=MAX_CANCELLED_NOTED as i64 {
            parked.cancel(&json!(id));
        }
        let notes = &parked.0.as_ref().unwrap().cancelled;
        assert_eq!(notes.len(), MAX_CANCELLED_NOTED);
        assert_eq!(notes[0], json!(1), "the oldest went first");
    }

    #[test]
    fn a_run_parks_a_bounded_number_of_calls_and_gives_them_back_by_id() {
        let shared = Shared::switched_off();
        let now = Moment::now();
        let wait = Duration::from_secs(60);
        let mut parked = ParkedCalls::default();
        assert!(parked.is_empty());
        for id in 0..MAX_PARKED_CALLS as i64 {
            assert!(parked.park(call(&shared, id, now, wait)).is_none());
        }
        let refused = parked.park(call(&shared, 99, now, wait)).unwrap();
        assert_eq!(refused.request_id(), Some(&json!(99)), "given back");

        assert_eq!(ids(&[parked.take(&json!(3)).unwrap()]), [3]);
        assert!(parked.take(&json!(3)).is_none(), "taken once");
        assert!(
            parked.take(&json!("3")).is_none(),
            "ids are compared as JSON"
        );
        // A number by its value, however it is written.
        assert!(parked.get_mut(&json!(4.0)).is_some());
        assert_eq!(ids(&[parked.take(&json!(4.0)).unwrap()]), [4]);
        assert_eq!(parked.take_all().len(), MAX_PARKED_CALLS - 2);
        assert!(parked.is_empty());

        // The last call taken out leaves no room behind.
        assert!(parked.park(call(&shared, 1, now, wait)).is_none());
        parked.take(&json!(1)).unwrap();
        assert!(parked.0.is_none());
    }

    #[test]
    fn a_resumption_renews_the_wait_of_calls_and_the_others_run_out() {
        let shared = Shared::switched_off();
        let ended = Moment::now();
        let t = ended.instant;
        let mut parked = ParkedCalls::default();
        assert!(
            parked
                .park(call(&shared, 1, ended, Duration::from_secs(1)))
                .is_none()
        );
        assert!(
            parked
                .park(call(&shared, 2, ended, Duration::from_secs(10)))
                .is_none()
        );

        assert!(
            parked
                .park(call(&shared, 3, ended, Duration::from_secs(10)))
                .is_none()
        );

        assert!(parked.take_expired(t).is_empty());
        assert_eq!(ids(&parked.take_expired(t + Duration::from_secs(2))), [1]);

        // Resumed from call 2's last event: only its wait is renewed.
        let resumable = parked.resumable(b"0/2", t + Duration::from_secs(20));
        assert_eq!(resumable.len(), 2);
        assert_eq!(resumable[0].id, json!(2));
        assert_eq!(&*resumable[0].last_event_id, b"0/2");
        assert_eq!(resumable[1].id, json!(3));
        assert_eq!(ids(&parked.take_expired(t + Duration::from_secs(15))), [3]);
        // A stream resumed from no call's last event renews nothing.
        parked.resumable(b"9/9", t + Duration::from_secs(60));
        assert_eq!(ids(&parked.take_expired(t + Duration::from_secs(20))), [2]);
        assert!(parked.is_empty());
    }

    #[test]
    fn a_call_continued_by_a_stream_that_ended_early_takes_its_progress_and_id() {
        let shared = Shared::switched_off();
        let ended = Moment::now();
        let mut parked = ParkedCalls::default();
        assert!(
            parked
                .park(call(&shared, 1, ended, Duration::from_secs(1)))
                .is_none()
        );
        let later = Moment {
            instant: ended.instant + Duration::from_secs(5),
            ..ended
        };
        let by = Continued {
            progress_events: 2,
            interruption: BodyEnd::Dropped.interruption().unwrap(),
            ended: later,
            last_event_id: Box::from(&b"4/1"[..]),
        };
        let first = parked.get_mut(&json!(1)).unwrap();
        first.continued(by, Duration::from_secs(1));
        assert!(
            parked
                .take_expired(ended.instant + Duration::from_secs(2))
                .is_empty(),
            "waits from the later end"
        );
        let continued = parked.take(&json!(1)).unwrap();
        assert_eq!(continued.left.progress_events, 3);
        assert_eq!(continued.left.interruption.0, "cancelled");
        assert_eq!(&*continued.left.last_event_id, b"4/1");

        // A stream that carried no id leaves the call's.
        assert!(parked.park(continued).is_none());
        let by = Continued {
            progress_events: 0,
            interruption: ENDED_EARLY,
            ended: later,
            last_event_id: Box::default(),
        };
        let again = parked.get_mut(&json!(1)).unwrap();
        again.continued(by, Duration::from_secs(1));
        assert_eq!(&*parked.take(&json!(1)).unwrap().left.last_event_id, b"4/1");
    }

    /// Sweeps as the idle sweep does, every sweep interval on the paused
    /// clock, until a run ends: how long after now that was.
    async fn time_to_a_runs_end(shared: &Arc<Shared>) -> Duration {
        let start = instant_now();
        loop {
            tokio::time::advance(sweep_interval(shared.settings.idle_timeout)).await;
            let elapsed = instant_now() - start;
            if shared.sweep() > 0 {
                return elapsed;
            }
            assert!(elapsed < Duration::from_secs(3_600), "no run ends");
        }
    }

    /// A run whose only leftover is a waiting call ends an idle timeout
    /// after its last activity, or when the call's wait ends, whichever is
    /// later: neither the sweeps while the call waits nor its span, sent
    /// when the wait ends, are activity.
    #[tokio::test(start_paused = true)]
    async fn a_run_left_with_a_waiting_call_ends_idle_or_when_the_wait_ends() {
        let secs = Duration::from_secs;
        // (idle timeout, wait, the run's end after its last activity)
        for (idle, wait, ends) in [(10, 30, 30), (60, 30, 60)] {
            let config = TrodoConfig::new().with_enabled(false);
            let shared = Shared::of(&config.with_idle_timeout(secs(idle)).unwrap());
            let sessions = &shared.sessions;
            park_in_a_session(&shared, Moment::now(), secs(wait));
            assert_eq!(
                time_to_a_runs_end(&shared).await,
                secs(ends),
                "{idle}s idle"
            );
            assert_eq!(sessions.len(), 0);
            assert_eq!(ParkedCall::give_up_expired(&shared, instant_now()), 0);
        }
    }

    /// A call whose wait ran out is activity of its run when its stream
    /// ended, as any span is when it ended: the run idles from there.
    #[tokio::test(start_paused = true)]
    async fn a_call_whose_wait_ran_out_is_activity_when_its_stream_ended() {
        let secs = Duration::from_secs;
        let config = TrodoConfig::new().with_enabled(false);
        let shared = Shared::of(&config.with_idle_timeout(secs(10)).unwrap());
        // Its stream ends 4 s after the run's last activity; it waits 1 s.
        let ended = Moment {
            at: Timestamp::now(),
            instant: instant_now() + secs(4),
        };
        park_in_a_session(&shared, ended, secs(1));
        // 10 s idle from the stream's end, at the first sweep (every 2.5 s)
        // after it; from the run's last activity before, it would be 10 s.
        assert_eq!(
            time_to_a_runs_end(&shared).await,
            Duration::from_millis(15_000)
        );
    }

    #[test]
    fn a_process_parks_a_bounded_number_of_calls_over_all_its_runs() {
        let shared = Shared::switched_off();
        let (sessions, exporter) = (&shared.sessions, &shared.exporter);
        let wait = Duration::from_secs(60);
        let runs = MAX_PARKED_CALLS_IN_PROCESS / MAX_PARKED_CALLS;
        let open = |n: usize| {
            let key = format!("s-{n}");
            let run = sessions.run_for(&key, Moment::now(), || {
                Run::new(Uuid::new_v4(), "agent".to_owned(), Timestamp::now())
            });
            (key, run.run_id)
        };
        let park = |(key, run_id): &(String, Uuid), id: i64| {
            let parked = call_in(&shared, *run_id, None, id, Moment::now(), wait);
            sessions.park(key, *run_id, parked)
        };
        let full: Vec<_> = (0..runs).map(open).collect();
        for run in &full {
            for id in 0..MAX_PARKED_CALLS as i64 {
                assert!(park(run, id).is_none());
            }
        }
        let last = open(runs);
        let refused = park(&last, 1).expect("past the process's bound");
        assert_eq!(refused.request_id(), Some(&json!(1)));

        // A call answered makes room for one.
        let (key, run_id) = &full[0];
        assert!(sessions.unpark(key, Some(*run_id), &json!(0)).0.is_some());
        assert!(park(&last, 1).is_none());
        assert!(park(&last, 2).is_some());
        // A run that ends makes room for its calls.
        assert!(sessions.close(key, ClosedVia::SessionDeleted, exporter));
        for id in 2..MAX_PARKED_CALLS as i64 + 1 {
            assert!(park(&last, id).is_none());
        }
        assert!(park(&open(runs + 1), 1).is_some());
    }

    #[test]
    fn a_stream_may_bring_an_answer_only_with_calls_parked_or_under_way() {
        let shared = Shared::switched_off();
        let sessions = &shared.sessions;
        assert!(!sessions.may_resume("s-1", 0), "no run");
        let run = sessions.run_for("s-1", Moment::now(), || {
            Run::new(Uuid::new_v4(), "agent".to_owned(), Timestamp::now())
        });
        // The resuming request's own token is no call under way.
        assert!(!sessions.may_resume("s-1", 1));
        assert!(sessions.may_resume("s-1", 0), "a request under way");
        let parked = call_in(
            &shared,
            run.run_id,
            Some(run.under_way),
            1,
            Moment::now(),
            Duration::from_secs(60),
        );
        assert!(sessions.park("s-1", run.run_id, parked).is_none());
        assert!(sessions.may_resume("s-1", 1), "a call parked");
        let (call, _) = sessions.unpark("s-1", Some(run.run_id), &json!(1));
        drop(call);
        assert!(!sessions.may_resume("s-1", 0));
    }

    /// A call whose wait ran out goes into its run in the same look at the
    /// run table that takes it out of it, as activity when its stream
    /// ended: a DELETE's close waiting in the backlog then ends the run
    /// with it, as nothing waits in the backlog for it.
    #[test]
    fn an_expired_call_goes_into_its_run_as_it_leaves_its_wait() {
        use crate::export::{ConsoleSink, DeliveryOptions, Exporter, Sink};
        let shared = Shared::switched_off();
        let sessions = &shared.sessions;
        // An exporter whose queue the test reads (no worker takes from it).
        let (exporter, _worker) =
            Exporter::new(Sink::Console(ConsoleSink), DeliveryOptions::default());
        let ended = Moment::now();
        park_in_a_session(&shared, ended, Duration::from_secs(1));
        shared.close_session(&Arc::from("s-1"), ClosedVia::SessionDeleted);
        let locks = sessions.locks();
        let past_its_wait = ended.instant + Duration::from_secs(2);
        assert_eq!(sessions.record_expired_calls(past_its_wait, &exporter), 1);
        assert_eq!(sessions.locks() - locks, 1, "one look");
        let counters = exporter.counters();
        assert_eq!(counters.queued_items, 2, "the run's start, the call's span");
        // The close, read now, ends the run after the span.
        assert!(sessions.close("s-1", ClosedVia::SessionDeleted, &exporter));
        let counters = exporter.counters();
        assert_eq!((counters.queued_items, counters.dropped()), (3, 0));
        assert_eq!(sessions.record_expired_calls(past_its_wait, &exporter), 0);
        assert_eq!(shared.backlog.catch_up(), 1, "the close, for no run now");
    }

    /// A client that resumes from an event before the last one the layer
    /// saw of a call (its connection lost the rest) continues the call
    /// once the server's replay reaches that event: then its wait is
    /// renewed, as for a stream resumed from there.
    #[test]
    fn a_stream_resumed_from_an_earlier_event_renews_the_wait_once_it_catches_up() {
        let shared = Shared::switched_off();
        let ended = Moment::now();
        park_in_a_session(&shared, ended, Duration::from_secs(1));
        let past_its_wait = ended.instant + Duration::from_secs(2);

        let mut stream = ResumedStream::open(&shared, &Arc::from("s-1"), b"9/1").unwrap();
        let progress = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#;
        assert!(!stream.on_data(format!("id: 0/1\ndata: {progress}\n\n").as_bytes()));
        assert_eq!(
            ParkedCall::give_up_expired(&shared, past_its_wait),
            0,
            "waits on"
        );
        let answer = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
        assert!(
            stream.on_data(format!("id: 1/1\ndata: {answer}\n\n").as_bytes()),
            "answered"
        );
    }

    /// A waiting call the client cancels is taken out of its run in one
    /// look at the run table.
    #[test]
    fn a_call_the_client_cancels_is_taken_out_under_one_lock() {
        let shared = Shared::switched_off();
        let sessions = &shared.sessions;
        park_in_a_session(&shared, Moment::now(), Duration::from_secs(60));

        let locks_to_cancel = |key: &str, id: i64| {
            let before = sessions.locks();
            ParkedCall::cancelled(&shared, key, &json!(id), Moment::now());
            sessions.locks() - before
        };
        assert_eq!(locks_to_cancel("s-1", 2), 1, "no such call");
        assert_eq!(locks_to_cancel("s-2", 1), 1, "no such run");
        assert!(sessions.may_resume("s-1", 0), "still parked");
        assert_eq!(locks_to_cancel("s-1", 1), 1);
        assert!(!sessions.may_resume("s-1", 0), "taken out");
    }

    fn resumable(id: i64, last_event_id: &str) -> Resumable {
        Resumable {
            id: json!(id),
            last_event_id: last_event_id.as_bytes().into(),
        }
    }

    /// The progress a stream resumed from `from` counts for call 1 (whose
    /// stream the layer last saw at `1/1`), given progress events with
    /// these (last) event ids.
    fn counted(from: &str, progress_ids: &[&str]) -> u64 {
        let mut place = Place::start(
            vec![resumable(1, "1/1"), resumable(2, "7/2")],
            from.as_bytes(),
        );
        for id in progress_ids {
            place.reach(id.as_bytes());
            place.count_progress(id.as_bytes());
        }
        place.answered(&json!(1))
    }

    #[test]
    fn progress_counts_once_the_stream_is_past_the_last_event_the_layer_saw() {
        // Resumed from there: a replay of it is not counted, what follows is.
        assert_eq!(counted("1/1", &["1/1", "2/1", "3/1"]), 2);
        // From an earlier event: nothing counts until the replay passes it.
        assert_eq!(counted("0/1", &["1/1", "2/1"]), 1);
        assert_eq!(counted("0/1", &["0/1", "1/1", "2/1", "3/1"]), 2);
        // A stream that never passes it (another stream's) counts nothing.
        assert_eq!(counted("5/9", &["6/9"]), 0);
        // Another call's stream counts nothing for this one.
        assert_eq!(counted("7/2", &["8/2"]), 0);
    }

    #[test]
    fn a_stream_counts_nothing_more_once_it_answered_its_call() {
        let mut place = Place::start(vec![resumable(1, "1/1")], b"1/1");
        place.count_progress(b"2/1");
        assert_eq!(place.answered(&json!(2)), 0, "not the call it continues");
        assert_eq!(place.answered(&json!(1.0)), 1, "the same number");
        place.reach(b"1/1");
        place.count_progress(b"3/1");
        assert_eq!(place.answered(&json!(1)), 0);
    }
}
