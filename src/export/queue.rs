//! The bounded delivery queue: one FIFO per run, a ready set across runs,
//! and the rule for what to drop when full.
//!
//! # Order
//! Each run has its own FIFO, and at most one call per run is in flight: a
//! batch leaves the front of its run's FIFO and, if it must be tried again,
//! goes back to the front. So a run's `start` is delivered before its spans
//! and its spans before its `end`, whatever fails and however often. Runs do
//! not wait for each other: a run whose call is backing off is simply not in
//! the ready set, and the other runs go on.
//!
//! # Bounds
//! Records queued or in flight are bounded in number and in JSON bytes (a
//! span not yet serialized counts by its estimate). When a new record does
//! not fit, the oldest queued *span* (of any run) is dropped, then the next
//! oldest, until it fits. Starts, ends and one-shot runs are kept while any
//! span can go instead: losing one costs a whole run (spans without a start have nothing to
//! attach to; a run without its end never closes). Only when no span is
//! queued is the oldest of them dropped; a dropped start takes its run's
//! other records with it, and records of that run that arrive later are
//! dropped too, until its end. Records in flight are never dropped to make
//! room; if only they are left, the new record is dropped instead. Dropping
//! the oldest (not the newest) keeps what is most recent, and since a run's
//! FIFO only loses records, never reorders them, what is left of a run is
//! still delivered in order.
//!
//! # When records are sent
//! A record is *due* once it has waited [`flush_interval`] or once one run
//! has [`flush_items`] records waiting (a full batch: a call carries one
//! run's records), whichever comes first; a flush or a shutdown makes every
//! record due at once, and so does a queue half full. Only runs whose front
//! record is due are handed to the worker, oldest front first. Counting per
//! run rather than over all runs keeps calls full when many sessions are
//! active: with 32 busy sessions a global count sent three spans per call.
//!
//! # Waits
//! A run whose call failed waits out its back-off; a 429 pauses every run
//! until its `Retry-After`. Shutdown ends both at once: it is the records'
//! last chance, and the API may be back. A failure after that (a 429 too)
//! makes only its own run wait again.
//!
//! [`flush_interval`]: super::DeliveryOptions::flush_interval
//! [`flush_items`]: super::DeliveryOptions::flush_items

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use tokio::time::Instant;
use uuid::Uuid;

use super::DeliveryOptions;
use super::batch::Batch;
use super::counters::{DropReason, Stats};
use super::item::{Encoded, Item, ItemKind, Seq};
use super::retry::RetryState;

/// Where a run's FIFO stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    /// May send: in the ready set while it has records.
    Ready,
    /// A call of this run is in flight.
    InFlight,
    /// Backing off after a failure until then.
    Waiting(Instant),
}

/// The records of one run not in flight, oldest first.
#[derive(Debug)]
struct RunQueue {
    items: VecDeque<Item>,
    state: RunState,
    /// The key under which it sits in the ready set, if it does.
    ready_key: Option<Seq>,
    /// The failures so far of the call at its front.
    retry: RetryState,
    /// Most spans per call, halved on each 413; back to the default once
    /// the FIFO empties and the run is forgotten.
    max_items: usize,
}

/// The queue shared by the request path (which pushes) and the worker
/// (which takes batches and reports how they went).
#[derive(Debug)]
pub(crate) struct Queue {
    options: DeliveryOptions,
    runs: HashMap<Uuid, RunQueue>,
    /// Runs in state `Ready` with records, by the place of their front record.
    ready: BTreeSet<(Seq, Uuid)>,
    /// Runs backing off, by the end of their wait.
    waiting: BTreeSet<(Instant, Uuid)>,
    /// After a 429: no batch is taken before then.
    paused_until: Option<Instant>,
    /// Queued spans (not in flight), oldest first: what goes when full.
    spans_by_age: BTreeMap<Seq, Uuid>,
    /// Queued starts, ends and one-shot runs (not in flight), oldest first.
    marks_by_age: BTreeMap<Seq, Uuid>,
    /// The first record of every batch in flight.
    in_flight: BTreeSet<Seq>,
    /// Runs whose start was dropped, with why: their later records follow it.
    dead: HashMap<Uuid, DropReason>,
    /// `dead` in insertion order, to bound it (with the ids of runs whose
    /// end came since: at most as many as those still dead).
    dead_order: VecDeque<Uuid>,
    /// Records queued or in flight.
    items: usize,
    /// Their JSON bytes (a span not yet serialized: its estimate).
    bytes: usize,
    next_seq: Seq,
    /// Records before this place may be sent.
    due: Seq,
    /// When the oldest record that is not yet due arrived.
    undue_since: Option<Instant>,
    closed: bool,
}

