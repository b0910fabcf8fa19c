//! A queued record: a run's start, one span or a run's end, serialized once.

use serde::Serialize;
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

/// The body of `runs/ingest`.
#[derive(Serialize)]
struct IngestBody<'a> {
    run: &'a Run,
    spans: &'a [Span],
}

/// One record waiting for delivery, its JSON made on the request path so
/// that the queue's byte bound measures what will be sent.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub(crate) seq: Seq,
    pub(crate) run_id: Uuid,
    pub(crate) kind: ItemKind,
    pub(crate) json: Box<[u8]>,
}

impl Item {
    /// The serialized size, which the queue's byte bound counts.
    pub(crate) fn bytes(&self) -> usize {
        self.json.len()
    }
}

/// A record before it is given its place in the queue.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) run_id: Uuid,
    pub(crate) kind: ItemKind,
    pub(crate) json: Box<[u8]>,
}

impl Encoded {
    /// The records of a call, in order: one per span of a spans call.
    pub(crate) fn of(call: IngestCall) -> Vec<Self> {
        let encode = |run_id, kind, json: serde_json::Result<Vec<u8>>| Self {
            run_id,
            kind,
            // The wire types hold only strings, numbers and string-keyed maps:
            // serializing them cannot fail.
            json: json.unwrap_or_default().into_boxed_slice(),
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
                .iter()
                .map(|span| encode(run_id, ItemKind::Span, serde_json::to_vec(span)))
                .collect(),
            IngestCall::End { run_id, end } => {
                vec![encode(run_id, ItemKind::End, serde_json::to_vec(&end))]
            }
            IngestCall::Ingest { run, spans } => {
                let body = IngestBody {
                    run: &run,
                    spans: &spans,
                };
                vec![encode(
                    run.run_id,
                    ItemKind::Ingest,
                    serde_json::to_vec(&body),
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
            json: self.json,
        }
    }
}
