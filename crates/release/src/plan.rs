//! What a strategy sees ([`RolloutView`]) and what it decides ([`Plan`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::analysis::{AnalysisPhase, AnalysisSpec};
use rorqual_core::model::Revision;

/// The observed counts of one revision group.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupView {
    /// The revision.
    pub revision: Revision,
    /// Desired instances.
    pub desired: u32,
    /// Existing instances.
    pub current: u32,
    /// Available (ready) instances.
    pub available: u32,
}

impl GroupView {
    /// A group of `revision` with these counts.
    pub fn new(revision: Revision, desired: u32, current: u32, available: u32) -> Self {
        GroupView {
            revision,
            desired,
            current,
            available,
        }
    }
}

/// One stateful identity as a strategy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdentityView {
    /// Its ordinal.
    pub ordinal: u32,
    /// The revision it runs.
    pub revision: Revision,
    /// Whether it is ready.
    pub ready: bool,
}

impl IdentityView {
    /// Identity `ordinal` at `revision`.
    pub fn new(ordinal: u32, revision: Revision, ready: bool) -> Self {
        IdentityView {
            ordinal,
            revision,
            ready,
        }
    }
}

/// Everything a strategy needs to plan one rollout, observed by the controller.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RolloutView {
    /// Desired total replicas.
    pub replicas: u32,
    /// The stable revision (serving before the rollout).
    pub stable: Revision,
    /// The revision being rolled out.
    pub target: Revision,
    /// Every group of the application.
    pub groups: Vec<GroupView>,
    /// Stateful workloads: every identity (empty for stateless ones).
    pub identities: Vec<IdentityView>,
    /// Whether the workload is stateful.
    pub stateful: bool,
    /// The current step index.
    pub step: usize,
    /// Time spent in the current step.
    pub step_elapsed: Duration,
    /// Time since the current step's scale-down delay began, for a strategy that runs the delay
    /// itself. The [`RolloutMachine`](crate::RolloutMachine) leaves it `None`: at the first
    /// [`Gate::ScaleDownDelay`] it makes the target stable and keeps the old revision for the
    /// whole delay from that moment (all traffic on the new revision by then).
    pub scale_down_elapsed: Option<Duration>,
    /// Phases of the analysis runs, by key (`step-2`, `background`, `pre-promotion`, …).
    pub analysis: BTreeMap<String, AnalysisPhase>,
    /// The approval decision for the current step, once made.
    pub approval: Option<bool>,
    /// Whether the traffic router sets weights itself.
    pub routes_traffic: bool,
    /// The replica count the groups were last planned for (a change is a scaling event).
    pub previous_replicas: Option<u32>,
}

impl RolloutView {
    /// A view of a rollout from `stable` to `target` with `replicas`, at step 0, no groups.
    pub fn new(stable: Revision, target: Revision, replicas: u32) -> Self {
        RolloutView {
            replicas,
            stable,
            target,
            groups: Vec::new(),
            identities: Vec::new(),
            stateful: false,
            step: 0,
            step_elapsed: Duration::ZERO,
            scale_down_elapsed: None,
            analysis: BTreeMap::new(),
            approval: None,
            routes_traffic: false,
            previous_replicas: None,
        }
    }

    /// The group of `revision`, if any.
    pub fn group(&self, revision: &Revision) -> Option<&GroupView> {
        self.groups.iter().find(|g| &g.revision == revision)
    }

    /// The target group's counts (zeros when it does not exist yet).
    pub fn target_group(&self) -> GroupView {
        self.group(&self.target)
            .cloned()
            .unwrap_or_else(|| GroupView::new(self.target.clone(), 0, 0, 0))
    }

    /// The stable group's counts (zeros when it does not exist).
    pub fn stable_group(&self) -> GroupView {
        self.group(&self.stable)
            .cloned()
            .unwrap_or_else(|| GroupView::new(self.stable.clone(), 0, 0, 0))
    }

    /// Groups that are neither stable nor target (superseded canaries).
    pub fn others(&self) -> impl Iterator<Item = &GroupView> {
        self.groups
            .iter()
            .filter(|g| g.revision != self.stable && g.revision != self.target)
    }
}

/// An analysis that should be running.
///
/// It owns a copy of its [`AnalysisStep`], so a [`Plan`] outlives the strategy that made it;
/// strategies only request an analysis in the steps that run it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AnalysisRequest {
    /// Its key in [`RolloutView::analysis`].
    pub key: String,
    /// What to run.
    pub analysis: AnalysisStep,
    /// Runs across steps (background analysis) rather than blocking one step.
    pub background: bool,
}

impl AnalysisRequest {
    /// A request to run `analysis` under `key`, across steps when `background`.
    pub fn new(key: impl Into<String>, analysis: AnalysisStep, background: bool) -> Self {
        AnalysisRequest {
            key: key.into(),
            analysis,
            background,
        }
    }
}

/// An analysis to run: a spec and its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct AnalysisStep {
    /// The analysis.
    pub spec: AnalysisSpec,
    /// Arguments for `{{args.name}}`.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
}

impl AnalysisStep {
    /// `spec` run with `args`.
    pub fn new(spec: AnalysisSpec, args: BTreeMap<String, String>) -> Self {
        AnalysisStep { spec, args }
    }
}

/// What the rollout waits for after applying a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Gate {
    /// The step's replicas and weights are not reached yet; check again later.
    Progressing(String),
    /// The current step is complete: go to the next one.
    StepComplete,
    /// Pause for this long (then the strategy completes the step), or until promoted (`None`).
    /// Promote-full skips it.
    Pause(Option<Duration>, String),
    /// Keep the old revision for this long after the traffic switch before removing it (the
    /// scale-down delay), with the reason shown. Unlike [`Gate::Pause`], promote-full does not
    /// skip it: Argo's full promotion skips pauses and analysis, but the old group still gets
    /// its `scaleDownDelaySeconds` so that connections drain.
    ScaleDownDelay(Duration, String),
    /// Wait for an approval decision (or a promote).
    Approval(String),
    /// Wait for the analysis run with this key.
    Analysis(String),
    /// The rollout is complete: the target becomes stable.
    Done,
    /// Apply the failure policy, for this reason.
    Abort(String),
}

