//! What a Reserve plugin records when it reserved an underlay address for the pod, so that
//! the host (the `Scheduler` behind core's `Placement` seam) can hand the address to the
//! engine, which attaches exactly that address.

use std::net::IpAddr;
use std::sync::Arc;

use rorqual_core::placement::ReservedAddress;

use crate::framework::CycleState;
use crate::snapshot::PodInfo;

use super::ReservedIp;

/// Cycle state: the underlay address Reserve took (or found already held) for the pod in
/// this cycle, and its pool.
///
/// The UnderlayIp plugin's contract: Reserve writes `ReservedUnderlay { pool, address }` into
/// the cycle state once `IpCapacity::reserve(pool, owner, ..)` succeeded, and Unreserve
/// deletes it (`state.delete::<ReservedUnderlay>()`), as it does with [`ReservedIp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedUnderlay {
    /// The pool the address was reserved from.
    pub pool: Arc<str>,
    /// The address.
    pub address: IpAddr,
}

impl ReservedUnderlay {
    /// Core's form of the reservation.
    pub fn to_reserved_address(&self) -> ReservedAddress {
        ReservedAddress::new(self.pool.to_string(), self.address)
    }
}

/// The underlay address reserved for `pod` in the cycle whose state is `state`, if any:
/// [`ReservedUnderlay`] when the plugin recorded it; otherwise a bare [`ReservedIp`] with the
/// pool the pod asked for (a pod that asked for any pool and whose plugin recorded only the
/// address yields `None`: the pool is unknown).
pub fn reserved_address(state: &CycleState, pod: &PodInfo) -> Option<ReservedAddress> {
    if let Some(r) = state.read::<ReservedUnderlay>() {
        return Some(r.to_reserved_address());
    }
    let ReservedIp(address) = *state.read::<ReservedIp>()?;
    let underlay = pod.underlay.as_ref()?;
    let pool = underlay
        .bound_claim
        .as_ref()
        .map(|(pool, _)| pool.clone())
        .or_else(|| underlay.pool.clone())?;
    Some(ReservedAddress::new(pool.to_string(), address))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::UnderlayRequest;
    use rorqual_core::model::Resources;

    #[test]
    fn the_recorded_pool_wins_and_a_bare_address_needs_the_pods_pool() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let mut pod = PodInfo::new("u", "ns", "p", Resources::default());
        let mut state = CycleState::new();
        assert_eq!(reserved_address(&state, &pod), None);
        state.write(ReservedIp(ip));
        pod.underlay = Some(UnderlayRequest {
            pool: None,
            bound_claim: None,
        });
        assert_eq!(reserved_address(&state, &pod), None, "pool unknown");
        pod.underlay = Some(UnderlayRequest {
            pool: Some(Arc::from("games")),
            bound_claim: None,
        });
        assert_eq!(
            reserved_address(&state, &pod),
            Some(ReservedAddress::new("games", ip))
        );
        state.write(ReservedUnderlay {
            pool: Arc::from("other"),
            address: ip,
        });
        assert_eq!(
            reserved_address(&state, &pod),
            Some(ReservedAddress::new("other", ip))
        );
    }
}
