//! How a response stream ends decides the span's status: answered, broken,
//! ended early, or a server error; progress before the answer is counted.
//! Each holds whether the exchange is read as it streams (the session's
//! first request here) or later from its tape (the requests after it).

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{Response, StatusCode};
use axum::routing::post;
use common::*;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use trodo_tower::TrodoLayer;

const PROGRESS: &str = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\n";

/// Progress events before the answer of the `long` tool: about 100 KB.
const LONG_PROGRESS: usize = 1_000;
const LONG_ANSWER: &str =
    r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"long"}]}}"#;

/// An answer whose first bytes have a `method` key: only parsing tells it.
const METHOD_IN_RESULT: &str =
    r#"{"jsonrpc":"2.0","id":1,"result":{"structuredContent":{"method":"GET"},"content":[]}}"#;

/// The answer after a first event that is not it, in chunks of their own.
const FINE: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;

/// A log notification whose first bytes mention an error (and its method
/// only after 512 bytes), which is no answer.
fn late_method_notification() -> String {
    format!(
        r#"{{"jsonrpc":"2.0","params":{{"level":"error","data":"{}"}},"method":"notifications/message"}}"#,
        "x".repeat(600)
    )
}

/// The answer to another request, which is not this one's.
const OTHER_ID: &str = r#"{"jsonrpc":"2.0","id":2,"result":{"content":[]}}"#;

/// An event stream of `first`, then [`FINE`], each in a chunk of its own.
fn two_events(first: String) -> Response<Body> {
    let chunks = [format!("data: {first}\n\n"), format!("data: {FINE}\n\n")];
    sse(Body::from_stream(futures::stream::iter(
        chunks.map(Ok::<_, std::io::Error>),
    )))
}

/// Answers of shapes MCP does not use: a `null` result, and an error whose
/// code and message are not a number and a string.
const NULL_RESULT: &str = r#"{"jsonrpc":"2.0","id":1,"result":null}"#;
const ODD_ERROR: &str =
    r#"{"jsonrpc":"2.0","id":1,"error":{"code":"E42","message":{"text":"no"}}}"#;

/// A progress event of about 6 KB (more than a tape copies, less than it keeps).
fn big_progress() -> String {
    let message = "x".repeat(6_000);
    format!(
        "data: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progressToken\":1,\"progress\":1,\"message\":\"{message}\"}}}}\n\n"
    )
}

/// A failed tool's answer of about 65 KB (over the capture limit, within
/// what a tape keeps), with a token a redaction hook must find.
fn big_failure() -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":1,"result":{{"structuredContent":{{"api_token":"SECRET-TOKEN"}},"content":[{{"type":"text","text":"{}"}}],"isError":true}}}}"#,
        "x".repeat(65_000)
    )
}

/// The capture limit of [`wide_answer`]'s test: a read window of 4,000
/// characters.
const WIDE_CAPTURE_LIMIT: usize = 1_000;

/// The text of a failure of 3,000 3-byte characters (9 KB): over a read
/// window of 4,000 in bytes, within it in characters.
fn wide_text() -> String {
    "出错了".repeat(1_000)
}

