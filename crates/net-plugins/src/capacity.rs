//! [`AllocatorCapacity`]: core's `IpCapacity` seam over an [`Allocator`], so a scheduler places
//! pods only where a pool has a free address and reserves the address the network then
//! attaches.
//!
//! It keeps a copy of every pool in memory, loaded from the store and refreshed from the
//! store's watch (other processes' changes: `rorqual-ipam` on a host, another scheduler), so
//! [`IpCapacity::snapshot`], [`IpCapacity::claim`] and [`IpCapacity::reserve`] answer without
//! I/O. A reservation is decided on the copy with the pool's own rules
//! ([`PoolState::allocate`]: claims, requested addresses, round robin) and written to the store
//! by [`IpCapacity::commit`] (the scheduler's PreBind) with exactly that address. Releasing a
//! committed reservation releases it in the store too, in the background; a later commit
//! waits for it.
//!
//! # One owner key
//!
//! The owner a scheduler reserves for is an instance id; in the pool it is the allocation
//! owner [`instance_owner`]`(instance)`, the same owner `BridgeNetwork` attaches the instance
//! with, so the address reserved is the address attached, and a stateful identity's claim
//! keeps it across restarts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use rorqual_core::ip_capacity::{
    CapacitySnapshot, ClaimedAddress, IpCapacity, IpCapacityError, PoolCapacity, Reservation,
    ReserveRequest,
};

use crate::allocator::Allocator;
use crate::error::PoolError;
use crate::model::{AllocRequest, IpState, Owner};
use crate::pool_state::PoolState;

/// The interface name of instance allocations.
pub const INSTANCE_IFNAME: &str = "eth0";

/// The pool owner of instance `instance`: its id made a valid CNI container id (alphanumeric
/// first, then alphanumerics, `_`, `.` and `-`; anything else becomes `-`), on
/// [`INSTANCE_IFNAME`].
pub fn instance_owner(instance: &str) -> Owner {
    let mut container: String = instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !container.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        container.insert(0, 'x');
    }
    Owner::new(container, INSTANCE_IFNAME)
}

/// A reservation this process made.
#[derive(Debug, Clone)]
struct Held {
    pool: String,
    ip: IpAddr,
    identity: Option<String>,
    node: Option<String>,
    /// Written to the store.
    committed: bool,
}

impl Held {
    fn request(&self, owner: &Owner) -> AllocRequest {
        let mut r = AllocRequest::new(owner.clone()).with_ip(self.ip);
        if let Some(id) = &self.identity {
            r = r.with_identity(id.clone());
        }
        if let Some(n) = &self.node {
            r = r.with_node(n.clone());
        }
        r
    }
}

/// One pool's copy and its counts.
#[derive(Debug)]
struct PoolCopy {
    /// The pool's name, shared with every snapshot.
    name: Arc<str>,
    state: PoolState,
    free: usize,
    taken: usize,
    /// The spec's nodes, shared by every snapshot (`None`: every node).
    nodes: Option<Arc<[String]>>,
}

impl PoolCopy {
    fn new(state: PoolState, now_ms: u64) -> PoolCopy {
        let u = state.usage_at(now_ms);
        let free = usize::try_from(u.available).unwrap_or(usize::MAX);
        let total = usize::try_from(u.total).unwrap_or(usize::MAX);
        let nodes = &state.spec().nodes;
        let nodes = (!nodes.is_empty()).then(|| nodes.iter().cloned().collect());
        PoolCopy {
            name: Arc::from(state.name()),
            state,
            free,
            taken: total.saturating_sub(free),
            nodes,
        }
    }

    /// Adjusts the counts after `ip` went from `before` to its state now.
    fn counted(&mut self, ip: IpAddr, before: Option<IpState>) {
        let was_free = before == Some(IpState::Available);
        let is_free = self.state.state_of(ip) == Some(IpState::Available);
        match (was_free, is_free) {
            (true, false) => {
                self.free = self.free.saturating_sub(1);
                self.taken += 1;
            }
            (false, true) => {
                self.free += 1;
                self.taken = self.taken.saturating_sub(1);
            }
            _ => {}
        }
    }
}

type Pending = Shared<BoxFuture<'static, ()>>;

