//! Several workers sharing sessions through the memory store: the same
//! scenarios `tests/redis.rs` runs on Redis, with no server to run.

mod common;
mod workers;

use std::sync::Arc;

use trodo_tower::store::{MemoryStore, SessionStore};
use workers::Backend;

/// Every worker shares one memory store.
struct Memory(Arc<MemoryStore>);

impl Backend for Memory {
    fn store(&self) -> Arc<dyn SessionStore> {
        self.0.clone()
    }
}

fn memory() -> Memory {
    Memory(Arc::new(MemoryStore::new()))
}

#[tokio::test]
async fn alternating_workers_share_one_run() {
    workers::alternating_workers_share_one_run(&memory()).await;
}

#[tokio::test]
async fn a_dead_workers_runs_end_on_another() {
    workers::a_dead_workers_runs_end_on_another(&memory()).await;
}

#[tokio::test]
async fn two_workers_sweep_each_session_once() {
    workers::two_workers_sweep_each_session_once(&memory(), 1000).await;
}

/// A request in a session another worker opened waits for the store's
/// answer before its span is decided; its body is still read (and
/// redacted) once, not again after the wait.
#[tokio::test]
async fn a_request_that_waits_for_the_store_is_read_once() {
    use common::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use trodo_tower::TrodoLayer;

    let ingest = RecordingIngest::start().await.unwrap();
    let backend = memory();
    let service = mcp(DemoTools::new(), session_manager(None));
    let one = workers::worker(&ingest, &backend, Duration::from_secs(60));
    let redactions = Arc::new(AtomicUsize::new(0));
    let counted = redactions.clone();
    let two = TrodoLayer::new(
        config(&ingest)
            .with_session_store(backend.store())
            .with_redaction(move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
            }),
    );
    let mut on_one = RawClient::new(workers::serve_worker(&service, &one).await);
    let mut on_two = RawClient::new(workers::serve_worker(&service, &two).await);
    on_one.initialize("read-once").await;
    assert!(one.trodo().flush(WAIT).await, "the store holds the run");
    on_two.session = on_one.session.clone();
    let answer = on_two
        .call_tool(1, "add", serde_json::json!({"a": 1, "b": 2}))
        .await;
    assert_eq!(workers::text(&answer), "3");
    assert!(two.trodo().flush(WAIT).await);
    assert_eq!(ingest.spans().len(), 1);
    assert_eq!(
        redactions.load(Ordering::SeqCst),
        2,
        "the input once, the output once"
    );
}

/// A run of `start_run` ended before the store finished opening it: the
/// store counted none of its spans, so the end adds this process's own.
#[tokio::test]
async fn a_run_started_and_ended_at_once_ends_with_every_span_counted() {
    use common::*;
    use trodo_tower::{EndRun, SpanKind, StartRun, Trodo};

    let ingest = RecordingIngest::start().await.unwrap();
    let trodo = Trodo::new(&config(&ingest).with_session_store(memory().store()));
    let run_id = trodo.start_run(StartRun::new("session"));
    for _ in 0..2 {
        let mut llm = trodo.join_run(run_id, SpanKind::Llm, "llm.call");
        llm.set_tokens(5, 10);
        llm.finish();
    }
    trodo.end_run(run_id, EndRun::ok());
    assert!(trodo.flush(WAIT).await);

    assert_eq!(ingest.spans().len(), 2);
    let ends = ingest.ends();
    assert_eq!(ends.len(), 1);
    let end = &ends[0].1;
    assert_eq!(
        (
            end["span_count"].as_u64(),
            end["total_tokens_in"].as_u64(),
            end["total_tokens_out"].as_u64()
        ),
        (Some(2), Some(10), Some(20))
    );
}

/// A store that hangs at shutdown takes at most half its time: what is
/// queued for the ingest API is still delivered. (The run's end waits for
/// the store's claim, which gives up only after a second: it is not
/// delivered, and shutdown says so.)
#[tokio::test]
async fn a_hanging_store_leaves_shutdown_time_to_deliver() {
    use common::*;
    use std::time::Duration;
    use trodo_tower::{SpanKind, StartRun, Trodo};

    let ingest = RecordingIngest::start().await.unwrap();
    let trodo = Trodo::new(&config(&ingest).with_session_store(Arc::new(workers::stores::Hanging)));
    let run_id = trodo.start_run(StartRun::new("session"));
    trodo.join_run(run_id, SpanKind::Tool, "tool.a").finish();
    trodo.join_run(run_id, SpanKind::Tool, "tool.b").finish();
    assert!(!trodo.shutdown(Duration::from_millis(600)).await);

    let paths: Vec<String> = ingest.received().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/api/sdk/runs/start".to_owned(),
            format!("/api/sdk/runs/{run_id}/spans"),
        ]
    );
    assert_eq!(ingest.spans().len(), 2);
}

