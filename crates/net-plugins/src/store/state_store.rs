//! Pools in core's [`StateStore`]: the typed layer that makes any controller state store a
//! [`PoolStore`].
//!
//! # One persistence story
//!
//! [`StateStore`] (rorqual-core) is the platform's one compare-and-swap abstraction: versioned
//! byte values under string keys. [`StateStorePools`] keeps each pool as one key
//! `<prefix><pool>` (default [`DEFAULT_PREFIX`]) holding the pool state as JSON, and maps the
//! two contracts one to one:
//!
//! | [`PoolStore`]                        | [`StateStore`]                                   |
//! |--------------------------------------|--------------------------------------------------|
//! | `load(pool)`                         | `get(key)`, decoded                              |
//! | `compare_and_swap(pool, v, next)`    | `compare_and_swap(key, v, bytes)`; deletes → `None` |
//! | `list()`                             | `list(prefix)`, prefix stripped                  |
//! | `update(pool, txn)`                  | the default: load, change a copy, CAS, retry     |
//! | `StoreError::Conflict`               | `rorqual_core::error::Error::Conflict`           |
//!
//! So pools can live wherever an engine keeps its controller state (the `LocalEngine`'s
//! `FileStateStore`, an in-memory store in tests, a Kubernetes-backed store later), beside
//! that controller state and under the same durability guarantees, with no pool-specific
//! backend code.
//!
//! The other pool stores stay, each for what the byte-level contract cannot give:
//! - [`super::memory::MemoryStore`] runs transactions in place under one lock, with no copy and
//!   no encoding (the allocator's fast path, `PoolStore::try_update_now`); an adapter over an
//!   in-memory `StateStore` would encode and decode the whole pool on every operation.
//! - [`super::file::FileStore`] is shared by concurrent `rorqual-ipam` processes on one host:
//!   under `flock`, an allocation or release reads and writes only the index files of the keys
//!   it touches and appends one journal record (`PoolStore::try_update_keys`), so its cost does
//!   not grow with the pool, and its watches follow the journal (every process's commits, with
//!   revisions). Core's state stores are single-process.
//! - `EtcdStore` (feature `etcd`) watches its keys, which `StateStore` cannot express.
//!
//! `StateStorePools` has no watch ([`PoolStore::watch`] is unsupported); the allocator then
//! publishes its own changes.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use rorqual_core::engine::StateStore;
use rorqual_core::error::Error as CoreError;

use super::{PoolStore, Versioned};
use crate::error::StoreError;
use crate::pool_state::PoolState;

/// The key prefix pools live under unless told otherwise.
pub const DEFAULT_PREFIX: &str = "rorqual.io/ipam/pools/";

/// A [`PoolStore`] over any [`StateStore`]: one JSON value per pool under a key prefix.
///
/// ```
/// # use std::sync::Arc;
/// use rorqual_core::engine::StateStore;
/// use rorqual_net::store::state_store::StateStorePools;
/// use rorqual_net::Allocator;
///
/// fn pools_beside_controller_state(state: Arc<dyn StateStore>) -> Allocator {
///     Allocator::new(Arc::new(StateStorePools::new(state)))
/// }
/// ```
pub struct StateStorePools<S: ?Sized = dyn StateStore> {
    store: Arc<S>,
    prefix: String,
}

impl<S: ?Sized> Clone for StateStorePools<S> {
    fn clone(&self) -> Self {
        StateStorePools {
            store: Arc::clone(&self.store),
            prefix: self.prefix.clone(),
        }
    }
}

impl<S: StateStore + ?Sized> fmt::Debug for StateStorePools<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateStorePools")
            .field("store", &self.store)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl<S: StateStore + ?Sized> StateStorePools<S> {
    /// Pools in `store` under [`DEFAULT_PREFIX`]. Takes an `Arc<dyn StateStore>` (as
    /// `Engine::state_store` returns it) as well as a concrete store.
    pub fn new(store: Arc<S>) -> Self {
        StateStorePools {
            store,
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }

    /// Keeps the pools under `prefix` instead (for several independent sets of pools in one
    /// store).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The underlying state store.
    pub fn state_store(&self) -> &Arc<S> {
        &self.store
    }

    fn key(&self, pool: &str) -> String {
        format!("{}{pool}", self.prefix)
    }
}

/// Maps a state store error: a conflict stays a conflict (the allocator retries it), anything
/// else keeps the core error as its source.
fn store_error(pool: &str, context: impl FnOnce() -> String, e: CoreError) -> StoreError {
    match e {
        CoreError::Conflict {
            expected, found, ..
        } => StoreError::Conflict {
            pool: pool.to_owned(),
            expected,
            found,
        },
        source => StoreError::StateStore {
            context: context(),
            source,
        },
    }
}

fn decode(key: &str, value: &[u8]) -> Result<PoolState, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        location: format!("state store key `{key}`"),
        reason: e.to_string(),
    })
}

#[async_trait]
impl<S: StateStore + ?Sized> PoolStore for StateStorePools<S> {
    async fn load(&self, pool: &str) -> Result<Option<Versioned>, StoreError> {
        let key = self.key(pool);
        let Some(found) =
            self.store.get(&key).await.map_err(|e| {
                store_error(pool, || format!("cannot read state store key `{key}`"), e)
            })?
        else {
            return Ok(None);
        };
        let state = decode(&key, &found.value)?;
        if state.name() != pool {
            return Err(StoreError::Corrupt {
                location: format!("state store key `{key}`"),
                reason: format!("it holds pool `{}`", state.name()),
            });
        }
        Ok(Some(Versioned {
            state,
            version: found.version,
        }))
    }

    async fn compare_and_swap(
        &self,
        pool: &str,
        expected: Option<u64>,
        next: Option<&PoolState>,
    ) -> Result<Option<u64>, StoreError> {
        let key = self.key(pool);
        let value = next
            .map(|state| {
                serde_json::to_vec(state).map_err(|e| StoreError::Corrupt {
                    location: format!("state store key `{key}`"),
                    reason: format!("cannot encode: {e}"),
                })
            })
            .transpose()?;
        let deleting = value.is_none();
        let version = self
            .store
            .compare_and_swap(&key, expected, value)
            .await
            .map_err(|e| {
                store_error(pool, || format!("cannot write state store key `{key}`"), e)
            })?;
        // Core reports a delete as version 0; the pool contract says `None`.
        Ok((!deleting).then_some(version))
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        let entries = self.store.list(&self.prefix).await.map_err(|e| {
            store_error(
                "",
                || format!("cannot list state store keys under `{}`", self.prefix),
                e,
            )
        })?;
        // Keys come in key order, so the names are sorted. Only direct children are pools.
        Ok(entries
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix(&self.prefix).map(str::to_owned))
            .filter(|name| !name.is_empty() && !name.contains('/'))
            .collect())
    }
}
