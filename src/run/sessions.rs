//! The in-memory run table: run key (session id or resolved key) -> its open run.
//!
//! Every rule of a run's life is applied here, under one lock, so that it
//! holds however requests interleave: the run's `start` is queued before any
//! of its spans, every span counts into the run's totals, and the run is
//! removed (and its `end` queued) exactly once, by whichever of DELETE, 404,
//! the idle sweep, `end_run` or shutdown comes first. Queueing never waits,
//! so the lock is held only for a few map operations.
//!
//! With a session store the table is this process's cache of the shared
//! runs and stays the authority for ordering here: a run marked shared
//! sends its aggregates and activity to the store queue (under the lock, so
//! they reach the store before this process's claim of its end), and a run
//! leaving the table is ended through the store's end claim, which decides
//! whether this process sends `end` and with which totals.

use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use uuid::Uuid;

use super::ClosedVia;
use super::under_way::{UnderWay, UnderWayCount};
use crate::export::{Exporter, IngestCall, SpanRecords};
use crate::moment::{Moment, instant_now};
use crate::resume::{MAX_PARKED_CALLS_IN_PROCESS, ParkedCall, ParkedCalls, Resumable};
use crate::store::{EndOp, NewRun, Resolved, StoreQueue};
use crate::wire::{End, Run, RunStatus, Timestamp, Totals};

/// One open run.
#[derive(Debug)]
struct OpenRun {
    run_id: Uuid,
    /// The `start` not yet queued: its metadata may still be completed by
    /// the first response (negotiated version, server identity).
    pending_start: Option<Box<Run>>,
    /// Wall-clock time of the last activity: the `ended_at` of an idle end.
    last_activity: Timestamp,
    /// Monotonic time of the last activity, for the idle sweep.
    last_seen: Instant,
    /// When the last span counted in it ended: its end is no sooner.
    last_span_end: Option<Timestamp>,
    totals: Totals,
    /// Whether the idle sweep may end it (runs of `start_run` end by `end_run`).
    sweepable: bool,
    /// Whether the session store holds it: its aggregates and activity go
    /// there, and other workers may continue it.
    shared: bool,
    /// Whether another worker opened it (and sends its `start`).
    adopted: bool,
    /// Its requests being answered: the idle sweep passes it over meanwhile.
    under_way: UnderWayCount,
    /// Its calls waiting for a resumed stream to bring their answers (see
    /// [`crate::resume`]): the run does not end idle while they wait.
    parked: ParkedCalls,
}

impl OpenRun {
    fn new(run_id: Uuid, pending_start: Option<Box<Run>>, last_activity: Timestamp) -> Self {
        Self {
            run_id,
            pending_start,
            last_activity,
            last_seen: instant_now(),
            last_span_end: None,
            totals: Totals::default(),
            sweepable: true,
            shared: false,
            adopted: false,
            under_way: UnderWayCount::default(),
            parked: ParkedCalls::default(),
        }
    }

    /// What the idle sweep finds at `now`. A run with a request under way
    /// is active at `now` (so it idles from about the end of its last
    /// request, and a span recorded just after that still finds it open).
    /// A run with calls parked is not idle, but their wait is no activity:
    /// it ends an idle timeout after its last activity, or when their
    /// wait runs out, whichever is later.
    fn idleness_at(&mut self, now: Instant, idle_timeout: Duration) -> Idleness {
        if self.under_way.any() {
            self.last_seen = self.last_seen.max(now);
            Idleness::Answering
        } else if !self.parked.is_empty()
            || now.saturating_duration_since(self.last_seen) < idle_timeout
        {
            Idleness::Active
        } else if self.sweepable {
            Idleness::Idle
        } else if self.shared {
            // Another worker's `end_run` may have ended it: ask again after
            // another idle timeout.
            self.last_seen = now;
            Idleness::IdleUnswept
        } else {
            Idleness::Active
        }
    }

    /// Queues the run's `start` if it still waits (metadata from the first
    /// answer, or a record that cannot wait for it any more).
    fn send_pending_start(&mut self, exporter: &Exporter) {
        if let Some(run) = self.pending_start.take() {
            exporter.send(IngestCall::Start(run));
        }
    }

    /// When a run ending `at` ends: no sooner than the last span counted
    /// in it. A span recorded before a deferred close is read (a handler's
    /// child span, say) may end after the answer that closed the run.
    /// Other activity (a request that came meanwhile, whose span is read
    /// after the close and so not counted) does not move it.
    fn ended_at(&self, at: Timestamp) -> Timestamp {
        self.last_span_end.map_or(at, |end| at.max(end))
    }

    /// Notes activity seen at `at` (which may be read after later activity).
    fn mark_active(&mut self, at: Moment) {
        self.last_seen = self.last_seen.max(at.instant);
        self.last_activity = self.last_activity.max(at.at);
    }
}

/// The run a request goes to: its id, whether the request opened it, and
/// the request under way in it (so that no sweep ends it meanwhile) until
/// the token is dropped.
#[derive(Debug)]
pub(crate) struct RunFor {
    pub(crate) run_id: Uuid,
    pub(crate) opened: bool,
    pub(crate) under_way: UnderWay,
}

impl RunFor {
    fn of(open: &OpenRun, opened: bool) -> Self {
        Self {
            run_id: open.run_id,
            opened,
            under_way: open.under_way.start(),
        }
    }
}

/// What the idle sweep finds of an open run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idleness {
    /// Idle for the idle timeout: it ends.
    Idle,
    /// A request of it is being answered: active now, whatever its last
    /// activity.
    Answering,
    /// Active within the idle timeout, with calls parked, or ended only by
    /// `end_run`.
    Active,
    /// A run of `start_run` the store holds, idle here for the idle
    /// timeout: the store is asked whether another worker ended it (and
    /// given it again if it lost it).
    IdleUnswept,
}

/// Spans for a run that is not open in this process, given back.
#[derive(Debug)]
pub(crate) enum NotOpenHere {
    /// The run ended here (among the latest ends remembered).
    Ended(SpanRecords),
    /// A run this process does not know: another process's.
    Elsewhere(SpanRecords),
}

