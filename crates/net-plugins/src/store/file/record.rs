//! The journal record of one commit: the new value of every index key it changed (so applying
//! it again is harmless) and the allocation events it makes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::{AllocationEvent, Owner, PoolSpec};
use crate::pool_state::{Claim, Entry, PoolState};

/// One commit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Record {
    /// What changed, per pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) pools: Vec<PoolChange>,
    /// The allocation changes, in order (what watches deliver).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) events: Vec<AllocationEvent>,
}

/// How a commit changes a pool as a whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum PoolOp {
    /// Some keys change.
    #[default]
    Update,
    /// The pool is written from scratch (created, or migrated): its index is cleared first.
    Create,
    /// The pool is deleted.
    Delete,
}

/// The new values of the keys of one pool that a commit changed (`None`: removed).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct PoolChange {
    /// The pool.
    pub(super) pool: String,
    /// Update, create or delete.
    #[serde(default)]
    pub(super) op: PoolOp,
    /// The new spec, when it changed (always on create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) spec: Option<PoolSpec>,
    /// The version of the old-format state file this pool was migrated from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) migrated_from: Option<u64>,
    /// The cursor after the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) cursor: Option<IpAddr>,
    /// Changed addresses.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) entries: BTreeMap<IpAddr, Option<Entry>>,
    /// Changed owners (owner → address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) owners: Vec<(Owner, Option<IpAddr>)>,
    /// Changed claims.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) claims: BTreeMap<String, Option<Claim>>,
}

/// `new`'s value of every key whose value differs between `old` and `new`.
fn changed<K: Ord + Clone, V: PartialEq + Clone>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> BTreeMap<K, Option<V>> {
    let keys: BTreeSet<&K> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| old.get(k) != new.get(k))
        .map(|k| (k.clone(), new.get(k).cloned()))
        .collect()
}

fn owners(s: &PoolState) -> BTreeMap<Owner, IpAddr> {
    s.owners().map(|(o, ip)| (o.clone(), ip)).collect()
}

impl PoolChange {
    /// What turns `before` into `after` (states, or views of a few keys, of pool `pool`;
    /// `None`: no pool). `None` when nothing changed.
    pub(super) fn between(
        pool: &str,
        before: Option<&PoolState>,
        after: Option<&PoolState>,
    ) -> Option<PoolChange> {
        let empty = PoolChange {
            pool: pool.to_owned(),
            ..PoolChange::default()
        };
        let Some(after) = after else {
            return Some(PoolChange {
                op: PoolOp::Delete,
                ..empty
            });
        };
        let Some(before) = before else {
            return Some(PoolChange {
                op: PoolOp::Create,
                spec: Some(after.spec().clone()),
                cursor: after.cursor(),
                entries: after
                    .entries()
                    .iter()
                    .map(|(ip, e)| (*ip, Some(e.clone())))
                    .collect(),
                owners: after
                    .owners()
                    .map(|(o, ip)| (o.clone(), Some(ip)))
                    .collect(),
                claims: after
                    .claims()
                    .iter()
                    .map(|(id, c)| (id.clone(), Some(c.clone())))
                    .collect(),
                ..empty
            });
        };
        let change = PoolChange {
            op: PoolOp::Update,
            spec: (before.spec() != after.spec()).then(|| after.spec().clone()),
            cursor: after.cursor(),
            entries: changed(before.entries(), after.entries()),
            owners: changed(&owners(before), &owners(after))
                .into_iter()
                .collect(),
            claims: changed(before.claims(), after.claims()),
            ..empty
        };
        let same = change.spec.is_none()
            && before.cursor() == after.cursor()
            && change.entries.is_empty()
            && change.owners.is_empty()
            && change.claims.is_empty();
        (!same).then_some(change)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{AllocRequest, IpRange};

    fn pool() -> PoolState {
        let spec = PoolSpec::new("p")
            .with_range(IpRange::new("10.0.0.0/28".parse().unwrap()))
            .with_claim_keep_secs(60);
        PoolState::new(spec).unwrap()
    }

    #[test]
    fn a_change_names_exactly_the_keys_an_allocation_and_a_release_touch() {
        let mut before = pool();
        before
            .allocate(&AllocRequest::new(Owner::new("a", "eth0")), 0)
            .unwrap();
        let mut after = before.clone();
        let o = Owner::new("b", "eth0");
        after
            .allocate(&AllocRequest::new(o.clone()).with_identity("ns/db-0"), 1)
            .unwrap();
        let c = PoolChange::between("p", Some(&before), Some(&after)).unwrap();
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(c.op, PoolOp::Update);
        assert_eq!(c.entries.keys().copied().collect::<Vec<_>>(), [ip]);
        assert_eq!(c.owners, [(o.clone(), Some(ip))]);
        assert_eq!(c.claims.len(), 1);
        assert_eq!(c.cursor, Some(ip));
        assert!(c.spec.is_none());
        // Releasing a claimed address keeps it Reserved: the owner goes, the entry changes.
        let mut released = after.clone();
        released.release(&o, 2);
        let c = PoolChange::between("p", Some(&after), Some(&released)).unwrap();
        assert_eq!(c.owners, [(o, None)]);
        assert!(c.entries[&ip].is_some());
        // Nothing changed: no change.
        assert!(PoolChange::between("p", Some(&released), Some(&released)).is_none());
    }

    #[test]
    fn records_round_trip_through_json() {
        let mut s = pool();
        s.allocate(&AllocRequest::new(Owner::new("a", "eth0")), 0)
            .unwrap();
        let r = Record {
            pools: vec![PoolChange::between("p", None, Some(&s)).unwrap()],
            events: crate::pool_state::diff("p", None, Some(&s)),
        };
        let back: Record = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back.pools[0].op, PoolOp::Create);
        assert_eq!(back.pools[0].entries, r.pools[0].entries);
        assert_eq!(back.events, r.events);
    }
}
