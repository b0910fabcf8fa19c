//! [`AgentRun`]: the handle of a run sent whole by [`Trodo::wrap_agent`](crate::Trodo::wrap_agent).

use serde_json::Value;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use uuid::Uuid;

use super::options::StartRun;
use super::span::{SpanGuard, SpanSink};
use crate::capture::truncate_chars;
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

/// Sends a finished `wrap_agent` run with its spans in one `runs/ingest` call.
pub(crate) fn send_whole<T: serde::Serialize, E: std::fmt::Display>(
    shared: &Shared,
    run: StartRun,
    run_id: Uuid,
    started_at: Timestamp,
    started: Instant,
    result: &Result<T, E>,
    spans: Vec<Span>,
) {
    let settings = &shared.settings;
    let totals = Totals::of(&spans);
    let (status, output, error_summary) = match result {
        Ok(value) => {
            let output = serde_json::to_value(value)
                .ok()
                .filter(|v| *v != Value::Null);
            let output = output.and_then(|v| settings.captured_value(Side::Output, v));
            (RunStatus::Ok, output, None)
        }
        Err(error) => {
            let summary = truncate_chars(&error.to_string(), MAX_ERROR_CHARS)
                .0
                .to_owned();
            (RunStatus::Error, None, Some(summary))
        }
    };
    let record = Run {
        status,
        output,
        ended_at: Some(Timestamp::now()),
        duration_ms: Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)),
        error_summary,
        totals: Some(totals),
        ..run.into_run(run_id, started_at, settings)
    };
    shared.exporter.send(IngestCall::Ingest {
        run: Box::new(record),
        spans,
    });
}
