//! The registry sync sidecar (`examples/ipam_registry_sync.rs`) as a separate process against
//! a real etcd (Debian's `etcd-server`, started by the test on loopback): killed with SIGKILL
//! in the middle of a storm of allocations and releases, restarted, and resynced after etcd
//! compacted the changes it missed; each time the registry must end equal to the pools.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rorqual_net::store::PoolStore;
use rorqual_net::store::etcd::EtcdStore;
use rorqual_net::sync::{EtcdRegistry, RegistrySink, RegistrySync, SyncError};
use rorqual_net::{AllocRequest, Allocator, IpRange, IpState, Mac, Owner, PoolSpec};
use rorqual_testkit::etcd::LocalEtcd;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const POOLS: &str = "/ipam/pools/";
const REGISTRY: &str = "/ipam/registry";

/// The sidecar, with the lines it printed.
struct Sidecar {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Sidecar {
    fn start(etcd: &LocalEtcd) -> Sidecar {
        let bin = rorqual_testkit::examples::example_bin("ipam_registry_sync");
        let mut child = Command::new(bin)
            .args([
                "--etcd",
                &etcd.url,
                "--pools",
                POOLS,
                "--registry",
                REGISTRY,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let seen = Arc::clone(&lines);
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                seen.lock().push(line);
            }
        });
        Sidecar {
            child,
            lines,
            reader,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().clone()
    }

    /// The revisions it printed as applied so far.
    fn applied(&self) -> Vec<u64> {
        applied(&self.lines())
    }

