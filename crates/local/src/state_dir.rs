//! The state directory: a format marker, an exclusive lock and atomic JSON files.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use rorqual_core::error::{Error, Result};

/// The marker file that makes a directory a LocalEngine state directory.
pub(crate) const MARKER: &str = "rorqual-state.json";
/// The controller state store.
pub(crate) const STORE_FILE: &str = "store.json";
const LOCK_FILE: &str = "lock";
const FORMAT: &str = "rorqual-local-state";
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    format: String,
    version: u32,
}

fn corrupt(location: &Path, reason: impl Into<String>) -> Error {
    Error::CorruptState {
        location: location.display().to_string(),
        reason: reason.into(),
    }
}

/// Opens (creating it when missing or empty) and locks a state directory. A directory with
/// other files but no marker, a bad marker, or one locked by another engine is refused;
/// nothing is ever removed.
pub(crate) fn open_dir(dir: &Path) -> Result<Flock<File>> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::io(
            format!("cannot create state directory {}", dir.display()),
            e,
        )
    })?;
    let marker_path = dir.join(MARKER);
    let fresh = match std::fs::read(&marker_path) {
        Ok(bytes) => {
            let marker: Marker = serde_json::from_slice(&bytes).map_err(|e| {
                corrupt(
                    &marker_path,
                    format!("not a rorqual state marker (invalid JSON: {e})"),
                )
            })?;
            if marker.format != FORMAT || marker.version != VERSION {
                return Err(corrupt(
                    &marker_path,
                    format!(
                        "format `{}` version {}, expected `{FORMAT}` version {VERSION}",
                        marker.format, marker.version
                    ),
                ));
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A lock file alone is what an engine that died between locking and writing the
            // marker leaves behind: the directory is still fresh.
            let mut entries = std::fs::read_dir(dir)
                .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?
                .filter(|e| e.as_ref().map_or(true, |e| e.file_name() != LOCK_FILE));
            if let Some(first) = entries.next() {
                let name = first.map_or_else(
                    |_| "?".to_owned(),
                    |e| e.file_name().to_string_lossy().into_owned(),
                );
                return Err(corrupt(
                    dir,
                    format!(
                        "not a rorqual local state directory: no {MARKER}, but it holds other files (such as `{name}`); refusing to use it"
                    ),
                ));
            }
            true
        }
        Err(e) => {
            return Err(Error::io(
                format!("cannot read {}", marker_path.display()),
                e,
            ));
        }
    };
    let lock_path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(format!("cannot open {}", lock_path.display()), e))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, errno)) => {
            let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
            return Err(corrupt(
                dir,
                format!(
                    "in use by another LocalEngine (pid {}): {errno}",
                    holder.trim()
                ),
            ));
        }
    };
    lock.set_len(0)
        .and_then(|()| write!(&mut *lock, "{}", std::process::id()))
        .map_err(|e| Error::io(format!("cannot write {}", lock_path.display()), e))?;
    if fresh {
        let marker = Marker {
            format: FORMAT.to_owned(),
            version: VERSION,
        };
        write_json(&marker_path, &marker)?;
    }
    Ok(lock)
}

/// Writes `value` as JSON to `path` atomically and durably: a temporary file, fsync, rename,
/// fsync of the directory.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, &encode(path, value)?, true)
}

/// Encodes `value` as the JSON of the file at `path` (the path names it in errors).
pub(crate) fn encode<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Codec {
        context: format!("cannot encode {}", path.display()),
        source: e,
    })
}

/// Writes `bytes` to `path` atomically (temporary file and rename); with `durable`, also waits
/// for the disk (fsync of the file and the directory). Without it a crash of the engine never
/// leaves a torn file and the page cache outlives it: only a power loss can lose the last
/// writes, and it ends the instances' processes too. Callers serialise writes to one path.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let io = |e| Error::io(format!("cannot write {}", path.display()), e);
    let tmp = path.with_extension("json.tmp");
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    if durable {
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if durable && let Some(parent) = path.parent() {
        File::open(parent).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}
