//! rorqual-net: underlay IP pools, fixed-IP claims, MACs, durable and etcd stores, and the
//! `rorqual-ipam` CNI IPAM plugin.
//!
//! Work in progress: see the project's issue tracker.
