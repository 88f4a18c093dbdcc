//! A small compare-and-swap key/value store where controllers persist their state.

use std::collections::BTreeMap;
use std::fmt::Debug;

use async_trait::async_trait;

use crate::error::{Error, Result};

/// A stored value and its version. Versions are at least 1 and grow with every write of the
/// key (the in-memory and file stores count from 1; a Kubernetes store uses the object's
/// `resourceVersion`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The bytes stored (controllers store JSON).
    pub value: Vec<u8>,
    /// The version, for the next compare-and-swap.
    pub version: u64,
}

/// A compare-and-swap store for controller state (on Kubernetes: a custom resource's status,
/// with `resourceVersion` as the version).
#[async_trait]
pub trait StateStore: Send + Sync + Debug + 'static {
    /// Reads a key.
    async fn get(&self, key: &str) -> Result<Option<Versioned>>;

    /// Writes `value` (or deletes the key, when `None`) if the key's current version is
    /// `expected` (`None`: the key must not exist). Returns the new version (0 after a delete).
    /// A mismatch is [`Error::Conflict`] and changes nothing.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Option<Vec<u8>>,
    ) -> Result<u64>;

    /// Every key starting with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>>;
}

/// Applies a compare-and-swap to a map; shared by the in-memory and file-backed stores.
pub fn apply_cas(
    map: &mut BTreeMap<String, Versioned>,
    key: &str,
    expected: Option<u64>,
    value: Option<Vec<u8>>,
) -> Result<u64> {
    let found = map.get(key).map(|v| v.version);
    if found != expected {
        return Err(Error::Conflict {
            key: key.to_owned(),
            expected,
            found,
        });
    }
    match value {
        Some(value) => {
            let version = found.unwrap_or(0) + 1;
            map.insert(key.to_owned(), Versioned { value, version });
            Ok(version)
        }
        None => {
            map.remove(key);
            Ok(0)
        }
    }
}

/// The entries of a map whose keys start with `prefix`, in key order; shared by the in-memory
/// and file-backed stores.
pub fn list_prefix(map: &BTreeMap<String, Versioned>, prefix: &str) -> Vec<(String, Versioned)> {
    map.range(prefix.to_owned()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(any(test, feature = "testing"))]
/// A [`StateStore`] in memory.
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    map: parking_lot::Mutex<BTreeMap<String, Versioned>>,
}

#[cfg(any(test, feature = "testing"))]
impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[cfg(any(test, feature = "testing"))]
#[async_trait]
impl StateStore for MemoryStateStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        Ok(self.map.lock().get(key).cloned())
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Option<Vec<u8>>,
    ) -> Result<u64> {
        apply_cas(&mut self.map.lock(), key, expected, value)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        Ok(list_prefix(&self.map.lock(), prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cas_semantics() {
        let s = MemoryStateStore::new();
        assert_eq!(
            s.compare_and_swap("a", None, Some(b"1".to_vec()))
                .await
                .unwrap(),
            1
        );
        let err = s
            .compare_and_swap("a", None, Some(b"x".to_vec()))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Conflict { found: Some(1), .. }),
            "{err}"
        );
        assert_eq!(
            s.compare_and_swap("a", Some(1), Some(b"2".to_vec()))
                .await
                .unwrap(),
            2
        );
        assert_eq!(s.get("a").await.unwrap().unwrap().value, b"2");
        s.compare_and_swap("ab", None, Some(vec![])).await.unwrap();
        s.compare_and_swap("b", None, Some(vec![])).await.unwrap();
        let keys: Vec<_> = s
            .list("a")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["a", "ab"]);
        assert_eq!(s.compare_and_swap("a", Some(2), None).await.unwrap(), 0);
        assert!(s.get("a").await.unwrap().is_none());
    }
}
