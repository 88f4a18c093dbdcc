//! What a rollout is asked to do ([`RolloutSpec`]) and what the controller persists about it
//! ([`RolloutStatus`] inside a record stored as JSON in the engine's state store).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::strategy::Strategy;
use crate::analysis::{AnalysisPhase, AnalysisRun};
use rorqual_core::model::{AppKey, AppSpec, Revision};

/// What to do when a rollout fails (analysis failed, approval rejected, deadline exceeded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Abort: all traffic and replicas back to the stable revision (the default).
    #[default]
    RollBack,
    /// Pause where it is, with the reason; `retry` or `promote` continues.
    Pause,
}

/// A rollout: the desired application and how to get there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct RolloutSpec {
    /// The desired application (template and replicas).
    pub app: AppSpec,
    /// The strategy.
    #[serde(default)]
    pub strategy: Strategy,
    /// What a failure does.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Seconds without progress before the rollout fails (600).
    #[serde(default = "six_hundred")]
    pub progress_deadline_seconds: u64,
    /// How many old revisions are kept for `undo` (10).
    #[serde(default = "ten")]
    pub revision_history_limit: usize,
    /// Seconds an aborted revision's instances are kept after the stable group is full (30).
    #[serde(default = "thirty")]
    pub abort_scale_down_delay_seconds: u64,
}

fn six_hundred() -> u64 {
    600
}
fn ten() -> usize {
    10
}
fn thirty() -> u64 {
    30
}

impl RolloutSpec {
    /// A rollout of `app` with `strategy` and the defaults.
    pub fn new(app: AppSpec, strategy: Strategy) -> Self {
        RolloutSpec {
            app,
            strategy,
            failure_policy: FailurePolicy::RollBack,
            progress_deadline_seconds: 600,
            revision_history_limit: 10,
            abort_scale_down_delay_seconds: 30,
        }
    }

    /// Sets the failure policy.
    #[must_use]
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Sets the progress deadline.
    #[must_use]
    pub fn progress_deadline(mut self, seconds: u64) -> Self {
        self.progress_deadline_seconds = seconds;
        self
    }

    /// Sets the abort scale-down delay.
    #[must_use]
    pub fn abort_scale_down_delay(mut self, seconds: u64) -> Self {
        self.abort_scale_down_delay_seconds = seconds;
        self
    }

    /// Sets the revision history limit.
    #[must_use]
    pub fn revision_history_limit(mut self, limit: usize) -> Self {
        self.revision_history_limit = limit;
        self
    }

    /// A hash of the strategy (its steps): editing it restarts the rollout at step 0.
    pub fn step_hash(&self) -> String {
        // Serialising plain data (strings, numbers, maps) cannot fail.
        let json = serde_json::to_vec(&self.strategy).unwrap_or_default();
        Sha256::digest(&json)
            .iter()
            .take(5)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The phase of a rollout (Argo's order of precedence: Degraded, Paused, Progressing,
/// Healthy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RolloutPhase {
    /// Moving towards the target.
    Progressing,
    /// Waiting for time, a person, or an operator after a problem.
    Paused,
    /// Aborted, or failed (deadline exceeded, invalid).
    Degraded,
    /// The target is stable and fully available.
    Healthy,
}

/// A revision kept for `undo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct HistoryEntry {
    /// The revision.
    pub revision: Revision,
    /// Its spec.
    pub spec: AppSpec,
    /// When it became stable.
    pub promoted_at: SystemTime,
}

/// The observable status of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RolloutStatus {
    /// The application.
    pub app: AppKey,
    /// Phase.
    pub phase: RolloutPhase,
    /// Why it is in its phase.
    pub reason: String,
    /// The revision being rolled out.
    pub target: Revision,
    /// The stable revision.
    pub stable: Option<Revision>,
    /// The current step.
    pub step: usize,
    /// The hash of the steps the index refers to.
    pub step_hash: String,
    /// When the current step started.
    pub step_started: SystemTime,
    /// The step whose scale-down delay began, and when (the first time the controller saw the
    /// delay gate in that step); ignored once the rollout is at another step, and cleared when
    /// the new revision loses availability during the delay (the delay then starts again).
    #[serde(default)]
    pub scale_down_started: Option<(usize, SystemTime)>,
    /// When the last progress was seen (for the progress deadline).
    pub last_progress: SystemTime,
    /// Highest target availability seen in this step (flapping does not count as progress).
    pub progress_mark: u32,
    /// Aborted: rolling back to stable.
    pub aborted: bool,
    /// When it was aborted.
    pub aborted_at: Option<SystemTime>,
    /// Why it was aborted.
    #[serde(default)]
    pub abort_reason: Option<String>,
    /// Held by a problem or the pause policy, with the reason; promote or retry resumes.
    pub hold: Option<String>,
    /// Promote-full: remaining steps, pauses and analyses are skipped.
    pub promote_full: bool,
    /// The approval for the current step was requested.
    pub approval_requested: bool,
    /// The replica count the groups were last planned for.
    pub planned_replicas: Option<u32>,
    /// The target's traffic weight as routed now: the weight last set on the router for the
    /// current target (0 at the start of a rollout to a new revision, until its first split
    /// is applied).
    pub weight: Option<u32>,
    /// The revision the preview route serves (blue-green), once set on the router; `None`
    /// when empty or when the router has no preview service.
    #[serde(default)]
    pub preview: Option<Revision>,
    /// The current step's analysis (a canary analysis step, blue-green pre- or
    /// post-promotion), while it runs and once it ended in this step. After an abort it keeps
    /// the run that caused it.
    #[serde(default)]
    pub analysis: Option<AnalysisStatus>,
    /// The background analysis (canary), from its starting step on.
    #[serde(default)]
    pub background_analysis: Option<AnalysisStatus>,
    /// Revisions whose approval requests and decisions could not be withdrawn when their
    /// attempt ended (the approval gate failed). The controller retries on every reconcile,
    /// and while the target is listed it neither reads a decision for it nor asks again, so
    /// a decision from an earlier attempt is never taken for this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withdrawals_owed: Vec<Revision>,
}

