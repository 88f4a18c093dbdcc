//! The pure part of the sync: which registry writes turn one commit's allocation events, or a
//! whole snapshot, into registry state. No I/O.

use std::collections::BTreeMap;

use super::{RegistryEntry, RegistryKey};
use crate::model::{AllocationEvent, IpState};
use crate::store::{RevisionedEvent, StoreSnapshot};

/// One registry write.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryChange {
    /// Create or overwrite an entry.
    Put {
        /// Where.
        key: RegistryKey,
        /// What.
        entry: RegistryEntry,
    },
    /// Remove an entry (removing a missing one is no change).
    Delete {
        /// Where.
        key: RegistryKey,
    },
}

impl RegistryChange {
    /// The key written.
    pub fn key(&self) -> &RegistryKey {
        match self {
            RegistryChange::Put { key, .. } | RegistryChange::Delete { key } => key,
        }
    }
}

/// The registry writes of one store revision (one commit), at most one per key, in key order.
/// Every write sets a key to its state after the commit, so applying a batch twice has the
/// effect of applying it once.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistryBatch {
    /// The store revision the registry is at once the batch is applied.
    pub revision: u64,
    /// The writes.
    pub changes: Vec<RegistryChange>,
}

impl RegistryBatch {
    /// The writes `changes` (one per key) bringing the registry to `revision`.
    pub fn new(revision: u64, changes: Vec<RegistryChange>) -> Self {
        RegistryBatch { revision, changes }
    }

    /// How many puts and deletes it holds.
    pub fn counts(&self) -> (usize, usize) {
        let puts = self
            .changes
            .iter()
            .filter(|c| matches!(c, RegistryChange::Put { .. }))
            .count();
        (puts, self.changes.len() - puts)
    }
}

/// The entry an address has after `event`: one for an Active address with an owner, none
/// otherwise. Reserved addresses (held by a claim for an identity, or by an operator) have no
/// entry: nothing answers on them until an owner activates them again.
pub fn entry_after(event: &AllocationEvent) -> Option<RegistryEntry> {
    let owner = event
        .owner
        .as_ref()
        .filter(|_| event.to == IpState::Active)?;
    Some(
        RegistryEntry::active(&owner.container, &owner.ifname)
            .with_identity(event.identity.clone())
            .with_node(event.node.clone())
            .with_mac(event.mac),
    )
}

/// The batch of one commit's events (all at `revision`): the last event of each address
/// decides its entry (an address released and taken again within the commit ends with its new
/// owner).
pub fn batch_for<'a>(
    revision: u64,
    events: impl IntoIterator<Item = &'a AllocationEvent>,
) -> RegistryBatch {
    let mut last: BTreeMap<RegistryKey, Option<RegistryEntry>> = BTreeMap::new();
    for event in events {
        last.insert(RegistryKey::new(&event.pool, event.ip), entry_after(event));
    }
    let changes = last
        .into_iter()
        .map(|(key, entry)| match entry {
            Some(entry) => RegistryChange::Put { key, entry },
            None => RegistryChange::Delete { key },
        })
        .collect();
    RegistryBatch::new(revision, changes)
}

/// Groups a stream of [`RevisionedEvent`]s into one batch per commit. A commit is complete
/// when an event of a later revision arrives, or when the caller knows nothing more of it is
/// coming (the store delivers a commit's events together, so when its stream has nothing
/// ready): then [`CommitGrouper::finish`].
#[derive(Debug)]
pub struct CommitGrouper {
    applied: u64,
    pending: Option<(u64, Vec<AllocationEvent>)>,
}

impl CommitGrouper {
    /// A grouper for changes after revision `applied` (the registry's checkpoint).
    pub fn new(applied: u64) -> Self {
        CommitGrouper {
            applied,
            pending: None,
        }
    }

    /// Adds an event; returns the batch of the previous commit when this one starts a new
    /// one. An event at or before the last revision handed out (or `applied`) is an error
    /// naming both: a resumed watch must not repeat a commit.
    pub fn push(
        &mut self,
        event: RevisionedEvent,
    ) -> Result<Option<RegistryBatch>, super::SyncError> {
        let RevisionedEvent {
            revision, event, ..
        } = event;
        if let Some((at, events)) = &mut self.pending {
            if revision == *at {
                events.push(event);
                return Ok(None);
            }
            if revision < *at {
                return Err(super::SyncError::OutOfOrder {
                    revision,
                    applied: *at,
                });
            }
        } else if revision <= self.applied {
            return Err(super::SyncError::OutOfOrder {
                revision,
                applied: self.applied,
            });
        }
        let done = self.finish();
        self.pending = Some((revision, vec![event]));
        Ok(done)
    }

