//! rorqual-net: underlay IP pools, fixed-IP claims, MACs, durable and etcd stores, and the
//! `rorqual-ipam` CNI IPAM plugin.
//!
//! - [`PoolSpec`]: CIDR ranges with start and end, discrete addresses, exclusions, gateway,
//!   routes, DNS, VLAN and per-address MACs (given, or generated as locally administered).
//! - [`PoolState`]: the pure allocation logic (Available / Active / Reserved / Disabled,
//!   owner-idempotent allocation, claims that keep an identity's address, bulk transfer, GC).
//! - [`Allocator`]: those operations over any [`store::PoolStore`] (memory, file, etcd with the
//!   `etcd` feature, or any core `StateStore` through [`store::state_store::StateStorePools`]),
//!   with a watch stream of changes.
//! - [`AllocatorCapacity`]: core's `IpCapacity` seam over an allocator, for the scheduler's
//!   underlay-IP plugin (snapshot and reservations from an in-memory copy fed by the pool
//!   watch; commits to the store).
//! - [`cni`]: the CNI protocol, used by the `rorqual-ipam` executable.
//! - [`sync`]: registry sync: keeps an external service registry (etcd keys with the `etcd`
//!   feature, or any [`sync::RegistrySink`]) in step with every allocation and release,
//!   resuming from the store revision it reached after a restart.
//! - `BridgeNetwork` (feature `bridge`): core's `Network` seam on a Linux bridge in network
//!   namespaces.
//!
//! # Features
//!
//! - `etcd`: the etcd pool store (`store::etcd`) and registry (`sync::EtcdRegistry`); needs
//!   `protoc` to build.
//! - `bridge`: `BridgeNetwork` (pulls in `nix`). The `rorqual-ipam` plugin needs neither, so
//!   `cargo build -p rorqual-net --bin rorqual-ipam` compiles no `nix`, etcd or gRPC code.

pub mod allocator;
#[cfg(feature = "bridge")]
pub mod bridge;
pub mod capacity;
pub mod cni;
pub mod error;
pub mod mac;
pub mod model;
pub mod pool_state;
pub mod store;
pub mod sync;

pub use allocator::Allocator;
#[cfg(feature = "bridge")]
pub use bridge::BridgeNetwork;
pub use capacity::{AllocatorCapacity, instance_owner};
pub use error::{ConsistencyError, PoolError, StoreError, TransferError};
pub use mac::Mac;
pub use model::{
    AllocRequest, Allocation, AllocationEvent, Dns, IpRange, IpState, Owner, PoolSpec, Route,
    TransferTarget, Usage,
};
pub use pool_state::PoolState;
