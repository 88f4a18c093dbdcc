//! Underlay-IP awareness: pods that need a routable pool address only go to nodes whose pools
//! have one free; a pod whose identity's claim keeps an address only goes to that pool's
//! hosts. Reserve takes the address (in memory), PreBind commits it to the IPAM's store,
//! Unreserve gives it back. Pools are read through core's [`IpCapacity`] seam, which an IPAM
//! implements (rorqual-net's `AllocatorCapacity` over its pool stores;
//! [`MemoryIpCapacity`] in memory).
//!
//! Per pod the plugin reads one [`CapacitySnapshot`] and checks each node with one hash
//! lookup: which pools a node can use is derived once per snapshot layout
//! ([`CapacitySnapshot::layout`]) and kept between pods.

mod memory;

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use rorqual_core::placement::ReservedAddress;

use crate::fast_hash::FastMap;
use crate::framework::{
    CycleState, FilterPlugin, NodeSet, Plugin, PodRemoved, PreBindPlugin, PreFilterPlugin,
    ReservePlugin, Status,
};
use crate::interner::Sym;
use crate::snapshot::{NodeInfo, PodInfo, Snapshot};

pub use memory::MemoryIpCapacity;
pub use rorqual_core::ip_capacity::{
    CapacitySnapshot, ClaimedAddress, IpCapacity, IpCapacityError, PoolCapacity, Reservation,
    ReserveRequest,
};

/// No pool list for a node ([`Layout::node_list`]).
const NO_LIST: u16 = u16::MAX;

/// Which pools each node can use, derived from one snapshot layout.
#[derive(Debug)]
struct Layout {
    layout: u64,
    /// Pool names, by index (the snapshot's order).
    names: Vec<Arc<str>>,
    /// By node symbol ([`Sym::index`]): the position in `lists` of the pools it can use
    /// (pools limited to nodes), or `NO_LIST`. A dense table of two bytes per symbol stays in
    /// cache where a hash map of 5,000 nodes does not: the filter reads it once per node.
    node_list: Vec<u16>,
    /// Distinct lists of pool indexes.
    lists: Vec<Vec<u16>>,
    /// Indexes of the pools every node can use.
    everywhere: Vec<u16>,
}

impl Layout {
    fn of(snap: &CapacitySnapshot) -> Layout {
        let mut node_pools: FastMap<Sym, Vec<u16>> = FastMap::default();
        let mut everywhere = Vec::new();
        for (i, p) in snap.pools.iter().enumerate() {
            let i = u16::try_from(i).unwrap_or(u16::MAX);
            match &p.nodes {
                None => everywhere.push(i),
                Some(nodes) => {
                    for n in nodes.iter() {
                        node_pools.entry(Sym::new(n)).or_default().push(i);
                    }
                }
            }
        }
        let mut lists: Vec<Vec<u16>> = Vec::new();
        let mut list_of: FastMap<Vec<u16>, u16> = FastMap::default();
        let size = node_pools.keys().map(|s| s.index() + 1).max().unwrap_or(0);
        let mut node_list = vec![NO_LIST; size];
        for (node, pools) in node_pools {
            let at = *list_of.entry(pools.clone()).or_insert_with(|| {
                lists.push(pools);
                u16::try_from(lists.len() - 1).unwrap_or(NO_LIST)
            });
            node_list[node.index()] = at;
        }
        Layout {
            layout: snap.layout,
            names: snap.pools.iter().map(|p| p.name.clone()).collect(),
            node_list,
            lists,
            everywhere,
        }
    }

    /// The index in `lists` of the pools `node` can use (beside `everywhere`), if any.
    fn list_of(&self, node: Sym) -> Option<usize> {
        match self.node_list.get(node.index()) {
            Some(&at) if at != NO_LIST => Some(usize::from(at)),
            _ => None,
        }
    }

    fn pools_of(&self, node: Sym) -> impl Iterator<Item = usize> + '_ {
        let list = self.list_of(node).and_then(|at| self.lists.get(at));
        list.into_iter()
            .flatten()
            .chain(self.everywhere.iter())
            .map(|&i| usize::from(i))
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| &**n == name)
    }
}

/// The UnderlayIp plugin (PreFilter, Filter, Reserve, PreBind).
#[derive(Debug, Clone)]
pub struct UnderlayIp {
    capacity: Arc<dyn IpCapacity>,
    layout: Arc<Mutex<Option<Arc<Layout>>>>,
}

