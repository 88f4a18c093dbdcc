//! rorqual-scheduler: the scheduling framework, the [`Scheduler`] that hosts its plugins,
//! reference plugins (including stateful and underlay-IP-aware ones) and a kube-scheduler
//! extender server.
//!
//! - [`framework`]: extension-point traits (PreEnqueue … PostBind), [`framework::Status`],
//!   typed [`framework::CycleState`], validated [`framework::Profile`]s and node sampling;
//! - [`scheduler`]: the [`Scheduler`] (queue with backoff, parallel filter and score, assume
//!   cache, Reserve/Permit/Bind) which also implements core's `Placement`;
//! - [`plugins`]: resources, taints, node and pod affinity, topology spread, ports, sticky
//!   identity, underlay IP capacity, gang scheduling;
//! - [`extender`]: the same plugins served to kube-scheduler over the extender protocol,
//!   creating Bindings through a `Binder`, with the configuration and the answers of the
//!   kube-scheduler release that calls it;
//! - [`convert`]: core's selectors, affinity terms and spread constraints → the scheduler's,
//!   the one mapping behind both `pod_from_request` (core's `Placement` seam) and [`kube`]
//!   (Kubernetes Pod JSON).
//!
//! ```
//! use rorqual_core::model::Resources;
//! use rorqual_scheduler::{NodeInfo, PodInfo, Scheduler};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let scheduler = Scheduler::with_default_plugins();
//! scheduler.add_nodes((0..3).map(|i| NodeInfo::new(&format!("node-{i}"), Resources::new(4000, 8 << 30))));
//! scheduler.enqueue(PodInfo::new("uid-1", "default", "web-1", Resources::new(500, 1 << 30))).unwrap();
//! let summary = scheduler.run_until_idle().await;
//! assert_eq!(summary.bound, 1);
//! # });
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod convert;
pub mod extender;
pub mod fast_hash;
pub mod framework;
pub mod interner;
pub mod kube;
pub mod plugins;
pub mod scheduler;
pub mod selector;
pub mod snapshot;

pub use interner::{Labels, Sym};
pub use scheduler::{Outcome, PodPlacement, RunSummary, ScheduleResult, Scheduler};
pub use snapshot::{NodeInfo, PodInfo, Snapshot};
