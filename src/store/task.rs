//! The per-process store task: everything the layer tells the session store
//! off the request path, in order, through one bounded queue; and the sweep
//! of the store's idle runs.
//!
//! The task takes what is queued in batches. In a batch, aggregates queued
//! for one run are added up into one operation, and operations of one kind
//! run concurrently (on one Redis connection they are pipelined), kind after
//! kind: runs opened, then aggregates, then activity and end claims. So a
//! worker's aggregates of a run reach the store before its own claim of the
//! run's end. Each operation is bounded by a timeout; while the store
//! is failing, operations are not tried (for [`RETRY_AFTER`]): aggregates,
//! activity and ends of runs this process does not hold (which a sweep
//! then ends, as idle) are dropped and counted, and ends of runs it holds
//! fall back to this process's totals. A run ended so may still be held
//! by the store, where a sweep would end it a second time: its end is
//! claimed in the store once it answers again, and the claim sends
//! nothing. A run of `start_run` the store could not open is opened once
//! it answers again (if this process still holds it), so that other
//! workers can end it with its totals. Both are tried as soon as the
//! store may be asked again, less and less often while it fails them (see
//! [`LaterPause`]), and before each sweep; what still waits when the task
//! ends is lost, counted and logged.
//!
//! [`RETRY_AFTER`]: super::health::RETRY_AFTER

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::Poll;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use super::health::Health;
use super::{Claim, NewRun, Opened, RunTotals, SessionStore, StoreFuture};
use crate::export::Exporter;
use crate::run::{ClosedVia, RunEnding, send_end};
use crate::state::{Shared, sweep_interval};
use crate::wire::Timestamp;

/// Most operations the queue holds; past it, new ones are refused.
const QUEUE_CAPACITY: usize = 10_000;
/// Most operations taken off the queue at once (their aggregates coalesce).
const BATCH: usize = 256;
/// Most idle runs one store call claims.
const SWEEP_BATCH: usize = 500;
/// The most a background store operation may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(1);
/// Most runs whose claim (ended here without the store) or opening (of
/// `start_run`) waits for the store, of each.
const LATER_CAPACITY: usize = QUEUE_CAPACITY;
/// The least time between two tries of what waits for the store.
const LATER_PAUSE: Duration = Duration::from_millis(10);
/// The most time between two tries of what the store keeps failing.
const LATER_PAUSE_MAX: Duration = Duration::from_secs(30);

/// One thing to tell the store.
#[derive(Debug)]
enum Op {
    /// Opens a run of `start_run` in the store; then it is shared here.
    Register(NewRun),
    /// Adds to a run's aggregates and moves its activity forward.
    Record {
        run_id: Uuid,
        delta: RunTotals,
        last: Timestamp,
    },
    /// Activity of a key's run, or an end claim: after the batch's aggregates.
    Late(Late),
    /// Answered once every operation queued before it is done.
    Drain(oneshot::Sender<()>),
}

/// What runs after the aggregates of a batch.
#[derive(Debug)]
enum Late {
    /// Marks the run of a key this process does not hold active.
    TouchKey { key: String, at: Timestamp },
    /// Claims a run's end; the winner sends it.
    End(Box<EndOp>),
    /// Asks whether a run this process holds was ended by another worker,
    /// by opening it again: a run claimed before is not opened again.
    AskIfEnded(NewRun),
    /// Claims the end of the run of a key this process does not hold.
    EndKey {
        key: String,
        via: ClosedVia,
        at: Timestamp,
    },
}

/// The end of a run this process held, through the store's claim.
#[derive(Debug)]
pub(crate) struct EndOp {
    pub(crate) run_id: Uuid,
    pub(crate) ending: RunEnding,
    /// When it ended: for DELETE, 404, shutdown and `end_run`, when the
    /// answer was seen or now, or the end of the last span this process
    /// counted in it if later; the last activity this process saw for an
    /// idle end.
    pub(crate) at: Timestamp,
    /// For an idle end: only if the store saw no activity after this.
    pub(crate) idle_before: Option<SystemTime>,
    /// The totals this process counted, for an end without the store.
    pub(crate) local: RunTotals,
    /// Whether `local` went to the store as it was counted. A run of
    /// `start_run` ended before its opening in the store was done has
    /// counted nothing there: the store's totals then lack `local`.
    pub(crate) local_in_store: bool,
}

/// The sending side of the store queue. Never waits.
#[derive(Debug, Clone)]
pub(crate) struct StoreQueue {
    tx: mpsc::Sender<Op>,
    health: Arc<Health>,
    /// Runs this process ended with its own totals, the store unable to
    /// say, that the store may still hold: claimed there (sending nothing)
    /// once it answers, so that no sweep ends them again.
    /// With the end's `idle_before`: an idle end claims only an idle run.
    unclaimed: Arc<Mutex<Vec<(Uuid, Option<SystemTime>)>>>,
    /// Runs of `start_run` the store could not open: opened once it answers.
    unregistered: Arc<Mutex<Vec<NewRun>>>,
}

