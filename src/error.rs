//! Errors of this crate.

use std::fmt;

/// A setting of [`TrodoConfig`](crate::TrodoConfig) has a value that cannot work.
///
/// It names the setting (the environment variable, or the builder method) and
/// quotes the value, so that a server fails at startup with an error that
/// says what to fix.
///
/// ```
/// use std::time::Duration;
/// use trodo_tower::TrodoConfig;
///
/// let err = TrodoConfig::new().with_idle_timeout(Duration::ZERO).unwrap_err();
/// assert_eq!(err.setting(), "idle_timeout");
/// assert!(err.to_string().contains("idle_timeout"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    setting: String,
    value: String,
    expected: &'static str,
}

impl ConfigError {
    pub(crate) fn new(
        setting: impl Into<String>,
        value: impl Into<String>,
        expected: &'static str,
    ) -> Self {
        Self {
            setting: setting.into(),
            value: value.into(),
            expected,
        }
    }

    /// The setting that is wrong: an environment variable such as
    /// `TRODO_IDLE_TIMEOUT_SECS`, or a builder setting such as `idle_timeout`.
    #[must_use]
    pub fn setting(&self) -> &str {
        &self.setting
    }

    /// The value that was given.
    #[must_use]
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} = {:?}: expected {}",
            self.setting, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}
