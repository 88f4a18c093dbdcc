//! The allocator over the memory and file stores: the same behaviour on both, the watch
//! streams (and the file store's revision-aware `watch_from` and `snapshot`), corrupt files of
//! every kind, migration of the old format, replay after a reboot, and many threads and
//! processes sharing one file store.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rorqual_net::allocator::system_clock_ms;
use rorqual_net::store::file::FileStore;
use rorqual_net::store::memory::MemoryStore;
use rorqual_net::store::{PoolStore, RevisionedEvent};
use rorqual_net::{
    AllocRequest, Allocator, IpRange, IpState, Owner, PoolError, PoolSpec, PoolState, StoreError,
    TransferTarget,
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
async fn watch_from_resumes_after_a_revision_without_gaps_or_repeats_and_says_when_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path())
        .unwrap()
        .with_fsync(false)
        .with_watch_interval(Duration::from_millis(10))
        .with_journal_retention(16);
    let alloc = Allocator::new(Arc::new(store.clone()));
    alloc.create_pool(spec("r", "10.8.9.0/24")).await.unwrap();
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.pools.len(), 1);
    assert!(snap.pools[0].entries().is_empty());
    for i in 0..6 {
        alloc
            .allocate("r", &AllocRequest::new(Owner::new(format!("c{i}"), "eth0")))
            .await
            .unwrap();
    }
    // After the snapshot: the six allocations, in commit order, each once.
    let mut watch = store.watch_from(snap.revision).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(next_revisioned(&mut watch).await);
    }
    let revisions: Vec<u64> = got.iter().map(|e| e.revision).collect();
    assert_eq!(
        revisions,
        (snap.revision + 1..=snap.revision + 6).collect::<Vec<_>>()
    );
    assert!(got.iter().enumerate().all(|(i, e)| e.event.ip.to_string()
        == format!("10.8.9.{}", i + 1)
        && e.event.to == IpState::Active));
    // Resumed after the third (a consumer killed after applying it): the last three, then new
    // commits as they come, and nothing else.
    let mut resumed = store.watch_from(got[2].revision).await.unwrap();
    for want in &got[3..] {
        assert_eq!(&next_revisioned(&mut resumed).await, want);
    }
    alloc.release("r", &Owner::new("c0", "eth0")).await.unwrap();
    let e = next_revisioned(&mut resumed).await;
    assert_eq!(
        (e.revision, e.event.from, e.event.to),
        (got[5].revision + 1, IpState::Active, IpState::Available)
    );
    let more = tokio::time::timeout(Duration::from_millis(200), resumed.next()).await;
    assert!(more.is_err(), "{more:?}");
    // Far more commits than the journal keeps: resuming from the old snapshot is refused, a
    // fresh snapshot and its revision work.
    for i in 0..30 {
        let o = Owner::new(format!("x{i}"), "eth0");
        alloc
            .allocate("r", &AllocRequest::new(o.clone()))
            .await
            .unwrap();
        alloc.release("r", &o).await.unwrap();
    }
    let err = store.watch_from(snap.revision).await.err().unwrap();
    assert!(
        matches!(&err, StoreError::Compacted { requested, oldest, .. }
            if *requested == snap.revision && *oldest > snap.revision),
        "{err}"
    );
    assert!(err.to_string().contains("journal"), "{err}");
    let fresh = store.snapshot().await.unwrap();
    assert_eq!(fresh.pools[0].owners().count(), 5);
    let mut watch = store.watch_from(fresh.revision).await.unwrap();
    alloc
        .allocate("r", &AllocRequest::new(Owner::new("last", "eth0")))
        .await
        .unwrap();
    assert_eq!(
        next_revisioned(&mut watch).await.revision,
        fresh.revision + 1
    );
}

