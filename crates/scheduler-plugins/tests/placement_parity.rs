//! The LocalEngine's placements and the scheduler's agree on what a pod is: an `AppSpec` using
//! every scheduling constraint, turned into core's `PlacementRequest` and then into the
//! scheduler's pod (`pod_from_request`), equals the pod read from the equivalent Kubernetes
//! Pod JSON (`pod_from_json`), field by field.

#![allow(clippy::unwrap_used)]

use rorqual_core::model::{AppSpec, Resources, ValidationTarget};
use rorqual_core::placement::PlacementRequest;
use rorqual_scheduler::kube::pod_from_json;
use rorqual_scheduler::scheduler::placement::pod_from_request;
use serde_json::{Value, json};

/// `affinity` and `topologySpreadConstraints` exactly as in a pod spec: the AppSpec and the
/// Pod below paste the same blocks.
fn affinity() -> Value {
    json!({
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [
                    {"key": "disk", "operator": "In", "values": ["ssd", "nvme"]},
                    {"key": "cores", "operator": "Gt", "values": ["4"]}]},
                {"matchExpressions": [{"key": "gpu", "operator": "Exists"}],
                 "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n9"]}]}
            ]},
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 30, "preference": {"matchExpressions": [
                    {"key": "spot", "operator": "DoesNotExist"}]}},
                {"weight": 70, "preference": {"matchExpressions": [
                    {"key": "memory-gb", "operator": "Lt", "values": ["512"]}]}}
            ]
        },
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "topology.kubernetes.io/zone"}],
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 40, "podAffinityTerm": {
                    "labelSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["db", "cache"]}]},
                    "namespaces": ["data", "games"], "topologyKey": "kubernetes.io/hostname"}}]
        },
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "game"}}, "topologyKey": "kubernetes.io/hostname"}],
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {
                    "labelSelector": {"matchLabels": {"app": "game"},
                        "matchExpressions": [{"key": "canary", "operator": "NotIn", "values": ["yes"]}]},
                    "topologyKey": "topology.kubernetes.io/zone"}}]
        }
    })
}

fn spread() -> Value {
    json!([
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
         "labelSelector": {"matchLabels": {"app": "game"}}},
        {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}}
    ])
}

fn spec() -> AppSpec {
    let spec = json!({
        "name": "game",
        "namespace": "games",
        "kind": "stateful",
        "replicas": 5,
        "labels": {"app": "game", "tier": "server"},
        "containers": [
            {"name": "server", "command": ["/bin/game"], "resources": {"cpu": "1500m", "memory": "2Gi"}},
            {"name": "sidecar", "command": ["/bin/agent"], "resources": {"cpu": "100m", "memory": "64Mi"}}
        ],
        "nodeSelector": {"pool": "games"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "games", "effect": "NoSchedule"},
                        {"key": "maintenance", "operator": "Exists"}],
        "priority": 1000,
        "affinity": affinity(),
        "topologySpreadConstraints": spread(),
        "underlay": {"pool": "games-underlay", "fixedIp": true},
        "gang": {"name": "match-7", "minMember": 3, "timeoutSeconds": 90}
    });
    let spec = AppSpec::from_yaml(&spec.to_string()).unwrap();
    spec.validate(ValidationTarget::LOCAL).unwrap();
    spec
}

/// The same instance as a Kubernetes Pod, with rorqual's annotations for what Kubernetes has
/// no field for (identity, previous node, underlay pool, gang).
fn pod_json() -> Value {
    json!({
        "metadata": {
            "name": "game-2", "namespace": "games", "uid": "4f1c-k8s-uid",
            "labels": {"app": "game", "tier": "server"},
            "annotations": {
                "rorqual.io/identity": "games/game-2",
                "rorqual.io/previous-node": "node-3",
                "rorqual.io/underlay-pool": "games-underlay",
                "rorqual.io/gang": "match-7",
                "rorqual.io/gang-min-member": "3",
                "rorqual.io/gang-timeout-seconds": "90"
            }
        },
        "spec": {
            "priority": 1000,
            "nodeSelector": {"pool": "games"},
            "containers": [
                {"name": "server", "resources": {"requests": {"cpu": "1500m", "memory": "2Gi"}}},
                {"name": "sidecar", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}
            ],
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "games", "effect": "NoSchedule"},
                            {"key": "maintenance", "operator": "Exists"}],
            "affinity": affinity(),
            "topologySpreadConstraints": spread()
        }
    })
}

#[test]
fn a_placement_request_becomes_the_pod_kubernetes_json_describes() {
    let spec = spec();
    let request = PlacementRequest::from_spec(
        &spec,
        "game-2",
        spec.revision(),
        Some(2),
        Some("node-3".to_owned()),
    );
    let mut from_request = pod_from_request(&request);
    let from_json = pod_from_json(&pod_json()).unwrap();

    assert_eq!(&*from_request.uid, "game-2");
    assert_eq!(&*from_request.name, "game-2");
    assert_eq!(from_request.namespace, from_json.namespace);
    assert_eq!(from_request.priority, from_json.priority);
    assert_eq!(from_request.requests, from_json.requests);
    assert_eq!(
        from_request.requests,
        Resources::new(1600, (2 << 30) + (64 << 20))
    );
    assert_eq!(from_request.labels, from_json.labels);
    assert_eq!(from_request.node_name, from_json.node_name);
    assert_eq!(from_request.node_selector, from_json.node_selector);
    assert_eq!(
        from_request.required_node_affinity,
        from_json.required_node_affinity
    );
    assert_eq!(
        from_request
            .required_node_affinity
            .as_ref()
            .unwrap()
            .0
            .len(),
        2
    );
    assert_eq!(
        from_request.preferred_node_affinity,
        from_json.preferred_node_affinity
    );
    assert_eq!(from_request.tolerations, from_json.tolerations);
    assert_eq!(from_request.host_ports, from_json.host_ports);
    assert_eq!(from_request.spread, from_json.spread);
    assert_eq!(from_request.spread.len(), 2);
    assert_eq!(from_request.affinity, from_json.affinity);
    assert_eq!(from_request.anti_affinity, from_json.anti_affinity);
    assert_eq!(from_request.identity, from_json.identity);
    assert_eq!(from_request.underlay, from_json.underlay);
    assert_eq!(from_request.gang, from_json.gang);
    assert!(from_request.gang.is_some() && from_request.underlay.is_some());

    // Nothing else differs (this also covers fields added later).
    from_request.uid = from_json.uid.clone();
    from_request.name = from_json.name.clone();
    assert_eq!(from_request, from_json);
}

#[test]
fn the_fixed_ip_claim_key_is_the_stateful_identity() {
    let spec = spec();
    let request = PlacementRequest::from_spec(&spec, "game-2", spec.revision(), Some(2), None);
    let claim = request.underlay.as_ref().unwrap().claim_key.clone();
    assert_eq!(claim.as_deref(), Some("games/game-2"));
    let pod = pod_from_request(&request);
    assert_eq!(pod.identity.map(|i| i.key.to_string()), claim);
}
