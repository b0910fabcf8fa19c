//! Delivery against a real local ingest server that misbehaves on purpose:
//! down for a while, bursts of 503, 429 with `Retry-After`, connection
//! resets, slow or held answers, answers whose body stalls, redirects, 413
//! for large bodies, down for good.
//!
//! These run in real time (real sockets do not mix with paused time), so
//! each keeps its failures to a few seconds of back-off (1 s, then 2 s, with
//! up to a quarter off for jitter). They wait on what the ingest server saw,
//! never on a guess of how long delivery takes. Exact schedules (10 minutes
//! of back-off, the 60 s cap, 50-span batches) are unit tests on a scripted
//! sink in paused time, in `src/export/tests.rs`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::ingest::Attempt;
use common::*;
use serde_json::json;
use trodo_tower::{DeliveryCounters, EndRun, StartRun, Trodo, TrodoConfig, TrodoLayer};

/// The demo MCP server with sessions, behind `layer`.
async fn server(layer: &TrodoLayer) -> SocketAddr {
    serve_demo(DemoTools::new(), layer.clone()).await
}

/// One session: initialize, `echo` of each text, DELETE. Every answer is a
/// success. Returns the session id.
async fn session(addr: SocketAddr, texts: &[String]) -> String {
    let mut client = RawClient::new(addr);
    client.initialize("delivery-test").await;
    finish_session(client, texts).await
}

/// The rest of a session after its initialize: `echo` of each text, DELETE.
async fn finish_session(client: RawClient, texts: &[String]) -> String {
    for (id, text) in (1..).zip(texts) {
        let answer = client.call_tool(id, "echo", json!({ "text": text })).await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.response()["result"]["content"][0]["text"],
            format!("echo: {text}")
        );
    }
    assert_eq!(client.delete().await.status, 202);
    client.session.unwrap()
}

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("message {i}")).collect()
}

/// Waits until the ingest server accepted the run's end and the layer has
/// heard back (so that its counters are final).
async fn wait_for_end(ingest: &RecordingIngest, layer: &TrodoLayer) {
    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/end")))
        .await
        .unwrap();
    assert!(layer.trodo().flush(WAIT).await);
}

/// Asserts what the ingest server accepted: one start, the echo spans of
/// `texts` once each in order, then one end; every POST in that order.
fn assert_delivered_once_in_order(ingest: &RecordingIngest, texts: &[String]) {
    let received = ingest.received();
    let paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths.first(), Some(&"/api/sdk/runs/start"), "{paths:?}");
    assert!(paths.last().unwrap().ends_with("/end"), "{paths:?}");
    assert!(
        paths[1..paths.len() - 1]
            .iter()
            .all(|p| p.ends_with("/spans")),
        "{paths:?}"
    );
    assert_eq!(ingest.starts().len(), 1);
    assert_eq!(ingest.ends().len(), 1);
    let echoed: Vec<String> = ingest
        .spans()
        .iter()
        .map(|(_, span)| json_of(&span["input"])["params"]["arguments"]["text"].clone())
        .map(|text| text.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(echoed, texts);
}

/// A layer on `ingest` (as set up by the caller), one session of `n` echo
/// calls, then: everything arrived once, in order. Returns the layer.
async fn deliver_session(ingest: &RecordingIngest, n: usize) -> TrodoLayer {
    let layer = TrodoLayer::new(config(ingest));
    let texts = texts(n);
    session(server(&layer).await, &texts).await;
    wait_for_end(ingest, &layer).await;
    assert_delivered_once_in_order(ingest, &texts);
    layer
}

/// The records of one session of `n` echo calls: start, spans, end.
fn records(n: usize) -> u64 {
    n as u64 + 2
}

/// `(sent, retried, dropped)`.
fn summary(c: &DeliveryCounters) -> (u64, u64, u64) {
    (c.sent, c.retried, c.dropped())
}

fn statuses(attempts: &[Attempt]) -> Vec<Option<u16>> {
    attempts.iter().map(|a| a.status).collect()
}

