//! The body wrappers: every frame passes through untouched while a bounded
//! copy is taken on the side.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use crate::api::RequestSpan;
use crate::fence::{Stage, fenced};
use crate::recorder::BodyEnd;
use crate::watch::Watch;

pin_project! {
    /// The request body as the inner service sees it: the same frames, in the
    /// same order, with the same timing; the layer keeps the first
    /// characters of it (up to the capture limit) as the span's input.
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        // The request's span, whose input the body's bytes are.
        span: Option<RequestSpan>,
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn new(inner: B, span: Option<RequestSpan>) -> Self {
        Self { inner, span }
    }

    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: fmt::Debug> fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let Some(span) = this.span.as_ref() else {
            return Poll::Ready(frame);
        };
        let kept = match &frame {
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) => fenced(Stage::RequestBody, || span.input().push(data)),
                None => Some(()),
            },
            // Seen to its end: an empty body is known to be, not merely unread.
            None => fenced(Stage::RequestBody, || span.input().end()),
            Some(Err(_)) => Some(()),
        };
        if kept.is_none() {
            *this.span = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// The response body as the client receives it: the inner service's
    /// frames, untouched and unbuffered. The layer reads a bounded copy to
    /// find the JSON-RPC response (or, in a session it knows, keeps the
    /// frames for its delivery thread to read) and ends the span when it
    /// was seen, when the body ends or fails, or when it is dropped early
    /// (the client went away).
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        // Boxed inside: the body stays small (axum boxes it, hyper moves
        // it), and so does a pass-through layer's.
        watch: Option<Watch>,
        // The bytes the head (or an exact size hint) promised and the body
        // has not passed yet. A consumer stops polling once none are left
        // (hyper, by `content-length`; nothing at all for a HEAD request or
        // a 204), so a drop then is the body's end, not the client going
        // away.
        unsent: Option<u64>,
    }

    impl<B> PinnedDrop for ResponseBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(watch) = this.watch.take() {
                let all_sent = *this.unsent == Some(0);
                end(watch, if all_sent { BodyEnd::Complete } else { BodyEnd::Dropped });
            }
        }
    }
}

impl<B: Body> ResponseBody<B> {
    /// `inner` watched by `watch`; `declared_len`: the bytes its head promises.
    pub(crate) fn new(inner: B, watch: Option<Watch>, declared_len: Option<u64>) -> Self {
        // A body that is already over (e.g. a 202 with no content) will not be polled.
        let watch = match watch {
            Some(watch) if inner.is_end_stream() => {
                end(watch, BodyEnd::Complete);
                None
            }
            other => other,
        };
        // Without a `content-length`, hyper takes the length from an exact
        // size hint, and stops there as well.
        let unsent = declared_len.or_else(|| inner.size_hint().exact());
        Self {
            inner,
            watch,
            unsent,
        }
    }
}

impl<B: fmt::Debug> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(unsent) = this.unsent {
                        *unsent = unsent.saturating_sub(data.len() as u64);
                    }
                    if let Some(watch) = this.watch.take() {
                        *this.watch = fenced(Stage::ResponseBody, || watch.on_data(data)).flatten();
                    }
                }
                // The consumer may not poll again once the length is
                // reached, nor after trailers (which end a body).
                if (this.inner.is_end_stream() || frame.is_trailers())
                    && let Some(watch) = this.watch.take()
                {
                    end(watch, BodyEnd::Complete);
                }
            }
            Some(Err(_)) => {
                if let Some(watch) = this.watch.take() {
                    end(watch, BodyEnd::Broke);
                }
            }
            None => {
                if let Some(watch) = this.watch.take() {
                    end(watch, BodyEnd::Complete);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Ends `watch` as `how`, behind the [fence](crate::fence).
fn end(watch: Watch, how: BodyEnd) {
    fenced(Stage::BodyEnd, || watch.end(how));
}
