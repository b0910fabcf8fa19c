//! [`MemoryStore`]: a [`SessionStore`] in this process's memory.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use uuid::Uuid;

use super::{
    Claim, ClaimedRun, NewRun, Opened, RunTotals, SessionStore, StoreFuture, from_micros, micros,
};

/// A [`SessionStore`] in this process's memory: for several layers in one
/// process (each with its own config), and for tests. Workers in separate
/// processes need a store they can all reach, such as `RedisStore`.
///
/// Every method takes one short lock; entries expire after their time to
/// live. An expired entry is removed when it is next looked up, and all
/// of them at most one time to live after they expire, by the next
/// `open` or `claim_idle`: runs nobody touches again (a `start_run` run
/// never ended, say) do not stay in memory.
///
/// ```
/// use std::sync::Arc;
/// use trodo_tower::TrodoConfig;
/// use trodo_tower::store::MemoryStore;
///
/// let config = TrodoConfig::new().with_session_store(Arc::new(MemoryStore::new()));
/// # let _ = config;
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    by_key: HashMap<String, Uuid>,
    runs: HashMap<Uuid, Entry>,
    /// Sweepable runs by last activity (microseconds since the epoch).
    idle: BTreeSet<(u64, Uuid)>,
    /// Claimed runs, until when they are remembered.
    ended: HashMap<Uuid, Instant>,
    /// When every expired entry is next removed (see `purge_expired`).
    next_purge: Option<Instant>,
}

#[derive(Debug)]
struct Entry {
    key: String,
    totals: RunTotals,
    last: u64,
    sweepable: bool,
    expires: Instant,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// The entry of an open run that has not expired (an expired one is removed).
    fn live(&mut self, run_id: Uuid, now: Instant) -> Option<&mut Entry> {
        if self.runs.get(&run_id).is_some_and(|e| e.expires <= now) {
            self.remove(run_id);
        }
        self.runs.get_mut(&run_id)
    }

    fn is_ended(&mut self, run_id: Uuid, now: Instant) -> bool {
        match self.ended.get(&run_id) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.ended.remove(&run_id);
                false
            }
            None => false,
        }
    }

    fn remove(&mut self, run_id: Uuid) -> Option<Entry> {
        let entry = self.runs.remove(&run_id)?;
        self.idle.remove(&(entry.last, run_id));
        if self.by_key.get(&entry.key) == Some(&run_id) {
            self.by_key.remove(&entry.key);
        }
        Some(entry)
    }

    /// Removes an open run as claimed and remembers the claim.
    fn claim(&mut self, run_id: Uuid, until: Instant) -> Option<ClaimedRun> {
        self.ended.insert(run_id, until);
        let entry = self.remove(run_id)?;
        Some(ClaimedRun::new(
            run_id,
            entry.key,
            entry.totals,
            from_micros(entry.last),
        ))
    }

    /// Drops remembered claims that are past their time.
    fn purge_ended(&mut self, now: Instant) {
        self.ended.retain(|_, until| *until > now);
    }

    /// Removes every expired run, at most once per time to live: runs
    /// nobody looks up again would otherwise stay for good. Scanning all
    /// runs once per time to live costs little next to the calls between.
    fn purge_expired(&mut self, now: Instant, ttl: Duration) {
        if self.next_purge.is_some_and(|next| now < next) {
            return;
        }
        self.next_purge = Some(now + ttl);
        let expired: Vec<Uuid> = self
            .runs
            .iter()
            .filter(|(_, entry)| entry.expires <= now)
            .map(|(run_id, _)| *run_id)
            .collect();
        for run_id in expired {
            self.remove(run_id);
        }
        self.purge_ended(now);
    }
}

/// A future that is ready at once.
fn ready<'a, T: Send + 'a>(value: T) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(Ok(value)))
}

impl SessionStore for MemoryStore {
    fn find<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Uuid>> {
        let now = Instant::now();
        let mut state = self.lock();
        let run_id = state.by_key.get(key).copied();
        ready(run_id.filter(|id| state.live(*id, now).is_some()))
    }

