//! The file store: one host, safe across concurrent processes, with a per-address index so
//! that one allocation or release costs the same in a pool of ten addresses or of a million.
//!
//! # On disk
//!
//! ```text
//! <dir>/.store.lock              flock: every transaction of the store
//! <dir>/<pool>.lock              flock: every transaction of the pool (taken first; old
//!                                rorqual-ipam binaries take it too)
//! <dir>/journal/<rev>.log        the change journal: every commit as one framed record,
//!                                segments named by their first revision
//! <dir>/.checkpoint              the revision up to which the index is flushed, and the boot
//! <dir>/<pool>.pool/             the pool's index: meta.json (spec), head.json (version,
//!                                cursor), ip/<address>, owner/<container>+<ifname>,
//!                                claim/=<identity>, one small JSON file each
//! <dir>/<pool>.json              a stub that older rorqual-ipam binaries refuse
//! ```
//!
//! A transaction takes both locks, then reads only what it needs: the spec, the cursor and
//! the owner, identity and address the operation names ([`crate::store::TxnKeys`]); the
//! pool's own rules ([`PoolState`]) run on that view (see `view.rs` for why that gives the
//! decision the whole pool would). It commits by appending one record to the journal (the new
//! value of every key it changed, and its events) and `fdatasync`ing it, then writes the
//! changed index files in place and marks the record applied. Operations that need the whole
//! pool (transfer, GC, reads of the whole pool) read every file of it.
//!
//! # Guarantees
//!
//! - A process killed at any point (`kill -9`) leaves its commit either not in the journal
//!   (the torn tail of a record is cut off) or in it; the next transaction applies a last
//!   record not marked applied again before anything else (applying a record twice is
//!   harmless), so readers never see a half-applied commit, and its locks go with its file
//!   descriptors.
//! - With `fsync` on (the default), a transaction that returned success is durable: its
//!   record was `fdatasync`ed. Index files are not synced: after a reboot (a new boot id)
//!   the first transaction replays the journal after the last checkpoint over the index. A
//!   checkpoint (every 1/8 of the kept changes, at most 10,000 commits) flushes the file
//!   system (`syncfs`) first, so the index up to it survived any crash.
//! - With `fsync` off, the kill guarantees hold, but after a power loss or kernel crash the
//!   journal may have lost its last records (and the index may be ahead of it), as with
//!   host-local, which never syncs.
//! - An unreadable index file, journal frame or checkpoint is an error naming the file; it
//!   is never overwritten.
//! - Each commit has the next store revision. The journal keeps at least the last 100,000
//!   ([`FileStore::with_journal_retention`]): [`PoolStore::watch_from`] delivers every commit
//!   after a revision once, in order, and [`PoolStore::snapshot`] reads every pool at one
//!   revision under the lock.
//!
//! Pools in the old single-file format (`<pool>.json`) are migrated by [`FileStore::open`]
//! (see `migrate.rs`), which leaves a stub `<pool>.json` that older `rorqual-ipam` binaries
//! refuse with an error naming it; a pool created by this store gets the same stub, so an
//! older binary never starts a second copy of it.

mod durability;
mod index;
mod journal;
mod migrate;
mod record;
mod view;
mod watch;

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use super::{PoolStore, RevisionWatch, StoreSnapshot, TxnFn, TxnKeys, Versioned, WatchStream};
use crate::error::{PoolError, StoreError};
use crate::model::AllocationEvent;
use crate::pool_state::{PoolState, diff};
use durability::Checkpoint;
use index::Index;
use journal::{Active, Journal};
use record::{PoolChange, Record};
use view::View;
use watch::JournalReader;

/// How many changes the journal keeps unless told otherwise.
pub const DEFAULT_JOURNAL_RETENTION: u64 = 100_000;

/// How often a view may grow (an allocation walking past addresses taken by other processes)
/// before the transaction reads the whole pool instead.
const MAX_VIEW_ROUNDS: usize = 64;

