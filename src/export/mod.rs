//! Delivery of runs and spans to the ingest API, off the request path.
//!
//! The request path only calls [`Exporter::send`] (or
//! [`Exporter::send_spans`] for spans serialized beforehand, see
//! [`SpanRecords`]), which never waits: it
//! puts the records of a call (a run's start, its spans, its end) on a
//! bounded [`queue`] with one FIFO per run (a span recorded on the request
//! path is serialized later, on the delivery thread). One background
//! [`Worker`], on a thread of its own, takes due batches off the queue (the spans of one run that wait
//! together go in one call), delivers them through a [`Sink`] (the ingest
//! API over HTTP, or the console) and acts on each answer:
//!
//! | answer | what happens |
//! |---|---|
//! | 2xx | delivered, counted in `sent` |
//! | 5xx, 408, network error, timeout | the run backs off 1 s, 2 s, 4 s ... 60 s (with jitter, at least `Retry-After`), other runs go on; after 10 minutes of failures the batch is dropped as `gave_up`; three such failures in a row, of any runs, pause every call and make the next go alone (see [`trouble`]) |
//! | 429 | every call pauses until `Retry-After` (seconds or HTTP date, at most 60 s; without it, a back-off step), then one goes alone until one is answered (once shutdown began, only that run waits); counts toward the 10 minutes like a 5xx |
//! | 413 | the batch is split in halves; a single record is dropped as `too_large` |
//! | any other status | dropped as `rejected` |
//!
//! A dropped start takes its run's other records with it: the ingest API
//! would have no run to attach them to. The guarantees are listed in the
//! [`queue`] docs (order, bounds, when records go) and, for users, in the
//! README's "Delivery guarantees".

mod batch;
mod call;
mod console;
mod core;
mod counters;
mod exporter;
mod http;
mod inflight;
mod item;
mod options;
mod outcome;
mod queue;
mod retry;
#[cfg(test)]
mod script;
mod sink;
mod span_records;
#[cfg(test)]
mod tests;
mod thread;
mod trouble;
mod worker;

pub(crate) use call::IngestCall;
pub(crate) use console::ConsoleSink;
pub use counters::DeliveryCounters;
pub(crate) use exporter::Exporter;
pub(crate) use http::HttpSink;
pub(crate) use options::{
    DEFAULT_MAX_CONCURRENT_CALLS, DEFAULT_MAX_QUEUE_BYTES, DEFAULT_MAX_QUEUE_ITEMS,
    DeliveryOptions, MAX_CONCURRENT_CALLS,
};
pub(crate) use sink::Sink;
pub(crate) use span_records::SpanRecords;
pub(crate) use thread::spawn as spawn_thread;
pub(crate) use worker::Worker;
