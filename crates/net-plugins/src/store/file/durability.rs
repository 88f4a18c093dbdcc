//! Checkpoints: the revision up to which the index is known to be on disk, and the boot it
//! was written in.
//!
//! Index files are written without syncing, so a power loss or kernel crash can lose or tear
//! the ones written since the last checkpoint (a killed process cannot: its writes are in the
//! page cache). The checkpoint (`<dir>/.checkpoint`) names a revision whose index writes were
//! flushed with `syncfs(2)`, and the boot id (`/proc/sys/kernel/random/boot_id`) of the
//! system that wrote the index since. A transaction that finds another boot id replays the
//! journal after the checkpoint over the index (every record holds the new values of the keys
//! it changed, so replaying is harmless), flushes and moves the checkpoint.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::io_error;
use crate::error::StoreError;

/// The checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Checkpoint {
    /// Every record up to this revision is in the index on disk.
    pub(super) revision: u64,
    /// The boot the index has been written in since.
    pub(super) boot: String,
}

/// This boot's id (`unknown` where the system has none: then only the last record is ever
/// replayed).
pub(super) fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn path(dir: &Path) -> PathBuf {
    dir.join(".checkpoint")
}

/// The checkpoint of the store in `dir` (`None`: none yet).
pub(super) fn read(dir: &Path) -> Result<Option<Checkpoint>, StoreError> {
    let path = path(dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(format!("cannot read {}", path.display()))(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            location: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// Flushes the file system of `dir` (every index write so far), when `fsync`.
pub(super) fn flush(dir: &Path, fsync: bool) -> Result<(), StoreError> {
    if !fsync {
        return Ok(());
    }
    File::open(dir)
        .and_then(|d| rustix::fs::syncfs(&d).map_err(std::io::Error::from))
        .map_err(io_error(format!(
            "cannot flush the file system of {}",
            dir.display()
        )))
}

/// Writes the checkpoint atomically (and durably, when `fsync`).
pub(super) fn write(dir: &Path, checkpoint: &Checkpoint, fsync: bool) -> Result<(), StoreError> {
    let path = path(dir);
    let tmp = dir.join(format!(".checkpoint.{}.tmp", std::process::id()));
    let body = serde_json::to_vec(checkpoint).map_err(|e| StoreError::Corrupt {
        location: path.display().to_string(),
        reason: format!("cannot encode: {e}"),
    })?;
    let result = (|| {
        fs::write(&tmp, &body)?;
        if fsync {
            File::open(&tmp)?.sync_data()?;
        }
        fs::rename(&tmp, &path)?;
        if fsync {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error(format!("cannot write {}", path.display()))(e)
    })
}
