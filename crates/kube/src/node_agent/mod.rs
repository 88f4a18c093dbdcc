//! The node agent: a kubelet without a container runtime.
//!
//! A [`NodeAgent`] registers virtual [`Node`]s and keeps them Ready (a Lease in
//! `kube-node-lease` renewed every 10 s, node status every minute), watches the pods bound to
//! them and runs those through a [`PodRuntime`]:
//! - [`SimulatedRuntime`]: kwok-like stages with delays and injectable faults, no processes,
//!   for scale;
//! - [`LocalRuntime`]: each container's `command` and `args` as a real process (environment
//!   with `fieldRef` values, HTTP / TCP / exec probes into the Ready condition, restarts with
//!   CrashLoopBackOff, graceful deletion with the pod's grace period). Every pod gets its own
//!   loopback address (`127.N.x.y`, in `$POD_IP`) and keeps its declared ports: **its
//!   processes must listen on `$POD_IP:<containerPort>`**. As root, give the runtime a
//!   network ([`LocalRuntimeBuilder::network`], e.g. rorqual-net's `BridgeNetwork`) and each
//!   pod runs in its own network namespace on a bridge, with an address from an IP pool.
//!
//! A pod the runtime refuses (no free address, a failed network attach) stays `Pending` and
//! is tried again with a backoff of 1 s doubling to 30 s; the reason is logged at warn level
//! and recorded as a Warning Event `FailedCreatePodSandBox` about the pod.
//!
//! Pod statuses (phase, conditions, container states, restart counts, pod and host IPs, start
//! time) go through the status subresource; deleted pods are stopped with their grace period
//! and then deleted with grace 0, as the kubelet does. The kubelet port serves
//! `/containerLogs/…` over HTTPS, so `kubectl logs` works through the apiserver.
//!
//! Running commands that come from an apiserver is powerful: the agent refuses an apiserver
//! that is not on a loopback address unless [`NodeAgentBuilder::allow_remote_apiserver`] says
//! otherwise, and can be limited to namespaces ([`NodeAgentBuilder::namespace`]).
//!
//! ```no_run
//! use std::sync::Arc;
//! use rorqual_kube::node_agent::{LocalRuntime, NodeAgent, VirtualNode};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = kube::Config::infer().await?;
//! let agent = NodeAgent::builder(config)
//!     .runtime(Arc::new(LocalRuntime::builder().build()?))
//!     .node(VirtualNode::new("agent-0").max_pods(50))
//!     .node(VirtualNode::new("agent-1").label("zone", "b"))
//!     .namespace("dev")
//!     .start()
//!     .await?;
//! println!("kubelet port {}", agent.kubelet_port());
//! // … `kubectl apply` pods; they run here …
//! agent.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! [`Node`]: k8s_openapi::api::core::v1::Node

pub mod address;
mod logs_server;
pub mod node;
mod pods;
pub mod runtime;
pub mod status;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use tokio::task::JoinHandle;

pub use address::AddressPool;
pub use node::VirtualNode;
pub use runtime::{
    ContainerPhase, ContainerState, LocalRuntime, LocalRuntimeBuilder, LogRequest, PodKey,
    PodNotifier, PodRuntime, PodState, RuntimeError, SimulatedConfig, SimulatedRuntime, StagePlan,
};

use node::{LEASE_NAMESPACE, LEASE_RENEW_INTERVAL, NodeContext, STATUS_REPORT_INTERVAL};
use pods::{PodController, StatusQueue, watch_scopes};

/// Errors of starting and running a [`NodeAgent`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeAgentError {
    /// The apiserver is not on a loopback address and remote apiservers were not allowed.
    #[error(
        "refusing to run pods from the apiserver at {url}: it is not on a loopback address \
         (allow it with NodeAgentBuilder::allow_remote_apiserver)"
    )]
    RemoteApiserver {
        /// The apiserver's URL.
        url: String,
    },
    /// The agent's settings are not usable.
    #[error("invalid node agent settings: {0}")]
    Invalid(String),
    /// A request to the apiserver failed.
    #[error("{context}")]
    Kube {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: kube::Error,
    },
    /// The kubelet port could not be bound.
    #[error("cannot listen on {address} for the kubelet port")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kubelet port's TLS could not be set up.
    #[error("{message}")]
    Tls {
        /// What failed.
        message: String,
    },
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl NodeAgentError {
    /// Whether trying again may succeed (the apiserver may come back; settings will not change).
    pub fn is_retryable(&self) -> bool {
        match self {
            NodeAgentError::Kube { source, .. } => !matches!(
                source,
                kube::Error::Api(e) if (400..500).contains(&e.code) && e.code != 429
            ),
            NodeAgentError::Runtime(e) => e.is_retryable(),
            NodeAgentError::Bind { .. } => true,
            _ => false,
        }
    }
}

