//! The kube-scheduler extender: the same plugins served over HTTP with the upstream wire
//! format, plus the configuration stanza that points kube-scheduler at it.

mod server;
mod stanza;
#[cfg(feature = "tls")]
mod tls;
pub mod wire;

pub use server::{DEFAULT_BODY_LIMIT, DEFAULT_REMEMBERED_PODS, ExtenderServer};
pub use stanza::ExtenderStanza;
#[cfg(feature = "tls")]
pub use tls::{TlsError, TlsListener};
