//! The etcd registry: one key per Active address, `<prefix><pool>/<ip>` → its JSON entry, and
//! the checkpoint at `<prefix>.revision`, written in the same etcd transaction as the entries
//! of its batch.
//!
//! Every write transaction also writes the checkpoint key and is guarded by it, so writers
//! are serialised through that one key even when a batch needs several transactions: a batch
//! follows a checkpoint value (`value == r`; the parts before the last rewrite `r`), a resync
//! follows the checkpoint's `mod_revision` read with its listing (each part writes the marker
//! `resyncing`, the last one the snapshot's revision). A resync interrupted by a crash leaves
//! the marker, which reads as "never synced": the next start resyncs again.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};

use super::plan::{RegistryBatch, RegistryChange};
use super::{RegistryEntry, RegistryKey, RegistrySink, SyncError};
use crate::store::etcd::EtcdStore;

/// The checkpoint's key under the prefix (pool names cannot start with `.`).
const CHECKPOINT: &str = ".revision";

/// The checkpoint's value while a resync is being written (reads as no checkpoint).
const RESYNCING: &str = "resyncing";

/// etcd's default `--max-txn-ops`.
const DEFAULT_MAX_TXN_OPS: usize = 128;

/// Entries read per range request when listing (bounds the size of one response).
const LIST_PAGE: i64 = 1000;

/// A service registry in etcd, for [`super::RegistrySync`]. Build with
/// [`EtcdRegistry::builder`].
///
/// Keys are `<prefix><pool>/<ip>` (the prefix ends with `/`), values the JSON of
/// [`RegistryEntry`]; the checkpoint is the decimal revision at `<prefix>.revision`. A batch
/// and its checkpoint are one transaction, guarded by the previous checkpoint, and a resync
/// is guarded by the checkpoint key not having changed since its listing, so two syncs
/// writing one registry cannot interleave: every write transaction also writes the checkpoint
/// key (the parts of a batch rewrite the checkpoint they follow, the parts of a resync the
/// marker `resyncing`, which reads as "never synced", so a resync cut short by a crash is
/// started again). A batch larger than etcd's
/// limit of operations per transaction ([`EtcdRegistryBuilder::max_txn_ops`], 128 by default
/// as in etcd) is written in several, the new checkpoint with the last: a crash in between
/// leaves the old checkpoint (or, in a resync, none), and the batch is written again.
#[derive(Clone)]
pub struct EtcdRegistry {
    client: Client,
    prefix: String,
    checkpoint_key: String,
    max_txn_ops: usize,
}

impl fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("prefix", &self.prefix)
            .field("max_txn_ops", &self.max_txn_ops)
            .finish_non_exhaustive()
    }
}

/// Configures an [`EtcdRegistry`].
#[derive(Debug)]
#[must_use]
pub struct EtcdRegistryBuilder {
    prefix: String,
    endpoints: Vec<String>,
    pools: Option<EtcdStore>,
    max_txn_ops: usize,
}

impl EtcdRegistry {
    /// A registry under `prefix` (for example `/registry/ipam`; a trailing `/` is added).
    pub fn builder(prefix: impl Into<String>) -> EtcdRegistryBuilder {
        EtcdRegistryBuilder {
            prefix: prefix.into(),
            endpoints: Vec::new(),
            pools: None,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
        }
    }

    /// The key prefix, ending with `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The checkpoint's key.
    pub fn checkpoint_key(&self) -> &str {
        &self.checkpoint_key
    }