/// Whether `url`'s host is a loopback address or `localhost`.
pub(crate) fn is_loopback_url(url: &http::Uri) -> bool {
    match url.host() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Settings of a [`NodeAgent`]; [`start`](Self::start) validates them and starts it.
#[derive(Debug)]
#[must_use]
pub struct NodeAgentBuilder {
    config: kube::Config,
    runtime: Option<Arc<dyn PodRuntime>>,
    nodes: Vec<VirtualNode>,
    namespaces: Option<BTreeSet<String>>,
    allow_remote: bool,
    node_address: IpAddr,
    kubelet_port: u16,
    kubelet_version: String,
    status_workers: usize,
}

impl NodeAgentBuilder {
    /// The runtime that runs the pods (required).
    pub fn runtime(mut self, runtime: Arc<dyn PodRuntime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Adds a node (at least one).
    pub fn node(mut self, node: VirtualNode) -> Self {
        self.nodes.push(node);
        self
    }

    /// Adds `count` default nodes named `<prefix>-0`, `<prefix>-1`, …
    pub fn nodes(mut self, prefix: &str, count: usize) -> Self {
        self.nodes
            .extend((0..count).map(|i| VirtualNode::new(format!("{prefix}-{i}"))));
        self
    }

    /// Runs only pods of `namespace` (may be given several times; default: every namespace).
    /// The agent then watches each namespace, so it needs no cluster-wide pod access.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespaces
            .get_or_insert_with(BTreeSet::new)
            .insert(namespace.into());
        self
    }

    /// Allows an apiserver that is not on a loopback address (default: refused, since the
    /// agent runs whatever commands pods bound to its nodes carry).
    pub fn allow_remote_apiserver(mut self, allow: bool) -> Self {
        self.allow_remote = allow;
        self
    }

    /// The nodes' address (their `InternalIP`, where the kubelet port listens and the
    /// apiserver connects; default `127.0.0.1`).
    pub fn node_address(mut self, address: IpAddr) -> Self {
        self.node_address = address;
        self
    }

    /// The kubelet port (default 0: a free port, see [`NodeAgent::kubelet_port`]).
    pub fn kubelet_port(mut self, port: u16) -> Self {
        self.kubelet_port = port;
        self
    }

    /// The kubelet version the nodes report (default `v1.20.2-rorqual`).
    pub fn kubelet_version(mut self, version: impl Into<String>) -> Self {
        self.kubelet_version = version.into();
        self
    }

    /// How many pod statuses are written concurrently (default 16; against a loopback apiserver
    /// 64 writes about 1.7 times as many statuses per second, see BENCHMARKS.md).
    pub fn status_workers(mut self, workers: usize) -> Self {
        self.status_workers = workers.max(1);
        self
    }

    /// Checks the settings, serves the kubelet port, registers the nodes and starts
    /// heartbeats, pod watches and status writers.
    ///
    /// # Errors
    ///
    /// [`NodeAgentError::RemoteApiserver`] for a remote apiserver that was not allowed,
    /// [`NodeAgentError::Invalid`] without a runtime or nodes or with a node name twice,
    /// [`NodeAgentError::Bind`] / [`NodeAgentError::Tls`] for the kubelet port, and
    /// [`NodeAgentError::Kube`] when a node cannot be registered.
    pub async fn start(self) -> Result<NodeAgent, NodeAgentError> {
        let url = self.config.cluster_url.clone();
        if !self.allow_remote && !is_loopback_url(&url) {
            return Err(NodeAgentError::RemoteApiserver {
                url: url.to_string(),
            });
        }
        let runtime = self
            .runtime
            .ok_or_else(|| NodeAgentError::Invalid("no pod runtime was given".to_owned()))?;
        if self.nodes.is_empty() {
            return Err(NodeAgentError::Invalid("no nodes were given".to_owned()));
        }
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let unique: BTreeSet<&String> = names.iter().collect();
        if unique.len() != names.len() {
            return Err(NodeAgentError::Invalid(format!(
                "a node name is given twice in {names:?}"
            )));
        }
        let client =
            kube::Client::try_from(self.config).map_err(|source| NodeAgentError::Kube {
                context: format!("building a client for {url}"),
                source,
            })?;
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        let (kubelet_port, server) = logs_server::serve(
            SocketAddr::new(self.node_address, self.kubelet_port),
            &names,
            runtime.clone(),
        )
        .await?;
        tasks.push(server);
        let ctx = NodeContext {
            address: self.node_address,
            kubelet_port,
            runtime_kind: runtime.kind(),
            kubelet_version: self.kubelet_version,
            started: SystemTime::now(),
        };
        let nodes: Api<Node> = Api::all(client.clone());
        let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
        let abort_all = |tasks: &[JoinHandle<()>]| tasks.iter().for_each(JoinHandle::abort);
        for node in &self.nodes {
            let uid = match node::register(&nodes, node, &ctx).await {
                Ok(uid) => uid,
                Err(e) => {
                    abort_all(&tasks);
                    return Err(e);
                }
            };
            if let Err(e) = node::renew_lease(&leases, &node.name, &uid).await {
                abort_all(&tasks);
                return Err(e);
            }
            let (nodes, leases, node, ctx) =
                (nodes.clone(), leases.clone(), node.clone(), ctx.clone());
            tasks.push(tokio::spawn(async move {
                let mut lease_tick = tokio::time::interval(LEASE_RENEW_INTERVAL);
                let mut status_tick = tokio::time::interval(STATUS_REPORT_INTERVAL);
                lease_tick.tick().await;
                status_tick.tick().await;
                loop {
                    tokio::select! {
                        _ = lease_tick.tick() => {
                            if let Err(e) = node::renew_lease(&leases, &node.name, &uid).await {
                                tracing::warn!(node = %node.name, error = %e, "lease renewal failed");
                            }
                        }
                        _ = status_tick.tick() => {
                            if let Err(e) = node::write_status(&nodes, &node, &ctx).await {
                                tracing::warn!(node = %node.name, error = %e, "node status failed");
                            }
                        }
                    }
                }
            }));
        }
        let queue = Arc::new(StatusQueue::default());
        let notified = queue.clone();
        runtime.notify_pods(Arc::new(move |key: &PodKey| notified.push(key)));
        let controller = Arc::new(PodController::new(
            client,
            runtime.clone(),
            self.node_address.to_string(),
            queue,
        ));
        for _ in 0..self.status_workers {
            tasks.push(tokio::spawn(controller.clone().write_statuses()));
        }
        tasks.push(tokio::spawn(controller.clone().retry_refused()));
        for name in &names {
            for scope in watch_scopes(self.namespaces.as_ref()) {
                tasks.push(tokio::spawn(controller.clone().watch(name.clone(), scope)));
            }
        }
        tracing::info!(nodes = ?names, kubelet_port, runtime = runtime.kind(), "node agent started");
        Ok(NodeAgent {
            nodes: names,
            kubelet_port,
            runtime,
            tasks,
        })
    }
}

/// A running node agent. [`shutdown`](Self::shutdown) stops it and its pods; dropping it
/// stops its watches and heartbeats but leaves the runtime's pods to the runtime.
#[derive(Debug)]
pub struct NodeAgent {
    nodes: Vec<String>,
    kubelet_port: u16,
    runtime: Arc<dyn PodRuntime>,
    tasks: Vec<JoinHandle<()>>,
}

impl NodeAgent {
    /// Settings for an agent talking to the apiserver `config` describes.
    pub fn builder(config: kube::Config) -> NodeAgentBuilder {
        NodeAgentBuilder {
            config,
            runtime: None,
            nodes: Vec::new(),
            namespaces: None,
            allow_remote: false,
            node_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            kubelet_port: 0,
            kubelet_version: "v1.20.2-rorqual".to_owned(),
            status_workers: 16,
        }
    }

    /// The port the kubelet endpoint listens on.
    pub fn kubelet_port(&self) -> u16 {
        self.kubelet_port
    }

    /// The names of the agent's nodes.
    pub fn node_names(&self) -> &[String] {
        &self.nodes
    }

    /// The runtime running the agent's pods.
    pub fn runtime(&self) -> &Arc<dyn PodRuntime> {
        &self.runtime
    }

    /// Stops watching and heartbeating (the nodes turn NotReady after the lease expires) and
    /// stops every pod through the runtime, each with its grace period.
    ///
    /// # Errors
    ///
    /// [`NodeAgentError::Runtime`] when the runtime fails to stop its pods.
    pub async fn shutdown(mut self) -> Result<(), NodeAgentError> {
        self.stop_tasks();
        self.runtime.shutdown().await?;
        Ok(())
    }

    fn stop_tasks(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_apiservers_pass_by_default() {
        let ok = |u: &str| is_loopback_url(&u.parse().expect("valid url"));
        assert!(ok("https://127.0.0.1:6443"));
        assert!(ok("https://127.3.2.1"));
        assert!(ok("https://localhost:6443"));
        assert!(ok("https://[::1]:6443"));
        assert!(!ok("https://10.0.0.1:6443"));
        assert!(!ok("https://kube.example.com"));
    }

    #[tokio::test]
    async fn a_remote_apiserver_is_refused_before_anything_starts() {
        let config = kube::Config::new("https://192.0.2.10:6443".parse().expect("valid url"));
        let err = NodeAgent::builder(config)
            .runtime(Arc::new(SimulatedRuntime::default()))
            .nodes("n", 1)
            .start()
            .await
            .expect_err("refused");
        assert!(
            matches!(err, NodeAgentError::RemoteApiserver { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("192.0.2.10"), "{err}");
    }

    #[tokio::test]
    async fn settings_are_validated() {
        let config = || kube::Config::new("https://127.0.0.1:1".parse().expect("valid url"));
        let no_runtime = NodeAgent::builder(config()).nodes("n", 1).start().await;
        assert!(matches!(no_runtime, Err(NodeAgentError::Invalid(_))));
        let twice = NodeAgent::builder(config())
            .runtime(Arc::new(SimulatedRuntime::default()))
            .node(VirtualNode::new("a"))
            .node(VirtualNode::new("a"))
            .start()
            .await;
        assert!(matches!(twice, Err(NodeAgentError::Invalid(m)) if m.contains("twice")));
    }
}
