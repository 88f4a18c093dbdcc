//! [`ConfigMapStateStore`]: rorqual-core's [`StateStore`] on Kubernetes, one ConfigMap per key,
//! compare-and-swap on `resourceVersion`.
//!
//! - The version of an entry is its ConfigMap's `resourceVersion` (etcd's revision): it grows
//!   with every write of the key, as the contract asks, but does not start at 1.
//! - `compare_and_swap(key, None, Some(v))` creates the ConfigMap (HTTP 409 AlreadyExists is a
//!   [`Conflict`](rorqual_core::error::Error::Conflict)); with `Some(version)` it replaces it
//!   with `metadata.resourceVersion` set, so the apiserver refuses it (409) when anyone wrote
//!   in between; a delete carries the version as a precondition. One request per write.
//! - Names, labels and the annotation are described in `naming` and `encoding`: every
//!   ConfigMap carries `app.kubernetes.io/managed-by=rorqual` and `rorqual.io/state-store`, and
//!   the key in `rorqual.io/state-key`.
//! - A ConfigMap edited by hand into something that is not an entry (the value removed, the key
//!   annotation changed, …) is reported as
//!   [`CorruptState`](rorqual_core::error::Error::CorruptState) naming the key and the
//!   ConfigMap. It is never replaced: a write needs the version a successful read returned,
//!   and the edit changed it. A ConfigMap of the same name that this store did not write is
//!   never adopted either.

mod encoding;
mod naming;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use rorqual_core::engine::{StateStore, Versioned};
use rorqual_core::error::Error as CoreError;

pub use encoding::{KEY_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE, STORE_LABEL};

/// The store name used by [`ConfigMapStateStore::new`].
pub const DEFAULT_STORE: &str = "rorqual";

/// Errors of the ConfigMap state store, before they become rorqual-core errors (the
/// [`StateStore`] trait returns those; see the `From` conversion for the mapping).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateStoreError {
    /// The ConfigMap holding a key is not a valid entry (edited by hand, or written by
    /// something else).
    #[error("state key `{key}` in ConfigMap {namespace}/{configmap} is unusable: {reason}")]
    Corrupt {
        /// The state key.
        key: String,
        /// The ConfigMap's namespace.
        namespace: String,
        /// The ConfigMap's name.
        configmap: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A ConfigMap with the name this key maps to exists and was not written by this store.
    #[error(
        "ConfigMap {namespace}/{configmap} exists but is not managed by state store `{store}` (state key `{key}`); it is left alone"
    )]
    Unmanaged {
        /// The state key.
        key: String,
        /// The store.
        store: String,
        /// The ConfigMap's namespace.
        namespace: String,
        /// The ConfigMap's name.
        configmap: String,
    },
    /// The apiserver refused a request or could not be reached.
    #[error("{operation} ConfigMap {namespace}/{configmap} (state key `{key}`) failed")]
    Api {
        /// What was being done (`reading`, `creating`, `replacing`, `deleting`, `listing`).
        operation: &'static str,
        /// The state key (empty for a list).
        key: String,
        /// The namespace.
        namespace: String,
        /// The ConfigMap (`*` for a list).
        configmap: String,
        /// The underlying error (boxed: kube's error is large).
        #[source]
        source: Box<kube::Error>,
    },
}

impl StateStoreError {
    /// Whether the same call may succeed later: a transport failure, a timeout, throttling
    /// or a server error; not a refusal (401, 403, 404 namespace, 422) nor a corrupt entry.
    pub fn is_retryable(&self) -> bool {
        match self {
            StateStoreError::Api { source, .. } => match source.as_ref() {
                kube::Error::Api(status) => matches!(status.code, 429 | 500 | 502 | 503 | 504),
                _ => true,
            },
            StateStoreError::Corrupt { .. } | StateStoreError::Unmanaged { .. } => false,
        }
    }
}

/// A corrupt or foreign ConfigMap is [`CoreError::CorruptState`] (the location names the key
/// and the ConfigMap); an API failure is [`CoreError::Remote`] with the whole message, this
/// error as its source, and whether a retry may pass.
impl From<StateStoreError> for CoreError {
    fn from(error: StateStoreError) -> Self {
        match error {
            StateStoreError::Corrupt {
                key,
                namespace,
                configmap,
                reason,
            } => CoreError::CorruptState {
                location: format!("state key `{key}` in ConfigMap {namespace}/{configmap}"),
                reason,
            },
            StateStoreError::Unmanaged {
                key,
                store,
                namespace,
                configmap,
            } => CoreError::CorruptState {
                location: format!("state key `{key}` in ConfigMap {namespace}/{configmap}"),
                reason: format!(
                    "the ConfigMap exists but is not managed by state store `{store}`; it is left alone"
                ),
            },
            api => CoreError::Remote {
                context: error_chain(&api),
                retryable: api.is_retryable(),
                source: Box::new(api),
            },
        }
    }
}