/// A run of `start_run` opened on one worker and ended with `end_run` on
/// another: the first learns it from the store once the run idles there,
/// forgets it, and drops its later spans instead of sending them after
/// the end (or a second end at shutdown).
#[tokio::test]
async fn a_run_ended_on_another_worker_is_forgotten_by_the_one_that_started_it() {
    use common::*;
    use std::time::Duration;
    use trodo_tower::{EndRun, SpanKind, StartRun, Trodo};

    let ingest = RecordingIngest::start().await.unwrap();
    let store = memory().store();
    let worker = |store: Arc<dyn SessionStore>| {
        let config = config(&ingest)
            .with_idle_timeout(Duration::from_millis(300))
            .unwrap()
            .with_session_store(store);
        Trodo::new(&config)
    };
    let (a, b) = (worker(store.clone()), worker(store));
    let run_id = a.start_run(StartRun::new("session"));
    a.join_run(run_id, SpanKind::Tool, "tool.a").finish();
    assert!(a.flush(WAIT).await, "the store holds the run and its span");
    b.end_run(run_id, EndRun::ok());
    assert!(b.flush(WAIT).await);
    assert_eq!(ingest.ends().len(), 1);
    assert_eq!(ingest.ends()[0].1["span_count"], 1);

    wait_for("the first worker still holds the run", || {
        a.open_runs() == 0
    })
    .await;
    a.join_run(run_id, SpanKind::Tool, "tool.late").finish();
    assert!(a.shutdown(WAIT).await);
    assert_eq!(ingest.ends().len(), 1, "no second end");
    assert_eq!(ingest.spans().len(), 1, "the late span was not sent");
    assert_eq!(a.delivery_counters().dropped_after_run_end, 1);
}

/// A run of `start_run` the store lost while it idled (a Redis restarted
/// without persistence): the worker holding it gives it to the store again,
/// with its totals, so that another worker's `end_run` ends it with them;
/// the first worker then forgets it.
#[tokio::test]
async fn a_run_the_store_lost_is_given_back_and_ends_with_its_totals() {
    use common::*;
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use trodo_tower::{EndRun, SpanKind, StartRun, Trodo};

    let ingest = RecordingIngest::start().await.unwrap();
    let store = Arc::new(workers::stores::Forgetful::default());
    let worker = || {
        let config = config(&ingest)
            .with_idle_timeout(Duration::from_millis(300))
            .unwrap()
            .with_session_store(store.clone());
        Trodo::new(&config)
    };
    let (a, b) = (worker(), worker());
    let run_id = a.start_run(StartRun::new("session"));
    a.join_run(run_id, SpanKind::Tool, "tool.a").finish();
    assert!(a.flush(WAIT).await, "the store holds the run and its span");
    store.forget_everything();

    wait_for("the run was never given back", || {
        store.opens.load(Ordering::SeqCst) > 0
    })
    .await;
    assert!(a.flush(WAIT).await, "its totals followed");
    b.end_run(run_id, EndRun::ok());
    assert!(b.flush(WAIT).await);
    let ends = ingest.ends();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].0, run_id.to_string());
    assert_eq!(ends[0].1["span_count"], 1);

    wait_for("the first worker still holds the run", || {
        a.open_runs() == 0
    })
    .await;
    assert!(a.shutdown(WAIT).await);
    assert_eq!(ingest.ends().len(), 1, "no second end");
}

/// A call longer than the idle timeout on a worker that did not open its
/// session (it found the run through the store): that worker keeps the run
/// active in the store while it answers, so no worker's sweep ends it.
#[tokio::test]
async fn a_long_call_on_another_worker_keeps_its_run_open() {
    use common::*;
    use std::time::Duration;

    let ingest = RecordingIngest::start().await.unwrap();
    let backend = memory();
    let tools = DemoTools::new();
    let service = mcp(tools.clone(), session_manager(None));
    let idle = Duration::from_millis(300);
    let one = workers::worker(&ingest, &backend, idle);
    let two = workers::worker(&ingest, &backend, idle);
    let (on_one, on_two) = (
        workers::serve_worker(&service, &one).await,
        workers::serve_worker(&service, &two).await,
    );
    let mut busy = RawClient::new(on_one);
    busy.initialize("busy-session").await;
    assert!(one.trodo().flush(WAIT).await, "the store holds the run");
    let mut on_two_client = RawClient::new(on_two);
    on_two_client.session = busy.session.clone();
    let response = on_two_client
        .post(waiting_call_body(7))
        .send()
        .await
        .unwrap();
    let mut stream = std::pin::pin!(response.bytes_stream());
    let mut seen = String::new();
    // By the sweep that ends the idle session's run, the busy session's
    // run was idle longer.
    let (busy_run, idle_run) =
        an_idle_session_beside_a_busy_call(&ingest, on_one, &mut stream, &mut seen).await;
    assert_eq!(ingest.ends().len(), 1);
    assert_eq!(
        ingest.ends()[0].0,
        idle_run,
        "only the idle session's run ended"
    );

    let busy_end =
        end_of_the_released_call(&ingest, &tools, &busy_run, &mut stream, &mut seen).await;
    assert_eq!(busy_end["span_count"], 1, "the long call's span counts");
    assert_eq!(two.trodo().delivery_counters().dropped_after_run_end, 0);
}