/// How a run ends: the fields of its `end` besides the totals.
#[derive(Debug, Clone)]
pub(crate) struct Ending {
    pub(crate) status: RunStatus,
    pub(crate) output: Option<String>,
    pub(crate) error_summary: Option<String>,
    pub(crate) metadata: serde_json::Map<String, serde_json::Value>,
}

impl From<ClosedVia> for Ending {
    fn from(via: ClosedVia) -> Self {
        Self {
            status: RunStatus::Ok,
            output: None,
            error_summary: None,
            metadata: via.metadata(),
        }
    }
}

/// How many ended run ids are remembered, so that a repeated `end_run` sends nothing.
const REMEMBERED_ENDS: usize = 4_096;

/// The run table's hasher: seeded at random per process, like std's
/// SipHash, and several times faster on a session id, which every request
/// in a session looks up twice. foldhash claims only minimal resistance to
/// chosen collisions; the keys that open runs are ids the server issued
/// (or, for clients without sessions, keys that identify the client).
type Hasher = foldhash::fast::RandomState;

#[derive(Debug, Default)]
struct Table {
    /// One allocation per key, shared by both maps and lent to requests.
    by_key: HashMap<Arc<str>, OpenRun, Hasher>,
    /// The key of every open run, by run id.
    by_run: HashMap<Uuid, Arc<str>, Hasher>,
    /// The latest runs ended here, oldest first.
    ended: VecDeque<Uuid>,
    ended_set: HashSet<Uuid>,
    /// How many calls are parked in the open runs.
    parked: usize,
    /// Keys not known here whose run the store is being asked about, with
    /// the run id asked to be opened and how many requests ask with it:
    /// every first request of such a key asks with the same id (see
    /// [`Sessions::run_id_to_resolve`]).
    resolving: HashMap<Arc<str>, Asking, Hasher>,
}

/// The run id the first requests of a key not known here ask the store
/// for (see [`Sessions::run_id_to_resolve`]).
#[derive(Debug)]
struct Asking {
    run_id: Uuid,
    /// How many requests ask with it and have not settled or given up.
    requests: usize,
    /// Whether a run of this id was in the table and left it (ended, or
    /// evicted idle): its start went out, so it is not started again, and
    /// its end is not held back.
    left: bool,
}

impl Table {
    fn insert(&mut self, key: &str, open: OpenRun) -> &mut OpenRun {
        // A run id given again (`StartRun::run_id`) after its run ended
        // here is a run open again, to be ended again.
        if self.ended_set.remove(&open.run_id) {
            self.ended.retain(|ended| *ended != open.run_id);
        }
        let key: Arc<str> = key.into();
        self.by_run.insert(open.run_id, Arc::clone(&key));
        self.by_key.entry(key).insert_entry(open).into_mut()
    }

    /// Removes a run that ends, and remembers that it ended.
    fn remove(&mut self, key: &str) -> Option<OpenRun> {
        let open = self.evict(key)?;
        self.remember_end(open.run_id);
        Some(open)
    }

    /// Removes a run from the table without saying that it ended (another
    /// worker may continue it).
    fn evict(&mut self, key: &str) -> Option<OpenRun> {
        let open = self.by_key.remove(key)?;
        self.by_run.remove(&open.run_id);
        if let Some(asking) = self.resolving.get_mut(key)
            && asking.run_id == open.run_id
        {
            asking.left = true;
        }
        self.parked -= open.parked.len();
        Some(open)
    }

    fn remember_end(&mut self, run_id: Uuid) {
        if self.ended_set.contains(&run_id) {
            return;
        }
        if self.ended.len() == REMEMBERED_ENDS
            && let Some(oldest) = self.ended.pop_front()
        {
            self.ended_set.remove(&oldest);
        }
        self.ended.push_back(run_id);
        self.ended_set.insert(run_id);
    }

    fn get_run(&mut self, run_id: Uuid) -> Option<&mut OpenRun> {
        let key = self.by_run.get(&run_id)?;
        self.by_key.get_mut(key)
    }

    /// Removes the open run with this id, whatever its key.
    fn remove_run(&mut self, run_id: Uuid) -> Option<OpenRun> {
        let key = self.by_run.get(&run_id)?.clone();
        self.remove(&key)
    }
}

/// What [`Sessions::close_run`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseRun {
    /// The run was open here; its end is queued.
    Closed,
    /// The run already ended here; nothing is sent.
    AlreadyEnded,
    /// The run is not known here (another process's): the caller sends its
    /// end, which is remembered from now on.
    Unknown,
}

/// The open runs of this process.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    table: Mutex<Table>,
    /// The session store's queue, when runs are shared with other workers.
    store: Option<StoreQueue>,
    /// Calls refused a place by [`has_room_for`](Self::has_room_for).
    refused_for_room: AtomicU64,
    /// How many times the table was locked, for tests that count.
    #[cfg(test)]
    locks: std::sync::atomic::AtomicUsize,
}

