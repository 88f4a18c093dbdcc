//! The pool's spec compiled for allocation: address runs (slots), exclusions, gateways.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::model::PoolSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Num {
    pub(super) v6: bool,
    pub(super) n: u128,
}

pub(super) fn num(ip: IpAddr) -> Num {
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

pub(super) fn addr(v6: bool, n: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(n))
    } else {
        // IPv4 slots hold values below 2^32 by construction.
        IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX)))
    }
}

/// A contiguous run of addresses the pool hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Slot {
    pub(super) v6: bool,
    pub(super) lo: u128,
    pub(super) hi: u128,
    pub(super) prefix: u8,
    pub(super) gateway: Option<IpAddr>,
}

/// The spec compiled for allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Layout {
    pub(super) slots: Vec<Slot>,
    /// Disjoint, sorted excluded intervals `(v6, lo, hi)`.
    pub(super) excluded: Vec<(bool, u128, u128)>,
    pub(super) gateways: Vec<IpAddr>,
}

impl Layout {
    pub(super) fn compile(spec: &PoolSpec) -> Result<Layout, String> {
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

    pub(super) fn slot_of(&self, a: Num) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.v6 == a.v6 && s.lo <= a.n && a.n <= s.hi)
    }

    /// The end of the exclusion covering `a`, if any.
    pub(super) fn excluded_until(&self, a: Num) -> Option<u128> {
        let idx = self.excluded.partition_point(|e| (e.0, e.1) <= (a.v6, a.n));
        let e = self.excluded.get(idx.checked_sub(1)?)?;
        (e.0 == a.v6 && e.1 <= a.n && a.n <= e.2).then_some(e.2)
    }

    pub(super) fn is_gateway(&self, ip: IpAddr) -> bool {
        self.gateways.binary_search(&ip).is_ok()
    }

    pub(super) fn describe(&self) -> String {
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
    pub(super) fn total(&self) -> u128 {
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
