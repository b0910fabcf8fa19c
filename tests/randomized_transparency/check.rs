//! The checks of what the layer recorded: each case's span, and each
//! run's end.

use std::collections::HashMap;

use serde_json::Value;

use crate::LIMIT;
use crate::case::{Case, Kind};
use crate::common::RecordingIngest;
use crate::generate::{Expected, Sent};

/// Each run (`runs`: run id to conversation id) ends at most once, and
/// once if `all_end`, with the true totals of the spans it sent (README,
/// "What is recorded").
pub(super) fn check_ends(ingest: &RecordingIngest, runs: &HashMap<String, String>, all_end: bool) {
    let ends = ingest.ends();
    let mut ended: Vec<&str> = ends.iter().map(|(id, _)| id.as_str()).collect();
    ended.sort_unstable();
    ended.dedup();
    assert_eq!(ended.len(), ends.len(), "a run ends at most once");
    if all_end {
        assert_eq!(ends.len(), runs.len(), "every run ends");
    }
    let spans = ingest.spans();
    for (run_id, end) in &ends {
        let conversation = runs.get(run_id).expect("an end of a run that started");
        let sent: Vec<&Value> = spans
            .iter()
            .filter(|(id, _)| id == run_id)
            .map(|(_, span)| span)
            .collect();
        let errors = sent.iter().filter(|span| span["status"] == "error").count();
        assert_eq!(end["span_count"], sent.len(), "{conversation}: {end}");
        assert_eq!(end["error_count"], errors, "{conversation}: {end}");
    }
}

/// A case's span says what went by: its input, and the answer the model
/// knows of.
/// `parks`: whether a call whose stream ended without its answer waits
/// for the stream to be resumed (without a session store).
pub(super) fn check_span(case: &Case, span: &Value, parks: bool) {
    let context = || format!("case {}: {span:#} {case:#?}", case.number);
    let attributes = &span["attributes"];
    assert_eq!(
        attributes["http.request.body.size"],
        case.request.len(),
        "{}",
        context()
    );
    if case.encoded {
        // Kept out of the span, named from its size alone (README, "What
        // is captured").
        assert!(span.get("input").is_none(), "{}", context());
        assert_eq!(attributes["input_truncated"], false, "{}", context());
        assert_eq!(
            attributes["http.request.content_encoding"],
            "gzip",
            "{}",
            context()
        );
        let name = if case.request.is_empty() {
            "mcp.invalid_message"
        } else {
            "mcp.request"
        };
        assert_eq!(span["name"], name, "{}", context());
        return;
    }
    let input = String::from_utf8_lossy(&case.request);
    if case.request.is_empty() {
        assert!(span.get("input").is_none(), "{}", context());
    } else {
        assert_eq!(span["input"], cut(&input, LIMIT), "{}", context());
        let over = input.chars().count() > LIMIT;
        assert_eq!(attributes["input_truncated"], over, "{}", context());
    }
    let (name, fails) = match &case.sent {
        Sent::Request {
            tool: Some(tool), ..
        } => (format!("tool.{tool}"), None),
        Sent::Request { method, .. } => (format!("mcp.{method}"), None),
        // Not read whole to be understood: of an unknown method.
        _ if case.too_large() => ("mcp.request".to_owned(), None),
        _ => ("mcp.invalid_message".to_owned(), Some(true)),
    };
    assert_eq!(span["name"], name, "{}", context());
    if let Some(fails) = fails {
        assert_eq!(span["status"] == "error", fails, "{}", context());
    }
    if case.answer_encoded {
        // Kept out of the span (README, "What is captured").
        assert!(span.get("output").is_none(), "{}", context());
        let encoding = &attributes["http.response.content_encoding"];
        assert_eq!(encoding, "gzip", "{}", context());
        return;
    }
    let whole = case.all_read() && !case.breaks;
    let answered = |expected: &Expected| {
        assert_eq!(span["output"], cut(&expected.text, LIMIT), "{}", context());
        let over = expected.text.chars().count() > LIMIT || !expected.read_whole;
        assert_eq!(attributes["output_truncated"], over, "{}", context());
        let status = if expected.fails { "error" } else { "ok" };
        assert_eq!(span["status"], status, "{}", context());
    };
    if let Some(resume) = case.resume.as_ref().filter(|_| parks) {
        // The call waited, and the GET that resumed its stream answered.
        assert_eq!(attributes["mcp.stream_resumed"], true, "{}", context());
        answered(&resume.expected);
        return;
    }
    let request = matches!(case.sent, Sent::Request { .. });
    if request && whole && case.is_success() && case.kind == Kind::EventStream {
        // The stream ended without the answer: broken off.
        if case.expected.is_none() {
            assert_eq!(span["error_type"], "stream_error", "{}", context());
        }
    }
    let Some(expected) = case
        .expected
        .as_ref()
        .filter(|_| whole && case.is_success())
    else {
        return;
    };
    answered(expected);
}

/// The first `chars` characters of `text`.
fn cut(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}
