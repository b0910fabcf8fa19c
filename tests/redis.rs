//! Workers sharing sessions through a real Redis server: the one at
//! `TRODO_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/`), each test
//! under a key prefix of its own; and, for the outage test, a `redis-server`
//! the test starts, stops and restarts itself.
#![cfg(feature = "redis")]

mod common;
mod workers;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trodo_tower::store::{RedisStore, SessionStore};
use trodo_tower::{Trodo, TrodoLayer};
use workers::{Backend, serve_worker, text};

/// Workers on one Redis server, under a key prefix of their own; the keys
/// are deleted when it is dropped.
struct Redis {
    url: String,
    prefix: String,
}

impl Redis {
    fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            prefix: format!("trodo-test:{}:", uuid::Uuid::new_v4()),
        }
    }

    fn machine() -> Self {
        Self::new(
            &std::env::var("TRODO_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned()),
        )
    }
}

impl Backend for Redis {
    /// A store of its own (its own connection) per worker.
    fn store(&self) -> Arc<dyn SessionStore> {
        Arc::new(
            RedisStore::new(&self.url)
                .unwrap()
                .with_prefix(&self.prefix),
        )
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let Ok(mut connection) = redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
        else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut connection)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query(&mut connection);
        }
    }
}

#[tokio::test]
async fn alternating_workers_share_one_run() {
    workers::alternating_workers_share_one_run(&Redis::machine()).await;
}

#[tokio::test]
async fn a_dead_workers_runs_end_on_another() {
    workers::a_dead_workers_runs_end_on_another(&Redis::machine()).await;
}

#[tokio::test]
async fn two_workers_sweep_1000_sessions_once() {
    workers::two_workers_sweep_each_session_once(&Redis::machine(), 1_000).await;
}

#[tokio::test]
async fn keys_expire_and_leave_nothing_behind() {
    let redis = Redis::machine();
    let ingest = RecordingIngest::start().await.unwrap();
    let service = mcp(DemoTools::new(), session_manager(None));
    let layer = workers::worker(&ingest, &redis, Duration::from_secs(60));
    let mut client = RawClient::new(serve_worker(&service, &layer).await);
    client.initialize("ttl").await;
    client.call_tool(1, "echo", json!({"text": "x"})).await;
    assert!(layer.trodo().flush(WAIT).await);

    let mut connection = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", redis.prefix))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(
        keys.len(),
        3,
        "the session's key, its run, the idle set: {keys:?}"
    );
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap();
        // 12 idle timeouts.
        assert!(ttl > 700_000 && ttl <= 720_000, "{key} expires: {ttl}");
    }
    assert_eq!(client.delete().await.status, 202);
    assert!(layer.trodo().flush(WAIT).await);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", redis.prefix))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "only the ended marker stays: {keys:?}");
    assert!(keys[0].contains(":ended:"));
}

