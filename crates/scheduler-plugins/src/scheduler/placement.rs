//! `Scheduler` as core's `Placement`: the engine's node views become a snapshot, the request a
//! pod, and the full framework decides.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use rorqual_core::Error;
use rorqual_core::placement::{NodeView, Placement, PlacementDecision, PlacementRequest};

use crate::interner::Sym;
use crate::scheduler::Scheduler;
use crate::selector::Selector;
use crate::snapshot::{
    HostPort, NodeInfo, PodInfo, Protocol, Snapshot, StatefulIdentity, ZONE_LABEL,
};

/// The pod for `request`. A request with an ordinal gets a stateful identity
/// `namespace/app-ordinal` carrying its previous node.
pub fn pod_from_request(request: &PlacementRequest) -> PodInfo {
    let mut pod = PodInfo::new(
        &request.instance,
        &request.app.namespace,
        &request.instance,
        request.resources,
    );
    // Values are not interned: an instance's labels may carry unbounded values.
    for (k, v) in &request.labels {
        pod.labels.insert_str(k, v);
    }
    pod.node_selector = Selector::match_labels(
        request
            .node_selector
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
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
        match self.schedule_pod((*pod).clone()).await {
            Ok(node) => {
                self.placed().insert(pod.uid.clone(), (node, pod));
                Ok(PlacementDecision::new(node.as_str().to_string()))
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
