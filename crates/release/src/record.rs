//! What a rollout is asked to do ([`RolloutSpec`]), and the small value types the persisted
//! state ([`Rollout`](crate::machine::Rollout)) and the status are made of.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::analysis::{AnalysisPhase, AnalysisRun};
use crate::registry::StrategySpec;
use rorqual_core::model::{AppSpec, Revision};

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
    /// The strategy, as `{kind, config}` (or Argo's `{canary: {...}}` shape), resolved through
    /// the controller's [`StrategyRegistry`](crate::StrategyRegistry).
    #[serde(default)]
    pub strategy: StrategySpec,
    /// What a failure does.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Seconds without progress before the rollout fails (600).
    #[serde(default = "six_hundred")]
    pub progress_deadline_seconds: u64,
    /// How many old revisions are kept for `undo` (10).
    #[serde(default = "ten")]
    pub revision_history_limit: usize,
    /// Seconds an aborted revision's instances are kept after the stable group is full (30),
    /// with a traffic router or in blue-green only (a basic canary's aborted instances carry
    /// traffic by their count, so they go at once); `0` keeps them (Argo: never scale down).
    #[serde(default = "thirty")]
    pub abort_scale_down_delay_seconds: u64,
    /// Who released this revision (shown to approvers and in notifications).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_by: Option<String>,
    /// The commit this revision was released from (GitOps), shown to approvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
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
    pub fn new(app: AppSpec, strategy: impl Into<StrategySpec>) -> Self {
        RolloutSpec {
            app,
            strategy: strategy.into(),
            failure_policy: FailurePolicy::RollBack,
            progress_deadline_seconds: 600,
            revision_history_limit: 10,
            abort_scale_down_delay_seconds: 30,
            released_by: None,
            commit: None,
        }
    }

    /// Says who released it and from which commit (shown to approvers).
    #[must_use]
    pub fn released(mut self, by: impl Into<String>, commit: Option<String>) -> Self {
        self.released_by = Some(by.into());
        self.commit = commit;
        self
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

    /// A hash of the strategy (its kind and config): editing it restarts the rollout at step 0.
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
