//! Allocation latency of the file store in a big, mostly full pool: 100,000 addresses, 90,000
//! of them in use (spread at random, so the search for a free address walks past taken
//! ones), fsync on, in process (`Allocator` over `FileStore`). Each ADD is timed on its own
//! and released again untimed, so the pool stays 90 % full.
//!
//! `cargo bench -p rorqual-net --bench file_store_scale` (`ADDS` sets the count, default
//! 2,000; `FSYNC=0` turns fsync off, to tell the disk's share from the store's).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rorqual_net::store::PoolStore;
use rorqual_net::store::file::FileStore;
use rorqual_net::{AllocRequest, Allocator, IpRange, Owner, PoolSpec, PoolState};

const SIZE: u32 = 100_000;
const USED: u32 = 90_000;

fn main() {
    let adds: usize = std::env::var("ADDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2_000);
    let first = u32::from(Ipv4Addr::new(10, 64, 0, 1));
    let ip = |i: u32| IpAddr::V4(Ipv4Addr::from(first + i));
    let spec = PoolSpec::new("big").with_range(
        IpRange::new("10.64.0.0/15".parse().expect("cidr")).with_bounds(ip(0), ip(SIZE - 1)),
    );
    let mut offsets: Vec<u32> = (0..SIZE).collect();
    let mut rng = fastrand::Rng::with_seed(7);
    rng.shuffle(&mut offsets);
    let mut state = PoolState::new(spec).expect("spec");
    for (n, &i) in offsets[..USED as usize].iter().enumerate() {
        state
            .allocate(
                &AllocRequest::new(Owner::new(format!("pre{n}"), "eth0")).with_ip(ip(i)),
                0,
            )
            .expect("prefill");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path()).expect("store");
    let t = Instant::now();
    futures::executor::block_on(store.compare_and_swap("big", None, Some(&state)))
        .expect("prefill");
    println!(
        "prefill: {USED} of {SIZE} addresses written in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let fsync = std::env::var("FSYNC").map_or(true, |v| v != "0");
    let alloc = Allocator::new(Arc::new(store.with_fsync(fsync)));
    let mut times: Vec<Duration> = Vec::with_capacity(adds);
    futures::executor::block_on(async {
        for i in 0..adds {
            let o = Owner::new(format!("ctr{i}"), "eth0");
            let t = Instant::now();
            alloc
                .allocate("big", &AllocRequest::new(o.clone()))
                .await
                .expect("allocate");
            times.push(t.elapsed());
            alloc.release("big", &o).await.expect("release");
        }
    });
    times.sort();
    let q = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{adds} ADDs in a pool of {SIZE} with {USED} in use (file store, fsync {}): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        if fsync { "on" } else { "off" },
        q(0.5).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3,
        q(1.0).as_secs_f64() * 1e3
    );
}
