//! The state of one pool and the pure allocation logic over it (no I/O).
//!
//! Only addresses that are not Available are stored, so a /8 or an IPv6 /64 costs nothing until
//! used, and each operation costs O(log n) in the number of stored addresses (a search for a
//! free address walks only past taken addresses, never over the whole range). Every operation
//! checks everything first and changes the state only when it succeeds, so a failed operation
//! leaves the state untouched.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{PoolError, TransferError};
use crate::mac::Mac;
use crate::model::{
    AllocRequest, Allocation, AllocationEvent, IpState, Owner, PoolSpec, TransferTarget, Usage,
};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Num {
    v6: bool,
    n: u128,
}

fn num(ip: IpAddr) -> Num {
    match ip {
        IpAddr::V4(a) => Num {
            v6: false,
            n: u128::from(u32::from(a)),
        },
        IpAddr::V6(a) => Num {
            v6: true,
            n: u128::from(a),
        },
    }
}

fn addr(v6: bool, n: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(n))
    } else {
        // IPv4 slots hold values below 2^32 by construction.
        IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX)))
    }
}

/// Per-address results of a bulk transfer, and the changes it made.
pub type TransferOutcome = (
    Vec<(IpAddr, Result<(), TransferError>)>,
    Vec<AllocationEvent>,
);

/// A contiguous run of addresses the pool hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    v6: bool,
    lo: u128,
    hi: u128,
    prefix: u8,
    gateway: Option<IpAddr>,
}

/// The spec compiled for allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Layout {
    slots: Vec<Slot>,
    /// Disjoint, sorted excluded intervals `(v6, lo, hi)`.
    excluded: Vec<(bool, u128, u128)>,
    gateways: Vec<IpAddr>,
}

impl Layout {
    fn compile(spec: &PoolSpec) -> Result<Layout, String> {
        let mut slots = Vec::new();
        for (i, r) in spec.ranges.iter().enumerate() {
            let net = r.subnet.trunc();
            let v6 = matches!(net, IpNet::V6(_));
            let first = num(net.network()).n;
            let last = num(net.broadcast()).n;
            let prefix = net.prefix_len();
            let (dlo, dhi) = match (v6, prefix) {
                (false, 32) | (true, 128) => (first, last),
                (false, 31) | (true, 127) => (first, last),
                (false, _) => (first + 1, last - 1),
                (true, _) => (first + 1, last),
            };
            let mut lo = dlo;
            let mut hi = dhi;
            if let Some(s) = r.range_start {
                if !net.contains(&s) {
                    return Err(format!(
                        "range {i}: rangeStart {s} is outside subnet {}",
                        r.subnet
                    ));
                }
                lo = num(s).n;
            }
            if let Some(e) = r.range_end {
                if !net.contains(&e) {
                    return Err(format!(
                        "range {i}: rangeEnd {e} is outside subnet {}",
                        r.subnet
                    ));
                }
                hi = num(e).n;
            }
            if lo > hi {
                return Err(format!(
                    "range {i}: rangeStart {} is after rangeEnd {}",
                    addr(v6, lo),
                    addr(v6, hi)
                ));
            }
            let gateway = r.gateway.or(spec.gateway.filter(|g| net.contains(g)));
            if let Some(g) = r.gateway
                && !net.contains(&g)
            {
                return Err(format!(
                    "range {i}: gateway {g} is outside subnet {}",
                    r.subnet
                ));
            }
            slots.push(Slot {
                v6,
                lo,
                hi,
                prefix,
                gateway,
            });
        }
        for ip in &spec.ips {
            let a = num(ip.addr());
            slots.push(Slot {
                v6: a.v6,
                lo: a.n,
                hi: a.n,
                prefix: ip.prefix_len(),
                gateway: spec.gateway.filter(|g| ip.contains(g) && *g != ip.addr()),
            });
        }
        if slots.is_empty() {
            return Err("it has no ranges and no addresses".into());
        }
        for (i, a) in slots.iter().enumerate() {
            for b in &slots[i + 1..] {
                if a.v6 == b.v6 && a.lo <= b.hi && b.lo <= a.hi {
                    return Err(format!(
                        "{}-{} overlaps {}-{}",
                        addr(a.v6, a.lo),
                        addr(a.v6, a.hi),
                        addr(b.v6, b.lo),
                        addr(b.v6, b.hi)
                    ));
                }
            }
        }
        let mut excluded: Vec<(bool, u128, u128)> = spec
            .exclude
            .iter()
            .map(|n| {
                let n = n.trunc();
                (
                    matches!(n, IpNet::V6(_)),
                    num(n.network()).n,
                    num(n.broadcast()).n,
                )
            })
            .collect();
        excluded.sort_unstable();
        let mut merged: Vec<(bool, u128, u128)> = Vec::with_capacity(excluded.len());
        for e in excluded {
            match merged.last_mut() {
                Some(last) if last.0 == e.0 && e.1 <= last.2.saturating_add(1) => {
                    last.2 = last.2.max(e.2);
                }
                _ => merged.push(e),
            }
        }
        for ip in spec.macs.keys() {
            if !slots
                .iter()
                .any(|s| s.v6 == num(*ip).v6 && (s.lo..=s.hi).contains(&num(*ip).n))
            {
                return Err(format!(
                    "a MAC is assigned to {ip}, which is not in the pool"
                ));
            }
        }
        let mut gateways: Vec<IpAddr> = slots.iter().filter_map(|s| s.gateway).collect();
        gateways.sort_unstable();
        gateways.dedup();
        Ok(Layout {
            slots,
            excluded: merged,
            gateways,
        })
    }