    async fn wait_for_line(&self, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.lines().iter().any(|l| l.starts_with(prefix)) {
            assert!(
                Instant::now() < deadline,
                "no line starting with {prefix:?} within 60 s: {:?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no chance to finish anything. Returns every line it printed.
    async fn kill_9(mut self) -> Vec<String> {
        self.child.start_kill().unwrap();
        let status = self.child.wait().await.unwrap();
        assert!(!status.success(), "{status}");
        (&mut self.reader).await.unwrap();
        self.lines()
    }
}

/// The revisions printed as applied in `lines`.
fn applied(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("applied revision "))
        .map(|l| l.split(':').next().unwrap().parse().unwrap())
        .collect()
}

fn specs() -> Vec<PoolSpec> {
    let range = |cidr: &str| IpRange::new(cidr.parse().unwrap());
    vec![
        PoolSpec::new("games").with_range(range("10.70.0.0/26")),
        // Claims: released identities keep their address Reserved (no registry entry).
        PoolSpec::new("db")
            .with_range(range("10.71.0.0/27"))
            .with_claim_keep_secs(3600),
        PoolSpec::new("web")
            .with_range(range("10.72.0.0/27"))
            .with_mac("10.72.0.1".parse().unwrap(), Mac([2, 0, 0, 0, 0, 1])),
    ]
}

/// `ops` random allocations and releases (fixed seed) spread over three workers, one per
/// pool, with nodes, reported MACs, identities and an occasional GC (several changes in one
/// commit). Returns when all are done.
async fn storm(alloc: &Allocator, seed: u64, ops: usize) {
    let mut workers = Vec::new();
    for (w, pool) in ["games", "db", "web"].into_iter().enumerate() {
        let alloc = alloc.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed * 10 + w as u64);
            for i in 0..ops / 3 {
                let n = rng.usize(0..40);
                let owner = Owner::new(format!("{pool}-c{n}"), "eth0");
                match rng.usize(0..10) {
                    0..=5 => {
                        let mut req =
                            AllocRequest::new(owner).with_node(format!("node-{}", rng.usize(0..4)));
                        if pool == "db" {
                            req = req.with_identity(format!("ns/db-{n}"));
                        }
                        if rng.bool() {
                            req = req.with_mac(Mac([2, 0x42, 0, 0, w as u8, n as u8]));
                        }
                        match alloc.allocate(pool, &req).await {
                            Ok(_) | Err(rorqual_net::PoolError::Exhausted { .. }) => {}
                            // A claim whose address another owner holds: not this test's concern.
                            Err(rorqual_net::PoolError::ClaimBusy { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    _ if i % 97 == 96 => {
                        // Releases every owner outside a random third in one commit.
                        let live = (0..40)
                            .filter(|_| rng.usize(0..3) == 0)
                            .map(|k| Owner::new(format!("{pool}-c{k}"), "eth0"))
                            .collect();
                        alloc.gc(pool, &live, Duration::ZERO).await.unwrap();
                    }
                    _ => {
                        alloc.release(pool, &owner).await.unwrap();
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
}

/// The revision of the pools' last change.
async fn store_revision(store: &EtcdStore) -> u64 {
    let mut max = 0;
    for pool in store.list().await.unwrap() {
        max = max.max(store.load(&pool).await.unwrap().unwrap().version);
    }
    max
}

/// What the registry must hold, computed from the pools here (not by the sync's own code):
/// `<pool>/<ip>` → (instance, ifname, identity, node, MAC) for every Active address.
type Expected = BTreeMap<String, (String, String, Option<String>, Option<String>, Mac)>;

async fn expected(store: &EtcdStore) -> Expected {
    let mut out = BTreeMap::new();
    for pool in store.list().await.unwrap() {
        let state = store.load(&pool).await.unwrap().unwrap().state;
        for (ip, e) in state.entries() {
            if e.state != IpState::Active {
                continue;
            }
            let owner = e.owner.clone().unwrap();
            let mac = e.mac.unwrap_or_else(|| state.mac_of(*ip));
            out.insert(
                format!("{pool}/{ip}"),
                (
                    owner.container,
                    owner.ifname,
                    e.identity.clone(),
                    e.node.clone(),
                    mac,
                ),
            );
        }
    }
    out
}

/// What the registry holds, read raw from etcd: every key under its prefix but the
/// checkpoint, with its JSON value.
async fn registry_contents(etcd: &LocalEtcd) -> (Option<u64>, Expected) {
    let mut client = etcd_client::Client::connect([etcd.url.as_str()], None)
        .await
        .unwrap();
    let resp = client
        .get(
            format!("{REGISTRY}/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let mut checkpoint = None;
    let mut out = BTreeMap::new();
    for kv in resp.kvs() {
        let key = kv
            .key_str()
            .unwrap()
            .strip_prefix(&format!("{REGISTRY}/"))
            .unwrap();
        if key == ".revision" {
            checkpoint = Some(kv.value_str().unwrap().parse().unwrap());
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
        assert_eq!(v["state"], "active", "{key}: {v}");
        let s = |f: &str| v[f].as_str().map(str::to_owned);
        out.insert(
            key.to_owned(),
            (
                s("instance").unwrap(),
                s("ifname").unwrap(),
                s("identity"),
                s("node"),
                s("mac").unwrap().parse().unwrap(),
            ),
        );
    }
    (checkpoint, out)
}

/// Waits until the registry's checkpoint reaches the pools' last change, then checks it
/// holds exactly the Active addresses.
async fn assert_in_step(etcd: &LocalEtcd, store: &EtcdStore, sidecar: &Sidecar) {
    let target = store_revision(store).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (checkpoint, _) = registry_contents(etcd).await;
        if checkpoint.is_some_and(|c| c >= target) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "checkpoint {checkpoint:?} did not reach revision {target} within 120 s; the \
             sidecar printed: {:?}",
            sidecar.lines().iter().rev().take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let want = expected(store).await;
    let (_, got) = registry_contents(etcd).await;
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    for (k, v) in &want {
        assert_eq!(&got[k], v, "{k}");
    }
    assert!(!want.is_empty());
}

async fn setup(etcd: &LocalEtcd) -> (EtcdStore, Allocator) {
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.url), POOLS)
        .await
        .unwrap();
    let alloc = Allocator::new(Arc::new(store.clone()));
    for spec in specs() {
        alloc.create_pool(spec).await.unwrap();
    }
    (store, alloc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_killed_in_a_storm_resumes_and_ends_equal_to_the_pools() {
    let Some(etcd) = LocalEtcd::start().await else {
        return;
    };
    let (store, alloc) = setup(&etcd).await;
    storm(&alloc, 1, 150).await;
    let first = Sidecar::start(&etcd);
    first.wait_for_line("resynced revision").await;
    // 2,000 operations in all: killed after it applied some, restarted mid-storm.
    let storm_task = {
        let alloc = alloc.clone();
        tokio::spawn(async move { storm(&alloc, 2, 1850).await })
    };
    first.wait_for_line("applied revision").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while first.applied().len() < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_lines = first.kill_9().await;
    let first_applied = applied(&first_lines);
    assert!(!storm_task.is_finished(), "the storm ended before the kill");
    // Down for a while, the storm going on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = Sidecar::start(&etcd);
    storm_task.await.unwrap();
    assert_in_step(&etcd, &store, &second).await;
    let lines = second.kill_9().await;
    let second_applied = applied(&lines);

    assert!(
        first_lines[1].starts_with("resynced revision"),
        "{first_lines:?}"
    );
    assert!(
        lines[1].starts_with("resumed after revision"),
        "the restart resumes from the checkpoint: {lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("resynced")),
        "{lines:?}"
    );
    assert!(first_applied.len() >= 20, "{first_lines:?}");
    assert!(!second_applied.is_empty());
    // No revision applied twice, across the kill included.
    let all: Vec<u64> = first_applied
        .iter()
        .chain(&second_applied)
        .copied()
        .collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    println!(
        "first run applied {} revisions, second {} (resumed: {})",
        first_applied.len(),
        second_applied.len(),
        lines[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_resyncs_after_etcd_compacted_past_its_checkpoint() {
    let Some(etcd) = LocalEtcd::start().await else {
        return;
    };
    let (store, alloc) = setup(&etcd).await;
    let first = Sidecar::start(&etcd);
    first.wait_for_line("resynced revision").await;
    storm(&alloc, 3, 300).await;
    assert_in_step(&etcd, &store, &first).await;
    let (checkpoint, _) = registry_contents(&etcd).await;
    first.kill_9().await;

    // While it is down: more changes (releases leave stale registry keys), then a compaction
    // past its checkpoint.
    storm(&alloc, 4, 300).await;
    let mut client = etcd_client::Client::connect([etcd.url.as_str()], None)
        .await
        .unwrap();
    let now = client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .compact(
            now,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    assert!(checkpoint.unwrap() < u64::try_from(now).unwrap());

    let second = Sidecar::start(&etcd);
    second.wait_for_line("resynced revision").await;
    storm(&alloc, 5, 60).await;
    assert_in_step(&etcd, &store, &second).await;
    let lines = second.kill_9().await;
    assert!(lines[1].starts_with("resumed after revision"), "{lines:?}");
    assert!(
        lines[2].starts_with("resynced revision") && lines[2].contains("compacted"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_errors_naming_it() {
    let bin = rorqual_testkit::examples::example_bin("ipam_registry_sync");
    // No arguments: usage, exit 2.
    let out = Command::new(&bin).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: ipam_registry_sync"));

    let Some(etcd) = LocalEtcd::start().await else {
        return;
    };
    // A registry inside the pool store's prefix.
    let out = Command::new(&bin)
        .args([
            "--etcd",
            &etcd.url,
            "--pools",
            "/x/",
            "--registry",
            "/x/registry",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"/x/registry/\" overlaps pool store prefix \"/x/\""),
        "{err}"
    );

    let (store, alloc) = setup(&etcd).await;
    alloc
        .allocate("games", &AllocRequest::new(Owner::new("c1", "eth0")))
        .await
        .unwrap();
    let mut client = etcd_client::Client::connect([etcd.url.as_str()], None)
        .await
        .unwrap();
    let registry = Arc::new(
        EtcdRegistry::builder(REGISTRY)
            .beside(&store)
            .build()
            .await
            .unwrap(),
    );
    let sync = RegistrySync::new(Arc::new(store.clone()), registry.clone());

    // A registry value it cannot parse: the resync stops, naming the key.
    client
        .put(
            format!("{REGISTRY}/games/10.70.0.9"),
            "{\"instance\":",
            None,
        )
        .await
        .unwrap();
    let err = sync.run(std::future::pending()).await.unwrap_err();
    assert!(matches!(err, SyncError::CorruptEntry { .. }), "{err}");
    assert!(
        err.to_string().contains("/ipam/registry/games/10.70.0.9"),
        "{err}"
    );
    // A key that is not `<pool>/<ip>`.
    client
        .delete(format!("{REGISTRY}/games/10.70.0.9"), None)
        .await
        .unwrap();
    client
        .put(format!("{REGISTRY}/games"), "{}", None)
        .await
        .unwrap();
    let err = sync.run(std::future::pending()).await.unwrap_err();
    assert!(err.to_string().contains("/ipam/registry/games "), "{err}");
    client
        .delete(format!("{REGISTRY}/games"), None)
        .await
        .unwrap();

    // An unreadable checkpoint.
    client
        .put(format!("{REGISTRY}/.revision"), "twelve", None)
        .await
        .unwrap();
    let err = sync.run(std::future::pending()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("/ipam/registry/.revision") && text.contains("twelve"),
        "{text}"
    );
    assert!(!err.is_retryable());

    // The marker of a resync cut short reads as "never synced": it resyncs.
    client
        .put(format!("{REGISTRY}/.revision"), "resyncing", None)
        .await
        .unwrap();
    assert_eq!(registry.checkpoint().await.unwrap(), None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        sync.run(async {
            stopped.await.ok();
        })
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while registry.checkpoint().await.unwrap().is_none() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let entries = registry.entries().await.unwrap();
    assert_eq!(
        entries
            .keys()
            .map(ToString::to_string)
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["games/10.70.0.1".to_owned()])
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_syncs_into_a_registry_in_another_etcd_with_small_transactions_end_equal() {
    let Some(pools_etcd) = LocalEtcd::start().await else {
        return;
    };
    let Some(registry_etcd) = LocalEtcd::start().await else {
        return;
    };
    let (store, alloc) = setup(&pools_etcd).await;
    storm(&alloc, 6, 150).await;
    // Another etcd: the pools' own prefix is fine there. Three operations per transaction:
    // the resync and larger commits are split, the checkpoint written with the last part.
    let registry = || async {
        Arc::new(
            EtcdRegistry::builder(POOLS)
                .beside(&store)
                .endpoints([registry_etcd.url.clone()])
                .max_txn_ops(3)
                .build()
                .await
                .unwrap(),
        )
    };
    let retries = Arc::new(Mutex::new(Vec::new()));
    let mut syncs = Vec::new();
    for _ in 0..2 {
        let seen = Arc::clone(&retries);
        let sync = RegistrySync::new(Arc::new(store.clone()), registry().await)
            .with_backoff(Duration::from_millis(5), Duration::from_millis(50))
            .on_report(move |r| {
                if let rorqual_net::sync::SyncReport::Retrying { error, .. } = r {
                    seen.lock().push(error.to_string());
                }
            });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            sync.run(async {
                stopped.await.ok();
            })
            .await
        });
        syncs.push((stop, task));
    }
    storm(&alloc, 7, 300).await;
    let target = store_revision(&store).await;
    let reader = registry().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while reader
        .checkpoint()
        .await
        .unwrap()
        .is_none_or(|c| c < target)
    {
        assert!(Instant::now() < deadline, "retries: {:?}", retries.lock());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got: Expected = reader
        .entries()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, e)| {
            (
                k.to_string(),
                (e.instance, e.ifname, e.identity, e.node, e.mac.unwrap()),
            )
        })
        .collect();
    assert_eq!(got, expected(&store).await);
    for (stop, task) in syncs {
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }
    // Whatever they raced on, it was only ever the checkpoint, retried.
    let retries = retries.lock();
    assert!(
        retries
            .iter()
            .all(|r| r.contains("moved") || r.contains("during a resync")),
        "{retries:?}"
    );
    println!("{} checkpoint races retried", retries.len());
}
