//! A queued record: a run's start, one span, a run's end, a one-shot run or
//! feedback. Spans, one per request in a run, are serialized off the request
//! path: when they are queued by a thread reading the layer's
//! [backlog](crate::backlog) (the delivery thread, mostly), else when they
//! are sent. The other records are serialized when they are queued (a
//! one-shot run, one per request with `Sessionless::RunPerRequest`, too).

use std::cell::RefCell;
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

thread_local! {
    /// Where a span is written before its JSON is copied out at its size
    /// (a buffer sized to the estimate would be shrunk, reallocated, for
    /// every span).
    static SPAN_JSON: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The most room [`SPAN_JSON`] keeps from one span to the next.
const KEPT_SPAN_JSON_BYTES: usize = 64 * 1024;

/// A span's JSON, allocated at its size.
fn span_json(span: &Span) -> Box<[u8]> {
    SPAN_JSON.with_borrow_mut(|buffer| {
        buffer.clear();
        span.write_json(buffer);
        let json = Box::from(buffer.as_slice());
        if buffer.capacity() > KEPT_SPAN_JSON_BYTES {
            *buffer = Vec::new();
        }
        json
    })
}

/// What a record will send: its JSON, or a span to serialize when it is sent.
#[derive(Debug, Clone)]
pub(crate) enum Payload {
    /// The JSON, made when the record was queued.
    Json(Box<[u8]>),
    /// A span queued on the request path, serialized on the delivery
    /// thread so that the request path does not pay for it; `bytes` is its
    /// size as the queue counts it.
    Span { span: Box<Span>, bytes: usize },
}

impl Payload {
    /// A span's record. A thread that reads the backlog serializes it at
    /// once: it is off the request path (or catching up on it anyway), and
    /// the span it has just built is still in its cache. Serialized when
    /// its batch is sent, milliseconds and a hundred spans later, each span
    /// was read back from memory: writing spans took a quarter of the
    /// delivery thread's time under load, and an eighth written at once.
    /// Any other thread (a layer with a session store records on the
    /// request path) leaves it to the delivery thread.
    pub(crate) fn span(span: Span) -> Self {
        if crate::backlog::is_reading() {
            return Self::Json(span_json(&span));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backlog::{Backlog, Later};
    use std::convert::Infallible;
    use std::sync::mpsc;

    /// A span whose record is made when the backlog reads it.
    struct Queued(Span, mpsc::Sender<Payload>);

    impl Later for Queued {
        type Leftover = Infallible;

        fn weight(&self) -> usize {
            1
        }

        fn read(self) -> Option<Infallible> {
            let _ = self.1.send(Payload::span(self.0));
            None
        }
    }

    fn span(input: String) -> Span {
        let mut span = Span::tool_add();
        span.input = Some(input);
        span.attributes.insert("mcp.method.name", "tools/call");
        span
    }

    /// The records the backlog's reader makes of `spans`, in order.
    fn queued_while_reading(spans: &[Span]) -> Vec<Payload> {
        let (queue, queued) = mpsc::channel();
        let backlog = Backlog::default();
        for span in spans {
            backlog.push(Queued(span.clone(), queue.clone()));
        }
        assert_eq!(backlog.catch_up(), spans.len());
        queued.try_iter().collect()
    }

    fn written(payload: &Payload) -> Vec<u8> {
        let mut out = Vec::new();
        payload.write_to(&mut out);
        out
    }

    #[test]
    fn a_span_queued_while_reading_the_backlog_is_serialized_at_once() {
        let small = span(r#"{"jsonrpc":"2.0","id":1,"params":{"name":"add"}}"#.to_owned());
        // Larger than the buffer keeps: the next span is written afresh.
        let large = span(format!("\"{}\"", "x".repeat(2 * KEPT_SPAN_JSON_BYTES)));
        let spans = [small.clone(), large, small];
        let payloads = queued_while_reading(&spans);
        assert_eq!(payloads.len(), 3);
        for (span, payload) in spans.iter().zip(&payloads) {
            let Payload::Json(json) = payload else {
                panic!("not serialized: {payload:?}");
            };
            assert_eq!(json[..], span.to_json()[..]);
            assert_eq!(payload.bytes(), json.len());
            assert_eq!(written(payload), span.to_json());
        }
        SPAN_JSON.with_borrow(|buffer| {
            assert!(
                buffer.capacity() <= KEPT_SPAN_JSON_BYTES,
                "{}",
                buffer.capacity()
            );
        });
    }

    #[test]
    fn a_span_queued_on_the_request_path_is_serialized_when_sent() {
        let span = span(r#"{"say":"\"hi\""}"#.to_owned());
        let payload = Payload::span(span.clone());
        let Payload::Span { bytes, .. } = &payload else {
            panic!("serialized on the request path: {payload:?}");
        };
        assert_eq!(*bytes, span.json_size_estimate());
        assert_eq!(written(&payload), span.to_json());
    }
}
