//! The work finished on the request path and put off (see
//! [`crate::deferred`]): taped exchanges, and spans read live that must
//! not pass them. It is read in the order it finished, off the request path.
//!
//! A reader task on the delivery thread works the backlog off every
//! [`READ_PACE`] while there is work, and parks when there is none: a
//! request wakes it only when the backlog was empty (after a quiet spell)
//! or has grown to [`WAKE_AT`]. Under load, requests make no system call
//! for it at all.
//!
//! Closing a run on a DELETE or a 404 joins the backlog as work of its
//! own (see [`Shared::close_session`](crate::state::Shared::close_session)),
//! so that its answer does not wait for the backlog. Whatever else must
//! see every span before it (a resumed stream, the idle sweep, `end_run`,
//! flush) first catches up: it reads what is waiting on its own thread;
//! the reader reads a turn of at most 256 pieces at a time and leaves the
//! next turn to such a waiter. Should the
//! reader fall far behind, each request that adds work past [`HELP_AT`]
//! pieces or [`HELP_AT_BYTES`] bytes first reads [`HELP_READS`] of the
//! oldest (unless another thread is reading right then; only at twice the
//! bounds does it wait for the turn), so the backlog stays bounded,
//! nothing is lost, and no request does much of it; after shutdown (which
//! ends the delivery thread), work is read as it is added. A panic while reading
//! (a redaction hook, say) costs the piece it was reading, and is logged.
//!
//! What the reader's reading leaves of the memory the request path
//! allocated goes back to the request path, to be reused or freed there
//! (see [`crate::leftovers`]); any other thread that reads (a catch-up, a
//! request past the bounds) is on the request path already and frees it at
//! once.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;
use tokio::sync::Notify;

use crate::fence::{Stage, fenced};
use crate::leftovers::{Leftover, Leftovers};

/// Work put off until later: an exchange whose body is over.
pub(crate) trait Later: Send + 'static {
    /// What reading leaves of the memory the adding thread allocated.
    type Leftover: Leftover;
    /// Bytes it holds, for the backlog's bound.
    fn weight(&self) -> usize;
    /// Does the work; returns what is left of the adding thread's memory,
    /// for the backlog to free at once or hand back to the request path.
    fn read(self) -> Option<Self::Leftover>;
}

/// How often the reader looks while there is work.
pub(crate) const READ_PACE: Duration = Duration::from_millis(5);

/// A backlog this long wakes the reader before its pace.
pub(crate) const WAKE_AT: usize = 256;

/// Past this many waiting pieces of work, the request that adds one reads
/// [`HELP_READS`] of them first.
pub(crate) const HELP_AT: usize = 8192;

/// Past this many bytes held by waiting work, likewise.
pub(crate) const HELP_AT_BYTES: usize = 16 * 1024 * 1024;

/// How many pieces a request past the bounds reads: more than it adds, so
/// the backlog shrinks, and few, so that no request waits long.
pub(crate) const HELP_READS: usize = 2;

/// The most pieces read in one turn; whoever waits for the turn (a close
/// catching up, a request past the bounds) waits for at most this many.
pub(crate) const TURN_READS: usize = 256;

thread_local! {
    /// Whether this thread is reading the backlog (so that what it reads
    /// does not try to catch up again, and the spans it queues are
    /// serialized at once).
    static READING: Cell<bool> = const { Cell::new(false) };
}

/// Reads one piece of work behind the [fence](crate::fence): a panic in
/// it costs that piece only.
fn read_one<T: Later>(work: T) -> Option<T::Leftover> {
    fenced(Stage::Backlog, || work.read()).flatten()
}

/// Whether this thread is reading a backlog now.
pub(crate) fn is_reading() -> bool {
    READING.with(Cell::get)
}

/// Marks this thread as reading until dropped (even by a panic).
struct Reading;

impl Reading {
    fn start() -> Self {
        READING.with(|reading| reading.set(true));
        Self
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        READING.with(|reading| reading.set(false));
    }
}

/// Where what reading leaves goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaving {
    /// Back to the request path: the reader (on the delivery thread, or
    /// on the server's runtime when no thread could be made).
    HandBack,
    /// Freed at once: any other thread, on the request path already.
    Free,
}

/// The work waiting to be read, with the weight of each piece.
#[derive(Debug)]
struct Waiting<T> {
    work: VecDeque<(T, usize)>,
    bytes: usize,
    /// Pieces added since the start.
    added: u64,
}

impl<T> Default for Waiting<T> {
    fn default() -> Self {
        Self {
            work: VecDeque::new(),
            bytes: 0,
            added: 0,
        }
    }
}

