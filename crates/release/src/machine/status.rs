//! The status a console shows, projected from the persisted [`Rollout`].

use serde::{Deserialize, Serialize};

use super::{PauseReason, Rollout, RolloutState};
use crate::record::{AnalysisStatus, RolloutPhase};
use rorqual_core::model::{AppKey, Revision};

/// The observable status of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RolloutStatus {
    /// The application.
    pub app: AppKey,
    /// Argo's phase (Degraded, Paused, Progressing, Healthy).
    pub phase: RolloutPhase,
    /// The machine's state.
    pub state: RolloutState,
    /// What it is doing or waiting for.
    pub reason: String,
    /// The revision being rolled out.
    pub target: Revision,
    /// The stable revision.
    pub stable: Option<Revision>,
    /// The current step.
    pub step: usize,
    /// The attempt number.
    pub attempt: u64,
    /// The target's traffic weight as last applied to the router (`None` before the first
    /// split of the rollout).
    pub weight: Option<u32>,
    /// The revision the preview route serves (blue-green).
    pub preview: Option<Revision>,
    /// The current step's analysis (after an abort: the one that caused it).
    pub analysis: Option<AnalysisStatus>,
    /// The background analysis.
    pub background_analysis: Option<AnalysisStatus>,
    /// Old revisions kept for their scale-down delay.
    pub retiring: Vec<Revision>,
    /// Promote-full is in effect.
    pub promote_full: bool,
}

impl RolloutStatus {
    /// The status of `r`.
    pub fn of(r: &Rollout) -> Self {
        RolloutStatus {
            app: r.app.clone(),
            phase: r.state.phase(),
            state: r.state.clone(),
            reason: r.message.clone(),
            target: r.target.clone(),
            stable: r.stable.clone(),
            step: r.step,
            attempt: r.attempt,
            weight: (!r.routed.is_empty()).then(|| r.routed_weight(&r.target)),
            preview: r.preview.clone(),
            analysis: r.analysis.clone(),
            background_analysis: r.background_analysis.clone(),
            retiring: r.retiring.iter().map(|x| x.revision.clone()).collect(),
            promote_full: r.full,
        }
    }

    /// Whether the current step waits for an approval decision.
    pub fn waiting_for_approval(&self) -> bool {
        matches!(self.state, RolloutState::WaitingApproval { .. })
    }

    /// Why the rollout is held (the failure policy `pause`, a router error), if it is.
    pub fn held(&self) -> Option<&str> {
        match &self.state {
            RolloutState::Paused {
                why: PauseReason::Held { reason, .. },
            } => Some(reason),
            _ => None,
        }
    }

    /// Whether the rollout is aborting or aborted.
    pub fn aborted(&self) -> bool {
        matches!(
            self.state,
            RolloutState::Aborting { .. } | RolloutState::Degraded { .. }
        )
    }
}
