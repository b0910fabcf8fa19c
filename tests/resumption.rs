//! SSE stream resumption (MCP 2025-11-25, SEP-1699 "SSE polling"): an rmcp
//! server closes a tool call's POST stream before the answer (as a handler
//! does to poll the client), and the client resumes it with a GET and
//! `Last-Event-ID`. The call's span carries the answer the resumed stream
//! brought; a call whose answer never comes is recorded as its stream left
//! it, before its run's end.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use bytes::Bytes;
use common::*;
use futures::Stream;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use serde_json::{Value, json};
use trodo_tower::store::{MemoryStore, SessionStore};
use trodo_tower::{TrodoConfig, TrodoLayer};

/// An event stream as the client reads it.
type Events = std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The layered demo server, with the rmcp session manager a handler
/// would close its POST's stream through, and a client in a session.
struct Polling {
    ingest: RecordingIngest,
    tools: DemoTools,
    manager: Arc<LocalSessionManager>,
    client: RawClient,
}

impl Polling {
    /// The server, its layer's config changed by `edit`.
    async fn start(edit: impl FnOnce(TrodoConfig) -> TrodoConfig) -> Self {
        let ingest = RecordingIngest::start().await.unwrap();
        let layer = TrodoLayer::new(edit(config(&ingest)));
        Self::serve(ingest, layer).await
    }

    /// The server behind `layer`, which delivers to `ingest`.
    async fn serve(ingest: RecordingIngest, layer: TrodoLayer) -> Self {
        let tools = DemoTools::new();
        let manager = session_manager(None);
        let app = Router::new()
            .nest_service("/mcp", mcp(tools.clone(), Arc::clone(&manager)))
            .layer(layer);
        let mut client = RawClient::new(serve(app).await);
        client.initialize("polling-test").await;
        Self {
            ingest,
            tools,
            manager,
            client,
        }
    }

    /// POSTs a `wait_for_release` call with `arguments` and reads its
    /// stream until the tool reported that it started.
    async fn call(&self, id: i64, arguments: Value) -> (Events, String) {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "wait_for_release", "arguments": arguments,
                       "_meta": {"progressToken": id}}});
        let response = self.client.post(body.to_string()).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut stream: Events = Box::pin(response.bytes_stream());
        let mut seen = String::new();
        read_until(&mut stream, &mut seen, "notifications/progress").await;
        self.tools.started().await;
        (stream, seen)
    }

    /// The server closes the stream of the call whose stream began as
    /// `first` (rmcp's per-request stream, named in its event ids), as a
    /// handler that polls the client does: rmcp sends an event with a
    /// `retry` and ends the stream, which the client reads to its end.
    /// Returns the last event id the client saw.
    async fn close(&self, first: &str, stream: &mut Events, seen: &mut String) -> String {
        let stream_id: u64 = event_ids(first)[0]
            .split_once('/')
            .unwrap()
            .1
            .parse()
            .unwrap();
        let session: Arc<str> = self.client.session.as_deref().unwrap().into();
        let handle = self.manager.sessions.read().await[&session].clone();
        handle
            .close_sse_stream(stream_id, Some(Duration::from_millis(1)))
            .await
            .unwrap();
        read_to_end(stream, seen).await;
        event_ids(seen).pop().unwrap()
    }

    /// A GET that resumes the session's stream from `last_event_id`; its
    /// head has come, so rmcp has attached the stream.
    async fn resume(&self, last_event_id: &str) -> Events {
        let response = self
            .client
            .http
            .get(&self.client.url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", self.client.session.as_deref().unwrap())
            .header("mcp-protocol-version", "2025-11-25")
            .header("last-event-id", last_event_id)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        Box::pin(response.bytes_stream())
    }

    /// Ends the session and returns the spans of its run and its end.
    async fn spans_and_end(&self) -> (Vec<Value>, Value) {
        assert_eq!(self.client.delete().await.status, 202);
        wait_for_ends(&self.ingest, 1).await;
        let (run_id, end) = self.ingest.ends().pop().unwrap();
        (spans_of(&self.ingest, &run_id), end)
    }
}

/// The SSE event ids in `text`, in order.
fn event_ids(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .map(str::to_owned)
        .collect()
}

/// The data of the SSE event in `text` that answers request `id`.
fn answer_data(text: &str, id: i64) -> String {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .find(|data| {
            serde_json::from_str::<Value>(data)
                .is_ok_and(|v| v["id"] == id && v["method"].is_null())
        })
        .unwrap_or_else(|| panic!("no answer to {id} in {text}"))
        .to_owned()
}

