//! The per-address index: one small file per key of a pool, so a transaction reads and writes
//! only the keys it touches.
//!
//! ```text
//! <dir>/<pool>.pool/meta.json        {"spec":{..}}: the pool's spec
//! <dir>/<pool>.pool/head.json        {"version":N,"cursor":"10.0.0.7"}
//! <dir>/<pool>.pool/ip/<address>     the entry of an address that is not Available
//! <dir>/<pool>.pool/owner/<c>+<i>    the address owner container `c`, interface `i` holds
//! <dir>/<pool>.pool/claim/=<id>      the claim of identity `id`
//! ```
//!
//! Names are percent-encoded (everything but ASCII letters, digits, `_`, `-` and a `.` that
//! does not start the name). Files are written in place without syncing: the journal is the
//! durable copy, and the index is repaired from it (see the module docs of the file store).

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::io_error;
use super::record::{PoolChange, PoolOp};
use crate::error::StoreError;
use crate::model::{Owner, PoolSpec};
use crate::pool_state::{Claim, Entry, PoolState};

/// The suffix of a pool's index directory.
pub(super) const POOL_SUFFIX: &str = ".pool";

/// `meta.json`: what changes rarely.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Meta {
    /// The spec.
    pub(super) spec: PoolSpec,
    /// The version of the old-format state file the pool was migrated from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) migrated_from: Option<u64>,
}

/// `head.json`: what changes on every commit.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct Head {
    /// The revision of the pool's last commit (its [`crate::store::Versioned::version`]).
    pub(super) version: u64,
    /// The allocation cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) cursor: Option<IpAddr>,
}

/// Percent-encodes `s` for a file name.
pub(super) fn encode_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The index of the pools of one store directory.
#[derive(Debug, Clone)]
pub(super) struct Index {
    dir: PathBuf,
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(format!("cannot read {}", path.display()))(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            location: path.display().to_string(),
            reason: e.to_string(),
        })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let body = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        location: path.display().to_string(),
        reason: format!("cannot encode: {e}"),
    })?;
    fs::write(path, body).map_err(io_error(format!("cannot write {}", path.display())))
}

fn remove(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(format!("cannot remove {}", path.display()))(e)),
    }
}

impl Index {
    pub(super) fn new(dir: PathBuf) -> Index {
        Index { dir }
    }

    /// The index directory of `pool`.
    pub(super) fn pool_dir(&self, pool: &str) -> PathBuf {
        self.dir.join(format!("{pool}{POOL_SUFFIX}"))
    }

    fn meta_path(&self, pool: &str) -> PathBuf {
        self.pool_dir(pool).join("meta.json")
    }

    fn head_path(&self, pool: &str) -> PathBuf {
        self.pool_dir(pool).join("head.json")
    }

    fn ip_path(&self, pool: &str, ip: IpAddr) -> PathBuf {
        self.pool_dir(pool).join("ip").join(ip.to_string())
    }

    fn owner_path(&self, pool: &str, owner: &Owner) -> PathBuf {
        self.pool_dir(pool).join("owner").join(format!(
            "{}+{}",
            encode_name(&owner.container),
            encode_name(&owner.ifname)
        ))
    }

    fn claim_path(&self, pool: &str, identity: &str) -> PathBuf {
        self.pool_dir(pool)
            .join("claim")
            .join(format!("={}", encode_name(identity)))
    }

    /// The spec (and migration mark) of `pool`; `None`: no such pool.
    pub(super) fn read_meta(&self, pool: &str) -> Result<Option<Meta>, StoreError> {
        let meta: Option<Meta> = read_json(&self.meta_path(pool))?;
        if let Some(m) = &meta
            && m.spec.name != pool
        {
            return Err(StoreError::Corrupt {
                location: self.meta_path(pool).display().to_string(),
                reason: format!("it holds pool `{}`", m.spec.name),
            });
        }
        Ok(meta)
    }

    /// The version and cursor of an existing pool.
    pub(super) fn read_head(&self, pool: &str) -> Result<Head, StoreError> {
        let path = self.head_path(pool);
        read_json(&path)?.ok_or_else(|| StoreError::Corrupt {
            location: path.display().to_string(),
            reason: "missing".into(),
        })
    }

    /// The entry of `ip`.
    pub(super) fn read_entry(&self, pool: &str, ip: IpAddr) -> Result<Option<Entry>, StoreError> {
        read_json(&self.ip_path(pool, ip))
    }

    /// The address `owner` holds.
    pub(super) fn read_owner(
        &self,
        pool: &str,
        owner: &Owner,
    ) -> Result<Option<IpAddr>, StoreError> {
        read_json(&self.owner_path(pool, owner))
    }

    /// The claim of `identity`.
    pub(super) fn read_claim(
        &self,
        pool: &str,
        identity: &str,
    ) -> Result<Option<Claim>, StoreError> {
        read_json(&self.claim_path(pool, identity))
    }

