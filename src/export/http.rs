//! The HTTP sink: POSTs calls to the Trodo ingest API with reqwest.

use std::time::{Duration, SystemTime};

use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use super::outcome::Outcome;

/// How long connecting to the ingest API may take (the whole call is
/// bounded by the worker's request timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends calls to `<api_base><path>` with `X-Trodo-Site-Id`.
#[derive(Debug)]
pub(crate) struct HttpSink {
    client: reqwest::Client,
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
        let client = client.unwrap_or_else(|| {
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .build()
                .unwrap_or_default()
        });
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

    /// POSTs one call and says what its answer means.
    pub(crate) async fn deliver(&self, path: &str, body: Vec<u8>) -> Outcome {
        let url = match self.url(path) {
            Ok(url) => url,
            Err(detail) => return Outcome::Rejected { detail },
        };
        let sent = self
            .client
            .post(url)
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
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Read the (small) answer so that the connection can be reused.
        let _ = response.bytes().await;
        Outcome::of_status(status, retry_after.as_deref(), SystemTime::now())
    }
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
}
