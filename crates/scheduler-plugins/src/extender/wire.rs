//! The extender wire format (k8s.io/kube-scheduler/extender/v1): PascalCase keys (the Go
//! field names), `null` for unused fields; decoding accepts keys in any case, as upstream does.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::extender::KubeVersion;

/// A request body that is not a valid extender message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {message}: {reason}")]
pub struct WireError {
    /// Which message (`ExtenderArgs`, `ExtenderBindingArgs`, …).
    pub message: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn wire_err(message: &'static str, reason: impl Into<String>) -> WireError {
    WireError {
        message,
        reason: reason.into(),
    }
}

/// The value of `key` in `obj`, matching the key case-insensitively.
pub fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn object<'a>(message: &'static str, v: &'a Value) -> Result<&'a Map<String, Value>, WireError> {
    v.as_object()
        .ok_or_else(|| wire_err(message, "expected a JSON object"))
}

/// `ExtenderArgs`: the pod and either the nodes (`Nodes`) or their names (`NodeNames`).
#[derive(Debug, Clone)]
pub struct ExtenderArgs {
    /// The pod's JSON.
    pub pod: Value,
    /// The items of the `NodeList` (non-cache-capable mode), each node's JSON verbatim: read
    /// only where needed and sent back unchanged in a filter result.
    pub nodes: Option<Vec<Box<RawValue>>>,
    /// The node names (cache-capable mode).
    pub node_names: Option<Vec<String>>,
}

fn node_items(message: &'static str, list: &Value) -> Result<Vec<Box<RawValue>>, WireError> {
    match list.get("items") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                serde_json::value::to_raw_value(item)
                    .map_err(|e| wire_err(message, format!("`Nodes.items`: {e}")))
            })
            .collect(),
        Some(_) => Err(wire_err(message, "`Nodes.items` is not an array")),
    }
}

impl ExtenderArgs {
    /// Decodes `ExtenderArgs`.
    pub fn from_value(v: &Value) -> Result<ExtenderArgs, WireError> {
        const M: &str = "ExtenderArgs";
        let obj = object(M, v)?;
        let pod = field(obj, "Pod")
            .filter(|p| p.is_object())
            .cloned()
            .ok_or_else(|| wire_err(M, "`Pod` is missing or not an object"))?;
        let nodes = match field(obj, "Nodes") {
            None | Some(Value::Null) => None,
            Some(n @ Value::Object(_)) => Some(node_items(M, n)?),
            Some(_) => return Err(wire_err(M, "`Nodes` is not a NodeList object")),
        };
        let node_names = match field(obj, "NodeNames") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|n| {
                        n.as_str().map(str::to_owned).ok_or_else(|| {
                            wire_err(M, format!("`NodeNames` holds a non-string {n}"))
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => return Err(wire_err(M, "`NodeNames` is not an array")),
        };
        if nodes.is_none() && node_names.is_none() {
            return Err(wire_err(M, "neither `Nodes` nor `NodeNames` is given"));
        }
        Ok(ExtenderArgs {
            pod,
            nodes,
            node_names,
        })
    }
}

/// A `NodeList` as it arrives: only its items matter, each kept as raw JSON.
#[derive(Debug, Default, serde::Deserialize)]
struct RawNodeList {
    #[serde(default)]
    items: Option<Vec<Box<RawValue>>>,
}

/// `ExtenderArgs` decoded straight from bytes: no JSON tree for the node list (a 50-node
/// list from kube-scheduler is about 200 KB), the names moved, not copied.
#[derive(Debug, Default)]
struct RawArgs {
    pod: Option<Value>,
    nodes: Option<RawNodeList>,
    node_names: Option<Vec<String>>,
}

impl<'de> serde::Deserialize<'de> for RawArgs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawArgs, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawArgs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an ExtenderArgs object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawArgs, A::Error> {
                let mut raw = RawArgs::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key.eq_ignore_ascii_case("Pod") {
                        raw.pod = Some(map.next_value()?);
                    } else if key.eq_ignore_ascii_case("Nodes") {
                        raw.nodes = map.next_value()?;
                    } else if key.eq_ignore_ascii_case("NodeNames") {
                        raw.node_names = map.next_value()?;
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(raw)
            }
        }
        d.deserialize_map(Visit)
    }
}

