//! The `Placement` seam: an engine asks where an instance should run.
//!
//! Engines build every [`PlacementRequest`] with [`PlacementRequest::from_spec`], so a request
//! carries everything the application's spec says about scheduling (labels, resources, node
//! selector, tolerations, priority, affinity, topology spread, underlay need, gang) the same
//! way on every engine.
//!
//! The default, [`LeastAllocated`], is a first fit over nodes sorted by how little of them is
//! requested. It evaluates readiness, cordons, the node selector, required node affinity,
//! taints, resources and host ports ([`unfit_reason`]) and **ignores** what it cannot evaluate
//! without a view of other instances or pools: priority, preferred node affinity, pod
//! (anti-)affinity, topology spread, underlay addresses and gangs. `rorqual-scheduler`'s
//! `Scheduler` implements the same trait with the full scheduling framework and honours all
//! of them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::IpAddr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{
    Affinity, AppKey, AppSpec, Node, Resources, Revision, Toleration, TopologySpreadConstraint,
};

/// One instance to place.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PlacementRequest {
    /// The instance's id.
    pub instance: String,
    /// Its application.
    pub app: AppKey,
    /// Its revision.
    pub revision: Revision,
    /// Its stable ordinal, for stateful workloads.
    pub ordinal: Option<u32>,
    /// What it requests (the sum over its containers).
    pub resources: Resources,
    /// Its labels (the application's).
    pub labels: BTreeMap<String, String>,
    /// Required node labels.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerated taints.
    pub tolerations: Vec<Toleration>,
    /// Host ports it needs on the node (engines with host networking fill this).
    pub host_ports: Vec<u16>,
    /// The node it ran on before, for stateful identities that should stay put.
    pub previous_node: Option<String>,
    /// Scheduling priority (higher first; may preempt lower).
    pub priority: i32,
    /// Node affinity, pod affinity and anti-affinity (empty: none).
    pub affinity: Affinity,
    /// Topology spread constraints.
    pub topology_spread: Vec<TopologySpreadConstraint>,
    /// Its need for an underlay address, if any.
    pub underlay: Option<UnderlayNeed>,
    /// Its gang, if any.
    pub gang: Option<GangNeed>,
}

/// An instance's need for an underlay (pool-managed, routable) address.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnderlayNeed {
    /// Only this pool; `None`: any pool with a free address.
    pub pool: Option<String>,
    /// The key of the fixed-IP claim that keeps the address across restarts and moves,
    /// `<namespace>/<app>-<ordinal>` (stateful identities of specs with `underlay.fixedIp`);
    /// `None`: the address is the instance's own.
    pub claim_key: Option<String>,
}

impl UnderlayNeed {
    /// An address from `pool` (`None`: any pool), without a fixed-IP claim.
    pub fn new(pool: Option<String>) -> Self {
        UnderlayNeed {
            pool,
            claim_key: None,
        }
    }
}

/// An instance's gang (co-scheduling group) membership.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GangNeed {
    /// The gang's name, unique in the application's namespace.
    pub name: String,
    /// How many members must fit before any is started.
    pub min_member: u32,
    /// How long placed members wait for the rest, in seconds (`None`: the placement's
    /// default).
    pub timeout_seconds: Option<u64>,
}

impl GangNeed {
    /// Membership of gang `name` of at least `min_member`.
    pub fn new(name: impl Into<String>, min_member: u32) -> Self {
        GangNeed {
            name: name.into(),
            min_member,
            timeout_seconds: None,
        }
    }
}

impl PlacementRequest {
    /// A request for `instance` of `app` at `revision` needing `resources`.
    pub fn new(
        instance: impl Into<String>,
        app: AppKey,
        revision: Revision,
        resources: Resources,
    ) -> Self {
        PlacementRequest {
            instance: instance.into(),
            app,
            revision,
            ordinal: None,
            resources,
            labels: BTreeMap::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            host_ports: Vec::new(),
            previous_node: None,
            priority: 0,
            affinity: Affinity::default(),
            topology_spread: Vec::new(),
            underlay: None,
            gang: None,
        }
    }

