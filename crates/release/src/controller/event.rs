//! Rollout events: what the controller tells the world (its event stream and notifier).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use rorqual_core::model::{AppKey, Revision};

/// Something that happened to a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RolloutEvent {
    /// The application.
    pub app: AppKey,
    /// The target revision.
    pub revision: Revision,
    /// The step, when about a step.
    pub step: Option<usize>,
    /// What happened.
    pub reason: EventReason,
    /// A sentence.
    pub message: String,
    /// When (on the controller's clock).
    pub time: SystemTime,
}

/// What a [`RolloutEvent`] is about. Notifications carry the same word as their `outcome`
/// ([`as_str`](EventReason::as_str), kebab-case, also the serde form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum EventReason {
    /// A spec was applied.
    Updated,
    /// An operator verb (pause, resume, abort, retry, promote, undo) was applied.
    Verb,
    /// The preview route changed (blue-green).
    Preview,
    /// A step completed.
    StepCompleted,
    /// A step waits for a manual approval.
    ApprovalRequested,
    /// The rollout paused (a pause step, an inconclusive analysis, a hold).
    Paused,
    /// The rollout was aborted (by an operator or a failure).
    Aborted,
    /// After an abort, the stable revision serves everything again.
    RolledBack,
    /// The target revision is stable.
    Healthy,
}

impl EventReason {
    /// The reason's kebab-case word (`step-completed`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventReason::Updated => "updated",
            EventReason::Verb => "verb",
            EventReason::Preview => "preview",
            EventReason::StepCompleted => "step-completed",
            EventReason::ApprovalRequested => "approval-requested",
            EventReason::Paused => "paused",
            EventReason::Aborted => "aborted",
            EventReason::RolledBack => "rolled-back",
            EventReason::Healthy => "healthy",
        }
    }
}

impl std::fmt::Display for EventReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}
