//! Compact pod and node snapshots: interned labels, dense node indices, and incrementally
//! maintained indexes (pods by label, pods with required anti-affinity, pods whose affinity
//! terms score others) so that affinity and spreading plugins look only at the pods that can
//! match.

use crate::fast_hash::FastMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rorqual_core::model::{Resources, Taint, Toleration};

use crate::interner::{Labels, Sym};
use crate::selector::{NodeSelector, Selector};

/// The well-known zone label.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The well-known hostname label.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// A host port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// A host port a pod needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The protocol.
    pub protocol: Protocol,
    /// The port.
    pub port: u16,
}

/// What a topology spread constraint does when it cannot be met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenUnsatisfiable {
    /// Filter: nodes that would exceed the skew are infeasible.
    DoNotSchedule,
    /// Score: prefer nodes that reduce the skew.
    ScheduleAnyway,
}

/// A `topologySpreadConstraint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpreadConstraint {
    /// Largest allowed difference between the most and least loaded domain (≥ 1).
    pub max_skew: u32,
    /// The node label whose values are the domains.
    pub topology_key: Sym,
    /// Hard or soft.
    pub when_unsatisfiable: WhenUnsatisfiable,
    /// Which pods count.
    pub selector: Selector,
}

/// A pod (anti-)affinity term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityTerm {
    /// Which pods the term is about.
    pub selector: Selector,
    /// Namespaces of those pods; empty means the pod's own namespace.
    pub namespaces: Vec<Sym>,
    /// The node label that defines "together".
    pub topology_key: Sym,
}

impl AffinityTerm {
    /// A term about pods with `key=value` in the pod's namespace, per `topology_key`.
    pub fn new(key: &str, value: &str, topology_key: &str) -> AffinityTerm {
        AffinityTerm {
            selector: Selector::match_labels([(key, value)]),
            namespaces: Vec::new(),
            topology_key: Sym::new(topology_key),
        }
    }

    /// Whether `other` (an existing pod) is selected by this term of a pod in `own_namespace`.
    pub fn matches(&self, own_namespace: Sym, other: &PodInfo) -> bool {
        let ns_ok = if self.namespaces.is_empty() {
            other.namespace == own_namespace
        } else {
            self.namespaces.contains(&other.namespace)
        };
        ns_ok && self.selector.matches(&other.labels)
    }
}

/// Required and preferred (anti-)affinity terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AffinityTerms {
    /// `requiredDuringSchedulingIgnoredDuringExecution`.
    pub required: Vec<AffinityTerm>,
    /// `preferredDuringSchedulingIgnoredDuringExecution` with weights 1..=100.
    pub preferred: Vec<(i32, AffinityTerm)>,
}

impl AffinityTerms {
    /// Whether there are no terms.
    pub fn is_empty(&self) -> bool {
        self.required.is_empty() && self.preferred.is_empty()
    }
}

/// The stable identity of a stateful instance and where it ran last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatefulIdentity {
    /// `namespace/name-ordinal`.
    pub key: Arc<str>,
    /// The node it ran on last.
    pub previous_node: Option<Sym>,
    /// The zone it ran in last (used when the node is gone).
    pub previous_zone: Option<Sym>,
}

/// A pod's need for an underlay (routable, pool-managed) IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayRequest {
    /// Only this pool; `None`: any pool with free addresses.
    pub pool: Option<Arc<str>>,
    /// A fixed-IP claim already bound to an address: the pod may only go to that pool's hosts.
    pub bound_claim: Option<(Arc<str>, IpAddr)>,
    /// The identity whose claim keeps the pod's address across its pods (a stateful
    /// identity with a fixed IP, `namespace/app-ordinal`); `None`: no fixed address.
    pub claim: Option<Arc<str>>,
}

