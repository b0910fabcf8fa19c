//! The arguments of the manual API: [`StartRun`], [`EndRun`], [`Feedback`].

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::capture_policy::Side;
use crate::config::Settings;
use crate::wire::{Run, Timestamp};

/// What [`Trodo::start_run`](crate::Trodo::start_run) (and
/// [`Trodo::wrap_agent`](crate::Trodo::wrap_agent)) open.
///
/// ```
/// use serde_json::json;
/// use trodo_tower::StartRun;
///
/// let run = StartRun::new("external_mcp_session")
///     .distinct_id("user-7")
///     .conversation_id("conv-abc")
///     .metadata("mcp_client", "claude-desktop")
///     .input(json!({"hello": "world"}));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct StartRun {
    pub(crate) agent_name: String,
    pub(crate) run_id: Option<Uuid>,
    pub(crate) distinct_id: Option<String>,
    pub(crate) conversation_id: Option<String>,
    pub(crate) parent_run_id: Option<Uuid>,
    pub(crate) metadata: Map<String, Value>,
    pub(crate) input: Option<Value>,
}

impl StartRun {
    /// The run record it opens, with its input kept as the capture policy says.
    pub(crate) fn into_run(self, run_id: Uuid, started_at: Timestamp, settings: &Settings) -> Run {
        Run {
            distinct_id: self.distinct_id,
            conversation_id: self.conversation_id,
            parent_run_id: self.parent_run_id,
            input: self
                .input
                .and_then(|v| settings.captured_value(Side::Input, v)),
            metadata: self.metadata,
            ..Run::new(run_id, self.agent_name, started_at)
        }
    }

    /// A run of the agent `agent_name`.
    pub fn new(agent_name: impl Into<String>) -> Self {
        Self {
            agent_name: agent_name.into(),
            run_id: None,
            distinct_id: None,
            conversation_id: None,
            parent_run_id: None,
            metadata: Map::new(),
            input: None,
        }
    }

    /// Uses this run id instead of minting a UUID v4 (e.g. one you stored
    /// for a session so that other processes can join the run).
    pub fn run_id(mut self, run_id: Uuid) -> Self {
        self.run_id = Some(run_id);
        self
    }

    /// The end user the run is for.
    pub fn distinct_id(mut self, distinct_id: impl Into<String>) -> Self {
        self.distinct_id = Some(distinct_id.into());
        self
    }

    /// The conversation the run belongs to.
    pub fn conversation_id(mut self, conversation_id: impl Into<String>) -> Self {
        self.conversation_id = Some(conversation_id.into());
        self
    }

    /// The run this one is part of.
    pub fn parent_run_id(mut self, parent_run_id: Uuid) -> Self {
        self.parent_run_id = Some(parent_run_id);
        self
    }

    /// Adds one metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The run's input: a string is kept as it is, other JSON is serialised.
    pub fn input(mut self, input: impl Into<Value>) -> Self {
        self.input = Some(input.into());
        self
    }
}

/// How [`Trodo::end_run`](crate::Trodo::end_run) ends a run.
///
/// ```
/// use trodo_tower::EndRun;
///
/// let ok = EndRun::ok().output("3 tool calls");
/// let failed = EndRun::error("upstream timed out").metadata("closed_via", "session_timeout");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct EndRun {
    pub(crate) failed: bool,
    pub(crate) output: Option<Value>,
    pub(crate) error_summary: Option<String>,
    pub(crate) metadata: Map<String, Value>,
}

impl EndRun {
    /// The run succeeded.
    pub fn ok() -> Self {
        Self {
            failed: false,
            output: None,
            error_summary: None,
            metadata: Map::new(),
        }
    }

    /// The run failed; `summary` says why (through the redaction hook, then
    /// cut at 4,000 characters).
    pub fn error(summary: impl Into<String>) -> Self {
        Self {
            failed: true,
            error_summary: Some(summary.into()),
            ..Self::ok()
        }
    }

    /// The run's output: a string is kept as it is, other JSON is serialised.
    pub fn output(mut self, output: impl Into<Value>) -> Self {
        self.output = Some(output.into());
        self
    }

    /// Adds one metadata entry to the end.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

impl Default for EndRun {
    fn default() -> Self {
        Self::ok()
    }
}

/// Feedback on a run, for [`Trodo::feedback`](crate::Trodo::feedback).
///
/// ```
/// use trodo_tower::Feedback;
///
/// let feedback = Feedback::new().satisfaction("positive").rating(5.0).comment("spot on");
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Feedback {
    pub(crate) body: crate::wire::FeedbackBody,
}

impl Feedback {
    /// Empty feedback; set what you know.
    pub fn new() -> Self {
        Self::default()
    }

    /// How satisfied the user was, e.g. `positive` or `negative`.
    pub fn satisfaction(mut self, satisfaction: impl Into<String>) -> Self {
        self.body.satisfaction = Some(satisfaction.into());
        self
    }

    /// A numeric rating; one that is not a finite number (JSON has no
    /// NaN) is left out.
    pub fn rating(mut self, rating: f64) -> Self {
        self.body.rating = rating.is_finite().then_some(rating);
        self
    }

    /// A free-text comment.
    pub fn comment(mut self, comment: impl Into<String>) -> Self {
        self.body.comment = Some(comment.into());
        self
    }

    /// The user who gave it.
    pub fn distinct_id(mut self, distinct_id: impl Into<String>) -> Self {
        self.body.distinct_id = Some(distinct_id.into());
        self
    }

    /// Adds one attribute.
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.body.attributes.insert(key.into(), value.into());
        self
    }
}
