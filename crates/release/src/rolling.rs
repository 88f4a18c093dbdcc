//! RollingUpdate: Kubernetes' Deployment arithmetic, with a BCS-style partition, and ordered
//! partition updates for stateful workloads.

use serde::{Deserialize, Serialize};

use super::plan::{Gate, GroupView, Plan, RolloutView, stateful_moves};
use super::scale::{IntOrPercent, resolve_fenceposts};
use super::strategy::{ReleaseStrategy, StrategyError};
use rorqual_core::model::Revision;

/// The RollingUpdate strategy.
///
/// Stateless: each reconcile makes one move of Kubernetes' deployment controller — scale the
/// new group up within `replicas + maxSurge`, or else scale old groups down while keeping
/// `replicas − maxUnavailable` available (unhealthy old instances first). A replica change
/// mid-rollout is spread proportionally over the groups. `partition` keeps that many instances
/// (int, or % rounded up) on the old revisions; the rollout then pauses until promoted.
///
/// Stateful: identities with ordinal ≥ partition move to the new revision in place, highest
/// first, at most `maxUnavailable` (default 1 for stateful) unavailable at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct RollingUpdate {
    /// Extra instances allowed above the replicas (default 25%, rounded up).
    #[serde(default = "quarter")]
    pub max_surge: IntOrPercent,
    /// Instances allowed to be unavailable (default 25%, rounded down; for stateful workloads
    /// the default is 1).
    #[serde(default)]
    pub max_unavailable: Option<IntOrPercent>,
    /// Instances kept on the old revision (int, or % of replicas rounded up).
    #[serde(default)]
    pub partition: Option<IntOrPercent>,
}

fn quarter() -> IntOrPercent {
    IntOrPercent::Percent(25)
}

impl Default for RollingUpdate {
    fn default() -> Self {
        RollingUpdate {
            max_surge: quarter(),
            max_unavailable: None,
            partition: None,
        }
    }
}

impl RollingUpdate {
    /// Sets maxSurge and maxUnavailable.
    #[must_use]
    pub fn surge_unavailable(mut self, surge: IntOrPercent, unavailable: IntOrPercent) -> Self {
        self.max_surge = surge;
        self.max_unavailable = Some(unavailable);
        self
    }

    /// Sets the partition.
    #[must_use]
    pub fn partition(mut self, partition: IntOrPercent) -> Self {
        self.partition = Some(partition);
        self
    }

    /// `(surge, unavailable)` for `replicas` (Kubernetes' fenceposts).
    pub fn fenceposts(&self, replicas: u32) -> (u32, u32) {
        let unavailable = self.max_unavailable.unwrap_or(quarter());
        let (surge, unavailable) = resolve_fenceposts(self.max_surge, unavailable, replicas);
        (surge, unavailable.min(replicas))
    }

    /// The partition as a count of instances kept on the old revision.
    pub fn partition_count(&self, replicas: u32) -> u32 {
        self.partition
            .map_or(0, |p| p.scaled(replicas, true))
            .min(replicas)
    }
}

impl ReleaseStrategy for RollingUpdate {
    fn name(&self) -> &'static str {
        "rollingUpdate"
    }

    fn validate(&self, _stateful: bool) -> Result<(), StrategyError> {
        let mut problems = Vec::new();
        for (field, value) in [
            ("rollingUpdate.maxUnavailable", self.max_unavailable),
            ("rollingUpdate.partition", self.partition),
        ] {
            if let Some(IntOrPercent::Percent(p)) = value
                && p > 100
            {
                problems.push(StrategyError::Field {
                    field: field.into(),
                    message: format!("must be at most 100%, got {p}%"),
                });
            }
        }
        StrategyError::from_problems(problems)
    }

    /// maxUnavailable for stateful workloads (default 1, at least 1).
    fn stateful_max_unavailable(&self, replicas: u32) -> u32 {
        self.max_unavailable
            .map_or(1, |m| m.scaled(replicas, false))
            .max(1)
    }

    fn steps(&self) -> usize {
        // Step 0 rolls up to the partition; a promote (step 1) removes the partition.
        usize::from(self.partition.is_some())
    }

    fn plan(&self, view: &RolloutView) -> Plan {
        let partition = if view.step == 0 {
            self.partition_count(view.replicas)
        } else {
            0
        };
        if view.stateful {
            let max_unavailable = self.stateful_max_unavailable(view.replicas);
            let (moves, reached) = stateful_moves(
                &view.identities,
                &view.stable,
                &view.target,
                partition,
                max_unavailable,
            );
            let mut plan = Plan::gate(partition_gate(reached, partition));
            plan.partition = Some(partition);
            plan.moves = moves;
            plan.target_weight = Some(weight_by_identities(view));
            return plan;
        }
        rolling_plan(self, view, partition)
    }
}

