//! The kube-scheduler extender: the same plugins served over HTTP with the upstream wire
//! format, plus the configuration stanza that points kube-scheduler at it.
//!
//! The HTTP server (`ExtenderServer`) and the API server binder (`ApiserverBinder`) need
//! feature `extender` (`tls` for HTTPS); the wire types ([`wire`]), the [`Binder`] seam, the
//! [`KubeVersion`] and the stanza ([`ExtenderStanza`]) are always available.
//!
//! What depends on the kube-scheduler release that calls the extender:
//! - the configuration: [`ExtenderStanza::to_yaml`] writes the `kubescheduler.config.k8s.io`
//!   version that release reads ([`config_api_version`]: `v1beta1` for 1.19–1.21, `v1beta2`
//!   for 1.22, `v1beta3` for 1.23–1.24, `v1` from 1.25);
//! - the filter answer: 1.20 and earlier read `FailedNodes` only, so reasons preemption
//!   cannot help with go there for them (`ExtenderServer::kube_scheduler_version`; see
//!   [`wire::ExtenderFilterResult::record_failure`] for the default).
//!
//! Binding: with `bindVerb` in the stanza kube-scheduler delegates binding entirely, so the
//! bind verb creates the pod's `v1 Binding` through a [`Binder`] (`ApiserverBinder`, or your
//! own Kubernetes client); without a binder the stanza leaves `bindVerb` out.
//!
//! Modes: in node-cache-capable mode kube-scheduler sends node names and the host feeds the
//! cache from a Node watch: the cheapest per request. In Nodes mode it sends every candidate
//! node in full (about 5 KB each); the server reads only the nodes whose JSON changed since
//! the last request and sends the feasible ones back byte for byte.

#[cfg(feature = "extender")]
mod apiserver;
mod binder;
#[cfg(feature = "extender")]
mod node_feed;
#[cfg(feature = "extender")]
mod server;
mod stanza;
#[cfg(feature = "tls")]
mod tls;
mod version;
pub mod wire;

#[cfg(feature = "extender")]
pub use apiserver::{ApiserverBinder, ApiserverConfig};
pub use binder::{BindError, Binder, PodBinding};
#[cfg(feature = "extender")]
pub use server::{DEFAULT_BODY_LIMIT, DEFAULT_REMEMBERED_PODS, ExtenderServer};
pub use stanza::{ExtenderStanza, StanzaError, config_api_version};
#[cfg(feature = "tls")]
pub use tls::{TlsError, TlsListener};
pub use version::{KubeVersion, KubeVersionError};