/// Pools as files in a directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    fsync: bool,
    watch_interval: Duration,
    retention: u64,
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

/// A transaction's hold on the store: the locks, the journal's open segment and the
/// checkpoint.
#[derive(Debug)]
struct Locked {
    _pool_lock: Option<File>,
    _store_lock: File,
    active: Active,
    checkpoint: Checkpoint,
}

fn flock(path: &Path) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_error(format!(
            "cannot open lock file {}",
            path.display()
        )))?;
    file.lock()
        .map_err(io_error(format!("cannot lock {}", path.display())))?;
    Ok(file)
}

fn decode(location: &Path, revision: u64, payload: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(payload).map_err(|e| StoreError::Corrupt {
        location: format!("{} (revision {revision})", location.display()),
        reason: e.to_string(),
    })
}

impl FileStore {
    /// A store in `dir` (created when missing). Pools in the old single-file format are
    /// migrated here, each under its lock.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileStore, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_error(format!(
            "cannot create pool store directory {}",
            dir.display()
        )))?;
        let store = FileStore {
            dir,
            fsync: true,
            watch_interval: Duration::from_millis(100),
            retention: DEFAULT_JOURNAL_RETENTION,
        };
        migrate::migrate_all(&store)?;
        Ok(store)
    }

    /// How often watch streams ([`PoolStore::watch`], [`PoolStore::watch_from`]) look at the
    /// journal for new records (default 100 ms).
    #[must_use]
    pub fn with_watch_interval(mut self, interval: Duration) -> Self {
        self.watch_interval = interval;
        self
    }

    /// Whether commits are `fsync`ed (default `true`). Without it a commit is still atomic for
    /// other processes and survives a killed process, but a power loss may lose the latest
    /// changes, as with host-local, which never syncs.
    #[must_use]
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// How many changes (revisions) the journal keeps at least (default
    /// [`DEFAULT_JOURNAL_RETENTION`]): a [`PoolStore::watch_from`] further behind gets
    /// [`StoreError::Compacted`]. The journal is kept in segments of an eighth of this (at
    /// most 10,000 commits), each ending with a checkpoint.
    #[must_use]
    pub fn with_journal_retention(mut self, changes: u64) -> Self {
        self.retention = changes.max(1);
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock file of `pool` (`<dir>/<pool>.lock`): a process that holds an exclusive
    /// `flock` on it (`File::lock`) keeps every transaction on the pool waiting.
    pub fn lock_path(&self, pool: &str) -> PathBuf {
        self.dir.join(format!("{pool}.lock"))
    }

    fn index(&self) -> Index {
        Index::new(self.dir.clone())
    }

    fn journal(&self) -> Journal {
        Journal::new(self.dir.join("journal"))
    }

    fn segment_records(&self) -> u64 {
        (self.retention / 8).clamp(1, 10_000)
    }

    /// Takes the locks and brings the index up to the journal: applies a last record its
    /// writer did not mark applied, and replays after the checkpoint after a reboot.
    fn begin(&self, pool: Option<&str>) -> Result<Locked, StoreError> {
        let pool_lock = pool.map(|p| flock(&self.lock_path(p))).transpose()?;
        let store_lock = flock(&self.dir.join(".store.lock"))?;
        let checkpoint = durability::read(&self.dir)?;
        let base = checkpoint.as_ref().map_or(0, |c| c.revision);
        let mut active = self.journal().open_active(base)?;
        if let Some(tail) = active.tail.clone().filter(|t| !t.applied) {
            let record = decode(&active.path, tail.revision, &tail.payload)?;
            for change in &record.pools {
                self.index().apply(change, tail.revision)?;
            }
            active.mark_applied(tail.offset)?;
        }
        let boot = durability::boot_id();
        let checkpoint = match checkpoint {
            Some(c) if c.boot == boot => c,
            other => {
                let from = other.map_or(0, |c| c.revision);
                if from < active.head {
                    self.replay(from, active.head)?;
                    durability::flush(&self.dir, self.fsync)?;
                }
                let c = Checkpoint {
                    revision: active.head,
                    boot,
                };
                durability::write(&self.dir, &c, self.fsync)?;
                c
            }
        };
        Ok(Locked {
            _pool_lock: pool_lock,
            _store_lock: store_lock,
            active,
            checkpoint,
        })
    }

    /// Applies the records after `from` up to `head` to the index again.
    fn replay(&self, from: u64, head: u64) -> Result<(), StoreError> {
        let mut reader = JournalReader::new(self.journal(), from, false);
        let index = self.index();
        loop {
            let next = reader.next_record().map_err(|e| match e {
                StoreError::Compacted { oldest, .. } => StoreError::Corrupt {
                    location: self.dir.join(".checkpoint").display().to_string(),
                    reason: format!(
                        "it names revision {from}, but the journal starts after {oldest}"
                    ),
                },
                e => e,
            })?;
            let Some((revision, record)) = next else {
                return Ok(());
            };
            if revision > head {
                return Ok(());
            }
            for change in &record.pools {
                index.apply(change, revision)?;
            }
        }
    }

    /// Commits one pool's change: journal record (durable when `fsync`), index, applied mark;
    /// starts a new journal segment (with a checkpoint) when the current one is full.
    fn commit(
        &self,
        locked: &mut Locked,
        change: PoolChange,
        events: Vec<AllocationEvent>,
    ) -> Result<u64, StoreError> {
        let revision = locked.active.head + 1;
        let record = Record {
            pools: vec![change],
            events,
        };
        let payload = serde_json::to_vec(&record).map_err(|e| StoreError::Corrupt {
            location: locked.active.path.display().to_string(),
            reason: format!("cannot encode revision {revision}: {e}"),
        })?;
        let offset = locked.active.append(revision, &payload, self.fsync)?;
        for change in &record.pools {
            self.index().apply(change, revision)?;
        }
        locked.active.mark_applied(offset)?;
        if locked.active.records() >= self.segment_records() {
            self.rotate(locked)?;
        }
        Ok(revision)
    }

    /// Checkpoint, new segment, trim.
    fn rotate(&self, locked: &mut Locked) -> Result<(), StoreError> {
        durability::flush(&self.dir, self.fsync)?;
        let head = locked.active.head;
        let checkpoint = Checkpoint {
            revision: head,
            boot: locked.checkpoint.boot.clone(),
        };
        durability::write(&self.dir, &checkpoint, self.fsync)?;
        locked.checkpoint = checkpoint;
        let journal = self.journal();
        locked.active = journal.start_segment(head, self.fsync)?;
        journal.trim(head, head, self.retention)
    }

    /// Runs `txn` on the whole pool, under `locked`.
    fn update_locked(
        &self,
        locked: &mut Locked,
        pool: &str,
        txn: &mut TxnFn<'_>,
    ) -> Result<(), PoolError> {
        let fail = |e| PoolError::store(pool, e);
        let Some((before, _)) = self.index().load_pool(pool).map_err(fail)? else {
            return Err(PoolError::NoSuchPool {
                pool: pool.to_owned(),
            });
        };
        let mut after = before.clone();
        if !txn(&mut after)? {
            return Ok(());
        }
        if let Some(change) = PoolChange::between(pool, Some(&before), Some(&after)) {
            let events = diff(pool, Some(&before), Some(&after));
            self.commit(locked, change, events).map_err(fail)?;
        }
        Ok(())
    }

    /// Runs `txn` on the whole pool under the locks (synchronously; the async trait calls
    /// this). Reads every file of the pool: the hot operations use
    /// [`FileStore::update_keys_sync`].
    pub fn update_sync(&self, pool: &str, txn: &mut TxnFn<'_>) -> Result<(), PoolError> {
        let mut locked = self
            .begin(Some(pool))
            .map_err(|e| PoolError::store(pool, e))?;
        self.update_locked(&mut locked, pool, txn)
    }

    /// Runs `txn` under the locks on a view of the pool holding the keys it reads
    /// ([`PoolStore::try_update_keys`]); an error of the body is confirmed on the whole pool.
    pub fn update_keys_sync(
        &self,
        pool: &str,
        keys: &TxnKeys,
        txn: &mut TxnFn<'_>,
    ) -> Result<(), PoolError> {
        let fail = |e| PoolError::store(pool, e);
        let mut locked = self.begin(Some(pool)).map_err(fail)?;
        let index = self.index();
        let Some(meta) = index.read_meta(pool).map_err(fail)? else {
            return Err(PoolError::NoSuchPool {
                pool: pool.to_owned(),
            });
        };
        let head = index.read_head(pool).map_err(fail)?;
        let mut view = View::read(&index, pool, meta.spec, head.cursor, keys).map_err(fail)?;
        for _ in 0..MAX_VIEW_ROUNDS {
            let before = view.state().map_err(fail)?;
            let mut after = before.clone();
            match txn(&mut after) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                // Whatever the view lacked cannot have caused an error the whole pool would
                // not: but the error's figures (usage) come from the whole pool.
                Err(_) => return self.update_locked(&mut locked, pool, txn),
            }
            let Some(change) = PoolChange::between(pool, Some(&before), Some(&after)) else {
                return Ok(());
            };
            if view.read_written(&change).map_err(fail)? {
                continue;
            }
            let events = diff(pool, Some(&before), Some(&after));
            self.commit(&mut locked, change, events).map_err(fail)?;
            return Ok(());
        }
        self.update_locked(&mut locked, pool, txn)
    }

    fn load_sync(&self, pool: &str) -> Result<Option<Versioned>, StoreError> {
        let _locked = self.begin(None)?;
        Ok(self
            .index()
            .load_pool(pool)?
            .map(|(state, version)| Versioned { state, version }))
    }

    fn cas_sync(
        &self,
        pool: &str,
        expected: Option<u64>,
        next: Option<&PoolState>,
    ) -> Result<Option<u64>, StoreError> {
        let mut locked = self.begin(Some(pool))?;
        let index = self.index();
        let found = match index.read_meta(pool)? {
            Some(_) => Some(index.read_head(pool)?.version),
            None => None,
        };
        if found != expected {
            return Err(StoreError::Conflict {
                pool: pool.to_owned(),
                expected,
                found,
            });
        }
        let before = match found {
            Some(_) => index.load_pool(pool)?.map(|(s, _)| s),
            None => None,
        };
        if before.is_none() && next.is_none() {
            return Ok(None);
        }
        let Some(change) = PoolChange::between(pool, before.as_ref(), next) else {
            return Ok(found);
        };
        let events = diff(pool, before.as_ref(), next);
        let created = before.is_none();
        let revision = self.commit(&mut locked, change, events)?;
        if created {
            // An older binary sharing the directory must not start the pool afresh in a
            // `<pool>.json` of its own: it finds this stub and refuses it.
            migrate::write_stub(self, pool)?;
        }
        Ok(next.map(|_| revision))
    }

    fn list_sync(&self) -> Result<Vec<String>, StoreError> {
        let _locked = self.begin(None)?;
        self.index().list()
    }

    fn snapshot_sync(&self) -> Result<StoreSnapshot, StoreError> {
        let locked = self.begin(None)?;
        let index = self.index();
        let mut pools = Vec::new();
        for name in index.list()? {
            if let Some((state, _)) = index.load_pool(&name)? {
                pools.push(state);
            }
        }
        Ok(StoreSnapshot::new(locked.active.head, pools))
    }

    /// The newest revision.
    fn head_sync(&self) -> Result<u64, StoreError> {
        Ok(self.begin(None)?.active.head)
    }
}

