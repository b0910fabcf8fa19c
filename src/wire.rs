//! The records of the Trodo ingest API, field by field as the Python SDK sends them.
//!
//! Fields whose value is `None` are left out of the JSON. Timestamps are UTC
//! with a `Z` suffix; `input`, `output` and the error texts are cut on a
//! character boundary (see [`MAX_IO_CHARS`] and [`MAX_ERROR_CHARS`]).

use serde::Serialize;
use serde_json::{Map, Value};
use std::time::SystemTime;
use uuid::Uuid;

use crate::attributes::Attributes;
use crate::json_writer::JsonObject;
use crate::span_kind::SpanKind;

/// Most characters kept of a run's or span's `input` and `output`.
pub const MAX_IO_CHARS: usize = 64_000;
/// Most characters kept of `error_summary` and `error_message`.
pub const MAX_ERROR_CHARS: usize = 4_000;

/// A run as sent to `runs/start` (and `runs/ingest`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    pub(crate) run_id: Uuid,
    pub(crate) agent_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) distinct_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) conversation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) parent_run_id: Option<Uuid>,
    pub(crate) status: RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) input: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) output: Option<String>,
    pub(crate) started_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ended_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error_summary: Option<String>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub(crate) metadata: Map<String, Value>,
    /// The totals, for a run sent whole (`runs/ingest`); `None` for `runs/start`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub(crate) totals: Option<Totals>,
}

impl Run {
    /// A running run of `agent_name` started at `started_at`; every
    /// optional field unset.
    pub(crate) fn new(run_id: Uuid, agent_name: String, started_at: Timestamp) -> Self {
        Self {
            run_id,
            agent_name,
            distinct_id: None,
            conversation_id: None,
            parent_run_id: None,
            status: RunStatus::Running,
            input: None,
            output: None,
            started_at,
            ended_at: None,
            duration_ms: None,
            error_summary: None,
            metadata: Map::new(),
            totals: None,
        }
    }
}

/// The status of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RunStatus {
    Running,
    Ok,
    Error,
}

/// The status of a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanStatus {
    Ok,
    Error,
}

impl SpanStatus {
    /// As the ingest API names it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
        }
    }
}

/// A span as sent to `runs/{id}/spans`; [`Span::write_json`] writes its JSON.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub(crate) span_id: Uuid,
    pub(crate) run_id: Uuid,
    pub(crate) parent_span_id: Option<Uuid>,
    pub(crate) kind: SpanKind,
    pub(crate) name: String,
    pub(crate) status: SpanStatus,
    pub(crate) started_at: Timestamp,
    pub(crate) ended_at: Timestamp,
    pub(crate) duration_ms: u64,
    pub(crate) input: Option<String>,
    pub(crate) output: Option<String>,
    pub(crate) error_type: Option<String>,
    pub(crate) error_message: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) provider: Option<String>,
    pub(crate) input_tokens: Option<u64>,
    pub(crate) output_tokens: Option<u64>,
    pub(crate) cost: Option<f64>,
    pub(crate) temperature: Option<f64>,
    pub(crate) tool_name: Option<String>,
    pub(crate) attributes: Attributes,
}

impl Span {
    /// An `ok` span that starts and ends at `started_at`; every optional
    /// field unset.
    pub(crate) fn new(
        span_id: Uuid,
        run_id: Uuid,
        kind: SpanKind,
        name: String,
        started_at: Timestamp,
    ) -> Self {
        Self {
            span_id,
            run_id,
            parent_span_id: None,
            kind,
            name,
            status: SpanStatus::Ok,
            started_at,
            ended_at: started_at,
            duration_ms: 0,
            input: None,
            output: None,
            error_type: None,
            error_message: None,
            model: None,
            provider: None,
            input_tokens: None,
            output_tokens: None,
            cost: None,
            temperature: None,
            tool_name: None,
            attributes: Attributes::default(),
        }
    }

