//! Blue-green: Argo Rollouts' sequence — preview, pre-promotion analysis, promotion (manual or
//! automatic), switch, post-promotion analysis, scale-down delay.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::plan::{AnalysisRequest, AnalysisStep, Gate, Plan, RolloutView, analysis_gate};
use super::strategy::{ReleaseStrategy, StrategyError};

/// The BlueGreen strategy. Internal steps: 0 preview scale-up, 1 pre-promotion analysis,
/// 2 promotion gate, 3 full scale-up, 4 traffic switch, 5 post-promotion analysis,
/// 6 scale-down delay, 7 old revision removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct BlueGreen {
    /// Instances of the new revision while in preview (default: full replicas).
    #[serde(default)]
    pub preview_replica_count: Option<u32>,
    /// Promote without approval (default true). When false, promotion waits for an approval
    /// decision or a promote.
    #[serde(default = "yes")]
    pub auto_promotion_enabled: bool,
    /// Promote automatically after this many seconds in preview.
    #[serde(default)]
    pub auto_promotion_seconds: Option<u64>,
    /// Analysis before promotion.
    #[serde(default)]
    pub pre_promotion_analysis: Option<AnalysisStep>,
    /// Analysis after the switch; failure switches back.
    #[serde(default)]
    pub post_promotion_analysis: Option<AnalysisStep>,
    /// Seconds the old revision is kept after the switch (default 30).
    #[serde(default = "thirty")]
    pub scale_down_delay_seconds: u64,
}

fn yes() -> bool {
    true
}
fn thirty() -> u64 {
    30
}

impl Default for BlueGreen {
    fn default() -> Self {
        BlueGreen {
            preview_replica_count: None,
            auto_promotion_enabled: true,
            auto_promotion_seconds: None,
            pre_promotion_analysis: None,
            post_promotion_analysis: None,
            scale_down_delay_seconds: 30,
        }
    }
}

impl BlueGreen {
    /// Manual promotion with a preview of `preview` instances.
    pub fn manual(preview: Option<u32>) -> Self {
        BlueGreen {
            preview_replica_count: preview,
            auto_promotion_enabled: false,
            ..Self::default()
        }
    }
}

const STEPS: usize = 7;
/// The promotion gate: approval, auto-promotion delay, or straight on.
const PROMOTION_GATE: usize = 2;
/// The full scale-up: promote-full jumps here, so the new revision is fully available before
/// the switch (step 4) and the old one keeps its replicas until the scale-down delay is over.
const FULL_SCALE_UP: usize = 3;

impl ReleaseStrategy for BlueGreen {
    fn analyses(&self) -> Vec<(String, AnalysisStep)> {
        [
            ("prePromotionAnalysis", &self.pre_promotion_analysis),
            ("postPromotionAnalysis", &self.post_promotion_analysis),
        ]
        .into_iter()
        .filter_map(|(at, a)| a.clone().map(|a| (at.to_owned(), a)))
        .collect()
    }

