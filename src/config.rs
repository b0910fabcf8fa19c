//! [`TrodoConfig`]: every setting of the layer, validated when it is set.

use http::HeaderName;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::capture_policy::Redactor;
use crate::error::ConfigError;
use crate::export::{
    DEFAULT_MAX_CONCURRENT_CALLS, DEFAULT_MAX_QUEUE_BYTES, DEFAULT_MAX_QUEUE_ITEMS,
    MAX_CONCURRENT_CALLS,
};
use crate::hook::Hook;
use crate::run::HeadFn;
use crate::span_kind::SpanKind;
use crate::state::Shared;
use crate::store::SessionStore;
use crate::wire::MAX_IO_CHARS;

/// The Trodo ingest API used when `TRODO_API_BASE` is not set.
pub const DEFAULT_API_BASE: &str = "https://sdkapi.trodo.ai";
/// The agent name used when `TRODO_AGENT_NAME` is not set.
pub const DEFAULT_AGENT_NAME: &str = "mcp_server";
/// How long a session may go without a request before its run is ended:
/// 300 s, rmcp's own session keep-alive.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest idle timeout: a year (as good as never).
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);
/// The MCP session header (header names are case-insensitive).
pub const DEFAULT_SESSION_HEADER: &str = "mcp-session-id";
/// Most characters of a request or response body kept as a span's input or output.
pub const DEFAULT_CAPTURE_LIMIT: usize = MAX_IO_CHARS;
/// The `params._meta` keys read as a vendor's conversation id by default.
pub const DEFAULT_CONVERSATION_META_KEYS: &[&str] = &["openai/session"];
/// The most runs open in one process before a call without a session that
/// would open one more becomes a run of its own.
pub const DEFAULT_MAX_OPEN_RUNS: usize = 100_000;
/// The most a response head waits for the session store: 50 ms.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(50);

/// The settings of [`TrodoLayer`](crate::TrodoLayer).
///
/// Start from [`TrodoConfig::from_env`] (or [`TrodoConfig::new`] for the
/// defaults) and refine with the `with_*` methods. Settings that can be wrong
/// are checked when they are set and return a [`ConfigError`] naming the
/// setting, so a misconfigured server fails at startup.
///
/// Without a site id the layer prints each run and span to standard output
/// instead of sending it: the embedded default, handy before you have a Trodo
/// account.
///
/// Layers built from one config (or from clones of it) share one state: the
/// same sessions and the same delivery worker. A `with_*` call makes a config
/// with a state of its own.
///
/// ```
/// use std::time::Duration;
/// use trodo_tower::{SpanKind, TrodoConfig};
///
/// let config = TrodoConfig::new()
///     .with_site_id("site_123")?
///     .with_agent_name("weather_mcp")?
///     .with_idle_timeout(Duration::from_secs(600))?
///     .with_tool_kind("search_docs", SpanKind::Retrieval)
///     .with_method_kind("prompts/get", SpanKind::Llm);
/// # Ok::<(), trodo_tower::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct TrodoConfig {
    pub(crate) settings: Settings,
    /// The state shared by every layer built from this config.
    pub(crate) state: Arc<OnceLock<Arc<Shared>>>,
}

/// The plain settings, without the shared state.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) enabled: bool,
    pub(crate) site_id: Option<String>,
    pub(crate) api_base: String,
    pub(crate) agent_name: String,
    pub(crate) session_header: HeaderName,
    pub(crate) idle_timeout: Duration,
    pub(crate) capture_limit: usize,
    pub(crate) method_kinds: HashMap<String, SpanKind>,
    pub(crate) tool_kinds: HashMap<String, SpanKind>,
    pub(crate) run_key: Option<HeadFn>,
    pub(crate) conversation_meta_keys: Vec<String>,
    pub(crate) sessionless: Sessionless,
    pub(crate) group_sessions: bool,
    pub(crate) capture_input: bool,
    pub(crate) capture_output: bool,
    pub(crate) redactor: Option<Redactor>,
    pub(crate) distinct_id: Option<HeadFn>,
    /// Most runs open here before a new key's call is a run of its own.
    pub(crate) max_open_runs: usize,
    /// Most records the delivery queue holds.
    pub(crate) max_queue_items: usize,
    /// Most JSON bytes the delivery queue holds (spans counted by estimate).
    pub(crate) max_queue_bytes: usize,
    /// Most calls to the ingest API in flight at once.
    pub(crate) max_concurrent_calls: usize,
    /// The application's client for the ingest API, if it gave one.
    pub(crate) http_client: Option<reqwest::Client>,
    /// The store shared with other workers, if any.
    pub(crate) store: Option<Arc<dyn SessionStore>>,
    /// The most a response head waits for the store.
    pub(crate) store_timeout: Duration,
    /// Panics of the hooks above (`redactor`, `run_key`, `distinct_id`),
    /// for [`DeliveryCounters::hook_panics`](crate::DeliveryCounters::hook_panics):
    /// each layer's state counts its own (see `Shared::new`).
    pub(crate) hook_panics: Arc<AtomicU64>,
}

