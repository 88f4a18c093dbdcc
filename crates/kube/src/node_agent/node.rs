//! Virtual Nodes: registration, status, and the Lease heartbeat that keeps them Ready.
//!
//! Each node is created (or, when it exists, its labels, taints and status are taken over)
//! with capacity and allocatable resources including `pods`, the `Ready` condition `True`
//! (reason `KubeletReady`) and the pressure conditions `False`, one address (`InternalIP`:
//! the apiserver reaches the kubelet port there) and the kubelet port in
//! `status.daemonEndpoints.kubeletEndpoint.Port`. A Lease of the same name in
//! `kube-node-lease` (40 s duration) is renewed every 10 s, and the status every minute, as the
//! kubelet does: the node-lifecycle controller then keeps the node Ready and removes its
//! `node.kubernetes.io/not-ready` taint.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use super::NodeAgentError;
use super::status::to_time;

/// The namespace of node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How long a Lease holds without renewal (the kubelet's 40 s).
pub const LEASE_DURATION: Duration = Duration::from_secs(40);
/// How often Leases are renewed (a quarter of their duration, as the kubelet).
pub const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// How often the node status (conditions' heartbeat) is written again.
pub const STATUS_REPORT_INTERVAL: Duration = Duration::from_secs(60);
/// The label every agent node carries, with the runtime's kind as its value.
pub const AGENT_LABEL: &str = "node.rorqual.io/agent";

/// One virtual node the agent registers and runs pods for.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct VirtualNode {
    /// The Node's name.
    pub name: String,
    /// Capacity (and allocatable): `cpu`, `memory`, `pods`, … as Kubernetes quantities.
    pub capacity: BTreeMap<String, String>,
    /// Labels besides the standard ones (`kubernetes.io/hostname`, `kubernetes.io/os`,
    /// `kubernetes.io/arch`, [`AGENT_LABEL`]).
    pub labels: BTreeMap<String, String>,
    /// Taints of the node (none by default).
    pub taints: Vec<Taint>,
}

impl VirtualNode {
    /// A node named `name` with 8 CPUs, 32 GiB of memory and room for 110 pods.
    pub fn new(name: impl Into<String>) -> Self {
        VirtualNode {
            name: name.into(),
            capacity: BTreeMap::from([
                ("cpu".to_owned(), "8".to_owned()),
                ("memory".to_owned(), "32Gi".to_owned()),
                ("pods".to_owned(), "110".to_owned()),
                ("ephemeral-storage".to_owned(), "100Gi".to_owned()),
            ]),
            labels: BTreeMap::new(),
            taints: Vec::new(),
        }
    }

    /// Sets one capacity entry (`"cpu"`, `"4"`).
    #[must_use]
    pub fn capacity(mut self, resource: impl Into<String>, quantity: impl Into<String>) -> Self {
        self.capacity.insert(resource.into(), quantity.into());
        self
    }

    /// Sets how many pods fit (`capacity.pods`).
    #[must_use]
    pub fn max_pods(self, pods: u32) -> Self {
        self.capacity("pods", pods.to_string())
    }

    /// Adds a label.
    #[must_use]
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds a taint (`effect`: `NoSchedule`, `PreferNoSchedule` or `NoExecute`).
    #[must_use]
    pub fn taint(
        mut self,
        key: impl Into<String>,
        value: Option<String>,
        effect: impl Into<String>,
    ) -> Self {
        self.taints.push(Taint {
            key: key.into(),
            value,
            effect: effect.into(),
            time_added: None,
        });
        self
    }
}

/// What every node of one agent shares.
#[derive(Debug, Clone)]
pub(crate) struct NodeContext {
    pub(crate) address: IpAddr,
    pub(crate) kubelet_port: u16,
    pub(crate) runtime_kind: &'static str,
    pub(crate) kubelet_version: String,
    pub(crate) started: SystemTime,
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The Node object to create (metadata and spec; status is written separately).
pub(crate) fn node_object(node: &VirtualNode, ctx: &NodeContext) -> Node {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), node.name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), arch().to_owned()),
        (AGENT_LABEL.to_owned(), ctx.runtime_kind.to_owned()),
    ]);
    labels.extend(node.labels.clone());
    Node {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints: (!node.taints.is_empty()).then(|| node.taints.clone()),
            ..NodeSpec::default()
        }),
        status: None,
    }
}

