//! TaintToleration: untolerated NoSchedule/NoExecute taints filter a node out; untolerated
//! PreferNoSchedule taints lower its score.

use rorqual_core::model::TaintEffect;

use crate::framework::{CycleState, FilterPlugin, Plugin, ScorePlugin, Status};
use crate::plugins::normalize_by_max;
use crate::snapshot::{NodeInfo, PodInfo};

/// The TaintToleration plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaintToleration;

impl Plugin for TaintToleration {
    fn name(&self) -> &str {
        "TaintToleration"
    }
}

impl FilterPlugin for TaintToleration {
    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let untolerated = node.taints.iter().find(|t| {
            t.effect != TaintEffect::PreferNoSchedule
                && !pod.tolerations.iter().any(|tol| tol.tolerates(t))
        });
        match untolerated {
            Some(t) => Status::unresolvable(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key, t.value
            )),
            None => Status::success(),
        }
    }
}

impl ScorePlugin for TaintToleration {
    fn score(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        Ok(node
            .taints
            .iter()
            .filter(|t| {
                t.effect == TaintEffect::PreferNoSchedule
                    && !pod.tolerations.iter().any(|tol| tol.tolerates(t))
            })
            .count() as i64)
    }

    fn normalize(&self, _state: &CycleState, _pod: &PodInfo, scores: &mut [i64]) -> Status {
        normalize_by_max(scores, true);
        Status::success()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rorqual_core::model::{Resources, Taint, Toleration, TolerationOperator};

    #[test]
    fn filter_and_prefer() {
        let state = CycleState::new();
        let taint = |effect| Taint {
            key: "k".into(),
            value: "v".into(),
            effect,
        };
        let hard = NodeInfo::new("a", Resources::new(1, 1)).taint(taint(TaintEffect::NoSchedule));
        let soft =
            NodeInfo::new("b", Resources::new(1, 1)).taint(taint(TaintEffect::PreferNoSchedule));
        let mut pod = PodInfo::new("u", "ns", "p", Resources::default());
        assert!(TaintToleration.filter(&state, &pod, &hard).is_rejected());
        assert!(TaintToleration.filter(&state, &pod, &soft).is_success());
        let mut scores = vec![
            TaintToleration.score(&state, &pod, &soft).unwrap(),
            TaintToleration
                .score(&state, &pod, &NodeInfo::new("c", Resources::new(1, 1)))
                .unwrap(),
        ];
        TaintToleration.normalize(&state, &pod, &mut scores);
        assert_eq!(scores, [0, 100]);
        pod.tolerations.push(Toleration {
            key: "k".into(),
            operator: TolerationOperator::Exists,
            value: String::new(),
            effect: None,
        });
        assert!(TaintToleration.filter(&state, &pod, &hard).is_success());
    }
}
