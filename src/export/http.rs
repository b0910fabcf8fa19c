//! The HTTP sink: POSTs calls to the Trodo ingest API with reqwest.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{Url, redirect};

use super::outcome::Outcome;

/// How long connecting to the ingest API may take (the whole call is
/// bounded by the worker's request timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an answer's body may take once its head came. The head decides
/// what the answer means; the body is read only so that its connection can
/// serve the next call.
const ANSWER_BODY_TIMEOUT: Duration = Duration::from_secs(1);

/// The most of an answer's body read (the ingest API's answers are a few
/// bytes): past it, the connection is closed rather than read on.
const ANSWER_BODY_LIMIT: usize = 16 * 1024;

/// Sends calls to `<api_base><path>` with `X-Trodo-Site-Id`.
#[derive(Debug)]
pub(crate) struct HttpSink {
    /// The client, or why there is none (every call is then rejected with
    /// the reason, and counted).
    client: Result<reqwest::Client, String>,
    /// The ingest API's base URL, parsed once: a call's URL extends its
    /// path rather than parsing the whole URL again (the host's parse
    /// alone is several thousand instructions).
    api_base: Result<Url, String>,
    site_id: String,
}

impl HttpSink {
    /// A sink for one site, through `client` if given (its TLS, proxy and
    /// pool settings apply), else a client of our own (rustls by default).
    pub(crate) fn new(api_base: String, site_id: String, client: Option<reqwest::Client>) -> Self {
        let client = client.map_or_else(own_client, Ok);
        // The config checked the URL; should it not parse all the same,
        // every call is rejected with the reason (and counted), as before.
        let api_base = Url::parse(&api_base)
            .ok()
            .filter(|url| !url.cannot_be_a_base())
            .ok_or_else(|| format!("the ingest API's base URL does not parse: {api_base}"));
        Self {
            client,
            api_base,
            site_id,
        }
    }

    /// `<api_base><path>`, for a `path` of `/`-separated segments.
    fn url(&self, path: &str) -> Result<Url, String> {
        let mut url = self.api_base.clone()?;
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .extend(path.split('/').filter(|segment| !segment.is_empty()));
        }
        Ok(url)
    }

    /// POSTs one call and says what its answer means, from the answer's
    /// head: its body is read aside (see [`drain`]).
    pub(crate) async fn deliver(&self, path: &str, body: Vec<u8>) -> Outcome {
        let client = match &self.client {
            Ok(client) => client,
            Err(detail) => {
                return Outcome::Rejected {
                    detail: detail.clone(),
                };
            }
        };
        let url = match self.url(path) {
            Ok(url) => url,
            Err(detail) => return Outcome::Rejected { detail },
        };
        let sent = client
            .post(url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("X-Trodo-Site-Id", &self.site_id)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(err) if err.is_builder() => {
                return Outcome::Rejected {
                    detail: err.to_string(),
                };
            }
            Err(err) => return Outcome::network_error(err.to_string()),
        };
        if !same_target(response.url(), &url) {
            // An application's client that follows redirects: a POST
            // redirected may have become a GET, whose answer says nothing
            // of the call.
            return Outcome::Rejected {
                detail: format!("the call was redirected to {}", response.url()),
            };
        }
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        tokio::spawn(drain(response));
        Outcome::of_status(status, retry_after.as_deref(), SystemTime::now())
    }
}

/// Whether an answer came from the URL a call was sent to: reqwest takes
/// the credentials out of the URL it sends (as an `authorization` header),
/// and a fragment is never sent, so those do not count.
fn same_target(answered: &Url, sent: &Url) -> bool {
    answered.scheme() == sent.scheme()
        && answered.host_str() == sent.host_str()
        && answered.port_or_known_default() == sent.port_or_known_default()
        && answered.path() == sent.path()
        && answered.query() == sent.query()
}

/// Reads an answer's body, so that its connection can serve the next call:
/// at most [`ANSWER_BODY_LIMIT`] bytes within [`ANSWER_BODY_TIMEOUT`], else
/// the connection is closed. Apart from the call, whose outcome the head
/// decided: an answer that stalls after its head costs a connection, not a
/// call sent again.
async fn drain(mut response: reqwest::Response) {
    let read_all = async {
        let mut read = 0;
        while let Ok(Some(chunk)) = response.chunk().await {
            read += chunk.len();
            if read > ANSWER_BODY_LIMIT {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(ANSWER_BODY_TIMEOUT, read_all).await;
}

/// A client of our own: rustls by default, and redirects not followed (a
/// redirected POST may become a GET, whose answer says nothing of the
/// call; a 3xx is rejected). If it cannot be built (rustls finds no root
/// certificates on a machine without a CA bundle, say), there is none: said
/// at `error`, and every call is rejected with the reason.
fn own_client() -> Result<reqwest::Client, String> {
    built(
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(redirect::Policy::none())
            .build(),
    )
}

/// The client built, or the reason there is none, logged.
fn built(client: reqwest::Result<reqwest::Client>) -> Result<reqwest::Client, String> {
    client.map_err(|err| {
        let mut reason = format!("the HTTP client for the ingest API could not be built: {err}");
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            let _ = write!(reason, ": {cause}");
            source = cause.source();
        }
        tracing::error!(
            "trodo: {reason}; nothing will be delivered (give a client with \
             TrodoConfig::with_http_client)"
        );
        reason
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_goes_to_the_base_url_followed_by_its_path() {
        let url = |base: &str, path: &str| {
            HttpSink::new(base.to_owned(), "site".to_owned(), None)
                .url(path)
                .map(String::from)
        };
        let spans = "/api/sdk/runs/4f1c0e0e-7f7a-4b8e-9a53-0c3b1f7f2d11/spans";
        assert_eq!(
            url("http://127.0.0.1:9000", spans).as_deref(),
            Ok("http://127.0.0.1:9000/api/sdk/runs/4f1c0e0e-7f7a-4b8e-9a53-0c3b1f7f2d11/spans")
        );
        assert_eq!(
            url("https://sdkapi.trodo.ai", "/api/sdk/runs/start").as_deref(),
            Ok("https://sdkapi.trodo.ai/api/sdk/runs/start")
        );
        // A base with a path keeps it, as the config trims its last slash.
        assert_eq!(
            url("https://proxy.example/trodo", "/api/sdk/runs/ingest").as_deref(),
            Ok("https://proxy.example/trodo/api/sdk/runs/ingest")
        );
        assert_eq!(
            url("not a url", "/api/sdk/runs/start"),
            Err("the ingest API's base URL does not parse: not a url".to_owned())
        );
    }

    /// A client that cannot be built (here: no TLS version left to speak;
    /// in the field, rustls without root certificates) is no panic: every
    /// call is rejected with the reason.
    #[cfg(feature = "rustls")]
    #[tokio::test]
    async fn without_a_client_every_call_is_rejected_with_the_reason() {
        use reqwest::tls::Version;
        let failing = reqwest::Client::builder()
            .tls_version_min(Version::TLS_1_3)
            .tls_version_max(Version::TLS_1_2)
            .build();
        let sink = HttpSink {
            client: built(failing),
            ..HttpSink::new("http://127.0.0.1:9".to_owned(), "site".to_owned(), None)
        };
        for _ in 0..2 {
            match sink.deliver("/api/sdk/runs/start", b"{}".to_vec()).await {
                Outcome::Rejected { detail } => assert!(
                    detail.starts_with("the HTTP client for the ingest API could not be built: "),
                    "{detail}"
                ),
                other => panic!("{other:?}"),
            }
        }
    }
}
