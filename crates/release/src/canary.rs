//! Canary: Argo Rollouts' steps (setWeight, setReplicas, pause, analysis, approval) with
//! optional background analysis; for stateful workloads the steps become partitions.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::plan::{
    AnalysisRequest, AnalysisStep, Gate, Plan, RolloutView, analysis_gate, stateful_moves,
};
use super::scale::IntOrPercent;
use super::strategy::{ReleaseStrategy, StrategyError};
use crate::traffic::canary_replicas_for_weight;

/// One canary step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum CanaryStep {
    /// Send this percentage of traffic to the canary (without a router: that share of
    /// replicas, Argo's rounding).
    SetWeight(u32),
    /// Run this many canary instances (int, or % of replicas rounded up), whatever the weight.
    SetReplicas(IntOrPercent),
    /// Pause for `duration` seconds, or until promoted when absent.
    Pause(PauseStep),
    /// Run an analysis; Successful continues, Failed/Error aborts, Inconclusive pauses.
    Analysis(AnalysisStep),
    /// Wait for an approval decision (or a promote).
    Approval(ApprovalStep),
}

impl CanaryStep {
    /// Pause for `seconds`.
    pub fn pause(seconds: i64) -> Self {
        CanaryStep::Pause(PauseStep {
            duration: Some(seconds),
        })
    }

    /// Pause until promoted.
    pub fn pause_until_promoted() -> Self {
        CanaryStep::Pause(PauseStep { duration: None })
    }
}

/// A pause.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct PauseStep {
    /// Seconds; absent waits for a promote.
    #[serde(default)]
    pub duration: Option<i64>,
}

/// An approval step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ApprovalStep {
    /// What the approver is asked.
    #[serde(default)]
    pub message: Option<String>,
}

/// Background analysis running across steps from `startingStep`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct BackgroundAnalysis {
    /// The analysis.
    #[serde(flatten)]
    pub analysis: AnalysisStep,
    /// The step from which it runs (default 0).
    #[serde(default)]
    pub starting_step: usize,
}

/// The Canary strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Canary {
    /// The steps.
    pub steps: Vec<CanaryStep>,
    /// Background analysis.
    #[serde(default)]
    pub analysis: Option<BackgroundAnalysis>,
    /// Seconds the stable group is kept after full promotion with a traffic router (30).
    #[serde(default = "thirty")]
    pub scale_down_delay_seconds: u64,
    /// Stateful: identities unavailable at once while moving (default 1).
    #[serde(default)]
    pub max_unavailable: Option<IntOrPercent>,
}

fn thirty() -> u64 {
    30
}

impl Canary {
    /// A canary with `steps`.
    pub fn new(steps: Vec<CanaryStep>) -> Self {
        Canary {
            steps,
            analysis: None,
            scale_down_delay_seconds: 30,
            max_unavailable: None,
        }
    }

    /// Adds background analysis from `starting_step`.
    #[must_use]
    pub fn background(mut self, analysis: AnalysisStep, starting_step: usize) -> Self {
        self.analysis = Some(BackgroundAnalysis {
            analysis,
            starting_step,
        });
        self
    }

    /// Sets the scale-down delay.
    #[must_use]
    pub fn scale_down_delay(mut self, seconds: u64) -> Self {
        self.scale_down_delay_seconds = seconds;
        self
    }

    /// Canary instances wanted at `step` (the full count after the last step).
    pub fn canary_replicas(&self, step: usize, replicas: u32, routes_traffic: bool) -> u32 {
        if step >= self.steps.len() {
            return replicas;
        }
        for s in self.steps[..=step].iter().rev() {
            match s {
                CanaryStep::SetReplicas(n) => return n.scaled(replicas, true).min(replicas),
                CanaryStep::SetWeight(w) => {
                    return if routes_traffic {
                        IntOrPercent::Percent(*w)
                            .scaled(replicas, true)
                            .min(replicas)
                    } else {
                        canary_replicas_for_weight(*w, replicas)
                    };
                }
                _ => {}
            }
        }
        0
    }

