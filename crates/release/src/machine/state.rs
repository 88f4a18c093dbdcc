//! The rollout's persisted state: one [`Rollout`] record per application, whose
//! [`RolloutState`] is a single enum rather than a set of flags.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::analysis::AnalysisRun;
use crate::record::{AnalysisStatus, HistoryEntry, RolloutPhase, RolloutSpec};
use rorqual_core::model::{AppKey, AppSpec, Revision};

/// Where a rollout is. Argo's phases are projections of it ([`RolloutState::phase`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
#[non_exhaustive]
pub enum RolloutState {
    /// Moving the current step's replicas and traffic into place, or running its analysis.
    Progressing,
    /// Stopped until a time, a promote or a resume.
    Paused {
        /// Why.
        why: PauseReason,
    },
    /// The current step waits for an approval decision (or a promote).
    WaitingApproval {
        /// What the approver is asked.
        message: String,
    },
    /// Rolling back to the stable revision: traffic first, then replicas, then (after the
    /// abort delay, where one applies) the aborted revision is removed.
    Aborting {
        /// When it was aborted.
        at: SystemTime,
        /// Why.
        reason: String,
    },
    /// Aborted and rolled back: the stable revision serves. `retry` or a new release moves on.
    Degraded {
        /// Why it was aborted.
        reason: String,
    },
    /// The target is the stable revision.
    Healthy,
}

impl RolloutState {
    /// Argo's phase for this state.
    pub fn phase(&self) -> RolloutPhase {
        match self {
            RolloutState::Progressing => RolloutPhase::Progressing,
            RolloutState::Paused { .. } | RolloutState::WaitingApproval { .. } => {
                RolloutPhase::Paused
            }
            RolloutState::Aborting { .. } | RolloutState::Degraded { .. } => RolloutPhase::Degraded,
            RolloutState::Healthy => RolloutPhase::Healthy,
        }
    }

    /// Whether the rollout is aborting or aborted.
    pub fn is_aborted(&self) -> bool {
        matches!(
            self,
            RolloutState::Aborting { .. } | RolloutState::Degraded { .. }
        )
    }
}

/// Why a rollout is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
#[non_exhaustive]
pub enum PauseReason {
    /// The step asks for it: a pause step (until a time, or a promote), or an analysis that
    /// ended inconclusive.
    Step {
        /// What the step says.
        message: String,
        /// When a timed pause ends; `None` waits for a promote.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<SystemTime>,
    },
    /// An operator paused it; `resume` continues.
    Operator,
    /// A problem holds it where it is (the failure policy `pause`, a traffic router error, a
    /// spec that no longer resolves); `promote` or `retry` continues.
    Held {
        /// The problem.
        reason: String,
        /// The step's own gate failed (a rejected approval, a failed step analysis): a
        /// promote passes the step instead of resuming it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        step_failed: bool,
    },
}

/// An old revision kept after the switch for its scale-down delay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Retiring {
    /// The old revision.
    pub revision: Revision,
    /// When the delay ends. It starts again if the new stable revision loses full
    /// availability meanwhile.
    pub until: SystemTime,
    /// The whole delay.
    pub delay: Duration,
    /// The new stable revision is not fully available: the delay starts again once it is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waiting: bool,
}

/// A revision's traffic as last applied to the router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Routed {
    /// The revision.
    pub revision: Revision,
    /// Its weight in percent.
    pub weight: u32,
    /// Its available instances when the split was applied (a router that resolves endpoints
    /// itself is told again when this changes).
    pub available: u32,
}

fn yes() -> bool {
    true
}

