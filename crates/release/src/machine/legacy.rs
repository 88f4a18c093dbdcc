//! Records of the controller before the state machine (a status of flags), read and turned
//! into a [`Rollout`] so that an upgraded controller resumes them.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Deserialize;

use super::{PauseReason, Rollout, RolloutState, Routed};
use crate::analysis::AnalysisRun;
use crate::record::{HistoryEntry, RolloutPhase, RolloutSpec};
use rorqual_core::model::{AppKey, AppSpec, Revision};

#[derive(Deserialize)]
struct Record {
    spec: RolloutSpec,
    stable: Option<AppSpec>,
    #[serde(default)]
    history: Vec<HistoryEntry>,
    status: Status,
    #[serde(default)]
    analyses: BTreeMap<String, AnalysisRun>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    app: AppKey,
    phase: RolloutPhase,
    reason: String,
    target: Revision,
    stable: Option<Revision>,
    step: usize,
    step_hash: String,
    step_started: SystemTime,
    last_progress: SystemTime,
    #[serde(default)]
    progress_mark: u32,
    #[serde(default)]
    aborted: bool,
    #[serde(default)]
    aborted_at: Option<SystemTime>,
    #[serde(default)]
    abort_reason: Option<String>,
    #[serde(default)]
    hold: Option<String>,
    #[serde(default)]
    promote_full: bool,
    #[serde(default)]
    approval_requested: bool,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    preview: Option<Revision>,
}

/// The rollout an old record describes, or `None` when `bytes` is not one.
pub(crate) fn migrate(bytes: &[u8]) -> Option<Rollout> {
    let old: Record = serde_json::from_slice(bytes).ok()?;
    let st = old.status;
    let mut r = Rollout::new(old.spec, st.step_started);
    r.app = st.app;
    r.stable_spec = old.stable;
    r.history = old.history;
    r.target = st.target.clone();
    r.stable = st.stable.clone();
    r.step = st.step;
    r.step_hash = st.step_hash;
    r.step_started = st.step_started;
    r.last_progress = st.last_progress;
    r.progress_mark = st.progress_mark;
    r.full = st.promote_full;
    r.preview = st.preview;
    r.analyses = old.analyses;
    r.message = st.reason.clone();
    r.state = if st.aborted {
        let reason = st.abort_reason.unwrap_or_else(|| st.reason.clone());
        if st.phase == RolloutPhase::Degraded && st.reason.starts_with("aborted: ") {
            RolloutState::Degraded { reason }
        } else {
            RolloutState::Aborting {
                at: st.aborted_at.unwrap_or(st.step_started),
                reason,
            }
        }
    } else if let Some(reason) = st.hold {
        RolloutState::Paused {
            why: PauseReason::Held {
                reason,
                step_failed: false,
            },
        }
    } else if st.phase == RolloutPhase::Healthy {
        RolloutState::Healthy
    } else if st.approval_requested {
        RolloutState::WaitingApproval {
            message: st.reason.clone(),
        }
    } else {
        // Paused at a step, or moving: the machine plans the step again.
        RolloutState::Progressing
    };
    if let (Some(stable), Some(w)) = (&st.stable, st.weight) {
        let w = w.min(100);
        r.routed = [(stable.clone(), 100 - w), (st.target, w)]
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .map(|(revision, weight)| Routed {
                revision,
                weight,
                available: 0,
            })
            .collect();
    }
    Some(r)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_old_record_at_a_step_with_weight_reads_as_a_rollout() {
        let spec = RolloutSpec::new(
            AppSpec::new(
                "web",
                vec![rorqual_core::model::ContainerSpec::new("app", ["demo"])],
            ),
            crate::Canary::new(vec![crate::CanaryStep::SetWeight(20)]),
        );
        let json = serde_json::json!({
            "spec": spec,
            "stable": null,
            "history": [],
            "status": {
                "app": {"namespace": "default", "name": "web"},
                "phase": "Paused", "reason": "waiting for approval: go?",
                "target": "v2", "stable": "v1", "step": 1, "stepHash": "abc",
                "stepStarted": {"secs_since_epoch": 1000, "nanos_since_epoch": 0},
                "lastProgress": {"secs_since_epoch": 1000, "nanos_since_epoch": 0},
                "progressMark": 2, "aborted": false, "abortedAt": null, "hold": null,
                "promoteFull": false, "approvalRequested": true, "plannedReplicas": 10,
                "weight": 20
            },
            "analyses": {}
        });
        let r = migrate(&serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(r.step, 1);
        assert!(matches!(r.state, RolloutState::WaitingApproval { .. }));
        assert_eq!(r.routed_weight(&Revision::from("v2")), 20);
        assert_eq!(r.routed_weight(&Revision::from("v1")), 80);
        assert!(migrate(b"{\"not\": \"a record\"}").is_none());
    }
}
