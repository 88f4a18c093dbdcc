//! The IP-capacity seam: a scheduler asks which nodes' underlay pools have free addresses, and
//! reserves one for a pod (the address its identity's claim keeps, when it has one) before
//! binding it.
//!
//! An IPAM implements [`IpCapacity`] over its pools: rorqual-net's `AllocatorCapacity` does it
//! for every pool store (memory, file, etcd); `rorqual_scheduler::plugins::MemoryIpCapacity` is
//! a plain in-memory one. The scheduler's underlay-IP plugin
//! (`rorqual_scheduler::plugins::UnderlayIp`) uses it the way Kubernetes' volume binding uses
//! its cache:
//!
//! 1. **PreFilter and Filter** read [`IpCapacity::snapshot`] (and [`IpCapacity::claim`]): both
//!    answer from memory (a cache fed by the pool store's watch), so the parallel filter never
//!    waits on I/O. A snapshot is shared (`Arc`); its [`CapacitySnapshot::layout`] number
//!    changes only when which nodes use which pool changes, so a caller can keep per-node
//!    lookups between pods and re-derive them only then.
//! 2. **Reserve** calls [`IpCapacity::reserve`]: in memory, it picks the address and takes it
//!    from every later snapshot and reservation (an *assumed* reservation).
//! 3. **PreBind** awaits [`IpCapacity::commit`]: the IPAM writes the reservation to its store
//!    (with the owner, identity and node), so other processes sharing the store see it. A
//!    commit that loses against another writer fails, and the pod is scheduled again.
//! 4. **Unreserve** (a failed cycle, or the pod is gone) calls [`IpCapacity::release`].
//!
//! One owner key runs through all of it: the `owner` a scheduler reserves for is the instance
//! id the network later attaches ([`crate::network::AttachRequest::instance`]), so the address
//! reserved is the address attached. A stateful identity's claim keeps its address after the
//! owner releases it, and [`IpCapacity::claim`] tells the scheduler to place it again only on
//! nodes of that address's pool.

use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;

/// One pool as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolCapacity {
    /// The pool's name (shared: snapshots are rebuilt often and cloning a name is a
    /// reference count).
    pub name: Arc<str>,
    /// Addresses that can be reserved now (neither used, reserved for a claim, disabled, nor
    /// assumed by a reservation not yet committed).
    pub free: usize,
    /// Addresses in use or held (the complement of `free` within the pool).
    pub taken: usize,
    /// Nodes that can use the pool's addresses (its subnet's hosts); `None`: every node.
    pub nodes: Option<Arc<[String]>>,
}

impl PoolCapacity {
    /// Pool `name` with `free` addresses, usable from `nodes`.
    pub fn new<S: Into<String>>(
        name: impl Into<Arc<str>>,
        free: usize,
        nodes: impl IntoIterator<Item = S>,
    ) -> PoolCapacity {
        PoolCapacity {
            name: name.into(),
            free,
            taken: 0,
            nodes: Some(nodes.into_iter().map(Into::into).collect()),
        }
    }

    /// Pool `name` with `free` addresses, usable from every node.
    pub fn on_every_node(name: impl Into<Arc<str>>, free: usize) -> PoolCapacity {
        PoolCapacity {
            name: name.into(),
            free,
            taken: 0,
            nodes: None,
        }
    }

    /// Sets how many addresses are taken.
    #[must_use]
    pub fn with_taken(mut self, taken: usize) -> PoolCapacity {
        self.taken = taken;
        self
    }

    /// Sets the nodes that can use the pool (`None`: every node).
    #[must_use]
    pub fn with_nodes(mut self, nodes: Option<Arc<[String]>>) -> PoolCapacity {
        self.nodes = nodes;
        self
    }

    /// Whether `node` can use the pool's addresses.
    pub fn serves(&self, node: &str) -> bool {
        self.nodes
            .as_ref()
            .is_none_or(|nodes| nodes.iter().any(|n| n == node))
    }
}

/// Every pool at one moment ([`IpCapacity::snapshot`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CapacitySnapshot {
    /// Changes whenever the pools or their node lists change (not when only free counts do):
    /// per-node lookups derived from one snapshot stay valid for every snapshot with the same
    /// number.
    pub layout: u64,
    /// The pools, by name.
    pub pools: Vec<PoolCapacity>,
}

impl CapacitySnapshot {
    /// `pools` under layout number `layout`.
    pub fn new(layout: u64, mut pools: Vec<PoolCapacity>) -> CapacitySnapshot {
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        CapacitySnapshot { layout, pools }
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolCapacity> {
        self.pools
            .binary_search_by(|p| (*p.name).cmp(name))
            .ok()
            .map(|i| &self.pools[i])
    }
}

/// The address a stateful identity's claim keeps ([`IpCapacity::claim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClaimedAddress {
    /// The pool.
    pub pool: String,
    /// The address.
    pub address: IpAddr,
}

impl ClaimedAddress {
    /// `address` of `pool`.
    pub fn new(pool: impl Into<String>, address: IpAddr) -> ClaimedAddress {
        ClaimedAddress {
            pool: pool.into(),
            address,
        }
    }
}

/// What [`IpCapacity::reserve`] is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReserveRequest {
    /// The pool.
    pub pool: String,
    /// Who takes the address: the instance (pod) id the network attaches later.
    pub owner: String,
    /// The stateful identity (`namespace/app-ordinal`) whose claim keeps the address across
    /// owners, if any.
    pub identity: Option<String>,
    /// A specific address (a claim's, or one asked for); `None`: any free one.
    pub address: Option<IpAddr>,
    /// The node the pod goes to.
    pub node: Option<String>,
}

