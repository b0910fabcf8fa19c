//! Memory the request path allocated and the delivery thread is done
//! with, handed back so that the request path reuses or frees it.
//!
//! glibc's allocator (the default on Linux) gives each thread an arena of
//! its own. A thread that frees a block of another thread's arena takes
//! that arena's lock, and the delivery thread reads exchanges in bursts:
//! freeing what the server allocated for them there made the server
//! thread wait for its own arena's lock about once per request (a futex
//! call each time, seen with `perf stat -e syscalls:sys_enter_futex`).
//! So the reader keeps what it read (a tape, which holds the request's
//! span) and puts it here. A request that tapes its exchange takes one
//! back to fill again, so that in steady state the layer's largest blocks
//! are neither allocated nor freed; when more than [`KEPT_FOR_REUSE`]
//! wait, each request that adds work frees [`FREED_PER_REQUEST`] of them.
//! Either happens on a request's thread; with several server workers, not
//! always the one that allocated the block (as with the server's own
//! memory that moves between its workers).
//!
//! What waits here is bounded by [`MAX_LEFTOVER_BYTES`]: past it, the
//! reader frees what it read itself. When no work came for a
//! [`READ_PACE`](crate::backlog::READ_PACE), the reader frees what waits
//! before it parks: few requests come then, to reuse it or to contend
//! for the allocator.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::backlog::TURN_READS;

/// How many leftovers wait for reuse before requests start freeing them:
/// what the reader reads in one turn.
pub(crate) const KEPT_FOR_REUSE: usize = TURN_READS;

/// How many leftovers a request frees past [`KEPT_FOR_REUSE`]: more than
/// the one piece of work it adds, so that the excess goes while requests come.
pub(crate) const FREED_PER_REQUEST: usize = 2;

/// The most bytes waiting, as the leftovers count them (their main
/// blocks); past it, the reader frees what it read.
pub(crate) const MAX_LEFTOVER_BYTES: usize = 1024 * 1024;

/// Memory handed back: it knows how many bytes it holds.
pub(crate) trait Leftover: Send + 'static {
    /// Bytes it holds, for the bound.
    fn bytes(&self) -> usize;
}

/// Work that leaves nothing.
impl Leftover for std::convert::Infallible {
    fn bytes(&self) -> usize {
        match *self {}
    }
}

/// The bin of leftovers; see the module docs.
#[derive(Debug)]
pub(crate) struct Leftovers<L> {
    bin: Mutex<Bin<L>>,
    /// How many wait, read without the lock, so that a request finds an
    /// empty bin without taking it.
    len_hint: AtomicUsize,
}

#[derive(Debug)]
struct Bin<L> {
    /// Oldest first.
    items: VecDeque<(L, usize)>,
    bytes: usize,
}

impl<L> Default for Leftovers<L> {
    fn default() -> Self {
        Self {
            bin: Mutex::new(Bin {
                items: VecDeque::new(),
                bytes: 0,
            }),
            len_hint: AtomicUsize::new(0),
        }
    }
}

impl<L: Leftover> Leftovers<L> {
    /// Hands `items` back (by the reader); what does not fit under the
    /// bound is freed here, after the lock is released.
    pub(crate) fn give_back(&self, items: Vec<L>) {
        let mut unkept = Vec::new();
        {
            let mut bin = self.bin();
            for item in items {
                let bytes = item.bytes();
                if bin.bytes + bytes > MAX_LEFTOVER_BYTES {
                    unkept.push(item);
                    continue;
                }
                bin.bytes += bytes;
                bin.items.push_back((item, bytes));
            }
            self.len_hint.store(bin.items.len(), Ordering::Release);
        }
        drop(unkept);
    }

    /// A leftover to fill again (the latest handed back), if one waits.
    pub(crate) fn reuse(&self) -> Option<L> {
        if self.len_hint.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut bin = self.bin();
        let (item, bytes) = bin.items.pop_back()?;
        bin.bytes -= bytes;
        self.len_hint.store(bin.items.len(), Ordering::Release);
        Some(item)
    }

    /// Past [`KEPT_FOR_REUSE`], frees up to [`FREED_PER_REQUEST`] leftovers
    /// on this thread (a request's), outside the lock; returns how many.
    pub(crate) fn free_excess(&self) -> usize {
        if self.len_hint.load(Ordering::Acquire) <= KEPT_FOR_REUSE {
            return 0;
        }
        let taken: [Option<L>; FREED_PER_REQUEST] = {
            let mut bin = self.bin();
            let taken = std::array::from_fn(|_| {
                if bin.items.len() <= KEPT_FOR_REUSE {
                    return None;
                }
                // The oldest: the latest are warmest for reuse.
                let (item, bytes) = bin.items.pop_front()?;
                bin.bytes -= bytes;
                Some(item)
            });
            self.len_hint.store(bin.items.len(), Ordering::Release);
            taken
        };
        taken.into_iter().flatten().count()
    }