impl StoreQueue {
    /// A queue and its receiving end.
    pub(super) fn new(health: Arc<Health>) -> (Self, Receiver) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (unclaimed, unregistered) = (Arc::default(), Arc::default());
        (
            Self {
                tx,
                health,
                unclaimed,
                unregistered,
            },
            Receiver(rx),
        )
    }

    /// Queues an operation that may be lost (aggregates, activity); a
    /// refused one is counted.
    fn send_or_drop(&self, op: Op) {
        if self.tx.try_send(op).is_err() {
            self.health.dropped();
        }
    }

    /// Opens a run of `start_run` in the store: later, if the queue
    /// refuses it now.
    pub(crate) fn register(&self, run: NewRun) {
        if let Err(refused) = self.tx.try_send(Op::Register(run))
            && let Op::Register(run) = refused.into_inner()
        {
            self.register_later(run);
        }
    }

    /// Adds to a run's aggregates and activity.
    pub(crate) fn record(&self, run_id: Uuid, delta: RunTotals, last: Timestamp) {
        self.send_or_drop(Op::Record {
            run_id,
            delta,
            last,
        });
    }

    /// Marks the run of a key this process does not hold active.
    pub(crate) fn touch_key(&self, key: &str, at: Timestamp) {
        self.send_or_drop(Op::Late(Late::TouchKey {
            key: key.to_owned(),
            at,
        }));
    }

    /// Asks the store whether another worker ended a run this process
    /// holds (a run of `start_run`, which no sweep ends).
    pub(crate) fn ask_if_ended(&self, run: NewRun) {
        self.send_or_drop(Op::Late(Late::AskIfEnded(run)));
    }

    /// Ends the run of a key this process does not hold, if the store has one.
    pub(crate) fn end_key(&self, key: &str, via: ClosedVia) {
        self.send_or_drop(Op::Late(Late::EndKey {
            key: key.to_owned(),
            via,
            at: Timestamp::now(),
        }));
    }

    /// Ends a run through the store's claim. If the queue refuses it, the
    /// run ends here at once, with this process's totals.
    pub(crate) fn end(&self, op: EndOp, exporter: &Exporter) {
        if let Err(refused) = self.tx.try_send(Op::Late(Late::End(Box::new(op)))) {
            self.health.dropped();
            if let Op::Late(Late::End(op)) = refused.into_inner() {
                self.end_unclaimed(*op, exporter);
            }
        }
    }

    /// Ends a run with this process's totals (the store could not say).
    fn end_locally(&self, op: EndOp, exporter: &Exporter) {
        self.health.ended_locally();
        send_end(op.run_id, op.at, op.ending, op.local.into(), exporter);
    }

    /// Ends a run with this process's totals without the store's claim,
    /// which is made later, once the store answers.
    fn end_unclaimed(&self, op: EndOp, exporter: &Exporter) {
        self.claim_later(op.run_id, op.idle_before);
        self.end_locally(op, exporter);
    }

    /// Keeps the claim of a run that ended here for when the store
    /// answers (only if idle before `idle_before`, for an idle end); past
    /// [`LATER_CAPACITY`] it is lost, and counted.
    fn claim_later(&self, run_id: Uuid, idle_before: Option<SystemTime>) {
        self.keep(&self.unclaimed, (run_id, idle_before));
    }

    /// Keeps the opening of a run of `start_run` for when the store
    /// answers; past [`LATER_CAPACITY`] it is lost, and counted.
    fn register_later(&self, run: NewRun) {
        self.keep(&self.unregistered, run);
    }

    /// Whether any claim or opening waits for the store.
    fn keeps_any(&self) -> bool {
        !is_empty(&self.unclaimed) || !is_empty(&self.unregistered)
    }

    /// Drops what waits for the store, its task ended: counted, and
    /// logged once with how many.
    fn lose_kept(&self) {
        let claims = take(&self.unclaimed).len();
        let openings = take(&self.unregistered).len();
        lose_waiting(&self.health, claims, openings);
    }

    /// Keeps `item` for the store task to try later: lost at once, and
    /// counted, if that task is gone (its runtime dropped) or past the bound.
    fn keep<T>(&self, later: &Mutex<Vec<T>>, item: T) {
        let mut later = later.lock().unwrap_or_else(PoisonError::into_inner);
        if later.len() < LATER_CAPACITY && !self.tx.is_closed() {
            later.push(item);
        } else {
            drop(later);
            self.health.deferred_lost(1);
        }
    }

    /// Waits until every operation queued so far is done, at most `timeout`.
    pub(crate) async fn drain(&self, timeout: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        tokio::time::timeout(timeout, async {
            self.tx.send(Op::Drain(done)).await.is_ok() && wait.await.is_ok()
        })
        .await
        .unwrap_or(false)
    }
}

/// The receiving side of the store queue, until its task is spawned.
#[derive(Debug)]
pub(super) struct Receiver(mpsc::Receiver<Op>);

/// What the task works with, besides its queue.
#[derive(Debug)]
pub(super) struct StoreTask {
    pub(super) store: Arc<dyn SessionStore>,
    pub(super) health: Arc<Health>,
    pub(super) queue: StoreQueue,
    pub(super) ttl: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) later_pause: LaterPause,
}

/// The task ends: its layer's state was dropped, or its runtime shut down
/// (a process that exits after [`Trodo::shutdown`](crate::Trodo::shutdown)).
/// What still waits for the store is lost then, and counted.
impl Drop for StoreTask {
    fn drop(&mut self) {
        self.queue.lose_kept();
    }
}

/// When what waits for the store is tried next: [`LATER_PAUSE`] after a
/// round of tries the store answered, twice the last pause after a round
/// it failed any of, up to [`LATER_PAUSE_MAX`]. A failed call makes the
/// store skipped for a second, but any call that succeeds meanwhile lifts
/// that: a claim the store always fails is not tried every few
/// milliseconds for good. The pause runs from the end of the last round,
/// whatever wakes the task meanwhile (batches, ticks of its sweep); a
/// sweep does not wait for it (see [`StoreTask::sweep`]).
#[derive(Debug, Default)]
pub(super) struct LaterPause(Mutex<Pause>);