impl ExtenderArgs {
    /// Decodes `ExtenderArgs` from a request body (keys in any case).
    pub fn from_slice(body: &[u8]) -> Result<ExtenderArgs, WireError> {
        const M: &str = "ExtenderArgs";
        let raw: RawArgs = serde_json::from_slice(body)
            .map_err(|e| wire_err(M, format!("malformed JSON body: {e}")))?;
        let pod = raw
            .pod
            .filter(Value::is_object)
            .ok_or_else(|| wire_err(M, "`Pod` is missing or not an object"))?;
        let nodes = raw.nodes.map(|list| list.items.unwrap_or_default());
        if nodes.is_none() && raw.node_names.is_none() {
            return Err(wire_err(M, "neither `Nodes` nor `NodeNames` is given"));
        }
        Ok(ExtenderArgs {
            pod,
            nodes,
            node_names: raw.node_names,
        })
    }
}

/// Serializes node items as the `NodeList` kube-scheduler decodes (`{"metadata":{},"items":[…]}`).
fn node_list<S: serde::Serializer>(
    nodes: &Option<Vec<Box<RawValue>>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    match nodes {
        None => s.serialize_none(),
        Some(items) => {
            let mut map = s.serialize_map(Some(2))?;
            map.serialize_entry("metadata", &Map::new())?;
            map.serialize_entry("items", items)?;
            map.end()
        }
    }
}

/// `ExtenderFilterResult`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderFilterResult {
    /// The feasible nodes (`Nodes` mode), each as it came in, sent as a `NodeList`; else
    /// `null`.
    #[serde(serialize_with = "node_list")]
    pub nodes: Option<Vec<Box<RawValue>>>,
    /// The feasible node names (`NodeNames` mode, maybe empty), else `null`.
    pub node_names: Option<Vec<String>>,
    /// Infeasible nodes where preemption might help, with reasons.
    pub failed_nodes: BTreeMap<String, String>,
    /// Infeasible nodes where preemption cannot help, with reasons.
    pub failed_and_unresolvable_nodes: BTreeMap<String, String>,
    /// A non-empty error fails the whole call.
    pub error: String,
}

impl ExtenderFilterResult {
    /// Records why node `name` was filtered out, in the fields a kube-scheduler at `caller`
    /// reads. `unresolvable` is true when preemption cannot help (a taint, a cordon, a node
    /// that cannot be read): such a reason goes to `FailedAndUnresolvableNodes` for callers
    /// from 1.21, which decode it, and to `FailedNodes` for 1.20 and earlier, which do not
    /// know the field and would drop the reason from their FailedScheduling event. With the
    /// caller's version unknown it goes to both: 1.21+ lets `FailedAndUnresolvableNodes`
    /// take precedence for the same node, and older versions read `FailedNodes`, so every
    /// version sees the reason and none loses the unresolvable classification it can read.
    pub fn record_failure(
        &mut self,
        name: String,
        reason: String,
        unresolvable: bool,
        caller: Option<KubeVersion>,
    ) {
        if !unresolvable {
            self.failed_nodes.insert(name, reason);
            return;
        }
        match caller {
            Some(v) if v.reads_unresolvable_nodes() => {
                self.failed_and_unresolvable_nodes.insert(name, reason);
            }
            Some(_) => {
                self.failed_nodes.insert(name, reason);
            }
            None => {
                self.failed_nodes.insert(name.clone(), reason.clone());
                self.failed_and_unresolvable_nodes.insert(name, reason);
            }
        }
    }
}

