//! The [`PodRuntime`] seam: what the node agent asks of whatever runs its pods
//! (virtual-kubelet's provider shape).
//!
//! The agent calls [`create_pod`](PodRuntime::create_pod) for every pod bound to one of its
//! nodes, [`update_pod`](PodRuntime::update_pod) when a bound pod's spec changes and
//! [`delete_pod`](PodRuntime::delete_pod) when it is deleted (every call idempotent). A runtime
//! reports what it runs as [`PodState`]s, read through [`pod_state`](PodRuntime::pod_state)
//! whenever it signals a change through the [`PodNotifier`] the agent gave it; the agent turns
//! states into Pod statuses ([`crate::node_agent::status`]) and writes them.
//!
//! Two runtimes ship: [`SimulatedRuntime`] (kwok-like stages with delays and injectable
//! faults, no processes) and [`LocalRuntime`] (each container's `command` and `args` as a real
//! process, with probes, restarts and logs).

mod env;
pub mod local;
pub mod simulated;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use rorqual_core::engine::LogStream;

pub use local::{LocalRuntime, LocalRuntimeBuilder};
pub use simulated::{SimulatedConfig, SimulatedRuntime, StagePlan};

/// Identifies one pod: namespace, name and UID (a pod deleted and created again under the same
/// name is another pod).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// The UID the apiserver gave it.
    pub uid: String,
}

impl PodKey {
    /// The key of `namespace/name` with `uid`.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        uid: impl Into<String>,
    ) -> Self {
        PodKey {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    /// The key of `pod`; `None` when it lacks a name or UID (never so for a pod read from an
    /// apiserver).
    pub fn of(pod: &Pod) -> Option<PodKey> {
        let meta = &pod.metadata;
        Some(PodKey {
            namespace: meta
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            name: meta.name.clone()?,
            uid: meta.uid.clone()?,
        })
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where one container is in its life (a Kubernetes `ContainerState`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContainerPhase {
    /// Not running: being created, waiting out a restart backoff, or unable to start.
    Waiting {
        /// A CamelCase reason (`ContainerCreating`, `CrashLoopBackOff`, `RunContainerError`,
        /// `CreateContainerConfigError`).
        reason: String,
        /// Details for people.
        message: Option<String>,
    },
    /// Running since `started_at`.
    Running {
        /// When the current process started.
        started_at: SystemTime,
    },
    /// Ended.
    Terminated {
        /// The exit code (128 + the signal for a process killed by a signal, as container
        /// runtimes report it).
        exit_code: i32,
        /// The signal that killed it.
        signal: Option<i32>,
        /// `Completed` (exit code 0) or `Error`.
        reason: String,
        /// Details for people.
        message: Option<String>,
        /// When it started.
        started_at: Option<SystemTime>,
        /// When it ended.
        finished_at: SystemTime,
    },
}

impl ContainerPhase {
    /// A waiting phase with `reason` and an optional message.
    pub fn waiting(reason: impl Into<String>, message: Option<String>) -> Self {
        ContainerPhase::Waiting {
            reason: reason.into(),
            message,
        }
    }

    /// A terminated phase for an exit with `exit_code` (or a kill by `signal`).
    pub fn terminated(
        exit_code: i32,
        signal: Option<i32>,
        started_at: Option<SystemTime>,
        finished_at: SystemTime,
        message: Option<String>,
    ) -> Self {
        let reason = if exit_code == 0 && signal.is_none() {
            "Completed"
        } else {
            "Error"
        };
        ContainerPhase::Terminated {
            exit_code,
            signal,
            reason: reason.to_owned(),
            message,
            started_at,
            finished_at,
        }
    }
}

/// What a runtime knows of one container of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ContainerState {
    /// The container's name in the pod spec.
    pub name: String,
    /// Where it is now.
    pub phase: ContainerPhase,
    /// Passing its readiness probe (running with no probe counts as ready).
    pub ready: bool,
    /// How many times it was restarted.
    pub restart_count: u32,
    /// How its previous run ended.
    pub last_termination: Option<ContainerPhase>,
}

impl ContainerState {
    /// A container `name` waiting to be created, never started.
    pub fn creating(name: impl Into<String>) -> Self {
        ContainerState {
            name: name.into(),
            phase: ContainerPhase::waiting("ContainerCreating", None),
            ready: false,
            restart_count: 0,
            last_termination: None,
        }
    }
}

/// What a runtime knows of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PodState {
    /// The pod.
    pub key: PodKey,
    /// Its address.
    pub pod_ip: Option<IpAddr>,
    /// When the runtime accepted it.
    pub started_at: Option<SystemTime>,
    /// Its containers, in the pod spec's order.
    pub containers: Vec<ContainerState>,
}

/// Which log lines to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogRequest {
    /// The container (the pod's only container when `None`).
    pub container: Option<String>,
    /// Only the last lines that exist now.
    pub tail_lines: Option<usize>,
    /// Keep the stream open and yield new lines while the container runs.
    pub follow: bool,
}

/// Called by a runtime whenever the state of a pod changed; cheap and non-blocking.
pub type PodNotifier = Arc<dyn Fn(&PodKey) + Send + Sync>;

/// Errors of a [`PodRuntime`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The runtime does not run this pod.
    #[error("pod {pod} is not run by the {runtime} runtime")]
    UnknownPod {
        /// The runtime's kind.
        runtime: &'static str,
        /// The pod (`namespace/name`).
        pod: String,
    },
    /// The pod has no container of that name.
    #[error("pod {pod} has no container `{container}`")]
    UnknownContainer {
        /// The pod (`namespace/name`).
        pod: String,
        /// The container asked for.
        container: String,
    },
    /// No address is left for a new pod.
    #[error("no free pod address in {range} ({used} in use)")]
    AddressesExhausted {
        /// The range addresses come from.
        range: String,
        /// How many are in use.
        used: usize,
    },
    /// The runtime cannot do this.
    #[error("the {runtime} runtime does not support {operation}")]
    Unsupported {
        /// The runtime's kind.
        runtime: &'static str,
        /// What was asked.
        operation: &'static str,
    },
    /// A file of the pod could not be written or read.
    #[error("pod {pod}: {context}")]
    Io {
        /// The pod (`namespace/name`).
        pod: String,
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The pod could not be attached to the runtime's network.
    #[error("attaching pod {pod} to the network")]
    Network {
        /// The pod (`namespace/name`).
        pod: String,
        /// Why.
        #[source]
        source: rorqual_core::error::Error,
    },
    /// A log could not be read.
    #[error("reading the log of {pod} container {container}")]
    Logs {
        /// The pod (`namespace/name`).
        pod: String,
        /// The container.
        container: String,
        /// Why.
        #[source]
        source: rorqual_core::error::Error,
    },
}

impl RuntimeError {
    /// Whether trying again may succeed (an address may free up, a file system may recover).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RuntimeError::AddressesExhausted { .. } | RuntimeError::Io { .. }
        ) || matches!(self, RuntimeError::Network { source, .. } if source.is_retryable())
    }
}

