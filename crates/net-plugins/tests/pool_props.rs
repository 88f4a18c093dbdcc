//! Property tests of the allocation logic and CIDR edge cases.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;
use rorqual_net::{
    AllocRequest, IpRange, IpState, Owner, PoolError, PoolSpec, PoolState, TransferTarget,
};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Alloc {
        owner: u8,
        identity: Option<u8>,
        specific: Option<u8>,
    },
    Release {
        owner: u8,
    },
    Transfer {
        offset: u8,
        reserve: bool,
    },
    Gc {
        live_mask: u32,
        advance: u16,
    },
    Disable {
        offset: u8,
        on: bool,
    },
    Advance {
        ms: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..24, proptest::option::of(0u8..6), proptest::option::of(0u8..20))
            .prop_map(|(owner, identity, specific)| Op::Alloc { owner, identity, specific }),
        3 => (0u8..24).prop_map(|owner| Op::Release { owner }),
        1 => (0u8..20, any::<bool>()).prop_map(|(offset, reserve)| Op::Transfer { offset, reserve }),
        1 => (any::<u32>(), 0u16..3000).prop_map(|(live_mask, advance)| Op::Gc { live_mask, advance }),
        1 => (0u8..20, any::<bool>()).prop_map(|(offset, on)| Op::Disable { offset, on }),
        1 => (0u16..3000).prop_map(|ms| Op::Advance { ms }),
    ]
}

fn spec() -> PoolSpec {
    // 14 usable hosts in the range (minus gateway and an exclusion), plus two discrete ones.
    PoolSpec::new("prop")
        .with_range(IpRange::new(net("10.1.0.0/28")).with_gateway(ip("10.1.0.1")))
        .with_ip(net("10.2.0.9/24"))
        .with_ip(net("fd00::5/64"))
        .with_exclude(net("10.1.0.7/32"))
        .with_claim_keep_secs(2)
}

fn owner(n: u8) -> Owner {
    Owner::new(format!("ctr{n}"), "eth0")
}

fn candidate(offset: u8) -> IpAddr {
    match offset {
        18 => ip("10.2.0.9"),
        19 => ip("fd00::5"),
        o => ip(&format!("10.1.0.{o}")),
    }
}

