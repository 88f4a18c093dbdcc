//! The `extenders` stanza of a KubeSchedulerConfiguration that points kube-scheduler at an
//! `ExtenderServer` (feature `extender`), or at any server speaking the extender protocol.

use std::time::Duration;

use serde_json::{Value, json};

use crate::extender::KubeVersion;

/// The `kubescheduler.config.k8s.io` API version a kube-scheduler at `target` reads: the
/// newest one it serves that is not deprecated there. `v1beta1` for 1.19–1.21, `v1beta2`
/// for 1.22, `v1beta3` for 1.23–1.24, `v1` from 1.25 (1.20 rejects `v1`: in that release the
/// group's `v1` holds only the legacy `Policy` kind).
///
/// # Errors
///
/// [`StanzaError::UnsupportedVersion`] before 1.19 (those read `v1alpha1`/`v1alpha2`, whose
/// extenders use the legacy Policy layout) and for a major version other than 1.
pub fn config_api_version(target: KubeVersion) -> Result<&'static str, StanzaError> {
    let unsupported = |reason: &'static str| StanzaError::UnsupportedVersion {
        version: target,
        reason,
    };
    if target.major != 1 {
        return Err(unsupported("only Kubernetes 1.x is known"));
    }
    Ok(match target.minor {
        0..=18 => {
            return Err(unsupported(
                "KubeSchedulerConfiguration v1beta1, the oldest layout written here, needs 1.19 or later",
            ));
        }
        19..=21 => "kubescheduler.config.k8s.io/v1beta1",
        22 => "kubescheduler.config.k8s.io/v1beta2",
        23..=24 => "kubescheduler.config.k8s.io/v1beta3",
        _ => "kubescheduler.config.k8s.io/v1",
    })
}