/// The node's status: Ready, resources, address, kubelet port.
pub(crate) fn node_status(node: &VirtualNode, ctx: &NodeContext, now: SystemTime) -> NodeStatus {
    let resources: BTreeMap<String, Quantity> = node
        .capacity
        .iter()
        .map(|(k, v)| (k.clone(), Quantity(v.clone())))
        .collect();
    let condition = |kind: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(to_time(now)),
        last_transition_time: Some(to_time(ctx.started)),
    };
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "rorqual node agent has sufficient memory available",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "rorqual node agent has no disk pressure",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "rorqual node agent has sufficient PID available",
            ),
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "rorqual node agent is posting ready status",
            ),
        ]),
        addresses: Some(vec![NodeAddress {
            type_: "InternalIP".to_owned(),
            address: ctx.address.to_string(),
        }]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(ctx.kubelet_port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: arch().to_owned(),
            operating_system: "linux".to_owned(),
            kubelet_version: ctx.kubelet_version.clone(),
            kube_proxy_version: String::new(),
            container_runtime_version: format!(
                "rorqual-{}://{}",
                ctx.runtime_kind,
                env!("CARGO_PKG_VERSION")
            ),
            os_image: "rorqual node agent".to_owned(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

fn kube_error(context: String) -> impl FnOnce(kube::Error) -> NodeAgentError {
    move |source| NodeAgentError::Kube { context, source }
}

/// Creates the node, or takes over an existing one of the same name (labels and taints
/// merged in), then writes its status. Returns the Node's UID.
pub(crate) async fn register(
    nodes: &Api<Node>,
    node: &VirtualNode,
    ctx: &NodeContext,
) -> Result<String, NodeAgentError> {
    let object = node_object(node, ctx);
    let created = match nodes.create(&PostParams::default(), &object).await {
        Ok(n) => n,
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let patch = serde_json::json!({
                "metadata": {"labels": object.metadata.labels},
                "spec": {"taints": object.spec.as_ref().and_then(|s| s.taints.clone())},
            });
            nodes
                .patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(kube_error(format!("taking over node {}", node.name)))?
        }
        Err(e) => return Err(kube_error(format!("registering node {}", node.name))(e)),
    };
    write_status(nodes, node, ctx).await?;
    Ok(created.metadata.uid.unwrap_or_default())
}

/// Writes the node's status (conditions with a fresh heartbeat).
pub(crate) async fn write_status(
    nodes: &Api<Node>,
    node: &VirtualNode,
    ctx: &NodeContext,
) -> Result<(), NodeAgentError> {
    let patch = serde_json::json!({ "status": node_status(node, ctx, SystemTime::now()) });
    nodes
        .patch_status(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(kube_error(format!(
            "writing the status of node {}",
            node.name
        )))?;
    Ok(())
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Creates the node's Lease (owned by the Node, so it goes with it), or renews it.
pub(crate) async fn renew_lease(
    leases: &Api<Lease>,
    node: &str,
    node_uid: &str,
) -> Result<(), NodeAgentError> {
    let patch = serde_json::json!({
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": LEASE_DURATION.as_secs(),
            "renewTime": micro_now(),
        }
    });
    match leases
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node.to_owned()),
                    namespace: Some(LEASE_NAMESPACE.to_owned()),
                    owner_references: (!node_uid.is_empty()).then(|| {
                        vec![OwnerReference {
                            api_version: "v1".to_owned(),
                            kind: "Node".to_owned(),
                            name: node.to_owned(),
                            uid: node_uid.to_owned(),
                            ..OwnerReference::default()
                        }]
                    }),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(node.to_owned()),
                    lease_duration_seconds: i32::try_from(LEASE_DURATION.as_secs()).ok(),
                    renew_time: Some(micro_now()),
                    ..LeaseSpec::default()
                }),
            };
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map_err(kube_error(format!("creating the lease of node {node}")))?;
            Ok(())
        }
        Err(e) => Err(kube_error(format!("renewing the lease of node {node}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ctx() -> NodeContext {
        NodeContext {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            kubelet_port: 10250,
            runtime_kind: "local",
            kubelet_version: "v1.20.2-rorqual".to_owned(),
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    #[test]
    fn status_is_ready_with_resources_address_and_port() {
        let node = VirtualNode::new("agent-0")
            .max_pods(500)
            .capacity("cpu", "4");
        let s = node_status(&node, &ctx(), SystemTime::now());
        let ready = s
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .expect("ready condition");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("True", Some("KubeletReady"))
        );
        let alloc = s.allocatable.expect("allocatable");
        assert_eq!(alloc["pods"].0, "500");
        assert_eq!(alloc["cpu"].0, "4");
        assert_eq!(alloc["memory"].0, "32Gi");
        let addr = &s.addresses.expect("addresses")[0];
        assert_eq!(
            (addr.type_.as_str(), addr.address.as_str()),
            ("InternalIP", "127.0.0.1")
        );
        let port = s
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port);
        assert_eq!(port, Some(10250));
    }

    #[test]
    fn objects_carry_standard_and_own_labels_and_taints() {
        let node = VirtualNode::new("agent-1").label("zone", "a").taint(
            "dedicated",
            Some("games".to_owned()),
            "NoSchedule",
        );
        let n = node_object(&node, &ctx());
        let labels = n.metadata.labels.expect("labels");
        assert_eq!(labels["kubernetes.io/hostname"], "agent-1");
        assert_eq!(labels[AGENT_LABEL], "local");
        assert_eq!(labels["zone"], "a");
        let taints = n.spec.and_then(|s| s.taints).expect("taints");
        assert_eq!(taints[0].key, "dedicated");
    }
}
