//! A recording stand-in for the Trodo ingest API on `127.0.0.1`: it answers every
//! `POST /api/sdk/...` with `200 {"ok":true}` and keeps what it was sent.
//!
//! It can also misbehave on purpose, for the delivery tests: answer the next
//! POSTs with an error status (and a `Retry-After`), answer slowly or hold
//! every answer until released, refuse bodies above a size with 413, reset
//! connections, be down, stall the bodies of its answers, or redirect. Every
//! POST (and any other request) and every reset connection is logged with
//! its time as an [`Attempt`], accepted or not.
//!
//! Shared by the demo and the integration tests through
//! `#[path = "../examples/support/ingest.rs"] mod ingest;`.

// Items are `pub` for whichever crate includes the module; under this crate's
// `unreachable_pub` lint a private `mod ingest;` would flag each one.
#![allow(unreachable_pub)]

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::State,
    http::{
        HeaderMap, HeaderValue, StatusCode, Uri,
        header::{CONTENT_TYPE, LOCATION, RETRY_AFTER, USER_AGENT},
    },
    response::{IntoResponse, Response},
    routing::post,
    serve::Listener,
};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    time::Instant,
};

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
    /// The `User-Agent` header.
    #[allow(dead_code)]
    pub user_agent: Option<String>,
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

/// One POST (accepted or not) or one connection reset, as it happened.
#[derive(Clone, Debug)]
#[allow(dead_code)]
pub struct Attempt {
    /// The request path; empty for a reset connection.
    pub path: String,
    /// The status answered; `None` for a reset connection.
    pub status: Option<u16>,
    /// When the request (or the connection) arrived.
    pub at: Instant,
    /// The size of the request body.
    pub bytes: usize,
    /// How many spans the body carried (`spans` array), 0 if none.
    pub spans: usize,
}

#[derive(Debug)]
struct Inner {
    received: watch::Sender<Vec<Received>>,
    attempts: watch::Sender<Vec<Attempt>>,
    faults: Mutex<Faults>,
    /// While `true`, every answer waits.
    held: watch::Sender<bool>,
    /// The paths of the requests waiting for a release now.
    waiting: watch::Sender<Vec<String>>,
}

/// The misbehaviour asked for.
#[derive(Debug, Default)]
struct Faults {
    /// POSTs still to answer with `status` (and `retry_after`).
    fail: usize,
    status: u16,
    retry_after: Option<String>,
    /// Added before every answer.
    delay: Duration,
    /// Bodies above this many bytes get 413.
    too_large_above: Option<usize>,
    /// New connections still to reset.
    resets: usize,
    /// Down: new connections are reset, requests on older ones get 503.
    down: bool,
    /// Accepted POSTs get their answer's head and the first bytes of its
    /// body, then nothing more.
    stall_bodies: bool,
    /// POSTs still to answer with a `302 Found` to this location, without
    /// recording them.
    redirects: usize,
    redirect_to: String,
}

impl Inner {
    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn log(&self, attempt: Attempt) {
        self.attempts.send_modify(|log| log.push(attempt));
    }
}

/// The listener: resets connections while the faults say so.
struct FaultyListener {
    listener: TcpListener,
    inner: Arc<Inner>,
}

impl Listener for FaultyListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let reset = {
                let mut faults = self.inner.faults();
                let reset = faults.down || faults.resets > 0;
                faults.resets = faults.resets.saturating_sub(1);
                reset
            };
            if !reset {
                return (stream, addr);
            }
            // SO_LINGER 0: closing sends a TCP reset, not a clean FIN.
            let _ = stream.set_zero_linger();
            drop(stream);
            self.inner.log(Attempt {
                path: String::new(),
                status: None,
                at: Instant::now(),
                bytes: 0,
                spans: 0,
            });
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

