//! [`Trouble`]: whether the ingest API as a whole is failing, as the
//! answers to every run's calls tell it.

use tokio::time::Instant;

use super::retry::Backoff;

/// Transient failures in a row, of any runs, after which the API as a
/// whole is taken to be down.
const FAILURES_BEFORE_PAUSE: u32 = 3;

/// The ingest API's trouble across runs.
///
/// Each run backs off on its own, so that one run's failing calls do not
/// hold up the others. But an API that fails every call is down for all,
/// and thousands of runs each backing off on their own would still call it
/// many times a second, and send a burst of calls at the end of every
/// pause. So after a few failures in a row every call pauses, for a step
/// that grows with each pause of the spell (as a run's back-off does: 1 s
/// doubling to 60 s); and after such a pause, or a 429's, one call goes
/// alone, as a probe, until the API answers one (then the others go, up to
/// the calls allowed in flight). Any answer (a success, or a refusal of
/// that call alone) ends the spell. Once shutdown began, the worker neither
/// pauses nor probes: it is every run's last chance.
#[derive(Debug, Default)]
pub(crate) struct Trouble {
    /// Transient failures in a row, of any runs.
    failures: u32,
    /// Pauses in this spell.
    pauses: u32,
    /// Until when the latest pause holds.
    paused_until: Option<Instant>,
    /// Whether calls go one at a time.
    probing: bool,
}

impl Trouble {
    /// The API answered a call: the spell is over.
    pub(crate) fn answered(&mut self) {
        *self = Self::default();
    }

    /// A call failed transiently at `now`: the end of the pause every run
    /// takes, if one starts now (not while one holds: the calls that were
    /// in flight with the failing ones fail too, and count for one).
    pub(crate) fn failed(&mut self, now: Instant, backoff: &Backoff) -> Option<Instant> {
        self.failures = self.failures.saturating_add(1);
        let pausing = self.paused_until.is_some_and(|until| now < until);
        if self.failures < FAILURES_BEFORE_PAUSE || pausing {
            return None;
        }
        let until = now + backoff.jittered(backoff.step(self.pauses));
        self.pauses = self.pauses.saturating_add(1);
        self.paused_until = Some(until);
        self.probing = true;
        Some(until)
    }

    /// A 429 paused every call: when it ends, one call goes first alone.
    pub(crate) fn throttled(&mut self) {
        self.probing = true;
    }

    /// How many calls may be in flight, of the configured `max`.
    pub(crate) fn max_in_flight(&self, max: usize) -> usize {
        if self.probing { max.min(1) } else { max }
    }
}

#[cfg(test)]
mod tests {
    use super::super::retry::EXACT;
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_pause_starts_at_the_third_failure_in_a_row_and_grows_with_each() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut trouble = Trouble::default();
        assert_eq!(trouble.failed(at(0), &EXACT), None);
        assert_eq!(trouble.failed(at(0), &EXACT), None);
        assert_eq!(trouble.max_in_flight(32), 32);
        assert_eq!(trouble.failed(at(0), &EXACT), Some(at(1)));
        assert_eq!(trouble.max_in_flight(32), 1, "a probe after the pause");
        // The rest of a burst, failing while the pause holds: no new pause.
        assert_eq!(trouble.failed(at(0), &EXACT), None);
        // Each probe that fails doubles the pause, up to the longest step.
        let mut now = 1;
        for step in [2, 4, 8, 16, 32, 60, 60] {
            assert_eq!(trouble.failed(at(now), &EXACT), Some(at(now + step)));
            now += step;
        }
        trouble.answered();
        assert_eq!(trouble.max_in_flight(32), 32);
        assert_eq!(trouble.failed(at(now), &EXACT), None, "a new spell");
    }

    #[test]
    fn an_answer_between_failures_keeps_the_api_up() {
        let now = Instant::now();
        let mut trouble = Trouble::default();
        for _ in 0..10 {
            assert_eq!(trouble.failed(now, &EXACT), None);
            trouble.answered();
        }
        assert_eq!(trouble.max_in_flight(32), 32);
    }

    #[test]
    fn after_a_429_one_call_goes_alone_until_one_is_answered() {
        let mut trouble = Trouble::default();
        trouble.throttled();
        assert_eq!(trouble.max_in_flight(32), 1);
        trouble.answered();
        assert_eq!(trouble.max_in_flight(32), 32);
    }
}
