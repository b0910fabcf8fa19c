//! Run with: cargo run --example demo
//!
//! The whole thing in one command, without a Trodo account: a recording
//! stand-in for the Trodo ingest API, the demo MCP server of
//! `examples/mcp_server.rs` behind [`TrodoLayer`] sending to it, and a real
//! rmcp client session against that server. At the end it prints the run and
//! spans the ingest API received.
//!
//! `RUST_LOG` sets the log filter (logs go to stderr; default
//! `warn,rmcp=error`, as the rmcp client warns about the expected error of
//! calling a tool that does not exist).

use std::time::Duration;

use anyhow::Context as _;
use rmcp::{
    ClientHandler, RoleClient, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
        ProgressNotificationParam,
    },
    service::NotificationContext,
    transport::StreamableHttpClientTransport,
};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing_subscriber::EnvFilter;
use trodo_tower::{TrodoConfig, TrodoLayer};

#[path = "support/ingest.rs"]
mod ingest;
#[path = "support/server.rs"]
mod server;
#[path = "support/tools.rs"]
mod tools;

use ingest::RecordingIngest;

/// How long to wait for the run's end to reach the ingest server.
const INGEST_WAIT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,rmcp=error")),
        )
        .with_writer(std::io::stderr)
        .init();

    // 1. The recording ingest server and the MCP server that sends to it.
    let ingest = RecordingIngest::start().await?;
    let config = TrodoConfig::new()
        .with_site_id("demo-site")?
        .with_api_base(&ingest.base_url())?;
    let layer = TrodoLayer::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/mcp", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(
        listener,
        layer,
        server::McpOptions::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    println!("recording ingest API on {}", ingest.base_url());
    println!(
        "MCP server on {url} (trodo: sending to {})",
        ingest.base_url()
    );

    // 2. A real rmcp client session.
    let client = DemoClient::default()
        .serve(StreamableHttpClientTransport::from_uri(url))
        .await
        .context("initialize")?;
    if let Some(info) = client.peer_info() {
        let server = info
            .server_info
            .as_ref()
            .map_or_else(|| "?".to_owned(), |s| format!("{} {}", s.name, s.version));
        println!(
            "initialize       -> server {server}, protocol {}",
            info.protocol_version
        );
    }

    let tools = client.list_tools(None).await.context("tools/list")?;
    let names: Vec<&str> = tools.tools.iter().map(|t| &*t.name).collect();
    println!("tools/list       -> {}", names.join(", "));

    let echo = call(&client, "echo", json!({"text": "hello, trodo"})).await?;
    println!("echo             -> {}", text(&echo));

    let sum = call(&client, "add", json!({"a": 2, "b": 40})).await?;
    println!("add 2 + 40       -> {}", text(&sum));

    // The tool records its (pretend) LLM call as a child span of the request.
    let asked = call(&client, "ask_llm", json!({"question": "what is 6 x 7?"})).await?;
    println!("ask_llm          -> {}", text(&asked));

    println!("slow_progress    ...");
    let slow = call(
        &client,
        "slow_progress",
        json!({"steps": 3, "delay_ms": 50}),
    )
    .await?;
    println!("slow_progress    -> {}", text(&slow));

    let failed = call(&client, "fail", json!({})).await?;
    println!(
        "fail             -> isError: {}, {:?}",
        failed.is_error.unwrap_or(false),
        text(&failed)
    );

    match call(&client, "no_such_tool", json!({})).await {
        Ok(result) => println!("no_such_tool     -> unexpected success: {}", text(&result)),
        Err(err) => println!("no_such_tool     -> error, as expected: {err:#}"),
    }

    client.cancel().await.context("closing the client")?;
    println!("close            -> session ended (the client sent DELETE)");

    // 3. What the ingest API received, once the run's end arrived.
    ingest
        .wait_until(INGEST_WAIT, |got| {
            got.iter()
                .any(|r| r.run_path().is_some_and(|(_, action)| action == "end"))
        })
        .await?;
    println!("\nThe Trodo ingest API received:\n");
    print!("{}", ingest.render_tree());

    let _ = stop.send(());
    server.await??;
    Ok(())
}

/// Calls a tool with JSON arguments.
async fn call(
    client: &rmcp::service::RunningService<RoleClient, DemoClient>,
    name: &'static str,
    args: Value,
) -> anyhow::Result<CallToolResult> {
    let Value::Object(args) = args else {
        anyhow::bail!("tool arguments must be a JSON object");
    };
    let params = CallToolRequestParams::new(name).with_arguments(args);
    Ok(client.call_tool(params).await?)
}

/// The text blocks of a tool result, joined.
fn text(result: &CallToolResult) -> String {
    let texts: Vec<&str> = result
        .content
        .iter()
        .filter_map(|block| block.as_text())
        .map(|t| t.text.as_str())
        .collect();
    texts.join(" ")
}

/// The demo's MCP client: prints the progress notifications it receives.
#[derive(Debug, Clone)]
struct DemoClient {
    info: ClientConfig,
}

impl Default for DemoClient {
    fn default() -> Self {
        Self {
            info: ClientConfig::new(
                ClientCapabilities::default(),
                Implementation::new("trodo-demo-client", "0.1.0"),
            ),
        }
    }
}

impl ClientHandler for DemoClient {
    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let total = params.total.map(|t| format!("/{t}")).unwrap_or_default();
        let message = params.message.as_deref().unwrap_or("");
        println!("  progress       <- {}{total} {message}", params.progress);
    }
}
