//! Small plugins: queue order, the default binder, cordon/readiness, `nodeName`, host ports.

use async_trait::async_trait;

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

/// Rejects cordoned and not-ready nodes (upstream expresses readiness as a taint; engines
/// here report it as a flag).
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &str {
        "NodeUnschedulable"
    }
}

impl FilterPlugin for NodeUnschedulable {
    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if !node.ready {
            return Status::unresolvable("node(s) were not ready");
        }
        if node.unschedulable {
            let tolerated = pod.tolerations.iter().any(|t| {
                t.key == "node.kubernetes.io/unschedulable"
                    && matches!(t.operator, rorqual_core::model::TolerationOperator::Exists)
            });
            if !tolerated {
                return Status::unresolvable("node(s) were unschedulable");
            }
        }
        Status::success()
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
