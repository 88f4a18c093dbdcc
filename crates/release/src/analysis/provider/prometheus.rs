//! The prometheus provider: an instant query through the HTTP API.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::json_path::truncate;
use super::{MetricProvider, ProviderError};
use crate::analysis::{MetricSpec, ProviderSpec};

/// Default query timeout (Argo's).
pub const PROMETHEUS_DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Measures [`PrometheusMetric`](crate::analysis::PrometheusMetric)s with an instant query
/// (`GET /api/v1/query`).
///
/// The value the conditions see as `result`:
/// - a scalar → its number;
/// - a vector of one sample → that sample's number (so `result < 0.05` works without
///   indexing); several samples → an array of numbers in the server's order;
/// - a NaN or ±Inf sample (for example 0/0 on an error rate without traffic) → the
///   measurement is Inconclusive;
/// - an empty vector → an error (counted against `consecutiveErrorLimit`): no samples usually
///   means the series do not exist yet, which a later measurement can fix, whereas
///   Inconclusive would pause the rollout at once;
/// - a matrix or string result → a configuration error (use an instant vector).
#[derive(Debug, Clone, Default)]
pub struct PrometheusProvider {
    client: reqwest::Client,
}

impl PrometheusProvider {
    /// A provider with a default client.
    pub fn new() -> Self {
        PrometheusProvider::default()
    }

    /// A provider trusting the CA certificates in `pem` (one or more PEM `CERTIFICATE`
    /// blocks) besides the bundled public roots, for servers behind a private or test CA.
    /// It replaces the client (a default one trusting these roots).
    pub fn root_certificates_pem(
        self,
        pem: impl AsRef<[u8]>,
    ) -> Result<Self, crate::RootCertificateError> {
        let roots = crate::https::parse_roots(pem.as_ref())?;
        Ok(PrometheusProvider {
            client: crate::https::client_trusting(&roots)?,
        })
    }

    /// A provider using `client`.
    pub fn with_client(client: reqwest::Client) -> Self {
        PrometheusProvider { client }
    }
}

#[async_trait]
impl MetricProvider for PrometheusProvider {
    fn kind(&self) -> &str {
        "prometheus"
    }

    async fn measure(
        &self,
        metric: &MetricSpec,
        _args: &BTreeMap<String, String>,
    ) -> Result<Value, ProviderError> {
        let ProviderSpec::Prometheus(p) = &metric.provider else {
            return Err(ProviderError::config(
                "prometheus",
                "metric has no prometheus provider spec",
            ));
        };
        let timeout = p.timeout.map(|d| d.0).unwrap_or(PROMETHEUS_DEFAULT_TIMEOUT);
        let url = format!("{}/api/v1/query", p.address.trim_end_matches('/'));
        let mut req = self
            .client
            .get(&url)
            .query(&[("query", p.query.as_str())])
            .timeout(timeout);
        for h in &p.headers {
            req = req.header(&h.key, &h.value);
        }
        let target = format!("query `{}` at {}", p.query, p.address);
        let resp = req.send().await.map_err(|e| {
            ProviderError::measurement(
                "prometheus",
                format!("{target}: {}", crate::https::error_chain(&e)),
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| {
            ProviderError::measurement(
                "prometheus",
                format!("{target}: reading body: {}", crate::https::error_chain(&e)),
            )
        })?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| {
            ProviderError::measurement(
                "prometheus",
                format!(
                    "{target}: {status}, response is not JSON ({e}): {}",
                    truncate(&text, 200)
                ),
            )
        })?;
        if !status.is_success() || doc["status"] != "success" {
            let kind = doc["errorType"].as_str().unwrap_or("error");
            let error = doc["error"].as_str().unwrap_or("no error message");
            let err = format!("{target}: {status} {kind}: {error}");
            // A malformed query never gets better by retrying.
            return Err(if kind == "bad_data" {
                ProviderError::config("prometheus", err)
            } else {
                ProviderError::measurement("prometheus", err)
            });
        }
        interpret(&doc["data"]).map_err(|e| match e {
            ProviderError::Inconclusive { provider, reason } => ProviderError::Inconclusive {
                provider,
                reason: format!("{target}: {reason}"),
            },
            ProviderError::Measurement { provider, reason } => ProviderError::Measurement {
                provider,
                reason: format!("{target}: {reason}"),
            },
            ProviderError::Config { provider, reason } => ProviderError::Config {
                provider,
                reason: format!("{target}: {reason}"),
            },
            // `interpret` only judges the response; it never asks for a capability.
            other @ ProviderError::Unsupported { .. } => other,
        })
    }
}

/// Turns the API's `data` object into the value (see [`PrometheusProvider`]).
fn interpret(data: &Value) -> Result<Value, ProviderError> {
    match data["resultType"].as_str() {
        Some("scalar") => sample(&data["result"]),
        Some("vector") => {
            let samples = data["result"].as_array().cloned().unwrap_or_default();
            match samples.len() {
                0 => Err(ProviderError::measurement(
                    "prometheus",
                    "the query returned no samples (empty vector)",
                )),
                1 => sample(&samples[0]["value"]),
                _ => samples
                    .iter()
                    .map(|s| sample(&s["value"]))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array),
            }
        }
        Some(other) => Err(ProviderError::config(
            "prometheus",
            format!("result type `{other}` is not supported; use a scalar or instant vector"),
        )),
        None => Err(ProviderError::measurement(
            "prometheus",
            format!(
                "response has no resultType: {}",
                truncate(&data.to_string(), 200)
            ),
        )),
    }
}