/// What the layer does with MCP requests that belong to no session (MCP
/// 2026-07-28, stateless servers): see "Clients without sessions" in the
/// [crate docs](crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Sessionless {
    /// Group them into runs by the first key that resolves: the application's
    /// key ([`TrodoConfig::with_run_key`]), a conversation id in
    /// `params._meta`, the client's identity; a request with none of these
    /// becomes a run of its own. An idle gap ends each run.
    #[default]
    Group,
    /// Send each request as a run of its own (one `runs/ingest` call).
    RunPerRequest,
    /// Record nothing for them, except requests that carry a Trodo
    /// caller's propagation headers: those still join the caller's run.
    Ignore,
}

impl Default for TrodoConfig {
    fn default() -> Self {
        Self {
            settings: Settings {
                enabled: true,
                site_id: None,
                api_base: DEFAULT_API_BASE.to_owned(),
                agent_name: DEFAULT_AGENT_NAME.to_owned(),
                session_header: HeaderName::from_static(DEFAULT_SESSION_HEADER),
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                capture_limit: DEFAULT_CAPTURE_LIMIT,
                method_kinds: HashMap::new(),
                tool_kinds: HashMap::new(),
                run_key: None,
                conversation_meta_keys: DEFAULT_CONVERSATION_META_KEYS
                    .iter()
                    .map(|k| (*k).to_owned())
                    .collect(),
                sessionless: Sessionless::Group,
                group_sessions: false,
                capture_input: true,
                capture_output: true,
                redactor: None,
                distinct_id: None,
                max_open_runs: DEFAULT_MAX_OPEN_RUNS,
                max_queue_items: DEFAULT_MAX_QUEUE_ITEMS,
                max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
                max_queue_bytes: DEFAULT_MAX_QUEUE_BYTES,
                http_client: None,
                store: None,
                store_timeout: DEFAULT_STORE_TIMEOUT,
                hook_panics: Arc::default(),
            },
            state: Arc::default(),
        }
    }
}

