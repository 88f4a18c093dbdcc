//! rorqual: an embeddable SDK for building container platforms.
//!
//! This facade re-exports the workspace crates:
//! - [`core`]: the model, the engine / placement / network seams and the embedded engines;
//! - [`scheduler`]: the scheduling framework and its plugins;
//! - [`net`]: underlay IP pools and the CNI IPAM plugin;
//! - [`providers`]: declarative cloud resources.
//!
//! Most programs start with `use rorqual::prelude::*;`. The README's example, kept compiling
//! here: the embedded engine with the full scheduler as its placement.
//!
//! ```no_run
//! use std::sync::Arc;
//! use rorqual::core::local::LocalEngine;
//! use rorqual::prelude::*;
//!
//! # async fn run() -> anyhow::Result<()> {
//! let engine = LocalEngine::builder()
//!     .nodes(3)
//!     .placement(Arc::new(rorqual::scheduler::Scheduler::with_default_plugins()))
//!     .build()
//!     .await?;
//! let spec = AppSpec::new(
//!     "web",
//!     vec![ContainerSpec::new("app", ["/usr/local/bin/my-server"])
//!         .port("http", 8080)
//!         .readiness(Probe::http("/healthz", "http"))],
//! )
//! .replicas(3);
//! engine.apply_group(&spec, spec.replicas).await?;
//! for instance in engine.instances(&spec.key()).await? {
//!     println!("{} on {:?}: {:?}", instance.id, instance.node, instance.phase);
//! }
//! engine.shutdown().await?;
//! # Ok(()) }
//! ```

pub use rorqual_core as core;
pub use rorqual_net as net;
pub use rorqual_providers as providers;
pub use rorqual_scheduler as scheduler;

/// The names most programs need.
pub mod prelude {
    pub use rorqual_core::engine::{Engine, GroupStatus, LogOptions, StateStore};
    pub use rorqual_core::local::LocalEngine;
    pub use rorqual_core::model::{
        AppKey, AppSpec, ContainerSpec, Instance, InstancePhase, Node, Probe, Resources, Revision,
        WorkloadKind,
    };
    pub use rorqual_core::network::{HostNetwork, Network};
    pub use rorqual_core::placement::{LeastAllocated, Placement};
    pub use rorqual_core::{Error, Result};
}
