//! [`SpanKindLayer`]: sets the span kind of the routes it is applied to.

use http::Response;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tower_layer::Layer;
use tower_service::Service;

use crate::span_kind::SpanKind;

/// The span kind a [`SpanKindLayer`] puts on its responses, read by the
/// [`TrodoLayer`](crate::TrodoLayer) outside it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteSpanKind(pub(crate) SpanKind);

/// Sets the kind of the spans of the routes it wraps, over every other rule.
///
/// Apply it with axum's `route_layer` (or `layer` on a sub-router) *inside*
/// the [`TrodoLayer`](crate::TrodoLayer): it marks the response, and the
/// Trodo layer reads the mark.
///
/// ```
/// use axum::{Router, routing::post};
/// use trodo_tower::{SpanKind, SpanKindLayer, TrodoConfig, TrodoLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let app: Router = Router::new()
///     .route("/search", post(|| async { "[]" }))
///     .route_layer(SpanKindLayer::new(SpanKind::Retrieval))
///     .layer(TrodoLayer::new(TrodoConfig::new()));
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct SpanKindLayer {
    kind: SpanKind,
}

impl SpanKindLayer {
    /// Marks the wrapped routes' spans as `kind`.
    pub const fn new(kind: SpanKind) -> Self {
        Self { kind }
    }
}

impl<S> Layer<S> for SpanKindLayer {
    type Service = SetSpanKind<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SetSpanKind {
            inner,
            kind: self.kind,
        }
    }
}

/// The service of [`SpanKindLayer`].
#[derive(Debug, Clone)]
pub struct SetSpanKind<S> {
    inner: S,
    kind: SpanKind,
}

impl<S, Req, B> Service<Req> for SetSpanKind<S>
where
    S: Service<Req, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = SetSpanKindFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        SetSpanKindFuture {
            inner: self.inner.call(request),
            kind: self.kind,
        }
    }
}

pin_project! {
    /// The response future of [`SetSpanKind`].
    #[derive(Debug)]
    pub struct SetSpanKindFuture<F> {
        #[pin]
        inner: F,
        kind: SpanKind,
    }
}

impl<F, B, E> Future for SetSpanKindFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if let Ok(response) = &mut result {
            response.extensions_mut().insert(RouteSpanKind(*this.kind));
        }
        Poll::Ready(result)
    }
}