fn time_of(field: &Value) -> SystemTime {
    humantime::parse_rfc3339(field.as_str().unwrap()).unwrap()
}

/// The call's span, its only span, carries the answer the resumed stream
/// brought.
#[tokio::test]
async fn a_call_answered_on_a_resumed_stream_carries_the_answer() {
    let polling = Polling::start(|config| config).await;
    let (mut post, mut seen) = polling.call(2, json!({})).await;
    let first = seen.clone();
    let last_event_id = polling.close(&first, &mut post, &mut seen).await;
    assert!(!seen.contains("released"), "no answer on the POST: {seen}");

    let mut resumed = polling.resume(&last_event_id).await;
    let released_at = SystemTime::now();
    polling.tools.release();
    let mut got = String::new();
    read_to_end(&mut resumed, &mut got).await;
    let answer = answer_data(&got, 2);

    let (spans, end) = polling.spans_and_end().await;
    let span = the_span_of_the_answered_call(&spans, &end, &answer);
    // It lasts until the answer, which came after the release.
    assert!(time_of(&span["ended_at"]) >= released_at, "{span}");
    let lasted = time_of(&span["ended_at"])
        .duration_since(time_of(&span["started_at"]))
        .unwrap();
    assert_eq!(span["duration_ms"], lasted.as_millis() as u64);
}

/// The span of the `wait_for_release` call 2, the only one of its run,
/// which a resumed stream answered with `answer`; checks it, and that the
/// run's end (the session deleted) counts it.
fn the_span_of_the_answered_call<'a>(spans: &'a [Value], end: &Value, answer: &str) -> &'a Value {
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span["name"], "tool.wait_for_release");
    assert_eq!(span["status"], "ok", "{span}");
    assert!(span.get("error_type").is_none(), "{span}");
    assert!(span.get("error_message").is_none(), "{span}");
    assert_eq!(span["output"], answer);
    assert_eq!(
        json_of(&span["output"])["result"]["content"][0]["text"],
        "released"
    );
    let attributes = &span["attributes"];
    assert_eq!(attributes["mcp.stream_resumed"], true, "{span}");
    assert_eq!(attributes["mcp.progress_events"], 1, "started, on the POST");
    assert_eq!(attributes["jsonrpc.request.id"], "2");
    assert_eq!(attributes["output_truncated"], false);
    assert_eq!(attributes["http.response.status_code"], 200);
    assert_eq!(end["metadata"]["closed_via"], "session_deleted");
    assert_eq!(totals(end), (1, 1, 0), "{end}");
    span
}

/// A call whose stream ended early is parked only once the backlog has
/// read it: a resumed stream that comes before that (its reader, the
/// delivery thread, is held until the stream's head came) still carries
/// the call's answer, as the GET catches up first.
#[tokio::test]
async fn a_stream_resumed_before_the_backlog_read_the_call_carries_the_answer() {
    let ingest = RecordingIngest::start().await.unwrap();
    let (layer, mut delivery) = HeldDelivery::layer(&ingest);
    let polling = Polling::serve(ingest, layer).await;
    delivery.until_held().await;
    let (mut post, mut seen) = polling.call(2, json!({})).await;
    let first = seen.clone();
    let last_event_id = polling.close(&first, &mut post, &mut seen).await;
    assert!(!seen.contains("released"), "no answer on the POST: {seen}");

    let mut resumed = polling.resume(&last_event_id).await;
    delivery.release();
    polling.tools.release();
    let mut got = String::new();
    read_to_end(&mut resumed, &mut got).await;
    let answer = answer_data(&got, 2);

    let (spans, end) = polling.spans_and_end().await;
    the_span_of_the_answered_call(&spans, &end, &answer);
}

/// With a session store, another worker may end the session's run, so a
/// call is not parked: it is recorded at its POST's end, as its stream
/// left it, and the answer on the resumed stream goes unrecorded.
#[tokio::test]
async fn with_a_session_store_a_call_is_recorded_at_its_streams_end() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let polling = Polling::start(|config| config.with_session_store(store)).await;
    let (mut post, mut seen) = polling.call(2, json!({})).await;
    let first = seen.clone();
    let last_event_id = polling.close(&first, &mut post, &mut seen).await;
    let mut resumed = polling.resume(&last_event_id).await;
    polling.tools.release();
    let mut got = String::new();
    read_to_end(&mut resumed, &mut got).await;
    answer_data(&got, 2);

    let (spans, end) = polling.spans_and_end().await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span["status"], "error", "{span}");
    assert_eq!(span["error_type"], "stream_error", "{span}");
    assert!(span.get("output").is_none(), "{span}");
    assert!(
        span["attributes"].get("mcp.stream_resumed").is_none(),
        "{span}"
    );
    assert_eq!(span["attributes"]["mcp.progress_events"], 1);
    assert_eq!(
        (end["span_count"].as_u64(), end["error_count"].as_u64()),
        (Some(1), Some(1)),
        "{end}"
    );
}

