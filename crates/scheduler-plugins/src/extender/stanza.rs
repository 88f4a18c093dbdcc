//! The `extenders` stanza of a KubeSchedulerConfiguration that points kube-scheduler at an
//! `ExtenderServer` (feature `extender`), or at any server speaking the extender protocol.

use std::time::Duration;

use serde_json::{Value, json};

/// Settings of one extender entry. Defaults: all four verbs, weight 1, node-cache-capable,
/// HTTP, 5 s timeout, not ignorable.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
#[must_use]
pub struct ExtenderStanza {
    /// `urlPrefix`, e.g. `http://127.0.0.1:8888`.
    pub url_prefix: String,
    /// Prioritize weight (≥ 1).
    pub weight: i64,
    /// Send `NodeNames` instead of full nodes.
    pub node_cache_capable: bool,
    /// Use HTTPS.
    pub enable_https: bool,
    /// CA bundle (PEM) to verify the extender with.
    pub ca_pem: Option<String>,
    /// Whether errors are ignorable.
    pub ignorable: bool,
    /// HTTP timeout.
    pub http_timeout: Duration,
    /// Serve the bind verb.
    pub bind: bool,
    /// Serve the preempt verb.
    pub preempt: bool,
    /// Only pods requesting one of these extended resources are sent (empty: every pod).
    pub managed_resources: Vec<String>,
}

impl ExtenderStanza {
    /// An entry for an extender at `url_prefix`.
    pub fn new(url_prefix: impl Into<String>) -> ExtenderStanza {
        ExtenderStanza {
            url_prefix: url_prefix.into(),
            weight: 1,
            node_cache_capable: true,
            enable_https: false,
            ca_pem: None,
            ignorable: false,
            http_timeout: Duration::from_secs(5),
            bind: true,
            preempt: true,
            managed_resources: Vec::new(),
        }
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: i64) -> Self {
        self.weight = weight;
        self
    }

    /// Sets node-cache-capable mode.
    pub fn node_cache_capable(mut self, yes: bool) -> Self {
        self.node_cache_capable = yes;
        self
    }

    /// HTTPS with an optional CA bundle.
    pub fn https(mut self, ca_pem: Option<String>) -> Self {
        self.enable_https = true;
        self.ca_pem = ca_pem;
        self
    }

    /// Whether to serve bind (only one extender may bind).
    pub fn bind(mut self, yes: bool) -> Self {
        self.bind = yes;
        self
    }

    /// The entry as JSON (the `extenders[]` element).
    ///
    /// # Errors
    ///
    /// A weight below 1 or an empty URL prefix ([`StanzaError`]).
    pub fn to_value(&self) -> Result<Value, StanzaError> {
        if self.weight < 1 {
            return Err(StanzaError::Weight(self.weight));
        }
        if self.url_prefix.is_empty() {
            return Err(StanzaError::EmptyUrlPrefix);
        }
        let mut v = json!({
            "urlPrefix": self.url_prefix,
            "filterVerb": "filter",
            "prioritizeVerb": "prioritize",
            "weight": self.weight,
            "enableHTTPS": self.enable_https,
            "httpTimeout": format!("{}s", self.http_timeout.as_secs_f64()),
            "nodeCacheCapable": self.node_cache_capable,
            "ignorable": self.ignorable,
        });
        if self.bind {
            v["bindVerb"] = json!("bind");
        }
        if self.preempt {
            v["preemptVerb"] = json!("preempt");
        }
        if let Some(ca) = &self.ca_pem {
            use base64::Engine as _;
            // caData is base64 of the PEM bytes.
            let out = base64::engine::general_purpose::STANDARD.encode(ca.as_bytes());
            v["tlsConfig"] = json!({"caData": out});
        }
        if !self.managed_resources.is_empty() {
            v["managedResources"] = Value::Array(
                self.managed_resources
                    .iter()
                    .map(|r| json!({"name": r, "ignoredByScheduler": false}))
                    .collect(),
            );
        }
        Ok(v)
    }

    /// A whole KubeSchedulerConfiguration (YAML) with this extender.
    ///
    /// # Errors
    ///
    /// What [`ExtenderStanza::to_value`] refuses, or a YAML encoding failure.
    pub fn to_yaml(&self) -> Result<String, StanzaError> {
        let doc = json!({
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "extenders": [self.to_value()?],
        });
        yaml_serde::to_string(&doc).map_err(StanzaError::Yaml)
    }
}

/// Why an extender stanza cannot be rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StanzaError {
    /// kube-scheduler requires a positive weight.
    #[error("extender weight {0} must be at least 1")]
    Weight(i64),
    /// The extender's URL prefix is empty.
    #[error("extender urlPrefix must not be empty")]
    EmptyUrlPrefix,
    /// Encoding the configuration as YAML failed.
    #[error("cannot render the scheduler configuration as YAML")]
    Yaml(#[source] yaml_serde::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanza_fields() {
        let s = ExtenderStanza::new("http://127.0.0.1:8888").weight(5);
        let v = s.to_value().unwrap();
        assert_eq!(v["urlPrefix"], "http://127.0.0.1:8888");
        assert_eq!(v["bindVerb"], "bind");
        assert_eq!(v["nodeCacheCapable"], true);
        assert_eq!(v["httpTimeout"], "5s");
        let yaml = s.to_yaml().unwrap();
        assert!(yaml.contains("kind: KubeSchedulerConfiguration"), "{yaml}");
        assert!(yaml.contains("filterVerb: filter"), "{yaml}");
        assert!(
            ExtenderStanza::new("x")
                .weight(0)
                .to_value()
                .unwrap_err()
                .to_string()
                .contains("weight 0")
        );
        let tls = ExtenderStanza::new("https://x")
            .https(Some("ab".into()))
            .to_value()
            .unwrap();
        assert_eq!(tls["tlsConfig"]["caData"], "YWI=");
        assert_eq!(tls["enableHTTPS"], true);
    }
}
