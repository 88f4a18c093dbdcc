//! [`ApiserverBinder`]: creates Bindings over HTTPS with a small, explicit client
//! configuration (base URL, bearer token, CA bundle), the least an extender needs from the
//! API server. A host with a full Kubernetes client implements [`Binder`] on it instead.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use serde_json::Value;

use crate::extender::binder::{BindError, Binder, PodBinding};

/// How to reach the API server: `https://host:port` (or `http://` for a test server), a
/// bearer token (a ServiceAccount's, allowed to `create` `pods/binding`), the cluster's CA
/// bundle (PEM), a request timeout (default 5 s, kube-scheduler's extender timeout) and whether
/// to offer HTTP/2 (default yes).
#[derive(Clone)]
#[non_exhaustive]
#[must_use]
pub struct ApiserverConfig {
    /// The API server's base URL.
    pub base_url: String,
    /// The bearer token sent as `Authorization: Bearer …`.
    pub bearer_token: Option<String>,
    /// CA certificates (PEM) trusted for the API server, instead of the built-in roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The timeout of one request.
    pub timeout: Duration,
    /// Offer HTTP/2 (ALPN `h2`, which kube-apiserver accepts): concurrent bindings then share
    /// one TLS connection instead of each opening its own HTTP/1.1 connection and handshake
    /// when the kept-alive ones are busy. False: HTTP/1.1 only. Behind a real kube-scheduler
    /// v1.20.2 the two gave the same pods/s (`BENCHMARKS.md`).
    pub http2: bool,
}

impl std::fmt::Debug for ApiserverConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiserverConfig")
            .field("base_url", &self.base_url)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("timeout", &self.timeout)
            .field("http2", &self.http2)
            .finish()
    }
}

impl ApiserverConfig {
    /// The API server at `base_url`, without a token or CA bundle.
    pub fn new(base_url: impl Into<String>) -> ApiserverConfig {
        ApiserverConfig {
            base_url: base_url.into(),
            bearer_token: None,
            ca_pem: None,
            timeout: Duration::from_secs(5),
            http2: true,
        }
    }

    /// Sends `token` as the bearer token (surrounding whitespace, such as a token file's
    /// final newline, is dropped).
    pub fn bearer_token(mut self, token: impl Into<String>) -> ApiserverConfig {
        self.bearer_token = Some(token.into().trim().to_owned());
        self
    }

    /// Trusts only the CA certificates in `pem` for the API server.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> ApiserverConfig {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Sets the request timeout.
    pub fn timeout(mut self, timeout: Duration) -> ApiserverConfig {
        self.timeout = timeout;
        self
    }

    /// Whether to offer HTTP/2 (default true; see the `http2` field).
    pub fn http2(mut self, yes: bool) -> ApiserverConfig {
        self.http2 = yes;
        self
    }

    /// Builds the binder.
    ///
    /// # Errors
    ///
    /// [`BindError::Config`] for a URL that is not `http(s)://…` or a CA bundle without a
    /// usable certificate.
    pub fn build(self) -> Result<ApiserverBinder, BindError> {
        let base = self.base_url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base).map_err(|e| BindError::Config {
            what: format!("apiserver URL `{}`", self.base_url),
            source: Some(Box::new(e)),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(BindError::Config {
                what: format!(
                    "apiserver URL `{}` is not http(s)://host[:port]",
                    self.base_url
                ),
                source: None,
            });
        }
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true);
        if !self.http2 {
            builder = builder.http1_only();
        }
        if let Some(pem) = &self.ca_pem {
            let certs =
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| BindError::Config {
                    what: "the apiserver CA bundle is not PEM".into(),
                    source: Some(Box::new(e)),
                })?;
            if certs.is_empty() {
                return Err(BindError::Config {
                    what: "the apiserver CA bundle holds no certificate".into(),
                    source: None,
                });
            }
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| BindError::Config {
            what: "cannot build the HTTP client".into(),
            source: Some(Box::new(e)),
        })?;
        Ok(ApiserverBinder {
            client,
            base_url: Arc::from(base),
            token: self.bearer_token.map(Arc::from),
        })
    }
}

/// Creates Bindings by POSTing them to the API server (see [`ApiserverConfig`]). Cheap to
/// clone; connections are kept alive between bindings.
#[derive(Clone)]
pub struct ApiserverBinder {
    client: reqwest::Client,
    base_url: Arc<str>,
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for ApiserverBinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiserverBinder")
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ApiserverBinder {
    /// The API server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
}

#[async_trait]
impl Binder for ApiserverBinder {
    async fn bind(&self, binding: &PodBinding) -> Result<(), BindError> {
        let url = format!("{}{}", self.base_url, binding.path());
        let mut request = self
            .client
            .post(&url)
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&binding.to_json());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let unreachable = |e: reqwest::Error| BindError::Unreachable {
            server: self.base_url.to_string(),
            pod: binding.pod_key(),
            node: binding.node.clone(),
            source: Box::new(e),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(BindError::Rejected {
            server: self.base_url.to_string(),
            pod: binding.pod_key(),
            node: binding.node.clone(),
            status: status.as_u16(),
            message: status_message(&body),
        })
    }
}

/// The message of an API server error body: its `Status.message` (with the reason), else the
/// body itself, shortened.
fn status_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let text = |key: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    match (text("message"), text("reason")) {
        (Some(m), Some(r)) => format!("{m} ({r})"),
        (Some(m), None) => m.to_owned(),
        _ => {
            let body = body.trim();
            if body.is_empty() {
                "no body".to_owned()
            } else {
                body.chars().take(300).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bodies_become_messages() {
        let conflict = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pod game-0 is already assigned to node \"node-1\"","reason":"Conflict","code":409}"#;
        assert_eq!(
            status_message(conflict),
            "pod game-0 is already assigned to node \"node-1\" (Conflict)"
        );
        assert_eq!(status_message("upstream timeout\n"), "upstream timeout");
        assert_eq!(status_message(""), "no body");
    }
}