    fn slot_of(&self, a: Num) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.v6 == a.v6 && s.lo <= a.n && a.n <= s.hi)
    }

    /// The end of the exclusion covering `a`, if any.
    fn excluded_until(&self, a: Num) -> Option<u128> {
        let idx = self.excluded.partition_point(|e| (e.0, e.1) <= (a.v6, a.n));
        let e = self.excluded.get(idx.checked_sub(1)?)?;
        (e.0 == a.v6 && e.1 <= a.n && a.n <= e.2).then_some(e.2)
    }

    fn is_gateway(&self, ip: IpAddr) -> bool {
        self.gateways.binary_search(&ip).is_ok()
    }

    fn describe(&self) -> String {
        let parts: Vec<String> = self
            .slots
            .iter()
            .map(|s| {
                if s.lo == s.hi {
                    format!("{}", addr(s.v6, s.lo))
                } else {
                    format!("{}-{}", addr(s.v6, s.lo), addr(s.v6, s.hi))
                }
            })
            .collect();
        let mut out = parts.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
        if parts.len() > 8 {
            out.push_str(&format!(" and {} more", parts.len() - 8));
        }
        out
    }

    /// Handed-out addresses in total: slot sizes minus exclusions and gateways inside them.
    fn total(&self) -> u128 {
        let mut total: u128 = 0;
        for s in &self.slots {
            let mut size = (s.hi - s.lo).saturating_add(1);
            for &(v6, lo, hi) in &self.excluded {
                if v6 == s.v6 && lo <= s.hi && s.lo <= hi {
                    size -= (hi.min(s.hi) - lo.max(s.lo)).saturating_add(1);
                }
            }
            total = total.saturating_add(size);
        }
        for g in &self.gateways {
            let a = num(*g);
            if self.slot_of(a).is_some() && self.excluded_until(a).is_none() {
                total = total.saturating_sub(1);
            }
        }
        total
    }
}

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
        let mut state = PoolState::new(stored.spec).map_err(serde::de::Error::custom)?;
        for (ip, e) in &stored.entries {
            if let Some(o) = &e.owner {
                if e.state != IpState::Active {
                    return Err(serde::de::Error::custom(format!(
                        "{ip} has an owner but is {}",
                        e.state
                    )));
                }
                if state.owners.insert(o.clone(), *ip).is_some() {
                    return Err(serde::de::Error::custom(format!(
                        "owner {o} holds more than one address"
                    )));
                }
            } else if e.state == IpState::Active {
                return Err(serde::de::Error::custom(format!(
                    "{ip} is active without an owner"
                )));
            }
        }
        state.entries = stored.entries;
        state.claims = stored.claims;
        state.cursor = stored.cursor;
        Ok(state)
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

    /// Replaces the spec, keeping allocations (addresses no longer in the pool stay with their
    /// owners until released). Returns whether anything changed.
    pub fn set_spec(&mut self, spec: PoolSpec) -> Result<bool, PoolError> {
        if spec == self.spec {
            return Ok(false);
        }
        let fresh = PoolState::new(spec)?;
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

    fn exhausted(&self, now_ms: u64) -> PoolError {
        let u = self.usage_at(now_ms);
        PoolError::Exhausted {
            pool: self.spec.name.clone(),
            ranges: self.layout.describe(),
            active: u.active,
            reserved: u.reserved,
            disabled: u.disabled,
        }
    }

    /// Whether `identity`'s claim was released at least the keep duration before `now_ms`
    /// (expired, whether or not [`PoolState::expire_claims`] has run yet).
    fn claim_lapsed(&self, identity: &str, now_ms: u64) -> bool {
        let keep_ms = self.spec.claim_keep_secs.saturating_mul(1000);
        self.claims
            .get(identity)
            .and_then(|c| c.released_ms)
            .is_some_and(|t| t.saturating_add(keep_ms) <= now_ms)
    }

    /// The identity whose expired claim still holds `ip` Reserved, if any: such an address
    /// counts as Available.
    fn lapsed_holder<'a>(&self, ip: IpAddr, e: &'a Entry, now_ms: u64) -> Option<&'a str> {
        let id = e.identity.as_deref()?;
        (e.state == IpState::Reserved
            && self.claims.get(id).is_some_and(|c| c.ip == ip)
            && self.claim_lapsed(id, now_ms))
        .then_some(id)
    }

    /// The next free address after the cursor, round robin over the slots (an address
    /// Reserved by an expired claim is free).
    fn next_free(&self, now_ms: u64) -> Option<IpAddr> {
        let slots = &self.layout.slots;
        let (start_i, start_n) = match self.cursor.map(num).and_then(|c| {
            let i = self.layout.slot_of(c)?;
            Some((i, c.n))
        }) {
            Some((i, n)) if n < slots[i].hi => (i, n + 1),
            Some((i, _)) => ((i + 1) % slots.len(), slots[(i + 1) % slots.len()].lo),
            None => (0, slots[0].lo),
        };
        let (mut i, mut n) = (start_i, start_n);
        let mut wrapped = false;
        loop {
            if wrapped && (i > start_i || (i == start_i && n >= start_n)) {
                return None;
            }
            let s = &slots[i];
            let next_slot = |i: usize, wrapped: &mut bool| {
                let j = i + 1;
                if j == slots.len() {
                    *wrapped = true;
                    0
                } else {
                    j
                }
            };
            if n > s.hi {
                i = next_slot(i, &mut wrapped);
                n = slots[i].lo;
                continue;
            }
            let a = Num { v6: s.v6, n };
            if let Some(end) = self.layout.excluded_until(a) {
                if end >= s.hi {
                    i = next_slot(i, &mut wrapped);
                    n = slots[i].lo;
                } else {
                    n = end + 1;
                }
                continue;
            }
            let ip = addr(s.v6, n);
            let taken = self
                .entries
                .get(&ip)
                .is_some_and(|e| self.lapsed_holder(ip, e, now_ms).is_none());
            if taken || self.layout.is_gateway(ip) {
                if n == s.hi {
                    i = next_slot(i, &mut wrapped);
                    n = slots[i].lo;
                } else {
                    n += 1;
                }
                continue;
            }
            return Some(ip);
        }
    }

    /// Gives `request.owner` an address: the one it holds already (idempotent), its identity's
    /// claimed address, the requested one, or the next free one.
    ///
    /// Claims whose keep duration has passed at `now_ms` count as expired even when
    /// [`PoolState::expire_claims`] has not run (CNI 1.0.0 has no GC): the identity gets no
    /// preference, and its Reserved address is free for anyone. The claims this allocation
    /// touches are dropped with it (their events come first).
    pub fn allocate(
        &mut self,
        request: &AllocRequest,
        now_ms: u64,
    ) -> Result<(Allocation, Vec<AllocationEvent>), PoolError> {
        let pool = &self.spec.name;
        if let Some(&held) = self.owners.get(&request.owner) {
            if let Some(r) = request.ip
                && r != held
            {
                return Err(PoolError::AlreadyHolds {
                    pool: pool.clone(),
                    who: request.owner.to_string(),
                    held,
                    requested: r,
                });
            }
            let identity = self.entries.get(&held).and_then(|e| e.identity.clone());
            return Ok((
                self.allocation(held, request.owner.clone(), identity),
                vec![],
            ));
        }
        let claims_on = self.spec.claim_keep_secs > 0;
        let identity = request.identity.as_ref().filter(|_| claims_on);
        let own_lapsed = identity.is_some_and(|id| self.claim_lapsed(id, now_ms));
        let claimed = identity
            .filter(|_| !own_lapsed)
            .and_then(|id| self.claims.get(id).map(|c| c.ip));
        let (ip, automatic) = match (claimed, request.ip) {
            (Some(c), Some(r)) if c != r => {
                return Err(PoolError::AlreadyHolds {
                    pool: pool.clone(),
                    who: format!("identity `{}`", identity.map_or("", |s| s.as_str())),
                    held: c,
                    requested: r,
                });
            }
            (Some(c), _) => {
                if let Some(e) = self.entries.get(&c) {
                    match e.state {
                        IpState::Active => {
                            return Err(PoolError::ClaimBusy {
                                pool: pool.clone(),
                                identity: identity.cloned().unwrap_or_default(),
                                ip: c,
                                holder: e.owner.as_ref().map_or_else(String::new, Owner::to_string),
                            });
                        }
                        IpState::Reserved if e.identity.as_ref() == identity => {}
                        state => {
                            return Err(PoolError::Unavailable {
                                pool: pool.clone(),
                                ip: c,
                                state,
                                holder: holder(e),
                            });
                        }
                    }
                }
                (c, false)
            }
            (None, Some(r)) => {
                self.check_in_pool(r)?;
                if let Some(e) = self.entries.get(&r) {
                    let ok = e.state == IpState::Reserved
                        && (e.identity.is_none()
                            || e.identity.as_ref() == identity
                            || self.lapsed_holder(r, e, now_ms).is_some());
                    if !ok {
                        return Err(PoolError::Unavailable {
                            pool: pool.clone(),
                            ip: r,
                            state: e.state,
                            holder: holder(e),
                        });
                    }
                }
                (r, false)
            }
            (None, None) => match self.next_free(now_ms) {
                Some(ip) => (ip, true),
                None => return Err(self.exhausted(now_ms)),
            },
        };
        // Checks are done: commit, first dropping the expired claims this allocation touches.
        let mut events = Vec::new();
        if own_lapsed && let Some(id) = request.identity.as_deref() {
            events.extend(self.drop_claim(id));
        }
        let lapsed = self
            .entries
            .get(&ip)
            .and_then(|e| self.lapsed_holder(ip, e, now_ms))
            .map(str::to_owned);
        if let Some(id) = lapsed {
            events.extend(self.drop_claim(&id));
        }
        let from = self
            .entries
            .get(&ip)
            .map_or(IpState::Available, |e| e.state);
        self.entries.insert(
            ip,
            Entry {
                state: IpState::Active,
                owner: Some(request.owner.clone()),
                identity: identity.cloned(),
                node: request.node.clone(),
                mac: request.mac,
                since_ms: now_ms,
            },
        );
        self.owners.insert(request.owner.clone(), ip);
        if let Some(id) = identity {
            self.claims.insert(
                id.clone(),
                Claim {
                    ip,
                    released_ms: None,
                },
            );
        }
        if automatic {
            self.cursor = Some(ip);
        }
        events.push(AllocationEvent {
            pool: self.spec.name.clone(),
            ip,
            from,
            to: IpState::Active,
            owner: Some(request.owner.clone()),
            identity: identity.cloned(),
        });
        Ok((
            self.allocation(ip, request.owner.clone(), identity.cloned()),
            events,
        ))
    }

    /// Releases what `owner` holds (nothing held: no change). A claimed address goes back to
    /// Reserved for its identity, any other to Available.
    pub fn release(&mut self, owner: &Owner, now_ms: u64) -> Vec<AllocationEvent> {
        let Some(ip) = self.owners.remove(owner) else {
            return vec![];
        };
        let identity = self.entries.get(&ip).and_then(|e| e.identity.clone());
        let claimed = identity
            .as_ref()
            .is_some_and(|id| self.claims.get(id).is_some_and(|c| c.ip == ip));
        let to = if claimed && self.spec.claim_keep_secs > 0 {
            if let Some(id) = &identity
                && let Some(c) = self.claims.get_mut(id)
            {
                c.released_ms = Some(now_ms);
            }
            self.entries.insert(
                ip,
                Entry {
                    state: IpState::Reserved,
                    owner: None,
                    identity: identity.clone(),
                    node: None,
                    mac: None,
                    since_ms: now_ms,
                },
            );
            IpState::Reserved
        } else {
            self.entries.remove(&ip);
            if let Some(id) = &identity {
                self.claims.remove(id);
            }
            IpState::Available
        };
        vec![AllocationEvent {
            pool: self.spec.name.clone(),
            ip,
            from: IpState::Active,
            to,
            owner: Some(owner.clone()),
            identity,
        }]
    }

    /// Drops `identity`'s claim; its address becomes Available if it was Reserved for it.
    pub fn drop_claim(&mut self, identity: &str) -> Vec<AllocationEvent> {
        let Some(claim) = self.claims.remove(identity) else {
            return vec![];
        };
        match self.entries.get_mut(&claim.ip) {
            Some(e) if e.state == IpState::Reserved && e.identity.as_deref() == Some(identity) => {
                self.entries.remove(&claim.ip);
                vec![AllocationEvent {
                    pool: self.spec.name.clone(),
                    ip: claim.ip,
                    from: IpState::Reserved,
                    to: IpState::Available,
                    owner: None,
                    identity: Some(identity.to_owned()),
                }]
            }
            Some(e) if e.identity.as_deref() == Some(identity) => {
                // Still active: it goes to Available when its owner releases it.
                e.identity = None;
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

    /// Moves addresses between Available and Reserved, each on its own: the result says per
    /// address whether it moved.
    pub fn transfer(&mut self, ips: &[IpAddr], to: TransferTarget, now_ms: u64) -> TransferOutcome {
        let mut results = Vec::with_capacity(ips.len());
        let mut events = Vec::new();
        for &ip in ips {
            if self.check_in_pool(ip).is_err() {
                results.push((ip, Err(TransferError::NotInPool { ip })));
                continue;
            }
            let current = self.entries.get(&ip).cloned();
            let free_reserved = |e: &Entry| e.state == IpState::Reserved && e.identity.is_none();
            let r = match (to, current) {
                (TransferTarget::Reserved, None) => {
                    self.entries.insert(
                        ip,
                        Entry {
                            state: IpState::Reserved,
                            owner: None,
                            identity: None,
                            node: None,
                            mac: None,
                            since_ms: now_ms,
                        },
                    );
                    events.push(self.event(ip, IpState::Available, IpState::Reserved));
                    Ok(())
                }
                (TransferTarget::Reserved, Some(e)) if free_reserved(&e) => Ok(()),
                (TransferTarget::Available, None) => Ok(()),
                (TransferTarget::Available, Some(e)) if free_reserved(&e) => {
                    self.entries.remove(&ip);
                    events.push(self.event(ip, IpState::Reserved, IpState::Available));
                    Ok(())
                }
                (_, Some(e)) => Err(TransferError::WrongState {
                    ip,
                    state: e.state,
                    holder: holder(&e),
                }),
            };
            results.push((ip, r));
        }
        (results, events)
    }

    fn event(&self, ip: IpAddr, from: IpState, to: IpState) -> AllocationEvent {
        AllocationEvent {
            pool: self.spec.name.clone(),
            ip,
            from,
            to,
            owner: None,
            identity: None,
        }
    }

    /// Disables (`true`) or re-enables (`false`) a free or operator-reserved address.
    pub fn set_disabled(
        &mut self,
        ip: IpAddr,
        disabled: bool,
        now_ms: u64,
    ) -> Result<Vec<AllocationEvent>, PoolError> {
        self.check_in_pool(ip)?;
        let current = self.entries.get(&ip);
        let from = current.map_or(IpState::Available, |e| e.state);
        let movable = current.is_none_or(|e| {
            e.state == IpState::Disabled || (e.state == IpState::Reserved && e.identity.is_none())
        });
        if !movable {
            let e = current.cloned();
            return Err(PoolError::Unavailable {
                pool: self.spec.name.clone(),
                ip,
                state: from,
                holder: e.as_ref().map_or_else(String::new, holder),
            });
        }
        let to = if disabled {
            IpState::Disabled
        } else {
            IpState::Available
        };
        if from == to {
            return Ok(vec![]);
        }
        if disabled {
            self.entries.insert(
                ip,
                Entry {
                    state: IpState::Disabled,
                    owner: None,
                    identity: None,
                    node: None,
                    mac: None,
                    since_ms: now_ms,
                },
            );
        } else {
            self.entries.remove(&ip);
        }
        Ok(vec![AllocationEvent {
            pool: self.spec.name.clone(),
            ip,
            from,
            to,
            owner: None,
            identity: None,
        }])
    }

    /// Assigns a MAC to an Available address (BCS allows changing MACs only while free).
    pub fn set_mac(&mut self, ip: IpAddr, mac: Mac) -> Result<(), PoolError> {
        self.check_in_pool(ip)?;
        if let Some(e) = self.entries.get(&ip) {
            return Err(PoolError::Unavailable {
                pool: self.spec.name.clone(),
                ip,
                state: e.state,
                holder: holder(e),
            });
        }
        self.spec.macs.insert(ip, mac);
        Ok(())
    }

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

    fn counts(&self, now_ms: Option<u64>) -> Usage {
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

/// The allocation changes that turn `old` into `new` (states of pool `pool`; `None`: the pool
/// does not exist), one event per address whose state or holder changed, in address order.
/// An address that changed holder without passing through Available in between (released and
/// taken again) gets two events, through Available. Watches that see only states (another
/// process's writes) use this to produce the events the allocator itself publishes.
pub fn diff(pool: &str, old: Option<&PoolState>, new: Option<&PoolState>) -> Vec<AllocationEvent> {
    let empty = BTreeMap::new();
    let before = old.map_or(&empty, |s| &s.entries);
    let after = new.map_or(&empty, |s| &s.entries);
    let ips: BTreeSet<IpAddr> = before.keys().chain(after.keys()).copied().collect();
    let event =
        |ip: IpAddr, from: IpState, to: IpState, owner: Option<&Entry>, id: Option<&Entry>| {
            AllocationEvent {
                pool: pool.to_owned(),
                ip,
                from,
                to,
                owner: owner.and_then(|e| e.owner.clone()),
                identity: id.and_then(|e| e.identity.clone()),
            }
        };
    let mut out = Vec::new();
    for ip in ips {
        let (b, a) = (before.get(&ip), after.get(&ip));
        let from = b.map_or(IpState::Available, |e| e.state);
        let to = a.map_or(IpState::Available, |e| e.state);
        if from != to {
            // Activation names the new owner, anything else the old one (as release does).
            let owner = if to == IpState::Active { a } else { b };
            out.push(event(ip, from, to, owner, a.or(b)));
            continue;
        }
        let (Some(b), Some(a)) = (b, a) else { continue };
        let same = b.owner == a.owner && (from != IpState::Reserved || b.identity == a.identity);
        if !same {
            out.push(event(ip, from, IpState::Available, Some(b), Some(b)));
            out.push(event(ip, IpState::Available, to, Some(a), Some(a)));
        }
    }
    out
}
