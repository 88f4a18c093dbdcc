//! Where managed resources live: [`ManagedResources`], records of one kind in a
//! [`StateStore`], written by compare-and-swap. Users apply and delete specs through it (as
//! they would `kubectl apply` a custom resource); the reconciler reads them and writes its
//! bookkeeping and status with the version it read, so a concurrent change is never
//! overwritten.

use std::fmt;
use std::sync::Arc;

use rorqual_core::clock::Clock;
use rorqual_core::engine::StateStore;
use rorqual_core::model::ValidationErrors;
use rorqual_runtime::{RecordError, RecordStore, TriggerSender};

use crate::resource::{ManagedResource, ResourceSpec};

/// Why an operation on [`ManagedResources`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The spec is invalid; every problem with its path.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    /// The managed resource does not exist.
    #[error("managed resource `{name}` not found")]
    NotFound {
        /// Its name.
        name: String,
    },
    /// The managed resource is being deleted; its spec can no longer change.
    #[error("managed resource `{name}` is being deleted")]
    Deleting {
        /// Its name.
        name: String,
    },
    /// There is no create to resolve.
    #[error("managed resource `{name}` has no pending create to resolve")]
    NothingPending {
        /// Its name.
        name: String,
    },
    /// Reading or writing the record failed.
    #[error(transparent)]
    Record(#[from] RecordError),
}

impl StoreError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Record(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// How a human resolves a create whose result was never recorded (see
/// [`Preflight::RefuseCreatePending`](crate::decision::Preflight::RefuseCreatePending)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolution {
    /// The create did happen, under this external name: adopt it.
    Created {
        /// The external resource's name.
        external_name: String,
    },
    /// Nothing was created: creating again is safe.
    NotCreated,
}

/// Managed resources of one kind in a [`StateStore`], under `providers/<kind>/<name>`.
#[derive(Clone)]
pub struct ManagedResources {
    records: RecordStore<ManagedResource>,
    store: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
    trigger: Option<TriggerSender<String>>,
}

impl fmt::Debug for ManagedResources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedResources")
            .field("records", &self.records)
            .field("triggers", &self.trigger.is_some())
            .finish()
    }
}

/// A record and the version it was read at.
pub(crate) type Versioned = (ManagedResource, u64);

/// What a version-checked write found.
#[derive(Debug)]
pub(crate) enum Write {
    /// Written; the new version.
    Done(u64),
    /// Someone else wrote first.
    Conflict,
}

impl ManagedResources {
    /// Managed resources of `kind` in `store`; `clock` stamps applies and deletions.
    pub fn new(store: Arc<dyn StateStore>, kind: &str, clock: Arc<dyn Clock>) -> Self {
        ManagedResources {
            records: RecordStore::new(store.clone(), format!("providers/{kind}/")),
            store,
            clock,
            trigger: None,
        }
    }

    /// Triggers a reconcile of each resource applied, deleted or resolved through this
    /// handle (a [`Triggers::sender`](rorqual_runtime::Triggers::sender) of the controller).
    #[must_use]
    pub fn with_trigger(mut self, trigger: TriggerSender<String>) -> Self {
        self.trigger = Some(trigger);
        self
    }

    fn now_ms(&self) -> u64 {
        crate::reconciler::unix_ms(self.clock.now())
    }

    fn poke(&self, name: &str) {
        if let Some(t) = &self.trigger {
            t.trigger(name.to_owned());
        }
    }

    /// Creates the managed resource, or changes its spec (the generation grows by one when
    /// the spec changes). Returns the record now stored.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] (nothing is written), [`StoreError::Deleting`], or a record
    /// error.
    pub async fn apply(&self, spec: ResourceSpec) -> Result<ManagedResource, StoreError> {
        spec.validate()?;
        let name = spec.name.clone();
        let fresh = ManagedResource::new(spec.clone(), self.now_ms());
        let (record, created) = self.records.create_if_absent(&name, &fresh).await?;
        if created {
            self.poke(&name);
            return Ok(record.value);
        }
        if record.value.is_deleting() {
            return Err(StoreError::Deleting { name });
        }
        let mut deleting = false;
        let record = self
            .records
            .modify(&name, |r| {
                deleting = r.is_deleting();
                if r.spec != spec && !deleting {
                    r.spec = spec.clone();
                    r.meta.generation += 1;
                }
            })
            .await?;
        if deleting {
            return Err(StoreError::Deleting { name });
        }
        self.poke(&name);
        Ok(record.value)
    }

