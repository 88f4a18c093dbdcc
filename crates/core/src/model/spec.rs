//! The application spec: what a user asks an engine to run.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::quantity::Resources;
use super::scheduling::{Affinity, GangSpec, TopologySpreadConstraint, UnderlaySpec};

/// Identifies an application: a namespace and a name, as in Kubernetes.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub struct AppKey {
    /// The namespace (`default` when a spec leaves it out).
    pub namespace: String,
    /// The application's name, unique in its namespace.
    pub name: String,
}

impl AppKey {
    /// The key of application `name` in `namespace`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        AppKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for AppKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How an application's instances relate to each other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum WorkloadKind {
    /// Interchangeable instances, updated by running a second revision group beside the first
    /// (a Kubernetes Deployment).
    #[default]
    Stateless,
    /// Stable identities `name-0`, `name-1`, … started in ordinal order, each keeping its
    /// identity, node preference and address across restarts and updates, updated in place by
    /// ordinal (a Kubernetes StatefulSet, a BCS GameStatefulSet).
    Stateful,
}

/// The spec of one application.
///
/// Everything except `replicas` is the *instance template*; its hash is the revision
/// ([`AppSpec::revision`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct AppSpec {
    /// Name of the application (a DNS label: lowercase letters, digits and `-`).
    pub name: String,
    /// Namespace (`default` when left out).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Labels copied onto every instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Desired number of instances.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Stateless or stateful.
    #[serde(default)]
    pub kind: WorkloadKind,
    /// The containers of each instance; at least one.
    pub containers: Vec<ContainerSpec>,
    /// Files written into each instance's working directory before its containers start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_files: Vec<ConfigFile>,
    /// Only nodes with all these labels may run the instances.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the instances tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<super::node::Toleration>,
    /// Seconds between SIGTERM and SIGKILL when an instance is stopped (default 30).
    #[serde(default = "default_grace")]
    pub termination_grace_period_seconds: u64,
    /// Scheduling priority: higher goes first, and may preempt lower (default 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// Node affinity, pod affinity and anti-affinity, as in a Kubernetes pod spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How instances spread over zones, nodes or other topology domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Each instance needs an underlay (pool-managed, routable) address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<UnderlaySpec>,
    /// Instances are placed all-or-nothing, at least `minMember` at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang: Option<GangSpec>,
}

// `skip_serializing_if` passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn default_namespace() -> String {
    "default".to_owned()
}
fn default_replicas() -> u32 {
    1
}
fn default_grace() -> u64 {
    30
}

impl AppSpec {
    /// A stateless spec named `name` in namespace `default`, one replica, with `containers`.
    pub fn new(name: impl Into<String>, containers: Vec<ContainerSpec>) -> Self {
        AppSpec {
            name: name.into(),
            namespace: default_namespace(),
            labels: BTreeMap::new(),
            replicas: 1,
            kind: WorkloadKind::Stateless,
            containers,
            config_files: Vec::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            termination_grace_period_seconds: default_grace(),
            priority: 0,
            affinity: None,
            topology_spread_constraints: Vec::new(),
            underlay: None,
            gang: None,
        }
    }

    /// Sets the namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets the replica count.
    #[must_use]
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets the workload kind.
    #[must_use]
    pub fn kind(mut self, kind: WorkloadKind) -> Self {
        self.kind = kind;
        self
    }

    /// Adds a label.
    #[must_use]
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Sets the grace period between SIGTERM and SIGKILL.
    #[must_use]
    pub fn grace_period_seconds(mut self, seconds: u64) -> Self {
        self.termination_grace_period_seconds = seconds;
        self
    }

    /// Sets the scheduling priority.
    #[must_use]
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the affinity.
    #[must_use]
    pub fn affinity(mut self, affinity: Affinity) -> Self {
        self.affinity = Some(affinity);
        self
    }

    /// Adds a topology spread constraint.
    #[must_use]
    pub fn spread(mut self, constraint: TopologySpreadConstraint) -> Self {
        self.topology_spread_constraints.push(constraint);
        self
    }

