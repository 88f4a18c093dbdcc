//! [`ApiBinder`]: binds a pod by creating its `Binding` through the API, as kube-scheduler's
//! DefaultBinder does.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, PostParams};
use rorqual_scheduler::Sym;
use rorqual_scheduler::framework::{BindPlugin, CycleState, Plugin, Status};
use rorqual_scheduler::snapshot::PodInfo;
use serde_json::json;

/// Binds pods with a `Binding` (`POST pods/{name}/binding`), guarded by the pod's uid.
#[derive(Clone)]
pub struct ApiBinder {
    client: Client,
}

impl std::fmt::Debug for ApiBinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiBinder").finish_non_exhaustive()
    }
}

impl ApiBinder {
    /// Binds through `client`.
    pub fn new(client: Client) -> ApiBinder {
        ApiBinder { client }
    }
}

/// The `Binding` of `pod` to `node` (the uid makes the server refuse a pod replaced by another
/// of the same name).
pub fn binding(pod: &PodInfo, node: &str) -> serde_json::Value {
    let namespace = pod.namespace.as_str();
    json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": &*pod.name, "namespace": &*namespace, "uid": &*pod.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    })
}

impl Plugin for ApiBinder {
    fn name(&self) -> &str {
        "ApiBinder"
    }
}

#[async_trait]
impl BindPlugin for ApiBinder {
    async fn bind(&self, _state: &CycleState, pod: &PodInfo, node: Sym) -> Status {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace.as_str());
        let body = binding(pod, &node.as_str());
        let result: Result<serde_json::Value, kube::Error> = api
            .create_subresource("binding", &pod.name, &PostParams::default(), &body)
            .await;
        match result {
            Ok(_) => Status::success(),
            Err(e) => Status::error(format!(
                "binding pod {}/{} to node {node}: {e}",
                pod.namespace, pod.name
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rorqual_core::model::Resources;

    #[test]
    fn a_binding_names_the_pod_with_its_uid_and_the_node() {
        let pod = PodInfo::new("u-1", "games", "web-0", Resources::default());
        assert_eq!(
            binding(&pod, "n1"),
            json!({"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": "web-0", "namespace": "games", "uid": "u-1"},
                "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}})
        );
    }
}
