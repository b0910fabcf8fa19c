//! A batch: the records of one run sent in one call, with their path and body.

use uuid::Uuid;

#[cfg(test)]
use super::item::Payload;
use super::item::{Item, ItemKind, Seq};
use super::retry::RetryState;

/// Records taken from the front of one run's queue for one call: a start,
/// an end or a one-shot run alone, or consecutive spans.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) run_id: Uuid,
    pub(crate) kind: ItemKind,
    /// Never empty, in queue order.
    pub(crate) items: Vec<Item>,
    /// The failures so far of this call (carried back to the run when it is
    /// tried again).
    pub(crate) retry: RetryState,
    /// Most spans the run may send in one call; halved on a 413.
    pub(crate) max_items: usize,
}

impl Batch {
    /// How many records it carries.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Bytes of its records, as the queue counts them.
    pub(crate) fn bytes(&self) -> usize {
        self.items.iter().map(Item::bytes).sum()
    }

    /// The place of its first record.
    pub(crate) fn first_seq(&self) -> Seq {
        self.items.first().map_or(0, |item| item.seq)
    }

    /// The path below the API base. A UUID is a single path segment as it
    /// is: nothing to percent-encode.
    pub(crate) fn path(&self) -> String {
        let run_id = self.run_id;
        match self.kind {
            ItemKind::Start => "/api/sdk/runs/start".to_owned(),
            ItemKind::Span => format!("/api/sdk/runs/{run_id}/spans"),
            ItemKind::End => format!("/api/sdk/runs/{run_id}/end"),
            ItemKind::Ingest => "/api/sdk/runs/ingest".to_owned(),
            ItemKind::Feedback => format!("/api/sdk/runs/{run_id}/feedback"),
        }
    }

    /// The JSON body, assembled from the records' JSON.
    pub(crate) fn body(&self) -> Vec<u8> {
        let (open, close): (&[u8], &[u8]) = match self.kind {
            ItemKind::Start => (b"{\"run\":", b"}"),
            ItemKind::Span => (b"{\"spans\":[", b"]}"),
            ItemKind::End | ItemKind::Ingest | ItemKind::Feedback => (b"", b""),
        };
        let mut body = Vec::with_capacity(open.len() + self.bytes() + self.len() + close.len());
        body.extend_from_slice(open);
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            item.payload.write_to(&mut body);
        }
        body.extend_from_slice(close);
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(kind: ItemKind, jsons: &[&str]) -> Batch {
        Batch {
            run_id: Uuid::nil(),
            kind,
            items: jsons
                .iter()
                .zip(0..)
                .map(|(json, seq)| Item {
                    seq,
                    run_id: Uuid::nil(),
                    kind,
                    payload: Payload::Json(json.as_bytes().into()),
                })
                .collect(),
            retry: RetryState::default(),
            max_items: 50,
        }
    }

    #[test]
    fn bodies_and_paths_follow_the_wire() {
        let start = batch(ItemKind::Start, &[r#"{"run_id":"x"}"#]);
        assert_eq!(start.path(), "/api/sdk/runs/start");
        assert_eq!(start.body(), br#"{"run":{"run_id":"x"}}"#);

        let spans = batch(ItemKind::Span, &[r#"{"a":1}"#, r#"{"b":2}"#]);
        assert_eq!(
            spans.path(),
            "/api/sdk/runs/00000000-0000-0000-0000-000000000000/spans"
        );
        assert_eq!(spans.body(), br#"{"spans":[{"a":1},{"b":2}]}"#);
        assert_eq!((spans.len(), spans.bytes()), (2, 14));

        let end = batch(ItemKind::End, &[r#"{"status":"ok"}"#]);
        assert_eq!(
            end.path(),
            "/api/sdk/runs/00000000-0000-0000-0000-000000000000/end"
        );
        assert_eq!(end.body(), br#"{"status":"ok"}"#);

        let one_shot = batch(ItemKind::Ingest, &[r#"{"run":{},"spans":[]}"#]);
        assert_eq!(one_shot.path(), "/api/sdk/runs/ingest");
        assert_eq!(one_shot.body(), br#"{"run":{},"spans":[]}"#);
    }

    #[test]
    fn spans_are_serialized_when_the_body_is_made() {
        use crate::span_kind::SpanKind;
        use crate::wire::{Span, Timestamp};

        let span = |name: &str| {
            let mut span = Span::new(
                Uuid::new_v4(),
                Uuid::nil(),
                SpanKind::Tool,
                name.to_owned(),
                Timestamp::now(),
            );
            span.input = Some(r#"{"say":"\"hi\""}"#.to_owned());
            span
        };
        let spans = [span("one"), span("two")];
        let batch = Batch {
            run_id: Uuid::nil(),
            kind: ItemKind::Span,
            items: spans
                .iter()
                .zip(0..)
                .map(|(span, seq)| Item {
                    seq,
                    run_id: Uuid::nil(),
                    kind: ItemKind::Span,
                    payload: Payload::span(span.clone()),
                })
                .collect(),
            retry: RetryState::default(),
            max_items: 50,
        };
        let body: serde_json::Value = serde_json::from_slice(&batch.body()).unwrap();
        let each: Vec<serde_json::Value> = spans
            .iter()
            .map(|span| serde_json::from_slice(&span.to_json()).unwrap())
            .collect();
        assert_eq!(each[0]["input"], r#"{"say":"\"hi\""}"#);
        assert_eq!(body, serde_json::json!({ "spans": each }));
        assert_eq!(
            batch.bytes(),
            spans.iter().map(Span::json_size_estimate).sum::<usize>()
        );
    }
}
