//! The etcd store against a real etcd (Debian's `etcd-server`) started by the test on free
//! loopback ports in a temporary data directory (`support/etcd.rs`).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rorqual_net::store::PoolStore;
use rorqual_net::store::etcd::EtcdStore;
use rorqual_net::{
    AllocRequest, Allocator, IpRange, IpState, Owner, PoolError, PoolSpec, StoreError,
};
use serde_json::{Value, json};

use rorqual_testkit::etcd::LocalEtcd;

const BIN: &str = env!("CARGO_BIN_EXE_rorqual-ipam");

fn spec(name: &str, cidr: &str) -> PoolSpec {
    PoolSpec::new(name).with_range(IpRange::new(cidr.parse().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_cas_and_allocator_behaviour() {
    let Some(etcd) = LocalEtcd::start().await else {
        return;
    };
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.url), "/rq/")
        .await
        .unwrap();
    let alloc = Allocator::new(Arc::new(store.clone()));
    alloc.create_pool(spec("e", "10.66.0.0/28")).await.unwrap();
    let v = store.load("e").await.unwrap().unwrap();
    // A stale version loses.
    alloc
        .allocate("e", &AllocRequest::new(Owner::new("c0", "eth0")))
        .await
        .unwrap();
    let stale = store
        .compare_and_swap("e", Some(v.version), Some(&v.state))
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    assert!(matches!(
        store.compare_and_swap("e", None, Some(&v.state)).await,
        Err(StoreError::Conflict { .. })
    ));
    let a = alloc
        .allocate("e", &AllocRequest::new(Owner::new("c0", "eth0")))
        .await
        .unwrap();
    assert_eq!(a.address.to_string(), "10.66.0.1/28");
    assert!(matches!(
        alloc.delete_pool("e").await,
        Err(PoolError::PoolInUse { .. })
    ));
    alloc.release("e", &Owner::new("c0", "eth0")).await.unwrap();
    alloc.delete_pool("e").await.unwrap();
    assert!(alloc.pools().await.unwrap().is_empty());

    // Two allocators (separate clients) racing on one pool never hand out an address twice.
    alloc
        .create_pool(spec("race", "10.66.1.0/26"))
        .await
        .unwrap(); // 62 addresses
    let other = Allocator::new(Arc::new(
        EtcdStore::connect(std::slice::from_ref(&etcd.url), "/rq/")
            .await
            .unwrap(),
    ));
    let mut tasks = Vec::new();
    for i in 0..70 {
        let al = if i % 2 == 0 {
            alloc.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            al.allocate(
                "race",
                &AllocRequest::new(Owner::new(format!("c{i}"), "eth0")),
            )
            .await
        }));
    }
    let mut got = HashSet::new();
    let mut exhausted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(a) => assert!(got.insert(a.address.addr()), "duplicate {}", a.address),
            Err(PoolError::Exhausted { .. }) => exhausted += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((got.len(), exhausted), (62, 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rorqual_ipam_processes_sharing_etcd_never_double_allocate() {
    let Some(etcd) = LocalEtcd::start().await else {
        return;
    };
    let conf = json!({
        "cniVersion": "1.0.0", "name": "shared", "type": "bridge",
        "ipam": {"type": "rorqual-ipam", "ranges": [[{"subnet": "10.67.0.0/24",
                 "rangeStart": "10.67.0.10", "rangeEnd": "10.67.0.39"}]],
                 "store": {"type": "etcd", "endpoints": [etcd.url], "prefix": "/cni/"}}
    });
    // A watcher in this process follows what the rorqual-ipam processes allocate.
    let watcher = Allocator::new(Arc::new(
        EtcdStore::connect(std::slice::from_ref(&etcd.url), "/cni/")
            .await
            .unwrap(),
    ));
    let mut watch = watcher.watch().await.unwrap();
    let children: Vec<Child> = (0..40)
        .map(|i| {
            let mut c = Command::new(BIN)
                .env_clear()
                .env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", format!("p{i}"))
                .env("CNI_NETNS", "/var/run/netns/x")
                .env("CNI_IFNAME", "eth0")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin
                .take()
                .unwrap()
                .write_all(conf.to_string().as_bytes())
                .unwrap();
            c
        })
        .collect();
    let mut got = HashSet::new();
    let mut codes = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        if out.status.success() {
            assert!(
                got.insert(v["ips"][0]["address"].as_str().unwrap().to_owned()),
                "duplicate {v}"
            );
        } else {
            codes.push(v["code"].clone());
        }
    }
    assert_eq!(got.len(), 30);
    assert_eq!(codes, vec![json!(110); 10]);
    let mut seen = HashSet::new();
    while seen.len() < 30 {
        let ev = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("the watch delivered every allocation within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(
            (ev.pool.as_str(), ev.from, ev.to),
            ("shared", IpState::Available, IpState::Active)
        );
        assert!(ev.owner.is_some());
        assert!(seen.insert(format!("{}/24", ev.ip)), "{ev:?} twice");
    }
    assert_eq!(seen, got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocator_watching_etcd_sees_another_allocators_changes() {
    let Some(etcd) = LocalEtcd::start().await else {
        return;
    };
    let connect = || async {
        Allocator::new(Arc::new(
            EtcdStore::connect(std::slice::from_ref(&etcd.url), "/w/")
                .await
                .unwrap(),
        ))
    };
    let (writer, reader) = (connect().await, connect().await);
    let mut watch = reader.watch().await.unwrap();
    writer
        .create_pool(spec("w", "10.68.0.0/29").with_claim_keep_secs(60))
        .await
        .unwrap();
    let o = Owner::new("c1", "eth0");
    let a = writer
        .allocate("w", &AllocRequest::new(o.clone()).with_identity("ns/db-0"))
        .await
        .unwrap();
    writer.release("w", &o).await.unwrap();
    writer.drop_claim("w", "ns/db-0").await.unwrap();
    let mut moves = Vec::new();
    while moves.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!((ev.pool.as_str(), ev.ip), ("w", a.address.addr()));
        assert_eq!(ev.identity.as_deref(), Some("ns/db-0"));
        moves.push((ev.from, ev.to, ev.owner));
    }
    assert_eq!(
        moves,
        [
            (IpState::Available, IpState::Active, Some(o.clone())),
            (IpState::Active, IpState::Reserved, Some(o)),
            (IpState::Reserved, IpState::Available, None),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_snapshot_and_watch_from_resume_whole_commits_and_report_compaction() {
    let Some(etcd) = LocalEtcd::start().await else {
        return;
    };
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.url), "/rv/")
        .await
        .unwrap();
    let alloc = Allocator::new(Arc::new(store.clone()));
    alloc.create_pool(spec("r", "10.69.0.0/29")).await.unwrap();
    for c in ["a", "b", "c"] {
        alloc
            .allocate(
                "r",
                &AllocRequest::new(Owner::new(c, "eth0")).with_node("n1"),
            )
            .await
            .unwrap();
    }
    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot.pools.len(), 1);
    assert_eq!(snapshot.pools[0].owners().count(), 3);
    // One commit releasing all three, then one allocation.
    alloc
        .gc("r", &HashSet::new(), Duration::ZERO)
        .await
        .unwrap();
    alloc
        .allocate("r", &AllocRequest::new(Owner::new("d", "eth0")))
        .await
        .unwrap();
    let mut watch = store.watch_from(snapshot.revision).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_revisioned(&mut watch).await);
    }
    let gc_revision = got[0].revision;
    assert!(gc_revision > snapshot.revision);
    assert!(got[..3].iter().all(|e| e.revision == gc_revision
        && e.event.to == IpState::Available
        && e.event.node.as_deref() == Some("n1")
        && e.event.mac.is_some()));
    assert!(got[3].revision > gc_revision && got[3].event.to == IpState::Active);
    // Resumed after the commit before the GC (mid-commit for a consumer that crashed in
    // it): the whole GC commit again, then the allocation; after the GC: the allocation only.
    let mut again = store.watch_from(gc_revision - 1).await.unwrap();
    for want in &got {
        assert_eq!(&next_revisioned(&mut again).await, want);
    }
    let mut after = store.watch_from(gc_revision).await.unwrap();
    assert_eq!(next_revisioned(&mut after).await, got[3]);

    // Compacted past the revision asked for: the stream says so and ends.
    let mut client = etcd_client::Client::connect([etcd.url.as_str()], None)
        .await
        .unwrap();
    let now = store.snapshot().await.unwrap().revision;
    client
        .compact(i64::try_from(now).unwrap(), None)
        .await
        .unwrap();
    let mut old = store.watch_from(snapshot.revision).await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(10), old.next())
        .await
        .unwrap();
    assert!(
        matches!(
            &item,
            Some(Err(StoreError::Compacted { requested, oldest, .. }))
                if *requested == snapshot.revision && *oldest == now - 1
        ),
        "{item:?}"
    );
    assert!(old.next().await.is_none());
    // From the compaction revision on, it resumes.
    assert!(store.watch_from(now).await.is_ok());
}

