//! InterPodAffinity: required pod affinity and anti-affinity (both directions: the incoming
//! pod's terms, and existing pods' anti-affinity terms that select it) filter; scoring is
//! symmetric, as upstream's (`processExistingPod`): the incoming pod's preferred terms count the
//! existing pods they select, and existing pods' terms that select the incoming pod count too
//! (preferred affinity +weight, preferred anti-affinity −weight, required affinity
//! `hardPodAffinityWeight`), each for the nodes in the existing pod's topology domain. Counts
//! come from the snapshot's incrementally maintained label, anti-affinity and scoring-term
//! indexes, so a cycle touches only pods that can match, never every pod; a pod without terms,
//! in a cluster whose pods carry none, costs one emptiness check.

use crate::fast_hash::{FastMap, FastSet};
use crate::framework::{
    CycleState, FilterPlugin, NodeSet, Plugin, PreFilterPlugin, PreScorePlugin, ScorePlugin, Status,
};
use crate::interner::Sym;
use crate::plugins::normalize_min_max;
use crate::snapshot::{ExistingTerm, NodeInfo, PodInfo, Snapshot};

/// Upstream's default `hardPodAffinityWeight`: what an existing pod's required affinity term
/// that selects the incoming pod adds to the nodes of its topology domain.
pub const DEFAULT_HARD_POD_AFFINITY_WEIGHT: i32 = 1;
/// The largest `hardPodAffinityWeight` upstream accepts.
pub const MAX_HARD_POD_AFFINITY_WEIGHT: i32 = 100;

/// The InterPodAffinity plugin. [`InterPodAffinity::new`] (or `default()`) has upstream's
/// defaults; [`InterPodAffinity::hard_pod_affinity_weight`] changes the weight of existing
/// pods' required affinity terms in scoring.
#[derive(Debug, Clone, Copy)]
pub struct InterPodAffinity {
    hard_pod_affinity_weight: i32,
}

impl Default for InterPodAffinity {
    fn default() -> InterPodAffinity {
        InterPodAffinity::new()
    }
}

impl InterPodAffinity {
    /// The plugin with `hardPodAffinityWeight` 1.
    pub const fn new() -> InterPodAffinity {
        InterPodAffinity {
            hard_pod_affinity_weight: DEFAULT_HARD_POD_AFFINITY_WEIGHT,
        }
    }

    /// Sets `hardPodAffinityWeight` (0..=100; 0 ignores existing pods' required affinity
    /// terms in scoring). Checked when the profile is built.
    #[must_use]
    pub const fn hard_pod_affinity_weight(mut self, weight: i32) -> InterPodAffinity {
        self.hard_pod_affinity_weight = weight;
        self
    }

