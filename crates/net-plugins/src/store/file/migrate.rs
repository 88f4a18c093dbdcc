//! Migration of pools in the old single-file format (`<dir>/<pool>.json` holding
//! `{"version":N,"state":{..}}`), on [`FileStore::open`].
//!
//! Under the pool's lock (which old `rorqual-ipam` binaries take too) and the store's lock,
//! the whole state is committed as one journal record that creates the pool's index, then the
//! old file is replaced (write, rename) by a stub that old binaries refuse to read ("pool
//! store ... is corrupt: missing field `version`", naming the file), so no old binary starts
//! the pool afresh beside the migrated one. A crash after the commit and before the stub
//! leaves both; the next open sees the index was migrated from that very version and only
//! writes the stub. An old file that cannot be read is an error naming it, and left as it is.

use std::fs::{self, File};
use std::io::ErrorKind;

use serde::Deserialize;

use super::record::PoolChange;
use super::{FileStore, io_error};
use crate::error::StoreError;
use crate::pool_state::{PoolState, diff};

/// The key that marks a stub.
const STUB_KEY: &str = "rorqualFileStore";

#[derive(Deserialize)]
struct OldDoc {
    version: u64,
    state: PoolState,
}

fn is_stub(bytes: &[u8]) -> bool {
    bytes.len() < 4096
        && serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .is_some_and(|v| v.get(STUB_KEY).is_some())
}

/// Migrates every old-format pool in the store's directory.
pub(super) fn migrate_all(store: &FileStore) -> Result<(), StoreError> {
    let entries = fs::read_dir(&store.dir).map_err(io_error(format!(
        "cannot list pool store directory {}",
        store.dir.display()
    )))?;
    for entry in entries {
        let entry = entry.map_err(io_error(format!("cannot list {}", store.dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pool) = name.strip_suffix(".json") else {
            continue;
        };
        if pool.is_empty() || pool.starts_with('.') {
            continue;
        }
        let path = entry.path();
        match fs::read(&path) {
            Ok(bytes) if is_stub(&bytes) => continue,
            Ok(_) => migrate(store, pool)?,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(format!("cannot read {}", path.display()))(e)),
        }
    }
    Ok(())
}

/// Migrates `<pool>.json` under the locks.
fn migrate(store: &FileStore, pool: &str) -> Result<(), StoreError> {
    let path = store.dir.join(format!("{pool}.json"));
    let mut locked = store.begin(Some(pool))?;
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(format!("cannot read {}", path.display()))(e)),
    };
    if is_stub(&bytes) {
        return Ok(());
    }
    let corrupt = |reason: String| StoreError::Corrupt {
        location: path.display().to_string(),
        reason,
    };
    let doc: OldDoc = serde_json::from_slice(&bytes).map_err(|e| {
        corrupt(format!(
            "cannot migrate pool `{pool}` from the single-file format: {e}"
        ))
    })?;
    if doc.state.name() != pool {
        return Err(corrupt(format!("it holds pool `{}`", doc.state.name())));
    }
    let index = store.index();
    match index.read_meta(pool)? {
        // Committed before a crash: only the stub is missing.
        Some(meta) if meta.migrated_from == Some(doc.version) => {}
        Some(_) => {
            return Err(corrupt(format!(
                "pool `{pool}` is also in {}, and this single-file state (version {}) is not \
                 the one it was migrated from: an older rorqual-ipam changed it; keep one of them",
                index.pool_dir(pool).display(),
                doc.version
            )));
        }
        None => {
            let mut change = PoolChange::between(pool, None, Some(&doc.state))
                .ok_or_else(|| corrupt("nothing to migrate".into()))?;
            change.migrated_from = Some(doc.version);
            let events = diff(pool, None, Some(&doc.state));
            store.commit(&mut locked, change, events)?;
        }
    }
    write_stub(store, pool)
}

/// Replaces `<pool>.json` with the stub older binaries refuse.
pub(super) fn write_stub(store: &FileStore, pool: &str) -> Result<(), StoreError> {
    let path = store.dir.join(format!("{pool}.json"));
    let tmp = store
        .dir
        .join(format!(".{pool}.json.{}.stub", std::process::id()));
    let stub = serde_json::json!({
        STUB_KEY: 2,
        "pool": pool,
        "note": format!("pool `{pool}` is kept in {pool}.pool/ with the journal in journal/ \
                         (rorqual-net per-address file store); rorqual-ipam binaries older than \
                         that format cannot use it"),
    });
    let result = (|| {
        fs::write(&tmp, stub.to_string())?;
        if store.fsync {
            File::open(&tmp)?.sync_data()?;
        }
        fs::rename(&tmp, &path)?;
        if store.fsync {
            File::open(&store.dir)?.sync_all()?;
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error(format!("cannot write {}", path.display()))(e)
    })
}