impl Sessions {
    /// A table whose runs are shared through `store`, if given.
    pub(crate) fn new(store: Option<StoreQueue>) -> Self {
        Self {
            table: Mutex::default(),
            store,
            refused_for_room: AtomicU64::new(0),
            #[cfg(test)]
            locks: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        #[cfg(test)]
        self.locks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Every change is a few inserts/removes that keep the table
        // consistent, so a panic elsewhere while holding it is no reason to stop.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens the run of a new session; its `start` waits for
    /// [`complete_start`](Self::complete_start) (or the first span / the end).
    /// Replaces nothing: a key already open keeps its run. Returns the run id.
    pub(crate) fn open_pending(&self, key: &str, run: Run) -> Uuid {
        self.run_for(key, Moment::now(), || run).run_id
    }

    /// Opens a run and queues its `start` at once (`start_run`). Returns
    /// `false`, queueing nothing, when the key is open already.
    pub(crate) fn open_started(
        &self,
        key: &str,
        run: Run,
        sweepable: bool,
        exporter: &Exporter,
    ) -> bool {
        let mut table = self.lock();
        if table.by_key.contains_key(key) || table.by_run.contains_key(&run.run_id) {
            return false;
        }
        let mut open = OpenRun::new(run.run_id, None, run.started_at);
        open.sweepable = sweepable;
        table.insert(key, open);
        if let Some(store) = &self.store {
            store.register(NewRun::new(key, run.run_id, run.started_at.0).sweepable(sweepable));
        }
        exporter.send(IngestCall::Start(Box::new(run)));
        true
    }

    /// Queues the pending `start` of a run after `complete` had its say on
    /// it (metadata learnt from the first response). Does nothing when the
    /// start was already queued.
    pub(crate) fn complete_start(
        &self,
        key: &str,
        run_id: Uuid,
        exporter: &Exporter,
        complete: impl FnOnce(&mut Run),
    ) {
        let mut table = self.lock();
        if let Some(open) = table.by_key.get_mut(key).filter(|o| o.run_id == run_id)
            && let Some(mut run) = open.pending_start.take()
        {
            complete(&mut run);
            exporter.send(IngestCall::Start(run));
        }
    }

    /// Whether a run may open under `key`: it has one here already, or
    /// fewer than `max` runs are open. A bound on memory, not exact: two
    /// requests may both find room for the last place. Each refusal is
    /// counted ([`refused_for_room`](Self::refused_for_room)).
    pub(crate) fn has_room_for(&self, key: &str, max: usize) -> bool {
        let table = self.lock();
        let room = table.by_key.len() < max || table.by_key.contains_key(key);
        if !room {
            self.refused_for_room.fetch_add(1, Ordering::Relaxed);
        }
        room
    }

    /// How many times [`has_room_for`](Self::has_room_for) found no room.
    pub(crate) fn refused_for_room(&self) -> u64 {
        self.refused_for_room.load(Ordering::Relaxed)
    }

    /// The run of a known key, marked active; or, for a key this process
    /// does not know, a new run made by `open`, whose `start` waits like
    /// [`open_pending`](Self::open_pending)'s.
    pub(crate) fn run_for(&self, key: &str, at: Moment, open: impl FnOnce() -> Run) -> RunFor {
        let mut table = self.lock();
        if let Some(known) = table.by_key.get_mut(key) {
            known.mark_active(at);
            return RunFor::of(known, false);
        }
        let run = open();
        let started_at = run.started_at;
        let entry = OpenRun::new(run.run_id, Some(Box::new(run)), started_at);
        RunFor::of(table.insert(key, entry), true)
    }

    /// [`run_if_open`](Self::run_if_open), for a request that is under way
    /// in the run it finds.
    pub(crate) fn run_for_known(&self, key: &str, at: Moment) -> Option<RunFor> {
        let mut table = self.lock();
        let known = table.by_key.get_mut(key)?;
        known.mark_active(at);
        Some(RunFor::of(known, false))
    }

    /// The run of a known key, marked active; `None` for a key this process
    /// does not know.
    pub(crate) fn run_if_open(&self, key: &str, at: Moment) -> Option<Uuid> {
        let mut table = self.lock();
        let known = table.by_key.get_mut(key)?;
        known.mark_active(at);
        Some(known.run_id)
    }

    /// The run id to ask the store to open for `key`, which this process
    /// did not know: the one another request of the key is asking with, if
    /// any, else the key's run here if it became known meanwhile (and is
    /// not another worker's), else a new one. With an id each, two first
    /// requests of a key could leave the store holding one run and this
    /// process the other, the store's never started (when one of them
    /// settles without the store: it failed, or was skipped). Every call
    /// is matched by one [`Self::forget_resolving`] once its request
    /// settled or gave up.
    pub(crate) fn run_id_to_resolve(&self, key: &Arc<str>) -> Uuid {
        let mut table = self.lock();
        let table = &mut *table;
        // Not another worker's: the store would call it this one's own.
        let known = table
            .by_key
            .get(key)
            .filter(|open| !open.adopted)
            .map(|open| open.run_id);
        let asking = table
            .resolving
            .entry(Arc::clone(key))
            .or_insert_with(|| Asking {
                run_id: known.unwrap_or_else(Uuid::new_v4),
                requests: 0,
                left: false,
            });
        asking.requests += 1;
        asking.run_id
    }

    /// A request that asked the store about `key` with `run_id` settled or
    /// gave up: once none asks with it, the key's next first request gets
    /// an id of its own.
    pub(crate) fn forget_resolving(&self, key: &str, run_id: Uuid) {
        let mut table = self.lock();
        let Some(asking) = table
            .resolving
            .get_mut(key)
            .filter(|asking| asking.run_id == run_id)
        else {
            return;
        };
        asking.requests -= 1;
        if asking.requests == 0 {
            table.resolving.remove(key);
        }
    }

    /// Takes the store's answer for a key this process did not know (see
    /// [`Resolved`]) into the table. `open` makes the run's `start` when this
    /// process starts it. A key that became known meanwhile keeps its run:
    /// shared now, if the store opened it, and started by this process if
    /// it is the run this process asked for, which another request of the
    /// key found in the store first. A run that ended here meanwhile is
    /// not opened (nor joined) again: the key gets a new one. A run asked
    /// for that was here and left the table (evicted idle) is not started
    /// again: the store's answer joins it, a local one opens a new run.
    /// Returns the run id and whether its `start` is this process's (still pending).
    pub(crate) fn settle(
        &self,
        key: &str,
        resolved: Resolved,
        at: Moment,
        open: impl FnOnce(Uuid) -> Run,
    ) -> RunFor {
        let mut table = self.lock();
        let table = &mut *table;
        let left = match resolved {
            Resolved::Opened(run_id) | Resolved::Local(run_id) => table
                .resolving
                .get(key)
                .is_some_and(|asking| asking.run_id == run_id && asking.left),
            Resolved::Found(_) => false,
        };
        if let Some(known) = table.by_key.get_mut(key) {
            known.mark_active(at);
            let (Resolved::Opened(run_id) | Resolved::Local(run_id)) = resolved else {
                return RunFor::of(known, false);
            };
            if known.run_id != run_id {
                return RunFor::of(known, false);
            }
            if matches!(resolved, Resolved::Opened(_)) {
                share(known, self.store.as_ref());
            }
            if !known.adopted || left {
                return RunFor::of(known, false);
            }
            // The id this process asked with, never started: nobody else starts it.
            known.adopted = false;
            known.pending_start = Some(Box::new(open(run_id)));
            return RunFor::of(known, true);
        }
        let (run_id, start, shared) = match resolved {
            Resolved::Found(run_id) | Resolved::Opened(run_id) | Resolved::Local(run_id)
                if table.ended_set.contains(&run_id)
                    || (left && matches!(resolved, Resolved::Local(_))) =>
            {
                let run_id = Uuid::new_v4();
                (run_id, Some(Box::new(open(run_id))), false)
            }
            // Started here before: the store holds it still.
            Resolved::Opened(run_id) if left => (run_id, None, true),
            Resolved::Found(run_id) => (run_id, None, true),
            Resolved::Opened(run_id) => (run_id, Some(Box::new(open(run_id))), true),
            Resolved::Local(run_id) => (run_id, Some(Box::new(open(run_id))), false),
        };
        let mut entry = OpenRun::new(run_id, start, Timestamp::now());
        entry.shared = shared;
        let opened = entry.pending_start.is_some();
        entry.adopted = !opened;
        RunFor::of(table.insert(key, entry), opened)
    }

    /// Marks a run as held by the session store, and sends the store what
    /// this process counted before.
    pub(crate) fn mark_shared(&self, run_id: Uuid) {
        let mut table = self.lock();
        if let Some(open) = table.get_run(run_id) {
            share(open, self.store.as_ref());
        }
    }

    /// The run id of an open run.
    pub(crate) fn run_id(&self, key: &str) -> Option<Uuid> {
        self.lock().by_key.get(key).map(|open| open.run_id)
    }

    /// The open run under `key`, with the table's own copy of the key (a
    /// request in a known session takes it instead of copying its header),
    /// and the request under way in it until the token is dropped.
    pub(crate) fn open_key(&self, key: &str) -> Option<(Arc<str>, Uuid, UnderWay)> {
        self.lock()
            .by_key
            .get_key_value(key)
            .map(|(key, open)| (Arc::clone(key), open.run_id, open.under_way.start()))
    }

    /// The run id of a run this process may trust without the session
    /// store, and the request under way in it: with a store, a run idle for
    /// `idle_timeout` here (no request of it under way) may have been ended
    /// by another worker, so it leaves the table (and goes to the store's
    /// claim, as the idle sweep would send it) and `None` is returned.
    pub(crate) fn fresh_run_id(
        &self,
        key: &str,
        idle_timeout: Duration,
        exporter: &Exporter,
    ) -> Option<(Uuid, UnderWay)> {
        let mut table = self.lock();
        let open = table.by_key.get(key)?;
        if self.store.is_none() || open.last_seen.elapsed() < idle_timeout || open.under_way.any() {
            return Some((open.run_id, open.under_way.start()));
        }
        let stale = table.evict(key)?;
        drop(table);
        self.retire_idle(stale, idle_timeout, exporter);
        None
    }

    /// Whether the key has an open run.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.lock().by_key.contains_key(key)
    }

    /// Marks a run active (a notification, a client response), here and
    /// in the session store.
    pub(crate) fn touch(&self, key: &str, at: Moment) {
        let mut table = self.lock();
        match (table.by_key.get_mut(key), &self.store) {
            (Some(open), store) => {
                open.mark_active(at);
                if let Some(store) = store.as_ref().filter(|_| open.shared) {
                    store.record(open.run_id, Default::default(), open.last_activity);
                }
            }
            (None, Some(store)) => store.touch_key(key, at.at),
            (None, None) => {}
        }
    }

    /// Parks a call in the open run `run_id` under `key` (see
    /// [`crate::resume`]). Gives it back when that run is not open here,
    /// holds as many parked calls as it may, or this process does
    /// ([`MAX_PARKED_CALLS_IN_PROCESS`]); and always with a session store:
    /// another worker may end the run, and its parked spans would come
    /// after the run's end. A call its client cancelled before it came to
    /// park (see [`cancel_parked`](Self::cancel_parked)) is given back
    /// marked `cancelled`.
    pub(crate) fn park(&self, key: &str, run_id: Uuid, mut call: ParkedCall) -> Option<ParkedCall> {
        let mut table = self.lock();
        let table = &mut *table;
        let open = table
            .by_key
            .get_mut(key)
            .filter(|open| open.run_id == run_id);
        let Some(open) = open else {
            return Some(call);
        };
        if self.store.is_some() || table.parked >= MAX_PARKED_CALLS_IN_PROCESS {
            open.parked.was_cancelled(&mut call);
            return Some(call);
        }
        let refused = open.parked.park(call);
        if refused.is_none() {
            table.parked += 1;
        }
        refused
    }

    /// Records the parked calls whose wait ran out by `now` in their runs,
    /// as their streams left them, under the table's lock: no close can
    /// come between a call's leaving its run and its span's going in (as
    /// for the calls of a run that ends: see [`settle`]). Expiries are
    /// rare, so requests seldom wait for these spans to be written.
    /// Returns how many.
    pub(crate) fn record_expired_calls(&self, now: Instant, exporter: &Exporter) -> usize {
        let mut table = self.lock();
        let mut count = 0;
        for open in table.by_key.values_mut() {
            let calls = open.parked.take_expired(now);
            count += calls.len();
            // Activity when their streams ended, as for any span (`record`
            // keeps the later of that and the run's own).
            let seen = calls.iter().map(ParkedCall::stream_ended).max();
            record_failed_calls(open, calls, seen.unwrap_or(open.last_seen), exporter);
        }
        table.parked -= count;
        count
    }

    /// For a stream of session `key` resumed now from `last_event_id`:
    /// the id of its run and what it may continue of the calls parked
    /// there (the wait of the one it continues renewed to `deadline`);
    /// `None` when none are.
    pub(crate) fn resumable(
        &self,
        key: &str,
        last_event_id: &[u8],
        deadline: Instant,
    ) -> Option<(Uuid, Vec<Resumable>)> {
        let mut table = self.lock();
        let open = table.by_key.get_mut(key)?;
        let calls = open.parked.resumable(last_event_id, deadline);
        (!calls.is_empty()).then_some((open.run_id, calls))
    }

    /// Whether a stream of session `key` resumed now may bring a parked
    /// call's answer: its run is open here and has calls parked, or
    /// requests under way besides the `own` ones of the resuming request
    /// (one read later parks when the backlog reads it).
    pub(crate) fn may_resume(&self, key: &str, own: usize) -> bool {
        self.lock()
            .by_key
            .get(key)
            .is_some_and(|open| !open.parked.is_empty() || open.under_way.more_than(own))
    }

    /// The call parked in run `run_id` under `key` (in the run open under
    /// it, if `None`) whose request has JSON-RPC id `id`, taken out, and
    /// whether calls are still parked there.
    pub(crate) fn unpark(
        &self,
        key: &str,
        run_id: Option<Uuid>,
        id: &Value,
    ) -> (Option<ParkedCall>, bool) {
        let mut table = self.lock();
        let Some(open) = table
            .by_key
            .get_mut(key)
            .filter(|open| run_id.is_none_or(|run_id| open.run_id == run_id))
        else {
            return (None, false);
        };
        let call = open
            .parked
            .take(id)
            .map(|call| call.taken_out(open.under_way.start()));
        let any_left = !open.parked.is_empty();
        table.parked -= usize::from(call.is_some());
        (call, any_left)
    }

    /// The client of session `key` cancelled request `id`: its call, if
    /// parked in the session's run, taken out; else the cancellation is
    /// noted there, for the call to be recorded `cancelled` if it comes
    /// to park (see [`ParkedCalls::cancel`](crate::resume::ParkedCalls::cancel)).
    pub(crate) fn cancel_parked(&self, key: &str, id: &Value) -> Option<ParkedCall> {
        let mut table = self.lock();
        let open = table.by_key.get_mut(key)?;
        let call = open.parked.cancel(id)?;
        let call = call.taken_out(open.under_way.start());
        table.parked -= 1;
        Some(call)
    }

    /// Changes the call parked in run `run_id` under `key` whose request
    /// has JSON-RPC id `id`, if it is parked there (a resumed stream
    /// continues it).
    pub(crate) fn change_parked(
        &self,
        key: &str,
        run_id: Uuid,
        id: &Value,
        change: impl FnOnce(&mut ParkedCall),
    ) {
        let mut table = self.lock();
        let call = table
            .by_key
            .get_mut(key)
            .filter(|open| open.run_id == run_id)
            .and_then(|open| open.parked.get_mut(id));
        if let Some(call) = call {
            change(call);
        }
    }

    /// Counts finished spans, activity `seen` then, into the run under
    /// `key` and queues them. Returns them back when that run is not open
    /// (it ended meanwhile).
    pub(crate) fn record_spans(
        &self,
        key: &str,
        spans: SpanRecords,
        seen: Instant,
        exporter: &Exporter,
    ) -> Result<(), SpanRecords> {
        let mut table = self.lock();
        let open = table
            .by_key
            .get_mut(key)
            .filter(|open| open.run_id == spans.run_id());
        let Some(open) = open else {
            return Err(spans);
        };
        record(open, spans, seen, exporter, self.store.as_ref());
        Ok(())
    }

    /// Counts finished spans, activity `seen` then, into the open run with
    /// this id, whatever its key, and queues them. Returns them back when
    /// no such run is open here, saying whether it ended here (its `end`
    /// is queued: spans after it go nowhere) or is another process's.
    pub(crate) fn record_spans_in_run(
        &self,
        spans: SpanRecords,
        seen: Instant,
        exporter: &Exporter,
    ) -> Result<(), NotOpenHere> {
        let mut table = self.lock();
        let run_id = spans.run_id();
        let Some(open) = table.get_run(run_id) else {
            return Err(if table.ended_set.contains(&run_id) {
                NotOpenHere::Ended(spans)
            } else {
                NotOpenHere::Elsewhere(spans)
            });
        };
        record(open, spans, seen, exporter, self.store.as_ref());
        Ok(())
    }

    /// Counts spans of a run this process does not hold into the session
    /// store's aggregates of the run (if the store holds it).
    pub(crate) fn record_elsewhere(&self, spans: &SpanRecords) {
        let (Some(store), Some(last_ended_at)) = (&self.store, spans.last_ended_at()) else {
            return;
        };
        store.record(spans.run_id(), spans.totals().into(), last_ended_at);
    }

    /// Ends the run under `key` now. Returns `false` when it was not open
    /// here; with a session store, the store's run of the key (another
    /// worker's) is ended then, if it has one.
    pub(crate) fn close(&self, key: &str, via: ClosedVia, exporter: &Exporter) -> bool {
        let open = self.lock().remove(key);
        self.close_removed(open, key, via, Timestamp::now(), exporter)
    }

    /// Ends run `run_id` under `key`, if it is still the one open there,
    /// as closed `via` an answer seen `at` (see [`close`](Self::close)).
    pub(crate) fn close_at(
        &self,
        key: &str,
        run_id: Uuid,
        via: ClosedVia,
        at: Timestamp,
        exporter: &Exporter,
    ) -> bool {
        let open = {
            let mut table = self.lock();
            let still_open = table.by_key.get(key).is_some_and(|o| o.run_id == run_id);
            still_open.then(|| table.remove(key)).flatten()
        };
        self.close_removed(open, key, via, at, exporter)
    }

    fn close_removed(
        &self,
        open: Option<OpenRun>,
        key: &str,
        via: ClosedVia,
        at: Timestamp,
        exporter: &Exporter,
    ) -> bool {
        match (open, &self.store) {
            (Some(open), _) => {
                self.retire(open, at, via.into(), None, exporter);
                true
            }
            (None, Some(store)) => {
                store.end_key(key, via);
                false
            }
            (None, None) => false,
        }
    }

    /// Ends the open run with this id now (`end_run`).
    pub(crate) fn close_run(&self, run_id: Uuid, ending: Ending, exporter: &Exporter) -> CloseRun {
        let mut table = self.lock();
        if table.ended_set.contains(&run_id) {
            return CloseRun::AlreadyEnded;
        }
        let open = table.remove_run(run_id);
        if open.is_none() && self.store.is_none() {
            // Its end goes from here (`CloseRun::Unknown`): once.
            table.remember_end(run_id);
        }
        drop(table);
        match (open, &self.store) {
            (Some(open), _) => {
                self.retire(open, Timestamp::now(), ending, None, exporter);
                CloseRun::Closed
            }
            (None, Some(store)) => {
                // Another worker's run, perhaps: the store's claim decides.
                let op = EndOp {
                    run_id,
                    ending,
                    at: Timestamp::now(),
                    idle_before: None,
                    local: Default::default(),
                    local_in_store: true,
                };
                store.end(op, exporter);
                CloseRun::Closed
            }
            (None, None) => CloseRun::Unknown,
        }
    }

    /// Ends every sweepable run idle for at least `idle_timeout` at `now`,
    /// with `ended_at` = its last activity. Returns how many left the table.
    ///
    /// With a session store, an idle run here may be active on another
    /// worker: it leaves the table and the store's claim ends it only if the
    /// store saw no activity either (else the store's sweep ends it later).
    /// A run with a request being answered here is marked active in the
    /// store, so that no worker's store sweep ends it meanwhile.
    pub(crate) fn sweep_idle(
        &self,
        now: Instant,
        idle_timeout: Duration,
        exporter: &Exporter,
    ) -> usize {
        let mut table = self.lock();
        let answering_at = Timestamp::now();
        let mut expired: Vec<Arc<str>> = Vec::new();
        for (key, open) in &mut table.by_key {
            match open.idleness_at(now, idle_timeout) {
                Idleness::Idle => expired.push(key.clone()),
                Idleness::Answering => {
                    // The store's sweep (any worker's) sees only the store's
                    // activity: tell it the run is active.
                    if let Some(store) = self.store.as_ref().filter(|_| open.shared) {
                        store.record(open.run_id, Default::default(), answering_at);
                    }
                }
                Idleness::IdleUnswept => ask_store_about(self.store.as_ref(), key, open),
                Idleness::Active => {}
            }
        }
        // Queue while holding the lock: no span of these runs can slip in between.
        for key in &expired {
            if self.store.is_some() {
                if let Some(open) = table.evict(key) {
                    self.retire_idle(open, idle_timeout, exporter);
                }
            } else if let Some(open) = table.remove(key) {
                let at = open.last_activity;
                end(open, at, ClosedVia::IdleTimeout.into(), exporter);
            }
        }
        expired.len()
    }

    /// Ends every open run (graceful shutdown). Returns how many it ended.
    pub(crate) fn close_all(&self, via: ClosedVia, exporter: &Exporter) -> usize {
        let mut table = self.lock();
        let keys: Vec<Arc<str>> = table.by_key.keys().cloned().collect();
        let now = Timestamp::now();
        for key in &keys {
            if let Some(open) = table.remove(key) {
                end(open, now, via.into(), exporter);
            }
        }
        keys.len()
    }

    /// Graceful shutdown with a session store: runs other workers may
    /// continue (sessions and resolved keys the store holds) leave the table
    /// for the store's idle sweep, their `start` sent; the others (runs of
    /// `start_run`, runs the store does not hold) end through the store's
    /// claim. Returns how many were left to the store, and how many ended.
    pub(crate) fn release_all(&self, exporter: &Exporter) -> (usize, usize) {
        let mut table = self.lock();
        let keys: Vec<Arc<str>> = table.by_key.keys().cloned().collect();
        let (mut left, mut ended) = (0, 0);
        for key in &keys {
            let Some(mut open) = table.evict(key) else {
                continue;
            };
            if open.shared && open.sweepable {
                open.send_pending_start(exporter);
                left += 1;
            } else {
                table.remember_end(open.run_id);
                let ending = ClosedVia::ServerShutdown.into();
                self.retire(open, Timestamp::now(), ending, None, exporter);
                ended += 1;
            }
        }
        (left, ended)
    }

    /// Sends the `end` of a run whose end claim this process won in the
    /// session store, after its `start` if this process still holds that.
    pub(crate) fn finish_claimed(
        &self,
        run_id: Uuid,
        at: Timestamp,
        ending: Ending,
        totals: Totals,
        exporter: &Exporter,
    ) {
        let mut table = self.lock();
        if let Some(mut open) = table.remove_run(run_id) {
            open.send_pending_start(exporter);
        } else {
            table.remember_end(run_id);
            // The run a request of its key still settling here asked the
            // store for: never started, so no end either (the request
            // finds it ended, and opens a new one).
            let asked = |asking: &Asking| asking.run_id == run_id && !asking.left;
            if table.resolving.values().any(asked) {
                return;
            }
        }
        send_end(run_id, at, ending, totals, exporter);
    }

    /// Remembers that this process sent the end of a run it no longer
    /// holds, without the store's claim (it could not say): a request
    /// still settling into the run opens a new one instead.
    pub(crate) fn ended_here(&self, run_id: Uuid) {
        let mut table = self.lock();
        if !table.by_run.contains_key(&run_id) {
            table.remember_end(run_id);
        }
    }

    /// Asks the session store about a run it says is not open (a record
    /// it refused), if this process holds the run: see [`ask_store_about`].
    pub(crate) fn ask_store_about(&self, run_id: Uuid) {
        let table = self.lock();
        let Some(key) = table.by_run.get(&run_id).cloned() else {
            return;
        };
        if let Some(open) = table.by_key.get(&key) {
            ask_store_about(self.store.as_ref(), &key, open);
        }
    }

    /// Forgets a run the store says another worker ended (its `end` is
    /// out): later spans of it here are dropped, and no second `end` goes.
    pub(crate) fn ended_elsewhere(&self, run_id: Uuid, exporter: &Exporter) {
        let mut table = self.lock();
        if let Some(mut open) = table.remove_run(run_id) {
            open.send_pending_start(exporter);
            tracing::debug!(%run_id, "trodo: run ended by another worker, forgotten here");
        }
    }

    /// A run whose key the store gives to another run now: ended
    /// elsewhere, or lost by the store and its key taken since. It leaves
    /// the table through the store's claim, which sends nothing if the run
    /// ended, and this process's end (with its totals) if the store does not
    /// know it.
    pub(crate) fn replaced_in_store(&self, run_id: Uuid, exporter: &Exporter) {
        let open = self.lock().remove_run(run_id);
        if let Some(open) = open {
            let at = open.last_activity;
            self.retire(open, at, ClosedVia::IdleTimeout.into(), None, exporter);
        }
    }

    /// Whether this process holds the run.
    pub(crate) fn holds(&self, run_id: Uuid) -> bool {
        self.lock().by_run.contains_key(&run_id)
    }

    /// A run the store had lost (a Redis restarted without persistence,
    /// or its entry expired) and now holds again: it is given this
    /// process's totals once more, so that any worker's end carries them.
    pub(crate) fn restored_in_store(&self, run_id: Uuid) {
        let Some(store) = &self.store else { return };
        if let Some(open) = self.lock().get_run(run_id) {
            store.record(run_id, open.totals.into(), open.last_activity);
        }
    }

    /// How many times the table was locked.
    #[cfg(test)]
    pub(crate) fn locks(&self) -> usize {
        self.locks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many runs are open.
    pub(crate) fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// Ends a run that left the table: through the session store's end
    /// claim when there is a store, else here and now.
    fn retire(
        &self,
        mut open: OpenRun,
        at: Timestamp,
        ending: Ending,
        idle_before: Option<SystemTime>,
        exporter: &Exporter,
    ) {
        let Some(store) = &self.store else {
            return end(open, at, ending, exporter);
        };
        open.send_pending_start(exporter);
        let op = EndOp {
            run_id: open.run_id,
            ending,
            at: open.ended_at(at),
            idle_before,
            local: open.totals.into(),
            local_in_store: open.shared,
        };
        store.end(op, exporter);
    }

    /// Ends a run idle here through the store's claim: only if the store
    /// saw no activity for `idle_timeout` either.
    fn retire_idle(&self, open: OpenRun, idle_timeout: Duration, exporter: &Exporter) {
        let at = open.last_activity;
        let idle_before = SystemTime::now() - idle_timeout;
        let ending = ClosedVia::IdleTimeout.into();
        self.retire(open, at, ending, Some(idle_before), exporter);
    }
}

/// Marks a run as held by the session store, if it was not, and sends the
/// store what this process counted before.
fn share(open: &mut OpenRun, store: Option<&StoreQueue>) {
    let Some(store) = store.filter(|_| !open.shared) else {
        return;
    };
    open.shared = true;
    store.record(open.run_id, open.totals.into(), open.last_activity);
}

/// Asks the session store whether another worker ended a run this process
/// holds, by opening it again: a run claimed before is not opened again
/// (then this process forgets it), a run the store lost is held again,
/// one it holds is renewed.
fn ask_store_about(store: Option<&StoreQueue>, key: &str, open: &OpenRun) {
    if let Some(store) = store {
        let run = NewRun::new(key, open.run_id, open.last_activity.0);
        store.ask_if_ended(run.sweepable(open.sweepable));
    }
}

/// Counts spans into an open run and queues them, after its `start` if
/// that still waits; a run the session store holds sends the store its share.
/// They are activity `seen` then (when they ended, not when they are read).
fn record(
    open: &mut OpenRun,
    spans: SpanRecords,
    seen: Instant,
    exporter: &Exporter,
    store: Option<&StoreQueue>,
) {
    open.send_pending_start(exporter);
    let Some(last_ended_at) = spans.last_ended_at() else {
        return;
    };
    open.last_seen = open.last_seen.max(seen);
    open.last_activity = open.last_activity.max(last_ended_at);
    open.last_span_end = open.last_span_end.max(Some(last_ended_at));
    open.totals.add_totals(&spans.totals());
    if let Some(store) = store.filter(|_| open.shared) {
        store.record(open.run_id, spans.totals().into(), open.last_activity);
    }
    exporter.send_spans(spans);
}

/// Queues the `start` if it is still pending, then the spans of its parked
/// calls, then the `end` with the run's totals, ended `at` or at its last
/// span's end if later.
fn end(mut open: OpenRun, at: Timestamp, ending: Ending, exporter: &Exporter) {
    open.send_pending_start(exporter);
    settle(&mut open, exporter);
    let at = open.ended_at(at);
    send_end(open.run_id, at, ending, open.totals, exporter);
}

/// Records the parked calls of a run that ends as their streams left
/// them, counted in its totals, before its `end` (only a run without a
/// session store parks calls: see [`Sessions::park`]).
fn settle(open: &mut OpenRun, exporter: &Exporter) {
    let calls = open.parked.take_all();
    // The run leaves the table: no activity to note.
    let seen = open.last_seen;
    record_failed_calls(open, calls, seen, exporter);
}

/// Records `calls` taken out of `open` as their streams left them, as
/// activity `seen` then, under the table's lock (a call's input was
/// redacted as it was parked, and it has no output, so no hook runs here).
fn record_failed_calls(
    open: &mut OpenRun,
    calls: Vec<ParkedCall>,
    seen: Instant,
    exporter: &Exporter,
) {
    if calls.is_empty() {
        return;
    }
    let spans = calls
        .into_iter()
        .flat_map(ParkedCall::into_failed_spans)
        .collect();
    let records = SpanRecords::new(open.run_id, spans);
    record(open, records, seen, exporter, None);
}

/// Queues the `end` of a run.
pub(crate) fn send_end(
    run_id: Uuid,
    at: Timestamp,
    ending: Ending,
    totals: Totals,
    exporter: &Exporter,
) {
    exporter.send(IngestCall::End {
        run_id,
        end: Box::new(End {
            ended_at: at,
            status: ending.status,
            output: ending.output,
            error_summary: ending.error_summary,
            metadata: ending.metadata,
            totals,
        }),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{ConsoleSink, DeliveryOptions, Sink};

    fn start(run_id: Uuid) -> Run {
        Run::new(run_id, "test".to_owned(), Timestamp::now())
    }

    fn settle(sessions: &Sessions, key: &str, resolved: Resolved) -> RunFor {
        sessions.settle(key, resolved, Moment::now(), start)
    }

    /// The store's claim of `run_id` won by this process.
    fn claimed_in_store(sessions: &Sessions, run_id: Uuid, exporter: &Exporter) {
        let ending = ClosedVia::SessionDeleted.into();
        sessions.finish_claimed(
            run_id,
            Timestamp::now(),
            ending,
            Totals::default(),
            exporter,
        );
    }

    /// An exporter whose worker never runs: what it is given stays queued.
    fn exporter() -> (Exporter, crate::export::Worker) {
        Exporter::new(Sink::Console(ConsoleSink), DeliveryOptions::default())
    }

    #[test]
    fn first_requests_of_a_key_resolve_with_one_run_id() {
        let sessions = Sessions::new(None);
        let key: Arc<str> = " client:agent".into();
        let asked = sessions.run_id_to_resolve(&key);
        assert_eq!(sessions.run_id_to_resolve(&key), asked);
        let run = settle(&sessions, &key, Resolved::Local(asked));
        assert_eq!((run.run_id, run.opened), (asked, true));
    }

    #[test]
    fn a_run_found_in_the_store_that_ended_here_is_not_joined_again() {
        let (exporter, _worker) = exporter();
        let sessions = Sessions::new(None);
        let key: Arc<str> = " client:agent".into();
        let run_id = Uuid::new_v4();
        drop(settle(&sessions, &key, Resolved::Local(run_id)));
        assert!(sessions.close(&key, ClosedVia::SessionDeleted, &exporter));
        let again = settle(&sessions, &key, Resolved::Found(run_id));
        assert!(again.opened);
        assert_ne!(again.run_id, run_id);
    }

    #[test]
    fn a_run_asked_for_and_settled_by_another_request_as_found_is_started_here() {
        let sessions = Sessions::new(None);
        let key: Arc<str> = " session:s".into();
        let asked = sessions.run_id_to_resolve(&key);
        let found = settle(&sessions, &key, Resolved::Found(asked));
        assert!(!found.opened);
        let local = settle(&sessions, &key, Resolved::Local(asked));
        assert_eq!((local.run_id, local.opened), (asked, true));
    }

    #[test]
    fn the_store_claim_of_a_run_still_being_asked_for_sends_no_end() {
        let (exporter, _worker) = exporter();
        let sessions = Sessions::new(None);
        let key: Arc<str> = " session:s".into();
        let asked = sessions.run_id_to_resolve(&key);
        claimed_in_store(&sessions, asked, &exporter);
        assert_eq!(exporter.counters().queued_items, 0, "no end");
        let settled = settle(&sessions, &key, Resolved::Opened(asked));
        assert_ne!(settled.run_id, asked, "ended: a new run");
        // Once nobody asks with it, a claimed run's end goes as before.
        sessions.forget_resolving(&key, asked);
        let other = Uuid::new_v4();
        claimed_in_store(&sessions, other, &exporter);
        assert_eq!(exporter.counters().queued_items, 1, "its end");
    }

    #[test]
    fn a_run_started_here_and_gone_while_still_asked_for_ends_and_is_not_started_again() {
        let (exporter, _worker) = exporter();
        let sessions = Sessions::new(None);
        let key: Arc<str> = " session:s".into();
        let asked = sessions.run_id_to_resolve(&key);
        assert_eq!(sessions.run_id_to_resolve(&key), asked);
        assert!(settle(&sessions, &key, Resolved::Local(asked)).opened);
        // Idle here (another worker may go on with it), the second
        // request still asking: the store's answer joins it, unstarted.
        assert!(sessions.lock().evict(&key).is_some());
        let joined = settle(&sessions, &key, Resolved::Opened(asked));
        assert_eq!((joined.run_id, joined.opened), (asked, false));
        let again = settle(&sessions, &key, Resolved::Opened(asked));
        assert_eq!((again.run_id, again.opened), (asked, false));
        // Gone again, and a local answer: a new run.
        assert!(sessions.lock().evict(&key).is_some());
        assert_ne!(
            settle(&sessions, &key, Resolved::Local(asked)).run_id,
            asked
        );
        // The store's claim of the run that went out ends it.
        claimed_in_store(&sessions, asked, &exporter);
        assert_eq!(exporter.counters().queued_items, 1, "its end");
    }

    #[test]
    fn an_end_is_remembered_once() {
        let sessions = Sessions::new(None);
        let run_id = Uuid::new_v4();
        sessions.ended_here(run_id);
        sessions.ended_here(run_id);
        assert_eq!(sessions.lock().ended.len(), 1);
    }

    #[test]
    fn requests_ask_with_the_id_of_a_run_that_became_known_unless_another_workers() {
        let sessions = Sessions::new(None);
        let (own, theirs): (Arc<str>, Arc<str>) = (" a:own".into(), " a:theirs".into());
        let mine = Uuid::new_v4();
        drop(settle(&sessions, &own, Resolved::Local(mine)));
        assert_eq!(sessions.run_id_to_resolve(&own), mine);
        let adopted = Uuid::new_v4();
        drop(settle(&sessions, &theirs, Resolved::Found(adopted)));
        assert_ne!(sessions.run_id_to_resolve(&theirs), adopted);
    }

    #[test]
    fn the_id_is_kept_while_any_request_still_asks_with_it() {
        let sessions = Sessions::new(None);
        let key: Arc<str> = " client:agent".into();
        let asked = sessions.run_id_to_resolve(&key);
        assert_eq!(sessions.run_id_to_resolve(&key), asked);
        sessions.forget_resolving(&key, asked);
        assert_eq!(sessions.run_id_to_resolve(&key), asked, "one still asks");
        sessions.forget_resolving(&key, asked);
        sessions.forget_resolving(&key, asked);
        assert_ne!(sessions.run_id_to_resolve(&key), asked);
    }

    #[test]
    fn a_run_that_ended_while_another_request_resolved_it_is_not_opened_again() {
        let (exporter, _worker) = exporter();
        let sessions = Sessions::new(None);
        let key: Arc<str> = " client:agent".into();
        let asked = sessions.run_id_to_resolve(&key);
        let first = settle(&sessions, &key, Resolved::Local(asked));
        drop(first);
        assert!(sessions.close(&key, ClosedVia::SessionDeleted, &exporter));
        // The second request of the key settles after the run ended.
        let second = settle(&sessions, &key, Resolved::Local(asked));
        assert!(second.opened);
        assert_ne!(second.run_id, asked, "a new run, not the ended one again");
    }
}
