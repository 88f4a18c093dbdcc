#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;
use crate::model::{IpRange, PoolSpec};
use crate::store::file::FileStore;
use crate::store::memory::MemoryStore;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn spec(name: &str, cidr: &str, nodes: &[&str]) -> PoolSpec {
    PoolSpec::new(name)
        .with_range(IpRange::new(cidr.parse().unwrap()))
        .with_nodes(nodes.iter().copied())
        .with_claim_keep_secs(3600)
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn instance_owners_are_valid_cni_container_ids() {
    assert_eq!(instance_owner("games-0").container, "games-0");
    assert_eq!(instance_owner("ns/app 1").container, "ns-app-1");
    assert_eq!(instance_owner("_x").container, "x_x");
    assert_eq!(instance_owner("a").ifname, INSTANCE_IFNAME);
}

#[tokio::test]
async fn reserve_commit_release_and_the_claim_keeps_the_address() {
    let alloc = Allocator::new(Arc::new(MemoryStore::new()));
    alloc
        .create_pool(spec("games", "10.9.0.0/29", &["n1", "n2"]))
        .await
        .unwrap();
    alloc
        .create_pool(spec("web", "10.9.1.0/30", &[]))
        .await
        .unwrap();
    let cap = AllocatorCapacity::start(alloc.clone()).await.unwrap();
    let snap = cap.snapshot();
    let games = snap.pool("games").unwrap();
    // A /29 range: .1 to .6 (network and broadcast excluded).
    assert_eq!((games.free, games.taken), (6, 0));
    assert!(games.serves("n1") && !games.serves("n3"));
    assert!(snap.pool("web").unwrap().serves("anywhere"));

    let req = ReserveRequest::new("games", "game-0")
        .identity("ns/game-0")
        .node("n1");
    let r = cap.reserve(&req).unwrap();
    assert!(r.newly_taken);
    assert_eq!(
        cap.reserve(&req).unwrap(),
        Reservation::new(r.address, false)
    );
    assert_eq!(cap.snapshot().pool("games").unwrap().free, 5);
    // Not in the store until committed.
    let owner = instance_owner("game-0");
    assert!(alloc.lookup("games", &owner).await.unwrap().is_none());
    cap.commit("game-0").await.unwrap();
    let a = alloc.lookup("games", &owner).await.unwrap().unwrap();
    assert_eq!(a.address.addr(), r.address);
    assert_eq!(a.identity.as_deref(), Some("ns/game-0"));

    // Released: the store releases it too, and the identity's claim keeps it.
    cap.release("game-0");
    until("the store release", || {
        cap.inner.cache.lock().releasing.is_empty()
    })
    .await;
    assert!(alloc.lookup("games", &owner).await.unwrap().is_none());
    assert_eq!(
        alloc.pool("games").await.unwrap().state_of(r.address),
        Some(IpState::Reserved)
    );
    assert_eq!(
        cap.claim("ns/game-0"),
        Some(ClaimedAddress::new("games", r.address))
    );
    assert_eq!(cap.snapshot().pool("games").unwrap().free, 5);
    // Another instance of the identity gets the address back.
    let again = ReserveRequest::new("games", "game-0-b").identity("ns/game-0");
    assert_eq!(cap.reserve(&again).unwrap().address, r.address);
    cap.commit("game-0-b").await.unwrap();
    // An uncommitted reservation goes back without touching the store.
    let other = cap.reserve(&ReserveRequest::new("games", "web-1")).unwrap();
    assert_ne!(other.address, r.address);
    cap.release("web-1");
    assert_eq!(cap.snapshot().pool("games").unwrap().free, 5);

    // Bad input names the pool and the address.
    let err = cap
        .reserve(&ReserveRequest::new("games", "x").address(ip("10.7.0.1")))
        .unwrap_err();
    assert!(err.to_string().contains("10.7.0.1"), "{err}");
    assert!(err.to_string().contains("`games`"), "{err}");
    assert_eq!(
        cap.reserve(&ReserveRequest::new("nope", "x")).unwrap_err(),
        IpCapacityError::UnknownPool("nope".into())
    );
    assert_eq!(
        cap.commit("never-reserved").await.unwrap_err(),
        IpCapacityError::NotReserved("never-reserved".into())
    );
}

#[tokio::test]
async fn an_exhausted_pool_says_so_with_its_counts() {
    let alloc = Allocator::new(Arc::new(MemoryStore::new()));
    alloc
        .create_pool(spec("tiny", "10.9.0.0/30", &["n1"]))
        .await
        .unwrap();
    let cap = AllocatorCapacity::start(alloc).await.unwrap();
    for i in 0..2 {
        cap.reserve(&ReserveRequest::new("tiny", format!("p{i}")))
            .unwrap();
    }
    let err = cap.reserve(&ReserveRequest::new("tiny", "p2")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "underlay pool `tiny` has no free address (2 taken)"
    );
    let p = cap.snapshot().pool("tiny").unwrap().clone();
    assert_eq!((p.free, p.taken), (0, 2));
}

#[tokio::test]
async fn changes_by_another_process_reach_the_snapshot_and_a_lost_commit_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = || Arc::new(FileStore::open(dir.path()).unwrap().with_fsync(false));
    let ours = Allocator::new(store());
    ours.create_pool(spec("p", "10.9.0.0/29", &["n1"]))
        .await
        .unwrap();
    let theirs = Allocator::new(store());
    let cap = AllocatorCapacity::start(ours).await.unwrap();
    let mine = cap.reserve(&ReserveRequest::new("p", "mine")).unwrap();
    // Another process takes the address this process reserved but has not committed.
    theirs
        .allocate(
            "p",
            &AllocRequest::new(Owner::new("other", "eth0")).with_ip(mine.address),
        )
        .await
        .unwrap();
    theirs
        .allocate("p", &AllocRequest::new(Owner::new("other2", "eth0")))
        .await
        .unwrap();
    let err = cap.commit("mine").await.unwrap_err();
    assert!(
        matches!(err, IpCapacityError::AddressUnavailable { address, .. } if address == mine.address),
        "{err}"
    );
    // The pool is re-read: both foreign addresses count as taken.
    until("the foreign allocations in the snapshot", || {
        cap.snapshot().pool("p").unwrap().taken == 2
    })
    .await;
    let next = cap.reserve(&ReserveRequest::new("p", "mine")).unwrap();
    assert_ne!(next.address, mine.address);
    cap.commit("mine").await.unwrap();
}

