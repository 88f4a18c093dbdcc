//! rorqual on Kubernetes.
//!
//! - [`ConfigMapStateStore`] (feature `state-store`, default): rorqual-core's
//!   [`StateStore`](rorqual_core::engine::StateStore) as one ConfigMap per key,
//!   compare-and-swap on `resourceVersion`.
//! - [`testenv`] (feature `testenv`): a real control plane for tests, offline (etcd,
//!   kube-apiserver, kube-controller-manager and optionally kube-scheduler on loopback).
//! - [`node_agent`] (feature `node-agent`): a kubelet without a container runtime: virtual
//!   Nodes, pods run by a [`PodRuntime`](node_agent::PodRuntime) (simulated, or as local
//!   processes), `kubectl logs` through the kubelet port.
//!
//! This crate enables no Kubernetes version feature of `k8s-openapi`: the binary that links it
//! does (`k8s-openapi = { version = "0.29", features = ["latest"] }`).
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "state-store")]
pub mod state_store;
#[cfg(feature = "state-store")]
pub use state_store::{ConfigMapStateStore, StateStoreError};

#[cfg(feature = "testenv")]
pub mod testenv;

#[cfg(feature = "node-agent")]
pub mod node_agent;