    fn error(&self, context: String) -> impl FnOnce(etcd_client::Error) -> SyncError + '_ {
        move |e| SyncError::Registry {
            registry: format!("etcd prefix {}", self.prefix),
            context,
            reason: e.to_string(),
        }
    }

    /// A checkpoint value: a revision, or `None` for the marker of an unfinished resync.
    fn parse_checkpoint(&self, value: &[u8]) -> Result<Option<u64>, SyncError> {
        let text = String::from_utf8_lossy(value);
        if text == RESYNCING {
            return Ok(None);
        }
        text.trim()
            .parse()
            .map(Some)
            .map_err(|e: std::num::ParseIntError| SyncError::CorruptCheckpoint {
                key: self.checkpoint_key.clone(),
                value: text.into_owned(),
                reason: e.to_string(),
            })
    }

    /// Every entry, and the checkpoint key's `mod_revision` (`None`: no such key), read at one
    /// etcd revision (pages of [`LIST_PAGE`] keys).
    async fn list(&self) -> Result<(BTreeMap<RegistryKey, RegistryEntry>, Option<i64>), SyncError> {
        let mut out = BTreeMap::new();
        let mut checkpoint = None;
        let end = range_end(&self.prefix);
        let mut from = self.prefix.clone().into_bytes();
        // Every page at the first page's revision: one consistent listing.
        let mut at = 0;
        loop {
            let options = GetOptions::new()
                .with_range(end.as_str())
                .with_limit(LIST_PAGE)
                .with_revision(at);
            let resp = self
                .client
                .clone()
                .get(from.clone(), Some(options))
                .await
                .map_err(self.error(format!("cannot list {}", self.prefix)))?;
            if at == 0 {
                at = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                let key = String::from_utf8_lossy(kv.key());
                if key == self.checkpoint_key {
                    checkpoint = Some(kv.mod_revision());
                    continue;
                }
                let name = key.strip_prefix(&self.prefix).unwrap_or(&key);
                let parsed: RegistryKey = name.parse().map_err(|e| match e {
                    SyncError::CorruptEntry { reason, .. } => SyncError::CorruptEntry {
                        key: key.clone().into_owned(),
                        reason,
                    },
                    other => other,
                })?;
                out.insert(parsed, RegistryEntry::from_json(&key, kv.value())?);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((out, checkpoint)),
            }
        }
    }

    /// The etcd operations of `batch`, in parts of at most `max_txn_ops - 1` (room for the
    /// checkpoint); at least one part, possibly empty.
    fn parts(&self, batch: &RegistryBatch) -> Vec<Vec<TxnOp>> {
        let key = |k: &RegistryKey| format!("{}{k}", self.prefix);
        let ops: Vec<TxnOp> = batch
            .changes
            .iter()
            .map(|c| match c {
                RegistryChange::Put { key: k, entry } => TxnOp::put(key(k), entry.to_json(), None),
                RegistryChange::Delete { key: k } => TxnOp::delete(key(k), None),
            })
            .collect();
        let mut parts: Vec<Vec<TxnOp>> = ops
            .chunks(self.max_txn_ops - 1)
            .map(<[TxnOp]>::to_vec)
            .collect();
        if parts.is_empty() {
            parts.push(Vec::new());
        }
        parts
    }

    /// Runs one guarded part (`ops`, then the checkpoint set to `checkpoint`); `Ok(None)`
    /// when the guard failed, else the transaction's revision.
    async fn write_part(
        &self,
        guard: Option<Compare>,
        mut ops: Vec<TxnOp>,
        checkpoint: String,
        revision: u64,
    ) -> Result<Result<i64, Option<Vec<u8>>>, SyncError> {
        let key = self.checkpoint_key.as_str();
        let count = ops.len();
        ops.push(TxnOp::put(key, checkpoint, None));
        let txn = Txn::new()
            .when(guard.into_iter().collect::<Vec<_>>())
            .and_then(ops)
            .or_else(vec![TxnOp::get(key, None)]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(self.error(format!(
                "cannot write revision {revision} ({count} changes)"
            )))?;
        if resp.succeeded() {
            return Ok(Ok(resp.header().map_or(0, |h| h.revision())));
        }
        let found = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        Ok(Err(found))
    }
}

impl EtcdRegistryBuilder {
    /// Connects to these etcd endpoints (`http://127.0.0.1:2379`). Without them, the
    /// registry shares the connection of the pool store given to
    /// [`EtcdRegistryBuilder::beside`].
    pub fn endpoints(mut self, endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// The pool store being synced: when the registry is in the same etcd (no endpoints
    /// given, or one in common), [`EtcdRegistryBuilder::build`] refuses prefixes that
    /// overlap, which would make the store read registry keys as pools.
    pub fn beside(mut self, pools: &EtcdStore) -> Self {
        self.pools = Some(pools.clone());
        self
    }

    /// Operations per etcd transaction (etcd's `--max-txn-ops`, 128 by default); at least 2.
    pub fn max_txn_ops(mut self, ops: usize) -> Self {
        self.max_txn_ops = ops;
        self
    }

    /// Validates the configuration and connects.
    pub async fn build(self) -> Result<EtcdRegistry, SyncError> {
        let prefix = normalise_prefix(&self.prefix)?;
        if self.max_txn_ops < 2 {
            return Err(SyncError::InvalidConfig {
                reason: format!(
                    "max_txn_ops is {}: a transaction needs room for an entry and the checkpoint",
                    self.max_txn_ops
                ),
            });
        }
        if let Some(pools) = &self.pools {
            let same_etcd = self.endpoints.is_empty()
                || self.endpoints.iter().any(|e| pools.endpoints().contains(e));
            if same_etcd {
                check_disjoint(pools.prefix(), &prefix)?;
            }
        }
        let client = match (&self.pools, self.endpoints.is_empty()) {
            (Some(pools), true) => pools.client().clone(),
            (None, true) => {
                return Err(SyncError::InvalidConfig {
                    reason: format!(
                        "registry {prefix}: no etcd endpoints and no pool store to share one with"
                    ),
                });
            }
            (_, false) => {
                Client::connect(&self.endpoints, None)
                    .await
                    .map_err(|e| SyncError::Registry {
                        registry: format!("etcd prefix {prefix}"),
                        context: format!("cannot connect to etcd at {}", self.endpoints.join(",")),
                        reason: e.to_string(),
                    })?
            }
        };
        Ok(EtcdRegistry {
            client,
            checkpoint_key: format!("{prefix}{CHECKPOINT}"),
            prefix,
            max_txn_ops: self.max_txn_ops,
        })
    }
}

/// `prefix` ending with `/`; refuses an empty prefix or `/` alone (the whole key space).
fn normalise_prefix(prefix: &str) -> Result<String, SyncError> {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(SyncError::InvalidConfig {
            reason: format!(
                "registry prefix {prefix:?} would cover every key of the etcd: give one like \
                 `/registry/ipam`"
            ),
        });
    }
    Ok(format!("{trimmed}/"))
}

