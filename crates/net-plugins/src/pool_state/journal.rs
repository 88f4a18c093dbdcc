//! Recording what a change did to a pool, so a store that reports changes (the memory store's
//! watch) diffs only the addresses a change touched instead of copying the whole pool first.
//!
//! Every change of a stored address goes through [`PoolState::put_entry`] or
//! [`PoolState::remove_entry`], which keep the address's first before-image while a recording
//! runs ([`PoolState::start_journal`] … [`PoolState::take_journal`]).

use std::net::IpAddr;

use super::{Entry, PoolState};
use crate::model::AllocationEvent;

/// What a recorded change touched ([`PoolState::take_journal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Each address the change touched, with its entry before (`None`: it was Available), in
    /// the order first touched.
    Touched(Vec<(IpAddr, Option<Entry>)>),
    /// The whole state before (a change of spec, which can change what every event says).
    Whole(Box<PoolState>),
}

impl Changes {
    /// The allocation events between the state recorded from and `now`, as
    /// [`diff`](super::diff)`(pool, before, now)` gives them.
    pub fn events(&self, now: &PoolState) -> Vec<AllocationEvent> {
        let pool = now.name();
        match self {
            Changes::Whole(before) => super::diff(pool, Some(before), Some(now)),
            Changes::Touched(touched) => {
                let mut touched: Vec<&(IpAddr, Option<Entry>)> = touched.iter().collect();
                touched.sort_by_key(|(ip, _)| *ip);
                let mut out = Vec::new();
                for (ip, before) in touched {
                    // The spec did not change, so `now` answers for the before side too.
                    super::diff::address_events(
                        pool,
                        *ip,
                        (before.as_ref(), now),
                        (now.entries.get(ip), now),
                        &mut out,
                    );
                }
                out
            }
        }
    }
}

/// The recording in a [`PoolState`]. Not part of the state: copies start without one and it
/// never makes two states unequal.
#[derive(Debug, Default)]
pub(super) struct Journal(pub(super) Option<Changes>);

impl Clone for Journal {
    fn clone(&self) -> Journal {
        Journal(None)
    }
}

impl PartialEq for Journal {
    fn eq(&self, _: &Journal) -> bool {
        true
    }
}

impl Eq for Journal {}

impl PoolState {
    /// Starts recording which addresses change (a recording already running starts over).
    pub fn start_journal(&mut self) {
        self.journal = Journal(Some(Changes::Touched(Vec::new())));
    }

    /// Stops recording and returns what changed since [`PoolState::start_journal`] (`None`
    /// when nothing was recording).
    pub fn take_journal(&mut self) -> Option<Changes> {
        self.journal.0.take()
    }

    /// Stores `entry` for `ip`.
    pub(super) fn put_entry(&mut self, ip: IpAddr, entry: Entry) {
        self.touch(ip);
        self.entries.insert(ip, entry);
    }

    /// Makes `ip` Available (no entry).
    pub(super) fn remove_entry(&mut self, ip: IpAddr) {
        self.touch(ip);
        self.entries.remove(&ip);
    }

    fn touch(&mut self, ip: IpAddr) {
        if let Journal(Some(Changes::Touched(touched))) = &mut self.journal
            && touched.iter().all(|(at, _)| *at != ip)
        {
            touched.push((ip, self.entries.get(&ip).cloned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IpRange;
    use crate::model::{AllocRequest, Owner, PoolSpec};

    fn pool() -> PoolState {
        let spec = PoolSpec::new("p")
            .with_range(IpRange::new("10.0.0.0/28".parse().unwrap()))
            .with_claim_keep_secs(60);
        PoolState::new(spec).unwrap()
    }

    type Step<'a> = Box<dyn Fn(&mut PoolState) + 'a>;

    /// Whatever a sequence of changes does, the recorded events are the full diff's.
    #[test]
    fn recorded_events_equal_the_full_diff() {
        let mut s = pool();
        let owner = |i: usize| Owner::new(format!("c{i}"), "eth0");
        let steps: Vec<Step<'_>> = vec![
            Box::new(|s| {
                for i in 0..4 {
                    let r = AllocRequest::new(owner(i)).with_identity(format!("id-{i}"));
                    s.allocate(&r, 1_000).unwrap();
                }
            }),
            Box::new(|s| {
                s.release(&owner(1), 2_000);
                s.release(&owner(2), 2_000);
            }),
            // The claim of id-1 is taken again by a new owner; id-2's lapses and its address
            // goes to someone else.
            Box::new(|s| {
                let r = AllocRequest::new(owner(5)).with_identity("id-1".to_owned());
                s.allocate(&r, 3_000).unwrap();
                s.drop_claim("id-2");
                s.allocate(&AllocRequest::new(owner(6)), 3_000).unwrap();
            }),
            Box::new(|s| {
                let spec = s
                    .spec()
                    .clone()
                    .with_exclude("10.0.0.14/32".parse().unwrap());
                s.release(&owner(0), 4_000);
                s.set_spec(spec).unwrap();
                s.allocate(&AllocRequest::new(owner(7)), 4_000).unwrap();
            }),
        ];
        for (i, step) in steps.iter().enumerate() {
            let before = s.clone();
            s.start_journal();
            step(&mut s);
            let changes = s.take_journal().unwrap();
            let events = changes.events(&s);
            assert!(!events.is_empty(), "step {i} changed something");
            assert_eq!(
                events,
                super::super::diff("p", Some(&before), Some(&s)),
                "step {i}"
            );
        }
        assert_eq!(s.take_journal(), None, "nothing records after take");
    }

    #[test]
    fn a_copy_does_not_record_and_recording_never_makes_states_unequal() {
        let mut s = pool();
        let plain = s.clone();
        s.start_journal();
        assert_eq!(s, plain);
        let mut copy = s.clone();
        copy.allocate(&AllocRequest::new(Owner::new("c", "eth0")), 1)
            .unwrap();
        assert_eq!(copy.take_journal(), None);
        assert_eq!(s.take_journal(), Some(Changes::Touched(Vec::new())));
    }
}
