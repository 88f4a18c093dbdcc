//! rorqual on Kubernetes.
//!
//! ```no_run
//! # #[cfg(all(feature = "testenv", feature = "state-store"))]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use rorqual_core::engine::StateStore;
//! use rorqual_kube::ConfigMapStateStore;
//! use rorqual_kube::testenv::TestEnv;
//!
//! // A real control plane on loopback: etcd, kube-apiserver, kube-controller-manager.
//! let env = TestEnv::start().await?;
//! let namespace = env.new_namespace("quickstart").await?;
//! env.write_kubeconfig("/tmp/admin.kubeconfig")?; // kubectl --kubeconfig /tmp/admin.kubeconfig
//!
//! // Controller state in ConfigMaps, compare-and-swap on resourceVersion.
//! let client = env.client().await?;
//! let store: Arc<dyn StateStore> = Arc::new(ConfigMapStateStore::new(client, &namespace));
//! let version = store.compare_and_swap("rollout-step/web", None, Some(b"1".to_vec())).await?;
//! store.compare_and_swap("rollout-step/web", Some(version), Some(b"2".to_vec())).await?;
//! # Ok(()) }
//! ```
//!
//! - [`ConfigMapStateStore`] (feature `state-store`, default): rorqual-core's
//!   [`StateStore`](rorqual_core::engine::StateStore) as one ConfigMap per key,
//!   compare-and-swap on `resourceVersion`; hand-edited entries are reported, never replaced.
//! - [`KubeEngine`] (feature `engine`): rorqual-core's [`Engine`](rorqual_core::engine::Engine)
//!   on a cluster: a ReplicaSet per revision (server-side apply), a StatefulSet and headless
//!   Service for stateful apps, reads from reflectors, events from a watch, logs through
//!   `pods/log`; specs the cluster cannot express are refused with their paths.
//! - [`KubeEndpoints`] (feature `endpoints`): rorqual-release's
//!   [`Endpoints`](rorqual_release::traffic::Endpoints) from the EndpointSlices of the headless
//!   Service KubeEngine gives each revision, so rorqual's nginx router sends a canary's share
//!   to the ready pods of each revision.
//! - [`testenv`] (feature `testenv`): a real Kubernetes control plane for tests, offline (etcd,
//!   kube-apiserver, kube-controller-manager and optionally kube-scheduler on loopback ports,
//!   TLS with a test CA, token authentication, RBAC), one per test binary with a namespace per
//!   test; every process it starts dies with the test binary, `kill -9` included. The
//!   binaries come from `scripts/build-kube` (v1.20.2 built from Debian's source package) or
//!   controller-runtime's envtest variables.
//! - [`node_agent`] (feature `node-agent`): a kubelet without a container runtime: virtual
//!   Nodes kept Ready with Lease heartbeats, pods bound to them run by a
//!   [`PodRuntime`](node_agent::PodRuntime) (simulated stages, or each container's command as
//!   a local process with probes, restarts and its own loopback address, or its own network
//!   namespace on a bridge), `kubectl logs` through the kubelet port.
//! - [`scheduler`] (feature `scheduler`): rorqual's scheduler for pods naming it, binding
//!   through the API and recording `FailedScheduling` Events.
//! - [`events`] (features `scheduler`, `node-agent`): core/v1 Events written as Kubernetes
//!   components write them (a repeat counts on the first Event; a rate limit per object).
//!
//! This crate enables no Kubernetes version feature of `k8s-openapi`: the binary that links it
//! does (`k8s-openapi = { version = "0.29", features = ["latest"] }`); its tests and examples
//! enable `latest`. Against a 1.20 apiserver it uses only core/v1 objects (and coordination/v1
//! Leases for the node agent).

#[cfg(feature = "engine")]
pub mod engine;
#[cfg(feature = "engine")]
pub use engine::KubeEngine;
#[cfg(feature = "endpoints")]
pub mod endpoints;
#[cfg(feature = "endpoints")]
pub use endpoints::KubeEndpoints;
#[cfg(any(feature = "scheduler", feature = "node-agent"))]
pub mod events;
#[cfg(feature = "scheduler")]
pub mod scheduler;
#[cfg(feature = "state-store")]
pub mod state_store;
#[cfg(any(feature = "engine", feature = "scheduler", feature = "node-agent"))]
mod watch_errors;
#[cfg(feature = "state-store")]
pub use state_store::{ConfigMapStateStore, StateStoreError};

#[cfg(feature = "testenv")]
pub mod testenv;

#[cfg(feature = "node-agent")]
pub mod node_agent;