    /// The request for instance `instance` (stable `ordinal` for stateful identities) of
    /// `spec` at `revision`, which ran on `previous_node` before: everything the spec says
    /// about scheduling, derived the same way for every engine. Host ports are left empty
    /// (engines with host networking add them).
    ///
    /// The underlay claim key is `<namespace>/<app>-<ordinal>` when the spec asks for
    /// `underlay.fixedIp`, the workload is stateful and `ordinal` is given.
    pub fn from_spec(
        spec: &AppSpec,
        instance: impl Into<String>,
        revision: Revision,
        ordinal: Option<u32>,
        previous_node: Option<String>,
    ) -> Self {
        let app = spec.key();
        let mut request =
            PlacementRequest::new(instance, app.clone(), revision, spec.instance_resources());
        request.ordinal = ordinal;
        request.labels = spec.labels.clone();
        request.node_selector = spec.node_selector.clone();
        request.tolerations = spec.tolerations.clone();
        request.previous_node = previous_node;
        request.priority = spec.priority;
        request.affinity = spec.affinity.clone().unwrap_or_default();
        request.topology_spread = spec.topology_spread_constraints.clone();
        request.underlay = spec.underlay.as_ref().map(|u| UnderlayNeed {
            pool: u.pool.clone(),
            claim_key: spec.fixed_ip_claim(ordinal),
        });
        request.gang = spec.gang.as_ref().map(|g| GangNeed {
            name: g.name.clone().unwrap_or_else(|| spec.name.clone()),
            min_member: g.min_member,
            timeout_seconds: g.timeout_seconds,
        });
        request
    }
}

/// A node as placement sees it: the node and what is already placed there.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NodeView {
    /// The node.
    pub node: Node,
    /// The sum of requests of the instances on it.
    pub requested: Resources,
    /// The ids of the instances on it.
    pub instances: BTreeSet<String>,
    /// Host ports in use on it.
    pub used_ports: BTreeSet<u16>,
}

impl NodeView {
    /// An empty view of `node`.
    pub fn new(node: Node) -> Self {
        NodeView {
            node,
            requested: Resources::default(),
            instances: BTreeSet::new(),
            used_ports: BTreeSet::new(),
        }
    }

    /// What is still free for requests.
    pub fn free(&self) -> Resources {
        self.node.allocatable.saturating_sub(self.requested)
    }
}

/// Where an instance goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlacementDecision {
    /// The chosen node.
    pub node: String,
    /// The underlay address the placement reserved for the instance, if any: the network
    /// must attach exactly this address ([`crate::network::AttachRequest::reserved`]).
    pub address: Option<ReservedAddress>,
}

impl PlacementDecision {
    /// A decision for `node` (for placements outside this crate).
    pub fn new(node: impl Into<String>) -> Self {
        PlacementDecision {
            node: node.into(),
            address: None,
        }
    }

    /// With the underlay address reserved for the instance.
    #[must_use]
    pub fn with_address(mut self, address: ReservedAddress) -> Self {
        self.address = Some(address);
        self
    }
}

/// An underlay address a placement reserved for an instance, and its pool. Persisted by
/// engines with the instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ReservedAddress {
    /// The pool the address belongs to.
    pub pool: String,
    /// The address.
    pub address: IpAddr,
}

impl ReservedAddress {
    /// `address` of `pool`.
    pub fn new(pool: impl Into<String>, address: IpAddr) -> Self {
        ReservedAddress {
            pool: pool.into(),
            address,
        }
    }
}

/// Chooses nodes for instances. Object safe: store it as `Arc<dyn Placement>`.
#[async_trait]
pub trait Placement: Send + Sync + Debug + 'static {
    /// Chooses a node for `request` among `nodes`, or fails with [`Error::Unschedulable`] naming
    /// why no node fits. A successful call reserves whatever the implementation tracks (for
    /// example an underlay IP) until [`Placement::release`].
    async fn place(
        &self,
        request: &PlacementRequest,
        nodes: &[NodeView],
    ) -> Result<PlacementDecision>;

    /// Forgets what was reserved for `instance` (it was stopped or its start failed).
    /// Idempotent; the default does nothing.
    async fn release(&self, instance: &str) -> Result<()> {
        let _ = instance;
        Ok(())
    }
}

