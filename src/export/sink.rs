//! Where the worker delivers calls.

use super::outcome::Outcome;
use super::{ConsoleSink, HttpSink};

/// The destination of calls: the ingest API, the console, or (in tests) a script.
#[derive(Debug)]
pub(crate) enum Sink {
    /// The Trodo ingest API.
    Http(HttpSink),
    /// Standard output, one line per call.
    Console(ConsoleSink),
    /// Records calls and answers them as a test says.
    #[cfg(test)]
    Script(std::sync::Arc<super::script::Script>),
}

impl Sink {
    /// Delivers one call: `POST <path>` with a JSON `body`.
    pub(crate) async fn deliver(&self, path: &str, body: Vec<u8>) -> Outcome {
        match self {
            Self::Http(sink) => sink.deliver(path, body).await,
            Self::Console(sink) => {
                sink.deliver(path, &body);
                Outcome::Delivered
            }
            #[cfg(test)]
            Self::Script(script) => script.deliver(path, body).await,
        }
    }
}
