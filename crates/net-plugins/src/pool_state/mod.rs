//! The state of one pool and the pure allocation logic over it (no I/O).
//!
//! Only addresses that are not Available are stored, so a /8 or an IPv6 /64 costs nothing until
//! used, and each operation costs O(log n) in the number of stored addresses (a search for a
//! free address walks only past taken addresses, never over the whole range). Every operation
//! checks everything first and changes the state only when it succeeds, so a failed operation
//! leaves the state untouched.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{PoolError, TransferError};
use crate::mac::Mac;
use crate::model::{Allocation, AllocationEvent, IpState, Owner, PoolSpec};

mod admin;
mod allocate;
mod claims;
mod consistency;
mod diff;
mod journal;
mod layout;
mod overlap;
mod usage;

pub use diff::diff;
pub use journal::Changes;
use journal::Journal;
use layout::{Layout, num};

/// One stored (not Available) address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Entry {
    /// Active, Reserved or Disabled.
    #[serde(rename = "s")]
    pub state: IpState,
    /// The owner, when Active.
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// The identity whose claim holds it.
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The owner's node.
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The MAC the runtime reported.
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// When it entered this state (milliseconds since the Unix epoch).
    #[serde(rename = "t")]
    pub since_ms: u64,
}

/// A claim: an identity's fixed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Claim {
    /// The address.
    pub ip: IpAddr,
    /// When its owner released it (`None`: bound to an active owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_ms: Option<u64>,
}

/// Per-address results of a bulk transfer, and the changes it made.
pub type TransferOutcome = (
    Vec<(IpAddr, Result<(), TransferError>)>,
    Vec<AllocationEvent>,
);

/// The stored state of one pool: its spec, the addresses that are not Available, the owner
/// index and the claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolState {
    spec: PoolSpec,
    entries: BTreeMap<IpAddr, Entry>,
    owners: BTreeMap<Owner, IpAddr>,
    claims: BTreeMap<String, Claim>,
    cursor: Option<IpAddr>,
    layout: Layout,
    journal: Journal,
}

#[derive(Serialize)]
struct StoredRef<'a> {
    spec: &'a PoolSpec,
    entries: &'a BTreeMap<IpAddr, Entry>,
    claims: &'a BTreeMap<String, Claim>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<IpAddr>,
}

#[derive(Deserialize)]
struct Stored {
    spec: PoolSpec,
    #[serde(default)]
    entries: BTreeMap<IpAddr, Entry>,
    #[serde(default)]
    claims: BTreeMap<String, Claim>,
    #[serde(default)]
    cursor: Option<IpAddr>,
}

impl Serialize for PoolState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        StoredRef {
            spec: &self.spec,
            entries: &self.entries,
            claims: &self.claims,
            cursor: self.cursor,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for PoolState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let stored = Stored::deserialize(d)?;
        PoolState::from_parts(stored.spec, stored.entries, stored.claims, stored.cursor)
            .map_err(serde::de::Error::custom)
    }
}

fn holder(e: &Entry) -> String {
    match (&e.owner, &e.identity) {
        (Some(o), _) => format!(" by {o}"),
        (None, Some(i)) => format!(" for identity `{i}`"),
        (None, None) => String::new(),
    }
}

impl PoolState {
    /// An empty pool; fails when the spec is invalid.
    pub fn new(spec: PoolSpec) -> Result<PoolState, PoolError> {
        let invalid = |reason: String| PoolError::InvalidSpec {
            pool: spec.name.clone(),
            reason,
        };
        if spec.name.is_empty()
            || !spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            || spec.name.starts_with('.')
        {
            return Err(invalid(
                "the name must be non-empty letters, digits, `.`, `_` or `-` (not starting with `.`)"
                    .into(),
            ));
        }
        let layout = Layout::compile(&spec).map_err(invalid)?;
        Ok(PoolState {
            spec,
            entries: BTreeMap::new(),
            owners: BTreeMap::new(),
            claims: BTreeMap::new(),
            cursor: None,
            layout,
            journal: Journal::default(),
        })
    }

