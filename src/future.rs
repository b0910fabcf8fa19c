//! [`ResponseFuture`]: the inner service's future, plus the layer's look at the response head.

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use crate::body::ResponseBody;
use crate::exchange::{Exchange, Failure, Head, Pending, ResponseHead};
use crate::fence::{Stage, fenced};
use crate::tape::Tape;
use crate::watch::Watch;

pin_project! {
    /// The response future of [`TrodoService`](crate::TrodoService).
    ///
    /// When the inner service answers, the layer reads the response head
    /// (opening or closing the session's run) and wraps the body; if the
    /// future is dropped first, the client went away and the span says so.
    ///
    /// With a session store, the head of a response in a session this
    /// process does not know (or of a new session) may wait for the store,
    /// at most the store timeout; see the [store docs](crate::store).
    pub struct ResponseFuture<F>
    where
        F: Future,
    {
        #[pin]
        inner: F,
        // Boxed, as the state of the response body is: the future stays
        // small (it is moved into axum's box and through tower's
        // combinators), and so does a pass-through layer's.
        exchange: Option<Box<Exchange>>,
        // The inner service's answer while its head waits for the session store.
        waiting: Option<Box<(Pending, ResponseHead, F::Output)>>,
    }

    impl<F> PinnedDrop for ResponseFuture<F>
    where
        F: Future,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(exchange) = this.exchange.take() {
                fenced(Stage::ResponseHead, || exchange.on_failure(Failure::Cancelled));
            }
            if let Some(waiting) = this.waiting.take() {
                fenced(Stage::ResponseHead, || waiting.0.cancel());
            }
        }
    }
}

impl<F: Future> ResponseFuture<F> {
    pub(crate) fn new(inner: F, exchange: Option<Exchange>) -> Self {
        Self {
            inner,
            exchange: exchange.map(Box::new),
            waiting: None,
        }
    }
}

impl<F: Future> fmt::Debug for ResponseFuture<F> {
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
        let mut this = self.project();
        loop {
            if let Some(mut waiting) = this.waiting.take() {
                let (pending, head, answer) = &mut *waiting;
                let watch = match answer {
                    Ok(_) => match fenced(Stage::ResponseHead, || pending.poll_settle(cx, head)) {
                        Some(Poll::Ready(watch)) => watch,
                        Some(Poll::Pending) => {
                            *this.waiting = Some(waiting);
                            return Poll::Pending;
                        }
                        None => None,
                    },
                    Err(_) => None,
                };
                let (_, head, answer) = *waiting;
                return Poll::Ready(
                    answer.map(|r| r.map(|body| ResponseBody::new(body, watch, head.declared_len))),
                );
            }
            let result = ready!(this.inner.as_mut().poll(cx));
            let exchange = this.exchange.take();
            match result {
                Ok(response) => {
                    let looked = exchange.and_then(|exchange| {
                        fenced(Stage::ResponseHead, || look_at_head(exchange, &response))
                    });
                    let (watch, declared_len) = match looked {
                        Some(Looked::Watch(watch, declared_len)) => (watch, declared_len),
                        Some(Looked::Wait(pending, head)) => {
                            *this.waiting = Some(Box::new((pending, head, Ok(response))));
                            continue;
                        }
                        None => (None, None),
                    };
                    return Poll::Ready(Ok(
                        response.map(|body| ResponseBody::new(body, watch, declared_len))
                    ));
                }
                Err(error) => {
                    if let Some(exchange) = exchange {
                        fenced(Stage::ResponseHead, || {
                            exchange.on_failure(Failure::Service)
                        });
                    }
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
}

/// What the layer made of a response head.
enum Looked {
    /// Watch the body with this (or not at all); the bytes its head declares.
    Watch(Option<Watch>, Option<u64>),
    /// Wait for the session store first (see [`Pending`]).
    Wait(Pending, ResponseHead),
}

/// Reads the response head of `exchange`: the body is taped for the
/// backlog, watched live, or first waits for the session store.
fn look_at_head<B>(mut exchange: Box<Exchange>, response: &Response<B>) -> Looked {
    let mut head = ResponseHead::of(response);
    if exchange.is_head_request() {
        head = head.for_head_request();
    }
    let declared_len = head.declared_len;
    if let Some(request_bytes) = exchange.tapes(&head, response) {
        tracing::trace!("trodo: the exchange is taped, to be read on the delivery thread");
        let tape = Tape::new(*exchange, head, request_bytes);
        return Looked::Watch(Some(Watch::Taped(tape)), declared_len);
    }
    let head = exchange.with_session(head, response);
    match exchange.on_response(&head) {
        Head::Wait(pending) => Looked::Wait(pending, head),
        decided => Looked::Watch(decided.into_watch(), declared_len),
    }
}