/// Refuses a registry prefix (ending with `/`) whose keys a pool store with prefix `pools`
/// would list, or the other way round.
fn check_disjoint(pools: &str, registry: &str) -> Result<(), SyncError> {
    if registry.starts_with(pools) || pools.starts_with(registry) {
        return Err(SyncError::OverlappingPrefixes {
            registry: registry.to_owned(),
            pools: pools.to_owned(),
        });
    }
    Ok(())
}

/// The end of the key range of `prefix` (which ends with `/`): the same with `0` (`/` + 1).
fn range_end(prefix: &str) -> String {
    format!("{}0", &prefix[..prefix.len() - 1])
}

#[async_trait]
impl RegistrySink for EtcdRegistry {
    async fn checkpoint(&self) -> Result<Option<u64>, SyncError> {
        let key = &self.checkpoint_key;
        let resp = self
            .client
            .clone()
            .get(key.as_str(), None)
            .await
            .map_err(self.error(format!("cannot read checkpoint {key}")))?;
        match resp.kvs().first() {
            Some(kv) => self.parse_checkpoint(kv.value()),
            None => Ok(None),
        }
    }

    async fn entries(&self) -> Result<BTreeMap<RegistryKey, RegistryEntry>, SyncError> {
        Ok(self.list().await?.0)
    }

    /// One transaction guarded by `checkpoint == follows` (none with `follows: None`); a
    /// batch larger than a transaction is written in parts under the same guard, each
    /// rewriting the checkpoint it follows, the last one setting the batch's revision.
    async fn apply(&self, batch: &RegistryBatch, follows: Option<u64>) -> Result<(), SyncError> {
        let parts = self.parts(batch);
        let last = parts.len() - 1;
        let key = self.checkpoint_key.as_str();
        for (i, ops) in parts.into_iter().enumerate() {
            let value = match follows {
                Some(r) if i < last => r.to_string(),
                _ => batch.revision.to_string(),
            };
            let guard = follows.map(|r| Compare::value(key, CompareOp::Equal, r.to_string()));
            if let Err(found) = self.write_part(guard, ops, value, batch.revision).await? {
                return Err(SyncError::CheckpointMoved {
                    key: self.checkpoint_key.clone(),
                    expected: follows.unwrap_or_default(),
                    found: found
                        .map(|v| self.parse_checkpoint(&v))
                        .transpose()?
                        .flatten(),
                });
            }
        }
        Ok(())
    }

    /// Lists the registry and the checkpoint's `mod_revision` at one etcd revision, then
    /// writes the difference in parts, each guarded by the checkpoint key being unchanged
    /// since the previous step and marking it `resyncing` (the last part sets `revision`):
    /// [`SyncError::ResyncInterrupted`] when another writer came in between.
    async fn replace(
        &self,
        revision: u64,
        desired: &BTreeMap<RegistryKey, RegistryEntry>,
    ) -> Result<RegistryBatch, SyncError> {
        let (held, mut checkpoint_at) = self.list().await?;
        let batch = super::plan::replace_batch(revision, &held, desired);
        let parts = self.parts(&batch);
        let last = parts.len() - 1;
        let key = self.checkpoint_key.as_str();
        for (i, ops) in parts.into_iter().enumerate() {
            let value = if i < last {
                RESYNCING.to_owned()
            } else {
                revision.to_string()
            };
            let guard = match checkpoint_at {
                None => Compare::create_revision(key, CompareOp::Equal, 0),
                Some(at) => Compare::mod_revision(key, CompareOp::Equal, at),
            };
            match self.write_part(Some(guard), ops, value, revision).await? {
                Ok(at) => checkpoint_at = Some(at),
                Err(_) => {
                    return Err(SyncError::ResyncInterrupted {
                        key: self.checkpoint_key.clone(),
                    });
                }
            }
        }
        Ok(batch)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalised_and_must_not_overlap_the_pools() {
        assert_eq!(
            normalise_prefix("/registry/ipam").unwrap(),
            "/registry/ipam/"
        );
        assert_eq!(
            normalise_prefix("/registry/ipam/").unwrap(),
            "/registry/ipam/"
        );
        for bad in ["", "/", "//"] {
            let err = normalise_prefix(bad).unwrap_err();
            assert!(matches!(err, SyncError::InvalidConfig { .. }), "{err}");
        }
        assert!(check_disjoint("/rq/pools/", "/rq/registry/").is_ok());
        for (pools, registry) in [
            ("/rq/", "/rq/registry/"),
            ("/rq", "/rq-registry/"),
            ("/rq/registry/pools/", "/rq/registry/"),
            ("/rq/", "/rq/"),
        ] {
            let err = check_disjoint(pools, registry).unwrap_err().to_string();
            assert!(
                err.contains(pools) && err.contains(registry) && err.contains("overlaps"),
                "{err}"
            );
        }
        assert_eq!(range_end("/reg/"), "/reg0");
    }
}