impl UnderlayIp {
    /// Over `capacity`.
    pub fn new(capacity: Arc<dyn IpCapacity>) -> UnderlayIp {
        UnderlayIp {
            capacity,
            layout: Arc::new(Mutex::new(None)),
        }
    }

    /// Who holds a pod's address: the pod (its uid, which is the instance id behind core's
    /// `Placement` seam, so the network attaches the address reserved here). A stateful
    /// identity's address outlives its pods through the identity's claim.
    pub fn owner(pod: &PodInfo) -> &str {
        &pod.uid
    }

    /// The identity whose claim keeps a pod's address, if it has one.
    pub fn identity(pod: &PodInfo) -> Option<&str> {
        pod.underlay.as_ref()?.claim.as_deref()
    }

    fn layout_for(&self, snap: &CapacitySnapshot) -> Arc<Layout> {
        let mut cached = self.layout.lock();
        match &*cached {
            Some(l) if l.layout == snap.layout && l.names.len() == snap.pools.len() => l.clone(),
            _ => {
                let l = Arc::new(Layout::of(snap));
                *cached = Some(l.clone());
                l
            }
        }
    }
}

/// What PreFilter found for one pod.
#[derive(Debug, Clone)]
struct UnderlayState {
    layout: Arc<Layout>,
    snap: Arc<CapacitySnapshot>,
    /// Per pool: the pod may use it (its pool, or any when it names none).
    wanted: Vec<bool>,
    /// The pool index and address the identity's claim keeps.
    claim: Option<(usize, IpAddr)>,
    /// Per list of [`Layout::lists`]: one of its pools is usable. Filter answers a node
    /// with one table read and this.
    list_usable: Vec<bool>,
    /// One of [`Layout::everywhere`] is usable.
    everywhere_usable: bool,
}

impl UnderlayState {
    fn new(
        layout: Arc<Layout>,
        snap: Arc<CapacitySnapshot>,
        wanted: Vec<bool>,
        claim: Option<(usize, IpAddr)>,
    ) -> UnderlayState {
        let mut st = UnderlayState {
            layout,
            snap,
            wanted,
            claim,
            list_usable: Vec::new(),
            everywhere_usable: false,
        };
        let any_usable = |pools: &[u16]| pools.iter().any(|&i| st.usable(usize::from(i)));
        let list_usable = st.layout.lists.iter().map(|l| any_usable(l)).collect();
        let everywhere_usable = any_usable(&st.layout.everywhere);
        st.list_usable = list_usable;
        st.everywhere_usable = everywhere_usable;
        st
    }

    fn usable(&self, i: usize) -> bool {
        self.wanted[i] && (self.claim.is_some() || self.snap.pools[i].free > 0)
    }

    /// Some pool `node` can use is usable.
    fn node_usable(&self, node: Sym) -> bool {
        self.everywhere_usable
            || self
                .layout
                .list_of(node)
                .is_some_and(|at| self.list_usable[at])
    }
}

/// The address reserved for the pod in this cycle, and its pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedIp {
    /// The pool.
    pub pool: Arc<str>,
    /// The address.
    pub address: IpAddr,
}

impl ReservedIp {
    /// Core's form of the reservation (what `Placement` hands the engine to attach).
    pub fn to_reserved_address(&self) -> ReservedAddress {
        ReservedAddress::new(self.pool.to_string(), self.address)
    }
}

/// The underlay address the UnderlayIp plugin reserved (or found already held) in the cycle
/// whose state is `state`, if any.
pub fn reserved_address(state: &CycleState) -> Option<ReservedAddress> {
    state
        .read::<ReservedIp>()
        .map(ReservedIp::to_reserved_address)
}

/// Cycle state: this cycle's Reserve took the owner's address, so its Unreserve gives it
/// back (an address the owner already held stays held).
#[derive(Debug, Clone, Copy)]
struct TookAddress;

#[cfg(test)]
impl UnderlayIp {
    /// Unreserve as for a pod that is gone.
    fn release_for_test(&self, pod: &PodInfo) {
        let mut state = CycleState::new();
        state.write(PodRemoved);
        self.unreserve(&mut state, pod, Sym::new("n2"));
    }
}