    /// The traffic weight at `step` (100 after the last step).
    pub fn weight(&self, step: usize) -> u32 {
        if step >= self.steps.len() {
            return 100;
        }
        self.steps[..=step]
            .iter()
            .rev()
            .find_map(|s| match s {
                CanaryStep::SetWeight(w) => Some(*w),
                _ => None,
            })
            .unwrap_or(0)
    }
}

impl ReleaseStrategy for Canary {
    fn name(&self) -> &'static str {
        "canary"
    }

    fn validate(&self, _stateful: bool) -> Result<(), StrategyError> {
        for (index, step) in self.steps.iter().enumerate() {
            let err = |field: &str, message: String| StrategyError::Step {
                index,
                field: field.to_owned(),
                message,
            };
            match step {
                CanaryStep::SetWeight(w) if *w > 100 => {
                    return Err(err("setWeight", format!("must be 0-100, got {w}")));
                }
                CanaryStep::SetReplicas(IntOrPercent::Percent(p)) if *p > 100 => {
                    return Err(err(
                        "setReplicas",
                        format!("must be at most 100%, got {p}%"),
                    ));
                }
                CanaryStep::Pause(PauseStep { duration: Some(d) }) if *d < 0 => {
                    return Err(err(
                        "pause.duration",
                        format!("must not be negative, got {d}s"),
                    ));
                }
                CanaryStep::Analysis(a) => {
                    a.spec
                        .validate(&a.args)
                        .map_err(|source| StrategyError::Analysis {
                            location: format!("steps[{index}].analysis"),
                            source,
                        })?;
                }
                _ => {}
            }
        }
        if let Some(bg) = &self.analysis {
            if bg.starting_step > self.steps.len() {
                return Err(StrategyError::Field {
                    field: "analysis.startingStep".into(),
                    message: format!(
                        "must be at most the number of steps ({}), got {}",
                        self.steps.len(),
                        bg.starting_step
                    ),
                });
            }
            bg.analysis
                .spec
                .validate(&bg.analysis.args)
                .map_err(|source| StrategyError::Analysis {
                    location: "analysis".into(),
                    source,
                })?;
        }
        Ok(())
    }

    fn steps(&self) -> usize {
        self.steps.len()
    }

    fn plan(&self, view: &RolloutView) -> Plan {
        let n = self.steps.len();
        let step = view.step.min(n + 1);
        let replicas = view.replicas;
        let mut plan = Plan::gate(Gate::Progressing(String::new()));
        let background = self
            .analysis
            .as_ref()
            .filter(|bg| step >= bg.starting_step && step < n);
        if let Some(bg) = background {
            plan.analyses.push(AnalysisRequest::new(
                "background",
                bg.analysis.clone(),
                true,
            ));
        }
        let canary_target = self.canary_replicas(step, replicas, view.routes_traffic);

        if view.stateful {
            let max_unavailable = self
                .max_unavailable
                .map_or(1, |m| m.scaled(replicas, false))
                .max(1);
            let partition = replicas - canary_target.min(replicas);
            let (moves, reached) = stateful_moves(
                &view.identities,
                &view.stable,
                &view.target,
                partition,
                max_unavailable,
            );
            plan.partition = Some(partition);
            plan.moves = moves;
            plan.target_weight = Some(self.weight(step));
            plan.gate = if !reached {
                Gate::Progressing(format!("moving identities to partition {partition}"))
            } else if step >= n {
                Gate::Done
            } else {
                self.step_gate(view, step, &mut plan)
            };
            return self.with_background(view, plan);
        }

        let canary = view.target_group();
        let stable = view.stable_group();
        for g in view.others() {
            plan.replicas.push((g.revision.clone(), 0));
        }
        plan.replicas.push((view.target.clone(), canary_target));
        let canary_ready = canary.available >= canary_target;
        if step > n {
            // After the final promotion and the scale-down delay: remove the stable group.
            plan.replicas.push((view.stable.clone(), 0));
            plan.target_weight = Some(100);
            plan.gate = if stable.current == 0 {
                Gate::Done
            } else {
                Gate::Progressing("scaling down the old stable revision".into())
            };
            return plan;
        }
        // The stable group only shrinks as far as canary instances are available, so capacity
        // never drops; with a router the stable group stays full until the end.
        let stable_target = if view.routes_traffic && step < n {
            replicas
        } else {
            replicas - canary_target.min(canary.available).min(replicas)
        };
        let stable_target = if view.routes_traffic && step == n {
            replicas
        } else {
            stable_target
        };
        plan.replicas.push((view.stable.clone(), stable_target));
        let previous_weight = if step == 0 { 0 } else { self.weight(step - 1) };
        plan.target_weight = Some(if canary_ready {
            self.weight(step)
        } else {
            previous_weight.min(self.weight(step))
        });
        if !canary_ready {
            plan.gate = Gate::Progressing(format!(
                "{}/{canary_target} canary instances available",
                canary.available
            ));
            return self.with_background(view, plan);
        }
        if step == n {
            plan.gate = if !view.routes_traffic {
                if stable.current == 0 {
                    Gate::Done
                } else {
                    Gate::Progressing("scaling down the old stable revision".into())
                }
            } else {
                let delay = Duration::from_secs(self.scale_down_delay_seconds);
                let elapsed = view.scale_down_elapsed.unwrap_or_default();
                if elapsed >= delay {
                    Gate::StepComplete
                } else {
                    Gate::ScaleDownDelay(
                        delay - elapsed,
                        "scale-down delay before removing the old stable revision".into(),
                    )
                }
            };
            return plan;
        }
        plan.gate = self.step_gate(view, step, &mut plan);
        self.with_background(view, plan)
    }
}