#[tokio::test]
async fn an_ingest_down_for_a_while_gets_every_span_once_in_order_when_back() {
    let ingest = RecordingIngest::start().await.unwrap();
    ingest.set_down(true);
    let layer = TrodoLayer::new(config(&ingest));
    let texts = texts(5);
    session(server(&layer).await, &texts).await;

    // Two tries failed on a reset connection; then the ingest comes back.
    ingest.wait_attempts(WAIT, |a| a.len() >= 2).await.unwrap();
    ingest.set_down(false);
    wait_for_end(&ingest, &layer).await;

    assert_delivered_once_in_order(&ingest, &texts);
    let c = layer.trodo().delivery_counters();
    assert_eq!((c.sent, c.dropped()), (records(5), 0));
    assert!(c.retried >= 2, "{c:?}");
    assert_eq!((c.queued_items, c.queued_bytes), (0, 0));
}

#[tokio::test]
async fn bursts_of_503_are_retried_and_nothing_arrives_twice() {
    let ingest = RecordingIngest::start().await.unwrap();
    ingest.fail_next(2, 503);
    let layer = deliver_session(&ingest, 3).await;
    let attempts = ingest.attempts();
    assert_eq!(statuses(&attempts[..3]), [Some(503), Some(503), Some(200)]);
    assert!(
        attempts[..3]
            .iter()
            .all(|a| a.path == "/api/sdk/runs/start"),
        "the start is retried before anything else: {attempts:?}"
    );
    let c = layer.trodo().delivery_counters();
    assert_eq!(summary(&c), (records(3), 2, 0));
}

#[tokio::test]
async fn a_429_holds_every_call_until_retry_after_in_seconds() {
    let ingest = RecordingIngest::start().await.unwrap();
    ingest.fail_next_with(1, 429, Some("2"));
    let layer = deliver_session(&ingest, 2).await;
    let attempts = ingest.attempts();
    assert_eq!(attempts[0].status, Some(429));
    for later in &attempts[1..] {
        assert!(
            later.at - attempts[0].at >= Duration::from_secs(2),
            "sent {:?} after the 429",
            later.at - attempts[0].at
        );
    }
    let c = layer.trodo().delivery_counters();
    assert_eq!(summary(&c), (records(2), 1, 0));
}

#[tokio::test]
async fn a_429_holds_every_call_until_retry_after_as_an_http_date() {
    let ingest = RecordingIngest::start().await.unwrap();
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
    let until = httpdate::parse_http_date(&date).unwrap();
    ingest.fail_next_with(1, 429, Some(&date));
    let layer = TrodoLayer::new(config(&ingest));
    session(server(&layer).await, &[]).await;
    wait_for_end(&ingest, &layer).await;

    let attempts = ingest.attempts();
    assert_eq!(attempts[0].status, Some(429));
    // The wall-clock time of the next try, from how long ago it was.
    let next_try = SystemTime::now() - attempts[1].at.elapsed();
    assert!(
        next_try + Duration::from_millis(10) >= until,
        "tried again {:?} before the date",
        until.duration_since(next_try).unwrap_or_default()
    );
    assert_eq!(summary(&layer.trodo().delivery_counters()), (2, 1, 0));
}

/// `Duration::MAX` is a timeout like any other (no bound): flush and
/// shutdown deliver and end the runs rather than overflow the clock.
#[tokio::test]
async fn flush_and_shutdown_take_duration_max_as_no_bound() {
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest));
    let trodo = layer.trodo();
    let mut client = RawClient::new(server(&layer).await);
    client.initialize("no-bound").await;
    for id in 1..=2 {
        let answer = client.call_tool(id, "echo", json!({ "text": "x" })).await;
        assert_eq!(answer.status, 200);
    }
    assert!(trodo.flush(Duration::MAX).await);
    assert_eq!(ingest.spans().len(), 2);
    assert!(trodo.shutdown(Duration::MAX).await);
    let ends = ingest.ends();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].1["metadata"]["closed_via"], "server_shutdown");
    assert_eq!(ends[0].1["span_count"], 2);
    assert_eq!(summary(&trodo.delivery_counters()), (records(2), 0, 0));
}