#[derive(Debug, Clone, Copy)]
struct Pause {
    /// How long after the last round the next one waits.
    length: Duration,
    /// When the last round ended; `None` before the first.
    last_round: Option<Instant>,
}

impl Default for Pause {
    fn default() -> Self {
        Self {
            length: LATER_PAUSE,
            last_round: None,
        }
    }
}

impl LaterPause {
    fn pause(&self) -> Pause {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pause before the next round.
    fn get(&self) -> Duration {
        self.pause().length
    }

    /// Whether the last round of tries failed none.
    fn is_shortest(&self) -> bool {
        self.get() == LATER_PAUSE
    }

    /// When the next round may be: now, before the first.
    fn due(&self) -> Instant {
        let pause = self.pause();
        pause
            .last_round
            .map_or_else(Instant::now, |at| at + pause.length)
    }

    /// Whether a round may be now: the last one failed none, or its pause
    /// has passed.
    fn may_try(&self) -> bool {
        self.is_shortest() || self.due() <= Instant::now()
    }

    /// A round ended: back to the shortest pause, or twice as long.
    fn after_round(&self, failed: bool) {
        let mut pause = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        pause.length = if failed {
            (pause.length * 2).min(LATER_PAUSE_MAX)
        } else {
            LATER_PAUSE
        };
        pause.last_round = Some(Instant::now());
    }
}

impl StoreTask {
    /// Applies queued operations and sweeps the store's idle runs until the
    /// layer's state is dropped; after shutdown it no longer sweeps.
    pub(super) async fn run(self, receiver: Receiver, shared: Weak<Shared>) {
        let Receiver(mut rx) = receiver;
        let mut sweep = tokio::time::interval(sweep_interval(self.idle_timeout));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.tick().await;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            // Unbiased: a queue that never empties must not starve the sweep.
            tokio::select! {
                received = rx.recv_many(&mut batch, BATCH) => {
                    let Some(shared) = shared.upgrade().filter(|_| received > 0) else {
                        return;
                    };
                    self.apply(&shared, std::mem::take(&mut batch)).await;
                }
                _ = sweep.tick() => {
                    let Some(shared) = shared.upgrade() else { return };
                    if !shared.is_shut_down() {
                        self.sweep(&shared).await;
                    }
                }
                // What waits for the store is tried as soon as its pause
                // has passed and the store may be asked again, not at the
                // next batch or sweep only. At a time, not after a sleep:
                // whatever wakes the task meanwhile does not put it off.
                () = tokio::time::sleep_until(self.next_try()), if self.queue.keeps_any() => {
                    let Some(shared) = shared.upgrade() else { return };
                    self.retry_kept(&shared).await;
                }
            }
        }
    }

    /// When what waits for the store is tried next: once its pause has
    /// passed and the store may be asked.
    fn next_try(&self) -> Instant {
        let asked = Instant::now() + self.health.skipped_for();
        self.later_pause.due().max(asked)
    }

