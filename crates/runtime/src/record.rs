//! Typed records persisted by compare-and-swap in a [`StateStore`]: where a controller keeps
//! its state (a rollout's step, a provider's external name) so that a restarted controller
//! resumes exactly where it stopped.
//!
//! A [`RecordStore<T>`] stores each `T` as JSON under `prefix + key`. Writes are conditional on
//! the version read, so two writers never silently overwrite each other: [`RecordStore::modify`]
//! re-reads and re-applies its change on a version conflict, a bounded number of times.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use rorqual_core::engine::{StateStore, Versioned};
use rorqual_core::error::Error as StoreError;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How many times [`RecordStore::modify`] tries by default before giving up on a contended key.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Errors of [`RecordStore`] operations. Each names the store key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The record does not exist.
    #[error("record `{key}` not found")]
    NotFound {
        /// The store key.
        key: String,
    },
    /// The state store failed.
    #[error("state store failed on record `{key}`")]
    Store {
        /// The store key.
        key: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The stored bytes are not a valid JSON encoding of the record type.
    #[error("record `{key}` holds invalid json for {type_name}")]
    Decode {
        /// The store key.
        key: String,
        /// The record type.
        type_name: &'static str,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The value could not be encoded as JSON.
    #[error("cannot encode record `{key}` as json")]
    Encode {
        /// The store key.
        key: String,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// Every attempt lost a compare-and-swap against a concurrent writer.
    #[error("record `{key}` changed concurrently on each of {attempts} attempts")]
    Contended {
        /// The store key.
        key: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last conflict.
        #[source]
        source: StoreError,
    },
}

impl RecordError {
    /// The store key the error is about.
    pub fn key(&self) -> &str {
        match self {
            RecordError::NotFound { key }
            | RecordError::Store { key, .. }
            | RecordError::Decode { key, .. }
            | RecordError::Encode { key, .. }
            | RecordError::Contended { key, .. } => key,
        }
    }

    /// Whether trying the same operation later may succeed (a contended key, a store error the
    /// store calls retryable); a missing record or bad JSON stays wrong until someone fixes it.
    pub fn is_retryable(&self) -> bool {
        match self {
            RecordError::Contended { .. } => true,
            RecordError::Store { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}

/// A record read from the store, with the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record<T> {
    /// The value.
    pub value: T,
    /// Its version in the store.
    pub version: u64,
}

/// Typed records of one kind in a [`StateStore`]. See the [module docs](self).
///
/// ```
/// use std::sync::Arc;
/// use rorqual_core::engine::MemoryStateStore;
/// use rorqual_runtime::RecordStore;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = RecordStore::<u32>::new(Arc::new(MemoryStateStore::new()), "rollout-step/");
/// let (created, fresh) = store.create_if_absent("default/web", &0).await.unwrap();
/// assert!(fresh);
/// let next = store.modify("default/web", |step| *step += 1).await.unwrap();
/// assert_eq!((next.value, next.version), (1, created.version + 1));
/// assert!(store.delete("default/web").await.unwrap());
/// # });
/// ```
pub struct RecordStore<T> {
    store: Arc<dyn StateStore>,
    prefix: String,
    max_attempts: u32,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for RecordStore<T> {
    fn clone(&self) -> Self {
        RecordStore {
            store: self.store.clone(),
            prefix: self.prefix.clone(),
            max_attempts: self.max_attempts,
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for RecordStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordStore")
            .field("type", &std::any::type_name::<T>())
            .field("prefix", &self.prefix)
            .field("max_attempts", &self.max_attempts)
            .field("store", &self.store)
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> RecordStore<T> {
    /// Records of type `T` stored under `prefix + key` in `store`.
    pub fn new(store: Arc<dyn StateStore>, prefix: impl Into<String>) -> Self {
        RecordStore {
            store,
            prefix: prefix.into(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            _type: PhantomData,
        }
    }

    /// Sets how many times [`RecordStore::modify`] tries before giving up (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The store key of record `key`.
    pub fn store_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Reads record `key`; `None` when it does not exist.
    ///
    /// # Errors
    ///
    /// [`RecordError::Store`], [`RecordError::Decode`].
    pub async fn load(&self, key: &str) -> Result<Option<Record<T>>, RecordError> {
        let key = self.store_key(key);
        self.get(&key).await
    }

    /// Creates record `key` with `value` unless it exists. Returns the record now stored and
    /// whether this call created it (`false`: the existing record is returned unchanged).
    ///
    /// # Errors
    ///
    /// [`RecordError::Store`], [`RecordError::Decode`], [`RecordError::Encode`], or
    /// [`RecordError::Contended`] when the record keeps being created and deleted concurrently.
    pub async fn create_if_absent(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(Record<T>, bool), RecordError> {
        let key = self.store_key(key);
        let bytes = encode(&key, value)?;
        let mut last = None;
        for _ in 0..self.max_attempts {
            if let Some(existing) = self.get(&key).await? {
                return Ok((existing, false));
            }
            match self.cas(&key, None, Some(bytes.clone())).await {
                Ok(version) => {
                    let value = decode(&key, &bytes)?;
                    return Ok((Record { value, version }, true));
                }
                Err(conflict @ StoreError::Conflict { .. }) => last = Some(conflict),
                Err(source) => return Err(RecordError::Store { key, source }),
            }
        }
        Err(self.contended(key, last))
    }

    /// Changes record `key` with `change`, re-reading and re-applying it when another writer
    /// got there first (up to the configured number of attempts). A change that leaves the
    /// encoded value as it was writes nothing. Returns the record now stored.
    ///
    /// `change` may run several times, each time on the freshly read value: it must be a
    /// function of that value, not a side effect.
    ///
    /// # Errors
    ///
    /// [`RecordError::NotFound`] when the record does not exist, [`RecordError::Contended`]
    /// after the last conflict, [`RecordError::Store`], [`RecordError::Decode`],
    /// [`RecordError::Encode`].
    pub async fn modify<F>(&self, key: &str, mut change: F) -> Result<Record<T>, RecordError>
    where
        F: FnMut(&mut T),
    {
        let key = self.store_key(key);
        let mut last = None;
        for _ in 0..self.max_attempts {
            let Some(Versioned { value, version }) = self.read(&key).await? else {
                return Err(RecordError::NotFound { key });
            };
            let mut typed: T = decode(&key, &value)?;
            change(&mut typed);
            let bytes = encode(&key, &typed)?;
            if bytes == value {
                return Ok(Record {
                    value: typed,
                    version,
                });
            }
            match self.cas(&key, Some(version), Some(bytes)).await {
                Ok(version) => {
                    return Ok(Record {
                        value: typed,
                        version,
                    });
                }
                Err(conflict @ StoreError::Conflict { .. }) => last = Some(conflict),
                Err(source) => return Err(RecordError::Store { key, source }),
            }
        }
        Err(self.contended(key, last))
    }

    /// Deletes record `key`; returns whether it existed.
    ///
    /// # Errors
    ///
    /// [`RecordError::Store`], or [`RecordError::Contended`] when the record keeps changing
    /// between the read and the delete.
    pub async fn delete(&self, key: &str) -> Result<bool, RecordError> {
        let key = self.store_key(key);
        let mut last = None;
        for _ in 0..self.max_attempts {
            let Some(current) = self.read(&key).await? else {
                return Ok(false);
            };
            match self.cas(&key, Some(current.version), None).await {
                Ok(_) => return Ok(true),
                Err(conflict @ StoreError::Conflict { .. }) => last = Some(conflict),
                Err(source) => return Err(RecordError::Store { key, source }),
            }
        }
        Err(self.contended(key, last))
    }

    /// Every record of this store, by key (without the prefix), in key order.
    ///
    /// # Errors
    ///
    /// [`RecordError::Store`] (naming the prefix), [`RecordError::Decode`].
    pub async fn list(&self) -> Result<Vec<(String, Record<T>)>, RecordError> {
        let entries = self
            .store
            .list(&self.prefix)
            .await
            .map_err(|source| RecordError::Store {
                key: self.prefix.clone(),
                source,
            })?;
        entries
            .into_iter()
            .map(|(key, Versioned { value, version })| {
                let value = decode(&key, &value)?;
                let short = key.strip_prefix(&self.prefix).unwrap_or(&key).to_owned();
                Ok((short, Record { value, version }))
            })
            .collect()
    }

    async fn read(&self, key: &str) -> Result<Option<Versioned>, RecordError> {
        self.store
            .get(key)
            .await
            .map_err(|source| RecordError::Store {
                key: key.to_owned(),
                source,
            })
    }

    async fn get(&self, key: &str) -> Result<Option<Record<T>>, RecordError> {
        match self.read(key).await? {
            Some(Versioned { value, version }) => Ok(Some(Record {
                value: decode(key, &value)?,
                version,
            })),
            None => Ok(None),
        }
    }

    async fn cas(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Option<Vec<u8>>,
    ) -> Result<u64, StoreError> {
        self.store.compare_and_swap(key, expected, value).await
    }

    fn contended(&self, key: String, last: Option<StoreError>) -> RecordError {
        RecordError::Contended {
            // `last` is set by every loop iteration that does not return, and the loops run at
            // least once (max_attempts >= 1); the fallback only keeps this total.
            source: last.unwrap_or_else(|| StoreError::Conflict {
                key: key.clone(),
                expected: None,
                found: None,
            }),
            key,
            attempts: self.max_attempts,
        }
    }
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, RecordError> {
    serde_json::to_vec(value).map_err(|source| RecordError::Encode {
        key: key.to_owned(),
        source,
    })
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, RecordError> {
    serde_json::from_slice(bytes).map_err(|source| RecordError::Decode {
        key: key.to_owned(),
        type_name: std::any::type_name::<T>(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;
    use rorqual_core::engine::MemoryStateStore;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Step {
        index: u32,
        paused: bool,
    }

    fn records() -> (Arc<MemoryStateStore>, RecordStore<Step>) {
        let mem = Arc::new(MemoryStateStore::new());
        (mem.clone(), RecordStore::new(mem, "rollout/"))
    }

    #[tokio::test]
    async fn create_load_modify_delete() {
        let (mem, store) = records();
        assert!(store.load("web").await.unwrap().is_none());
        let first = Step {
            index: 0,
            paused: false,
        };
        let (rec, created) = store.create_if_absent("web", &first).await.unwrap();
        assert!(created);
        assert_eq!(rec.value, first);
        let (again, created) = store
            .create_if_absent(
                "web",
                &Step {
                    index: 9,
                    paused: true,
                },
            )
            .await
            .unwrap();
        assert!(!created, "an existing record is kept");
        assert_eq!(again, rec);

        let next = store.modify("web", |s| s.index += 1).await.unwrap();
        assert_eq!(next.value.index, 1);
        assert_eq!(next.version, rec.version + 1);
        let same = store.modify("web", |s| s.index = 1).await.unwrap();
        assert_eq!(same.version, next.version, "no change, no write");

        let raw = mem.get("rollout/web").await.unwrap().unwrap();
        assert_eq!(raw.value, br#"{"index":1,"paused":false}"#);
        assert_eq!(store.list().await.unwrap()[0].0, "web");

        assert!(store.delete("web").await.unwrap());
        assert!(!store.delete("web").await.unwrap());
        let err = store.modify("web", |s| s.index += 1).await.unwrap_err();
        assert!(matches!(err, RecordError::NotFound { .. }));
        assert_eq!(err.to_string(), "record `rollout/web` not found");
    }

    #[tokio::test]
    async fn bad_json_names_the_key_and_type() {
        let (mem, store) = records();
        mem.compare_and_swap("rollout/web", None, Some(b"{".to_vec()))
            .await
            .unwrap();
        let err = store.load("web").await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("record `rollout/web` holds invalid json for")
        );
        assert!(err.source().is_some());
        assert!(!err.is_retryable());
    }

    /// A store where another writer bumps the key just before each of the first `races`
    /// compare-and-swaps.
    #[derive(Debug)]
    struct Racy {
        inner: MemoryStateStore,
        races: AtomicU32,
    }

    #[async_trait]
    impl StateStore for Racy {
        async fn get(&self, key: &str) -> rorqual_core::Result<Option<Versioned>> {
            self.inner.get(key).await
        }
        async fn compare_and_swap(
            &self,
            key: &str,
            expected: Option<u64>,
            value: Option<Vec<u8>>,
        ) -> rorqual_core::Result<u64> {
            if self.races.load(Ordering::SeqCst) > 0 {
                self.races.fetch_sub(1, Ordering::SeqCst);
                let cur = self.inner.get(key).await?.unwrap();
                let mut other: Step = serde_json::from_slice(&cur.value).unwrap();
                other.paused = !other.paused;
                self.inner
                    .compare_and_swap(
                        key,
                        Some(cur.version),
                        Some(serde_json::to_vec(&other).unwrap()),
                    )
                    .await?;
            }
            self.inner.compare_and_swap(key, expected, value).await
        }
        async fn list(&self, prefix: &str) -> rorqual_core::Result<Vec<(String, Versioned)>> {
            self.inner.list(prefix).await
        }
    }

    #[tokio::test]
    async fn modify_retries_conflicts_on_fresh_values_then_gives_up() {
        let racy = Arc::new(Racy {
            inner: MemoryStateStore::new(),
            races: AtomicU32::new(0),
        });
        let store = RecordStore::<Step>::new(racy.clone(), "r/").max_attempts(3);
        store
            .create_if_absent(
                "web",
                &Step {
                    index: 0,
                    paused: false,
                },
            )
            .await
            .unwrap();

        racy.races.store(2, Ordering::SeqCst);
        let mut runs = 0;
        let rec = store
            .modify("web", |s| {
                runs += 1;
                s.index += 1;
            })
            .await
            .unwrap();
        assert_eq!(runs, 3, "two conflicts, then success");
        assert_eq!(rec.value.index, 1, "applied once, to the fresh value");
        assert!(!rec.value.paused, "the other writer's two flips are kept");

        racy.races.store(10, Ordering::SeqCst);
        let err = store.modify("web", |s| s.index += 1).await.unwrap_err();
        assert!(
            matches!(err, RecordError::Contended { attempts: 3, .. }),
            "{err}"
        );
        assert!(err.is_retryable());
        assert_eq!(err.key(), "r/web");
        assert_eq!(
            err.to_string(),
            "record `r/web` changed concurrently on each of 3 attempts"
        );
        assert!(matches!(
            err.source().and_then(|s| s.downcast_ref::<StoreError>()),
            Some(StoreError::Conflict { .. })
        ));
    }
}
