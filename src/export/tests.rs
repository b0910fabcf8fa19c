//! The exporter and its worker against a scripted sink, in paused time:
//! every time below is exact.

use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::options::DEFAULT_MAX_BATCH_ITEMS as FULL;
use super::outcome::Outcome;
use super::script::{Script, end, options, span, span_with, spawn, start};
use super::{DeliveryCounters, DeliveryOptions, Exporter};

const HOUR: Duration = Duration::from_secs(3600);

fn transient() -> Outcome {
    Outcome::network_error("connection refused")
}

fn unavailable() -> Outcome {
    Outcome::of_status(503, None, std::time::SystemTime::UNIX_EPOCH)
}

/// The counters that say where records went.
fn fates(c: &DeliveryCounters) -> [u64; 7] {
    [
        c.sent,
        c.queued_items,
        c.dropped_queue_full,
        c.dropped_gave_up,
        c.dropped_too_large,
        c.dropped_rejected,
        c.dropped_shutdown,
    ]
}

/// Sends run `run`: its start, a span per name, its end.
fn send_run(exporter: &Exporter, run: u128, spans: &[&str]) {
    exporter.send(start(run));
    for name in spans {
        exporter.send(span(run, name));
    }
    exporter.send(end(run));
}

/// Sends the starts of runs `1..=runs` to `script`, `max_in_flight` calls
/// at a time, and shuts down (which must deliver them within 5 s); the
/// exporter, its worker stopped.
async fn starts_through_shutdown(
    script: &Arc<Script>,
    max_in_flight: usize,
    runs: u128,
) -> Exporter {
    let options = DeliveryOptions {
        max_in_flight,
        ..options()
    };
    let (exporter, worker) = spawn(script, options);
    for run in 1..=runs {
        exporter.send(start(run));
    }
    assert!(exporter.shutdown(Duration::from_secs(5)).await);
    worker.await.unwrap();
    exporter
}

/// A script that answers the first call with a 429 and `Retry-After:
/// retry_after`, every later one with success.
fn throttled_once(retry_after: Duration) -> Arc<Script> {
    let answered = AtomicUsize::new(0);
    Script::new(move |_| {
        if answered.fetch_add(1, Ordering::Relaxed) == 0 {
            Outcome::Throttled {
                retry_after: Some(retry_after),
            }
        } else {
            Outcome::Delivered
        }
    })
}