/// A run of `start_run` idle on the worker holding it is renewed in the
/// store at each of that worker's questions about it, so that its entry
/// never expires while the worker holds it.
#[tokio::test]
async fn an_idle_start_run_run_is_renewed_in_the_store() {
    use common::*;
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use trodo_tower::{SpanKind, StartRun, Trodo};

    let ingest = RecordingIngest::start().await.unwrap();
    let store = Arc::new(workers::stores::Forgetful::default());
    let config = config(&ingest)
        .with_idle_timeout(Duration::from_millis(300))
        .unwrap()
        .with_session_store(store.clone());
    let trodo = Trodo::new(&config);
    let run_id = trodo.start_run(StartRun::new("session"));
    trodo.join_run(run_id, SpanKind::Tool, "tool.a").finish();
    assert!(
        trodo.flush(WAIT).await,
        "the store holds the run and its span"
    );
    let recorded = store.records.load(Ordering::SeqCst);

    // No span, no request: only renewals record now.
    wait_for("the run was not renewed", || {
        store.records.load(Ordering::SeqCst) >= recorded + 2
    })
    .await;
    // Its opening, then a question before each renewal.
    assert!(store.opens.load(Ordering::SeqCst) >= 3);
    assert_eq!(trodo.open_runs(), 1);
}

/// A question about an idle run of `start_run` that the store cannot
/// answer (it fails) is counted as dropped, and the run stays held: the
/// next sweep asks again.
#[tokio::test]
async fn a_question_about_a_held_run_while_the_store_fails_is_counted() {
    use common::*;
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use trodo_tower::{StartRun, Trodo};

    let ingest = RecordingIngest::start().await.unwrap();
    let store = Arc::new(workers::stores::Flaky::default());
    let config = config(&ingest)
        .with_idle_timeout(Duration::from_millis(300))
        .unwrap()
        .with_session_store(store.clone());
    let trodo = Trodo::new(&config);
    trodo.start_run(StartRun::new("session"));
    assert!(trodo.flush(WAIT).await, "the store holds the run");
    assert_eq!(trodo.store_counters().unwrap().dropped, 0);

    // Nothing is recorded meanwhile: only the sweep's questions about the
    // run reach the store queue.
    store.down.store(true, Ordering::SeqCst);
    wait_for("no question about the run was dropped", || {
        trodo.store_counters().unwrap().dropped >= 1
    })
    .await;
    assert!(trodo.store_counters().unwrap().failed >= 1);
    assert_eq!(trodo.open_runs(), 1, "the run is still held");
    assert!(ingest.ends().is_empty());
}

/// A session's run that another worker ended (its sweep, say) while this
/// worker still held it: the store refuses this worker's next aggregates,
/// the worker asks about the run and forgets it, and the session's next
/// request goes to a new run rather than to the ended one.
#[tokio::test]
async fn a_session_run_ended_elsewhere_is_left_for_a_new_one() {
    use common::*;
    use serde_json::json;
    use std::time::Duration;
    use trodo_tower::TrodoLayer;
    use trodo_tower::store::Claim;

    let ingest = RecordingIngest::start().await.unwrap();
    let store = Arc::new(MemoryStore::new());
    let layer = TrodoLayer::new(config(&ingest).with_session_store(store.clone()));
    let trodo = layer.trodo();
    let mut client = RawClient::new(serve_demo(DemoTools::new(), layer).await);
    client.initialize("ended-elsewhere").await;
    assert!(trodo.flush(WAIT).await);
    let first_run = ingest.starts()[0]["run_id"].as_str().unwrap().to_owned();
    let claim = store
        .claim(first_run.parse().unwrap(), None, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        matches!(claim, Claim::Won(_)),
        "another worker ends the run"
    );

    client.call_tool(1, "echo", json!({"text": "one"})).await;
    wait_for("the worker still holds the ended run", || {
        trodo.open_runs() == 0
    })
    .await;
    client.call_tool(2, "echo", json!({"text": "two"})).await;
    assert!(trodo.flush(WAIT).await);

    let starts = ingest.starts();
    assert_eq!(starts.len(), 2);
    let second_run = starts[1]["run_id"].as_str().unwrap();
    assert_ne!(second_run, first_run);
    assert_eq!(starts[1]["metadata"]["resumed"], true);
    let spans = spans_of(&ingest, second_run);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["attributes"]["jsonrpc.request.id"], "2");
}