fn check(state: &PoolState, held: &HashMap<Owner, IpAddr>) {
    state.check_consistent().unwrap();
    let mut seen = HashSet::new();
    for (o, a) in state.owners() {
        assert!(seen.insert(a), "{a} handed to two owners");
        assert_eq!(
            held.get(o),
            Some(&a),
            "owner {o} changed address without release"
        );
        assert_ne!(a, ip("10.1.0.1"), "gateway handed out");
        assert_ne!(a, ip("10.1.0.7"), "excluded address handed out");
        assert!(
            a == ip("10.2.0.9") || a == ip("fd00::5") || net("10.1.0.0/28").contains(&a),
            "{a} outside the pool"
        );
    }
    assert_eq!(state.owners().count(), held.len());
    let u = state.usage();
    assert_eq!(u.total, 14); // 14 hosts - gateway - excluded + 2 discrete
    assert_eq!(
        u.available + u128::from(u.active + u.reserved + u.disabled),
        u.total
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_operations_never_double_allocate(ops in proptest::collection::vec(op(), 1..120)) {
        let mut state = PoolState::new(spec()).unwrap();
        let mut held: HashMap<Owner, IpAddr> = HashMap::new();
        let mut now = 1_000u64;
        for op in ops {
            match op {
                Op::Alloc { owner: o, identity, specific } => {
                    let mut req = AllocRequest::new(owner(o));
                    if let Some(i) = identity { req = req.with_identity(format!("ns/db-{i}")); }
                    if let Some(s) = specific { req = req.with_ip(candidate(s)); }
                    let before = state.clone();
                    match state.allocate(&req, now) {
                        Ok((a, _)) => {
                            if let Some(prev) = held.get(&owner(o)) {
                                prop_assert_eq!(*prev, a.address.addr(), "idempotent allocation");
                            }
                            held.insert(owner(o), a.address.addr());
                        }
                        Err(e) => {
                            prop_assert_eq!(&state, &before, "failed allocation changed state: {}", e);
                            let holds = matches!(e, PoolError::AlreadyHolds { .. });
                            prop_assert!(!held.contains_key(&owner(o)) || holds, "{}", e);
                        }
                    }
                }
                Op::Release { owner: o } => {
                    let ev = state.release(&owner(o), now);
                    prop_assert_eq!(ev.len(), usize::from(held.remove(&owner(o)).is_some()));
                    prop_assert!(state.release(&owner(o), now).is_empty(), "release is idempotent");
                }
                Op::Transfer { offset, reserve } => {
                    let to = if reserve { TransferTarget::Reserved } else { TransferTarget::Available };
                    let (results, _) = state.transfer(&[candidate(offset)], to, now);
                    if results[0].1.is_ok() {
                        let want = if reserve { IpState::Reserved } else { IpState::Available };
                        prop_assert_eq!(state.state_of(candidate(offset)), Some(want));
                    }
                }
                Op::Gc { live_mask, advance } => {
                    now += u64::from(advance);
                    let live: HashSet<Owner> = (0..24u8).filter(|i| live_mask & (1 << i) != 0).map(owner).collect();
                    let ev = state.gc(&live, 500, now);
                    for e in ev.iter().filter(|e| e.from == IpState::Active) {
                        let o = e.owner.clone().unwrap();
                        prop_assert!(!live.contains(&o), "gc released a live owner");
                        held.remove(&o);
                    }
                }
                Op::Disable { offset, on } => {
                    let before = state.clone();
                    if state.set_disabled(candidate(offset), on, now).is_err() {
                        prop_assert_eq!(&state, &before);
                    }
                }
                Op::Advance { ms } => now += u64::from(ms),
            }
            check(&state, &held);
            // The pool looks full exactly when nothing can be allocated: a claim past its keep
            // time frees its address without waiting for GC.
            let probe = state.clone().allocate(&AllocRequest::new(Owner::new("probe", "eth0")), now);
            prop_assert_eq!(probe.is_ok(), state.usage_at(now).available > 0, "{:?}", probe.err());
            for (ip, c) in state.claims() {
                if c.released_ms.is_some_and(|t| t + 2_000 <= now) {
                    let take = AllocRequest::new(Owner::new("probe", "eth0")).with_ip(c.ip);
                    prop_assert!(state.clone().allocate(&take, now).is_ok(), "expired claim on {} blocks it", ip);
                }
            }
        }
        // The state survives a round trip through its stored form.
        let json = serde_json::to_string(&state).unwrap();
        let back: PoolState = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, state);
    }

    #[test]
    fn v4_ranges_hand_out_every_host_exactly_once(prefix in 24u8..=32) {
        let n = net(&format!("192.168.7.0/{prefix}"));
        let mut state = PoolState::new(PoolSpec::new("edge").with_range(IpRange::new(n))).unwrap();
        let hosts: u32 = match prefix { 32 => 1, 31 => 2, p => (1u32 << (32 - p)) - 2 };
        let mut seen = HashSet::new();
        for i in 0..hosts {
            let (a, _) = state.allocate(&AllocRequest::new(Owner::new(format!("c{i}"), "eth0")), 0).unwrap();
            prop_assert!(n.contains(&a.address.addr()));
            prop_assert_eq!(a.address.prefix_len(), prefix);
            prop_assert!(seen.insert(a.address.addr()));
        }
        let err = state.allocate(&AllocRequest::new(Owner::new("extra", "eth0")), 0).unwrap_err();
        prop_assert!(matches!(err, PoolError::Exhausted { .. }), "{}", err);
        prop_assert_eq!(state.usage().available, 0);
    }
}

#[test]
fn slash_31_and_32_use_every_address() {
    let mut s =
        PoolState::new(PoolSpec::new("p31").with_range(IpRange::new(net("10.0.0.4/31")))).unwrap();
    let a: Vec<_> = (0..2)
        .map(|i| {
            s.allocate(&AllocRequest::new(Owner::new(format!("c{i}"), "eth0")), 0)
                .unwrap()
                .0
                .address
                .to_string()
        })
        .collect();
    assert_eq!(a, ["10.0.0.4/31", "10.0.0.5/31"]);
    let mut s =
        PoolState::new(PoolSpec::new("p32").with_range(IpRange::new(net("10.0.0.9/32")))).unwrap();
    let (one, _) = s
        .allocate(&AllocRequest::new(Owner::new("c", "eth0")), 0)
        .unwrap();
    assert_eq!(one.address.to_string(), "10.0.0.9/32");
}

