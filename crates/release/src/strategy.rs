//! The `ReleaseStrategy` seam and the serialisable [`Strategy`] choice.

use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use super::plan::{AnalysisStep, Plan, RolloutView};
use super::{BlueGreen, Canary, Recreate, RollingUpdate};
use crate::analysis::AnalysisError;

/// A release strategy: a pure planning function from an observed rollout to a plan.
/// Object safe: store it as `Arc<dyn ReleaseStrategy>`.
pub trait ReleaseStrategy: Send + Sync + Debug + 'static {
    /// The strategy's name (`canary`, `blueGreen`, `rollingUpdate`, `recreate`).
    fn name(&self) -> &'static str;

    /// Checks the strategy before a rollout starts. Every problem is reported, each with its
    /// path (`steps[1].setWeight`, `analysis.startingStep`, …): one problem as itself, several
    /// as [`StrategyError::Invalid`] (see [`StrategyError::from_problems`]).
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

    /// The step one `promote` moves the rollout to from `step`, or `None` when a promote does
    /// not skip what this step waits for (the controller then leaves the step as it is).
    ///
    /// The default goes one step on and never past [`steps`](Self::steps): as in Argo
    /// Rollouts, promoting at the final step does nothing, because the final promotion still
    /// waits for the new revision to be fully available.
    fn promote_step(&self, step: usize) -> Option<usize> {
        (step < self.steps()).then(|| step + 1)
    }

    /// Stateful workloads: how many identities may be moved (restarted on another revision)
    /// at once for `replicas` identities. The controller also uses it when it moves
    /// identities back to the stable revision (an abort or a fast rollback), so that a
    /// rollback is no more disruptive than the rollout was. The default is 1.
    fn stateful_max_unavailable(&self, replicas: u32) -> u32 {
        let _ = replicas;
        1
    }

    /// Whether the strategy never runs two revisions at once (Recreate). An abort of such a
    /// rollout must stop the target revision before starting the stable one again. The
    /// default is `false`.
    fn recreates(&self) -> bool {
        false
    }

    /// The analyses the strategy may run, each with where it is in the strategy's config
    /// (`steps[3].analysis`, `prePromotionAnalysis`), so the controller can check before
    /// anything starts that every metric's provider is registered. The default is none.
    fn analyses(&self) -> Vec<(String, AnalysisStep)> {
        Vec::new()
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
    fn promote_step(&self, step: usize) -> Option<usize> {
        self.inner().promote_step(step)
    }
    fn stateful_max_unavailable(&self, replicas: u32) -> u32 {
        self.inner().stateful_max_unavailable(replicas)
    }
    fn recreates(&self) -> bool {
        self.inner().recreates()
    }
    fn analyses(&self) -> Vec<(String, AnalysisStep)> {
        self.inner().analyses()
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
    /// Several problems, each with its path, in the order found (never fewer than two; see
    /// [`StrategyError::from_problems`]).
    #[error("{}", list_problems(.0))]
    Invalid(Vec<StrategyError>),
}

impl StrategyError {
    /// `Ok` when `problems` is empty, the problem itself when there is one, and
    /// [`StrategyError::Invalid`] listing them all otherwise (nested lists are flattened).
    pub fn from_problems(problems: Vec<StrategyError>) -> Result<(), StrategyError> {
        let mut flat = Vec::with_capacity(problems.len());
        for p in problems {
            match p {
                StrategyError::Invalid(inner) => flat.extend(inner),
                other => flat.push(other),
            }
        }
        match flat.len() {
            0 => Ok(()),
            1 => Err(flat.remove(0)),
            _ => Err(StrategyError::Invalid(flat)),
        }
    }

    /// Each problem: the list of [`StrategyError::Invalid`], or this error alone.
    pub fn problems(&self) -> &[StrategyError] {
        match self {
            StrategyError::Invalid(all) => all,
            one => std::slice::from_ref(one),
        }
    }
}

/// "3 problems: a; b; c".
fn list_problems(problems: &[StrategyError]) -> String {
    let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
    format!("{} problems: {}", problems.len(), list.join("; "))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::plan::Gate;

    /// A host's own strategy: only the required methods.
    #[derive(Debug)]
    struct Host;

    impl ReleaseStrategy for Host {
        fn name(&self) -> &'static str {
            "host"
        }
        fn validate(&self, _stateful: bool) -> Result<(), StrategyError> {
            Ok(())
        }
        fn steps(&self) -> usize {
            2
        }
        fn plan(&self, _view: &RolloutView) -> Plan {
            Plan::gate(Gate::Done)
        }
    }

    #[test]
    fn seam_is_object_safe_and_defaults_suit_a_host_strategy() {
        fn assert_seam<T: ?Sized + Send + Sync + Debug + 'static>() {}
        assert_seam::<dyn ReleaseStrategy>();
        let s: Arc<dyn ReleaseStrategy> = Arc::new(Host);
        assert_eq!(s.promote_step(0), Some(1));
        assert_eq!(s.promote_step(1), Some(2));
        assert_eq!(s.promote_step(2), None, "never past the steps");
        assert_eq!(s.promote_step(usize::MAX), None);
        assert_eq!(s.promote_full_step(0), 2);
        assert_eq!(s.stateful_max_unavailable(10), 1);
        assert!(!s.recreates());
    }

    #[test]
    fn the_strategy_choice_forwards_every_method() {
        let s = Strategy::Recreate(Recreate::default());
        assert!(s.recreates());
        assert_eq!(s.promote_step(0), None);
        assert_eq!(s.stateful_max_unavailable(3), 3);
        let s = Strategy::default();
        assert!(!s.recreates());
        assert_eq!(s.stateful_max_unavailable(3), 1);
    }

    #[test]
    fn problems_are_listed_one_or_many() {
        let field = |f: &str| StrategyError::Field {
            field: f.into(),
            message: "bad".into(),
        };
        StrategyError::from_problems(Vec::new()).unwrap();
        let one = StrategyError::from_problems(vec![field("a")]).unwrap_err();
        assert!(matches!(one, StrategyError::Field { .. }), "{one:?}");
        assert_eq!(one.to_string(), "a: bad");
        assert_eq!(one.problems().len(), 1);
        let many =
            StrategyError::from_problems(vec![field("a"), field("b"), field("c")]).unwrap_err();
        assert_eq!(many.to_string(), "3 problems: a: bad; b: bad; c: bad");
        assert_eq!(many.problems().len(), 3);
        let nested = StrategyError::from_problems(vec![many, field("d")]).unwrap_err();
        assert_eq!(nested.problems().len(), 4, "flattened");
    }
}
