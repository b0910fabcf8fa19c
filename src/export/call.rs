//! One call of the ingest API as the request path hands it over.

use uuid::Uuid;

use crate::wire::{End, FeedbackBody, Run, Span};

/// A call of the ingest API, see `WIRE.md`. The exporter splits it into
/// records (one per span of a spans call) and joins the waiting spans of
/// one run again when it sends them.
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
    /// `POST /api/sdk/runs/{run_id}/feedback` with the feedback record.
    Feedback {
        run_id: Uuid,
        feedback: Box<FeedbackBody>,
    },
}