/// An error and its sources, `: `-separated.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// rorqual-core's [`StateStore`] as one ConfigMap per key in a namespace (see the
/// [module docs](self)).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use rorqual_core::engine::StateStore;
/// use rorqual_kube::ConfigMapStateStore;
///
/// let client = kube::Client::try_default().await?;
/// let store: Arc<dyn StateStore> = Arc::new(ConfigMapStateStore::new(client, "rorqual-system"));
/// let version = store.compare_and_swap("rollout-step/web", None, Some(b"3".to_vec())).await?;
/// store.compare_and_swap("rollout-step/web", Some(version), Some(b"4".to_vec())).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConfigMapStateStore {
    api: Api<ConfigMap>,
    namespace: String,
    store: String,
}

impl std::fmt::Debug for ConfigMapStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigMapStateStore")
            .field("namespace", &self.namespace)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl ConfigMapStateStore {
    /// The store [`DEFAULT_STORE`] in `namespace`.
    pub fn new(client: kube::Client, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        ConfigMapStateStore {
            api: Api::namespaced(client, &namespace),
            namespace,
            store: DEFAULT_STORE.to_owned(),
        }
    }

    /// The store `store` in `namespace`: stores of different names share a namespace without
    /// seeing each other's keys (the name prefixes every ConfigMap name and labels it).
    ///
    /// # Errors
    ///
    /// [`CoreError::BadRequest`] when `store` is not a DNS-1123 label of at most 63 characters.
    pub fn named(
        client: kube::Client,
        namespace: impl Into<String>,
        store: &str,
    ) -> Result<Self, CoreError> {
        if !naming::is_store_name(store) {
            return Err(CoreError::BadRequest(format!(
                "state store name `{store}` is not a DNS-1123 label (lowercase alphanumerics and `-`, at most 63)"
            )));
        }
        let mut this = ConfigMapStateStore::new(client, namespace);
        this.store = store.to_owned();
        Ok(this)
    }

    /// The namespace the ConfigMaps live in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The store's name.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// The name of the ConfigMap that holds `key`.
    pub fn configmap_name(&self, key: &str) -> String {
        naming::configmap_name(&self.store, key)
    }

    fn api_error(
        &self,
        operation: &'static str,
        key: &str,
        configmap: &str,
        source: kube::Error,
    ) -> StateStoreError {
        StateStoreError::Api {
            operation,
            key: key.to_owned(),
            namespace: self.namespace.clone(),
            configmap: configmap.to_owned(),
            source: Box::new(source),
        }
    }

    fn corrupt(&self, key: &str, configmap: &str, reason: String) -> StateStoreError {
        StateStoreError::Corrupt {
            key: key.to_owned(),
            namespace: self.namespace.clone(),
            configmap: configmap.to_owned(),
            reason,
        }
    }

    /// The entry under `key`: `None` when its ConfigMap does not exist.
    async fn read(&self, key: &str) -> Result<Option<Versioned>, StateStoreError> {
        let name = self.configmap_name(key);
        let Some(map) = self
            .api
            .get_opt(&name)
            .await
            .map_err(|e| self.api_error("reading", key, &name, e))?
        else {
            return Ok(None);
        };
        self.check_owned(key, &name, &map)?;
        encoding::decode(&map, &self.store, key)
            .map(Some)
            .map_err(|reason| self.corrupt(key, &name, reason))
    }

    /// A ConfigMap without any of this store's marks was not written by it: say so rather
    /// than call it corrupt.
    fn check_owned(&self, key: &str, name: &str, map: &ConfigMap) -> Result<(), StateStoreError> {
        if encoding::is_managed(map, &self.store) || encoding::stored_key(map).is_some() {
            return Ok(());
        }
        Err(StateStoreError::Unmanaged {
            key: key.to_owned(),
            store: self.store.clone(),
            namespace: self.namespace.clone(),
            configmap: name.to_owned(),
        })
    }

    /// The version found after a refused write, for the conflict error. A key whose ConfigMap
    /// is corrupt or foreign reports that instead.
    async fn conflict(&self, key: &str, expected: Option<u64>) -> CoreError {
        match self.read(key).await {
            Ok(found) => CoreError::Conflict {
                key: key.to_owned(),
                expected,
                found: found.map(|v| v.version),
            },
            Err(e) => e.into(),
        }
    }

    async fn cas(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Option<Vec<u8>>,
    ) -> Result<u64, CoreError> {
        let name = self.configmap_name(key);
        match (expected, value) {
            (None, Some(value)) => {
                let map = encoding::encode(&self.store, &name, key, value, None);
                match self.api.create(&PostParams::default(), &map).await {
                    Ok(created) => encoding::version(&created)
                        .map_err(|reason| self.corrupt(key, &name, reason).into()),
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        Err(self.conflict(key, expected).await)
                    }
                    Err(e) => Err(self.api_error("creating", key, &name, e).into()),
                }
            }
            (Some(version), Some(value)) => {
                let map =
                    encoding::encode(&self.store, &name, key, value, Some(version.to_string()));
                match self.api.replace(&name, &PostParams::default(), &map).await {
                    Ok(replaced) => encoding::version(&replaced)
                        .map_err(|reason| self.corrupt(key, &name, reason).into()),
                    Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {
                        Err(self.conflict(key, expected).await)
                    }
                    Err(e) => Err(self.api_error("replacing", key, &name, e).into()),
                }
            }
            (None, None) => match self.read(key).await? {
                // Deleting a key that must not exist and does not: nothing to do.
                None => Ok(0),
                Some(found) => Err(CoreError::Conflict {
                    key: key.to_owned(),
                    expected,
                    found: Some(found.version),
                }),
            },
            (Some(version), None) => {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        resource_version: Some(version.to_string()),
                        uid: None,
                    }),
                    ..DeleteParams::default()
                };
                match self.api.delete(&name, &params).await {
                    Ok(_) => Ok(0),
                    Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {
                        Err(self.conflict(key, expected).await)
                    }
                    Err(e) => Err(self.api_error("deleting", key, &name, e).into()),
                }
            }
        }
    }

    async fn list_entries(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, Versioned)>, StateStoreError> {
        let selector = format!(
            "{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{STORE_LABEL}={}",
            self.store
        );
        let maps = self
            .api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| self.api_error("listing", "", "*", e))?;
        let mut entries = Vec::new();
        for map in maps.items {
            let name = map.metadata.name.clone().unwrap_or_default();
            let Some(key) = encoding::stored_key(&map) else {
                return Err(self.corrupt(
                    "(unknown)",
                    &name,
                    format!("it has the store's labels but no {KEY_ANNOTATION} annotation"),
                ));
            };
            if !key.starts_with(prefix) {
                continue;
            }
            if name != self.configmap_name(key) {
                return Err(self.corrupt(
                    key,
                    &name,
                    format!(
                        "the key belongs in ConfigMap {}, not this one",
                        self.configmap_name(key)
                    ),
                ));
            }
            let entry = encoding::decode(&map, &self.store, key)
                .map_err(|reason| self.corrupt(key, &name, reason))?;
            entries.push((key.to_owned(), entry));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }
}