/// Runs the pods bound to a node agent's nodes. Object safe: store it as
/// `Arc<dyn PodRuntime>`.
///
/// Every mutating call is idempotent: creating a pod the runtime already runs, or deleting one
/// it does not know, succeeds and changes nothing.
#[async_trait]
pub trait PodRuntime: Send + Sync + fmt::Debug + 'static {
    /// A short name of the runtime (`simulated`, `local`).
    fn kind(&self) -> &'static str;

    /// Starts running `pod` (bound to a node: `spec.nodeName` is set). Returns once the pod is
    /// accepted; containers that cannot start are reported through their state, not here.
    async fn create_pod(&self, pod: &Pod) -> Result<(), RuntimeError>;

    /// A bound pod's spec or metadata changed (an image patched in place, new labels).
    async fn update_pod(&self, pod: &Pod) -> Result<(), RuntimeError>;

    /// Stops the pod, giving its processes `grace` between the polite and the forced stop, and
    /// forgets it; returns when it no longer runs.
    async fn delete_pod(&self, key: &PodKey, grace: Duration) -> Result<(), RuntimeError>;

    /// What the runtime knows of the pod now; `None` for a pod it does not run.
    async fn pod_state(&self, key: &PodKey) -> Result<Option<PodState>, RuntimeError>;

    /// Every pod the runtime runs.
    async fn list_pods(&self) -> Result<Vec<PodKey>, RuntimeError>;

    /// Registers the callback the runtime calls after a pod's state changed (replacing an
    /// earlier one).
    fn notify_pods(&self, notifier: PodNotifier);

    /// Reads a container's log of the pod `namespace/name`. Optional: the default answers
    /// [`RuntimeError::Unsupported`].
    async fn logs(
        &self,
        namespace: &str,
        name: &str,
        request: LogRequest,
    ) -> Result<LogStream, RuntimeError> {
        let _ = (namespace, name, request);
        Err(RuntimeError::Unsupported {
            runtime: self.kind(),
            operation: "logs",
        })
    }

    /// Stops every pod (each with its own grace period) and releases what the runtime holds.
    async fn shutdown(&self) -> Result<(), RuntimeError> {
        Ok(())
    }
}

/// The grace period of a pod being deleted: the deletion's `deletionGracePeriodSeconds`, else
/// the spec's `terminationGracePeriodSeconds`, else Kubernetes' default of 30 s.
pub fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

/// A pod's restart policy as the runtimes read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub(crate) fn of(pod: &Pod) -> Self {
        match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether a container that ended (successfully or not) is started again.
    pub(crate) fn restarts(self, success: bool) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_is_object_safe_and_send() {
        fn assert_send_sync<T: Send + Sync + ?Sized>() {}
        assert_send_sync::<dyn PodRuntime>();
        let _: Option<Arc<dyn PodRuntime>> = None;
    }

    #[test]
    fn grace_prefers_the_deletion() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": [], "terminationGracePeriodSeconds": 5}
        }))
        .expect("valid pod");
        assert_eq!(grace_period(&pod), Duration::from_secs(5));
        pod.metadata.deletion_grace_period_seconds = Some(2);
        assert_eq!(grace_period(&pod), Duration::from_secs(2));
        pod.spec = None;
        pod.metadata.deletion_grace_period_seconds = None;
        assert_eq!(grace_period(&pod), Duration::from_secs(30));
    }

    #[test]
    fn restart_policies() {
        assert!(RestartPolicy::Always.restarts(true));
        assert!(RestartPolicy::OnFailure.restarts(false));
        assert!(!RestartPolicy::OnFailure.restarts(true));
        assert!(!RestartPolicy::Never.restarts(false));
    }
}
