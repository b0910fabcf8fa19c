//! The manual API: the Python SDK's `start_run` / `join_run` / `end_run` /
//! `feedback` / `wrap_agent`, on the [`Trodo`] handle, and the request span
//! handlers reach through request extensions.

mod agent;
mod options;
mod propagation;
mod request;
mod span;

pub use agent::AgentRun;
pub use options::{EndRun, Feedback, StartRun};
pub use propagation::{PARENT_SPAN_ID_HEADER, RUN_ID_HEADER};
pub use request::RequestSpan;
pub use span::SpanGuard;

pub(crate) use propagation::inbound_from as inbound_propagation;
pub(crate) use request::record_in_run;

use std::future::Future;
use std::sync::Arc;
use uuid::Uuid;

use crate::capture_policy::Side;
use crate::config::TrodoConfig;
use crate::export::IngestCall;
use crate::run::{CloseRun, RunEnding, RunKey, send_end};
use crate::span_kind::SpanKind;
use crate::state::{Shared, Trodo};
use crate::wire::{MAX_ERROR_CHARS, RunStatus, Timestamp, Totals};
use span::SpanSink;

impl Trodo {
    /// The handle on the state of `config`: the same one every
    /// [`TrodoLayer`](crate::TrodoLayer) built from it (or a clone) uses.
    ///
    /// ```
    /// use trodo_tower::{Trodo, TrodoConfig, TrodoLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let config = TrodoConfig::new();
    /// let layer = TrodoLayer::new(config.clone());
    /// let trodo = Trodo::new(&config); // shares the layer's sessions and delivery
    /// # assert_eq!(trodo.open_runs(), layer.trodo().open_runs());
    /// # }
    /// ```
    #[must_use]
    pub fn new(config: &TrodoConfig) -> Self {
        Self {
            shared: Shared::of(config),
        }
    }

    /// Opens a run that lives across requests and processes (a session you
    /// track yourself): `POST /runs/start` now, and the run id back. Any
    /// process can add spans with [`join_run`](Self::join_run); end it with
    /// [`end_run`](Self::end_run). Runs opened here are not ended by the
    /// idle sweep, only by `end_run` or shutdown.
    pub fn start_run(&self, run: StartRun) -> Uuid {
        self.shared.start_background();
        let shared = &self.shared;
        let run_id = run.run_id.unwrap_or_else(Uuid::new_v4);
        let record = run.into_run(run_id, Timestamp::now(), &shared.settings);
        let key = RunKey::Manual(run_id).table_key();
        if !shared
            .sessions
            .open_started(&key, record, false, &shared.exporter)
        {
            tracing::warn!(%run_id, "trodo: start_run for a run already open here, ignored");
        }
        run_id
    }

    /// A span of the run `run_id`, from any process: it is sent with
    /// `POST /runs/{id}/spans` when it finishes, and counts in the run's
    /// totals when the run is open in this process. A span that finishes
    /// after this process ended its run is dropped, as the run's `end` and
    /// totals are out already (counted in
    /// [`DeliveryCounters::dropped_after_run_end`](crate::DeliveryCounters::dropped_after_run_end)).
    pub fn join_run(&self, run_id: Uuid, kind: SpanKind, name: impl Into<String>) -> SpanGuard {
        self.shared.start_background();
        SpanGuard::new(
            Arc::clone(&self.shared),
            SpanSink::Run(run_id),
            run_id,
            None,
            kind,
            name.into(),
        )
    }

    /// Ends a run with `POST /runs/{id}/end`. For a run open in this
    /// process (opened by [`start_run`](Self::start_run) or by the layer)
    /// the end carries the true totals of all its spans, and a second
    /// `end_run` sends nothing. For a run of another process: with a session
    /// store, the store decides (the end carries every worker's totals if
    /// this process claims it, and nothing is sent if the run already
    /// ended); without one, the end is sent with the totals this process
    /// knows (none). A process remembers the last 4,096 runs it ended: an
    /// `end_run` for a run it ended longer ago is taken as one of another
    /// process.
    pub fn end_run(&self, run_id: Uuid, end: EndRun) {
        self.shared.start_background();
        let shared = &self.shared;
        let ending = RunEnding {
            status: if end.failed {
                RunStatus::Error
            } else {
                RunStatus::Ok
            },
            output: end
                .output
                .and_then(|v| shared.settings.captured_value(Side::Output, v)),
            error_summary: end
                .error_summary
                .map(|s| shared.settings.given_error_text(&s, MAX_ERROR_CHARS)),
            metadata: end.metadata,
        };
        // The run's totals count every request answered before this call.
        shared.backlog.catch_up();
        match shared
            .sessions
            .close_run(run_id, ending.clone(), &shared.exporter)
        {
            CloseRun::Closed => {}
            CloseRun::AlreadyEnded => {
                tracing::debug!(%run_id, "trodo: end_run for a run already ended, ignored");
            }
            CloseRun::Unknown => {
                send_end(
                    run_id,
                    Timestamp::now(),
                    ending,
                    Totals::default(),
                    &shared.exporter,
                );
            }
        }
    }

    /// Feedback on a run (`POST /runs/{id}/feedback`).
    pub fn feedback(&self, run_id: Uuid, feedback: Feedback) {
        self.shared.start_background();
        self.shared.exporter.send(IngestCall::Feedback {
            run_id,
            feedback: Box::new(feedback.body),
        });
    }

    /// Runs `agent` as one run sent whole with a single `POST /runs/ingest`
    /// when it completes (no `start`/`end` calls): its spans are the ones
    /// made with the [`AgentRun`] handle. An `Ok` value is the run's output;
    /// an `Err` makes it a failed run whose `error_summary` is the error.
    ///
    /// If the returned future, once polled, is dropped before the agent
    /// completes (a timeout, a client that went away, an aborted task), the
    /// run is still sent, with the spans finished by then, as a failed run
    /// whose `error_summary` is `cancelled`; if the agent panics,
    /// `panicked` (under tower-http's `CatchPanicLayer` too, which catches
    /// the panic and answers 500). Spans still open in the agent's future
    /// finish as it is dropped, so they go with it (a [`SpanGuard::run`]
    /// cut short as `cancelled`, a span dropped by the panic as `panic`). A
    /// future never polled ran no agent and sends nothing.
    ///
    /// ```
    /// use trodo_tower::{SpanKind, StartRun, Trodo, TrodoConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let trodo = Trodo::new(&TrodoConfig::new());
    /// let answer: Result<String, String> = trodo
    ///     .wrap_agent(StartRun::new("chat").distinct_id("user-1").input("hello"), |run| async move {
    ///         let mut llm = run.span(SpanKind::Llm, "llm.reply");
    ///         llm.set_tokens(10, 3);
    ///         llm.finish();
    ///         Ok("world".to_owned())
    ///     })
    ///     .await;
    /// # }
    /// ```
    pub async fn wrap_agent<T, E, F, Fut>(&self, run: StartRun, agent: F) -> Result<T, E>
    where
        F: FnOnce(AgentRun) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: serde::Serialize,
        E: std::fmt::Display,
    {
        self.shared.start_background();
        // Made before the agent runs: should its future be dropped or
        // panic, the guard's drop still sends the run.
        let (whole, handle) = agent::WholeRun::start(Arc::clone(&self.shared), run);
        let result = agent(handle).await;
        whole.finish(&result);
        result
    }
}