    fn name(&self) -> &'static str {
        "blueGreen"
    }

    fn validate(&self, stateful: bool) -> Result<(), StrategyError> {
        let mut problems = Vec::new();
        if stateful {
            problems.push(StrategyError::Field {
                field: "blueGreen".into(),
                message: "needs a stateless workload (stateful identities cannot run twice)".into(),
            });
        }
        for (location, a) in [
            ("prePromotionAnalysis", &self.pre_promotion_analysis),
            ("postPromotionAnalysis", &self.post_promotion_analysis),
        ] {
            if let Some(a) = a
                && let Err(source) = a.spec.validate(&a.args)
            {
                problems.push(StrategyError::Analysis {
                    location: location.into(),
                    source,
                });
            }
        }
        StrategyError::from_problems(problems)
    }

    fn steps(&self) -> usize {
        STEPS
    }

    fn promote_full_step(&self, step: usize) -> usize {
        step.max(FULL_SCALE_UP)
    }

    /// Only the promotion gate (step 2) is passed by a promote, to the full scale-up. A
    /// promote skips neither a running pre-promotion analysis nor the preview scale-up, the
    /// switch, the post-promotion analysis or the scale-down delay: those wait for something
    /// other than a person.
    fn promote_step(&self, step: usize) -> Option<usize> {
        (step == PROMOTION_GATE).then_some(FULL_SCALE_UP)
    }

    fn plan(&self, view: &RolloutView) -> Plan {
        let replicas = view.replicas;
        let preview = self.preview_replica_count.unwrap_or(replicas).min(replicas);
        let target = view.target_group();
        let stable = view.stable_group();
        let mut plan = Plan::gate(Gate::StepComplete);
        for g in view.others() {
            plan.replicas.push((g.revision.clone(), 0));
        }
        // Argo: the preview service points at the new revision from its first instance until
        // the rollout is done (after the switch it serves what active serves); the controller
        // empties it when the rollout completes or aborts.
        plan.preview = true;
        let switched = view.step >= 4;
        plan.target_weight = Some(if switched { 100 } else { 0 });
        let target_count = if view.step >= FULL_SCALE_UP {
            replicas
        } else {
            preview
        };
        plan.replicas.push((view.target.clone(), target_count));
        plan.replicas.push((
            view.stable.clone(),
            if view.step >= STEPS { 0 } else { replicas },
        ));
        plan.gate = match view.step {
            0 | 3 if target.available < target_count => Gate::Progressing(format!(
                "{}/{target_count} new instances available",
                target.available
            )),
            0 | 3 | 4 => Gate::StepComplete,
            1 => self.analysis(
                view,
                &mut plan,
                "pre-promotion",
                &self.pre_promotion_analysis,
            ),
            PROMOTION_GATE => {
                if !self.auto_promotion_enabled {
                    match view.approval {
                        Some(true) => Gate::StepComplete,
                        Some(false) => Gate::Abort("promotion was rejected".into()),
                        None => Gate::Approval(format!(
                            "promote {} to active (preview has {} instances)",
                            view.target, target.available
                        )),
                    }
                } else if let Some(secs) = self.auto_promotion_seconds {
                    let d = Duration::from_secs(secs);
                    if view.step_elapsed >= d {
                        Gate::StepComplete
                    } else {
                        Gate::Pause(
                            Some(d - view.step_elapsed),
                            "auto-promotion after the preview period".into(),
                        )
                    }
                } else {
                    Gate::StepComplete
                }
            }
            5 => self.analysis(
                view,
                &mut plan,
                "post-promotion",
                &self.post_promotion_analysis,
            ),
            6 => {
                let d = Duration::from_secs(self.scale_down_delay_seconds);
                let elapsed = view.scale_down_elapsed.unwrap_or_default();
                if elapsed >= d {
                    Gate::StepComplete
                } else {
                    Gate::ScaleDownDelay(
                        d - elapsed,
                        "scale-down delay before removing the old revision".into(),
                    )
                }
            }
            _ => {
                if stable.current == 0 {
                    Gate::Done
                } else {
                    Gate::Progressing("scaling down the old revision".into())
                }
            }
        };
        plan
    }
}