impl fmt::Debug for TrodoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrodoConfig")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TrodoConfig {
    /// The defaults: no site id (runs are printed to the console), the
    /// default API base, agent `mcp_server`, idle timeout 300 s.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the settings from the environment:
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `TRODO_SITE_ID` | your Trodo site id; unset: print to the console | unset |
    /// | `TRODO_API_BASE` | base URL of the ingest API | `https://sdkapi.trodo.ai` |
    /// | `TRODO_AGENT_NAME` | `agent_name` of every run | `mcp_server` |
    /// | `TRODO_IDLE_TIMEOUT_SECS` | seconds without a request before a session's run ends | `300` |
    /// | `TRODO_ENABLED` | `false` turns the layer into a pass-through | `true` |
    /// | `TRODO_REDIS_URL` | a Redis server whose session store every worker shares (feature `redis`) | unset |
    ///
    /// A variable that is empty or only blanks counts as unset; one that is
    /// not UTF-8 text is an error.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable whose value cannot work.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// [`from_env`](Self::from_env) over any source of variables.
    pub(crate) fn from_lookup(
        lookup: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Self, ConfigError> {
        // A blank variable counts as unset (`TRODO_ENABLED=${TRODO_ENABLED}`
        // in a compose file gives one).
        let get = |name: &str| match lookup(name).map(OsString::into_string) {
            None => Ok(None),
            Some(Ok(value)) => Ok(Some(value).filter(|value| !value.trim().is_empty())),
            // The value is not shown: it may hold a password (a Redis URL).
            Some(Err(_)) => Err(ConfigError::new(name, "(not UTF-8)", EXPECTED_TEXT)),
        };
        let mut config = Self::new();
        if let Some(site) = get("TRODO_SITE_ID")? {
            config = config
                .with_site_id(&site)
                .map_err(|e| ConfigError::new("TRODO_SITE_ID", e.value(), EXPECTED_SITE_ID))?;
        }
        if let Some(base) = get("TRODO_API_BASE")? {
            config = config
                .with_api_base(&base)
                .map_err(|e| ConfigError::new("TRODO_API_BASE", e.value(), EXPECTED_URL))?;
        }
        if let Some(name) = get("TRODO_AGENT_NAME")? {
            config = config
                .with_agent_name(&name)
                .map_err(|e| ConfigError::new("TRODO_AGENT_NAME", e.value(), EXPECTED_NAME))?;
        }
        if let Some(secs) = get("TRODO_IDLE_TIMEOUT_SECS")? {
            let seconds = secs
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=MAX_IDLE_TIMEOUT.as_secs()).contains(s))
                .ok_or_else(|| {
                    ConfigError::new("TRODO_IDLE_TIMEOUT_SECS", &secs, EXPECTED_SECONDS)
                })?;
            config = config.with_idle_timeout(Duration::from_secs(seconds))?;
        }
        if let Some(enabled) = get("TRODO_ENABLED")? {
            let on = match enabled.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(ConfigError::new("TRODO_ENABLED", enabled, EXPECTED_BOOL)),
            };
            config = config.with_enabled(on);
        }
        if let Some(url) = get("TRODO_REDIS_URL")? {
            config = config.with_redis_url_from_env(&url)?;
        }
        Ok(config)
    }

    #[cfg(feature = "redis")]
    fn with_redis_url_from_env(self, url: &str) -> Result<Self, ConfigError> {
        self.with_redis_url(url).map_err(|e| {
            ConfigError::new(
                "TRODO_REDIS_URL",
                e.value(),
                crate::store::EXPECTED_REDIS_URL,
            )
        })
    }

    /// Without the `redis` feature a Redis URL cannot work: fail rather
    /// than run every worker with sessions of its own.
    #[cfg(not(feature = "redis"))]
    fn with_redis_url_from_env(self, url: &str) -> Result<Self, ConfigError> {
        let _ = self;
        Err(ConfigError::new(
            "TRODO_REDIS_URL",
            crate::store::redact_url(url),
            "unset: this build of trodo-tower lacks the `redis` feature",
        ))
    }

    /// Sets the Trodo site id sent as `X-Trodo-Site-Id`; with it, runs go to
    /// the ingest API instead of the console. Blanks around it are dropped (a
    /// value read from a file often ends in a newline). Unset by default;
    /// [`TrodoConfig::from_env`] sets it from `TRODO_SITE_ID`.
    ///
    /// # Errors
    /// A [`ConfigError`] for `site_id` when it is empty or holds anything
    /// but visible ASCII inside: a space, a control character or a
    /// non-ASCII letter (an env file's `site_123 # prod`, say, which the
    /// API would refuse on every call).
    pub fn with_site_id(self, site_id: &str) -> Result<Self, ConfigError> {
        let id = site_id.trim();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new("site_id", site_id, EXPECTED_SITE_ID));
        }
        Ok(self.edit(|s| s.site_id = Some(id.to_owned())))
    }

    /// Sets the base URL of the ingest API (`http` or `https`).
    /// Defaults to [`DEFAULT_API_BASE`]; [`TrodoConfig::from_env`] sets it
    /// from `TRODO_API_BASE`. A trailing `/` is dropped.
    ///
    /// # Errors
    /// A [`ConfigError`] for `api_base` when the URL does not parse or is not HTTP.
    pub fn with_api_base(self, api_base: &str) -> Result<Self, ConfigError> {
        let url = reqwest::Url::parse(api_base.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| ConfigError::new("api_base", api_base, EXPECTED_URL))?;
        let base = url.as_str().trim_end_matches('/').to_owned();
        Ok(self.edit(|s| s.api_base = base))
    }

    /// Sets the `agent_name` of every run.
    /// Defaults to [`DEFAULT_AGENT_NAME`]; [`TrodoConfig::from_env`] sets it
    /// from `TRODO_AGENT_NAME`.
    ///
    /// # Errors
    /// A [`ConfigError`] for `agent_name` when the name is empty.
    pub fn with_agent_name(self, agent_name: &str) -> Result<Self, ConfigError> {
        let name = agent_name.trim();
        if name.is_empty() {
            return Err(ConfigError::new("agent_name", agent_name, EXPECTED_NAME));
        }
        Ok(self.edit(|s| s.agent_name = name.to_owned()))
    }

    /// Sets how long a session may go without a request before its run is
    /// ended with `closed_via: "idle_timeout"`; a request still being
    /// answered (a long tool call) keeps its run open. Keep it at least as
    /// long as your MCP server's own session keep-alive.
    /// Defaults to [`DEFAULT_IDLE_TIMEOUT`]; [`TrodoConfig::from_env`] sets
    /// it from `TRODO_IDLE_TIMEOUT_SECS`.
    ///
    /// # Errors
    /// A [`ConfigError`] for `idle_timeout` when it is zero or longer than
    /// [`MAX_IDLE_TIMEOUT`].
    pub fn with_idle_timeout(self, idle_timeout: Duration) -> Result<Self, ConfigError> {
        if idle_timeout.is_zero() || idle_timeout > MAX_IDLE_TIMEOUT {
            return Err(ConfigError::new(
                "idle_timeout",
                format!("{}s", idle_timeout.as_secs()),
                EXPECTED_SECONDS,
            ));
        }
        Ok(self.edit(|s| s.idle_timeout = idle_timeout))
    }

    /// Sets the name of the session header. Defaults to [`DEFAULT_SESSION_HEADER`].
    ///
    /// # Errors
    /// A [`ConfigError`] for `session_header` when the name is not a valid header name.
    pub fn with_session_header(self, name: &str) -> Result<Self, ConfigError> {
        let header = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| ConfigError::new("session_header", name, "a valid HTTP header name"))?;
        Ok(self.edit(|s| s.session_header = header))
    }

    /// Sets the most characters of a request or response body kept as a span's
    /// `input` or `output`; the rest is cut, and the span says so in its
    /// attributes. A POST to the MCP endpoint is still read up to 1 Mi
    /// characters to be understood (its method, id, tool and `_meta`),
    /// whatever this limit, and its JSON answer (a JSON body or an SSE
    /// event) up to four times this limit in characters (its error status);
    /// memory per exchange stays bounded whatever the body size (up to 4
    /// bytes a character).
    /// Defaults to [`DEFAULT_CAPTURE_LIMIT`] (64,000, the most the ingest API keeps).
    ///
    /// # Errors
    /// A [`ConfigError`] for `capture_limit` when it is zero or above 64,000.
    pub fn with_capture_limit(self, chars: usize) -> Result<Self, ConfigError> {
        if chars == 0 || chars > MAX_IO_CHARS {
            return Err(ConfigError::new(
                "capture_limit",
                chars.to_string(),
                "a number of characters from 1 to 64000",
            ));
        }
        Ok(self.edit(|s| s.capture_limit = chars))
    }

    /// Sets the kind of the spans of one MCP method, e.g. `prompts/get` as
    /// [`SpanKind::Llm`]. Defaults: `tools/call` is `tool`, others `generic`.
    #[must_use]
    pub fn with_method_kind(self, method: impl Into<String>, kind: SpanKind) -> Self {
        self.edit(|s| {
            s.method_kinds.insert(method.into(), kind);
        })
    }

    /// Sets the kind of the spans of one tool (`tools/call` with that name),
    /// e.g. a search tool as [`SpanKind::Retrieval`]. Wins over
    /// [`with_method_kind`](Self::with_method_kind).
    #[must_use]
    pub fn with_tool_kind(self, tool: impl Into<String>, kind: SpanKind) -> Self {
        self.edit(|s| {
            s.tool_kinds.insert(tool.into(), kind);
        })
    }

    /// Sets how requests that belong to no MCP session become runs.
    /// Defaults to [`Sessionless::Group`].
    #[must_use]
    pub fn with_sessionless(self, sessionless: Sessionless) -> Self {
        self.edit(|s| s.sessionless = sessionless)
    }

    /// Sets the application's run key for requests without a session: a
    /// closure over the request head, e.g. the authenticated subject or a
    /// header. It comes first in the chain of keys; `None` passes to the next.
    ///
    /// ```
    /// use trodo_tower::TrodoConfig;
    ///
    /// let config = TrodoConfig::new().with_run_key(|parts| {
    ///     let user = parts.headers.get("x-user-id")?.to_str().ok()?;
    ///     Some(format!("user:{user}"))
    /// });
    /// ```
    #[must_use]
    pub fn with_run_key<F>(self, resolver: F) -> Self
    where
        F: Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.edit(|s| s.run_key = Some(HeadFn::new(Hook::RunKey, resolver)))
    }

    /// Sets the `params._meta` keys whose value is a client's conversation
    /// id, tried in order after the application's key.
    /// Defaults to [`DEFAULT_CONVERSATION_META_KEYS`].
    #[must_use]
    pub fn with_conversation_meta_keys<I, K>(self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        let keys = keys.into_iter().map(Into::into).collect();
        self.edit(|s| s.conversation_meta_keys = keys)
    }

    /// Groups requests that carry a session id by the sessionless key chain
    /// instead of by session: for clients that open a new session for every
    /// call and never delete it. Off by default. Their session ids are then
    /// passed over, so [`Sessionless`] decides for them as for requests
    /// without a session: under [`Sessionless::RunPerRequest`] each is a
    /// run of its own, and under [`Sessionless::Ignore`] none is recorded.
    #[must_use]
    pub fn with_session_grouping(self, group: bool) -> Self {
        self.edit(|s| s.group_sessions = group)
    }

    /// Captures request bodies (and manual spans' inputs) as `input`, or not.
    /// Defaults to on. Headers are never captured.
    #[must_use]
    pub fn with_input_capture(self, capture: bool) -> Self {
        self.edit(|s| s.capture_input = capture)
    }

    /// Captures response bodies (and manual spans' outputs) as `output`, or
    /// not. Defaults to on.
    #[must_use]
    pub fn with_output_capture(self, capture: bool) -> Self {
        self.edit(|s| s.capture_output = capture)
    }

    /// Sets a redaction hook that sees every captured input and output
    /// before it is serialised and cut to the capture limit: a JSON body
    /// read whole as its JSON value, any other text as a JSON string.
    /// Change the value in place. Defaults to none.
    ///
    /// A JSON body is read whole up to a window past the capture limit: a
    /// POST to the MCP endpoint up to 1 Mi characters, its JSON answer (a
    /// JSON response body, or the SSE event that carries the answer) up to
    /// four times the capture limit, in characters either way; a body of
    /// any other route up to the capture limit. A longer one reaches the hook as the
    /// string of its first part, so a hook that masks secrets in large
    /// answers should also look at strings.
    ///
    /// The hook runs where a span is recorded, not as the answer passes.
    /// Without a session store that is the layer's delivery thread, with a
    /// few exceptions on other threads: an `initialize`'s body (it goes
    /// into its run's `start`) is redacted before that answer's head goes
    /// out; a call whose event stream ends before its answer has its input
    /// redacted there, as it waits for a resumed stream; a resumed stream,
    /// the idle sweep, `end_run`, `flush` and `shutdown` first catch up
    /// what waits for the delivery thread, as does a request that finds
    /// the backlog past its bounds; after shutdown, spans are read as they
    /// finish. A body of more than four capture limits is redacted at
    /// once, where it is read. With a session store it runs on the
    /// requests' threads, after each answer's head and before its last
    /// part. Keep it quick, and free of locks your handlers hold. A panic
    /// in it (with `panic = "unwind"`, the default) never reaches a
    /// request: the value it was given is left out of its span, and it is
    /// logged and counted
    /// ([`DeliveryCounters::hook_panics`](crate::DeliveryCounters::hook_panics)).
    ///
    /// Error texts go through it too, as JSON strings: the message of a
    /// JSON-RPC error or of an `isError` tool result in an answer, and the
    /// texts given to the manual API as errors
    /// ([`SpanGuard::set_error`](crate::SpanGuard::set_error),
    /// [`EndRun::error`](crate::EndRun::error), a
    /// [`wrap_agent`](crate::Trodo::wrap_agent) agent's `Err`).
    ///
    /// ```
    /// use serde_json::Value;
    /// use trodo_tower::TrodoConfig;
    ///
    /// let config = TrodoConfig::new().with_redaction(|value: &mut Value| {
    ///     if let Some(token) = value.pointer_mut("/params/arguments/api_token") {
    ///         *token = Value::from("[redacted]");
    ///     }
    /// });
    /// ```
    #[must_use]
    pub fn with_redaction<F>(self, redact: F) -> Self
    where
        F: Fn(&mut serde_json::Value) + Send + Sync + 'static,
    {
        self.edit(|s| s.redactor = Some(Redactor(Arc::new(redact))))
    }

    /// Sets how a run's `distinct_id` (the end user) is found: a closure
    /// over the head of the request that opens the run, e.g. an auth
    /// subject or a header. Defaults to none.
    ///
    /// It is called for requests that may open a run: every request but
    /// those in a session whose run is open in this process (an
    /// `initialize`, a call without a session, a session another worker
    /// opened).
    ///
    /// ```
    /// use trodo_tower::TrodoConfig;
    ///
    /// let config = TrodoConfig::new().with_distinct_id(|parts| {
    ///     Some(parts.headers.get("x-user-id")?.to_str().ok()?.to_owned())
    /// });
    /// ```
    #[must_use]
    pub fn with_distinct_id<F>(self, extract: F) -> Self
    where
        F: Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.edit(|s| s.distinct_id = Some(HeadFn::new(Hook::DistinctId, extract)))
    }

    /// Turns the layer on or off; off, it passes every request through
    /// untouched, records and sends nothing and starts no thread (a kill
    /// switch, and a way to measure its overhead). Handlers still find a
    /// [`RequestSpan`](crate::RequestSpan) in the request's extensions, one
    /// that is part of no run. On by default; [`TrodoConfig::from_env`]
    /// sets it from `TRODO_ENABLED`.
    #[must_use]
    pub fn with_enabled(self, enabled: bool) -> Self {
        self.edit(|s| s.enabled = enabled)
    }

    /// Sets the most runs open in this process (sessions' and those of
    /// calls without a session). The keys of calls without a session come
    /// from clients (a conversation id in `params._meta`, say), and each new
    /// one opens a run that lives until the idle timeout: past this many open
    /// runs, a call whose key has no open run here becomes a run of its own,
    /// sent whole, with `run_table_full: true` in its metadata (counted in
    /// [`DeliveryCounters::own_runs_past_max_open_runs`](crate::DeliveryCounters::own_runs_past_max_open_runs),
    /// and a warning logged at most once a minute), so memory stays bounded under
    /// a flood of new keys. A call in a session this process has not seen
    /// (after a restart, on another worker, or a made-up id that a
    /// stateless server accepts) is a new key too; calls whose key has its
    /// run here, and sessions' `initialize`, are not affected. With a
    /// session store, a call whose key's run another worker holds is a run
    /// of its own too while the table here is full; one whose store lookup
    /// was under way when it filled joins the run the store names. Defaults to
    /// [`DEFAULT_MAX_OPEN_RUNS`]; each open run takes a few hundred bytes
    /// and its key.
    ///
    /// # Errors
    /// A [`ConfigError`] for `max_open_runs` when it is zero.
    ///
    /// ```
    /// use trodo_tower::TrodoConfig;
    ///
    /// let config = TrodoConfig::new().with_max_open_runs(20_000)?;
    /// # Ok::<(), trodo_tower::ConfigError>(())
    /// ```
    pub fn with_max_open_runs(self, runs: usize) -> Result<Self, ConfigError> {
        if runs == 0 {
            return Err(ConfigError::new("max_open_runs", "0", EXPECTED_COUNT));
        }
        Ok(self.edit(|s| s.max_open_runs = runs))
    }

    /// Sets the most records (run starts, spans, run ends) waiting for
    /// delivery or in flight. When a new record does not fit, the oldest
    /// queued spans are dropped and counted in
    /// [`DeliveryCounters::dropped_queue_full`](crate::DeliveryCounters::dropped_queue_full);
    /// requests never wait. Defaults to 10,000.
    ///
    /// # Errors
    /// A [`ConfigError`] for `max_queue_items` when it is zero.
    pub fn with_max_queue_items(self, items: usize) -> Result<Self, ConfigError> {
        if items == 0 {
            return Err(ConfigError::new("max_queue_items", "0", EXPECTED_COUNT));
        }
        Ok(self.edit(|s| s.max_queue_items = items))
    }

    /// Sets the most bytes of records (measured as the JSON sent; for a span
    /// not yet serialized, an estimate of it) waiting
    /// for delivery or in flight; past it the oldest queued spans are
    /// dropped as with [`with_max_queue_items`](Self::with_max_queue_items).
    /// A single record larger than this is dropped as too large.
    /// Defaults to 64 MiB.
    ///
    /// # Errors
    /// A [`ConfigError`] for `max_queue_bytes` when it is zero.
    pub fn with_max_queue_bytes(self, bytes: usize) -> Result<Self, ConfigError> {
        if bytes == 0 {
            return Err(ConfigError::new("max_queue_bytes", "0", EXPECTED_COUNT));
        }
        Ok(self.edit(|s| s.max_queue_bytes = bytes))
    }

    /// Sets the most calls to the ingest API in flight at once. Each run's
    /// calls go one at a time, in order (its start, then its spans, then
    /// its end), so this is how many runs deliver side by side, and
    /// delivery keeps up with this many calls per round trip to the API: at
    /// 50 ms and the default of 32, 640 calls a second (about 200 short
    /// sessions a second, or 640 busy ones sending spans every second).
    /// Past that the queue fills and its oldest spans are dropped.
    ///
    /// ```
    /// # use trodo_tower::TrodoConfig;
    /// let config = TrodoConfig::new().with_max_concurrent_calls(64)?;
    /// # Ok::<(), trodo_tower::ConfigError>(())
    /// ```
    ///
    /// # Errors
    /// A [`ConfigError`] for `max_concurrent_calls` when it is zero or
    /// above 256.
    pub fn with_max_concurrent_calls(self, calls: usize) -> Result<Self, ConfigError> {
        if !(1..=MAX_CONCURRENT_CALLS).contains(&calls) {
            return Err(ConfigError::new(
                "max_concurrent_calls",
                calls.to_string(),
                "a number from 1 to 256",
            ));
        }
        Ok(self.edit(|s| s.max_concurrent_calls = calls))
    }

    /// Sends to the ingest API through your `reqwest` (0.13) client: its
    /// TLS settings, proxies, default headers and connection pool apply.
    /// Each call is still bounded by the layer's own 10 s timeout. A
    /// redirect the client follows is taken as a refusal (a redirected POST
    /// may have become a GET): build it with
    /// `redirect(reqwest::redirect::Policy::none())`. Defaults to a client
    /// of the layer's own (TLS through rustls, no redirects).
    #[must_use]
    pub fn with_http_client(self, client: reqwest::Client) -> Self {
        self.edit(|s| s.http_client = Some(client))
    }

    /// Shares sessions with other workers through `store`: the run of a
    /// session opened on one worker is continued, counted and ended once on
    /// any of them. See the [store docs](crate::store). Defaults to none:
    /// each process keeps its runs to itself.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use trodo_tower::TrodoConfig;
    /// use trodo_tower::store::MemoryStore;
    ///
    /// let config = TrodoConfig::new().with_session_store(Arc::new(MemoryStore::new()));
    /// # let _ = config;
    /// ```
    #[must_use]
    pub fn with_session_store(self, store: Arc<dyn SessionStore>) -> Self {
        self.edit(|s| s.store = Some(store))
    }

    /// Shares sessions with other workers through the Redis server at
    /// `url` (a [`RedisStore`](crate::store::RedisStore) with the default
    /// key prefix). Connects lazily, in the background: no runtime is needed
    /// here. Unset by default; [`TrodoConfig::from_env`] sets it from
    /// `TRODO_REDIS_URL`.
    ///
    /// ```
    /// use trodo_tower::TrodoConfig;
    ///
    /// let config = TrodoConfig::new().with_redis_url("redis://127.0.0.1:6379/0")?;
    /// # Ok::<(), trodo_tower::ConfigError>(())
    /// ```
    ///
    /// # Errors
    /// A [`ConfigError`] for `redis_url` when the URL is not a Redis URL.
    #[cfg(feature = "redis")]
    pub fn with_redis_url(self, url: &str) -> Result<Self, ConfigError> {
        let store = crate::store::RedisStore::new(url)?;
        Ok(self.with_session_store(Arc::new(store)))
    }

    /// Sets the most a response head waits for the session store: for a
    /// session this process does not know (the lookup starts with the
    /// request, so the wait is usually none) and for a new session's run.
    /// Past it the request goes on as without a store (the store's work
    /// goes on in the background). Defaults to [`DEFAULT_STORE_TIMEOUT`].
    ///
    /// # Errors
    /// A [`ConfigError`] for `store_timeout` when it is under 1 ms or above 10 s.
    pub fn with_store_timeout(self, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout < Duration::from_millis(1) || timeout > Duration::from_secs(10) {
            return Err(ConfigError::new(
                "store_timeout",
                format!("{timeout:?}"),
                "a duration from 1 ms to 10 s",
            ));
        }
        Ok(self.edit(|s| s.store_timeout = timeout))
    }

    /// The site id, if runs are sent to the ingest API (else they are printed).
    #[must_use]
    pub fn site_id(&self) -> Option<&str> {
        self.settings.site_id.as_deref()
    }

    /// The base URL of the ingest API, without a trailing slash.
    #[must_use]
    pub fn api_base(&self) -> &str {
        &self.settings.api_base
    }

    /// Whether the layer records anything.
    #[must_use]
    pub fn is_enabled(&self) -> bool {
        self.settings.enabled
    }

    /// Applies a change and detaches the result from the state of the old config.
    fn edit(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        change(&mut self.settings);
        self.state = Arc::default();
        self
    }
}

