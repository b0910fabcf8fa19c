//! The fence around the layer's own work beside a request.
//!
//! The layer reads heads and bodies on the request's own task. A panic
//! there (a bug of the layer) must cost the recording of that exchange,
//! never the request: the work runs under `catch_unwind`, the panic is
//! logged and counted (in the whole process, as the layer's code is the
//! same in every layer:
//! [`DeliveryCounters::panics_caught`](crate::DeliveryCounters::panics_caught)),
//! and the exchange goes on unrecorded. In a `Drop`, the fence also keeps
//! a panic of the layer from aborting the process while the inner
//! service's own panic unwinds.
//!
//! The application's hooks are called under the same [`caught`] (see
//! [`crate::hook`]), and so are the delivery thread's calls to the ingest
//! API (see `export::inflight`): the HTTP client may run the application's
//! code, and a panic there must not end delivery. The delivery loop
//! itself runs behind it too: its panic halts delivery for good, counted,
//! instead of ending the thread unseen (see `export::Worker::run`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::log_pace::LogPace;

/// Panics of the layer's own work caught in this process.
static PANICS_CAUGHT: AtomicU64 = AtomicU64::new(0);

/// How many panics of the layer's own work were caught in this process.
pub(crate) fn panics_caught() -> u64 {
    PANICS_CAUGHT.load(Ordering::Relaxed)
}

/// Where in an exchange the layer's work ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Reading the request head, before the inner service is called.
    RequestHead,
    /// Copying a frame of the request body.
    RequestBody,
    /// Reading the response head (or the inner service's failure).
    ResponseHead,
    /// Watching a frame of the response body.
    ResponseBody,
    /// Ending the span, when the body ends or is dropped.
    BodyEnd,
    /// Reading a finished exchange off the request path (see [`crate::backlog`]).
    Backlog,
    /// Making a call to the ingest API, on the delivery thread: the HTTP
    /// client may run the application's code (a DNS resolver or connector
    /// given through `with_http_client`).
    Delivery,
    /// The delivery loop itself, between calls: queue, schedule, settle.
    DeliveryLoop,
}

impl Stage {
    const ALL: [Self; 8] = [
        Self::RequestHead,
        Self::RequestBody,
        Self::ResponseHead,
        Self::ResponseBody,
        Self::BodyEnd,
        Self::Backlog,
        Self::Delivery,
        Self::DeliveryLoop,
    ];

    /// What the layer was doing and what its panic cost, for the log.
    fn describe(self) -> (&'static str, &'static str) {
        const UNRECORDED: &str = "the exchange is passed through unrecorded";
        match self {
            Self::RequestHead => ("the layer, reading a request head,", UNRECORDED),
            Self::RequestBody => (
                "the layer, copying a request body,",
                "the rest of the body is not copied into the span's input",
            ),
            Self::ResponseHead => ("the layer, reading a response head,", UNRECORDED),
            Self::ResponseBody => ("the layer, watching a response body,", UNRECORDED),
            Self::BodyEnd => ("the layer, ending a span,", "the span is lost"),
            Self::Backlog => (
                "the layer, reading a finished exchange,",
                "its span is lost",
            ),
            Self::Delivery => (
                "a call to the ingest API (in the HTTP client)",
                "the call counts as a network error (tried again like one)",
            ),
            Self::DeliveryLoop => (
                "the layer's delivery loop",
                "delivery stops: what is queued or in flight is dropped (counted as \
                 shutdown), and the layer passes requests through unrecorded from now on",
            ),
        }
    }

    /// When a panic at this stage is next logged at `error`.
    fn pace(self) -> &'static LogPace {
        static PACES: [LogPace; Stage::ALL.len()] = [const { LogPace::new() }; Stage::ALL.len()];
        &PACES[self as usize]
    }
}

/// Runs the layer's `work` for an exchange: its answer, or `None` if it
/// panicked (logged and counted; what is lost depends on the stage, the
/// request is never touched).
pub(crate) fn fenced<R>(stage: Stage, work: impl FnOnce() -> R) -> Option<R> {
    let (subject, cost) = stage.describe();
    let answer = caught(
        || {
            #[cfg(test)]
            faults::trip(stage);
            work()
        },
        stage.pace(),
        subject,
        cost,
    );
    if answer.is_none() {
        PANICS_CAUGHT.fetch_add(1, Ordering::Relaxed);
    }
    answer
}

/// Runs `work`: its answer, or `None` if it panicked. The panic of
/// `subject` is logged with its `cost` at `error` as `pace` allows (with
/// the panics since the last such line), else at `debug`.
pub(crate) fn caught<R>(
    work: impl FnOnce() -> R,
    pace: &LogPace,
    subject: &str,
    cost: &str,
) -> Option<R> {
    if let Ok(answer) = catch_unwind(AssertUnwindSafe(work)) {
        return Some(answer);
    }
    match pace.note(1) {
        Some(times) => tracing::error!(
            times,
            "trodo: {subject} panicked; {cost} (logged at error at most once a minute, \
             with the times since the last such line; every panic at debug)"
        ),
        None => tracing::debug!("trodo: {subject} panicked; {cost}"),
    }
    None
}

#[cfg(test)]
mod tests;

/// Faults the tests arm on their own thread: the next work at a stage
/// panics.
#[cfg(test)]
pub(crate) mod faults {
    use super::Stage;
    use std::cell::RefCell;
    use std::sync::{Mutex, MutexGuard, PoisonError};

    /// Tests that count caught panics take turns (the count is the process's).
    static COUNTING: Mutex<()> = Mutex::new(());

    /// This test's turn to count caught panics.
    pub(crate) fn counting() -> MutexGuard<'static, ()> {
        COUNTING.lock().unwrap_or_else(PoisonError::into_inner)
    }

    thread_local! {
        static ARMED: RefCell<Vec<Stage>> = const { RefCell::new(Vec::new()) };
    }

    /// Makes the next work at `stage` on this thread panic (once per call).
    pub(crate) fn arm(stage: Stage) {
        ARMED.with_borrow_mut(|armed| armed.push(stage));
    }

    /// Panics if a fault is armed at `stage` on this thread.
    pub(super) fn trip(stage: Stage) {
        let tripped = ARMED.with_borrow_mut(|armed| {
            let at = armed.iter().position(|s| *s == stage)?;
            Some(armed.remove(at))
        });
        if let Some(stage) = tripped {
            panic!("trodo test: a fault armed at {stage:?}");
        }
    }
}
