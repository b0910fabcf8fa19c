//! Run keys: what groups requests into one run.
//!
//! Sessions of the Streamable HTTP transport (2025-03-26 .. 2025-11-25) are
//! keyed by their `Mcp-Session-Id`. Traffic without sessions (MCP
//! 2026-07-28, stateless servers, clients that open a session per call) is
//! keyed by the first link of a chain that gives one: a key the application
//! derives from the request, a vendor conversation id in `params._meta`, or
//! the client's identity; an idle gap closes such a run.

use crate::hook::Hook;
use crate::mcp::meta::Meta;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// What groups requests into one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunKey {
    /// An MCP session id (shared: the request, its run and its span hold it).
    Session(Arc<str>),
    /// A key resolved for traffic without sessions.
    Resolved { key: String, source: KeySource },
    /// A run opened with [`Trodo::start_run`](crate::Trodo::start_run).
    Manual(uuid::Uuid),
}

/// Where a resolved key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeySource {
    /// The application's resolver ([`TrodoConfig::with_run_key`](crate::TrodoConfig::with_run_key)).
    App,
    /// A conversation id in `params._meta` under this key.
    Meta(String),
    /// The client's identity: its `clientInfo` and the caller's address or user agent.
    Client,
}

/// The longest resolved key (as long as the longest session id the layer
/// takes): a longer one, a mistake or hostile, is passed over for the next
/// link of the chain, so that an idle run never holds much memory.
pub(crate) const MAX_RUN_KEY_LEN: usize = 4096;

impl RunKey {
    /// A key resolved from `source`, unless it is longer than [`MAX_RUN_KEY_LEN`].
    pub(crate) fn resolved(key: String, source: KeySource) -> Option<Self> {
        (key.len() <= MAX_RUN_KEY_LEN).then_some(Self::Resolved { key, source })
    }

    /// The key in the session table. Resolved keys start with a space and
    /// manual ones with a tab, which no session id can contain (they are
    /// visible ASCII), so the three never collide; a resolved key names its
    /// source, so that a conversation id a request puts in `_meta` cannot
    /// join the run of an application's key (a signed-in user's) or of a
    /// client's identity.
    pub(crate) fn table_key(&self) -> Arc<str> {
        match self {
            Self::Session(id) => Arc::clone(id),
            Self::Resolved { key, source } => format!(" {}:{key}", source.namespace()).into(),
            Self::Manual(run_id) => format!("\t{run_id}").into(),
        }
    }

    /// The run's `conversation_id`, if the key is one.
    pub(crate) fn conversation_id(&self) -> Option<&str> {
        match self {
            Self::Session(id) => Some(id),
            Self::Resolved { key, .. } => Some(key),
            Self::Manual(_) => None,
        }
    }

    /// How the key was found, for the run's metadata.
    pub(crate) fn source(&self) -> String {
        match self {
            Self::Session(_) => "session".to_owned(),
            Self::Resolved { source, .. } => source.to_string(),
            Self::Manual(_) => "manual".to_owned(),
        }
    }
}

/// Whether a key of the run table is a session id, not a resolved or
/// manual key (those start with characters no session id has: see
/// [`RunKey::table_key`]).
pub(crate) fn is_session_key(table_key: &str) -> bool {
    !table_key.starts_with([' ', '\t'])
}

impl KeySource {
    /// The source's part of a table key: conversation ids under any of the
    /// `_meta` keys share one.
    fn namespace(&self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Meta(_) => "meta",
            Self::Client => "client",
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::App => f.write_str("app"),
            Self::Meta(key) => write!(f, "meta:{key}"),
            Self::Client => f.write_str("client"),
        }
    }
}

/// A conversation id under one of `keys` in `params._meta` (a non-empty
/// string or a number).
pub(crate) fn meta_conversation(meta: Option<&Meta>, keys: &[String]) -> Option<(String, String)> {
    let meta = meta?;
    keys.iter()
        .find_map(|key| Some((key.clone(), meta.text(key)?.to_owned())))
}