/// An answer on the resumed stream too large to read whole answers the
/// call the stream continues, as on a live stream: its output cut, its
/// status the HTTP status's.
#[tokio::test]
async fn an_answer_too_large_to_read_whole_on_a_resumed_stream_is_the_calls() {
    let polling = Polling::start(|config| config.with_capture_limit(12).unwrap()).await;
    let (mut post, mut seen) = polling.call(2, json!({})).await;
    let first = seen.clone();
    let last_event_id = polling.close(&first, &mut post, &mut seen).await;
    let mut resumed = polling.resume(&last_event_id).await;
    polling.tools.release();
    let mut got = String::new();
    read_to_end(&mut resumed, &mut got).await;
    let answer = answer_data(&got, 2);
    assert!(answer.len() > 4 * 12, "{answer}");

    let (spans, end) = polling.spans_and_end().await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span["status"], "ok", "{span}");
    assert!(span.get("error_type").is_none(), "{span}");
    assert_eq!(span["output"], &answer[..12]);
    let attributes = &span["attributes"];
    assert_eq!(attributes["output_truncated"], true);
    assert_eq!(attributes["mcp.stream_resumed"], true);
    assert_eq!(attributes["http.response.status_code"], 200);
    assert_eq!(
        (end["span_count"].as_u64(), end["error_count"].as_u64()),
        (Some(1), Some(0)),
        "{end}"
    );
}

#[tokio::test]
async fn a_tool_error_answered_on_a_resumed_stream_is_the_spans_error() {
    let polling = Polling::start(|config| config).await;
    let (mut post, mut seen) = polling.call(3, json!({"fail": true})).await;
    let first = seen.clone();
    let last_event_id = polling.close(&first, &mut post, &mut seen).await;
    let mut resumed = polling.resume(&last_event_id).await;
    polling.tools.release();
    let mut got = String::new();
    read_to_end(&mut resumed, &mut got).await;

    let (spans, end) = polling.spans_and_end().await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span["status"], "error");
    assert_eq!(span["error_type"], "tool_error");
    assert_eq!(span["error_message"], "failed once released");
    assert_eq!(span["output"], answer_data(&got, 3).as_str());
    assert_eq!(json_of(&span["output"])["result"]["isError"], true);
    assert_eq!(span["attributes"]["mcp.stream_resumed"], true);
    assert_eq!(end["error_count"], 1);
}

/// A client that resumes from an event before the last one the layer saw
/// (its connection lost the rest) gets that event again: counted once.
/// Progress after it counts.
#[tokio::test]
async fn progress_on_a_resumed_stream_counts_once() {
    let polling = Polling::start(|config| config).await;
    let (mut post, mut seen) = polling.call(4, json!({"report_release": true})).await;
    let first = seen.clone();
    polling.close(&first, &mut post, &mut seen).await;
    // The id of the "started" progress event, before the closing one.
    let progress_id = event_ids(&first).pop().unwrap();
    let mut resumed = polling.resume(&progress_id).await;
    polling.tools.release();
    let mut got = String::new();
    read_to_end(&mut resumed, &mut got).await;
    assert!(got.contains("\"started\""), "rmcp replays from it: {got}");
    assert!(got.contains("\"released\""), "{got}");

    let (spans, _) = polling.spans_and_end().await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0]["status"], "ok");
    assert_eq!(
        spans[0]["attributes"]["mcp.progress_events"], 2,
        "started and released, each once"
    );
}

/// The server polls the client twice: the first resumed stream ends before
/// the answer too, and the client resumes again from its last event.
#[tokio::test]
async fn a_resumed_stream_that_ends_early_hands_the_call_on() {
    let polling = Polling::start(|config| config).await;
    let (mut post, mut seen) = polling.call(5, json!({"report_release": true})).await;
    let first = seen.clone();
    let last_event_id = polling.close(&first, &mut post, &mut seen).await;
    let mut again = polling.resume(&last_event_id).await;
    let mut got = String::new();
    let last_event_id = polling.close(&first, &mut again, &mut got).await;
    let mut resumed = polling.resume(&last_event_id).await;
    polling.tools.release();
    let mut got = String::new();
    read_to_end(&mut resumed, &mut got).await;

    let (spans, _) = polling.spans_and_end().await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0]["status"], "ok");
    assert_eq!(spans[0]["output"], answer_data(&got, 5).as_str());
    assert_eq!(spans[0]["attributes"]["mcp.progress_events"], 2);
}

