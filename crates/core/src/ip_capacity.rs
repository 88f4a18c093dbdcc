//! The IP-capacity seam: a scheduler asks which nodes' underlay pools have free addresses, and
//! reserves one for a pod (a fixed-IP claim's address when it has one) before binding it.
//!
//! An IPAM implements [`IpCapacity`] over its pools (rorqual-net's pools will); the scheduler's
//! underlay-IP plugin (`rorqual_scheduler::plugins::UnderlayIp`) consults it in Filter and takes
//! the address in Reserve, giving it back in Unreserve. The trait is object safe
//! (`Arc<dyn IpCapacity>`) and synchronous, so it can be read from the scheduler's parallel
//! filter without blocking: implementations answer from memory (a cache fed by the pool store's
//! watch, say).

use std::fmt::Debug;
use std::net::IpAddr;

/// One pool as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolCapacity {
    /// The pool's name.
    pub name: String,
    /// Free addresses.
    pub free: usize,
    /// Nodes that can use the pool's addresses (its subnet's hosts).
    pub nodes: Vec<String>,
}

/// Why an address could not be reserved.
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
    /// The fixed address is not free in the pool.
    #[error("address {address} is not free in underlay pool `{pool}`")]
    AddressUnavailable {
        /// The pool.
        pool: String,
        /// The address.
        address: IpAddr,
    },
}

/// The address [`IpCapacity::reserve`] gave an owner, and whether this call took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reservation {
    /// The address.
    pub address: IpAddr,
    /// True when this call took the address from the free pool; false when the owner
    /// already held it (a bound fixed-IP claim, say), so undoing this reservation must not
    /// give it back.
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

/// Read and reserve access to underlay pools. Object safe; implement it over your IPAM.
pub trait IpCapacity: Send + Sync + Debug + 'static {
    /// The pools, with free counts and hosts.
    fn pools(&self) -> Vec<PoolCapacity>;
    /// Takes an address of `pool` for `owner` (the given one for a fixed-IP claim). Idempotent
    /// per owner: an owner already holding an address of the pool gets it again, with
    /// [`Reservation::newly_taken`] false.
    fn reserve(
        &self,
        pool: &str,
        owner: &str,
        address: Option<IpAddr>,
    ) -> Result<Reservation, IpCapacityError>;
    /// Gives back what `owner` holds. Idempotent.
    fn release(&self, owner: &str);
}

impl PoolCapacity {
    /// Pool `name` with `free` addresses, usable from `nodes`.
    pub fn new<S: Into<String>>(
        name: impl Into<String>,
        free: usize,
        nodes: impl IntoIterator<Item = S>,
    ) -> PoolCapacity {
        PoolCapacity {
            name: name.into(),
            free,
            nodes: nodes.into_iter().map(Into::into).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
    }
}
