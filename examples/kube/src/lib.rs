//! rorqual's Kubernetes examples (`examples/kube/*.rs`); this library is empty.
//!
//! - `kube_devcluster`: a real Kubernetes control plane (v1.20.2) whose pods run as local
//!   processes, for `kubectl`;
//! - `kube_engine_quickstart`: the quickstart's walk-through on `KubeEngine` against it.
