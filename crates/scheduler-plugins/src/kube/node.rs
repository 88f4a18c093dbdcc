//! Node conversion: the `Node` fields the plugins read (allocatable, labels, taints,
//! cordon, readiness).

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
    let node: NodeJson = decode("Node", value)?;
    let cx = Ctx {
        kind: "Node",
        name: node.metadata.name.clone(),
    };
    if node.metadata.name.is_empty() {
        return Err(cx.err("metadata.name", "must not be empty"));
    }
    let source = if node.status.allocatable.is_empty() {
        &node.status.capacity
    } else {
        &node.status.allocatable
    };
    let allocatable = cx.resources("status.allocatable", source)?;
    let mut info = NodeInfo::new(&node.metadata.name, allocatable);
    for (k, v) in &node.metadata.labels {
        info.labels.insert(Sym::new(k), Sym::new(v));
    }
    if let Some(pods) = source.get("pods") {
        let q = cx.quantity("status.allocatable.pods", pods)?;
        info.max_pods = q.parse().map_err(|_| {
            cx.err(
                "status.allocatable.pods",
                format!("`{q}` is not a pod count"),
            )
        })?;
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
    if let Some(ready) = node.status.conditions.iter().find(|c| c.kind == "Ready") {
        info.ready = ready.status == "True";
    }
    Ok(info)
}

/// The node name of a Kubernetes Node JSON (for `Nodes`-mode results).
pub fn node_name(value: &Value) -> Option<&str> {
    value.get("metadata")?.get("name")?.as_str()
}
