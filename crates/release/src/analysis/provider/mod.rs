//! Metric providers: where an analysis metric's value comes from.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

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
pub use command::{
    COMMAND_DEFAULT_TIMEOUT, COMMAND_INLINE_WAIT, COMMAND_RESUME_AFTER, CommandProvider,
};
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

/// The cargo feature to turn on for a built-in `kind` that is not compiled in (each built-in
/// kind's feature has its name).
pub(crate) fn feature_off(kind: &str) -> Option<&'static str> {
    BUILT_IN
        .iter()
        .find(|(k, on)| *k == kind && !on)
        .map(|(k, _)| *k)
}

/// What a provider answers when it starts or resumes a measurement.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MeasureOutcome {
    /// The measurement is complete: the value the conditions see as `result`.
    Done(serde_json::Value),
    /// The measurement goes on (a job, a long program): the run keeps `handle` (persisted with
    /// the run, so it should be small JSON) and calls [`MetricProvider::resume`] with it
    /// once `resume_after` has passed, or [`MetricProvider::terminate`] if the run ends first.
    Running {
        /// What the provider needs to find the measurement again.
        handle: serde_json::Value,
        /// How long to wait before resuming it.
        resume_after: Duration,
    },
}

/// Measures metrics of one provider kind.
///
/// `measure` gets the metric with `{{args.x}}` already substituted, and the run's arguments.
/// It returns the value the conditions see as `result`.
///
/// Long measurements (Argo's job provider shape) are optional: a provider whose measurement
/// may outlast one call overrides [`start`](MetricProvider::start) to answer
/// [`MeasureOutcome::Running`], and then must implement [`resume`](MetricProvider::resume)
/// (and should implement [`terminate`](MetricProvider::terminate)); by default `start` is
/// `measure` and the other two answer [`ProviderError::Unsupported`].
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

    /// Starts a measurement that may outlast this call. By default,
    /// [`measure`](MetricProvider::measure), complete at once.
    async fn start(
        &self,
        metric: &MetricSpec,
        args: &BTreeMap<String, String>,
    ) -> Result<MeasureOutcome, ProviderError> {
        self.measure(metric, args).await.map(MeasureOutcome::Done)
    }

    /// Checks on a measurement that [`start`](MetricProvider::start) (or an earlier
    /// `resume`) answered as running, with its `handle`: done, or still running (with the
    /// same or a new handle). Required of a provider that answers
    /// [`MeasureOutcome::Running`]; by default unsupported, which errors the metric.
    async fn resume(
        &self,
        metric: &MetricSpec,
        args: &BTreeMap<String, String>,
        handle: &serde_json::Value,
    ) -> Result<MeasureOutcome, ProviderError> {
        let _ = (metric, args, handle);
        Err(ProviderError::unsupported(
            self.kind(),
            "resuming a running measurement",
        ))
    }

    /// Stops a running measurement whose run no longer waits for it (the run was terminated,
    /// or another metric ended it). Stopping one that already ended is not an error. By
    /// default unsupported.
    async fn terminate(
        &self,
        metric: &MetricSpec,
        args: &BTreeMap<String, String>,
        handle: &serde_json::Value,
    ) -> Result<(), ProviderError> {
        let _ = (metric, args, handle);
        Err(ProviderError::unsupported(
            self.kind(),
            "terminating a running measurement",
        ))
    }

    /// Whether this provider measures metrics of `kind` (by default: `kind` is
    /// [`kind`](MetricProvider::kind)). A registry answers for each provider it holds.
    fn supports(&self, kind: &str) -> bool {
        kind == self.kind()
    }

    /// The kinds this provider measures, for error messages (by default its own kind).
    fn kinds(&self) -> Vec<String> {
        vec![self.kind().to_owned()]
    }
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
    /// The provider does not offer an optional capability (resuming or terminating a running
    /// measurement); permanent.
    #[error("{provider}: does not support {capability}")]
    Unsupported {
        /// The provider kind.
        provider: String,
        /// What it was asked to do.
        capability: &'static str,
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

    /// `provider` does not offer `capability`.
    pub fn unsupported(provider: &str, capability: &'static str) -> Self {
        ProviderError::Unsupported {
            provider: provider.to_owned(),
            capability,
        }
    }

    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ProviderError::Config { .. } | ProviderError::Unsupported { .. }
        )
    }
}

