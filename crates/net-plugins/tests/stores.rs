//! The allocator over the memory and file stores: the same behaviour on both, the watch stream,
//! corrupt files, and many threads and processes sharing one file store.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rorqual_net::store::PoolStore;
use rorqual_net::store::file::FileStore;
use rorqual_net::store::memory::MemoryStore;
use rorqual_net::{
    AllocRequest, Allocator, IpRange, IpState, Owner, PoolError, PoolSpec, TransferTarget,
};

fn spec(name: &str, cidr: &str) -> PoolSpec {
    PoolSpec::new(name)
        .with_range(IpRange::new(cidr.parse().unwrap()))
        .with_claim_keep_secs(60)
}

async fn behaviour(store: Arc<dyn PoolStore>) {
    let alloc = Allocator::new(store);
    let mut watch = alloc.watch().await.unwrap();
    alloc.create_pool(spec("p", "10.8.0.0/29")).await.unwrap();
    alloc.create_pool(spec("p", "10.8.0.0/29")).await.unwrap();
    assert!(matches!(
        alloc.create_pool(spec("p", "10.8.1.0/29")).await,
        Err(PoolError::PoolExists { .. })
    ));
    let o = Owner::new("c1", "eth0");
    let a = alloc
        .allocate("p", &AllocRequest::new(o.clone()).with_node("n1"))
        .await
        .unwrap();
    assert_eq!(
        alloc
            .allocate("p", &AllocRequest::new(o.clone()))
            .await
            .unwrap(),
        a
    );
    let ev = watch.next().await.unwrap().unwrap();
    assert_eq!(
        (ev.ip, ev.from, ev.to),
        (a.address.addr(), IpState::Available, IpState::Active)
    );
    assert_eq!(alloc.usage_by_node("p").await.unwrap().get("n1"), Some(&1));
    assert!(matches!(
        alloc.delete_pool("p").await,
        Err(PoolError::PoolInUse { active: 1, .. })
    ));
    assert_eq!(
        alloc.release("p", &o).await.unwrap(),
        Some(a.address.addr())
    );
    assert_eq!(alloc.release("p", &o).await.unwrap(), None);
    let ev = watch.next().await.unwrap().unwrap();
    assert_eq!((ev.from, ev.to), (IpState::Active, IpState::Available));
    let r = alloc
        .transfer(
            "p",
            &["10.8.0.3".parse().unwrap(), "10.9.0.1".parse().unwrap()],
            TransferTarget::Reserved,
        )
        .await
        .unwrap();
    assert!(r[0].1.is_ok() && r[1].1.is_err());
    assert_eq!(alloc.usage("p").await.unwrap().reserved, 1);
    // GC: a leaked owner goes, a live one stays.
    let live = Owner::new("live", "eth0");
    alloc
        .allocate("p", &AllocRequest::new(live.clone()))
        .await
        .unwrap();
    let leak = alloc
        .allocate("p", &AllocRequest::new(Owner::new("leak", "eth0")))
        .await
        .unwrap();
    let gone = alloc
        .gc("p", &HashSet::from([live.clone()]), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].ip, leak.address.addr());
    assert!(alloc.lookup("p", &live).await.unwrap().is_some());
    alloc.release("p", &live).await.unwrap();
    alloc.delete_pool("p").await.unwrap();
    alloc.delete_pool("p").await.unwrap();
    assert!(alloc.pools().await.unwrap().is_empty());
}

