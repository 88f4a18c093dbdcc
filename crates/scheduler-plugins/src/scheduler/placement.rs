//! `Scheduler` as core's `Placement`: the engine's node views become a snapshot, the request a
//! pod, and the full framework decides.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rorqual_core::Error;
use rorqual_core::placement::{NodeView, Placement, PlacementDecision, PlacementRequest};

use rorqual_core::model::{Taint, TaintEffect};

use crate::convert;
use crate::interner::Sym;
use crate::plugins::TAINT_NOT_READY;
use crate::scheduler::Scheduler;
use crate::selector::Selector;
use crate::snapshot::{
    GangMembership, HostPort, NodeInfo, PodInfo, Protocol, Snapshot, StatefulIdentity,
    UnderlayRequest, ZONE_LABEL,
};

/// The pod for `request`, with every constraint the request carries: requests, node
/// selector, tolerations, host ports, priority, required and preferred node affinity, pod
/// affinity and anti-affinity, topology spread, underlay need (pool, and the identity whose
/// claim keeps a fixed IP; the UnderlayIp plugin looks the claim up) and gang. A request with an ordinal gets a
/// stateful identity `namespace/app-ordinal` carrying its previous node. Uid and name are the
/// instance id.
///
/// The constraints convert through [`crate::convert`], as a pod read from Kubernetes JSON
/// ([`crate::kube::pod_from_json`]) does, so both give the same pod.
pub fn pod_from_request(request: &PlacementRequest) -> PodInfo {
    let mut pod = PodInfo::new(
        &request.instance,
        &request.app.namespace,
        &request.instance,
        request.resources,
    );
    pod.priority = request.priority;
    pod.node_selector = Selector::match_labels(
        request
            .node_selector
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    if let Some(na) = &request.affinity.node_affinity {
        pod.required_node_affinity = na
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .map(convert::node_selector);
        pod.preferred_node_affinity =
            convert::preferred_node_terms(&na.preferred_during_scheduling_ignored_during_execution);
    }
    pod.affinity = convert::affinity_terms(request.affinity.pod_affinity.as_ref());
    pod.anti_affinity = convert::affinity_terms(request.affinity.pod_anti_affinity.as_ref());
    pod.spread = request
        .topology_spread
        .iter()
        .map(convert::spread_constraint)
        .collect();
    pod.tolerations = request.tolerations.clone();
    pod.host_ports = request
        .host_ports
        .iter()
        .map(|&port| HostPort {
            protocol: Protocol::Tcp,
            port,
        })
        .collect();
    if request.ordinal.is_some() || request.previous_node.is_some() {
        let key = match request.ordinal {
            Some(o) => format!("{}/{}-{o}", request.app.namespace, request.app.name),
            None => format!("{}/{}", request.app.namespace, request.instance),
        };
        pod.identity = Some(StatefulIdentity {
            key: Arc::from(key.as_str()),
            previous_node: request.previous_node.as_deref().map(Sym::new),
            previous_zone: None,
        });
    }
    pod.underlay = request.underlay.as_ref().map(|u| UnderlayRequest {
        pool: u.pool.as_deref().map(Arc::from),
        bound_claim: None,
        claim: u.claim_key.as_deref().map(Arc::from),
    });
    pod.gang = request.gang.as_ref().map(|g| GangMembership {
        name: Arc::from(g.name.as_str()),
        min_member: g.min_member,
        timeout: g.timeout_seconds.map(Duration::from_secs),
    });
    // Last, so that values the pod's own selectors mention are interned by now and stored as
    // symbols (as `pod_from_json` does). Other values are not interned: an instance's labels
    // may carry unbounded values.
    for (k, v) in &request.labels {
        pod.labels.insert_str(k, v);
    }
    pod
}

/// The node info of a core node view (its `requested` and ports count as unknown pods').
pub fn node_from_view(view: &NodeView) -> NodeInfo {
    let node = &view.node;
    let mut info = NodeInfo::new(&node.name, node.allocatable);
    for (k, v) in &node.labels {
        info.labels.insert(Sym::new(k), Sym::new(v));
    }
    info.taints = node.taints.clone();
    info.unschedulable = node.unschedulable;
    info.ready = node.ready;
    // Filters read readiness through taints only, as kube-scheduler does; an engine reports
    // it as a flag, so a not-ready node gets the taint Kubernetes' node lifecycle controller
    // would put on it (pods tolerating it, like a DaemonSet's, may still go there).
    if !node.ready && !info.taints.iter().any(|t| t.key == TAINT_NOT_READY) {
        info.taints.push(Taint {
            key: TAINT_NOT_READY.to_owned(),
            value: String::new(),
            effect: TaintEffect::NoSchedule,
        });
    }
    info.requested = view.requested;
    info.used_ports = view
        .used_ports
        .iter()
        .map(|&port| HostPort {
            protocol: Protocol::Tcp,
            port,
        })
        .collect();
    info
}

/// A placed instance: its id and pod.
type PlacedRef<'a> = (&'a Arc<str>, &'a Arc<PodInfo>);

impl Scheduler {
    /// Rebuilds the snapshot from the engine's views plus the pods this scheduler placed
    /// (views are authoritative for usage; placed pods the views already list are not counted
    /// twice).
    fn sync_views(&self, views: &[NodeView]) {
        let placed = self.placed();
        let mut by_node: HashMap<Sym, Vec<PlacedRef<'_>>> = HashMap::new();
        for (uid, (node, pod)) in placed.iter() {
            by_node.entry(*node).or_default().push((uid, pod));
        }
        let mut snapshot = Snapshot::new();
        for view in views {
            let mut info = node_from_view(view);
            let name = info.name;
            for (uid, pod) in by_node.get(&name).into_iter().flatten() {
                if view.instances.contains(&***uid) {
                    info.requested = info.requested.saturating_sub(pod.requests);
                    for port in &pod.host_ports {
                        if let Some(i) = info.used_ports.iter().position(|p| p == port) {
                            info.used_ports.swap_remove(i);
                        }
                    }
                }
                info.pods.push(Arc::clone(pod));
            }
            snapshot.upsert_node(info);
        }
        drop(placed);
        self.replace_snapshot(snapshot);
    }
}

#[async_trait]
impl Placement for Scheduler {
    async fn place(
        &self,
        request: &PlacementRequest,
        nodes: &[NodeView],
    ) -> rorqual_core::Result<PlacementDecision> {
        // One placement at a time, from syncing the views until the pod is recorded.
        let _placing = self.placing().await;
        self.sync_views(nodes);
        let mut pod = pod_from_request(request);
        if let Some(identity) = &mut pod.identity
            && let Some(prev) = &request.previous_node
        {
            identity.previous_zone = nodes
                .iter()
                .find(|v| &v.node.name == prev)
                .and_then(|v| v.node.labels.get(ZONE_LABEL))
                .map(|z| Sym::new(z));
        }
        let pod = Arc::new(pod);
        match self.schedule_pod_reserving((*pod).clone()).await {
            Ok(placed) => {
                let node = placed.node;
                self.placed().insert(pod.uid.clone(), (node, pod));
                let decision = PlacementDecision::new(node.as_str().to_string());
                Ok(match placed.address {
                    Some(address) => decision.with_address(address),
                    None => decision,
                })
            }
            Err(status) => Err(Error::Unschedulable {
                instance: request.instance.clone(),
                reason: status.message(),
            }),
        }
    }

    async fn release(&self, instance: &str) -> rorqual_core::Result<()> {
        let _placing = self.placing().await;
        self.placed().remove(instance);
        self.release_pod(instance);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rorqual_core::model::{Node, Resources, Toleration, TolerationOperator};

    use super::*;
    use crate::framework::{CycleState, FilterPlugin};
    use crate::plugins::{NodeUnschedulable, TaintToleration};

    #[test]
    fn a_not_ready_engine_node_repels_through_the_not_ready_taint_only() {
        let mut node = Node::new("n1", Resources::new(4000, 8 << 30));
        node.ready = false;
        let info = node_from_view(&NodeView::new(node));
        assert!(!info.ready);
        assert_eq!(info.taints.len(), 1);
        assert_eq!(info.taints[0].key, TAINT_NOT_READY);
        let state = CycleState::new();
        let plain = PodInfo::new("u1", "ns", "p", Resources::default());
        let mut daemon = PodInfo::new("u2", "ns", "d", Resources::default());
        daemon.tolerations.push(Toleration {
            key: String::new(),
            operator: TolerationOperator::Exists,
            value: String::new(),
            effect: None,
        });
        let passes = |pod: &PodInfo| {
            NodeUnschedulable.filter(&state, pod, &info).is_success()
                && TaintToleration.filter(&state, pod, &info).is_success()
        };
        assert!(!passes(&plain));
        assert!(passes(&daemon));
        let ready = node_from_view(&NodeView::new(Node::new("n2", Resources::new(1, 1))));
        assert!(ready.taints.is_empty());
    }
}