impl Queue {
    /// An empty queue with these bounds.
    pub(crate) fn new(options: DeliveryOptions) -> Self {
        Self {
            options,
            runs: HashMap::new(),
            ready: BTreeSet::new(),
            waiting: BTreeSet::new(),
            paused_until: None,
            spans_by_age: BTreeMap::new(),
            marks_by_age: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            dead: HashMap::new(),
            dead_order: VecDeque::new(),
            items: 0,
            bytes: 0,
            next_seq: 0,
            due: 0,
            undue_since: None,
            closed: false,
        }
    }

    /// Records queued or in flight, and their JSON bytes (or estimates).
    pub(crate) fn size(&self) -> (usize, usize) {
        (self.items, self.bytes)
    }

    /// The place the next record will get: every record before it was pushed already.
    pub(crate) fn next_seq(&self) -> Seq {
        self.next_seq
    }

    /// The place of the oldest record still queued or in flight, or
    /// [`next_seq`](Self::next_seq) if none: every record before it is
    /// delivered or dropped. It never goes down.
    pub(crate) fn low_watermark(&self) -> Seq {
        [
            self.spans_by_age.keys().next(),
            self.marks_by_age.keys().next(),
            self.in_flight.iter().next(),
        ]
        .into_iter()
        .flatten()
        .copied()
        .fold(self.next_seq, Seq::min)
    }

    /// Whether shutdown has closed it.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Queues a record at `now`, dropping the oldest to make room (see the
    /// [module docs](self)). Returns whether the worker should look now.
    pub(crate) fn push(&mut self, record: Encoded, now: Instant, stats: &Stats) -> bool {
        if self.closed {
            stats.dropped(DropReason::Shutdown, 1, "recorded after shutdown");
            return false;
        }
        if self.follows_dead_start(&record, stats) {
            return false;
        }
        let size = record.payload.bytes();
        if size > self.options.max_queue_bytes {
            self.refuse(record, DropReason::TooLarge, "larger than the queue", stats);
            return false;
        }
        while self.items >= self.options.max_queue_items
            || self.bytes + size > self.options.max_queue_bytes
        {
            if !self.evict_oldest(stats) {
                self.refuse(record, DropReason::QueueFull, "queue full", stats);
                return false;
            }
        }
        if self.follows_dead_start(&record, stats) {
            return false; // making room dropped this run's start
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let item = record.at(seq);
        let run_id = item.run_id;
        self.index(&item);
        self.items += 1;
        self.bytes += size;
        let max_items = self.options.max_batch_items;
        let run = self
            .runs
            .entry(run_id)
            .or_insert_with(|| RunQueue::new(max_items));
        run.items.push_back(item);
        let run_len = run.items.len();
        self.sync(run_id);

        let mut wake = false;
        if self.undue_since.is_none() {
            self.undue_since = Some(now);
            wake = true; // the worker learns when this record falls due
        }
        let half_full = (self.options.max_queue_items / 2).max(1) as Seq;
        if run_len >= self.options.flush_items || self.next_seq - self.due >= half_full {
            self.make_due();
            wake = true;
        }
        wake
    }

    /// Makes every record queued so far due (the flush interval passed, or a flush).
    pub(crate) fn make_due(&mut self) {
        self.due = self.due.max(self.next_seq);
        self.undue_since = None;
    }

    /// When the oldest record not yet due falls due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.undue_since.map(|t| t + self.options.flush_interval)
    }

