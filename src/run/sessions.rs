//! The in-memory session table: session id -> its open run.
//!
//! Every rule of a run's life is applied here, under one lock, so that it
//! holds however requests interleave: the run's `start` is queued before any
//! of its spans, every span counts into the run's totals, and the run is
//! removed (and its `end` queued) exactly once, by whichever of DELETE, 404,
//! the idle sweep or shutdown comes first. Queueing never waits, so the lock
//! is held only for a few map operations.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::ClosedVia;
use crate::export::{Exporter, IngestCall};
use crate::wire::{End, Run, RunStatus, Span, Timestamp, Totals};

/// One open run.
#[derive(Debug)]
struct OpenRun {
    run_id: Uuid,
    /// The `start` not yet queued: an initialize whose result has not been
    /// read yet, so that its metadata can still be completed.
    pending_start: Option<Box<Run>>,
    /// Wall-clock time of the last activity: the `ended_at` of an idle end.
    last_activity: Timestamp,
    /// Monotonic time of the last activity, for the idle sweep.
    last_seen: Instant,
    totals: Totals,
}

/// The open runs of this process, by session id.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    runs: Mutex<HashMap<Box<str>, OpenRun>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, OpenRun>> {
        // A panic elsewhere while holding the lock leaves the map consistent
        // (every change is a single insert/remove), so poisoning is ignored.
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens the run of a new session; its `start` waits for
    /// [`complete_start`](Self::complete_start) (or the first span / the end).
    /// Replaces nothing: an id already open keeps its run. Returns the run id.
    pub(crate) fn open_pending(&self, session_id: &str, run: Run) -> Uuid {
        let now = Instant::now();
        let mut runs = self.lock();
        let entry = runs.entry(session_id.into()).or_insert_with(|| OpenRun {
            run_id: run.run_id,
            last_activity: run.started_at,
            last_seen: now,
            pending_start: Some(Box::new(run)),
            totals: Totals::default(),
        });
        entry.run_id
    }

    /// Queues the pending `start` of a run after `complete` had its say on
    /// it (metadata learnt from the first response). Does nothing when the
    /// start was already queued.
    pub(crate) fn complete_start(
        &self,
        session_id: &str,
        run_id: Uuid,
        exporter: &Exporter,
        complete: impl FnOnce(&mut Run),
    ) {
        let mut runs = self.lock();
        if let Some(open) = runs.get_mut(session_id).filter(|o| o.run_id == run_id)
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
        let mut runs = self.lock();
        if let Some(known) = runs.get_mut(key) {
            known.last_seen = now;
            known.last_activity = Timestamp::now();
            return (known.run_id, false);
        }
        let run = open();
        let run_id = run.run_id;
        runs.insert(
            key.into(),
            OpenRun {
                run_id,
                last_activity: run.started_at,
                last_seen: now,
                pending_start: Some(Box::new(run)),
                totals: Totals::default(),
            },
        );
        (run_id, true)
    }

    /// The run id of an open run.
    pub(crate) fn run_id(&self, key: &str) -> Option<Uuid> {
        self.lock().get(key).map(|open| open.run_id)
    }

    /// Whether the session has an open run.
    pub(crate) fn contains(&self, session_id: &str) -> bool {
        self.lock().contains_key(session_id)
    }

    /// Marks a session active (a notification, a client response).
    pub(crate) fn touch(&self, session_id: &str) {
        if let Some(open) = self.lock().get_mut(session_id) {
            open.last_seen = Instant::now();
            open.last_activity = Timestamp::now();
        }
    }

    /// Counts a finished span into its run and queues it. Returns `false`
    /// (and queues nothing) when the run has ended meanwhile.
    pub(crate) fn record_span(&self, session_id: &str, span: Span, exporter: &Exporter) -> bool {
        let mut runs = self.lock();
        let Some(open) = runs.get_mut(session_id).filter(|o| o.run_id == span.run_id) else {
            return false;
        };
        if let Some(run) = open.pending_start.take() {
            exporter.send(IngestCall::Start(run));
        }
        open.totals.add(&span);
        open.last_seen = Instant::now();
        open.last_activity = span.ended_at;
        exporter.send(IngestCall::Spans {
            run_id: span.run_id,
            spans: vec![span],
        });
        true
    }

    /// Ends a session's run now. Returns `false` when it was not open.
    pub(crate) fn close(&self, session_id: &str, via: ClosedVia, exporter: &Exporter) -> bool {
        let open = self.lock().remove(session_id);
        match open {
            Some(open) => {
                end(open, Timestamp::now(), via, exporter);
                true
            }
            None => false,
        }
    }

    /// Ends every run idle for at least `idle_timeout` at `now`, with
    /// `ended_at` = its last activity. Returns how many it ended.
    pub(crate) fn sweep_idle(
        &self,
        now: Instant,
        idle_timeout: Duration,
        exporter: &Exporter,
    ) -> usize {
        let mut expired = Vec::new();
        {
            let mut runs = self.lock();
            runs.retain(|_, open| {
                let idle = now.saturating_duration_since(open.last_seen) >= idle_timeout;
                if idle {
                    expired.push(OpenRun {
                        run_id: open.run_id,
                        pending_start: open.pending_start.take(),
                        last_activity: open.last_activity,
                        last_seen: open.last_seen,
                        totals: open.totals,
                    });
                }
                !idle
            });
            // Queue while holding the lock: no span of these runs can slip in between.
            let count = expired.len();
            for open in expired {
                let at = open.last_activity;
                end(open, at, ClosedVia::IdleTimeout, exporter);
            }
            count
        }
    }

    /// Ends every open run (graceful shutdown). Returns how many it ended.
    pub(crate) fn close_all(&self, via: ClosedVia, exporter: &Exporter) -> usize {
        let mut runs = self.lock();
        let count = runs.len();
        let now = Timestamp::now();
        for (_, open) in runs.drain() {
            end(open, now, via, exporter);
        }
        count
    }

    /// How many runs are open.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Queues the `start` if it is still pending, then the `end` with the run's totals.
fn end(open: OpenRun, at: Timestamp, via: ClosedVia, exporter: &Exporter) {
    if let Some(run) = open.pending_start {
        exporter.send(IngestCall::Start(run));
    }
    exporter.send(IngestCall::End {
        run_id: open.run_id,
        end: Box::new(End {
            ended_at: at,
            status: RunStatus::Ok,
            output: None,
            error_summary: None,
            metadata: via.metadata(),
            totals: open.totals,
        }),
    });
}
