//! Pools in core's `StateStore` through `StateStorePools`: the allocator behaves as on the
//! other stores, pools sit beside controller state (the `LocalEngine`'s file store) and
//! survive a restart, concurrent allocators never double-allocate, and store errors keep
//! their cause.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use rorqual_core::engine::{MemoryStateStore, StateStore, Versioned as CoreVersioned};
use rorqual_core::error::Error as CoreError;
use rorqual_local::FileStateStore;
use rorqual_net::store::PoolStore;
use rorqual_net::store::state_store::{DEFAULT_PREFIX, StateStorePools};
use rorqual_net::{
    AllocRequest, Allocator, IpRange, IpState, Owner, PoolError, PoolSpec, StoreError,
};

fn spec(name: &str, cidr: &str) -> PoolSpec {
    PoolSpec::new(name)
        .with_range(IpRange::new(cidr.parse().unwrap()))
        .with_claim_keep_secs(60)
}

#[tokio::test]
async fn allocator_over_a_memory_state_store() {
    let state = Arc::new(MemoryStateStore::new());
    let alloc = Allocator::new(Arc::new(StateStorePools::new(state.clone())));
    alloc.create_pool(spec("p", "10.9.0.0/29")).await.unwrap();
    alloc.create_pool(spec("p", "10.9.0.0/29")).await.unwrap();
    assert!(matches!(
        alloc.create_pool(spec("p", "10.9.1.0/29")).await,
        Err(PoolError::PoolExists { .. })
    ));
    let o = Owner::new("c1", "eth0");
    let a = alloc
        .allocate("p", &AllocRequest::new(o.clone()).with_identity("ns/db-0"))
        .await
        .unwrap();
    assert_eq!(
        alloc
            .allocate("p", &AllocRequest::new(o.clone()))
            .await
            .unwrap(),
        a,
        "owner-idempotent"
    );
    // The pool is one JSON value under the prefix, beside other keys of the store.
    state
        .compare_and_swap("controller/rollout", None, Some(b"{}".to_vec()))
        .await
        .unwrap();
    let key = format!("{DEFAULT_PREFIX}p");
    let raw = state.get(&key).await.unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&raw.value).unwrap();
    assert_eq!(json["spec"]["name"], "p");
    assert_eq!(alloc.pools().await.unwrap(), ["p"]);
    assert!(matches!(
        alloc.delete_pool("p").await,
        Err(PoolError::PoolInUse { active: 1, .. })
    ));
    alloc.release("p", &o).await.unwrap();
    let pool = alloc.pool("p").await.unwrap();
    assert_eq!(pool.state_of(a.address.addr()), Some(IpState::Reserved));
    // The claim brings the identity its address back.
    let b = alloc
        .allocate(
            "p",
            &AllocRequest::new(Owner::new("c2", "eth0")).with_identity("ns/db-0"),
        )
        .await
        .unwrap();
    assert_eq!(a.address, b.address);
    alloc.release("p", &Owner::new("c2", "eth0")).await.unwrap();
    alloc
        .gc("p", &HashSet::new(), std::time::Duration::ZERO)
        .await
        .unwrap();
    alloc.delete_pool("p").await.unwrap();
    assert!(alloc.pools().await.unwrap().is_empty());
    assert!(state.get(&key).await.unwrap().is_none());
    assert!(state.get("controller/rollout").await.unwrap().is_some());
}

#[tokio::test]
async fn cas_versions_and_conflicts_follow_the_pool_contract() {
    let pools = StateStorePools::new(Arc::new(MemoryStateStore::new())).with_prefix("net/");
    let state = rorqual_net::PoolState::new(spec("q", "10.9.2.0/29")).unwrap();
    let v1 = pools
        .compare_and_swap("q", None, Some(&state))
        .await
        .unwrap();
    assert_eq!(v1, Some(1));
    let err = pools
        .compare_and_swap("q", None, Some(&state))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: None,
                found: Some(1),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_retryable());
    assert_eq!(pools.load("q").await.unwrap().unwrap().version, 1);
    // A delete returns `None`, as every pool store does (core says version 0).
    assert_eq!(pools.compare_and_swap("q", v1, None).await.unwrap(), None);
    assert!(pools.load("q").await.unwrap().is_none());
}