/// A `[timestamp, "value"]` pair → the number; NaN and ±Inf are inconclusive.
fn sample(pair: &Value) -> Result<Value, ProviderError> {
    let text = pair[1]
        .as_str()
        .ok_or_else(|| ProviderError::measurement("prometheus", format!("bad sample {pair}")))?;
    let v: f64 = text.parse().map_err(|_| {
        ProviderError::measurement(
            "prometheus",
            format!("sample value `{text}` is not a number"),
        )
    })?;
    if !v.is_finite() {
        return Err(ProviderError::Inconclusive {
            provider: "prometheus".into(),
            reason: format!("the query returned {text}"),
        });
    }
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .ok_or_else(|| ProviderError::measurement("prometheus", format!("sample `{text}`")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn interprets_api_results() {
        let scalar = json!({"resultType": "scalar", "result": [1.0, "0.25"]});
        assert_eq!(interpret(&scalar).unwrap(), json!(0.25));
        let one = json!({"resultType": "vector", "result": [{"metric": {}, "value": [1.0, "3"]}]});
        assert_eq!(interpret(&one).unwrap(), json!(3.0));
        let two = json!({"resultType": "vector", "result": [
            {"metric": {"a": "1"}, "value": [1.0, "1"]},
            {"metric": {"a": "2"}, "value": [1.0, "2"]}]});
        assert_eq!(interpret(&two).unwrap(), json!([1.0, 2.0]));
        let nan =
            json!({"resultType": "vector", "result": [{"metric": {}, "value": [1.0, "NaN"]}]});
        assert!(matches!(
            interpret(&nan),
            Err(ProviderError::Inconclusive { .. })
        ));
        let inf = json!({"resultType": "scalar", "result": [1.0, "+Inf"]});
        assert!(matches!(
            interpret(&inf),
            Err(ProviderError::Inconclusive { .. })
        ));
        let empty = json!({"resultType": "vector", "result": []});
        let e = interpret(&empty).unwrap_err();
        assert!(
            !e.is_permanent() && e.to_string().contains("no samples"),
            "{e}"
        );
        let matrix = json!({"resultType": "matrix", "result": []});
        assert!(interpret(&matrix).unwrap_err().is_permanent());
    }
}
