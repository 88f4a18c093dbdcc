//! Pool stores: where pool states live, with compare-and-swap writes.
//!
//! [`PoolStore`] is the typed layer over the platform's one compare-and-swap contract, core's
//! `StateStore`: [`state_store::StateStorePools`] puts pools in any `StateStore` (see its
//! module docs for the mapping, and for why the memory, file and etcd stores stay).
//!
//! The allocator ([`crate::Allocator`]) is written once over [`PoolStore`]. A store keeps one
//! document per pool with a version; [`PoolStore::compare_and_swap`] writes only when the
//! version is still the one read. [`PoolStore::update`] runs a transaction body (load, change,
//! write) and retries it on conflict; stores that can lock (memory, file) override it to run
//! the body under their lock instead.

use std::fmt::Debug;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::error::{PoolError, StoreError};
use crate::model::{AllocationEvent, Owner};
use crate::pool_state::PoolState;

/// The changes a store's watch delivers ([`PoolStore::watch`]).
pub type WatchStream = BoxStream<'static, Result<AllocationEvent, StoreError>>;

/// One change with the store revision that committed it ([`PoolStore::watch_from`]). One
/// commit may change several addresses: its events share a revision and arrive together, in
/// order; revisions only grow.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RevisionedEvent {
    /// The store revision of the commit.
    pub revision: u64,
    /// The change.
    pub event: AllocationEvent,
}

impl RevisionedEvent {
    /// `event`, committed at `revision`.
    pub fn new(revision: u64, event: AllocationEvent) -> Self {
        RevisionedEvent { revision, event }
    }
}

/// The changes [`PoolStore::watch_from`] delivers.
pub type RevisionWatch = BoxStream<'static, Result<RevisionedEvent, StoreError>>;

/// Every pool of a store as of one revision ([`PoolStore::snapshot`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreSnapshot {
    /// The store revision the pools were read at: a watch resumed after it
    /// ([`PoolStore::watch_from`]) delivers exactly the changes made since.
    pub revision: u64,
    /// The pools, by name.
    pub pools: Vec<PoolState>,
}

impl StoreSnapshot {
    /// `pools` as of `revision`.
    pub fn new(revision: u64, pools: Vec<PoolState>) -> Self {
        StoreSnapshot { revision, pools }
    }
}

/// What a transaction body looks at besides the pool's spec and cursor: the owner, identity
/// and address an allocation or release names ([`PoolStore::try_update_keys`]). A store that
/// keeps a per-address index (the file store) loads only these, plus whatever the body then
/// writes, instead of the whole pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TxnKeys {
    /// The owner whose address the body reads (an allocation's or a release's).
    pub owner: Option<Owner>,
    /// The identity whose claim the body reads.
    pub identity: Option<String>,
    /// A specific address the body reads (a requested one).
    pub ip: Option<IpAddr>,
}

impl TxnKeys {
    /// No keys: the body reads only the spec and the cursor (and what it writes).
    pub fn new() -> Self {
        TxnKeys::default()
    }

    /// The body reads what `owner` holds.
    #[must_use]
    pub fn with_owner(mut self, owner: Owner) -> Self {
        self.owner = Some(owner);
        self
    }

    /// The body reads `identity`'s claim (`None`: none).
    #[must_use]
    pub fn with_identity(mut self, identity: Option<String>) -> Self {
        self.identity = identity;
        self
    }

    /// The body reads the address `ip` (`None`: none).
    #[must_use]
    pub fn with_ip(mut self, ip: Option<IpAddr>) -> Self {
        self.ip = ip;
        self
    }
}

#[cfg(feature = "etcd")]
pub mod etcd;

pub mod file;
pub mod memory;
pub mod state_store;

/// A pool state with the version it was read at.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Versioned {
    /// The state.
    pub state: PoolState,
    /// Its version (changes on every write).
    pub version: u64,
}

/// The body of a transaction: changes the state in place and returns whether it changed
/// anything. On `Err` it must have left the state untouched (every [`PoolState`] operation
/// checks before it changes). It may run more than once (on conflicts).
pub type TxnFn<'a> = dyn FnMut(&mut PoolState) -> Result<bool, PoolError> + Send + 'a;

/// How many conflicting attempts [`update_with_cas`] makes before giving up.
pub const MAX_CAS_ATTEMPTS: u32 = 200;