    /// Frees everything waiting, on this thread; returns how many.
    pub(crate) fn free_all(&self) -> usize {
        if self.len_hint.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let items = {
            let mut bin = self.bin();
            bin.bytes = 0;
            self.len_hint.store(0, Ordering::Release);
            std::mem::take(&mut bin.items)
        };
        items.len()
    }

    /// How many leftovers wait, and the bytes they hold.
    #[cfg(test)]
    pub(crate) fn contents(&self) -> (usize, usize) {
        let bin = self.bin();
        (bin.items.len(), bin.bytes)
    }

    fn bin(&self) -> MutexGuard<'_, Bin<L>> {
        // Every change leaves the bin consistent: a poisoned lock is usable.
        self.bin.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A leftover that counts its drop.
    struct Traced {
        bytes: usize,
        freed: Arc<AtomicUsize>,
    }

    impl Leftover for Traced {
        fn bytes(&self) -> usize {
            self.bytes
        }
    }

    impl Drop for Traced {
        fn drop(&mut self) {
            self.freed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn traced(count: usize, bytes: usize, freed: &Arc<AtomicUsize>) -> Vec<Traced> {
        (0..count)
            .map(|_| Traced {
                bytes,
                freed: Arc::clone(freed),
            })
            .collect()
    }

    fn freed(count: &AtomicUsize) -> usize {
        count.load(Ordering::Relaxed)
    }

    #[test]
    fn what_the_reader_gives_back_waits_and_is_reused_latest_first() {
        let bin = Leftovers::default();
        let freed_on = Arc::new(AtomicUsize::new(0));
        let mut items = traced(3, 100, &freed_on);
        items[2].bytes = 300;
        bin.give_back(items);
        assert_eq!(freed(&freed_on), 0, "the reader freed none");
        assert_eq!(bin.contents(), (3, 500));

        let latest = bin.reuse().unwrap();
        assert_eq!(latest.bytes, 300, "the latest comes back first");
        assert_eq!(bin.contents(), (2, 200));
        assert_eq!(bin.free_excess(), 0, "few wait: they are kept for reuse");
        drop(latest);
        assert_eq!(freed(&freed_on), 1, "only the one taken");
        assert!(bin.reuse().is_some() && bin.reuse().is_some());
        assert!(bin.reuse().is_none());
    }

    #[test]
    fn past_what_is_kept_for_reuse_each_request_frees_the_oldest() {
        let bin = Leftovers::default();
        let freed_on = Arc::new(AtomicUsize::new(0));
        let mut items = traced(KEPT_FOR_REUSE + 3, 1, &freed_on);
        items[0].bytes = 7; // the oldest
        bin.give_back(items);
        assert_eq!(bin.free_excess(), FREED_PER_REQUEST);
        assert_eq!(
            bin.contents(),
            (KEPT_FOR_REUSE + 1, KEPT_FOR_REUSE + 1),
            "the oldest went first"
        );
        assert_eq!(bin.free_excess(), 1, "down to what is kept");
        assert_eq!(bin.free_excess(), 0);
        assert_eq!(bin.contents().0, KEPT_FOR_REUSE);
        assert_eq!(freed(&freed_on), 3);
    }

    #[test]
    fn past_the_bound_the_reader_frees_what_it_read_itself() {
        let bin = Leftovers::default();
        let freed_on = Arc::new(AtomicUsize::new(0));
        let half = MAX_LEFTOVER_BYTES / 2;
        bin.give_back(traced(3, half, &freed_on));
        assert_eq!(bin.contents(), (2, 2 * half), "two fit under the bound");
        assert_eq!(freed(&freed_on), 1, "the third was freed at once");
        // Full: even a small one is freed at once, until one is taken.
        bin.give_back(traced(1, 1, &freed_on));
        assert_eq!(bin.contents(), (2, 2 * half), "still full");
        assert_eq!(freed(&freed_on), 2);
        assert!(bin.reuse().is_some());
        bin.give_back(traced(1, 1, &freed_on));
        assert_eq!(bin.contents(), (2, half + 1));
    }

    #[test]
    fn free_all_empties_the_bin() {
        let bin = Leftovers::default();
        let freed_on = Arc::new(AtomicUsize::new(0));
        bin.give_back(traced(7, 10, &freed_on));
        assert_eq!(bin.free_all(), 7);
        assert_eq!(bin.contents(), (0, 0));
        assert_eq!(freed(&freed_on), 7);
        assert_eq!(bin.free_all(), 0);
        assert!(bin.reuse().is_none());
    }
}
