//! Counts: usage by state (now and at a time), by node, and whether a pool can be deleted.

use std::collections::BTreeMap;

use super::PoolState;
use super::layout::num;
use crate::error::PoolError;
use crate::model::{IpState, Usage};

impl PoolState {
    /// Counts by stored state (claims count as Reserved until expired by
    /// [`PoolState::expire_claims`]); see [`PoolState::usage_at`] for the counts at a time.
    pub fn usage(&self) -> Usage {
        self.counts(None)
    }

    /// Counts by state at `now_ms`: an address Reserved by a claim past its keep duration
    /// counts as Available (allocation hands it out).
    pub fn usage_at(&self, now_ms: u64) -> Usage {
        self.counts(Some(now_ms))
    }

    pub(super) fn counts(&self, now_ms: Option<u64>) -> Usage {
        let mut u = Usage {
            total: self.layout.total(),
            ..Usage::default()
        };
        let mut in_pool: u128 = 0;
        for (ip, e) in &self.entries {
            if now_ms.is_some_and(|now| self.lapsed_holder(*ip, e, now).is_some()) {
                continue;
            }
            match e.state {
                IpState::Active => u.active += 1,
                IpState::Reserved => u.reserved += 1,
                IpState::Disabled => u.disabled += 1,
                IpState::Available => {}
            }
            let a = num(*ip);
            if self.layout.slot_of(a).is_some()
                && self.layout.excluded_until(a).is_none()
                && !self.layout.is_gateway(*ip)
            {
                in_pool += 1;
            }
        }
        u.available = u.total.saturating_sub(in_pool);
        u
    }

    /// Active addresses per node (owners without a node count under `""`).
    pub fn usage_by_node(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for e in self.entries.values().filter(|e| e.state == IpState::Active) {
            *m.entry(e.node.clone().unwrap_or_default()).or_insert(0) += 1;
        }
        m
    }

    /// Fails when the pool still has active addresses.
    pub fn check_deletable(&self) -> Result<(), PoolError> {
        let active = self.usage().active;
        if active > 0 {
            return Err(PoolError::PoolInUse {
                pool: self.spec.name.clone(),
                active,
            });
        }
        Ok(())
    }
}