#[async_trait]
impl StateStore for ConfigMapStateStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, CoreError> {
        Ok(self.read(key).await?)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Option<Vec<u8>>,
    ) -> Result<u64, CoreError> {
        self.cas(key, expected, value).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, CoreError> {
        Ok(self.list_entries(prefix).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> StateStoreError {
        StateStoreError::Api {
            operation: "replacing",
            key: "k".to_owned(),
            namespace: "ns".to_owned(),
            configmap: "rorqual.k".to_owned(),
            source: Box::new(kube::Error::Api(Box::new(
                kube::core::Status::failure("refused", "Forbidden").with_code(code),
            ))),
        }
    }

    #[test]
    fn refusals_are_permanent_and_server_errors_retryable() {
        let forbidden = CoreError::from(api_error(403));
        assert!(!forbidden.is_retryable(), "{forbidden}");
        assert!(
            forbidden.to_string().contains("ConfigMap ns/rorqual.k"),
            "{forbidden}"
        );
        let unavailable = CoreError::from(api_error(503));
        assert!(unavailable.is_retryable(), "{unavailable}");
    }

    #[test]
    fn corrupt_entries_name_their_key() {
        let error = CoreError::from(StateStoreError::Corrupt {
            key: "rollout-step/web".to_owned(),
            namespace: "ns".to_owned(),
            configmap: "rorqual.rollout-step-web-0123".to_owned(),
            reason: "it holds nothing".to_owned(),
        });
        assert!(
            matches!(&error, CoreError::CorruptState { location, .. } if location.contains("`rollout-step/web`")),
            "{error}"
        );
        assert!(!error.is_retryable());
    }
}
