//! Allocate + release through the etcd store, against an etcd started here on free loopback
//! ports: first sequential (one client), then two allocators with their own clients racing on
//! the same pool (each does `ROUNDS / 2` pairs for its own owner at the same time, so their
//! compare-and-swaps conflict and retry).
//!
//! `cargo bench -p rorqual-net --features etcd --bench etcd_store` (`ROUNDS` sets the count).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rorqual_net::store::PoolStore;
use rorqual_net::store::etcd::EtcdStore;
use rorqual_net::{AllocRequest, Allocator, IpRange, Owner, PoolSpec};

struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::path::Path::new("/usr/bin/etcd").exists() {
        println!("skipped: /usr/bin/etcd is missing (apt-get install etcd-server)");
        return;
    }
    let rounds: u32 = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(500);
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let _etcd = Etcd(
        Command::new("/usr/bin/etcd")
            .args(["--name", "b", "--data-dir"])
            .arg(dir.path())
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("b={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let store = loop {
        if let Ok(s) = EtcdStore::connect(std::slice::from_ref(&url), "/bench/").await
            && s.list().await.is_ok()
        {
            break s;
        }
        assert!(Instant::now() < deadline, "etcd did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
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
