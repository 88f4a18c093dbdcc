//! Recreate: stop every old instance, then start the new revision.

use serde::{Deserialize, Serialize};

use super::plan::{Gate, Plan, RolloutView, stateful_moves};
use super::strategy::{ReleaseStrategy, StrategyError};

/// The Recreate strategy (Kubernetes' `Recreate`): downtime, but never two revisions at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Recreate {}

impl ReleaseStrategy for Recreate {
    fn name(&self) -> &'static str {
        "recreate"
    }

    fn validate(&self, _stateful: bool) -> Result<(), StrategyError> {
        Ok(())
    }

    fn steps(&self) -> usize {
        1
    }

    fn plan(&self, view: &RolloutView) -> Plan {
        if view.stateful {
            // Every identity moves at once: there is nothing to keep available.
            let (moves, reached) = stateful_moves(
                &view.identities,
                &view.stable,
                &view.target,
                0,
                view.replicas.max(1),
            );
            let mut plan = Plan::gate(if reached {
                Gate::Done
            } else {
                Gate::Progressing("recreating identities".into())
            });
            plan.partition = Some(0);
            plan.moves = moves;
            plan.target_weight = Some(100);
            return plan;
        }
        let mut plan = Plan::gate(Gate::Progressing(String::new()));
        if view.step == 0 {
            let mut old_left = 0;
            for g in view.groups.iter().filter(|g| g.revision != view.target) {
                plan.replicas.push((g.revision.clone(), 0));
                old_left += g.current;
            }
            plan.replicas.push((view.target.clone(), 0));
            plan.gate = if old_left == 0 {
                Gate::StepComplete
            } else {
                Gate::Progressing(format!("waiting for {old_left} old instances to stop"))
            };
        } else {
            let target = view.target_group();
            plan.replicas.push((view.target.clone(), view.replicas));
            plan.target_weight = Some(100);
            plan.gate = if target.available >= view.replicas {
                Gate::Done
            } else {
                Gate::Progressing(format!(
                    "{}/{} new instances available",
                    target.available, view.replicas
                ))
            };
        }
        plan
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::plan::GroupView;

    #[test]
    fn stops_old_then_starts_new() {
        let s = Recreate::default();
        let mut v = RolloutView::new("old".into(), "new".into(), 3);
        v.groups = vec![GroupView::new("old".into(), 3, 3, 3)];
        let p = s.plan(&v);
        assert_eq!(p.replicas_of(&"old".into()), Some(0));
        assert!(matches!(p.gate, Gate::Progressing(_)));
        v.groups = vec![GroupView::new("old".into(), 0, 0, 0)];
        assert_eq!(s.plan(&v).gate, Gate::StepComplete);
        v.step = 1;
        let p = s.plan(&v);
        assert_eq!(p.replicas_of(&"new".into()), Some(3));
        assert!(matches!(p.gate, Gate::Progressing(_)));
        v.groups.push(GroupView::new("new".into(), 3, 3, 3));
        assert_eq!(s.plan(&v).gate, Gate::Done);
    }
}
