//! [`MemoryIpCapacity`]: an in-memory [`IpCapacity`] with claims, for tests, examples and
//! schedulers whose pools live nowhere else.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use rorqual_core::ip_capacity::{
    CapacitySnapshot, ClaimedAddress, IpCapacity, IpCapacityError, PoolCapacity, Reservation,
    ReserveRequest,
};

#[derive(Debug, Default)]
struct MemPool {
    /// The pool's name, shared with every snapshot.
    name: Arc<str>,
    nodes: Option<Arc<[String]>>,
    free: BTreeSet<IpAddr>,
    /// Every address of the pool (free or not).
    all: BTreeSet<IpAddr>,
}

#[derive(Debug, Default)]
struct Pools {
    pools: HashMap<String, MemPool>,
    /// Owner → (pool, address, identity).
    taken: HashMap<String, (String, IpAddr, Option<String>)>,
    /// Identity → the address its claim keeps.
    claims: HashMap<String, ClaimedAddress>,
    layout: u64,
    snapshot: Option<Arc<CapacitySnapshot>>,
}

/// In-memory [`IpCapacity`]: pools of addresses, reservations per owner, and claims that keep
/// a stateful identity's address after its owner releases it (until [`MemoryIpCapacity::drop_claim`]).
#[derive(Debug, Default)]
pub struct MemoryIpCapacity {
    inner: Mutex<Pools>,
}

impl MemoryIpCapacity {
    /// No pools.
    pub fn new() -> MemoryIpCapacity {
        MemoryIpCapacity::default()
    }

    /// Adds (or replaces) pool `name` usable from `nodes` with `addresses`: free, except those
    /// an owner holds or a claim keeps.
    pub fn add_pool<S: Into<String>>(
        &self,
        name: &str,
        nodes: impl IntoIterator<Item = S>,
        addresses: impl IntoIterator<Item = IpAddr>,
    ) {
        let all: BTreeSet<IpAddr> = addresses.into_iter().collect();
        let mut inner = self.inner.lock();
        let taken: BTreeSet<IpAddr> = inner
            .taken
            .values()
            .filter(|(pool, _, _)| pool == name)
            .map(|(_, ip, _)| *ip)
            .chain(
                inner
                    .claims
                    .values()
                    .filter(|c| c.pool == name)
                    .map(|c| c.address),
            )
            .collect();
        let free = all.difference(&taken).copied().collect();
        inner.pools.insert(
            name.to_owned(),
            MemPool {
                name: Arc::from(name),
                nodes: Some(nodes.into_iter().map(Into::into).collect()),
                all,
                free,
            },
        );
        inner.layout += 1;
        inner.snapshot = None;
    }

    /// Free addresses of `pool`.
    pub fn free(&self, pool: &str) -> usize {
        self.inner
            .lock()
            .pools
            .get(pool)
            .map_or(0, |p| p.free.len())
    }

    /// The address `owner` holds, if any.
    pub fn held_by(&self, owner: &str) -> Option<IpAddr> {
        self.inner.lock().taken.get(owner).map(|(_, ip, _)| *ip)
    }

    /// Drops `identity`'s claim: its address becomes free unless an owner holds it.
    pub fn drop_claim(&self, identity: &str) {
        let mut inner = self.inner.lock();
        let Some(claim) = inner.claims.remove(identity) else {
            return;
        };
        let held = inner.taken.values().any(|(_, ip, _)| *ip == claim.address);
        if !held && let Some(p) = inner.pools.get_mut(&claim.pool) {
            p.free.insert(claim.address);
        }
        inner.snapshot = None;
    }
}

impl IpCapacity for MemoryIpCapacity {
    fn snapshot(&self) -> Arc<CapacitySnapshot> {
        let mut inner = self.inner.lock();
        if let Some(s) = &inner.snapshot {
            return s.clone();
        }
        let pools = inner
            .pools
            .values()
            .map(|p| {
                PoolCapacity::on_every_node(p.name.clone(), p.free.len())
                    .with_taken(p.all.len() - p.free.len())
                    .with_nodes(p.nodes.clone())
            })
            .collect();
        let snap = Arc::new(CapacitySnapshot::new(inner.layout, pools));
        inner.snapshot = Some(snap.clone());
        snap
    }

    fn claim(&self, identity: &str) -> Option<ClaimedAddress> {
        self.inner.lock().claims.get(identity).cloned()
    }

    fn reserve(&self, request: &ReserveRequest) -> Result<Reservation, IpCapacityError> {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let pool = request.pool.as_str();
        let p = inner
            .pools
            .get_mut(pool)
            .ok_or_else(|| IpCapacityError::UnknownPool(pool.to_owned()))?;
        if let Some((held_pool, held, _)) = inner.taken.get(&request.owner) {
            if held_pool == pool && request.address.is_none_or(|a| a == *held) {
                return Ok(Reservation::new(*held, false));
            }
            return Err(IpCapacityError::AddressUnavailable {
                pool: pool.to_owned(),
                address: request.address.unwrap_or(*held),
                detail: Some(format!(
                    "`{}` already holds {held} in underlay pool `{held_pool}`",
                    request.owner
                )),
            });
        }
        let claimed = request
            .identity
            .as_ref()
            .and_then(|id| inner.claims.get(id))
            .filter(|c| c.pool == pool)
            .map(|c| c.address);
        let ip = match (claimed, request.address) {
            (Some(c), Some(a)) if c != a => {
                return Err(IpCapacityError::AddressUnavailable {
                    pool: pool.to_owned(),
                    address: a,
                    detail: Some(format!("the identity's claim keeps {c}")),
                });
            }
            (Some(c), _) => {
                if let Some((holder, _)) = inner.taken.iter().find(|(_, (_, ip, _))| *ip == c) {
                    return Err(IpCapacityError::AddressUnavailable {
                        pool: pool.to_owned(),
                        address: c,
                        detail: Some(format!("held by `{holder}`")),
                    });
                }
                p.free.remove(&c);
                c
            }
            (None, Some(a)) => {
                if !p.free.remove(&a) {
                    let detail = if p.all.contains(&a) {
                        "in use or claimed"
                    } else {
                        "not in the pool"
                    };
                    return Err(IpCapacityError::AddressUnavailable {
                        pool: pool.to_owned(),
                        address: a,
                        detail: Some(detail.to_owned()),
                    });
                }
                a
            }
            (None, None) => p
                .free
                .pop_first()
                .ok_or_else(|| IpCapacityError::Exhausted {
                    pool: pool.to_owned(),
                    taken: p.all.len() - p.free.len(),
                })?,
        };
        if let Some(id) = &request.identity {
            inner
                .claims
                .insert(id.clone(), ClaimedAddress::new(pool, ip));
        }
        inner.taken.insert(
            request.owner.clone(),
            (pool.to_owned(), ip, request.identity.clone()),
        );
        inner.snapshot = None;
        Ok(Reservation::new(ip, true))
    }

