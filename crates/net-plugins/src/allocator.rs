//! The allocator: pool operations over any [`PoolStore`], with a watch stream of changes.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::error::{PoolError, StoreError, TransferError};
use crate::mac::Mac;
use crate::model::{
    AllocRequest, Allocation, AllocationEvent, Owner, PoolSpec, TransferTarget, Usage,
};
use crate::pool_state::PoolState;
use crate::store::{PoolStore, TxnKeys};

/// A stream of allocation changes ([`Allocator::watch`]).
pub type AllocationWatch = BoxStream<'static, Result<AllocationEvent, StoreError>>;

/// Milliseconds since the Unix epoch; replaceable in tests.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock in milliseconds since the Unix epoch.
pub fn system_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Pool operations over a store. Cheap to clone; clones share the watch stream.
///
/// ```
/// # tokio_test_block_on(async {
/// use std::sync::Arc;
/// use rorqual_net::{Allocator, AllocRequest, IpRange, Owner, PoolSpec, store::memory::MemoryStore};
///
/// let alloc = Allocator::new(Arc::new(MemoryStore::new()));
/// let spec = PoolSpec::new("games").with_range(IpRange::new("10.9.0.0/29".parse().unwrap()));
/// alloc.create_pool(spec).await.unwrap();
/// let a = alloc.allocate("games", &AllocRequest::new(Owner::new("ctr1", "eth0"))).await.unwrap();
/// assert_eq!(a.address.to_string(), "10.9.0.1/29");
/// // The same owner gets the same address back.
/// let again = alloc.allocate("games", &AllocRequest::new(Owner::new("ctr1", "eth0"))).await.unwrap();
/// assert_eq!(again.address, a.address);
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct Allocator {
    store: Arc<dyn PoolStore>,
    // Created by the first `watch`, so short-lived users (the CNI executable) pay nothing.
    events: Arc<OnceLock<broadcast::Sender<AllocationEvent>>>,
    clock: Clock,
}

impl fmt::Debug for Allocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Allocator")
            .field("store", &self.store)
            .field(
                "watchers",
                &self
                    .events
                    .get()
                    .map_or(0, broadcast::Sender::receiver_count),
            )
            .finish_non_exhaustive()
    }
}

impl Allocator {
    /// An allocator over `store` with the system clock.
    pub fn new(store: Arc<dyn PoolStore>) -> Self {
        Allocator {
            store,
            events: Arc::new(OnceLock::new()),
            clock: Arc::new(system_clock_ms),
        }
    }

    /// Replaces the clock (milliseconds since the epoch), for tests of claims and GC.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The allocator's clock now, in milliseconds since the epoch.
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn PoolStore> {
        &self.store
    }

    /// A stream of every change to the store's pools from now on, for keeping a service
    /// registry in step: through the store's own watch ([`PoolStore::watch`]: the file store
    /// and etcd) it includes changes made by other processes and hosts, such as
    /// `rorqual-ipam`; for a store without one (memory) it is [`Allocator::watch_local`].
    /// Changes committed after this returns are delivered.
    pub async fn watch(&self) -> Result<AllocationWatch, PoolError> {
        match self.store.watch().await {
            Ok(stream) => Ok(stream),
            Err(StoreError::Unsupported { .. }) => Ok(self
                .watch_local()
                .map(|item| {
                    item.map_err(
                        |BroadcastStreamRecvError::Lagged(missed)| StoreError::Lagged { missed },
                    )
                })
                .boxed()),
            Err(e) => Err(PoolError::store("*", e)),
        }
    }

    /// A stream of every change this allocator (and its clones) makes from now on, in this
    /// process only, with the exact events of each operation. A slow reader that falls more
    /// than 4096 events behind gets a `Lagged` item and should re-read the pools.
    pub fn watch_local(&self) -> BroadcastStream<AllocationEvent> {
        let sender = self.events.get_or_init(|| broadcast::channel(4096).0);
        BroadcastStream::new(sender.subscribe())
    }

    fn publish(&self, events: Vec<AllocationEvent>) {
        let Some(sender) = self.events.get() else {
            return;
        };
        for e in events {
            // No receivers is fine: nobody watches any more.
            let _ = sender.send(e);
        }
    }

    /// Runs `txn` on `pool` atomically (see [`PoolStore::update`]); without an await when the
    /// store allows it ([`PoolStore::try_update_now`]).
    pub async fn update(
        &self,
        pool: &str,
        txn: &mut crate::store::TxnFn<'_>,
    ) -> Result<(), PoolError> {
        if let Some(done) = self.store.try_update_now(pool, &mut *txn) {
            return done;
        }
        self.store.update(pool, txn).await
    }

