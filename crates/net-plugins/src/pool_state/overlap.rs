//! Whether two pools could hand out the same address.

use std::net::IpAddr;

use super::PoolState;
use super::layout::{Num, addr};

impl PoolState {
    /// The lowest address both pools could hand out (their ranges overlap outside their
    /// exclusions), or `None` when they are disjoint.
    pub fn shared_address(&self, other: &PoolState) -> Option<IpAddr> {
        let mut first: Option<(bool, u128)> = None;
        for a in &self.layout.slots {
            for b in other.layout.slots.iter().filter(|b| b.v6 == a.v6) {
                let (lo, hi) = (a.lo.max(b.lo), a.hi.min(b.hi));
                let mut n = lo;
                while n <= hi {
                    let at = Num { v6: a.v6, n };
                    let skip = [&self.layout, &other.layout]
                        .iter()
                        .filter_map(|l| l.excluded_until(at))
                        .max();
                    match skip {
                        Some(end) => n = end.saturating_add(1),
                        None => {
                            if first.is_none_or(|f| (a.v6, n) < f) {
                                first = Some((a.v6, n));
                            }
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
            }
        }
        first.map(|(v6, n)| addr(v6, n))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::model::{IpRange, PoolSpec};
    use crate::pool_state::PoolState;

    fn pool(name: &str, range: IpRange, exclude: &[&str]) -> PoolState {
        let mut spec = PoolSpec::new(name).with_range(range);
        for e in exclude {
            spec = spec.with_exclude(e.parse().unwrap());
        }
        PoolState::new(spec).unwrap()
    }

    #[test]
    fn overlapping_ranges_share_their_lowest_common_address() {
        let a = pool("a", IpRange::new("10.0.0.0/24".parse().unwrap()), &[]);
        let b = pool("b", IpRange::new("10.0.0.128/25".parse().unwrap()), &[]);
        let c = pool("c", IpRange::new("10.0.1.0/24".parse().unwrap()), &[]);
        assert_eq!(a.shared_address(&b).unwrap().to_string(), "10.0.0.129");
        assert_eq!(b.shared_address(&a).unwrap().to_string(), "10.0.0.129");
        assert_eq!(a.shared_address(&c), None);
        // One subnet split between two pools by bounds, or by exclusions: disjoint.
        let net = || IpRange::new("10.0.2.0/24".parse().unwrap());
        let low = pool(
            "low",
            net().with_bounds("10.0.2.1".parse().unwrap(), "10.0.2.99".parse().unwrap()),
            &[],
        );
        let high = pool(
            "high",
            net().with_bounds("10.0.2.100".parse().unwrap(), "10.0.2.200".parse().unwrap()),
            &[],
        );
        assert_eq!(low.shared_address(&high), None);
        let excl = pool("excl", net(), &["10.0.2.0/25"]);
        assert_eq!(low.shared_address(&excl), None);
        assert_eq!(
            high.shared_address(&excl).unwrap().to_string(),
            "10.0.2.128"
        );
    }
}