#[test]
fn slash_8_is_cheap_and_exact() {
    let mut s = PoolState::new(
        PoolSpec::new("big")
            .with_range(IpRange::new(net("10.0.0.0/8")).with_gateway(ip("10.0.0.1")))
            .with_exclude(net("10.0.0.0/16")),
    )
    .unwrap();
    assert_eq!(s.usage().total, (1u128 << 24) - 2 - 65536 + 1); // gateway is inside the exclusion
    let (a, _) = s
        .allocate(&AllocRequest::new(Owner::new("c0", "eth0")), 0)
        .unwrap();
    assert_eq!(a.address.to_string(), "10.1.0.0/8");
    let (b, _) = s
        .allocate(
            &AllocRequest::new(Owner::new("c1", "eth0")).with_ip(ip("10.255.255.254")),
            0,
        )
        .unwrap();
    assert_eq!(b.address.to_string(), "10.255.255.254/8");
    let err = s
        .allocate(
            &AllocRequest::new(Owner::new("c2", "eth0")).with_ip(ip("10.255.255.255")),
            0,
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("10.255.255.255") && err.contains("pool `big`"),
        "{err}"
    );
    let err = s
        .allocate(
            &AllocRequest::new(Owner::new("c2", "eth0")).with_ip(ip("10.0.3.3")),
            0,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("excluded"), "{err}");
}

#[test]
fn ipv6_ranges() {
    let mut s = PoolState::new(
        PoolSpec::new("v6")
            .with_range(
                IpRange::new(net("fd00:1::/64"))
                    .with_bounds(ip("fd00:1::ffff:fffe"), ip("fd00:1::1:0:1")),
            )
            .with_range(IpRange::new(net("fd00:2::/127")))
            .with_range(IpRange::new(net("fd00:3::7/128"))),
    )
    .unwrap();
    assert_eq!(s.usage().total, 4 + 2 + 1);
    let got: Vec<String> = (0..7)
        .map(|i| {
            s.allocate(&AllocRequest::new(Owner::new(format!("c{i}"), "eth0")), 0)
                .unwrap()
                .0
                .address
                .to_string()
        })
        .collect();
    assert_eq!(
        got,
        [
            "fd00:1::ffff:fffe/64",
            "fd00:1::ffff:ffff/64",
            "fd00:1::1:0:0/64",
            "fd00:1::1:0:1/64",
            "fd00:2::/127",
            "fd00:2::1/127",
            "fd00:3::7/128"
        ]
    );
    assert!(matches!(
        s.allocate(&AllocRequest::new(Owner::new("x", "eth0")), 0),
        Err(PoolError::Exhausted { .. })
    ));
    // A /64 pool is not materialised: usage of the whole range is exact and instant.
    let s =
        PoolState::new(PoolSpec::new("huge").with_range(IpRange::new(net("fd00::/64")))).unwrap();
    assert_eq!(s.usage().total, (1u128 << 64) - 1);
}

#[test]
fn claims_keep_an_identity_address_then_expire() {
    let mut s = PoolState::new(
        PoolSpec::new("sts")
            .with_range(IpRange::new(net("10.3.0.0/29")))
            .with_claim_keep_secs(60),
    )
    .unwrap();
    let req = |c: &str| AllocRequest::new(Owner::new(c, "eth0")).with_identity("games/db-0");
    let (a, _) = s.allocate(&req("old"), 0).unwrap();
    // While the old instance holds it, a new one waits (retryable).
    let busy = s.allocate(&req("new"), 0).unwrap_err();
    assert!(busy.is_retryable(), "{busy}");
    s.release(&Owner::new("old", "eth0"), 1_000);
    assert_eq!(s.state_of(a.address.addr()), Some(IpState::Reserved));
    // Others don't get it, even when they ask for it.
    for i in 0..5 {
        let (x, _) = s
            .allocate(
                &AllocRequest::new(Owner::new(format!("o{i}"), "eth0")),
                2_000,
            )
            .unwrap();
        assert_ne!(x.address, a.address);
    }
    assert!(
        s.allocate(
            &AllocRequest::new(Owner::new("thief", "eth0")).with_ip(a.address.addr()),
            2_000
        )
        .is_err()
    );
    let (b, _) = s.allocate(&req("new"), 30_000).unwrap();
    assert_eq!(b.address, a.address, "the identity keeps its address");
    s.release(&Owner::new("new", "eth0"), 40_000);
    assert!(s.expire_claims(99_999).is_empty());
    let ev = s.expire_claims(100_000);
    assert_eq!(ev.len(), 1);
    assert_eq!(s.state_of(a.address.addr()), Some(IpState::Available));
    assert!(s.claims().is_empty());
}