/// A release running in the store.
struct Releasing {
    pool: String,
    /// Tells this release from a later one of the same owner.
    seq: u64,
    done: Pending,
}

impl fmt::Debug for Releasing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Releasing")
            .field("pool", &self.pool)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Cache {
    pools: BTreeMap<String, PoolCopy>,
    held: HashMap<Owner, Held>,
    /// Store releases still running.
    releasing: HashMap<Owner, Releasing>,
    release_seq: u64,
    /// Reservations another writer took in the store before they were committed: the owner's
    /// next commit reports it (pool, address).
    lost: HashMap<Owner, (String, IpAddr)>,
    layout: u64,
    snapshot: Option<Arc<CapacitySnapshot>>,
}

struct Inner {
    allocator: Allocator,
    /// Where store releases run (the runtime `start` was called on).
    runtime: tokio::runtime::Handle,
    cache: Mutex<Cache>,
    follower: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.follower.get_mut().take() {
            task.abort();
        }
    }
}

/// core's `IpCapacity` over an [`Allocator`] (any pool store). Cheap to clone; clones share
/// the cache. See the [module docs](self).
#[derive(Clone)]
pub struct AllocatorCapacity {
    inner: Arc<Inner>,
}

impl fmt::Debug for AllocatorCapacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cache = self.inner.cache.lock();
        f.debug_struct("AllocatorCapacity")
            .field("pools", &cache.pools.len())
            .field("held", &cache.held.len())
            .finish_non_exhaustive()
    }
}

/// How often every pool is re-read even without a change seen (new pools, changed specs).
const FULL_REFRESH: Duration = Duration::from_secs(30);

impl AllocatorCapacity {
    /// Loads every pool of `allocator`'s store and follows its changes (a task on the current
    /// tokio runtime, stopped when the last clone is dropped; store releases run there too).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn start(allocator: Allocator) -> Result<AllocatorCapacity, PoolError> {
        // Subscribe before loading: a change made in between is seen (and re-read) later.
        let watch = allocator.watch().await?;
        let capacity = AllocatorCapacity {
            inner: Arc::new(Inner {
                allocator,
                runtime: tokio::runtime::Handle::current(),
                cache: Mutex::new(Cache::default()),
                follower: Mutex::new(None),
            }),
        };
        capacity.refresh().await?;
        let task = tokio::spawn(follow(Arc::downgrade(&capacity.inner), watch));
        *capacity.inner.follower.lock() = Some(task.abort_handle());
        Ok(capacity)
    }

    /// The allocator.
    pub fn allocator(&self) -> &Allocator {
        &self.inner.allocator
    }

    /// Re-reads every pool from the store (pools created or deleted since are picked up).
    pub async fn refresh(&self) -> Result<(), PoolError> {
        refresh_all(&self.inner).await
    }
}

