//! The HTTP sink: POSTs calls to the Trodo ingest API with reqwest.

use std::time::Duration;

use super::{DeliveryError, IngestCall};

/// How long one HTTP call to the ingest API may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends calls to `<api_base><path>` with `X-Trodo-Site-Id`.
#[derive(Debug)]
pub(crate) struct HttpSink {
    client: reqwest::Client,
    api_base: String,
    site_id: String,
}

impl HttpSink {
    /// A sink for one site.
    pub(crate) fn new(api_base: String, site_id: String) -> Self {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            client,
            api_base,
            site_id,
        }
    }

    /// POSTs one call; a 2xx is success.
    pub(crate) async fn deliver(&self, call: &IngestCall) -> Result<(), DeliveryError> {
        let response = self
            .client
            .post(format!("{}{}", self.api_base, call.path()))
            .header("X-Trodo-Site-Id", &self.site_id)
            .json(&call.body())
            .send()
            .await
            .map_err(|e| DeliveryError::Transient(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(DeliveryError::Transient(format!("HTTP {status}")))
        } else {
            Err(DeliveryError::Rejected(format!("HTTP {status}")))
        }
    }
}
