//! A view of a few keys of a pool, read from the index, on which the pool's own rules
//! ([`PoolState`]) run: the file store's hot path.
//!
//! The view holds the spec, the cursor, and the addresses, owners and claims read so far
//! (each with what it pulls in: an owner its address, an address the claim of its identity, a
//! claim its address). A key not in the view looks Available (or absent) to the rules, so
//! after the body ran, every key it wrote that the view had not read is read; when one of them
//! exists on disk, the view takes it in and the body runs again. Wrong decisions can only come
//! from keys that look absent, and the body only acts on such a key by writing it, so a body
//! whose writes were all known saw everything its decision depended on (the owner, identity
//! and requested address were read up front).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::index::Index;
use super::record::PoolChange;
use crate::error::StoreError;
use crate::model::{Owner, PoolSpec};
use crate::pool_state::{Claim, Entry, PoolState};
use crate::store::TxnKeys;

/// How many taken addresses after one the body wrongly took are read at once.
const RUN_AHEAD: usize = 1024;

/// The address after `ip` (`None` after the last).
fn successor(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => u32::from(a)
            .checked_add(1)
            .map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        IpAddr::V6(a) => u128::from(a)
            .checked_add(1)
            .map(|n| IpAddr::V6(Ipv6Addr::from(n))),
    }
}

/// The keys of one pool read so far.
#[derive(Debug)]
pub(super) struct View<'a> {
    index: &'a Index,
    pool: &'a str,
    spec: PoolSpec,
    cursor: Option<IpAddr>,
    entries: BTreeMap<IpAddr, Entry>,
    claims: BTreeMap<String, Claim>,
    known_ips: BTreeSet<IpAddr>,
    known_owners: BTreeSet<Owner>,
    known_claims: BTreeSet<String>,
}

impl<'a> View<'a> {
    /// A view with `keys` read.
    pub(super) fn read(
        index: &'a Index,
        pool: &'a str,
        spec: PoolSpec,
        cursor: Option<IpAddr>,
        keys: &TxnKeys,
    ) -> Result<View<'a>, StoreError> {
        let mut view = View {
            index,
            pool,
            spec,
            cursor,
            entries: BTreeMap::new(),
            claims: BTreeMap::new(),
            known_ips: BTreeSet::new(),
            known_owners: BTreeSet::new(),
            known_claims: BTreeSet::new(),
        };
        if let Some(o) = &keys.owner {
            view.read_owner(o)?;
        }
        if let Some(id) = &keys.identity {
            view.read_claim(id)?;
        }
        if let Some(ip) = keys.ip {
            view.read_ip(ip)?;
        }
        Ok(view)
    }

    /// Reads `ip` unless known; whether it exists.
    fn read_ip(&mut self, ip: IpAddr) -> Result<bool, StoreError> {
        if !self.known_ips.insert(ip) {
            return Ok(false);
        }
        let Some(e) = self.index.read_entry(self.pool, ip)? else {
            return Ok(false);
        };
        if let Some(o) = &e.owner {
            self.known_owners.insert(o.clone());
        }
        let identity = e.identity.clone();
        self.entries.insert(ip, e);
        if let Some(id) = identity {
            self.read_claim(&id)?;
        }
        Ok(true)
    }

    /// Reads what `owner` holds unless known; whether it holds something.
    fn read_owner(&mut self, owner: &Owner) -> Result<bool, StoreError> {
        if !self.known_owners.insert(owner.clone()) {
            return Ok(false);
        }
        let Some(ip) = self.index.read_owner(self.pool, owner)? else {
            return Ok(false);
        };
        self.read_ip(ip)?;
        let holds = self
            .entries
            .get(&ip)
            .is_some_and(|e| e.owner.as_ref() == Some(owner));
        if !holds {
            return Err(self.index.corrupt(
                self.pool,
                format!("owner {owner} is indexed at {ip}, whose entry is not its"),
            ));
        }
        Ok(true)
    }

    /// Reads `identity`'s claim unless known; whether it exists.
    fn read_claim(&mut self, identity: &str) -> Result<bool, StoreError> {
        if !self.known_claims.insert(identity.to_owned()) {
            return Ok(false);
        }
        let Some(c) = self.index.read_claim(self.pool, identity)? else {
            return Ok(false);
        };
        let ip = c.ip;
        self.claims.insert(identity.to_owned(), c);
        self.read_ip(ip)?;
        Ok(true)
    }

    /// Reads the addresses after `ip` up to the first free one (at most [`RUN_AHEAD`]).
    fn read_run_after(&mut self, ip: IpAddr) -> Result<(), StoreError> {
        let mut next = ip;
        for _ in 0..RUN_AHEAD {
            let Some(n) = successor(next) else {
                return Ok(());
            };
            next = n;
            if self.known_ips.contains(&next) {
                continue;
            }
            if !self.read_ip(next)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The view as a pool state for the rules to run on.
    pub(super) fn state(&self) -> Result<PoolState, StoreError> {
        PoolState::from_parts(
            self.spec.clone(),
            self.entries.clone(),
            self.claims.clone(),
            self.cursor,
        )
        .map_err(|reason| self.index.corrupt(self.pool, reason))
    }

    /// Reads every key `change` writes that the view had not read; whether one of them exists
    /// (then the view has grown and the body must run again).
    pub(super) fn read_written(&mut self, change: &PoolChange) -> Result<bool, StoreError> {
        let mut grew = false;
        for ip in change.entries.keys() {
            if self.read_ip(*ip)? {
                grew = true;
                // The body took an address another commit holds: it walks on from there, so
                // read the run of taken addresses after it now rather than one per round.
                self.read_run_after(*ip)?;
            }
        }
        for (owner, _) in &change.owners {
            grew |= self.read_owner(owner)?;
        }
        for identity in change.claims.keys() {
            grew |= self.read_claim(identity)?;
        }
        Ok(grew)
    }
}
