//! What of a body or a value is kept as a span's `input` / `output`:
//! captured or not, redacted, cut to the capture limit.
//!
//! One policy serves the layer's body captures and the manual API's values,
//! so a redaction hook sees everything that leaves the process.

use serde_json::Value;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::capture::{cut_to_chars, truncate_chars};
use crate::config::Settings;
use crate::hook::Hook;
use crate::wire::io_text;

/// Which side of a span a text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The request (or a manual span's input).
    Input,
    /// The response (or a manual span's output).
    Output,
}

/// The application's redaction hook.
#[derive(Clone)]
pub(crate) struct Redactor(pub(crate) Arc<dyn Fn(&mut Value) + Send + Sync>);

impl Redactor {
    /// Runs the hook on `value`. A hook that panics leaves `value` unfit
    /// to send (perhaps half redacted): `false` then, and the panic is
    /// logged, never passed on to the request being served.
    fn redact(&self, value: &mut Value, panics: &AtomicU64) -> bool {
        Hook::Redaction.call(panics, || (self.0)(value)).is_some()
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Redactor(<fn>)")
    }
}

/// A captured body as its span will keep it. The application's redaction
/// hook may be slow, so a body waits for it where its span is recorded:
/// after the response head, and, for most spans, on the delivery thread
/// rather than the request's.
#[derive(Debug)]
pub(crate) enum Kept {
    /// As the span keeps it (if at all), and whether the span says it was cut.
    Final(Option<String>, bool),
    /// As read, for the redaction hook, then cut to the capture limit;
    /// `whole`: whether it was read whole (a JSON text read whole is
    /// redacted as JSON).
    Unredacted {
        side: Side,
        text: String,
        whole: bool,
    },
}

impl Kept {
    /// Bytes of text it holds.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Final(text, _) => text.as_ref().map_or(0, String::len),
            Self::Unredacted { text, .. } => text.len(),
        }
    }
}

/// A span's error text, which the redaction hook sees only if it came from
/// the answer: where the span is recorded, as a body is (see [`Kept`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ErrorText {
    /// The layer's own text, sent as it is.
    Own(String),
    /// The text of an error the answer carried (see
    /// [`Settings::answered_error_text`]).
    Answered(String),
}

/// The `error_message` of an error answer while output capture is off.
pub(crate) const ERROR_TEXT_NOT_CAPTURED: &str = "the answer's error text is not captured";

/// The `error_message` of an error answer whose redaction hook panicked.
pub(crate) const ERROR_TEXT_WITHHELD: &str =
    "the answer's error text is withheld (the redaction hook panicked)";

/// The error text given to the manual API whose redaction hook panicked.
pub(crate) const GIVEN_ERROR_TEXT_WITHHELD: &str =
    "the error text is withheld (the redaction hook panicked)";

/// How many capture limits of a JSON answer are read to understand it.
const ANSWER_READ_LIMITS: usize = 4;

impl Settings {
    /// How many characters of a JSON answer of the MCP endpoint (an SSE
    /// event's data, or a JSON body: both counted alike) are read to
    /// understand it (its error status) and to redact it whole before it
    /// is cut to the capture limit: four capture limits.
    pub(crate) fn answer_read_window(&self) -> usize {
        self.capture_limit.saturating_mul(ANSWER_READ_LIMITS)
    }

    /// Whether a side is captured at all.
    pub(crate) fn captures(&self, side: Side) -> bool {
        match side {
            Side::Input => self.capture_input,
            Side::Output => self.capture_output,
        }
    }

    /// A captured body as the span keeps it, cut to the capture limit, and
    /// whether the span says it was cut (it was, or it was not `whole`: read
    /// only in part). A JSON body read whole is redacted as JSON (before it
    /// is cut); any other text is redacted as a JSON string.
    #[cfg(test)]
    pub(crate) fn captured_text(
        &self,
        side: Side,
        text: String,
        whole: bool,
    ) -> (Option<String>, bool) {
        self.kept_text(self.keep(side, text, whole))
    }

    /// A captured body, kept for its span: final at once without a
    /// redaction hook (cut to the capture limit), else kept as read for
    /// [`kept_text`](Self::kept_text) to redact where the span is recorded.
    /// A body of more bytes than an answer's read window (a large request)
    /// is redacted at once, so that no exchange holds more than that while
    /// it is answered.
    pub(crate) fn keep(&self, side: Side, mut text: String, whole: bool) -> Kept {
        if !self.captures(side) {
            return Kept::Final(None, !whole || truncate_chars(&text, self.capture_limit).1);
        }
        if self.redactor.is_none() {
            let cut = cut_to_chars(&mut text, self.capture_limit);
            return Kept::Final(Some(text), cut || !whole);
        }
        let kept = Kept::Unredacted { side, text, whole };
        if kept.len() > self.answer_read_window() {
            return self.redacted_now(kept);
        }
        kept
    }

    /// A kept body through the redaction hook now, if it waits for it.
    pub(crate) fn redacted_now(&self, kept: Kept) -> Kept {
        match kept {
            Kept::Unredacted { .. } => {
                let (text, cut) = self.kept_text(kept);
                Kept::Final(text, cut)
            }
            done @ Kept::Final(..) => done,
        }
    }

