//! The least a layer that records bodies must do, for the overhead bench's
//! `OVERHEAD_LAYER=floor`: copy every chunk of the request and of the
//! response, and when the response is over hand both copies to another
//! thread, which drops them every 5 ms. No parsing, no span, no delivery.
//! It measures what any recording layer costs the server on this machine,
//! however little it does, so that `TrodoLayer`'s figures can be read
//! against it. With a burn, the other thread also spins that long per
//! exchange: CPU spent off the request path, as a layer's reading,
//! serialising and delivering would spend it, without touching memory.

use std::mem;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// How often the other thread drops what was recorded.
const DROP_PACE: Duration = Duration::from_millis(5);

/// The two copies of one exchange.
type Recorded = (Vec<u8>, Vec<u8>);

/// Copies bodies and hands them to a thread that drops them.
#[derive(Clone)]
pub(crate) struct FloorLayer {
    recorded: Arc<Mutex<Vec<Recorded>>>,
}

impl FloorLayer {
    /// Starts the thread, named `thread`, that drops what is recorded,
    /// spinning `burn` per exchange first.
    pub(crate) fn new(thread: &str, burn: Duration) -> Self {
        let recorded: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let taken = Arc::clone(&recorded);
        std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || {
                loop {
                    std::thread::sleep(DROP_PACE);
                    let batch = mem::take(&mut *taken.lock().expect("not poisoned"));
                    let until = Instant::now() + burn * batch.len() as u32;
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    drop(batch);
                }
            })
            .expect("a thread");
        Self { recorded }
    }
}

impl<S> Layer<S> for FloorLayer {
    type Service = FloorService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FloorService {
            inner,
            recorded: Arc::clone(&self.recorded),
        }
    }
}

/// [`FloorLayer`]'s service.
#[derive(Clone)]
pub(crate) struct FloorService<S> {
    inner: S,
    recorded: Arc<Mutex<Vec<Recorded>>>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for FloorService<S>
where
    S: Service<Request<CopiedBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<CopiedBody<ResBody>>;
    type Error = S::Error;
    type Future = FloorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let request_copy: Arc<Mutex<Vec<u8>>> = Arc::default();
        let request = request.map(|body| CopiedBody {
            body,
            copy: Copy::Request(Arc::clone(&request_copy)),
        });
        FloorFuture {
            inner: self.inner.call(request),
            ends: Some((request_copy, Arc::clone(&self.recorded))),
        }
    }
}

pin_project! {
    /// [`FloorService`]'s future.
    pub(crate) struct FloorFuture<F> {
        #[pin]
        inner: F,
        ends: Option<(Arc<Mutex<Vec<u8>>>, Arc<Mutex<Vec<Recorded>>>)>,
    }
}

impl<F, B, E> Future for FloorFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<CopiedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let (request, recorded) = this.ends.take().expect("polled after ready");
        Poll::Ready(Ok(response.map(|body| CopiedBody {
            body,
            copy: Copy::Response {
                request,
                response: Vec::new(),
                recorded,
            },
        })))
    }
}

/// Where a body's copy goes.
pub(crate) enum Copy {
    /// Shared with the response, which takes it at its end.
    Request(Arc<Mutex<Vec<u8>>>),
    /// Kept until the end, then handed on with the request's.
    Response {
        request: Arc<Mutex<Vec<u8>>>,
        response: Vec<u8>,
        recorded: Arc<Mutex<Vec<Recorded>>>,
    },
    /// Handed on.
    Done,
}

impl Copy {
    fn extend(&mut self, data: &[u8]) {
        match self {
            Copy::Request(copy) => copy.lock().expect("not poisoned").extend_from_slice(data),
            Copy::Response { response, .. } => response.extend_from_slice(data),
            Copy::Done => {}
        }
    }

    /// The response is over: hands both copies on.
    fn finish(&mut self) {
        if let Copy::Response {
            request,
            response,
            recorded,
        } = self
        {
            let request = mem::take(&mut *request.lock().expect("not poisoned"));
            let response = mem::take(response);
            recorded
                .lock()
                .expect("not poisoned")
                .push((request, response));
            *self = Copy::Done;
        }
    }
}

pin_project! {
    /// A body whose chunks are copied as they pass.
    pub(crate) struct CopiedBody<B> {
        #[pin]
        body: B,
        copy: Copy,
    }
}

impl<B: Body<Data = Bytes>> Body for CopiedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.body.as_mut().poll_frame(cx));
        let data = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref());
        if let Some(data) = data {
            this.copy.extend(data);
        }
        if frame.is_none() || this.body.is_end_stream() {
            this.copy.finish();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