    /// Runs `txn` on `pool` atomically like [`Allocator::update`], telling the store which keys
    /// the body reads ([`PoolStore::try_update_keys`]: the file store then loads only those,
    /// not the whole pool).
    pub async fn update_keys(
        &self,
        pool: &str,
        keys: &TxnKeys,
        txn: &mut crate::store::TxnFn<'_>,
    ) -> Result<(), PoolError> {
        if let Some(done) = self.store.try_update_keys(pool, keys, &mut *txn) {
            return done;
        }
        self.store.update(pool, txn).await
    }

    /// Fails when `state`'s addresses overlap another pool's. A check before the write: two
    /// pools created at the same moment by two processes are not checked against each other.
    async fn check_disjoint(&self, state: &PoolState) -> Result<(), PoolError> {
        for other in self.pools().await? {
            if other == state.name() {
                continue;
            }
            let other_state = match self.pool(&other).await {
                Ok(s) => s,
                // Deleted meanwhile.
                Err(PoolError::NoSuchPool { .. }) => continue,
                Err(e) => return Err(e),
            };
            if let Some(address) = state.shared_address(&other_state) {
                return Err(PoolError::Overlaps {
                    pool: state.name().to_owned(),
                    other,
                    address,
                });
            }
        }
        Ok(())
    }

