//! What every [`SessionStore`] must do, checked against any of them (the
//! memory store always, the Redis store with the `redis` feature).

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};
use uuid::Uuid;

use super::{Claim, NewRun, Opened, RunTotals, SessionStore};

const TTL: Duration = Duration::from_secs(60);

/// One "now" for every check, so that `at(5)` is always the same time.
static NOW: LazyLock<SystemTime> = LazyLock::new(SystemTime::now);

/// `secs_ago` seconds before the checks' now, in whole microseconds as stores keep times.
fn at(secs_ago: u64) -> SystemTime {
    super::from_micros(super::micros(*NOW - Duration::from_secs(secs_ago)))
}

fn spans(span_count: u64, cost: f64) -> RunTotals {
    RunTotals {
        span_count,
        tool_count: span_count,
        error_count: 1,
        tokens_in: 10,
        tokens_out: 3,
        cost,
    }
}

/// Runs every check against `store`, on keys of its own.
pub(super) async fn check(store: Arc<dyn SessionStore>) {
    opens_once_per_key(&*store).await;
    records_add_up_and_claims_win_once(&*store).await;
    huge_counts_saturate(&*store).await;
    idle_claims_respect_activity(&*store).await;
    concurrent_sweeps_claim_each_run_once(Arc::clone(&store)).await;
}

async fn opens_once_per_key(store: &dyn SessionStore) {
    let key = format!("session-{}", Uuid::new_v4());
    assert_eq!(store.find(&key).await.unwrap(), None);
    let first = NewRun::new(&key, Uuid::new_v4(), at(5));
    assert_eq!(store.open(&first, TTL).await.unwrap(), Opened::Opened);
    let second = NewRun::new(&key, Uuid::new_v4(), at(1));
    assert_eq!(
        store.open(&second, TTL).await.unwrap(),
        Opened::Existing(first.run_id),
        "the key keeps its first run"
    );
    assert_eq!(store.find(&key).await.unwrap(), Some(first.run_id));
    assert!(
        !store
            .record(second.run_id, spans(1, 0.0), at(0), TTL)
            .await
            .unwrap(),
        "a run that is not open takes nothing"
    );
    let Claim::Won(run) = store.claim(first.run_id, None, TTL).await.unwrap() else {
        panic!("the claim of an open run wins");
    };
    assert_eq!((run.key.as_str(), run.last_activity), (key.as_str(), at(5)));
    assert_eq!(
        store.find(&key).await.unwrap(),
        None,
        "the key is free again"
    );
    assert_eq!(
        store.open(&first, TTL).await.unwrap(),
        Opened::Ended,
        "a claimed run is not opened again"
    );
    assert_eq!(store.open(&second, TTL).await.unwrap(), Opened::Opened);
    store.claim(second.run_id, None, TTL).await.unwrap();
}

/// Counts past what the store can hold stay at its largest, and the rest
/// of the update still counts.
async fn huge_counts_saturate(store: &dyn SessionStore) {
    let run = NewRun::new(format!("s-{}", Uuid::new_v4()), Uuid::new_v4(), at(30));
    store.open(&run, TTL).await.unwrap();
    let huge = RunTotals {
        tokens_in: u64::MAX,
        ..spans(1, 0.0)
    };
    for _ in 0..2 {
        assert!(store.record(run.run_id, huge, at(10), TTL).await.unwrap());
    }
    assert!(
        store
            .record(run.run_id, spans(1, 0.5), at(5), TTL)
            .await
            .unwrap()
    );
    let Claim::Won(claimed) = store.claim(run.run_id, None, TTL).await.unwrap() else {
        panic!("won");
    };
    assert!(
        claimed.totals.tokens_in >= i64::MAX as u64,
        "{:?}",
        claimed.totals
    );
    assert_eq!(
        (
            claimed.totals.span_count,
            claimed.totals.tokens_out,
            claimed.totals.cost
        ),
        (3, 9, 0.5)
    );
    assert_eq!(claimed.last_activity, at(5));
}

