//! Runs: one per MCP session, opened, fed with spans and ended exactly once.

mod key;
mod sessions;
mod under_way;

pub(crate) use key::{
    HeadFn, KeySource, MAX_RUN_KEY_LEN, RunKey, client_identity, is_session_key, meta_conversation,
};
pub(crate) use sessions::{CloseRun, Ending as RunEnding, NotOpenHere, RunFor, Sessions, send_end};
pub(crate) use under_way::UnderWay;

use serde_json::{Map, Value};
use std::fmt;

/// Why a run ended: `metadata.closed_via` of its `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClosedVia {
    /// The client sent DELETE for the session and the server answered 2xx.
    SessionDeleted,
    /// No request for the idle timeout.
    IdleTimeout,
    /// The server answered 404 for the session.
    SessionExpired,
    /// The process shut down gracefully.
    ServerShutdown,
    /// The server answered the `initialize` that opened the session with a
    /// JSON-RPC error: the client will not use the session.
    InitializeFailed,
}

impl ClosedVia {
    /// The value on the wire.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::SessionDeleted => "session_deleted",
            Self::IdleTimeout => "idle_timeout",
            Self::SessionExpired => "session_expired",
            Self::ServerShutdown => "server_shutdown",
            Self::InitializeFailed => "initialize_failed",
        }
    }

    /// The `metadata` of the `end` call.
    pub(crate) fn metadata(self) -> Map<String, Value> {
        let mut metadata = Map::new();
        metadata.insert("closed_via".to_owned(), Value::from(self.as_str()));
        metadata
    }
}

impl fmt::Display for ClosedVia {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}
