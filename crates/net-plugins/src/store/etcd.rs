//! The etcd store: pools shared by every host of a cluster.
//!
//! Each pool is one key `<prefix><pool>` holding the pool state as JSON. A pool's version is
//! the key's `mod_revision`; [`PoolStore::compare_and_swap`] is an etcd transaction comparing
//! it (or `create_revision == 0` for "must not exist"), so concurrent allocators on different
//! hosts never both win, and losers retry on fresh state.

use std::collections::VecDeque;

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use futures::StreamExt;

use super::{PoolStore, Versioned, WatchStream};
use crate::error::StoreError;
use crate::pool_state::{PoolState, diff};

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

fn decode(key: &str, value: &[u8]) -> Result<PoolState, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        location: format!("etcd key {key}"),
        reason: e.to_string(),
    })
}

/// The allocation events of one etcd watch response (each change carries the key's previous
/// value, so no state is kept between responses).
fn decode_response(
    prefix: &str,
    resp: &etcd_client::WatchResponse,
    out: &mut VecDeque<Result<crate::model::AllocationEvent, StoreError>>,
) {
    if resp.canceled() {
        out.push_back(Err(StoreError::Backend {
            context: format!("etcd watch on prefix {prefix} was canceled"),
            reason: format!(
                "{} (compacted at revision {})",
                resp.cancel_reason(),
                resp.compact_revision()
            ),
        }));
    }
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let Ok(key) = kv.key_str() else { continue };
        let Some(pool) = key.strip_prefix(prefix) else {
            continue;
        };
        let new = match ev.event_type() {
            EventType::Put => match decode(key, kv.value()) {
                Ok(state) => Some(state),
                Err(e) => {
                    out.push_back(Err(e));
                    continue;
                }
            },
            EventType::Delete => None,
        };
        let old = ev
            .prev_kv()
            .filter(|p| !p.value().is_empty())
            .and_then(|p| decode(key, p.value()).ok());
        out.extend(diff(pool, old.as_ref(), new.as_ref()).into_iter().map(Ok));
    }
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

    /// An etcd watch on the pool prefix with previous values: every put or delete of a pool
    /// key, by any host, becomes the events that turn the old state into the new one.
    async fn watch(&self) -> Result<WatchStream, StoreError> {
        let options = WatchOptions::new().with_prefix().with_prev_key();
        let (watcher, responses) = self
            .client
            .clone()
            .watch(self.prefix.as_str(), Some(options))
            .await
            .map_err(backend(format!("cannot watch etcd prefix {}", self.prefix)))?;
        let prefix = self.prefix.clone();
        // The watcher travels with the stream: dropping it would close the request side.
        let stream = futures::stream::unfold(
            (watcher, responses, VecDeque::new(), prefix),
            |(watcher, mut responses, mut pending, prefix)| async move {
                loop {
                    if let Some(item) = pending.pop_front() {
                        return Some((item, (watcher, responses, pending, prefix)));
                    }
                    match responses.message().await {
                        Ok(Some(resp)) => decode_response(&prefix, &resp, &mut pending),
                        Ok(None) => return None,
                        Err(e) => {
                            let err = backend(format!("etcd watch on prefix {prefix} failed"))(e);
                            return Some((Err(err), (watcher, responses, pending, prefix)));
                        }
                    }
                }
            },
        );
        Ok(stream.boxed())
    }
}