impl ReserveRequest {
    /// Any free address of `pool` for `owner`.
    pub fn new(pool: impl Into<String>, owner: impl Into<String>) -> ReserveRequest {
        ReserveRequest {
            pool: pool.into(),
            owner: owner.into(),
            identity: None,
            address: None,
            node: None,
        }
    }

    /// Under the claim of `identity`.
    #[must_use]
    pub fn identity(mut self, identity: impl Into<String>) -> ReserveRequest {
        self.identity = Some(identity.into());
        self
    }

    /// Exactly `address`.
    #[must_use]
    pub fn address(mut self, address: IpAddr) -> ReserveRequest {
        self.address = Some(address);
        self
    }

    /// For a pod going to `node`.
    #[must_use]
    pub fn node(mut self, node: impl Into<String>) -> ReserveRequest {
        self.node = Some(node.into());
        self
    }
}

/// Why an address could not be reserved or committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpCapacityError {
    /// No such pool.
    #[error("underlay pool `{0}` does not exist")]
    UnknownPool(String),
    /// The pool has no free address.
    #[error("underlay pool `{pool}` has no free address ({taken} taken)")]
    Exhausted {
        /// The pool.
        pool: String,
        /// Addresses taken.
        taken: usize,
    },
    /// The address is not free in the pool (or not in it at all).
    #[error("address {address} is not free in underlay pool `{pool}`{}", detail_suffix(.detail))]
    AddressUnavailable {
        /// The pool.
        pool: String,
        /// The address.
        address: IpAddr,
        /// Why, when known (held by another owner, outside the pool's ranges, …).
        detail: Option<String>,
    },
    /// The owner holds no reservation to commit.
    #[error("owner `{0}` holds no reserved underlay address")]
    NotReserved(String),
    /// The IPAM's store failed.
    #[error("underlay pool `{pool}`: {reason}")]
    Store {
        /// The pool.
        pool: String,
        /// What went wrong.
        reason: String,
    },
}

fn detail_suffix(detail: &Option<String>) -> String {
    detail
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

impl IpCapacityError {
    /// `address` is not free in `pool`.
    pub fn unavailable(pool: impl Into<String>, address: IpAddr) -> IpCapacityError {
        IpCapacityError::AddressUnavailable {
            pool: pool.into(),
            address,
            detail: None,
        }
    }
}

/// The address [`IpCapacity::reserve`] gave an owner, and whether this call took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reservation {
    /// The address.
    pub address: IpAddr,
    /// True when this call took the address; false when the owner already held it (a repeated
    /// reserve, or a committed one), so undoing this reservation must not give it back.
    pub newly_taken: bool,
}

impl Reservation {
    /// `address`, newly taken or already held by the owner.
    pub fn new(address: IpAddr, newly_taken: bool) -> Reservation {
        Reservation {
            address,
            newly_taken,
        }
    }
}

/// Read, reserve and commit access to underlay pools. Object safe (`Arc<dyn IpCapacity>`);
/// implement it over your IPAM. See the [module docs](self) for how a scheduler calls it.
#[async_trait]
pub trait IpCapacity: Send + Sync + Debug + 'static {
    /// The pools now, from memory. Cheap: implementations keep the snapshot and hand out the
    /// same `Arc` until something changes.
    fn snapshot(&self) -> Arc<CapacitySnapshot>;

    /// The address `identity`'s claim keeps, if any (from memory).
    fn claim(&self, identity: &str) -> Option<ClaimedAddress>;

    /// Takes an address for `request.owner`, in memory: the claim's address when
    /// `request.identity` has one, else `request.address`, else any free one. Idempotent per
    /// owner: an owner already holding an address of the pool gets it again, with
    /// [`Reservation::newly_taken`] false.
    fn reserve(&self, request: &ReserveRequest) -> Result<Reservation, IpCapacityError>;

    /// Makes `owner`'s reservation durable in the IPAM's store. The default does nothing (an
    /// IPAM that lives only in memory). Idempotent.
    async fn commit(&self, owner: &str) -> Result<(), IpCapacityError> {
        let _ = owner;
        Ok(())
    }

    /// Gives back what `owner` holds: at once in memory, and in the store when it was
    /// committed (an identity's claim keeps its address). Idempotent; never blocks.
    fn release(&self, owner: &str);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seam_is_object_safe_and_errors_name_the_pool() {
        fn assert_seam<T: ?Sized + Send + Sync + Debug + 'static>() {}
        assert_seam::<dyn IpCapacity>();
        let _: Option<Arc<dyn IpCapacity>> = None;
        let e = IpCapacityError::Exhausted {
            pool: "games".into(),
            taken: 254,
        };
        assert_eq!(
            e.to_string(),
            "underlay pool `games` has no free address (254 taken)"
        );
        let e = IpCapacityError::AddressUnavailable {
            pool: "games".into(),
            address: "10.0.0.9".parse().unwrap(),
            detail: Some("held by game-1".into()),
        };
        assert_eq!(
            e.to_string(),
            "address 10.0.0.9 is not free in underlay pool `games`: held by game-1"
        );
    }

    #[test]
    fn snapshot_finds_pools_by_name_and_nodes() {
        let snap = CapacitySnapshot::new(
            1,
            vec![
                PoolCapacity::new("b", 1, ["n2"]),
                PoolCapacity::on_every_node("a", 0),
            ],
        );
        assert_eq!(snap.pool("b").map(|p| p.free), Some(1));
        assert!(snap.pool("a").unwrap().serves("anything"));
        assert!(!snap.pool("b").unwrap().serves("n1"));
        assert!(snap.pool("c").is_none());
    }
}
