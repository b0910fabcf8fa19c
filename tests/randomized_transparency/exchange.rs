//! The exchange: a scripted axum handler that answers as a case says and
//! keeps what it read, and the client that sends a case through an app
//! (then resumes its stream or deletes its session) and keeps what it saw.

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Response, StatusCode};
use axum::{Extension, Router};
use bytes::Bytes;
use futures::channel::mpsc;
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, StreamBody};
use tower::ServiceExt;

use crate::case::{Case, Delivery, Resume};

/// What the handler is told to answer, and what it saw of the request.
#[derive(Debug)]
pub(super) struct Script {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Mutex<Option<Body>>,
    seen: Mutex<Vec<Bytes>>,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) async fn scripted(
    Extension(script): Extension<Arc<Script>>,
    request: Request,
) -> Response<Body> {
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("the request body never fails").into_data() {
            locked(&script.seen).push(data);
        }
    }
    let mut response = Response::builder().status(StatusCode::from_u16(script.status).unwrap());
    for (name, value) in &script.headers {
        response = response.header(*name, value);
    }
    let body = locked(&script.body).take().expect("one answer per script");
    response.body(body).unwrap()
}

/// What one side (bare or layered) gave, and what its handler saw.
#[derive(Debug, PartialEq)]
pub(super) struct Seen {
    status: StatusCode,
    headers: HeaderMap,
    size_hint: (u64, Option<u64>),
    end_stream: bool,
    frames: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    error: Option<String>,
    pub(super) request: Vec<Bytes>,
    /// The status and body of the GET that resumed the stream.
    resumed: Option<(StatusCode, Bytes)>,
    /// The status of the DELETE of the session.
    deleted: Option<StatusCode>,
}

/// Runs `case` through `app`, as a client that reads the body frame by
/// frame (and drops it early if the case says so).
pub(super) async fn exchange(app: Router, case: &Case) -> Seen {
    let items = case.response_items();
    let (body, mut outbox) = match case.delivery {
        Delivery::Full => (Body::from(case.response[0].clone()), None),
        Delivery::Ready => (
            Body::new(StreamBody::new(futures::stream::iter(items))),
            None,
        ),
        Delivery::OneAtATime => {
            let (sender, receiver) = mpsc::unbounded();
            (
                Body::new(StreamBody::new(receiver)),
                Some((sender, items.into_iter())),
            )
        }
    };
    let script = Arc::new(Script {
        status: case.status,
        headers: case.headers.clone(),
        body: Mutex::new(Some(body)),
        seen: Mutex::new(Vec::new()),
    });
    let frames = case
        .request_chunks
        .iter()
        .map(|chunk| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone())))
        .collect::<Vec<_>>();
    let mut request = Request::post("/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("x-case", format!("k-{}", case.number))
        .extension(Arc::clone(&script));
    if case.encoded {
        request = request.header("content-encoding", "gzip");
    }
    if case.session {
        request = request
            .header("mcp-session-id", format!("s-{}", case.number))
            .header("mcp-protocol-version", "2025-11-25");
    }
    let request = request
        .body(Body::new(StreamBody::new(futures::stream::iter(frames))))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, mut body) = response.into_parts();
    let hint = body.size_hint();
    let mut seen = Seen {
        status: parts.status,
        headers: parts.headers,
        size_hint: (hint.lower(), hint.upper()),
        end_stream: body.is_end_stream(),
        frames: Vec::new(),
        trailers: None,
        error: None,
        request: Vec::new(),
        resumed: None,
        deleted: None,
    };
    let mut read = 0;
    loop {
        if case.reads == Some(read) {
            break; // the client goes away
        }
        if let Some((sender, items)) = &mut outbox {
            match items.next() {
                Some(item) => sender.unbounded_send(item).unwrap(),
                None => sender.close_channel(),
            }
        }
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => seen.frames.push(data),
                Err(frame) => seen.trailers = frame.into_trailers().ok(),
            },
            Some(Err(error)) => {
                seen.error = Some(error.to_string());
                break;
            }
        }
        read += 1;
    }
    drop(body);
    seen.request = std::mem::take(&mut *locked(&script.seen));
    if let Some(resume) = &case.resume {
        seen.resumed = Some(resumed(app.clone(), case.number, resume).await);
    }
    if case.deleted {
        seen.deleted = Some(deleted(app, case.number).await);
    }
    seen
}

/// The client deletes case `number`'s session: its run ends, counting the
/// spans answered before (some perhaps still waiting to be read).
async fn deleted(app: Router, number: usize) -> StatusCode {
    let script = Arc::new(Script {
        status: 200,
        headers: Vec::new(),
        body: Mutex::new(Some(Body::empty())),
        seen: Mutex::new(Vec::new()),
    });
    let request = Request::delete("/mcp")
        .header("mcp-session-id", format!("s-{number}"))
        .extension(script)
        .body(Body::empty())
        .unwrap();
    app.oneshot(request).await.unwrap().status()
}

/// The client resumes case `number`'s stream with a GET.
async fn resumed(app: Router, number: usize, resume: &Resume) -> (StatusCode, Bytes) {
    let script = Arc::new(Script {
        status: 200,
        headers: vec![("content-type", "text/event-stream".to_owned())],
        body: Mutex::new(Some(Body::from(resume.body.clone()))),
        seen: Mutex::new(Vec::new()),
    });
    let request = Request::get("/mcp")
        .header("accept", "text/event-stream")
        .header("mcp-session-id", format!("s-{number}"))
        .header("mcp-protocol-version", "2025-11-25")
        .header("last-event-id", &resume.last_id)
        .extension(script)
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}
