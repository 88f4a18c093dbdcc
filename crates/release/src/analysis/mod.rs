//! Analysis: metrics measured during a release that decide whether it goes on.
//!
//! The semantics are Argo Rollouts' `AnalysisRun` (field names included), minus the upstream
//! defects: `consecutiveErrorLimit` (default 4) is applied, `consecutiveSuccessLimit` is
//! supported (and checked when `count` runs out, where BCS forgets it), BCS HookRun's
//! `successfulLimit` is supported too, and a run never stays Inconclusive forever —
//! Inconclusive is terminal and the controller pauses with the run's message.
//!
//! - [`AnalysisSpec`]: arguments and metrics (interval, count, initialDelay, CEL
//!   success/failure conditions, limits, a provider);
//! - [`AnalysisRun`]: the pure state machine, serialisable: [`AnalysisRun::due`] hands out
//!   owned [`PendingMeasurement`]s a controller can spawn, [`AnalysisRun::record`] applies
//!   their results (ignoring stale and duplicate ones), [`AnalysisRun::tick`] does both in
//!   place;
//! - long measurements (Argo's job shape): a provider may answer [`MeasureOutcome::Running`]
//!   with a handle, resumed when next due and terminated when the run ends
//!   ([`AnalysisRun::take_abandoned`]);
//! - [`MetricProvider`] and the registry [`Providers`]: `WebProvider` (HTTP + JSONPath, feature
//!   `web`), `PrometheusProvider` (instant queries, feature `prometheus`), `CommandProvider` (a
//!   program's output, feature `command`, never a default: `Providers::with_command`) and
//!   any provider the host registers.
//!
//! Outcome of one measurement: neither condition set → Successful; only the success condition
//! → Failed when it is false; only the failure condition → Successful when it is false; both
//! → Failed when the failure condition holds, Successful when the success condition holds,
//! Inconclusive when neither does. A provider error or a condition that cannot be evaluated →
//! Error. The run's phase is the worst metric phase (Successful < Running < Pending <
//! Inconclusive < Error < Failed); a Failed, Error or Inconclusive metric ends the run.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//! use std::time::SystemTime;
//!
//! use rorqual_release::analysis::{AnalysisPhase, AnalysisRun, AnalysisSpec, MetricProvider,
//!     MetricSpec, ProviderError, ProviderSpec, Providers};
//!
//! /// A host's own provider kind: always answers 42.
//! #[derive(Debug)]
//! struct Answer;
//!
//! #[async_trait::async_trait]
//! impl MetricProvider for Answer {
//!     fn kind(&self) -> &str {
//!         "answer"
//!     }
//!     async fn measure(
//!         &self,
//!         _: &MetricSpec,
//!         _: &BTreeMap<String, String>,
//!     ) -> Result<serde_json::Value, ProviderError> {
//!         Ok(42.into())
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let spec = AnalysisSpec::new(vec![
//!     MetricSpec::new("answer", ProviderSpec::plugin("answer", serde_json::json!({})))
//!         .success_condition("result == 42"),
//! ]);
//! let providers = Providers::with_defaults().with(Arc::new(Answer));
//! let mut run = AnalysisRun::new(&spec, BTreeMap::new(), SystemTime::now()).unwrap();
//! let phase = run.tick(&providers, SystemTime::now()).await;
//! assert_eq!(phase, AnalysisPhase::Successful);
//! # });
//! ```

mod assessment;
mod condition;
mod duration;
mod measurement;
mod provider;
mod run;
mod spec;
mod template;
#[cfg(test)]
mod test_support;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use duration::{DurationError, GoDuration};
pub use measurement::{
    ERROR_RETRY_INTERVAL, InProgress, MEASUREMENTS_KEPT, Measurement, MetricResult,
};
#[cfg(feature = "command")]
pub use provider::{
    COMMAND_DEFAULT_TIMEOUT, COMMAND_INLINE_WAIT, COMMAND_RESUME_AFTER, CommandProvider,
};
pub use provider::{MeasureOutcome, MetricProvider, ProviderError, Providers};
#[cfg(feature = "prometheus")]
pub use provider::{PROMETHEUS_DEFAULT_TIMEOUT, PrometheusProvider};
#[cfg(feature = "web")]
pub use provider::{WEB_DEFAULT_TIMEOUT, WebProvider};
pub use run::{AnalysisRun, CompletedMeasurement, PendingMeasurement, RunningMeasurement};
pub use spec::{
    AnalysisSpec, ArgSpec, CommandMetric, DEFAULT_CONSECUTIVE_ERROR_LIMIT, Header, MetricSpec,
    PrometheusMetric, ProviderSpec, WebMetric,
};

/// The phase of an analysis run, a metric or a measurement (Argo's `AnalysisPhase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AnalysisPhase {
    /// Nothing measured yet (waiting for the initial delay or the first tick).
    Pending,
    /// Measuring; more measurements are due.
    Running,
    /// Done and good.
    Successful,
    /// Done without a verdict (both conditions false too often, or a NaN): the rollout pauses.
    Inconclusive,
    /// Done because measuring kept failing (`consecutiveErrorLimit`) or cannot work.
    Error,
    /// Done and bad (`failureLimit` exceeded): the rollout aborts.
    Failed,
}

impl AnalysisPhase {
    /// Whether the phase is final.
    pub fn is_terminal(self) -> bool {
        !matches!(self, AnalysisPhase::Pending | AnalysisPhase::Running)
    }

    /// The phase's name (`Successful`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            AnalysisPhase::Pending => "Pending",
            AnalysisPhase::Running => "Running",
            AnalysisPhase::Successful => "Successful",
            AnalysisPhase::Inconclusive => "Inconclusive",
            AnalysisPhase::Error => "Error",
            AnalysisPhase::Failed => "Failed",
        }
    }

    /// Rank for "worst phase wins": Successful < Running < Pending < Inconclusive < Error <
    /// Failed.
    fn severity(self) -> u8 {
        match self {
            AnalysisPhase::Successful => 0,
            AnalysisPhase::Running => 1,
            AnalysisPhase::Pending => 2,
            AnalysisPhase::Inconclusive => 3,
            AnalysisPhase::Error => 4,
            AnalysisPhase::Failed => 5,
        }
    }
}