#[tokio::test]
async fn shutdown_lifts_a_429_pause_and_delivers_to_an_api_that_is_back() {
    let ingest = RecordingIngest::start().await.unwrap();
    ingest.fail_next_with(1, 429, Some("60"));
    let layer = TrodoLayer::new(config(&ingest));
    let texts = texts(3);
    session(server(&layer).await, &texts).await;
    ingest.wait_attempts(WAIT, |a| !a.is_empty()).await.unwrap();

    // A flush honours the pause, and the records keep their place.
    let trodo = layer.trodo();
    assert!(!trodo.flush(Duration::from_millis(500)).await);
    let c = trodo.delivery_counters();
    assert_eq!((c.sent, c.queued_items, c.dropped()), (0, records(3), 0));
    // Shutdown does not wait out the minute: every run tries once more.
    assert!(trodo.shutdown(WAIT).await);

    assert_delivered_once_in_order(&ingest, &texts);
    let statuses = statuses(&ingest.attempts());
    assert_eq!(statuses[0], Some(429));
    assert_eq!(
        statuses[1..],
        [Some(200); 3],
        "the start, one call of spans, the end"
    );
    let c = trodo.delivery_counters();
    assert_eq!(summary(&c), (records(3), 1, 0));
    assert_eq!((c.queued_items, c.queued_bytes), (0, 0));
}

#[tokio::test]
async fn connection_resets_are_retried() {
    let ingest = RecordingIngest::start().await.unwrap();
    ingest.reset_next_connections(2);
    let layer = deliver_session(&ingest, 3).await;
    let attempts = ingest.attempts();
    assert_eq!(statuses(&attempts[..3]), [None, None, Some(200)]);
    assert_eq!(
        summary(&layer.trodo().delivery_counters()),
        (records(3), 2, 0)
    );
}

#[tokio::test]
async fn requests_never_wait_for_an_ingest_that_does_not_answer() {
    let ingest = RecordingIngest::start().await.unwrap();
    ingest.hold();
    let layer = TrodoLayer::new(config(&ingest));
    let texts = texts(5);
    let mut client = RawClient::new(server(&layer).await);
    client.initialize("delivery-test").await;
    // The run's start goes out now, and its call gets no answer.
    let trodo = layer.trodo();
    let flushing = tokio::spawn(async move { trodo.flush(WAIT).await });
    ingest
        .wait_held(WAIT, |held| held == ["/api/sdk/runs/start"])
        .await
        .unwrap();
    // Every request of the session is answered while that call hangs.
    finish_session(client, &texts).await;
    assert!(ingest.received().is_empty());
    assert!(!flushing.is_finished(), "the start is still unanswered");
    ingest.release();
    assert!(flushing.await.unwrap());
    wait_for_end(&ingest, &layer).await;

    assert_delivered_once_in_order(&ingest, &texts);
    assert_eq!(
        summary(&layer.trodo().delivery_counters()),
        (records(5), 0, 0)
    );
}

#[tokio::test]
async fn a_slow_ingest_gets_everything_without_retries() {
    let ingest = RecordingIngest::start().await.unwrap();
    ingest.set_delay(Duration::from_millis(500));
    let layer = deliver_session(&ingest, 4).await;
    assert_eq!(
        summary(&layer.trodo().delivery_counters()),
        (records(4), 0, 0)
    );
}

#[tokio::test]
async fn oversized_batches_are_split_and_a_span_too_large_alone_is_dropped() {
    let ingest = RecordingIngest::start().await.unwrap();
    // One span with a 1,000-character text is about 2.5 kB of JSON; two
    // are over the limit, and so is a single one with 5,000 characters.
    ingest.reject_larger_than(Some(4_000));
    // Hold answers so that every span waits behind the run's start and
    // goes in one first batch.
    ingest.hold();
    let layer = TrodoLayer::new(config(&ingest));
    let small = |c: char| c.to_string().repeat(1_000);
    let sent = vec![small('a'), small('b'), "h".repeat(5_000), small('c')];
    session(server(&layer).await, &sent).await;
    ingest.release();
    wait_for_end(&ingest, &layer).await;

    let kept = [sent[0].clone(), sent[1].clone(), sent[3].clone()];
    assert_delivered_once_in_order(&ingest, &kept);
    let spans_per_try: Vec<(Option<u16>, usize)> = ingest
        .attempts()
        .iter()
        .filter(|a| a.path.ends_with("/spans"))
        .map(|a| (a.status, a.spans))
        .collect();
    // 4 spans: 413; 2: 413; then one at a time, the big one refused.
    assert_eq!(
        spans_per_try,
        [
            (Some(413), 4),
            (Some(413), 2),
            (Some(200), 1),
            (Some(200), 1),
            (Some(413), 1),
            (Some(200), 1)
        ]
    );
    let c = layer.trodo().delivery_counters();
    assert_eq!(summary(&c), (5, 2, 1));
    assert_eq!(c.dropped_too_large, 1);
}

