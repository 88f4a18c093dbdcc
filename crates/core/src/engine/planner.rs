//! The pure reconcile decisions every engine makes the same way: which instances of an
//! application to create and which to remove (and in which order), in which order pending
//! instances start, and the counts of a revision group.
//!
//! Nothing here does I/O or reads a clock: an engine describes its instances as [`Member`]s,
//! its desired state as [`Desired`], and applies the [`Plan`] it gets back (naming new
//! stateless instances its own way). `LocalEngine` and `MemoryEngine` both call it, and so
//! should other engines, so that every engine starts, stops and counts alike:
//!
//! - **Stateful** identities `name-0 … name-(n-1)` are created when missing; identities at or
//!   above the count are removed, listed highest ordinal first (LocalEngine sends every surplus
//!   identity its stop signal in that order without waiting for each to end, unlike a
//!   StatefulSet's `OrderedReady` scale-down). A pending identity starts only once
//!   every lower ordinal is ready ([`start_blocker`]), as a StatefulSet with `OrderedReady`.
//! - **Stateless** groups get instances created up to their replica count; a surplus is
//!   removed pending first, then not ready, then newest ([`stateless_surplus`]), as a
//!   ReplicaSet does. Instances of revisions with no group are removed.
//! - **Counts** ([`group_status`]): `current` counts active instances, `ready` and `available`
//!   the ready ones.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::time::SystemTime;
//! use rorqual_core::engine::planner::{self, Desired, Member};
//! use rorqual_core::model::Revision;
//!
//! let v1 = Revision::from("v1");
//! let identities: BTreeMap<u32, Revision> = (0..2).map(|o| (o, v1.clone())).collect();
//! let existing = [Member::new("game-2", &v1, SystemTime::UNIX_EPOCH).ordinal(2)];
//! let plan = planner::plan("game", &Desired::Stateful(&identities), &existing);
//! assert_eq!(plan.create.len(), 2);
//! assert_eq!(plan.remove, ["game-2"]);
//! ```

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::SystemTime;

use super::GroupStatus;
use crate::model::{AppKey, Revision};

/// What the planner needs to know about one existing instance of an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Member<'a> {
    /// The instance id.
    pub id: &'a str,
    /// The revision it runs (or is being started at).
    pub revision: &'a Revision,
    /// Its stateful ordinal (`None` for stateless instances).
    pub ordinal: Option<u32>,
    /// Counted for its group: neither being stopped nor stopped.
    pub active: bool,
    /// Placed on a node (not pending).
    pub placed: bool,
    /// Passes readiness.
    pub ready: bool,
    /// When it was created (newer instances are removed first).
    pub created: SystemTime,
}

impl<'a> Member<'a> {
    /// An active, pending, not ready, stateless instance.
    pub fn new(id: &'a str, revision: &'a Revision, created: SystemTime) -> Self {
        Member {
            id,
            revision,
            ordinal: None,
            active: true,
            placed: false,
            ready: false,
            created,
        }
    }

    /// Sets the stateful ordinal.
    #[must_use]
    pub fn ordinal(mut self, ordinal: u32) -> Self {
        self.ordinal = Some(ordinal);
        self
    }

    /// Sets whether it is active (not being stopped, not stopped).
    #[must_use]
    pub fn active(mut self, active: bool) -> Self {
        self.active = active;
        self
    }

    /// Sets whether it is placed on a node.
    #[must_use]
    pub fn placed(mut self, placed: bool) -> Self {
        self.placed = placed;
        self
    }

    /// Sets whether it passes readiness (only an active, placed instance counts as ready).
    #[must_use]
    pub fn ready(mut self, ready: bool) -> Self {
        self.ready = ready;
        self
    }

    /// Ready and counted: active, placed and passing readiness.
    pub fn is_ready(&self) -> bool {
        self.ready && self.active && self.placed
    }
}

