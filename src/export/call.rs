//! One call of the ingest API: its path and its JSON body.

use serde_json::json;
use uuid::Uuid;

use crate::wire::{End, Run, Span};

/// A call of the ingest API, see `WIRE.md`.
#[derive(Debug, Clone)]
pub(crate) enum IngestCall {
    /// `POST /api/sdk/runs/start` with `{"run": Run}`.
    Start(Box<Run>),
    /// `POST /api/sdk/runs/{run_id}/spans` with `{"spans": [...]}`.
    Spans { run_id: Uuid, spans: Vec<Span> },
    /// `POST /api/sdk/runs/{run_id}/end` with the end record.
    End { run_id: Uuid, end: Box<End> },
    /// `POST /api/sdk/runs/ingest` with a whole run and its spans in one call.
    Ingest { run: Box<Run>, spans: Vec<Span> },
}

impl IngestCall {
    /// The path below the API base.
    pub(crate) fn path(&self) -> String {
        // A UUID is a single path segment as it is: nothing to percent-encode.
        match self {
            Self::Start(_) => "/api/sdk/runs/start".to_owned(),
            Self::Spans { run_id, .. } => format!("/api/sdk/runs/{run_id}/spans"),
            Self::End { run_id, .. } => format!("/api/sdk/runs/{run_id}/end"),
            Self::Ingest { .. } => "/api/sdk/runs/ingest".to_owned(),
        }
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> serde_json::Value {
        match self {
            Self::Start(run) => json!({ "run": run }),
            Self::Spans { spans, .. } => json!({ "spans": spans }),
            Self::End { end, .. } => serde_json::to_value(end).unwrap_or_default(),
            Self::Ingest { run, spans } => json!({ "run": run, "spans": spans }),
        }
    }

    /// The run this call is about.
    pub(crate) fn run_id(&self) -> Uuid {
        match self {
            Self::Start(run) | Self::Ingest { run, .. } => run.run_id,
            Self::Spans { run_id, .. } | Self::End { run_id, .. } => *run_id,
        }
    }
}
