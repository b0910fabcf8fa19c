//! Memory the request path allocated and the delivery thread is done
//! with, handed back so that a request path frees it.
//!
//! glibc's allocator (the default on Linux) gives each thread an arena of
//! its own. A thread that frees a block of another thread's arena takes
//! that arena's lock, and the delivery thread reads exchanges in bursts:
//! freeing what the server allocated for them there made the server
//! thread wait for its own arena's lock about once per request (a futex
//! call each time, seen with `perf stat -e syscalls:sys_enter_futex`).
//! So the reader keeps what it read (a tape and the request's span) and
//! puts it here; each request that adds work to the backlog frees up to
//! [`FREED_PER_REQUEST`] of them, more than it adds, on its own thread.
//!
//! What waits here is bounded by [`MAX_LEFTOVER_BYTES`]: past it, the
//! reader frees what it read itself. When no requests come, the reader
//! frees what waits before it parks (no one allocates then).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// How many leftovers a request frees: more than the one piece of work it
/// adds, so that the bin empties while requests come.
pub(crate) const FREED_PER_REQUEST: usize = 2;

/// The most bytes waiting to be freed; past it, the reader frees what it read.
pub(crate) const MAX_LEFTOVER_BYTES: usize = 4 * 1024 * 1024;

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
    waiting: AtomicUsize,
}

#[derive(Debug)]
struct Bin<L> {
    items: Vec<(L, usize)>,
    bytes: usize,
}

impl<L> Default for Leftovers<L> {
    fn default() -> Self {
        Self {
            bin: Mutex::new(Bin {
                items: Vec::new(),
                bytes: 0,
            }),
            waiting: AtomicUsize::new(0),
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
                bin.items.push((item, bytes));
            }
            self.waiting.store(bin.items.len(), Ordering::Release);
        }
        drop(unkept);
    }

    /// Frees up to [`FREED_PER_REQUEST`] leftovers on this thread (a
    /// request's), outside the lock; returns how many.
    pub(crate) fn free_some(&self) -> usize {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let taken: [Option<L>; FREED_PER_REQUEST] = {
            let mut bin = self.bin();
            let taken = std::array::from_fn(|_| {
                let (item, bytes) = bin.items.pop()?;
                bin.bytes -= bytes;
                Some(item)
            });
            self.waiting.store(bin.items.len(), Ordering::Release);
            taken
        };
        taken.into_iter().flatten().count()
    }

    /// Frees everything waiting, on this thread; returns how many.
    pub(crate) fn free_all(&self) -> usize {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let items = {
            let mut bin = self.bin();
            bin.bytes = 0;
            self.waiting.store(0, Ordering::Release);
            std::mem::take(&mut bin.items)
        };
        items.len()
    }

    /// How many leftovers wait, and the bytes they hold.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> (usize, usize) {
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
    use std::thread::{self, ThreadId};

    /// A leftover that reports the thread it is freed on.
    struct Traced {
        bytes: usize,
        freed_on: Arc<Mutex<Vec<ThreadId>>>,
    }

    impl Leftover for Traced {
        fn bytes(&self) -> usize {
            self.bytes
        }
    }

    impl Drop for Traced {
        fn drop(&mut self) {
            self.freed_on.lock().unwrap().push(thread::current().id());
        }
    }

    fn traced(count: usize, bytes: usize, freed_on: &Arc<Mutex<Vec<ThreadId>>>) -> Vec<Traced> {
        (0..count)
            .map(|_| Traced {
                bytes,
                freed_on: Arc::clone(freed_on),
            })
            .collect()
    }

    #[test]
    fn what_the_reader_gives_back_is_freed_by_requests_a_few_at_a_time() {
        let bin = Arc::new(Leftovers::default());
        let freed_on = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let (bin, freed_on) = (Arc::clone(&bin), Arc::clone(&freed_on));
            thread::spawn(move || {
                bin.give_back(traced(5, 100, &freed_on));
                thread::current().id()
            })
        };
        let reader = reader.join().unwrap();
        assert!(freed_on.lock().unwrap().is_empty(), "the reader freed none");
        assert_eq!(bin.waiting(), (5, 500));

        assert_eq!(bin.free_some(), FREED_PER_REQUEST);
        assert_eq!(bin.waiting(), (3, 300));
        assert_eq!(bin.free_some(), 2);
        assert_eq!(bin.free_some(), 1);
        assert_eq!(bin.free_some(), 0);
        assert_eq!(bin.waiting(), (0, 0));
        let freed_on = freed_on.lock().unwrap();
        assert_eq!(freed_on.len(), 5);
        assert!(freed_on.iter().all(|id| *id == thread::current().id()));
        assert!(!freed_on.contains(&reader));
    }

    #[test]
    fn past_the_bound_the_reader_frees_what_it_read_itself() {
        let bin = Leftovers::default();
        let freed_on = Arc::new(Mutex::new(Vec::new()));
        let half = MAX_LEFTOVER_BYTES / 2;
        bin.give_back(traced(3, half, &freed_on));
        assert_eq!(bin.waiting(), (2, 2 * half), "two fit under the bound");
        assert_eq!(
            freed_on.lock().unwrap().len(),
            1,
            "the third was freed at once"
        );
        // Room again: a smaller one fits.
        bin.give_back(traced(1, 1, &freed_on));
        assert_eq!(bin.waiting(), (2, 2 * half), "still full");
        assert_eq!(bin.free_some(), 2);
        bin.give_back(traced(1, 1, &freed_on));
        assert_eq!(bin.waiting(), (1, 1));
    }

    #[test]
    fn free_all_empties_the_bin() {
        let bin = Leftovers::default();
        let freed_on = Arc::new(Mutex::new(Vec::new()));
        bin.give_back(traced(7, 10, &freed_on));
        assert_eq!(bin.free_all(), 7);
        assert_eq!(bin.waiting(), (0, 0));
        assert_eq!(freed_on.lock().unwrap().len(), 7);
        assert_eq!(bin.free_all(), 0);
        assert_eq!(bin.free_some(), 0);
    }
}
