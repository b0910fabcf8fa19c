//! [`Moment`]: a point in time, on both clocks.

use std::time::Instant;

use crate::wire::Timestamp;

/// When something happened: the wall-clock time for the records, and the
/// monotonic instant for durations and the idle sweep. Taken when the
/// layer saw it happen, which may be well before it is read (see
/// [`crate::backlog`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Moment {
    pub(crate) at: Timestamp,
    pub(crate) instant: Instant,
}

impl Moment {
    /// Now.
    pub(crate) fn now() -> Self {
        Self {
            at: Timestamp::now(),
            instant: instant_now(),
        }
    }
}

/// The monotonic time now, on Tokio's clock: std's, except in a test that
/// pauses Tokio's time (its `test-util` feature), where the layer's runs
/// then idle and wait on the paused clock.
pub(crate) fn instant_now() -> Instant {
    tokio::time::Instant::now().into_std()
}
