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
    // `side`: the state the owner's entry comes from (its MAC, when the runtime reported
    // none, is that pool's for the address, as the allocation reported it).
    let event = |ip: IpAddr,
                 from: IpState,
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
    let mut out = Vec::new();
    for ip in ips {
        let (b, a) = (before.get(&ip), after.get(&ip));
        let from = b.map_or(IpState::Available, |e| e.state);
        let to = a.map_or(IpState::Available, |e| e.state);
        if from != to {
            // Activation names the new owner, anything else the old one (as release does).
            let owner = if to == IpState::Active {
                (a, new)
            } else {
                (b, old)
            };
            out.push(event(ip, from, to, owner, a.or(b)));
            continue;
        }
        let (Some(b), Some(a)) = (b, a) else { continue };
        let same = b.owner == a.owner && (from != IpState::Reserved || b.identity == a.identity);
        if !same {
            out.push(event(ip, from, IpState::Available, (Some(b), old), Some(b)));
            out.push(event(ip, IpState::Available, to, (Some(a), new), Some(a)));
        }
    }
    out
}