/// Membership of a gang (pod group) that is only bound when `min_member` pods fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GangMembership {
    /// The group's name (unique per namespace).
    pub name: Arc<str>,
    /// How many members must be assumed before any is bound.
    pub min_member: u32,
    /// How long members wait in Permit (`None`: the plugin's default).
    pub timeout: Option<Duration>,
}

/// A pod as the scheduler sees it. Build with [`PodInfo::new`] and the setters, or convert
/// from Kubernetes JSON (`crate::kube`) or a core `PlacementRequest`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PodInfo {
    /// Unique id (Kubernetes UID, or the instance id).
    pub uid: Arc<str>,
    /// Namespace.
    pub namespace: Sym,
    /// Name.
    pub name: Arc<str>,
    /// Priority (higher is scheduled first).
    pub priority: i32,
    /// Summed requests.
    pub requests: Resources,
    /// Labels.
    pub labels: Labels,
    /// A node fixed in advance (`spec.nodeName`).
    pub node_name: Option<Sym>,
    /// `nodeSelector` as a selector.
    pub node_selector: Selector,
    /// Required node affinity.
    pub required_node_affinity: Option<NodeSelector>,
    /// Preferred node affinity terms with weights 1..=100.
    pub preferred_node_affinity: Vec<(i32, Selector)>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// Host ports.
    pub host_ports: Vec<HostPort>,
    /// Topology spread constraints.
    pub spread: Vec<SpreadConstraint>,
    /// Pod affinity.
    pub affinity: AffinityTerms,
    /// Pod anti-affinity.
    pub anti_affinity: AffinityTerms,
    /// Stable identity, for stateful instances.
    pub identity: Option<StatefulIdentity>,
    /// Underlay IP need.
    pub underlay: Option<UnderlayRequest>,
    /// Gang membership.
    pub gang: Option<GangMembership>,
}

impl PodInfo {
    /// A pod `namespace/name` with id `uid` requesting `requests` and nothing else.
    pub fn new(uid: &str, namespace: &str, name: &str, requests: Resources) -> PodInfo {
        PodInfo {
            uid: Arc::from(uid),
            namespace: Sym::new(namespace),
            name: Arc::from(name),
            priority: 0,
            requests,
            labels: Labels::new(),
            node_name: None,
            node_selector: Selector::default(),
            required_node_affinity: None,
            preferred_node_affinity: Vec::new(),
            tolerations: Vec::new(),
            host_ports: Vec::new(),
            spread: Vec::new(),
            affinity: AffinityTerms::default(),
            anti_affinity: AffinityTerms::default(),
            identity: None,
            underlay: None,
            gang: None,
        }
    }

    /// Adds a label.
    #[must_use]
    pub fn label(mut self, key: &str, value: &str) -> PodInfo {
        self.labels.insert(Sym::new(key), Sym::new(value));
        self
    }

