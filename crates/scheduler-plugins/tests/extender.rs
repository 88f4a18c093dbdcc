//! The extender against fixed wire-format fixtures: through the router without a server
//! (tower's `oneshot`), and once over real loopback TCP.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use rorqual_core::model::Resources;
use rorqual_scheduler::extender::{BindError, Binder, ExtenderServer, KubeVersion, PodBinding};
use rorqual_scheduler::framework::{CycleState, FilterPlugin, Plugin, Status};
use rorqual_scheduler::plugins::{DefaultPlugins, IpCapacity, MemoryIpCapacity, ReserveRequest};
use rorqual_scheduler::{NodeInfo, PodInfo, Scheduler, Sym};
use serde_json::Value;
use tower::ServiceExt;

/// Accepts every binding and keeps it (the API server is out of these tests' scope; see
/// `extender_kube_1_20.rs` for the Binding on the wire).
#[derive(Debug, Default)]
struct AcceptingBinder {
    bound: parking_lot::Mutex<Vec<PodBinding>>,
}

#[async_trait::async_trait]
impl Binder for AcceptingBinder {
    async fn bind(&self, binding: &PodBinding) -> Result<(), BindError> {
        self.bound.lock().push(binding.clone());
        Ok(())
    }
}

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// n1 (pool-a, 1 free address), n2 (pool-b, its only address held by claim games/game-1),
/// n2 also has 2 cpu used, n3 (no pool, 3 cpu used), n4 (pool-a, 3.6 cpu used by `low-1`). Each node: 4 cpu, 8 GiB.
fn cluster() -> (ExtenderServer, Arc<MemoryIpCapacity>) {
    let cap = Arc::new(MemoryIpCapacity::new());
    cap.add_pool("pool-a", ["n1", "n4"], [ip("10.0.0.1")]);
    cap.add_pool("pool-b", ["n2"], [ip("10.1.0.7")]);
    // An earlier pod of identity games/game-1 took the address; its claim keeps it.
    cap.reserve(
        &ReserveRequest::new("pool-b", "game-1-earlier")
            .identity("games/game-1")
            .address(ip("10.1.0.7")),
    )
    .unwrap();
    cap.release("game-1-earlier");
    let profile = DefaultPlugins::new().underlay(cap.clone()).build().unwrap();
    let scheduler = Scheduler::new(profile);
    scheduler.add_nodes(
        ["n1", "n2", "n3", "n4"].map(|n| NodeInfo::new(n, Resources::new(4000, 8 << 30))),
    );
    scheduler
        .add_bound_pod(
            "n4",
            PodInfo::new("low-1", "default", "low-1", Resources::new(3600, 0)),
        )
        .unwrap();
    scheduler
        .add_bound_pod(
            "n3",
            PodInfo::new("mid-1", "default", "mid-1", Resources::new(3000, 0)),
        )
        .unwrap();
    scheduler
        .add_bound_pod(
            "n2",
            PodInfo::new("mid-2", "default", "mid-2", Resources::new(2000, 0)),
        )
        .unwrap();
    // The fixtures are exchanges with a kube-scheduler that reads
    // `FailedAndUnresolvableNodes` (1.21+); `extender_kube_1_20.rs` covers 1.20.
    let server = ExtenderServer::new(scheduler)
        .kube_scheduler_version(KubeVersion::new(1, 25))
        .binder(Arc::new(AcceptingBinder::default()));
    (server, cap)
}

