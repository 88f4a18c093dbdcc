//! Registry sync: keeps an external service registry in step with every allocation and
//! release, across restarts (BlueKing's sidecar, which made importing IP lists into the
//! registry by hand unnecessary).
//!
//! - [`RegistrySink`]: what a registry offers: its checkpoint (the store revision it
//!   reflects), a batch of writes applied together with the new checkpoint, and a full
//!   replace. [`MemoryRegistry`] keeps one in memory; [`EtcdRegistry`] (feature `etcd`) writes
//!   keys to etcd.
//! - [`RegistrySync`]: the consumer. It resumes the store's changes after the registry's
//!   checkpoint ([`crate::store::PoolStore::watch_from`]), or rebuilds the registry from a
//!   [`crate::store::PoolStore::snapshot`] when it has none or the store has compacted the
//!   changes after it; then it applies each commit with its revision as the new checkpoint.
//!   No change is missed and none is applied twice in effect.
//! - [`plan`]: the pure part: which registry writes a commit's events, or a snapshot, make.
//!
//! # Entries
//!
//! A registry holds one entry per **Active** address, keyed `<pool>/<ip>`, with the value
//! `{"instance": <owner container id>, "ifname", "identity", "node", "mac", "state": "active"}`
//! ([`RegistryEntry`]). Available, Disabled and Reserved addresses have none, including an
//! address Reserved for a stateful identity's claim: nothing answers on it until an owner
//! activates it again (it gets its entry back then, with the same address), and a registry
//! is for finding running instances.

mod consumer;
mod entry;
mod error;
#[cfg(feature = "etcd")]
mod etcd;
pub mod plan;
mod sink;

pub use consumer::{RegistrySync, ReportFn, ResyncReason, SyncReport};
pub use entry::{RegistryEntry, RegistryKey};
pub use error::SyncError;
#[cfg(feature = "etcd")]
pub use etcd::{EtcdRegistry, EtcdRegistryBuilder};
pub use plan::{RegistryBatch, RegistryChange};
pub use sink::{MemoryRegistry, RegistrySink};

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_registry_sink_is_object_safe_and_send() {
        fn assert_send_sync<T: Send + Sync + ?Sized>() {}
        assert_send_sync::<dyn RegistrySink>();
        let _sink: Arc<dyn RegistrySink> = Arc::new(MemoryRegistry::new());
        fn assert_send<T: Send>(_: &T) {}
        let sync = RegistrySync::new(
            Arc::new(crate::store::memory::MemoryStore::new()),
            Arc::new(MemoryRegistry::new()),
        );
        assert_send(&sync.run(std::future::pending()));
    }
}