/// The client identity key: `name/version@caller`, or `@caller` without a
/// `clientInfo`; `None` when neither is known.
pub(crate) fn client_identity(
    client: Option<(&str, Option<&str>)>,
    caller: Option<&str>,
) -> Option<String> {
    match (client, caller) {
        (None, None) => None,
        (client, caller) => {
            let mut key = String::new();
            if let Some((name, version)) = client {
                key.push_str(name);
                if let Some(version) = version {
                    key.push('/');
                    key.push_str(version);
                }
            }
            if let Some(caller) = caller {
                key.push('@');
                key.push_str(caller);
            }
            Some(key)
        }
    }
}

/// An application's closure over a request head (run key, distinct id).
#[derive(Clone)]
pub(crate) struct HeadFn {
    hook: Hook,
    closure: Arc<dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync>,
}

impl HeadFn {
    pub(crate) fn new(
        hook: Hook,
        closure: impl Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            hook,
            closure: Arc::new(closure),
        }
    }

    /// The closure's answer for `parts`; `None` if it panicked (logged,
    /// counted in `panics`).
    pub(crate) fn call(&self, parts: &http::request::Parts, panics: &AtomicU64) -> Option<String> {
        self.hook.call(panics, || (self.closure)(parts)).flatten()
    }
}

impl fmt::Debug for HeadFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HeadFn(<fn>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resolved_keys_never_collide_with_session_ids() {
        let session = RunKey::Session("abc".into());
        let resolved = RunKey::Resolved {
            key: "abc".into(),
            source: KeySource::App,
        };
        assert_ne!(session.table_key(), resolved.table_key());
        assert_eq!(resolved.conversation_id(), Some("abc"));
        let manual = RunKey::Manual(uuid::Uuid::nil());
        assert_ne!(manual.table_key(), session.table_key());
        assert_eq!(manual.conversation_id(), None);
        assert_eq!(resolved.source(), "app");
        assert!(is_session_key(&session.table_key()));
        assert!(!is_session_key(&resolved.table_key()));
        assert!(!is_session_key(&manual.table_key()));
    }

    #[test]
    fn keys_of_different_sources_never_collide() {
        let table_key = |source| {
            RunKey::resolved("user:ann".into(), source)
                .unwrap()
                .table_key()
        };
        let keys = [
            table_key(KeySource::App),
            table_key(KeySource::Meta("openai/session".into())),
            table_key(KeySource::Client),
        ];
        assert_eq!(
            keys.each_ref().map(|key| &**key),
            [" app:user:ann", " meta:user:ann", " client:user:ann"]
        );
        // Conversation ids under different `_meta` keys share one namespace.
        assert_eq!(
            keys[1],
            table_key(KeySource::Meta("other/conversation".into()))
        );
    }

    #[test]
    fn a_key_longer_than_the_cap_is_passed_over() {
        let longest = "k".repeat(MAX_RUN_KEY_LEN);
        assert!(RunKey::resolved(longest.clone(), KeySource::Client).is_some());
        assert_eq!(RunKey::resolved(longest + "k", KeySource::Client), None);
    }

    #[test]
    fn meta_conversation_takes_the_first_key_present() {
        let meta: Meta =
            serde_json::from_value(json!({"openai/session": "conv-1", "x/id": 7})).unwrap();
        let keys = [
            "missing".to_owned(),
            "x/id".to_owned(),
            "openai/session".to_owned(),
        ];
        assert_eq!(
            meta_conversation(Some(&meta), &keys),
            Some(("x/id".into(), "7".into()))
        );
        assert_eq!(meta_conversation(Some(&meta), &["nope".to_owned()]), None);
    }

    #[test]
    fn client_identity_keys() {
        assert_eq!(
            client_identity(Some(("mcp", Some("0.1.0"))), Some("10.0.0.1")).as_deref(),
            Some("mcp/0.1.0@10.0.0.1")
        );
        assert_eq!(
            client_identity(None, Some("10.0.0.1")).as_deref(),
            Some("@10.0.0.1")
        );
        assert_eq!(
            client_identity(Some(("c", None)), None).as_deref(),
            Some("c")
        );
        assert_eq!(client_identity(None, None), None);
    }
}
