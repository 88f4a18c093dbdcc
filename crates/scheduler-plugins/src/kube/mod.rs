//! Kubernetes JSON → snapshots: the subset of `Pod` and `Node` the plugins read, decoded from
//! the API's JSON (what an extender receives). With feature `k8s`, typed k8s-openapi objects
//! convert through the same mapping, so both paths agree (your binary picks k8s-openapi's
//! version feature; this crate enables none).
//!
//! Semantics follow kube-scheduler: resource quantities are read in full (`1k`, `1e3`, `Ki`…
//! `Ei`, `m`, any suffix on any resource) and rounded up like apimachinery's `Value()`;
//! readiness is not read from conditions (the `node.kubernetes.io/not-ready` and
//! `unreachable` taints carry it), and a node's Ready condition only fills the informational
//! [`NodeInfo::ready`](crate::NodeInfo::ready).
//!
//! rorqual's own pod annotations: [`ANNOTATION_IDENTITY`] (`namespace/name-ordinal`; a
//! StatefulSet's pod without it takes `namespace/` + its [`LABEL_STATEFULSET_POD_NAME`] label),
//! [`ANNOTATION_PREVIOUS_NODE`], [`ANNOTATION_PREVIOUS_ZONE`], [`ANNOTATION_UNDERLAY_POOL`]
//! (a pool name, or `*` for any), [`ANNOTATION_UNDERLAY_CLAIM`] (`pool/address` of a bound
//! fixed-IP claim), [`ANNOTATION_GANG`], [`ANNOTATION_GANG_MIN_MEMBER`],
//! [`ANNOTATION_GANG_TIMEOUT`] (seconds).

mod node;
mod pod;
mod quantity;
mod selector;

use std::collections::BTreeMap;

use rorqual_core::model::{Cpu, Memory, Resources, TaintEffect};
use serde::Deserialize;
use serde_json::Value;

use quantity::Quantity;

pub use node::{node_from_json, node_from_str, node_name};
pub use pod::pod_from_json;

pub use rorqual_core::pod_keys::{
    ANNOTATION_GANG, ANNOTATION_GANG_MIN_MEMBER, ANNOTATION_GANG_TIMEOUT, ANNOTATION_IDENTITY,
    ANNOTATION_PREVIOUS_NODE, ANNOTATION_PREVIOUS_ZONE, ANNOTATION_UNDERLAY_CLAIM,
    ANNOTATION_UNDERLAY_POOL, LABEL_STATEFULSET_POD_NAME,
};

/// A Kubernetes object that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} `{name}`: {path}: {reason}")]
pub struct KubeError {
    /// `Pod` or `Node`.
    pub kind: &'static str,
    /// The object's name (or `?`).
    pub name: String,
    /// The field path.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// Decodes an optional field whose JSON may be `null` (as Kubernetes clients send for unset
/// fields) as its default, like a missing field; k8s-openapi models these fields as
/// `Option`s.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// Decodes `value` as `T`, naming the object (from `metadata.name`, and `namespace` for pods)
/// and the failing field's path in the error.
fn decode<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    value: &Value,
) -> Result<T, KubeError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let meta = value.get("metadata");
        let text = |key: &str| meta.and_then(|m| m.get(key)).and_then(Value::as_str);
        let name = match (kind, text("name")) {
            (_, None) => "?".to_owned(),
            ("Pod", Some(name)) => format!("{}/{name}", text("namespace").unwrap_or("default")),
            (_, Some(name)) => name.to_owned(),
        };
        let path = e.path().to_string();
        KubeError {
            kind,
            name,
            path: if path == "." { "$".to_owned() } else { path },
            reason: e.into_inner().to_string(),
        }
    })
}

/// Decodes JSON text as `T`, like [`decode`] (for objects that arrive as raw JSON, such as
/// the nodes of an extender request).
fn decode_str<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    text: &str,
) -> Result<T, KubeError> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // Only on failure: find the object's name for the message.
        #[derive(Deserialize)]
        struct Named {
            metadata: Option<Meta>,
        }
        let meta = serde_json::from_str::<Named>(text)
            .ok()
            .and_then(|n| n.metadata);
        let name = match meta {
            Some(m) if !m.name.is_empty() => match (kind, m.namespace) {
                ("Pod", ns) => format!("{}/{}", ns.as_deref().unwrap_or("default"), m.name),
                _ => m.name,
            },
            _ => "?".to_owned(),
        };
        let path = e.path().to_string();
        KubeError {
            kind,
            name,
            path: if path == "." { "$".to_owned() } else { path },
            reason: e.into_inner().to_string(),
        }
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Meta {
    #[serde(deserialize_with = "null_as_default")]
    name: String,
    namespace: Option<String>,
    uid: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    annotations: BTreeMap<String, String>,
}

