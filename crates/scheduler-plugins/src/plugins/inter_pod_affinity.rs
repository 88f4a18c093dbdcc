//! InterPodAffinity: required pod affinity and anti-affinity (both directions: the incoming
//! pod's terms, and existing pods' anti-affinity terms that select it) filter; preferred terms
//! score. Counts come from the snapshot's incrementally maintained label and anti-affinity
//! indexes, so a cycle touches only pods that can match, never every pod.

use crate::fast_hash::{FastMap, FastSet};
use crate::framework::{
    CycleState, FilterPlugin, NodeSet, Plugin, PreFilterPlugin, PreScorePlugin, ScorePlugin, Status,
};
use crate::interner::Sym;
use crate::plugins::normalize_min_max;
use crate::snapshot::{NodeInfo, PodInfo, Snapshot};

/// The InterPodAffinity plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct InterPodAffinity;

#[derive(Debug, Clone, Default)]
struct FilterState {
    /// Per required affinity term: domains (topology values) with a matching pod.
    affinity: Vec<(Sym, FastSet<Sym>)>,
    /// Whether no pod matches any affinity term and the pod matches all its own terms
    /// (the first pod of a group may go anywhere).
    affinity_self_ok: bool,
    /// (topology key, value) pairs forbidden by anti-affinity, in either direction.
    forbidden: FastSet<(Sym, Sym)>,
    forbidden_keys: Vec<Sym>,
}

#[derive(Debug, Clone, Default)]
struct ScoreState {
    weights: FastMap<(Sym, Sym), i64>,
    keys: Vec<Sym>,
}

impl Plugin for InterPodAffinity {
    fn name(&self) -> &str {
        "InterPodAffinity"
    }
}

fn domain(snapshot: &Snapshot, node: u32, key: Sym) -> Option<Sym> {
    snapshot.nodes()[node as usize].labels.get(key)
}

impl PreFilterPlugin for InterPodAffinity {
    fn pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
    ) -> (Option<NodeSet>, Status) {
        let mut fs = FilterState::default();
        for term in &pod.anti_affinity.required {
            snapshot.for_each_candidate(&term.selector, |node, other| {
                if other.uid != pod.uid && term.matches(pod.namespace, other) {
                    if let Some(v) = domain(snapshot, node, term.topology_key) {
                        fs.forbidden.insert((term.topology_key, v));
                    }
                }
            });
        }
        snapshot.for_each_anti_affinity_candidate(&pod.labels, |node, other| {
            for term in &other.anti_affinity.required {
                if other.uid != pod.uid && term.matches(other.namespace, pod) {
                    if let Some(v) = domain(snapshot, node, term.topology_key) {
                        fs.forbidden.insert((term.topology_key, v));
                    }
                }
            }
        });
        let mut any_match = false;
        for term in &pod.affinity.required {
            let mut domains = FastSet::default();
            snapshot.for_each_candidate(&term.selector, |node, other| {
                if term.matches(pod.namespace, other) {
                    any_match = true;
                    if let Some(v) = domain(snapshot, node, term.topology_key) {
                        domains.insert(v);
                    }
                }
            });
            fs.affinity.push((term.topology_key, domains));
        }
        fs.affinity_self_ok = !any_match
            && pod
                .affinity
                .required
                .iter()
                .all(|t| t.matches(pod.namespace, pod));
        if fs.forbidden.is_empty() && fs.affinity.is_empty() {
            return (None, Status::skip());
        }
        let mut keys: Vec<Sym> = fs.forbidden.iter().map(|(k, _)| *k).collect();
        keys.sort();
        keys.dedup();
        fs.forbidden_keys = keys;
        state.write(fs);
        (None, Status::success())
    }
}

impl FilterPlugin for InterPodAffinity {
    fn filter(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(fs) = state.read::<FilterState>() else {
            return Status::error("InterPodAffinity: pre-filter state missing");
        };
        for key in &fs.forbidden_keys {
            if let Some(v) = node.labels.get(*key) {
                if fs.forbidden.contains(&(*key, v)) {
                    return Status::unschedulable("node(s) didn't match pod anti-affinity rules");
                }
            }
        }
        if !fs.affinity_self_ok {
            for (key, domains) in &fs.affinity {
                let ok = node.labels.get(*key).is_some_and(|v| domains.contains(&v));
                if !ok {
                    return Status::unschedulable("node(s) didn't match pod affinity rules");
                }
            }
        }
        Status::success()
    }
}

impl PreScorePlugin for InterPodAffinity {
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
        _n: &[&NodeInfo],
    ) -> Status {
        if pod.affinity.preferred.is_empty() && pod.anti_affinity.preferred.is_empty() {
            return Status::skip();
        }
        let mut ss = ScoreState::default();
        let terms = pod
            .affinity
            .preferred
            .iter()
            .map(|(w, t)| (i64::from(*w), t))
            .chain(
                pod.anti_affinity
                    .preferred
                    .iter()
                    .map(|(w, t)| (-i64::from(*w), t)),
            );
        for (weight, term) in terms {
            snapshot.for_each_candidate(&term.selector, |node, other| {
                if other.uid != pod.uid && term.matches(pod.namespace, other) {
                    if let Some(v) = domain(snapshot, node, term.topology_key) {
                        *ss.weights.entry((term.topology_key, v)).or_default() += weight;
                    }
                }
            });
            if !ss.keys.contains(&term.topology_key) {
                ss.keys.push(term.topology_key);
            }
        }
        state.write(ss);
        Status::success()
    }
}