/// Everything persisted about one rollout: the spec, the stable spec and history kept for
/// `undo`, the machine's state, and the analysis runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Rollout {
    /// The application.
    pub app: AppKey,
    /// What is asked.
    pub spec: RolloutSpec,
    /// The spec of the stable revision.
    pub stable_spec: Option<AppSpec>,
    /// Older revisions kept for `undo`, oldest first.
    pub history: Vec<HistoryEntry>,
    /// The revision being rolled out.
    pub target: Revision,
    /// The stable revision (`None` before the first release completes).
    pub stable: Option<Revision>,
    /// The attempt number: each new template, new steps or retry starts a new attempt, and
    /// approvals are keyed by it, so an earlier attempt's decision is never read for a later one.
    pub attempt: u64,
    /// The current step.
    pub step: usize,
    /// The hash of the strategy the step index refers to.
    pub step_hash: String,
    /// When the current step started.
    pub step_started: SystemTime,
    /// Where the rollout is.
    pub state: RolloutState,
    /// A sentence on what it is doing or waiting for.
    pub message: String,
    /// Promote-full: the remaining pauses, approvals and analyses of this attempt are skipped.
    #[serde(default)]
    pub full: bool,
    /// When progress was last seen (for the progress deadline).
    pub last_progress: SystemTime,
    /// The highest target availability seen in this step (flapping is not progress).
    pub progress_mark: u32,
    /// The split last applied to the router.
    #[serde(default)]
    pub routed: Vec<Routed>,
    /// The revision the preview route serves (blue-green), once set.
    #[serde(default)]
    pub preview: Option<Revision>,
    /// Old revisions in their scale-down delay.
    #[serde(default)]
    pub retiring: Vec<Retiring>,
    /// The replica count the groups were last planned for.
    #[serde(default)]
    pub planned_replicas: Option<u32>,
    /// The router's state is unknown (a controller that just started, or a new rollout): the
    /// next step sends the split and the preview again even when they look applied.
    #[serde(skip, default = "yes")]
    pub(crate) router_stale: bool,
    /// Loaded (or created) by this process and not stepped yet: requests that may have been
    /// lost with an earlier process (an approval request, the preview) are made again.
    #[serde(skip, default = "yes")]
    pub(crate) fresh: bool,
    /// Long measurements of ended runs, to stop (not persisted: a restarted controller cannot
    /// reach another process's measurements anyway).
    #[serde(skip)]
    pub(crate) abandoned: Vec<crate::analysis::RunningMeasurement>,
    /// The analysis runs of this attempt, by key (`step-2`, `background`, `pre-promotion`…).
    #[serde(default)]
    pub analyses: BTreeMap<String, AnalysisRun>,
    /// The current (or, after an abort, the causing) step analysis, as shown.
    #[serde(default)]
    pub analysis: Option<AnalysisStatus>,
    /// The background analysis, as shown.
    #[serde(default)]
    pub background_analysis: Option<AnalysisStatus>,
}

impl Rollout {
    /// A new rollout of `spec` at `now`: attempt 1, step 0, Progressing.
    pub fn new(spec: RolloutSpec, now: SystemTime) -> Self {
        Rollout {
            app: spec.app.key(),
            target: spec.app.revision(),
            step_hash: spec.step_hash(),
            spec,
            stable_spec: None,
            history: Vec::new(),
            stable: None,
            attempt: 1,
            step: 0,
            step_started: now,
            state: RolloutState::Progressing,
            message: "rollout created".into(),
            full: false,
            last_progress: now,
            progress_mark: 0,
            routed: Vec::new(),
            preview: None,
            retiring: Vec::new(),
            planned_replicas: None,
            router_stale: true,
            fresh: true,
            abandoned: Vec::new(),
            analyses: BTreeMap::new(),
            analysis: None,
            background_analysis: None,
        }
    }

    /// The store key of `app`'s rollout under `prefix`.
    pub fn store_key(prefix: &str, app: &AppKey) -> String {
        format!("{prefix}{}/{}", app.namespace, app.name)
    }

    /// The spec of `revision`: the target's, the stable one, or one from the history (each at
    /// the spec's replica count).
    pub fn spec_of(&self, revision: &Revision) -> Option<AppSpec> {
        let with_replicas = |s: &AppSpec| s.clone().replicas(self.spec.app.replicas);
        if &self.target == revision {
            return Some(self.spec.app.clone());
        }
        if let Some(s) = self
            .stable_spec
            .as_ref()
            .filter(|s| &s.revision() == revision)
        {
            return Some(with_replicas(s));
        }
        self.history
            .iter()
            .find(|h| &h.revision == revision)
            .map(|h| with_replicas(&h.spec))
    }

    /// The routed weight of `revision` (0 when not routed).
    pub fn routed_weight(&self, revision: &Revision) -> u32 {
        self.routed
            .iter()
            .filter(|r| &r.revision == revision)
            .map(|r| r.weight)
            .sum()
    }

    /// Starts a new attempt at step 0 (a new template, new steps, or a retry).
    pub(crate) fn restart(&mut self, now: SystemTime, message: &str) {
        self.attempt += 1;
        self.step = 0;
        self.step_started = now;
        self.full = false;
        self.last_progress = now;
        self.progress_mark = 0;
        self.state = RolloutState::Progressing;
        self.message = message.to_owned();
        self.terminate_analyses();
        self.analyses.clear();
        self.analysis = None;
        self.background_analysis = None;
    }

    /// Moves to `step` (a completed step, or a promote), resetting the step's clock and
    /// progress.
    pub(crate) fn go_to_step(&mut self, step: usize, now: SystemTime) {
        self.step = step;
        self.step_started = now;
        self.last_progress = now;
        self.progress_mark = 0;
        self.analysis = None;
        self.state = RolloutState::Progressing;
    }

    /// Ends every analysis run and shows their final phases.
    pub(crate) fn terminate_analyses(&mut self) {
        for run in self.analyses.values_mut() {
            run.terminate();
            self.abandoned.extend(run.take_abandoned());
        }
        for shown in [&mut self.analysis, &mut self.background_analysis]
            .into_iter()
            .flatten()
        {
            if let Some(run) = self.analyses.get(&shown.key) {
                *shown = AnalysisStatus::from_run(&shown.key, run);
            }
        }
    }
}
