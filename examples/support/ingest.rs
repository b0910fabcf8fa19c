//! A recording stand-in for the Trodo ingest API on `127.0.0.1`: it answers every
//! `POST /api/sdk/...` with `200 {"ok":true}` and keeps what it was sent.
//!
//! Shared by the demo and the integration tests through
//! `#[path = "../examples/support/ingest.rs"] mod ingest;`.

// Items are `pub` for whichever crate includes the module; under this crate's
// `unreachable_pub` lint a private `mod ingest;` would flag each one.
#![allow(unreachable_pub)]

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header::CONTENT_TYPE},
    routing::post,
};
use serde_json::{Value, json};
use tokio::sync::watch;

/// One POST the ingest server recorded.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request path, e.g. `/api/sdk/runs/start`.
    pub path: String,
    /// The `X-Trodo-Site-Id` header.
    #[allow(dead_code)]
    pub site_id: Option<String>,
    /// The `Content-Type` header.
    #[allow(dead_code)]
    pub content_type: Option<String>,
    /// The body as JSON (a JSON string holding the raw text if it was not JSON).
    pub body: Value,
    /// Position in arrival order among recorded POSTs, from 0.
    pub seq: usize,
}

impl Received {
    /// The run id of a `/api/sdk/runs/{run_id}/{action}` path, with the action.
    #[allow(dead_code)]
    pub fn run_path(&self) -> Option<(&str, &str)> {
        run_path(&self.path)
    }
}

fn run_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/api/sdk/runs/")?;
    let (id, action) = rest.split_once('/')?;
    (!id.is_empty() && !action.contains('/')).then_some((id, action))
}

/// The recording ingest server; clones share the same records.
#[derive(Clone, Debug)]
pub struct RecordingIngest {
    inner: Arc<Inner>,
    base_url: String,
}

#[derive(Debug)]
struct Inner {
    received: watch::Sender<Vec<Received>>,
    /// (POSTs still to reject, status to reject them with).
    faults: Mutex<(usize, u16)>,
}

impl RecordingIngest {
    /// Binds `127.0.0.1:0` and serves in a tokio task for the rest of the runtime.
    pub async fn start() -> anyhow::Result<Self> {
        let inner = Arc::new(Inner {
            received: watch::Sender::new(Vec::new()),
            faults: Mutex::new((0, 200)),
        });
        let app = Router::new()
            .route("/api/sdk/{*rest}", post(record))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("recording ingest server stopped: {err}");
            }
        });
        Ok(Self { inner, base_url })
    }

    /// `http://127.0.0.1:PORT`, to use as the Trodo API base.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// Everything recorded so far, in arrival order.
    #[allow(dead_code)]
    pub fn received(&self) -> Vec<Received> {
        self.inner.received.borrow().clone()
    }

    /// Waits until `pred(&received)` holds and returns what was received; fails after
    /// `timeout` with a listing of what arrived. Wakes on every new record.
    #[allow(dead_code)]
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> anyhow::Result<Vec<Received>> {
        let mut rx = self.inner.received.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|got| pred(got))).await {
            Ok(Ok(got)) => Ok(got.clone()),
            Ok(Err(_)) => anyhow::bail!("the ingest server is gone"),
            Err(_) => {
                let mut msg = format!("condition not met after {timeout:?}; received:");
                for r in self.received() {
                    let _ = write!(msg, "\n  #{} {} {}", r.seq, r.path, short(&r.body, 300));
                }
                anyhow::bail!(msg)
            }
        }
    }

    /// The `run` objects of every `/api/sdk/runs/start` body.
    #[allow(dead_code)]
    pub fn starts(&self) -> Vec<Value> {
        let got = self.inner.received.borrow();
        got.iter()
            .filter(|r| r.path == "/api/sdk/runs/start")
            .map(|r| r.body["run"].clone())
            .collect()
    }

    /// Every span of every `/api/sdk/runs/{run_id}/spans` body, with the path's run id.
    #[allow(dead_code)]
    pub fn spans(&self) -> Vec<(String, Value)> {
        self.by_action("spans")
            .into_iter()
            .flat_map(|(id, body)| {
                let spans = body["spans"].as_array().cloned().unwrap_or_default();
                spans.into_iter().map(move |s| (id.clone(), s))
            })
            .collect()
    }

    /// Every `/api/sdk/runs/{run_id}/end` body, with the path's run id.
    #[allow(dead_code)]
    pub fn ends(&self) -> Vec<(String, Value)> {
        self.by_action("end")
    }

    fn by_action(&self, want: &str) -> Vec<(String, Value)> {
        let got = self.inner.received.borrow();
        got.iter()
            .filter_map(|r| match run_path(&r.path) {
                Some((id, action)) if action == want => Some((id.to_owned(), r.body.clone())),
                _ => None,
            })
            .collect()
    }

    /// Answers the next `n` POSTs with `status` (e.g. 503) without recording them.
    #[allow(dead_code)]
    pub fn fail_next(&self, n: usize, status: u16) {
        *self
            .inner
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = (n, status);
    }

    /// Every run with its spans as an indented tree (child spans under their parent),
    /// then its end, for humans.
    #[allow(dead_code)]
    pub fn render_tree(&self) -> String {
        let (starts, spans, ends) = (self.starts(), self.spans(), self.ends());
        // Runs in order of first appearance, including runs that were never started here.
        let mut run_ids: Vec<String> = Vec::new();
        let ids = starts
            .iter()
            .filter_map(|r| r["run_id"].as_str().map(str::to_owned));
        for id in ids.chain(spans.iter().chain(&ends).map(|(id, _)| id.clone())) {
            if !run_ids.contains(&id) {
                run_ids.push(id);
            }
        }
        let mut out = String::new();
        for id in &run_ids {
            let start = starts.iter().find(|r| r["run_id"] == id.as_str());
            let s = start.unwrap_or(&Value::Null);
            let _ = writeln!(
                out,
                "run {id}{}\n  agent: {}  conversation_id: {}\n  metadata: {}",
                if start.is_none() {
                    " (no start received)"
                } else {
                    ""
                },
                text(&s["agent_name"]),
                text(&s["conversation_id"]),
                short(&s["metadata"], 200),
            );
            let mut run_spans: Vec<&Value> = spans
                .iter()
                .filter(|(r, _)| r == id)
                .map(|(_, s)| s)
                .collect();
            run_spans.sort_by(|a, b| text(&a["started_at"]).cmp(&text(&b["started_at"])));
            let mut children: HashMap<String, Vec<&Value>> = HashMap::new();
            for span in &run_spans {
                let parent = span["parent_span_id"].as_str().unwrap_or_default();
                let known = run_spans.iter().any(|s| s["span_id"] == parent);
                let key = if known { parent } else { "" };
                children.entry(key.to_owned()).or_default().push(span);
            }
            render_spans(&mut out, &children, "", 1);
            for (_, end) in ends.iter().filter(|(r, _)| r == id) {
                let _ = writeln!(
                    out,
                    "  end: {}  closed_via {}  spans {}  tools {}  errors {}  tokens {}/{}  cost {}",
                    text(&end["status"]),
                    text(&end["metadata"]["closed_via"]),
                    text(&end["span_count"]),
                    text(&end["tool_count"]),
                    text(&end["error_count"]),
                    text(&end["total_tokens_in"]),
                    text(&end["total_tokens_out"]),
                    text(&end["total_cost"]),
                );
                for key in ["output", "error_summary"] {
                    if !end[key].is_null() {
                        let _ = writeln!(out, "    {key}: {}", short(&end[key], 100));
                    }
                }
            }
        }
        if run_ids.is_empty() {
            out.push_str("(no runs received)\n");
        }
        out
    }
}