/// The desired state of one application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Desired<'a> {
    /// Stateless: the replica count of each revision group.
    Stateless(&'a BTreeMap<Revision, u32>),
    /// Stateful: the revision of each identity, by ordinal.
    Stateful(&'a BTreeMap<u32, Revision>),
}

impl Desired<'_> {
    /// How many instances of `revision` are wanted.
    pub fn replicas(&self, revision: &Revision) -> u32 {
        match self {
            Desired::Stateless(groups) => groups.get(revision).copied().unwrap_or(0),
            Desired::Stateful(identities) => {
                let n = identities.values().filter(|r| *r == revision).count();
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }
}

/// One instance to create.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewInstance {
    /// Its revision.
    pub revision: Revision,
    /// Its ordinal (stateful identities; its id is [`identity_id`]); `None`: a stateless
    /// instance the engine names.
    pub ordinal: Option<u32>,
}

/// What reconciling one application decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Plan {
    /// Instances to create: stateful identities in ordinal order, stateless ones by revision.
    pub create: Vec<NewInstance>,
    /// Ids of active instances to remove, in the order to remove them (stateful: highest
    /// ordinal first).
    pub remove: Vec<String>,
}

/// The id of stateful identity `ordinal` of application `app` (`game-0`).
pub fn identity_id(app: &str, ordinal: u32) -> String {
    format!("{app}-{ordinal}")
}

/// Compares an application's desired state with its instances (`members`: every instance of
/// the application, active or not).
pub fn plan(app: &str, desired: &Desired<'_>, members: &[Member<'_>]) -> Plan {
    let mut plan = Plan::default();
    match desired {
        Desired::Stateful(identities) => {
            for (&ordinal, revision) in identities.iter() {
                let id = identity_id(app, ordinal);
                if !members.iter().any(|m| m.id == id) {
                    plan.create.push(NewInstance {
                        revision: revision.clone(),
                        ordinal: Some(ordinal),
                    });
                }
            }
            let mut surplus: Vec<&Member<'_>> = members
                .iter()
                .filter(|m| m.active)
                .filter(|m| m.ordinal.is_none_or(|o| !identities.contains_key(&o)))
                .collect();
            // Highest ordinals first (a stray instance without one before them all).
            surplus.sort_by_key(|m| (Reverse(m.ordinal.unwrap_or(u32::MAX)), m.id));
            plan.remove = surplus.into_iter().map(|m| m.id.to_owned()).collect();
        }
        Desired::Stateless(groups) => {
            for (revision, &replicas) in groups.iter() {
                let active: Vec<Member<'_>> = members
                    .iter()
                    .copied()
                    .filter(|m| m.active && m.revision == revision)
                    .collect();
                let replicas = replicas as usize;
                if active.len() < replicas {
                    plan.create
                        .extend((active.len()..replicas).map(|_| NewInstance {
                            revision: revision.clone(),
                            ordinal: None,
                        }));
                } else {
                    plan.remove
                        .extend(stateless_surplus(&active, active.len() - replicas));
                }
            }
            plan.remove.extend(
                members
                    .iter()
                    .filter(|m| m.active && !groups.contains_key(m.revision))
                    .map(|m| m.id.to_owned()),
            );
        }
    }
    plan
}

/// Which `count` of `candidates` to remove when a stateless group shrinks: pending first,
/// then not ready, then the newest (ties by the greater id), as a ReplicaSet does.
pub fn stateless_surplus(candidates: &[Member<'_>], count: usize) -> Vec<String> {
    let mut sorted: Vec<&Member<'_>> = candidates.iter().collect();
    sorted.sort_by_key(|m| (m.placed, m.is_ready(), Reverse(m.created), Reverse(m.id)));
    sorted
        .into_iter()
        .take(count)
        .map(|m| m.id.to_owned())
        .collect()
}

/// The order in which to place an application's pending instances: by ordinal, then
/// creation, then id. Only active, pending members are returned.
pub fn start_order<'a>(members: &[Member<'a>]) -> Vec<&'a str> {
    let mut pending: Vec<&Member<'a>> = members.iter().filter(|m| m.active && !m.placed).collect();
    pending.sort_by_key(|m| (m.ordinal, m.created, m.id));
    pending.into_iter().map(|m| m.id).collect()
}

/// Stateful ordered start: the identity that stateful identity `ordinal` waits for (the lowest
/// lower ordinal that is not ready), or `None` when it may start now.
pub fn start_blocker<'a>(members: &[Member<'a>], ordinal: u32) -> Option<&'a str> {
    members
        .iter()
        .filter_map(|m| m.ordinal.filter(|&o| o < ordinal).map(|o| (o, m)))
        .filter(|(_, m)| !m.is_ready())
        .min_by_key(|(o, _)| *o)
        .map(|(_, m)| m.id)
}