/// The backlog of one layer's state; see the module docs.
#[derive(Debug)]
pub(crate) struct Backlog<T: Later> {
    waiting: Mutex<Waiting<T>>,
    /// What reading left, for requests to reuse or free.
    leftovers: Leftovers<T::Leftover>,
    /// The turn to read, held while reading: work is read in the order it
    /// was added. It counts the pieces read since the start, so that a
    /// catch-up knows when everything added before it was read.
    turn: Mutex<u64>,
    /// Threads waiting to catch up: the reader leaves them the turn.
    waiters: AtomicUsize,
    /// Wakes the reader.
    wake: Notify,
    /// Whether the reader waits for a wake-up (rather than for its pace).
    parked: AtomicBool,
    /// Shut down: the reader may be gone, so whoever adds work reads it.
    closed: AtomicBool,
    /// The layer's state is gone: the reader stops.
    abandoned: AtomicBool,
}

impl<T: Later> Default for Backlog<T> {
    fn default() -> Self {
        Self {
            waiting: Mutex::default(),
            leftovers: Leftovers::default(),
            turn: Mutex::default(),
            waiters: AtomicUsize::new(0),
            wake: Notify::new(),
            parked: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
        }
    }
}

impl<T: Later> Backlog<T> {
    /// Adds a piece of work.
    pub(crate) fn push(&self, work: T) {
        let weight = work.weight();
        let (len, bytes) = {
            let mut waiting = self.waiting();
            waiting.work.push_back((work, weight));
            waiting.bytes += weight;
            waiting.added += 1;
            (waiting.work.len(), waiting.bytes)
        };
        self.leftovers.free_excess();
        if self.closed.load(Ordering::Acquire) {
            self.catch_up();
            return;
        }
        if len > HELP_AT || bytes > HELP_AT_BYTES {
            self.help(len > 2 * HELP_AT || bytes > 2 * HELP_AT_BYTES);
            return;
        }
        if (len == 1 && self.parked.swap(false, Ordering::AcqRel)) || len == WAKE_AT {
            self.wake.notify_one();
        }
    }

    /// Reads, on this thread, whatever of the work added before this call
    /// is not read yet, in order, taking turns with the reader; returns how
    /// many pieces this thread read. Returns at once on a thread that is
    /// reading already.
    pub(crate) fn catch_up(&self) -> usize {
        let goal = self.waiting().added;
        let mut read = 0;
        loop {
            // The reader leaves the next turn to a waiting thread.
            self.waiters.fetch_add(1, Ordering::AcqRel);
            let turn = self.take_turn(true);
            self.waiters.fetch_sub(1, Ordering::AcqRel);
            let Some(mut turn) = turn.filter(|turn| **turn < goal) else {
                return read;
            };
            match self.read_front(&mut turn, TURN_READS, Leaving::Free) {
                0 => return read,
                count => read += count,
            }
        }
    }

    /// Reads everything waiting, a turn at a time; returns how many pieces.
    fn read_all(&self) -> usize {
        let mut read = 0;
        loop {
            match self.read_in_turn(TURN_READS, Leaving::Free) {
                0 => return read,
                count => read += count,
            }
        }
    }

    /// Past the bounds: reads [`HELP_READS`] of the oldest pieces, unless
    /// another thread is reading now (it makes progress already) and the
    /// backlog is not `far_past` them.
    fn help(&self, far_past: bool) {
        if let Some(mut turn) = self.take_turn(far_past) {
            self.read_front(&mut turn, HELP_READS, Leaving::Free);
        }
    }

    /// Reads up to `max` pieces in one turn; returns how many.
    fn read_in_turn(&self, max: usize, leaving: Leaving) -> usize {
        self.take_turn(true)
            .map_or(0, |mut turn| self.read_front(&mut turn, max, leaving))
    }

