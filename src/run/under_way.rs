//! The requests of a run still under way, so that the idle sweep does not
//! end a run while one of its requests is being answered (a tool call
//! longer than the idle timeout, say).
//!
//! Counted without the run table's lock: a request takes an [`UnderWay`]
//! where it finds its run (under the lock, so the sweep sees it), and
//! gives it back when its answer has passed, wherever that is (its
//! recorder, or the delivery thread reading it later).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many requests of one run are under way.
#[derive(Debug, Default)]
pub(crate) struct UnderWayCount(Arc<AtomicUsize>);

impl UnderWayCount {
    /// One more request under way, until the returned token is dropped.
    pub(crate) fn start(&self) -> UnderWay {
        self.0.fetch_add(1, Ordering::Relaxed);
        UnderWay(Arc::clone(&self.0))
    }

    /// Whether any request of the run is under way.
    pub(crate) fn any(&self) -> bool {
        self.more_than(0)
    }

    /// Whether more than `count` requests of the run are under way.
    pub(crate) fn more_than(&self, count: usize) -> bool {
        self.0.load(Ordering::Acquire) > count
    }
}

/// A request of a run under way; dropping it ends that.
#[derive(Debug)]
pub(crate) struct UnderWay(Arc<AtomicUsize>);

impl Drop for UnderWay {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_has_requests_under_way_until_every_token_is_dropped() {
        let count = UnderWayCount::default();
        assert!(!count.any());
        let first = count.start();
        let second = count.start();
        drop(first);
        assert!(count.any());
        drop(second);
        assert!(!count.any());
    }
}