/// No resumed stream brings the answer: the call is recorded as its stream
/// left it (as it was before streams could be resumed) when the session is
/// deleted, before the run's end, and once.
#[tokio::test]
async fn a_call_whose_answer_never_comes_is_sent_failed_when_its_session_ends() {
    let polling = Polling::start(|config| config).await;
    let (mut post, mut seen) = polling.call(6, json!({})).await;
    let first = seen.clone();
    polling.close(&first, &mut post, &mut seen).await;

    let (spans, end) = polling.spans_and_end().await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span["name"], "tool.wait_for_release");
    assert_eq!(span["status"], "error");
    assert_eq!(span["error_type"], "stream_error");
    assert_eq!(
        span["error_message"],
        "the response stream ended before the answer"
    );
    assert!(span.get("output").is_none(), "{span}");
    assert_eq!(span["attributes"]["mcp.progress_events"], 1);
    assert!(span["attributes"].get("mcp.stream_resumed").is_none());
    assert_eq!(end["metadata"]["closed_via"], "session_deleted");
    assert_eq!(
        (end["span_count"].as_u64(), end["error_count"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(span_count(&polling.ingest.received()), 1, "sent once");
}

/// A client that cancels a waiting call (`notifications/cancelled` naming
/// its request id) ends its span then, `cancelled`, without waiting for
/// the session's end or the wait to run out.
#[tokio::test]
async fn a_waiting_call_the_client_cancels_is_sent_cancelled_at_once() {
    let polling = Polling::start(|config| config).await;
    let (mut post, mut seen) = polling.call(8, json!({})).await;
    let first = seen.clone();
    polling.close(&first, &mut post, &mut seen).await;

    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 8, "reason": "the user stopped it"}});
    let response = polling
        .client
        .post(cancel.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    polling
        .ingest
        .wait_until(WAIT, |r| span_count(r) == 1)
        .await
        .unwrap();
    assert!(polling.ingest.ends().is_empty(), "the session is open");

    let (spans, end) = polling.spans_and_end().await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span["status"], "error");
    assert_eq!(span["error_type"], "cancelled");
    assert_eq!(span["error_message"], "the client cancelled the request");
    assert_eq!(span["attributes"]["mcp.progress_events"], 1);
    assert_eq!(
        (end["span_count"].as_u64(), end["error_count"].as_u64()),
        (Some(1), Some(1))
    );
}

/// A parked call waits at most the idle timeout: then it is recorded as its
/// stream left it, and its run, idle, ends after it.
#[tokio::test]
async fn a_call_whose_wait_runs_out_is_sent_failed() {
    let polling = Polling::start(|config| {
        config
            .with_idle_timeout(Duration::from_millis(200))
            .unwrap()
    })
    .await;
    let (mut post, mut seen) = polling.call(7, json!({})).await;
    let first = seen.clone();
    polling.close(&first, &mut post, &mut seen).await;

    wait_for_ends(&polling.ingest, 1).await;
    let received = polling.ingest.received();
    let (run_id, end) = polling.ingest.ends().pop().unwrap();
    let spans = spans_of(&polling.ingest, &run_id);
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0]["error_type"], "stream_error");
    assert_eq!(end["metadata"]["closed_via"], "idle_timeout");
    assert_eq!(end["error_count"], 1);
    let order: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert!(
        order.last().unwrap().ends_with("/end"),
        "the span first: {order:?}"
    );
    polling.tools.release();
}

/// A server whose `tools/call` answers with an event stream that starts
/// with a resumable event (`id: 0/1`, no data, as rmcp's priming event)
/// and ends without the answer when the test says, after its handler
/// recorded an `llm.think` child; notifications and DELETE get 202.
/// Served behind a layer with `config`, with a client in a session this
/// process has not seen (its first call opens the session's run).
struct ClosingServer {
    ingest: RecordingIngest,
    trodo: trodo_tower::Trodo,
    client: RawClient,
    end_stream: Arc<tokio::sync::Notify>,
}