    /// Sets the underlay address need.
    #[must_use]
    pub fn underlay(mut self, underlay: UnderlaySpec) -> Self {
        self.underlay = Some(underlay);
        self
    }

    /// The identity whose fixed-IP claim keeps stateful identity `ordinal`'s underlay address
    /// (`namespace/app-ordinal`): only for a stateful application whose `underlay.fixedIp` is
    /// set. Placement (`PlacementRequest::from_spec`) and attachment (`AttachRequest::claim`)
    /// both take it from here.
    pub fn fixed_ip_claim(&self, ordinal: Option<u32>) -> Option<String> {
        let fixed = self.underlay.as_ref().is_some_and(|u| u.fixed_ip);
        match ordinal {
            Some(o) if fixed && self.kind == WorkloadKind::Stateful => {
                Some(format!("{}/{}-{o}", self.namespace, self.name))
            }
            _ => None,
        }
    }

    /// Sets the gang.
    #[must_use]
    pub fn gang(mut self, gang: GangSpec) -> Self {
        self.gang = Some(gang);
        self
    }

    /// Adds a required node label.
    #[must_use]
    pub fn node_selector(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.node_selector.insert(key.into(), value.into());
        self
    }

    /// The gang's name: the spec's `gang.name`, else the application's name (`None` without
    /// a gang).
    pub fn gang_name(&self) -> Option<&str> {
        let gang = self.gang.as_ref()?;
        Some(gang.name.as_deref().unwrap_or(&self.name))
    }

    /// The application's key.
    pub fn key(&self) -> AppKey {
        AppKey::new(&self.namespace, &self.name)
    }

    /// The sum of every container's resource requests: what one instance needs on a node.
    pub fn instance_resources(&self) -> Resources {
        self.containers.iter().fold(Resources::default(), |acc, c| {
            acc.saturating_add(c.resources)
        })
    }

    /// Every declared port of every container, in declaration order.
    pub fn ports(&self) -> impl Iterator<Item = &PortSpec> {
        self.containers.iter().flat_map(|c| c.ports.iter())
    }

    /// Parses a spec from YAML (JSON is YAML too).
    pub fn from_yaml(text: &str) -> Result<Self, yaml_serde::Error> {
        yaml_serde::from_str(text)
    }

    /// The JSON Schema of a spec document, for editors and admission checks.
    pub fn json_schema() -> schemars::Schema {
        schemars::schema_for!(AppSpec)
    }
}

/// One process of an instance (a container on cluster engines).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ContainerSpec {
    /// Name, unique within the instance.
    pub name: String,
    /// Image, for cluster engines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The program and its leading arguments (the local engine runs this).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Further arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Ports the container listens on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// Resource requests, used for placement.
    #[serde(default)]
    pub resources: Resources,
    /// Readiness probe: an instance receives traffic only while it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// Liveness probe: the container is restarted when it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
}

impl ContainerSpec {
    /// A container named `name` running `command`.
    pub fn new<I, S>(name: impl Into<String>, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ContainerSpec {
            name: name.into(),
            image: None,
            command: command.into_iter().map(Into::into).collect(),
            args: Vec::new(),
            env: BTreeMap::new(),
            ports: Vec::new(),
            resources: Resources::default(),
            readiness_probe: None,
            liveness_probe: None,
        }
    }

    /// Adds arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Declares a port.
    #[must_use]
    pub fn port(mut self, name: impl Into<String>, number: u16) -> Self {
        self.ports.push(PortSpec {
            name: name.into(),
            number,
            protocol: Protocol::Tcp,
        });
        self
    }

    /// Sets the resource requests.
    #[must_use]
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// Sets the readiness probe.
    #[must_use]
    pub fn readiness(mut self, probe: Probe) -> Self {
        self.readiness_probe = Some(probe);
        self
    }

    /// Sets the liveness probe.
    #[must_use]
    pub fn liveness(mut self, probe: Probe) -> Self {
        self.liveness_probe = Some(probe);
        self
    }
}

