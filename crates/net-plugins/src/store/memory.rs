//! The in-memory pool store (tests, embedded single-process use).

use std::collections::BTreeMap;

use async_trait::async_trait;
use parking_lot::{Mutex, MutexGuard};

use super::{PoolStore, TxnFn, Versioned};
use crate::error::{PoolError, StoreError};
use crate::pool_state::PoolState;

/// Pools in memory (a sorted map: a name lookup is a few comparisons, no hashing). Transactions
/// run under one lock, in place (no copy), which is what makes it fast; see [`TxnFn`] for why
/// in-place is safe.
#[derive(Debug, Default)]
pub struct MemoryStore {
    pools: Mutex<BTreeMap<String, (u64, PoolState)>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, (u64, PoolState)>> {
        // parking_lot's mutex does not poison: a panicking transaction body cannot leave a
        // half change (bodies check before they change), so the map stays usable.
        self.pools.lock()
    }

    /// Runs `txn` synchronously (the async [`PoolStore::update`] calls this).
    pub fn update_sync(&self, pool: &str, txn: &mut TxnFn<'_>) -> Result<(), PoolError> {
        let mut pools = self.lock();
        let Some((version, state)) = pools.get_mut(pool) else {
            return Err(PoolError::NoSuchPool {
                pool: pool.to_owned(),
            });
        };
        if txn(state)? {
            *version += 1;
        }
        Ok(())
    }
}

#[async_trait]
impl PoolStore for MemoryStore {
    async fn load(&self, pool: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self.lock().get(pool).map(|(v, s)| Versioned {
            state: s.clone(),
            version: *v,
        }))
    }

    async fn compare_and_swap(
        &self,
        pool: &str,
        expected: Option<u64>,
        next: Option<&PoolState>,
    ) -> Result<Option<u64>, StoreError> {
        let mut pools = self.lock();
        let found = pools.get(pool).map(|(v, _)| *v);
        if found != expected {
            return Err(StoreError::Conflict {
                pool: pool.to_owned(),
                expected,
                found,
            });
        }
        match next {
            Some(state) => {
                let version = found.map_or(1, |v| v + 1);
                pools.insert(pool.to_owned(), (version, state.clone()));
                Ok(Some(version))
            }
            None => {
                pools.remove(pool);
                Ok(None)
            }
        }
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        // A BTreeMap: already sorted.
        Ok(self.lock().keys().cloned().collect())
    }

    async fn update(&self, pool: &str, txn: &mut TxnFn<'_>) -> Result<(), PoolError> {
        self.update_sync(pool, txn)
    }

    fn try_update_now(&self, pool: &str, txn: &mut TxnFn<'_>) -> Option<Result<(), PoolError>> {
        Some(self.update_sync(pool, txn))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{AllocRequest, IpRange, Owner, PoolSpec};

    #[test]
    fn a_panicking_transaction_leaves_the_store_usable() {
        let store = std::sync::Arc::new(MemoryStore::new());
        let spec = PoolSpec::new("p").with_range(IpRange::new("10.0.0.0/29".parse().unwrap()));
        futures::executor::block_on(store.compare_and_swap(
            "p",
            None,
            Some(&PoolState::new(spec).unwrap()),
        ))
        .unwrap();
        let s2 = store.clone();
        let panicked = std::thread::spawn(move || {
            s2.update_sync("p", &mut |_: &mut PoolState| -> Result<bool, PoolError> {
                panic!("body fails")
            })
        })
        .join();
        assert!(panicked.is_err());
        let mut got = None;
        store
            .update_sync("p", &mut |s| {
                got = Some(
                    s.allocate(&AllocRequest::new(Owner::new("c", "eth0")), 0)?
                        .0,
                );
                Ok(true)
            })
            .unwrap();
        assert_eq!(got.unwrap().address.to_string(), "10.0.0.1/29");
    }
}