/// A failed answer with [`wide_text`]: a JSON-RPC error (`"error"`), or a
/// tool's `isError` result (`"tool_error"`).
fn wide_answer(kind: &str) -> String {
    let text = wide_text();
    match kind {
        "error" => {
            format!(r#"{{"jsonrpc":"2.0","id":1,"error":{{"code":-32603,"message":"{text}"}}}}"#)
        }
        "tool_error" => format!(
            r#"{{"jsonrpc":"2.0","id":1,"result":{{"content":[{{"type":"text","text":"{text}"}}],"isError":true}}}}"#
        ),
        _ => unreachable!(),
    }
}

fn sse(body: Body) -> Response<Body> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

fn json_body(body: impl Into<Body>) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

/// A stand-in MCP endpoint whose answers the tests script, behind the layer.
async fn scripted() -> (RecordingIngest, RawClient) {
    scripted_with(|config| config).await
}

/// [`scripted`], with the layer's config changed by `edit`.
async fn scripted_with(
    edit: impl FnOnce(trodo_tower::TrodoConfig) -> trodo_tower::TrodoConfig,
) -> (RecordingIngest, RawClient) {
    let ingest = RecordingIngest::start().await.unwrap();
    let app = Router::new()
        .route(
            "/mcp",
            post(|body: String| async move {
                let request: Value = serde_json::from_str(&body).unwrap();
                match request["params"]["name"].as_str().unwrap() {
                    "ends_early" => sse(Body::from(PROGRESS)),
                    "breaks" => {
                        let chunks: Vec<Result<&str, std::io::Error>> =
                            vec![Ok(PROGRESS), Err(std::io::Error::other("backend died"))];
                        sse(Body::from_stream(futures::stream::iter(chunks)))
                    }
                    "long" => {
                        // More than a tape keeps before the answer.
                        let chunks = (0..LONG_PROGRESS)
                            .map(|_| PROGRESS.to_owned())
                            .chain([format!("data: {LONG_ANSWER}\n\n")])
                            .map(Ok::<_, std::io::Error>);
                        sse(Body::from_stream(futures::stream::iter(chunks)))
                    }
                    "mixed" => {
                        // Small chunks around one larger than a tape copies;
                        // the answer starts in the large one.
                        let (head, tail) = LONG_ANSWER.split_at(10);
                        let chunks = [
                            PROGRESS.to_owned(),
                            format!("{}data: {head}", big_progress()),
                            format!("{tail}\n\n"),
                        ]
                        .map(Ok::<_, std::io::Error>);
                        sse(Body::from_stream(futures::stream::iter(chunks)))
                    }
                    "big_failure_sse" => sse(Body::from(format!("data: {}\n\n", big_failure()))),
                    "big_failure_json" => json_body(big_failure()),
                    "wide_error_sse" => {
                        sse(Body::from(format!("data: {}\n\n", wide_answer("error"))))
                    }
                    "wide_error_json" => json_body(wide_answer("error")),
                    "wide_tool_error_sse" => sse(Body::from(format!(
                        "data: {}\n\n",
                        wide_answer("tool_error")
                    ))),
                    "wide_tool_error_json" => json_body(wide_answer("tool_error")),
                    "null_result" => sse(Body::from(format!("data: {NULL_RESULT}\n\n"))),
                    "odd_error" => sse(Body::from(format!("data: {ODD_ERROR}\n\n"))),
                    "method_in_result" => sse(Body::from(format!("data: {METHOD_IN_RESULT}\n\n"))),
                    "other_session" => Response::builder()
                        .header("content-type", "application/json")
                        .header("mcp-session-id", "another-session")
                        .body(Body::from(
                            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#,
                        ))
                        .unwrap(),
                    "late_method" => two_events(late_method_notification()),
                    "other_id" => two_events(OTHER_ID.to_owned()),
                    "fine" => json_body(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#),
                    "unavailable" => Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .body(Body::from("try later"))
                        .unwrap(),
                    _ => unreachable!(),
                }
            }),
        )
        .layer(TrodoLayer::new(edit(config(&ingest))));
    let mut client = RawClient::new(serve(app).await);
    client.session = Some("scripted-session".to_owned());
    (ingest, client)
}

/// The names of the threads that read exchanges (the redaction hook runs
/// there), in order.
type Readers = Arc<Mutex<Vec<Option<String>>>>;

/// [`scripted`], noting the thread that reads each input and output.
async fn scripted_noting_readers() -> (RecordingIngest, RawClient, Readers) {
    let readers = Readers::default();
    let seen = Arc::clone(&readers);
    let (ingest, client) = scripted_with(move |config| {
        config.with_redaction(move |_: &mut Value| {
            let thread = std::thread::current().name().map(str::to_owned);
            seen.lock().unwrap().push(thread);
        })
    })
    .await;
    (ingest, client, readers)
}

/// Calls `tool` and returns its span; a broken answer may fail the call.
async fn span_of(ingest: &RecordingIngest, client: &RawClient, tool: &str) -> Value {
    let name = format!("tool.{tool}");
    let named = |r: &[ingest::Received]| {
        r.iter()
            .filter_map(|r| r.body["spans"].as_array())
            .flatten()
            .filter(|s| s["name"] == name.as_str())
            .count()
    };
    let before = named(&ingest.received());
    let request = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":tool}});
    if let Ok(response) = client.post(request.to_string()).send().await {
        let _ = response.bytes().await;
    }
    ingest
        .wait_until(WAIT, |r| named(r) > before)
        .await
        .unwrap();
    let mut spans = ingest.spans().into_iter().map(|(_, s)| s);
    spans.rfind(|s| s["name"] == name.as_str()).unwrap()
}

/// The spans of two calls of `tool`: the first read as it streams (the
/// session's first request here), the second from its tape.
async fn live_and_taped(ingest: &RecordingIngest, client: &RawClient, tool: &str) -> [Value; 2] {
    let live = span_of(ingest, client, tool).await;
    let taped = span_of(ingest, client, tool).await;
    assert_eq!(ingest.spans().len(), 2);
    [live, taped]
}

#[tokio::test]
async fn an_event_stream_that_ends_without_the_answer_is_a_stream_error() {
    let (ingest, client) = scripted().await;
    for span in live_and_taped(&ingest, &client, "ends_early").await {
        assert_eq!(span["status"], "error");
        assert_eq!(span["error_type"], "stream_error");
        assert_eq!(
            span["error_message"],
            "the response stream ended before the answer"
        );
        assert_eq!(span["attributes"]["mcp.progress_events"], 1);
        assert!(span.get("output").is_none());
    }
}

/// The layer reads an answer leniently: a member of a shape it does not
/// expect is taken as absent, and the answer is still the answer.
#[tokio::test]
async fn answers_of_unexpected_shapes_are_still_answers() {
    let (ingest, client) = scripted().await;
    for span in live_and_taped(&ingest, &client, "null_result").await {
        assert_eq!(span["status"], "ok");
        assert_eq!(span["output"], NULL_RESULT);
    }
    let (ingest, client) = scripted().await;
    for span in live_and_taped(&ingest, &client, "odd_error").await {
        assert_eq!(span["status"], "error");
        assert_eq!(span["error_type"], "server_error");
        assert_eq!(span["error_message"], "JSON-RPC error without a message");
        assert_eq!(span["output"], ODD_ERROR);
        assert!(span["attributes"].get("jsonrpc.error.code").is_none());
    }
}

#[tokio::test]
async fn a_broken_event_stream_is_a_stream_error() {
    let (ingest, client) = scripted().await;
    for span in live_and_taped(&ingest, &client, "breaks").await {
        assert_eq!(span["status"], "error");
        assert_eq!(span["error_type"], "stream_error");
        assert_eq!(span["error_message"], "the response stream broke");
    }
}

/// The second call's tape fills before the answer: it is read live from there.
#[tokio::test]
async fn an_answer_after_more_than_a_tape_holds_is_read_whole() {
    let (ingest, client) = scripted().await;
    for span in live_and_taped(&ingest, &client, "long").await {
        assert_eq!(span["status"], "ok");
        assert_eq!(span["attributes"]["mcp.progress_events"], LONG_PROGRESS);
        assert_eq!(span["output"], LONG_ANSWER);
        let bytes = LONG_PROGRESS * PROGRESS.len() + LONG_ANSWER.len() + 8;
        assert_eq!(span["attributes"]["http.response.body.size"], bytes);
    }
}

/// The tape copies small chunks and shares large ones, in order.
#[tokio::test]
async fn small_and_large_chunks_read_back_in_order() {
    let (ingest, client) = scripted().await;
    for span in live_and_taped(&ingest, &client, "mixed").await {
        assert_eq!(span["status"], "ok");
        assert_eq!(span["attributes"]["mcp.progress_events"], 2);
        assert_eq!(span["output"], LONG_ANSWER);
        let bytes = PROGRESS.len() + big_progress().len() + LONG_ANSWER.len() + 8;
        assert_eq!(span["attributes"]["http.response.body.size"], bytes);
    }
}

#[tokio::test]
async fn an_answer_only_parsing_can_tell_is_found() {
    let (ingest, client) = scripted().await;
    for span in live_and_taped(&ingest, &client, "method_in_result").await {
        assert_eq!(span["status"], "ok");
        assert_eq!(span["output"], METHOD_IN_RESULT);
    }
}

/// An event that only looks like the answer in its first bytes (a log
/// notification mentioning an error, its method later; another request's
/// answer) does not end the watch: the answer after it is found.
#[tokio::test]
async fn an_event_that_looks_like_an_answer_but_is_not_this_one_is_passed_over() {
    for tool in ["late_method", "other_id"] {
        let (ingest, client) = scripted().await;
        for span in live_and_taped(&ingest, &client, tool).await {
            assert_eq!(span["status"], "ok", "{tool}: {span:#}");
            assert_eq!(span["output"], FINE, "{tool}");
            assert!(span.get("error_type").is_none(), "{tool}");
        }
    }
}

/// The layer's own log lines, by the thread that wrote them: a test's
/// server runs on the test's thread, which is named after the test. One
/// subscriber for the whole binary, set once (a subscriber set per test
/// races the others' in what tracing caches of each log line).
fn log_of_this_thread() -> String {
    static LOG: Mutex<Vec<(Option<String>, Vec<u8>)>> = Mutex::new(Vec::new());
    static SUBSCRIBED: std::sync::Once = std::sync::Once::new();
    struct LogWriter(Option<String>);
    impl std::io::Write for LogWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            LOG.lock().unwrap().push((self.0.clone(), bytes.to_vec()));
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    SUBSCRIBED.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter("trodo_tower=trace")
            .with_writer(|| LogWriter(std::thread::current().name().map(str::to_owned)))
            .init();
    });
    let thread = std::thread::current().name().map(str::to_owned);
    let log = LOG.lock().unwrap();
    let lines = log.iter().filter(|(t, _)| *t == thread);
    lines
        .map(|(_, line)| String::from_utf8_lossy(line))
        .collect()
}