    /// A kept body as the span keeps it, and whether the span says it was
    /// cut: through the redaction hook, if it waits for it.
    pub(crate) fn kept_text(&self, kept: Kept) -> (Option<String>, bool) {
        let (side, text, whole) = match kept {
            Kept::Final(text, cut) => return (text, cut),
            Kept::Unredacted { side, text, whole } => (side, text, whole),
        };
        let Some(redactor) = &self.redactor else {
            // Kept by settings with a hook: cut as these settings keep it.
            return self.kept_text(self.keep(side, text, whole));
        };
        let over_limit = truncate_chars(&text, self.capture_limit).1;
        let mut value = whole
            .then(|| serde_json::from_str::<Value>(&text).ok())
            .flatten()
            .unwrap_or(Value::String(text));
        if !redactor.redact(&mut value, &self.hook_panics) {
            return (None, over_limit || !whole);
        }
        let (kept, cut) = io_text(value, self.capture_limit);
        (Some(kept), cut || !whole)
    }

    /// The text of an error the answer carried (a JSON-RPC error's
    /// `message`, an `isError` result's text) as the span's
    /// `error_message`: it is part of the output, so it follows the output
    /// switch and goes through the redaction hook as a JSON string.
    pub(crate) fn answered_error_text(&self, text: String) -> String {
        if !self.captures(Side::Output) {
            return ERROR_TEXT_NOT_CAPTURED.to_owned();
        }
        self.redacted_text(text)
            .unwrap_or_else(|| ERROR_TEXT_WITHHELD.to_owned())
    }

    /// The text of a span's error as the span keeps it: an answered one
    /// through the redaction hook (see [`answered_error_text`](Self::answered_error_text)).
    pub(crate) fn error_text(&self, text: ErrorText) -> String {
        match text {
            ErrorText::Own(text) => text,
            ErrorText::Answered(text) => self.answered_error_text(text),
        }
    }

    /// An error text given to the manual API (a span's `error_message`, a
    /// run's `error_summary`; an agent's error): it is what you chose to
    /// send, so it does not follow the output switch, but the redaction
    /// hook sees it as a JSON string (an error's text often quotes its
    /// input). Cut to `max_chars` after the hook.
    pub(crate) fn given_error_text(&self, text: &str, max_chars: usize) -> String {
        let Some(text) = self.redacted_text(text.to_owned()) else {
            return GIVEN_ERROR_TEXT_WITHHELD.to_owned();
        };
        truncate_chars(&text, max_chars).0.to_owned()
    }

    /// `text` through the redaction hook as a JSON string (a hook that
    /// makes it another value gives that value's JSON); `None` if the hook
    /// panicked.
    fn redacted_text(&self, text: String) -> Option<String> {
        let Some(redactor) = &self.redactor else {
            return Some(text);
        };
        let mut value = Value::String(text);
        if !redactor.redact(&mut value, &self.hook_panics) {
            return None;
        }
        Some(match value {
            Value::String(text) => text,
            other => other.to_string(),
        })
    }

