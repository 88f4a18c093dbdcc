//! The file store: one host, safe across concurrent processes.
//!
//! Each pool is one compact state file `<dir>/<pool>.json` (`{"version":N,"state":{...}}`)
//! holding only the addresses that are not Available, beside a lock file `<dir>/<pool>.lock`.
//! A transaction takes an exclusive `flock` on the lock file, reads the state file once,
//! applies the change in memory, writes a temporary file, `fdatasync`s it, renames it over the
//! state file and `fsync`s the directory. Per operation the store reads and writes one small
//! file: no directory scan and no per-address files (host-local opens every file).
//!
//! # Guarantees
//!
//! In both modes ([`FileStore::with_fsync`]):
//! - Readers never see a half-written file: the new state is written to a temporary file and
//!   renamed over the old one (rename is atomic).
//! - A process killed at any point (`kill -9`) leaves the old state or the new one, never a
//!   mix, and its lock is released with its file descriptor.
//! - An unreadable, truncated or foreign state file is an error naming the file; it is never
//!   overwritten.
//!
//! With `fsync` on (the default), a transaction that returned success is durable: the new
//! file's data is on disk before the rename (`fdatasync`), and the rename itself is on disk
//! before the transaction returns (`fsync` of the directory). A power loss or kernel crash at
//! any point leaves the last committed state or an earlier complete one committed before it
//! (never a half-written file).
//!
//! With `fsync` off, the kill and atomicity guarantees above still hold, but after a power loss
//! or kernel crash the file system may come back with an older complete state (the last few
//! seconds of changes lost; on some file systems without `auto_da_alloc`-style ordering, a
//! renamed file whose data never reached the disk). host-local, which never syncs, gives no
//! more than this.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::{PoolStore, TxnFn, Versioned, WatchStream};
use crate::error::{PoolError, StoreError};
use crate::model::AllocationEvent;
use crate::pool_state::{PoolState, diff};

/// Pools as files in a directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    fsync: bool,
    watch_interval: Duration,
}

/// How long after its modification time a state file's stamp is trusted (see [`Stamp`]). File
/// systems take modification times from a coarse clock (a jiffy on ext4, 1 s on ext3 and
/// HFS+); this is twice the coarsest.
const SETTLE: Duration = Duration::from_secs(2);

/// How a watch recognises an unchanged state file without reading it: every write renames a
/// new file into place, so its inode, modification time or size usually changes. Not always:
/// inode numbers are reused (ext4 alternates two), the modification time is coarse and one
/// write can keep the size, so two writes within one clock tick can leave all three as they
/// were. Only a stamp taken when the file was settled (not modified within [`SETTLE`] before)
/// proves that a file with the same stamp is unchanged: any later write gets a later
/// modification time. A watch reads a file whose stamp was not settled on every poll (diffing
/// an unchanged state yields nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    mtime: SystemTime,
    len: u64,
}

/// The stamp of `path` and whether it is settled.
fn stamp(path: &Path) -> Option<(Stamp, bool)> {
    let m = fs::metadata(path).ok()?;
    let mtime = m.modified().ok()?;
    // Taken after the stat; a modification time later than this (a clock set back) is not
    // settled either.
    let settled = SystemTime::now()
        .duration_since(mtime)
        .is_ok_and(|age| age > SETTLE);
    let stamp = Stamp {
        ino: m.ino(),
        mtime,
        len: m.len(),
    };
    Some((stamp, settled))
}

/// What a watch last saw of one pool.
#[derive(Debug, Default)]
struct SeenPool {
    /// The state file's stamp when it was last read, and whether it was settled then.
    stamp: Option<(Stamp, bool)>,
    /// The state last read.
    state: Option<PoolState>,
    /// Whether that last read failed (its error was reported).
    failed: bool,
}

/// What a watch last saw of each pool.
type Seen = BTreeMap<String, SeenPool>;

#[derive(Serialize)]
struct DocRef<'a> {
    version: u64,
    state: &'a PoolState,
}

