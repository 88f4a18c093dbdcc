//! The extender against request bodies shaped exactly like kube-scheduler v1.20.2's:
//! `ExtenderArgs` with full `Nodes` (a `NodeList` of informer objects, managedFields and all)
//! and pods as the API server stores them, answered in the fields 1.20 reads.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use rorqual_scheduler::Sym;
use rorqual_scheduler::extender::{ApiserverConfig, ExtenderServer, KubeVersion};
use serde_json::{Value, json};
use tower::ServiceExt;

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/v1_20/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// A Ready node as kube-scheduler 1.20 sends it (4 cpu, 32 GiB, 110 pods).
fn node(name: &str) -> Value {
    let mut n = fixture("node.json");
    n["metadata"]["name"] = json!(name);
    n["metadata"]["labels"]["kubernetes.io/hostname"] = json!(name);
    n
}

/// A Deployment's pending pod (100m, 500Mi) with the tolerations admission adds.
fn pod() -> Value {
    fixture("pod.json")
}

fn with_tolerations(mut pod: Value, tolerations: Value) -> Value {
    pod["spec"]["tolerations"] = tolerations;
    pod
}

fn set_ready(node: &mut Value, status: &str) {
    for c in node["status"]["conditions"].as_array_mut().unwrap() {
        if c["type"] == "Ready" {
            c["status"] = json!(status);
            c["reason"] = json!("NodeStatusUnknown");
        }
    }
}