    /// A value given to the manual API as the span keeps it; `null` is
    /// left out.
    pub(crate) fn captured_value(&self, side: Side, mut value: Value) -> Option<String> {
        // `null` (a unit result, say) is no value: left out, not "null".
        if !self.captures(side) || value.is_null() {
            return None;
        }
        if let Some(redactor) = &self.redactor
            && !redactor.redact(&mut value, &self.hook_panics)
        {
            return None;
        }
        Some(io_text(value, self.capture_limit).0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrodoConfig;
    use serde_json::json;

    fn mask_secrets() -> TrodoConfig {
        TrodoConfig::new().with_redaction(|value: &mut Value| {
            if let Some(secret) = value.pointer_mut("/params/arguments/password") {
                *secret = Value::from("[redacted]");
            }
            if let Value::String(text) = value {
                *text = text.replace("hunter2", "[redacted]");
            }
        })
    }

    #[test]
    fn an_answers_error_text_follows_the_output_switch_and_the_hook() {
        let text = || "login failed for password hunter2".to_owned();
        assert_eq!(
            mask_secrets().settings.answered_error_text(text()),
            "login failed for password [redacted]"
        );
        let off = mask_secrets().with_output_capture(false).settings;
        assert_eq!(off.answered_error_text(text()), ERROR_TEXT_NOT_CAPTURED);
        let panicking = TrodoConfig::new()
            .with_redaction(|_: &mut Value| panic!("hook bug"))
            .settings;
        assert_eq!(panicking.answered_error_text(text()), ERROR_TEXT_WITHHELD);
        let to_object = TrodoConfig::new()
            .with_redaction(|value: &mut Value| *value = json!({"redacted": true}))
            .settings;
        assert_eq!(
            to_object.answered_error_text(text()),
            r#"{"redacted":true}"#
        );
        assert_eq!(
            TrodoConfig::new().settings.answered_error_text(text()),
            text()
        );
    }

    #[test]
    fn a_kept_body_meets_the_hook_only_where_its_span_is_recorded() {
        let calls = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&calls);
        let settings = TrodoConfig::new()
            .with_capture_limit(4)
            .unwrap()
            .with_redaction(move |value: &mut Value| {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *value = Value::from(value.to_string().to_uppercase());
            })
            .settings;
        let kept = settings.keep(Side::Output, r#"{"a":"b"}"#.to_owned(), true);
        assert_eq!(kept.len(), 9, "held as read");
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert_eq!(settings.kept_text(kept), (Some(r#"{"A""#.to_owned()), true));
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);

        let plain = TrodoConfig::new().with_capture_limit(4).unwrap().settings;
        let kept = plain.keep(Side::Output, r#"{"a":"b"}"#.to_owned(), true);
        assert!(
            matches!(&kept, Kept::Final(Some(text), true) if text == r#"{"a""#),
            "without a hook, cut at once: {kept:?}"
        );
        // More than four capture limits: redacted at once.
        let kept = settings.keep(Side::Input, r#"{"a":"0123456789"}"#.to_owned(), true);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert!(
            matches!(&kept, Kept::Final(Some(text), true) if text == r#"{"A""#),
            "{kept:?}"
        );

        let off = TrodoConfig::new().with_output_capture(false).settings;
        let kept = off.keep(Side::Output, "abc".to_owned(), false);
        assert!(matches!(kept, Kept::Final(None, true)), "{kept:?}");
    }

    #[test]
    fn json_bodies_are_redacted_as_json() {
        let settings = mask_secrets().settings;
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"login","arguments":{"password":"hunter2"}}}"#;
        let (kept, cut) = settings.captured_text(Side::Input, body.to_owned(), true);
        assert!(!cut);
        let kept: Value = serde_json::from_str(&kept.unwrap()).unwrap();
        assert_eq!(kept["params"]["arguments"]["password"], "[redacted]");
        assert_eq!(kept["params"]["name"], "login");
    }

    #[test]
    fn a_body_read_whole_is_redacted_as_json_then_cut_to_the_limit() {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"login","arguments":{"password":"hunter2","note":"a long note"}}}"#;
        // Redacted whole (131 characters), then cut.
        let redacted = mask_secrets().with_capture_limit(120).unwrap().settings;
        let (kept, cut) = redacted.captured_text(Side::Input, body.to_owned(), true);
        let kept = kept.unwrap();
        assert!(cut);
        assert_eq!(kept.chars().count(), 120);
        assert!(kept.contains(r#""password":"[redacted]""#), "{kept}");
        let plain = TrodoConfig::new().with_capture_limit(10).unwrap().settings;
        let kept = plain.captured_text(Side::Input, body.to_owned(), true);
        assert_eq!(kept, (Some(r#"{"jsonrpc""#.to_owned()), true));
    }

    #[test]
    fn a_redaction_that_outgrows_the_limit_is_cut_and_says_so() {
        let settings = TrodoConfig::new()
            .with_redaction(|value: &mut Value| {
                if let Some(note) = value.pointer_mut("/note") {
                    *note = Value::from("[a replacement longer than the note]");
                }
            })
            .with_capture_limit(20)
            .unwrap()
            .settings;
        let (kept, cut) = settings.captured_text(Side::Output, r#"{"note":"n"}"#.to_owned(), true);
        assert_eq!(kept.as_deref(), Some(r#"{"note":"[a replacem"#));
        assert!(cut);
    }

    #[test]
    fn cut_or_plain_text_is_redacted_as_a_string() {
        let settings = mask_secrets().settings;
        let kept = settings.captured_text(Side::Output, "{\"pw\":\"hunter2".to_owned(), false);
        assert_eq!(kept, (Some("{\"pw\":\"[redacted]".to_owned()), true));
    }

    #[test]
    fn a_panicking_hook_leaves_the_value_out_and_does_not_unwind() {
        let settings = TrodoConfig::new()
            .with_redaction(|value: &mut Value| {
                value["params"] = Value::from("half done");
                panic!("hook bug");
            })
            .settings;
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"secret":"s"}}"#;
        assert_eq!(
            settings.captured_text(Side::Input, body.to_owned(), true),
            (None, false)
        );
        assert_eq!(settings.captured_value(Side::Output, json!({"a": 1})), None);
    }

    #[test]
    fn a_null_value_is_left_out() {
        let settings = TrodoConfig::new().settings;
        assert_eq!(settings.captured_value(Side::Output, Value::Null), None);
        assert_eq!(
            settings
                .captured_value(Side::Output, json!([null]))
                .as_deref(),
            Some("[null]")
        );
    }

    #[test]
    fn capture_can_be_switched_off_per_side() {
        let settings = TrodoConfig::new().with_input_capture(false).settings;
        assert_eq!(
            settings.captured_text(Side::Input, "x".to_owned(), true),
            (None, false)
        );
        assert_eq!(
            settings
                .captured_value(Side::Output, json!({"a": 1}))
                .as_deref(),
            Some(r#"{"a":1}"#)
        );
    }
}
