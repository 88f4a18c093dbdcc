//! The `Network` seam: an engine asks for an instance to be attached to (and detached from) a
//! network, and learns its address and ports.
//!
//! `rorqual-local`'s `HostNetwork` shares the host's network (address 127.0.0.1 and a free
//! host port per declared port); `rorqual-net` provides a bridge network with addresses from an
//! IP pool, each instance in its own network namespace.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::IpAddr;
use std::path::PathBuf;

use async_trait::async_trait;

use crate::error::Result;
use crate::model::{AppKey, PortSpec};
use crate::placement::ReservedAddress;

/// What an engine asks of the network for one instance.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AttachRequest {
    /// The instance's id (stable for stateful identities).
    pub instance: String,
    /// Its application.
    pub app: AppKey,
    /// Its ordinal, for stateful identities.
    pub ordinal: Option<u32>,
    /// The node it was placed on.
    pub node: String,
    /// Its declared ports.
    pub ports: Vec<PortSpec>,
    /// What it had before (a restarted or moved stateful identity keeps its address and ports
    /// when the network can give them again).
    pub previous: Option<Attachment>,
    /// The underlay address placement reserved for the instance
    /// ([`crate::placement::PlacementDecision::address`]): a network that manages that pool
    /// must attach exactly this address (it is already taken for the instance's owner key).
    pub reserved: Option<ReservedAddress>,
    /// The identity whose fixed-IP claim keeps the instance's address across its instances
    /// ([`crate::model::AppSpec::fixed_ip_claim`]), when the application asks for fixed IPs.
    pub claim: Option<String>,
}

impl AttachRequest {
    /// A request for `instance` of `app` on `node` with `ports`.
    pub fn new(
        instance: impl Into<String>,
        app: AppKey,
        node: impl Into<String>,
        ports: Vec<PortSpec>,
    ) -> Self {
        AttachRequest {
            instance: instance.into(),
            app,
            ordinal: None,
            node: node.into(),
            ports,
            previous: None,
            reserved: None,
            claim: None,
        }
    }
}

/// Where an attached instance can be reached.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Attachment {
    /// The instance's address.
    pub address: IpAddr,
    /// Port per declared port name: host ports on the host network, the declared numbers in a
    /// network namespace.
    pub ports: BTreeMap<String, u16>,
    /// The network namespace the instance's processes must run in (`None`: the host's).
    pub netns: Option<PathBuf>,
}

impl Attachment {
    /// An attachment at `address` with `ports`, in the host's namespace.
    pub fn new(address: IpAddr, ports: BTreeMap<String, u16>) -> Self {
        Attachment {
            address,
            ports,
            netns: None,
        }
    }
}

/// Attaches instances to a network. Object safe: store it as `Arc<dyn Network>`.
#[async_trait]
pub trait Network: Send + Sync + Debug + 'static {
    /// Attaches an instance; idempotent for the same instance id.
    async fn attach(&self, request: &AttachRequest) -> Result<Attachment>;

    /// Detaches an instance and releases what it held; detaching an unknown instance succeeds.
    async fn detach(&self, instance: &str) -> Result<()>;

    /// Re-registers an attachment found in an engine's persisted state (after an engine
    /// restart), so it is not handed out again. The default does nothing.
    async fn adopt(&self, instance: &str, attachment: &Attachment) -> Result<()> {
        let _ = (instance, attachment);
        Ok(())
    }
}