impl RecordingIngest {
    /// Binds `127.0.0.1:0` and serves in a tokio task for the rest of the runtime.
    pub async fn start() -> anyhow::Result<Self> {
        let inner = Arc::new(Inner {
            received: watch::Sender::new(Vec::new()),
            attempts: watch::Sender::new(Vec::new()),
            faults: Mutex::new(Faults::default()),
            held: watch::Sender::new(false),
            waiting: watch::Sender::new(Vec::new()),
        });
        let app = Router::new()
            .route("/api/sdk/{*rest}", post(record))
            .fallback(log_other)
            .with_state(inner.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let listener = FaultyListener {
            listener,
            inner: inner.clone(),
        };
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
        wait_on(&self.inner.received, timeout, pred, |got| {
            let mut msg = String::from("received:");
            for r in got {
                let _ = write!(msg, "\n  #{} {} {}", r.seq, r.path, short(&r.body, 300));
            }
            msg
        })
        .await
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
        self.fail_next_with(n, status, None);
    }

    /// Answers the next `n` POSTs with `status` and, if given, a
    /// `Retry-After` header (seconds or an HTTP date), without recording them.
    #[allow(dead_code)]
    pub fn fail_next_with(&self, n: usize, status: u16, retry_after: Option<&str>) {
        let mut faults = self.inner.faults();
        faults.fail = n;
        faults.status = status;
        faults.retry_after = retry_after.map(str::to_owned);
    }

    /// Waits `delay` before every answer from now on (zero: no delay).
    #[allow(dead_code)]
    pub fn set_delay(&self, delay: Duration) {
        self.inner.faults().delay = delay;
    }

    /// Holds every answer until [`release`](Self::release): requests arrive
    /// but are neither logged, recorded nor answered yet; they wait (see
    /// [`wait_held`](Self::wait_held)).
    #[allow(dead_code)]
    pub fn hold(&self) {
        self.inner.held.send_replace(true);
    }

    /// Answers the requests held by [`hold`](Self::hold), and later ones at once.
    #[allow(dead_code)]
    pub fn release(&self) {
        self.inner.held.send_replace(false);
    }

    /// Waits until `pred` holds for the paths of the requests held now.
    #[allow(dead_code)]
    pub async fn wait_held(
        &self,
        timeout: Duration,
        pred: impl Fn(&[String]) -> bool,
    ) -> anyhow::Result<Vec<String>> {
        wait_on(&self.inner.waiting, timeout, pred, |got| {
            format!("held: {got:?}")
        })
        .await
    }

    /// Answers 413 to every body above `bytes` (`None`: accept any size).
    #[allow(dead_code)]
    pub fn reject_larger_than(&self, bytes: Option<usize>) {
        self.inner.faults().too_large_above = bytes;
    }

    /// Resets the next `n` new connections as soon as they are accepted.
    #[allow(dead_code)]
    pub fn reset_next_connections(&self, n: usize) {
        self.inner.faults().resets = n;
    }

    /// Down: resets every new connection and answers 503 on connections
    /// opened before. Up again: serves as usual.
    #[allow(dead_code)]
    pub fn set_down(&self, down: bool) {
        self.inner.faults().down = down;
    }

    /// Stalls the body of every accepted answer from now on (`false`: as
    /// usual): its head and first bytes go out, the rest never does.
    #[allow(dead_code)]
    pub fn stall_answer_bodies(&self, stall: bool) {
        self.inner.faults().stall_bodies = stall;
    }

    /// Answers the next `n` POSTs with `302 Found` to `location`, without
    /// recording them. Requests that follow it are logged as attempts and
    /// answered `200 {"ok":true}`, recorded as nothing.
    #[allow(dead_code)]
    pub fn redirect_next(&self, n: usize, location: &str) {
        let mut faults = self.inner.faults();
        faults.redirects = n;
        faults.redirect_to = location.to_owned();
    }

    /// Every POST and reset connection so far, in arrival order.
    #[allow(dead_code)]
    pub fn attempts(&self) -> Vec<Attempt> {
        self.inner.attempts.borrow().clone()
    }

    /// Waits until `pred(&attempts)` holds and returns the attempts; fails
    /// after `timeout` with a listing. Wakes on every new attempt.
    #[allow(dead_code)]
    pub async fn wait_attempts(
        &self,
        timeout: Duration,
        pred: impl Fn(&[Attempt]) -> bool,
    ) -> anyhow::Result<Vec<Attempt>> {
        wait_on(&self.inner.attempts, timeout, pred, |got| {
            format!("attempts: {got:?}")
        })
        .await
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

/// Waits until `pred` holds for the log in `log`, at most `timeout`; the
/// error lists the log as `listing` writes it.
async fn wait_on<T: Clone>(
    log: &watch::Sender<Vec<T>>,
    timeout: Duration,
    pred: impl Fn(&[T]) -> bool,
    listing: impl Fn(&[T]) -> String,
) -> anyhow::Result<Vec<T>> {
    let mut rx = log.subscribe();
    match tokio::time::timeout(timeout, rx.wait_for(|got| pred(got))).await {
        Ok(Ok(got)) => Ok(got.clone()),
        Ok(Err(_)) => anyhow::bail!("the ingest server is gone"),
        Err(_) => anyhow::bail!(
            "condition not met after {timeout:?}; {}",
            listing(&log.borrow())
        ),
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
) -> Response {
    let arrived = Instant::now();
    let delay = inner.faults().delay;
    let mut held = inner.held.subscribe();
    if *held.borrow_and_update() {
        let path = uri.path().to_owned();
        inner
            .waiting
            .send_modify(|waiting| waiting.push(path.clone()));
        let _ = held.wait_for(|held| !*held).await;
        inner.waiting.send_modify(|waiting| {
            if let Some(at) = waiting.iter().position(|p| *p == path) {
                waiting.remove(at);
            }
        });
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (status, retry_after, stall) = {
        let mut faults = inner.faults();
        let stall = faults.stall_bodies;
        let (status, retry_after) = if faults.down {
            (503, None)
        } else if faults.redirects > 0 {
            faults.redirects -= 1;
            (302, Some(faults.redirect_to.clone()))
        } else if faults.fail > 0 {
            faults.fail -= 1;
            (faults.status, faults.retry_after.clone())
        } else if faults.too_large_above.is_some_and(|max| body.len() > max) {
            (413, None)
        } else {
            (200, None)
        };
        (status, retry_after, stall)
    };
    let body_json: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    inner.log(Attempt {
        path: uri.path().to_owned(),
        status: Some(status),
        at: arrived,
        bytes: body.len(),
        spans: body_json["spans"].as_array().map_or(0, Vec::len),
    });
    if status == 302 {
        let location = retry_after.unwrap_or_default();
        return (StatusCode::FOUND, [(LOCATION, location)]).into_response();
    }
    if status != 200 {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut answer = (
            status,
            Json(json!({"ok": false, "error": "injected fault"})),
        )
            .into_response();
        if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
            answer.headers_mut().insert(RETRY_AFTER, value);
        }
        return answer;
    }
    let header = |name: &str| {
        let value = headers.get(name)?.to_str().ok()?;
        Some(value.to_owned())
    };
    let body = body_json;
    inner.received.send_modify(|got| {
        got.push(Received {
            path: uri.path().to_owned(),
            site_id: header("x-trodo-site-id"),
            content_type: header(CONTENT_TYPE.as_str()),
            user_agent: header(USER_AGENT.as_str()),
            body,
            seq: got.len(),
        });
    });
    if stall {
        let first = futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from("{")) });
        let body = Body::from_stream(first.chain(futures::stream::pending()));
        return (StatusCode::OK, [(CONTENT_TYPE, "application/json")], body).into_response();
    }
    (StatusCode::OK, Json(json!({"ok": true}))).into_response()
}

/// Any request but a POST under `/api/sdk/` (a redirect followed, say):
/// logged as an attempt and answered `200 {"ok":true}`, recorded as nothing.
async fn log_other(State(inner): State<Arc<Inner>>, uri: Uri, body: Bytes) -> Response {
    inner.log(Attempt {
        path: uri.path().to_owned(),
        status: Some(200),
        at: Instant::now(),
        bytes: body.len(),
        spans: 0,
    });
    (StatusCode::OK, Json(json!({"ok": true}))).into_response()
}
