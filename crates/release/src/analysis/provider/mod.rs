//! Metric providers: where an analysis metric's value comes from.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;

use super::MetricSpec;

mod command;
mod json_path;
mod prometheus;
mod web;

pub use command::{COMMAND_DEFAULT_TIMEOUT, CommandProvider};
pub use prometheus::{PROMETHEUS_DEFAULT_TIMEOUT, PrometheusProvider};
pub use web::{WEB_DEFAULT_TIMEOUT, WebProvider};

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
/// ```
/// use rorqual_release::analysis::Providers;
///
/// let providers = Providers::with_defaults();
/// assert!(providers.get("prometheus").is_some());
/// assert!(providers.get("web").is_some());
/// assert!(providers.get("command").is_some());
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

    /// The web, prometheus and command providers.
    pub fn with_defaults() -> Self {
        Providers::new()
            .with(Arc::new(super::WebProvider::new()))
            .with(Arc::new(super::PrometheusProvider::new()))
            .with(Arc::new(super::CommandProvider::new()))
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
            None => Err(ProviderError::config(
                kind,
                format!(
                    "no provider of kind `{kind}` is registered (have: {})",
                    self.by_kind.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }
}