#[tokio::test]
async fn an_ingest_down_for_good_keeps_the_queue_bounded_and_counts_drops() {
    let ingest = RecordingIngest::start().await.unwrap();
    ingest.set_down(true);
    let config = config(&ingest)
        .with_max_queue_items(8)
        .unwrap()
        .with_max_queue_bytes(64 * 1024)
        .unwrap();
    let layer = TrodoLayer::new(config);
    session(server(&layer).await, &texts(20)).await;
    // The DELETE's close may still wait in the layer's backlog: a flush
    // reads it first (and can deliver nothing).
    assert!(!layer.trodo().flush(Duration::ZERO).await);

    // 22 records into 8 places: the 14 oldest spans made room.
    let c = layer.trodo().delivery_counters();
    assert_eq!((c.queued_items, c.dropped_queue_full), (8, 14));
    assert!(c.queued_bytes <= 64 * 1024, "{c:?}");
    assert_eq!(c.sent, 0);

    // Two calls at once (a signal handler and `main`, say): the second
    // waits for the first and says what it did; so does a later one.
    let trodo = layer.trodo();
    let (first, second) = tokio::join!(
        trodo.shutdown(Duration::from_millis(200)),
        trodo.shutdown(Duration::from_secs(3600))
    );
    assert_eq!((first, second), (false, false));
    assert!(!trodo.shutdown(Duration::from_secs(3600)).await);
    let c = layer.trodo().delivery_counters();
    assert_eq!((c.queued_items, c.queued_bytes), (0, 0));
    assert_eq!((c.dropped_queue_full, c.dropped_shutdown), (14, 8));
    assert_eq!(c.dropped(), records(20));
}

#[tokio::test]
async fn an_application_http_client_is_used() {
    let ingest = RecordingIngest::start().await.unwrap();
    let client = reqwest::Client::builder()
        .user_agent("my-app/1.0")
        .build()
        .unwrap();
    let config = TrodoConfig::new()
        .with_site_id("test-site")
        .unwrap()
        .with_api_base(&ingest.base_url())
        .unwrap()
        .with_http_client(client);
    let layer = TrodoLayer::new(config);
    session(server(&layer).await, &texts(1)).await;
    wait_for_end(&ingest, &layer).await;
    let agents: Vec<Option<String>> = ingest
        .received()
        .iter()
        .map(|r| r.user_agent.clone())
        .collect();
    assert_eq!(agents, vec![Some("my-app/1.0".to_owned()); 3]);
}

#[tokio::test]
async fn flush_waits_for_delivery_without_the_flush_interval() {
    let ingest = RecordingIngest::start().await.unwrap();
    let layer = TrodoLayer::new(config(&ingest));
    let texts = texts(2);
    session(server(&layer).await, &texts).await;
    assert!(layer.trodo().flush(WAIT).await);
    assert_delivered_once_in_order(&ingest, &texts);
    let c = layer.trodo().delivery_counters();
    assert_eq!(summary(&c), (records(2), 0, 0));
    assert_eq!((c.queued_items, c.queued_bytes), (0, 0));
}

/// Delivery runs on a thread of its own: what the server recorded is
/// delivered even after the server's runtime is gone (it would die with
/// the runtime if delivery were one of its tasks).
#[test]
fn delivery_outlives_the_server_runtime() {
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
            .unwrap()
    };
    let (server_runtime, test_runtime) = (runtime("server"), runtime("test"));
    let ingest = test_runtime.block_on(RecordingIngest::start()).unwrap();
    // Nothing gets through while the server runtime lives.
    ingest.set_down(true);
    let layer = server_runtime.block_on(async { TrodoLayer::new(config(&ingest)) });
    let addr = server_runtime.block_on(server(&layer));
    let texts = texts(3);
    test_runtime.block_on(session(addr, &texts));
    test_runtime
        .block_on(ingest.wait_attempts(WAIT, |a| !a.is_empty()))
        .unwrap();
    drop(server_runtime);

    ingest.set_down(false);
    test_runtime.block_on(wait_for_end(&ingest, &layer));
    assert_delivered_once_in_order(&ingest, &texts);
    let c = layer.trodo().delivery_counters();
    assert_eq!((c.sent, c.dropped()), (records(3), 0));
}

