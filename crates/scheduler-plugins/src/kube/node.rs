//! Node conversion: the `Node` fields the plugins read (allocatable, labels, taints,
//! cordon), and the Ready condition for information.

use std::collections::BTreeMap;

use rorqual_core::model::Taint;
use serde::Deserialize;
use serde_json::Value;

use super::*;
use crate::interner::Sym;
use crate::snapshot::NodeInfo;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct TaintJson {
    #[serde(deserialize_with = "null_as_default")]
    key: String,
    #[serde(deserialize_with = "null_as_default")]
    value: String,
    #[serde(deserialize_with = "null_as_default")]
    effect: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct NodeSpec {
    #[serde(deserialize_with = "null_as_default")]
    taints: Vec<TaintJson>,
    #[serde(deserialize_with = "null_as_default")]
    unschedulable: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Condition {
    #[serde(rename = "type")]
    #[serde(deserialize_with = "null_as_default")]
    kind: String,
    #[serde(deserialize_with = "null_as_default")]
    status: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct NodeStatus {
    #[serde(deserialize_with = "null_as_default")]
    allocatable: BTreeMap<String, Value>,
    #[serde(deserialize_with = "null_as_default")]
    capacity: BTreeMap<String, Value>,
    #[serde(deserialize_with = "null_as_default")]
    conditions: Vec<Condition>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NodeJson {
    #[serde(deserialize_with = "null_as_default")]
    metadata: Meta,
    #[serde(deserialize_with = "null_as_default")]
    spec: NodeSpec,
    #[serde(deserialize_with = "null_as_default")]
    status: NodeStatus,
}

/// Reads a node from its Kubernetes JSON.
pub fn node_from_json(value: &Value) -> Result<NodeInfo, KubeError> {
    node_info(decode("Node", value)?)
}

/// Reads a node from its Kubernetes JSON text, without building a JSON tree (the fields the
/// scheduler does not read, such as `managedFields` and `images`, are skipped).
pub fn node_from_str(text: &str) -> Result<NodeInfo, KubeError> {
    node_info(decode_str("Node", text)?)
}

fn node_info(node: NodeJson) -> Result<NodeInfo, KubeError> {
    let cx = Ctx {
        kind: "Node",
        name: node.metadata.name.clone(),
    };
    if node.metadata.name.is_empty() {
        return Err(cx.err("metadata.name", "must not be empty"));
    }
    let (source, source_path) = if node.status.allocatable.is_empty() {
        (&node.status.capacity, "status.capacity")
    } else {
        (&node.status.allocatable, "status.allocatable")
    };
    let allocatable = cx.resources(source_path, source)?;
    let mut info = NodeInfo::new(&node.metadata.name, allocatable);
    for (k, v) in &node.metadata.labels {
        info.labels.insert(Sym::new(k), Sym::new(v));
    }
    if let Some(pods) = source.get("pods") {
        // Any quantity is a valid pod count (`1k`, `110`, `1e3`); like kube-scheduler's
        // `Value()`, a fraction rounds up. A count beyond u32 is as good as unlimited.
        let count = cx
            .quantity(&format!("{source_path}.pods"), pods)?
            .ceil_scaled(0);
        info.max_pods = u32::try_from(count).unwrap_or(u32::MAX);
    }
    for (i, t) in node.spec.taints.iter().enumerate() {
        let effect = effect(&t.effect).ok_or_else(|| {
            cx.err(
                format!("spec.taints[{i}].effect"),
                format!("unknown effect `{}`", t.effect),
            )
        })?;
        info.taints.push(Taint {
            key: t.key.clone(),
            value: t.value.clone(),
            effect,
        });
    }
    info.unschedulable = node.spec.unschedulable;
    // For information only: filters see readiness through the node's taints, which is all
    // kube-scheduler looks at (the node lifecycle controller turns conditions into taints).
    if let Some(ready) = node.status.conditions.iter().find(|c| c.kind == "Ready") {
        info.ready = ready.status == "True";
    }
    Ok(info)
}

/// The node name of a Kubernetes Node JSON (for `Nodes`-mode results).
pub fn node_name(value: &Value) -> Option<&str> {
    value.get("metadata")?.get("name")?.as_str()
}