    fn release(&self, owner: &str) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if let Some((pool, ip, _)) = inner.taken.remove(owner) {
            give_back(inner, &pool, ip);
            inner.snapshot = None;
        }
    }
}

/// Returns `ip` to `pool`'s free set unless a claim keeps it.
fn give_back(inner: &mut Pools, pool: &str, ip: IpAddr) {
    let claimed = inner
        .claims
        .values()
        .any(|c| c.pool == pool && c.address == ip);
    if !claimed && let Some(p) = inner.pools.get_mut(pool) {
        p.free.insert(ip);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reserve_release_and_claims() {
        let cap = MemoryIpCapacity::new();
        cap.add_pool(
            "p",
            ["n1"],
            [ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")],
        );
        let a = ReserveRequest::new("p", "a");
        assert_eq!(
            cap.reserve(&a).unwrap(),
            Reservation::new(ip("10.0.0.1"), true)
        );
        assert_eq!(
            cap.reserve(&a).unwrap(),
            Reservation::new(ip("10.0.0.1"), false),
            "idempotent, and says the owner already held it"
        );
        let err = cap
            .reserve(&ReserveRequest::new("p", "b").address(ip("10.0.0.1")))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "address 10.0.0.1 is not free in underlay pool `p`: in use or claimed"
        );
        let err = cap
            .reserve(&ReserveRequest::new("p", "b").address(ip("10.9.9.9")))
            .unwrap_err();
        assert!(err.to_string().ends_with("not in the pool"), "{err}");
        // A stateful identity: its claim keeps the address after the owner goes.
        let g0 = ReserveRequest::new("p", "pod-1").identity("ns/g-0");
        assert_eq!(cap.reserve(&g0).unwrap().address, ip("10.0.0.2"));
        cap.release("pod-1");
        assert_eq!(cap.free("p"), 1, "the claim keeps 10.0.0.2");
        assert_eq!(cap.claim("ns/g-0").unwrap().address, ip("10.0.0.2"));
        let again = ReserveRequest::new("p", "pod-2").identity("ns/g-0");
        assert_eq!(cap.reserve(&again).unwrap().address, ip("10.0.0.2"));
        assert_eq!(
            cap.reserve(&ReserveRequest::new("p", "c")).unwrap().address,
            ip("10.0.0.3")
        );
        assert_eq!(
            cap.reserve(&ReserveRequest::new("p", "d"))
                .unwrap_err()
                .to_string(),
            "underlay pool `p` has no free address (3 taken)"
        );
        cap.release("a");
        cap.release("a");
        assert_eq!(cap.free("p"), 1);
        let snap = cap.snapshot();
        assert_eq!((snap.pools[0].free, snap.pools[0].taken), (1, 2));
        assert!(
            Arc::ptr_eq(&snap, &cap.snapshot()),
            "unchanged: same snapshot"
        );
        assert!(matches!(
            cap.reserve(&ReserveRequest::new("q", "x")),
            Err(IpCapacityError::UnknownPool(_))
        ));
    }

    #[test]
    fn replacing_a_pool_keeps_held_and_claimed_addresses_and_an_owner_holds_one() {
        let cap = MemoryIpCapacity::new();
        let addrs = [ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")];
        cap.add_pool("p", ["n1"], addrs);
        let held = cap.reserve(&ReserveRequest::new("p", "a")).unwrap().address;
        let claimed = cap
            .reserve(&ReserveRequest::new("p", "b").identity("ns/g-0"))
            .unwrap()
            .address;
        cap.release("b");
        // Replaced (new nodes, same addresses): neither address is handed out again.
        cap.add_pool("p", ["n1", "n2"], addrs);
        assert_eq!(cap.free("p"), 1);
        let third = cap.reserve(&ReserveRequest::new("p", "c")).unwrap().address;
        assert!(third != held && third != claimed);
        // An owner holding an address asks for another: refused, naming what it holds.
        let err = cap
            .reserve(&ReserveRequest::new("p", "a").address(third))
            .unwrap_err();
        assert!(
            err.to_string().contains("`a` already holds 10.0.0.1"),
            "{err}"
        );
        assert_eq!(cap.held_by("a"), Some(held));
        // The claimed address is not free while another owner of the identity holds it.
        let again = cap
            .reserve(&ReserveRequest::new("p", "b2").identity("ns/g-0"))
            .unwrap();
        assert_eq!(again.address, claimed);
        cap.release("b2");
        assert_eq!(cap.free("p"), 0, "the claim keeps it");
        cap.drop_claim("ns/g-0");
        assert_eq!(cap.free("p"), 1);
    }
}