#[tokio::test(start_paused = true)]
async fn records_wait_at_most_a_second_and_a_runs_spans_share_one_call() {
    let script = Script::ok();
    let (exporter, _worker) = spawn(&script, options());
    exporter.send(start(1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    exporter.send(span(1, "a"));
    exporter.send(span(1, "b"));
    exporter.send(span(2, "c"));
    script.wait_calls(3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    exporter.send(span(1, "d"));
    script.wait_calls(4).await;
    assert_eq!(
        script.described(),
        ["start 1", "spans 2 c", "spans 1 a,b", "spans 1 d"]
    );
    // The first three wait one second from the first record; run 2 has no
    // start queued, so its span goes while run 1's start is in flight.
    assert_eq!(script.times_ms(), [1000, 1000, 1000, 2200]);
    assert_eq!(exporter.counters().sent, 5);
}

#[tokio::test(start_paused = true)]
async fn a_full_call_of_waiting_records_goes_at_once() {
    let script = Script::ok();
    let (exporter, _worker) = spawn(&script, options());
    exporter.send(start(1));
    for i in 0..FULL - 1 {
        exporter.send(span(1, &i.to_string()));
    }
    script.wait_calls(2).await;
    assert_eq!(script.times_ms(), [0, 0]);
    assert_eq!(script.calls()[1].span_count(), FULL - 1);
}

#[tokio::test(start_paused = true)]
async fn a_spans_call_carries_at_most_a_full_call_of_spans() {
    let script = Script::ok();
    let (exporter, _worker) = spawn(&script, options());
    let spans = 2 * FULL + 20;
    exporter.send(start(1));
    for i in 0..spans {
        exporter.send(span(1, &i.to_string()));
    }
    exporter.send(end(1));
    assert!(exporter.flush(HOUR).await);
    let sizes: Vec<usize> = script.calls().iter().map(|c| c.span_count()).collect();
    assert_eq!(sizes, [0, FULL, FULL, 20, 0]);
    let names: Vec<String> = script
        .calls()
        .iter()
        .flat_map(|c| c.body["spans"].as_array().cloned().unwrap_or_default())
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..spans).map(|i| i.to_string()).collect();
    assert_eq!(names, expected, "every span once, in order");
    assert_eq!(exporter.counters().sent, spans as u64 + 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_start_is_retried_before_the_spans_behind_it() {
    let starts = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&starts);
    let script = Script::new(move |call| {
        if call.path.ends_with("/start") && seen.fetch_add(1, Ordering::Relaxed) < 3 {
            unavailable()
        } else {
            Outcome::Delivered
        }
    });
    let (exporter, _worker) = spawn(&script, options());
    send_run(&exporter, 1, &["a", "b"]);
    assert!(exporter.flush(HOUR).await);
    assert_eq!(
        script.described(),
        [
            "start 1",
            "start 1",
            "start 1",
            "start 1",
            "spans 1 a,b",
            "end 1"
        ]
    );
    // Back-off 1 s, 2 s, 4 s after the flush at 0.
    assert_eq!(script.times_ms(), [0, 1000, 3000, 7000, 7000, 7000]);
    let c = exporter.counters();
    assert_eq!((c.sent, c.retried, c.dropped()), (4, 3, 0));
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_start_keeps_failing_does_not_hold_up_other_runs() {
    let script = Script::new(|call| {
        if call.describe() == "start 1" {
            unavailable()
        } else {
            Outcome::Delivered
        }
    });
    let (exporter, _worker) = spawn(&script, options());
    exporter.send(start(1));
    exporter.send(span(1, "a"));
    exporter.send(start(2));
    exporter.send(span(2, "b"));
    exporter.send(end(2));
    exporter.send(end(1));
    script.wait_calls(6).await;
    assert_eq!(
        script.described(),
        [
            "start 1",
            "start 2",
            "spans 2 b",
            "end 2",
            "start 1",
            "start 1"
        ]
    );
    assert_eq!(script.times_ms(), [1000, 1000, 1000, 1000, 2000, 4000]);
    assert_eq!(exporter.counters().queued_items, 3, "run 1 waits whole");
}

#[tokio::test(start_paused = true)]
async fn after_ten_minutes_of_failures_a_start_is_dropped_with_its_run() {
    let script = Script::new(|_| unavailable());
    let (exporter, _worker) = spawn(&script, options());
    exporter.send(start(1));
    exporter.send(span(1, "a"));
    assert!(exporter.flush(HOUR).await);
    // Tries at 0, 1, 3, 7, 15, 31, 63, then every 60 s up to 603 s.
    let mut expected = vec![0, 1, 3, 7, 15, 31, 63];
    expected.extend((123..=603).step_by(60));
    let secs: Vec<u128> = script.times_ms().iter().map(|ms| ms / 1000).collect();
    assert_eq!(secs, expected);
    exporter.send(end(1));
    let c = exporter.counters();
    assert_eq!(fates(&c), [0, 0, 0, 3, 0, 0, 0]);
    assert_eq!(c.retried, 15);
    assert!(script.described().iter().all(|d| d == "start 1"));
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_every_run_until_retry_after() {
    let script = throttled_once(Duration::from_secs(7));
    let (exporter, _worker) = spawn(&script, options());
    exporter.send(start(1));
    assert!(!exporter.flush(Duration::from_millis(10)).await);
    exporter.send(start(2));
    exporter.send(span(2, "x"));
    assert!(exporter.flush(HOUR).await);
    assert_eq!(
        script.described(),
        ["start 1", "start 1", "start 2", "spans 2 x"]
    );
    assert_eq!(script.times_ms(), [0, 7000, 7000, 7000]);
    let c = exporter.counters();
    assert_eq!((c.sent, c.retried), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn an_api_that_keeps_throttling_is_given_up_on_after_ten_minutes() {
    let script = Script::new(|_| Outcome::Throttled {
        retry_after: Some(Duration::from_secs(30)),
    });
    let (exporter, _worker) = spawn(&script, options());
    send_run(&exporter, 1, &["a"]);
    send_run(&exporter, 2, &["b"]);
    assert!(exporter.flush(HOUR).await);
    // Both starts at once, then one call (the oldest run's start) every
    // 30 s (`Retry-After`, not the back-off steps): a probe. The try at
    // 600 s is the first after ten minutes: its 429 gives run 1 up, and
    // run 2's start, failing as long, goes and is given up at once too.
    let mut expected: Vec<u128> = vec![0];
    expected.extend((0..=600_000).step_by(30_000));
    expected.push(600_000);
    assert_eq!(script.times_ms(), expected);
    assert!(
        script.described().iter().all(|d| d.starts_with("start")),
        "{:?}",
        script.described()
    );
    let c = exporter.counters();
    assert_eq!(fates(&c), [0, 0, 0, 6, 0, 0, 0]);
    assert_eq!(c.retried, 21);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_a_minute_is_capped() {
    let script = throttled_once(Duration::from_secs(86_400));
    let (exporter, _worker) = spawn(&script, options());
    exporter.send(start(1));
    assert!(exporter.flush(HOUR).await);
    assert_eq!(script.times_ms(), [0, 60_000]);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_of_zero_still_waits_a_second() {
    let script = throttled_once(Duration::ZERO);
    let (exporter, _worker) = spawn(&script, options());
    exporter.send(start(1));
    assert!(exporter.flush(HOUR).await);
    assert_eq!(script.times_ms(), [0, 1000]);
}

#[tokio::test(start_paused = true)]
async fn a_413_splits_the_batch_and_a_single_record_is_dropped_as_too_large() {
    let script = Script::new(|call| {
        let huge = call.describe().contains("huge");
        if call.span_count() > 2 || huge {
            Outcome::TooLarge
        } else {
            Outcome::Delivered
        }
    });
    let (exporter, _worker) = spawn(&script, options());
    send_run(&exporter, 1, &["a", "b", "c", "d", "huge", "e"]);
    assert!(exporter.flush(HOUR).await);
    assert_eq!(
        script.described(),
        [
            "start 1",
            "spans 1 a,b,c,d,huge,e",
            "spans 1 a,b,c",
            "spans 1 a",
            "spans 1 b",
            "spans 1 c",
            "spans 1 d",
            "spans 1 huge",
            "spans 1 e",
            "end 1"
        ]
    );
    let c = exporter.counters();
    assert_eq!(fates(&c), [7, 0, 0, 0, 1, 0, 0]);
    assert_eq!(c.retried, 2);
}

#[tokio::test(start_paused = true)]
async fn other_4xx_are_dropped_as_rejected_without_a_retry() {
    let script = Script::new(|call| {
        if call.path.ends_with("/spans") {
            Outcome::of_status(400, None, std::time::SystemTime::UNIX_EPOCH)
        } else {
            Outcome::Delivered
        }
    });
    let (exporter, _worker) = spawn(&script, options());
    send_run(&exporter, 1, &["a", "b"]);
    assert!(exporter.flush(HOUR).await);
    assert_eq!(script.described(), ["start 1", "spans 1 a,b", "end 1"]);
    let c = exporter.counters();
    assert_eq!(fates(&c), [2, 0, 0, 0, 0, 2, 0]);
    assert_eq!((c.retried, c.failed), (0, 2));
}

#[tokio::test(start_paused = true)]
async fn a_rejected_start_drops_its_run_and_later_records() {
    let script = Script::new(|call| {
        if call.describe() == "start 1" {
            Outcome::of_status(422, None, std::time::SystemTime::UNIX_EPOCH)
        } else {
            Outcome::Delivered
        }
    });
    let (exporter, _worker) = spawn(&script, options());
    exporter.send(start(1));
    exporter.send(span(1, "a"));
    assert!(exporter.flush(HOUR).await);
    exporter.send(span(1, "b"));
    exporter.send(end(1));
    exporter.send(span(1, "after the end"));
    assert!(exporter.flush(HOUR).await);
    assert_eq!(script.described(), ["start 1", "spans 1 after the end"]);
    assert_eq!(fates(&exporter.counters()), [1, 0, 0, 0, 0, 4, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_call_without_an_answer_times_out_and_is_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&calls);
    let script = Script::timed(move |_| {
        let wait = if count.fetch_add(1, Ordering::Relaxed) == 0 {
            HOUR
        } else {
            Duration::ZERO
        };
        (wait, Outcome::Delivered)
    });
    let (exporter, _worker) = spawn(&script, options());
    exporter.send(start(1));
    assert!(exporter.flush(HOUR).await);
    // The 10 s request timeout, then 1 s of back-off.
    assert_eq!(script.times_ms(), [0, 11_000]);
    assert_eq!(exporter.counters().retried, 1);
    // The API got the first try too: the same start arrives twice (the
    // README's "delivery is at least once").
    assert_eq!(script.described(), ["start 1", "start 1"]);
    let bodies: Vec<Value> = script.calls().into_iter().map(|call| call.body).collect();
    assert_eq!(bodies[0], bodies[1]);
}

#[tokio::test(start_paused = true)]
async fn flush_times_out_while_the_ingest_is_down_and_keeps_the_records() {
    let script = Script::new(|_| transient());
    let (exporter, _worker) = spawn(&script, options());
    exporter.send(start(1));
    exporter.send(span(1, "a"));
    assert!(!exporter.flush(Duration::from_secs(5)).await);
    assert_eq!(fates(&exporter.counters()), [0, 2, 0, 0, 0, 0, 0]);
    script.answer(|_| Outcome::Delivered);
    assert!(exporter.flush(HOUR).await);
    assert_eq!(
        script.described(),
        ["start 1", "start 1", "start 1", "start 1", "spans 1 a"]
    );
    assert_eq!(fates(&exporter.counters()), [2, 0, 0, 0, 0, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_delivers_what_is_queued_then_refuses_records() {
    let script = Script::ok();
    let (exporter, worker) = spawn(&script, options());
    exporter.send(start(1));
    exporter.send(span(1, "a"));
    assert!(exporter.shutdown(HOUR).await);
    assert_eq!(script.times_ms(), [0, 0], "no flush interval at shutdown");
    worker.await.unwrap();
    exporter.send(span(1, "late"));
    assert!(
        exporter.shutdown(HOUR).await,
        "a second shutdown is harmless"
    );
    assert_eq!(fates(&exporter.counters()), [2, 0, 0, 0, 0, 0, 1]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_out_of_time_drops_what_is_left_as_shutdown() {
    let script = Script::new(|_| unavailable());
    let (exporter, worker) = spawn(&script, options());
    send_run(&exporter, 1, &["a"]);
    assert!(!exporter.shutdown(Duration::from_secs(5)).await);
    worker.await.unwrap();
    assert_eq!(script.times_ms(), [0, 1000, 3000]);
    assert_eq!(fates(&exporter.counters()), [0, 0, 0, 0, 0, 0, 3]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_gives_a_run_backing_off_one_last_try() {
    let script = Script::new(|_| unavailable());
    let (exporter, worker) = spawn(&script, options());
    send_run(&exporter, 1, &["a"]);
    // Tries at 0, 1, 3, 7, 15 and 31 s; the next would be at 63 s.
    assert!(!exporter.flush(Duration::from_secs(45)).await);
    script.answer(|_| Outcome::Delivered);
    assert!(exporter.shutdown(Duration::from_secs(5)).await);
    worker.await.unwrap();
    assert_eq!(
        script.times_ms(),
        [0, 1000, 3000, 7000, 15_000, 31_000, 45_000, 45_000, 45_000]
    );
    assert_eq!(fates(&exporter.counters()), [3, 0, 0, 0, 0, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_lifts_a_429_pause_for_one_last_try() {
    let script = throttled_once(Duration::from_secs(60));
    let (exporter, worker) = spawn(&script, options());
    send_run(&exporter, 1, &["a"]);
    send_run(&exporter, 2, &["b"]);
    // Run 1's start is throttled; run 2's goes through, then the pause holds
    // every run: a flush waits it out and keeps the records.
    assert!(!exporter.flush(Duration::from_secs(5)).await);
    assert_eq!(fates(&exporter.counters()), [1, 5, 0, 0, 0, 0, 0]);
    assert!(exporter.shutdown(Duration::from_secs(5)).await);
    worker.await.unwrap();
    assert_eq!(
        script.described(),
        [
            "start 1",
            "start 2",
            "start 1",
            "spans 2 b",
            "spans 1 a",
            "end 2",
            "end 1"
        ]
    );
    assert_eq!(
        script.times_ms(),
        [0, 0, 5000, 5000, 5000, 5000, 5000],
        "at shutdown, not after the minute"
    );
    let c = exporter.counters();
    assert_eq!(fates(&c), [6, 0, 0, 0, 0, 0, 0]);
    assert_eq!(c.retried, 1);
}

#[tokio::test(start_paused = true)]
async fn a_429_during_shutdown_pauses_again() {
    let script = throttled_once(Duration::from_secs(2));
    let (exporter, worker) = spawn(&script, options());
    send_run(&exporter, 1, &["a"]);
    assert!(exporter.shutdown(Duration::from_secs(5)).await);
    worker.await.unwrap();
    assert_eq!(script.times_ms(), [0, 2000, 2000, 2000]);
    assert_eq!(fates(&exporter.counters()), [3, 0, 0, 0, 0, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_out_of_time_abandons_calls_in_flight() {
    let script = Script::timed(|_| (Duration::from_secs(8), Outcome::Delivered));
    let (exporter, worker) = spawn(&script, options());
    exporter.send(start(1));
    exporter.send(span(1, "a"));
    assert!(!exporter.shutdown(Duration::from_secs(5)).await);
    worker.await.unwrap();
    assert_eq!(fates(&exporter.counters()), [0, 0, 0, 0, 0, 0, 2]);
}

#[tokio::test(start_paused = true)]
async fn an_ingest_down_for_good_keeps_the_queue_within_its_bound() {
    let script = Script::new(|_| transient());
    let bounded = DeliveryOptions {
        max_queue_items: 10,
        ..options()
    };
    let (exporter, _worker) = spawn(&script, bounded);
    let names: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for run in 1..=3 {
        send_run(&exporter, run, &names);
    }
    // Starts and ends stay; of the spans, the newest four.
    let c = exporter.counters();
    assert_eq!(fates(&c), [0, 10, 56, 0, 0, 0, 0]);
    tokio::time::sleep(Duration::from_secs(300)).await;
    let c = exporter.counters();
    assert_eq!(fates(&c), [0, 10, 56, 0, 0, 0, 0]);
    assert!(c.retried > 3, "{c:?}");
    assert_eq!(
        script.described().into_iter().take(3).collect::<Vec<_>>(),
        ["start 1", "start 2", "start 3"]
    );
    script.answer(|_| Outcome::Delivered);
    assert!(exporter.flush(HOUR).await);
    let spans: Vec<String> = script
        .described()
        .into_iter()
        .filter(|d| d.starts_with("spans"))
        .collect();
    assert_eq!(spans, ["spans 3 16,17,18,19"]);
    assert_eq!(exporter.counters().sent, 10);
}

#[tokio::test(start_paused = true)]
async fn the_byte_bound_holds_with_large_spans() {
    let script = Script::new(|_| transient());
    let bounded = DeliveryOptions {
        max_queue_bytes: 10_000,
        ..options()
    };
    let (exporter, _worker) = spawn(&script, bounded);
    exporter.send(start(1));
    for i in 0..50 {
        exporter.send(span_with(1, &i.to_string(), Some("x".repeat(1_000))));
    }
    let c = exporter.counters();
    assert!(c.queued_bytes <= 10_000, "{c:?}");
    assert_eq!(c.queued_items + c.dropped_queue_full, 51);
    assert!(c.dropped_queue_full > 0);
}

#[tokio::test(start_paused = true)]
async fn at_most_the_configured_calls_fly_at_once_and_never_two_of_one_run() {
    let script = Script::timed(|_| (Duration::from_millis(100), Outcome::Delivered));
    let four = DeliveryOptions {
        max_in_flight: 4,
        ..options()
    };
    let (exporter, _worker) = spawn(&script, four);
    for run in 1..=6 {
        exporter.send(start(run));
        exporter.send(span(run, "s"));
    }
    assert!(exporter.flush(HOUR).await);
    assert_eq!(
        script.described(),
        [
            "start 1",
            "start 2",
            "start 3",
            "start 4",
            "spans 1 s",
            "spans 2 s",
            "spans 3 s",
            "spans 4 s",
            "start 5",
            "start 6",
            "spans 5 s",
            "spans 6 s"
        ]
    );
    assert_eq!(
        script.times_ms(),
        [0, 0, 0, 0, 100, 100, 100, 100, 200, 200, 300, 300]
    );
}

/// 60 short sessions a second (a start, a span, an end each) against an
/// ingest API 50 ms away: 180 calls a second, each run's one at a time.
/// With the default concurrency delivery keeps up: nothing is dropped,
/// and what was sent last is delivered within a few round trips.
#[tokio::test(start_paused = true)]
async fn delivery_keeps_up_with_sixty_sessions_a_second_at_a_50_ms_round_trip() {
    let script = Script::timed(|_| (Duration::from_millis(50), Outcome::Delivered));
    let (exporter, _worker) = spawn(&script, options());
    let sessions = 20 * 60;
    for run in 0..sessions {
        send_run(&exporter, run, &["call"]);
        tokio::time::sleep(Duration::from_secs(1) / 60).await;
    }
    assert!(
        exporter.flush(Duration::from_millis(500)).await,
        "{:?}",
        exporter.counters()
    );
    let c = exporter.counters();
    assert_eq!(fates(&c), [3 * sessions as u64, 0, 0, 0, 0, 0, 0]);
    assert_eq!(c.retried, 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_exporter_delivers_what_is_queued_then_stops() {
    let script = Script::ok();
    let (exporter, worker) = spawn(&script, options());
    exporter.send(start(1));
    exporter.send(span(1, "a"));
    drop(exporter);
    worker.await.unwrap();
    assert_eq!(script.described(), ["start 1", "spans 1 a"]);
    assert_eq!(script.times_ms(), [0, 0]);
}

#[tokio::test(start_paused = true)]
async fn an_orphaned_worker_gives_up_after_its_drain_time() {
    let script = Script::new(|_| transient());
    let (exporter, worker) = spawn(&script, options());
    exporter.send(start(1));
    drop(exporter);
    worker.await.unwrap();
    // Tries at 0, 1 and 3 s; the 5 s drain time ends before the next.
    assert_eq!(script.times_ms(), [0, 1000, 3000]);
}

/// An API that fails every call is down for every run: after three
/// failures in a row every call pauses, 1 s, then 2 s, 4 s ... as each
/// probe fails, so that a hundred runs call it 40 times in two minutes,
/// not about 700 (each run's own back-off would try it 7 times).
#[tokio::test(start_paused = true)]
async fn an_api_that_fails_every_run_is_probed_not_stormed() {
    let script = Script::new(|_| unavailable());
    let (exporter, _worker) = spawn(&script, options());
    for run in 0..100 {
        exporter.send(start(run));
    }
    assert!(!exporter.flush(Duration::from_secs(120)).await);
    // A full call's worth of records goes at once: the 32 calls allowed in
    // flight, and one more after each of the first two failures, then the
    // pause; then a probe at the end of each pause.
    let mut expected = vec![0; 34];
    expected.extend([1000, 3000, 7000, 15_000, 31_000, 63_000]);
    assert_eq!(script.times_ms(), expected);

    // Back: the next probe is answered, and every run goes at once.
    script.answer(|_| Outcome::Delivered);
    assert!(exporter.flush(HOUR).await);
    let times = script.times_ms();
    assert_eq!(times.len(), 40 + 100);
    assert!(times[40..].iter().all(|&t| t == 123_000), "{times:?}");
    assert_eq!(exporter.counters().sent, 100);
}

/// Once shutdown began, a 429 makes only its own run wait out the
/// `Retry-After`: the other runs' last chance is not spent on its pause.
#[tokio::test(start_paused = true)]
async fn after_shutdown_began_a_429_pauses_no_other_run() {
    let script = throttled_once(Duration::from_secs(2));
    let exporter = starts_through_shutdown(&script, 1, 3).await;
    assert_eq!(
        script.described(),
        ["start 1", "start 2", "start 3", "start 1"]
    );
    assert_eq!(script.times_ms(), [0, 0, 0, 2000]);
    assert_eq!(fates(&exporter.counters())[0], 3);
}

/// A 429 before shutdown leaves calls going one at a time until one is
/// answered; shutdown lifts that too: every run goes at once.
#[tokio::test(start_paused = true)]
async fn shutdown_sends_every_run_at_once_after_a_429() {
    let answered = AtomicUsize::new(0);
    let script = Script::timed(move |_| {
        if answered.fetch_add(1, Ordering::Relaxed) == 0 {
            let throttled = Outcome::Throttled {
                retry_after: Some(Duration::from_secs(60)),
            };
            (Duration::ZERO, throttled)
        } else {
            (Duration::from_millis(100), Outcome::Delivered)
        }
    });
    let (exporter, worker) = spawn(&script, options());
    exporter.send(start(1));
    assert!(!exporter.flush(Duration::from_millis(10)).await, "paused");
    for run in 2..=4 {
        exporter.send(start(run));
    }
    assert!(exporter.shutdown(Duration::from_secs(5)).await);
    worker.await.unwrap();
    assert_eq!(
        script.described(),
        ["start 1", "start 1", "start 2", "start 3", "start 4"]
    );
    assert_eq!(script.times_ms(), [0, 10, 10, 10, 10]);
    assert_eq!(fates(&exporter.counters())[0], 4);
}

/// Once shutdown began, failures in a row pause no run: the last chance
/// of a run that never failed does not wait on others' back-off.
#[tokio::test(start_paused = true)]
async fn after_shutdown_began_failures_pause_no_other_run() {
    let answered = AtomicUsize::new(0);
    let script = Script::new(move |_| {
        if answered.fetch_add(1, Ordering::Relaxed) < 3 {
            unavailable()
        } else {
            Outcome::Delivered
        }
    });
    let exporter = starts_through_shutdown(&script, 3, 6).await;
    // The first three fail, each freeing a place for the next run: the
    // sixth goes after the third failure at once, not after a pause; the
    // three go again after their own back-off.
    let starts = |runs: &[u32]| {
        runs.iter()
            .map(|r| format!("start {r}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(script.described(), starts(&[1, 2, 3, 4, 5, 6, 1, 2, 3]));
    assert_eq!(script.times_ms(), [0, 0, 0, 0, 0, 0, 1000, 1000, 1000]);
    assert_eq!(fates(&exporter.counters())[0], 6);
}

/// A panic of the delivery loop itself (a bug of the layer) is caught: it
/// is counted, every record queued or in flight is dropped as shutdown and
/// so is every later one, and a flush has nothing to wait for. Before, the
/// loop's panic ended the delivery thread, unlogged, and records piled up
/// in the queue for no one.
#[tokio::test(start_paused = true)]
// The turn to count caught panics is held across awaits: it orders tests
// on different threads, and nothing on this test's runtime takes it.
#[allow(clippy::await_holding_lock)]
async fn a_panic_of_the_delivery_loop_halts_delivery_and_drops_what_is_left() {
    use crate::fence::{Stage, faults, panics_caught};

    let _turn = faults::counting();
    let before = panics_caught();
    let script = Script::timed(|_| (HOUR, Outcome::Delivered));
    let (exporter, worker) = spawn(&script, options());
    exporter.send(start(1));
    exporter.send(start(2));
    script.wait_calls(2).await;
    exporter.send(span(1, "queued"));
    assert!(!exporter.has_halted());
    // The worker runs on this thread: its next turn panics.
    faults::arm(Stage::DeliveryLoop);
    assert!(
        exporter.flush(Duration::from_secs(1)).await,
        "nothing left to wait for"
    );

    assert!(exporter.has_halted());
    assert_eq!(panics_caught() - before, 1);
    assert_eq!(fates(&exporter.counters()), [0, 0, 0, 0, 0, 0, 3]);
    exporter.send(span(2, "later"));
    assert_eq!(fates(&exporter.counters()), [0, 0, 0, 0, 0, 0, 4]);
    assert_eq!(script.described(), ["start 1", "start 2"]);
    // The worker's runtime (which reads the backlog too) stays until
    // shutdown (or until every handle is gone).
    tokio::time::sleep(HOUR).await;
    assert!(!worker.is_finished());
    assert!(exporter.shutdown(Duration::from_secs(1)).await);
    let stopped = tokio::time::timeout(HOUR, worker).await;
    assert!(stopped.is_ok(), "shutdown stops a halted worker");
}
