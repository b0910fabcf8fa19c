//! [`RedisStore`]: a [`SessionStore`] on Redis, for workers in many processes.
//!
//! Keys, under a prefix (`trodo:` by default):
//!
//! | key | holds | expires |
//! |---|---|---|
//! | `key:<run key>` | the open run's id | time to live, renewed on activity |
//! | `run:<run id>` | a hash: `key`, `last` (activity, µs since the epoch), `sweep`, and the aggregates `spans`, `tools`, `errors`, `tin`, `tout`, `cost` | as above |
//! | `idle` | a sorted set of sweepable run ids scored by last activity | with the longest-lived run |
//! | `ended:<run id>` | the marker of a claimed run | time to live |
//!
//! Every change is one Lua script, atomic on the server. A sweep reads the
//! sorted set from the oldest score, so it costs in proportion to the idle
//! runs. Scripts name keys they derive from the prefix, so the store needs
//! one Redis server (a primary, with replicas), not Sentinel or a cluster,
//! over `redis://` (no TLS).

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::fmt;
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, SystemTime};
use uuid::Uuid;

use super::{
    Claim, ClaimedRun, NewRun, Opened, RunTotals, SessionStore, StoreError, StoreFuture,
    from_micros, micros, redact_url,
};
use crate::error::ConfigError;

/// The key prefix used unless [`RedisStore::with_prefix`] sets another.
pub const DEFAULT_REDIS_PREFIX: &str = "trodo:";
/// How long connecting to Redis may take.
/// What a Redis URL must look like, as configuration errors say.
pub(crate) const EXPECTED_REDIS_URL: &str = "a redis:// or redis+unix:// URL";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long Redis may take to answer a command.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// KEYS: key map, run, idle, ended. ARGV: prefix, run id, key, last, sweep, ttl.
static OPEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = redis.call('GET', KEYS[1])
if current and redis.call('EXISTS', ARGV[1] .. 'run:' .. current) == 1 then
  return {'existing', current}
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return {'ended', ARGV[2]}
end
redis.call('HSET', KEYS[2], 'key', ARGV[3], 'last', ARGV[4], 'sweep', ARGV[5],
  'spans', 0, 'tools', 0, 'errors', 0, 'tin', 0, 'tout', 0, 'cost', 0)
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[6])
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
  if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[6]) then
    redis.call('PEXPIRE', KEYS[3], ARGV[6])
  end
end
return {'opened', ARGV[2]}
",
    )
});

/// KEYS: run, idle. ARGV: prefix, run id, spans, tools, errors, tokens in,
/// tokens out, cost, last, ttl.
static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local fields = {'spans', 'tools', 'errors', 'tin', 'tout'}
for i, field in ipairs(fields) do
  if ARGV[i + 2] ~= '0' then
    local added = redis.pcall('HINCRBY', KEYS[1], field, ARGV[i + 2])
    if type(added) == 'table' and added.err then
      -- A sum or an increment past a signed 64-bit integer: the count
      -- stays at the largest one (Redis would not change it and fail the
      -- rest of the update, which it does not roll back).
      redis.call('HSET', KEYS[1], field, '9223372036854775807')
    end
  end
end
if ARGV[8] ~= '0' then
  redis.call('HINCRBYFLOAT', KEYS[1], 'cost', ARGV[8])
end
local sweep = redis.call('HGET', KEYS[1], 'sweep') == '1'
if tonumber(ARGV[9]) > tonumber(redis.call('HGET', KEYS[1], 'last')) then
  redis.call('HSET', KEYS[1], 'last', ARGV[9])
  if sweep then
    redis.call('ZADD', KEYS[2], ARGV[9], ARGV[2])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[10])
redis.call('PEXPIRE', ARGV[1] .. 'key:' .. redis.call('HGET', KEYS[1], 'key'), ARGV[10])
if sweep and redis.call('PTTL', KEYS[2]) < tonumber(ARGV[10]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[10])
end
return 1
",
    )
});

/// KEYS: run, ended, idle. ARGV: prefix, run id, idle before ('' for any), ttl.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'ended'}
end
local open = redis.call('EXISTS', KEYS[1]) == 1
if open and ARGV[3] ~= '' and tonumber(redis.call('HGET', KEYS[1], 'last')) > tonumber(ARGV[3]) then
  return {'active'}
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
if not open then
  return {'unknown'}
end
local f = redis.call('HMGET', KEYS[1], 'key', 'spans', 'tools', 'errors', 'tin', 'tout', 'cost', 'last')
redis.call('DEL', KEYS[1])
local map = ARGV[1] .. 'key:' .. f[1]
if redis.call('GET', map) == ARGV[2] then
  redis.call('DEL', map)
end
redis.call('ZREM', KEYS[3], ARGV[2])
return {'won', ARGV[2], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]}
",
    )
});

