//! Finished spans of one run, made ready to queue before their run is
//! looked up.
//!
//! Recording a span takes the run table's lock (to find the run, count the
//! span into its totals and queue it after the run's `start`), and every
//! request takes that lock too. Serializing a span (escaping its input and
//! output) is most of the work of recording it, so it is done here, before
//! the lock: the lock is then held only to count and queue. Held while a
//! span was written, a request's thread waited for it whenever the
//! delivery thread, which writes most spans, was interrupted with the lock
//! held (`perf` counted the server's thread waiting in `Sessions::open_key`
//! and `Sessions::run_if_open`).

use uuid::Uuid;

use super::IngestCall;
use super::item::Encoded;
use crate::wire::{Span, Timestamp, Totals};

/// Finished spans of one run: their records, serialized (on a thread that
/// reads the backlog; see [`super::item::Payload::span`]), and what they
/// add to their run.
#[derive(Debug)]
pub(crate) struct SpanRecords {
    run_id: Uuid,
    totals: Totals,
    /// The latest end among them, `None` if there are none.
    last_ended_at: Option<Timestamp>,
    pub(super) records: Vec<Encoded>,
}

impl SpanRecords {
    /// The records of `spans`, all of run `run_id`.
    pub(crate) fn new(run_id: Uuid, spans: Vec<Span>) -> Self {
        debug_assert!(
            spans.iter().all(|span| span.run_id == run_id),
            "spans of another run"
        );
        Self {
            run_id,
            totals: Totals::of(&spans),
            last_ended_at: spans.iter().map(|span| span.ended_at).max(),
            records: Encoded::of(IngestCall::Spans { run_id, spans }),
        }
    }

    /// The run they belong to.
    pub(crate) fn run_id(&self) -> Uuid {
        self.run_id
    }

    /// What they add to their run's totals.
    pub(crate) fn totals(&self) -> Totals {
        self.totals
    }

    /// The latest of their ends (not the end of the last in the list: a
    /// request's span comes after children that may outlive it); `None` if
    /// there are none.
    pub(crate) fn last_ended_at(&self) -> Option<Timestamp> {
        self.last_ended_at
    }

    /// How many spans there are.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span_kind::SpanKind;
    use crate::wire::SpanStatus;
    use std::time::{Duration, SystemTime};

    fn span(run_id: Uuid, ended_secs: u64, status: SpanStatus, cost: f64) -> Span {
        let at = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(ended_secs));
        Span {
            status,
            ended_at: at,
            cost: Some(cost),
            ..Span::new(
                Uuid::new_v4(),
                run_id,
                SpanKind::Tool,
                "tool.add".into(),
                at,
            )
        }
    }

    #[test]
    fn the_records_totals_and_last_end_are_those_of_the_spans() {
        let run_id = Uuid::from_u128(7);
        let spans = vec![
            span(run_id, 10, SpanStatus::Ok, 0.25),
            span(run_id, 12, SpanStatus::Error, 0.5),
        ];
        let expected_totals = Totals::of(&spans);
        let ready = SpanRecords::new(run_id, spans);
        assert_eq!(ready.run_id(), run_id);
        assert_eq!(ready.len(), 2);
        assert_eq!(ready.totals(), expected_totals);
        assert_eq!(ready.totals().span_count, 2);
        assert_eq!(ready.totals().error_count, 1);
        assert_eq!(ready.totals().tool_count, 2);
        assert_eq!(ready.totals().total_cost, 0.75);
        assert_eq!(
            ready.last_ended_at(),
            Some(Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(12)))
        );
        assert!(ready.records.iter().all(|record| record.run_id == run_id));
    }

    #[test]
    fn the_last_end_is_the_latest_not_that_of_the_last_span() {
        let run_id = Uuid::from_u128(7);
        let spans = vec![
            span(run_id, 30, SpanStatus::Ok, 0.0),
            span(run_id, 20, SpanStatus::Ok, 0.0),
        ];
        assert_eq!(
            SpanRecords::new(run_id, spans).last_ended_at(),
            Some(Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(30)))
        );
    }

    #[test]
    fn no_spans_have_no_end_and_no_totals() {
        let ready = SpanRecords::new(Uuid::from_u128(7), Vec::new());
        assert_eq!(ready.len(), 0);
        assert_eq!(ready.last_ended_at(), None);
        assert_eq!(ready.totals(), Totals::default());
    }
}