/// An analysis run as a console shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct AnalysisStatus {
    /// The run's key: `step-<index>`, `pre-promotion`, `post-promotion` or `background`.
    pub key: String,
    /// Its phase.
    pub phase: AnalysisPhase,
    /// Why it ended as it did (failed, errored, inconclusive), or how far each metric got:
    /// `error-rate: Running after 2 measurements (2 successful), last value 0.01`.
    pub message: String,
}

impl AnalysisStatus {
    /// An analysis that could not start (`phase` Error) for `reason`.
    pub fn error(key: &str, reason: String) -> Self {
        AnalysisStatus {
            key: key.to_owned(),
            phase: AnalysisPhase::Error,
            message: reason,
        }
    }

    /// The status of `run`, stored under `key`.
    pub fn from_run(key: &str, run: &AnalysisRun) -> Self {
        let message = run.message().unwrap_or_else(|| {
            run.metrics()
                .iter()
                .map(|m| {
                    let n = m.count + m.error;
                    if n == 0 {
                        return format!("{}: {}, no measurement yet", m.name, m.phase.as_str());
                    }
                    let mut counts = vec![format!("{} successful", m.successful)];
                    for (k, what) in [
                        (m.failed, "failed"),
                        (m.inconclusive, "inconclusive"),
                        (m.error, "errored"),
                    ] {
                        if k > 0 {
                            counts.push(format!("{k} {what}"));
                        }
                    }
                    let last = m
                        .measurements
                        .back()
                        .and_then(|x| x.value.as_ref())
                        .map(|v| format!(", last value {v}"))
                        .unwrap_or_default();
                    format!(
                        "{}: {} after {n} measurement{} ({}){last}",
                        m.name,
                        m.phase.as_str(),
                        if n == 1 { "" } else { "s" },
                        counts.join(", ")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        });
        AnalysisStatus {
            key: key.to_owned(),
            phase: run.phase(),
            message,
        }
    }
}

/// Everything persisted about one rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RolloutRecord {
    pub(crate) spec: RolloutSpec,
    pub(crate) stable: Option<AppSpec>,
    pub(crate) history: Vec<HistoryEntry>,
    pub(crate) status: RolloutStatus,
    pub(crate) analyses: BTreeMap<String, AnalysisRun>,
}

impl RolloutRecord {
    /// The store key of `app`'s rollout.
    pub(crate) fn key(app: &AppKey) -> String {
        format!(
            "{}{}/{}",
            super::controller::STATE_PREFIX,
            app.namespace,
            app.name
        )
    }

    /// The spec of `revision`, from the target, the stable spec or the history.
    pub(crate) fn spec_of(&self, revision: &Revision) -> Option<AppSpec> {
        let with_replicas = |s: &AppSpec| s.clone().replicas(self.spec.app.replicas);
        if &self.status.target == revision {
            return Some(self.spec.app.clone());
        }
        if let Some(s) = self.stable.as_ref().filter(|s| &s.revision() == revision) {
            return Some(with_replicas(s));
        }
        self.history
            .iter()
            .find(|h| &h.revision == revision)
            .map(|h| with_replicas(&h.spec))
    }
}