/// The store lost everything (a Redis restarted without persistence) and
/// another worker has since opened a new run for the session: the worker
/// still holding the old run learns so from a refused record, and ends the
/// old run itself, with its totals (nobody else can).
#[tokio::test]
async fn a_run_the_store_lost_whose_key_was_taken_is_ended_by_its_worker() {
    use common::*;
    use serde_json::json;

    let ingest = RecordingIngest::start().await.unwrap();
    let store = Arc::new(workers::stores::Forgetful::default());
    let service = mcp(DemoTools::new(), session_manager(None));
    let worker = || trodo_tower::TrodoLayer::new(config(&ingest).with_session_store(store.clone()));
    let (one, two) = (worker(), worker());
    let mut on_one = RawClient::new(workers::serve_worker(&service, &one).await);
    let mut on_two = RawClient::new(workers::serve_worker(&service, &two).await);
    on_one.initialize("lost-store").await;
    assert!(one.trodo().flush(WAIT).await);
    let first_run = ingest.starts()[0]["run_id"].as_str().unwrap().to_owned();
    store.forget_everything();

    on_two.session = on_one.session.clone();
    on_two.call_tool(1, "echo", json!({"text": "on two"})).await;
    assert!(two.trodo().flush(WAIT).await);
    assert_eq!(
        ingest.starts().len(),
        2,
        "the second worker opened a new run"
    );

    on_one.call_tool(2, "echo", json!({"text": "on one"})).await;
    wait_for("the first worker still holds the old run", || {
        one.trodo().open_runs() == 0
    })
    .await;
    assert!(one.trodo().flush(WAIT).await);
    let ends = ingest.ends();
    let (_, end) = ends
        .iter()
        .find(|(run_id, _)| *run_id == first_run)
        .expect("the old run ends");
    assert_eq!(end["span_count"], 1, "with the first worker's totals");
}

/// A response future that says when it is dropped, after what it wraps.
struct Watched<F> {
    inner: Option<std::pin::Pin<Box<F>>>,
    dropped: Arc<tokio::sync::Notify>,
}

impl<F: std::future::Future> std::future::Future for Watched<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.inner.as_mut().expect("not dropped").as_mut().poll(cx)
    }
}

impl<F> Drop for Watched<F> {
    fn drop(&mut self) {
        self.inner = None;
        self.dropped.notify_one();
    }
}

/// Serves `service` at `/mcp` behind `layer`; the returned signal says
/// when the response future of a request is dropped.
async fn serve_watched(
    service: &workers::StreamableService,
    layer: &trodo_tower::TrodoLayer,
) -> (std::net::SocketAddr, Arc<tokio::sync::Notify>) {
    let dropped = Arc::new(tokio::sync::Notify::new());
    let watched = dropped.clone();
    let app = axum::Router::new()
        .nest_service("/mcp", service.clone())
        .layer(layer.clone())
        .layer(tower::util::MapFutureLayer::new(move |inner| Watched {
            inner: Some(Box::pin(inner)),
            dropped: watched.clone(),
        }));
    (common::serve(app).await, dropped)
}

/// A worker on `store`, whose requests wait for it up to 10 s.
fn on_slow_store(
    ingest: &common::RecordingIngest,
    store: &Arc<workers::stores::SlowToOpen>,
) -> trodo_tower::TrodoConfig {
    common::config(ingest)
        .with_session_store(store.clone())
        .with_store_timeout(std::time::Duration::from_secs(10))
        .unwrap()
}

/// `tools/call add` from a client without sessions, known by its user
/// agent `agent/1`.
fn add_call(client: &common::RawClient, id: i64) -> reqwest::RequestBuilder {
    add_call_as(client, id, "agent/1")
}

/// [`add_call`] from the client whose user agent is `agent`.
fn add_call_as(client: &common::RawClient, id: i64, agent: &str) -> reqwest::RequestBuilder {
    client
        .post(common::tool_call_body(
            id,
            "add",
            serde_json::json!({"a": 1, "b": 2}),
        ))
        .header("user-agent", agent)
}