    /// The managed resource `name`.
    ///
    /// # Errors
    ///
    /// A record error.
    pub async fn get(&self, name: &str) -> Result<Option<ManagedResource>, StoreError> {
        Ok(self.records.load(name).await?.map(|r| r.value))
    }

    /// Every managed resource of this kind, by name.
    ///
    /// # Errors
    ///
    /// A record error.
    pub async fn list(&self) -> Result<Vec<ManagedResource>, StoreError> {
        Ok(self
            .records
            .list()
            .await?
            .into_iter()
            .map(|(_, r)| r.value)
            .collect())
    }

    /// The names of every managed resource of this kind (start keys for a controller).
    ///
    /// # Errors
    ///
    /// A record error.
    pub async fn names(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .records
            .list()
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Asks for the deletion of `name`: the reconciler deletes the external resource (or
    /// orphans it, per the policies) and then removes the record. Returns whether the managed
    /// resource existed; asking twice changes nothing.
    ///
    /// # Errors
    ///
    /// A record error.
    pub async fn delete(&self, name: &str) -> Result<bool, StoreError> {
        let now = self.now_ms();
        match self
            .records
            .modify(name, |r| {
                r.meta.deletion_requested_at_ms.get_or_insert(now);
            })
            .await
        {
            Ok(_) => {
                self.poke(name);
                Ok(true)
            }
            Err(RecordError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Resolves a create whose result was never recorded: records what a human found.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::NothingPending`], or a record error.
    pub async fn resolve_pending_create(
        &self,
        name: &str,
        resolution: Resolution,
    ) -> Result<ManagedResource, StoreError> {
        let now = self.now_ms();
        let mut pending = true;
        let record = self
            .records
            .modify(name, |r| {
                pending = r.meta.create_incomplete();
                if !pending {
                    return;
                }
                // The result marker must be at least as new as the pending one.
                let at = now.max(r.meta.create_pending_at_ms.unwrap_or(0));
                match &resolution {
                    Resolution::Created { external_name } => {
                        r.meta.external_name = Some(external_name.clone());
                        r.meta.create_succeeded_at_ms = Some(at);
                    }
                    Resolution::NotCreated => r.meta.create_failed_at_ms = Some(at),
                }
            })
            .await
            .map_err(|e| match e {
                RecordError::NotFound { .. } => StoreError::NotFound {
                    name: name.to_owned(),
                },
                e => e.into(),
            })?;
        if !pending {
            return Err(StoreError::NothingPending {
                name: name.to_owned(),
            });
        }
        self.poke(name);
        Ok(record.value)
    }

    /// Reads `name` with its version.
    pub(crate) async fn load(&self, name: &str) -> Result<Option<Versioned>, RecordError> {
        Ok(self.records.load(name).await?.map(|r| (r.value, r.version)))
    }

    /// Writes `resource` if `name` is still at `version`.
    pub(crate) async fn write_at(
        &self,
        name: &str,
        resource: &ManagedResource,
        version: u64,
    ) -> Result<Write, RecordError> {
        let key = self.records.store_key(name);
        let bytes = serde_json::to_vec(resource).map_err(|source| RecordError::Encode {
            key: key.clone(),
            source,
        })?;
        self.cas(key, version, Some(bytes)).await
    }

    /// Removes `name` if it is still at `version`.
    pub(crate) async fn remove_at(&self, name: &str, version: u64) -> Result<Write, RecordError> {
        self.cas(self.records.store_key(name), version, None).await
    }

    async fn cas(
        &self,
        key: String,
        version: u64,
        value: Option<Vec<u8>>,
    ) -> Result<Write, RecordError> {
        match self
            .store
            .compare_and_swap(&key, Some(version), value)
            .await
        {
            Ok(v) => Ok(Write::Done(v)),
            Err(rorqual_core::Error::Conflict { .. }) => Ok(Write::Conflict),
            Err(source) => Err(RecordError::Store { key, source }),
        }
    }

    /// Changes `name` with `change`, re-reading and re-applying it on a conflict (for
    /// results that must be recorded whatever else changed meanwhile).
    pub(crate) async fn modify(
        &self,
        name: &str,
        change: impl FnMut(&mut ManagedResource),
    ) -> Result<Versioned, RecordError> {
        let r = self.records.modify(name, change).await?;
        Ok((r.value, r.version))
    }
}

#[cfg(test)]
mod tests {
    use rorqual_core::clock::ManualClock;
    use rorqual_core::engine::MemoryStateStore;
    use serde_json::json;

    use super::*;

    fn resources() -> (ManagedResources, Arc<MemoryStateStore>) {
        let mem = Arc::new(MemoryStateStore::new());
        let r = ManagedResources::new(mem.clone(), "Database", Arc::new(ManualClock::new()));
        (r, mem)
    }

    #[tokio::test]
    async fn apply_bumps_the_generation_only_when_the_spec_changes() {
        let (r, mem) = resources();
        let spec = ResourceSpec::new("orders", json!({"size": 1}));
        assert_eq!(r.apply(spec.clone()).await.unwrap().meta.generation, 1);
        assert_eq!(r.apply(spec.clone()).await.unwrap().meta.generation, 1);
        let mut bigger = spec;
        bigger.for_provider = json!({"size": 2});
        assert_eq!(r.apply(bigger).await.unwrap().meta.generation, 2);
        assert_eq!(r.names().await.unwrap(), ["orders"]);
        assert!(
            mem.get("providers/Database/orders")
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn invalid_specs_are_not_stored_and_deleting_ones_do_not_change() {
        let (r, _) = resources();
        let err = r
            .apply(ResourceSpec::new("Orders", json!({})))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
        assert!(!err.is_retryable());
        assert!(r.list().await.unwrap().is_empty());

        let spec = ResourceSpec::new("orders", json!({}));
        r.apply(spec.clone()).await.unwrap();
        assert!(r.delete("orders").await.unwrap());
        let first = r
            .get("orders")
            .await
            .unwrap()
            .unwrap()
            .meta
            .deletion_requested_at_ms;
        assert!(r.delete("orders").await.unwrap(), "asking twice is fine");
        assert_eq!(
            r.get("orders")
                .await
                .unwrap()
                .unwrap()
                .meta
                .deletion_requested_at_ms,
            first,
            "the first request's time is kept"
        );
        let err = r.apply(spec).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "managed resource `orders` is being deleted"
        );
        assert!(!r.delete("missing").await.unwrap());
    }

    #[tokio::test]
    async fn resolving_needs_a_pending_create_and_records_what_a_human_found() {
        let (r, _) = resources();
        let err = r
            .resolve_pending_create("orders", Resolution::NotCreated)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        r.apply(ResourceSpec::new("orders", json!({})))
            .await
            .unwrap();
        r.modify("orders", |m| m.meta.create_pending_at_ms = Some(5))
            .await
            .unwrap();
        let resolved = r
            .resolve_pending_create(
                "orders",
                Resolution::Created {
                    external_name: "db-42".into(),
                },
            )
            .await
            .unwrap();
        assert!(!resolved.meta.create_incomplete());
        assert_eq!(resolved.external_name(), "db-42");
        assert!(matches!(
            r.resolve_pending_create("orders", Resolution::NotCreated)
                .await
                .unwrap_err(),
            StoreError::NothingPending { .. }
        ));
    }
}
