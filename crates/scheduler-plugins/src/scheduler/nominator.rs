//! Pods nominated to nodes (kube-scheduler's nominator): the pods a PostFilter plugin
//! nominated to each node, which filtering counts as if they ran there when it checks a pod of
//! lower or equal priority (upstream's `addNominatedPods`).

use std::sync::Arc;

use crate::fast_hash::FastMap;
use crate::interner::Sym;
use crate::snapshot::{NodeInfo, PodInfo};

/// The nominations: each nominated pod's node (kube-scheduler's `status.nominatedNodeName`),
/// and the nominated pods by node, changed together.
#[derive(Debug, Clone, Default)]
pub(crate) struct NominatedPods {
    by_uid: FastMap<Arc<str>, Sym>,
    by_node: FastMap<Sym, Vec<Arc<PodInfo>>>,
}

impl NominatedPods {
    /// Whether no pod is nominated anywhere.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    /// The node pod `uid` is nominated to.
    pub(crate) fn node_of(&self, uid: &str) -> Option<Sym> {
        self.by_uid.get(uid).copied()
    }

    /// Nominates `pod` to `node`, replacing its earlier nomination.
    pub(crate) fn add(&mut self, node: Sym, pod: Arc<PodInfo>) {
        self.remove(&pod.uid);
        self.by_uid.insert(pod.uid.clone(), node);
        self.by_node.entry(node).or_default().push(pod);
    }

    /// Drops pod `uid`'s nomination, if any.
    pub(crate) fn remove(&mut self, uid: &str) {
        let Some(node) = self.by_uid.remove(uid) else {
            return;
        };
        if let Some(pods) = self.by_node.get_mut(&node) {
            pods.retain(|p| &*p.uid != uid);
            if pods.is_empty() {
                self.by_node.remove(&node);
            }
        }
    }

    /// A copy of `node` with the pods nominated to it that `pod` must leave room for added
    /// (those of priority at least `pod`'s, `pod` itself excluded), or `None` when there are
    /// none.
    pub(crate) fn node_with_nominated(&self, pod: &PodInfo, node: &NodeInfo) -> Option<NodeInfo> {
        let pods = self.by_node.get(&node.name)?;
        let mut added = pods
            .iter()
            .filter(|p| p.priority >= pod.priority && p.uid != pod.uid)
            .peekable();
        added.peek()?;
        let mut copy = node.clone();
        for p in added {
            copy.add_pod(p.clone());
        }
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use rorqual_core::model::Resources;

    use super::*;

    #[test]
    fn only_pods_of_at_least_the_priority_other_than_the_pod_itself_are_added() {
        let node = NodeInfo::new("n", Resources::new(1000, 1000));
        let nominated = |uid: &str, priority: i32| {
            Arc::new(PodInfo::new(uid, "ns", uid, Resources::new(100, 10)).priority(priority))
        };
        let mut pods = NominatedPods::default();
        assert!(pods.is_empty());
        pods.add(node.name, nominated("high", 10));
        pods.add(node.name, nominated("low", 1));
        let incoming = |uid: &str, priority: i32| {
            PodInfo::new(uid, "ns", uid, Resources::default()).priority(priority)
        };
        let added = |pods: &NominatedPods, pod: PodInfo| {
            pods.node_with_nominated(&pod, &node).map(|n| {
                let mut uids: Vec<String> = n.pods.iter().map(|p| p.uid.to_string()).collect();
                uids.sort();
                (uids, n.requested)
            })
        };
        assert_eq!(
            added(&pods, incoming("x", 1)),
            Some((vec!["high".into(), "low".into()], Resources::new(200, 20)))
        );
        assert_eq!(
            added(&pods, incoming("x", 5)),
            Some((vec!["high".into()], Resources::new(100, 10)))
        );
        assert_eq!(added(&pods, incoming("x", 11)), None);
        assert_eq!(added(&pods, incoming("high", 10)), None, "not itself");
        let other = NodeInfo::new("elsewhere", Resources::new(1000, 1000));
        assert!(
            pods.node_with_nominated(&incoming("x", 0), &other)
                .is_none()
        );
        assert_eq!(pods.node_of("high"), Some(node.name));
        // A new nomination replaces the old one.
        pods.add(other.name, nominated("high", 10));
        assert_eq!(pods.node_of("high"), Some(other.name));
        assert_eq!(
            added(&pods, incoming("x", 1)).map(|(uids, _)| uids),
            Some(vec!["low".into()])
        );
        pods.remove("high");
        pods.remove("low");
        pods.remove("low");
        assert!(pods.is_empty());
        assert!(pods.by_node.is_empty());
    }
}
