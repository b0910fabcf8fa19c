//! [`SpanGuard`]: a span recorded by hand, sent when it finishes.

use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

use super::agent::RunSpans;
use super::request::{RequestSpan, record_in_run};
use crate::capture_policy::Side;
use crate::moment::instant_now;
use crate::span_kind::SpanKind;
use crate::state::Shared;
use crate::wire::{MAX_ERROR_CHARS, Span, SpanStatus, Timestamp};

/// Where a finished manual span goes.
#[derive(Debug, Clone)]
pub(crate) enum SpanSink {
    /// Into the run with this id: counted in its totals when it is open in
    /// this process, sent as it is otherwise (another process owns the run).
    Run(Uuid),
    /// Under a request's span, into the request's run.
    Request(RequestSpan),
    /// Into the span list of a run sent whole ([`Trodo::wrap_agent`](crate::Trodo::wrap_agent)).
    Collect(Arc<RunSpans>),
}

/// A span under way, recorded by hand: set what you know, then let it
/// finish (on [`finish`](Self::finish), on drop, or at the end of
/// [`run`](Self::run)). Its duration runs from creation to finish.
///
/// Dropped while its thread unwinds from a panic (the work it records
/// panicked), a span that has no error yet ends as an error with
/// `error_type` `panic`; one whose [`run`](Self::run) future is dropped
/// before its work completed, with `error_type` `cancelled`. Either counts
/// in its run's `error_count`; an error set before stands. A guard dropped
/// in any other way finishes the span as it stands.
///
/// Make one with [`Trodo::join_run`](crate::Trodo::join_run), with
/// [`RequestSpan::child`] inside a request the layer handles, or with
/// [`SpanGuard::child`].
///
/// ```
/// use trodo_tower::{SpanKind, Trodo, TrodoConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let trodo = Trodo::new(&TrodoConfig::new());
/// # let run_id = uuid::Uuid::new_v4();
/// let mut llm = trodo.join_run(run_id, SpanKind::Llm, "llm.summarise");
/// llm.set_model("gpt-5", "openai");
/// llm.set_input("Summarise: ...");
/// llm.set_output("A summary.");
/// llm.set_tokens(812, 64);
/// llm.set_cost(0.0021);
/// llm.finish();
/// # }
/// ```
#[must_use = "a span is recorded when its guard is finished or dropped; dropped at once, it lasts no time"]
pub struct SpanGuard {
    shared: Arc<Shared>,
    sink: SpanSink,
    span: Option<Span>,
    started: Instant,
    /// Inside [`run`](Self::run), whose work has not completed: dropped
    /// now, the work was cancelled.
    working: bool,
}

/// The `error_message` of a span dropped while its thread panicked.
const PANICKED: &str = "the span's work panicked";
/// The `error_message` of a span whose `run` future was dropped before its
/// work completed.
const CANCELLED: &str = "the span's work was cancelled before it finished";

impl fmt::Debug for SpanGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let span = self.span.as_ref();
        f.debug_struct("SpanGuard")
            .field("name", &span.map(|s| &s.name))
            .field("span_id", &span.map(|s| s.span_id))
            .finish_non_exhaustive()
    }
}

impl SpanGuard {
    pub(crate) fn new(
        shared: Arc<Shared>,
        sink: SpanSink,
        run_id: Uuid,
        parent: Option<Uuid>,
        kind: SpanKind,
        name: String,
    ) -> Self {
        let tool_name = (kind == SpanKind::Tool)
            .then(|| name.strip_prefix("tool.").unwrap_or(&name).to_owned());
        let span = Span {
            parent_span_id: parent,
            tool_name,
            ..Span::new(Uuid::new_v4(), run_id, kind, name, Timestamp::now())
        };
        Self {
            shared,
            sink,
            span: Some(span),
            started: Instant::now(),
            working: false,
        }
    }

    fn span(&mut self) -> &mut Span {
        self.span
            .as_mut()
            .expect("a SpanGuard holds its span until it finishes")
    }

    /// This span's id (the `parent_span_id` of its children).
    #[must_use]
    pub fn span_id(&self) -> Uuid {
        self.span.as_ref().map_or_else(Uuid::nil, |s| s.span_id)
    }

    /// The input: a string is kept as it is, other JSON is serialised.
    pub fn set_input(&mut self, input: impl Into<Value>) -> &mut Self {
        let input = self
            .shared
            .settings
            .captured_value(Side::Input, input.into());
        self.span().input = input;
        self
    }

    /// The output: a string is kept as it is, other JSON is serialised.
    pub fn set_output(&mut self, output: impl Into<Value>) -> &mut Self {
        let output = self
            .shared
            .settings
            .captured_value(Side::Output, output.into());
        self.span().output = output;
        self
    }

    /// Adds one attribute.
    pub fn set_attribute(&mut self, key: impl Into<String>, value: impl Into<Value>) -> &mut Self {
        self.span().attributes.insert(key.into(), value);
        self
    }

    /// The model and its provider, for an LLM call.
    pub fn set_model(
        &mut self,
        model: impl Into<String>,
        provider: impl Into<String>,
    ) -> &mut Self {
        let span = self.span();
        span.model = Some(model.into());
        span.provider = Some(provider.into());
        self
    }

