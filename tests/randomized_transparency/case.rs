//! A case: one generated exchange (request, response, how it is
//! delivered and read, whether it is resumed or its session deleted), and
//! what it should make the layer record.

use axum::http::HeaderMap;
use bytes::Bytes;
use http_body::Frame;
use serde_json::json;

use crate::LIMIT;
use crate::generate::{Expected, Rng, Sent, answer, chunks, event_stream, request_body};

/// What the response body is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Empty,
    Json,
    EventStream,
    Text,
}

/// How the response body reaches the layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Delivery {
    /// One full body (`Body::from`), with an exact size hint.
    Full,
    /// A stream whose frames are all ready.
    Ready,
    /// A channel: each frame sent only once the last came out.
    OneAtATime,
}

#[derive(Clone)]
pub(super) struct Case {
    pub(super) number: usize,
    pub(super) session: bool,
    /// Whether the layer knows the session (a ping went first).
    pub(super) known: bool,
    pub(super) sent: Sent,
    /// Whether the request says its body is gzip (it is not: the layer
    /// neither decodes nor reads an encoded body).
    pub(super) encoded: bool,
    pub(super) request: Vec<u8>,
    pub(super) request_chunks: Vec<Bytes>,
    pub(super) status: u16,
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) kind: Kind,
    /// Whether the answer says it is gzip.
    pub(super) answer_encoded: bool,
    answer_session: bool,
    pub(super) response: Vec<Bytes>,
    pub(super) delivery: Delivery,
    trailers: bool,
    pub(super) breaks: bool,
    /// Whether the head declares the body's length.
    declared: bool,
    /// The client drops the body after this many frames.
    pub(super) reads: Option<usize>,
    pub(super) expected: Option<Expected>,
    /// The GET that resumes the stream, if the client resumes it.
    pub(super) resume: Option<Resume>,
    /// Whether the client then deletes the session.
    pub(super) deleted: bool,
}

/// A GET that resumes a call's event stream from `last_id` and brings
/// its answer.
#[derive(Debug, Clone)]
pub(super) struct Resume {
    pub(super) last_id: String,
    pub(super) body: Bytes,
    pub(super) expected: Expected,
}

/// Bodies as (lossy) text, chunk by chunk.
fn texts(chunks: &[Bytes]) -> Vec<std::borrow::Cow<'_, str>> {
    chunks.iter().map(|c| String::from_utf8_lossy(c)).collect()
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("number", &self.number)
            .field("session", &self.session)
            .field("known", &self.known)
            .field("sent", &self.sent)
            .field("encoded", &self.encoded)
            .field("request_chunks", &texts(&self.request_chunks))
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("kind", &self.kind)
            .field("answer_encoded", &self.answer_encoded)
            .field("answer_session", &self.answer_session)
            .field("response", &texts(&self.response))
            .field("delivery", &self.delivery)
            .field("trailers", &self.trailers)
            .field("breaks", &self.breaks)
            .field("declared", &self.declared)
            .field("reads", &self.reads)
            .field("expected", &self.expected)
            .field("resume", &self.resume)
            .field("deleted", &self.deleted)
            .finish_non_exhaustive()
    }
}