/// KEYS: idle. ARGV: prefix, idle before, limit, ttl. Returns nine values
/// per claimed run: id, key, the six aggregates, last.
static CLAIM_IDLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local run = ARGV[1] .. 'run:' .. id
  local ended = ARGV[1] .. 'ended:' .. id
  if redis.call('EXISTS', ended) == 0 and redis.call('EXISTS', run) == 1 then
    local f = redis.call('HMGET', run, 'key', 'spans', 'tools', 'errors', 'tin', 'tout', 'cost', 'last')
    if tonumber(f[8]) > tonumber(ARGV[2]) then
      redis.call('ZADD', KEYS[1], f[8], id)
    else
      redis.call('SET', ended, '1', 'PX', ARGV[4])
      redis.call('DEL', run)
      local map = ARGV[1] .. 'key:' .. f[1]
      if redis.call('GET', map) == id then
        redis.call('DEL', map)
      end
      table.insert(out, id)
      for i = 1, 8 do
        table.insert(out, f[i])
      end
    end
  end
end
return out
",
    )
});

/// A [`SessionStore`] on Redis: workers in many processes share their
/// sessions' runs through one Redis server. See the
/// [store module docs](super) for what is shared.
///
/// Made without connecting: the connection is opened on first use (on the
/// Tokio runtime that uses it) and reopened after a failure. Needs the
/// `redis` cargo feature. `TRODO_REDIS_URL` and
/// [`TrodoConfig::with_redis_url`](crate::TrodoConfig::with_redis_url) make
/// one with the default prefix.
///
/// ```
/// use std::sync::Arc;
/// use trodo_tower::TrodoConfig;
/// use trodo_tower::store::RedisStore;
///
/// let store = RedisStore::new("redis://127.0.0.1:6379/0")?.with_prefix("weather-mcp:");
/// let config = TrodoConfig::from_env()?.with_session_store(Arc::new(store));
/// # Ok::<(), trodo_tower::ConfigError>(())
/// ```
pub struct RedisStore {
    client: redis::Client,
    connection: OnceLock<ConnectionManager>,
    prefix: String,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The address and database only: never the password.
        let info = self.client.get_connection_info();
        f.debug_struct("RedisStore")
            .field("addr", &info.addr().to_string())
            .field("db", &info.redis_settings().db())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on the Redis server at `url` (`redis://[user:password@]host[:port][/db]`
    /// or `redis+unix:///path`), with keys under [`DEFAULT_REDIS_PREFIX`].
    /// Does not connect.
    ///
    /// # Errors
    /// A [`ConfigError`] for `redis_url` when the URL is not one (the
    /// error quotes it without its password).
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        let client = redis::Client::open(url.trim())
            .map_err(|_| ConfigError::new("redis_url", redact_url(url), EXPECTED_REDIS_URL))?;
        Ok(Self {
            client,
            connection: OnceLock::new(),
            prefix: DEFAULT_REDIS_PREFIX.to_owned(),
        })
    }

    /// Puts every key under `prefix` instead of [`DEFAULT_REDIS_PREFIX`]: for
    /// several servers (or tests) sharing one Redis database. Layers that
    /// share sessions must use the same prefix.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The key prefix.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The connection, made on first use (this must run on a Tokio runtime).
    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        let made = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        Ok(self.connection.get_or_init(|| made).clone())
    }

    fn key(&self, kind: &str, name: impl fmt::Display) -> String {
        format!("{}{kind}:{name}", self.prefix)
    }

    fn idle_key(&self) -> String {
        format!("{}idle", self.prefix)
    }
}

impl SessionStore for RedisStore {
    fn find<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Uuid>> {
        Box::pin(async move {
            let mut connection = self.connection()?;
            let found: Option<String> = redis::cmd("GET")
                .arg(self.key("key", key))
                .query_async(&mut connection)
                .await?;
            Ok(found.and_then(|id| Uuid::parse_str(&id).ok()))
        })
    }

    fn open<'a>(&'a self, run: &'a NewRun, ttl: Duration) -> StoreFuture<'a, Opened> {
        Box::pin(async move {
            let mut connection = self.connection()?;
            let reply: Vec<String> = OPEN
                .key(self.key("key", &run.key))
                .key(self.key("run", run.run_id))
                .key(self.idle_key())
                .key(self.key("ended", run.run_id))
                .arg(&self.prefix)
                .arg(run.run_id.to_string())
                .arg(&run.key)
                .arg(micros(run.last_activity))
                .arg(u8::from(run.sweepable))
                .arg(millis(ttl))
                .invoke_async(&mut connection)
                .await?;
            match reply.as_slice() {
                [status, _] if status == "opened" => Ok(Opened::Opened),
                [status, _] if status == "ended" => Ok(Opened::Ended),
                [status, id] if status == "existing" => Ok(Opened::Existing(Uuid::parse_str(id)?)),
                _ => Err(unexpected(&reply)),
            }
        })
    }