    /// The turn to read: waited for, or only if free now. `None` on a
    /// thread that is reading already (the turn is its own).
    fn take_turn(&self, wait: bool) -> Option<MutexGuard<'_, u64>> {
        if is_reading() {
            return None;
        }
        if wait {
            return Some(self.turn.lock().unwrap_or_else(PoisonError::into_inner));
        }
        match self.turn.try_lock() {
            Ok(turn) => Some(turn),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Reads up to `max` pieces from the front, holding the `turn`; what
    /// reading leaves goes where `leaving` says.
    fn read_front(&self, turn: &mut u64, max: usize, leaving: Leaving) -> usize {
        let _reading = Reading::start();
        // Allocated before the lock, which every request takes to add work.
        let mut batch: Vec<(T, usize)> = Vec::with_capacity(max);
        {
            let mut waiting = self.waiting();
            let count = max.min(waiting.work.len());
            batch.extend(waiting.work.drain(..count));
            waiting.bytes -= batch.iter().map(|(_, weight)| weight).sum::<usize>();
        }
        let count = batch.len();
        let mut left = Vec::with_capacity(count);
        for (work, _) in batch {
            left.extend(read_one(work));
            *turn += 1;
        }
        // Shut down, the reader is gone and may not free what is left
        // (which holds the layer's state): it is freed here, as is what
        // any other thread reads.
        if leaving == Leaving::HandBack && !left.is_empty() && !self.closed.load(Ordering::Acquire)
        {
            self.leftovers.give_back(left);
        }
        count
    }

    /// Shut down: from now on, whoever adds work reads it at once (the
    /// reader runs on the delivery thread, which shutdown ends).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.catch_up();
        // The reader handed these back before it saw the close (it did so
        // holding the turn the catch-up waited for), and may be gone.
        self.leftovers.free_all();
    }

    /// The layer's state is gone: the reader stops once it has read what waits.
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// What reading left, for a request to fill again.
    pub(crate) fn leftovers(&self) -> &Leftovers<T::Leftover> {
        &self.leftovers
    }

    /// Whether nothing waits.
    fn is_empty(&self) -> bool {
        self.waiting().work.is_empty()
    }