    /// The batch of the commit in progress, which the caller knows is complete.
    pub fn finish(&mut self) -> Option<RegistryBatch> {
        let (revision, events) = self.pending.take()?;
        self.applied = revision;
        Some(batch_for(revision, &events))
    }
}

/// The entries a registry holds for `snapshot`: one per Active address with an owner.
pub fn desired_entries(snapshot: &StoreSnapshot) -> BTreeMap<RegistryKey, RegistryEntry> {
    let mut out = BTreeMap::new();
    for pool in &snapshot.pools {
        for (ip, e) in pool.entries() {
            let Some(owner) = e.owner.as_ref().filter(|_| e.state == IpState::Active) else {
                continue;
            };
            let entry = RegistryEntry::active(&owner.container, &owner.ifname)
                .with_identity(e.identity.clone())
                .with_node(e.node.clone())
                // The same MAC the allocation's event carries.
                .with_mac(Some(e.mac.unwrap_or_else(|| pool.mac_of(*ip))));
            out.insert(RegistryKey::new(pool.name(), *ip), entry);
        }
    }
    out
}

/// The batch that turns a registry holding `held` into one holding exactly `desired`, at
/// `revision`: puts for what is missing or different, deletes for the rest.
pub fn replace_batch(
    revision: u64,
    held: &BTreeMap<RegistryKey, RegistryEntry>,
    desired: &BTreeMap<RegistryKey, RegistryEntry>,
) -> RegistryBatch {
    let puts = desired
        .iter()
        .filter(|(k, e)| held.get(*k) != Some(*e))
        .map(|(k, e)| RegistryChange::Put {
            key: k.clone(),
            entry: e.clone(),
        });
    let deletes = held
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .map(|k| RegistryChange::Delete { key: k.clone() });
    let mut changes: Vec<RegistryChange> = puts.chain(deletes).collect();
    changes.sort_by(|a, b| a.key().cmp(b.key()));
    RegistryBatch::new(revision, changes)
}