impl BlueGreen {
    fn analysis(
        &self,
        view: &RolloutView,
        plan: &mut Plan,
        key: &str,
        analysis: &Option<AnalysisStep>,
    ) -> Gate {
        match analysis {
            None => Gate::StepComplete,
            Some(a) => {
                plan.analyses
                    .push(AnalysisRequest::new(key, a.clone(), false));
                analysis_gate(view, key)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::analysis::AnalysisPhase;
    use crate::plan::GroupView;

    fn view(step: usize, green: (u32, u32), blue: u32) -> RolloutView {
        let mut v = RolloutView::new("blue".into(), "green".into(), 4);
        v.step = step;
        v.groups = vec![
            GroupView::new("blue".into(), blue, blue, blue),
            GroupView::new("green".into(), green.0, green.0, green.1),
        ];
        v
    }

    #[test]
    fn argo_sequence_with_preview_and_manual_promotion() {
        let bg = BlueGreen::manual(Some(1));
        let p = bg.plan(&view(0, (0, 0), 4));
        assert_eq!(p.replicas_of(&"green".into()), Some(1));
        assert_eq!(p.replicas_of(&"blue".into()), Some(4));
        assert_eq!(p.target_weight, Some(0));
        assert!(p.preview);
        assert!(matches!(p.gate, Gate::Progressing(_)));
        assert_eq!(bg.plan(&view(0, (1, 1), 4)).gate, Gate::StepComplete);
        assert_eq!(
            bg.plan(&view(1, (1, 1), 4)).gate,
            Gate::StepComplete,
            "no analysis"
        );
        assert!(matches!(
            bg.plan(&view(2, (1, 1), 4)).gate,
            Gate::Approval(_)
        ));
        let p = bg.plan(&view(3, (1, 1), 4));
        assert_eq!(p.replicas_of(&"green".into()), Some(4));
        assert_eq!(p.target_weight, Some(0), "traffic switches only at step 4");
        let p = bg.plan(&view(4, (4, 4), 4));
        assert_eq!(p.target_weight, Some(100));
        assert!(
            p.preview,
            "preview keeps serving the new revision until done"
        );
        let mut v = view(6, (4, 4), 4);
        v.step_elapsed = Duration::from_secs(25);
        v.scale_down_elapsed = Some(Duration::from_secs(10));
        let p = bg.plan(&v);
        assert_eq!(
            p.replicas_of(&"blue".into()),
            Some(4),
            "kept during the delay"
        );
        assert!(matches!(p.gate, Gate::ScaleDownDelay(d, _) if d == Duration::from_secs(20)));
        let p = bg.plan(&view(7, (4, 4), 4));
        assert_eq!(p.replicas_of(&"blue".into()), Some(0));
        assert_eq!(bg.plan(&view(7, (4, 4), 0)).gate, Gate::Done);
    }

    #[test]
    fn promote_full_jumps_to_the_full_scale_up_not_past_the_switch() {
        let bg = BlueGreen::manual(Some(1));
        assert_eq!(bg.promote_full_step(0), 3);
        assert_eq!(bg.promote_full_step(2), 3);
        assert_eq!(bg.promote_full_step(6), 6, "never backwards");
        let p = bg.plan(&view(3, (1, 1), 4));
        assert_eq!(p.replicas_of(&"blue".into()), Some(4), "blue kept");
        assert_eq!(p.target_weight, Some(0), "no switch before green is full");
        assert!(matches!(p.gate, Gate::Progressing(_)));
    }

    #[test]
    fn promote_passes_only_the_promotion_gate() {
        let bg = BlueGreen::manual(Some(1));
        assert_eq!(bg.promote_step(2), Some(3));
        for step in [0, 1, 3, 4, 5, 6, 7] {
            assert_eq!(bg.promote_step(step), None, "step {step}");
        }
        assert_eq!(bg.stateful_max_unavailable(4), 1);
    }

    #[test]
    fn validation_reports_every_problem() {
        let bad = AnalysisStep::new(Default::default(), Default::default());
        let bg = BlueGreen {
            pre_promotion_analysis: Some(bad.clone()),
            post_promotion_analysis: Some(bad),
            ..BlueGreen::default()
        };
        let err = bg.validate(true).unwrap_err();
        assert_eq!(err.problems().len(), 3, "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with("3 problems: blueGreen: needs a stateless workload"),
            "{text}"
        );
        assert!(text.contains("; prePromotionAnalysis: "), "{text}");
        assert!(text.contains("; postPromotionAnalysis: "), "{text}");
        BlueGreen::default().validate(false).unwrap();
    }

    #[test]
    fn post_promotion_failure_aborts() {
        let spec: crate::analysis::AnalysisSpec = serde_json::from_value(serde_json::json!({
            "metrics": [{"name": "m", "provider": {"command": {"command": ["true"]}}}]
        }))
        .unwrap_or_default();
        let bg = BlueGreen {
            post_promotion_analysis: Some(AnalysisStep::new(spec, Default::default())),
            ..BlueGreen::default()
        };
        let mut v = view(5, (4, 4), 4);
        assert_eq!(bg.plan(&v).gate, Gate::Analysis("post-promotion".into()));
        v.analysis
            .insert("post-promotion".into(), AnalysisPhase::Failed);
        assert!(matches!(bg.plan(&v).gate, Gate::Abort(_)));
        assert!(bg.validate(true).is_err(), "stateful rejected");
    }
}
