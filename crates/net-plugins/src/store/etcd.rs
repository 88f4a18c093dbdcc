//! The etcd store: pools shared by every host of a cluster.
//!
//! Each pool is one key `<prefix><pool>` holding the pool state as JSON. A pool's version is
//! the key's `mod_revision`; [`PoolStore::compare_and_swap`] is an etcd transaction comparing
//! it (or `create_revision == 0` for "must not exist"), so concurrent allocators on different
//! hosts never both win, and losers retry on fresh state.

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::{PoolStore, Versioned};
use crate::error::StoreError;
use crate::pool_state::PoolState;

/// Pools in etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    endpoints: Vec<String>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn backend(context: String) -> impl FnOnce(etcd_client::Error) -> StoreError {
    move |e| StoreError::Backend {
        context,
        reason: e.to_string(),
    }
}

impl EtcdStore {
    /// Connects to `endpoints` (`http://127.0.0.1:2379`); pools live under `prefix`
    /// (for example `/rorqual/ipam/`).
    pub async fn connect(
        endpoints: &[String],
        prefix: impl Into<String>,
    ) -> Result<Self, StoreError> {
        let client = Client::connect(endpoints, None)
            .await
            .map_err(backend(format!(
                "cannot connect to etcd at {}",
                endpoints.join(",")
            )))?;
        Ok(EtcdStore {
            client,
            prefix: prefix.into(),
            endpoints: endpoints.to_vec(),
        })
    }

    fn key(&self, pool: &str) -> String {
        format!("{}{pool}", self.prefix)
    }
}

fn revision(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

#[async_trait]
impl PoolStore for EtcdStore {
    async fn load(&self, pool: &str) -> Result<Option<Versioned>, StoreError> {
        let key = self.key(pool);
        let resp = self
            .client
            .clone()
            .get(key.as_str(), None)
            .await
            .map_err(backend(format!("cannot read etcd key {key}")))?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let state: PoolState =
            serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
                location: format!("etcd key {key}"),
                reason: e.to_string(),
            })?;
        Ok(Some(Versioned {
            state,
            version: revision(kv.mod_revision()),
        }))
    }

    async fn compare_and_swap(
        &self,
        pool: &str,
        expected: Option<u64>,
        next: Option<&PoolState>,
    ) -> Result<Option<u64>, StoreError> {
        let key = self.key(pool);
        let compare = match expected {
            None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Some(v) => Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                i64::try_from(v).unwrap_or(i64::MAX),
            ),
        };
        let op = match next {
            Some(state) => {
                let body = serde_json::to_vec(state).map_err(|e| StoreError::Corrupt {
                    location: format!("etcd key {key}"),
                    reason: format!("cannot encode: {e}"),
                })?;
                TxnOp::put(key.as_str(), body, None)
            }
            None => TxnOp::delete(key.as_str(), None),
        };
        let txn = Txn::new()
            .when(vec![compare])
            .and_then(vec![op])
            .or_else(vec![TxnOp::get(key.as_str(), None)]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(backend(format!("etcd transaction on {key} failed")))?;
        if !resp.succeeded() {
            let found = resp.op_responses().into_iter().find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => {
                    g.kvs().first().map(|kv| revision(kv.mod_revision()))
                }
                _ => None,
            });
            return Err(StoreError::Conflict {
                pool: pool.to_owned(),
                expected,
                found,
            });
        }
        let header = resp.header().map(|h| revision(h.revision()));
        Ok(next.and(header))
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        let resp = self
            .client
            .clone()
            .get(
                self.prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(backend(format!("cannot list etcd prefix {}", self.prefix)))?;
        let mut names: Vec<String> = resp
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok())
            .filter_map(|k| k.strip_prefix(&self.prefix))
            .map(str::to_owned)
            .collect();
        names.sort();
        Ok(names)
    }
}