#[tokio::test]
async fn memory_store_behaviour() {
    behaviour(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn file_store_behaviour_and_persistence() {
    let dir = tempfile::tempdir().unwrap();
    behaviour(Arc::new(FileStore::open(dir.path()).unwrap())).await;
    // State survives a new store on the same directory.
    let first = Allocator::new(Arc::new(FileStore::open(dir.path()).unwrap()));
    first
        .create_pool(spec("keep", "10.8.2.0/29"))
        .await
        .unwrap();
    let a = first
        .allocate(
            "keep",
            &AllocRequest::new(Owner::new("c", "eth0")).with_identity("ns/db-0"),
        )
        .await
        .unwrap();
    first
        .release("keep", &Owner::new("c", "eth0"))
        .await
        .unwrap();
    let second = Allocator::new(Arc::new(FileStore::open(dir.path()).unwrap()));
    let b = second
        .allocate(
            "keep",
            &AllocRequest::new(Owner::new("d", "eth0")).with_identity("ns/db-0"),
        )
        .await
        .unwrap();
    assert_eq!(a.address, b.address, "claim kept across a restart");
}

async fn next_event(
    watch: &mut rorqual_net::allocator::AllocationWatch,
) -> rorqual_net::AllocationEvent {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_file_store_watch_follows_another_allocator_and_rorqual_ipam() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Arc::new(
            FileStore::open(dir.path())
                .unwrap()
                .with_watch_interval(Duration::from_millis(10)),
        )
    };
    let (writer, reader) = (Allocator::new(open()), Allocator::new(open()));
    let mut watch = reader.watch().await.unwrap();
    writer.create_pool(spec("w", "10.8.5.0/29")).await.unwrap();
    let o = Owner::new("c1", "eth0");
    let a = writer
        .allocate("w", &AllocRequest::new(o.clone()).with_identity("ns/db-0"))
        .await
        .unwrap();
    let ev = next_event(&mut watch).await;
    assert_eq!(
        (ev.pool.as_str(), ev.ip, ev.from, ev.to, ev.owner.as_ref()),
        (
            "w",
            a.address.addr(),
            IpState::Available,
            IpState::Active,
            Some(&o)
        )
    );
    writer.release("w", &o).await.unwrap();
    let ev = next_event(&mut watch).await;
    assert_eq!((ev.from, ev.to), (IpState::Active, IpState::Reserved));
    assert_eq!(ev.identity.as_deref(), Some("ns/db-0"));

    // Another process: rorqual-ipam allocating in the same directory (its file store lives in
    // `<dataDir>/<network>`).
    let net_dir = dir.path().join("net");
    let mut watch = Allocator::new(Arc::new(
        FileStore::open(&net_dir)
            .unwrap()
            .with_watch_interval(Duration::from_millis(10)),
    ))
    .watch()
    .await
    .unwrap();
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "net", "type": "bridge",
        "ipam": {"type": "rorqual-ipam", "ranges": [[{"subnet": "10.8.6.0/29"}]],
                 "dataDir": dir.path()}});
    let ipam = |cmd: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rorqual-ipam"))
            .env_clear()
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", "ctr9")
            .env("CNI_NETNS", "/var/run/netns/x")
            .env("CNI_IFNAME", "eth0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{cmd}: {out:?}");
    };
    ipam("ADD");
    let ev = next_event(&mut watch).await;
    assert_eq!(
        (ev.pool.as_str(), ev.ip, ev.from, ev.to, ev.owner),
        (
            "net",
            "10.8.6.2".parse().unwrap(),
            IpState::Available,
            IpState::Active,
            Some(Owner::new("ctr9", "eth0"))
        )
    );
    ipam("DEL");
    let ev = next_event(&mut watch).await;
    assert_eq!((ev.from, ev.to), (IpState::Active, IpState::Available));
}

