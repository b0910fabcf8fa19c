//! The in-memory run table: run key (session id or resolved key) -> its open run.
//!
//! Every rule of a run's life is applied here, under one lock, so that it
//! holds however requests interleave: the run's `start` is queued before any
//! of its spans, every span counts into the run's totals, and the run is
//! removed (and its `end` queued) exactly once, by whichever of DELETE, 404,
//! the idle sweep, `end_run` or shutdown comes first. Queueing never waits,
//! so the lock is held only for a few map operations.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::ClosedVia;
use crate::export::{Exporter, IngestCall};
use crate::wire::{End, Run, RunStatus, Span, Timestamp, Totals};

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
    totals: Totals,
    /// Whether the idle sweep may end it (runs of `start_run` end by `end_run`).
    sweepable: bool,
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

#[derive(Debug, Default)]
struct Table {
    by_key: HashMap<Box<str>, OpenRun>,
    /// The key of every open run, by run id.
    by_run: HashMap<Uuid, Box<str>>,
    /// The latest runs ended here, oldest first.
    ended: VecDeque<Uuid>,
    ended_set: HashSet<Uuid>,
}

impl Table {
    fn insert(&mut self, key: &str, open: OpenRun) {
        self.by_run.insert(open.run_id, key.into());
        self.by_key.insert(key.into(), open);
    }

    fn remove(&mut self, key: &str) -> Option<OpenRun> {
        let open = self.by_key.remove(key)?;
        self.by_run.remove(&open.run_id);
        if self.ended.len() == REMEMBERED_ENDS
            && let Some(oldest) = self.ended.pop_front()
        {
            self.ended_set.remove(&oldest);
        }
        self.ended.push_back(open.run_id);
        self.ended_set.insert(open.run_id);
        Some(open)
    }
}

/// What [`Sessions::close_run`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseRun {
    /// The run was open here; its end is queued.
    Closed,
    /// The run already ended here; nothing is sent.
    AlreadyEnded,
    /// The run is not known here (another process's).
    Unknown,
}