impl ScorePlugin for InterPodAffinity {
    fn score(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        let Some(ss) = state.read::<ScoreState>() else {
            return Err(Status::error("InterPodAffinity: pre-score state missing"));
        };
        Ok(ss
            .keys
            .iter()
            .filter_map(|k| node.labels.get(*k).and_then(|v| ss.weights.get(&(*k, v))))
            .sum())
    }

    fn normalize(&self, _state: &CycleState, _pod: &PodInfo, scores: &mut [i64]) -> Status {
        normalize_min_max(scores);
        Status::success()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{AffinityTerm, HOSTNAME_LABEL};
    use rorqual_core::model::Resources;
    use std::sync::Arc;

    fn snap() -> Snapshot {
        Snapshot::from_nodes([
            NodeInfo::new("a", Resources::new(10, 10)).label("zone", "z1"),
            NodeInfo::new("b", Resources::new(10, 10)).label("zone", "z1"),
            NodeInfo::new("c", Resources::new(10, 10)).label("zone", "z2"),
        ])
    }

    #[test]
    fn anti_affinity_both_directions_and_affinity() {
        let mut s = snap();
        let db = PodInfo::new("db", "ns", "db", Resources::default()).label("app", "db");
        s.add_pod(Sym::new("a"), Arc::new(db)).unwrap();
        // Incoming pod avoids app=db per zone: z1 forbidden.
        let mut pod = PodInfo::new("u", "ns", "p", Resources::default()).label("app", "web");
        pod.anti_affinity
            .required
            .push(AffinityTerm::new("app", "db", "zone"));
        let mut state = CycleState::new();
        assert!(
            InterPodAffinity
                .pre_filter(&mut state, &pod, &s)
                .1
                .is_success()
        );
        let ok: Vec<bool> = s
            .nodes()
            .iter()
            .map(|n| InterPodAffinity.filter(&state, &pod, n).is_success())
            .collect();
        assert_eq!(ok, [false, false, true]);
        // An existing pod that avoids app=web per host forbids its own host only.
        let mut guard = PodInfo::new("g", "ns", "g", Resources::default()).label("app", "guard");
        guard
            .anti_affinity
            .required
            .push(AffinityTerm::new("app", "web", HOSTNAME_LABEL));
        s.add_pod(Sym::new("c"), Arc::new(guard)).unwrap();
        let plain = PodInfo::new("u2", "ns", "p2", Resources::default()).label("app", "web");
        let mut state = CycleState::new();
        assert!(
            InterPodAffinity
                .pre_filter(&mut state, &plain, &s)
                .1
                .is_success()
        );
        let ok: Vec<bool> = s
            .nodes()
            .iter()
            .map(|n| InterPodAffinity.filter(&state, &plain, n).is_success())
            .collect();
        assert_eq!(ok, [true, true, false]);
        // Affinity to app=db per zone: only z1.
        let mut near = PodInfo::new("u3", "ns", "p3", Resources::default());
        near.affinity
            .required
            .push(AffinityTerm::new("app", "db", "zone"));
        let mut state = CycleState::new();
        InterPodAffinity.pre_filter(&mut state, &near, &s);
        let ok: Vec<bool> = s
            .nodes()
            .iter()
            .map(|n| InterPodAffinity.filter(&state, &near, n).is_success())
            .collect();
        assert_eq!(ok, [true, true, false]);
        // Other namespaces do not count.
        let mut other_ns = PodInfo::new("u4", "other", "p4", Resources::default());
        other_ns
            .anti_affinity
            .required
            .push(AffinityTerm::new("app", "db", "zone"));
        let mut state = CycleState::new();
        assert!(
            InterPodAffinity
                .pre_filter(&mut state, &other_ns, &s)
                .1
                .is_skip()
        );
    }

    #[test]
    fn preferred_terms_score() {
        let mut s = snap();
        s.add_pod(
            Sym::new("c"),
            Arc::new(PodInfo::new("db", "ns", "db", Resources::default()).label("app", "db")),
        )
        .unwrap();
        let mut pod = PodInfo::new("u", "ns", "p", Resources::default());
        pod.affinity
            .preferred
            .push((50, AffinityTerm::new("app", "db", "zone")));
        let mut state = CycleState::new();
        let refs: Vec<&NodeInfo> = s.nodes().iter().collect();
        assert!(
            InterPodAffinity
                .pre_score(&mut state, &pod, &s, &refs)
                .is_success()
        );
        let mut scores: Vec<i64> = refs
            .iter()
            .map(|n| InterPodAffinity.score(&state, &pod, n).unwrap())
            .collect();
        InterPodAffinity.normalize(&state, &pod, &mut scores);
        assert_eq!(scores, [0, 0, 100]);
    }
}