async fn records_add_up_and_claims_win_once(store: &dyn SessionStore) {
    let run = NewRun::new(format!("s-{}", Uuid::new_v4()), Uuid::new_v4(), at(30));
    store.open(&run, TTL).await.unwrap();
    assert!(
        store
            .record(run.run_id, spans(2, 0.25), at(10), TTL)
            .await
            .unwrap()
    );
    assert!(
        store
            .record(run.run_id, spans(1, 0.125), at(20), TTL)
            .await
            .unwrap(),
        "an older activity adds its aggregates"
    );
    let Claim::Won(claimed) = store.claim(run.run_id, None, TTL).await.unwrap() else {
        panic!("won");
    };
    let mut expected = spans(2, 0.25);
    expected.add(&spans(1, 0.125));
    assert_eq!(claimed.totals, expected);
    assert_eq!(claimed.last_activity, at(10), "activity never moves back");
    assert_eq!(
        store.claim(run.run_id, None, TTL).await.unwrap(),
        Claim::AlreadyEnded
    );
    let never = Uuid::new_v4();
    assert_eq!(store.claim(never, None, TTL).await.unwrap(), Claim::Unknown);
    assert_eq!(
        store.claim(never, None, TTL).await.unwrap(),
        Claim::AlreadyEnded,
        "an unknown run's claim is remembered too"
    );
}

async fn idle_claims_respect_activity(store: &dyn SessionStore) {
    let run = NewRun::new(format!("s-{}", Uuid::new_v4()), Uuid::new_v4(), at(100));
    store.open(&run, TTL).await.unwrap();
    store
        .record(run.run_id, RunTotals::default(), at(5), TTL)
        .await
        .unwrap();
    assert_eq!(
        store.claim(run.run_id, Some(at(50)), TTL).await.unwrap(),
        Claim::Active,
        "active after the cut-off"
    );
    let Claim::Won(claimed) = store.claim(run.run_id, Some(at(1)), TTL).await.unwrap() else {
        panic!("idle before the cut-off");
    };
    assert_eq!(claimed.last_activity, at(5));
    let manual =
        NewRun::new(format!("m-{}", Uuid::new_v4()), Uuid::new_v4(), at(100)).sweepable(false);
    store.open(&manual, TTL).await.unwrap();
    let swept = store.claim_idle(at(0), 10_000, TTL).await.unwrap();
    assert!(
        swept.iter().all(|r| r.run_id != manual.run_id),
        "runs of start_run are not swept"
    );
    store.claim(manual.run_id, None, TTL).await.unwrap();
}

async fn concurrent_sweeps_claim_each_run_once(store: Arc<dyn SessionStore>) {
    let mut opened = HashSet::new();
    for i in 0..300 {
        let run = NewRun::new(
            format!("sweep-{}-{i}", Uuid::new_v4()),
            Uuid::new_v4(),
            at(60),
        );
        store.open(&run, TTL).await.unwrap();
        store
            .record(run.run_id, spans(1, 0.0), at(40), TTL)
            .await
            .unwrap();
        opened.insert(run.run_id);
    }
    let fresh = NewRun::new(format!("fresh-{}", Uuid::new_v4()), Uuid::new_v4(), at(0));
    store.open(&fresh, TTL).await.unwrap();
    let sweepers: Vec<_> = (0..6)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = store.claim_idle(at(30), 25, TTL).await.unwrap();
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch);
                }
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for sweeper in sweepers {
        claimed.extend(sweeper.await.unwrap());
    }
    let ids: HashSet<Uuid> = claimed.iter().map(|r| r.run_id).collect();
    assert_eq!(claimed.len(), ids.len(), "no run claimed twice");
    assert!(opened.is_subset(&ids), "every idle run claimed");
    assert!(!ids.contains(&fresh.run_id), "a fresh run is left alone");
    assert!(claimed.iter().all(|r| r.totals.span_count == 1));
    store.claim(fresh.run_id, None, TTL).await.unwrap();
}