impl ClosingServer {
    async fn start() -> Self {
        use axum::http::{StatusCode, header};
        use axum::response::IntoResponse;
        use axum::routing::post;
        use axum::{Extension, Json};
        use futures::StreamExt;
        use trodo_tower::{RequestSpan, SpanKind};

        let ingest = RecordingIngest::start().await.unwrap();
        let layer = TrodoLayer::new(config(&ingest));
        let trodo = layer.trodo();
        let end_stream = Arc::new(tokio::sync::Notify::new());
        let ends = Arc::clone(&end_stream);
        let answer = move |Extension(span): Extension<RequestSpan>, Json(message): Json<Value>| {
            let ends = Arc::clone(&ends);
            async move {
                if message["method"] != "tools/call" {
                    return StatusCode::ACCEPTED.into_response();
                }
                span.child(SpanKind::Llm, "llm.think").finish();
                let priming = futures::stream::once(async {
                    Ok::<_, std::convert::Infallible>(Bytes::from_static(b"id: 0/1\ndata: \n\n"))
                });
                let end = futures::stream::once(async move {
                    ends.notified().await;
                    Ok(Bytes::new())
                });
                let body = axum::body::Body::from_stream(priming.chain(end));
                ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
            }
        };
        let app = Router::new()
            .route(
                "/mcp",
                post(answer).delete(|| async { StatusCode::ACCEPTED }),
            )
            .layer(layer);
        let mut client = RawClient::new(serve(app).await);
        client.session = Some("a-session-seen-elsewhere".to_owned());
        Self {
            ingest,
            trodo,
            client,
            end_stream,
        }
    }

    /// POSTs call `id` and reads its stream's first event.
    async fn call(&self, id: i64) -> Events {
        let response = self
            .client
            .post(tool_call_body(id, "think", json!({})))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut stream: Events = Box::pin(response.bytes_stream());
        let mut seen = String::new();
        read_until(&mut stream, &mut seen, "id: 0/1").await;
        stream
    }

    /// The server ends the call's stream, without its answer; the client
    /// reads it to its end.
    async fn end_stream(&self, stream: &mut Events) {
        self.end_stream.notify_one();
        read_to_end(stream, &mut String::new()).await;
    }
}

/// A call its client cancels while its stream still runs (the
/// cancellation read before the stream ends, as when the server answers
/// `notifications/cancelled` before it closes the call's stream) is
/// recorded `cancelled` as its stream ends, rather than parked to wait
/// for an answer that will not come.
#[tokio::test]
async fn a_call_cancelled_while_its_stream_runs_is_sent_cancelled_as_it_ends() {
    let server = ClosingServer::start().await;
    let mut stream = server.call(4).await;
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 4}});
    assert_eq!(server.client.send(cancel.to_string()).await.status, 202);
    // The cancellation is read before the stream ends.
    assert!(server.trodo.flush(WAIT).await);
    server.end_stream(&mut stream).await;

    server
        .ingest
        .wait_until(WAIT, |r| span_count(r) == 2)
        .await
        .expect("the call is sent as its stream ends");
    assert!(server.ingest.ends().is_empty(), "the session is open");
    let spans: Vec<Value> = server.ingest.spans().into_iter().map(|(_, s)| s).collect();
    let call = spans.iter().find(|s| s["name"] == "tool.think").unwrap();
    assert_eq!(call["error_type"], "cancelled", "{call}");
    assert_eq!(call["error_message"], "the client cancelled the request");
}

/// The children of a parked call that opened its session's run wait for
/// its span; when the call is given up (here, as the session ends) they
/// follow it into the run rather than being dropped.
#[tokio::test]
async fn children_of_a_parked_call_that_opened_its_run_follow_it_when_it_is_given_up() {
    let server = ClosingServer::start().await;
    let mut stream = server.call(1).await;
    server.end_stream(&mut stream).await;
    assert!(server.trodo.flush(WAIT).await, "the call is parked");
    assert_eq!(span_count(&server.ingest.received()), 0, "it waits");

    assert_eq!(server.client.delete().await.status, 202);
    wait_for_ends(&server.ingest, 1).await;
    let (run_id, end) = server.ingest.ends().pop().unwrap();
    let spans = spans_of(&server.ingest, &run_id);
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["tool.think", "llm.think"]);
    assert_eq!(spans[1]["parent_span_id"], spans[0]["span_id"]);
    assert_eq!(spans[0]["error_type"], "stream_error");
    assert_eq!(end["span_count"], 2);
    assert_eq!(server.trodo.delivery_counters().dropped_no_run, 0);
}