#[tokio::test]
async fn a_file_store_watch_sees_a_write_that_keeps_inode_mtime_and_size() {
    // Two writes within one tick of the file system's clock can leave the state file's inode
    // (reused), modification time (coarse) and size (an allocate and a release) as they were.
    // The test makes that happen on purpose: it rewrites the file in place with an equally long
    // state and sets the modification time back.
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path())
        .unwrap()
        .with_watch_interval(Duration::from_millis(10));
    let alloc = Allocator::new(Arc::new(store.clone()));
    alloc.create_pool(spec("s", "10.8.8.0/29")).await.unwrap();
    let a = alloc
        .allocate("s", &AllocRequest::new(Owner::new("c1", "eth0")))
        .await
        .unwrap();
    assert_eq!(a.address.addr().to_string(), "10.8.8.1");
    let mut watch = Allocator::new(Arc::new(store)).watch().await.unwrap();

    let path = dir.path().join("s.json");
    let before = std::fs::metadata(&path).unwrap();
    let body = std::fs::read_to_string(&path).unwrap();
    let moved = body.replace("10.8.8.1", "10.8.8.5");
    assert_ne!(moved, body);
    std::fs::write(&path, &moved).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    let after = std::fs::metadata(&path).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (after.ino(), after.modified().unwrap(), after.len()),
        (before.ino(), before.modified().unwrap(), before.len())
    );

    let ev = next_event(&mut watch).await;
    assert_eq!(
        (ev.ip.to_string(), ev.from, ev.to),
        ("10.8.8.1".to_owned(), IpState::Active, IpState::Available)
    );
    let ev = next_event(&mut watch).await;
    assert_eq!(
        (ev.ip.to_string(), ev.from, ev.to, ev.owner),
        (
            "10.8.8.5".to_owned(),
            IpState::Available,
            IpState::Active,
            Some(Owner::new("c1", "eth0"))
        )
    );

    // A file the watch cannot read is re-read while it is fresh, but reported once.
    std::fs::write(&path, b"{\"version\":3,\"state\":{\"spec\":").unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an error within 10 s")
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("s.json"), "{err}");
    let more = tokio::time::timeout(Duration::from_millis(300), watch.next()).await;
    assert!(more.is_err(), "{more:?}");
}

#[tokio::test]
async fn stores_without_a_watch_say_so_and_the_allocator_falls_back_to_its_own_events() {
    let store = MemoryStore::new();
    let err = store.watch().await.err().unwrap();
    assert!(
        matches!(
            &err,
            rorqual_net::StoreError::Unsupported {
                operation: "watch",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("does not support watch"), "{err}");
    let alloc = Allocator::new(Arc::new(store));
    let mut watch = alloc.watch().await.unwrap();
    alloc.create_pool(spec("m", "10.8.7.0/29")).await.unwrap();
    alloc
        .allocate("m", &AllocRequest::new(Owner::new("c", "eth0")))
        .await
        .unwrap();
    assert_eq!(next_event(&mut watch).await.to, IpState::Active);
}

#[tokio::test]
async fn corrupt_file_is_a_clear_error_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let alloc = Allocator::new(Arc::new(FileStore::open(dir.path()).unwrap()));
    alloc.create_pool(spec("c", "10.8.3.0/29")).await.unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(&path, b"{\"version\":3,\"state\":{\"spec\":").unwrap();
    let err = alloc
        .allocate("c", &AllocRequest::new(Owner::new("x", "eth0")))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pool `c`") && err.contains("c.json") && err.contains("corrupt"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"{\"version\":3,\"state\":{\"spec\":"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_sharing_a_file_store_never_double_allocate() {
    let dir = tempfile::tempdir().unwrap();
    let alloc = Allocator::new(Arc::new(FileStore::open(dir.path()).unwrap()));
    alloc.create_pool(spec("t", "10.8.4.0/27")).await.unwrap(); // 30 addresses
    let mut tasks = Vec::new();
    for i in 0..40 {
        let alloc = Allocator::new(Arc::new(FileStore::open(dir.path()).unwrap()));
        tasks.push(tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(
                alloc.allocate("t", &AllocRequest::new(Owner::new(format!("c{i}"), "eth0"))),
            )
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
    assert_eq!((got.len(), exhausted), (30, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_flock_on_the_lock_file_holds_transactions_back() {
    // The lock is `flock(LOCK_EX)` on `<pool>.lock`, whichever binary took it (older
    // `rorqual-ipam` versions took it through `nix`, current ones through `File::lock`).
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap().with_fsync(false);
    let alloc = Allocator::new(Arc::new(store.clone()));
    alloc.create_pool(spec("p", "10.8.0.0/29")).await.unwrap();
    let held = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(store.lock_path("p"))
        .unwrap();
    held.lock().unwrap();
    let a2 = alloc.clone();
    let task = tokio::spawn(async move {
        a2.allocate("p", &AllocRequest::new(Owner::new("c1", "eth0")))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !task.is_finished(),
        "allocated while another process held the lock"
    );
    held.unlock().unwrap();
    let a = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(a.address.addr().to_string(), "10.8.0.1");
}