/// One `HostPriority` of a prioritize response (a bare array of these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostPriority {
    /// The node.
    pub host: String,
    /// 0..=10.
    pub score: i64,
}

/// `ExtenderBindingArgs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtenderBindingArgs {
    /// The pod's name.
    pub pod_name: String,
    /// Its namespace.
    pub pod_namespace: String,
    /// Its UID.
    pub pod_uid: String,
    /// The node.
    pub node: String,
}

impl ExtenderBindingArgs {
    /// Decodes `ExtenderBindingArgs`.
    pub fn from_value(v: &Value) -> Result<ExtenderBindingArgs, WireError> {
        const M: &str = "ExtenderBindingArgs";
        let obj = object(M, v)?;
        let get = |k: &str| -> Result<String, WireError> {
            field(obj, k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| wire_err(M, format!("`{k}` is missing or not a string")))
        };
        let args = ExtenderBindingArgs {
            pod_name: get("PodName")?,
            pod_namespace: get("PodNamespace")?,
            pod_uid: get("PodUID")?,
            node: get("Node")?,
        };
        if args.node.is_empty() {
            return Err(wire_err(M, "`Node` is empty"));
        }
        Ok(args)
    }
}

/// `ExtenderBindingResult`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderBindingResult {
    /// Empty on success.
    pub error: String,
}

/// `MetaPod`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetaPod {
    /// The pod's UID.
    #[serde(rename = "UID")]
    pub uid: String,
}

/// `MetaVictims`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetaVictims {
    /// Pods to evict.
    pub pods: Vec<MetaPod>,
    /// PodDisruptionBudget violations.
    #[serde(rename = "NumPDBViolations")]
    pub num_pdb_violations: i64,
}

/// `ExtenderPreemptionArgs`, with `Victims` reduced to UIDs.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtenderPreemptionArgs {
    /// The preemptor's JSON.
    pub pod: Value,
    /// Candidate nodes and their victims.
    pub victims: BTreeMap<String, MetaVictims>,
}

impl ExtenderPreemptionArgs {
    /// Decodes `ExtenderPreemptionArgs` (`NodeNameToMetaVictims` or `NodeNameToVictims`).
    pub fn from_value(v: &Value) -> Result<ExtenderPreemptionArgs, WireError> {
        const M: &str = "ExtenderPreemptionArgs";
        let obj = object(M, v)?;
        let pod = field(obj, "Pod")
            .filter(|p| p.is_object())
            .cloned()
            .ok_or_else(|| wire_err(M, "`Pod` is missing or not an object"))?;
        let mut victims = BTreeMap::new();
        let none = Map::new();
        let (map, full) = match (
            field(obj, "NodeNameToMetaVictims"),
            field(obj, "NodeNameToVictims"),
        ) {
            (Some(Value::Object(m)), _) => (m, false),
            (_, Some(Value::Object(m))) => (m, true),
            // Both maps nil (Go's `null`): no candidate nodes.
            (None | Some(Value::Null), None | Some(Value::Null)) => (&none, false),
            _ => {
                return Err(wire_err(
                    M,
                    "`NodeNameToMetaVictims` or `NodeNameToVictims` is neither an object nor null",
                ));
            }
        };
        for (node, entry) in map {
            let entry = object(M, entry)?;
            let pods = match field(entry, "Pods") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|p| {
                        let uid = if full {
                            p.get("metadata").and_then(|m| m.get("uid"))
                        } else {
                            p.as_object().and_then(|o| field(o, "UID"))
                        };
                        uid.and_then(Value::as_str)
                            .map(|u| MetaPod { uid: u.to_owned() })
                            .ok_or_else(|| wire_err(M, format!("a victim on `{node}` has no UID")))
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(wire_err(M, format!("`Pods` of `{node}` is not an array"))),
            };
            let num_pdb_violations = field(entry, "NumPDBViolations")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            victims.insert(
                node.clone(),
                MetaVictims {
                    pods,
                    num_pdb_violations,
                },
            );
        }
        Ok(ExtenderPreemptionArgs { pod, victims })
    }
}

