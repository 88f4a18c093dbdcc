//! Recreate: stop every old instance, then start the new revision.

use serde::{Deserialize, Serialize};

use super::plan::{Gate, Plan, RolloutView, stateful_moves};
use super::strategy::{ReleaseStrategy, StrategyError};

/// The Recreate strategy (Kubernetes' `Recreate`): downtime, but never two revisions at once.
///
/// Step 0 stops every old instance; step 1 starts the new revision, and only once no old
/// instance is left. Nothing is skipped by a promote or a promote-full: the only wait is for
/// old instances to stop. Stateful identities all move at once (there is nothing to keep
/// available), and so does a rollback ([`stateful_max_unavailable`] is the replica count).
///
/// [`stateful_max_unavailable`]: ReleaseStrategy::stateful_max_unavailable
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

    /// Stays where it is: jumping to step 1 would start the new revision beside old
    /// instances that have not stopped yet.
    fn promote_full_step(&self, step: usize) -> usize {
        step
    }

    /// `None`: step 0 waits for old instances to stop, which a promote must not skip.
    fn promote_step(&self, _step: usize) -> Option<usize> {
        None
    }

    fn stateful_max_unavailable(&self, replicas: u32) -> u32 {
        replicas.max(1)
    }

    fn recreates(&self) -> bool {
        true
    }

    fn plan(&self, view: &RolloutView) -> Plan {
        if view.stateful {
            // Every identity moves at once: there is nothing to keep available.
            let (moves, reached) = stateful_moves(
                &view.identities,
                &view.stable,
                &view.target,
                0,
                self.stateful_max_unavailable(view.replicas),
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
        let mut old_left = 0;
        for g in view.groups.iter().filter(|g| g.revision != view.target) {
            plan.replicas.push((g.revision.clone(), 0));
            old_left += g.current;
        }
        if view.step == 0 || old_left > 0 {
            // Whatever the step, the new revision starts only once no old instance is left.
            plan.replicas.push((view.target.clone(), 0));
            plan.gate = match (old_left, view.step) {
                (0, _) => Gate::StepComplete,
                (n, _) => Gate::Progressing(format!("waiting for {n} old instances to stop")),
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

    #[test]
    fn never_starts_the_new_revision_beside_old_instances() {
        let s = Recreate::default();
        assert!(s.recreates());
        assert_eq!(s.promote_step(0), None, "a promote does not skip the stop");
        assert_eq!(s.promote_full_step(0), 0, "nor does a promote-full");
        // Even at step 1 (however it got there) the new revision waits for the old to stop.
        let mut v = RolloutView::new("old".into(), "new".into(), 3);
        v.step = 1;
        v.groups = vec![GroupView::new("old".into(), 0, 2, 2)];
        let p = s.plan(&v);
        assert_eq!(p.replicas_of(&"new".into()), Some(0));
        assert_eq!(p.replicas_of(&"old".into()), Some(0));
        assert!(matches!(p.gate, Gate::Progressing(_)));
        assert_eq!(
            s.stateful_max_unavailable(4),
            4,
            "identities all move at once"
        );
    }
}
