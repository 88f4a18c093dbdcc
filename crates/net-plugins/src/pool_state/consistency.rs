//! The self-check of a pool state's indexes (owners, claims) against its entries.

use super::PoolState;
use crate::error::ConsistencyError;
use crate::model::IpState;

impl PoolState {
    /// Checks the internal indexes agree (used by tests and after loading).
    pub fn check_consistent(&self) -> Result<(), ConsistencyError> {
        let pool = || self.spec.name.clone();
        for (k, ip) in &self.owners {
            match self.entries.get(ip) {
                Some(e) if e.state == IpState::Active && e.owner.as_ref() == Some(k) => {}
                other => {
                    return Err(ConsistencyError::OwnerIndex {
                        pool: pool(),
                        owner: k.to_string(),
                        ip: *ip,
                        entry: format!("{other:?}"),
                    });
                }
            }
        }
        let active = self
            .entries
            .values()
            .filter(|e| e.state == IpState::Active)
            .count();
        if active != self.owners.len() {
            return Err(ConsistencyError::ActiveCount {
                pool: pool(),
                active,
                owners: self.owners.len(),
            });
        }
        for (id, c) in &self.claims {
            match self.entries.get(&c.ip) {
                Some(e) if e.identity.as_deref() == Some(id.as_str()) => {}
                other => {
                    return Err(ConsistencyError::Claim {
                        pool: pool(),
                        identity: id.clone(),
                        ip: c.ip,
                        entry: format!("{other:?}"),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{AllocRequest, IpRange, Owner, PoolSpec};

    fn pool() -> PoolState {
        let spec = PoolSpec::new("p").with_range(IpRange::new("10.0.0.0/29".parse().unwrap()));
        PoolState::new(spec).unwrap()
    }

    #[test]
    fn a_consistent_pool_passes() {
        let mut s = pool();
        s.allocate(&AllocRequest::new(Owner::new("c", "eth0")), 0)
            .unwrap();
        s.check_consistent().unwrap();
    }

    #[test]
    fn an_owner_indexed_at_a_free_address_is_a_typed_error() {
        let mut s = pool();
        let ip = "10.0.0.3".parse().unwrap();
        s.owners.insert(Owner::new("ghost", "eth0"), ip);
        let err = s.check_consistent().unwrap_err();
        assert!(
            matches!(&err, ConsistencyError::OwnerIndex { pool, ip: at, .. } if pool == "p" && *at == ip),
            "{err}"
        );
        assert!(err.to_string().contains("ghost/eth0"), "{err}");
    }

    #[test]
    fn a_claim_without_its_entry_is_a_typed_error() {
        let mut s = pool();
        let ip = "10.0.0.4".parse().unwrap();
        s.claims.insert(
            "ns/db-0".into(),
            super::super::Claim {
                ip,
                released_ms: Some(0),
            },
        );
        let err = s.check_consistent().unwrap_err();
        assert!(
            matches!(&err, ConsistencyError::Claim { identity, .. } if identity == "ns/db-0"),
            "{err}"
        );
    }
}
