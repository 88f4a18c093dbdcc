//! PodTopologySpread: `maxSkew` per topology domain; DoNotSchedule constraints filter,
//! ScheduleAnyway constraints score.

use crate::fast_hash::FastMap;
use crate::framework::{
    CycleState, FilterPlugin, NodeSet, Plugin, PreFilterPlugin, PreScorePlugin, ScorePlugin, Status,
};
use crate::interner::Sym;
use crate::snapshot::{NodeInfo, PodInfo, Snapshot, SpreadConstraint, WhenUnsatisfiable};

/// The PodTopologySpread plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct PodTopologySpread;

#[derive(Debug, Clone)]
struct DomainCounts {
    key: Sym,
    counts: FastMap<Sym, i64>,
    min: i64,
    max_skew: i64,
    self_match: i64,
}

#[derive(Debug, Clone)]
struct HardState(Vec<DomainCounts>);

#[derive(Debug, Clone)]
struct SoftState(Vec<DomainCounts>);

fn node_eligible(pod: &PodInfo, node: &NodeInfo) -> bool {
    pod.node_selector.matches(&node.labels)
        && pod
            .required_node_affinity
            .as_ref()
            .is_none_or(|r| r.matches(&node.labels))
}

/// Counts pods matching `c` per domain over `nodes` (which define the domains).
fn count<'a>(
    pod: &PodInfo,
    c: &SpreadConstraint,
    snapshot: &Snapshot,
    nodes: impl Iterator<Item = &'a NodeInfo>,
) -> DomainCounts {
    let mut counts: FastMap<Sym, i64> = FastMap::default();
    for node in nodes {
        if let Some(v) = node.labels.get(c.topology_key)
            && node_eligible(pod, node)
        {
            counts.entry(v).or_insert(0);
        }
    }
    snapshot.for_each_candidate(&c.selector, |node, other| {
        if other.namespace != pod.namespace || !c.selector.matches(&other.labels) {
            return;
        }
        let node = &snapshot.nodes()[node as usize];
        if let Some(v) = node.labels.get(c.topology_key)
            && let Some(n) = counts.get_mut(&v)
        {
            *n += 1;
        }
    });
    let min = counts.values().copied().min().unwrap_or(0);
    DomainCounts {
        key: c.topology_key,
        counts,
        min,
        max_skew: i64::from(c.max_skew),
        self_match: i64::from(c.selector.matches(&pod.labels)),
    }
}

impl Plugin for PodTopologySpread {
    fn name(&self) -> &str {
        "PodTopologySpread"
    }
}

impl PreFilterPlugin for PodTopologySpread {
    fn pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
    ) -> (Option<NodeSet>, Status) {
        let hard: Vec<&SpreadConstraint> = pod
            .spread
            .iter()
            .filter(|c| c.when_unsatisfiable == WhenUnsatisfiable::DoNotSchedule)
            .collect();
        if hard.is_empty() {
            return (None, Status::skip());
        }
        if let Some(c) = hard.iter().find(|c| c.max_skew == 0) {
            return (
                None,
                Status::unresolvable(format!(
                    "topology spread constraint on `{}` has maxSkew 0",
                    c.topology_key
                )),
            );
        }
        let counts = hard
            .iter()
            .map(|c| count(pod, c, snapshot, snapshot.nodes().iter()))
            .collect();
        state.write(HardState(counts));
        (None, Status::success())
    }
}

impl FilterPlugin for PodTopologySpread {
    fn filter(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(HardState(constraints)) = state.read::<HardState>() else {
            return Status::error("PodTopologySpread: pre-filter state missing");
        };
        for c in constraints {
            let Some(v) = node.labels.get(c.key) else {
                return Status::unresolvable(
                    "node(s) didn't match pod topology spread constraints (missing required label)",
                );
            };
            let n = c.counts.get(&v).copied().unwrap_or(0);
            if n + c.self_match - c.min > c.max_skew {
                return Status::unschedulable(
                    "node(s) didn't match pod topology spread constraints",
                );
            }
        }
        Status::success()
    }
}