/// How many exchanges the layer taped on this thread.
fn taped_here() -> usize {
    log_of_this_thread()
        .matches("the exchange is taped")
        .count()
}

/// The redaction hook runs where a span is recorded: on the delivery
/// thread, whether the exchange was read as it streamed or from its tape.
#[tokio::test]
async fn a_known_sessions_exchange_is_taped_and_every_span_redacted_off_the_request_path() {
    let taped_before = taped_here();
    let (ingest, client, readers) = scripted_noting_readers().await;
    let [live, from_tape] = live_and_taped(&ingest, &client, "fine").await;
    assert_eq!(live["status"], "ok");
    assert_eq!(from_tape["output"], live["output"]);
    assert_eq!(
        taped_here() - taped_before,
        1,
        "the session's second request"
    );
    let readers = readers.lock().unwrap().clone();
    assert_eq!(
        readers,
        vec![Some("trodo-export".to_owned()); 4],
        "input and output of each"
    );
}

/// A slow redaction hook holds back no answer: an exchange read as it
/// streams (the session's first here) is answered whole while the hook
/// still runs on its input, on the delivery thread.
#[tokio::test]
async fn a_slow_redaction_hook_holds_back_no_answer() {
    let answered = Arc::new(AtomicBool::new(false));
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Mutex::new(Some(released));
    let answered_when_redacted = Arc::new(Mutex::new(Vec::new()));
    let (seen, noted) = (Arc::clone(&answered), Arc::clone(&answered_when_redacted));
    let (ingest, client) = scripted_with(move |config| {
        config.with_redaction(move |value: &mut Value| {
            // The first call (the request's input) waits for the test; if
            // it ran on the request's thread (the test's), it would wait
            // out the timeout with no answer sent.
            if let Some(released) = released.lock().unwrap().take() {
                let _ = released.recv_timeout(WAIT);
            }
            noted.lock().unwrap().push(seen.load(Ordering::SeqCst));
            *value = Value::from("redacted");
        })
    })
    .await;
    let request = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"fine"}});
    let response = client.post(request.to_string()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.unwrap().ends_with(b"}"));
    answered.store(true, Ordering::SeqCst);
    // Gone if the hook waited out its timeout.
    let _ = release.send(());

    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.body["spans"].is_array()))
        .await
        .unwrap();
    let (_, span) = ingest.spans().pop().unwrap();
    assert_eq!(
        (&span["input"], &span["output"]),
        (&json!("redacted"), &json!("redacted"))
    );
    assert_eq!(
        *answered_when_redacted.lock().unwrap(),
        [true, true],
        "input and output were redacted after the answer was whole"
    );
}

