//! The `ReleaseStrategy` seam and the serialisable [`Strategy`] choice.

use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use super::plan::{Plan, RolloutView};
use super::{BlueGreen, Canary, Recreate, RollingUpdate};
use crate::analysis::AnalysisError;

/// A release strategy: a pure planning function from an observed rollout to a plan.
/// Object safe: store it as `Arc<dyn ReleaseStrategy>`.
pub trait ReleaseStrategy: Send + Sync + Debug + 'static {
    /// The strategy's name (`canary`, `blueGreen`, `rollingUpdate`, `recreate`).
    fn name(&self) -> &'static str;

    /// Checks the strategy before a rollout starts; errors name the step index.
    fn validate(&self, stateful: bool) -> Result<(), StrategyError>;

    /// How many steps the strategy has (the index after the last is the final promotion).
    fn steps(&self) -> usize;

    /// Plans one reconcile of the rollout from `view.stable` to `view.target`.
    fn plan(&self, view: &RolloutView) -> Plan;

    /// The step a promote-full jumps to from `step`. The default is the final promotion
    /// ([`steps`](Self::steps)); a strategy whose later steps do more than wait (blue-green
    /// scales the new revision to full and waits for it before switching traffic) returns the
    /// first of those steps, and the controller skips only the pauses, approvals and analyses
    /// on the way.
    fn promote_full_step(&self, step: usize) -> usize {
        step.max(self.steps())
    }
}

/// A strategy, as written in a rollout spec (`{"canary": {"steps": [...]}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum Strategy {
    /// Stop every old instance, then start the new ones.
    Recreate(Recreate),
    /// Kubernetes' rolling update (with an optional BCS partition).
    RollingUpdate(RollingUpdate),
    /// Argo's blue-green.
    BlueGreen(BlueGreen),
    /// Argo's canary steps.
    Canary(Canary),
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy::RollingUpdate(RollingUpdate::default())
    }
}

impl Strategy {
    fn inner(&self) -> &dyn ReleaseStrategy {
        match self {
            Strategy::Recreate(s) => s,
            Strategy::RollingUpdate(s) => s,
            Strategy::BlueGreen(s) => s,
            Strategy::Canary(s) => s,
        }
    }
}

impl ReleaseStrategy for Strategy {
    fn name(&self) -> &'static str {
        self.inner().name()
    }
    fn validate(&self, stateful: bool) -> Result<(), StrategyError> {
        self.inner().validate(stateful)
    }
    fn steps(&self) -> usize {
        self.inner().steps()
    }
    fn plan(&self, view: &RolloutView) -> Plan {
        self.inner().plan(view)
    }
    fn promote_full_step(&self, step: usize) -> usize {
        self.inner().promote_full_step(step)
    }
}

/// A strategy rejected before the rollout starts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StrategyError {
    /// A step is invalid.
    #[error("steps[{index}].{field}: {message}")]
    Step {
        /// The step's index.
        index: usize,
        /// The field (`setWeight`, `pause.duration`, …).
        field: String,
        /// What is wrong, with the value.
        message: String,
    },
    /// A step's (or the strategy's) analysis is invalid.
    #[error("{location}: {source}")]
    Analysis {
        /// Where: `steps[3].analysis`, `prePromotionAnalysis`, `analysis` (background).
        location: String,
        /// What the analysis validation found.
        #[source]
        source: AnalysisError,
    },
    /// No strategy of this kind is registered.
    #[error("unknown strategy kind `{kind}` (registered: {registered})")]
    UnknownKind {
        /// The kind the spec names.
        kind: String,
        /// The registered kinds, comma-separated.
        registered: String,
    },
    /// A strategy field is invalid.
    #[error("{field}: {message}")]
    Field {
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
}
