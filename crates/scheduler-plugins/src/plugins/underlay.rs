//! Underlay-IP awareness: pods that need a routable pool address only go to nodes whose pools
//! have one free; a pod whose fixed-IP claim is bound only goes to that pool's hosts. Reserve
//! takes the address, Unreserve gives it back. Pools are read through [`IpCapacity`], which an
//! IPAM (such as rorqual-net's pools) implements; [`MemoryIpCapacity`] is the in-memory one.

use crate::fast_hash::{FastMap, FastSet};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::framework::{
    CycleState, FilterPlugin, NodeSet, Plugin, PodRemoved, PreFilterPlugin, ReservePlugin, Status,
};
use crate::interner::Sym;
use crate::snapshot::{NodeInfo, PodInfo, Snapshot};

pub use rorqual_core::ip_capacity::{IpCapacity, IpCapacityError, PoolCapacity, Reservation};

#[derive(Debug, Default)]
struct MemPool {
    nodes: Vec<String>,
    free: BTreeSet<IpAddr>,
    taken: HashMap<String, IpAddr>,
}

/// In-memory [`IpCapacity`].
#[derive(Debug, Default)]
pub struct MemoryIpCapacity {
    pools: Mutex<HashMap<String, MemPool>>,
}

impl MemoryIpCapacity {
    /// No pools.
    pub fn new() -> MemoryIpCapacity {
        MemoryIpCapacity::default()
    }

    /// Adds pool `name` usable from `nodes` with `addresses` free.
    pub fn add_pool<S: Into<String>>(
        &self,
        name: &str,
        nodes: impl IntoIterator<Item = S>,
        addresses: impl IntoIterator<Item = IpAddr>,
    ) {
        self.pools.lock().insert(
            name.to_owned(),
            MemPool {
                nodes: nodes.into_iter().map(Into::into).collect(),
                free: addresses.into_iter().collect(),
                taken: HashMap::new(),
            },
        );
    }

    /// Free addresses of `pool`.
    pub fn free(&self, pool: &str) -> usize {
        self.pools.lock().get(pool).map_or(0, |p| p.free.len())
    }

    /// The address `owner` holds, if any.
    pub fn held_by(&self, owner: &str) -> Option<IpAddr> {
        self.pools
            .lock()
            .values()
            .find_map(|p| p.taken.get(owner).copied())
    }
}

impl IpCapacity for MemoryIpCapacity {
    fn pools(&self) -> Vec<PoolCapacity> {
        self.pools
            .lock()
            .iter()
            .map(|(name, p)| PoolCapacity::new(name.clone(), p.free.len(), p.nodes.clone()))
            .collect()
    }

    fn reserve(
        &self,
        pool: &str,
        owner: &str,
        address: Option<IpAddr>,
    ) -> Result<Reservation, IpCapacityError> {
        let mut pools = self.pools.lock();
        let p = pools
            .get_mut(pool)
            .ok_or_else(|| IpCapacityError::UnknownPool(pool.to_owned()))?;
        if let Some(&held) = p.taken.get(owner)
            && address.is_none_or(|a| a == held)
        {
            return Ok(Reservation::new(held, false));
        }
        let ip = match address {
            Some(a) => {
                if !p.free.remove(&a) {
                    return Err(IpCapacityError::AddressUnavailable {
                        pool: pool.to_owned(),
                        address: a,
                    });
                }
                a
            }
            None => p
                .free
                .pop_first()
                .ok_or_else(|| IpCapacityError::Exhausted {
                    pool: pool.to_owned(),
                    taken: p.taken.len(),
                })?,
        };
        p.taken.insert(owner.to_owned(), ip);
        Ok(Reservation::new(ip, true))
    }

    fn release(&self, owner: &str) {
        for p in self.pools.lock().values_mut() {
            if let Some(ip) = p.taken.remove(owner) {
                p.free.insert(ip);
            }
        }
    }
}

/// The UnderlayIp plugin.
#[derive(Debug, Clone)]
pub struct UnderlayIp {
    capacity: Arc<dyn IpCapacity>,
}

impl UnderlayIp {
    /// Over `capacity`.
    pub fn new(capacity: Arc<dyn IpCapacity>) -> UnderlayIp {
        UnderlayIp { capacity }
    }

