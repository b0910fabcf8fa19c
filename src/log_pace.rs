//! [`LogPace`]: how often a trouble that can repeat on every request is
//! logged at its level (`warn`, `error`).
//!
//! The first time, then at most once per [`LogPace::INTERVAL`] while it
//! goes on, each line saying how many times it happened since the last
//! one (so the occurrences of a trouble's last minute are told by the line
//! of its next occurrence, however much later). Logged once and never
//! again, an outage a week after the first would leave no line in the
//! logs; logged every time, a dead ingest API would write a line per
//! request. The pace is of real time (std's clock, not Tokio's, which a
//! test may pause): it is about the volume of the logs.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When a line at its level is due for one kind of trouble.
#[derive(Debug, Default)]
pub(crate) struct LogPace {
    /// When the last line was due, in milliseconds since [`epoch`], plus
    /// one; 0 when none was.
    last_line: AtomicU64,
    /// Occurrences since that line.
    since_line: AtomicU64,
}

impl LogPace {
    /// The least time between two lines for the same trouble.
    pub(crate) const INTERVAL: Duration = Duration::from_secs(60);

    pub(crate) const fn new() -> Self {
        Self {
            last_line: AtomicU64::new(0),
            since_line: AtomicU64::new(0),
        }
    }

    /// Counts `times` more occurrences. When a line is due now, returns
    /// how many occurrences it stands for (these and the ones since the
    /// last line); else `None`: the caller logs at `debug` at most.
    pub(crate) fn note(&self, times: u64) -> Option<u64> {
        let now = Instant::now().saturating_duration_since(epoch());
        self.note_at(times, now)
    }

    /// [`note`](Self::note), `now` after the epoch.
    fn note_at(&self, times: u64, now: Duration) -> Option<u64> {
        self.since_line.fetch_add(times, Ordering::Relaxed);
        // Plus one: 0 stands for "never".
        let now_mark = u64::try_from(now.as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last_line.load(Ordering::Relaxed);
        let interval = Self::INTERVAL.as_millis() as u64;
        let due = last == 0 || now_mark.saturating_sub(last) >= interval;
        // One caller wins the line when several find it due at once.
        let won = due
            && self
                .last_line
                .compare_exchange(last, now_mark, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        won.then(|| self.since_line.swap(0, Ordering::Relaxed))
    }
}

/// The instant the pace of every trouble counts from (the first use).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_time_is_logged_then_once_an_interval_with_the_count_since() {
        let pace = LogPace::new();
        assert_eq!(pace.note_at(3, Duration::ZERO), Some(3), "the first");
        assert_eq!(pace.note_at(1, SECOND), None);
        assert_eq!(pace.note_at(2, 59 * SECOND), None);
        // A minute after the last line: it stands for all three since.
        assert_eq!(pace.note_at(4, 60 * SECOND), Some(7));
        assert_eq!(pace.note_at(1, 61 * SECOND), None);
        // A week of quiet later, the next trouble is logged at once.
        let week = 7 * 24 * 3600 * SECOND;
        assert_eq!(pace.note_at(5, week), Some(6));
        assert_eq!(pace.note_at(1, week + 59 * SECOND), None);
    }

    #[test]
    fn each_pace_keeps_its_own_time() {
        let (a, b) = (LogPace::new(), LogPace::new());
        assert_eq!(a.note_at(1, 10 * SECOND), Some(1));
        assert_eq!(b.note_at(1, 30 * SECOND), Some(1));
        assert_eq!(a.note_at(1, 70 * SECOND), Some(1));
        assert_eq!(b.note_at(1, 70 * SECOND), None);
    }

    #[test]
    fn note_reads_the_clock() {
        let pace = LogPace::new();
        assert_eq!(pace.note(2), Some(2));
        assert_eq!(pace.note(1), None, "within the interval of the clock");
    }
}