fn partition_gate(reached: bool, partition: u32) -> Gate {
    match (reached, partition) {
        (false, _) => Gate::Progressing("updating identities in order".into()),
        (true, 0) => Gate::Done,
        (true, p) => Gate::Pause(
            None,
            format!("partition reached: {p} kept on the old revision"),
        ),
    }
}

fn weight_by_identities(view: &RolloutView) -> u32 {
    let ready_target = view
        .identities
        .iter()
        .filter(|i| i.ready && i.revision == view.target)
        .count() as u64;
    let ready = view.identities.iter().filter(|i| i.ready).count() as u64;
    (ready_target * 100)
        .checked_div(ready)
        .map_or(0, |w| u32::try_from(w).unwrap_or(100))
}

/// Old groups in scale-down order: superseded canaries first, the stable group last.
fn old_groups(view: &RolloutView) -> Vec<GroupView> {
    let mut old: Vec<GroupView> = view.others().cloned().collect();
    if let Some(stable) = view.group(&view.stable)
        && view.stable != view.target
    {
        old.push(stable.clone());
    }
    old
}

fn rolling_plan(s: &RollingUpdate, view: &RolloutView, partition: u32) -> Plan {
    let replicas = view.replicas;
    let (surge, unavailable) = s.fenceposts(replicas);
    let new = view.target_group();
    let mut old = old_groups(view);
    let new_target = replicas - partition;
    let mut plan = Plan::gate(Gate::Progressing(String::new()));
    let all_desired: u32 = new.desired + old.iter().map(|g| g.desired).sum::<u32>();
    let all_available: u32 = new.available + old.iter().map(|g| g.available).sum::<u32>();
    plan.target_weight = Some(if all_available == 0 {
        0
    } else {
        u32::try_from(u64::from(new.available) * 100 / u64::from(all_available)).unwrap_or(100)
    });

    // A replica change mid-rollout: spread it proportionally (Kubernetes' `scale`).
    if let Some(previous) = view.previous_replicas {
        let active = old.iter().filter(|g| g.desired > 0).count() + usize::from(new.desired > 0);
        if previous != replicas && active > 1 {
            let (prev_surge, _) = s.fenceposts(previous);
            let mut groups: Vec<GroupView> = old.clone();
            groups.push(new.clone());
            for (rev, n) in proportional(&groups, replicas + surge, previous + prev_surge) {
                plan.replicas.push((rev, n));
            }
            plan.gate = Gate::Progressing(format!(
                "scaled from {previous} to {replicas} replicas proportionally"
            ));
            return plan;
        }
    }

    // Scale up the new group.
    let max_total = replicas + surge;
    if all_desired < max_total && new.desired < new_target {
        let up = (max_total - all_desired).min(new_target - new.desired);
        plan.replicas.push((view.target.clone(), new.desired + up));
        plan.gate = Gate::Progressing(format!("scaled up {} to {}", view.target, new.desired + up));
        return plan;
    }
    if new.desired > new_target {
        // The partition grew or replicas shrank: the new group gives back its excess.
        plan.replicas.push((view.target.clone(), new_target));
    }

    // Scale down old groups (Kubernetes' reconcileOldReplicaSets).
    let old_total: u32 = old.iter().map(|g| g.desired).sum();
    let mut old_removable = old_total.saturating_sub(partition);
    let min_available = replicas - unavailable;
    let new_unavailable = new.desired.saturating_sub(new.available);
    let max_scaled_down =
        i64::from(all_desired) - i64::from(min_available) - i64::from(new_unavailable);
    let mut changed = false;
    if max_scaled_down > 0 && old_removable > 0 {
        let max_scaled_down = u32::try_from(max_scaled_down).unwrap_or(u32::MAX);
        // Unhealthy old instances first.
        let mut cleaned = 0;
        for g in &mut old {
            if cleaned >= max_scaled_down || old_removable == 0 {
                break;
            }
            let unhealthy = g.desired.saturating_sub(g.available);
            let take = unhealthy.min(max_scaled_down - cleaned).min(old_removable);
            if take > 0 {
                g.desired -= take;
                cleaned += take;
                old_removable -= take;
                changed = true;
            }
        }
        // Then as many as availability allows.
        let available: u32 =
            new.available + old.iter().map(|g| g.available.min(g.desired)).sum::<u32>();
        if available > min_available {
            let total_down = available - min_available;
            let mut done = 0;
            for g in &mut old {
                if done >= total_down || old_removable == 0 {
                    break;
                }
                let take = g.desired.min(total_down - done).min(old_removable);
                if take > 0 {
                    g.desired -= take;
                    done += take;
                    old_removable -= take;
                    changed = true;
                }
            }
        }
    }
    if changed {
        for g in &old {
            plan.replicas.push((g.revision.clone(), g.desired));
        }
    }
    let old_desired: u32 = old.iter().map(|g| g.desired).sum();
    let old_current: u32 = old.iter().map(|g| g.current).sum();
    let reached = new.desired == new_target
        && new.available >= new_target
        && old_desired == partition
        && old_current <= partition;
    plan.gate = if reached {
        partition_gate(true, partition)
    } else {
        Gate::Progressing(format!(
            "{}/{} new available, {} old",
            new.available, new_target, old_desired
        ))
    };
    plan
}