/// Writes the spans under `parent` (`""` for the roots), depth-first.
fn render_spans(
    out: &mut String,
    children: &HashMap<String, Vec<&Value>>,
    parent: &str,
    depth: usize,
) {
    if depth > 16 {
        return; // a parent_span_id cycle
    }
    for span in children.get(parent).into_iter().flatten() {
        let pad = "  ".repeat(depth);
        let mut line = format!(
            "{pad}- {} [{}] {} {} ms",
            text(&span["name"]),
            text(&span["kind"]),
            text(&span["status"]),
            text(&span["duration_ms"]),
        );
        if span["error_type"].is_string() || span["error_message"].is_string() {
            let _ = write!(
                line,
                " ({}: {})",
                text(&span["error_type"]),
                short(&span["error_message"], 100)
            );
        }
        let _ = writeln!(
            out,
            "{line}\n{pad}    in:  {}\n{pad}    out: {}",
            short(&span["input"], 100),
            short(&span["output"], 100),
        );
        if let Some(id) = span["span_id"].as_str() {
            render_spans(out, children, id, depth + 1);
        }
    }
}

/// A JSON value as display text: strings without quotes, null as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// [`text`] on one line, cut to `max` characters with an ellipsis.
fn short(v: &Value, max: usize) -> String {
    let flat = text(v).replace('\r', "").replace('\n', "\\n");
    match flat.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

async fn record(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<Value>) {
    {
        let mut faults = inner.faults.lock().unwrap_or_else(PoisonError::into_inner);
        if faults.0 > 0 {
            faults.0 -= 1;
            let status = StatusCode::from_u16(faults.1).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return (
                status,
                Json(json!({"ok": false, "error": "injected fault"})),
            );
        }
    }
    let header = |name: &str| {
        let value = headers.get(name)?.to_str().ok()?;
        Some(value.to_owned())
    };
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    inner.received.send_modify(|got| {
        got.push(Received {
            path: uri.path().to_owned(),
            site_id: header("x-trodo-site-id"),
            content_type: header(CONTENT_TYPE.as_str()),
            body,
            seq: got.len(),
        });
    });
    (StatusCode::OK, Json(json!({"ok": true})))
}