impl Plugin for UnderlayIp {
    fn name(&self) -> &str {
        "UnderlayIp"
    }
}

impl PreFilterPlugin for UnderlayIp {
    fn pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        _snapshot: &Snapshot,
    ) -> (Option<NodeSet>, Status) {
        let Some(req) = &pod.underlay else {
            return (None, Status::skip());
        };
        let snap = self.capacity.snapshot();
        let layout = self.layout_for(&snap);
        let claimed = match &req.bound_claim {
            Some((pool, ip)) => Some(((**pool).to_owned(), *ip)),
            None => UnderlayIp::identity(pod)
                .and_then(|id| self.capacity.claim(id))
                .map(|c| (c.pool, c.address)),
        };
        let claim = match claimed {
            Some((pool, ip)) => match layout.index(&pool) {
                Some(i) => Some((i, ip)),
                None => {
                    return (
                        None,
                        Status::unresolvable(format!(
                            "claimed address {ip} is in unknown underlay pool `{pool}`"
                        )),
                    );
                }
            },
            None => None,
        };
        let wanted = layout
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| match (claim, &req.pool) {
                (Some((c, _)), _) => c == i,
                (None, Some(want)) => want == name,
                (None, None) => true,
            })
            .collect::<Vec<bool>>();
        if claim.is_none()
            && let Some(want) = &req.pool
            && !wanted.iter().any(|w| *w)
        {
            return (
                None,
                Status::unresolvable(format!("underlay pool `{want}` does not exist")),
            );
        }
        state.write(UnderlayState::new(layout, snap, wanted, claim));
        (None, Status::success())
    }
}

impl FilterPlugin for UnderlayIp {
    fn filter(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(st) = state.read::<UnderlayState>() else {
            return Status::error("UnderlayIp: pre-filter state missing");
        };
        if st.node_usable(node.name) {
            return Status::success();
        }
        // Why not: the first pool the pod wanted that is full, or none at all.
        let full = st.layout.pools_of(node.name).find(|&i| st.wanted[i]);
        if let Some((c, ip)) = st.claim {
            return Status::unresolvable(format!(
                "not a host of underlay pool `{}` (the identity's claim keeps {ip})",
                st.layout.names[c]
            ));
        }
        match full {
            Some(i) => {
                let p = &st.snap.pools[i];
                Status::unschedulable(format!(
                    "underlay pool `{}` has no free address ({} of {} taken)",
                    p.name,
                    p.taken,
                    p.taken + p.free
                ))
            }
            None => Status::unresolvable("node is in no underlay pool the pod can use"),
        }
    }
}

impl ReservePlugin for UnderlayIp {
    fn reserve(&self, state: &mut CycleState, pod: &PodInfo, node: Sym) -> Status {
        if pod.underlay.is_none() {
            return Status::success();
        }
        let Some(st) = state.read::<UnderlayState>() else {
            return Status::error("UnderlayIp: pre-filter state missing");
        };
        let Some(i) = st.layout.pools_of(node).find(|&i| st.usable(i)) else {
            return Status::unschedulable(format!(
                "node {node} has no underlay pool with a free address"
            ));
        };
        let pool = st.layout.names[i].clone();
        let mut request =
            ReserveRequest::new(&*pool, UnderlayIp::owner(pod)).node(node.as_str().to_string());
        if let Some(id) = UnderlayIp::identity(pod) {
            request = request.identity(id);
        }
        if let Some((_, ip)) = st.claim {
            request = request.address(ip);
        }
        match self.capacity.reserve(&request) {
            Ok(reservation) => {
                state.write(ReservedIp {
                    pool,
                    address: reservation.address,
                });
                if reservation.newly_taken {
                    state.write(TookAddress);
                }
                Status::success()
            }
            Err(e) => status_of(&e),
        }
    }

    fn unreserve(&self, state: &mut CycleState, pod: &PodInfo, _node: Sym) {
        if pod.underlay.is_none() {
            return;
        }
        state.delete::<ReservedIp>();
        let took = state.delete::<TookAddress>().is_some();
        // A failed cycle gives back only what its own Reserve took; a pod that is gone
        // gives back whatever its owner holds (its identity's claim keeps the address).
        if took || state.read::<PodRemoved>().is_some() {
            self.capacity.release(UnderlayIp::owner(pod));
        }
    }
}