async fn refresh_all(inner: &Inner) -> Result<(), PoolError> {
    let names: BTreeSet<String> = inner.allocator.pools().await?.into_iter().collect();
    let mut loaded = Vec::new();
    for name in &names {
        match inner.allocator.pool(name).await {
            Ok(state) => loaded.push(state),
            Err(PoolError::NoSuchPool { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let now = inner.allocator.now_ms();
    let mut cache = inner.cache.lock();
    let gone: Vec<String> = cache
        .pools
        .keys()
        .filter(|p| !names.contains(*p))
        .cloned()
        .collect();
    let mut layout_changed = !gone.is_empty();
    for p in gone {
        cache.pools.remove(&p);
    }
    for state in loaded {
        layout_changed |= install(&mut cache, state, now);
    }
    if layout_changed {
        cache.layout += 1;
    }
    cache.snapshot = None;
    Ok(())
}

/// Re-reads one pool.
async fn refresh_pool(inner: &Inner, pool: &str) -> Result<(), PoolError> {
    let state = match inner.allocator.pool(pool).await {
        Ok(s) => Some(s),
        Err(PoolError::NoSuchPool { .. }) => None,
        Err(e) => return Err(e),
    };
    let now = inner.allocator.now_ms();
    let mut cache = inner.cache.lock();
    let changed = match state {
        Some(state) => install(&mut cache, state, now),
        None => cache.pools.remove(pool).is_some(),
    };
    if changed {
        cache.layout += 1;
    }
    cache.snapshot = None;
    Ok(())
}

/// Puts a freshly read pool into the cache with this process's reservations re-applied (those
/// not committed yet, and committed ones the read may predate) and its running releases
/// applied. Returns whether the pool is new or its nodes changed.
fn install(cache: &mut Cache, mut state: PoolState, now: u64) -> bool {
    let name = state.name().to_owned();
    // Releases still running first (unless the owner reserved again meanwhile), then this
    // process's reservations: a release must not undo the same owner's newer reservation.
    for (owner, r) in &cache.releasing {
        if r.pool == name && !cache.held.contains_key(owner) {
            state.release(owner, now);
        }
    }
    let mut lost = Vec::new();
    for (owner, h) in cache.held.iter().filter(|(_, h)| h.pool == name) {
        if state.allocate(&h.request(owner), now).is_err() {
            lost.push((owner.clone(), h.ip));
        }
    }
    for (owner, ip) in lost {
        // Taken meanwhile by another process: the owner's commit reports it, and the pod is
        // placed again.
        cache.held.remove(&owner);
        cache.lost.insert(owner, (name.clone(), ip));
    }
    let nodes_changed = cache
        .pools
        .get(&name)
        .is_none_or(|old| old.state.spec().nodes != state.spec().nodes);
    cache.pools.insert(name, PoolCopy::new(state, now));
    nodes_changed
}

/// Follows the store's changes: a change this process did not make re-reads its pool; a
/// lagging or ended watch re-reads everything (an ended one is subscribed again). Also re-reads
/// everything every [`FULL_REFRESH`].
async fn follow(weak: Weak<Inner>, mut watch: crate::allocator::AllocationWatch) {
    let mut due = tokio::time::Instant::now() + FULL_REFRESH;
    loop {
        // `None`: time for a full re-read; `Some(None)`: the watch ended.
        let mut next = tokio::time::timeout_at(due, watch.next()).await.ok();
        if next.is_none() {
            due = tokio::time::Instant::now() + FULL_REFRESH;
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let mut dirty = BTreeSet::new();
        let mut everything = next.is_none();
        let mut ended = false;
        while let Some(item) = next {
            match item {
                Some(Ok(ev)) => {
                    let cache = inner.cache.lock();
                    let ours = ev.owner.as_ref().is_some_and(|o| {
                        cache.held.contains_key(o) || cache.releasing.contains_key(o)
                    });
                    if !ours {
                        dirty.insert(ev.pool);
                    }
                }
                // Lagged, or the store's watch failed.
                Some(Err(_)) => everything = true,
                None => {
                    ended = true;
                    everything = true;
                    break;
                }
            }
            // Take what else is ready, so a burst costs one re-read per pool.
            next = watch.next().now_or_never();
        }
        let result = if everything {
            refresh_all(&inner).await
        } else {
            let mut r = Ok(());
            for pool in &dirty {
                r = r.and(refresh_pool(&inner, pool).await);
            }
            r
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "underlay capacity: cannot re-read pools");
        }
        if ended {
            let allocator = inner.allocator.clone();
            drop(inner);
            tokio::time::sleep(Duration::from_secs(1)).await;
            match allocator.watch().await {
                Ok(w) => watch = w,
                Err(e) => tracing::warn!(error = %e, "underlay capacity: cannot watch pools"),
            }
        }
    }
}

fn unavailable(pool: &str, ip: Option<IpAddr>, e: &PoolError) -> IpCapacityError {
    match (e, ip) {
        (
            PoolError::Exhausted {
                active,
                reserved,
                disabled,
                ..
            },
            _,
        ) => IpCapacityError::Exhausted {
            pool: pool.to_owned(),
            taken: usize::try_from(active + reserved + disabled).unwrap_or(usize::MAX),
        },
        (PoolError::NoSuchPool { .. }, _) => IpCapacityError::UnknownPool(pool.to_owned()),
        (e, Some(ip)) => IpCapacityError::AddressUnavailable {
            pool: pool.to_owned(),
            address: ip,
            detail: Some(e.to_string()),
        },
        (e, None) => IpCapacityError::Store {
            pool: pool.to_owned(),
            reason: e.to_string(),
        },
    }
}

#[async_trait]
impl IpCapacity for AllocatorCapacity {
    fn snapshot(&self) -> Arc<CapacitySnapshot> {
        let mut cache = self.inner.cache.lock();
        if let Some(s) = &cache.snapshot {
            return s.clone();
        }
        let pools = cache
            .pools
            .values()
            .map(|p| {
                PoolCapacity::on_every_node(p.name.clone(), p.free)
                    .with_taken(p.taken)
                    .with_nodes(p.nodes.clone())
            })
            .collect();
        let snap = Arc::new(CapacitySnapshot::new(cache.layout, pools));
        cache.snapshot = Some(snap.clone());
        snap
    }

    fn claim(&self, identity: &str) -> Option<ClaimedAddress> {
        let now = self.inner.allocator.now_ms();
        let cache = self.inner.cache.lock();
        cache.pools.iter().find_map(|(name, p)| {
            let keep_ms = p.state.spec().claim_keep_secs.saturating_mul(1000);
            let c = p.state.claims().get(identity)?;
            let lapsed = c
                .released_ms
                .is_some_and(|at| now.saturating_sub(at) >= keep_ms);
            (!lapsed).then(|| ClaimedAddress::new(name.clone(), c.ip))
        })
    }

    fn reserve(&self, request: &ReserveRequest) -> Result<Reservation, IpCapacityError> {
        let owner = instance_owner(&request.owner);
        let pool = request.pool.as_str();
        let now = self.inner.allocator.now_ms();
        let mut guard = self.inner.cache.lock();
        let cache = &mut *guard;
        if let Some(h) = cache.held.get(&owner) {
            if h.pool == pool && request.address.is_none_or(|a| a == h.ip) {
                return Ok(Reservation::new(h.ip, false));
            }
            return Err(IpCapacityError::AddressUnavailable {
                pool: pool.to_owned(),
                address: request.address.unwrap_or(h.ip),
                detail: Some(format!(
                    "`{}` already holds {} in underlay pool `{}`",
                    request.owner, h.ip, h.pool
                )),
            });
        }
        let copy = cache
            .pools
            .get_mut(pool)
            .ok_or_else(|| IpCapacityError::UnknownPool(pool.to_owned()))?;
        let mut alloc = AllocRequest::new(owner.clone());
        if let Some(id) = &request.identity {
            alloc = alloc.with_identity(id.clone());
        }
        if let Some(ip) = request.address {
            alloc = alloc.with_ip(ip);
        }
        if let Some(node) = &request.node {
            alloc = alloc.with_node(node.clone());
        }
        let before = request.address.and_then(|ip| copy.state.state_of(ip));
        let (allocation, events) = copy
            .state
            .allocate(&alloc, now)
            .map_err(|e| unavailable(pool, request.address, &e))?;
        let ip = allocation.address.addr();
        let newly = !events.is_empty();
        if newly {
            let before = if request.address.is_some() {
                before
            } else {
                // A free address (round robin) or the identity's claim (Reserved before).
                Some(if events.iter().any(|e| e.from == IpState::Reserved) {
                    IpState::Reserved
                } else {
                    IpState::Available
                })
            };
            copy.counted(ip, before);
        }
        cache.held.insert(
            owner,
            Held {
                pool: pool.to_owned(),
                ip,
                identity: request.identity.clone(),
                node: request.node.clone(),
                // Already in the store (a copy read after this owner allocated).
                committed: !newly,
            },
        );
        cache.snapshot = None;
        Ok(Reservation::new(ip, newly))
    }

    async fn commit(&self, owner: &str) -> Result<(), IpCapacityError> {
        let key = instance_owner(owner);
        let (held, waits) = {
            let cache = self.inner.cache.lock();
            let Some(h) = cache.held.get(&key).cloned() else {
                if let Some((pool, address)) = cache.lost.get(&key) {
                    return Err(IpCapacityError::AddressUnavailable {
                        pool: pool.clone(),
                        address: *address,
                        detail: Some("another writer took it before it was committed".into()),
                    });
                }
                return Err(IpCapacityError::NotReserved(owner.to_owned()));
            };
            if h.committed {
                return Ok(());
            }
            let waits: Vec<Pending> = cache
                .releasing
                .values()
                .filter(|r| r.pool == h.pool)
                .map(|r| r.done.clone())
                .collect();
            (h, waits)
        };
        // A release of this pool still running in the store (this owner's earlier address,
        // or the identity's previous owner) goes first.
        futures::future::join_all(waits).await;
        let result = self
            .inner
            .allocator
            .allocate(&held.pool, &held.request(&key))
            .await;
        match result {
            Ok(a) if a.address.addr() == held.ip => {
                let still_held = {
                    let mut cache = self.inner.cache.lock();
                    match cache.held.get_mut(&key) {
                        Some(h) if h.ip == held.ip => {
                            h.committed = true;
                            true
                        }
                        _ => false,
                    }
                };
                if still_held {
                    return Ok(());
                }
                // Released while the write was under way (the pod was deleted): the store must
                // not keep what nobody holds any more.
                if let Err(e) = self.inner.allocator.release(&held.pool, &key).await {
                    tracing::warn!(owner, pool = %held.pool, error = %e,
                        "underlay capacity: cannot undo a commit released meanwhile");
                }
                Err(IpCapacityError::NotReserved(owner.to_owned()))
            }
            Ok(a) => Err(IpCapacityError::AddressUnavailable {
                pool: held.pool.clone(),
                address: held.ip,
                detail: Some(format!("the store gave `{owner}` {} instead", a.address)),
            }),
            Err(e) => {
                // Someone else took it: forget it here; the pool is re-read.
                {
                    let mut cache = self.inner.cache.lock();
                    if cache.held.get(&key).is_some_and(|h| h.ip == held.ip) {
                        cache.held.remove(&key);
                        if let Some(copy) = cache.pools.get_mut(&held.pool) {
                            let before = copy.state.state_of(held.ip);
                            copy.state.release(&key, self.inner.allocator.now_ms());
                            copy.counted(held.ip, before);
                        }
                        cache.snapshot = None;
                    }
                }
                let inner = self.inner.clone();
                let pool = held.pool.clone();
                self.inner.runtime.spawn(async move {
                    let _ = refresh_pool(&inner, &pool).await;
                });
                Err(unavailable(&held.pool, Some(held.ip), &e))
            }
        }
    }

    fn release(&self, owner: &str) {
        let key = instance_owner(owner);
        let now = self.inner.allocator.now_ms();
        let mut guard = self.inner.cache.lock();
        let cache = &mut *guard;
        cache.lost.remove(&key);
        let Some(held) = cache.held.remove(&key) else {
            return;
        };
        if let Some(copy) = cache.pools.get_mut(&held.pool) {
            let before = copy.state.state_of(held.ip);
            copy.state.release(&key, now);
            copy.counted(held.ip, before);
        }
        cache.snapshot = None;
        if !held.committed {
            return;
        }
        let allocator = self.inner.allocator.clone();
        let weak = Arc::downgrade(&self.inner);
        let pool = held.pool.clone();
        let owner_key = key.clone();
        cache.release_seq += 1;
        let seq = cache.release_seq;
        let release: BoxFuture<'static, ()> = async move {
            // Retried: until the store lets it go, the address stays taken there.
            let attempt = || allocator.release(&pool, &owner_key);
            let result = attempt
                .retry(
                    ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(50))
                        .with_max_delay(Duration::from_secs(5))
                        .with_max_times(12),
                )
                .sleep(tokio::time::sleep)
                .when(|e: &PoolError| e.is_retryable())
                .await;
            if let Err(e) = &result {
                tracing::error!(owner = %owner_key, pool, error = %e,
                    "underlay capacity: cannot release the address in the store; the pool is re-read");
            }
            if let Some(inner) = weak.upgrade() {
                {
                    let mut cache = inner.cache.lock();
                    if cache.releasing.get(&owner_key).is_some_and(|r| r.seq == seq) {
                        cache.releasing.remove(&owner_key);
                    }
                }
                if result.is_err() {
                    let _ = refresh_pool(&inner, &pool).await;
                }
            }
        }
        .boxed();
        let done = release.shared();
        cache.releasing.insert(
            key,
            Releasing {
                pool: held.pool.clone(),
                seq,
                done: done.clone(),
            },
        );
        self.inner.runtime.spawn(done);
    }
}

#[cfg(test)]
mod tests;