    /// Runs a store operation if the store is not being skipped, within
    /// [`OPERATION_TIMEOUT`], and notes how it went (see [`call`]).
    async fn call<'a, T>(
        &self,
        operation: &'static str,
        work: impl FnOnce() -> StoreFuture<'a, T>,
    ) -> Option<T> {
        call(&self.health, operation, work).await
    }

    /// Applies a batch: runs opened, then aggregates (added up per run),
    /// then the rest, each kind concurrently; drains are answered last.
    /// Claims and openings kept for later go first, unless they wait out
    /// a longer pause.
    async fn apply(&self, shared: &Shared, ops: Vec<Op>) {
        // Not while the store keeps failing them: then they wait their
        // pause (requests bring batches all the time).
        if self.later_pause.may_try() {
            self.retry_kept(shared).await;
        }
        let (mut opens, mut records, mut rest, mut drained) =
            (Vec::new(), Records::default(), Vec::new(), Vec::new());
        for op in ops {
            match op {
                Op::Register(run) => opens.push(run),
                Op::Record {
                    run_id,
                    delta,
                    last,
                } => records.add(run_id, delta, last),
                Op::Drain(done) => drained.push(done),
                Op::Late(late) => rest.push(late),
            }
        }
        all(opens.iter().map(|run| self.register(shared, run))).await;
        let records = records.take();
        let recorded = all(records.iter().map(|&(run_id, delta, last)| {
            self.call("record", move || {
                self.store.record(run_id, delta, last.0, self.ttl)
            })
        }))
        .await;
        for ((run_id, ..), recorded) in records.iter().zip(&recorded) {
            match recorded {
                None => self.health.dropped(),
                // Not open in the store: another worker ended it (or the
                // store lost it). This process asks, if it holds the run.
                Some(false) => shared.sessions.ask_store_about(*run_id),
                Some(true) => {}
            }
        }
        all(rest.into_iter().map(|late| self.run_late(shared, late))).await;
        for done in drained {
            let _ = done.send(());
        }
    }

    /// Opens a run of `start_run` in the store; then it is shared here.
    /// If the store cannot say, it is opened later.
    /// Returns whether the store answered.
    async fn register(&self, shared: &Shared, run: &NewRun) -> bool {
        let opened = self.call("open", || self.store.open(run, self.ttl)).await;
        if is_opened(opened, run.run_id) {
            shared.sessions.mark_shared(run.run_id);
        } else if opened.is_none() {
            self.queue.register_later(run.clone());
        }
        opened.is_some()
    }

    /// Tries what waits for the store (claims, then openings), if it may
    /// be asked now: a round, after which what the store failed waits
    /// longer for its next (see [`LaterPause`]).
    async fn retry_kept(&self, shared: &Shared) {
        if !self.health.available() {
            return;
        }
        let mut failed = self.claim_unclaimed().await;
        let opens = self.unregistered(shared);
        let retrying = &Retrying::new(&self.health, 0, opens.len());
        let register = |run| async move {
            let answered = self.register(shared, run).await;
            retrying.settled(0, 1);
            answered
        };
        let answered = all(opens.iter().map(register)).await;
        failed += answered.iter().filter(|answered| !**answered).count();
        self.later_pause.after_round(failed > 0);
    }

    /// The runs of `start_run` the store could not open, if it may be
    /// asked now: those this process still holds (one that ended here
    /// meanwhile ended with this process's totals, through a claim that
    /// the store now remembers).
    fn unregistered(&self, shared: &Shared) -> Vec<NewRun> {
        if !self.health.available() {
            return Vec::new();
        }
        let mut runs = take(&self.queue.unregistered);
        runs.retain(|run| shared.sessions.holds(run.run_id));
        runs
    }

    /// Activity of a key's run, and end claims.
    async fn run_late(&self, shared: &Shared, late: Late) {
        match late {
            Late::TouchKey { key, at } => {
                let touched = match self.call("find", || self.store.find(&key)).await {
                    Some(Some(run_id)) => {
                        let touch = || {
                            self.store
                                .record(run_id, RunTotals::default(), at.0, self.ttl)
                        };
                        self.call("record", touch).await.is_some()
                    }
                    // The store holds no run under the key: nothing to touch.
                    Some(None) => true,
                    None => false,
                };
                if !touched {
                    self.health.dropped();
                }
            }
            Late::End(op) => self.end(shared, *op).await,
            Late::AskIfEnded(run) => {
                // Opening it again writes nothing for a run that is open
                // (or was claimed), unlike a claim; a run the store lost is
                // held again, one it holds is renewed. A run this process
                // let go of meanwhile is not opened again.
                if !shared.sessions.holds(run.run_id) {
                    return;
                }
                match self.call("open", || self.store.open(&run, self.ttl)).await {
                    Some(Opened::Opened) => shared.sessions.restored_in_store(run.run_id),
                    Some(Opened::Existing(run_id)) if run_id == run.run_id => {
                        // Still open: renewed, so that a run held here
                        // never expires in the store while it idles.
                        let renew = || {
                            self.store.record(
                                run_id,
                                RunTotals::default(),
                                run.last_activity,
                                self.ttl,
                            )
                        };
                        if self.call("record", renew).await.is_none() {
                            self.health.dropped();
                        }
                    }
                    Some(Opened::Ended) => {
                        shared
                            .sessions
                            .ended_elsewhere(run.run_id, &shared.exporter);
                    }
                    // Its key has another run now: opened after another
                    // worker ended this one, or after the store lost it.
                    Some(Opened::Existing(_)) => {
                        shared
                            .sessions
                            .replaced_in_store(run.run_id, &shared.exporter);
                    }
                    // Failed or skipped: the run stays held, and the next
                    // sweep asks again.
                    None => self.health.dropped(),
                }
            }
            // Dropped if the store is skipped or fails: the run it holds
            // for the key is then ended by a sweep, as idle.
            Late::EndKey { key, via, at } => {
                let claim = match self.call("find", || self.store.find(&key)).await {
                    Some(Some(run_id)) => {
                        let claim = || self.store.claim(run_id, None, self.ttl);
                        self.call("claim", claim).await
                    }
                    // The store holds no run under the key: nothing to end.
                    Some(None) => return,
                    None => None,
                };
                match claim {
                    Some(Claim::Won(run)) => {
                        self.health.ended();
                        shared.sessions.finish_claimed(
                            run.run_id,
                            at,
                            via.into(),
                            run.totals.into(),
                            &shared.exporter,
                        );
                    }
                    Some(Claim::Active | Claim::AlreadyEnded | Claim::Unknown) => {}
                    None => self.health.dropped(),
                }
            }
        }
    }

    /// Claims a run's end: the winner sends it with the store's totals; a
    /// store that cannot say leaves it to this process's totals.
    async fn end(&self, shared: &Shared, op: EndOp) {
        let claim = self.call("claim", || {
            self.store.claim(op.run_id, op.idle_before, self.ttl)
        });
        match claim.await {
            Some(Claim::Won(run)) => {
                self.health.ended();
                // An idle run ended at its last activity, wherever it was.
                let at = match op.idle_before {
                    Some(_) => op.at.max(Timestamp(run.last_activity)),
                    None => op.at,
                };
                let mut totals = run.totals;
                if !op.local_in_store {
                    totals.add(&op.local);
                }
                shared.sessions.finish_claimed(
                    op.run_id,
                    at,
                    op.ending,
                    totals.into(),
                    &shared.exporter,
                );
            }
            Some(Claim::Active | Claim::AlreadyEnded) => {}
            // The claim is remembered: no sweep can end the run now.
            Some(Claim::Unknown) => {
                shared.sessions.ended_here(op.run_id);
                self.queue.end_locally(op, &shared.exporter);
            }
            None => {
                shared.sessions.ended_here(op.run_id);
                self.queue.end_unclaimed(op, &shared.exporter);
            }
        }
    }

    /// Claims, if the store may be asked, the runs that ended here while it
    /// could not be: their `end` is out, so a claim won sends nothing, and
    /// no sweep (this process's or another's) ends them again. A claim the
    /// store does not answer is kept for the next time.
    /// Returns how many the store did not answer.
    async fn claim_unclaimed(&self) -> usize {
        if !self.health.available() {
            return 0;
        }
        let runs = take(&self.queue.unclaimed);
        let retrying = Retrying::new(&self.health, runs.len(), 0);
        let mut failed = 0;
        // As many at once as a sweep claims; once the store fails, the
        // rest are kept without asking it.
        for runs in runs.chunks(SWEEP_BATCH) {
            let claims = all(runs.iter().map(|&(run_id, idle_before)| {
                self.call("claim", move || {
                    self.store.claim(run_id, idle_before, self.ttl)
                })
            }))
            .await;
            for (&(run_id, idle_before), claim) in runs.iter().zip(claims) {
                match claim {
                    Some(Claim::Won(_)) => tracing::debug!(
                        %run_id,
                        "trodo: run ended here without the store claimed there; no second end"
                    ),
                    Some(_) => {}
                    None => {
                        failed += 1;
                        self.queue.claim_later(run_id, idle_before);
                    }
                }
            }
            retrying.settled(runs.len(), 0);
        }
        failed
    }

    /// Ends every run the store holds that is idle for the idle timeout,
    /// whichever worker it was opened on: one claim per batch.
    async fn sweep(&self, shared: &Shared) {
        // Before the store's idle runs are claimed: a run that ended here
        // without the store is one of them, perhaps.
        self.retry_kept(shared).await;
        let idle_before = SystemTime::now() - self.idle_timeout;
        loop {
            let claimed = self.call("claim_idle", || {
                self.store.claim_idle(idle_before, SWEEP_BATCH, self.ttl)
            });
            let Some(runs) = claimed.await else { return };
            let count = runs.len();
            for run in runs {
                self.health.ended();
                shared.sessions.finish_claimed(
                    run.run_id,
                    Timestamp(run.last_activity),
                    ClosedVia::IdleTimeout.into(),
                    run.totals.into(),
                    &shared.exporter,
                );
            }
            if count < SWEEP_BATCH {
                break;
            }
        }
        self.health.swept();
    }
}

