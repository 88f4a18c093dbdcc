//! Instances: one running copy of an application at one revision.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::revision::Revision;
use super::spec::AppKey;

/// The lifecycle phase of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub enum InstancePhase {
    /// Accepted but not started: waiting for a node (see the reason) or for its turn.
    Pending,
    /// Processes started; not (yet) passing readiness.
    Starting,
    /// Running; see [`Instance::ready`] for readiness.
    Running,
    /// Exited and waiting out a restart backoff after repeated failures; the reason says why.
    CrashLoopBackOff,
    /// Being stopped (SIGTERM sent, grace period running).
    Terminating,
    /// Stopped for good (failed and not restartable, or stopped by request).
    Stopped,
}

impl fmt::Display for InstancePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A running (or pending) copy of an application (a Kubernetes Pod).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Instance {
    /// Unique name: `name-<ordinal>` for stateful workloads, `name-<revision>-<suffix>` otherwise.
    pub id: String,
    /// The application.
    pub app: AppKey,
    /// The revision it runs.
    pub revision: Revision,
    /// The stable ordinal of a stateful identity.
    pub ordinal: Option<u32>,
    /// The node it was placed on.
    pub node: Option<String>,
    /// Its address, once attached to a network.
    pub address: Option<IpAddr>,
    /// Ports by declared port name (host ports on the local engine).
    pub ports: BTreeMap<String, u16>,
    /// Phase.
    pub phase: InstancePhase,
    /// Passing its readiness probe (or running, where it has none).
    pub ready: bool,
    /// How many times its processes were restarted.
    pub restarts: u32,
    /// Why it is in its phase (`Insufficient cpu on every node`, `exit code 1`, …).
    pub reason: Option<String>,
    /// When it was created.
    pub created: SystemTime,
}

impl Instance {
    /// A new pending instance with no node, address, ports or restarts; engines in other crates
    /// build their instances from this and set the observed fields.
    pub fn new(
        id: impl Into<String>,
        app: AppKey,
        revision: Revision,
        created: SystemTime,
    ) -> Self {
        Instance {
            id: id.into(),
            app,
            revision,
            ordinal: None,
            node: None,
            address: None,
            ports: BTreeMap::new(),
            phase: InstancePhase::Pending,
            ready: false,
            restarts: 0,
            reason: None,
            created,
        }
    }

    /// The first port, which the local engine also passes as `PORT`.
    pub fn primary_port(&self) -> Option<u16> {
        self.ports.values().next().copied()
    }

    /// `address:port` of the port named `name`, if both are known.
    pub fn endpoint(&self, name: &str) -> Option<std::net::SocketAddr> {
        Some(std::net::SocketAddr::new(
            self.address?,
            *self.ports.get(name)?,
        ))
    }
}