const EXPECTED_URL: &str = "an http:// or https:// URL";
const EXPECTED_NAME: &str = "a non-empty name";
const EXPECTED_SITE_ID: &str = "a site id of visible ASCII characters";
const EXPECTED_SECONDS: &str = "a whole number of seconds from 1 to 31536000 (a year)";
const EXPECTED_BOOL: &str = "true or false";
const EXPECTED_TEXT: &str = "UTF-8 text";
const EXPECTED_COUNT: &str = "a number greater than zero";

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<TrodoConfig, ConfigError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TrodoConfig::from_lookup(|name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        })
    }

    #[cfg(unix)]
    #[test]
    fn a_variable_that_is_not_utf8_names_itself() {
        use std::os::unix::ffi::OsStrExt;
        let raw = std::ffi::OsStr::from_bytes(b"f\xe4lse").to_owned();
        let error = TrodoConfig::from_lookup(|name| (name == "TRODO_ENABLED").then(|| raw.clone()))
            .unwrap_err();
        assert_eq!(error.setting(), "TRODO_ENABLED");
        assert_eq!(error.value(), "(not UTF-8)");
        assert!(error.to_string().contains("UTF-8 text"), "{error}");
    }

    #[test]
    fn defaults_without_environment() {
        let c = env(&[]).unwrap().settings;
        assert_eq!(c.site_id, None);
        assert_eq!(c.api_base, "https://sdkapi.trodo.ai");
        assert_eq!(c.agent_name, "mcp_server");
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.session_header, "mcp-session-id");
        assert!(c.enabled);
    }

    #[test]
    fn reads_every_variable() {
        let c = env(&[
            ("TRODO_SITE_ID", " site-1 "),
            ("TRODO_API_BASE", "http://127.0.0.1:9000/"),
            ("TRODO_AGENT_NAME", "calc"),
            ("TRODO_IDLE_TIMEOUT_SECS", "42"),
            ("TRODO_ENABLED", "false"),
        ])
        .unwrap()
        .settings;
        assert_eq!(c.site_id.as_deref(), Some("site-1"));
        let config = env(&[("TRODO_SITE_ID", "s"), ("TRODO_API_BASE", "http://h:1/")]).unwrap();
        assert_eq!(
            (config.site_id(), config.api_base(), config.is_enabled()),
            (Some("s"), "http://h:1", true)
        );
        assert_eq!(c.api_base, "http://127.0.0.1:9000");
        assert_eq!(c.agent_name, "calc");
        assert_eq!(c.idle_timeout, Duration::from_secs(42));
        assert!(!c.enabled);
    }

    #[test]
    fn empty_site_id_means_console() {
        assert_eq!(
            env(&[("TRODO_SITE_ID", "")]).unwrap().settings.site_id,
            None
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("TRODO_IDLE_TIMEOUT_SECS", "soon"),
            ("TRODO_IDLE_TIMEOUT_SECS", "0"),
            ("TRODO_IDLE_TIMEOUT_SECS", "31536001"),
            ("TRODO_IDLE_TIMEOUT_SECS", "18446744073709551615"),
            ("TRODO_API_BASE", "sdkapi.trodo.ai"),
            ("TRODO_API_BASE", "ftp://x"),
            ("TRODO_ENABLED", "maybe"),
            ("TRODO_SITE_ID", "site\u{1}1"),
            ("TRODO_SITE_ID", "site_123 # prod"),
        ] {
            let err = env(&[(var, value)]).unwrap_err();
            assert_eq!(err.setting(), var);
            assert_eq!(err.value(), value);
            assert!(
                err.to_string().starts_with(&format!("invalid {var} = ")),
                "{err}"
            );
        }
    }

    #[test]
    fn blank_variables_count_as_unset() {
        let vars = [
            "TRODO_SITE_ID",
            "TRODO_API_BASE",
            "TRODO_AGENT_NAME",
            "TRODO_IDLE_TIMEOUT_SECS",
            "TRODO_ENABLED",
            "TRODO_REDIS_URL",
        ];
        let defaults = TrodoConfig::new().settings;
        for blank in ["", "  ", "\t"] {
            let pairs: Vec<(&str, &str)> = vars.iter().map(|var| (*var, blank)).collect();
            let c = env(&pairs).unwrap().settings;
            assert_eq!(c.site_id, None);
            assert_eq!(c.api_base, defaults.api_base);
            assert_eq!(c.agent_name, defaults.agent_name);
            assert_eq!(c.idle_timeout, defaults.idle_timeout);
            assert!(c.enabled);
            assert!(c.store.is_none());
        }
    }

    #[test]
    fn queue_bounds_must_be_positive() {
        let c = TrodoConfig::new().settings;
        assert_eq!((c.max_queue_items, c.max_queue_bytes), (10_000, 64 << 20));
        let c = TrodoConfig::new()
            .with_max_queue_items(5)
            .unwrap()
            .with_max_queue_bytes(4096)
            .unwrap()
            .with_http_client(reqwest::Client::new())
            .settings;
        assert_eq!((c.max_queue_items, c.max_queue_bytes), (5, 4096));
        assert!(c.http_client.is_some());
        let items = TrodoConfig::new().with_max_queue_items(0).unwrap_err();
        assert_eq!((items.setting(), items.value()), ("max_queue_items", "0"));
        let bytes = TrodoConfig::new().with_max_queue_bytes(0).unwrap_err();
        assert_eq!((bytes.setting(), bytes.value()), ("max_queue_bytes", "0"));
    }

    #[test]
    fn open_runs_are_bounded_by_default_and_not_by_zero() {
        assert_eq!(TrodoConfig::new().settings.max_open_runs, 100_000);
        let c = TrodoConfig::new().with_max_open_runs(7).unwrap().settings;
        assert_eq!(c.max_open_runs, 7);
        let zero = TrodoConfig::new().with_max_open_runs(0).unwrap_err();
        assert_eq!((zero.setting(), zero.value()), ("max_open_runs", "0"));
    }

    #[test]
    fn concurrent_calls_are_from_one_to_256() {
        assert_eq!(TrodoConfig::new().settings.max_concurrent_calls, 32);
        for calls in [1, 256] {
            let c = TrodoConfig::new().with_max_concurrent_calls(calls).unwrap();
            assert_eq!(c.settings.max_concurrent_calls, calls);
        }
        for calls in [0, 257] {
            let err = TrodoConfig::new()
                .with_max_concurrent_calls(calls)
                .unwrap_err();
            assert_eq!(
                (err.setting(), err.value()),
                ("max_concurrent_calls", calls.to_string().as_str())
            );
        }
    }

    #[test]
    fn builder_errors_name_the_setting() {
        assert_eq!(
            TrodoConfig::new()
                .with_capture_limit(0)
                .unwrap_err()
                .setting(),
            "capture_limit"
        );
        assert_eq!(
            TrodoConfig::new()
                .with_session_header("bad header")
                .unwrap_err()
                .setting(),
            "session_header"
        );
        for site_id in [
            "",
            "  ",
            "site\n123",
            "site\u{7f}",
            "site_123 # prod",
            "site\t123",
            "sité",
        ] {
            let err = TrodoConfig::new().with_site_id(site_id).unwrap_err();
            assert_eq!((err.setting(), err.value()), ("site_id", site_id));
        }
        let trimmed = TrodoConfig::new().with_site_id(" site_123\n").unwrap();
        assert_eq!(trimmed.site_id(), Some("site_123"));
        for idle in [
            Duration::ZERO,
            MAX_IDLE_TIMEOUT + Duration::from_secs(1),
            Duration::MAX,
        ] {
            let err = TrodoConfig::new().with_idle_timeout(idle).unwrap_err();
            assert_eq!(err.setting(), "idle_timeout");
        }
        let longest = TrodoConfig::new()
            .with_idle_timeout(MAX_IDLE_TIMEOUT)
            .unwrap();
        assert_eq!(longest.settings.idle_timeout, MAX_IDLE_TIMEOUT);
    }

    #[test]
    fn store_settings() {
        let c = TrodoConfig::new().settings;
        assert!(c.store.is_none());
        assert_eq!(c.store_timeout, Duration::from_millis(50));
        let store: Arc<dyn SessionStore> = Arc::new(crate::store::MemoryStore::new());
        let c = TrodoConfig::new()
            .with_session_store(store)
            .with_store_timeout(Duration::from_millis(20))
            .unwrap()
            .settings;
        assert!(c.store.is_some());
        assert_eq!(c.store_timeout, Duration::from_millis(20));
        for out_of_range in [
            Duration::ZERO,
            Duration::from_micros(999),
            Duration::from_millis(10_001),
        ] {
            let err = TrodoConfig::new()
                .with_store_timeout(out_of_range)
                .unwrap_err();
            assert_eq!(err.setting(), "store_timeout");
        }
        assert!(
            TrodoConfig::new()
                .with_store_timeout(Duration::from_millis(1))
                .is_ok()
        );
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_url_from_the_environment() {
        let c = env(&[("TRODO_REDIS_URL", "redis://127.0.0.1:6379/2")]).unwrap();
        let store = format!("{:?}", c.settings.store.unwrap());
        assert!(store.contains("127.0.0.1:6379"), "{store}");
        let err = env(&[("TRODO_REDIS_URL", "http://user:s3cret@cache")]).unwrap_err();
        assert_eq!(err.setting(), "TRODO_REDIS_URL");
        assert_eq!(
            err.value(),
            "http://user:***@cache",
            "no password in errors"
        );
        assert!(
            env(&[("TRODO_REDIS_URL", "")])
                .unwrap()
                .settings
                .store
                .is_none()
        );
    }

    #[cfg(not(feature = "redis"))]
    #[test]
    fn a_redis_url_needs_the_redis_feature() {
        let err = env(&[("TRODO_REDIS_URL", "redis://:s3cret@cache:6379")]).unwrap_err();
        assert_eq!(err.setting(), "TRODO_REDIS_URL");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn clones_share_state_and_edits_detach() {
        let a = TrodoConfig::new();
        let b = a.clone();
        assert!(Arc::ptr_eq(&a.state, &b.state));
        let c = b.with_agent_name("other").unwrap();
        assert!(!Arc::ptr_eq(&a.state, &c.state));
    }
}