    /// Sets the priority.
    #[must_use]
    pub fn priority(mut self, priority: i32) -> PodInfo {
        self.priority = priority;
        self
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A node as the scheduler sees it, with the pods assigned or assumed on it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NodeInfo {
    /// Name.
    pub name: Sym,
    /// Allocatable resources.
    pub allocatable: Resources,
    /// Maximum number of pods.
    pub max_pods: u32,
    /// Sum of the requests of its pods.
    pub requested: Resources,
    /// Labels.
    pub labels: Labels,
    /// Taints.
    pub taints: Vec<Taint>,
    /// Cordoned (`spec.unschedulable`): [`NodeUnschedulable`](crate::plugins::NodeUnschedulable)
    /// admits only pods tolerating `node.kubernetes.io/unschedulable`.
    pub unschedulable: bool,
    /// The node's Ready condition, for information: no filter reads it. As in kube-scheduler,
    /// readiness reaches the filters as the `node.kubernetes.io/not-ready` or `unreachable`
    /// taints in [`NodeInfo::taints`] (engine views get the former when not ready).
    pub ready: bool,
    /// Host ports in use.
    pub used_ports: Vec<HostPort>,
    /// Its pods.
    pub pods: Vec<Arc<PodInfo>>,
}

impl NodeInfo {
    /// A ready node `name` with `allocatable` resources, room for 110 pods, labelled with its
    /// hostname.
    pub fn new(name: &str, allocatable: Resources) -> NodeInfo {
        let mut labels = Labels::new();
        labels.insert(Sym::new(HOSTNAME_LABEL), Sym::new(name));
        NodeInfo {
            name: Sym::new(name),
            allocatable,
            max_pods: 110,
            requested: Resources::default(),
            labels,
            taints: Vec::new(),
            unschedulable: false,
            ready: true,
            used_ports: Vec::new(),
            pods: Vec::new(),
        }
    }

    /// Adds a label.
    #[must_use]
    pub fn label(mut self, key: &str, value: &str) -> NodeInfo {
        self.labels.insert(Sym::new(key), Sym::new(value));
        self
    }

    /// Adds a taint.
    #[must_use]
    pub fn taint(mut self, taint: Taint) -> NodeInfo {
        self.taints.push(taint);
        self
    }

    /// Sets the pod limit.
    #[must_use]
    pub fn max_pods(mut self, max_pods: u32) -> NodeInfo {
        self.max_pods = max_pods;
        self
    }

    /// What is still free.
    pub fn free(&self) -> Resources {
        self.allocatable.saturating_sub(self.requested)
    }

    /// Counts `pod` on this node (its requests, ports and the pod itself), without the
    /// snapshot's indexes: for what-if copies of a node.
    pub(crate) fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested = self.requested.saturating_add(pod.requests);
        self.used_ports.extend(pod.host_ports.iter().copied());
        self.pods.push(pod);
    }

    /// Takes the pods off this node, with their usage.
    fn detach_pods(&mut self) -> Vec<Arc<PodInfo>> {
        let uids: Vec<Arc<str>> = self.pods.iter().map(|p| p.uid.clone()).collect();
        uids.iter().filter_map(|uid| self.remove_pod(uid)).collect()
    }

    fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let i = self.pods.iter().position(|p| &*p.uid == uid)?;
        let pod = self.pods.swap_remove(i);
        self.requested = self.requested.saturating_sub(pod.requests);
        for port in &pod.host_ports {
            if let Some(j) = self.used_ports.iter().position(|p| p == port) {
                self.used_ports.swap_remove(j);
            }
        }
        Some(pod)
    }
}

/// Where an indexed pod is: its node's dense index and the pod.
pub type PodLoc = (u32, Arc<PodInfo>);

/// One of an existing pod's (anti-)affinity terms that counts when other pods are scored
/// (kube-scheduler's InterPodAffinity `processExistingPod`), with its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExistingTerm<'a> {
    /// A required affinity term (scored with the plugin's `hardPodAffinityWeight`).
    RequiredAffinity(&'a AffinityTerm),
    /// A preferred affinity term and its weight.
    PreferredAffinity(i32, &'a AffinityTerm),
    /// A preferred anti-affinity term and its weight.
    PreferredAntiAffinity(i32, &'a AffinityTerm),
}

impl<'a> ExistingTerm<'a> {
    /// The term.
    pub fn term(&self) -> &'a AffinityTerm {
        match *self {
            ExistingTerm::RequiredAffinity(t)
            | ExistingTerm::PreferredAffinity(_, t)
            | ExistingTerm::PreferredAntiAffinity(_, t) => t,
        }
    }
}

/// Which scoring term of its pod an index entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TermSlot {
    Required(usize),
    Preferred(usize),
    PreferredAnti(usize),
}

