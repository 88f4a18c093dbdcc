//! The web provider: an HTTP request whose JSON response holds the value.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::json_path::{extract, truncate};
use super::{MetricProvider, ProviderError};
use crate::analysis::{MetricSpec, ProviderSpec};

/// Default request timeout (Argo's).
pub const WEB_DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Measures [`WebMetric`](crate::analysis::WebMetric)s with `reqwest`: GET or POST with
/// headers and a timeout (default 10 s); a non-2xx status or a body that is not JSON is an
/// error; the JSONPath picks the value.
#[derive(Debug, Clone, Default)]
pub struct WebProvider {
    client: reqwest::Client,
}

impl WebProvider {
    /// A provider with a default client.
    pub fn new() -> Self {
        WebProvider::default()
    }

    /// A provider trusting the CA certificates in `pem` (one or more PEM `CERTIFICATE`
    /// blocks) besides the bundled public roots, for servers behind a private or test CA.
    /// It replaces the client (a default one trusting these roots).
    pub fn root_certificates_pem(
        self,
        pem: impl AsRef<[u8]>,
    ) -> Result<Self, crate::RootCertificateError> {
        let roots = crate::https::parse_roots(pem.as_ref())?;
        Ok(WebProvider {
            client: crate::https::client_trusting(&roots)?,
        })
    }

    /// A provider using `client` (proxies, TLS settings).
    pub fn with_client(client: reqwest::Client) -> Self {
        WebProvider { client }
    }
}

#[async_trait]
impl MetricProvider for WebProvider {
    fn kind(&self) -> &str {
        "web"
    }

    async fn measure(
        &self,
        metric: &MetricSpec,
        _args: &BTreeMap<String, String>,
    ) -> Result<Value, ProviderError> {
        let ProviderSpec::Web(web) = &metric.provider else {
            return Err(ProviderError::config(
                "web",
                "metric has no web provider spec",
            ));
        };
        let method = web.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| ProviderError::config("web", format!("method `{method}`: {e}")))?;
        let timeout = web
            .timeout_seconds
            .map(Duration::from_secs)
            .unwrap_or(WEB_DEFAULT_TIMEOUT);
        let mut req = self
            .client
            .request(method.clone(), &web.url)
            .timeout(timeout);
        for h in &web.headers {
            req = req.header(&h.key, &h.value);
        }
        if let Some(body) = &web.body {
            req = req.body(body.clone());
        }
        let target = format!("{method} {}", web.url);
        let resp = req.send().await.map_err(|e| {
            ProviderError::measurement(
                "web",
                format!("{target}: {}", crate::https::error_chain(&e)),
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| {
            ProviderError::measurement(
                "web",
                format!("{target}: reading body: {}", crate::https::error_chain(&e)),
            )
        })?;
        if !status.is_success() {
            return Err(ProviderError::measurement(
                "web",
                format!("{target} returned {status}: {}", truncate(text.trim(), 200)),
            ));
        }
        let doc: Value = serde_json::from_str(text.trim()).map_err(|e| {
            ProviderError::measurement(
                "web",
                format!(
                    "{target}: response is not JSON ({e}): {}",
                    truncate(&text, 200)
                ),
            )
        })?;
        extract(doc, web.json_path.as_deref())
            .map_err(|e| ProviderError::measurement("web", format!("{target}: {e}")))
    }
}
