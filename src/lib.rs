//! rorqual: an embeddable SDK for building container platforms.
//!
//! This facade re-exports the workspace crates:
//! - [`core`]: the model, the engine / placement / network seams and the embedded engines;
//! - [`scheduler`]: the scheduling framework and its plugins;
//! - [`net`]: underlay IP pools and the CNI IPAM plugin;
//! - [`providers`]: declarative cloud resources.
//!
//! Most programs start with `use rorqual::prelude::*;`.

pub use rorqual_core as core;
pub use rorqual_net as net;
pub use rorqual_providers as providers;
pub use rorqual_scheduler as scheduler;

/// The names most programs need.
pub mod prelude {
    pub use rorqual_core::engine::{Engine, GroupStatus, LogOptions, StateStore};
    pub use rorqual_core::model::{
        AppKey, AppSpec, ContainerSpec, Instance, InstancePhase, Node, Probe, Resources, Revision,
        WorkloadKind,
    };
    pub use rorqual_core::network::{HostNetwork, Network};
    pub use rorqual_core::placement::{LeastAllocated, Placement};
    pub use rorqual_core::{Error, Result};
}
