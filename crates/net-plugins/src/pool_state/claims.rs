//! Claims (an identity's fixed address): lapse after the keep duration, drop, expiry, and
//! the garbage collection of leaked addresses.

use std::collections::HashSet;
use std::net::IpAddr;

use super::{Entry, PoolState};
use crate::model::{AllocationEvent, IpState, Owner};

impl PoolState {
    /// Whether `identity`'s claim was released at least the keep duration before `now_ms`
    /// (expired, whether or not [`PoolState::expire_claims`] has run yet).
    pub(super) fn claim_lapsed(&self, identity: &str, now_ms: u64) -> bool {
        let keep_ms = self.spec.claim_keep_secs.saturating_mul(1000);
        self.claims
            .get(identity)
            .and_then(|c| c.released_ms)
            .is_some_and(|t| t.saturating_add(keep_ms) <= now_ms)
    }

    /// The identity whose expired claim still holds `ip` Reserved, if any: such an address
    /// counts as Available.
    pub(super) fn lapsed_holder<'a>(
        &self,
        ip: IpAddr,
        e: &'a Entry,
        now_ms: u64,
    ) -> Option<&'a str> {
        let id = e.identity.as_deref()?;
        (e.state == IpState::Reserved
            && self.claims.get(id).is_some_and(|c| c.ip == ip)
            && self.claim_lapsed(id, now_ms))
        .then_some(id)
    }

    /// Drops `identity`'s claim; its address becomes Available if it was Reserved for it.
    pub fn drop_claim(&mut self, identity: &str) -> Vec<AllocationEvent> {
        let Some(claim) = self.claims.remove(identity) else {
            return vec![];
        };
        match self.entries.get(&claim.ip) {
            Some(e) if e.state == IpState::Reserved && e.identity.as_deref() == Some(identity) => {
                self.remove_entry(claim.ip);
                vec![AllocationEvent {
                    pool: self.spec.name.clone(),
                    ip: claim.ip,
                    from: IpState::Reserved,
                    to: IpState::Available,
                    owner: None,
                    identity: Some(identity.to_owned()),
                    node: None,
                    mac: None,
                }]
            }
            Some(e) if e.identity.as_deref() == Some(identity) => {
                // Still active: it goes to Available when its owner releases it.
                let mut e = e.clone();
                e.identity = None;
                self.put_entry(claim.ip, e);
                vec![]
            }
            _ => vec![],
        }
    }

    /// Ends claims whose keep duration has passed since release.
    pub fn expire_claims(&mut self, now_ms: u64) -> Vec<AllocationEvent> {
        let expired: Vec<String> = self
            .claims
            .keys()
            .filter(|id| self.claim_lapsed(id, now_ms))
            .cloned()
            .collect();
        expired.iter().flat_map(|id| self.drop_claim(id)).collect()
    }

    /// Releases every address whose owner is not in `live` and has held it for at least
    /// `grace_ms`, then expires claims.
    pub fn gc(
        &mut self,
        live: &HashSet<Owner>,
        grace_ms: u64,
        now_ms: u64,
    ) -> Vec<AllocationEvent> {
        let leaked: Vec<Owner> = self
            .entries
            .values()
            .filter(|e| e.state == IpState::Active)
            .filter(|e| e.since_ms.saturating_add(grace_ms) <= now_ms)
            .filter_map(|e| e.owner.clone())
            .filter(|o| !live.contains(o))
            .collect();
        let mut events: Vec<AllocationEvent> = leaked
            .iter()
            .flat_map(|o| self.release(o, now_ms))
            .collect();
        events.extend(self.expire_claims(now_ms));
        events
    }
}