/// Spreads `allowed` instances over `groups` in proportion to their sizes, as Kubernetes does
/// for a scaling event mid-rollout: each group gets round(size × allowed / previous), and the
/// leftover goes to the largest group (the newest on ties).
pub fn proportional(groups: &[GroupView], allowed: u32, previous: u32) -> Vec<(Revision, u32)> {
    let previous = previous.max(1);
    let mut out: Vec<(Revision, u32)> = groups
        .iter()
        .map(|g| {
            let scaled = (u64::from(g.desired) * u64::from(allowed) + u64::from(previous) / 2)
                / u64::from(previous);
            (
                g.revision.clone(),
                u32::try_from(scaled).unwrap_or(u32::MAX),
            )
        })
        .collect();
    let sum: i64 = out.iter().map(|(_, n)| i64::from(*n)).sum();
    let leftover = i64::from(allowed) - sum;
    if leftover != 0 {
        // The largest group (the last, the newest, on ties) absorbs the rounding leftover.
        let mut largest = 0;
        for (i, (_, n)) in out.iter().enumerate() {
            if *n >= out[largest].1 {
                largest = i;
            }
        }
        if let Some((_, n)) = out.get_mut(largest) {
            *n = u32::try_from((i64::from(*n) + leftover).max(0)).unwrap_or(0);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::plan::IdentityView;

    /// Simulates the deployment controller against instant or lagging readiness and returns
    /// the (new, old) desired counts after each move.
    fn simulate(s: &RollingUpdate, replicas: u32, ready_lag: bool) -> Vec<(u32, u32)> {
        let mut v = RolloutView::new("old".into(), "new".into(), replicas);
        v.groups = vec![
            GroupView::new("old".into(), replicas, replicas, replicas),
            GroupView::new("new".into(), 0, 0, 0),
        ];
        let mut seq = Vec::new();
        for _ in 0..100 {
            let plan = s.plan(&v);
            for (rev, n) in &plan.replicas {
                let g = v.groups.iter_mut().find(|g| &g.revision == rev).unwrap();
                let grew = *n > g.desired;
                g.desired = *n;
                g.current = *n;
                g.available = if grew && ready_lag {
                    g.available
                } else {
                    g.available.min(*n).max(if ready_lag { 0 } else { *n })
                };
            }
            if ready_lag && plan.replicas.is_empty() {
                // Nothing to do until the new instances are ready: they become ready now.
                for g in &mut v.groups {
                    g.available = g.desired;
                }
            }
            if plan.gate == Gate::Done || matches!(plan.gate, Gate::Pause(..)) {
                break;
            }
            if !plan.replicas.is_empty() {
                seq.push((v.groups[1].desired, v.groups[0].desired));
            }
        }
        seq
    }

    #[test]
    fn ten_replicas_default_25_25() {
        // surge 3, unavailable 2: new up to 3 (total 13), old down to 8 (available 10 ≥ 8
        // needed... only old are available), etc.
        let s = RollingUpdate::default();
        let seq = simulate(&s, 10, true);
        assert_eq!(seq[0], (3, 10), "first move: surge 3 new");
        assert_eq!(
            seq[1],
            (3, 8),
            "old down by unavailable 2 while new not ready"
        );
        assert_eq!(*seq.last().unwrap(), (10, 0));
        for (new, old) in &seq {
            assert!(new + old <= 13, "never above replicas + surge: {seq:?}");
        }
    }

    #[test]
    fn both_zero_means_one_unavailable() {
        let s =
            RollingUpdate::default().surge_unavailable(IntOrPercent::Int(0), IntOrPercent::Int(0));
        assert_eq!(s.fenceposts(5), (0, 1));
        let seq = simulate(&s, 5, true);
        assert_eq!(seq[0], (0, 4), "no surge: an old one goes first");
        assert_eq!(seq[1], (1, 4));
        assert_eq!(*seq.last().unwrap(), (5, 0));
        assert!(seq.iter().all(|(n, o)| n + o <= 5));
    }

    #[test]
    fn partition_keeps_old_instances_rounded_up_then_pauses() {
        let s = RollingUpdate::default().partition(IntOrPercent::Percent(25));
        assert_eq!(s.partition_count(10), 3, "25% of 10 rounded up");
        let mut v = RolloutView::new("old".into(), "new".into(), 10);
        v.groups = vec![
            GroupView::new("old".into(), 3, 3, 3),
            GroupView::new("new".into(), 7, 7, 7),
        ];
        assert!(matches!(s.plan(&v).gate, Gate::Pause(None, _)));
        v.step = 1;
        let p = s.plan(&v);
        assert_eq!(
            p.replicas_of(&"new".into()),
            Some(10),
            "promoted: partition lifted"
        );
        let seq = simulate(&s, 10, false);
        assert_eq!(*seq.last().unwrap(), (7, 3));
    }

    #[test]
    fn scaling_mid_rollout_is_proportional() {
        let s = RollingUpdate::default();
        let mut v = RolloutView::new("old".into(), "new".into(), 20);
        v.previous_replicas = Some(10);
        // 13 = 10 + surge 3 spread as 8 old / 5 new; now 20 + surge 5 = 25.
        v.groups = vec![
            GroupView::new("old".into(), 8, 8, 8),
            GroupView::new("new".into(), 5, 5, 5),
        ];
        let p = s.plan(&v);
        let total: u32 = p.replicas.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 25);
        assert_eq!(p.replicas_of(&"old".into()), Some(15));
        assert_eq!(p.replicas_of(&"new".into()), Some(10));
    }

    #[test]
    fn validation_and_stateful_max_unavailable() {
        let s = RollingUpdate {
            max_unavailable: Some(IntOrPercent::Percent(120)),
            partition: Some(IntOrPercent::Percent(101)),
            ..RollingUpdate::default()
        };
        assert_eq!(
            s.validate(false).unwrap_err().to_string(),
            "2 problems: rollingUpdate.maxUnavailable: must be at most 100%, got 120%; \
             rollingUpdate.partition: must be at most 100%, got 101%"
        );
        assert_eq!(RollingUpdate::default().stateful_max_unavailable(10), 1);
        let two = RollingUpdate::default()
            .surge_unavailable(IntOrPercent::Int(0), IntOrPercent::Percent(20));
        assert_eq!(two.stateful_max_unavailable(10), 2);
        // One step with a partition: a promote lifts it; without, nothing to promote.
        let partitioned = RollingUpdate::default().partition(IntOrPercent::Int(2));
        assert_eq!(partitioned.promote_step(0), Some(1));
        assert_eq!(partitioned.promote_step(1), None);
        assert_eq!(RollingUpdate::default().promote_step(0), None);
    }

    #[test]
    fn stateful_partition_moves_highest_first_within_max_unavailable() {
        let s = RollingUpdate {
            partition: Some(IntOrPercent::Int(2)),
            max_unavailable: Some(IntOrPercent::Int(2)),
            ..RollingUpdate::default()
        };
        let mut v = RolloutView::new("old".into(), "new".into(), 5);
        v.stateful = true;
        v.identities = (0..5)
            .map(|o| IdentityView::new(o, "old".into(), true))
            .collect();
        let p = s.plan(&v);
        assert_eq!(p.partition, Some(2));
        assert_eq!(
            p.moves,
            vec![(4, "new".into()), (3, "new".into())],
            "highest first, two at a time"
        );
        v.identities[4] = IdentityView::new(4, "new".into(), false);
        v.identities[3] = IdentityView::new(3, "new".into(), true);
        let p = s.plan(&v);
        assert_eq!(
            p.moves,
            vec![(2, "new".into())],
            "one unavailable leaves budget 1"
        );
        v.identities[4].ready = true;
        v.identities[2] = IdentityView::new(2, "new".into(), true);
        assert!(
            matches!(s.plan(&v).gate, Gate::Pause(None, _)),
            "partition 2 reached"
        );
        v.step = 1;
        assert_eq!(s.plan(&v).moves, vec![(1, "new".into()), (0, "new".into())]);
    }
}
