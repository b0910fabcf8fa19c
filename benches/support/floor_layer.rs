//! A minimal recording layer, for the overhead bench's
//! `OVERHEAD_LAYER=floor`: it copies every chunk of the request and of the
//! response and, when the response is over (or dropped), hands both copies
//! to another thread. That thread takes them every 5 ms and gives them back
//! to the request path, which frees two for every exchange it hands on,
//! so that no thread frees what another allocated (glibc makes that dear;
//! see the README's Performance section). No parsing, no span, no delivery.
//! It shows what recording costs the server on this machine however little
//! is done, so that `TrodoLayer`'s figures can be read against it.
//!
//! With a burn, the other thread also spins that long (wall-clock) per
//! exchange before it gives the copies back: CPU spent off the request
//! path, as a layer's reading, serialising and delivering would spend it,
//! without touching memory. The bench counts that thread's CPU as the
//! delivery thread's.

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

/// How often the other thread takes what was recorded.
const TAKE_PACE: Duration = Duration::from_millis(5);

/// How many recorded exchanges the request path frees per exchange it
/// hands on: more than one, so that what is given back does not pile up.
const FREED_PER_EXCHANGE: usize = 2;

/// The two copies of one exchange.
type Recorded = (Vec<u8>, Vec<u8>);

/// What the request path and the other thread share.
#[derive(Default)]
pub(crate) struct Handoff {
    /// Handed on by the request path, not yet taken.
    recorded: Mutex<Vec<Recorded>>,
    /// Given back by the other thread, for the request path to free.
    given_back: Mutex<Vec<Recorded>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .expect("not poisoned: nothing panics holding it")
}

/// Copies bodies and hands them to another thread; see the module docs.
#[derive(Clone)]
pub(crate) struct FloorLayer {
    handoff: Arc<Handoff>,
}

impl FloorLayer {
    /// Starts the other thread, named `thread`, which spins `burn` per
    /// exchange it takes.
    pub(crate) fn new(thread: &str, burn: Duration) -> Self {
        let handoff = Arc::new(Handoff::default());
        let shared = Arc::clone(&handoff);
        std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || {
                // Swapped with the handoff's, so that both keep their room.
                let mut taken = Vec::new();
                loop {
                    std::thread::sleep(TAKE_PACE);
                    mem::swap(&mut taken, &mut *lock(&shared.recorded));
                    let exchanges = u32::try_from(taken.len()).unwrap_or(u32::MAX);
                    let until = Instant::now() + burn.saturating_mul(exchanges);
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    lock(&shared.given_back).append(&mut taken);
                }
            })
            .expect("a thread");
        Self { handoff }
    }
}

impl<S> Layer<S> for FloorLayer {
    type Service = FloorService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FloorService {
            inner,
            handoff: Arc::clone(&self.handoff),
        }
    }
}

/// [`FloorLayer`]'s service.
#[derive(Clone)]
pub(crate) struct FloorService<S> {
    inner: S,
    handoff: Arc<Handoff>,
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
            copies: Copies::Request(Arc::clone(&request_copy)),
        });
        FloorFuture {
            inner: self.inner.call(request),
            ends: Some((request_copy, Arc::clone(&self.handoff))),
        }
    }
}

pin_project! {
    /// [`FloorService`]'s future.
    pub(crate) struct FloorFuture<F> {
        #[pin]
        inner: F,
        ends: Option<(Arc<Mutex<Vec<u8>>>, Arc<Handoff>)>,
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
        let (request, handoff) = this.ends.take().expect("polled after ready");
        Poll::Ready(Ok(response.map(|body| CopiedBody {
            body,
            copies: Copies::Response {
                request,
                response: Vec::new(),
                handoff,
            },
        })))
    }
}

/// Where a body's copy goes.
pub(crate) enum Copies {
    /// Shared with the response, which takes it at its end.
    Request(Arc<Mutex<Vec<u8>>>),
    /// Kept until the end, then handed on with the request's.
    Response {
        request: Arc<Mutex<Vec<u8>>>,
        response: Vec<u8>,
        handoff: Arc<Handoff>,
    },
    /// Handed on.
    Done,
}

impl Copies {
    fn extend(&mut self, data: &[u8]) {
        match self {
            Copies::Request(copy) => lock(copy).extend_from_slice(data),
            Copies::Response { response, .. } => response.extend_from_slice(data),
            Copies::Done => {}
        }
    }

    /// The response is over: hands both copies on (once), and frees what
    /// the other thread gave back.
    fn finish(&mut self) {
        let Copies::Response {
            request,
            response,
            handoff,
        } = self
        else {
            return;
        };
        let request = mem::take(&mut *lock(request));
        lock(&handoff.recorded).push((request, mem::take(response)));
        let freed: [Option<Recorded>; FREED_PER_EXCHANGE] = {
            let mut given_back = lock(&handoff.given_back);
            std::array::from_fn(|_| given_back.pop())
        };
        drop(freed);
        *self = Copies::Done;
    }
}

pin_project! {
    /// A body whose chunks are copied as they pass.
    pub(crate) struct CopiedBody<B> {
        #[pin]
        body: B,
        copies: Copies,
    }

    impl<B> PinnedDrop for CopiedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // A body never polled to its end (empty, failed, or dropped).
            this.project().copies.finish();
        }
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
            this.copies.extend(data);
        }
        if frame.is_none() || this.body.is_end_stream() {
            this.copies.finish();
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