    /// Creates a pool; fails if it exists with another spec (same spec: no change), or if its
    /// addresses overlap another pool's ([`PoolError::Overlaps`]).
    pub async fn create_pool(&self, spec: PoolSpec) -> Result<(), PoolError> {
        let name = spec.name.clone();
        let state = PoolState::new(spec.clone())?;
        self.check_disjoint(&state).await?;
        match self.store.compare_and_swap(&name, None, Some(&state)).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict { .. }) => match self.pool(&name).await {
                Ok(existing) if existing.spec() == &spec => Ok(()),
                _ => Err(PoolError::PoolExists { pool: name }),
            },
            Err(e) => Err(PoolError::store(name, e)),
        }
    }

    /// Creates the pool, or updates its spec when it differs (allocations are kept); fails
    /// when its addresses would overlap another pool's.
    pub async fn ensure_pool(&self, spec: PoolSpec) -> Result<(), PoolError> {
        let name = spec.name.clone();
        let state = PoolState::new(spec.clone())?;
        for _ in 0..crate::store::MAX_CAS_ATTEMPTS {
            match self
                .store
                .load(&name)
                .await
                .map_err(|e| PoolError::store(&name, e))?
            {
                None => match self.create_pool(spec.clone()).await {
                    Err(PoolError::PoolExists { .. }) => continue,
                    other => return other,
                },
                Some(v) if v.state.spec() == &spec => return Ok(()),
                Some(_) => {
                    self.check_disjoint(&state).await?;
                    let mut txn = |s: &mut PoolState| s.set_spec(spec.clone());
                    return self.update(&name, &mut txn).await;
                }
            }
        }
        Err(PoolError::store(
            &name,
            StoreError::Contended {
                pool: name.clone(),
                attempts: crate::store::MAX_CAS_ATTEMPTS,
            },
        ))
    }

    /// Deletes a pool; refused while it has active addresses. Deleting a missing pool succeeds.
    pub async fn delete_pool(&self, pool: &str) -> Result<(), PoolError> {
        for _ in 0..crate::store::MAX_CAS_ATTEMPTS {
            let Some(v) = self
                .store
                .load(pool)
                .await
                .map_err(|e| PoolError::store(pool, e))?
            else {
                return Ok(());
            };
            v.state.check_deletable()?;
            match self
                .store
                .compare_and_swap(pool, Some(v.version), None)
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(PoolError::store(pool, e)),
            }
        }
        Err(PoolError::store(
            pool,
            StoreError::Contended {
                pool: pool.to_owned(),
                attempts: crate::store::MAX_CAS_ATTEMPTS,
            },
        ))
    }

    /// A snapshot of a pool.
    pub async fn pool(&self, pool: &str) -> Result<PoolState, PoolError> {
        match self.store.load(pool).await {
            Ok(Some(v)) => Ok(v.state),
            Ok(None) => Err(PoolError::NoSuchPool {
                pool: pool.to_owned(),
            }),
            Err(e) => Err(PoolError::store(pool, e)),
        }
    }

    /// The names of all pools.
    pub async fn pools(&self) -> Result<Vec<String>, PoolError> {
        self.store
            .list()
            .await
            .map_err(|e| PoolError::store("*", e))
    }

    /// Gives an address to `request.owner` (idempotent per owner); see
    /// [`PoolState::allocate`].
    pub async fn allocate(
        &self,
        pool: &str,
        request: &AllocRequest,
    ) -> Result<Allocation, PoolError> {
        let now = (self.clock)();
        let mut out = None;
        let mut txn = |s: &mut PoolState| {
            let (a, ev) = s.allocate(request, now)?;
            let changed = !ev.is_empty();
            out = Some((a, ev));
            Ok(changed)
        };
        let keys = TxnKeys::new()
            .with_owner(request.owner.clone())
            .with_identity(request.identity.clone())
            .with_ip(request.ip);
        self.update_keys(pool, &keys, &mut txn).await?;
        let (a, ev) = out.ok_or_else(|| PoolError::NoSuchPool {
            pool: pool.to_owned(),
        })?;
        self.publish(ev);
        Ok(a)
    }

    /// Releases what `owner` holds; returns the address, `None` when it held nothing
    /// (releasing twice succeeds). A missing pool holds nothing.
    pub async fn release(&self, pool: &str, owner: &Owner) -> Result<Option<IpAddr>, PoolError> {
        let now = (self.clock)();
        let mut out = Vec::new();
        let mut txn = |s: &mut PoolState| {
            out = s.release(owner, now);
            Ok(!out.is_empty())
        };
        let keys = TxnKeys::new().with_owner(owner.clone());
        match self.update_keys(pool, &keys, &mut txn).await {
            Ok(()) => {}
            Err(PoolError::NoSuchPool { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
        let ip = out.first().map(|e| e.ip);
        self.publish(out);
        Ok(ip)
    }

    /// What `owner` holds. Reads only the owner's keys where the store can
    /// ([`PoolStore::try_update_keys`], with a body that changes nothing), so the CNI CHECK
    /// does not read a whole file-store pool.
    pub async fn lookup(&self, pool: &str, owner: &Owner) -> Result<Option<Allocation>, PoolError> {
        let mut found = None;
        let mut txn = |s: &mut PoolState| {
            found = s.lookup(owner);
            Ok(false)
        };
        let keys = TxnKeys::new().with_owner(owner.clone());
        self.update_keys(pool, &keys, &mut txn).await?;
        Ok(found)
    }

    /// Moves addresses between Available and Reserved, with a result per address.
    pub async fn transfer(
        &self,
        pool: &str,
        ips: &[IpAddr],
        to: TransferTarget,
    ) -> Result<Vec<(IpAddr, Result<(), TransferError>)>, PoolError> {
        let now = (self.clock)();
        let mut out = (Vec::new(), Vec::new());
        let mut txn = |s: &mut PoolState| {
            out = s.transfer(ips, to, now);
            Ok(!out.1.is_empty())
        };
        self.update(pool, &mut txn).await?;
        self.publish(out.1);
        Ok(out.0)
    }

    /// Disables or re-enables an address.
    pub async fn set_disabled(
        &self,
        pool: &str,
        ip: IpAddr,
        disabled: bool,
    ) -> Result<(), PoolError> {
        let now = (self.clock)();
        let mut out = Vec::new();
        let mut txn = |s: &mut PoolState| {
            out = s.set_disabled(ip, disabled, now)?;
            Ok(!out.is_empty())
        };
        self.update(pool, &mut txn).await?;
        self.publish(out);
        Ok(())
    }

    /// Assigns a MAC to an available address.
    pub async fn set_mac(&self, pool: &str, ip: IpAddr, mac: Mac) -> Result<(), PoolError> {
        let mut txn = |s: &mut PoolState| {
            s.set_mac(ip, mac)?;
            Ok(true)
        };
        self.update(pool, &mut txn).await
    }

    /// Drops an identity's claim (its reserved address becomes Available).
    pub async fn drop_claim(&self, pool: &str, identity: &str) -> Result<(), PoolError> {
        let mut out = Vec::new();
        let mut txn = |s: &mut PoolState| {
            out = s.drop_claim(identity);
            Ok(true)
        };
        self.update(pool, &mut txn).await?;
        self.publish(out);
        Ok(())
    }

    /// Releases addresses of owners not in `live` that are older than `grace`, and expires
    /// claims; returns what changed.
    pub async fn gc(
        &self,
        pool: &str,
        live: &HashSet<Owner>,
        grace: Duration,
    ) -> Result<Vec<AllocationEvent>, PoolError> {
        let now = (self.clock)();
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut txn = |s: &mut PoolState| {
            out = s.gc(live, grace_ms, now);
            Ok(!out.is_empty())
        };
        self.update(pool, &mut txn).await?;
        self.publish(out.clone());
        Ok(out)
    }

    /// Counts by state now (expired claims count as Available, see [`PoolState::usage_at`]).
    pub async fn usage(&self, pool: &str) -> Result<Usage, PoolError> {
        Ok(self.pool(pool).await?.usage_at((self.clock)()))
    }

    /// Active addresses per node.
    pub async fn usage_by_node(&self, pool: &str) -> Result<BTreeMap<String, u64>, PoolError> {
        Ok(self.pool(pool).await?.usage_by_node())
    }
}