async fn next_revisioned(
    watch: &mut rorqual_net::store::RevisionWatch,
) -> rorqual_net::store::RevisionedEvent {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocator_capacity_over_etcd_follows_another_writer_and_commits_to_etcd() {
    use rorqual_core::ip_capacity::{IpCapacity, ReserveRequest};
    use rorqual_net::{AllocatorCapacity, instance_owner};

    let Some(etcd) = LocalEtcd::start().await else {
        return;
    };
    let connect = || async {
        Arc::new(
            EtcdStore::connect(std::slice::from_ref(&etcd.url), "/rqcap/")
                .await
                .unwrap(),
        )
    };
    let ours = Allocator::new(connect().await);
    ours.create_pool(
        spec("cap", "10.67.0.0/29")
            .with_nodes(["n1"])
            .with_claim_keep_secs(3600),
    )
    .await
    .unwrap();
    let cap = AllocatorCapacity::start(ours).await.unwrap();
    assert_eq!(cap.snapshot().pool("cap").unwrap().free, 6);
    // Another host allocates through its own connection: the snapshot follows etcd's watch.
    let theirs = Allocator::new(connect().await);
    theirs
        .allocate("cap", &AllocRequest::new(Owner::new("elsewhere", "eth0")))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cap.snapshot().pool("cap").unwrap().free != 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the other writer's allocation never reached the snapshot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A reservation committed here is in etcd for the other host to see.
    let r = cap
        .reserve(&ReserveRequest::new("cap", "game-0").identity("ns/game-0"))
        .unwrap();
    cap.commit("game-0").await.unwrap();
    let seen = theirs
        .lookup("cap", &instance_owner("game-0"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.address.addr(), r.address);
    assert_eq!(seen.identity.as_deref(), Some("ns/game-0"));
}