/// The status for a capacity error: a full pool or a taken address may free up (preemption or
/// a retry can help), a pool that does not exist will not, and a failing store is an error.
fn status_of(e: &IpCapacityError) -> Status {
    match e {
        IpCapacityError::UnknownPool(_) => Status::unresolvable(e.to_string()),
        IpCapacityError::Store { .. } => Status::error(e.to_string()),
        _ => Status::unschedulable(e.to_string()),
    }
}

#[async_trait]
impl PreBindPlugin for UnderlayIp {
    async fn pre_bind(&self, state: &CycleState, pod: &PodInfo, _node: Sym) -> Status {
        if state.read::<ReservedIp>().is_none() {
            return Status::success();
        }
        match self.capacity.commit(UnderlayIp::owner(pod)).await {
            Ok(()) => Status::success(),
            Err(e) => status_of(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::UnderlayRequest;
    use rorqual_core::model::Resources;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn filter_reasons() {
        let cap = Arc::new(MemoryIpCapacity::new());
        cap.add_pool("full", ["n1"], []);
        cap.add_pool("free", ["n2"], [ip("10.0.1.1")]);
        let plugin = UnderlayIp::new(cap.clone());
        let snap = Snapshot::new();
        let nodes: Vec<NodeInfo> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| NodeInfo::new(n, Resources::new(1, 1)))
            .collect();
        let mut pod = PodInfo::new("u", "ns", "p", Resources::default());
        pod.underlay = Some(UnderlayRequest {
            pool: None,
            bound_claim: None,
            claim: None,
        });
        let mut state = CycleState::new();
        plugin.pre_filter(&mut state, &pod, &snap);
        let msgs: Vec<String> = nodes
            .iter()
            .map(|n| plugin.filter(&state, &pod, n).message())
            .collect();
        assert_eq!(
            msgs,
            [
                "underlay pool `full` has no free address (0 of 0 taken)",
                "",
                "node is in no underlay pool the pod can use"
            ]
        );
        assert!(
            plugin
                .reserve(&mut state, &pod, Sym::new("n2"))
                .is_success()
        );
        assert_eq!(
            state.read::<ReservedIp>().map(|r| r.address),
            Some(ip("10.0.1.1"))
        );
        assert_eq!(cap.free("free"), 0);
        plugin.unreserve(&mut state, &pod, Sym::new("n2"));
        assert_eq!(cap.free("free"), 1);
        // An identity whose claim keeps an address goes only to that pool's hosts.
        let mut stateful = pod.clone();
        stateful.uid = Arc::from("g-0-a");
        stateful.identity = Some(crate::snapshot::StatefulIdentity {
            key: Arc::from("ns/g-0"),
            previous_node: None,
            previous_zone: None,
        });
        stateful.underlay = Some(UnderlayRequest {
            pool: None,
            bound_claim: None,
            claim: Some(Arc::from("ns/g-0")),
        });
        let mut state = CycleState::new();
        plugin.pre_filter(&mut state, &stateful, &snap);
        assert!(
            plugin
                .reserve(&mut state, &stateful, Sym::new("n2"))
                .is_success()
        );
        plugin.release_for_test(&stateful);
        assert_eq!(cap.claim("ns/g-0").map(|c| c.address), Some(ip("10.0.1.1")));
        stateful.uid = Arc::from("g-0-b");
        let mut state = CycleState::new();
        plugin.pre_filter(&mut state, &stateful, &snap);
        assert_eq!(
            plugin.filter(&state, &stateful, &nodes[0]).message(),
            "not a host of underlay pool `free` (the identity's claim keeps 10.0.1.1)"
        );
        assert!(plugin.filter(&state, &stateful, &nodes[1]).is_success());
        assert!(
            plugin
                .reserve(&mut state, &stateful, Sym::new("n2"))
                .is_success()
        );
        assert_eq!(cap.held_by("g-0-b"), Some(ip("10.0.1.1")));
        // A pool that does not exist is unresolvable at PreFilter.
        pod.underlay = Some(UnderlayRequest {
            pool: Some(Arc::from("nope")),
            bound_claim: None,
            claim: None,
        });
        let (_, status) = plugin.pre_filter(&mut CycleState::new(), &pod, &snap);
        assert_eq!(status.message(), "underlay pool `nope` does not exist");
    }
}
