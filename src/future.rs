//! [`ResponseFuture`]: the inner service's future, plus the layer's look at the response head.

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use crate::body::ResponseBody;
use crate::exchange::{Exchange, Failure};

pin_project! {
    /// The response future of [`TrodoService`](crate::TrodoService).
    ///
    /// When the inner service answers, the layer reads the response head
    /// (opening or closing the session's run) and wraps the body; if the
    /// future is dropped first, the client went away and the span says so.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        exchange: Option<Exchange>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(exchange) = this.project().exchange.take() {
                exchange.on_failure(Failure::Cancelled);
            }
        }
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, exchange: Option<Exchange>) -> Self {
        Self { inner, exchange }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let exchange = this.exchange.take();
        Poll::Ready(match result {
            Ok(response) => {
                let recorder = exchange.and_then(|e| e.on_response(&response));
                Ok(response.map(|body| ResponseBody::new(body, recorder)))
            }
            Err(error) => {
                if let Some(exchange) = exchange {
                    exchange.on_failure(Failure::Service);
                }
                Err(error)
            }
        })
    }
}
