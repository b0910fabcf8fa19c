//! A scripted sink for tests: records every call, answers as the test says.

use serde_json::Value;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use super::outcome::Outcome;
use super::retry::Backoff;
use super::{DeliveryOptions, Exporter, IngestCall, Sink};
use crate::span_kind::SpanKind;
use crate::wire::{End, Run, RunStatus, Span, Timestamp, Totals};

/// How the script answers a call, and after how long.
type Answer = Box<dyn FnMut(&Call) -> (Duration, Outcome) + Send>;

/// One call the sink got.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    /// When it started, since the script was made.
    pub(crate) at: Duration,
    pub(crate) path: String,
    pub(crate) body: Value,
}

impl Call {
    /// `start 1`, `spans 1 a,b`, `end 1` for runs `Uuid::from_u128(1)`.
    pub(crate) fn describe(&self) -> String {
        let run = |id: &str| Uuid::parse_str(id).map_or(0, |id| id.as_u128());
        if self.path == "/api/sdk/runs/start" {
            return format!(
                "start {}",
                run(self.body["run"]["run_id"].as_str().unwrap_or(""))
            );
        }
        let rest = self.path.trim_start_matches("/api/sdk/runs/");
        let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
        match action {
            "spans" => {
                let names: Vec<&str> = self.body["spans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| s["name"].as_str().unwrap_or("?"))
                    .collect();
                format!("spans {} {}", run(id), names.join(","))
            }
            other => format!("{other} {}", run(id)),
        }
    }

    /// How many spans it carries.
    pub(crate) fn span_count(&self) -> usize {
        self.body["spans"].as_array().map_or(0, Vec::len)
    }
}

/// The scripted sink.
pub(crate) struct Script {
    started: Instant,
    calls: watch::Sender<Vec<Call>>,
    answer: Mutex<Answer>,
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script").finish_non_exhaustive()
    }
}

impl Script {
    /// A script that answers every call with `answer(call)`, at once.
    pub(crate) fn new(mut answer: impl FnMut(&Call) -> Outcome + Send + 'static) -> Arc<Self> {
        Self::timed(move |call| (Duration::ZERO, answer(call)))
    }

    /// A script that answers `answer(call).1` after `answer(call).0`.
    pub(crate) fn timed(
        answer: impl FnMut(&Call) -> (Duration, Outcome) + Send + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            calls: watch::Sender::new(Vec::new()),
            answer: Mutex::new(Box::new(answer)),
        })
    }

    /// A script that accepts everything.
    pub(crate) fn ok() -> Arc<Self> {
        Self::new(|_| Outcome::Delivered)
    }

    /// From now on, answers with `answer(call)` at once.
    pub(crate) fn answer(&self, mut answer: impl FnMut(&Call) -> Outcome + Send + 'static) {
        *self.answer.lock().unwrap_or_else(PoisonError::into_inner) =
            Box::new(move |call| (Duration::ZERO, answer(call)));
    }

    /// Every call so far, in the order they started.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// [`Call::describe`] of every call so far.
    pub(crate) fn described(&self) -> Vec<String> {
        self.calls.borrow().iter().map(Call::describe).collect()
    }

    /// The start time of every call so far, in milliseconds.
    pub(crate) fn times_ms(&self) -> Vec<u128> {
        self.calls
            .borrow()
            .iter()
            .map(|c| c.at.as_millis())
            .collect()
    }

    /// Waits until `n` calls have started.
    pub(crate) async fn wait_calls(&self, n: usize) {
        let mut calls = self.calls.subscribe();
        let _ = calls.wait_for(|calls| calls.len() >= n).await;
    }

    pub(super) async fn deliver(&self, path: &str, body: Vec<u8>) -> Outcome {
        let call = Call {
            at: Instant::now() - self.started,
            path: path.to_owned(),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        };
        let (after, outcome) = (self.answer.lock().unwrap_or_else(PoisonError::into_inner))(&call);
        self.calls.send_modify(|calls| calls.push(call));
        tokio::time::sleep(after).await;
        outcome
    }
}

/// Delivery options for tests: the defaults without jitter, so that times are exact.
pub(crate) fn options() -> DeliveryOptions {
    DeliveryOptions {
        backoff: Backoff {
            jitter: false,
            ..Backoff::default()
        },
        ..DeliveryOptions::default()
    }
}

/// An exporter whose worker runs on the test's runtime and delivers to `script`.
pub(crate) fn spawn(
    script: &Arc<Script>,
    options: DeliveryOptions,
) -> (Exporter, tokio::task::JoinHandle<()>) {
    let (exporter, worker) = Exporter::new(Sink::Script(Arc::clone(script)), options);
    (exporter, tokio::spawn(worker.run()))
}

fn time() -> Timestamp {
    Timestamp(SystemTime::UNIX_EPOCH)
}

/// The start of run `Uuid::from_u128(run)`.
pub(crate) fn start(run: u128) -> IngestCall {
    IngestCall::Start(Box::new(Run::new(
        Uuid::from_u128(run),
        "test".to_owned(),
        time(),
    )))
}

/// A span called `name` of run `Uuid::from_u128(run)`, its input `input`.
pub(crate) fn span_with(run: u128, name: &str, input: Option<String>) -> IngestCall {
    let run_id = Uuid::from_u128(run);
    IngestCall::Spans {
        run_id,
        spans: vec![Span {
            input,
            ..Span::new(
                Uuid::new_v4(),
                run_id,
                SpanKind::Tool,
                name.to_owned(),
                time(),
            )
        }],
    }
}

/// A span called `name` of run `Uuid::from_u128(run)`.
pub(crate) fn span(run: u128, name: &str) -> IngestCall {
    span_with(run, name, None)
}

/// The end of run `Uuid::from_u128(run)`.
pub(crate) fn end(run: u128) -> IngestCall {
    IngestCall::End {
        run_id: Uuid::from_u128(run),
        end: Box::new(End {
            ended_at: time(),
            status: RunStatus::Ok,
            output: None,
            error_summary: None,
            metadata: serde_json::Map::new(),
            totals: Totals::default(),
        }),
    }
}
