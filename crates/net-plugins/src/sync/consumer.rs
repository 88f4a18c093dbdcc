//! The consumer: follows a pool store's revisions into a registry, resuming after restarts.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::Either;
use futures::{FutureExt, StreamExt};

use super::plan::{CommitGrouper, RegistryBatch, desired_entries};
use super::{RegistrySink, SyncError};
use crate::error::StoreError;
use crate::store::{PoolStore, RevisionWatch};

/// Why the registry was rebuilt from a snapshot ([`SyncReport::Resynced`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResyncReason {
    /// The registry had no checkpoint (never synced).
    NoCheckpoint,
    /// The store no longer keeps the changes after the registry's checkpoint.
    Compacted {
        /// The registry's checkpoint.
        requested: u64,
        /// The oldest revision the store could resume after.
        oldest: u64,
    },
}

/// What the sync did, for logs and progress ([`RegistrySync::on_report`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum SyncReport<'a> {
    /// The registry was replaced by a snapshot of the pools at `revision`.
    Resynced {
        /// Why.
        reason: ResyncReason,
        /// The snapshot's revision, now the checkpoint.
        revision: u64,
        /// Entries written.
        puts: usize,
        /// Entries deleted.
        deletes: usize,
    },
    /// The sync resumed the store's changes after the registry's checkpoint.
    Resumed {
        /// The checkpoint.
        after: u64,
    },
    /// One commit's changes were applied.
    Applied {
        /// The commit's revision, now the checkpoint.
        revision: u64,
        /// Entries written.
        puts: usize,
        /// Entries deleted.
        deletes: usize,
    },
    /// Something failed that may succeed later; the sync starts again (from the checkpoint)
    /// after `delay`.
    Retrying {
        /// What failed.
        error: &'a SyncError,
        /// How long it waits.
        delay: Duration,
    },
}