    /// The configured `hardPodAffinityWeight`.
    pub const fn hard_weight(&self) -> i32 {
        self.hard_pod_affinity_weight
    }
}

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

    fn validate(&self) -> Result<(), String> {
        let w = self.hard_pod_affinity_weight;
        if !(0..=MAX_HARD_POD_AFFINITY_WEIGHT).contains(&w) {
            return Err(format!(
                "hardPodAffinityWeight {w} is not in 0..={MAX_HARD_POD_AFFINITY_WEIGHT}"
            ));
        }
        Ok(())
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
                if other.uid != pod.uid
                    && term.matches(pod.namespace, other)
                    && let Some(v) = domain(snapshot, node, term.topology_key)
                {
                    fs.forbidden.insert((term.topology_key, v));
                }
            });
        }
        snapshot.for_each_anti_affinity_candidate(&pod.labels, |node, other| {
            for term in &other.anti_affinity.required {
                if other.uid != pod.uid
                    && term.matches(other.namespace, pod)
                    && let Some(v) = domain(snapshot, node, term.topology_key)
                {
                    fs.forbidden.insert((term.topology_key, v));
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
            if let Some(v) = node.labels.get(*key)
                && fs.forbidden.contains(&(*key, v))
            {
                return Status::unschedulable("node(s) didn't match pod anti-affinity rules");
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
        // The incoming pod's preferred terms, over the existing pods they select.
        for (weight, term) in terms {
            snapshot.for_each_candidate(&term.selector, |node, other| {
                if other.uid != pod.uid
                    && term.matches(pod.namespace, other)
                    && let Some(v) = domain(snapshot, node, term.topology_key)
                {
                    *ss.weights.entry((term.topology_key, v)).or_default() += weight;
                }
            });
        }
        // Existing pods' terms that select the incoming pod (only pods carrying such terms
        // are indexed; the lookup is by the incoming pod's labels).
        let hard = i64::from(self.hard_pod_affinity_weight);
        snapshot.for_each_scoring_term_candidate(&pod.labels, |node, other, term| {
            let weight = match term {
                ExistingTerm::RequiredAffinity(_) => hard,
                ExistingTerm::PreferredAffinity(w, _) => i64::from(w),
                ExistingTerm::PreferredAntiAffinity(w, _) => -i64::from(w),
            };
            let term = term.term();
            if weight != 0
                && other.uid != pod.uid
                && term.matches(other.namespace, pod)
                && let Some(v) = domain(snapshot, node, term.topology_key)
            {
                *ss.weights.entry((term.topology_key, v)).or_default() += weight;
            }
        });
        // As upstream: nothing counted, nothing to score.
        if ss.weights.is_empty() {
            return Status::skip();
        }
        for (key, _) in ss.weights.keys() {
            if !ss.keys.contains(key) {
                ss.keys.push(*key);
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
            InterPodAffinity::new()
                .pre_filter(&mut state, &pod, &s)
                .1
                .is_success()
        );
        let ok: Vec<bool> = s
            .nodes()
            .iter()
            .map(|n| InterPodAffinity::new().filter(&state, &pod, n).is_success())
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
            InterPodAffinity::new()
                .pre_filter(&mut state, &plain, &s)
                .1
                .is_success()
        );
        let ok: Vec<bool> = s
            .nodes()
            .iter()
            .map(|n| {
                InterPodAffinity::new()
                    .filter(&state, &plain, n)
                    .is_success()
            })
            .collect();
        assert_eq!(ok, [true, true, false]);
        // Affinity to app=db per zone: only z1.
        let mut near = PodInfo::new("u3", "ns", "p3", Resources::default());
        near.affinity
            .required
            .push(AffinityTerm::new("app", "db", "zone"));
        let mut state = CycleState::new();
        InterPodAffinity::new().pre_filter(&mut state, &near, &s);
        let ok: Vec<bool> = s
            .nodes()
            .iter()
            .map(|n| {
                InterPodAffinity::new()
                    .filter(&state, &near, n)
                    .is_success()
            })
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
            InterPodAffinity::new()
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
            InterPodAffinity::new()
                .pre_score(&mut state, &pod, &s, &refs)
                .is_success()
        );
        let mut scores: Vec<i64> = refs
            .iter()
            .map(|n| InterPodAffinity::new().score(&state, &pod, n).unwrap())
            .collect();
        InterPodAffinity::new().normalize(&state, &pod, &mut scores);
        assert_eq!(scores, [0, 0, 100]);
    }

    /// Normalized scores of `pod` over every node, or `None` when PreScore skips.
    fn scores(plugin: InterPodAffinity, s: &Snapshot, pod: &PodInfo) -> Option<Vec<i64>> {
        let mut state = CycleState::new();
        let refs: Vec<&NodeInfo> = s.nodes().iter().collect();
        let status = plugin.pre_score(&mut state, pod, s, &refs);
        if status.is_skip() {
            return None;
        }
        assert!(status.is_success(), "{status}");
        let mut scores: Vec<i64> = refs
            .iter()
            .map(|n| plugin.score(&state, pod, n).unwrap())
            .collect();
        assert!(plugin.normalize(&state, pod, &mut scores).is_success());
        Some(scores)
    }

    fn web(uid: &str) -> PodInfo {
        PodInfo::new(uid, "ns", uid, Resources::default()).label("app", "web")
    }

    #[test]
    fn existing_pods_preferred_terms_score_the_incoming_pod() {
        let ipa = InterPodAffinity::new();
        let mut s = snap();
        // A pod without terms, among pods without terms: nothing to score.
        s.add_pod(Sym::new("a"), Arc::new(web("w0"))).unwrap();
        assert_eq!(scores(ipa, &s, &web("u")), None);
        // An existing cache on c (zone z2) prefers web pods in its zone: z2 wins.
        let mut cache = PodInfo::new("cache", "ns", "cache", Resources::default());
        cache
            .affinity
            .preferred
            .push((50, AffinityTerm::new("app", "web", "zone")));
        s.add_pod(Sym::new("c"), Arc::new(cache)).unwrap();
        assert_eq!(scores(ipa, &s, &web("u")), Some(vec![0, 0, 100]));
        // Pods it does not select are not scored by it.
        let other = PodInfo::new("o", "ns", "o", Resources::default()).label("app", "db");
        assert_eq!(scores(ipa, &s, &other), None);
        let elsewhere =
            PodInfo::new("e", "other-ns", "e", Resources::default()).label("app", "web");
        assert_eq!(scores(ipa, &s, &elsewhere), None, "its own namespace only");
        // A noisy pod on a (zone z1) avoids web pods per host more strongly than the cache
        // attracts them: a is the worst node, z2 still beats b.
        let mut noisy = PodInfo::new("noisy", "ns", "noisy", Resources::default());
        noisy
            .anti_affinity
            .preferred
            .push((80, AffinityTerm::new("app", "web", HOSTNAME_LABEL)));
        s.add_pod(Sym::new("a"), Arc::new(noisy)).unwrap();
        // Raw: a −80, b 0, c +50.
        assert_eq!(scores(ipa, &s, &web("u")), Some(vec![0, 61, 100]));
        // Deleted pods stop counting (the index follows the snapshot).
        s.remove_pod("cache");
        assert_eq!(scores(ipa, &s, &web("u")), Some(vec![0, 100, 100]));
        s.remove_node(Sym::new("b"));
        assert_eq!(scores(ipa, &s, &web("u")), Some(vec![0, 100]));
        s.remove_pod("noisy");
        assert_eq!(scores(ipa, &s, &web("u")), None);
    }

    #[test]
    fn existing_pods_required_affinity_scores_with_the_hard_weight() {
        let mut s = snap();
        // A sidecar on b requires web pods on its host; a preferred term of the incoming pod
        // towards the db on a (weight 1) ties with it at the default hard weight.
        let mut sidecar = PodInfo::new("sidecar", "ns", "sidecar", Resources::default());
        sidecar
            .affinity
            .required
            .push(AffinityTerm::new("app", "web", HOSTNAME_LABEL));
        s.add_pod(Sym::new("b"), Arc::new(sidecar)).unwrap();
        let db = PodInfo::new("db", "ns", "db", Resources::default()).label("app", "db");
        s.add_pod(Sym::new("a"), Arc::new(db)).unwrap();
        let mut pod = web("u");
        pod.affinity
            .preferred
            .push((1, AffinityTerm::new("app", "db", HOSTNAME_LABEL)));
        let ipa = InterPodAffinity::new();
        assert_eq!(ipa.hard_weight(), DEFAULT_HARD_POD_AFFINITY_WEIGHT);
        assert_eq!(scores(ipa, &s, &pod), Some(vec![100, 100, 0]));
        let heavy = InterPodAffinity::new().hard_pod_affinity_weight(10);
        assert_eq!(scores(heavy, &s, &pod), Some(vec![10, 100, 0]));
        let off = InterPodAffinity::new().hard_pod_affinity_weight(0);
        assert_eq!(scores(off, &s, &pod), Some(vec![100, 0, 0]));
        assert_eq!(scores(off, &s, &web("plain")), None);
        assert!(off.validate().is_ok());
        let err = InterPodAffinity::new()
            .hard_pod_affinity_weight(101)
            .validate()
            .unwrap_err();
        assert_eq!(err, "hardPodAffinityWeight 101 is not in 0..=100");
    }

    #[test]
    fn scoring_terms_without_an_indexable_pair_are_checked_for_every_pod() {
        use crate::selector::{Operator, Requirement, Selector};
        let mut s = snap();
        let mut watcher = PodInfo::new("watcher", "ns", "watcher", Resources::default());
        let mut term = AffinityTerm::new("app", "web", "zone");
        term.selector = Selector(vec![Requirement {
            key: Sym::new("app"),
            operator: Operator::Exists,
            values: Vec::new(),
        }]);
        watcher.affinity.preferred.push((10, term));
        s.add_pod(Sym::new("a"), Arc::new(watcher)).unwrap();
        assert_eq!(
            scores(InterPodAffinity::new(), &s, &web("u")),
            Some(vec![100, 100, 0])
        );
        let unlabelled = PodInfo::new("n", "ns", "n", Resources::default());
        assert_eq!(scores(InterPodAffinity::new(), &s, &unlabelled), None);
        s.remove_pod("watcher");
        assert_eq!(scores(InterPodAffinity::new(), &s, &web("u")), None);
    }
}