/// A port a container listens on.
///
/// On the local engine `number` is the container's *declared* port; the host network hands out
/// a free host port for it and passes it in `PORT` (first port) and `PORT_<NAME>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    /// Name, unique within the instance; probes refer to ports by name or number.
    pub name: String,
    /// Port number, 1–65535.
    pub number: u16,
    /// Protocol.
    #[serde(default)]
    pub protocol: Protocol,
}

/// Transport protocol of a port.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// Refers to a declared port by name or by number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PortRef {
    /// The declared port number.
    Number(u16),
    /// The declared port name.
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => write!(f, "{n}"),
        }
    }
}

/// How a probe checks a container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProbeAction {
    /// GET `path` on the port; a 2xx or 3xx status passes.
    Http {
        /// Request path.
        #[serde(default = "default_path")]
        path: String,
        /// Which declared port.
        port: PortRef,
    },
    /// A TCP connection to the port passes.
    Tcp {
        /// Which declared port.
        port: PortRef,
    },
    /// The command exits 0.
    Exec {
        /// Program and arguments.
        command: Vec<String>,
    },
}

fn default_path() -> String {
    "/".to_owned()
}

/// A readiness or liveness probe, with Kubernetes' fields and defaults.
///
/// Durations are in (fractional) seconds so that tests and demos can probe every 100 ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Probe {
    /// What to check.
    #[serde(flatten)]
    pub action: ProbeAction,
    /// Seconds after start before the first check (default 0).
    #[serde(default)]
    pub initial_delay_seconds: f64,
    /// Seconds between checks (default 10).
    #[serde(default = "default_period")]
    pub period_seconds: f64,
    /// Seconds before a check times out (default 1).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: f64,
    /// Consecutive passes to count as passing (default 1).
    #[serde(default = "one")]
    pub success_threshold: u32,
    /// Consecutive failures to count as failing (default 3).
    #[serde(default = "three")]
    pub failure_threshold: u32,
}

fn default_period() -> f64 {
    10.0
}
fn default_timeout() -> f64 {
    1.0
}
fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}

impl Probe {
    /// A probe performing `action` with Kubernetes' default timings.
    pub fn new(action: ProbeAction) -> Self {
        Probe {
            action,
            initial_delay_seconds: 0.0,
            period_seconds: default_period(),
            timeout_seconds: default_timeout(),
            success_threshold: 1,
            failure_threshold: 3,
        }
    }
    /// An HTTP GET probe of `path` on the declared port `port`.
    pub fn http(path: impl Into<String>, port: impl Into<PortRef>) -> Self {
        Probe::new(ProbeAction::Http {
            path: path.into(),
            port: port.into(),
        })
    }
    /// A TCP connect probe on the declared port `port`.
    pub fn tcp(port: impl Into<PortRef>) -> Self {
        Probe::new(ProbeAction::Tcp { port: port.into() })
    }
    /// Sets the period between checks.
    #[must_use]
    pub fn period(mut self, seconds: f64) -> Self {
        self.period_seconds = seconds;
        self
    }
    /// Sets the failure threshold.
    #[must_use]
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n;
        self
    }
    /// Sets the initial delay.
    #[must_use]
    pub fn initial_delay(mut self, seconds: f64) -> Self {
        self.initial_delay_seconds = seconds;
        self
    }
    /// Sets the timeout of one check.
    #[must_use]
    pub fn timeout(mut self, seconds: f64) -> Self {
        self.timeout_seconds = seconds;
        self
    }
}

impl From<u16> for PortRef {
    fn from(n: u16) -> Self {
        PortRef::Number(n)
    }
}
impl From<&str> for PortRef {
    fn from(s: &str) -> Self {
        PortRef::Name(s.to_owned())
    }
}

/// A file written into each instance's working directory before its containers start.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    /// Relative path inside the instance's directory (no `..`).
    pub path: String,
    /// File content.
    pub content: String,
}
