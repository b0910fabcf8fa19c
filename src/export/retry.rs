//! When to try a failed call again, and when to give up on it.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Exponential back-off with jitter, bounded in time.
///
/// The n-th wait is a step of `base * 2^n`, capped at `max`, shortened by a
/// random fraction of up to a quarter so that many processes do not retry
/// in lockstep. A call that has been failing for `give_up_after` is dropped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    /// The first step.
    pub(crate) base: Duration,
    /// The longest step.
    pub(crate) max: Duration,
    /// How long a call may keep failing before it is dropped as `gave_up`.
    pub(crate) give_up_after: Duration,
    /// Whether steps are shortened at random (off in tests, for exact times).
    pub(crate) jitter: bool,
}

impl Default for Backoff {
    /// 1 s doubling to 60 s, for up to 10 minutes, with jitter.
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            give_up_after: Duration::from_secs(600),
            jitter: true,
        }
    }
}

impl Backoff {
    /// The step before try `attempt + 2`, before jitter.
    pub(super) fn step(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// `step` shortened by up to a quarter at random.
    pub(super) fn jittered(&self, step: Duration) -> Duration {
        if self.jitter {
            step.mul_f64(1.0 - unit_random() / 4.0)
        } else {
            step
        }
    }
}

/// The failures so far of the call at the front of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RetryState {
    /// Failed tries so far.
    attempts: u32,
    /// When the first try failed.
    failing_since: Option<Instant>,
}

impl RetryState {
    /// Notes a transient failure at `now` and says how long to wait before
    /// the next try (at least `hint`, a server's `Retry-After`, capped at the
    /// longest step), or `None` when the call has failed for too long.
    pub(crate) fn failed(
        &mut self,
        now: Instant,
        backoff: &Backoff,
        hint: Option<Duration>,
    ) -> Option<Duration> {
        let since = *self.failing_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= backoff.give_up_after {
            return None;
        }
        let wait = backoff.jittered(backoff.step(self.attempts));
        self.attempts = self.attempts.saturating_add(1);
        Some(wait.max(hint.unwrap_or_default().min(backoff.max)))
    }
}

/// A number in `[0, 1)`, different on every call; not for cryptography.
fn unit_random() -> f64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let bits = RandomState::new().hash_one(CALLS.fetch_add(1, Ordering::Relaxed));
    // 53 random bits make an exact f64 fraction.
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// The default back-off without jitter, for exact times in tests.
#[cfg(test)]
pub(super) const EXACT: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(60),
    give_up_after: Duration::from_secs(600),
    jitter: false,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_double_from_one_second_to_sixty() {
        let mut state = RetryState::default();
        let now = Instant::now();
        let waits: Vec<u64> = (0..9)
            .map(|_| state.failed(now, &EXACT, None).unwrap().as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn gives_up_once_failing_for_ten_minutes() {
        let mut state = RetryState::default();
        let mut now = Instant::now();
        let mut tries = 1;
        while let Some(wait) = state.failed(now, &EXACT, None) {
            now += wait;
            tries += 1;
        }
        // Waits 1+2+4+8+16+32 = 63 s, then 60 s each: the try at 603 s is
        // the first after ten minutes, and its failure gives up.
        assert_eq!(tries, 1 + 6 + 9);
        assert_eq!(
            state.failing_since.map(|s| now - s),
            Some(Duration::from_secs(603))
        );
    }

    #[test]
    fn a_retry_after_hint_lengthens_the_wait_up_to_the_longest_step() {
        let now = Instant::now();
        let mut state = RetryState::default();
        assert_eq!(
            state.failed(now, &EXACT, Some(Duration::from_secs(5))),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            state.failed(now, &EXACT, Some(Duration::from_secs(3600))),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn jitter_shortens_by_at_most_a_quarter() {
        let backoff = Backoff {
            jitter: true,
            ..EXACT
        };
        let step = Duration::from_secs(8);
        let waits: Vec<Duration> = (0..1000).map(|_| backoff.jittered(step)).collect();
        assert!(waits.iter().all(|w| *w <= step && *w >= step * 3 / 4));
        assert!(waits.iter().any(|w| *w != waits[0]), "waits vary");
    }
}
