//! rorqual on Kubernetes.
//!
//! - [`ConfigMapStateStore`] (feature `state-store`, default): rorqual-core's
//!   [`StateStore`](rorqual_core::engine::StateStore) as one ConfigMap per key,
//!   compare-and-swap on `resourceVersion`.
//! - [`KubeEngine`] (feature `engine`): rorqual-core's [`Engine`](rorqual_core::engine::Engine)
//!   on a cluster: a ReplicaSet per revision, StatefulSets for stateful apps, reads from
//!   reflectors.
//! - [`testenv`] (feature `testenv`): a real control plane for tests, offline (etcd,
//!   kube-apiserver, kube-controller-manager and optionally kube-scheduler on loopback).
//!
//! This crate enables no Kubernetes version feature of `k8s-openapi`: the binary that links it
//! does (`k8s-openapi = { version = "0.29", features = ["latest"] }`).
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "engine")]
pub mod engine;
#[cfg(feature = "engine")]
pub use engine::KubeEngine;
#[cfg(feature = "state-store")]
pub mod state_store;
#[cfg(feature = "state-store")]
pub use state_store::{ConfigMapStateStore, StateStoreError};

#[cfg(feature = "testenv")]
pub mod testenv;
