//! rorqual-providers: declarative cloud resources. A [`Provider`] observes, creates, updates
//! and deletes one kind of external resource (a database, a queue); the
//! [`ManagedReconciler`] around it owns the hard parts once for every provider, with
//! Crossplane's semantics: external names, a create-pending guard against leaks and
//! duplicates, management and deletion policies, `Ready` / `Synced` conditions, backoff and
//! polling, connection details published to a [`ConnectionSink`], and secrets that never print.
//!
//! - [`provider`]: the seam ([`Provider`], [`ExternalClient`], [`Observation`]) and its
//!   errors, retryable or not;
//! - [`resource`]: managed resource specs (YAML/JSON, validated with field paths), policies,
//!   and the stored record;
//! - [`condition`]: `Synced` and `Ready` with observed generations;
//! - [`decision`]: the state machine, pure: what to do given a resource, an observation and
//!   the time;
//! - [`reconciler`]: the effects shell on `rorqual-runtime`;
//! - [`store`]: managed resources in a compare-and-swap
//!   [`StateStore`](rorqual_core::engine::StateStore), applied and deleted by users;
//! - [`sink`]: where connection details go; [`secret`]: redacting types;
//! - `conformance` (feature `testing`): the checks every provider must pass.
//!
//! - `postgres` (feature `postgres`): the PostgreSQL provider: databases, roles, grants and
//!   declarative table schemas planned as migrations.
//!
//! The RabbitMQ provider comes later.
//!
//! ```
//! use std::sync::Arc;
//! use rorqual_core::engine::MemoryStateStore;
//! use rorqual_providers::provider::{Creation, ExternalClient, ExternalRef, Observation, Result, Update};
//! use rorqual_providers::{ManagedReconciler, Provider, ResourceSpec};
//! use rorqual_runtime::{Context, Reconciler};
//!
//! /// A provider of names in a set: the smallest external "service".
//! #[derive(Debug, Default)]
//! struct Names(Arc<parking_lot::Mutex<std::collections::BTreeSet<String>>>);
//!
//! #[async_trait::async_trait]
//! impl Provider for Names {
//!     fn kind(&self) -> &str { "Name" }
//!     async fn connect(&self, _: &ExternalRef<'_>) -> Result<Box<dyn ExternalClient>> {
//!         Ok(Box::new(Names(self.0.clone())))
//!     }
//! }
//!
//! #[async_trait::async_trait]
//! impl ExternalClient for Names {
//!     async fn observe(&self, r: &ExternalRef<'_>) -> Result<Observation> {
//!         Ok(if self.0.lock().contains(r.external_name) { Observation::up_to_date() } else { Observation::missing() })
//!     }
//!     async fn create(&self, r: &ExternalRef<'_>) -> Result<Creation> {
//!         self.0.lock().insert(r.external_name.to_owned());
//!         Ok(Creation::new())
//!     }
//!     async fn update(&self, _: &ExternalRef<'_>) -> Result<Update> { Ok(Update::default()) }
//!     async fn delete(&self, r: &ExternalRef<'_>) -> Result<()> {
//!         self.0.lock().remove(r.external_name);
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let names = Names::default();
//! let service = names.0.clone();
//! let reconciler = ManagedReconciler::builder(Arc::new(names), Arc::new(MemoryStateStore::new())).build().unwrap();
//! reconciler.resources().apply(ResourceSpec::new("orders", serde_json::Value::Null)).await.unwrap();
//!
//! let ctx = Context::new("names", 1);
//! reconciler.reconcile("orders".into(), ctx.clone()).await.unwrap(); // creates it
//! reconciler.reconcile("orders".into(), ctx.clone()).await.unwrap(); // sees it: Ready, Synced
//! assert!(service.lock().contains("orders"));
//! let status = reconciler.resources().get("orders").await.unwrap().unwrap().status;
//! assert!(status.is_healthy());
//! # });
//! ```

pub mod condition;
#[cfg(feature = "testing")]
pub mod conformance;
pub mod decision;
pub mod error;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod provider;
pub mod reconciler;
pub mod resource;
pub mod secret;
pub mod sink;
pub mod store;

pub use condition::{Condition, ConditionStatus, ConditionType, Reason, ResourceStatus};
pub use decision::{Timing, TimingError};
pub use error::ReconcileError;
pub use provider::{ExternalClient, Observation, Provider, ProviderError};
pub use reconciler::{ManagedReconciler, ManagedReconcilerBuilder};
pub use resource::{DeletionPolicy, ManagedResource, ManagementPolicy, ResourceSpec, SpecError};
pub use secret::{ConnectionDetails, Secret};
pub use sink::{ConnectionSink, MemorySink, SinkError};
pub use store::{ManagedResources, Resolution, StoreError};

#[cfg(test)]
mod object_safety {
    use std::sync::Arc;

    use super::*;

    fn assert_seam<T: ?Sized + Send + Sync + std::fmt::Debug + 'static>() {}

    #[test]
    fn seams_are_object_safe_send_and_sync() {
        assert_seam::<dyn Provider>();
        assert_seam::<dyn ExternalClient>();
        assert_seam::<dyn ConnectionSink>();
        let _: Arc<dyn ConnectionSink> = Arc::new(MemorySink::new());
        assert_seam::<ManagedReconciler>();
    }
}
