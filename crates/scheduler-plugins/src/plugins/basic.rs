//! Small plugins: queue order, the default binder, cordon/readiness, `nodeName`, host ports.

use async_trait::async_trait;
use rorqual_core::model::{Taint, TaintEffect};

use crate::framework::{
    BindPlugin, CycleState, FilterPlugin, NodeSet, Plugin, PreFilterPlugin, QueueSortPlugin,
    QueuedPodInfo, Status,
};
use crate::interner::Sym;
use crate::snapshot::{NodeInfo, PodInfo, Snapshot};

/// Higher priority first, then first queued first.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrioritySort;

impl Plugin for PrioritySort {
    fn name(&self) -> &str {
        "PrioritySort"
    }
}

impl QueueSortPlugin for PrioritySort {
    fn less(&self, a: &QueuedPodInfo, b: &QueuedPodInfo) -> bool {
        a.pod.priority > b.pod.priority
            || (a.pod.priority == b.pod.priority && a.timestamp < b.timestamp)
    }
}

/// Binds by recording the binding in the scheduler's cache (the in-process host has no API
/// server). Put a binder that calls your API before it when you need one.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultBinder;

impl Plugin for DefaultBinder {
    fn name(&self) -> &str {
        "DefaultBinder"
    }
}

#[async_trait]
impl BindPlugin for DefaultBinder {
    async fn bind(&self, _state: &CycleState, _pod: &PodInfo, _node: Sym) -> Status {
        Status::success()
    }
}

/// The taint a cordoned node carries (`kubectl cordon`), which a pod's tolerations must
/// tolerate for [`NodeUnschedulable`] to admit it.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// The taint a not-ready node carries (readiness reaches the filters as this taint).
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";

/// Rejects cordoned nodes (`spec.unschedulable`) unless the pod tolerates the
/// `node.kubernetes.io/unschedulable:NoSchedule` taint, by the usual toleration rules (an
/// empty key with `Exists` tolerates it; so does the key with `Equal` and an empty value), as
/// kube-scheduler's NodeUnschedulable plugin does. Readiness is not this plugin's concern:
/// upstream filters it through the `node.kubernetes.io/not-ready` and `unreachable` taints
/// ([`TaintToleration`](crate::plugins::TaintToleration)), so a DaemonSet's
/// tolerate-everything pod still lands on a NotReady node. Engine views that report readiness
/// as a flag get the not-ready taint when converted (see `node_from_view`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &str {
        "NodeUnschedulable"
    }
}

impl FilterPlugin for NodeUnschedulable {
    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if !node.unschedulable {
            return Status::success();
        }
        let cordon = Taint {
            key: TAINT_UNSCHEDULABLE.to_owned(),
            value: String::new(),
            effect: TaintEffect::NoSchedule,
        };
        if pod.tolerations.iter().any(|t| t.tolerates(&cordon)) {
            Status::success()
        } else {
            Status::unresolvable("node(s) were unschedulable")
        }
    }
}

/// `spec.nodeName`: only the named node.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &str {
        "NodeName"
    }
}

impl PreFilterPlugin for NodeName {
    fn pre_filter(
        &self,
        _s: &mut CycleState,
        pod: &PodInfo,
        _snap: &Snapshot,
    ) -> (Option<NodeSet>, Status) {
        match pod.node_name {
            Some(name) => (Some(NodeSet::from([name])), Status::success()),
            None => (None, Status::skip()),
        }
    }
}

impl FilterPlugin for NodeName {
    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        match pod.node_name {
            Some(name) if name != node.name => {
                Status::unresolvable("node(s) didn't match the requested node name")
            }
            _ => Status::success(),
        }
    }
}

/// Host ports must be free on the node.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &str {
        "NodePorts"
    }
}

impl PreFilterPlugin for NodePorts {
    fn pre_filter(
        &self,
        _s: &mut CycleState,
        pod: &PodInfo,
        _snap: &Snapshot,
    ) -> (Option<NodeSet>, Status) {
        if pod.host_ports.is_empty() {
            (None, Status::skip())
        } else {
            (None, Status::success())
        }
    }
}

impl FilterPlugin for NodePorts {
    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if pod.host_ports.iter().any(|p| node.used_ports.contains(p)) {
            return Status::unschedulable(
                "node(s) didn't have free ports for the requested pod ports",
            );
        }
        Status::success()
    }
}
