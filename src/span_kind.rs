//! The kind of a span, as the Trodo dashboard groups them.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// The kind of a span: what sort of step of the agent it records.
///
/// MCP traffic defaults to [`SpanKind::Tool`] for `tools/call` and for
/// requests on non-MCP routes, and to [`SpanKind::Generic`] for every other
/// MCP method. Change that per MCP method or per tool name with
/// [`TrodoConfig::with_method_kind`](crate::TrodoConfig::with_method_kind) and
/// [`TrodoConfig::with_tool_kind`](crate::TrodoConfig::with_tool_kind), and per
/// axum route with [`SpanKindLayer`](crate::SpanKindLayer).
///
/// ```
/// use trodo_tower::SpanKind;
///
/// assert_eq!("retrieval".parse::<SpanKind>(), Ok(SpanKind::Retrieval));
/// assert_eq!(SpanKind::Llm.to_string(), "llm");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    /// A call to a language model.
    Llm,
    /// A tool call.
    Tool,
    /// A step of an agent.
    Agent,
    /// A lookup in a store of documents or data.
    Retrieval,
    /// Anything else.
    Generic,
}

impl SpanKind {
    /// The name used on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Llm => "llm",
            Self::Tool => "tool",
            Self::Agent => "agent",
            Self::Retrieval => "retrieval",
            Self::Generic => "generic",
        }
    }
}

impl fmt::Display for SpanKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The error of parsing a [`SpanKind`] from a string that names no kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownSpanKind(pub(crate) String);

impl fmt::Display for UnknownSpanKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown span kind {:?} (expected llm, tool, agent, retrieval or generic)",
            self.0
        )
    }
}

impl std::error::Error for UnknownSpanKind {}

impl FromStr for SpanKind {
    type Err = UnknownSpanKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "llm" => Ok(Self::Llm),
            "tool" => Ok(Self::Tool),
            "agent" => Ok(Self::Agent),
            "retrieval" => Ok(Self::Retrieval),
            "generic" => Ok(Self::Generic),
            other => Err(UnknownSpanKind(other.to_owned())),
        }
    }
}