/// The counts of the group of `revision`: `desired` from the desired state, `current` the
/// active members at the revision, `ready` and `available` the ready ones.
pub fn group_status(
    key: &AppKey,
    revision: &Revision,
    desired: &Desired<'_>,
    members: &[Member<'_>],
) -> GroupStatus {
    let at_revision = members
        .iter()
        .filter(|m| m.active && m.revision == revision);
    let (current, ready) = at_revision.fold((0u32, 0u32), |(c, r), m| {
        (c + 1, r + u32::from(m.is_ready()))
    });
    let mut status = GroupStatus::new(key.clone(), revision.clone(), desired.replicas(revision));
    status.current = current;
    status.ready = ready;
    status.available = ready;
    status
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn rev(r: &str) -> Revision {
        Revision::from(r)
    }

    /// A member described as `(id, revision, ordinal, state, created)`; state is one of
    /// `pending`, `starting` (placed, not ready), `ready`, `stopping`.
    type Row<'a> = (&'a str, &'a Revision, Option<u32>, &'a str, u64);

    /// A table row: name, desired state, members, what to create, what to remove.
    type Case<'a, D, C> = (&'a str, D, Vec<Row<'a>>, Vec<C>, Vec<&'a str>);

    fn members<'a>(rows: &[Row<'a>]) -> Vec<Member<'a>> {
        rows.iter()
            .map(|&(id, revision, ordinal, state, created)| {
                let mut m = Member::new(id, revision, at(created));
                m.ordinal = ordinal;
                match state {
                    "pending" => m,
                    "starting" => m.placed(true),
                    "ready" => m.placed(true).ready(true),
                    "stopping" => m.placed(true).active(false),
                    other => panic!("unknown state {other}"),
                }
            })
            .collect()
    }

    #[test]
    fn stateful_plans() {
        let v1 = rev("v1");
        let v2 = rev("v2");
        let ids = |n: u32, r: &Revision| -> BTreeMap<u32, Revision> {
            (0..n).map(|o| (o, r.clone())).collect()
        };
        let cases: Vec<Case<'_, BTreeMap<u32, Revision>, u32>> = vec![
            ("from nothing", ids(3, &v1), vec![], vec![0, 1, 2], vec![]),
            (
                "fills a gap",
                ids(3, &v1),
                vec![
                    ("g-0", &v1, Some(0), "ready", 1),
                    ("g-2", &v1, Some(2), "ready", 1),
                ],
                vec![1],
                vec![],
            ),
            (
                "scale down removes highest first",
                ids(2, &v1),
                vec![
                    ("g-0", &v1, Some(0), "ready", 1),
                    ("g-1", &v1, Some(1), "ready", 1),
                    ("g-2", &v1, Some(2), "ready", 1),
                    ("g-3", &v1, Some(3), "pending", 1),
                ],
                vec![],
                vec!["g-3", "g-2"],
            ),
            (
                "a stopping identity is neither recreated nor removed again",
                ids(1, &v2),
                vec![
                    ("g-0", &v1, Some(0), "stopping", 1),
                    ("g-1", &v1, Some(1), "stopping", 1),
                ],
                vec![],
                vec![],
            ),
            (
                "to zero",
                BTreeMap::new(),
                vec![("g-0", &v1, Some(0), "ready", 1)],
                vec![],
                vec!["g-0"],
            ),
        ];
        for (name, identities, rows, create, remove) in cases {
            let p = plan("g", &Desired::Stateful(&identities), &members(&rows));
            let created: Vec<u32> = p.create.iter().filter_map(|c| c.ordinal).collect();
            assert_eq!(created, create, "{name}: create");
            assert_eq!(p.remove, remove, "{name}: remove");
        }
    }

    #[test]
    fn stateless_plans() {
        let v1 = rev("v1");
        let v2 = rev("v2");
        let groups = |g: &[(&Revision, u32)]| -> BTreeMap<Revision, u32> {
            g.iter().map(|(r, n)| ((*r).clone(), *n)).collect()
        };
        let cases: Vec<Case<'_, BTreeMap<Revision, u32>, &str>> = vec![
            (
                "from nothing",
                groups(&[(&v1, 2)]),
                vec![],
                vec!["v1", "v1"],
                vec![],
            ),
            (
                "surplus: pending, then not ready, then newest",
                groups(&[(&v1, 1)]),
                vec![
                    ("old", &v1, None, "ready", 1),
                    ("new", &v1, None, "ready", 5),
                    ("unready", &v1, None, "starting", 0),
                    ("pending", &v1, None, "pending", 0),
                ],
                vec![],
                vec!["pending", "unready", "new"],
            ),
            (
                "stopping instances are not counted",
                groups(&[(&v1, 2)]),
                vec![
                    ("a", &v1, None, "ready", 1),
                    ("b", &v1, None, "stopping", 1),
                ],
                vec!["v1"],
                vec![],
            ),
            (
                "a revision without a group is removed",
                groups(&[(&v2, 1)]),
                vec![("a", &v1, None, "ready", 1), ("b", &v2, None, "ready", 1)],
                vec![],
                vec!["a"],
            ),
            (
                "equal ages: the greater id goes first",
                groups(&[(&v1, 1)]),
                vec![
                    ("web-00001", &v1, None, "ready", 1),
                    ("web-00002", &v1, None, "ready", 1),
                ],
                vec![],
                vec!["web-00002"],
            ),
        ];
        for (name, groups, rows, create, remove) in cases {
            let p = plan("web", &Desired::Stateless(&groups), &members(&rows));
            let created: Vec<&str> = p.create.iter().map(|c| c.revision.as_str()).collect();
            assert_eq!(created, create, "{name}: create");
            assert_eq!(p.remove, remove, "{name}: remove");
        }
    }

    #[test]
    fn ordered_start() {
        let v1 = rev("v1");
        let cases: Vec<(&str, Vec<Row<'_>>, u32, Option<&str>)> = vec![
            (
                "ordinal 0 never waits",
                vec![("g-0", &v1, Some(0), "pending", 0)],
                0,
                None,
            ),
            (
                "waits for the lowest unready",
                vec![
                    ("g-0", &v1, Some(0), "ready", 0),
                    ("g-1", &v1, Some(1), "starting", 0),
                    ("g-2", &v1, Some(2), "pending", 0),
                    ("g-10", &v1, Some(10), "pending", 0),
                ],
                10,
                Some("g-1"),
            ),
            (
                "all lower ready",
                vec![
                    ("g-0", &v1, Some(0), "ready", 0),
                    ("g-1", &v1, Some(1), "pending", 0),
                ],
                1,
                None,
            ),
            (
                "a stopping lower identity blocks",
                vec![
                    ("g-0", &v1, Some(0), "stopping", 0),
                    ("g-1", &v1, Some(1), "pending", 0),
                ],
                1,
                Some("g-0"),
            ),
        ];
        for (name, rows, ordinal, blocker) in cases {
            assert_eq!(start_blocker(&members(&rows), ordinal), blocker, "{name}");
        }
        let rows = [
            ("g-10", &v1, Some(10), "pending", 0),
            ("g-2", &v1, Some(2), "pending", 5),
            ("g-1", &v1, Some(1), "ready", 0),
            ("g-3", &v1, Some(3), "stopping", 0),
        ];
        assert_eq!(start_order(&members(&rows)), ["g-2", "g-10"]);
    }

    #[test]
    fn group_counts() {
        let v1 = rev("v1");
        let v2 = rev("v2");
        let key = AppKey::new("default", "web");
        let groups: BTreeMap<Revision, u32> = [(v1.clone(), 4)].into();
        let rows = [
            ("a", &v1, None, "ready", 0),
            ("b", &v1, None, "starting", 0),
            ("c", &v1, None, "pending", 0),
            ("d", &v1, None, "stopping", 0),
            ("e", &v2, None, "ready", 0),
        ];
        let s = group_status(&key, &v1, &Desired::Stateless(&groups), &members(&rows));
        assert_eq!((s.desired, s.current, s.ready, s.available), (4, 3, 1, 1));
        let identities: BTreeMap<u32, Revision> =
            [(0, v1.clone()), (1, v2.clone()), (2, v1.clone())].into();
        let s = group_status(&key, &v2, &Desired::Stateful(&identities), &members(&rows));
        assert_eq!((s.desired, s.current, s.ready), (1, 1, 1));
    }
}