/// Checks that `response` answers an [`add_call`]: 3.
async fn summed(response: reqwest::Response) {
    let text = response.text().await.unwrap();
    assert!(text.contains(r#""text":"3""#), "{text}");
}

/// Where the key of the call that goes away was seen before.
#[derive(Clone, Copy, PartialEq)]
enum SeenBefore {
    /// Nowhere: the store opens its run.
    Nowhere,
    /// A session initialized on a worker without the store: the store
    /// opens a run for it too.
    SessionElsewhere,
    /// Another worker opened the key's run in the store first.
    KeyOnAnotherWorker,
}

/// With a session store, a client that goes away while its answer waits
/// for the store's answer on its key's run: the cancelled call goes into
/// the run the store names, once it names it. One the store opens is
/// started by this process (before, no one started it, and every later
/// request of the key, on any worker, found a run whose `start` was never
/// sent); another worker's is joined, not split.
async fn a_client_gone_while_the_store_decides_its_run(seen: SeenBefore) {
    use common::*;
    use serde_json::json;
    use trodo_tower::TrodoLayer;
    use workers::stores::SlowToOpen;

    let ingest = RecordingIngest::start().await.unwrap();
    let store = Arc::new(SlowToOpen::new());
    let worker = || TrodoLayer::new(on_slow_store(&ingest, &store));
    let session = seen == SeenBefore::SessionElsewhere;
    let service = if session {
        mcp(DemoTools::new(), session_manager(None))
    } else {
        mcp_stateless_json(DemoTools::new())
    };
    let layer = worker();
    let (addr, dropped) = serve_watched(&service, &layer).await;
    let mut client = RawClient::new(addr);
    let call = |client: &RawClient, id| add_call(client, id).send();
    let mut runs_before = 0;
    let mut elsewhere = None;
    match seen {
        SeenBefore::Nowhere => {}
        SeenBefore::SessionElsewhere => {
            let without_store = TrodoLayer::new(config(&ingest));
            let mut there = RawClient::new(workers::serve_worker(&service, &without_store).await);
            there.initialize("elsewhere").await;
            assert!(without_store.trodo().flush(WAIT).await);
            client.session = there.session.clone();
            runs_before = 1;
        }
        SeenBefore::KeyOnAnotherWorker => {
            let other = worker();
            let there = RawClient::new(workers::serve_worker(&service, &other).await);
            let first = tokio::spawn(async move { call(&there, 0).await.unwrap().text().await });
            store.asked.notified().await;
            elsewhere = Some((other, first));
        }
    }
    let gone = {
        let client = RawClient {
            http: client.http.clone(),
            url: client.url.clone(),
            session: client.session.clone(),
        };
        tokio::spawn(async move { call(&client, 1).await })
    };
    store.asked.notified().await;
    let joins_another = elsewhere.is_some();
    if let Some((other, first)) = elsewhere {
        // The other worker's open goes first: the store holds its run.
        store.let_through.add_permits(1);
        assert!(first.await.unwrap().unwrap().contains(r#""text":"3""#));
        assert!(other.trodo().flush(WAIT).await);
    }
    gone.abort(); // the client goes away while the answer waits
    let _ = gone.await;
    dropped.notified().await;
    store.let_through.add_permits(1);
    let answer = call(&client, 2).await.unwrap().text().await.unwrap();
    assert!(answer.contains(r#""text":"3""#), "{answer}");
    assert!(layer.trodo().flush(WAIT).await);

    let starts = ingest.starts();
    assert_eq!(starts.len(), runs_before + 1, "{:?}", ingest.received());
    let run = &starts[runs_before];
    assert_eq!(
        run["metadata"]["resumed"].as_bool(),
        session.then_some(true)
    );
    let mut calls: Vec<_> = spans_of(&ingest, run["run_id"].as_str().unwrap())
        .iter()
        .map(|s| {
            let id = s["attributes"]["jsonrpc.request.id"]
                .as_str()
                .unwrap()
                .to_owned();
            (id, s["status"].clone(), s["error_type"].clone())
        })
        .collect();
    calls.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected = vec![
        ("1".to_owned(), json!("error"), json!("cancelled")),
        ("2".to_owned(), json!("ok"), json!(null)),
    ];
    if joins_another {
        expected.insert(0, ("0".to_owned(), json!("ok"), json!(null)));
    }
    assert_eq!(calls, expected);
}

#[tokio::test]
async fn a_client_gone_while_the_store_opens_its_keys_run_leaves_a_started_run() {
    a_client_gone_while_the_store_decides_its_run(SeenBefore::Nowhere).await;
}

#[tokio::test]
async fn a_client_gone_while_the_store_opens_its_sessions_run_leaves_a_started_run() {
    a_client_gone_while_the_store_decides_its_run(SeenBefore::SessionElsewhere).await;
}

#[tokio::test]
async fn a_client_gone_while_the_store_finds_another_workers_run_joins_it() {
    a_client_gone_while_the_store_decides_its_run(SeenBefore::KeyOnAnotherWorker).await;
}

/// A client gone while the store is slower than its timeout: its call
/// gives up on the store at the timeout and is recorded, but nobody
/// waited, so this is no request timeout and requests still wait on the
/// store.
#[tokio::test]
async fn a_store_slow_for_a_client_gone_is_no_request_timeout() {
    use common::*;
    use std::time::Duration;
    use trodo_tower::TrodoLayer;
    use workers::stores::SlowToOpen;

    let ingest = RecordingIngest::start().await.unwrap();
    let store = Arc::new(SlowToOpen::new());
    let layer = TrodoLayer::new(
        config(&ingest)
            .with_session_store(store.clone())
            // Long enough not to pass before the client goes away, even
            // on a busy machine.
            .with_store_timeout(Duration::from_secs(1))
            .unwrap(),
    );
    let (addr, dropped) = serve_watched(&mcp_stateless_json(DemoTools::new()), &layer).await;
    let client = RawClient::new(addr);
    let http = client.http.clone();
    let request = add_call(&client, 1);
    let gone = tokio::spawn(async move { (request.send().await, http) });
    store.asked.notified().await;
    gone.abort(); // the client goes away while the answer waits
    let _ = gone.await;
    dropped.notified().await;
    // Past the store timeout the call goes into a run of this worker's own.
    ingest
        .wait_until(WAIT, |r| r.iter().any(|r| r.path.ends_with("/spans")))
        .await
        .unwrap();
    let counters = layer.trodo().store_counters().unwrap();
    assert_eq!(counters.request_timeouts, 0);
    store.let_through.add_permits(1);
}

/// Two first requests of a key on one worker: the first waits for the
/// store to open its run; the second settles without the store (its open
/// fails). Both ask with one run id, so the run the store opens is the one
/// this worker started, and another worker joins it.
#[tokio::test]
async fn two_first_requests_of_a_key_settle_into_the_run_the_store_opens() {
    use common::*;
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use trodo_tower::TrodoLayer;
    use workers::stores::SlowToOpen;

    let ingest = RecordingIngest::start().await.unwrap();
    let store = Arc::new(SlowToOpen::new());
    let worker = || {
        let config = on_slow_store(&ingest, &store);
        TrodoLayer::new(config.with_idle_timeout(Duration::from_secs(1)).unwrap())
    };
    let service = mcp_stateless_json(DemoTools::new());
    let (one, other) = (worker(), worker());
    let on_one = RawClient::new(workers::serve_worker(&service, &one).await);
    let on_other = RawClient::new(workers::serve_worker(&service, &other).await);
    let call = |client: &RawClient, id| add_call(client, id).send();
    let first = tokio::spawn(call(&on_one, 1));
    store.asked.notified().await;
    store.failing_opens.store(true, Ordering::SeqCst);
    let second = call(&on_one, 2).await.unwrap().text().await.unwrap();
    assert!(second.contains(r#""text":"3""#), "{second}");
    store.failing_opens.store(false, Ordering::SeqCst);
    store.let_through.add_permits(2); // the first request's open, and the other worker's
    let first = first.await.unwrap().unwrap().text().await.unwrap();
    assert!(first.contains(r#""text":"3""#), "{first}");
    let third = call(&on_other, 3).await.unwrap().text().await.unwrap();
    assert!(third.contains(r#""text":"3""#), "{third}");
    assert!(one.trodo().flush(WAIT).await && other.trodo().flush(WAIT).await);

    let starts = ingest.starts();
    assert_eq!(starts.len(), 1, "{:?}", ingest.received());
    let run_id = starts[0]["run_id"].as_str().unwrap();
    let mut ids: Vec<_> = ingest
        .spans()
        .iter()
        .map(|(run, span)| {
            assert_eq!(run, run_id, "every span in the one run");
            span["attributes"]["jsonrpc.request.id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["1", "2", "3"]);
    // Both workers counted into the store's run: its end has all three.
    wait_for_ends(&ingest, 1).await;
    let ends = ingest.ends();
    assert_eq!(ends[0].0, run_id);
    assert_eq!(ends[0].1["span_count"], 3, "{:?}", ends[0].1);
}

/// A session this worker does not know: its first request's open takes
/// effect in the store, but the answer is late, and a second request of
/// the session finds the run there first. The run is this worker's own
/// all the same, started once, even when the first request's client goes
/// away before the store answers.
#[tokio::test]
async fn a_run_asked_for_here_and_found_by_another_request_first_is_started_once() {
    use common::*;
    use trodo_tower::TrodoLayer;
    use workers::stores::SlowToOpen;

    let ingest = RecordingIngest::start().await.unwrap();
    let store = Arc::new(SlowToOpen::answering_late());
    let layer = TrodoLayer::new(on_slow_store(&ingest, &store));
    let service = mcp(DemoTools::new(), session_manager(None));
    let elsewhere = TrodoLayer::new(config(&ingest));
    let mut there = RawClient::new(workers::serve_worker(&service, &elsewhere).await);
    there.initialize("restarted").await;
    assert!(elsewhere.trodo().flush(WAIT).await);
    let (addr, dropped) = serve_watched(&service, &layer).await;
    let mut client = RawClient::new(addr);
    client.session = there.session.clone();

    let request = client.post(tool_call_body(
        1,
        "add",
        serde_json::json!({"a": 1, "b": 2}),
    ));
    let first = tokio::spawn(async move { request.send().await });
    store.asked.notified().await;
    let second = client
        .call_tool(2, "add", serde_json::json!({"a": 2, "b": 2}))
        .await;
    assert_eq!(second.response()["result"]["content"][0]["text"], "4");
    first.abort(); // the first client goes away before the store answers
    let _ = first.await;
    dropped.notified().await;
    store.let_through.add_permits(1);
    assert!(client.delete().await.status < 300);
    wait_for_ends(&ingest, 1).await;
    assert!(layer.trodo().flush(WAIT).await);

    let starts = ingest.starts();
    assert_eq!(starts.len(), 2, "{:?}", ingest.received());
    let run_id = starts[1]["run_id"].as_str().unwrap();
    assert_eq!(starts[1]["metadata"]["resumed"], true);
    let mut calls: Vec<_> = spans_of(&ingest, run_id)
        .iter()
        .map(|s| {
            let id = s["attributes"]["jsonrpc.request.id"].as_str().unwrap();
            (id.to_owned(), s["status"].clone())
        })
        .collect();
    calls.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        calls,
        [
            ("1".to_owned(), "error".into()),
            ("2".to_owned(), "ok".into())
        ]
    );
    let ends = ingest.ends();
    assert_eq!(ends.iter().filter(|(id, _)| id == run_id).count(), 1);
}

/// A DELETE while the store fails: the run ends with the worker's totals.
/// The store still holds it; once the store answers again, the worker
/// claims it there before its sweep could end it a second time.
#[tokio::test]
async fn a_run_ended_while_the_store_failed_is_claimed_there_once_it_answers() {
    use common::*;
    use serde_json::json;
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use trodo_tower::TrodoLayer;
    use trodo_tower::store::Claim;

    let ingest = RecordingIngest::start().await.unwrap();
    let store = Arc::new(workers::stores::Flaky::default());
    let layer = TrodoLayer::new(
        config(&ingest)
            .with_session_store(store.clone())
            .with_idle_timeout(Duration::from_millis(400))
            .unwrap(),
    );
    let trodo = layer.trodo();
    let mut client = RawClient::new(serve_demo(DemoTools::new(), layer).await);
    client.initialize("blip").await;
    client.call_tool(1, "echo", json!({"text": "x"})).await;
    assert!(trodo.flush(WAIT).await, "the store holds the run");

    store.down.store(true, Ordering::SeqCst);
    assert_eq!(client.delete().await.status, 202);
    assert!(trodo.flush(WAIT).await);
    let ends = ingest.ends();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].1["metadata"]["closed_via"], "session_deleted");
    assert_eq!(ends[0].1["span_count"], 1, "the worker's own totals");
    let counters = trodo.store_counters().unwrap();
    assert_eq!((counters.ended, counters.local_ends), (0, 1));
    let sweeps = counters.sweeps;

    // The run is idle in the store by the time the store is asked again:
    // the sweep after that claims it, unless the worker did first.
    store.down.store(false, Ordering::SeqCst);
    wait_for("no sweep once the store answered", || {
        trodo.store_counters().unwrap().sweeps > sweeps
    })
    .await;
    assert!(trodo.flush(WAIT).await);
    assert_eq!(ingest.ends().len(), 1, "no second end");
    let counters = trodo.store_counters().unwrap();
    assert_eq!((counters.ended, counters.local_ends), (0, 1));
    let run_id = ends[0].0.parse().unwrap();
    let claim = store.inner.claim(run_id, None, Duration::from_secs(60));
    assert_eq!(claim.await.unwrap(), Claim::AlreadyEnded);
}

/// Runs of `start_run` started while the store fails (the first open
/// fails, the next is skipped for a second after it): once the store
/// answers again, the worker opens them there, with what it counted
/// meanwhile, so that another worker's `end_run` ends them with their
/// totals (and the first worker sends no second end).
#[tokio::test]
async fn runs_started_while_the_store_failed_are_opened_there_once_it_answers() {
    use common::*;
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use trodo_tower::{EndRun, SpanKind, StartRun, Trodo};

    let ingest = RecordingIngest::start().await.unwrap();
    let store = Arc::new(workers::stores::Flaky::default());
    // The default idle timeout: a sweep every 5 s.
    let worker = || Trodo::new(&config(&ingest).with_session_store(store.clone()));
    let (a, b) = (worker(), worker());
    store.down.store(true, Ordering::SeqCst);
    let runs = [
        a.start_run(StartRun::new("first")),
        a.start_run(StartRun::new("second")),
    ];
    for (i, &run_id) in runs.iter().enumerate() {
        for _ in 0..=i {
            let mut llm = a.join_run(run_id, SpanKind::Llm, "llm.call");
            llm.set_tokens(5, 10);
            llm.finish();
        }
    }
    assert!(a.flush(WAIT).await);
    assert!(!a.store_counters().unwrap().available);
    store.down.store(false, Ordering::SeqCst);

    wait_for("the store is still skipped", || {
        a.store_counters().unwrap().available
    })
    .await;
    // With nothing queued, they are opened as the store may be asked again,
    // not at the next sweep.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    for run_id in runs {
        // The store key of a run of `start_run`.
        let key = format!("\t{run_id}");
        while store.inner.find(&key).await.unwrap() != Some(run_id) {
            assert!(
                std::time::Instant::now() < deadline,
                "{run_id} is not opened"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(a.flush(WAIT).await, "their totals followed");
    for run_id in runs {
        b.end_run(run_id, EndRun::ok());
    }
    assert!(b.flush(WAIT).await);
    let ends = ingest.ends();
    assert_eq!(ends.len(), 2);
    for (i, run_id) in runs.into_iter().enumerate() {
        let (_, end) = ends
            .iter()
            .find(|(id, _)| *id == run_id.to_string())
            .unwrap();
        let spans = i as u64 + 1;
        assert_eq!(
            (
                end["span_count"].as_u64(),
                end["total_tokens_in"].as_u64(),
                end["total_tokens_out"].as_u64()
            ),
            (Some(spans), Some(5 * spans), Some(10 * spans)),
            "the end counts the first worker's spans"
        );
    }
    let counters = b.store_counters().unwrap();
    assert_eq!((counters.ended, counters.local_ends), (2, 0));

    assert!(a.shutdown(WAIT).await);
    assert_eq!(ingest.ends().len(), 2, "no second end");
}

/// The store opens this worker's run for a key while the run table fills
/// up: the call still starts the run the store now holds (every later
/// request of the key, on any worker, joins that run), rather than being
/// a run of its own and leaving the store's run never started.
#[tokio::test]
async fn a_run_the_store_opened_is_started_even_if_the_table_filled_meanwhile() {
    use common::*;
    use std::collections::HashSet;
    use std::sync::atomic::Ordering;
    use trodo_tower::TrodoLayer;
    use workers::stores::SlowToOpen;

    let ingest = RecordingIngest::start().await.unwrap();
    let store = Arc::new(SlowToOpen::new());
    let one = TrodoLayer::new(
        on_slow_store(&ingest, &store)
            .with_max_open_runs(1)
            .unwrap(),
    );
    let other = TrodoLayer::new(on_slow_store(&ingest, &store));
    let service = mcp_stateless_json(DemoTools::new());
    let on_one = RawClient::new(workers::serve_worker(&service, &one).await);
    let on_other = RawClient::new(workers::serve_worker(&service, &other).await);
    // agent/1's first call finds room, and waits for the store's open.
    let first = tokio::spawn(add_call(&on_one, 1).send());
    store.asked.notified().await;
    // agent/2's first call takes the last place (its open fails: a local run).
    store.failing_opens.store(true, Ordering::SeqCst);
    summed(add_call_as(&on_one, 2, "agent/2").send().await.unwrap()).await;
    store.failing_opens.store(false, Ordering::SeqCst);
    store.let_through.add_permits(2); // agent/1's open, then the other worker's
    summed(first.await.unwrap().unwrap()).await;
    // agent/1 again, on the other worker: it joins the run the store holds.
    summed(add_call(&on_other, 3).send().await.unwrap()).await;
    assert!(one.trodo().flush(WAIT).await && other.trodo().flush(WAIT).await);

    let started: HashSet<String> = ingest
        .starts()
        .iter()
        .map(|s| s["run_id"].as_str().unwrap().to_owned())
        .collect();
    for (run, span) in ingest.spans() {
        assert!(
            started.contains(&run),
            "span {} in run {run}, never started: {:?}",
            span["name"],
            ingest.received()
        );
    }
    // agent/2's run, and agent/1's, which both workers' calls went into.
    assert_eq!((started.len(), ingest.spans().len()), (2, 3));
    let counters = one.trodo().delivery_counters();
    assert_eq!(counters.own_runs_past_max_open_runs, 0);
}