/// The open runs of this process.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    table: Mutex<Table>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every change is a few inserts/removes that keep the table
        // consistent, so a panic elsewhere while holding it is no reason to stop.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens the run of a new session; its `start` waits for
    /// [`complete_start`](Self::complete_start) (or the first span / the end).
    /// Replaces nothing: a key already open keeps its run. Returns the run id.
    pub(crate) fn open_pending(&self, key: &str, run: Run) -> Uuid {
        self.run_for(key, || run).0
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
        let open = OpenRun {
            run_id: run.run_id,
            pending_start: None,
            last_activity: run.started_at,
            last_seen: Instant::now(),
            totals: Totals::default(),
            sweepable,
        };
        table.insert(key, open);
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

    /// The run of a known key, marked active; or, for a key this process
    /// does not know, a new run made by `open`, whose `start` waits like
    /// [`open_pending`](Self::open_pending)'s. Returns the run id and whether
    /// it was opened now.
    pub(crate) fn run_for(&self, key: &str, open: impl FnOnce() -> Run) -> (Uuid, bool) {
        let now = Instant::now();
        let mut table = self.lock();
        if let Some(known) = table.by_key.get_mut(key) {
            known.last_seen = now;
            known.last_activity = Timestamp::now();
            return (known.run_id, false);
        }
        let run = open();
        let run_id = run.run_id;
        let open = OpenRun {
            run_id,
            last_activity: run.started_at,
            last_seen: now,
            pending_start: Some(Box::new(run)),
            totals: Totals::default(),
            sweepable: true,
        };
        table.insert(key, open);
        (run_id, true)
    }

    /// The run id of an open run.
    pub(crate) fn run_id(&self, key: &str) -> Option<Uuid> {
        self.lock().by_key.get(key).map(|open| open.run_id)
    }

    /// Whether the key has an open run.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.lock().by_key.contains_key(key)
    }

    /// Marks a run active (a notification, a client response).
    pub(crate) fn touch(&self, key: &str) {
        if let Some(open) = self.lock().by_key.get_mut(key) {
            open.last_seen = Instant::now();
            open.last_activity = Timestamp::now();
        }
    }

    /// Counts finished spans into the run under `key` and queues them.
    /// Returns them back when the run is not open (it ended meanwhile).
    pub(crate) fn record_spans(
        &self,
        key: &str,
        spans: Vec<Span>,
        exporter: &Exporter,
    ) -> Result<(), Vec<Span>> {
        let mut table = self.lock();
        let open = table
            .by_key
            .get_mut(key)
            .filter(|open| spans.iter().all(|s| s.run_id == open.run_id));
        let Some(open) = open else {
            return Err(spans);
        };
        record(open, spans, exporter);
        Ok(())
    }

    /// Counts finished spans into the open run with this id, whatever its
    /// key, and queues them. Returns them back when no such run is open here.
    pub(crate) fn record_spans_in_run(
        &self,
        run_id: Uuid,
        spans: Vec<Span>,
        exporter: &Exporter,
    ) -> Result<(), Vec<Span>> {
        let mut table = self.lock();
        let Table { by_key, by_run, .. } = &mut *table;
        let Some(open) = by_run.get(&run_id).and_then(|key| by_key.get_mut(key)) else {
            return Err(spans);
        };
        record(open, spans, exporter);
        Ok(())
    }

    /// Ends the run under `key` now. Returns `false` when it was not open.
    pub(crate) fn close(&self, key: &str, via: ClosedVia, exporter: &Exporter) -> bool {
        let open = self.lock().remove(key);
        open.map(|open| end(open, Timestamp::now(), via.into(), exporter))
            .is_some()
    }

    /// Ends the open run with this id now (`end_run`).
    pub(crate) fn close_run(&self, run_id: Uuid, ending: Ending, exporter: &Exporter) -> CloseRun {
        let mut table = self.lock();
        if table.ended_set.contains(&run_id) {
            return CloseRun::AlreadyEnded;
        }
        let Some(key) = table.by_run.get(&run_id).cloned() else {
            return CloseRun::Unknown;
        };
        match table.remove(&key) {
            Some(open) => {
                end(open, Timestamp::now(), ending, exporter);
                CloseRun::Closed
            }
            None => CloseRun::Unknown,
        }
    }

    /// Ends every sweepable run idle for at least `idle_timeout` at `now`,
    /// with `ended_at` = its last activity. Returns how many it ended.
    pub(crate) fn sweep_idle(
        &self,
        now: Instant,
        idle_timeout: Duration,
        exporter: &Exporter,
    ) -> usize {
        let mut table = self.lock();
        let expired: Vec<Box<str>> = table
            .by_key
            .iter()
            .filter(|(_, open)| {
                open.sweepable && now.saturating_duration_since(open.last_seen) >= idle_timeout
            })
            .map(|(key, _)| key.clone())
            .collect();
        // Queue while holding the lock: no span of these runs can slip in between.
        for key in &expired {
            if let Some(open) = table.remove(key) {
                let at = open.last_activity;
                end(open, at, ClosedVia::IdleTimeout.into(), exporter);
            }
        }
        expired.len()
    }

    /// Ends every open run (graceful shutdown). Returns how many it ended.
    pub(crate) fn close_all(&self, via: ClosedVia, exporter: &Exporter) -> usize {
        let mut table = self.lock();
        let keys: Vec<Box<str>> = table.by_key.keys().cloned().collect();
        let now = Timestamp::now();
        for key in &keys {
            if let Some(open) = table.remove(key) {
                end(open, now, via.into(), exporter);
            }
        }
        keys.len()
    }

    /// How many runs are open.
    pub(crate) fn len(&self) -> usize {
        self.lock().by_key.len()
    }
}

/// Counts spans into an open run and queues them, after its `start` if that still waits.
fn record(open: &mut OpenRun, spans: Vec<Span>, exporter: &Exporter) {
    if let Some(run) = open.pending_start.take() {
        exporter.send(IngestCall::Start(run));
    }
    let Some(last) = spans.last() else { return };
    open.last_seen = Instant::now();
    open.last_activity = open.last_activity.max(last.ended_at);
    for span in &spans {
        open.totals.add(span);
    }
    exporter.send(IngestCall::Spans {
        run_id: open.run_id,
        spans,
    });
}

/// Queues the `start` if it is still pending, then the `end` with the run's totals.
fn end(open: OpenRun, at: Timestamp, ending: Ending, exporter: &Exporter) {
    if let Some(run) = open.pending_start {
        exporter.send(IngestCall::Start(run));
    }
    send_end(open.run_id, at, ending, open.totals, exporter);
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
