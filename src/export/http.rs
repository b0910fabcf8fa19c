//! The HTTP sink: POSTs calls to the Trodo ingest API with reqwest.

use std::time::{Duration, SystemTime};

use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use super::outcome::Outcome;

/// How long connecting to the ingest API may take (the whole call is
/// bounded by the worker's request timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends calls to `<api_base><path>` with `X-Trodo-Site-Id`.
#[derive(Debug)]
pub(crate) struct HttpSink {
    client: reqwest::Client,
    api_base: String,
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
        Self {
            client,
            api_base,
            site_id,
        }
    }

    /// POSTs one call and says what its answer means.
    pub(crate) async fn deliver(&self, path: &str, body: Vec<u8>) -> Outcome {
        let sent = self
            .client
            .post(format!("{}{path}", self.api_base))
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
