//! The allocation events between two states of a pool (what watches report).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{Entry, PoolState};
use crate::model::{AllocationEvent, IpState};

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
    let mut out = Vec::new();
    for ip in ips {
        address_events_opt(
            pool,
            ip,
            (before.get(&ip), old),
            (after.get(&ip), new),
            &mut out,
        );
    }
    out
}

/// The events for one address whose entry went from `before` to `after`, each with the pool
/// state it belongs to (the MAC of an event whose owner entry comes from one side, when the
/// runtime reported none, is that side's for the address). Appends to `out`.
pub(super) fn address_events(
    pool: &str,
    ip: IpAddr,
    before: (Option<&Entry>, &PoolState),
    after: (Option<&Entry>, &PoolState),
    out: &mut Vec<AllocationEvent>,
) {
    address_events_opt(
        pool,
        ip,
        (before.0, Some(before.1)),
        (after.0, Some(after.1)),
        out,
    );
}

fn address_events_opt(
    pool: &str,
    ip: IpAddr,
    (b, old): (Option<&Entry>, Option<&PoolState>),
    (a, new): (Option<&Entry>, Option<&PoolState>),
    out: &mut Vec<AllocationEvent>,
) {
    let event = |from: IpState,
                 to: IpState,
                 (owner, side): (Option<&Entry>, Option<&PoolState>),
                 id: Option<&Entry>| {
        let owner = owner.filter(|e| e.owner.is_some());
        AllocationEvent {
            pool: pool.to_owned(),
            ip,
            from,
            to,
            owner: owner.and_then(|e| e.owner.clone()),
            identity: id.and_then(|e| e.identity.clone()),
            node: owner.and_then(|e| e.node.clone()),
            mac: owner.and_then(|e| e.mac.or_else(|| side.map(|s| s.mac_of(ip)))),
        }
    };
    let from = b.map_or(IpState::Available, |e| e.state);
    let to = a.map_or(IpState::Available, |e| e.state);
    if from != to {
        // Activation names the new owner, anything else the old one (as release does).
        let owner = if to == IpState::Active {
            (a, new)
        } else {
            (b, old)
        };
        out.push(event(from, to, owner, a.or(b)));
        return;
    }
    let (Some(b), Some(a)) = (b, a) else { return };
    let same = b.owner == a.owner && (from != IpState::Reserved || b.identity == a.identity);
    if !same {
        out.push(event(from, IpState::Available, (Some(b), old), Some(b)));
        out.push(event(IpState::Available, to, (Some(a), new), Some(a)));
    }
}
