//! rorqual-core: the contract every other rorqual crate builds on: the platform model, the
//! seams and their errors. It carries no HTTP, no process control and no expression language;
//! implementations live in their own crates (`rorqual-local`, `rorqual-release`,
//! `rorqual-scheduler`, `rorqual-net`).
//!
//! - [`model`]: application specs (stateless and stateful), instances, nodes, events,
//!   Kubernetes quantities, revision hashes and validation;
//! - [`engine`]: the [`Engine`](engine::Engine) seam over orchestration engines, with its
//!   controller [`StateStore`](engine::StateStore);
//! - [`placement`] and [`network`]: the seams an engine asks where an instance goes and how it
//!   is reached (a least-allocated first fit is the default placement);
//! - [`pod_keys`]: the annotation and label keys a Kubernetes pod carries placement needs in;
//! - [`ip_capacity`]: the seam a scheduler reads underlay pools' free addresses through and
//!   reserves one;
//! - [`clock`]: the time seam controllers read and sleep on; [`backoff`]: capped exponential
//!   retry delays;
//! - `memory` (feature `testing`): `MemoryEngine`, an in-memory engine with fault injection;
//! - `conformance` (feature `testing`): the checks every `Engine` and `StateStore` must pass.
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

pub mod backoff;
pub mod clock;
#[cfg(feature = "testing")]
pub mod conformance;
pub mod engine;
pub mod error;
pub mod ip_capacity;
#[cfg(feature = "testing")]
pub mod memory;
pub mod model;
pub mod network;
pub mod placement;
pub mod pod_keys;

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
        let _: Arc<dyn engine::StateStore> = Arc::new(engine::MemoryStateStore::new());
    }
}
