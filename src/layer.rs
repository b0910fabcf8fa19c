//! [`TrodoLayer`]: the one line a server adds.

use std::sync::Arc;
use tower_layer::Layer;

use crate::config::TrodoConfig;
use crate::service::TrodoService;
use crate::state::{Shared, Trodo};

/// A tower [`Layer`] that records the MCP traffic of the service it wraps as
/// Trodo runs and spans. See the [crate docs](crate) for the run model.
///
/// Not generic and cheap to clone; works with axum's `Router::layer`,
/// `Router::route_layer` and `nest_service`, and with
/// `tower::ServiceBuilder` around any `Service<http::Request<B>>` whose
/// request and response bodies yield `Bytes` (hyper's and axum's do).
/// Layers built from one config share one state.
///
/// ```
/// use axum::{Router, routing::get};
/// use trodo_tower::{TrodoConfig, TrodoLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let app: Router = Router::new()
///     .route("/health", get(|| async { "ok" }))
///     .layer(TrodoLayer::new(TrodoConfig::from_env()?));
/// # Ok(())
/// # }
/// ```
///
/// `Router::layer` wraps each route, and axum then clones the service under
/// the route once more per request (for rmcp's `StreamableHttpService`,
/// 2,000 to 4,000 instructions a call; true of any layer put there). Put
/// around the whole router instead, the layer costs only its own work; it
/// then sees requests before routing, so a span of a non-MCP route is named
/// by its path rather than its route pattern:
///
/// ```no_run
/// use axum::{Router, ServiceExt, response::IntoResponse, routing::get};
/// use std::net::SocketAddr;
/// use tower::ServiceBuilder;
/// use trodo_tower::{TrodoConfig, TrodoLayer};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let router = Router::new().route("/health", get(|| async { "ok" }));
/// let app = ServiceBuilder::new()
///     .map_response(IntoResponse::into_response) // back to axum's body
///     .layer(TrodoLayer::new(TrodoConfig::from_env()?))
///     .service(router);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let app = ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<SocketAddr>(app);
/// axum::serve(listener, app).await?;
/// # Ok(())
/// # }
/// ```
///
/// Keep the layer inside any compression layer, so that it reads the
/// bodies as the server wrote them: it does not decode a compressed body,
/// and keeps none of it (the span says `http.response.content_encoding`).
/// With axum, a later `.layer(...)` wraps the earlier ones:
///
/// ```
/// use axum::{Router, routing::get};
/// use tower_http::compression::CompressionLayer;
/// use trodo_tower::{TrodoConfig, TrodoLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let app: Router = Router::new()
///     .route("/mcp", get(|| async { "an MCP service here" }))
///     .layer(TrodoLayer::new(TrodoConfig::from_env()?))
///     .layer(CompressionLayer::new()); // outermost: compresses what the layer read
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct TrodoLayer {
    shared: Arc<Shared>,
}

impl TrodoLayer {
    /// A layer with the given settings. Delivery starts now, on a thread of
    /// its own (`trodo-export`); the idle sweep runs as a background task on
    /// the Tokio runtime, started now if one is running, else on the first
    /// request, and again on a later request if that runtime was dropped.
    /// With a session store, the store's task runs on the runtime of the
    /// first sweep for good: build such a layer on the runtime that serves.
    pub fn new(config: TrodoConfig) -> Self {
        Self {
            shared: Shared::of(&config),
        }
    }

    /// The handle on this layer's state: flush, shutdown, counters.
    pub fn trodo(&self) -> Trodo {
        Trodo {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> Layer<S> for TrodoLayer {
    type Service = TrodoService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrodoService::new(inner, Arc::clone(&self.shared))
    }
}
