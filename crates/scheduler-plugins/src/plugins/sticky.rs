//! StickyIdentity: a stateful instance goes back to the node it ran on, or else to the same
//! zone, when that is possible (a score, so a full or gone node never blocks it).

use crate::framework::{CycleState, Plugin, PreScorePlugin, ScorePlugin, Status};
use crate::interner::Sym;
use crate::snapshot::{NodeInfo, PodInfo, Snapshot, ZONE_LABEL};

/// The StickyIdentity plugin: 100 for the previous node, 50 for its zone, 0 elsewhere.
#[derive(Debug, Clone, Copy)]
pub struct StickyIdentity {
    zone_key: Sym,
}

impl Default for StickyIdentity {
    fn default() -> Self {
        StickyIdentity::new(ZONE_LABEL)
    }
}

impl StickyIdentity {
    /// Zones are the values of node label `zone_key`.
    pub fn new(zone_key: &str) -> StickyIdentity {
        StickyIdentity {
            zone_key: Sym::new(zone_key),
        }
    }
}

#[derive(Debug, Clone)]
struct Previous {
    node: Option<Sym>,
    zone: Option<Sym>,
}

impl Plugin for StickyIdentity {
    fn name(&self) -> &str {
        "StickyIdentity"
    }
}

impl PreScorePlugin for StickyIdentity {
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
        _n: &[&NodeInfo],
    ) -> Status {
        let Some(identity) = &pod.identity else {
            return Status::skip();
        };
        let zone = identity
            .previous_node
            .and_then(|n| snapshot.node(n))
            .and_then(|n| n.labels.get(self.zone_key))
            .or(identity.previous_zone);
        if identity.previous_node.is_none() && zone.is_none() {
            return Status::skip();
        }
        state.write(Previous {
            node: identity.previous_node,
            zone,
        });
        Status::success()
    }
}

impl ScorePlugin for StickyIdentity {
    fn score(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        let Some(prev) = state.read::<Previous>() else {
            return Ok(0);
        };
        if prev.node == Some(node.name) {
            Ok(100)
        } else if prev.zone.is_some() && node.labels.get(self.zone_key) == prev.zone {
            Ok(50)
        } else {
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::StatefulIdentity;
    use rorqual_core::model::Resources;
    use std::sync::Arc;

    #[test]
    fn previous_node_then_its_zone() {
        let snap = Snapshot::from_nodes([
            NodeInfo::new("a", Resources::new(1, 1)).label(ZONE_LABEL, "z1"),
            NodeInfo::new("b", Resources::new(1, 1)).label(ZONE_LABEL, "z1"),
            NodeInfo::new("c", Resources::new(1, 1)).label(ZONE_LABEL, "z2"),
        ]);
        let mut pod = PodInfo::new("u", "ns", "db-0", Resources::default());
        let mut state = CycleState::new();
        let refs: Vec<&NodeInfo> = snap.nodes().iter().collect();
        assert!(
            StickyIdentity::default()
                .pre_score(&mut state, &pod, &snap, &refs)
                .is_skip()
        );
        pod.identity = Some(StatefulIdentity {
            key: Arc::from("ns/db-0"),
            previous_node: Some(Sym::new("a")),
            previous_zone: None,
        });
        assert!(
            StickyIdentity::default()
                .pre_score(&mut state, &pod, &snap, &refs)
                .is_success()
        );
        let scores: Vec<i64> = refs
            .iter()
            .map(|n| StickyIdentity::default().score(&state, &pod, n).unwrap())
            .collect();
        assert_eq!(scores, [100, 50, 0]);
        // The node is gone: its recorded zone still counts.
        pod.identity = Some(StatefulIdentity {
            key: Arc::from("ns/db-0"),
            previous_node: Some(Sym::new("gone")),
            previous_zone: Some(Sym::new("z2")),
        });
        let mut state = CycleState::new();
        StickyIdentity::default().pre_score(&mut state, &pod, &snap, &refs);
        let scores: Vec<i64> = refs
            .iter()
            .map(|n| StickyIdentity::default().score(&state, &pod, n).unwrap())
            .collect();
        assert_eq!(scores, [0, 0, 50]);
    }
}
