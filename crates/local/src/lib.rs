//! `LocalEngine`: the embedded engine, running instances as real OS processes on this host.
//!
//! - **Nodes** are virtual: N nodes with CPU/memory capacity on this one host; placement
//!   honours their capacity through the [`Placement`] seam (default [`LeastAllocated`]).
//! - **Instances** are processes started from each container's `command` and `args`, each in
//!   its own process group (so its children are stopped with it), in a working directory under
//!   the state directory where the spec's config files are written. Their environment holds the
//!   spec's variables and `PORT` (the container's first port), `PORT_<NAME>` for every port,
//!   `INSTANCE_ID`, `INSTANCE_IP`, `REVISION`, `NODE_NAME`, `APP_NAME`, `NAMESPACE`, and
//!   `ORDINAL` for stateful identities. An attachment with a network namespace runs the process
//!   through `nsenter --net=<path>`.
//! - **Probes** (HTTP, TCP, exec) set readiness; a failing liveness probe restarts the process.
//! - **Restarts** follow a capped exponential backoff (10 s doubling to 5 min, as the kubelet;
//!   configurable); while waiting the phase is `CrashLoopBackOff` with the last exit reason
//!   (`exit code 1`, `killed by signal 9`).
//! - **Stopping** sends SIGTERM to the process group, waits the spec's grace period, then sends
//!   SIGKILL.
//! - **Logs**: stdout and stderr of each container go to `instances/<id>/logs/<container>.log`,
//!   readable and followable through [`Engine::logs`].
//! - **Pending**: an instance no node can take stays `Pending` with the placement's reason and
//!   is placed as soon as capacity frees up.
//! - **Stateful** workloads have identities `name-0`, `name-1`, … started in ordinal order (each
//!   after the previous is ready), keeping their node and address across restarts and
//!   [`Engine::move_identity`]; scaling down removes the highest ordinals first.
//!
//! # The state directory
//!
//! Applications, groups and instances (with each process's PID *and start time*, so a reused
//! PID is never mistaken for an instance) are kept in the state directory, together with the
//! controller [`StateStore`] ([`FileStateStore`], an append-only log written and fsynced by its
//! own writer thread; see its docs). The engine's own state is written into rotating slot
//! files, so a crashed engine never leaves a torn state; the state at shutdown is fsynced. The
//! directory is locked while an engine uses it.
//!
//! A new `LocalEngine` on the same directory re-adopts the instances whose processes still run
//! (and re-registers their addresses with [`Network::adopt`]) and restarts the ones whose
//! processes are gone: instances are neither orphaned nor lost. A directory that holds other
//! files, a bad marker or undecodable state is refused with [`Error::CorruptState`] naming the
//! file; it is never wiped.
//!
//! [`Engine::shutdown`] stops every process (the desired state stays, so a later engine on the
//! same directory starts the applications again). **Dropping** a `LocalEngine` without
//! `shutdown` leaves its processes running, for the next engine on the directory to adopt.
//!
//! ```no_run
//! use rorqual_core::engine::Engine;
//! use rorqual_local::LocalEngine;
//! use rorqual_core::model::{AppSpec, ContainerSpec, Probe};
//!
//! # async fn run() -> rorqual_core::Result<()> {
//! let engine = LocalEngine::builder().nodes(3).build().await?;
//! let spec = AppSpec::new(
//!     "web",
//!     vec![ContainerSpec::new("app", ["rorqual-demo"]).port("http", 8080)
//!         .readiness(Probe::http("/healthz", "http").period(0.2))],
//! );
//! engine.apply_group(&spec, 3).await?;
//! for instance in engine.instances(&spec.key()).await? {
//!     println!("{} on {:?} at {:?}", instance.id, instance.node, instance.endpoint("http"));
//! }
//! engine.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! [`Engine::logs`]: rorqual_core::engine::Engine::logs
//! [`Engine::move_identity`]: rorqual_core::engine::Engine::move_identity
//! [`Engine::shutdown`]: rorqual_core::engine::Engine::shutdown
//! [`Error::CorruptState`]: rorqual_core::error::Error::CorruptState
//! [`LeastAllocated`]: rorqual_core::placement::LeastAllocated
//! [`Network::adopt`]: rorqual_core::network::Network::adopt
//! [`Placement`]: rorqual_core::placement::Placement
//! [`StateStore`]: rorqual_core::engine::StateStore

mod builder;
mod engine;
mod host_network;
mod lifecycle;
pub mod logs;
mod node_readiness;
pub mod probe;
mod proc;
pub mod process;
mod reconcile;
mod records;
mod recovery;
mod state_dir;
mod state_file;
mod store;
mod supervise;

pub use builder::LocalEngineBuilder;
pub use engine::LocalEngine;
pub use host_network::{DEFAULT_PORT_RANGE, HostNetwork, SERVER_PORT_RANGE, free_loopback_port};
pub use store::FileStateStore;