/// Observes [`SyncReport`]s.
pub type ReportFn = Arc<dyn Fn(&SyncReport<'_>) + Send + Sync>;

/// At most this many ready events are read before the complete commits among them are
/// applied (bounds memory when a long backlog is ready at once).
const MAX_READY: usize = 4096;

/// Keeps a [`RegistrySink`] in step with every allocation and release of a [`PoolStore`].
///
/// On start it reads the registry's checkpoint: with none (never synced), or when the store
/// has compacted the changes after it away, it replaces the registry by a
/// [`PoolStore::snapshot`] and follows [`PoolStore::watch_from`] the snapshot's revision;
/// otherwise it follows the changes after the checkpoint. Events are grouped by revision and
/// each commit is applied with its revision as the new checkpoint, in one registry write, so a
/// crash never loses the rest of a commit and a restart never applies one twice. When the
/// watch ends or anything retryable fails, it starts again from the checkpoint after an
/// exponential backoff (reset by progress); errors that need a person (a corrupt registry,
/// bad configuration, a store that cannot watch from a revision) end [`RegistrySync::run`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use rorqual_net::store::memory::MemoryStore;
/// use rorqual_net::sync::{MemoryRegistry, RegistrySink, RegistrySync};
/// use rorqual_net::{AllocRequest, Allocator, IpRange, Owner, PoolSpec};
///
/// let store = Arc::new(MemoryStore::new());
/// let registry = Arc::new(MemoryRegistry::new());
/// let alloc = Allocator::new(store.clone());
/// alloc.create_pool(PoolSpec::new("games").with_range(IpRange::new("10.9.0.0/29".parse().unwrap()))).await.unwrap();
/// alloc.allocate("games", &AllocRequest::new(Owner::new("ctr1", "eth0"))).await.unwrap();
///
/// let sync = RegistrySync::new(store, registry.clone());
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let task = tokio::spawn(async move { sync.run(async { stopped.await.ok(); }).await });
/// while registry.checkpoint().await.unwrap().is_none() {
///     tokio::task::yield_now().await;
/// }
/// let (_, entries) = registry.contents();
/// assert_eq!(entries.keys().map(ToString::to_string).collect::<Vec<_>>(), ["games/10.9.0.1"]);
/// stop.send(()).unwrap();
/// task.await.unwrap().unwrap();
/// # });
/// ```
#[derive(Clone)]
pub struct RegistrySync {
    store: Arc<dyn PoolStore>,
    sink: Arc<dyn RegistrySink>,
    backoff: ExponentialBuilder,
    report: Option<ReportFn>,
}

impl fmt::Debug for RegistrySync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySync")
            .field("store", &self.store)
            .field("sink", &self.sink)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

/// How a stretch of following ended short of an error.
enum Interrupted {
    /// The store compacted the changes right after `requested` away.
    Compacted { requested: u64, oldest: u64 },
    /// An error: start again from the checkpoint (or give up).
    Failed(SyncError),
}

impl From<SyncError> for Interrupted {
    fn from(e: SyncError) -> Self {
        Interrupted::Failed(e)
    }
}

impl RegistrySync {
    /// A sync of `store` into `sink`, retrying after 100 ms doubling up to 10 s (with jitter).
    pub fn new(store: Arc<dyn PoolStore>, sink: Arc<dyn RegistrySink>) -> Self {
        RegistrySync {
            store,
            sink,
            backoff: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(10))
                .with_jitter()
                .without_max_times(),
            report: None,
        }
    }

    /// Retries after `min`, doubling up to `max` (with jitter).
    #[must_use]
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max.max(min))
            .with_jitter()
            .without_max_times();
        self
    }

    /// Calls `report` with everything the sync does (resyncs, applied commits, retries).
    #[must_use]
    pub fn on_report(mut self, report: impl Fn(&SyncReport<'_>) + Send + Sync + 'static) -> Self {
        self.report = Some(Arc::new(report));
        self
    }

    fn report(&self, report: &SyncReport<'_>) {
        if let Some(f) = &self.report {
            f(report);
        }
    }

    /// Follows the store until `shutdown` resolves (then returns `Ok`), or until an error
    /// that retrying cannot fix (returned). Dropping it, or stopping it at any point, is safe:
    /// the registry's checkpoint moves only with the writes it covers.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<(), SyncError> {
        let work = self.run_forever();
        futures::pin_mut!(work);
        let shutdown = shutdown.boxed();
        match futures::future::select(shutdown, work).await {
            Either::Left(((), _)) => Ok(()),
            Either::Right((result, _)) => result.map(|never| match never {}),
        }
    }

    async fn run_forever(&self) -> Result<Infallible, SyncError> {
        let mut delays = self.backoff.build();
        loop {
            let mut progressed = false;
            let Err(error) = self.follow_from_checkpoint(&mut progressed).await;
            if !error.is_retryable() {
                return Err(error);
            }
            if progressed {
                delays = self.backoff.build();
            }
            // `without_max_times`: the iterator never ends; 10 s is the fallback all the same.
            let delay = delays.next().unwrap_or(Duration::from_secs(10));
            self.report(&SyncReport::Retrying {
                error: &error,
                delay,
            });
            tokio::time::sleep(delay).await;
        }
    }

    /// One session: read the checkpoint (or resync), then follow until something fails.
    async fn follow_from_checkpoint(&self, progressed: &mut bool) -> Result<Infallible, SyncError> {
        let mut at = match self.sink.checkpoint().await? {
            Some(checkpoint) => {
                self.report(&SyncReport::Resumed { after: checkpoint });
                checkpoint
            }
            None => {
                *progressed = true;
                self.resync(ResyncReason::NoCheckpoint).await?
            }
        };
        loop {
            let interrupted = match self.store.watch_from(at).await {
                Ok(stream) => {
                    let Err(interrupted) = self.follow(stream, &mut at, progressed).await;
                    interrupted
                }
                Err(StoreError::Compacted {
                    requested, oldest, ..
                }) => Interrupted::Compacted { requested, oldest },
                Err(e) => Interrupted::Failed(SyncError::store("watch_from", e)),
            };
            match interrupted {
                Interrupted::Compacted { requested, oldest } => {
                    *progressed = true;
                    at = self
                        .resync(ResyncReason::Compacted { requested, oldest })
                        .await?;
                }
                Interrupted::Failed(e) => return Err(e),
            }
        }
    }

    /// Replaces the registry by a snapshot; returns its revision.
    async fn resync(&self, reason: ResyncReason) -> Result<u64, SyncError> {
        let snapshot = self
            .store
            .snapshot()
            .await
            .map_err(|e| SyncError::store("snapshot", e))?;
        let batch = self
            .sink
            .replace(snapshot.revision, &desired_entries(&snapshot))
            .await?;
        let (puts, deletes) = batch.counts();
        self.report(&SyncReport::Resynced {
            reason,
            revision: snapshot.revision,
            puts,
            deletes,
        });
        Ok(snapshot.revision)
    }

    /// Applies the commits of `stream` one by one; `at` follows the checkpoint. Events of a
    /// commit not yet applied when the stream fails are dropped: the next session gets them
    /// again from the checkpoint.
    async fn follow(
        &self,
        mut stream: RevisionWatch,
        at: &mut u64,
        progressed: &mut bool,
    ) -> Result<Infallible, Interrupted> {
        let mut grouper = CommitGrouper::new(*at);
        loop {
            let Some(first) = stream.next().await else {
                return Err(SyncError::WatchEnded { after: *at }.into());
            };
            // Everything ready now: a commit's events arrive together, so when nothing more
            // is ready the last commit read is complete.
            let mut items = vec![first];
            let (mut complete, mut ended) = (true, false);
            while !ended {
                if items.len() >= MAX_READY {
                    complete = false;
                    break;
                }
                match stream.next().now_or_never() {
                    Some(Some(item)) => items.push(item),
                    Some(None) => ended = true,
                    None => break,
                }
            }
            for item in items {
                let event = match item {
                    Ok(event) => event,
                    Err(StoreError::Compacted {
                        requested, oldest, ..
                    }) => return Err(Interrupted::Compacted { requested, oldest }),
                    Err(e) => return Err(SyncError::store("the watch", e).into()),
                };
                if let Some(batch) = grouper.push(event)? {
                    self.apply(&batch, at, progressed).await?;
                }
            }
            if ended {
                // What is pending is dropped; the next session reads it again.
                return Err(SyncError::WatchEnded { after: *at }.into());
            }
            if complete && let Some(batch) = grouper.finish() {
                self.apply(&batch, at, progressed).await?;
            }
        }
    }

    async fn apply(
        &self,
        batch: &RegistryBatch,
        at: &mut u64,
        progressed: &mut bool,
    ) -> Result<(), SyncError> {
        self.sink.apply(batch, Some(*at)).await?;
        *at = batch.revision;
        *progressed = true;
        let (puts, deletes) = batch.counts();
        self.report(&SyncReport::Applied {
            revision: batch.revision,
            puts,
            deletes,
        });
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use parking_lot::Mutex;
    use tokio::sync::oneshot;

    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::sync::{MemoryRegistry, RegistryEntry, RegistryKey, plan::desired_entries};
    use crate::{AllocRequest, Allocator, IpRange, Owner, PoolSpec};

    /// A registry that fails every `fail_every`th apply, and records the revisions it applied.
    #[derive(Debug, Default)]
    struct Flaky {
        inner: MemoryRegistry,
        calls: AtomicUsize,
        fail_every: usize,
        applied: Mutex<Vec<u64>>,
    }

    #[async_trait]
    impl RegistrySink for Flaky {
        async fn checkpoint(&self) -> Result<Option<u64>, SyncError> {
            self.inner.checkpoint().await
        }
        async fn entries(&self) -> Result<BTreeMap<RegistryKey, RegistryEntry>, SyncError> {
            self.inner.entries().await
        }
        async fn apply(
            &self,
            batch: &RegistryBatch,
            follows: Option<u64>,
        ) -> Result<(), SyncError> {
            let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
            if self.fail_every > 0 && n.is_multiple_of(self.fail_every) {
                return Err(SyncError::Registry {
                    registry: "flaky".into(),
                    context: "apply".into(),
                    reason: "injected".into(),
                });
            }
            self.inner.apply(batch, follows).await?;
            self.applied.lock().push(batch.revision);
            Ok(())
        }
    }

    struct Running {
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<(), SyncError>>,
    }

    impl Running {
        async fn stop(self) {
            self.stop.send(()).unwrap();
            self.task.await.unwrap().unwrap();
        }
    }

    fn start(
        store: &Arc<MemoryStore>,
        sink: Arc<dyn RegistrySink>,
        log: &Arc<Mutex<Vec<String>>>,
    ) -> Running {
        let log = Arc::clone(log);
        let sync = RegistrySync::new(store.clone(), sink)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(5))
            .on_report(move |r| log.lock().push(format!("{r:?}")));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            sync.run(async {
                stopped.await.ok();
            })
            .await
        });
        Running { stop, task }
    }

    async fn wait_for(sink: &dyn RegistrySink, revision: u64) {
        for _ in 0..2000 {
            if sink
                .checkpoint()
                .await
                .unwrap()
                .is_some_and(|c| c >= revision)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the registry did not reach revision {revision}");
    }

    async fn pools(store: &Arc<MemoryStore>) -> (u64, BTreeMap<RegistryKey, RegistryEntry>) {
        let snapshot = store.snapshot().await.unwrap();
        (snapshot.revision, desired_entries(&snapshot))
    }

    /// A bounded storm of allocations and releases over two pools.
    async fn storm(alloc: &Allocator, seed: u64, ops: usize) {
        let mut rng = fastrand::Rng::with_seed(seed);
        for _ in 0..ops {
            let pool = ["a", "b"][rng.usize(0..2)];
            let owner = Owner::new(format!("c{}", rng.usize(0..20)), "eth0");
            if rng.bool() {
                let req = AllocRequest::new(owner).with_node(format!("n{}", rng.usize(0..3)));
                alloc.allocate(pool, &req).await.unwrap();
            } else {
                alloc.release(pool, &owner).await.unwrap();
            }
            // The memory store never awaits: let the sync run between operations.
            if rng.usize(0..4) == 0 {
                tokio::task::yield_now().await;
            }
        }
    }

    async fn setup() -> (Arc<MemoryStore>, Allocator) {
        let store = Arc::new(MemoryStore::new().with_change_log(64));
        let alloc = Allocator::new(store.clone());
        for (name, cidr) in [("a", "10.1.0.0/27"), ("b", "10.2.0.0/27")] {
            let spec = PoolSpec::new(name).with_range(IpRange::new(cidr.parse().unwrap()));
            alloc.create_pool(spec).await.unwrap();
        }
        (store, alloc)
    }

    #[tokio::test]
    async fn a_fresh_registry_is_resynced_then_follows_and_a_restart_resumes() {
        let (store, alloc) = setup().await;
        storm(&alloc, 1, 50).await;
        let registry = Arc::new(MemoryRegistry::new());
        let log = Arc::new(Mutex::new(Vec::new()));
        let running = start(&store, registry.clone(), &log);
        storm(&alloc, 2, 200).await;
        let (revision, desired) = pools(&store).await;
        wait_for(&*registry, revision).await;
        assert_eq!(registry.contents(), (Some(revision), desired));
        running.stop().await;
        {
            let log = log.lock();
            assert!(
                log[0].starts_with("Resynced { reason: NoCheckpoint"),
                "{log:?}"
            );
            assert!(
                log.iter().filter(|l| l.starts_with("Applied")).count() > 10,
                "{log:?}"
            );
        }

        // While it is down, fewer changes than the store's log keeps: it resumes.
        storm(&alloc, 3, 20).await;
        log.lock().clear();
        let running = start(&store, registry.clone(), &log);
        let (revision, desired) = pools(&store).await;
        wait_for(&*registry, revision).await;
        assert_eq!(registry.contents(), (Some(revision), desired));
        running.stop().await;
        let log = log.lock();
        assert!(log[0].starts_with("Resumed"), "{log:?}");
        assert!(!log.iter().any(|l| l.starts_with("Resynced")), "{log:?}");
    }

    #[tokio::test]
    async fn a_checkpoint_the_store_compacted_away_means_a_resync() {
        let (store, alloc) = setup().await;
        let registry = Arc::new(MemoryRegistry::new());
        let log = Arc::new(Mutex::new(Vec::new()));
        let running = start(&store, registry.clone(), &log);
        storm(&alloc, 4, 50).await;
        let (revision, _) = pools(&store).await;
        wait_for(&*registry, revision).await;
        running.stop().await;
        // More changes than the log's 64 events while it is down.
        storm(&alloc, 5, 300).await;
        log.lock().clear();
        let running = start(&store, registry.clone(), &log);
        let (revision, desired) = pools(&store).await;
        wait_for(&*registry, revision).await;
        assert_eq!(registry.contents(), (Some(revision), desired));
        running.stop().await;
        let log = log.lock();
        assert!(log[0].starts_with("Resumed"), "{log:?}");
        assert!(
            log[1].starts_with("Resynced { reason: Compacted"),
            "{log:?}"
        );
    }

    #[tokio::test]
    async fn failed_writes_are_retried_from_the_checkpoint_and_none_is_applied_twice() {
        let (store, alloc) = setup().await;
        let registry = Arc::new(Flaky {
            fail_every: 3,
            ..Flaky::default()
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let running = start(&store, registry.clone(), &log);
        storm(&alloc, 6, 300).await;
        let (revision, desired) = pools(&store).await;
        wait_for(&*registry, revision).await;
        assert_eq!(registry.inner.contents(), (Some(revision), desired));
        running.stop().await;
        let applied = registry.applied.lock().clone();
        assert!(applied.windows(2).all(|w| w[0] < w[1]), "{applied:?}");
        assert_eq!(applied.iter().collect::<HashSet<_>>().len(), applied.len());
        assert!(log.lock().iter().any(|l| l.starts_with("Retrying")));
    }

    #[derive(Debug)]
    struct Corrupt;

    #[async_trait]
    impl RegistrySink for Corrupt {
        async fn checkpoint(&self) -> Result<Option<u64>, SyncError> {
            Err(SyncError::CorruptCheckpoint {
                key: "/reg/.revision".into(),
                value: "twelve".into(),
                reason: "invalid digit found in string".into(),
            })
        }
        async fn entries(&self) -> Result<BTreeMap<RegistryKey, RegistryEntry>, SyncError> {
            Ok(BTreeMap::new())
        }
        async fn apply(&self, _: &RegistryBatch, _: Option<u64>) -> Result<(), SyncError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_unreadable_checkpoint_stops_the_sync_with_an_error_naming_the_key() {
        let (store, _alloc) = setup().await;
        let sync = RegistrySync::new(store, Arc::new(Corrupt));
        let err = sync.run(std::future::pending()).await.unwrap_err();
        assert!(!err.is_retryable());
        let text = err.to_string();
        assert!(
            text.contains("/reg/.revision") && text.contains("twelve"),
            "{text}"
        );
    }
}
