//! The in-memory pool store (tests, embedded single-process use).
//!
//! Revisions ([`PoolStore::snapshot`], [`PoolStore::watch_from`]): every committed change
//! takes the next value of one store-wide counter. The store keeps a bounded log of the
//! changes (the last [`MemoryStore::DEFAULT_CHANGE_LOG`] events by default) from the first
//! `snapshot` or `watch_from` on, so a process that never watches pays nothing for it: before
//! that, a transaction runs in place with no copy; after, it diffs a copy of the pool
//! ([`crate::pool_state::diff`]) to log its events. A watch asked to resume before the oldest
//! logged change (or before the log started) gets [`StoreError::Compacted`], as from etcd.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::watch;

use super::{PoolStore, RevisionWatch, RevisionedEvent, StoreSnapshot, TxnFn, Versioned};
use crate::error::{PoolError, StoreError};
use crate::pool_state::{PoolState, diff};

/// Pools in memory (a sorted map: a name lookup is a few comparisons, no hashing). Transactions
/// run under one lock, in place (no copy), which is what makes it fast; see [`TxnFn`] for why
/// in-place is safe.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    /// The revision of the last logged change; wakes the [`PoolStore::watch_from`] streams.
    /// Kept outside `inner` so that the streams (which hold `inner`) end when the store drops.
    logged: watch::Sender<u64>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    pools: BTreeMap<String, (u64, PoolState)>,
    /// The store-wide revision: the number of committed changes.
    revision: u64,
    /// `None` until the first `snapshot` or `watch_from`.
    log: Option<ChangeLog>,
}

/// The last changes, for watches that resume after a revision.
#[derive(Debug)]
struct ChangeLog {
    events: VecDeque<RevisionedEvent>,
    /// The oldest revision a watch can resume after: every change after it is in `events`.
    floor: u64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// How many events the change log keeps unless told otherwise.
    pub const DEFAULT_CHANGE_LOG: usize = 65_536;

    /// An empty store.
    pub fn new() -> Self {
        MemoryStore {
            inner: Arc::default(),
            logged: watch::Sender::new(0),
            capacity: Self::DEFAULT_CHANGE_LOG,
        }
    }

    /// Keeps the last `events` events (at least one) for [`PoolStore::watch_from`] instead of
    /// [`MemoryStore::DEFAULT_CHANGE_LOG`].
    #[must_use]
    pub fn with_change_log(mut self, events: usize) -> Self {
        self.capacity = events.max(1);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // parking_lot's mutex does not poison: a panicking transaction body cannot leave a
        // half change (bodies check before they change), so the map stays usable.
        self.inner.lock()
    }

    /// Runs `txn` synchronously (the async [`PoolStore::update`] calls this).
    pub fn update_sync(&self, pool: &str, txn: &mut TxnFn<'_>) -> Result<(), PoolError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some((version, state)) = inner.pools.get_mut(pool) else {
            return Err(PoolError::NoSuchPool {
                pool: pool.to_owned(),
            });
        };
        // Only a watched store records what the change touched, to report it.
        let watched = inner.log.is_some();
        if watched {
            state.start_journal();
        }
        let result = txn(state);
        let changes = state.take_journal();
        if result? {
            *version += 1;
            let events = changes.map(|c| c.events(state));
            self.commit(inner, events.unwrap_or_default());
        }
        Ok(())
    }

    /// Takes the next revision for a committed change and logs its events (when logging).
    fn commit(&self, inner: &mut Inner, events: Vec<crate::model::AllocationEvent>) {
        inner.revision += 1;
        let revision = inner.revision;
        let Some(log) = inner.log.as_mut() else {
            return;
        };
        log.events.extend(
            events
                .into_iter()
                .map(|e| RevisionedEvent::new(revision, e)),
        );
        while log.events.len() > self.capacity {
            if let Some(dropped) = log.events.pop_front() {
                log.floor = log.floor.max(dropped.revision);
            }
        }
        self.logged.send_replace(revision);
    }

    /// Starts the change log if it has not started: watches can resume after the current
    /// revision from now on.
    fn start_log(inner: &mut Inner) -> &mut ChangeLog {
        let revision = inner.revision;
        inner.log.get_or_insert_with(|| ChangeLog {
            events: VecDeque::new(),
            floor: revision,
        })
    }
}