    /// Who holds a pod's address: its stable identity, else its uid.
    pub fn owner(pod: &PodInfo) -> String {
        match &pod.identity {
            Some(id) => id.key.to_string(),
            None => pod.uid.to_string(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct UnderlayState {
    /// Bound claim: its pool and address.
    claim: Option<(Arc<str>, IpAddr)>,
    claim_hosts: FastSet<Sym>,
    /// Node → a pool with a free address it can use.
    node_pool: FastMap<Sym, Arc<str>>,
    /// Every node in some eligible pool.
    pool_hosts: FastSet<Sym>,
}

/// The address reserved for the pod in this cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedIp(pub IpAddr);

/// Cycle state: this cycle's Reserve took the owner's address from the free pool, so its
/// Unreserve gives it back (an address the owner already held stays held).
#[derive(Debug, Clone, Copy)]
struct TookAddress;

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
        let mut st = UnderlayState::default();
        let pools = self.capacity.pools();
        if let Some((pool, ip)) = &req.bound_claim {
            let Some(p) = pools.iter().find(|p| p.name == **pool) else {
                return (
                    None,
                    Status::unresolvable(format!(
                        "claimed address {ip} is in unknown pool `{pool}`"
                    )),
                );
            };
            st.claim = Some((pool.clone(), *ip));
            st.claim_hosts = p.nodes.iter().map(|n| Sym::new(n)).collect();
        } else {
            for p in &pools {
                if req.pool.as_deref().is_some_and(|want| want != p.name) {
                    continue;
                }
                let name: Arc<str> = Arc::from(p.name.as_str());
                for n in &p.nodes {
                    let sym = Sym::new(n);
                    st.pool_hosts.insert(sym);
                    if p.free > 0 {
                        st.node_pool.entry(sym).or_insert_with(|| name.clone());
                    }
                }
            }
        }
        state.write(st);
        (None, Status::success())
    }
}

impl FilterPlugin for UnderlayIp {
    fn filter(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(st) = state.read::<UnderlayState>() else {
            return Status::error("UnderlayIp: pre-filter state missing");
        };
        if st.claim.is_some() {
            if st.claim_hosts.contains(&node.name) {
                return Status::success();
            }
            return Status::unresolvable("not in the claimed IP's pool");
        }
        if st.node_pool.contains_key(&node.name) {
            Status::success()
        } else if st.pool_hosts.contains(&node.name) {
            Status::unschedulable("no free underlay IP")
        } else {
            Status::unresolvable("node is in no underlay pool")
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
        let (pool, fixed) = match &st.claim {
            Some((pool, ip)) => (pool.clone(), Some(*ip)),
            None => match st.node_pool.get(&node) {
                Some(pool) => (pool.clone(), None),
                None => {
                    return Status::unschedulable(format!(
                        "node {node} has no underlay pool with a free address"
                    ));
                }
            },
        };
        match self.capacity.reserve(&pool, &UnderlayIp::owner(pod), fixed) {
            Ok(reservation) => {
                state.write(ReservedIp(reservation.address));
                if reservation.newly_taken {
                    state.write(TookAddress);
                }
                Status::success()
            }
            Err(e) => Status::unschedulable(e.to_string()),
        }
    }

    fn unreserve(&self, state: &mut CycleState, pod: &PodInfo, _node: Sym) {
        if pod.underlay.is_none() {
            return;
        }
        state.delete::<ReservedIp>();
        let took = state.delete::<TookAddress>().is_some();
        // A failed cycle gives back only what its own Reserve took; a pod that is gone
        // gives back whatever its owner holds.
        if took || state.read::<PodRemoved>().is_some() {
            self.capacity.release(&UnderlayIp::owner(pod));
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
    fn memory_capacity_reserve_release() {
        let cap = MemoryIpCapacity::new();
        cap.add_pool("p", ["n1"], [ip("10.0.0.1"), ip("10.0.0.2")]);
        assert_eq!(
            cap.reserve("p", "a", None).unwrap(),
            Reservation::new(ip("10.0.0.1"), true)
        );
        assert_eq!(
            cap.reserve("p", "a", None).unwrap(),
            Reservation::new(ip("10.0.0.1"), false),
            "idempotent, and says the owner already held it"
        );
        assert!(matches!(
            cap.reserve("p", "b", Some(ip("10.0.0.1"))),
            Err(IpCapacityError::AddressUnavailable { .. })
        ));
        assert_eq!(cap.reserve("p", "b", None).unwrap().address, ip("10.0.0.2"));
        assert!(
            cap.reserve("p", "c", None)
                .unwrap_err()
                .to_string()
                .contains("no free address (2 taken)")
        );
        cap.release("a");
        cap.release("a");
        assert_eq!(cap.free("p"), 1);
        assert!(matches!(
            cap.reserve("q", "x", None),
            Err(IpCapacityError::UnknownPool(_))
        ));
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
        });
        let mut state = CycleState::new();
        plugin.pre_filter(&mut state, &pod, &snap);
        let msgs: Vec<String> = nodes
            .iter()
            .map(|n| plugin.filter(&state, &pod, n).message())
            .collect();
        assert_eq!(
            msgs,
            ["no free underlay IP", "", "node is in no underlay pool"]
        );
        assert!(
            plugin
                .reserve(&mut state, &pod, Sym::new("n2"))
                .is_success()
        );
        assert_eq!(
            state.read::<ReservedIp>(),
            Some(&ReservedIp(ip("10.0.1.1")))
        );
        assert_eq!(cap.free("free"), 0);
        plugin.unreserve(&mut state, &pod, Sym::new("n2"));
        assert_eq!(cap.free("free"), 1);
        pod.underlay = Some(UnderlayRequest {
            pool: None,
            bound_claim: Some((Arc::from("full"), ip("10.9.9.9"))),
        });
        let mut state = CycleState::new();
        plugin.pre_filter(&mut state, &pod, &snap);
        assert!(plugin.filter(&state, &pod, &nodes[0]).is_success());
        assert_eq!(
            plugin.filter(&state, &pod, &nodes[1]).message(),
            "not in the claimed IP's pool"
        );
    }
}