impl TermSlot {
    /// Every term of `pod` that scores other pods, with its slot.
    fn all(pod: &PodInfo) -> impl Iterator<Item = (TermSlot, &AffinityTerm)> {
        let required = pod
            .affinity
            .required
            .iter()
            .enumerate()
            .map(|(i, t)| (TermSlot::Required(i), t));
        let preferred = pod
            .affinity
            .preferred
            .iter()
            .enumerate()
            .map(|(i, (_, t))| (TermSlot::Preferred(i), t));
        let anti = pod
            .anti_affinity
            .preferred
            .iter()
            .enumerate()
            .map(|(i, (_, t))| (TermSlot::PreferredAnti(i), t));
        required.chain(preferred).chain(anti)
    }

    /// The term this slot stands for in `pod` (the pod the entry was made from).
    fn resolve(self, pod: &PodInfo) -> Option<ExistingTerm<'_>> {
        Some(match self {
            TermSlot::Required(i) => ExistingTerm::RequiredAffinity(pod.affinity.required.get(i)?),
            TermSlot::Preferred(i) => {
                let (w, t) = pod.affinity.preferred.get(i)?;
                ExistingTerm::PreferredAffinity(*w, t)
            }
            TermSlot::PreferredAnti(i) => {
                let (w, t) = pod.anti_affinity.preferred.get(i)?;
                ExistingTerm::PreferredAntiAffinity(*w, t)
            }
        })
    }
}

/// An indexed scoring term: its pod's node, the pod, and which term.
type TermLoc = (u32, Arc<PodInfo>, TermSlot);