/// Why `node` cannot take `request`, or `None` when it can. The checks every placement makes:
/// readiness, cordon, node selector, required node affinity, NoSchedule/NoExecute taints,
/// resources and host ports.
pub fn unfit_reason(request: &PlacementRequest, view: &NodeView) -> Option<String> {
    let node = &view.node;
    if !node.ready {
        return Some("node not ready".to_owned());
    }
    if node.unschedulable {
        return Some("node unschedulable".to_owned());
    }
    if request
        .node_selector
        .iter()
        .any(|(k, v)| node.labels.get(k) != Some(v))
    {
        return Some("node selector does not match".to_owned());
    }
    if let Some(required) = request.affinity.required_node_affinity()
        && !required.matches(&node.name, &node.labels)
    {
        return Some("node affinity does not match".to_owned());
    }
    let untolerated = node.taints.iter().find(|t| {
        t.effect != crate::model::TaintEffect::PreferNoSchedule
            && !request.tolerations.iter().any(|tol| tol.tolerates(t))
    });
    if let Some(t) = untolerated {
        return Some(format!(
            "untolerated taint {}={}:{:?}",
            t.key, t.value, t.effect
        ));
    }
    let free = view.free();
    if request.resources.cpu > free.cpu {
        return Some(format!(
            "insufficient cpu (requested {}, free {})",
            request.resources.cpu, free.cpu
        ));
    }
    if request.resources.memory > free.memory {
        return Some(format!(
            "insufficient memory (requested {}, free {})",
            request.resources.memory, free.memory
        ));
    }
    if let Some(port) = request
        .host_ports
        .iter()
        .find(|p| view.used_ports.contains(p))
    {
        return Some(format!("host port {port} in use"));
    }
    None
}

/// The share of a node's allocatable that would be requested after placing `extra`, in
/// thousandths, averaged over CPU and memory (a dimension with zero allocatable counts as full).
fn allocated_permille(view: &NodeView, extra: Resources) -> u64 {
    let after = view.requested.saturating_add(extra);
    let share = |used: u64, total: u64| {
        used.saturating_mul(1000)
            .checked_div(total)
            .map_or(1000, |permille| permille.min(1000))
    };
    (share(after.cpu.0, view.node.allocatable.cpu.0)
        + share(after.memory.0, view.node.allocatable.memory.0))
        / 2
}

/// Picks the node for `request`: the previous node if it still fits, else the least allocated
/// fitting node (ties by name). Pure: no I/O, no state.
pub fn least_allocated(
    request: &PlacementRequest,
    nodes: &[NodeView],
) -> Result<PlacementDecision> {
    if let Some(prev) = &request.previous_node
        && let Some(view) = nodes.iter().find(|v| &v.node.name == prev)
        && unfit_reason(request, view).is_none()
    {
        return Ok(PlacementDecision::new(prev.clone()));
    }
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let best = nodes
        .iter()
        .filter(|view| match unfit_reason(request, view) {
            None => true,
            Some(reason) => {
                *reasons
                    .entry(reason.split(" (").next().unwrap_or_default().to_owned())
                    .or_default() += 1;
                false
            }
        })
        .min_by(|a, b| {
            allocated_permille(a, request.resources)
                .cmp(&allocated_permille(b, request.resources))
                .then_with(|| a.node.name.cmp(&b.node.name))
        });
    match best {
        Some(view) => Ok(PlacementDecision::new(view.node.name.clone())),
        None => {
            let summary = if nodes.is_empty() {
                "no nodes".to_owned()
            } else {
                let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
                format!("0/{} nodes available: {}", nodes.len(), parts.join(", "))
            };
            Err(Error::Unschedulable {
                instance: request.instance.clone(),
                reason: summary,
            })
        }
    }
}

/// The default placement: [`least_allocated`] (spreads instances; keeps stateful identities on
/// their previous node when it still fits).
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastAllocated;