/// Settings of one extender entry. Defaults: all four verbs, weight 1, node-cache-capable,
/// HTTP, 5 s timeout, not ignorable.
///
/// Speed, measured with a real kube-scheduler v1.20.2 (`BENCHMARKS.md`, example
/// `kube_scheduler_extender` of `rorqual-kube`): keep `nodeCacheCapable` (full Nodes in every
/// request made kube-scheduler 2–2.5× slower than names with a cache fed by watches); plain HTTP
/// on loopback (over HTTPS kube-scheduler speaks HTTP/2 on one connection, which the TLS
/// server offers, but TLS cost what the saved connections did); set `bindVerb` only when a
/// plugin must run at bind, such as an underlay address reservation, and `prioritizeVerb` only
/// when rorqual's scores matter, since each verb is one more HTTP call per pod with the whole
/// Pod in JSON; `managedResources` keeps pods that request none of them away from the
/// extender entirely. `ignorable` and `httpTimeout` change what a failure does, not speed.
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
    /// `clientConnection.kubeconfig` of the whole configuration: with `--config`,
    /// kube-scheduler ignores its `--kubeconfig` flag, so the file must name it.
    pub kubeconfig: Option<String>,
    /// `leaderElection.leaderElect` of the whole configuration (unset: kube-scheduler's
    /// default, on).
    pub leader_elect: Option<bool>,
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
            kubeconfig: None,
            leader_elect: None,
        }
    }

    /// Sets `clientConnection.kubeconfig` in [`ExtenderStanza::to_yaml`]'s configuration.
    pub fn kubeconfig(mut self, path: impl Into<String>) -> Self {
        self.kubeconfig = Some(path.into());
        self
    }

    /// Sets `leaderElection.leaderElect` in [`ExtenderStanza::to_yaml`]'s configuration.
    pub fn leader_elect(mut self, yes: bool) -> Self {
        self.leader_elect = Some(yes);
        self
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

    /// A whole KubeSchedulerConfiguration (YAML) with this extender, for a kube-scheduler at
    /// `target` (`apiVersion` from [`config_api_version`]). The extender's field names
    /// (`urlPrefix`, `filterVerb`, `prioritizeVerb`, `preemptVerb`, `bindVerb`, `weight`,
    /// `enableHTTPS`, `tlsConfig.caData`, `httpTimeout`, `nodeCacheCapable`,
    /// `managedResources`, `ignorable`) and the top-level `clientConnection`,
    /// `leaderElection` and `extenders` are the same in `v1beta1`, `v1beta2`, `v1beta3` and
    /// `v1`; `profiles` are left to kube-scheduler's default (`default-scheduler`), whose
    /// plugin layout is what differs between them (`multiPoint` from `v1beta3`).
    ///
    /// # Errors
    ///
    /// An unsupported `target`, what [`ExtenderStanza::to_value`] refuses, or a YAML encoding
    /// failure.
    pub fn to_yaml(&self, target: KubeVersion) -> Result<String, StanzaError> {
        let mut doc = json!({
            "apiVersion": config_api_version(target)?,
            "kind": "KubeSchedulerConfiguration",
        });
        if let Some(path) = &self.kubeconfig {
            doc["clientConnection"] = json!({"kubeconfig": path});
        }
        if let Some(yes) = self.leader_elect {
            doc["leaderElection"] = json!({"leaderElect": yes});
        }
        doc["extenders"] = json!([self.to_value()?]);
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
    /// The target kube-scheduler version has no configuration layout written here.
    #[error("kube-scheduler {version} is not supported: {reason}")]
    UnsupportedVersion {
        /// The version asked for.
        version: KubeVersion,
        /// Why.
        reason: &'static str,
    },
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
        let yaml = s.to_yaml(KubeVersion::new(1, 25)).unwrap();
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

    #[test]
    fn api_version_follows_the_target_kube_scheduler() {
        for (minor, api) in [
            (19, "v1beta1"),
            (20, "v1beta1"),
            (21, "v1beta1"),
            (22, "v1beta2"),
            (23, "v1beta3"),
            (24, "v1beta3"),
            (25, "v1"),
            (31, "v1"),
        ] {
            let yaml = ExtenderStanza::new("http://127.0.0.1:8888")
                .to_yaml(KubeVersion::new(1, minor))
                .unwrap();
            let doc: Value = yaml_serde::from_str(&yaml).unwrap();
            assert_eq!(
                doc["apiVersion"],
                format!("kubescheduler.config.k8s.io/{api}"),
                "1.{minor}"
            );
        }
    }

    #[test]
    fn a_v1beta1_config_for_kube_scheduler_1_20() {
        let yaml = ExtenderStanza::new("https://extender.kube-system:8888")
            .https(Some("ab".into()))
            .kubeconfig("/etc/kubernetes/scheduler.conf")
            .leader_elect(false)
            .to_yaml("v1.20.2".parse().unwrap())
            .unwrap();
        let doc: Value = yaml_serde::from_str(&yaml).unwrap();
        assert_eq!(
            doc,
            json!({
                "apiVersion": "kubescheduler.config.k8s.io/v1beta1",
                "kind": "KubeSchedulerConfiguration",
                "clientConnection": {"kubeconfig": "/etc/kubernetes/scheduler.conf"},
                "leaderElection": {"leaderElect": false},
                "extenders": [{
                    "urlPrefix": "https://extender.kube-system:8888",
                    "filterVerb": "filter",
                    "prioritizeVerb": "prioritize",
                    "preemptVerb": "preempt",
                    "bindVerb": "bind",
                    "weight": 1,
                    "enableHTTPS": true,
                    "tlsConfig": {"caData": "YWI="},
                    "httpTimeout": "5s",
                    "nodeCacheCapable": true,
                    "ignorable": false
                }]
            })
        );
    }

    #[test]
    fn unsupported_versions_are_refused_by_name() {
        for (v, part) in [
            (
                KubeVersion::new(1, 18),
                "kube-scheduler 1.18 is not supported",
            ),
            (
                KubeVersion::new(2, 0),
                "kube-scheduler 2.0 is not supported",
            ),
        ] {
            let err = ExtenderStanza::new("http://x").to_yaml(v).unwrap_err();
            assert!(err.to_string().contains(part), "{err}");
        }
    }
}
