//! NodeAffinity: `nodeSelector` and required node affinity filter; preferred terms score.

use crate::framework::{
    CycleState, FilterPlugin, NodeSet, Plugin, PreFilterPlugin, PreScorePlugin, ScorePlugin, Status,
};
use crate::plugins::normalize_by_max;
use crate::snapshot::{NodeInfo, PodInfo, Snapshot};

/// The NodeAffinity plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeAffinity;

impl Plugin for NodeAffinity {
    fn name(&self) -> &str {
        "NodeAffinity"
    }
}

impl PreFilterPlugin for NodeAffinity {
    fn pre_filter(
        &self,
        _s: &mut CycleState,
        pod: &PodInfo,
        _snap: &Snapshot,
    ) -> (Option<NodeSet>, Status) {
        if pod.node_selector.0.is_empty() && pod.required_node_affinity.is_none() {
            (None, Status::skip())
        } else {
            (None, Status::success())
        }
    }
}

impl FilterPlugin for NodeAffinity {
    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if !pod.node_selector.matches(&node.labels) {
            return Status::unresolvable("node(s) didn't match Pod's node affinity/selector");
        }
        if let Some(required) = &pod.required_node_affinity
            && !required.matches(&node.labels)
        {
            return Status::unresolvable("node(s) didn't match Pod's node affinity/selector");
        }
        Status::success()
    }
}

impl PreScorePlugin for NodeAffinity {
    fn pre_score(
        &self,
        _s: &mut CycleState,
        pod: &PodInfo,
        _snap: &Snapshot,
        _n: &[&NodeInfo],
    ) -> Status {
        if pod.preferred_node_affinity.is_empty() {
            Status::skip()
        } else {
            Status::success()
        }
    }
}

impl ScorePlugin for NodeAffinity {
    fn score(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        Ok(pod
            .preferred_node_affinity
            .iter()
            .filter(|(_, term)| term.matches(&node.labels))
            .map(|(w, _)| i64::from(*w))
            .sum())
    }

    fn normalize(&self, _state: &CycleState, _pod: &PodInfo, scores: &mut [i64]) -> Status {
        normalize_by_max(scores, false);
        Status::success()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::{NodeSelector, Selector};
    use rorqual_core::model::Resources;

    #[test]
    fn required_and_preferred() {
        let state = CycleState::new();
        let a = NodeInfo::new("a", Resources::new(1, 1)).label("zone", "z1");
        let b = NodeInfo::new("b", Resources::new(1, 1)).label("zone", "z2");
        let mut pod = PodInfo::new("u", "ns", "p", Resources::default());
        pod.required_node_affinity =
            Some(NodeSelector(vec![Selector::match_labels([("zone", "z1")])]));
        assert!(NodeAffinity.filter(&state, &pod, &a).is_success());
        assert!(NodeAffinity.filter(&state, &pod, &b).is_rejected());
        pod.required_node_affinity = None;
        pod.preferred_node_affinity = vec![(10, Selector::match_labels([("zone", "z2")]))];
        let mut scores = vec![
            NodeAffinity.score(&state, &pod, &a).unwrap(),
            NodeAffinity.score(&state, &pod, &b).unwrap(),
        ];
        NodeAffinity.normalize(&state, &pod, &mut scores);
        assert_eq!(scores, [0, 100]);
    }
}