/// All nodes with their pods, addressed by dense index, plus the pod indexes.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    nodes: Vec<NodeInfo>,
    by_name: FastMap<Sym, u32>,
    by_label: FastMap<(Sym, Sym), Vec<PodLoc>>,
    /// Pods by the label keys whose value is kept as text (not interned when the pod was
    /// read, see [`Labels::insert_str`]): such a value can still equal a symbol interned
    /// later, so a selector requiring `key=value` also visits these pods.
    by_text_key: FastMap<Sym, Vec<PodLoc>>,
    anti_indexed: FastMap<(Sym, Sym), Vec<PodLoc>>,
    anti_unindexed: Vec<PodLoc>,
    /// Existing pods' scoring terms (required affinity, preferred affinity and anti-affinity)
    /// by the `key=value` pair their selector requires; usually few pods carry any.
    terms_indexed: FastMap<(Sym, Sym), Vec<TermLoc>>,
    /// Scoring terms whose selector requires no single pair (checked for every pod scored).
    terms_unindexed: Vec<TermLoc>,
    pod_node: HashMap<Arc<str>, u32>,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Snapshot {
        Snapshot::default()
    }

    /// A snapshot of `nodes` (their pods are indexed).
    pub fn from_nodes(nodes: impl IntoIterator<Item = NodeInfo>) -> Snapshot {
        let mut snapshot = Snapshot::new();
        for node in nodes {
            snapshot.upsert_node(node);
        }
        snapshot
    }

    /// The nodes, by dense index.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The dense index of node `name`.
    pub fn index_of(&self, name: Sym) -> Option<usize> {
        self.by_name.get(&name).map(|&i| i as usize)
    }

    /// Node `name`.
    pub fn node(&self, name: Sym) -> Option<&NodeInfo> {
        self.index_of(name).map(|i| &self.nodes[i])
    }

    /// The node pod `uid` is on.
    pub fn node_of_pod(&self, uid: &str) -> Option<&NodeInfo> {
        self.pod_node.get(uid).map(|&i| &self.nodes[i as usize])
    }

    /// Adds or replaces a node. Its `requested` and `used_ports` count as usage of pods the
    /// snapshot does not know individually; listed pods are added on top. A replaced node keeps
    /// its known pods unless the new one lists pods.
    pub fn upsert_node(&mut self, mut node: NodeInfo) {
        // What the node arrives with counts as usage by pods this snapshot does not know.
        let pods = std::mem::take(&mut node.pods);
        let index = match self.by_name.get(&node.name) {
            Some(&i) => {
                let old = std::mem::replace(&mut self.nodes[i as usize], node);
                let keep = if pods.is_empty() {
                    old.pods
                } else {
                    for pod in &old.pods {
                        self.unindex_pod(pod);
                        self.pod_node.remove(&pod.uid);
                    }
                    Vec::new()
                };
                for pod in keep {
                    self.nodes[i as usize].add_pod(pod);
                }
                i
            }
            None => {
                let i = u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
                self.by_name.insert(node.name, i);
                self.nodes.push(node);
                i
            }
        };
        for pod in pods {
            self.add_pod_at(index, pod);
        }
    }

    /// Removes node `name` and its pods.
    pub fn remove_node(&mut self, name: Sym) -> Option<NodeInfo> {
        let i = self.by_name.remove(&name)? as usize;
        let node = self.nodes.swap_remove(i);
        for pod in &node.pods {
            self.pod_node.remove(&pod.uid);
        }
        // Re-index everything: dense indices moved.
        let nodes = std::mem::take(&mut self.nodes);
        *self = Snapshot::new();
        for mut other in nodes {
            let pods = other.detach_pods();
            other.pods = pods;
            self.upsert_node(other);
        }
        Some(node)
    }

    /// Places `pod` on node `name` (assumed or bound). Fails when the node is unknown.
    pub fn add_pod(&mut self, name: Sym, pod: Arc<PodInfo>) -> Result<(), Sym> {
        let index = self.by_name.get(&name).copied().ok_or(name)?;
        self.add_pod_at(index, pod);
        Ok(())
    }

    fn add_pod_at(&mut self, index: u32, pod: Arc<PodInfo>) {
        if let Some(old) = self.pod_node.insert(pod.uid.clone(), index)
            && let Some(removed) = self.nodes[old as usize].remove_pod(&pod.uid)
        {
            self.unindex_pod(&removed);
        }
        for pair in pod.labels.iter() {
            self.by_label
                .entry(pair)
                .or_default()
                .push((index, pod.clone()));
        }
        for key in pod.labels.text_keys() {
            self.by_text_key
                .entry(key)
                .or_default()
                .push((index, pod.clone()));
        }
        for term in &pod.anti_affinity.required {
            match term.selector.required_pair() {
                Some(pair) => self
                    .anti_indexed
                    .entry(pair)
                    .or_default()
                    .push((index, pod.clone())),
                None => self.anti_unindexed.push((index, pod.clone())),
            }
        }
        for (slot, term) in TermSlot::all(&pod) {
            let entry = (index, pod.clone(), slot);
            match term.selector.required_pair() {
                Some(pair) => self.terms_indexed.entry(pair).or_default().push(entry),
                None => self.terms_unindexed.push(entry),
            }
        }
        self.nodes[index as usize].add_pod(pod);
    }

    /// Removes pod `uid` wherever it is.
    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let index = self.pod_node.remove(uid)?;
        let pod = self.nodes[index as usize].remove_pod(uid)?;
        self.unindex_pod(&pod);
        Some(pod)
    }

    fn unindex_pod(&mut self, pod: &Arc<PodInfo>) {
        let same = |loc: &PodLoc| Arc::ptr_eq(&loc.1, pod);
        for pair in pod.labels.iter() {
            if let Some(list) = self.by_label.get_mut(&pair)
                && let Some(i) = list.iter().position(same)
            {
                list.swap_remove(i);
            }
        }
        for key in pod.labels.text_keys() {
            if let Some(list) = self.by_text_key.get_mut(&key) {
                if let Some(i) = list.iter().position(same) {
                    list.swap_remove(i);
                }
                if list.is_empty() {
                    self.by_text_key.remove(&key);
                }
            }
        }
        for term in &pod.anti_affinity.required {
            let list = match term.selector.required_pair() {
                Some(pair) => self.anti_indexed.get_mut(&pair),
                None => Some(&mut self.anti_unindexed),
            };
            if let Some(list) = list
                && let Some(i) = list.iter().position(same)
            {
                list.swap_remove(i);
            }
        }
        for (slot, term) in TermSlot::all(pod) {
            let entry = |loc: &TermLoc| Arc::ptr_eq(&loc.1, pod) && loc.2 == slot;
            match term.selector.required_pair() {
                Some(pair) => {
                    if let Some(list) = self.terms_indexed.get_mut(&pair) {
                        if let Some(i) = list.iter().position(entry) {
                            list.swap_remove(i);
                        }
                        if list.is_empty() {
                            self.terms_indexed.remove(&pair);
                        }
                    }
                }
                None => {
                    if let Some(i) = self.terms_unindexed.iter().position(entry) {
                        self.terms_unindexed.swap_remove(i);
                    }
                }
            }
        }
    }

    /// Calls `f` for every pod that may match `selector` (all pods carrying its required
    /// `key=value` pair, or whose value of that key is kept as text, or every pod when it has
    /// none); callers still check the selector.
    pub fn for_each_candidate(&self, selector: &Selector, mut f: impl FnMut(u32, &PodInfo)) {
        match selector.required_pair() {
            Some(pair) => {
                if let Some(list) = self.by_label.get(&pair) {
                    for (node, pod) in list {
                        f(*node, pod);
                    }
                }
                if let Some(list) = self.by_text_key.get(&pair.0) {
                    for (node, pod) in list {
                        f(*node, pod);
                    }
                }
            }
            None => {
                for (i, node) in self.nodes.iter().enumerate() {
                    for pod in &node.pods {
                        f(i as u32, pod);
                    }
                }
            }
        }
    }

    /// Calls `f` for every existing pod with a required anti-affinity term that may select a
    /// pod labelled `labels`.
    pub fn for_each_anti_affinity_candidate(
        &self,
        labels: &Labels,
        mut f: impl FnMut(u32, &PodInfo),
    ) {
        let mut seen: Vec<*const PodInfo> = Vec::new();
        for pair in labels.resolved_pairs() {
            if let Some(list) = self.anti_indexed.get(&pair) {
                for (node, pod) in list {
                    let ptr = Arc::as_ptr(pod);
                    if !seen.contains(&ptr) {
                        seen.push(ptr);
                        f(*node, pod);
                    }
                }
            }
        }
        for (node, pod) in &self.anti_unindexed {
            let ptr = Arc::as_ptr(pod);
            if !seen.contains(&ptr) {
                seen.push(ptr);
                f(*node, pod);
            }
        }
    }

    /// Calls `f` for every existing pod's scoring term (required affinity, preferred affinity
    /// or preferred anti-affinity) that may select a pod labelled `labels`: the terms whose
    /// selector requires one of those `key=value` pairs, and the terms whose selector requires
    /// no single pair. Callers still check the term ([`AffinityTerm::matches`]). Each term is
    /// visited at most once; pods without such terms are never visited, and when no pod has
    /// any this returns at once.
    pub fn for_each_scoring_term_candidate(
        &self,
        labels: &Labels,
        mut f: impl FnMut(u32, &PodInfo, ExistingTerm<'_>),
    ) {
        if self.terms_indexed.is_empty() && self.terms_unindexed.is_empty() {
            return;
        }
        let mut visit = |(node, pod, slot): &TermLoc| {
            if let Some(term) = slot.resolve(pod) {
                f(*node, pod, term);
            }
        };
        if !self.terms_indexed.is_empty() {
            for pair in labels.resolved_pairs() {
                for loc in self.terms_indexed.get(&pair).into_iter().flatten() {
                    visit(loc);
                }
            }
        }
        for loc in &self.terms_unindexed {
            visit(loc);
        }
    }

    /// The number of pods.
    pub fn pod_count(&self) -> usize {
        self.pod_node.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_terms_are_indexed_and_unindexed() {
        let mut snap = Snapshot::from_nodes([
            NodeInfo::new("a", Resources::new(1000, 1000)),
            NodeInfo::new("b", Resources::new(1000, 1000)),
        ]);
        let web: Labels = [("app", "web")].into_iter().collect();
        let visited = |snap: &Snapshot| {
            let mut seen = Vec::new();
            snap.for_each_scoring_term_candidate(&web, |node, pod, term| {
                let kind = match term {
                    ExistingTerm::RequiredAffinity(_) => "required".to_owned(),
                    ExistingTerm::PreferredAffinity(w, _) => format!("preferred {w}"),
                    ExistingTerm::PreferredAntiAffinity(w, _) => format!("anti {w}"),
                };
                seen.push(format!("{node} {} {kind}", pod.uid));
            });
            seen.sort();
            seen
        };
        let mut both = PodInfo::new("both", "ns", "both", Resources::default());
        both.affinity
            .required
            .push(AffinityTerm::new("app", "web", HOSTNAME_LABEL));
        both.anti_affinity.preferred.push((
            7,
            AffinityTerm {
                selector: Selector::default(),
                namespaces: Vec::new(),
                topology_key: Sym::new(ZONE_LABEL),
            },
        ));
        // Required anti-affinity does not score: it is not in this index.
        let mut strict = PodInfo::new("strict", "ns", "strict", Resources::default());
        strict
            .anti_affinity
            .required
            .push(AffinityTerm::new("app", "web", HOSTNAME_LABEL));
        snap.add_pod(Sym::new("a"), Arc::new(both)).unwrap();
        snap.add_pod(Sym::new("b"), Arc::new(strict)).unwrap();
        assert_eq!(visited(&snap), ["0 both anti 7", "0 both required"]);
        // Moving the pod re-indexes it under its new node.
        let moved = snap.remove_pod("both").unwrap();
        assert!(visited(&snap).is_empty());
        snap.add_pod(Sym::new("b"), moved).unwrap();
        assert_eq!(visited(&snap), ["1 both anti 7", "1 both required"]);
        // A node replaced with a new pod list drops its old pods' terms.
        let replacement = NodeInfo {
            pods: vec![Arc::new(PodInfo::new("x", "ns", "x", Resources::default()))],
            ..NodeInfo::new("b", Resources::new(1000, 1000))
        };
        snap.upsert_node(replacement);
        assert!(visited(&snap).is_empty());
        assert!(snap.terms_indexed.is_empty() && snap.terms_unindexed.is_empty());
    }

    #[test]
    fn pods_are_indexed_and_unindexed() {
        let mut snap = Snapshot::from_nodes([
            NodeInfo::new("a", Resources::new(1000, 1000)),
            NodeInfo::new("b", Resources::new(1000, 1000)),
        ]);
        let pod =
            Arc::new(PodInfo::new("u1", "ns", "p", Resources::new(100, 10)).label("app", "x"));
        snap.add_pod(Sym::new("b"), pod).unwrap();
        assert_eq!(
            snap.node(Sym::new("b")).unwrap().requested,
            Resources::new(100, 10)
        );
        let mut seen = 0;
        snap.for_each_candidate(&Selector::match_labels([("app", "x")]), |node, _| {
            assert_eq!(node, 1);
            seen += 1;
        });
        assert_eq!(seen, 1);
        snap.remove_node(Sym::new("a"));
        assert_eq!(snap.node_of_pod("u1").unwrap().name, Sym::new("b"));
        assert!(snap.remove_pod("u1").is_some());
        assert_eq!(
            snap.node(Sym::new("b")).unwrap().requested,
            Resources::default()
        );
        let mut seen = 0;
        snap.for_each_candidate(&Selector::match_labels([("app", "x")]), |_, _| seen += 1);
        assert_eq!(seen, 0);
        assert!(
            snap.add_pod(
                Sym::new("zzz"),
                Arc::new(PodInfo::new("u2", "ns", "q", Resources::default()))
            )
            .is_err()
        );
    }
}
