//! rorqual-scheduler: the scheduling framework, the `Scheduler` that hosts its plugins, reference
//! plugins (including stateful and underlay-IP-aware ones) and a kube-scheduler extender server.
//!
//! Work in progress: see the project's issue tracker.
