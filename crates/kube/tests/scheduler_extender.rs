//! rorqual's extender behind a real kube-scheduler v1.20.2 (filter, prioritize and bind verbs),
//! each mode on a control plane of its own whose kube-scheduler is configured by the stanza
//! generator:
//! - every pod that fits is bound, and only the extender can have bound it (with `bindVerb`
//!   kube-scheduler delegates binding: the extender POSTs the `Binding` through
//!   `ApiserverBinder` with the admin token and the test CA);
//! - pods asking for an underlay pool land only on the pool's hosts (the extender's filter;
//!   kube-scheduler knows nothing of pools), and take its addresses;
//! - a stateful identity goes back to its previous node although kube-scheduler's own scores
//!   prefer the empty nodes, where a pod without the identity goes (the extender's
//!   prioritize);
//! - the pool's fourth pod fits nowhere, and its `PodScheduled=False` condition and
//!   `FailedScheduling` event quote the extender's reasons (1.20 reads `FailedNodes`).
//!
//! In Nodes mode kube-scheduler sends full nodes; in cache-capable mode it sends names and
//! `SnapshotSync` feeds the extender's cache from Node and Pod watches. Outside CI a missing
//! binary skips each test with the reason; with CI=true it fails.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions unwrap too

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use rorqual_kube::scheduler::SnapshotSync;
use rorqual_kube::testenv::{
    BinarySources, Component, Error as EnvError, TestEnv, Unavailable, ci_from_env, skip_or_fail,
};
use rorqual_scheduler::Scheduler;
use rorqual_scheduler::extender::{ApiserverConfig, ExtenderServer, ExtenderStanza, KubeVersion};
use rorqual_scheduler::kube::{
    ANNOTATION_IDENTITY, ANNOTATION_PREVIOUS_NODE, ANNOTATION_UNDERLAY_POOL,
};
use rorqual_scheduler::plugins::{DefaultPlugins, MemoryIpCapacity};
use serde_json::json;

const NODES: [&str; 4] = ["n0", "n1", "n2", "n3"];
/// The underlay pool's hosts and size.
const POOL: &str = "games";
const POOL_HOSTS: [&str; 2] = ["n0", "n1"];
const POOL_SIZE: usize = 3;
/// The node kube-scheduler's own scores avoid (3 of its 4 CPUs taken by a pod bound at
/// creation), and where the stateful identities ran before.
const LOADED: &str = "n3";
/// The extender's prioritize weight: its 0–10 priorities count 10 × this in kube-scheduler's
/// total, where the loaded node trails an empty one by about 110 (least-allocated and
/// balanced-allocation).
const EXTENDER_WEIGHT: i64 = 10;

fn node(name: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    }))
    .unwrap()
}

fn pod(name: &str, cpu: &str, annotations: serde_json::Value, node: Option<&str>) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "nodeName": node,
            // Fake nodes have no kubelet: the node lifecycle controller taints them.
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "c", "image": "none",
                "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]
        }
    }))
    .unwrap()
}

async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The version kube-scheduler reports (`Kubernetes v1.20.2`), so the configuration is written
/// in the API version it reads; `None` after printing why when there is no binary outside CI.
fn kube_scheduler_version() -> Option<KubeVersion> {
    let binary = match BinarySources::from_env().locate(Component::KubeScheduler, &Path::is_file) {
        Ok(binary) => binary,
        Err(missing) => return unavailable(&missing),
    };
    let out = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let version = text.split_whitespace().last().unwrap_or_default();
    Some(
        version
            .parse()
            .unwrap_or_else(|e| panic!("{}: `{text}`: {e}", binary.display())),
    )
}

fn unavailable<T>(missing: &rorqual_kube::testenv::MissingBinary) -> Option<T> {
    match skip_or_fail(missing, ci_from_env()) {
        Unavailable::Skip(line) => {
            println!("{line}");
            None
        }
        Unavailable::Fail(message) => panic!("{message}"),
    }
}