    fn record(
        &self,
        run_id: Uuid,
        delta: RunTotals,
        last_activity: SystemTime,
        ttl: Duration,
    ) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let mut connection = self.connection()?;
            let cost = if delta.cost.is_finite() {
                delta.cost
            } else {
                0.0
            };
            let recorded: i64 = RECORD
                .key(self.key("run", run_id))
                .key(self.idle_key())
                .arg(&self.prefix)
                .arg(run_id.to_string())
                .arg(delta.span_count)
                .arg(delta.tool_count)
                .arg(delta.error_count)
                .arg(delta.tokens_in)
                .arg(delta.tokens_out)
                .arg(if cost == 0.0 {
                    "0".to_owned()
                } else {
                    cost.to_string()
                })
                .arg(micros(last_activity))
                .arg(millis(ttl))
                .invoke_async(&mut connection)
                .await?;
            Ok(recorded == 1)
        })
    }

    fn claim(
        &self,
        run_id: Uuid,
        idle_before: Option<SystemTime>,
        ttl: Duration,
    ) -> StoreFuture<'_, Claim> {
        Box::pin(async move {
            let mut connection = self.connection()?;
            let reply: Vec<Option<String>> = CLAIM
                .key(self.key("run", run_id))
                .key(self.key("ended", run_id))
                .key(self.idle_key())
                .arg(&self.prefix)
                .arg(run_id.to_string())
                .arg(idle_before.map_or_else(String::new, |at| micros(at).to_string()))
                .arg(millis(ttl))
                .invoke_async(&mut connection)
                .await?;
            match reply.first().and_then(Option::as_deref) {
                Some("ended") => Ok(Claim::AlreadyEnded),
                Some("active") => Ok(Claim::Active),
                Some("unknown") => Ok(Claim::Unknown),
                Some("won") if reply.len() == 10 => Ok(Claim::Won(claimed(&reply[1..])?)),
                _ => Err(unexpected(&reply)),
            }
        })
    }

    fn claim_idle(
        &self,
        idle_before: SystemTime,
        limit: usize,
        ttl: Duration,
    ) -> StoreFuture<'_, Vec<ClaimedRun>> {
        Box::pin(async move {
            let mut connection = self.connection()?;
            let reply: Vec<Option<String>> = CLAIM_IDLE
                .key(self.idle_key())
                .arg(&self.prefix)
                .arg(micros(idle_before))
                .arg(limit)
                .arg(millis(ttl))
                .invoke_async(&mut connection)
                .await?;
            if !reply.len().is_multiple_of(9) {
                return Err(unexpected(&reply));
            }
            reply.chunks(9).map(claimed).collect()
        })
    }
}

/// A claimed run from the script's nine values: id, key, spans, tools,
/// errors, tokens in, tokens out, cost, last.
fn claimed(values: &[Option<String>]) -> Result<ClaimedRun, StoreError> {
    let text = |i: usize| values.get(i).and_then(Option::as_deref).unwrap_or("0");
    let count = |i: usize| text(i).parse::<u64>();
    let totals = RunTotals {
        span_count: count(2)?,
        tool_count: count(3)?,
        error_count: count(4)?,
        tokens_in: count(5)?,
        tokens_out: count(6)?,
        cost: text(7).parse::<f64>()?,
    };
    Ok(ClaimedRun::new(
        Uuid::parse_str(text(0))?,
        text(1).to_owned(),
        totals,
        from_micros(count(8)?),
    ))
}

fn unexpected(reply: &impl fmt::Debug) -> StoreError {
    format!("unexpected reply from a trodo script: {reply:?}").into()
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn passwords_never_reach_errors() {
        let err = RedisStore::new("http://user:s3cret@cache").unwrap_err();
        assert_eq!(err.setting(), "redis_url");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let store = RedisStore::new("redis://user:s3cret@cache:6380/2").unwrap();
        let debug = format!("{store:?}");
        assert!(
            debug.contains("cache:6380") && !debug.contains("s3cret"),
            "{debug}"
        );
    }

    /// The conformance suite against the Redis server of the machine
    /// (`TRODO_TEST_REDIS_URL`, default `redis://127.0.0.1:6379/`).
    #[tokio::test]
    async fn redis_store_conforms() {
        let prefix = format!("trodo-test:{}:", Uuid::new_v4());
        let store = Arc::new(RedisStore::new(&test_url()).unwrap().with_prefix(&prefix));
        super::super::conformance::check(store.clone()).await;
        let mut connection = store.connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!(
            keys.iter().all(|k| k.starts_with(&prefix)),
            "every key under the prefix"
        );
        let mut ttls = redis::pipe();
        for key in &keys {
            ttls.cmd("PTTL").arg(key);
        }
        let ttls: Vec<i64> = ttls.query_async(&mut connection).await.unwrap();
        assert!(
            ttls.iter().all(|t| *t > 0),
            "every key expires: {keys:?} {ttls:?}"
        );
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut connection)
                .await
                .unwrap();
        }
    }

    fn test_url() -> String {
        std::env::var("TRODO_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned())
    }
}