/// Runs a store operation unless the store is being skipped, within
/// [`OPERATION_TIMEOUT`], and notes how it went in `health`.
///
/// `work` makes the operation's future, and is called only when the store
/// is not skipped: a store may do its work as its method is called (the
/// memory store does), and a claim done while skipped would be lost.
pub(super) async fn call<'a, T>(
    health: &Health,
    operation: &'static str,
    work: impl FnOnce() -> StoreFuture<'a, T>,
) -> Option<T> {
    if !health.available() {
        return None;
    }
    match tokio::time::timeout(OPERATION_TIMEOUT, work()).await {
        Ok(Ok(value)) => {
            health.succeeded();
            Some(value)
        }
        Ok(Err(error)) => {
            health.failed(operation, &error);
            None
        }
        Err(_) => {
            health.failed(operation, &"timed out");
            None
        }
    }
}

/// Whether nothing is kept for later.
fn is_empty<T>(later: &Mutex<Vec<T>>) -> bool {
    later
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_empty()
}

/// Counts and logs claims and openings that waited for the store and
/// are lost: its task ended, or a retry of them was cut short.
fn lose_waiting(health: &Health, claims: usize, openings: usize) {
    if claims + openings == 0 {
        return;
    }
    health.deferred_lost(u64::try_from(claims + openings).unwrap_or(u64::MAX));
    tracing::warn!(
        claims,
        openings,
        "trodo: the session store task ended with claims of runs ended without the store, \
         or openings of runs of start_run, still waiting for it: they are lost (a sweep \
         may end such a run a second time; see StoreCounters::deferred_lost)"
    );
}

/// Claims and openings a retry took out of what waits for the store and
/// has not settled yet (done, or kept again). If the retry is cut short
/// (its runtime shut down while the store was being asked), they are
/// counted lost as it is dropped, like those still waiting.
struct Retrying<'a> {
    health: &'a Health,
    claims: AtomicUsize,
    openings: AtomicUsize,
}

impl<'a> Retrying<'a> {
    fn new(health: &'a Health, claims: usize, openings: usize) -> Self {
        Self {
            health,
            claims: AtomicUsize::new(claims),
            openings: AtomicUsize::new(openings),
        }
    }

    /// `claims` and `openings` settled.
    fn settled(&self, claims: usize, openings: usize) {
        self.claims.fetch_sub(claims, Ordering::Relaxed);
        self.openings.fetch_sub(openings, Ordering::Relaxed);
    }
}

impl Drop for Retrying<'_> {
    fn drop(&mut self) {
        let (claims, openings) = (self.claims.get_mut(), self.openings.get_mut());
        lose_waiting(self.health, *claims, *openings);
    }
}