    /// Appends the span's JSON to `out`; fields without a value are left
    /// out. Written by hand rather than derived, for the escaping of
    /// `input` and `output` (see [`crate::json_writer`]).
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        let mut object = JsonObject::new(out);
        object.uuid("span_id", self.span_id);
        object.uuid("run_id", self.run_id);
        if let Some(parent) = self.parent_span_id {
            object.uuid("parent_span_id", parent);
        }
        object.text("kind", self.kind.as_str());
        object.text("name", &self.name);
        object.text("status", self.status.as_str());
        object.with("started_at", |out| self.started_at.write_json(out));
        object.with("ended_at", |out| self.ended_at.write_json(out));
        object.integer("duration_ms", self.duration_ms);
        object.optional_text("input", self.input.as_deref());
        object.optional_text("output", self.output.as_deref());
        object.optional_text("error_type", self.error_type.as_deref());
        object.optional_text("error_message", self.error_message.as_deref());
        object.optional_text("model", self.model.as_deref());
        object.optional_text("provider", self.provider.as_deref());
        object.optional_integer("input_tokens", self.input_tokens);
        object.optional_integer("output_tokens", self.output_tokens);
        object.optional_value("cost", self.cost.as_ref());
        object.optional_value("temperature", self.temperature.as_ref());
        object.optional_text("tool_name", self.tool_name.as_deref());
        if !self.attributes.is_empty() {
            object.with("attributes", |out| self.attributes.write_json(out));
        }
        object.end();
    }

    /// The span's JSON (see [`Span::write_json`]).
    #[cfg(any(test, feature = "bench-internals"))]
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_json(&mut out);
        out
    }

    /// About the size of this span's JSON, without making it: what the
    /// delivery queue's byte bound counts for a span until the delivery
    /// thread serializes it. Escaping is allowed for (a quarter more than
    /// the strings), attributes included.
    pub(crate) fn json_size_estimate(&self) -> usize {
        /// The ids, kind, status, timestamps, duration and the keys.
        const FIXED: usize = 320;
        let text = [
            Some(&self.name),
            self.input.as_ref(),
            self.output.as_ref(),
            self.error_type.as_ref(),
            self.error_message.as_ref(),
            self.model.as_ref(),
            self.provider.as_ref(),
            self.tool_name.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(String::len)
        .sum::<usize>();
        FIXED + text + text / 4 + self.attributes.json_size_estimate()
    }
}

/// The body of `runs/{id}/end`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct End {
    pub(crate) ended_at: Timestamp,
    pub(crate) status: RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error_summary: Option<String>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub(crate) metadata: Map<String, Value>,
    #[serde(flatten)]
    pub(crate) totals: Totals,
}

/// The six aggregates of a run, summed over its spans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Totals {
    pub(crate) total_tokens_in: u64,
    pub(crate) total_tokens_out: u64,
    #[serde(serialize_with = "serialize_cost")]
    pub(crate) total_cost: f64,
    pub(crate) span_count: u64,
    pub(crate) tool_count: u64,
    pub(crate) error_count: u64,
}

impl Totals {
    /// The totals of finished spans.
    pub(crate) fn of(spans: &[Span]) -> Self {
        let mut totals = Self::default();
        for span in spans {
            totals.add(span);
        }
        totals
    }

    /// Counts one finished span into the totals.
    pub(crate) fn add(&mut self, span: &Span) {
        self.span_count += 1;
        if span.kind == SpanKind::Tool {
            self.tool_count += 1;
        }
        if span.status == SpanStatus::Error {
            self.error_count += 1;
        }
        self.total_tokens_in = self
            .total_tokens_in
            .saturating_add(span.input_tokens.unwrap_or(0));
        self.total_tokens_out = self
            .total_tokens_out
            .saturating_add(span.output_tokens.unwrap_or(0));
        self.total_cost += span.cost.unwrap_or(0.0);
    }

