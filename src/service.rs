//! [`TrodoService`]: the middleware itself.

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

use crate::api::RequestSpan;
use crate::body::{RequestBody, ResponseBody};
use crate::exchange::Exchange;
use crate::fence::{Stage, fenced};
use crate::future::ResponseFuture;
use crate::state::Shared;

/// The service [`TrodoLayer`](crate::TrodoLayer) wraps around an inner
/// service: it answers exactly what the inner service answers and records
/// the exchange on the side. See the [crate docs](crate).
#[derive(Clone)]
pub struct TrodoService<S> {
    inner: S,
    shared: Arc<Shared>,
    /// With the layer switched off: the span every request gets, which
    /// records nothing (shared, so that switched off costs no allocation).
    switched_off: Option<RequestSpan>,
}

impl<S> TrodoService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        let switched_off =
            (!shared.settings.enabled).then(|| RequestSpan::switched_off(Arc::clone(&shared)));
        Self {
            inner,
            shared,
            switched_off,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for TrodoService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrodoService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for TrodoService<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Switched off, or shut down (when nothing more is sent): passed
        // through, so no run opens that no sweep would end.
        if self.switched_off.is_some() || self.shared.is_shut_down() {
            return self.pass_through(request);
        }
        self.shared.start_background();
        let (mut parts, body) = request.into_parts();
        let shared = &self.shared;
        let empty_body = body.is_end_stream();
        let Some(exchange) = fenced(Stage::RequestHead, || {
            Exchange::new(Arc::clone(shared), &mut parts, empty_body)
        }) else {
            return self.pass_through(Request::from_parts(parts, body));
        };
        let body = RequestBody::new(body, Some(exchange.request_span()));
        ResponseFuture::new(
            self.inner.call(Request::from_parts(parts, body)),
            Some(exchange),
        )
    }
}

impl<S> TrodoService<S> {
    /// Calls the inner service with `request` unrecorded; its handlers
    /// still find a [`RequestSpan`], one that records nothing.
    fn pass_through<ReqBody>(&mut self, request: Request<ReqBody>) -> ResponseFuture<S::Future>
    where
        S: Service<Request<RequestBody<ReqBody>>>,
    {
        let span = match &self.switched_off {
            Some(span) => span.clone(),
            None => RequestSpan::switched_off(Arc::clone(&self.shared)),
        };
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(span);
        let request = Request::from_parts(parts, RequestBody::new(body, None));
        ResponseFuture::new(self.inner.call(request), None)
    }
}