#[async_trait]
impl PoolStore for FileStore {
    async fn load(&self, pool: &str) -> Result<Option<Versioned>, StoreError> {
        self.load_sync(pool)
    }

    async fn compare_and_swap(
        &self,
        pool: &str,
        expected: Option<u64>,
        next: Option<&PoolState>,
    ) -> Result<Option<u64>, StoreError> {
        self.cas_sync(pool, expected, next)
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        self.list_sync()
    }

    async fn update(&self, pool: &str, txn: &mut TxnFn<'_>) -> Result<(), PoolError> {
        self.update_sync(pool, txn)
    }

    fn try_update_now(&self, pool: &str, txn: &mut TxnFn<'_>) -> Option<Result<(), PoolError>> {
        Some(self.update_sync(pool, txn))
    }

    fn try_update_keys(
        &self,
        pool: &str,
        keys: &TxnKeys,
        txn: &mut TxnFn<'_>,
    ) -> Option<Result<(), PoolError>> {
        Some(self.update_keys_sync(pool, keys, txn))
    }

    /// Follows the journal from the newest revision (needs a tokio runtime with timers; the
    /// polls run on its blocking threads): the events of every commit after this returns, by
    /// any process. An error (a journal compacted past a reader that fell more than the
    /// retention behind, a corrupt record) is the stream's last item.
    async fn watch(&self) -> Result<WatchStream, StoreError> {
        let head = self.head_sync()?;
        Ok(watch::revision_stream(self, head)
            .map(|item| item.map(|r| r.event))
            .boxed())
    }