    /// Refuses new records from now on and makes every queued one due,
    /// including those of runs backing off after a failure or paused by a
    /// 429: shutdown is their last chance, and the API may be back.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.due = Seq::MAX;
        self.undue_since = None;
        self.paused_until = None;
        if let Some(&(last, _)) = self.waiting.last() {
            self.wake_waiting(last);
        }
    }

    /// Takes the next batch to send: from the run whose front record is the
    /// oldest among the ready runs, if that record is due and no 429 pause
    /// holds.
    pub(crate) fn take_batch(&mut self) -> Option<Batch> {
        if self.paused_until.is_some() {
            return None;
        }
        let &(front, run_id) = self.ready.first()?;
        if front >= self.due {
            return None;
        }
        let max_bytes = self.options.max_batch_bytes;
        let run = self.runs.get_mut(&run_id)?;
        let first = run.items.pop_front()?;
        let kind = first.kind;
        let mut bytes = first.bytes();
        let mut items = vec![first];
        if kind == ItemKind::Span {
            while items.len() < run.max_items {
                match run.items.front() {
                    Some(next)
                        if next.kind == ItemKind::Span && bytes + next.bytes() <= max_bytes =>
                    {
                        bytes += next.bytes();
                        items.extend(run.items.pop_front());
                    }
                    _ => break,
                }
            }
        }
        run.state = RunState::InFlight;
        let batch = Batch {
            run_id,
            kind,
            items,
            retry: run.retry,
            max_items: run.max_items,
        };
        for item in &batch.items {
            self.unindex(item);
        }
        self.in_flight.insert(batch.first_seq());
        self.sync(run_id);
        Some(batch)
    }

    /// A batch was delivered: its run may send its next one. (A size limit
    /// lowered by a 413 stays until the run's FIFO empties.)
    pub(crate) fn delivered(&mut self, batch: &Batch) {
        self.release(batch);
        if let Some(run) = self.runs.get_mut(&batch.run_id) {
            run.state = RunState::Ready;
            run.retry = RetryState::default();
        }
        self.sync(batch.run_id);
    }

    /// A batch goes back to the front of its run, to be tried again after
    /// `until` (or as soon as possible), with its failures and size limit.
    pub(crate) fn retry(&mut self, batch: Batch, until: Option<Instant>) {
        self.in_flight.remove(&batch.first_seq());
        for item in &batch.items {
            self.index(item);
        }
        let run_id = batch.run_id;
        let run = self
            .runs
            .entry(run_id)
            .or_insert_with(|| RunQueue::new(batch.max_items));
        run.retry = batch.retry;
        run.max_items = batch.max_items;
        for item in batch.items.into_iter().rev() {
            run.items.push_front(item);
        }
        run.state = match until {
            Some(at) => {
                self.waiting.insert((at, run_id));
                RunState::Waiting(at)
            }
            None => RunState::Ready,
        };
        self.sync(run_id);
    }

    /// A batch is given up on for `reason`. A dropped start takes its run's
    /// other records with it.
    pub(crate) fn drop_batch(
        &mut self,
        batch: &Batch,
        reason: DropReason,
        detail: &str,
        stats: &Stats,
    ) {
        self.release(batch);
        stats.dropped(reason, batch.len(), detail);
        if let Some(run) = self.runs.get_mut(&batch.run_id) {
            run.state = RunState::Ready;
            run.retry = RetryState::default();
        }
        if batch.kind == ItemKind::Start {
            self.kill(batch.run_id, reason, stats);
        }
        self.sync(batch.run_id);
    }

    /// After a 429, or failures of every run's calls (see
    /// [`Trouble`](super::trouble::Trouble)): no batch is taken before
    /// `until` (nor before the end of a longer pause already on).
    pub(crate) fn pause(&mut self, until: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Ends the waits that ended by `now`: makes ready the runs whose
    /// back-off ended, and lifts a 429 pause.
    pub(crate) fn wake_waiting(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|until| until <= now) {
            self.paused_until = None;
        }
        while let Some(&(at, run_id)) = self.waiting.first() {
            if at > now {
                break;
            }
            self.waiting.pop_first();
            if let Some(run) = self.runs.get_mut(&run_id)
                && run.state == RunState::Waiting(at)
            {
                run.state = RunState::Ready;
            }
            self.sync(run_id);
        }
    }

    /// When the next wait (a back-off, or a 429 pause) ends.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        [self.waiting.first().map(|&(at, _)| at), self.paused_until]
            .into_iter()
            .flatten()
            .min()
    }

    /// Drops every record not in flight for `reason` (shutdown ran out of time).
    pub(crate) fn drop_queued(&mut self, reason: DropReason, stats: &Stats) {
        let queued: Vec<(Seq, Uuid)> = self
            .spans_by_age
            .iter()
            .chain(&self.marks_by_age)
            .map(|(&seq, &run)| (seq, run))
            .collect();
        for (seq, run_id) in queued {
            if self.remove_queued(run_id, seq).is_some() {
                stats.dropped(reason, 1, "not delivered before shutdown's timeout");
            }
        }
    }

    /// Delivery stopped for good: every record queued or in flight is
    /// dropped for `reason`, and the queue refuses records from now on.
    pub(crate) fn abandon_all(&mut self, reason: DropReason, detail: &str, stats: &Stats) {
        stats.dropped(reason, self.items, detail);
        let next_seq = self.next_seq;
        *self = Self {
            next_seq,
            due: next_seq,
            closed: true,
            ..Self::new(self.options.clone())
        };
    }

    /// Drops a record that never got into the queue.
    fn refuse(&mut self, record: Encoded, reason: DropReason, detail: &str, stats: &Stats) {
        stats.dropped(reason, 1, detail);
        if record.kind == ItemKind::Start {
            self.kill(record.run_id, reason, stats);
        }
    }

    /// Whether `record` belongs to a run whose start was dropped; if so it
    /// is dropped too (an end closes the matter).
    fn follows_dead_start(&mut self, record: &Encoded, stats: &Stats) -> bool {
        let Some(&reason) = self.dead.get(&record.run_id) else {
            return false;
        };
        if record.kind == ItemKind::End {
            self.dead.remove(&record.run_id);
        }
        stats.dropped(reason, 1, "its run's start was dropped");
        true
    }

    /// The run's start was dropped for `reason`: drop its queued records and
    /// remember the run (unless its end went too) so that later ones follow.
    fn kill(&mut self, run_id: Uuid, reason: DropReason, stats: &Stats) {
        let queued: Vec<Seq> = self
            .runs
            .get(&run_id)
            .map(|run| run.items.iter().map(|item| item.seq).collect())
            .unwrap_or_default();
        let mut ended = false;
        for seq in queued {
            if let Some(item) = self.remove_queued(run_id, seq) {
                ended |= item.kind == ItemKind::End;
                stats.dropped(reason, 1, "its run's start was dropped");
            }
        }
        if ended {
            return;
        }
        self.dead.insert(run_id, reason);
        self.dead_order.push_back(run_id);
        // Runs whose end came are gone from `dead` but not from the order:
        // sweep them out once they are half of it, so that they neither
        // count toward the bound nor pile up.
        if self.dead_order.len() > 2 * self.dead.len() {
            let dead = &self.dead;
            self.dead_order.retain(|id| dead.contains_key(id));
        }
        while self.dead.len() > self.options.max_dead_runs {
            if let Some(old) = self.dead_order.pop_front() {
                self.dead.remove(&old);
            }
        }
    }

    /// Drops the oldest queued span, or if none, the oldest start or end.
    /// Returns `false` when nothing can go (all is in flight).
    fn evict_oldest(&mut self, stats: &Stats) -> bool {
        let oldest = self
            .spans_by_age
            .first_key_value()
            .or_else(|| self.marks_by_age.first_key_value())
            .map(|(&seq, &run_id)| (seq, run_id));
        let Some((seq, run_id)) = oldest else {
            return false;
        };
        let Some(item) = self.remove_queued(run_id, seq) else {
            return false;
        };
        stats.dropped(DropReason::QueueFull, 1, "queue full");
        if item.kind == ItemKind::Start {
            self.kill(run_id, DropReason::QueueFull, stats);
        }
        true
    }

    /// Takes a queued (not in flight) record out of the queue. A run
    /// backing off with nothing left forgets its failures: they were its
    /// records', and its next record (its end, say) starts afresh rather
    /// than waiting out their back-off and giving up on their clock.
    fn remove_queued(&mut self, run_id: Uuid, seq: Seq) -> Option<Item> {
        let run = self.runs.get_mut(&run_id)?;
        let at = run.items.binary_search_by_key(&seq, |item| item.seq).ok()?;
        let item = run.items.remove(at)?;
        if let (RunState::Waiting(until), true) = (run.state, run.items.is_empty()) {
            self.waiting.remove(&(until, run_id));
            run.state = RunState::Ready;
            run.retry = RetryState::default();
        }
        self.unindex(&item);
        self.items -= 1;
        self.bytes -= item.bytes();
        self.sync(run_id);
        Some(item)
    }

    /// Forgets a batch that left the queue for good.
    fn release(&mut self, batch: &Batch) {
        self.in_flight.remove(&batch.first_seq());
        self.items -= batch.len();
        self.bytes -= batch.bytes();
    }

    fn index(&mut self, item: &Item) {
        self.by_age(item.kind).insert(item.seq, item.run_id);
    }

    fn unindex(&mut self, item: &Item) {
        self.by_age(item.kind).remove(&item.seq);
    }

    /// The age index records of `kind` are in: spans, or the others.
    fn by_age(&mut self, kind: ItemKind) -> &mut BTreeMap<Seq, Uuid> {
        match kind {
            ItemKind::Span => &mut self.spans_by_age,
            ItemKind::Start | ItemKind::End | ItemKind::Ingest | ItemKind::Feedback => {
                &mut self.marks_by_age
            }
        }
    }

    /// Puts a run in the ready set iff it is `Ready` with records, and
    /// forgets it once it is `Ready` and empty.
    fn sync(&mut self, run_id: Uuid) {
        let Some(run) = self.runs.get_mut(&run_id) else {
            return;
        };
        let want = match run.state {
            RunState::Ready => run.items.front().map(|item| item.seq),
            RunState::InFlight | RunState::Waiting(_) => None,
        };
        if run.ready_key != want {
            if let Some(old) = run.ready_key {
                self.ready.remove(&(old, run_id));
            }
            if let Some(new) = want {
                self.ready.insert((new, run_id));
            }
            run.ready_key = want;
        }
        if run.state == RunState::Ready && run.items.is_empty() {
            self.runs.remove(&run_id);
        }
    }
}