    /// Adds other totals (of more spans of the run) to these.
    pub(crate) fn add_totals(&mut self, other: &Totals) {
        self.span_count += other.span_count;
        self.tool_count += other.tool_count;
        self.error_count += other.error_count;
        self.total_tokens_in = self.total_tokens_in.saturating_add(other.total_tokens_in);
        self.total_tokens_out = self.total_tokens_out.saturating_add(other.total_tokens_out);
        self.total_cost += other.total_cost;
    }
}

fn serialize_cost<S: serde::Serializer>(cost: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((cost * 1e8).round() / 1e8)
}

/// The body of `runs/{id}/feedback`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct FeedbackBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) satisfaction: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rating: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) comment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) distinct_id: Option<String>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub(crate) attributes: Map<String, Value>,
}

/// A value as `input` / `output` text: a string is kept as it is, any other
/// JSON value is serialised; cut at `max_chars` characters. Also whether it
/// was cut.
pub(crate) fn io_text(value: Value, max_chars: usize) -> (String, bool) {
    let mut text = match value {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let cut = crate::capture::cut_to_chars(&mut text, max_chars);
    (text, cut)
}

/// A point in time, serialised as ISO-8601 UTC with a `Z` suffix and microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Timestamp(pub(crate) SystemTime);

impl Timestamp {
    /// The current wall-clock time.
    pub(crate) fn now() -> Self {
        Self(SystemTime::now())
    }

    /// Calls `with` with the timestamp's text. A time before 1970 or after
    /// 9999 (a clock far off) is written as the nearest end of that range,
    /// which RFC 3339 and the ingest API can hold.
    fn with_text<R>(&self, with: impl FnOnce(&str) -> R) -> R {
        let mut buf = [0; RFC3339_MICROS_LEN];
        with(match rfc3339_micros(self.0, &mut buf) {
            Some(text) => text,
            None if self.0 < SystemTime::UNIX_EPOCH => "1970-01-01T00:00:00.000000Z",
            None => "9999-12-31T23:59:59.999999Z",
        })
    }

    /// Appends the timestamp to `out` as a JSON string: digits and
    /// `-:.TZ`, which need no escaping.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        self.with_text(|text| {
            out.push(b'"');
            out.extend_from_slice(text.as_bytes());
            out.push(b'"');
        });
    }
}

