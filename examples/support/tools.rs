//! The demo MCP server: six rmcp tools (`echo`, `add`, `fail`, `ask_llm`,
//! `slow_progress`, `wait_for_release`) served over Streamable HTTP.
//!
//! Shared by the examples and the integration tests through
//! `#[path = "../examples/support/tools.rs"] mod tools;`.

// Items are `pub` for whichever crate includes the module; under this crate's
// `unreachable_pub` lint a private `mod tools;` would flag each one.
#![allow(unreachable_pub)]

use std::{sync::Arc, time::Duration};

use rmcp::{
    RoleServer, ServerHandler,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{
        CallToolResult, ContentBlock, Implementation, ProgressNotificationParam,
        ServerCapabilities, ServerConfig,
    },
    schemars,
    service::RequestContext,
    tool, tool_handler, tool_router,
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use serde::Deserialize;
use tokio::sync::Semaphore;
use trodo_tower::{RequestSpan, SpanKind};

/// The demo tool server. Clones share the `wait_for_release` gates, so a test
/// can keep one clone and call [`DemoTools::release`] / [`DemoTools::started`]
/// while rmcp serves the others.
#[derive(Clone, Debug)]
pub struct DemoTools {
    /// One permit per `wait_for_release` call that has sent its "started" progress.
    started: Arc<Semaphore>,
    /// One permit per [`DemoTools::release`] call; each lets one waiting call finish.
    released: Arc<Semaphore>,
    /// The tools, built once and shared by every session. (Without
    /// `router = self.tools`, `#[tool_handler]` builds the router again on
    /// every call, which is about half of this server's work per `tools/call`.)
    tools: Arc<ToolRouter<Self>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    /// The text to echo back.
    text: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct AddArgs {
    /// The first addend.
    a: i64,
    /// The second addend.
    b: i64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct FailArgs {
    /// The error text to return instead of "this tool always fails".
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct AskArgs {
    /// The question for the (pretend) language model.
    question: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct SlowProgressArgs {
    /// How many progress steps to report (default 3).
    #[serde(default = "default_steps")]
    steps: u32,
    /// Delay before each step, in milliseconds (default 50).
    #[serde(default = "default_delay_ms")]
    delay_ms: u64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct WaitArgs {
    /// Answer with a tool error (`isError: true`) once released.
    #[serde(default)]
    fail: bool,
    /// Report progress once more ("released") when released, before answering.
    #[serde(default)]
    report_release: bool,
}

fn default_steps() -> u32 {
    3
}

fn default_delay_ms() -> u64 {
    50
}

impl DemoTools {
    /// A server with fresh `wait_for_release` gates.
    pub fn new() -> Self {
        Self {
            started: Arc::new(Semaphore::new(0)),
            released: Arc::new(Semaphore::new(0)),
            tools: Arc::new(Self::tool_router()),
        }
    }

    /// Lets one `wait_for_release` call finish: the one waiting now, or the next one.
    #[allow(dead_code)]
    pub fn release(&self) {
        self.released.add_permits(1);
    }

    /// Waits until a `wait_for_release` call has sent its "started" progress
    /// notification; each call of `started` consumes one such start.
    #[allow(dead_code)]
    pub async fn started(&self) {
        self.started
            .acquire()
            .await
            .expect("the semaphore is never closed")
            .forget();
    }
}

impl Default for DemoTools {
    fn default() -> Self {
        Self::new()
    }
}

/// Sends one `notifications/progress` if the request carries a progress token.
async fn progress(ctx: &RequestContext<RoleServer>, step: f64, total: Option<f64>, msg: &str) {
    let Some(token) = ctx.meta.get_progress_token() else {
        return;
    };
    let mut param = ProgressNotificationParam::new(token, step).with_message(msg);
    param.total = total;
    // A client that has gone away is not the tool's problem.
    let _ = ctx.peer.notify_progress(param).await;
}

#[tool_router]
impl DemoTools {
    #[tool(description = "Echo the text back, prefixed with \"echo: \"")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        format!("echo: {text}")
    }

    #[tool(description = "Add two integers")]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        a.wrapping_add(b).to_string()
    }

    #[tool(description = "Always fails with a tool error (isError: true)")]
    fn fail(&self, Parameters(FailArgs { reason }): Parameters<FailArgs>) -> CallToolResult {
        let text = reason.unwrap_or_else(|| "this tool always fails".to_owned());
        CallToolResult::error(vec![ContentBlock::text(text)])
    }

    #[tool(description = "Report progress `steps` times, `delay_ms` apart, then finish")]
    async fn slow_progress(
        &self,
        Parameters(SlowProgressArgs { steps, delay_ms }): Parameters<SlowProgressArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> String {
        for i in 1..=steps {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            progress(
                &ctx,
                f64::from(i),
                Some(f64::from(steps)),
                &format!("step {i}"),
            )
            .await;
        }
        format!("done after {steps} steps")
    }

    #[tool(description = "Answer a question with a (pretend) LLM call, recorded as a child span")]
    fn ask_llm(
        &self,
        Parameters(AskArgs { question }): Parameters<AskArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> String {
        let answer = format!("the answer to {question:?} is 42");
        // rmcp hands the tool the HTTP request parts; TrodoLayer put the
        // request's span there.
        let parts = ctx.extensions.get::<http::request::Parts>();
        if let Some(request_span) = parts.and_then(RequestSpan::of) {
            let mut llm = request_span.child(SpanKind::Llm, "llm.answer");
            llm.set_model("demo-model", "demo")
                .set_input(question.as_str())
                .set_output(answer.as_str())
                .set_tokens(question.len() as u64, 9)
                .set_cost(0.00042)
                .set_temperature(0.2);
            llm.finish();
        }
        answer
    }

    #[tool(
        description = "Report \"started\", then wait until the test releases the call (and fail then, if asked)"
    )]
    async fn wait_for_release(
        &self,
        Parameters(WaitArgs {
            fail,
            report_release,
        }): Parameters<WaitArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        progress(&ctx, 0.0, None, "started").await;
        self.started.add_permits(1);
        tokio::select! {
            permit = self.released.acquire() => {
                permit.expect("the semaphore is never closed").forget();
                if report_release {
                    progress(&ctx, 1.0, None, "released").await;
                }
                if fail {
                    return CallToolResult::error(vec![ContentBlock::text("failed once released")]);
                }
                CallToolResult::success(vec![ContentBlock::text("released")])
            }
            // The client sent notifications/cancelled (or a stateless request lost its client).
            () = ctx.ct.cancelled() => CallToolResult::error(vec![ContentBlock::text("cancelled")]),
        }
    }
}

#[tool_handler(router = self.tools)]
impl ServerHandler for DemoTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("trodo-demo", "0.1.0"))
    }
}

/// rmcp's Streamable HTTP service over a fresh [`DemoTools`]; mount it with
/// `Router::new().nest_service("/mcp", svc)`. `keep_alive` is the idle timeout of a
/// session (`LocalSessionManager::session_config.keep_alive`; rmcp's default is
/// `Some(300 s)`, `None` means sessions never expire).
#[allow(dead_code)]
pub fn mcp_service(
    config: StreamableHttpServerConfig,
    keep_alive: Option<Duration>,
) -> StreamableHttpService<DemoTools, LocalSessionManager> {
    mcp_service_with(DemoTools::new(), config, keep_alive)
}

/// Like [`mcp_service`], but every session is served by a clone of `tools`, so the
/// caller's clone can [`release`](DemoTools::release) its `wait_for_release` calls.
pub fn mcp_service_with(
    tools: DemoTools,
    config: StreamableHttpServerConfig,
    keep_alive: Option<Duration>,
) -> StreamableHttpService<DemoTools, LocalSessionManager> {
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = keep_alive;
    StreamableHttpService::new(move || Ok(tools.clone()), Arc::new(sessions), config)
}