async fn next_revisioned(watch: &mut rorqual_net::store::RevisionWatch) -> RevisionedEvent {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn the_file_store_decides_as_the_whole_pool_would_while_reading_only_a_few_keys() {
    // The file store runs allocations on a view of the keys they name; these cases need keys
    // the view did not start with. The memory store (the whole pool) is the reference.
    async fn run(alloc: &Allocator) -> Vec<String> {
        alloc.create_pool(spec("v", "10.8.12.0/29")).await.unwrap(); // .1 - .6
        let mut out = Vec::new();
        let mut take = |r: Result<rorqual_net::Allocation, PoolError>| {
            out.push(match r {
                Ok(a) => a.address.addr().to_string(),
                Err(e) => e.to_string(),
            })
        };
        let req = |c: &str| AllocRequest::new(Owner::new(c, "eth0"));
        take(alloc.allocate("v", &req("a")).await); // .1, the cursor
        // Requested addresses after the cursor (they do not move it): the next automatic
        // allocation must walk past all three.
        for (c, ip) in [("b", "10.8.12.2"), ("c", "10.8.12.3"), ("d", "10.8.12.4")] {
            take(
                alloc
                    .allocate("v", &req(c).with_ip(ip.parse().unwrap()))
                    .await,
            );
        }
        take(alloc.allocate("v", &req("e")).await); // .5
        // An identity's claim kept Reserved after release, then asked for by a new owner.
        take(
            alloc
                .allocate("v", &req("f").with_identity("ns/db-0"))
                .await,
        ); // .6
        alloc.release("v", &Owner::new("f", "eth0")).await.unwrap();
        take(
            alloc
                .allocate("v", &req("g").with_identity("ns/db-0"))
                .await,
        ); // .6 again
        // The same owner again: the same address (idempotent), and a different one refused.
        take(alloc.allocate("v", &req("e")).await);
        take(
            alloc
                .allocate("v", &req("e").with_ip("10.8.12.1".parse().unwrap()))
                .await,
        );
        // Full: the error counts the whole pool.
        take(alloc.allocate("v", &req("h")).await);
        alloc.release("v", &Owner::new("c", "eth0")).await.unwrap();
        take(alloc.allocate("v", &req("h")).await); // .3, freed
        out
    }
    let dir = tempfile::tempdir().unwrap();
    let file = run(&Allocator::new(Arc::new(
        FileStore::open(dir.path()).unwrap().with_fsync(false),
    )))
    .await;
    let memory = run(&Allocator::new(Arc::new(MemoryStore::new()))).await;
    assert_eq!(file, memory);
    assert_eq!(file[4], "10.8.12.5");
    assert_eq!(file[6], "10.8.12.6");
    assert!(file[9].contains("6 active"), "{}", file[9]);
    assert_eq!(file[10], "10.8.12.3");
}

#[tokio::test]
async fn a_pool_in_the_old_single_file_format_is_migrated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = PoolState::new(spec("old", "10.8.10.0/29")).unwrap();
    let kept = Owner::new("kept", "eth0");
    let (a, _) = state
        .allocate(
            &AllocRequest::new(kept.clone()).with_identity("ns/db-0"),
            system_clock_ms(),
        )
        .unwrap();
    let old = serde_json::json!({"version": 7, "state": state});
    std::fs::write(dir.path().join("old.json"), old.to_string()).unwrap();
    let store = FileStore::open(dir.path())
        .unwrap()
        .with_watch_interval(Duration::from_millis(10));
    let alloc = Allocator::new(Arc::new(store.clone()));
    assert_eq!(
        alloc.lookup("old", &kept).await.unwrap().unwrap().address,
        a.address
    );
    let b = alloc
        .allocate("old", &AllocRequest::new(Owner::new("new", "eth0")))
        .await
        .unwrap();
    assert_ne!(a.address, b.address);
    // The old file is now a stub that older binaries refuse (it has no `version`).
    let stub: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("old.json")).unwrap()).unwrap();
    assert!(stub.get("version").is_none(), "{stub}");
    // Opening again migrates nothing twice; the journal holds the migrated allocation.
    let again = FileStore::open(dir.path()).unwrap();
    assert_eq!(again.list().await.unwrap(), ["old"]);
    assert_eq!(
        again
            .load("old")
            .await
            .unwrap()
            .unwrap()
            .state
            .owners()
            .count(),
        2
    );
    let mut watch = store.watch_from(0).await.unwrap();
    let first = next_revisioned(&mut watch).await;
    assert_eq!(
        (first.event.ip, first.event.to, first.event.owner),
        (a.address.addr(), IpState::Active, Some(kept))
    );
    // A pool created by this store gets the stub too, so an older binary never starts one.
    alloc
        .create_pool(spec("fresh", "10.8.13.0/29"))
        .await
        .unwrap();
    let stub: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("fresh.json")).unwrap()).unwrap();
    assert!(stub.get("version").is_none(), "{stub}");
    assert_eq!(
        FileStore::open(dir.path()).unwrap().list().await.unwrap(),
        ["fresh", "old"]
    );
    // An old file that cannot be read: an error naming it, and it stays as it was.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("bad.json"), b"{\"version\":1,").unwrap();
    let err = FileStore::open(bad.path()).unwrap_err().to_string();
    assert!(err.contains("bad.json") && err.contains("corrupt"), "{err}");
    assert_eq!(
        std::fs::read(bad.path().join("bad.json")).unwrap(),
        b"{\"version\":1,"
    );
}