/// An answer that names another session is read as it is answered, never
/// from a tape.
#[tokio::test]
async fn an_answer_naming_another_session_is_read_live() {
    let taped_before = taped_here();
    let (ingest, client, readers) = scripted_noting_readers().await;
    // The session becomes known here with its first answer.
    assert_eq!(span_of(&ingest, &client, "fine").await["status"], "ok");
    let span = span_of(&ingest, &client, "other_session").await;
    assert_eq!(span["status"], "ok");
    assert_eq!(taped_here() - taped_before, 0);
    let readers = readers.lock().unwrap().clone();
    assert_eq!(
        readers,
        vec![Some("trodo-export".to_owned()); 4],
        "input and output of each, off the request path"
    );
}

#[tokio::test]
async fn a_5xx_is_an_http_error() {
    let (ingest, client) = scripted().await;
    // A server error for a session this process does not know opens no run;
    // here the session is known from an earlier answer.
    assert_eq!(span_of(&ingest, &client, "fine").await["status"], "ok");
    let span = span_of(&ingest, &client, "unavailable").await;
    assert_eq!(span["status"], "error");
    assert_eq!(span["error_type"], "http_error");
    assert_eq!(span["error_message"], "HTTP 503 Service Unavailable");
    assert_eq!(span["output"], "try later");
    assert_eq!(span["attributes"]["http.response.status_code"], 503);
}