/// `ExtenderArgs` in Nodes mode, as Go marshals it (`NodeList` without TypeMeta).
fn nodes_args(pod: &Value, nodes: &[Value]) -> String {
    json!({"Pod": pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": null}).to_string()
}

async fn post(server: &ExtenderServer, path: &str, body: String) -> Value {
    let response = server
        .router()
        .oneshot(
            Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn nodes_mode() -> ExtenderServer {
    ExtenderServer::with_default_plugins().node_cache_capable(false)
}

/// The names of the feasible nodes in a Nodes-mode filter result.
fn feasible(result: &Value) -> Vec<&str> {
    assert_eq!(result["Error"], "", "{result}");
    result["Nodes"]["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no Nodes.items: {result}"))
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn allocatable_pods_1k_is_a_valid_quantity() {
    let server = nodes_mode();
    let mut a = node("node-a");
    a["status"]["allocatable"]["pods"] = json!("1k");
    let result = post(&server, "/filter", nodes_args(&pod(), &[a, node("node-b")])).await;
    assert_eq!(feasible(&result), ["node-a", "node-b"]);
    let max_pods = server
        .scheduler()
        .with_snapshot(|s| s.nodes().iter().map(|n| n.max_pods).collect::<Vec<_>>());
    assert_eq!(max_pods, [1000, 110]);
}

#[tokio::test]
async fn every_quantity_form_is_read() {
    let server = nodes_mode();
    let mut a = node("node-a");
    a["status"]["allocatable"] = json!({"cpu": "4000m", "memory": "32G", "pods": "1.1e2"});
    let mut b = node("node-b");
    b["status"]["allocatable"] = json!({"cpu": "0.004k", "memory": "33554432Ki", "pods": "110"});
    let result = post(&server, "/filter", nodes_args(&pod(), &[a, b])).await;
    assert_eq!(feasible(&result), ["node-a", "node-b"]);
    let alloc = server.scheduler().with_snapshot(|s| {
        s.nodes()
            .iter()
            .map(|n| {
                (
                    n.allocatable.cpu.millis(),
                    n.allocatable.memory.bytes(),
                    n.max_pods,
                )
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(alloc, [(4000, 32_000_000_000, 110), (4000, 32 << 30, 110)]);
}

#[tokio::test]
async fn a_truly_invalid_quantity_fails_only_its_node_naming_node_field_and_value() {
    let server = nodes_mode();
    let mut c = node("node-c");
    c["status"]["allocatable"]["memory"] = json!("32Gx");
    let result = post(
        &server,
        "/filter",
        nodes_args(&pod(), &[node("node-a"), c, node("node-b")]),
    )
    .await;
    assert_eq!(feasible(&result), ["node-a", "node-b"]);
    let reason = result["FailedNodes"]["node-c"].as_str().unwrap_or_default();
    for part in ["node-c", "status.allocatable.memory", "`32Gx`"] {
        assert!(reason.contains(part), "{part} missing from {result}");
    }
    // A second pod is not affected either.
    let result = post(&server, "/filter", nodes_args(&pod(), &[node("node-a")])).await;
    assert_eq!(feasible(&result), ["node-a"]);
}

#[tokio::test]
async fn unresolvable_reasons_reach_a_caller_that_reads_failed_nodes_only() {
    // kube-scheduler 1.20 decodes `FailedNodes` and ignores `FailedAndUnresolvableNodes`
    // (1.21+). Without a configured target version the reason must be in `FailedNodes`.
    let server = nodes_mode();
    let mut tainted = node("node-t");
    tainted["spec"]["taints"] =
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]);
    let result = post(
        &server,
        "/filter",
        nodes_args(&pod(), &[node("node-a"), tainted]),
    )
    .await;
    assert_eq!(feasible(&result), ["node-a"]);
    assert_eq!(
        result["FailedNodes"]["node-t"], "node(s) had untolerated taint {dedicated: db}",
        "{result}"
    );
}

#[tokio::test]
async fn a_cordoned_node_admits_pods_tolerating_unschedulable() {
    let server = nodes_mode();
    // Cordoned, before the node lifecycle controller adds its taint: NodeUnschedulable alone.
    let mut cordoned = node("node-c");
    cordoned["spec"]["unschedulable"] = json!(true);
    let admitted = [
        json!([{"operator": "Exists"}]),
        json!([{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]),
        json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
        json!([{"key": "node.kubernetes.io/unschedulable", "operator": "Equal", "value": "", "effect": "NoSchedule"}]),
    ];
    for tolerations in admitted {
        let p = with_tolerations(pod(), tolerations.clone());
        let result = post(&server, "/filter", nodes_args(&p, &[cordoned.clone()])).await;
        assert_eq!(feasible(&result), ["node-c"], "{tolerations}: {result}");
    }
    let refused = [
        json!([]),
        json!([{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoExecute"}]),
        json!([{"key": "node.kubernetes.io/unschedulable", "operator": "Equal", "value": "yes"}]),
    ];
    for tolerations in refused {
        let p = with_tolerations(pod(), tolerations.clone());
        let result = post(&server, "/filter", nodes_args(&p, &[cordoned.clone()])).await;
        assert_eq!(feasible(&result), Vec::<&str>::new(), "{tolerations}");
        assert_eq!(
            result["FailedNodes"]["node-c"], "node(s) were unschedulable",
            "{tolerations}: {result}"
        );
    }
}

#[tokio::test]
async fn readiness_is_read_through_taints_only_as_upstream() {
    let server = nodes_mode();
    // NotReady as the node lifecycle controller leaves it: condition and taints.
    let mut not_ready = node("node-nr");
    set_ready(&mut not_ready, "Unknown");
    not_ready["spec"]["taints"] = json!([
        {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule", "timeAdded": null},
        {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": "2026-12-07T19:30:00Z"}
    ]);
    // A Ready=False condition without taints (taint-based filtering only, as kube-scheduler).
    let mut condition_only = node("node-cond");
    set_ready(&mut condition_only, "False");
    let nodes = [node("node-a"), not_ready, condition_only];

    let daemon = with_tolerations(pod(), json!([{"operator": "Exists"}]));
    let result = post(&server, "/filter", nodes_args(&daemon, &nodes)).await;
    assert_eq!(feasible(&result), ["node-a", "node-nr", "node-cond"]);

    let result = post(&server, "/filter", nodes_args(&pod(), &nodes)).await;
    assert_eq!(feasible(&result), ["node-a", "node-cond"]);
    assert_eq!(
        result["FailedNodes"]["node-nr"],
        "node(s) had untolerated taint {node.kubernetes.io/unreachable: }",
        "{result}"
    );
}

/// A request the fake API server received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Value,
}

/// A fake API server on loopback for the Binding request's shape only: it records every
/// request and answers 201 with the binding, or 409 with a `Status` for pods named `*-taken`.
async fn fake_apiserver() -> (std::net::SocketAddr, Arc<Mutex<Vec<Received>>>) {
    use axum::http::{HeaderMap, Method, Uri, header};
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: axum::body::Bytes| {
            let log = log.clone();
            async move {
                let text = |h| {
                    headers
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                log.lock().push(Received {
                    method: method.to_string(),
                    path: uri.path().to_owned(),
                    authorization: text(header::AUTHORIZATION),
                    content_type: text(header::CONTENT_TYPE),
                    body: body.clone(),
                });
                if uri.path().contains("-taken/") {
                    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "reason": "Conflict", "code": 409,
                        "message": "Operation cannot be fulfilled on pods/binding \"web-taken\": pod web-taken is already assigned to node \"node-a\""});
                    (StatusCode::CONFLICT, axum::Json(status))
                } else {
                    (StatusCode::CREATED, axum::Json(body))
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

fn binding_args(pod: &Value, node: &str) -> String {
    json!({
        "PodName": pod["metadata"]["name"],
        "PodNamespace": pod["metadata"]["namespace"],
        "PodUID": pod["metadata"]["uid"],
        "Node": node,
    })
    .to_string()
}

fn pods_on(server: &ExtenderServer, node: &str) -> usize {
    server
        .scheduler()
        .with_snapshot(|s| s.node(Sym::new(node)).map_or(0, |n| n.pods.len()))
}

#[tokio::test]
async fn bind_posts_a_v1_binding_to_the_apiserver() {
    let (addr, received) = fake_apiserver().await;
    let binder = ApiserverConfig::new(format!("http://{addr}/"))
        .bearer_token("scheduler-token")
        .build()
        .unwrap();
    let server = nodes_mode()
        .kube_scheduler_version("v1.20.2".parse().unwrap())
        .binder(Arc::new(binder));
    assert_eq!(
        server.stanza("http://127.0.0.1:8888").to_value().unwrap()["bindVerb"],
        "bind"
    );
    let p = pod();
    let result = post(
        &server,
        "/filter",
        nodes_args(&p, &[node("node-a"), node("node-b")]),
    )
    .await;
    assert_eq!(feasible(&result), ["node-a", "node-b"]);

    let answer = post(&server, "/bind", binding_args(&p, "node-b")).await;
    assert_eq!(answer, json!({"Error": ""}));
    let got = received.lock().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].method, "POST");
    assert_eq!(
        got[0].path,
        "/api/v1/namespaces/default/pods/web-5d8f7c9b4-x2x7q/binding"
    );
    assert_eq!(
        got[0].authorization.as_deref(),
        Some("Bearer scheduler-token")
    );
    assert_eq!(got[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(
        got[0].body,
        json!({"apiVersion": "v1", "kind": "Binding",
               "metadata": {"name": "web-5d8f7c9b4-x2x7q", "namespace": "default",
                            "uid": "9f0c8d1e-7a6b-4c5d-8e9f-0a1b2c3d4e5f"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "node-b"}})
    );
    assert_eq!(
        pods_on(&server, "node-b"),
        1,
        "the bound pod counts in the cache"
    );
}

#[tokio::test]
async fn an_apiserver_refusal_comes_back_naming_pod_node_and_status_and_unreserves() {
    let (addr, received) = fake_apiserver().await;
    let binder = ApiserverConfig::new(format!("http://{addr}"))
        .build()
        .unwrap();
    let server = nodes_mode().binder(Arc::new(binder));
    let mut p = pod();
    p["metadata"]["name"] = json!("web-taken");
    post(&server, "/filter", nodes_args(&p, &[node("node-b")])).await;
    let answer = post(&server, "/bind", binding_args(&p, "node-b")).await;
    let error = answer["Error"].as_str().unwrap();
    for part in [
        "default/web-taken",
        "node-b",
        "HTTP 409",
        "already assigned to node \"node-a\"",
        "(Conflict)",
    ] {
        assert!(error.contains(part), "{part} missing from {error}");
    }
    assert_eq!(received.lock().len(), 1);
    assert_eq!(
        pods_on(&server, "node-b"),
        0,
        "the failed binding was unreserved"
    );
}

#[tokio::test]
async fn an_unreachable_apiserver_is_named_in_the_bind_error() {
    // A port nothing listens on: bind one, then drop it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let binder = ApiserverConfig::new(format!("http://{addr}"))
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap();
    let server = nodes_mode().binder(Arc::new(binder));
    let p = pod();
    post(&server, "/filter", nodes_args(&p, &[node("node-b")])).await;
    let answer = post(&server, "/bind", binding_args(&p, "node-b")).await;
    let error = answer["Error"].as_str().unwrap();
    assert!(
        error.contains(&format!("cannot reach apiserver http://{addr}"))
            && error.contains("node-b")
            && error.contains("default/web-5d8f7c9b4-x2x7q"),
        "{error}"
    );
    assert_eq!(pods_on(&server, "node-b"), 0);
}

#[tokio::test]
async fn without_a_binder_the_stanza_leaves_binding_to_kube_scheduler_and_bind_says_why() {
    let server = nodes_mode();
    let stanza = server.stanza("http://127.0.0.1:8888").to_value().unwrap();
    assert!(stanza.get("bindVerb").is_none(), "{stanza}");
    let p = pod();
    post(&server, "/filter", nodes_args(&p, &[node("node-b")])).await;
    let answer = post(&server, "/bind", binding_args(&p, "node-b")).await;
    assert!(
        answer["Error"]
            .as_str()
            .unwrap()
            .contains("no binder to create the Binding"),
        "{answer}"
    );
    assert_eq!(pods_on(&server, "node-b"), 0);
}

#[test]
fn apiserver_config_errors_name_what_is_wrong() {
    let err = ApiserverConfig::new("127.0.0.1:6443").build().unwrap_err();
    assert!(err.to_string().contains("`127.0.0.1:6443`"), "{err}");
    let err = ApiserverConfig::new("https://127.0.0.1:6443")
        .ca_pem(b"not a certificate".to_vec())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("CA bundle"), "{err}");
}

#[tokio::test]
async fn a_1_20_caller_gets_unresolvable_reasons_in_failed_nodes_only() {
    let server = nodes_mode().kube_scheduler_version(KubeVersion::new(1, 20));
    let mut tainted = node("node-t");
    tainted["spec"]["taints"] =
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]);
    let mut bad = node("node-q");
    bad["status"]["allocatable"]["pods"] = json!("many");
    let result = post(&server, "/filter", nodes_args(&pod(), &[tainted, bad])).await;
    assert_eq!(result["FailedAndUnresolvableNodes"], json!({}), "{result}");
    assert_eq!(
        result["FailedNodes"]["node-t"],
        "node(s) had untolerated taint {dedicated: db}"
    );
    assert!(
        result["FailedNodes"]["node-q"]
            .as_str()
            .unwrap()
            .contains("status.allocatable.pods: invalid quantity `many`"),
        "{result}"
    );
    // A 1.21+ caller gets the split answer.
    let server = nodes_mode().kube_scheduler_version(KubeVersion::new(1, 21));
    let mut tainted = node("node-t");
    tainted["spec"]["taints"] =
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]);
    let result = post(&server, "/filter", nodes_args(&pod(), &[tainted])).await;
    assert_eq!(result["FailedNodes"], json!({}), "{result}");
    assert_eq!(
        result["FailedAndUnresolvableNodes"]["node-t"],
        "node(s) had untolerated taint {dedicated: db}"
    );
}