#[test]
fn expired_claims_free_their_address_without_gc() {
    // Two addresses, a claim kept 60 s, and no GC ever (CNI 1.0.0 has none).
    let mut s = PoolState::new(
        PoolSpec::new("sts")
            .with_range(IpRange::new(net("10.4.0.0/30")))
            .with_claim_keep_secs(60),
    )
    .unwrap();
    let db = |c: &str| AllocRequest::new(Owner::new(c, "eth0")).with_identity("games/db-0");
    let (a, _) = s.allocate(&db("old"), 0).unwrap();
    s.release(&Owner::new("old", "eth0"), 1_000);
    s.allocate(&AllocRequest::new(Owner::new("b", "eth0")), 1_000)
        .unwrap();
    // Within the keep time the claim holds its address: the pool is full for others.
    let full = s
        .allocate(&AllocRequest::new(Owner::new("c", "eth0")), 60_999)
        .unwrap_err();
    assert!(matches!(full, PoolError::Exhausted { .. }), "{full}");
    assert_eq!(s.usage_at(60_999).available, 0);
    assert_eq!(s.usage_at(61_000).available, 1);
    assert_eq!(s.usage_at(61_000).reserved, 0);
    // Past it the claim has expired: its address goes to the next allocation.
    let (c, ev) = s
        .allocate(&AllocRequest::new(Owner::new("c", "eth0")), 61_000)
        .unwrap();
    assert_eq!(c.address, a.address);
    let moves: Vec<_> = ev.iter().map(|e| (e.ip, e.from, e.to)).collect();
    assert_eq!(
        moves,
        [
            (a.address.addr(), IpState::Reserved, IpState::Available),
            (a.address.addr(), IpState::Available, IpState::Active),
        ]
    );
    assert!(s.claims().is_empty());
    s.check_consistent().unwrap();
}

#[test]
fn an_expired_claim_gives_its_identity_no_preference_and_its_address_to_requests() {
    let mut s = PoolState::new(
        PoolSpec::new("sts")
            .with_range(IpRange::new(net("10.5.0.0/29")))
            .with_claim_keep_secs(10),
    )
    .unwrap();
    let db = |c: &str| AllocRequest::new(Owner::new(c, "eth0")).with_identity("games/db-0");
    let (a, _) = s.allocate(&db("old"), 0).unwrap();
    s.release(&Owner::new("old", "eth0"), 0);
    // Asking for the expired claim's address by IP succeeds for anyone.
    let thief = AllocRequest::new(Owner::new("thief", "eth0")).with_ip(a.address.addr());
    assert!(s.clone().allocate(&thief, 9_999).is_err());
    let (t, _) = s.clone().allocate(&thief, 10_000).unwrap();
    assert_eq!(t.address, a.address);
    // The identity itself starts over: a fresh claim on the next free address.
    let (n, _) = s.allocate(&db("new"), 10_000).unwrap();
    assert_ne!(n.address, a.address);
    assert_eq!(s.state_of(a.address.addr()), Some(IpState::Available));
    assert_eq!(s.claims()["games/db-0"].ip, n.address.addr());
    s.check_consistent().unwrap();
}

#[test]
fn gc_releases_only_dead_owners_older_than_the_grace() {
    let mut s =
        PoolState::new(PoolSpec::new("g").with_range(IpRange::new(net("10.6.0.0/29")))).unwrap();
    let req = |c: &str| AllocRequest::new(Owner::new(c, "eth0"));
    s.allocate(&req("old"), 1_000).unwrap();
    s.allocate(&req("young"), 5_000).unwrap();
    s.allocate(&req("live"), 1_000).unwrap();
    let live = HashSet::from([Owner::new("live", "eth0")]);
    // With a 5 s grace at 9 999: `old` (held 9 s) goes, `young` (held 4.999 s) stays.
    let ev = s.gc(&live, 5_000, 9_999);
    let gone: Vec<_> = ev.iter().map(|e| e.owner.clone().unwrap()).collect();
    assert_eq!(gone, [Owner::new("old", "eth0")]);
    assert!(s.lookup(&Owner::new("young", "eth0")).is_some());
    let ev = s.gc(&live, 5_000, 10_000);
    assert_eq!(ev[0].owner, Some(Owner::new("young", "eth0")));
    assert!(s.lookup(&Owner::new("live", "eth0")).is_some());
    assert_eq!(s.owners().count(), 1);
}