impl Canary {
    fn step_gate(&self, view: &RolloutView, step: usize, plan: &mut Plan) -> Gate {
        match &self.steps[step] {
            CanaryStep::SetWeight(_) | CanaryStep::SetReplicas(_) => Gate::StepComplete,
            CanaryStep::Pause(PauseStep { duration: None }) => {
                Gate::Pause(None, format!("paused at step {step} until promoted"))
            }
            CanaryStep::Pause(PauseStep { duration: Some(d) }) => {
                let d = Duration::from_secs(u64::try_from(*d).unwrap_or(0));
                if view.step_elapsed >= d {
                    Gate::StepComplete
                } else {
                    Gate::Pause(Some(d - view.step_elapsed), format!("pause at step {step}"))
                }
            }
            CanaryStep::Analysis(a) => {
                let key = format!("step-{step}");
                plan.analyses
                    .push(AnalysisRequest::new(key.clone(), a.clone(), false));
                analysis_gate(view, &key)
            }
            CanaryStep::Approval(a) => match view.approval {
                Some(true) => Gate::StepComplete,
                Some(false) => Gate::Abort(format!("approval for step {step} was rejected")),
                None => Gate::Approval(
                    a.message
                        .clone()
                        .unwrap_or_else(|| format!("approve step {step} of the canary")),
                ),
            },
        }
    }