impl Case {
    pub(super) fn generate(rng: &mut Rng, number: usize) -> Self {
        let (sent, request) = request_body(rng);
        let request_chunks = chunks(rng, &request);
        let session = rng.chance(80);
        let known = session && rng.chance(50);
        let encoded = rng.chance(4);
        let status = if rng.chance(75) {
            200
        } else {
            rng.pick(&[202, 400, 404, 500, 503])
        };
        let request_id = match &sent {
            Sent::Request { id, .. } => Some(id),
            _ => None,
        };
        let mut headers = Vec::new();
        let mut resume = None;
        let (kind, body, expected) = match rng.below(100) {
            _ if status == 202 && rng.chance(70) => (Kind::Empty, Vec::new(), None),
            0..=39 => {
                let (body, expected) = match request_id {
                    Some(id) if rng.chance(85) => {
                        let (value, fails) = answer(rng, id);
                        let text = value.to_string();
                        let read_whole = text.chars().count() <= 4 * LIMIT;
                        let expected = Expected {
                            text: text.clone(),
                            fails: fails && read_whole,
                            read_whole,
                        };
                        (text.into_bytes(), Some(expected))
                    }
                    _ => (b"{\"jsonrpc\":\"2.0\",\"id\":".to_vec(), None),
                };
                (Kind::Json, body, expected)
            }
            40..=89 => {
                let (body, found, last_id) = event_stream(rng, request_id);
                // A stream that ended without the answer, after an event
                // id: the client resumes it with a GET, which brings the
                // answer (README, "Resumed streams").
                if let (Some(id), None, Some(last_id)) = (request_id, &found, last_id)
                    && !last_id.is_empty()
                    && session
                {
                    let (value, fails) = answer(rng, id);
                    let text = value.to_string();
                    let body = format!("id: {last_id}-1\ndata: {text}\n\n");
                    let read_whole = text.chars().count() <= 4 * LIMIT;
                    resume = Some(Resume {
                        last_id,
                        body: Bytes::from(body),
                        expected: Expected {
                            text,
                            fails: fails && read_whole,
                            read_whole,
                        },
                    });
                }
                (Kind::EventStream, body, found)
            }
            _ => (Kind::Text, b"oops \xff".to_vec(), None),
        };
        let content_type = match kind {
            Kind::Empty => None,
            // Media types are case-insensitive and may have parameters.
            Kind::Json => Some(rng.pick(&[
                "application/json",
                "application/json; charset=utf-8",
                "Application/JSON",
            ])),
            Kind::EventStream => Some(rng.pick(&[
                "text/event-stream",
                "text/event-stream;charset=UTF-8",
                "Text/Event-Stream",
            ])),
            Kind::Text => Some("text/plain"),
        };
        if let Some(content_type) = content_type {
            headers.push(("content-type", content_type.to_owned()));
        }
        // `identity` is no encoding; an answer that says gzip (and is
        // not) is passed on unread.
        let answer_encoded = match rng.below(100) {
            0..=3 => true,
            4..=8 => {
                headers.push(("content-encoding", "identity".to_owned()));
                false
            }
            _ => false,
        };
        if answer_encoded {
            headers.push(("content-encoding", "gzip".to_owned()));
        }
        let answer_session = rng.chance(15);
        if answer_session {
            headers.push(("mcp-session-id", format!("n-{number}")));
        }
        if rng.chance(10) {
            headers.push(("x-served-by", "scripted".to_owned()));
        }
        let delivery = rng.pick(&[Delivery::Full, Delivery::Ready, Delivery::OneAtATime]);
        let response = match delivery {
            Delivery::Full => vec![Bytes::from(body)],
            _ => chunks(rng, &body),
        };
        let streamed = delivery != Delivery::Full;
        let trailers = streamed && rng.chance(5);
        let breaks = streamed && rng.chance(5);
        // A declared length, at which a client (hyper) stops: it drops the
        // body once all of it is sent, without polling it to its end.
        let declared = !trailers && !breaks && rng.chance(if streamed { 25 } else { 50 });
        if declared {
            let length: usize = response.iter().map(Bytes::len).sum();
            headers.push(("content-length", length.to_string()));
        }
        let reads = if declared && rng.chance(50) {
            Some(response.len())
        } else {
            rng.chance(10).then(|| rng.below(response.len() + 1))
        };
        let mut case = Self {
            number,
            session,
            known,
            sent,
            encoded,
            request,
            request_chunks,
            status,
            headers,
            kind,
            answer_encoded,
            answer_session,
            response,
            delivery,
            trailers,
            breaks,
            declared,
            reads,
            expected,
            resume,
            deleted: known && rng.chance(25),
        };
        // A client resumes from the last id it read; the layer, too, knows
        // only the ids that went by.
        case.resume = case.resume.take().filter(|_| {
            case.is_success() && case.all_read() && !case.encoded && !case.answer_encoded
        });
        case
    }

