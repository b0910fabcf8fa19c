//! A queued record: a run's start, one span, a run's end, a one-shot run or
//! feedback. Spans, one per request in a run, are serialized on the delivery
//! thread; the other records are serialized when they are queued (a one-shot
//! run, one per request with `Sessionless::RunPerRequest`, too).

use uuid::Uuid;

use super::IngestCall;
use crate::wire::{Run, Span};

/// The position of a record in arrival order, from 0.
pub(crate) type Seq = u64;

/// What a record is; it decides the call that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ItemKind {
    /// `{"run": ...}` for `runs/start`.
    Start,
    /// One element of `{"spans": [...]}` for `runs/{id}/spans`.
    Span,
    /// The body of `runs/{id}/end`.
    End,
    /// The whole body of `runs/ingest`: a run with its spans, sent alone.
    Ingest,
    /// The body of `runs/{id}/feedback`.
    Feedback,
}

/// The body of `runs/ingest`: `{"run": ..., "spans": [...]}`.
fn ingest_body(run: &Run, spans: &[Span]) -> Vec<u8> {
    let mut body = b"{\"run\":".to_vec();
    // A run holds only strings, numbers and string-keyed maps: serializing
    // it cannot fail.
    let _ = serde_json::to_writer(&mut body, run);
    body.extend_from_slice(b",\"spans\":[");
    for (i, span) in spans.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        span.write_json(&mut body);
    }
    body.extend_from_slice(b"]}");
    body
}

/// What a record will send: its JSON, or a span to serialize when it is sent.
#[derive(Debug, Clone)]
pub(crate) enum Payload {
    /// The JSON, made when the record was queued.
    Json(Box<[u8]>),
    /// A span, serialized on the delivery thread so that the request path
    /// does not pay for it; `bytes` is its size as the queue counts it.
    Span { span: Box<Span>, bytes: usize },
}

impl Payload {
    /// A span to serialize later.
    pub(crate) fn span(span: Span) -> Self {
        Self::Span {
            bytes: span.json_size_estimate(),
            span: Box::new(span),
        }
    }

    /// The size the queue's byte bound counts: the JSON's, or the span's estimate.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Self::Json(json) => json.len(),
            Self::Span { bytes, .. } => *bytes,
        }
    }

    /// Appends the JSON to `out`.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Self::Json(json) => out.extend_from_slice(json),
            Self::Span { span, .. } => span.write_json(out),
        }
    }
}

/// One record waiting for delivery.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub(crate) seq: Seq,
    pub(crate) run_id: Uuid,
    pub(crate) kind: ItemKind,
    pub(crate) payload: Payload,
}

impl Item {
    /// The size the queue's byte bound counts.
    pub(crate) fn bytes(&self) -> usize {
        self.payload.bytes()
    }
}

/// A record before it is given its place in the queue.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) run_id: Uuid,
    pub(crate) kind: ItemKind,
    pub(crate) payload: Payload,
}

impl Encoded {
    /// The records of a call, in order: one per span of a spans call.
    pub(crate) fn of(call: IngestCall) -> Vec<Self> {
        let encode = |run_id, kind, json: serde_json::Result<Vec<u8>>| Self {
            run_id,
            kind,
            // The wire types hold only strings, numbers and string-keyed maps:
            // serializing them cannot fail.
            payload: Payload::Json(json.unwrap_or_default().into_boxed_slice()),
        };
        match call {
            IngestCall::Start(run) => {
                vec![encode(
                    run.run_id,
                    ItemKind::Start,
                    serde_json::to_vec(&run),
                )]
            }
            IngestCall::Spans { run_id, spans } => spans
                .into_iter()
                .map(|span| Self {
                    run_id,
                    kind: ItemKind::Span,
                    payload: Payload::span(span),
                })
                .collect(),
            IngestCall::End { run_id, end } => {
                vec![encode(run_id, ItemKind::End, serde_json::to_vec(&end))]
            }
            IngestCall::Ingest { run, spans } => {
                vec![encode(
                    run.run_id,
                    ItemKind::Ingest,
                    Ok(ingest_body(&run, &spans)),
                )]
            }
            IngestCall::Feedback { run_id, feedback } => {
                vec![encode(
                    run_id,
                    ItemKind::Feedback,
                    serde_json::to_vec(&feedback),
                )]
            }
        }
    }

    /// The record at its place `seq` in the queue.
    pub(crate) fn at(self, seq: Seq) -> Item {
        Item {
            seq,
            run_id: self.run_id,
            kind: self.kind,
            payload: self.payload,
        }
    }
}
