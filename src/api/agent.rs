//! [`AgentRun`]: the handle of a run sent whole by [`Trodo::wrap_agent`](crate::Trodo::wrap_agent).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use uuid::Uuid;

use super::options::StartRun;
use super::span::{SpanGuard, SpanSink};
use crate::capture_policy::Side;
use crate::export::IngestCall;
use crate::span_kind::SpanKind;
use crate::state::Shared;
use crate::wire::{MAX_ERROR_CHARS, Run, RunStatus, Span, Timestamp, Totals};

/// The run of [`Trodo::wrap_agent`](crate::Trodo::wrap_agent): make its spans here.
#[derive(Clone)]
pub struct AgentRun {
    shared: Arc<Shared>,
    run_id: Uuid,
    spans: Arc<RunSpans>,
}

/// The spans of a run sent whole: kept until the run is sent; a span that
/// finishes later is refused (its run's totals are out already).
#[derive(Debug)]
pub(crate) struct RunSpans(Mutex<Option<Vec<Span>>>);

impl RunSpans {
    /// An empty list, taking spans.
    pub(crate) fn new() -> Self {
        Self(Mutex::new(Some(Vec::new())))
    }

    /// Keeps `span` for the run; `false` if the run was sent already.
    pub(crate) fn push(&self, span: Span) -> bool {
        let mut spans = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        spans.as_mut().map(|spans| spans.push(span)).is_some()
    }

    /// The spans kept so far, for sending the run; later ones are refused.
    pub(crate) fn take(&self) -> Vec<Span> {
        let mut spans = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        spans.take().unwrap_or_default()
    }
}

impl std::fmt::Debug for AgentRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRun")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

impl AgentRun {
    pub(crate) fn new(shared: Arc<Shared>, run_id: Uuid, spans: Arc<RunSpans>) -> Self {
        Self {
            shared,
            run_id,
            spans,
        }
    }

    /// The run's id.
    #[must_use]
    pub fn run_id(&self) -> Uuid {
        self.run_id
    }

    /// A span of this run. It must finish before the agent's future
    /// completes: one that finishes after the run was sent is dropped, and
    /// counted in
    /// [`DeliveryCounters::dropped_after_run_end`](crate::DeliveryCounters::dropped_after_run_end).
    /// Should the agent's future be dropped or panic, the spans it holds
    /// finish as it goes (see [`SpanGuard`] for their status) and are sent
    /// with the failed run.
    pub fn span(&self, kind: SpanKind, name: impl Into<String>) -> SpanGuard {
        let sink = SpanSink::Collect(Arc::clone(&self.spans));
        SpanGuard::new(
            Arc::clone(&self.shared),
            sink,
            self.run_id,
            None,
            kind,
            name.into(),
        )
    }
}

/// A [`Trodo::wrap_agent`](crate::Trodo::wrap_agent) run under way, made
/// before the agent runs. It sends the run whole, with the spans finished
/// so far, in one `runs/ingest` call, exactly once: on
/// [`finish`](Self::finish) with the agent's result, or, dropped without
/// one (the agent's future was dropped before it completed, or panicked),
/// as a failed run whose `error_summary` is `cancelled` or `panicked`.
pub(crate) struct WholeRun {
    shared: Arc<Shared>,
    /// Taken when the run is sent.
    run: Option<StartRun>,
    run_id: Uuid,
    spans: Arc<RunSpans>,
    started_at: Timestamp,
    started: Instant,
}

impl WholeRun {
    /// The run `run`, started now, and the handle its agent makes spans with.
    pub(crate) fn start(shared: Arc<Shared>, run: StartRun) -> (Self, AgentRun) {
        let run_id = run.run_id.unwrap_or_else(Uuid::new_v4);
        let spans = Arc::new(RunSpans::new());
        let handle = AgentRun::new(Arc::clone(&shared), run_id, Arc::clone(&spans));
        let whole = Self {
            shared,
            run: Some(run),
            run_id,
            spans,
            started_at: Timestamp::now(),
            started: Instant::now(),
        };
        (whole, handle)
    }

    /// Sends the run with the agent's result: an `Ok` value is its output,
    /// an `Err` makes it failed with the error as its `error_summary`.
    pub(crate) fn finish<T: serde::Serialize, E: std::fmt::Display>(
        mut self,
        result: &Result<T, E>,
    ) {
        match result {
            Ok(value) => {
                let output = serde_json::to_value(value)
                    .ok()
                    .and_then(|v| self.shared.settings.captured_value(Side::Output, v));
                self.send(RunStatus::Ok, output, None);
            }
            Err(error) => {
                let summary =
                    (self.shared.settings).given_error_text(&error.to_string(), MAX_ERROR_CHARS);
                self.send(RunStatus::Error, None, Some(summary));
            }
        }
    }

    /// Sends the run with its spans finished so far (later ones are
    /// refused), unless it was sent already. `error_summary` is sent as it
    /// is: the agent's error has been through the capture policy, the
    /// layer's own words need not.
    fn send(&mut self, status: RunStatus, output: Option<String>, error_summary: Option<String>) {
        let Some(run) = self.run.take() else {
            return;
        };
        let spans = self.spans.take();
        let record = Run {
            status,
            output,
            ended_at: Some(Timestamp::now()),
            duration_ms: Some(
                u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            ),
            error_summary,
            totals: Some(Totals::of(&spans)),
            ..run.into_run(self.run_id, self.started_at, &self.shared.settings)
        };
        self.shared.exporter.send(IngestCall::Ingest {
            run: Box::new(record),
            spans,
        });
    }
}

impl Drop for WholeRun {
    /// Sends a run its agent left without a result as failed: `panicked`
    /// while the thread unwinds from a panic, `cancelled` otherwise.
    fn drop(&mut self) {
        let summary = if std::thread::panicking() {
            "panicked"
        } else {
            "cancelled"
        };
        self.send(RunStatus::Error, None, Some(summary.to_owned()));
    }
}