    /// Whether the client read the body to its end, or to the end of its
    /// declared length.
    pub(super) fn all_read(&self) -> bool {
        self.reads.is_none() || self.declared && self.reads == Some(self.response.len())
    }

    /// A ping in the session of case `number`, answered: it makes the
    /// session known (the layer tapes the exchanges of a session it knows
    /// and reads them later) and, as the first exchange, teaches the layer
    /// its MCP endpoint.
    pub(super) fn ping(number: usize) -> Self {
        let request = br#"{"jsonrpc":"2.0","id":"warm-up","method":"ping"}"#.to_vec();
        let answer = Bytes::from_static(br#"{"jsonrpc":"2.0","id":"warm-up","result":{}}"#);
        Self {
            number,
            session: true,
            known: false,
            encoded: false,
            sent: Sent::Request {
                id: json!("warm-up"),
                method: "ping".to_owned(),
                tool: None,
            },
            request_chunks: vec![Bytes::from(request.clone())],
            request,
            status: 200,
            headers: vec![("content-type", "application/json".to_owned())],
            kind: Kind::Json,
            answer_encoded: false,
            answer_session: false,
            response: vec![answer],
            delivery: Delivery::Full,
            trailers: false,
            breaks: false,
            declared: false,
            reads: None,
            expected: None,
            resume: None,
            deleted: false,
        }
    }

    /// The response body's items, as the handler's stream yields them.
    pub(super) fn response_items(&self) -> Vec<Result<Frame<Bytes>, std::io::Error>> {
        let mut items: Vec<_> = self
            .response
            .iter()
            .map(|chunk| Ok(Frame::data(chunk.clone())))
            .collect();
        if self.trailers {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", "abc".parse().unwrap());
            items.push(Ok(Frame::trailers(trailers)));
        }
        if self.breaks {
            items.push(Err(std::io::Error::other("backend died")));
        }
        items
    }

    pub(super) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// How many spans this exchange makes (README, "What is recorded"):
    /// none for a notification or a client's response; none for an
    /// initialize whose answer opens a session; in a session the layer
    /// knows, one unless the server answers 404 (it forgot the session:
    /// the run ends); in a session the layer does not know yet, one for
    /// any 2xx; without a session, one for a JSON-RPC request (in the run
    /// of its run key).
    /// An encoded body is not read: it is no message the layer knows.
    pub(super) fn expected_spans(&self) -> usize {
        let sent = if self.encoded {
            &Sent::Other
        } else {
            &self.sent
        };
        let initialize = matches!(sent, Sent::Request { method, .. } if method == "initialize");
        match sent {
            Sent::Notification | Sent::Response => 0,
            // Into the new session's run, not this case's; a failed one
            // opens none, and goes where any request of the case would.
            Sent::Request { .. } if initialize && self.answer_session && self.is_success() => 0,
            _ if self.known => usize::from(self.status != 404),
            _ if self.session => usize::from(self.is_success()),
            Sent::Request { .. } => 1,
            // Not understood: a request of an unknown method, unless its
            // answer opens a session (it may be an `initialize`).
            Sent::Other if self.unread() && !self.answer_session => 1,
            Sent::Other => 0,
        }
    }

    /// Whether the layer has bytes of the request it cannot read to
    /// understand: it is encoded, or over the 1 Mi characters it reads.
    pub(super) fn unread(&self) -> bool {
        (self.encoded && !self.request.is_empty()) || self.too_large()
    }

    /// Whether the request is over the 1 Mi characters the layer reads to
    /// understand it.
    pub(super) fn too_large(&self) -> bool {
        String::from_utf8_lossy(&self.request).chars().count() > 1 << 20
    }

    /// The conversation ids of this case's runs.
    pub(super) fn conversations(&self) -> [String; 3] {
        let n = self.number;
        [format!("s-{n}"), format!("k-{n}"), format!("n-{n}")]
    }
}