    async fn snapshot(&self) -> Result<StoreSnapshot, StoreError> {
        self.snapshot_sync()
    }

    /// Polls the journal like [`PoolStore::watch`], from `revision` on.
    async fn watch_from(&self, revision: u64) -> Result<RevisionWatch, StoreError> {
        if let Some(oldest) = self.journal().oldest()?
            && revision < oldest
        {
            return Err(StoreError::Compacted {
                location: self.journal().dir().display().to_string(),
                requested: revision,
                oldest,
            });
        }
        Ok(watch::revision_stream(self, revision))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{AllocRequest, IpRange, Owner, PoolSpec};

    #[test]
    fn a_commit_whose_writer_died_before_applying_it_is_applied_by_the_next_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap().with_fsync(false);
        let spec = PoolSpec::new("p").with_range(IpRange::new("10.0.0.0/29".parse().unwrap()));
        let empty = PoolState::new(spec).unwrap();
        store.cas_sync("p", None, Some(&empty)).unwrap();
        // A writer that appended its record and was killed before it touched the index.
        let ghost = Owner::new("ghost", "eth0");
        let mut locked = store.begin(Some("p")).unwrap();
        let (before, _) = store.index().load_pool("p").unwrap().unwrap();
        let mut after = before.clone();
        after
            .allocate(&AllocRequest::new(ghost.clone()), 0)
            .unwrap();
        let record = Record {
            pools: vec![PoolChange::between("p", Some(&before), Some(&after)).unwrap()],
            events: diff("p", Some(&before), Some(&after)),
        };
        let revision = locked.active.head + 1;
        let payload = serde_json::to_vec(&record).unwrap();
        locked.active.append(revision, &payload, false).unwrap();
        drop(locked);
        assert!(!dir.path().join("p.pool/owner/ghost+eth0").exists());
        // The next transaction (a read here) applies it first.
        let v = store.load_sync("p").unwrap().unwrap();
        assert_eq!(v.version, revision);
        let held = v.state.lookup(&ghost).unwrap().address;
        // And an allocation after it does not hand that address out again.
        let b = Owner::new("b", "eth0");
        let mut got = None;
        store
            .update_keys_sync("p", &TxnKeys::new().with_owner(b.clone()), &mut |s| {
                got = Some(s.allocate(&AllocRequest::new(b.clone()), 0)?.0);
                Ok(true)
            })
            .unwrap();
        assert_ne!(got.unwrap().address, held);
    }
}