struct Ctx {
    kind: &'static str,
    name: String,
}

impl Ctx {
    fn err(&self, path: impl Into<String>, reason: impl Into<String>) -> KubeError {
        KubeError {
            kind: self.kind,
            name: self.name.clone(),
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Reads a quantity (a JSON string, or a number as some clients send); the error names
    /// the field and the value.
    fn quantity(&self, path: &str, v: &Value) -> Result<Quantity, KubeError> {
        let text = match v {
            Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
            Value::Number(n) => std::borrow::Cow::Owned(n.to_string()),
            other => return Err(self.err(path, format!("expected a quantity, found {other}"))),
        };
        Quantity::parse(&text)
            .map_err(|reason| self.err(path, format!("invalid quantity `{text}`: {reason}")))
    }

    fn resources(&self, path: &str, map: &BTreeMap<String, Value>) -> Result<Resources, KubeError> {
        let mut r = Resources::default();
        if let Some(v) = map.get("cpu") {
            r.cpu = Cpu(self.quantity(&format!("{path}.cpu"), v)?.ceil_scaled(3));
        }
        if let Some(v) = map.get("memory") {
            r.memory = Memory(self.quantity(&format!("{path}.memory"), v)?.ceil_scaled(0));
        }
        Ok(r)
    }
}

fn effect(s: &str) -> Option<TaintEffect> {
    match s {
        "NoSchedule" => Some(TaintEffect::NoSchedule),
        "PreferNoSchedule" => Some(TaintEffect::PreferNoSchedule),
        "NoExecute" => Some(TaintEffect::NoExecute),
        _ => None,
    }
}

#[cfg(feature = "k8s")]
mod typed {
    use super::*;
    use crate::snapshot::{NodeInfo, PodInfo};
    use k8s_openapi::api::core::v1::{Node, Pod};

    impl TryFrom<&Pod> for PodInfo {
        type Error = KubeError;
        /// Converts through the pod's JSON, the same mapping the extender uses.
        fn try_from(pod: &Pod) -> Result<PodInfo, KubeError> {
            let value = serde_json::to_value(pod).map_err(|e| KubeError {
                kind: "Pod",
                name: pod.metadata.name.clone().unwrap_or_default(),
                path: "$".into(),
                reason: e.to_string(),
            })?;
            pod_from_json(&value)
        }
    }

    impl TryFrom<&Node> for NodeInfo {
        type Error = KubeError;
        /// Converts through the node's JSON, the same mapping the extender uses.
        fn try_from(node: &Node) -> Result<NodeInfo, KubeError> {
            let value = serde_json::to_value(node).map_err(|e| KubeError {
                kind: "Node",
                name: node.metadata.name.clone().unwrap_or_default(),
                path: "$".into(),
                reason: e.to_string(),
            })?;
            node_from_json(&value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interner::Sym;
    use crate::snapshot::WhenUnsatisfiable;
    #[cfg(feature = "k8s")]
    use crate::snapshot::{NodeInfo, PodInfo};
    use serde_json::json;

    #[test]
    fn pod_fields() {
        let pod = pod_from_json(&json!({
            "metadata": {"name": "web-0", "namespace": "games", "uid": "u-1", "labels": {"app": "web"},
                "annotations": {"rorqual.io/identity": "games/web-0", "rorqual.io/previous-node": "n1",
                    "rorqual.io/underlay-claim": "pool-a/10.0.0.5", "rorqual.io/gang": "g", "rorqual.io/gang-min-member": "3"}},
            "spec": {
                "priority": 5,
                "nodeSelector": {"disk": "ssd"},
                "containers": [
                    {"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}, "ports": [{"containerPort": 80, "hostPort": 8080}]},
                    {"resources": {"requests": {"cpu": 1}}}
                ],
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "affinity": {
                    "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}},
                    "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}
                },
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}]
            }
        }))
        .unwrap();
        assert_eq!(&*pod.uid, "u-1");
        assert_eq!(pod.requests, Resources::new(1250, 64 << 20));
        assert_eq!(pod.priority, 5);
        assert_eq!(pod.host_ports.len(), 1);
        assert_eq!(pod.anti_affinity.required.len(), 1);
        assert!(pod.required_node_affinity.is_some());
        assert_eq!(
            pod.spread[0].when_unsatisfiable,
            WhenUnsatisfiable::ScheduleAnyway
        );
        assert_eq!(pod.identity.unwrap().previous_node, Some(Sym::new("n1")));
        assert_eq!(
            pod.underlay.unwrap().bound_claim.unwrap().1.to_string(),
            "10.0.0.5"
        );
        assert_eq!(pod.gang.unwrap().min_member, 3);
    }

    #[test]
    fn a_statefulset_pod_takes_its_identity_from_the_pod_name_label() {
        let pod = |annotations: Value| {
            pod_from_json(&json!({
                "metadata": {"name": "db-2", "namespace": "shop", "uid": "u-db-2",
                    "labels": {"app": "db", "controller-revision-hash": "db-7f9c", "statefulset.kubernetes.io/pod-name": "db-2"},
                    "annotations": annotations},
                "spec": {"containers": [{"name": "db"}]}
            }))
            .unwrap()
        };
        let id = pod(json!({"rorqual.io/previous-node": "n7"}))
            .identity
            .unwrap();
        assert_eq!(&*id.key, "shop/db-2");
        assert_eq!(id.previous_node, Some(Sym::new("n7")));
        // rorqual's annotation, when present, wins.
        let id = pod(json!({"rorqual.io/identity": "shop/primary-0"}))
            .identity
            .unwrap();
        assert_eq!(&*id.key, "shop/primary-0");
        // An identity also keys an underlay claim, as for annotated pods.
        let claimed = pod(json!({"rorqual.io/underlay-pool": "pool-a"}));
        assert_eq!(
            claimed.underlay.unwrap().claim.as_deref(),
            Some("shop/db-2")
        );
        let plain =
            pod_from_json(&json!({"metadata": {"name": "web-x", "labels": {"app": "web"}}}))
                .unwrap();
        assert!(plain.identity.is_none());
    }

    #[test]
    fn bad_input_names_the_field() {
        let err = pod_from_json(&json!({"metadata": {"name": "p"}, "spec": {"containers": [{"resources": {"requests": {"cpu": "lots"}}}]}})).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("Pod `default/p`: spec.containers[0].resources.requests.cpu"),
            "{err}"
        );
        let err = pod_from_json(&json!({"metadata": {"name": "p"}, "spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "z", "operator": "Near", "values": []}]}]}}}}})).unwrap_err();
        assert!(err.to_string().contains("unknown operator `Near`"), "{err}");
        let err = node_from_json(&json!({"metadata": {"name": "n"}, "spec": {"taints": [{"key": "k", "effect": "Maybe"}]}})).unwrap_err();
        assert!(err.to_string().contains("spec.taints[0].effect"), "{err}");
    }

    #[cfg(feature = "k8s")]
    #[test]
    fn typed_k8s_objects_convert_like_their_json() {
        use k8s_openapi::api::core::v1::{Node, Pod};
        let pod_json = json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}],
                     "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]}});
        let typed: Pod = serde_json::from_value(pod_json.clone()).unwrap();
        assert_eq!(
            PodInfo::try_from(&typed).unwrap(),
            pod_from_json(&pod_json).unwrap()
        );
        let node_json = json!({"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "4", "memory": "8Gi"}}});
        let typed: Node = serde_json::from_value(node_json.clone()).unwrap();
        let info = NodeInfo::try_from(&typed).unwrap();
        assert_eq!(info, node_from_json(&node_json).unwrap());
        assert_eq!(info.allocatable, Resources::new(4000, 8 << 30));
    }

    #[test]
    fn node_fields() {
        let node = node_from_json(&json!({
            "metadata": {"name": "n1", "labels": {"zone": "a"}},
            "spec": {"unschedulable": true, "taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "False"}]}
        }))
        .unwrap();
        assert_eq!(node.allocatable, Resources::new(4000, 8 << 30));
        assert!(node.unschedulable && !node.ready);
        assert_eq!(node.max_pods, 110);
        assert_eq!(node.labels.get(Sym::new("zone")), Some(Sym::new("a")));
    }
}