/// Applies `batch` to an in-memory registry map (what a registry holds afterwards).
pub fn apply_to(map: &mut BTreeMap<RegistryKey, RegistryEntry>, batch: &RegistryBatch) {
    for change in &batch.changes {
        match change {
            RegistryChange::Put { key, entry } => {
                map.insert(key.clone(), entry.clone());
            }
            RegistryChange::Delete { key } => {
                map.remove(key);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::mac::Mac;
    use crate::model::{AllocRequest, IpRange, Owner, PoolSpec};
    use crate::pool_state::PoolState;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn activated(pool: &str, addr: &str, owner: &str) -> AllocationEvent {
        AllocationEvent::new(pool, ip(addr), IpState::Available, IpState::Active)
            .with_owner(Owner::new(owner, "eth0"))
            .with_node("n1")
            .with_mac(Mac([2, 0, 0, 0, 0, 1]))
    }

    fn released(pool: &str, addr: &str, owner: &str, to: IpState) -> AllocationEvent {
        AllocationEvent::new(pool, ip(addr), IpState::Active, to)
            .with_owner(Owner::new(owner, "eth0"))
            .with_node("n1")
    }

    fn at(revision: u64, e: AllocationEvent) -> RevisionedEvent {
        RevisionedEvent::new(revision, e)
    }

    #[test]
    fn an_activation_is_a_put_and_anything_else_a_delete() {
        let put = entry_after(&activated("g", "10.0.0.1", "c1")).unwrap();
        assert_eq!(
            put,
            RegistryEntry::active("c1", "eth0")
                .with_node(Some("n1".into()))
                .with_mac(Some(Mac([2, 0, 0, 0, 0, 1])))
        );
        // Released to Available or back to Reserved for its identity: no entry either way.
        for to in [IpState::Available, IpState::Reserved] {
            assert_eq!(entry_after(&released("g", "10.0.0.1", "c1", to)), None);
        }
        // Operator moves carry no owner.
        let reserve =
            AllocationEvent::new("g", ip("10.0.0.9"), IpState::Available, IpState::Reserved);
        assert_eq!(entry_after(&reserve), None);
        let claimed = activated("g", "10.0.0.2", "c2").with_identity("ns/db-0");
        assert_eq!(
            entry_after(&claimed).unwrap().identity.as_deref(),
            Some("ns/db-0")
        );
    }

    #[test]
    fn one_commit_is_one_batch_with_the_last_word_per_address() {
        // Released and taken again in one commit: the new owner wins; keys in order.
        let batch = batch_for(
            9,
            &[
                released("g", "10.0.0.2", "old", IpState::Available),
                activated("g", "10.0.0.2", "new"),
                released("g", "10.0.0.1", "c1", IpState::Available),
            ],
        );
        assert_eq!(batch.revision, 9);
        assert_eq!(batch.counts(), (1, 1));
        assert_eq!(
            batch.changes[0],
            RegistryChange::Delete {
                key: RegistryKey::new("g", ip("10.0.0.1"))
            }
        );
        assert!(
            matches!(&batch.changes[1], RegistryChange::Put { key, entry }
                if key.to_string() == "g/10.0.0.2" && entry.instance == "new")
        );
    }

    #[test]
    fn the_grouper_hands_out_whole_commits_in_order_and_refuses_repeats() {
        let mut g = CommitGrouper::new(4);
        // A repeat of the applied revision is refused.
        let err = g.push(at(4, activated("g", "10.0.0.1", "a"))).unwrap_err();
        assert!(matches!(
            err,
            super::super::SyncError::OutOfOrder {
                revision: 4,
                applied: 4
            }
        ));
        assert_eq!(
            g.push(at(5, activated("g", "10.0.0.1", "a"))).unwrap(),
            None
        );
        assert_eq!(
            g.push(at(5, activated("g", "10.0.0.2", "b"))).unwrap(),
            None
        );
        let five = g
            .push(at(7, activated("g", "10.0.0.3", "c")))
            .unwrap()
            .unwrap();
        assert_eq!((five.revision, five.counts()), (5, (2, 0)));
        let seven = g.finish().unwrap();
        assert_eq!((seven.revision, seven.counts()), (7, (1, 0)));
        assert_eq!(g.finish(), None);
        assert!(g.push(at(6, activated("g", "10.0.0.4", "d"))).is_err());
    }

    #[test]
    fn a_snapshot_maps_to_its_active_addresses_and_a_replace_to_the_difference() {
        let spec = PoolSpec::new("g")
            .with_range(IpRange::new("10.0.0.0/29".parse().unwrap()))
            .with_claim_keep_secs(60);
        let mut state = PoolState::new(spec).unwrap();
        let mut events = Vec::new();
        for (c, id) in [("a", None), ("b", Some("ns/db-0")), ("c", None)] {
            let mut req = AllocRequest::new(Owner::new(c, "eth0")).with_node("n2");
            if let Some(id) = id {
                req = req.with_identity(id);
            }
            events.extend(state.allocate(&req, 0).unwrap().1);
        }
        // b keeps its address Reserved for its identity: no entry.
        events.extend(state.release(&Owner::new("b", "eth0"), 1));
        let snapshot = StoreSnapshot::new(12, vec![state.clone()]);
        let desired = desired_entries(&snapshot);
        assert_eq!(
            desired.keys().map(ToString::to_string).collect::<Vec<_>>(),
            ["g/10.0.0.1", "g/10.0.0.3"]
        );
        // The events, applied in order, give exactly what the snapshot gives.
        let mut replayed = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            apply_to(&mut replayed, &batch_for(i as u64 + 1, [e]));
        }
        assert_eq!(replayed, desired);
        assert_eq!(
            desired[&RegistryKey::new("g", ip("10.0.0.1"))].mac,
            Some(state.mac_of(ip("10.0.0.1")))
        );

        // A registry holding a stale entry, a wrong one and a right one.
        let mut held = BTreeMap::new();
        held.insert(
            RegistryKey::new("g", ip("10.0.0.7")),
            RegistryEntry::active("gone", "eth0"),
        );
        held.insert(
            RegistryKey::new("g", ip("10.0.0.1")),
            RegistryEntry::active("wrong", "eth0"),
        );
        let right = RegistryKey::new("g", ip("10.0.0.3"));
        held.insert(right.clone(), desired[&right].clone());
        let batch = replace_batch(12, &held, &desired);
        assert_eq!(batch.revision, 12);
        assert_eq!(
            batch
                .changes
                .iter()
                .map(|c| c.key().to_string())
                .collect::<Vec<_>>(),
            ["g/10.0.0.1", "g/10.0.0.7"]
        );
        apply_to(&mut held, &batch);
        assert_eq!(held, desired);
    }
}