/// Where pool states live. Object safe: store it as `Arc<dyn PoolStore>`.
#[async_trait]
pub trait PoolStore: Send + Sync + Debug + 'static {
    /// Reads a pool (`None`: no such pool).
    async fn load(&self, pool: &str) -> Result<Option<Versioned>, StoreError>;

    /// Writes `next` (or deletes the pool when `None`) if the pool's version is still
    /// `expected` (`None`: the pool must not exist). Returns the new version (`None` after a
    /// delete); [`StoreError::Conflict`] when another writer came first.
    async fn compare_and_swap(
        &self,
        pool: &str,
        expected: Option<u64>,
        next: Option<&PoolState>,
    ) -> Result<Option<u64>, StoreError>;

    /// The names of all pools.
    async fn list(&self) -> Result<Vec<String>, StoreError>;

    /// Runs `txn` on the pool atomically. The default loads, runs the body on a copy and
    /// compare-and-swaps, retrying on conflict.
    async fn update(&self, pool: &str, txn: &mut TxnFn<'_>) -> Result<(), PoolError> {
        update_with_cas(self, pool, txn).await
    }

    /// Runs `txn` like [`PoolStore::update`] but without awaiting, when the store can (the
    /// memory and file stores lock instead of awaiting I/O); `None` (the default) when it
    /// cannot, and then `txn` has not run. [`crate::Allocator`] tries this first: it spares
    /// every operation a boxed future.
    fn try_update_now(&self, pool: &str, txn: &mut TxnFn<'_>) -> Option<Result<(), PoolError>> {
        let _ = (pool, txn);
        None
    }

    /// Runs `txn` like [`PoolStore::try_update_now`], telling the store which keys the body
    /// reads (`keys`) so that it can run the body on a view of the pool holding just those:
    /// the body may read the spec, the cursor and the keys, look for the next free address,
    /// and change what [`PoolState`]'s allocation and release rules change. A store running
    /// it on a view adds every address, owner and claim the body writes before committing (and
    /// runs the body again when one was not what the view assumed), and confirms an `Err` on
    /// the whole pool; the outcome is the one the body has on the whole pool. The default runs
    /// [`PoolStore::try_update_now`]. [`crate::Allocator::allocate`] and
    /// [`crate::Allocator::release`] use this.
    fn try_update_keys(
        &self,
        pool: &str,
        keys: &TxnKeys,
        txn: &mut TxnFn<'_>,
    ) -> Option<Result<(), PoolError>> {
        let _ = keys;
        self.try_update_now(pool, txn)
    }

    /// Follows every change to the store's pools that any process commits after this returns,
    /// as [`AllocationEvent`]s (decoded by diffing each pool's state before and after the
    /// change, [`crate::pool_state::diff`]). This is how a process other than the allocating
    /// one (a sidecar beside `rorqual-ipam`) keeps in step. Optional capability: the default
    /// returns [`StoreError::Unsupported`]; the file store polls, etcd watches its keys.
    async fn watch(&self) -> Result<WatchStream, StoreError> {
        Err(StoreError::Unsupported {
            store: std::any::type_name::<Self>().to_owned(),
            operation: "watch",
        })
    }

    /// Every pool as of one store revision, read consistently (no commit half seen). With
    /// [`PoolStore::watch_from`] this lets a consumer (a registry sync) start from a full view
    /// and then follow changes without missing or repeating one. Optional capability: the
    /// default returns [`StoreError::Unsupported`].
    async fn snapshot(&self) -> Result<StoreSnapshot, StoreError> {
        Err(StoreError::Unsupported {
            store: std::any::type_name::<Self>().to_owned(),
            operation: "snapshot",
        })
    }

    /// The changes committed after `revision` (a [`StoreSnapshot::revision`] or the
    /// [`RevisionedEvent::revision`] of the last change a consumer applied), in commit order,
    /// then every later one as it is committed. [`StoreError::Compacted`] when the store no
    /// longer keeps the changes right after `revision`: resynchronise from
    /// [`PoolStore::snapshot`]. Optional capability: the default returns
    /// [`StoreError::Unsupported`].
    async fn watch_from(&self, revision: u64) -> Result<RevisionWatch, StoreError> {
        let _ = revision;
        Err(StoreError::Unsupported {
            store: std::any::type_name::<Self>().to_owned(),
            operation: "watch_from",
        })
    }
}

/// How long to wait after the `attempt`th conflict: grows with the attempt (up to 10 ms) plus
/// 0–4 ms of random jitter, so writers that collided (threads of one process as well as
/// processes) spread out instead of retrying in lockstep.
fn conflict_backoff(attempt: u32) -> Duration {
    Duration::from_millis(u64::from(attempt.min(10)) + fastrand::u64(0..5))
}

/// Load, change, compare-and-swap; retried with a short randomised backoff on conflict.
pub async fn update_with_cas<S: PoolStore + ?Sized>(
    store: &S,
    pool: &str,
    txn: &mut TxnFn<'_>,
) -> Result<(), PoolError> {
    for attempt in 0..MAX_CAS_ATTEMPTS {
        let Some(current) = store
            .load(pool)
            .await
            .map_err(|e| PoolError::store(pool, e))?
        else {
            return Err(PoolError::NoSuchPool {
                pool: pool.to_owned(),
            });
        };
        let mut next = current.state.clone();
        if !txn(&mut next)? {
            return Ok(());
        }
        match store
            .compare_and_swap(pool, Some(current.version), Some(&next))
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => {
                tokio::time::sleep(conflict_backoff(attempt)).await;
            }
            Err(e) => return Err(PoolError::store(pool, e)),
        }
    }
    Err(PoolError::store(
        pool,
        StoreError::Contended {
            pool: pool.to_owned(),
            attempts: MAX_CAS_ATTEMPTS,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn conflict_backoff_is_bounded_and_jittered_within_one_process() {
        let waits: std::collections::HashSet<Duration> =
            (0..64).map(|_| conflict_backoff(3)).collect();
        // Same process, same attempt: still different waits (the jitter used to be a
        // function of the process id and the attempt, so a process's writers stayed in step).
        assert!(waits.len() > 1, "{waits:?}");
        assert!(
            waits
                .iter()
                .all(|w| (Duration::from_millis(3)..Duration::from_millis(8)).contains(w))
        );
        assert!(conflict_backoff(1000) < Duration::from_millis(15));
    }

    #[test]
    fn pool_store_is_object_safe_and_send() {
        fn assert_send_sync<T: Send + Sync + ?Sized>() {}
        assert_send_sync::<dyn PoolStore>();
        let _store: Arc<dyn PoolStore> = Arc::new(memory::MemoryStore::new());
    }
}