/// `ExtenderPreemptionResult`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderPreemptionResult {
    /// Nodes (a subset of the input) where preemption lets the pod fit, with their victims.
    pub node_name_to_meta_victims: BTreeMap<String, MetaVictims>,
}

/// Maps a weighted total (0..=`max_total`) to an extender priority (0..=10).
pub fn to_extender_priority(total: i64, max_total: i64) -> i64 {
    if max_total <= 0 {
        return 0;
    }
    ((total.clamp(0, max_total) * 10 + max_total / 2) / max_total).clamp(0, 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn keys_decode_case_insensitively() {
        let a = ExtenderArgs::from_value(&json!({"pod": {"metadata": {}}, "nodenames": ["a"]}))
            .unwrap();
        assert_eq!(a.node_names, Some(vec!["a".to_owned()]));
        let b = ExtenderBindingArgs::from_value(
            &json!({"podName": "p", "PODNAMESPACE": "ns", "PodUid": "u", "node": "n"}),
        )
        .unwrap();
        assert_eq!(b.pod_uid, "u");
        assert!(
            ExtenderArgs::from_value(&json!({"Pod": {}}))
                .unwrap_err()
                .to_string()
                .contains("neither")
        );
        assert!(ExtenderArgs::from_value(&json!([1])).is_err());
    }

    proptest! {
        #[test]
        fn priority_mapping_in_range(total in -10i64..2000, max in 0i64..2000) {
            let p = to_extender_priority(total, max);
            prop_assert!((0..=10).contains(&p));
        }
    }

    #[test]
    fn failures_go_where_the_callers_version_reads_them() {
        let fill = |caller| {
            let mut r = ExtenderFilterResult::default();
            r.record_failure("a".into(), "Insufficient cpu".into(), false, caller);
            r.record_failure("b".into(), "tainted".into(), true, caller);
            (r.failed_nodes, r.failed_and_unresolvable_nodes)
        };
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let (failed, unresolvable) = fill(Some(KubeVersion::new(1, 20)));
        assert_eq!(failed, map(&[("a", "Insufficient cpu"), ("b", "tainted")]));
        assert!(unresolvable.is_empty());
        let (failed, unresolvable) = fill(Some(KubeVersion::new(1, 21)));
        assert_eq!(failed, map(&[("a", "Insufficient cpu")]));
        assert_eq!(unresolvable, map(&[("b", "tainted")]));
        let (failed, unresolvable) = fill(None);
        assert_eq!(failed, map(&[("a", "Insufficient cpu"), ("b", "tainted")]));
        assert_eq!(unresolvable, map(&[("b", "tainted")]));
    }

    #[test]
    fn nodes_go_back_verbatim_as_a_node_list() {
        let body = br#"{"Pod": {"metadata": {"name": "p"}}, "Nodes": {"apiVersion": "v1", "items": [{"metadata": {"name": "n1"}, "z": 1, "a": 2}]}, "NodeNames": null}"#;
        let args = ExtenderArgs::from_slice(body).unwrap();
        let result = ExtenderFilterResult {
            nodes: args.nodes,
            ..ExtenderFilterResult::default()
        };
        let text = serde_json::to_string(&result).unwrap();
        assert!(
            text.starts_with(
                r#"{"Nodes":{"metadata":{},"items":[{"metadata": {"name": "n1"}, "z": 1, "a": 2}]},"NodeNames":null"#
            ),
            "{text}"
        );
    }

    #[test]
    fn priority_mapping_endpoints() {
        assert_eq!(to_extender_priority(1600, 1600), 10);
        assert_eq!(to_extender_priority(0, 1600), 0);
        assert_eq!(to_extender_priority(800, 1600), 5);
    }
}