    /// Tokens in and out; they count in the run's totals.
    pub fn set_tokens(&mut self, input_tokens: u64, output_tokens: u64) -> &mut Self {
        let span = self.span();
        span.input_tokens = Some(input_tokens);
        span.output_tokens = Some(output_tokens);
        self
    }

    /// The cost; it counts in the run's totals. A cost that is not a
    /// finite number (JSON has no NaN) is not recorded.
    pub fn set_cost(&mut self, cost: f64) -> &mut Self {
        self.span().cost = cost.is_finite().then_some(cost);
        self
    }

    /// The sampling temperature of an LLM call; one that is not a finite
    /// number is not recorded.
    pub fn set_temperature(&mut self, temperature: f64) -> &mut Self {
        self.span().temperature = temperature.is_finite().then_some(temperature);
        self
    }

    /// The tool's name, for a tool span.
    pub fn set_tool_name(&mut self, tool: impl Into<String>) -> &mut Self {
        self.span().tool_name = Some(tool.into());
        self
    }

    /// Marks the span failed, with a kind of error and a message (through
    /// the redaction hook, then cut at 4,000 characters).
    pub fn set_error(
        &mut self,
        error_type: impl Into<String>,
        message: impl AsRef<str>,
    ) -> &mut Self {
        let message = self
            .shared
            .settings
            .given_error_text(message.as_ref(), MAX_ERROR_CHARS);
        let span = self.span();
        span.status = SpanStatus::Error;
        span.error_type = Some(error_type.into());
        span.error_message = Some(message);
        self
    }

    /// A span under this one, in the same run.
    pub fn child(&self, kind: SpanKind, name: impl Into<String>) -> Self {
        let run_id = self.span.as_ref().map_or_else(Uuid::nil, |s| s.run_id);
        Self::new(
            Arc::clone(&self.shared),
            self.sink.clone(),
            run_id,
            Some(self.span_id()),
            kind,
            name.into(),
        )
    }

    /// Headers that let a service you call join this run under this span:
    /// `X-Trodo-Run-Id` and `X-Trodo-Parent-Span-Id`. Empty for a child of a
    /// [`crate::RequestSpan`] made while the request's run was not known
    /// (see [`crate::RequestSpan::propagation_headers`]).
    #[must_use]
    pub fn propagation_headers(&self) -> http::HeaderMap {
        let run_id = self
            .span
            .as_ref()
            .map(|s| s.run_id)
            .filter(|id| !id.is_nil());
        super::propagation::headers(run_id, self.span_id())
    }

    /// Runs `work` inside this span and finishes it: an `Ok` value becomes
    /// the output, an `Err` marks the span failed (`error_type` `error`).
    ///
    /// If `work` panics, the span ends as an error with `error_type`
    /// `panic`. If the returned future is dropped before `work` completed
    /// (a `tokio::time::timeout` that expired, a `select!` branch that
    /// lost, an aborted task, or a future never polled), the span ends as
    /// an error with `error_type` `cancelled`. Both count in the run's
    /// `error_count`; an error set before `run` stands.
    ///
    /// ```
    /// # use trodo_tower::{SpanKind, Trodo, TrodoConfig};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let trodo = Trodo::new(&TrodoConfig::new());
    /// # let run_id = uuid::Uuid::new_v4();
    /// let rows: Result<Vec<u32>, String> = trodo
    ///     .join_run(run_id, SpanKind::Retrieval, "retrieval.orders")
    ///     .run(async { Ok(vec![1, 2, 3]) })
    ///     .await;
    /// # }
    /// ```
    pub fn run<T, E, F>(mut self, work: F) -> impl Future<Output = Result<T, E>>
    where
        F: Future<Output = Result<T, E>>,
        T: serde::Serialize,
        E: fmt::Display,
    {
        // Set before the future exists, so that one dropped unpolled
        // counts as cancelled too.
        self.working = true;
        async move {
            let result = work.await;
            self.working = false;
            match &result {
                Ok(value) => {
                    if let Ok(output) = serde_json::to_value(value) {
                        self.set_output(output);
                    }
                }
                Err(error) => {
                    self.set_error("error", error.to_string());
                }
            }
            self.finish();
            result
        }
    }

    /// Finishes the span now and sends it on.
    pub fn finish(mut self) {
        self.complete();
    }

    fn complete(&mut self) {
        let Some(mut span) = self.span.take() else {
            return;
        };
        span.ended_at = Timestamp::now();
        span.duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        deliver(&self.shared, &self.sink, span);
    }
}

impl Drop for SpanGuard {
    /// Finishes the span; as an error if its work panicked or its `run`
    /// was cancelled (see [`SpanGuard`]).
    fn drop(&mut self) {
        let unfailed = self
            .span
            .as_ref()
            .is_some_and(|span| span.status != SpanStatus::Error);
        if unfailed {
            if std::thread::panicking() {
                self.set_error("panic", PANICKED);
            } else if self.working {
                self.set_error("cancelled", CANCELLED);
            }
        }
        self.complete();
    }
}

/// Sends a finished manual span where it belongs.
fn deliver(shared: &Shared, sink: &SpanSink, span: Span) {
    match sink {
        SpanSink::Run(run_id) => record_in_run(shared, None, *run_id, vec![span], instant_now()),
        SpanSink::Request(request) => request.record_child(span),
        SpanSink::Collect(spans) => {
            if !spans.push(span) {
                shared.exporter.drop_after_run_end(1);
            }
        }
    }
}