impl RunQueue {
    fn new(max_items: usize) -> Self {
        Self {
            items: VecDeque::new(),
            state: RunState::Ready,
            ready_key: None,
            retry: RetryState::default(),
            max_items,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::item::Payload;
    use std::time::Duration;

    fn options(max_items: usize, max_bytes: usize) -> DeliveryOptions {
        DeliveryOptions {
            max_queue_items: max_items,
            max_queue_bytes: max_bytes,
            max_batch_items: 3,
            max_batch_bytes: 100,
            flush_items: 1_000,
            ..DeliveryOptions::default()
        }
    }

    fn record(run: u128, kind: ItemKind, json: &str) -> Encoded {
        Encoded {
            run_id: Uuid::from_u128(run),
            kind,
            payload: Payload::Json(json.as_bytes().into()),
        }
    }

    fn start(run: u128) -> Encoded {
        record(run, ItemKind::Start, "{}")
    }

    fn span(run: u128, json: &str) -> Encoded {
        record(run, ItemKind::Span, json)
    }

    fn end(run: u128) -> Encoded {
        record(run, ItemKind::End, "{}")
    }

    /// Pushes each record at one instant; returns the queue.
    fn queue(options: DeliveryOptions, records: Vec<Encoded>, stats: &Stats) -> Queue {
        let mut queue = Queue::new(options);
        let now = Instant::now();
        for r in records {
            queue.push(r, now, stats);
        }
        queue
    }

    /// The queued records as `(run, json)`, oldest first.
    fn contents(queue: &Queue) -> Vec<(u128, String)> {
        let mut all: Vec<&Item> = queue.runs.values().flat_map(|r| &r.items).collect();
        all.sort_by_key(|item| item.seq);
        all.iter()
            .map(|item| {
                (item.run_id.as_u128(), {
                    let mut json = Vec::new();
                    item.payload.write_to(&mut json);
                    String::from_utf8(json).unwrap()
                })
            })
            .collect()
    }

    /// `(run, number of records)` of each batch taken until none is due.
    fn drain(queue: &mut Queue) -> Vec<(u128, ItemKind, usize)> {
        queue.make_due();
        let mut out = Vec::new();
        while let Some(batch) = queue.take_batch() {
            out.push((batch.run_id.as_u128(), batch.kind, batch.len()));
            queue.delivered(&batch);
        }
        out
    }

    fn dropped(stats: &Stats) -> (u64, u64, u64, u64) {
        let c = stats.snapshot(0, 0);
        (
            c.dropped_queue_full,
            c.dropped_too_large,
            c.dropped_rejected,
            c.dropped_shutdown,
        )
    }

    #[test]
    fn when_full_the_oldest_span_goes_and_starts_and_ends_stay() {
        let stats = Stats::default();
        let q = queue(
            options(5, 1_000),
            vec![
                start(1),
                span(1, "a"),
                span(1, "b"),
                start(2),
                span(2, "c"),
                end(1),
                span(2, "d"),
            ],
            &stats,
        );
        assert_eq!(
            contents(&q),
            [
                (1, "{}".into()),
                (2, "{}".into()),
                (2, "c".into()),
                (1, "{}".into()),
                (2, "d".into())
            ]
        );
        assert_eq!(dropped(&stats), (2, 0, 0, 0));
        assert_eq!(q.size(), (5, 8));
    }

    #[test]
    fn the_byte_bound_counts_serialized_bytes() {
        let stats = Stats::default();
        let q = queue(
            options(100, 10),
            vec![start(1), span(1, "aaaa"), span(1, "bbbb"), span(1, "cc")],
            &stats,
        );
        assert_eq!(
            contents(&q),
            [(1, "{}".into()), (1, "bbbb".into()), (1, "cc".into())]
        );
        assert_eq!(q.size(), (3, 8));
        assert_eq!(dropped(&stats), (1, 0, 0, 0));
    }

    #[test]
    fn a_record_larger_than_the_queue_is_too_large() {
        let stats = Stats::default();
        let q = queue(
            options(100, 10),
            vec![start(1), span(1, "01234567890"), span(1, "ok")],
            &stats,
        );
        assert_eq!(contents(&q), [(1, "{}".into()), (1, "ok".into())]);
        assert_eq!(dropped(&stats), (0, 1, 0, 0));
    }

    #[test]
    fn with_no_span_left_the_oldest_start_goes_with_its_run() {
        let stats = Stats::default();
        let mut q = queue(
            options(3, 1_000),
            vec![start(1), start(2), end(2), start(3)],
            &stats,
        );
        // Run 1's start made room; its later records follow it, its end closes it.
        assert_eq!(
            contents(&q),
            [(2, "{}".into()), (2, "{}".into()), (3, "{}".into())]
        );
        let now = Instant::now();
        q.push(span(1, "late"), now, &stats);
        q.push(end(1), now, &stats);
        assert_eq!(dropped(&stats), (3, 0, 0, 0));
        assert!(q.dead.is_empty(), "the end closed the dead run");
        assert_eq!(contents(&q).len(), 3);
    }

    #[test]
    fn in_flight_records_are_never_evicted() {
        let stats = Stats::default();
        let mut q = queue(options(2, 1_000), vec![start(1), start(2)], &stats);
        q.make_due();
        let a = q.take_batch().unwrap();
        let b = q.take_batch().unwrap();
        q.push(start(3), Instant::now(), &stats);
        assert_eq!(dropped(&stats), (1, 0, 0, 0), "the new start is dropped");
        q.delivered(&a);
        q.delivered(&b);
        assert_eq!(q.size(), (0, 0));
    }

    #[test]
    fn batches_are_a_start_alone_consecutive_spans_or_an_end_alone() {
        let stats = Stats::default();
        let mut q = queue(
            options(100, 1_000),
            vec![
                start(1),
                span(1, "1"),
                span(1, "2"),
                span(1, "3"),
                span(1, "4"),
                end(1),
            ],
            &stats,
        );
        assert_eq!(
            drain(&mut q),
            [
                (1, ItemKind::Start, 1),
                (1, ItemKind::Span, 3),
                (1, ItemKind::Span, 1),
                (1, ItemKind::End, 1)
            ]
        );
    }

    #[test]
    fn batches_stop_at_the_byte_limit_but_a_big_span_goes_alone() {
        let stats = Stats::default();
        let big = "x".repeat(150);
        let mid = "y".repeat(60);
        let mut q = queue(
            options(100, 1_000),
            vec![span(1, &big), span(1, &mid), span(1, &mid)],
            &stats,
        );
        assert_eq!(drain(&mut q), [(1, ItemKind::Span, 1); 3]);
    }

    #[test]
    fn one_call_per_run_in_flight_and_runs_go_oldest_first() {
        let stats = Stats::default();
        let mut q = queue(
            options(100, 1_000),
            vec![start(1), start(2), span(1, "a"), span(2, "b")],
            &stats,
        );
        q.make_due();
        let one = q.take_batch().unwrap();
        let two = q.take_batch().unwrap();
        assert_eq!((one.run_id.as_u128(), two.run_id.as_u128()), (1, 2));
        assert!(q.take_batch().is_none(), "both runs are in flight");
        q.delivered(&two);
        assert_eq!(q.take_batch().unwrap().run_id.as_u128(), 2);
    }

    #[test]
    fn a_retried_batch_goes_back_to_the_front_and_waits() {
        let stats = Stats::default();
        let mut q = queue(
            options(100, 1_000),
            vec![start(1), span(1, "a"), start(2)],
            &stats,
        );
        q.make_due();
        let failed = q.take_batch().unwrap();
        let now = Instant::now();
        q.retry(failed, Some(now + Duration::from_secs(5)));
        // Run 1 waits; run 2 goes.
        let other = q.take_batch().unwrap();
        assert_eq!(other.run_id.as_u128(), 2);
        q.delivered(&other);
        assert!(q.take_batch().is_none());
        assert_eq!(q.next_wake(), Some(now + Duration::from_secs(5)));
        q.wake_waiting(now + Duration::from_secs(5));
        let again = q.take_batch().unwrap();
        assert_eq!(again.kind, ItemKind::Start, "the start still goes first");
    }

    #[test]
    fn a_run_whose_failing_records_were_evicted_sends_its_next_afresh() {
        use crate::export::retry::{EXACT, RetryState};
        let stats = Stats::default();
        let mut q = queue(options(3, 1_000), vec![start(1)], &stats);
        q.make_due();
        let started = q.take_batch().unwrap();
        q.delivered(&started);
        let t0 = Instant::now();
        q.push(span(1, "a"), t0, &stats);
        q.make_due();
        // Run 1's span has failed for almost ten minutes, and backs off.
        let mut failing = q.take_batch().unwrap();
        let late = t0 + Duration::from_secs(599);
        failing.retry.failed(t0, &EXACT, None).unwrap();
        failing.retry.failed(late, &EXACT, None).unwrap();
        q.retry(failing, Some(late + Duration::from_secs(60)));
        // Other runs fill the queue: run 1's span, the oldest, is evicted.
        for record in [start(2), span(2, "b"), span(2, "c")] {
            q.push(record, late, &stats);
        }
        assert_eq!(
            contents(&q),
            [(2, "{}".into()), (2, "b".into()), (2, "c".into())]
        );
        q.push(end(1), late, &stats);
        q.make_due();
        let other = q.take_batch().unwrap();
        assert_eq!(other.run_id.as_u128(), 2);
        // The end goes now, not after the span's back-off, with a clock of its own.
        let mut ending = q.take_batch().expect("the end is not held back");
        assert_eq!((ending.run_id.as_u128(), ending.kind), (1, ItemKind::End));
        assert_eq!(ending.retry, RetryState::default());
        let soon = late + Duration::from_secs(2);
        assert!(ending.retry.failed(soon, &EXACT, None).is_some());
    }

    #[test]
    fn a_run_dropped_with_its_start_is_remembered_past_the_queue_bound() {
        let stats = Stats::default();
        let mut q = Queue::new(options(2, 1_000));
        let now = Instant::now();
        for run in 1..=3 {
            q.push(start(run), now, &stats);
            q.make_due();
            let batch = q.take_batch().unwrap();
            q.drop_batch(&batch, DropReason::GaveUp, "HTTP 503", &stats);
        }
        // Three dead runs in a queue of two records: run 1's span still
        // follows its start, counted as given up.
        q.push(span(1, "late"), now, &stats);
        assert!(contents(&q).is_empty());
        assert_eq!(q.dead.len(), 3);
        assert_eq!(stats.snapshot(0, 0).dropped_gave_up, 4);
    }

    #[test]
    fn a_pause_holds_every_run_until_it_ends_or_the_queue_closes() {
        let stats = Stats::default();
        let mut q = queue(options(100, 1_000), vec![start(1), start(2)], &stats);
        q.make_due();
        let now = Instant::now();
        q.pause(now + Duration::from_secs(5));
        q.pause(now + Duration::from_secs(2));
        assert!(q.take_batch().is_none(), "paused");
        assert_eq!(
            q.next_wake(),
            Some(now + Duration::from_secs(5)),
            "the longer pause"
        );
        q.wake_waiting(now + Duration::from_secs(4));
        assert!(q.take_batch().is_none(), "still paused");
        q.wake_waiting(now + Duration::from_secs(5));
        assert_eq!(q.take_batch().unwrap().run_id.as_u128(), 1);
        q.pause(now + Duration::from_secs(60));
        assert!(q.take_batch().is_none());
        q.close();
        assert_eq!(q.next_wake(), None);
        assert_eq!(
            q.take_batch().unwrap().run_id.as_u128(),
            2,
            "shutdown lifts it"
        );
    }

    #[test]
    fn a_dropped_start_takes_its_run_with_it() {
        let stats = Stats::default();
        let mut q = queue(
            options(100, 1_000),
            vec![start(1), span(1, "a"), start(2)],
            &stats,
        );
        q.make_due();
        let start1 = q.take_batch().unwrap();
        q.drop_batch(&start1, DropReason::Rejected, "HTTP 400", &stats);
        q.push(span(1, "b"), Instant::now(), &stats);
        assert_eq!(contents(&q), [(2, "{}".into())]);
        assert_eq!(dropped(&stats), (0, 0, 3, 0));
    }

    #[test]
    fn a_dead_run_whose_end_came_does_not_count_toward_the_bound() {
        let stats = Stats::default();
        let mut q = Queue::new(DeliveryOptions {
            max_dead_runs: 2,
            ..options(100, 1_000)
        });
        let now = Instant::now();
        let kill = |q: &mut Queue, run: u128| {
            q.push(start(run), now, &stats);
            q.make_due();
            let batch = q.take_batch().unwrap();
            q.drop_batch(&batch, DropReason::Rejected, "HTTP 400", &stats);
        };
        kill(&mut q, 1);
        kill(&mut q, 2);
        q.push(end(2), now, &stats);
        kill(&mut q, 3);
        // Runs 1 and 3 are the two dead runs the bound allows: run 1's
        // later records still follow its start.
        q.push(span(1, "late"), now, &stats);
        assert!(contents(&q).is_empty());
        assert_eq!(q.dead.len(), 2);
        assert_eq!(dropped(&stats), (0, 0, 5, 0));
        // Nor do such runs pile up in the order.
        for run in 10..110 {
            kill(&mut q, run);
            q.push(end(run), now, &stats);
        }
        assert_eq!(q.dead.keys().collect::<Vec<_>>(), [&Uuid::from_u128(3)]);
        assert!(q.dead_order.len() <= 2 * 2 + 1, "{}", q.dead_order.len());
    }

    #[test]
    fn nothing_is_taken_before_it_is_due() {
        let stats = Stats::default();
        let mut opts = options(100, 1_000);
        opts.flush_items = 3;
        let mut q = Queue::new(opts);
        let now = Instant::now();
        assert!(
            q.push(start(1), now, &stats),
            "the first record wakes the worker"
        );
        assert!(!q.push(span(1, "a"), now, &stats));
        assert!(q.take_batch().is_none());
        assert_eq!(q.next_due(), Some(now + Duration::from_secs(1)));
        assert!(
            q.push(span(1, "b"), now, &stats),
            "the third record is a batch"
        );
        assert!(q.take_batch().is_some());
    }

    #[test]
    fn the_low_watermark_counts_queued_and_in_flight_records() {
        let stats = Stats::default();
        let mut q = queue(
            options(100, 1_000),
            vec![start(1), start(2), span(2, "a")],
            &stats,
        );
        assert_eq!(q.low_watermark(), 0);
        q.make_due();
        let one = q.take_batch().unwrap();
        let two = q.take_batch().unwrap();
        assert_eq!(q.low_watermark(), 0, "in flight");
        q.delivered(&one);
        assert_eq!(q.low_watermark(), 1);
        q.delivered(&two);
        assert_eq!(q.low_watermark(), 2);
        q.drop_queued(DropReason::Shutdown, &stats);
        assert_eq!(q.low_watermark(), 3);
        assert_eq!(dropped(&stats), (0, 0, 0, 1));
    }

    #[test]
    fn after_close_records_are_dropped_as_shutdown() {
        let stats = Stats::default();
        let mut q = Queue::new(options(100, 1_000));
        q.close();
        assert!(!q.push(start(1), Instant::now(), &stats));
        assert_eq!(dropped(&stats), (0, 0, 0, 1));
    }
}
