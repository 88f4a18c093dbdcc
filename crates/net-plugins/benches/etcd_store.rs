//! Allocate + release through the etcd store, against an etcd started here on free loopback
//! ports: first sequential (one client), then two allocators with their own clients racing on
//! the same pool (each does `ROUNDS / 2` pairs for its own owner at the same time, so their
//! compare-and-swaps conflict and retry).
//!
//! `cargo bench -p rorqual-net --features etcd --bench etcd_store` (`ROUNDS` sets the count).

use std::sync::Arc;
use std::time::Instant;

use rorqual_net::store::etcd::EtcdStore;
use rorqual_net::{AllocRequest, Allocator, IpRange, Owner, PoolSpec};

use rorqual_testkit::etcd::LocalEtcd;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: u32 = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(500);
    let Some(etcd) = LocalEtcd::start().await else {
        return;
    };
    let url = etcd.url.clone();
    let store = EtcdStore::connect(std::slice::from_ref(&url), "/bench/")
        .await
        .expect("first client");
    let alloc = Allocator::new(Arc::new(store));
    let other = Allocator::new(Arc::new(
        EtcdStore::connect(std::slice::from_ref(&url), "/bench/")
            .await
            .expect("second client"),
    ));
    let spec =
        PoolSpec::new("bench").with_range(IpRange::new("10.0.0.0/16".parse().expect("cidr")));
    alloc.create_pool(spec).await.expect("create");
    for i in 0..1000 {
        alloc
            .allocate(
                "bench",
                &AllocRequest::new(Owner::new(format!("pre{i}"), "eth0")),
            )
            .await
            .expect("prefill");
    }
    let owner = Owner::new("bench", "eth0");
    let start = Instant::now();
    for _ in 0..rounds {
        alloc
            .allocate("bench", &AllocRequest::new(owner.clone()))
            .await
            .expect("allocate");
        alloc.release("bench", &owner).await.expect("release");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "etcd store, 1000 allocated: {rounds} allocate+release pairs in {secs:.2}s = {:.0} ops/s ({:.2} ms per pair)",
        f64::from(rounds * 2) / secs,
        secs * 1000.0 / f64::from(rounds)
    );
    // Racing: two allocators (separate clients), each with its own owner, at the same time.
    let half = (rounds / 2).max(1);
    let start = Instant::now();
    let racers: Vec<_> = [alloc, other]
        .into_iter()
        .enumerate()
        .map(|(i, al)| {
            tokio::spawn(async move {
                let owner = Owner::new(format!("racer{i}"), "eth0");
                for _ in 0..half {
                    al.allocate("bench", &AllocRequest::new(owner.clone()))
                        .await
                        .expect("allocate");
                    al.release("bench", &owner).await.expect("release");
                }
            })
        })
        .collect();
    for r in racers {
        r.await.expect("racer");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "etcd store, 1000 allocated, two allocators racing: {} allocate+release pairs in {secs:.2}s = {:.0} ops/s",
        half * 2,
        f64::from(half * 4) / secs
    );
}
