//! Calls the application's hooks (redaction, run key, distinct id) so that
//! a panic in one never reaches the request being served: it is caught,
//! logged, counted, and the hook's answer is left out.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::fence::caught;
use crate::log_pace::LogPace;

/// Which of the application's hooks is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    /// `with_redaction`.
    Redaction,
    /// `with_run_key`.
    RunKey,
    /// `with_distinct_id`.
    DistinctId,
}

impl Hook {
    /// The hook and what its panic costs, for the log.
    fn describe(self) -> (&'static str, &'static str) {
        match self {
            Self::Redaction => (
                "the redaction hook",
                "the value it was given is left out of its span",
            ),
            Self::RunKey => (
                "the run key hook",
                "the request is grouped as if it gave no key",
            ),
            Self::DistinctId => (
                "the distinct id hook",
                "the request's run gets no distinct_id",
            ),
        }
    }

    /// When a panic of this hook is next logged at `error`.
    fn pace(self) -> &'static LogPace {
        static PACES: [LogPace; 3] = [const { LogPace::new() }; 3];
        &PACES[self as usize]
    }

    /// Calls `hook`: its answer, or `None` if it panicked (counted in
    /// `panics`; logged at `error` at most once a minute for this hook, at
    /// `debug` between).
    pub(crate) fn call<R>(self, panics: &AtomicU64, hook: impl FnOnce() -> R) -> Option<R> {
        let (subject, cost) = self.describe();
        let answer = caught(hook, self.pace(), subject, cost);
        if answer.is_none() {
            panics.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_passes_and_a_panic_becomes_none_and_is_counted() {
        let panics = AtomicU64::new(0);
        assert_eq!(Hook::RunKey.call(&panics, || 7), Some(7));
        assert_eq!(panics.load(Ordering::Relaxed), 0);
        let bug = || -> u8 { panic!("hook bug") };
        assert_eq!(Hook::DistinctId.call(&panics, bug), None);
        assert_eq!(Hook::DistinctId.call(&panics, bug), None);
        assert_eq!(panics.load(Ordering::Relaxed), 2);
        assert_eq!(
            Hook::DistinctId.pace().note(0),
            None,
            "the first panic took this minute's line"
        );
    }
}
