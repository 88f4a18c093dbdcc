//! Metric providers: where an analysis metric's value comes from.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;

use super::MetricSpec;

#[cfg(feature = "command")]
mod command;
#[cfg(any(feature = "web", feature = "prometheus", feature = "command"))]
mod json_path;
#[cfg(feature = "prometheus")]
mod prometheus;
#[cfg(feature = "web")]
mod web;

#[cfg(feature = "command")]
pub use command::{COMMAND_DEFAULT_TIMEOUT, CommandProvider};
#[cfg(feature = "prometheus")]
pub use prometheus::{PROMETHEUS_DEFAULT_TIMEOUT, PrometheusProvider};
#[cfg(feature = "web")]
pub use web::{WEB_DEFAULT_TIMEOUT, WebProvider};

/// The built-in provider kinds and the cargo feature that compiles each in, with whether it is
/// on in this build.
const BUILT_IN: [(&str, bool); 3] = [
    ("web", cfg!(feature = "web")),
    ("prometheus", cfg!(feature = "prometheus")),
    ("command", cfg!(feature = "command")),
];

/// Measures metrics of one provider kind.
///
/// `measure` gets the metric with `{{args.x}}` already substituted, and the run's arguments.
/// It returns the value the conditions see as `result`.
#[async_trait]
pub trait MetricProvider: Send + Sync + Debug + 'static {
    /// The provider kind this measures: `web`, `prometheus`, `command` or a plugin's kind
    /// ([`ProviderSpec::kind`](super::ProviderSpec::kind)).
    fn kind(&self) -> &str;

    /// Takes one measurement.
    async fn measure(
        &self,
        metric: &MetricSpec,
        args: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value, ProviderError>;
}

/// Why a measurement produced no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The provider answered with something that cannot be judged (a NaN from Prometheus); the
    /// measurement is Inconclusive, not an error.
    #[error("{provider}: inconclusive: {reason}")]
    Inconclusive {
        /// The provider kind.
        provider: String,
        /// Why.
        reason: String,
    },
    /// The measurement failed (connection refused, timeout, non-2xx status, unparsable
    /// response, non-zero exit); counted against `consecutiveErrorLimit`.
    #[error("{provider}: {reason}")]
    Measurement {
        /// The provider kind.
        provider: String,
        /// What went wrong, naming the URL, query or program.
        reason: String,
    },
    /// The metric cannot be measured at all (no provider of its kind, wrong spec for this
    /// provider); errors the metric at once instead of retrying.
    #[error("{provider}: {reason}")]
    Config {
        /// The provider kind.
        provider: String,
        /// What is wrong.
        reason: String,
    },
}

impl ProviderError {
    /// A retryable measurement error of `provider`.
    pub fn measurement(provider: &str, reason: impl Into<String>) -> Self {
        ProviderError::Measurement {
            provider: provider.to_owned(),
            reason: reason.into(),
        }
    }

    /// A permanent configuration error of `provider`.
    pub fn config(provider: &str, reason: impl Into<String>) -> Self {
        ProviderError::Config {
            provider: provider.to_owned(),
            reason: reason.into(),
        }
    }

    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ProviderError::Config { .. })
    }
}

/// A registry of providers by kind; itself a [`MetricProvider`] that hands each metric to the
/// provider of its kind.
///
/// A metric whose kind has no provider errors at once (it is not retried); when the kind is a
/// built-in one whose cargo feature is off, the error names the provider and the feature.
///
/// ```
/// use rorqual_release::analysis::Providers;
///
/// let providers = Providers::with_defaults();
/// # #[cfg(all(feature = "prometheus", feature = "web"))]
/// assert!(providers.get("prometheus").is_some() && providers.get("web").is_some());
/// // `command` runs programs named in specs, so it is opt-in (feature `command`).
/// # #[cfg(not(feature = "command"))]
/// assert!(providers.get("command").is_none());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Providers {
    by_kind: BTreeMap<String, Arc<dyn MetricProvider>>,
}

impl Providers {
    /// An empty registry.
    pub fn new() -> Self {
        Providers::default()
    }

    /// The built-in providers compiled in: web (feature `web`), prometheus (feature
    /// `prometheus`) and command (feature `command`, off by default).
    pub fn with_defaults() -> Self {
        #[allow(unused_mut)] // without any provider feature there is nothing to add
        let mut providers = Providers::new();
        #[cfg(feature = "web")]
        providers.insert(Arc::new(WebProvider::new()));
        #[cfg(feature = "prometheus")]
        providers.insert(Arc::new(PrometheusProvider::new()));
        #[cfg(feature = "command")]
        providers.insert(Arc::new(CommandProvider::new()));
        providers
    }

    /// Adds (or replaces) the provider for its kind.
    #[must_use]
    pub fn with(mut self, provider: Arc<dyn MetricProvider>) -> Self {
        self.insert(provider);
        self
    }

    /// Adds (or replaces) the provider for its kind.
    pub fn insert(&mut self, provider: Arc<dyn MetricProvider>) {
        self.by_kind.insert(provider.kind().to_owned(), provider);
    }

    /// The provider of `kind`.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn MetricProvider>> {
        self.by_kind.get(kind)
    }
}

#[async_trait]
impl MetricProvider for Providers {
    fn kind(&self) -> &str {
        "registry"
    }

    async fn measure(
        &self,
        metric: &MetricSpec,
        args: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value, ProviderError> {
        let kind = metric.provider.kind();
        match self.by_kind.get(kind) {
            Some(p) => p.measure(metric, args).await,
            None => Err(self.missing(kind)),
        }
    }
}

impl Providers {
    /// The error for a metric of `kind` without a registered provider.
    fn missing(&self, kind: &str) -> ProviderError {
        if BUILT_IN.contains(&(kind, false)) {
            return ProviderError::config(
                kind,
                format!(
                    "the `{kind}` provider is not compiled in: enable the `{kind}` feature of \
                     rorqual-release"
                ),
            );
        }
        let have: Vec<&str> = self.by_kind.keys().map(String::as_str).collect();
        ProviderError::config(
            kind,
            format!(
                "no provider of kind `{kind}` is registered (have: {})",
                if have.is_empty() {
                    "none".to_owned()
                } else {
                    have.join(", ")
                }
            ),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::analysis::{CommandMetric, ProviderSpec};

    #[tokio::test]
    async fn a_provider_whose_feature_is_off_is_named_with_its_feature() {
        let metric = MetricSpec::new("probe", ProviderSpec::Command(CommandMetric::new(["true"])));
        if cfg!(feature = "command") {
            assert!(Providers::with_defaults().get("command").is_some());
        } else {
            let err = Providers::with_defaults()
                .measure(&metric, &BTreeMap::new())
                .await
                .unwrap_err();
            assert!(err.is_permanent(), "{err}");
            assert_eq!(
                err.to_string(),
                "command: the `command` provider is not compiled in: enable the `command` \
                 feature of rorqual-release"
            );
        }
        // A registry without it: the same sentence when the feature is off, "not registered"
        // when it is on.
        let err = Providers::new()
            .measure(&metric, &BTreeMap::new())
            .await
            .unwrap_err();
        let expected = if cfg!(feature = "command") {
            "no provider of kind `command` is registered (have: none)"
        } else {
            "enable the `command` feature"
        };
        assert!(err.to_string().contains(expected), "{err}");
    }
}
