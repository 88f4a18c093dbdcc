//! rorqual-core: the platform model, the engine seam and its embedded implementations.
//!
//! - [`model`]: application specs (stateless and stateful), instances, nodes, events,
//!   Kubernetes quantities, revision hashes and validation;
//! - [`engine`]: the [`Engine`](engine::Engine) seam over orchestration engines, with its
//!   controller [`StateStore`](engine::StateStore);
//! - [`placement`] and [`network`]: the seams an engine asks where an instance goes and how it
//!   is reached, with defaults (least-allocated first fit, host ports).
//!
//! ```
//! use rorqual_core::model::{AppSpec, ContainerSpec, Probe, ValidationTarget};
//!
//! let spec = AppSpec::new(
//!     "web",
//!     vec![ContainerSpec::new("app", ["/usr/bin/my-server"]).port("http", 8080).readiness(Probe::http("/healthz", "http"))],
//! )
//! .replicas(3);
//! spec.validate(ValidationTarget::LOCAL).unwrap();
//! assert_eq!(spec.revision(), spec.clone().replicas(5).revision());
//! ```

pub mod analysis;
pub mod approval;
pub mod clock;
pub mod demo;
pub mod engine;
pub mod error;
pub mod local;
#[cfg(feature = "testing")]
pub mod memory;
pub mod model;
pub mod network;
pub mod notify;
pub mod placement;
pub mod release;
pub mod traffic;

pub use error::{Error, Result};

#[cfg(test)]
mod object_safety {
    use std::sync::Arc;

    use super::*;

    fn assert_seam<T: ?Sized + Send + Sync + std::fmt::Debug + 'static>() {}

    #[test]
    fn seams_are_object_safe_send_and_sync() {
        assert_seam::<dyn engine::Engine>();
        assert_seam::<dyn engine::StateStore>();
        assert_seam::<dyn placement::Placement>();
        assert_seam::<dyn network::Network>();
        let _: Arc<dyn placement::Placement> = Arc::new(placement::LeastAllocated);
        let _: Arc<dyn network::Network> = Arc::new(network::HostNetwork::default());
        let _: Arc<dyn engine::StateStore> = Arc::new(engine::MemoryStateStore::new());
    }
}