#[test]
fn transfer_reports_per_address_and_pool_delete_is_refused_while_active() {
    let mut s =
        PoolState::new(PoolSpec::new("t").with_range(IpRange::new(net("10.4.0.0/29")))).unwrap();
    s.allocate(
        &AllocRequest::new(Owner::new("c", "eth0")).with_ip(ip("10.4.0.2")),
        0,
    )
    .unwrap();
    let (r, ev) = s.transfer(
        &[
            ip("10.4.0.1"),
            ip("10.4.0.2"),
            ip("10.9.9.9"),
            ip("10.4.0.1"),
        ],
        TransferTarget::Reserved,
        0,
    );
    assert!(r[0].1.is_ok());
    assert!(
        r[1].1
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("active by c/eth0")
    );
    assert!(
        r[2].1
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("not in the pool")
    );
    assert!(r[3].1.is_ok(), "reserving twice is fine");
    assert_eq!(ev.len(), 1);
    // A reserved address is handed out only on request.
    let (a, _) = s
        .allocate(&AllocRequest::new(Owner::new("d", "eth0")), 0)
        .unwrap();
    assert_ne!(a.address.addr(), ip("10.4.0.1"));
    let (b, _) = s
        .allocate(
            &AllocRequest::new(Owner::new("e", "eth0")).with_ip(ip("10.4.0.1")),
            0,
        )
        .unwrap();
    assert_eq!(b.address.addr(), ip("10.4.0.1"));
    let err = s.check_deletable().unwrap_err().to_string();
    assert_eq!(err, "pool `t` has 3 active addresses and cannot be deleted");
    assert_eq!(s.usage_by_node().get(""), Some(&3));
}

#[test]
fn macs_given_or_generated() {
    let mac: rorqual_net::Mac = "02:00:00:00:00:01".parse().unwrap();
    let mut s = PoolState::new(
        PoolSpec::new("m")
            .with_range(IpRange::new(net("10.5.0.0/30")))
            .with_mac(ip("10.5.0.1"), mac),
    )
    .unwrap();
    let (a, _) = s
        .allocate(&AllocRequest::new(Owner::new("a", "eth0")), 0)
        .unwrap();
    assert_eq!(a.mac, mac);
    let (b, _) = s
        .allocate(&AllocRequest::new(Owner::new("b", "eth0")), 0)
        .unwrap();
    assert!(b.mac.is_local_unicast());
    assert_eq!(b.mac, rorqual_net::Mac::generated("m", ip("10.5.0.2")));
    assert!(
        s.set_mac(ip("10.5.0.2"), mac).is_err(),
        "MACs change only while available"
    );
    let bad = PoolState::new(
        PoolSpec::new("m")
            .with_range(IpRange::new(net("10.5.0.0/30")))
            .with_mac(ip("10.6.0.1"), mac),
    );
    assert!(bad.unwrap_err().to_string().contains("10.6.0.1"));
}

#[test]
fn invalid_specs_name_the_problem() {
    let cases = [
        (
            PoolSpec::new("bad/name").with_range(IpRange::new(net("10.0.0.0/24"))),
            "name",
        ),
        (PoolSpec::new("empty"), "no ranges"),
        (
            PoolSpec::new("o")
                .with_range(IpRange::new(net("10.0.0.0/24")))
                .with_range(IpRange::new(net("10.0.0.128/25"))),
            "overlaps",
        ),
        (
            PoolSpec::new("s").with_range(
                IpRange::new(net("10.0.0.0/24")).with_bounds(ip("10.0.0.9"), ip("10.0.0.3")),
            ),
            "after rangeEnd",
        ),
        (
            PoolSpec::new("g")
                .with_range(IpRange::new(net("10.0.0.0/24")).with_gateway(ip("10.1.0.1"))),
            "gateway 10.1.0.1",
        ),
    ];
    for (spec, want) in cases {
        let name = spec.name.clone();
        let err = PoolState::new(spec).unwrap_err().to_string();
        assert!(err.contains(want) && err.contains(&name), "{err}");
    }
}
