//! rorqual: an embeddable SDK for building container platforms.
//!
//! This facade re-exports the workspace crates, each behind a feature of the same name (as
//! `kube` does with `runtime`); the default set, `local`, is what the quickstart needs:
//! - [`core`] (always): the model, the seams (engine, state store, placement, network, clock)
//!   and their errors; the `testing` feature adds the in-memory engine;
//! - `local` (feature `local`, default): the embedded `LocalEngine` and host networking;
//! - `release` (feature `release`): strategies, the rollout controller, analysis, traffic
//!   routers, approvals and notifications;
//! - `runtime` (feature `runtime`): the controller runtime every rorqual controller runs on;
//! - `scheduler` (feature `scheduler`): the scheduling framework and its plugins;
//! - `net` (feature `net`): underlay IP pools and the CNI IPAM plugin;
//! - `providers` (feature `providers`): declarative cloud resources;
//! - `kube` (feature `kube`, parts behind `kube-engine`, `kube-endpoints`, `kube-scheduler`,
//!   `kube-node-agent`, `kube-testenv`): rorqual on Kubernetes.
//!
//! Most programs start with `use rorqual::prelude::*;`. The README's example, kept compiling
//! here: the embedded engine with the full scheduler as its placement.
//!
//! ```no_run
//! # #[cfg(all(feature = "local", feature = "scheduler"))]
//! # mod doc {
//! use std::sync::Arc;
//! use rorqual::local::LocalEngine;
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
//! # }
//! ```

pub use rorqual_core as core;
#[cfg(feature = "kube")]
pub use rorqual_kube as kube;
#[cfg(feature = "local")]
pub use rorqual_local as local;
#[cfg(feature = "net")]
pub use rorqual_net as net;
#[cfg(feature = "providers")]
pub use rorqual_providers as providers;
#[cfg(feature = "release")]
pub use rorqual_release as release;
#[cfg(feature = "runtime")]
pub use rorqual_runtime as runtime;
#[cfg(feature = "scheduler")]
pub use rorqual_scheduler as scheduler;

/// The names most programs need.
pub mod prelude {
    pub use rorqual_core::engine::{Engine, GroupStatus, LogOptions, StateStore};
    pub use rorqual_core::model::{
        AppKey, AppSpec, ContainerSpec, Instance, InstancePhase, Node, Probe, Resources, Revision,
        WorkloadKind,
    };
    pub use rorqual_core::network::Network;
    pub use rorqual_core::placement::{LeastAllocated, Placement};
    pub use rorqual_core::{Error, Result};
    #[cfg(feature = "local")]
    pub use rorqual_local::{HostNetwork, LocalEngine};
}