/// A memory store whose writes wait for a gate (to release a reservation while its commit is
/// being written).
#[derive(Debug)]
struct GatedStore {
    inner: MemoryStore,
    /// Writes that reached the gate.
    waiting: std::sync::atomic::AtomicUsize,
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl crate::store::PoolStore for GatedStore {
    async fn load(
        &self,
        pool: &str,
    ) -> Result<Option<crate::store::Versioned>, crate::error::StoreError> {
        self.inner.load(pool).await
    }

    async fn compare_and_swap(
        &self,
        pool: &str,
        expected: Option<u64>,
        next: Option<&PoolState>,
    ) -> Result<Option<u64>, crate::error::StoreError> {
        self.inner.compare_and_swap(pool, expected, next).await
    }

    async fn list(&self) -> Result<Vec<String>, crate::error::StoreError> {
        self.inner.list().await
    }

    async fn update(&self, pool: &str, txn: &mut crate::store::TxnFn<'_>) -> Result<(), PoolError> {
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.gate.acquire().await.unwrap().forget();
        self.inner.update(pool, txn).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_released_while_its_commit_is_written_is_not_left_in_the_store() {
    let store = Arc::new(GatedStore {
        inner: MemoryStore::new(),
        waiting: std::sync::atomic::AtomicUsize::new(0),
        gate: tokio::sync::Semaphore::new(0),
    });
    let alloc = Allocator::new(store.clone());
    alloc
        .create_pool(spec("p", "10.9.0.0/29", &["n1"]))
        .await
        .unwrap();
    let cap = AllocatorCapacity::start(alloc.clone()).await.unwrap();
    let r = cap.reserve(&ReserveRequest::new("p", "gone")).unwrap();
    let commit = tokio::spawn({
        let cap = cap.clone();
        async move { cap.commit("gone").await }
    });
    until("the commit waiting at the gate", || {
        store.waiting.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    // The pod is deleted meanwhile: Unreserve releases the reservation.
    cap.release("gone");
    // Open the gate: the commit's write, its undo and the lookup below go through.
    store.gate.add_permits(1000);
    let err = tokio::time::timeout(Duration::from_secs(10), commit)
        .await
        .expect("the commit finishes")
        .unwrap()
        .unwrap_err();
    assert_eq!(err, IpCapacityError::NotReserved("gone".into()));
    assert!(
        alloc
            .lookup("p", &instance_owner("gone"))
            .await
            .unwrap()
            .is_none(),
        "the store still holds {} for a deleted pod",
        r.address
    );
    assert_eq!(cap.snapshot().pool("p").unwrap().free, 6);
}