    /// A failed background analysis aborts whatever the step waits for; an inconclusive one
    /// pauses.
    fn with_background(&self, view: &RolloutView, mut plan: Plan) -> Plan {
        if plan.analyses.iter().any(|a| a.background) {
            match analysis_gate(view, "background") {
                g @ Gate::Abort(_) => plan.gate = g,
                g @ Gate::Pause(..) if plan.gate == Gate::StepComplete => plan.gate = g,
                _ => {}
            }
        }
        plan
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::plan::GroupView;

    fn view(step: usize, canary: (u32, u32), stable: (u32, u32)) -> RolloutView {
        let mut v = RolloutView::new("s".into(), "c".into(), 10);
        v.step = step;
        v.groups = vec![
            GroupView::new("s".into(), stable.0, stable.0, stable.1),
            GroupView::new("c".into(), canary.0, canary.0, canary.1),
        ];
        v
    }

    #[test]
    fn weight_41_percent_of_10_is_4_canary_6_stable() {
        let c = Canary::new(vec![CanaryStep::SetWeight(41)]);
        let p = c.plan(&view(0, (4, 4), (10, 10)));
        assert_eq!(p.replicas_of(&"c".into()), Some(4));
        assert_eq!(p.replicas_of(&"s".into()), Some(6));
        assert_eq!(p.target_weight, Some(41));
        assert_eq!(p.gate, Gate::StepComplete);
    }

    #[test]
    fn stable_shrinks_only_as_canary_becomes_available() {
        let c = Canary::new(vec![CanaryStep::SetWeight(50)]);
        let p = c.plan(&view(0, (0, 0), (10, 10)));
        assert_eq!(p.replicas_of(&"c".into()), Some(5));
        assert_eq!(p.replicas_of(&"s".into()), Some(10));
        assert_eq!(p.target_weight, Some(0));
        let p = c.plan(&view(0, (5, 2), (10, 10)));
        assert_eq!(p.replicas_of(&"s".into()), Some(8));
        assert!(matches!(p.gate, Gate::Progressing(_)));
    }

    #[test]
    fn with_a_router_stable_stays_full_and_canary_rounds_up() {
        let c = Canary::new(vec![CanaryStep::SetWeight(5)]);
        let mut v = view(0, (1, 1), (10, 10));
        v.routes_traffic = true;
        let p = c.plan(&v);
        assert_eq!(p.replicas_of(&"c".into()), Some(1));
        assert_eq!(p.replicas_of(&"s".into()), Some(10));
        assert_eq!(p.target_weight, Some(5));
    }

    #[test]
    fn set_replicas_pause_and_approval() {
        let c = Canary::new(vec![
            CanaryStep::SetReplicas(IntOrPercent::Percent(25)),
            CanaryStep::Pause(PauseStep { duration: Some(60) }),
            CanaryStep::Pause(PauseStep { duration: None }),
            CanaryStep::Approval(ApprovalStep::default()),
        ]);
        assert_eq!(c.canary_replicas(0, 10, false), 3, "25% of 10 rounded up");
        let mut v = view(1, (3, 3), (7, 7));
        v.step_elapsed = Duration::from_secs(20);
        assert_eq!(
            c.plan(&v).gate,
            Gate::Pause(Some(Duration::from_secs(40)), "pause at step 1".into())
        );
        v.step_elapsed = Duration::from_secs(60);
        assert_eq!(c.plan(&v).gate, Gate::StepComplete);
        v.step = 2;
        assert!(matches!(c.plan(&v).gate, Gate::Pause(None, _)));
        v.step = 3;
        assert!(matches!(c.plan(&v).gate, Gate::Approval(_)));
        v.approval = Some(false);
        assert!(matches!(c.plan(&v).gate, Gate::Abort(_)));
        v.approval = Some(true);
        assert_eq!(c.plan(&v).gate, Gate::StepComplete);
    }

    #[test]
    fn final_promotion_then_stable_removed() {
        let c = Canary::new(vec![CanaryStep::SetWeight(20)]);
        let p = c.plan(&view(1, (10, 10), (8, 8)));
        assert_eq!(p.replicas_of(&"c".into()), Some(10));
        assert_eq!(p.replicas_of(&"s".into()), Some(0));
        assert_eq!(p.target_weight, Some(100));
        assert!(matches!(p.gate, Gate::Progressing(_)));
        assert_eq!(c.plan(&view(1, (10, 10), (0, 0))).gate, Gate::Done);
    }

    #[test]
    fn with_a_router_the_scale_down_delay_counts_from_its_own_start() {
        let c = Canary::new(vec![CanaryStep::SetWeight(20)]).scale_down_delay(10);
        let mut v = view(1, (10, 10), (10, 10));
        v.routes_traffic = true;
        // 40 s into the final step (the canary took that long to scale up): the delay has
        // not begun yet, so all of it is still to run.
        v.step_elapsed = Duration::from_secs(40);
        let p = c.plan(&v);
        assert_eq!(p.replicas_of(&"s".into()), Some(10), "stable kept");
        assert_eq!(p.target_weight, Some(100));
        assert!(matches!(p.gate, Gate::ScaleDownDelay(d, _) if d == Duration::from_secs(10)));
        v.scale_down_elapsed = Some(Duration::from_secs(4));
        assert!(
            matches!(c.plan(&v).gate, Gate::ScaleDownDelay(d, _) if d == Duration::from_secs(6))
        );
        v.scale_down_elapsed = Some(Duration::from_secs(10));
        assert_eq!(c.plan(&v).gate, Gate::StepComplete);
    }

    fn analysis() -> AnalysisStep {
        let spec: crate::analysis::AnalysisSpec = serde_json::from_value(serde_json::json!({
            "metrics": [{"name": "m", "provider": {"command": {"command": ["true"]}}}]
        }))
        .unwrap();
        AnalysisStep::new(spec, Default::default())
    }

    #[test]
    fn background_analysis_runs_from_its_step_and_aborts_on_failure() {
        use crate::analysis::AnalysisPhase;
        let c = Canary::new(vec![
            CanaryStep::SetWeight(10),
            CanaryStep::pause_until_promoted(),
            CanaryStep::SetWeight(50),
        ])
        .background(analysis(), 1);
        assert!(c.plan(&view(0, (1, 1), (9, 9))).analyses.is_empty());
        let mut v = view(1, (1, 1), (9, 9));
        let p = c.plan(&v);
        assert_eq!(p.analyses.len(), 1);
        assert!(p.analyses[0].background);
        assert!(matches!(p.gate, Gate::Pause(None, _)));
        v.analysis
            .insert("background".into(), AnalysisPhase::Failed);
        assert!(matches!(c.plan(&v).gate, Gate::Abort(_)));
    }

    #[test]
    fn stateful_steps_are_partitions() {
        use crate::plan::IdentityView;
        let c = Canary::new(vec![
            CanaryStep::SetReplicas(IntOrPercent::Int(2)),
            CanaryStep::SetWeight(60),
        ]);
        let mut v = RolloutView::new("s".into(), "c".into(), 5);
        v.stateful = true;
        v.identities = (0..5)
            .map(|o| IdentityView::new(o, "s".into(), true))
            .collect();
        let p = c.plan(&v);
        assert_eq!(p.partition, Some(3));
        assert_eq!(
            p.moves,
            vec![(4, "c".into())],
            "highest first, one at a time"
        );
        v.identities[4] = IdentityView::new(4, "c".into(), true);
        v.identities[3] = IdentityView::new(3, "c".into(), true);
        assert_eq!(c.plan(&v).gate, Gate::StepComplete);
        v.step = 1;
        let p = c.plan(&v);
        assert_eq!(p.partition, Some(2), "60% of 5 = 3 on the new revision");
        assert_eq!(p.moves, vec![(2, "c".into())]);
        v.step = 2;
        assert_eq!(c.plan(&v).partition, Some(0));
    }

    #[test]
    fn validation_names_the_step() {
        let c = Canary::new(vec![CanaryStep::SetWeight(20), CanaryStep::SetWeight(120)]);
        assert_eq!(
            c.validate(false).unwrap_err().to_string(),
            "steps[1].setWeight: must be 0-100, got 120"
        );
        let c = Canary::new(vec![CanaryStep::Pause(PauseStep { duration: Some(-5) })]);
        assert_eq!(
            c.validate(false).unwrap_err().to_string(),
            "steps[0].pause.duration: must not be negative, got -5s"
        );
    }

    #[test]
    fn steps_deserialize_in_argo_shape() {
        let c: Canary = serde_json::from_str(
            r#"{"steps":[{"setWeight":20},{"pause":{"duration":30}},{"pause":{}},{"setReplicas":"50%"},{"approval":{}}]}"#,
        )
        .unwrap();
        assert_eq!(c.steps.len(), 5);
        assert_eq!(
            c.steps[3],
            CanaryStep::SetReplicas(IntOrPercent::Percent(50))
        );
    }
}