/// The head of an answer says what it means: a `200` whose body then stalls
/// is delivered, not a call to time out and send again (the body would take
/// the whole 10 s call timeout, which the flush below does not wait).
#[tokio::test]
async fn an_answer_whose_body_stalls_after_its_head_is_delivered_once() {
    let ingest = RecordingIngest::start().await.unwrap();
    ingest.stall_answer_bodies(true);
    let trodo = Trodo::new(&config(&ingest));
    let run_id = trodo.start_run(StartRun::new("session"));
    trodo.end_run(run_id, EndRun::ok());
    assert!(trodo.flush(Duration::from_secs(5)).await);

    assert_eq!(summary(&trodo.delivery_counters()), (2, 0, 0));
    assert_eq!(statuses(&ingest.attempts()), [Some(200), Some(200)]);
    assert_eq!(ingest.received().len(), 2);
}

/// A redirect is refused, whoever made the client: a POST redirected may
/// come back as a GET, whose `200` would count as delivered what no one
/// received.
#[tokio::test]
async fn a_redirect_is_not_followed_and_its_call_is_rejected() {
    let application_client = reqwest::Client::new(); // follows redirects
    for client in [None, Some(application_client)] {
        let ingest = RecordingIngest::start().await.unwrap();
        ingest.redirect_next(1, "/landing");
        let mut config = config(&ingest);
        if let Some(client) = client.clone() {
            config = config.with_http_client(client);
        }
        let trodo = Trodo::new(&config);
        let run_id = trodo.start_run(StartRun::new("session"));
        trodo.end_run(run_id, EndRun::ok());
        assert!(trodo.flush(WAIT).await);

        let counters = trodo.delivery_counters();
        assert_eq!(
            (counters.sent, counters.dropped_rejected, counters.retried),
            (0, 2, 0),
            "the start refused takes its run's end with it; own client: {}",
            client.is_none()
        );
        let paths: Vec<String> = ingest.attempts().into_iter().map(|a| a.path).collect();
        let followed = client.is_some();
        let expected: &[&str] = if followed {
            &["/api/sdk/runs/start", "/landing"]
        } else {
            &["/api/sdk/runs/start"]
        };
        assert_eq!(paths, expected);
        assert!(ingest.received().is_empty());
    }
}

/// A base URL with credentials (a proxy's, say): reqwest sends them as an
/// `authorization` header, not in the URL, and the answer still counts.
#[tokio::test]
async fn a_base_url_with_credentials_is_delivered_to() {
    let ingest = RecordingIngest::start().await.unwrap();
    let base = ingest.base_url().replace("http://", "http://user:secret@");
    let config = TrodoConfig::new()
        .with_site_id("test-site")
        .unwrap()
        .with_api_base(&base)
        .unwrap();
    let trodo = Trodo::new(&config);
    let run_id = trodo.start_run(StartRun::new("session"));
    trodo.end_run(run_id, EndRun::ok());
    assert!(trodo.flush(WAIT).await);

    assert_eq!(summary(&trodo.delivery_counters()), (2, 0, 0));
    assert_eq!(ingest.received().len(), 2);
}

/// Resolves every name to the ingest, but panics the first time: a bug in
/// an application's resolver.
struct PanickingOnceResolver {
    ingest: SocketAddr,
    panicked: std::sync::atomic::AtomicBool,
}

impl reqwest::dns::Resolve for PanickingOnceResolver {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        if !self
            .panicked
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            panic!("a resolver's bug");
        }
        let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(self.ingest));
        Box::pin(std::future::ready(Ok(addrs)))
    }
}

/// The HTTP client runs the application's code on the delivery thread: its
/// panic fails that call, which is tried again, and delivery goes on.
#[tokio::test]
async fn a_panic_in_the_http_client_fails_one_call_not_delivery() {
    let ingest = RecordingIngest::start().await.unwrap();
    let config = config_resolving_through(&ingest, |ingest| PanickingOnceResolver {
        ingest,
        panicked: false.into(),
    });
    let trodo = Trodo::new(&config);
    let panics_before = trodo.delivery_counters().panics_caught;
    let run_id = trodo.start_run(StartRun::new("session"));
    trodo.end_run(run_id, EndRun::ok());
    assert!(trodo.flush(WAIT).await, "delivered after the panic");

    let counters = trodo.delivery_counters();
    assert_eq!(summary(&counters), (2, 1, 0), "the start, tried twice");
    assert_eq!(counters.panics_caught - panics_before, 1);
    let paths: Vec<String> = ingest.received().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/api/sdk/runs/start",
            &format!("/api/sdk/runs/{run_id}/end")
        ]
    );
}