#[tokio::test]
async fn progress_before_the_answer_is_counted() {
    let ingest = RecordingIngest::start().await.unwrap();
    let mut client =
        RawClient::new(serve_demo(DemoTools::new(), TrodoLayer::new(config(&ingest))).await);
    client.initialize("progress-test").await;
    let body = json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
        "params":{"name":"slow_progress","arguments":{"steps":4,"delay_ms":1},"_meta":{"progressToken":"p"}}});
    let answer = client.send(body.to_string()).await;
    assert_eq!(answer.text().matches("notifications/progress").count(), 4);
    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/spans")))
        .await
        .unwrap();
    let span = &ingest.spans()[0].1;
    assert_eq!(span["status"], "ok");
    assert_eq!(span["attributes"]["mcp.progress_events"], 4);
    assert_eq!(
        json_of(&span["output"])["result"]["content"][0]["text"],
        "done after 4 steps"
    );
}

/// An answer longer than the capture limit (within four times it) is still
/// parsed, so its failure is seen, and redacted as JSON before it is cut:
/// as an SSE event and as a JSON body, read live and from a tape.
#[tokio::test]
async fn an_answer_over_the_capture_limit_is_parsed_and_redacted_whole() {
    for tool in ["big_failure_sse", "big_failure_json"] {
        let (ingest, client) = scripted_with(|config| {
            config.with_redaction(|value: &mut Value| {
                if let Some(token) = value.pointer_mut("/result/structuredContent/api_token") {
                    *token = Value::from("[redacted]");
                }
            })
        })
        .await;
        for span in live_and_taped(&ingest, &client, tool).await {
            assert_eq!(span["status"], "error", "{tool}");
            assert_eq!(span["error_type"], "tool_error", "{tool}");
            assert_eq!(span["attributes"]["output_truncated"], true, "{tool}");
            let output = span["output"].as_str().unwrap();
            assert_eq!(output.chars().count(), 64_000, "{tool}");
            // Redacted as JSON: the hook found the token (which the
            // serialised value's member order may put past the cut).
            assert!(!output.contains("SECRET-TOKEN"), "{tool}");
            assert!(output.starts_with('{'), "{tool}");
        }
    }
}

/// The read window is counted in characters for an SSE event as for a JSON
/// body: a failed answer of multi-byte text, over the window in bytes but
/// within it in characters, is read whole either way, so its failure is
/// seen and its output is the same.
#[tokio::test]
async fn a_multi_byte_answer_is_read_to_the_same_window_as_sse_and_as_json() {
    let cases = [
        ("wide_error", "error", "server_error", json!(-32603)),
        ("wide_tool_error", "tool_error", "tool_error", Value::Null),
    ];
    for (tool, kind, error_type, code) in cases {
        let answer = wide_answer(kind);
        assert!(answer.len() > 4 * WIDE_CAPTURE_LIMIT);
        assert!(answer.chars().count() < 4 * WIDE_CAPTURE_LIMIT);
        let output: String = answer.chars().take(WIDE_CAPTURE_LIMIT).collect();
        for form in ["sse", "json"] {
            let tool = format!("{tool}_{form}");
            let (ingest, client) =
                scripted_with(|config| config.with_capture_limit(WIDE_CAPTURE_LIMIT).unwrap())
                    .await;
            for span in live_and_taped(&ingest, &client, &tool).await {
                assert_eq!(span["status"], "error", "{tool}");
                assert_eq!(span["error_type"], error_type, "{tool}");
                assert_eq!(span["error_message"], wide_text(), "{tool}");
                assert_eq!(span["attributes"]["jsonrpc.error.code"], code, "{tool}");
                assert_eq!(span["attributes"]["output_truncated"], true, "{tool}");
                assert_eq!(span["output"], output.as_str(), "{tool}");
            }
        }
    }
}