/// The admin token and the CA (PEM) of the control plane's kubeconfig.
fn admin_credentials(env: &TestEnv) -> (String, Vec<u8>) {
    let config = serde_json::to_value(env.kubeconfig()).unwrap();
    let token = config["users"][0]["user"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ca = base64::engine::general_purpose::STANDARD
        .decode(
            config["clusters"][0]["cluster"]["certificate-authority-data"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    (token, ca)
}

fn bound_node(pod: &Pod) -> Option<String> {
    pod.spec.as_ref()?.node_name.clone()
}

async fn kube_scheduler_places_pods_where_the_extender_says(node_cache_capable: bool) {
    let Some(version) = kube_scheduler_version() else {
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stanza = ExtenderStanza::new(&url)
        .node_cache_capable(node_cache_capable)
        .bind(true)
        .weight(EXTENDER_WEIGHT);
    let config = stanza.to_yaml(version).unwrap();
    // Its own control plane: the scheduler's configuration is per start.
    let env = match TestEnv::builder()
        .use_existing_cluster(false)
        .scheduler_config(config)
        .start()
        .await
    {
        Ok(env) => env,
        Err(EnvError::MissingBinary(missing)) => {
            let _: Option<()> = unavailable(&missing);
            return;
        }
        Err(e) => panic!("the test control plane did not start: {e}"),
    };
    let client = env.client().await.unwrap();

    // The extender: rorqual's default plugins with an underlay pool on two nodes.
    let pool = Arc::new(MemoryIpCapacity::new());
    pool.add_pool(
        POOL,
        POOL_HOSTS,
        (1..=POOL_SIZE).map(|i| IpAddr::from([10, 0, 0, i as u8])),
    );
    let profile = DefaultPlugins::new()
        .underlay(pool.clone())
        .build()
        .unwrap();
    let (token, ca) = admin_credentials(&env);
    let binder = ApiserverConfig::new(env.server_url())
        .bearer_token(token)
        .ca_pem(ca)
        .build()
        .unwrap();
    let server = ExtenderServer::new(Scheduler::new(profile))
        .node_cache_capable(node_cache_capable)
        .kube_scheduler_version(version)
        .binder(Arc::new(binder));
    // The configuration kube-scheduler runs with is the one this server would print.
    assert_eq!(
        server.stanza(&url).weight(EXTENDER_WEIGHT),
        stanza,
        "the stanza"
    );
    let mut tasks = vec![tokio::spawn({
        let server = server.clone();
        async move {
            server.serve(listener).await.unwrap();
        }
    })];
    if node_cache_capable {
        let sync = SnapshotSync::new(server.scheduler().clone(), None);
        tasks.push(tokio::spawn(sync.run(client.clone())));
    }

    let nodes: Api<Node> = Api::all(client.clone());
    for n in NODES {
        nodes
            .create(&PostParams::default(), &node(n))
            .await
            .unwrap();
    }
    if node_cache_capable {
        eventually(30, "the extender's cache to hold the nodes", || async {
            (server.scheduler().with_snapshot(|s| s.nodes().len()) == NODES.len()).then_some(())
        })
        .await;
    }
    let ns = env.new_namespace("extender").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // Bound at creation (no scheduler involved): kube-scheduler's scores now avoid LOADED.
    pods.create(
        &PostParams::default(),
        &pod("load", "3", json!({}), Some(LOADED)),
    )
    .await
    .unwrap();

    // A plain pod: kube-scheduler's scores decide (the extender's are equal on empty nodes,
    // or also lower on LOADED when its cache knows the load).
    pods.create(
        &PostParams::default(),
        &pod("plain", "250m", json!({}), None),
    )
    .await
    .unwrap();
    let plain = eventually(60, "pod plain bound", || async {
        bound_node(&pods.get("plain").await.unwrap())
    })
    .await;
    assert_ne!(plain, LOADED, "a pod without an identity");

    // Stateful identities that ran on LOADED: the extender's prioritize sends them back.
    let sticky = ["sticky-0", "sticky-1"];
    for name in sticky {
        let annotations = json!({
            ANNOTATION_IDENTITY: format!("{ns}/{name}"),
            ANNOTATION_PREVIOUS_NODE: LOADED,
        });
        pods.create(
            &PostParams::default(),
            &pod(name, "250m", annotations, None),
        )
        .await
        .unwrap();
    }
    // One more pod than the pool has addresses: the extender's filter decides where they go.
    let underlay: Vec<String> = (0..=POOL_SIZE).map(|i| format!("underlay-{i}")).collect();
    for name in &underlay {
        pods.create(
            &PostParams::default(),
            &pod(name, "100m", json!({ANNOTATION_UNDERLAY_POOL: POOL}), None),
        )
        .await
        .unwrap();
    }

    let bound = eventually(90, "the sticky pods and 3 underlay pods bound", || async {
        let list = pods.list(&ListParams::default()).await.unwrap().items;
        let bound: Vec<(String, String, String)> = list
            .iter()
            .filter_map(|p| {
                Some((
                    p.metadata.name.clone()?,
                    bound_node(p)?,
                    p.metadata.uid.clone()?,
                ))
            })
            .filter(|(name, _, _)| name != "load" && name != "plain")
            .collect();
        (bound.len() == sticky.len() + POOL_SIZE).then_some(bound)
    })
    .await;
    for (name, on, _) in &bound {
        if sticky.contains(&name.as_str()) {
            assert_eq!(
                on, LOADED,
                "{name} went to {on}, not its previous node: {bound:?}"
            );
        } else {
            assert!(
                POOL_HOSTS.contains(&on.as_str()),
                "{name} went to {on}, which has no address of pool {POOL}: {bound:?}"
            );
        }
    }
    // Binding reserved the addresses: each bound underlay pod holds one, none is left.
    for (name, _, uid) in bound.iter().filter(|(n, _, _)| n.starts_with("underlay-")) {
        assert!(pool.held_by(uid).is_some(), "{name} holds no address");
    }
    assert_eq!(pool.free(POOL), 0);

    // The pod left over fits nowhere, for the extender's reasons only.
    let left = underlay
        .iter()
        .find(|u| !bound.iter().any(|(name, _, _)| name == *u))
        .unwrap()
        .clone();
    let full =
        format!("underlay pool `{POOL}` has no free address ({POOL_SIZE} of {POOL_SIZE} taken)");
    let elsewhere = "node is in no underlay pool the pod can use";
    let message = eventually(60, "the leftover pod's PodScheduled=False", || async {
        let p = pods.get(&left).await.unwrap();
        assert_eq!(bound_node(&p), None, "{left} was bound");
        let c = p
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
        let message = c.message?;
        message.contains(&full).then_some(message)
    })
    .await;
    assert!(message.contains(elsewhere), "{message}");
    assert!(message.starts_with("0/4 nodes are available"), "{message}");
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    eventually(
        30,
        "a FailedScheduling event quoting the extender",
        || async {
            let list = events
                .list(&ListParams::default().fields(&format!("involvedObject.name={left}")))
                .await
                .unwrap()
                .items;
            list.iter()
                .any(|e| {
                    e.reason.as_deref() == Some("FailedScheduling")
                        && e.message.as_deref().is_some_and(|m| m.contains(&full))
                })
                .then_some(())
        },
    )
    .await;

    for task in tasks {
        task.abort();
    }
    drop(env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_mode_kube_scheduler_places_pods_where_the_extender_says() {
    kube_scheduler_places_pods_where_the_extender_says(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_capable_kube_scheduler_places_pods_where_the_extender_says() {
    kube_scheduler_places_pods_where_the_extender_says(true).await;
}