async fn post(server: &ExtenderServer, path: &str, body: impl Into<Body>) -> (StatusCode, String) {
    let response = server
        .router()
        .oneshot(
            Request::post(path)
                .header("content-type", "application/json")
                .body(body.into())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn exchange(server: &ExtenderServer, path: &str, request: &str, response: &str) -> String {
    let (status, body) = post(server, path, fixture(request)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got, json(response), "{path}: {body}");
    body
}

#[tokio::test]
async fn filter_node_names_mode_matches_fixture() {
    let (server, _) = cluster();
    let body = exchange(
        &server,
        "/filter",
        "filter_node_names_request.json",
        "filter_node_names_response.json",
    )
    .await;
    assert!(
        body.contains(r#""Nodes":null"#),
        "unused fields are null: {body}"
    );
}

#[tokio::test]
async fn filter_with_bound_claim_and_lowercase_keys_matches_fixture() {
    let (server, _) = cluster();
    exchange(
        &server,
        "/filter",
        "filter_claim_request.json",
        "filter_claim_response.json",
    )
    .await;
}

#[tokio::test]
async fn filter_nodes_mode_returns_the_node_list_subset() {
    let (server, _) = cluster();
    let body = exchange(
        &server,
        "/filter",
        "filter_nodes_request.json",
        "filter_nodes_response.json",
    )
    .await;
    assert!(body.contains(r#""NodeNames":null"#), "{body}");
}

#[tokio::test]
async fn filter_accepts_null_optional_fields_in_the_pod_and_the_nodes() {
    let (server, _) = cluster();
    exchange(
        &server,
        "/filter",
        "filter_nodes_with_nulls_request.json",
        "filter_nodes_with_nulls_response.json",
    )
    .await;
}

#[tokio::test]
async fn a_node_that_cannot_be_decoded_fails_alone_and_is_named() {
    let (server, _) = cluster();
    let body = fixture("filter_nodes_request.json").replace(
        r#""taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]"#,
        r#""taints": {"key": "dedicated"}"#,
    );
    let (status, body) = post(&server, "/filter", body).await;
    assert_eq!(status, StatusCode::OK);
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got["Error"], "", "{body}");
    assert_eq!(got["Nodes"]["items"][0]["metadata"]["name"], "a", "{body}");
    let reason = got["FailedAndUnresolvableNodes"]["b"].as_str().unwrap();
    assert!(
        reason.starts_with("Node `b`: spec.taints: invalid type"),
        "{body}"
    );
}

#[tokio::test]
async fn preempt_with_null_victim_maps_has_no_candidates() {
    let (server, _) = cluster();
    let (status, body) = post(&server, "/preempt", fixture("preempt_nulls_request.json")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got, serde_json::json!({"NodeNameToMetaVictims": {}}));
}

#[tokio::test]
async fn prioritize_returns_a_bare_array_of_0_to_10() {
    let (server, _) = cluster();
    exchange(
        &server,
        "/prioritize",
        "prioritize_request.json",
        "prioritize_response.json",
    )
    .await;
}

#[tokio::test]
async fn bind_reserves_the_underlay_address_and_records_the_pod() {
    let (server, cap) = cluster();
    exchange(
        &server,
        "/filter",
        "filter_node_names_request.json",
        "filter_node_names_response.json",
    )
    .await;
    exchange(&server, "/bind", "bind_request.json", "bind_response.json").await;
    assert_eq!(cap.free("pool-a"), 0);
    assert_eq!(
        cap.held_by("6c1f5a2e-0000-4000-8000-000000000001"),
        Some(ip("10.0.0.1"))
    );
    let on_n1 = server
        .scheduler()
        .with_snapshot(|s| s.node(Sym::new("n1")).unwrap().pods.len());
    assert_eq!(on_n1, 1);
    // pool-a is now exhausted: n1 is no longer feasible for another underlay pod.
    let other = fixture("filter_node_names_request.json").replace("000000000001", "000000000009");
    let (_, body) = post(&server, "/filter", other).await;
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got["NodeNames"], serde_json::json!([]), "{body}");
    assert_eq!(
        got["FailedNodes"]["n1"],
        "underlay pool `pool-a` has no free address (1 of 1 taken)"
    );
    // Binding where the pod does not fit fails with a message and takes nothing.
    let bad = r#"{"PodName":"x","PodNamespace":"games","PodUID":"6c1f5a2e-0000-4000-8000-000000000009","Node":"n4"}"#;
    let (status, body) = post(&server, "/bind", bad).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("cannot bind pod games/x to node n4"),
        "{body}"
    );
}

#[tokio::test]
async fn preempt_keeps_nodes_where_the_victims_make_room() {
    let (server, _) = cluster();
    exchange(
        &server,
        "/preempt",
        "preempt_request.json",
        "preempt_response.json",
    )
    .await;
}

#[tokio::test]
async fn malformed_json_is_400_and_the_server_keeps_serving() {
    let (server, _) = cluster();
    let (status, body) = post(&server, "/filter", "{\"Pod\": ").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("malformed JSON body"), "{body}");
    let (status, body) = post(&server, "/filter", r#"{"Pod": 3, "NodeNames": []}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("`Pod` is missing or not an object"), "{body}");
    let (status, body) = post(&server, "/bind", r#"{"PodName": "p"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("ExtenderBindingArgs"), "{body}");
    exchange(
        &server,
        "/filter",
        "filter_node_names_request.json",
        "filter_node_names_response.json",
    )
    .await;
}

#[tokio::test]
async fn bad_pod_fields_come_back_as_filter_error() {
    let (server, _) = cluster();
    let body = fixture("filter_node_names_request.json").replace("500m", "lots");
    let (status, body) = post(&server, "/filter", body).await;
    assert_eq!(status, StatusCode::OK);
    let got: Value = serde_json::from_str(&body).unwrap();
    assert!(
        got["Error"]
            .as_str()
            .unwrap()
            .contains("spec.containers[0].resources.requests.cpu"),
        "{body}"
    );
    assert_eq!(got["NodeNames"], serde_json::json!([]));
}

#[tokio::test]
async fn bearer_token_is_required_when_set() {
    let (server, _) = cluster();
    let server = server.bearer_token("s3cret");
    let (status, _) = post(
        &server,
        "/filter",
        fixture("filter_node_names_request.json"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let response = server
        .router()
        .oneshot(
            Request::post("/filter")
                .header("authorization", "Bearer s3cret")
                .body(Body::from(fixture("filter_node_names_request.json")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[derive(Debug)]
struct Exploding;

impl Plugin for Exploding {
    fn name(&self) -> &str {
        "Exploding"
    }
}

impl FilterPlugin for Exploding {
    fn filter(&self, _state: &CycleState, pod: &PodInfo, _node: &NodeInfo) -> Status {
        if pod.labels.get(Sym::new("boom")).is_some() {
            panic!("exploding plugin");
        }
        Status::success()
    }
}

/// Records the threads its filter runs on.
#[derive(Debug, Default)]
struct ThreadRecorder(std::sync::Mutex<Vec<std::thread::ThreadId>>);

impl Plugin for ThreadRecorder {
    fn name(&self) -> &str {
        "ThreadRecorder"
    }
}

impl FilterPlugin for ThreadRecorder {
    fn filter(&self, _state: &CycleState, _pod: &PodInfo, _node: &NodeInfo) -> Status {
        self.0.lock().unwrap().push(std::thread::current().id());
        Status::success()
    }
}

/// A small cluster's filter runs on the request's own thread: handing it to a rayon worker
/// and back cost two thread wake-ups per call, which under a real kube-scheduler on 2 loaded
/// cores made the filter verb take 0.75–1.6 ms instead of about 0.1 ms.
#[test]
fn a_small_clusters_filter_runs_on_the_calling_thread() {
    let recorder = Arc::new(ThreadRecorder::default());
    let profile = DefaultPlugins::new()
        .builder("p")
        .filter(recorder.clone())
        .build()
        .unwrap();
    let scheduler = Scheduler::new(profile);
    let nodes: Vec<String> = (0..50).map(|i| format!("n{i}")).collect();
    scheduler.add_nodes(
        nodes
            .iter()
            .map(|n| NodeInfo::new(n.as_str(), Resources::new(4000, 8 << 30))),
    );
    let server = ExtenderServer::new(scheduler);
    let body = format!(
        r#"{{"Pod": {{"metadata": {{"name": "p", "uid": "p"}}}}, "NodeNames": {}}}"#,
        serde_json::to_string(&nodes).unwrap()
    );
    let args =
        rorqual_scheduler::extender::wire::ExtenderArgs::from_slice(body.as_bytes()).unwrap();
    let result = server.filter(&args);
    assert_eq!(
        result.node_names.map(|n| n.len()),
        Some(50),
        "{}",
        result.error
    );
    let threads = recorder.0.lock().unwrap();
    assert_eq!(threads.len(), 50);
    let here = std::thread::current().id();
    assert!(
        threads.iter().all(|t| *t == here),
        "filtered on {threads:?}, called from {here:?}"
    );
}

#[tokio::test]
async fn a_panicking_plugin_is_an_error_for_that_pod_only() {
    let profile = DefaultPlugins::new()
        .builder("p")
        .filter(Arc::new(Exploding))
        .build()
        .unwrap();
    let scheduler = Scheduler::new(profile);
    scheduler.add_nodes(["n1"].map(|n| NodeInfo::new(n, Resources::new(4000, 8 << 30))));
    let server = ExtenderServer::new(scheduler);
    let boom =
        r#"{"Pod": {"metadata": {"name": "b", "labels": {"boom": "1"}}}, "NodeNames": ["n1"]}"#;
    let (status, body) = post(&server, "/filter", boom).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("plugin panicked") && body.contains("exploding plugin"),
        "{body}"
    );
    let calm = r#"{"Pod": {"metadata": {"name": "c"}}, "NodeNames": ["n1"]}"#;
    let (_, body) = post(&server, "/filter", calm).await;
    assert!(body.contains(r#""NodeNames":["n1"]"#), "{body}");
}

#[tokio::test]
async fn serves_over_loopback_tcp() {
    let (server, _) = cluster();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(server.serve(listener));
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/filter");
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .body(fixture("filter_node_names_request.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert_eq!(got, json("filter_node_names_response.json"));
    task.abort();
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn serves_over_tls() {
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = cert.cert.pem();
    let key_pem = cert.key_pair.serialize_pem();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = rorqual_scheduler::extender::TlsListener::new(
        listener,
        cert_pem.as_bytes(),
        key_pem.as_bytes(),
    )
    .unwrap();
    let task = tokio::spawn(ExtenderServer::with_default_plugins().serve_tls(tls));

    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");
    assert!(
        rorqual_scheduler::extender::TlsListener::new(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            b"not pem",
            key_pem.as_bytes()
        )
        .is_err()
    );
    task.abort();
}

/// kube-scheduler's extender client (Go's `http.Transport` with HTTP/2 configured) sends every
/// verb over one connection when the server offers `h2`; an HTTP/1.1-only client still works.
#[cfg(feature = "tls")]
#[tokio::test]
async fn serves_http2_and_http1_over_tls() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert_pem = cert.cert.pem();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = rorqual_scheduler::extender::TlsListener::new(
        listener,
        cert_pem.as_bytes(),
        cert.key_pair.serialize_pem().as_bytes(),
    )
    .unwrap();
    let task = tokio::spawn(ExtenderServer::with_default_plugins().serve_tls(tls));
    let root = reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap();
    for (http1_only, expected) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let mut builder = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root.clone());
        if http1_only {
            builder = builder.http1_only();
        }
        let client = builder.build().unwrap();
        let url = format!("https://{addr}/healthz");
        // Several requests at once: over HTTP/2 they share the connection.
        let answers = futures::future::join_all((0..4).map(|_| client.get(&url).send())).await;
        for answer in answers {
            let answer = answer.unwrap();
            assert_eq!(answer.version(), expected, "http1_only {http1_only}");
            assert_eq!(answer.status(), 200);
            assert_eq!(answer.text().await.unwrap(), "ok");
        }
    }
    task.abort();
}

fn names_filter(uid: &str, cpu: &str) -> String {
    format!(
        r#"{{"Pod": {{"metadata": {{"name": "{uid}", "namespace": "default", "uid": "{uid}"}},
            "spec": {{"containers": [{{"name": "c", "resources": {{"requests": {{"cpu": "{cpu}"}}}}}}]}}}},
            "Nodes": null, "NodeNames": ["n1", "n3"]}}"#
    )
}

fn bind_args(uid: &str, node: &str) -> String {
    format!(
        r#"{{"PodName": "{uid}", "PodNamespace": "default", "PodUID": "{uid}", "Node": "{node}"}}"#
    )
}

#[tokio::test]
async fn bind_of_a_pod_not_seen_in_filter_fails_and_takes_nothing() {
    let (server, _) = cluster();
    let (status, body) = post(&server, "/bind", bind_args("ghost", "n3")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("cannot bind pod default/ghost")
            && body.contains("not seen in a filter call"),
        "{body}"
    );
    let on_n3 = server
        .scheduler()
        .with_snapshot(|s| s.node(Sym::new("n3")).unwrap().pods.len());
    assert_eq!(on_n3, 1, "nothing was bound without a resource check");
}

#[tokio::test]
async fn remembered_pods_forget_the_least_recently_filtered_first() {
    let (server, _) = cluster();
    let server = server.remembered_pods(2);
    for uid in ["a", "b", "a", "c"] {
        let (status, body) = post(&server, "/filter", names_filter(uid, "100m")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // `b` was filtered longest ago: forgotten; `a` (filtered again) and `c` are kept.
    let (_, body) = post(&server, "/bind", bind_args("b", "n1")).await;
    assert!(body.contains("not seen in a filter call"), "{body}");
    for uid in ["a", "c"] {
        let (_, body) = post(&server, "/bind", bind_args(uid, "n1")).await;
        let got: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(got["Error"], "", "{uid}: {body}");
    }
    let on_n1 = server
        .scheduler()
        .with_snapshot(|s| s.node(Sym::new("n1")).unwrap().requested.cpu.0);
    assert_eq!(on_n1, 200);
}

/// A Nodes-mode filter request for pod `uid` (1 cpu) over `n` nodes `node-0`… of 4 cpu each,
/// every node carrying `labels` labels (to make the body large).
fn nodes_filter(uid: &str, n: usize, labels: usize) -> String {
    let label_map: serde_json::Map<String, Value> = (0..labels)
        .map(|i| {
            (
                format!("example.com/label-{i}"),
                Value::from("some-value-that-takes-room"),
            )
        })
        .collect();
    let items: Vec<Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "metadata": {"name": format!("node-{i}"), "labels": label_map},
                "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}
            })
        })
        .collect();
    serde_json::json!({
        "Pod": {
            "metadata": {"name": uid, "namespace": "default", "uid": uid},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}
        },
        "Nodes": {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": items},
        "NodeNames": null
    })
    .to_string()
}

#[tokio::test]
async fn nodes_mode_filter_feeds_the_cache_so_bind_works() {
    let binder = Arc::new(AcceptingBinder::default());
    let server = ExtenderServer::with_default_plugins()
        .node_cache_capable(false)
        .binder(binder.clone());
    assert_eq!(
        server.stanza("http://127.0.0.1:8888").to_value().unwrap()["nodeCacheCapable"],
        false,
        "the stanza asks kube-scheduler for full nodes"
    );
    assert_eq!(
        ExtenderServer::with_default_plugins()
            .stanza("http://x")
            .to_value()
            .unwrap()["nodeCacheCapable"],
        true
    );
    let (status, body) = post(&server, "/filter", nodes_filter("web-1", 2, 1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got["Nodes"]["items"].as_array().unwrap().len(), 2, "{body}");
    let (_, body) = post(&server, "/bind", bind_args("web-1", "node-1")).await;
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got["Error"], "", "{body}");
    assert_eq!(
        *binder.bound.lock(),
        [PodBinding::new("default", "web-1", "web-1", "node-1")]
    );
    let used = server
        .scheduler()
        .with_snapshot(|s| s.node(Sym::new("node-1")).unwrap().requested.cpu.0);
    assert_eq!(used, 1000);
    // The next Nodes-mode call keeps the bound pod on the re-sent node.
    let (_, body) = post(&server, "/filter", nodes_filter("web-2", 2, 1)).await;
    assert!(body.contains("node-1"), "{body}");
    let used = server
        .scheduler()
        .with_snapshot(|s| s.node(Sym::new("node-1")).unwrap().requested.cpu.0);
    assert_eq!(used, 1000, "re-sent nodes keep the cache's pods");
}

#[tokio::test]
async fn a_nodes_mode_body_over_2_mb_is_accepted_and_the_limit_is_configurable() {
    let server = ExtenderServer::with_default_plugins().node_cache_capable(false);
    let body = nodes_filter("big", 5000, 8);
    assert!(body.len() > 2 << 20, "{} bytes", body.len());
    let (status, response) = post(&server, "/filter", body.clone()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        &response[..response.len().min(300)]
    );
    let got: Value = serde_json::from_str(&response).unwrap();
    assert_eq!(got["Nodes"]["items"].as_array().unwrap().len(), 5000);
    let small = ExtenderServer::with_default_plugins().body_limit(1 << 20);
    let (status, _) = post(&small, "/filter", body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}