#[tokio::test]
async fn after_a_reboot_the_journal_is_replayed_over_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap().with_fsync(false);
    let alloc = Allocator::new(Arc::new(store));
    alloc.create_pool(spec("p", "10.8.11.0/29")).await.unwrap();
    let a = Owner::new("a", "eth0");
    alloc
        .allocate("p", &AllocRequest::new(a.clone()))
        .await
        .unwrap();
    // A power loss that took index writes made since the checkpoint with it: another boot
    // in the checkpoint, files gone.
    std::fs::write(
        dir.path().join(".checkpoint"),
        br#"{"revision":0,"boot":"another-boot"}"#,
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("p.pool/owner/a+eth0")).unwrap();
    std::fs::remove_file(dir.path().join("p.pool/ip/10.8.11.1")).unwrap();
    let got = alloc.lookup("p", &a).await.unwrap().unwrap();
    assert_eq!(got.address.addr().to_string(), "10.8.11.1");
    let b = alloc
        .allocate("p", &AllocRequest::new(Owner::new("b", "eth0")))
        .await
        .unwrap();
    assert_eq!(b.address.addr().to_string(), "10.8.11.2");
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
async fn every_kind_of_corrupt_file_is_a_clear_error_and_never_overwritten() {
    // (file, relative to the store directory; garbage written over it)
    let kinds: [(&str, &[u8]); 7] = [
        ("c.pool/ip/10.8.3.1", b"{\"s\":"),
        ("c.pool/owner/x+eth0", b"not an address"),
        ("c.pool/claim/=ns%2Fdb-0", b"[]"),
        ("c.pool/meta.json", b"{\"spec\":"),
        ("c.pool/head.json", b""),
        (".checkpoint", b"{"),
        ("journal", b""),
    ];
    for (file, garbage) in kinds {
        let dir = tempfile::tempdir().unwrap();
        let alloc = Allocator::new(Arc::new(FileStore::open(dir.path()).unwrap()));
        alloc.create_pool(spec("c", "10.8.3.0/29")).await.unwrap();
        let x = AllocRequest::new(Owner::new("x", "eth0")).with_identity("ns/db-0");
        let a = alloc.allocate("c", &x).await.unwrap();
        assert_eq!(a.address.addr().to_string(), "10.8.3.1");
        let path = if file == "journal" {
            // The last frame, applied, with a byte of its record changed.
            let seg = std::fs::read_dir(dir.path().join("journal"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .max()
                .unwrap();
            let mut bytes = std::fs::read(&seg).unwrap();
            let n = bytes.len();
            bytes[n - 12] ^= 0x01;
            std::fs::write(&seg, &bytes).unwrap();
            seg
        } else {
            let path = dir.path().join(file);
            assert!(path.exists(), "{file}");
            std::fs::write(&path, garbage).unwrap();
            path
        };
        let before = std::fs::read(&path).unwrap();
        let err = alloc.allocate("c", &x).await.unwrap_err().to_string();
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            err.contains("pool `c`") && err.contains(name) && err.contains("corrupt"),
            "{file}: {err}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "{file} was rewritten"
        );
        // Nothing already allocated is handed out again.
        if let Ok(b) = alloc
            .allocate("c", &AllocRequest::new(Owner::new("y", "eth0")))
            .await
        {
            assert_ne!(b.address, a.address, "{file}");
        }
    }
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
