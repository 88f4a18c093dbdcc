//! rorqual's own scheduler on a real kube-apiserver v1.20.2: pods naming it in
//! `spec.schedulerName` are bound through the API where they fit, a pod that fits nowhere gets
//! `PodScheduled=False` with rorqual's reason and a `FailedScheduling` Warning Event (counted,
//! not repeated), and pods for other schedulers are left alone.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions unwrap too

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rorqual_kube::scheduler::KubeScheduler;
use rorqual_kube::testenv::eventually;
use rorqual_kube::testenv_or_skip;
use rorqual_scheduler::plugins::DefaultPlugins;

fn node(name: &str) -> Node {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    }))
    .unwrap()
}

fn pod(name: &str, scheduler: &str, cpu: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "schedulerName": scheduler,
            // Fake nodes have no kubelet: the node lifecycle controller taints them.
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "c", "image": "none",
                "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_naming_rorqual_are_bound_through_the_api_where_they_fit() {
    let env = testenv_or_skip!();
    let ns = env.new_namespace("sched").await.unwrap();
    let client = env.client().await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let names: Vec<String> = (0..3).map(|i| format!("{ns}-n{i}")).collect();
    for n in &names {
        nodes
            .create(&PostParams::default(), &node(n))
            .await
            .unwrap();
    }
    let scheduler = KubeScheduler::new(client.clone(), "rorqual", DefaultPlugins::new()).unwrap();
    let running = {
        let s = scheduler.clone();
        tokio::spawn(async move { s.run().await })
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for i in 0..6 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("p{i}"), "rorqual", "500m"),
        )
        .await
        .unwrap();
    }
    pods.create(&PostParams::default(), &pod("huge", "rorqual", "16"))
        .await
        .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("theirs", "default-scheduler", "100m"),
    )
    .await
    .unwrap();

    let placed = eventually(Duration::from_secs(30), "6 pods bound", || async {
        let list = pods.list(&Default::default()).await.unwrap().items;
        let bound: Vec<(String, String)> = list
            .iter()
            .filter_map(|p| {
                Some((
                    p.metadata.name.clone()?,
                    p.spec.as_ref()?.node_name.clone()?,
                ))
            })
            .collect();
        (bound.len() == 6).then_some(bound)
    })
    .await;
    for (_, node) in &placed {
        assert!(names.contains(node), "{placed:?}");
    }
    // 6 × 500m over three 2-CPU nodes: least-allocated scoring spreads them 2, 2, 2.
    for n in &names {
        assert_eq!(
            placed.iter().filter(|(_, on)| on == n).count(),
            2,
            "{placed:?}"
        );
    }

    let reason = eventually(
        Duration::from_secs(30),
        "huge marked unschedulable",
        || async {
            let p = pods.get("huge").await.unwrap();
            let c = p
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
            Some((c.reason?, c.message?))
        },
    )
    .await;
    assert_eq!(reason.0, "Unschedulable");
    assert!(reason.1.contains("Insufficient cpu"), "{reason:?}");

    // And a Warning Event about the pod, as kube-scheduler writes: `kubectl describe` shows
    // it; the scheduler's later attempts with the same message count on that one Event.
    let huge_uid = pods.get("huge").await.unwrap().metadata.uid.unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let failed = || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.involved_object.uid.as_deref() == Some(huge_uid.as_str())
            })
            .collect::<Vec<Event>>()
    };
    let repeated = eventually(
        Duration::from_secs(45),
        "FailedScheduling counted twice",
        || async {
            let list = failed().await;
            list.iter()
                .any(|e| e.count.unwrap_or(1) >= 2)
                .then_some(list)
        },
    )
    .await;
    let event = repeated.iter().find(|e| e.count.unwrap_or(1) >= 2).unwrap();
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.involved_object.kind.as_deref(), Some("Pod"));
    assert_eq!(event.involved_object.name.as_deref(), Some("huge"));
    assert_eq!(
        event.source.as_ref().and_then(|s| s.component.as_deref()),
        Some("rorqual")
    );
    let message = event.message.clone().unwrap_or_default();
    assert!(
        message.starts_with("0/3 nodes are available") && message.contains("Insufficient cpu"),
        "{message}"
    );
    assert_eq!(
        repeated
            .iter()
            .filter(|e| e.message.as_deref() == Some(message.as_str()))
            .count(),
        1,
        "one Event per message: {repeated:?}"
    );
    let theirs = pods.get("theirs").await.unwrap();
    assert_eq!(
        theirs.spec.unwrap().node_name,
        None,
        "another scheduler's pod"
    );

    // Deleting bound pods frees room: a pod of 1.5 CPU then fits where two left.
    pods.delete("p0", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let freed = placed.iter().find(|(p, _)| p == "p0").unwrap().1.clone();
    let other = placed
        .iter()
        .find(|(p, n)| p != "p0" && *n == freed)
        .unwrap()
        .0
        .clone();
    pods.delete(&other, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("big", "rorqual", "1500m"))
        .await
        .unwrap();
    let on = eventually(Duration::from_secs(30), "big bound", || async {
        pods.get("big").await.unwrap().spec?.node_name
    })
    .await;
    assert_eq!(on, freed);

    running.abort();
    for n in &names {
        nodes.delete(n, &DeleteParams::default()).await.unwrap();
    }
}

/// What a test's log subscriber wrote.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// A current-thread runtime: the subscriber set below sees every task of the test.
#[tokio::test]
async fn a_failing_watch_is_logged_at_warn_level_once_not_per_retry() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Nothing listens on port 1: every list fails, and kube's watcher retries with backoff.
    let mut config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    config.connect_timeout = Some(Duration::from_millis(100));
    let client = kube::Client::try_from(config).unwrap();
    let scheduler = KubeScheduler::new(client, "rorqual", DefaultPlugins::new()).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(6), scheduler.run()).await;
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("watch failed"))
        .collect();
    // A user sees that the node and pod watches fail, once each (not once per retry).
    assert!(
        warnings.iter().any(|l| l.contains("node watch")),
        "no warning about the node watch:\n{text}"
    );
    assert!(
        warnings.iter().any(|l| l.contains("pod watch")),
        "no warning about the pod watch:\n{text}"
    );
    assert_eq!(warnings.len(), 2, "{text}");
}