impl fmt::Display for AnalysisPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of analysis specs and runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnalysisError {
    /// The spec (or the arguments given to it, or the providers it needs) is invalid: every
    /// problem found, in spec order. Permanent: the spec must change.
    #[error("{}", describe(.0))]
    Invalid(Vec<SpecProblem>),
}

/// One thing wrong with an analysis spec.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpecProblem {
    /// Where, as a path into the spec: `metrics[1].count`, `metrics[0].provider.web.url`,
    /// `metrics[2].provider`, `args[0].value`, `args` (a provided argument that is not
    /// declared), `metrics` (none).
    pub path: String,
    /// The metric's name, when the problem is in a named metric.
    pub metric: Option<String>,
    /// What is wrong, with the value at fault.
    pub reason: String,
}

impl SpecProblem {
    /// A problem at `path` (in `metric`, if any).
    pub fn new(path: impl Into<String>, metric: Option<&str>, reason: impl Into<String>) -> Self {
        SpecProblem {
            path: path.into(),
            metric: metric.map(str::to_owned),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.metric {
            Some(m) => write!(f, "{} (metric `{m}`): {}", self.path, self.reason),
            None => write!(f, "{}: {}", self.path, self.reason),
        }
    }
}

/// `p1` alone, or `N problems: p1; p2; …`.
fn describe(problems: &[SpecProblem]) -> String {
    match problems {
        [] => "invalid analysis".to_owned(),
        [one] => one.to_string(),
        many => format!(
            "{} problems: {}",
            many.len(),
            many.iter()
                .map(SpecProblem::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

impl AnalysisError {
    /// `Ok` without problems, else [`AnalysisError::Invalid`] with them.
    pub(crate) fn from_problems(problems: Vec<SpecProblem>) -> Result<(), AnalysisError> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(AnalysisError::Invalid(problems))
        }
    }

    /// Every problem, in spec order.
    pub fn problems(&self) -> &[SpecProblem] {
        match self {
            AnalysisError::Invalid(problems) => problems,
        }
    }

    /// The metric of the first problem in a metric, if any.
    pub fn metric(&self) -> Option<&str> {
        self.problems().iter().find_map(|p| p.metric.as_deref())
    }
}