/// What a strategy wants for one reconcile.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Plan {
    /// Desired replicas per revision; revisions not listed keep their count.
    pub replicas: Vec<(Revision, u32)>,
    /// The target revision's traffic weight (the stable revision gets the rest); `None` leaves
    /// the weights as they are.
    pub target_weight: Option<u32>,
    /// Blue-green: the preview route serves the target's ready instances (the controller
    /// points it there through [`TrafficRouter::set_preview`] and empties it when the rollout
    /// is done or aborted).
    ///
    /// [`TrafficRouter::set_preview`]: crate::traffic::TrafficRouter::set_preview
    pub preview: bool,
    /// Stateful: identities with this ordinal or higher belong on the target.
    pub partition: Option<u32>,
    /// Stateful: identities to move now, with the revision each moves to.
    pub moves: Vec<(u32, Revision)>,
    /// Analyses that should be running.
    pub analyses: Vec<AnalysisRequest>,
    /// What to wait for.
    pub gate: Gate,
}

impl Plan {
    /// A plan that changes nothing and waits behind `gate`.
    pub fn gate(gate: Gate) -> Self {
        Plan {
            replicas: Vec::new(),
            target_weight: None,
            preview: false,
            partition: None,
            moves: Vec::new(),
            analyses: Vec::new(),
            gate,
        }
    }

    /// The planned replicas of `revision`, if set.
    pub fn replicas_of(&self, revision: &Revision) -> Option<u32> {
        self.replicas
            .iter()
            .find(|(r, _)| r == revision)
            .map(|(_, n)| *n)
    }
}

/// Maps an analysis phase to a gate: success completes the step, failure aborts, inconclusive
/// pauses for a human, anything else waits.
pub(crate) fn analysis_gate(view: &RolloutView, key: &str) -> Gate {
    match view.analysis.get(key) {
        Some(AnalysisPhase::Successful) => Gate::StepComplete,
        Some(AnalysisPhase::Failed) => Gate::Abort(format!("analysis {key} failed")),
        Some(AnalysisPhase::Error) => Gate::Abort(format!("analysis {key} errored")),
        Some(AnalysisPhase::Inconclusive) => Gate::Pause(
            None,
            format!("analysis {key} was inconclusive; promote to continue or abort"),
        ),
        _ => Gate::Analysis(key.to_owned()),
    }
}

/// Stateful ordered update: identities with ordinal ≥ `partition` move to `target` (those
/// below to `stable`), highest ordinal first, while at most `max_unavailable` identities are
/// unavailable. Returns the moves to make now and whether the partition is reached (every
/// identity on its revision and ready).
pub fn stateful_moves(
    identities: &[IdentityView],
    stable: &Revision,
    target: &Revision,
    partition: u32,
    max_unavailable: u32,
) -> (Vec<(u32, Revision)>, bool) {
    let want = |o: u32| if o >= partition { target } else { stable };
    let unavailable = identities.iter().filter(|i| !i.ready).count() as u32;
    let mut budget = max_unavailable.max(1).saturating_sub(unavailable);
    let mut wrong: Vec<&IdentityView> = identities
        .iter()
        .filter(|i| &i.revision != want(i.ordinal))
        .collect();
    let reached = wrong.is_empty() && unavailable == 0;
    wrong.sort_by_key(|i| std::cmp::Reverse(i.ordinal));
    let mut moves = Vec::new();
    for i in wrong {
        if budget == 0 {
            break;
        }
        // Moving an unready identity costs nothing more; a ready one uses the budget.
        if i.ready {
            budget -= 1;
        }
        moves.push((i.ordinal, want(i.ordinal).clone()));
    }
    (moves, reached)
}

/// The plan when the rollout is aborted (or rolled back to stable): the stable revision back to
/// its full count first, all traffic to it, and the other groups scaled to zero only once the
/// stable group is fully available and `scale_down_after` has passed.
pub fn abort_plan(
    view: &RolloutView,
    scale_down_after: Duration,
    max_unavailable_stateful: u32,
) -> Plan {
    let mut plan = Plan::gate(Gate::Progressing(format!(
        "bringing {} to {} instances",
        view.stable, view.replicas
    )));
    plan.target_weight = Some(0);
    if view.stateful {
        let (moves, reached) = stateful_moves(
            &view.identities,
            &view.stable,
            &view.target,
            view.replicas,
            max_unavailable_stateful,
        );
        plan.partition = Some(view.replicas);
        plan.moves = moves;
        if reached {
            plan.gate = Gate::Done;
        }
        return plan;
    }
    let stable = view.stable_group();
    plan.replicas.push((view.stable.clone(), view.replicas));
    let stable_full = stable.available >= view.replicas;
    let delay_over = view.step_elapsed >= scale_down_after;
    let mut others_gone = true;
    for g in &view.groups {
        if g.revision == view.stable {
            continue;
        }
        if stable_full && delay_over {
            plan.replicas.push((g.revision.clone(), 0));
        }
        others_gone &= g.current == 0 && g.desired == 0;
    }
    if stable_full && others_gone {
        plan.gate = Gate::Done;
    } else if stable_full && !delay_over {
        plan.gate = Gate::Pause(
            Some(scale_down_after - view.step_elapsed),
            "scale-down delay before removing the aborted revision".to_owned(),
        );
    }
    plan
}