#[derive(Deserialize)]
struct Doc {
    version: u64,
    state: PoolState,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

impl FileStore {
    /// A store in `dir` (created when missing).
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileStore, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io(format!(
            "cannot create pool store directory {}",
            dir.display()
        )))?;
        Ok(FileStore {
            dir,
            fsync: true,
            watch_interval: Duration::from_millis(100),
        })
    }

    /// How often a [`PoolStore::watch`] stream looks at the state files (default 100 ms). A
    /// poll costs one `stat` per pool and reads only the files that changed or were written in
    /// the last 2 s (whose modification time cannot tell two writes apart); changes made
    /// between two polls arrive as their net effect (an address allocated and released in
    /// between is not reported).
    #[must_use]
    pub fn with_watch_interval(mut self, interval: Duration) -> Self {
        self.watch_interval = interval;
        self
    }

    /// Whether writes are `fsync`ed (default `true`). Without it a write is still atomic for
    /// other processes (write, then rename) and survives a killed process, but a power loss may
    /// lose the latest changes, as with host-local, which never syncs. On a disk where one
    /// `fsync` costs milliseconds, turning it off is most of the per-operation cost.
    #[must_use]
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self, pool: &str) -> PathBuf {
        self.dir.join(format!("{pool}.json"))
    }

    /// Takes the pool's exclusive lock: held until the returned file is dropped (closed).
    /// `File::lock` is `flock(LOCK_EX)` on Linux, the lock earlier versions took with `nix`, so
    /// old and new `rorqual-ipam` binaries sharing a directory still exclude each other.
    fn lock(&self, pool: &str) -> Result<File, StoreError> {
        let path = self.lock_path(pool);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("cannot open lock file {}", path.display())))?;
        file.lock()
            .map_err(io(format!("cannot lock {}", path.display())))?;
        Ok(file)
    }

    /// The lock file of `pool` (`<dir>/<pool>.lock`): a process that holds an exclusive
    /// `flock` on it (`File::lock`) keeps every transaction on the pool waiting.
    pub fn lock_path(&self, pool: &str) -> PathBuf {
        self.dir.join(format!("{pool}.lock"))
    }

    fn read(&self, pool: &str) -> Result<Option<Versioned>, StoreError> {
        let path = self.state_path(pool);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(format!("cannot open {}", path.display()))(e)),
        };
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)
            .map_err(io(format!("cannot read {}", path.display())))?;
        let doc: Doc = serde_json::from_slice(&buf).map_err(|e| StoreError::Corrupt {
            location: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if doc.state.name() != pool {
            return Err(StoreError::Corrupt {
                location: path.display().to_string(),
                reason: format!("it holds pool `{}`", doc.state.name()),
            });
        }
        Ok(Some(Versioned {
            state: doc.state,
            version: doc.version,
        }))
    }

    fn write(&self, pool: &str, version: u64, state: Option<&PoolState>) -> Result<(), StoreError> {
        let path = self.state_path(pool);
        match state {
            None => match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("cannot remove {}", path.display()))(e)),
            },
            Some(state) => {
                let tmp = self
                    .dir
                    .join(format!(".{pool}.json.{}.tmp", std::process::id()));
                let body = serde_json::to_vec(&DocRef { version, state }).map_err(|e| {
                    StoreError::Corrupt {
                        location: path.display().to_string(),
                        reason: format!("cannot encode: {e}"),
                    }
                })?;
                let result = (|| {
                    let mut f = File::create(&tmp)?;
                    f.write_all(&body)?;
                    if self.fsync {
                        // fdatasync: the data and the size of the new file (what a later read
                        // needs); its timestamps can stay behind. The rename below then swaps
                        // in a complete file.
                        f.sync_data()?;
                    }
                    fs::rename(&tmp, &path)
                })();
                if let Err(e) = result {
                    let _ = fs::remove_file(&tmp);
                    return Err(io(format!("cannot write {}", path.display()))(e));
                }
            }
        }
        if !self.fsync {
            return Ok(());
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("cannot sync directory {}", self.dir.display())))
    }

    fn list_sync(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(io(format!(
            "cannot list pool store directory {}",
            self.dir.display()
        )))?;
        for entry in entries {
            let entry = entry.map_err(io(format!("cannot list {}", self.dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pool) = name.strip_suffix(".json")
                && !pool.starts_with('.')
            {
                names.push(pool.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// One watch poll: the changes since `seen`, which it brings up to date. A file that
    /// cannot be read is reported once per change of the file.
    fn poll_changes(&self, seen: &mut Seen) -> Vec<Result<AllocationEvent, StoreError>> {
        let names = match self.list_sync() {
            Ok(names) => names,
            Err(e) => return vec![Err(e)],
        };
        let mut out = Vec::new();
        let gone: Vec<String> = seen
            .keys()
            .filter(|k| names.binary_search(k).is_err())
            .cloned()
            .collect();
        for pool in gone {
            if let Some(SeenPool {
                state: Some(old), ..
            }) = seen.remove(&pool)
            {
                out.extend(diff(&pool, Some(&old), None).into_iter().map(Ok));
            }
        }
        for pool in names {
            let now = stamp(&self.state_path(&pool));
            let then = seen.remove(&pool).unwrap_or_default();
            let same = now.is_some() && now.map(|s| s.0) == then.stamp.map(|s| s.0);
            if same && then.stamp.is_some_and(|s| s.1) {
                seen.insert(pool, then);
                continue;
            }
            match self.read(&pool) {
                Ok(v) => {
                    let new = v.map(|v| v.state);
                    let old = then.state.as_ref();
                    out.extend(diff(&pool, old, new.as_ref()).into_iter().map(Ok));
                    let seen_pool = SeenPool {
                        stamp: now,
                        state: new,
                        failed: false,
                    };
                    seen.insert(pool, seen_pool);
                }
                Err(e) => {
                    // Re-read while the stamp is not settled, but reported once.
                    if !(same && then.failed) {
                        out.push(Err(e));
                    }
                    let seen_pool = SeenPool {
                        stamp: now,
                        failed: true,
                        ..then
                    };
                    seen.insert(pool, seen_pool);
                }
            }
        }
        out
    }

    /// Runs `txn` under the pool's lock (synchronously; the async trait calls this).
    pub fn update_sync(&self, pool: &str, txn: &mut TxnFn<'_>) -> Result<(), PoolError> {
        let _guard = self.lock(pool).map_err(|e| PoolError::store(pool, e))?;
        let Some(mut current) = self.read(pool).map_err(|e| PoolError::store(pool, e))? else {
            return Err(PoolError::NoSuchPool {
                pool: pool.to_owned(),
            });
        };
        if txn(&mut current.state)? {
            self.write(pool, current.version + 1, Some(&current.state))
                .map_err(|e| PoolError::store(pool, e))?;
        }
        Ok(())
    }
}

/// The result of one watch poll: the store and what it saw, back, with the changes.
type Polled = (FileStore, Seen, Vec<Result<AllocationEvent, StoreError>>);

/// [`FileStore::poll_changes`] on tokio's blocking threads (it lists the directory, stats and
/// reads files), so a slow disk does not hold up an async worker.
async fn poll_blocking(store: FileStore, mut seen: Seen) -> Result<Polled, StoreError> {
    let dir = store.dir.clone();
    tokio::task::spawn_blocking(move || {
        let changes = store.poll_changes(&mut seen);
        (store, seen, changes)
    })
    .await
    .map_err(|e| StoreError::Io {
        context: format!("the watch poll of pool store {} failed", dir.display()),
        source: std::io::Error::other(e),
    })
}

#[async_trait]
impl PoolStore for FileStore {
    async fn load(&self, pool: &str) -> Result<Option<Versioned>, StoreError> {
        self.read(pool)
    }

    async fn compare_and_swap(
        &self,
        pool: &str,
        expected: Option<u64>,
        next: Option<&PoolState>,
    ) -> Result<Option<u64>, StoreError> {
        let _guard = self.lock(pool)?;
        let found = self.read(pool)?.map(|v| v.version);
        if found != expected {
            return Err(StoreError::Conflict {
                pool: pool.to_owned(),
                expected,
                found,
            });
        }
        let version = found.map_or(1, |v| v + 1);
        self.write(pool, version, next)?;
        Ok(next.map(|_| version))
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        self.list_sync()
    }

    /// Polls the state files every [`FileStore::with_watch_interval`] (needs a tokio runtime
    /// with timers; the polls run on its blocking threads) and reports what changed since the
    /// last poll, whichever process wrote it. Should a poll panic, its error is the stream's
    /// last item.
    async fn watch(&self) -> Result<WatchStream, StoreError> {
        // The starting point is every pool as it is now; only unreadable files are reported.
        let (store, seen, first) = poll_blocking(self.clone(), Seen::new()).await?;
        let pending: VecDeque<_> = first.into_iter().filter(Result::is_err).collect();
        let stream = futures::stream::unfold(Some((store, seen, pending)), |state| async move {
            let (mut store, mut seen, mut pending) = state?;
            loop {
                if let Some(item) = pending.pop_front() {
                    return Some((item, Some((store, seen, pending))));
                }
                tokio::time::sleep(store.watch_interval).await;
                match poll_blocking(store, seen).await {
                    Ok((s, n, changes)) => {
                        (store, seen) = (s, n);
                        pending.extend(changes);
                    }
                    Err(e) => return Some((Err(e), None)),
                }
            }
        });
        Ok(stream.boxed())
    }

    async fn update(&self, pool: &str, txn: &mut TxnFn<'_>) -> Result<(), PoolError> {
        self.update_sync(pool, txn)
    }

    fn try_update_now(&self, pool: &str, txn: &mut TxnFn<'_>) -> Option<Result<(), PoolError>> {
        Some(self.update_sync(pool, txn))
    }
}