/// A `redis-server` of this test's own, on a free loopback port.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self { port, child: None };
        server.restart().await;
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().to_string()
    }

    /// Starts the server (empty: it keeps nothing on disk) and waits until it answers.
    async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (the redis tests need it)");
        self.child = Some(child);
        tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(mut tcp) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await
                {
                    let mut pong = [0; 7];
                    if tcp.write_all(b"PING\r\n").await.is_ok()
                        && tcp.read_exact(&mut pong).await.is_ok()
                        && &pong == b"+PONG\r\n"
                    {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("redis-server answers");
    }

    /// Freezes the server: connections stay open, nothing is answered.
    fn freeze(&self) {
        let status = Command::new("kill")
            .args(["-STOP", &self.pid()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tool call that must be answered right, and fast, whatever Redis does.
async fn served(client: &RawClient, id: i64) {
    let started = Instant::now();
    let answer = client.call_tool(id, "add", json!({"a": id, "b": 1})).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(text(&answer), (id + 1).to_string());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered in {:?}",
        started.elapsed()
    );
}

/// A new session on `worker` used and deleted: every request answered.
async fn session_served(worker: std::net::SocketAddr, id: i64) -> String {
    let started = Instant::now();
    let mut client = RawClient::new(worker);
    client.initialize("outage").await;
    served(&client, id).await;
    assert_eq!(client.delete().await.status, 202);
    assert!(started.elapsed() < Duration::from_secs(2));
    client.session.unwrap()
}

fn counters(trodo: &Trodo) -> trodo_tower::store::StoreCounters {
    trodo.store_counters().unwrap()
}

#[tokio::test]
async fn redis_slow_or_stopped_mid_test_no_request_fails() {
    let mut server = OwnRedis::start().await;
    let redis = Redis::new(&server.url());
    let ingest = RecordingIngest::start().await.unwrap();
    let service = mcp(DemoTools::new(), session_manager(None));
    let idle = Duration::from_secs(2);
    let (one, two): (TrodoLayer, TrodoLayer) = (
        workers::worker(&ingest, &redis, idle),
        workers::worker(&ingest, &redis, idle),
    );
    let (a, b) = (
        serve_worker(&service, &one).await,
        serve_worker(&service, &two).await,
    );
    let (one, two) = (one.trodo(), two.trodo());

    // Healthy: the second worker continues the first one's session.
    let mut first = RawClient::new(a);
    first.initialize("before").await;
    let mut first_on_b = RawClient::new(b);
    first_on_b.session = first.session.clone();
    served(&first_on_b, 1).await;
    ingest
        .wait_until(WAIT, |r| span_count(r) == 1)
        .await
        .unwrap();
    assert_eq!(ingest.starts().len(), 1, "one run for the session");

    // Redis frozen, then gone: every request is answered, and fast.
    let mut outage_sessions = Vec::new();
    server.freeze();
    for id in 2..6 {
        served(if id % 2 == 0 { &first } else { &first_on_b }, id).await;
        outage_sessions.push(session_served(if id % 2 == 0 { b } else { a }, 100 + id).await);
    }
    server.kill();
    for id in 6..10 {
        served(if id % 2 == 0 { &first } else { &first_on_b }, id).await;
        outage_sessions.push(session_served(if id % 2 == 0 { b } else { a }, 100 + id).await);
    }
    let failed = counters(&one).failed + counters(&two).failed;
    assert!(failed > 0, "the outage was noticed");

    // Sessions that began and ended in the outage: one run, one end each,
    // with the totals the worker counted.
    assert!(one.flush(WAIT).await && two.flush(WAIT).await);
    let starts = ingest.starts();
    let ends = ingest.ends();
    for session in &outage_sessions {
        let runs: Vec<&str> = starts
            .iter()
            .filter(|s| s["conversation_id"] == session.as_str())
            .map(|s| s["run_id"].as_str().unwrap())
            .collect();
        assert_eq!(runs.len(), 1, "{session}");
        let ended: Vec<_> = ends.iter().filter(|(id, _)| id == runs[0]).collect();
        assert_eq!(ended.len(), 1, "{session}");
        assert_eq!(ended[0].1["span_count"], 1);
        assert_eq!(ended[0].1["metadata"]["closed_via"], "session_deleted");
    }
    assert!(counters(&one).local_ends + counters(&two).local_ends >= 8);

    // Redis back (empty): both workers use it again.
    let (ok_one, ok_two) = (counters(&one).ok, counters(&two).ok);
    server.restart().await;
    tokio::time::timeout(WAIT, async {
        while counters(&one).ok == ok_one || counters(&two).ok == ok_two {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both workers recover");
    let mut after = RawClient::new(a);
    after.initialize("after").await;
    let mut after_on_b = RawClient::new(b);
    after_on_b.session = after.session.clone();
    served(&after_on_b, 20).await;
    served(&after, 21).await;
    assert!(one.flush(WAIT).await && two.flush(WAIT).await);
    let session = after.session.clone().unwrap();
    let runs: Vec<_> = ingest
        .starts()
        .into_iter()
        .filter(|s| s["conversation_id"] == session.as_str())
        .collect();
    assert_eq!(
        runs.len(),
        1,
        "shared again: one run for a session on both workers"
    );
    let run_id = runs[0]["run_id"].as_str().unwrap();
    assert_eq!(spans_of(&ingest, run_id).len(), 2);
}