    fn waiting(&self) -> MutexGuard<'_, Waiting<T>> {
        // Every change leaves the list consistent: a poisoned lock is usable.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads `backlog` until it is abandoned: every [`READ_PACE`] while there
/// is work, else when a request wakes it.
pub(crate) async fn read<T: Later>(backlog: Arc<Backlog<T>>) {
    let mut worked = false;
    loop {
        if backlog.abandoned.load(Ordering::Acquire) {
            backlog.read_all();
            return;
        }
        // A turn at a time, letting delivery run in between; a thread that
        // waits for the turn (a close catching up) goes first.
        let waiters = backlog.waiters.load(Ordering::Acquire) > 0;
        if !waiters && backlog.read_in_turn(TURN_READS, Leaving::HandBack) > 0 {
            worked = true;
            tokio::task::yield_now().await;
            continue;
        }
        if worked || waiters {
            worked = false;
            tokio::select! {
                () = tokio::time::sleep(READ_PACE) => {}
                () = backlog.wake.notified() => {}
            }
            continue;
        }
        // No work came for a pace: few requests come to reuse what reading
        // left, and few allocate.
        backlog.leftovers.free_all();
        backlog.parked.store(true, Ordering::Release);
        // An exchange added before `parked` was set found no one to wake.
        if !backlog.is_empty() {
            backlog.parked.store(false, Ordering::Release);
            continue;
        }
        backlog.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::mpsc;

    /// Work that reports its number when read, and weighs `weight` bytes.
    struct Numbered {
        number: usize,
        weight: usize,
        read: mpsc::Sender<usize>,
    }

    impl Later for Numbered {
        type Leftover = Infallible;

        fn weight(&self) -> usize {
            self.weight
        }

        fn read(self) -> Option<Infallible> {
            let _ = self.read.send(self.number);
            None
        }
    }

    fn numbered(count: usize, weight: usize) -> (Vec<Numbered>, mpsc::Receiver<usize>) {
        let (read, reported) = mpsc::channel();
        let items = (0..count)
            .map(|number| Numbered {
                number,
                weight,
                read: read.clone(),
            })
            .collect();
        (items, reported)
    }

    #[test]
    fn catch_up_reads_everything_waiting_in_order() {
        let backlog = Backlog::default();
        let (items, reported) = numbered(10, 1);
        items.into_iter().for_each(|item| backlog.push(item));
        assert!(reported.try_recv().is_err(), "nothing is read on push");
        assert_eq!(backlog.catch_up(), 10);
        assert_eq!(
            reported.try_iter().collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(backlog.catch_up(), 0);
    }

    #[test]
    fn past_the_count_bound_each_push_reads_a_little() {
        let backlog = Backlog::default();
        let (items, reported) = numbered(HELP_AT + 3, 1);
        let mut items = items.into_iter();
        for item in items.by_ref().take(HELP_AT) {
            backlog.push(item);
        }
        assert!(
            reported.try_recv().is_err(),
            "at the bound, nothing is read"
        );
        backlog.push(items.next().unwrap());
        assert_eq!(
            reported.try_iter().collect::<Vec<_>>(),
            [0, 1],
            "the oldest"
        );
        for item in items {
            backlog.push(item);
        }
        assert_eq!(reported.try_iter().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(
            backlog.waiting().work.len(),
            HELP_AT - 1,
            "each push past the bound leaves it below"
        );
    }

    #[test]
    fn past_the_byte_bound_the_pushing_thread_reads() {
        let backlog = Backlog::default();
        let (items, reported) = numbered(3, HELP_AT_BYTES / 2 + 1);
        let mut items = items.into_iter();
        backlog.push(items.next().unwrap());
        assert!(reported.try_recv().is_err());
        backlog.push(items.next().unwrap());
        assert_eq!(reported.try_iter().collect::<Vec<_>>(), [0, 1]);
        backlog.push(items.next().unwrap());
        assert!(reported.try_recv().is_err(), "the byte count starts again");
    }

    /// Work that panics when read.
    struct Panicking;

    impl Later for Panicking {
        type Leftover = Infallible;

        fn weight(&self) -> usize {
            0
        }

        fn read(self) -> Option<Infallible> {
            panic!("a redaction hook failed");
        }
    }

    #[test]
    fn a_panic_while_reading_costs_that_work_only() {
        let _turn = crate::fence::faults::counting();
        let caught = crate::fence::panics_caught();
        let backlog = Backlog::default();
        let (items, reported) = numbered(2, 1);
        let mut items = items.into_iter();
        backlog.push(Either::Left(items.next().unwrap()));
        backlog.push(Either::Right(Panicking));
        backlog.push(Either::Left(items.next().unwrap()));
        assert_eq!(backlog.catch_up(), 3);
        assert_eq!(reported.try_iter().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(
            *backlog.turn.lock().unwrap(),
            3,
            "the panicked piece counts as read"
        );
        assert!(!is_reading(), "the thread is no longer marked as reading");
        assert_eq!(crate::fence::panics_caught(), caught + 1);
    }

    /// One of two kinds of work.
    enum Either<L, R> {
        Left(L),
        Right(R),
    }

    impl<L: Later, R: Later<Leftover = L::Leftover>> Later for Either<L, R> {
        type Leftover = L::Leftover;

        fn weight(&self) -> usize {
            match self {
                Self::Left(l) => l.weight(),
                Self::Right(r) => r.weight(),
            }
        }

        fn read(self) -> Option<L::Leftover> {
            match self {
                Self::Left(l) => l.read(),
                Self::Right(r) => r.read(),
            }
        }
    }

    #[test]
    fn once_closed_work_is_read_as_it_is_added() {
        let backlog = Backlog::default();
        let (items, reported) = numbered(2, 1);
        let mut items = items.into_iter();
        backlog.push(items.next().unwrap());
        backlog.close();
        assert_eq!(reported.try_recv(), Ok(0), "closing reads what waits");
        backlog.push(items.next().unwrap());
        assert_eq!(reported.try_recv(), Ok(1));
        assert!(backlog.is_empty());
    }

    /// Work that catches up from inside its own reading.
    struct Reentrant(Arc<Backlog<Reentrant>>, mpsc::Sender<usize>);

    impl Later for Reentrant {
        type Leftover = Infallible;

        fn weight(&self) -> usize {
            0
        }

        fn read(self) -> Option<Infallible> {
            let _ = self.1.send(self.0.catch_up());
            None
        }
    }

    /// Work whose reading leaves memory behind, which reports when it is
    /// freed.
    struct LeavesBehind(mpsc::Sender<()>);

    struct Left(mpsc::Sender<()>);

    impl Leftover for Left {
        fn bytes(&self) -> usize {
            64
        }
    }

    impl Drop for Left {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }

    impl Later for LeavesBehind {
        type Leftover = Left;

        fn weight(&self) -> usize {
            0
        }

        fn read(self) -> Option<Left> {
            Some(Left(self.0))
        }
    }

    #[test]
    fn what_the_reader_leaves_waits_for_the_request_path() {
        let backlog = Arc::new(Backlog::default());
        let (freed, freed_on) = mpsc::channel();
        for _ in 0..3 {
            backlog.push(LeavesBehind(freed.clone()));
        }
        let reader = {
            let backlog = Arc::clone(&backlog);
            std::thread::spawn(move || backlog.read_in_turn(TURN_READS, Leaving::HandBack))
        };
        assert_eq!(reader.join().unwrap(), 3);
        assert!(freed_on.try_recv().is_err(), "the reader freed nothing");
        assert_eq!(backlog.leftovers.contents(), (3, 3 * 64));

        // A request takes one back; few wait, so adding work frees none.
        assert!(backlog.leftovers().reuse().is_some());
        backlog.push(LeavesBehind(freed));
        assert_eq!(backlog.leftovers.contents(), (2, 2 * 64));
    }

    #[test]
    fn a_thread_that_catches_up_frees_what_it_read_at_once() {
        let backlog = Backlog::default();
        let (freed, freed_on) = mpsc::channel();
        backlog.push(LeavesBehind(freed.clone()));
        backlog.push(LeavesBehind(freed));
        assert_eq!(backlog.catch_up(), 2);
        assert_eq!(freed_on.try_iter().count(), 2);
        assert_eq!(backlog.leftovers.contents(), (0, 0));
    }

    #[test]
    fn closing_frees_what_the_reader_left() {
        // The reader may be gone, and what it left holds the layer's state.
        let backlog = Backlog::default();
        let (freed, freed_on) = mpsc::channel();
        backlog.push(LeavesBehind(freed.clone()));
        assert_eq!(backlog.read_in_turn(TURN_READS, Leaving::HandBack), 1);
        assert_eq!(backlog.leftovers.contents(), (1, 64));
        backlog.close();
        assert_eq!(freed_on.try_iter().count(), 1);
        assert_eq!(backlog.leftovers.contents(), (0, 0));
        // Read after the close, by the reader or another thread: freed at once.
        backlog.push(LeavesBehind(freed.clone()));
        backlog.push(LeavesBehind(freed));
        assert_eq!(
            backlog.read_in_turn(TURN_READS, Leaving::HandBack),
            0,
            "read on push"
        );
        assert_eq!(freed_on.try_iter().count(), 2);
        assert_eq!(backlog.leftovers.contents(), (0, 0));
    }

    #[test]
    fn after_the_close_even_the_reader_frees_what_it_read() {
        let backlog = Backlog::default();
        let (freed, freed_on) = mpsc::channel();
        backlog.close();
        // Work the reader finds after the close (put there directly: a
        // push after the close reads it at once).
        backlog.waiting().work.push_back((LeavesBehind(freed), 0));
        assert_eq!(backlog.read_in_turn(TURN_READS, Leaving::HandBack), 1);
        assert_eq!(freed_on.try_iter().count(), 1);
        assert_eq!(backlog.leftovers.contents(), (0, 0));
    }

    #[test]
    fn a_request_past_the_bound_frees_what_it_helped_read() {
        let backlog = Backlog::default();
        let (freed, freed_on) = mpsc::channel();
        for _ in 0..=HELP_AT {
            backlog.push(LeavesBehind(freed.clone()));
        }
        assert_eq!(freed_on.try_iter().count(), HELP_READS);
        assert_eq!(backlog.leftovers.contents(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_reader_frees_what_is_left_before_it_parks() {
        let backlog = Arc::new(Backlog::default());
        let (freed, freed_on) = mpsc::channel();
        let reader = tokio::spawn(read(Arc::clone(&backlog)));
        backlog.push(LeavesBehind(freed.clone()));
        // The reader reads it, then (no more work) frees what is left and parks.
        while !backlog.parked.load(Ordering::Acquire) {
            tokio::task::yield_now().await;
            tokio::time::advance(READ_PACE).await;
        }
        assert_eq!(freed_on.try_iter().count(), 1);
        assert_eq!(backlog.leftovers.contents(), (0, 0));
        backlog.abandon();
        reader.await.unwrap();
    }

    #[test]
    fn catching_up_while_reading_returns_at_once() {
        let backlog = Arc::new(Backlog::default());
        let (sender, reported) = mpsc::channel();
        backlog.push(Reentrant(Arc::clone(&backlog), sender));
        assert_eq!(backlog.catch_up(), 1);
        assert_eq!(reported.try_recv(), Ok(0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_reader_wakes_for_work_after_parking_and_stops_when_abandoned() {
        let backlog = Arc::new(Backlog::default());
        let reader = tokio::spawn(read(Arc::clone(&backlog)));
        let (items, reported) = numbered(2, 1);
        let mut items = items.into_iter();
        // Nothing to do: the reader parks, and the first push wakes it.
        while !backlog.parked.load(Ordering::Acquire) {
            tokio::task::yield_now().await;
        }
        backlog.push(items.next().unwrap());
        let first = tokio::task::spawn_blocking(move || {
            let first = reported.recv_timeout(Duration::from_secs(10));
            (first, reported)
        });
        let (first, reported) = first.await.unwrap();
        assert_eq!(first, Ok(0));
        // Abandoned: it reads what waits, then stops.
        backlog.push(items.next().unwrap());
        backlog.abandon();
        tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the reader stops")
            .unwrap();
        assert_eq!(reported.try_recv(), Ok(1));
    }
}
