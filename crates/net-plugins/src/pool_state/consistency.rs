//! The self-check of a pool state's indexes (owners, claims) against its entries.

use super::PoolState;
use crate::model::IpState;

impl PoolState {
    /// Checks the internal indexes agree (used by tests and after loading).
    pub fn check_consistent(&self) -> Result<(), String> {
        for (k, ip) in &self.owners {
            match self.entries.get(ip) {
                Some(e) if e.state == IpState::Active && e.owner.as_ref() == Some(k) => {}
                other => return Err(format!("owner {k} indexed at {ip} but entry is {other:?}")),
            }
        }
        let active = self
            .entries
            .values()
            .filter(|e| e.state == IpState::Active)
            .count();
        if active != self.owners.len() {
            return Err(format!(
                "{active} active entries but {} owners",
                self.owners.len()
            ));
        }
        for (id, c) in &self.claims {
            match self.entries.get(&c.ip) {
                Some(e) if e.identity.as_deref() == Some(id.as_str()) => {}
                other => return Err(format!("claim {id} on {} but entry is {other:?}", c.ip)),
            }
        }
        Ok(())
    }
}