/// A registry of providers by kind; itself a [`MetricProvider`] that hands each metric to the
/// provider of its kind.
///
/// A metric whose kind has no provider errors at once (it is not retried); when the kind is a
/// built-in one whose cargo feature is off, the error names the provider and the feature.
///
/// The `command` provider runs programs named in analysis specs, so whoever can write a spec
/// can run programs on the controller's host: it is never among the defaults, even with its
/// cargo feature on, and a host registers it explicitly with `Providers::with_command`.
///
/// ```
/// use rorqual_release::analysis::Providers;
///
/// let providers = Providers::with_defaults();
/// # #[cfg(all(feature = "prometheus", feature = "web"))]
/// assert!(providers.get("prometheus").is_some() && providers.get("web").is_some());
/// assert!(providers.get("command").is_none());
/// # #[cfg(feature = "command")]
/// # {
/// // Opting in (feature `command`):
/// let providers = Providers::with_defaults().with_command();
/// assert!(providers.get("command").is_some());
/// # }
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

    /// The built-in network providers compiled in: web (feature `web`) and prometheus (feature
    /// `prometheus`). Never `command`, which runs programs: see `Providers::with_command`
    /// (feature `command`).
    pub fn with_defaults() -> Self {
        #[allow(unused_mut)] // without any provider feature there is nothing to add
        let mut providers = Providers::new();
        #[cfg(feature = "web")]
        providers.insert(Arc::new(WebProvider::new()));
        #[cfg(feature = "prometheus")]
        providers.insert(Arc::new(PrometheusProvider::new()));
        providers
    }

    /// Adds the [`CommandProvider`] (feature `command`): metrics may then run any program their
    /// spec names, with the controller's privileges. Only for hosts whose analysis specs come
    /// from trusted authors.
    #[cfg(feature = "command")]
    #[must_use]
    pub fn with_command(self) -> Self {
        self.with(Arc::new(CommandProvider::new()))
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
        self.provider_of(metric)?.measure(metric, args).await
    }

    async fn start(
        &self,
        metric: &MetricSpec,
        args: &BTreeMap<String, String>,
    ) -> Result<MeasureOutcome, ProviderError> {
        self.provider_of(metric)?.start(metric, args).await
    }

    async fn resume(
        &self,
        metric: &MetricSpec,
        args: &BTreeMap<String, String>,
        handle: &serde_json::Value,
    ) -> Result<MeasureOutcome, ProviderError> {
        self.provider_of(metric)?.resume(metric, args, handle).await
    }

    async fn terminate(
        &self,
        metric: &MetricSpec,
        args: &BTreeMap<String, String>,
        handle: &serde_json::Value,
    ) -> Result<(), ProviderError> {
        self.provider_of(metric)?
            .terminate(metric, args, handle)
            .await
    }

    fn supports(&self, kind: &str) -> bool {
        self.by_kind.contains_key(kind)
    }

    fn kinds(&self) -> Vec<String> {
        self.by_kind.keys().cloned().collect()
    }
}

impl Providers {
    /// The provider of `metric`'s kind.
    fn provider_of(&self, metric: &MetricSpec) -> Result<&Arc<dyn MetricProvider>, ProviderError> {
        let kind = metric.provider.kind();
        self.by_kind.get(kind).ok_or_else(|| self.missing(kind))
    }

    /// The error for a metric of `kind` without a registered provider.
    fn missing(&self, kind: &str) -> ProviderError {
        ProviderError::config(kind, super::spec::missing_provider(kind, &self.kinds()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::analysis::{CommandMetric, ProviderSpec};

    #[tokio::test]
    async fn command_is_never_a_default_and_its_absence_is_explained() {
        let metric = MetricSpec::new("probe", ProviderSpec::Command(CommandMetric::new(["true"])));
        let defaults = Providers::with_defaults();
        assert!(
            defaults.get("command").is_none(),
            "even with the feature on"
        );
        let err = defaults
            .measure(&metric, &BTreeMap::new())
            .await
            .unwrap_err();
        assert!(err.is_permanent(), "{err}");
        if cfg!(feature = "command") {
            assert!(
                err.to_string()
                    .contains("it is opt-in: register it with `Providers::with_command()`"),
                "{err}"
            );
        } else {
            assert_eq!(
                err.to_string(),
                "command: the `command` provider is not compiled in: enable the `command` \
                 feature of rorqual-release"
            );
        }
        #[cfg(feature = "command")]
        {
            let opted_in = Providers::with_defaults().with_command();
            assert_eq!(opted_in.get("command").unwrap().kind(), "command");
        }
    }
}