/// Takes what is kept for later.
fn take<T>(later: &Mutex<Vec<T>>) -> Vec<T> {
    std::mem::take(&mut *later.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Runs every future of `work` at once and waits for all of them.
async fn all<F: Future>(work: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut work: Vec<Pin<Box<F>>> = work.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = work.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut finished = true;
        for (future, output) in work.iter_mut().zip(&mut done) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => finished = false,
                }
            }
        }
        if finished {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

/// Whether an open left `run_id` open under its key.
pub(super) fn is_opened(opened: Option<Opened>, run_id: Uuid) -> bool {
    match opened {
        Some(Opened::Opened) => true,
        Some(Opened::Existing(id)) => id == run_id,
        Some(Opened::Ended) | None => false,
    }
}

/// Aggregates of several runs, added up per run in the order first seen.
#[derive(Debug, Default)]
struct Records {
    order: Vec<(Uuid, RunTotals, Timestamp)>,
    index: HashMap<Uuid, usize>,
}

impl Records {
    fn add(&mut self, run_id: Uuid, delta: RunTotals, last: Timestamp) {
        match self.index.get(&run_id) {
            Some(&i) => {
                let (_, sum, latest) = &mut self.order[i];
                sum.add(&delta);
                *latest = (*latest).max(last);
            }
            None => {
                self.index.insert(run_id, self.order.len());
                self.order.push((run_id, delta, last));
            }
        }
    }

    fn take(&mut self) -> Vec<(Uuid, RunTotals, Timestamp)> {
        self.index.clear();
        std::mem::take(&mut self.order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ClaimedRun, MemoryStore};
    use std::sync::atomic::AtomicBool;

    const WAIT: Duration = Duration::from_secs(5);

    /// A store task on `store`, not running yet, and its queue's receiver.
    fn task(store: Arc<dyn SessionStore>) -> (StoreTask, Receiver) {
        let health = Arc::new(Health::default());
        let (queue, receiver) = StoreQueue::new(Arc::clone(&health));
        let task = StoreTask {
            store,
            health,
            queue,
            ttl: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(60),
            later_pause: LaterPause::default(),
        };
        (task, receiver)
    }

    /// A memory store whose claims fail while told to, and which notes
    /// when each claim was asked; its claims or openings never answer
    /// while told to hang.
    #[derive(Debug, Default)]
    struct FailingClaims {
        inner: MemoryStore,
        fail: AtomicBool,
        asked: Mutex<Vec<Instant>>,
        hang_claims: AtomicBool,
        hang_opens: AtomicBool,
        /// Calls left hanging so far.
        hanging: AtomicUsize,
    }

    impl FailingClaims {
        fn fail(&self, fail: bool) {
            self.fail.store(fail, Ordering::SeqCst);
        }

        /// A call that never answers, if `hang` is set.
        fn hang<'a, T: Send + 'a>(&self, hang: &AtomicBool) -> Option<StoreFuture<'a, T>> {
            hang.load(Ordering::SeqCst).then(|| {
                self.hanging.fetch_add(1, Ordering::SeqCst);
                Box::pin(std::future::pending()) as StoreFuture<'a, T>
            })
        }

        /// When each claim was asked, from `start`.
        fn asked_since(&self, start: Instant) -> Vec<Duration> {
            let asked = self.asked.lock().unwrap();
            asked.iter().map(|&at| at - start).collect()
        }
    }

    impl SessionStore for FailingClaims {
        fn find<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Uuid>> {
            self.inner.find(key)
        }
        fn open<'a>(&'a self, run: &'a NewRun, ttl: Duration) -> StoreFuture<'a, Opened> {
            self.hang(&self.hang_opens)
                .unwrap_or_else(|| self.inner.open(run, ttl))
        }
        fn record(
            &self,
            run_id: Uuid,
            delta: RunTotals,
            last_activity: SystemTime,
            ttl: Duration,
        ) -> StoreFuture<'_, bool> {
            self.inner.record(run_id, delta, last_activity, ttl)
        }
        fn claim(
            &self,
            run_id: Uuid,
            idle_before: Option<SystemTime>,
            ttl: Duration,
        ) -> StoreFuture<'_, Claim> {
            self.asked.lock().unwrap().push(Instant::now());
            if let Some(hanging) = self.hang(&self.hang_claims) {
                return hanging;
            }
            if self.fail.load(Ordering::SeqCst) {
                return Box::pin(async { Err("connection refused".into()) });
            }
            self.inner.claim(run_id, idle_before, ttl)
        }
        fn claim_idle(
            &self,
            idle_before: SystemTime,
            limit: usize,
            ttl: Duration,
        ) -> StoreFuture<'_, Vec<ClaimedRun>> {
            self.inner.claim_idle(idle_before, limit, ttl)
        }
    }

    /// Past the claims (and, apart, the openings) that may wait for the
    /// store, one more is lost: counted as such, not as an operation the
    /// queue or the store dropped.
    #[test]
    fn what_waits_past_its_bound_is_counted_lost() {
        let (task, _receiver) = task(Arc::new(MemoryStore::new()));
        let queue = &task.queue;
        let opening = || NewRun::new("key", Uuid::new_v4(), SystemTime::now());
        for _ in 0..LATER_CAPACITY {
            queue.claim_later(Uuid::new_v4(), None);
            queue.register_later(opening());
        }
        assert_eq!(task.health.snapshot().deferred_lost, 0);

        queue.claim_later(Uuid::new_v4(), None);
        queue.register_later(opening());
        let counters = task.health.snapshot();
        assert_eq!((counters.deferred_lost, counters.dropped), (2, 0));
    }

    /// Claims and openings still waiting for the store as its task ends
    /// (the layer's state dropped, or the runtime shut down, while the
    /// store is skipped) are lost: counted.
    #[tokio::test(start_paused = true)]
    async fn what_still_waits_as_the_task_ends_is_counted_lost() {
        for runtime_shut_down in [false, true] {
            let (task, receiver) = task(Arc::new(MemoryStore::new()));
            let health = Arc::clone(&task.health);
            health.failed("claim", &"connection refused");
            task.queue.claim_later(Uuid::new_v4(), None);
            task.queue.claim_later(Uuid::new_v4(), None);
            let opening = NewRun::new("key", Uuid::new_v4(), SystemTime::now());
            task.queue.register_later(opening);
            let shared = Shared::switched_off();
            let queue = task.queue.clone();
            let running = tokio::spawn(task.run(receiver, Arc::downgrade(&shared)));
            tokio::task::yield_now().await;
            assert_eq!(health.snapshot().deferred_lost, 0, "the task waits");

            if runtime_shut_down {
                running.abort();
                assert!(running.await.unwrap_err().is_cancelled());
            } else {
                drop(shared);
                running.await.unwrap();
            }
            let counters = health.snapshot();
            assert_eq!((counters.deferred_lost, counters.dropped), (3, 0));
            // What would wait for the task from now on is lost at once.
            queue.claim_later(Uuid::new_v4(), None);
            assert_eq!(health.snapshot().deferred_lost, 4);
        }
    }

    /// Claims and openings a retry took out, and was asking the store
    /// about when its runtime shut down, are counted lost, with those
    /// still waiting; those it settled are not. Claims are asked first:
    /// while they hang, the openings still wait.
    #[tokio::test(start_paused = true)]
    async fn what_a_retry_cut_short_took_out_is_counted_lost() {
        // What hangs, the calls asked before the shutdown, and the lost.
        for (hang, asked, lost) in [("claims", 2, 2 + 3), ("opens", 3, 3), ("nothing", 5, 0)] {
            let store = Arc::new(FailingClaims::default());
            let (task, receiver) = task(store.clone());
            let health = Arc::clone(&task.health);
            let shared = Shared::switched_off();
            task.queue.claim_later(Uuid::new_v4(), None);
            task.queue.claim_later(Uuid::new_v4(), None);
            // Openings are retried only for runs this process holds.
            for key in ["a", "b", "c"] {
                let run_id = Uuid::new_v4();
                let run = crate::wire::Run::new(run_id, "test".to_owned(), Timestamp::now());
                shared.sessions.open_pending(key, run);
                task.queue
                    .register_later(NewRun::new(key, run_id, SystemTime::now()));
            }
            match hang {
                "claims" => store.hang_claims.store(true, Ordering::SeqCst),
                "opens" => store.hang_opens.store(true, Ordering::SeqCst),
                _ => {}
            }
            let asked_so_far = || {
                let hanging = store.hanging.load(Ordering::SeqCst);
                hanging as u64 + health.snapshot().ok
            };
            let running = tokio::spawn(task.run(receiver, Arc::downgrade(&shared)));
            while asked_so_far() < asked {
                tokio::task::yield_now().await;
            }
            assert_eq!(
                health.snapshot().deferred_lost,
                0,
                "{hang}: the retry waits"
            );

            running.abort();
            assert!(running.await.unwrap_err().is_cancelled());
            let counters = health.snapshot();
            assert_eq!(
                (counters.deferred_lost, counters.dropped),
                (lost, 0),
                "{hang}"
            );
        }
    }

    /// The memory store claims as `claim` is called, not as its future is
    /// polled: while the store is skipped, no claim may be made and lost.
    #[tokio::test]
    async fn a_skipped_store_is_not_asked_at_all() {
        let store = MemoryStore::new();
        let ttl = Duration::from_secs(60);
        let run = NewRun::new("key", Uuid::new_v4(), SystemTime::now());
        assert_eq!(store.open(&run, ttl).await.unwrap(), Opened::Opened);
        let health = Health::default();
        health.failed("record", &"connection refused");

        let skipped = call(&health, "claim", || store.claim(run.run_id, None, ttl)).await;
        assert_eq!(skipped, None);
        let skipped = call(&health, "claim_idle", || {
            store.claim_idle(SystemTime::now(), SWEEP_BATCH, ttl)
        })
        .await;
        assert_eq!(skipped, None);
        assert_eq!(health.snapshot().ok, 0);

        let later = store.claim(run.run_id, None, ttl).await.unwrap();
        assert!(
            matches!(&later, Claim::Won(claimed) if claimed.run_id == run.run_id),
            "the run is still the store's to claim: {later:?}"
        );
    }

    #[test]
    fn what_the_store_keeps_failing_waits_longer_each_round() {
        let pause = LaterPause::default();
        assert_eq!(pause.get(), LATER_PAUSE);
        for expected in [20, 40, 80] {
            pause.after_round(true);
            assert_eq!(pause.get(), Duration::from_millis(expected));
            assert!(!pause.is_shortest());
        }
        for _ in 0..20 {
            pause.after_round(true);
        }
        assert_eq!(pause.get(), LATER_PAUSE_MAX);
        pause.after_round(false);
        assert!(pause.is_shortest());
    }

    /// A run ended here on its idle timeout while the store failed is
    /// claimed later as an idle run: not if another worker kept it busy.
    #[tokio::test]
    async fn a_kept_idle_claim_claims_only_an_idle_run() {
        let store = Arc::new(MemoryStore::new());
        let (task, _receiver) = task(store.clone());
        let now = SystemTime::now();
        let busy = NewRun::new("busy", Uuid::new_v4(), now);
        let idle = NewRun::new("idle", Uuid::new_v4(), now - Duration::from_secs(120));
        for run in [&busy, &idle] {
            assert_eq!(store.open(run, task.ttl).await.unwrap(), Opened::Opened);
        }
        let idle_before = Some(now - Duration::from_secs(60));
        task.queue.claim_later(busy.run_id, idle_before);
        task.queue.claim_later(idle.run_id, idle_before);
        assert_eq!(task.claim_unclaimed().await, 0);

        let ttl = task.ttl;
        let busy_claim = store.claim(busy.run_id, None, ttl).await.unwrap();
        assert!(matches!(busy_claim, Claim::Won(_)), "{busy_claim:?}");
        let idle_claim = store.claim(idle.run_id, None, ttl).await.unwrap();
        assert!(matches!(idle_claim, Claim::AlreadyEnded), "{idle_claim:?}");
    }

    /// The end of a run of a key this process does not hold (a DELETE of
    /// another worker's session) that the store fails, or that is not
    /// tried while the store is skipped, is dropped, and counted: the
    /// store's sweep ends that run later, as idle.
    #[tokio::test]
    async fn an_end_of_a_key_the_store_does_not_claim_is_counted_dropped() {
        let store = Arc::new(FailingClaims::default());
        let (task, _receiver) = task(store.clone());
        let shared = Shared::switched_off();
        let run = NewRun::new("elsewhere", Uuid::new_v4(), SystemTime::now());
        assert_eq!(
            store.inner.open(&run, task.ttl).await.unwrap(),
            Opened::Opened
        );
        let end_key = || Late::EndKey {
            key: run.key.clone(),
            via: ClosedVia::SessionDeleted,
            at: Timestamp::now(),
        };
        store.fail(true);
        task.run_late(&shared, end_key()).await;
        assert_eq!(task.health.snapshot().dropped, 1, "the claim failed");
        assert!(!task.health.available());
        task.run_late(&shared, end_key()).await;
        let counters = task.health.snapshot();
        assert_eq!(
            (counters.dropped, counters.failed, counters.ended),
            (2, 1, 0),
            "skipped: not asked"
        );
        assert_eq!(store.asked.lock().unwrap().len(), 1);

        let claim = store.inner.claim(run.run_id, None, task.ttl).await.unwrap();
        assert!(matches!(claim, Claim::Won(_)), "still open: {claim:?}");
    }

    /// A claim kept for the store, which the store keeps failing, is
    /// tried less and less often: neither batches nor the ticks of the
    /// sweep (which, before shutdown, tries it first) try it sooner or
    /// put its try off. Once the store answers, its next try claims it.
    #[tokio::test(start_paused = true)]
    async fn a_kept_claim_the_store_keeps_failing_is_tried_less_and_less_often() {
        let store = Arc::new(FailingClaims::default());
        let (task, receiver) = task(store.clone());
        let (health, queue, ttl) = (Arc::clone(&task.health), task.queue.clone(), task.ttl);
        let shared = Shared::switched_off();
        let trodo = crate::Trodo {
            shared: Arc::clone(&shared),
        };
        assert!(trodo.shutdown(WAIT).await, "no sweep tries it");
        let run = NewRun::new("ended here", Uuid::new_v4(), SystemTime::now());
        let other = NewRun::new("busy", Uuid::new_v4(), SystemTime::now());
        for run in [&run, &other] {
            assert_eq!(store.inner.open(run, ttl).await.unwrap(), Opened::Opened);
        }
        store.fail(true);
        queue.claim_later(run.run_id, None);
        let start = Instant::now();
        let running = tokio::spawn(task.run(receiver, Arc::downgrade(&shared)));

        // A second at least between tries while each failure skips the
        // store for a second, then twice the last pause, up to 30 s.
        let ms = Duration::from_millis;
        let mut expected = vec![Duration::ZERO];
        for pause in [
            1000, 1000, 1000, 1000, 1000, 1000, 1280, 2560, 5120, 10_240, 20_480,
        ] {
            expected.push(*expected.last().unwrap() + ms(pause));
        }
        tokio::time::sleep_until(start + ms(50_000)).await;
        assert_eq!(store.asked_since(start), expected);

        // A batch while the claim waits out its pause neither tries it nor
        // puts its try off; the store answers at that try.
        queue.record(other.run_id, RunTotals::default(), Timestamp::now());
        assert!(queue.drain(WAIT).await);
        store.fail(false);
        tokio::time::sleep_until(start + ms(200_000)).await;
        expected.push(*expected.last().unwrap() + ms(30_000));
        assert_eq!(store.asked_since(start), expected, "tried once more");
        let claim = store.inner.claim(run.run_id, None, ttl).await.unwrap();
        assert_eq!(claim, Claim::AlreadyEnded, "claimed there");
        let counters = health.snapshot();
        assert_eq!(
            (counters.failed, counters.ok),
            (12, 2),
            "the tries that failed; the record and the claim that did not"
        );

        drop((trodo, shared));
        running.await.unwrap();
    }

    #[test]
    fn records_of_one_run_add_up_in_first_seen_order() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let one = RunTotals {
            span_count: 1,
            cost: 0.5,
            ..RunTotals::default()
        };
        let t = |s| Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        let mut records = Records::default();
        records.add(a, one, t(5));
        records.add(b, one, t(1));
        records.add(a, one, t(3));
        let taken = records.take();
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].0, a);
        assert_eq!((taken[0].1.span_count, taken[0].1.cost), (2, 1.0));
        assert_eq!(taken[0].2, t(5), "activity never moves back");
        assert_eq!(taken[1].0, b);
        assert!(records.take().is_empty());
    }
}
