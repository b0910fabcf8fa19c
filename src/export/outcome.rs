//! What an answer of the ingest API means for the call that got it.

use std::time::{Duration, SystemTime};

/// The result of one call, as the worker acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A 2xx: the records are in.
    Delivered,
    /// A 5xx, a 408, a network error or a timeout: back off and try again,
    /// at the earliest after the server's `Retry-After` if it sent one.
    Transient {
        retry_after: Option<Duration>,
        detail: String,
    },
    /// A 429: pause every call until `Retry-After` (or a back-off step).
    Throttled { retry_after: Option<Duration> },
    /// A 413: split the batch; a single record is dropped as `too_large`.
    TooLarge,
    /// Any other answer: sending it again would get the same.
    Rejected { detail: String },
}

impl Outcome {
    /// The outcome of an HTTP answer with `status` and its `Retry-After`
    /// header, read at `now`.
    pub(crate) fn of_status(status: u16, retry_after: Option<&str>, now: SystemTime) -> Self {
        let retry_after = || retry_after.and_then(|v| parse_retry_after(v, now));
        match status {
            200..=299 => Self::Delivered,
            429 => Self::Throttled {
                retry_after: retry_after(),
            },
            413 => Self::TooLarge,
            408 | 500..=599 => Self::Transient {
                retry_after: retry_after(),
                detail: format!("HTTP {status}"),
            },
            _ => Self::Rejected {
                detail: format!("HTTP {status}"),
            },
        }
    }

    /// The outcome of a call that got no answer.
    pub(crate) fn network_error(detail: impl Into<String>) -> Self {
        Self::Transient {
            retry_after: None,
            detail: detail.into(),
        }
    }
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (a date in the past
/// means now). Anything else is ignored.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn statuses_map_to_what_the_worker_does() {
        let now = at(0);
        assert_eq!(Outcome::of_status(200, None, now), Outcome::Delivered);
        assert_eq!(Outcome::of_status(202, None, now), Outcome::Delivered);
        assert_eq!(Outcome::of_status(413, None, now), Outcome::TooLarge);
        for status in [408, 500, 502, 503, 504] {
            assert!(
                matches!(
                    Outcome::of_status(status, None, now),
                    Outcome::Transient { .. }
                ),
                "{status}"
            );
        }
        for status in [301, 400, 401, 403, 404, 409, 422] {
            assert_eq!(
                Outcome::of_status(status, None, now),
                Outcome::Rejected {
                    detail: format!("HTTP {status}")
                }
            );
        }
        assert_eq!(
            Outcome::of_status(429, Some("7"), now),
            Outcome::Throttled {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            Outcome::of_status(503, Some("2"), now),
            Outcome::Transient {
                retry_after: Some(Duration::from_secs(2)),
                detail: "HTTP 503".to_owned()
            }
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = at(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