impl PreScorePlugin for PodTopologySpread {
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
        nodes: &[&NodeInfo],
    ) -> Status {
        let soft: Vec<DomainCounts> = pod
            .spread
            .iter()
            .filter(|c| c.when_unsatisfiable == WhenUnsatisfiable::ScheduleAnyway)
            .map(|c| count(pod, c, snapshot, nodes.iter().copied()))
            .collect();
        if soft.is_empty() {
            return Status::skip();
        }
        state.write(SoftState(soft));
        Status::success()
    }
}

impl ScorePlugin for PodTopologySpread {
    fn score(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        let Some(SoftState(constraints)) = state.read::<SoftState>() else {
            return Err(Status::error("PodTopologySpread: pre-score state missing"));
        };
        let mut total = 0;
        for c in constraints {
            // A node without the key gets the worst count.
            let worst = c.counts.values().copied().max().unwrap_or(0) + 1;
            total += node
                .labels
                .get(c.key)
                .and_then(|v| c.counts.get(&v).copied())
                .unwrap_or(worst);
        }
        Ok(total)
    }

    fn normalize(&self, _state: &CycleState, _pod: &PodInfo, scores: &mut [i64]) -> Status {
        let (Some(&min), Some(&max)) = (scores.iter().min(), scores.iter().max()) else {
            return Status::success();
        };
        for s in scores.iter_mut() {
            *s = if max == min {
                100
            } else {
                (max - *s) * 100 / (max - min)
            };
        }
        Status::success()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::Selector;
    use rorqual_core::model::Resources;
    use std::sync::Arc;

    #[test]
    fn max_skew_filters_the_crowded_zone() {
        let mut snap = Snapshot::from_nodes([
            NodeInfo::new("a", Resources::new(10, 10)).label("zone", "z1"),
            NodeInfo::new("b", Resources::new(10, 10)).label("zone", "z2"),
            NodeInfo::new("c", Resources::new(10, 10)),
        ]);
        for i in 0..2 {
            let p =
                PodInfo::new(&format!("e{i}"), "ns", "e", Resources::default()).label("app", "web");
            snap.add_pod(Sym::new("a"), Arc::new(p)).unwrap();
        }
        let mut pod = PodInfo::new("u", "ns", "p", Resources::default()).label("app", "web");
        pod.spread.push(SpreadConstraint {
            max_skew: 1,
            topology_key: Sym::new("zone"),
            when_unsatisfiable: WhenUnsatisfiable::DoNotSchedule,
            selector: Selector::match_labels([("app", "web")]),
        });
        let mut state = CycleState::new();
        let (_, st) = PodTopologySpread.pre_filter(&mut state, &pod, &snap);
        assert!(st.is_success());
        let nodes = snap.nodes();
        assert_eq!(
            PodTopologySpread.filter(&state, &pod, &nodes[0]).code(),
            crate::framework::Code::Unschedulable
        );
        assert!(
            PodTopologySpread
                .filter(&state, &pod, &nodes[1])
                .is_success()
        );
        assert_eq!(
            PodTopologySpread.filter(&state, &pod, &nodes[2]).code(),
            crate::framework::Code::UnschedulableAndUnresolvable
        );
        pod.spread[0].when_unsatisfiable = WhenUnsatisfiable::ScheduleAnyway;
        let refs: Vec<&NodeInfo> = nodes[..2].iter().collect();
        assert!(
            PodTopologySpread
                .pre_score(&mut state, &pod, &snap, &refs)
                .is_success()
        );
        let mut scores: Vec<i64> = refs
            .iter()
            .map(|n| PodTopologySpread.score(&state, &pod, n).unwrap())
            .collect();
        PodTopologySpread.normalize(&state, &pod, &mut scores);
        assert_eq!(scores, [0, 100]);
    }
}
