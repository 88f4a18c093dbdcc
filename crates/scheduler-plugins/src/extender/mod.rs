//! The kube-scheduler extender: the same plugins served over HTTP with the upstream wire
//! format, plus the configuration stanza that points kube-scheduler at it.
//!
//! The HTTP server (`ExtenderServer`) needs feature `extender` (`tls` for HTTPS); the wire
//! types ([`wire`]) and the stanza ([`ExtenderStanza`]) are always available.

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
