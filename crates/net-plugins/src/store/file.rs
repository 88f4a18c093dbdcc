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

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{PoolStore, TxnFn, Versioned};
use crate::error::{PoolError, StoreError};
use crate::pool_state::PoolState;

/// Pools as files in a directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    fsync: bool,
}

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
        Ok(FileStore { dir, fsync: true })
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

    fn lock(&self, pool: &str) -> Result<Flock<File>, StoreError> {
        let path = self.dir.join(format!("{pool}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("cannot open lock file {}", path.display())))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| StoreError::Io {
            context: format!("cannot lock {}", path.display()),
            source: std::io::Error::from(errno),
        })
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

    async fn update(&self, pool: &str, txn: &mut TxnFn<'_>) -> Result<(), PoolError> {
        self.update_sync(pool, txn)
    }

    fn try_update_now(&self, pool: &str, txn: &mut TxnFn<'_>) -> Option<Result<(), PoolError>> {
        Some(self.update_sync(pool, txn))
    }
}