    /// Where an inconsistency of `pool` is reported.
    pub(super) fn corrupt(&self, pool: &str, reason: String) -> StoreError {
        StoreError::Corrupt {
            location: self.pool_dir(pool).display().to_string(),
            reason,
        }
    }

    /// The whole pool with its version (reads every file of the pool: an admin read).
    pub(super) fn load_pool(&self, pool: &str) -> Result<Option<(PoolState, u64)>, StoreError> {
        let Some(meta) = self.read_meta(pool)? else {
            return Ok(None);
        };
        let head = self.read_head(pool)?;
        let mut entries = BTreeMap::new();
        let ip_dir = self.pool_dir(pool).join("ip");
        for name in list_dir(&ip_dir)? {
            let path = ip_dir.join(&name);
            let ip: IpAddr = name.parse().map_err(|_| StoreError::Corrupt {
                location: path.display().to_string(),
                reason: "the file name is not an address".into(),
            })?;
            if let Some(e) = read_json::<Entry>(&path)? {
                entries.insert(ip, e);
            }
        }
        let mut claims = BTreeMap::new();
        let claim_dir = self.pool_dir(pool).join("claim");
        for name in list_dir(&claim_dir)? {
            let path = claim_dir.join(&name);
            if let Some(c) = read_json::<ClaimFile>(&path)? {
                claims.insert(c.identity, c.claim);
            }
        }
        let owners = list_dir(&self.pool_dir(pool).join("owner"))?.len();
        let state = PoolState::from_parts(meta.spec, entries, claims, head.cursor)
            .map_err(|reason| self.corrupt(pool, reason))?;
        let active = state.owners().count();
        if owners != active {
            return Err(self.corrupt(
                pool,
                format!("{owners} owner files but {active} active addresses"),
            ));
        }
        Ok(Some((state, head.version)))
    }

    /// The names of all pools.
    pub(super) fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = list_dir(&self.dir)?
            .into_iter()
            .filter_map(|n| n.strip_suffix(POOL_SUFFIX).map(str::to_owned))
            .filter(|n| !n.is_empty() && !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Writes what a commit of `revision` changed in one pool (again, harmlessly, when it was
    /// written already).
    pub(super) fn apply(&self, change: &PoolChange, revision: u64) -> Result<(), StoreError> {
        let pool = change.pool.as_str();
        let dir = self.pool_dir(pool);
        if matches!(change.op, PoolOp::Delete | PoolOp::Create) {
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(format!("cannot remove {}", dir.display()))(e)),
            }
            if change.op == PoolOp::Delete {
                return Ok(());
            }
            for sub in ["ip", "owner", "claim"] {
                let d = dir.join(sub);
                fs::create_dir_all(&d)
                    .map_err(io_error(format!("cannot create {}", d.display())))?;
            }
        }
        for (ip, e) in &change.entries {
            let path = self.ip_path(pool, *ip);
            match e {
                Some(e) => write_json(&path, e)?,
                None => remove(&path)?,
            }
        }
        for (owner, ip) in &change.owners {
            let path = self.owner_path(pool, owner);
            match ip {
                Some(ip) => write_json(&path, ip)?,
                None => remove(&path)?,
            }
        }
        for (identity, c) in &change.claims {
            let path = self.claim_path(pool, identity);
            match c {
                Some(c) => write_json(&path, &ClaimFileRef { identity, claim: c })?,
                None => remove(&path)?,
            }
        }
        if let Some(spec) = &change.spec {
            let meta = Meta {
                spec: spec.clone(),
                migrated_from: change.migrated_from,
            };
            write_json(&self.meta_path(pool), &meta)?;
        }
        let head = Head {
            version: revision,
            cursor: change.cursor,
        };
        write_json(&self.head_path(pool), &head)
    }
}

/// A claim file: the identity (file names are encoded) and the claim.
#[derive(Deserialize)]
struct ClaimFile {
    identity: String,
    #[serde(flatten)]
    claim: Claim,
}

#[derive(Serialize)]
struct ClaimFileRef<'a> {
    identity: &'a str,
    #[serde(flatten)]
    claim: &'a Claim,
}

/// The file names in `dir` (none when it is missing).
fn list_dir(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(format!("cannot list {}", dir.display()))(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(format!("cannot list {}", dir.display())))?;
        out.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_so_that_no_two_keys_share_a_file() {
        assert_eq!(encode_name("abc-1_2.x"), "abc-1_2.x");
        assert_eq!(encode_name(".hidden"), "%2Ehidden");
        assert_eq!(encode_name("ns/db-0"), "ns%2Fdb-0");
        assert_eq!(encode_name("a+b"), "a%2Bb");
        assert_eq!(encode_name(""), "");
        // Owners join two encoded parts with `+`, which never survives encoding.
        assert_ne!(
            format!("{}+{}", encode_name("a+b"), encode_name("c")),
            format!("{}+{}", encode_name("a"), encode_name("b+c"))
        );
    }
}