#[cfg(test)]
impl Span {
    /// A bare span of `tools/call add`, in a run of its own, started now.
    pub(crate) fn tool_add() -> Self {
        Self::new(
            Uuid::new_v4(),
            Uuid::new_v4(),
            SpanKind::Tool,
            "tool.add".to_owned(),
            Timestamp::now(),
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_text(|text| s.serialize_str(text))
    }
}

/// The length of `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
const RFC3339_MICROS_LEN: usize = 27;

/// Formats `time` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` into `buf`, as
/// `humantime::format_rfc3339_micros` does, without the formatting
/// machinery (two timestamps go into every span, which the delivery
/// thread serializes one by one).
/// `None` before 1970 and after 9999 (where `humantime` fails too).
fn rfc3339_micros(time: SystemTime, buf: &mut [u8; RFC3339_MICROS_LEN]) -> Option<&str> {
    const MAX_SECS: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let since_epoch = time.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    let secs = since_epoch.as_secs();
    if secs > MAX_SECS {
        return None;
    }
    let (days, in_day) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm),
    // in unsigned arithmetic: the days are never negative here.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let fields: [(usize, u64, usize); 7] = [
        (0, year, 4),
        (5, month, 2),
        (8, day, 2),
        (11, in_day / 3_600, 2),
        (14, in_day % 3_600 / 60, 2),
        (17, in_day % 60, 2),
        (20, u64::from(since_epoch.subsec_micros()), 6),
    ];
    for (at, mut value, width) in fields {
        for slot in buf[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    for (at, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        buf[at] = sep;
    }
    buf[26] = b'Z';
    std::str::from_utf8(buf).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn token_totals_saturate_rather_than_overflow() {
        let mut span = Span::tool_add();
        span.input_tokens = Some(u64::MAX);
        span.output_tokens = Some(u64::MAX - 1);
        let spans = [span.clone(), span];
        let totals = Totals::of(&spans);
        assert_eq!(
            (
                totals.total_tokens_in,
                totals.total_tokens_out,
                totals.span_count
            ),
            (u64::MAX, u64::MAX, 2)
        );
        let mut sum = totals;
        sum.add_totals(&totals);
        assert_eq!((sum.total_tokens_in, sum.span_count), (u64::MAX, 4));
    }

    #[test]
    fn timestamps_are_utc_with_z() {
        let t = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_115_200_123));
        assert_eq!(
            serde_json::to_value(t).unwrap(),
            "2025-11-26T00:00:00.123000Z"
        );
    }

    #[test]
    fn timestamps_match_the_general_formatter() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut times = vec![
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400), // 2000-02-29
            SystemTime::UNIX_EPOCH + Duration::new(253_402_300_799, 999_999_999),
            SystemTime::now(),
        ];
        for _ in 0..10_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let secs = (seed >> 16) % 253_402_300_800;
            times.push(SystemTime::UNIX_EPOCH + Duration::new(secs, (seed % 1_000_000_000) as u32));
        }
        for t in times {
            assert_eq!(
                serde_json::to_value(Timestamp(t)).unwrap(),
                humantime::format_rfc3339_micros(t).to_string(),
                "{t:?}"
            );
        }
        // Outside 1970..=9999 (which the general formatter cannot write
        // either), the nearest end of that range.
        let late = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        let early = SystemTime::UNIX_EPOCH - Duration::from_micros(1);
        let mut buf = [0; RFC3339_MICROS_LEN];
        assert_eq!(rfc3339_micros(late, &mut buf), None);
        assert_eq!(rfc3339_micros(early, &mut buf), None);
        for (t, text) in [
            (SystemTime::UNIX_EPOCH, "\"1970-01-01T00:00:00.000000Z\""),
            (early, "\"1970-01-01T00:00:00.000000Z\""),
            (late, "\"9999-12-31T23:59:59.999999Z\""),
        ] {
            let mut out = Vec::new();
            Timestamp(t).write_json(&mut out);
            assert_eq!(String::from_utf8(out).unwrap(), text);
            assert_eq!(serde_json::to_string(&Timestamp(t)).unwrap(), text);
        }
    }

    #[test]
    fn io_text_keeps_strings_and_serialises_the_rest() {
        assert_eq!(io_text(Value::from("plain"), 10), ("plain".into(), false));
        assert_eq!(
            io_text(serde_json::json!({"a": 1}), 100),
            (r#"{"a":1}"#.into(), false)
        );
        assert_eq!(io_text(Value::from("héllo"), 2), ("hé".into(), true));
    }

    #[test]
    fn a_span_json_leaves_out_the_fields_without_a_value() {
        let mut span = Span::new(
            Uuid::nil(),
            Uuid::nil(),
            SpanKind::Tool,
            "tool.add".to_owned(),
            Timestamp(SystemTime::UNIX_EPOCH),
        );
        let fields = r#""span_id":"00000000-0000-0000-0000-000000000000","run_id":"00000000-0000-0000-0000-000000000000","kind":"tool","name":"tool.add","status":"ok","started_at":"1970-01-01T00:00:00.000000Z","ended_at":"1970-01-01T00:00:00.000000Z","duration_ms":0"#;
        assert_eq!(
            String::from_utf8(span.to_json()).unwrap(),
            format!("{{{fields}}}")
        );

        span.output = Some("{\"result\":\"a\nb\"}".to_owned());
        span.tool_name = Some("add".to_owned());
        assert_eq!(
            String::from_utf8(span.to_json()).unwrap(),
            format!(r#"{{{fields},"output":"{{\"result\":\"a\nb\"}}","tool_name":"add"}}"#)
        );
    }

    #[test]
    fn a_span_json_has_every_field_set() {
        let (span_id, run_id, parent) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_790_000_000_123_456);
        let mut attributes = Attributes::default();
        attributes.insert("mcp.method.name", "tools/call");
        let span = Span {
            parent_span_id: Some(parent),
            status: SpanStatus::Error,
            ended_at: Timestamp(at + Duration::from_millis(1_500)),
            duration_ms: 1_500,
            input: Some("é\u{1}".to_owned()),
            output: Some("🦀\"".to_owned()),
            error_type: Some("tool_error".to_owned()),
            error_message: Some("no\tway".to_owned()),
            model: Some("claude-sonnet".to_owned()),
            provider: Some("anthropic".to_owned()),
            input_tokens: Some(120),
            output_tokens: Some(40),
            cost: Some(0.0009),
            temperature: Some(0.5),
            tool_name: Some("add".to_owned()),
            attributes,
            ..Span::new(
                span_id,
                run_id,
                SpanKind::Llm,
                "llm.answer".to_owned(),
                Timestamp(at),
            )
        };
        let json: Value = serde_json::from_slice(&span.to_json()).unwrap();
        assert_eq!(
            json,
            json!({
                "span_id": span_id,
                "run_id": run_id,
                "parent_span_id": parent,
                "kind": "llm",
                "name": "llm.answer",
                "status": "error",
                "started_at": "2026-09-21T14:13:20.123456Z",
                "ended_at": "2026-09-21T14:13:21.623456Z",
                "duration_ms": 1_500,
                "input": "é\u{1}",
                "output": "🦀\"",
                "error_type": "tool_error",
                "error_message": "no\tway",
                "model": "claude-sonnet",
                "provider": "anthropic",
                "input_tokens": 120,
                "output_tokens": 40,
                "cost": 0.0009,
                "temperature": 0.5,
                "tool_name": "add",
                "attributes": {"mcp.method.name": "tools/call"},
            })
        );
    }

    #[test]
    fn span_size_estimate_covers_the_json_within_twice() {
        let request = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}}"#;
        let answer = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"3"}],"isError":false}}"#;
        let mut span = Span::tool_add();
        let bare = span.to_json().len();
        assert!(bare <= span.json_size_estimate(), "{bare}");
        span.input = Some(request.to_owned());
        span.output = Some(answer.repeat(50));
        span.tool_name = Some("add".to_owned());
        for (key, value) in [
            ("http.request.body.size", Value::from(96)),
            ("http.response.body.size", Value::from(134)),
            ("http.response.status_code", Value::from(200)),
            ("input_truncated", Value::Bool(false)),
            ("jsonrpc.request.id", Value::from("7")),
            ("mcp.method.name", Value::from("tools/call")),
            ("mcp.protocol.version", Value::from("2025-11-25")),
            ("output_truncated", Value::Bool(false)),
        ] {
            span.attributes.insert(key, value);
        }
        let json = span.to_json().len();
        let estimate = span.json_size_estimate();
        assert!(
            json <= estimate && estimate <= 2 * json,
            "{json} vs {estimate}"
        );

        // An attribute set through the manual API may be large.
        span.attributes
            .insert("document", json!({"pages": ["x".repeat(100_000)]}));
        let json = span.to_json().len();
        let estimate = span.json_size_estimate();
        assert!(
            json <= estimate && estimate <= 2 * json,
            "{json} vs {estimate}"
        );
    }

    #[test]
    fn cost_is_rounded_to_eight_decimals() {
        let totals = Totals {
            total_cost: 0.1 + 0.2,
            ..Totals::default()
        };
        let v = serde_json::to_value(totals).unwrap();
        assert_eq!(v["total_cost"], 0.3);
    }

    #[test]
    fn none_fields_are_left_out() {
        let end = End {
            ended_at: Timestamp(SystemTime::UNIX_EPOCH),
            status: RunStatus::Ok,
            output: None,
            error_summary: None,
            metadata: Map::new(),
            totals: Totals::default(),
        };
        let v = serde_json::to_value(end).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "ended_at",
                "error_count",
                "span_count",
                "status",
                "tool_count",
                "total_cost",
                "total_tokens_in",
                "total_tokens_out",
            ]
        );
    }
}
