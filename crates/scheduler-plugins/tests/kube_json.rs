//! Kubernetes JSON → snapshots against fixed fixtures: optional fields sent as `null` (as
//! Kubernetes clients do for unset fields) decode like absent ones, and decoding errors name
//! the object and the field.

#![allow(clippy::unwrap_used)]

use rorqual_core::model::Resources;
use rorqual_scheduler::Sym;
use rorqual_scheduler::extender::wire::ExtenderPreemptionArgs;
use rorqual_scheduler::kube::{node_from_json, pod_from_json};
use serde_json::{Value, json};

fn json(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_pod_with_null_optional_fields_decodes_like_one_without_them() {
    let pod = pod_from_json(&json("pod_with_nulls.json")).unwrap();
    assert_eq!(pod.key(), "games/web-7");
    assert_eq!(&*pod.uid, "u-web-7");
    // Containers with null resources and null requests count as requesting nothing.
    assert_eq!(pod.requests, Resources::new(500, 256 << 20));
    assert_eq!(pod.priority, 0);
    assert!(pod.node_name.is_none());
    assert!(pod.host_ports.is_empty(), "a null hostPort is no host port");
    assert_eq!(pod.tolerations.len(), 2);
    assert_eq!(pod.tolerations[0].effect, None);
    assert_eq!(pod.tolerations[1].key, "");
    assert!(pod.required_node_affinity.is_some());
    assert!(pod.preferred_node_affinity.is_empty());
    assert!(pod.affinity.is_empty());
    assert_eq!(pod.anti_affinity.required.len(), 1);
    assert!(pod.anti_affinity.required[0].namespaces.is_empty());
    assert!(pod.spread.is_empty());
    assert!(pod.identity.is_none() && pod.underlay.is_none() && pod.gang.is_none());
}

#[test]
fn nodes_with_null_optional_fields_decode_like_ones_without_them() {
    let node = node_from_json(&json("node_with_nulls.json")).unwrap();
    assert_eq!(node.name, Sym::new("n-null"));
    assert!(node.taints.is_empty());
    assert!(!node.unschedulable && node.ready);
    assert_eq!(node.allocatable, Resources::new(4000, 8 << 30));
    assert_eq!(node.max_pods, 110);
    assert_eq!(node.labels.get(Sym::new("zone")), Some(Sym::new("z1")));

    // `spec: null`, `labels: null`, `allocatable: null` (capacity is used instead).
    let bare = node_from_json(&json("node_spec_null.json")).unwrap();
    assert_eq!(bare.allocatable, Resources::new(2000, 4 << 30));
    assert!(bare.taints.is_empty() && !bare.unschedulable && bare.ready);
}

#[test]
fn decoding_errors_name_the_object_and_the_field() {
    let err = node_from_json(&json!({"metadata": {"name": "n-bad"}, "spec": {"taints": "none"}}))
        .unwrap_err();
    assert_eq!(err.name, "n-bad");
    assert!(
        err.to_string()
            .starts_with("Node `n-bad`: spec.taints: invalid type"),
        "{err}"
    );
    let err = pod_from_json(&json!({"metadata": {"name": "p", "namespace": "games"},
        "spec": {"containers": [{"name": "c", "ports": [{"hostPort": "eighty"}]}]}}))
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("Pod `games/p`: spec.containers[0].ports[0].hostPort: invalid type"),
        "{err}"
    );
    // No name at all: still says which object kind and where.
    let err = node_from_json(&json!({"spec": {"unschedulable": "yes"}})).unwrap_err();
    assert!(
        err.to_string().starts_with("Node `?`: spec.unschedulable"),
        "{err}"
    );
}

#[test]
fn selectors_follow_the_same_rules_as_app_specs() {
    // Gt/Lt belong to node selectors only, as in Kubernetes (and in AppSpec validation).
    let pod = |affinity: serde_json::Value| {
        pod_from_json(&json!({"metadata": {"name": "p", "namespace": "games"},
            "spec": {"containers": [{"name": "c"}], "affinity": affinity}}))
    };
    let err = pod(
        json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "zone", "labelSelector": {"matchExpressions": [
            {"key": "rank", "operator": "Gt", "values": ["3"]}]}}]}}),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("operator Gt is only allowed in node selectors"),
        "{err}"
    );
    let err = pod(
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "Exists"}]}]}}}),
    )
    .unwrap_err();
    assert!(err.to_string().contains("must be In or NotIn"), "{err}");
    assert!(
        pod(
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "cores", "operator": "Gt", "values": ["3"]}]}]}}})
        )
        .is_ok()
    );
}

#[test]
fn preemption_args_with_both_victim_maps_null_have_no_candidates() {
    let args = ExtenderPreemptionArgs::from_value(&json("preempt_nulls_request.json")).unwrap();
    assert!(args.victims.is_empty());
}