/// The logged events after `after`, or [`StoreError::Compacted`] when some are gone.
fn logged_after(inner: &Inner, after: u64) -> Result<Vec<RevisionedEvent>, StoreError> {
    let (events, floor) = inner
        .log
        .as_ref()
        .map_or((None, inner.revision), |l| (Some(&l.events), l.floor));
    if after < floor {
        return Err(StoreError::Compacted {
            location: "memory".to_owned(),
            requested: after,
            oldest: floor,
        });
    }
    let Some(events) = events else {
        return Ok(Vec::new());
    };
    let start = events.partition_point(|e| e.revision <= after);
    Ok(events.range(start..).cloned().collect())
}

#[async_trait]
impl PoolStore for MemoryStore {
    async fn load(&self, pool: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self.lock().pools.get(pool).map(|(v, s)| Versioned {
            state: s.clone(),
            version: *v,
        }))
    }

    async fn compare_and_swap(
        &self,
        pool: &str,
        expected: Option<u64>,
        next: Option<&PoolState>,
    ) -> Result<Option<u64>, StoreError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let current = inner.pools.get(pool);
        let found = current.map(|(v, _)| *v);
        if found != expected {
            return Err(StoreError::Conflict {
                pool: pool.to_owned(),
                expected,
                found,
            });
        }
        let events = if inner.log.is_some() {
            diff(pool, current.map(|(_, s)| s), next)
        } else {
            Vec::new()
        };
        let version = match next {
            Some(state) => {
                let version = found.map_or(1, |v| v + 1);
                inner
                    .pools
                    .insert(pool.to_owned(), (version, state.clone()));
                Some(version)
            }
            None => {
                inner.pools.remove(pool);
                None
            }
        };
        self.commit(inner, events);
        Ok(version)
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        // A BTreeMap: already sorted.
        Ok(self.lock().pools.keys().cloned().collect())
    }

    async fn update(&self, pool: &str, txn: &mut TxnFn<'_>) -> Result<(), PoolError> {
        self.update_sync(pool, txn)
    }

    fn try_update_now(&self, pool: &str, txn: &mut TxnFn<'_>) -> Option<Result<(), PoolError>> {
        Some(self.update_sync(pool, txn))
    }

    /// Every pool under the lock, at the current revision. Starts the change log.
    async fn snapshot(&self) -> Result<StoreSnapshot, StoreError> {
        let mut inner = self.lock();
        Self::start_log(&mut inner);
        let pools = inner.pools.values().map(|(_, s)| s.clone()).collect();
        Ok(StoreSnapshot::new(inner.revision, pools))
    }

    /// The logged changes after `revision`, then each new one as it commits (one commit's
    /// events are read under the lock, so they arrive together). Starts the change log: the
    /// first call can resume only after the current revision. A reader that falls more than
    /// the log's length behind gets [`StoreError::Compacted`] as its last item.
    async fn watch_from(&self, revision: u64) -> Result<RevisionWatch, StoreError> {
        let logged = self.logged.subscribe();
        {
            let mut inner = self.lock();
            Self::start_log(&mut inner);
            // Fails now rather than as the stream's first item when already too old.
            logged_after(&inner, revision)?;
        }
        let inner = Arc::clone(&self.inner);
        let stream = futures::stream::unfold(
            (inner, logged, revision, VecDeque::new(), false),
            |(inner, mut logged, mut after, mut pending, mut ended)| async move {
                loop {
                    if let Some(item) = pending.pop_front() {
                        return Some((item, (inner, logged, after, pending, ended)));
                    }
                    if ended {
                        return None;
                    }
                    // Marks the current revision seen before reading the log, so a commit
                    // after the read wakes `changed` below.
                    logged.borrow_and_update();
                    // The lock is released before awaiting.
                    let fetched = logged_after(&inner.lock(), after);
                    match fetched {
                        Ok(events) if events.is_empty() => {
                            if logged.changed().await.is_err() {
                                // The store was dropped: nothing more will commit.
                                return None;
                            }
                        }
                        Ok(events) => {
                            after = events.last().map_or(after, |e| e.revision);
                            pending.extend(events.into_iter().map(Ok));
                        }
                        Err(e) => {
                            pending.push_back(Err(e));
                            ended = true;
                        }
                    }
                }
            },
        );
        Ok(stream.boxed())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{AllocRequest, AllocationEvent, IpRange, IpState, Owner, PoolSpec};

    #[test]
    fn a_panicking_transaction_leaves_the_store_usable() {
        let store = std::sync::Arc::new(MemoryStore::new());
        let spec = PoolSpec::new("p").with_range(IpRange::new("10.0.0.0/29".parse().unwrap()));
        futures::executor::block_on(store.compare_and_swap(
            "p",
            None,
            Some(&PoolState::new(spec).unwrap()),
        ))
        .unwrap();
        let s2 = store.clone();
        let panicked = std::thread::spawn(move || {
            s2.update_sync("p", &mut |_: &mut PoolState| -> Result<bool, PoolError> {
                panic!("body fails")
            })
        })
        .join();
        assert!(panicked.is_err());
        let mut got = None;
        store
            .update_sync("p", &mut |s| {
                got = Some(
                    s.allocate(&AllocRequest::new(Owner::new("c", "eth0")), 0)?
                        .0,
                );
                Ok(true)
            })
            .unwrap();
        assert_eq!(got.unwrap().address.to_string(), "10.0.0.1/29");
    }

    fn pool(name: &str, cidr: &str) -> PoolState {
        PoolState::new(PoolSpec::new(name).with_range(IpRange::new(cidr.parse().unwrap()))).unwrap()
    }

    fn allocate(store: &MemoryStore, pool: &str, owner: &str) {
        store
            .update_sync(pool, &mut |s| {
                s.allocate(
                    &AllocRequest::new(Owner::new(owner, "eth0")).with_node("n1"),
                    0,
                )?;
                Ok(true)
            })
            .unwrap();
    }

    /// Everything the stream has ready now (it never waits inside a commit).
    fn ready(stream: &mut RevisionWatch) -> Vec<Result<RevisionedEvent, StoreError>> {
        use futures::FutureExt;
        let mut out = Vec::new();
        while let Some(Some(item)) = stream.next().now_or_never() {
            out.push(item);
        }
        out
    }

    fn moves(events: &[Result<RevisionedEvent, StoreError>]) -> Vec<(u64, String, IpState)> {
        events
            .iter()
            .map(|e| {
                let e = e.as_ref().unwrap();
                (e.revision, e.event.ip.to_string(), e.event.to)
            })
            .collect()
    }

    #[tokio::test]
    async fn watch_from_resumes_after_a_revision_with_whole_commits_and_no_duplicates() {
        let store = MemoryStore::new();
        store
            .compare_and_swap("p", None, Some(&pool("p", "10.0.0.0/29")))
            .await
            .unwrap();
        let start = store.snapshot().await.unwrap();
        assert_eq!((start.revision, start.pools.len()), (1, 1));
        let mut live = store.watch_from(start.revision).await.unwrap();
        for c in ["a", "b", "c"] {
            allocate(&store, "p", c);
        }
        // One commit releasing three owners: three events sharing revision 5.
        store
            .update_sync("p", &mut |s| {
                Ok(!s.gc(&Default::default(), 0, 10).is_empty())
            })
            .unwrap();
        allocate(&store, "p", "d");
        let all = ready(&mut live);
        let ip = |n| format!("10.0.0.{n}");
        assert_eq!(
            moves(&all),
            [
                (2, ip(1), IpState::Active),
                (3, ip(2), IpState::Active),
                (4, ip(3), IpState::Active),
                (5, ip(1), IpState::Available),
                (5, ip(2), IpState::Available),
                (5, ip(3), IpState::Available),
                (6, ip(4), IpState::Active),
            ]
        );
        let first = all[0].as_ref().unwrap();
        assert_eq!(
            first.event,
            AllocationEvent::new(
                "p",
                "10.0.0.1".parse().unwrap(),
                IpState::Available,
                IpState::Active
            )
            .with_owner(Owner::new("a", "eth0"))
            .with_node("n1")
            .with_mac(crate::Mac::generated("p", "10.0.0.1".parse().unwrap()))
        );

        // A consumer that applied revision 4 and crashed in the middle of revision 5 resumes
        // after 4: all of revision 5 again, then 6, nothing twice.
        let mut resumed = store.watch_from(4).await.unwrap();
        assert_eq!(moves(&ready(&mut resumed)), moves(&all[3..]));
        // Resuming after 5 starts at 6; after 6 there is nothing until the next commit.
        assert_eq!(
            moves(&ready(&mut store.watch_from(5).await.unwrap())),
            moves(&all[6..])
        );
        let mut idle = store.watch_from(6).await.unwrap();
        assert!(ready(&mut idle).is_empty());
        allocate(&store, "p", "e");
        let next = ready(&mut idle);
        assert_eq!(moves(&next), [(7, ip(5), IpState::Active)]);
        assert_eq!(moves(&ready(&mut live)), moves(&next));
        // The snapshot at 7 plus nothing after it is the whole state.
        let now = store.snapshot().await.unwrap();
        assert_eq!(now.revision, 7);
        assert_eq!(now.pools[0].owners().count(), 2);
    }

    #[tokio::test]
    async fn watch_from_a_revision_the_log_no_longer_holds_is_compacted() {
        let store = MemoryStore::new().with_change_log(2);
        store
            .compare_and_swap("p", None, Some(&pool("p", "10.0.0.0/29")))
            .await
            .unwrap();
        // Before the log started (revision 1): nothing after 0 was logged.
        let err = store.watch_from(0).await.err().unwrap();
        assert!(
            matches!(
                err,
                StoreError::Compacted {
                    requested: 0,
                    oldest: 1,
                    ..
                }
            ),
            "{err}"
        );
        let mut slow = store.watch_from(1).await.unwrap();
        for c in ["a", "b", "c"] {
            allocate(&store, "p", c);
        }
        // Three events, the log keeps two: revision 2's event is gone.
        let err = store.watch_from(1).await.err().unwrap();
        assert!(err.to_string().contains("after revision 1"), "{err}");
        assert!(store.watch_from(2).await.is_ok());
        // A reader that fell behind gets Compacted as its last item (then the stream ends).
        let item = slow.next().await;
        assert!(
            matches!(item, Some(Err(StoreError::Compacted { oldest: 2, .. }))),
            "{item:?}"
        );
        assert!(slow.next().await.is_none());
    }

    #[tokio::test]
    async fn a_watch_waits_for_the_next_commit_and_ends_with_the_store() {
        let store = Arc::new(MemoryStore::new());
        store
            .compare_and_swap("p", None, Some(&pool("p", "10.0.0.0/29")))
            .await
            .unwrap();
        let mut watch = store.watch_from(1).await.unwrap();
        let writer = Arc::clone(&store);
        let task = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            allocate(&writer, "p", "a");
        });
        let got = watch.next().await.unwrap().unwrap();
        assert_eq!((got.revision, got.event.to), (2, IpState::Active));
        task.await.unwrap();
        drop(store);
        assert!(watch.next().await.is_none());
    }
}