    fn open<'a>(&'a self, run: &'a NewRun, ttl: Duration) -> StoreFuture<'a, Opened> {
        let now = Instant::now();
        let mut state = self.lock();
        state.purge_expired(now, ttl);
        if let Some(current) = state.by_key.get(&run.key).copied()
            && state.live(current, now).is_some()
        {
            return ready(Opened::Existing(current));
        }
        if state.is_ended(run.run_id, now) {
            return ready(Opened::Ended);
        }
        let last = micros(run.last_activity);
        state.runs.insert(
            run.run_id,
            Entry {
                key: run.key.clone(),
                totals: RunTotals::default(),
                last,
                sweepable: run.sweepable,
                expires: now + ttl,
            },
        );
        state.by_key.insert(run.key.clone(), run.run_id);
        if run.sweepable {
            state.idle.insert((last, run.run_id));
        }
        ready(Opened::Opened)
    }

    fn record(
        &self,
        run_id: Uuid,
        delta: RunTotals,
        last_activity: SystemTime,
        ttl: Duration,
    ) -> StoreFuture<'_, bool> {
        let now = Instant::now();
        let mut state = self.lock();
        let Some(entry) = state.live(run_id, now) else {
            return ready(false);
        };
        entry.totals.add(&delta);
        entry.expires = now + ttl;
        let (before, after) = (entry.last, entry.last.max(micros(last_activity)));
        entry.last = after;
        if entry.sweepable && after != before {
            state.idle.remove(&(before, run_id));
            state.idle.insert((after, run_id));
        }
        ready(true)
    }

    fn claim(
        &self,
        run_id: Uuid,
        idle_before: Option<SystemTime>,
        ttl: Duration,
    ) -> StoreFuture<'_, Claim> {
        let now = Instant::now();
        let mut state = self.lock();
        if state.is_ended(run_id, now) {
            return ready(Claim::AlreadyEnded);
        }
        let active = match (state.live(run_id, now), idle_before) {
            (Some(entry), Some(before)) => entry.last > micros(before),
            _ => false,
        };
        if active {
            return ready(Claim::Active);
        }
        ready(match state.claim(run_id, now + ttl) {
            Some(run) => Claim::Won(run),
            None => Claim::Unknown,
        })
    }

    fn claim_idle(
        &self,
        idle_before: SystemTime,
        limit: usize,
        ttl: Duration,
    ) -> StoreFuture<'_, Vec<ClaimedRun>> {
        let now = Instant::now();
        let before = micros(idle_before);
        let mut state = self.lock();
        state.purge_ended(now);
        state.purge_expired(now, ttl);
        let idle: Vec<(u64, Uuid)> = state
            .idle
            .iter()
            .take_while(|(last, _)| *last <= before)
            .take(limit)
            .copied()
            .collect();
        let mut claimed = Vec::with_capacity(idle.len());
        for (_, run_id) in idle {
            if state.live(run_id, now).is_some()
                && let Some(run) = state.claim(run_id, now + ttl)
            {
                claimed.push(run);
            }
        }
        ready(claimed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn memory_store_conforms() {
        super::super::conformance::check(Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test]
    async fn entries_expire_after_their_time_to_live() {
        let store = MemoryStore::new();
        let run = NewRun::new("s", Uuid::new_v4(), SystemTime::now());
        store.open(&run, Duration::ZERO).await.unwrap();
        assert_eq!(store.find("s").await.unwrap(), None);
        assert_eq!(
            store.claim(run.run_id, None, Duration::ZERO).await.unwrap(),
            Claim::Unknown
        );
        let state = store.lock();
        assert!(state.runs.is_empty() && state.idle.is_empty() && state.by_key.is_empty());
    }

    #[tokio::test]
    async fn expired_runs_nobody_looks_up_are_purged() {
        let store = MemoryStore::new();
        let started = NewRun::new("started", Uuid::new_v4(), SystemTime::now()).sweepable(false);
        let swept = NewRun::new("swept", Uuid::new_v4(), SystemTime::now());
        store.open(&started, Duration::ZERO).await.unwrap();
        store.open(&swept, Duration::ZERO).await.unwrap();
        let kept = NewRun::new("kept", Uuid::new_v4(), SystemTime::now());
        store.open(&kept, Duration::from_secs(3600)).await.unwrap();
        {
            let state = store.lock();
            assert_eq!(state.runs.keys().collect::<Vec<_>>(), [&kept.run_id]);
            assert_eq!(state.by_key.len(), 1);
            assert_eq!(state.idle.len(), 1);
        }
        // Within the time to live of the last purge nothing is scanned.
        let late = NewRun::new("late", Uuid::new_v4(), SystemTime::now()).sweepable(false);
        store.open(&late, Duration::ZERO).await.unwrap();
        store
            .claim_idle(SystemTime::UNIX_EPOCH, 10, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(store.lock().runs.len(), 2, "purged at most once per ttl");
    }
}