#[async_trait]
impl Placement for LeastAllocated {
    async fn place(
        &self,
        request: &PlacementRequest,
        nodes: &[NodeView],
    ) -> Result<PlacementDecision> {
        least_allocated(request, nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WorkloadKind;

    fn view(name: &str, cpu: u64, mem: u64, requested_cpu: u64) -> NodeView {
        let mut v = NodeView::new(Node::new(name, Resources::new(cpu, mem)));
        v.requested = Resources::new(requested_cpu, 0);
        v
    }

    fn req(cpu: u64) -> PlacementRequest {
        PlacementRequest::new(
            "web-0",
            AppKey::new("default", "web"),
            Revision::from("r1"),
            Resources::new(cpu, 1),
        )
    }

    #[test]
    fn picks_least_allocated() {
        let nodes = [
            view("a", 1000, 100, 800),
            view("b", 1000, 100, 100),
            view("c", 1000, 100, 500),
        ];
        assert_eq!(least_allocated(&req(100), &nodes).unwrap().node, "b");
    }

    #[test]
    fn full_nodes_give_unschedulable_with_counts() {
        let nodes = [view("a", 1000, 100, 950), view("b", 1000, 100, 1000)];
        let err = least_allocated(&req(100), &nodes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot place web-0: 0/2 nodes available: 2 insufficient cpu"
        );
        assert!(err.is_retryable());
    }

    #[test]
    fn exact_fit_is_allowed() {
        let nodes = [view("a", 1000, 100, 900)];
        assert_eq!(least_allocated(&req(100), &nodes).unwrap().node, "a");
    }

    #[test]
    fn prefers_previous_node_when_it_fits() {
        let nodes = [view("a", 1000, 100, 800), view("b", 1000, 100, 0)];
        let mut r = req(100);
        r.previous_node = Some("a".into());
        assert_eq!(least_allocated(&r, &nodes).unwrap().node, "a");
        r.resources = Resources::new(300, 1);
        assert_eq!(
            least_allocated(&r, &nodes).unwrap().node,
            "b",
            "falls back when the previous node is full"
        );
    }

    #[test]
    fn taints_selector_and_ports() {
        use crate::model::{Taint, TaintEffect};
        let mut tainted = view("a", 1000, 100, 0);
        tainted.node.taints.push(Taint {
            key: "k".into(),
            value: "v".into(),
            effect: TaintEffect::NoSchedule,
        });
        let mut ported = view("b", 1000, 100, 0);
        ported.used_ports.insert(8080);
        let mut r = req(1);
        r.host_ports = vec![8080];
        let err = least_allocated(&r, &[tainted, ported])
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 host port 8080 in use"), "{err}");
        assert!(err.contains("1 untolerated taint k=v:NoSchedule"), "{err}");
        let labelled = NodeView::new(Node::new("c", Resources::new(1000, 100)).label("zone", "z1"));
        let mut r = req(1);
        r.node_selector.insert("zone".into(), "z2".into());
        assert!(
            least_allocated(&r, &[labelled])
                .unwrap_err()
                .to_string()
                .contains("node selector")
        );
    }

    #[test]
    fn required_node_affinity_is_honoured() {
        use crate::model::{
            NodeAffinity, NodeSelector, NodeSelectorTerm, SelectorOperator, SelectorRequirement,
        };
        let ssd = NodeView::new(Node::new("a", Resources::new(1000, 100)).label("disk", "ssd"));
        let hdd = NodeView::new(Node::new("b", Resources::new(1000, 100)).label("disk", "hdd"));
        let mut r = req(1);
        r.affinity.node_affinity =
            Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm::new(vec![
                        SelectorRequirement::new("disk", SelectorOperator::In, ["ssd"]),
                    ])],
                }),
                preferred_during_scheduling_ignored_during_execution: Vec::new(),
            });
        // `b` would win on name order if affinity were ignored.
        let mut busy = ssd.clone();
        busy.requested = Resources::new(500, 0);
        assert_eq!(least_allocated(&r, &[busy, hdd.clone()]).unwrap().node, "a");
        let err = least_allocated(&r, &[hdd]).unwrap_err().to_string();
        assert!(err.contains("1 node affinity does not match"), "{err}");
    }

    #[test]
    fn from_spec_carries_every_constraint() {
        use crate::model::{ContainerSpec, GangSpec, UnderlaySpec};
        let spec = AppSpec::new(
            "db",
            vec![ContainerSpec::new("c", ["/bin/db"]).resources(Resources::new(250, 64))],
        )
        .namespace("data")
        .kind(WorkloadKind::Stateful)
        .label("app", "db")
        .node_selector("disk", "ssd")
        .priority(7)
        .underlay(UnderlaySpec {
            pool: Some("p".into()),
            fixed_ip: true,
        })
        .gang(GangSpec::new(1));
        let r =
            PlacementRequest::from_spec(&spec, "db-2", spec.revision(), Some(2), Some("n1".into()));
        assert_eq!(r.app, AppKey::new("data", "db"));
        assert_eq!(r.resources, Resources::new(250, 64));
        assert_eq!(r.labels["app"], "db");
        assert_eq!(r.node_selector["disk"], "ssd");
        assert_eq!((r.priority, r.ordinal), (7, Some(2)));
        assert_eq!(r.previous_node.as_deref(), Some("n1"));
        let underlay = r.underlay.unwrap();
        assert_eq!(underlay.pool.as_deref(), Some("p"));
        assert_eq!(underlay.claim_key.as_deref(), Some("data/db-2"));
        assert_eq!(r.gang, Some(GangNeed::new("db", 1)));
        // Stateless: no claim, even with fixedIp.
        let stateless = spec.clone().kind(WorkloadKind::Stateless);
        let r = PlacementRequest::from_spec(&stateless, "db-x", spec.revision(), None, None);
        assert_eq!(r.underlay.unwrap().claim_key, None);
    }
}