    /// The spec.
    pub fn spec(&self) -> &PoolSpec {
        &self.spec
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// A pool from its stored parts (what [`PoolState`]'s serialized form holds), rebuilding
    /// the owner index. Stores that keep entries apart (the file store's per-address index)
    /// build whole pools, or views of a few addresses, with it. Fails when the spec is invalid
    /// or an entry is inconsistent (an owner on an address that is not Active, an Active
    /// address without an owner, an owner on two addresses).
    pub fn from_parts(
        spec: PoolSpec,
        entries: BTreeMap<IpAddr, Entry>,
        claims: BTreeMap<String, Claim>,
        cursor: Option<IpAddr>,
    ) -> Result<PoolState, String> {
        let mut state = PoolState::new(spec).map_err(|e| e.to_string())?;
        for (ip, e) in &entries {
            if let Some(o) = &e.owner {
                if e.state != IpState::Active {
                    return Err(format!("{ip} has an owner but is {}", e.state));
                }
                if state.owners.insert(o.clone(), *ip).is_some() {
                    return Err(format!("owner {o} holds more than one address"));
                }
            } else if e.state == IpState::Active {
                return Err(format!("{ip} is active without an owner"));
            }
        }
        state.entries = entries;
        state.claims = claims;
        state.cursor = cursor;
        Ok(state)
    }

    /// The last address handed out automatically: the next automatic allocation starts after
    /// it (round robin).
    pub fn cursor(&self) -> Option<IpAddr> {
        self.cursor
    }

    /// Replaces the spec, keeping allocations (addresses no longer in the pool stay with their
    /// owners until released). Returns whether anything changed.
    pub fn set_spec(&mut self, spec: PoolSpec) -> Result<bool, PoolError> {
        if spec == self.spec {
            return Ok(false);
        }
        let fresh = PoolState::new(spec)?;
        if let Journal(Some(Changes::Touched(_))) = &self.journal {
            // A new spec can change what every event says (its MACs): keep all of the before.
            let mut before = self.clone();
            if let Journal(Some(Changes::Touched(touched))) = &self.journal {
                for (ip, entry) in touched {
                    match entry {
                        Some(e) => before.entries.insert(*ip, e.clone()),
                        None => before.entries.remove(ip),
                    };
                }
            }
            self.journal = Journal(Some(Changes::Whole(Box::new(before))));
        }
        self.spec = fresh.spec;
        self.layout = fresh.layout;
        Ok(true)
    }

    /// The stored (not Available) addresses.
    pub fn entries(&self) -> &BTreeMap<IpAddr, Entry> {
        &self.entries
    }

    /// The claims by identity.
    pub fn claims(&self) -> &BTreeMap<String, Claim> {
        &self.claims
    }

    /// The state of `ip` (Available for any free address of the pool; `None` when not in it).
    pub fn state_of(&self, ip: IpAddr) -> Option<IpState> {
        if let Some(e) = self.entries.get(&ip) {
            return Some(e.state);
        }
        let a = num(ip);
        (self.layout.slot_of(a).is_some()
            && self.layout.excluded_until(a).is_none()
            && !self.layout.is_gateway(ip))
        .then_some(IpState::Available)
    }

    /// The address `owner` holds.
    pub fn lookup(&self, owner: &Owner) -> Option<Allocation> {
        let ip = *self.owners.get(owner)?;
        let e = self.entries.get(&ip)?;
        Some(self.allocation(ip, owner.clone(), e.identity.clone()))
    }

    /// Every active owner with its address.
    pub fn owners(&self) -> impl Iterator<Item = (&Owner, IpAddr)> {
        self.entries
            .iter()
            .filter_map(|(ip, e)| e.owner.as_ref().map(|o| (o, *ip)))
    }

    /// The MAC of `ip`: assigned in the spec, else generated.
    pub fn mac_of(&self, ip: IpAddr) -> Mac {
        self.spec
            .macs
            .get(&ip)
            .copied()
            .unwrap_or_else(|| Mac::generated(&self.spec.name, ip))
    }

    fn allocation(&self, ip: IpAddr, owner: Owner, identity: Option<String>) -> Allocation {
        let a = num(ip);
        let slot = self.layout.slot_of(a).map(|i| &self.layout.slots[i]);
        let prefix = slot.map_or(if a.v6 { 128 } else { 32 }, |s| s.prefix);
        Allocation {
            pool: self.spec.name.clone(),
            // The prefix comes from a slot of the same family, so it is in bounds.
            address: IpNet::new(ip, prefix).unwrap_or_else(|_| IpNet::from(ip)),
            gateway: slot.and_then(|s| s.gateway),
            mac: self.mac_of(ip),
            vlan: self.spec.vlan,
            routes: self.spec.routes.clone(),
            dns: self.spec.dns.clone(),
            owner,
            identity,
        }
    }

    fn out_of_range(&self, ip: IpAddr, why: &str) -> PoolError {
        PoolError::OutOfRange {
            pool: self.spec.name.clone(),
            ip,
            ranges: self.layout.describe(),
            why: why.to_owned(),
        }
    }

    fn check_in_pool(&self, ip: IpAddr) -> Result<(), PoolError> {
        let a = num(ip);
        if self.layout.slot_of(a).is_none() {
            return Err(self.out_of_range(ip, ""));
        }
        if self.layout.excluded_until(a).is_some() {
            return Err(self.out_of_range(ip, ": it is excluded"));
        }
        if self.layout.is_gateway(ip) {
            return Err(self.out_of_range(ip, ": it is a gateway"));
        }
        Ok(())
    }
}