#[tokio::test]
async fn a_foreign_value_is_corrupt_and_never_overwritten() {
    let state = Arc::new(MemoryStateStore::new());
    state
        .compare_and_swap("pools/bad", None, Some(b"not json".to_vec()))
        .await
        .unwrap();
    let alloc = Allocator::new(Arc::new(
        StateStorePools::new(state.clone()).with_prefix("pools/"),
    ));
    let err = alloc
        .allocate("bad", &AllocRequest::new(Owner::new("c", "eth0")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("pools/bad"), "{err}");
    assert_eq!(
        state.get("pools/bad").await.unwrap().unwrap().value,
        b"not json"
    );
}

#[tokio::test]
async fn pools_live_in_the_local_engines_file_state_store_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let store: Arc<dyn StateStore> = Arc::new(FileStateStore::open(&path).unwrap());
    let first = Allocator::new(Arc::new(StateStorePools::new(store)));
    first
        .create_pool(spec("keep", "10.9.3.0/29"))
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
    drop(first);
    let reopened: Arc<dyn StateStore> = Arc::new(FileStateStore::open(&path).unwrap());
    let second = Allocator::new(Arc::new(StateStorePools::new(reopened)));
    let b = second
        .allocate(
            "keep",
            &AllocRequest::new(Owner::new("d", "eth0")).with_identity("ns/db-0"),
        )
        .await
        .unwrap();
    assert_eq!(a.address, b.address, "claim kept across a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocators_on_one_state_store_never_double_allocate() {
    let state = Arc::new(MemoryStateStore::new());
    let setup = Allocator::new(Arc::new(StateStorePools::new(state.clone())));
    setup.create_pool(spec("c", "10.9.4.0/27")).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..4 {
        // Separate allocators: they meet only in the store's compare-and-swap.
        let alloc = Allocator::new(Arc::new(StateStorePools::new(state.clone())));
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..7 {
                let owner = Owner::new(format!("t{t}-{i}"), "eth0");
                got.push(
                    alloc
                        .allocate("c", &AllocRequest::new(owner))
                        .await
                        .unwrap()
                        .address
                        .addr(),
                );
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), 28, "duplicates in {all:?}");
    assert_eq!(setup.pool("c").await.unwrap().usage().active, 28);
}

/// A state store that fails every call, as a backend that is down would.
#[derive(Debug)]
struct Down;

#[async_trait]
impl StateStore for Down {
    async fn get(&self, key: &str) -> rorqual_core::error::Result<Option<CoreVersioned>> {
        Err(CoreError::NotFound {
            kind: "state key",
            name: key.to_owned(),
        })
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        _: Option<u64>,
        _: Option<Vec<u8>>,
    ) -> rorqual_core::error::Result<u64> {
        self.get(key).await.map(|_| 0)
    }
    async fn list(
        &self,
        prefix: &str,
    ) -> rorqual_core::error::Result<Vec<(String, CoreVersioned)>> {
        self.get(prefix).await.map(|_| vec![])
    }
}

#[tokio::test]
async fn a_failing_state_store_is_reported_with_its_cause() {
    let pools = StateStorePools::new(Arc::new(Down));
    let err = pools.load("p").await.unwrap_err();
    assert!(
        err.to_string().contains(&format!("{DEFAULT_PREFIX}p")),
        "{err}"
    );
    let source = std::error::Error::source(&err).expect("the core error is the source");
    assert!(source.to_string().contains("not found"), "{source}");
    assert!(!err.is_retryable());
}

#[test]
fn the_adapter_is_an_object_safe_pool_store() {
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<StateStorePools>();
    let dynamic: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
    let _store: Arc<dyn PoolStore> = Arc::new(StateStorePools::new(dynamic));
}
