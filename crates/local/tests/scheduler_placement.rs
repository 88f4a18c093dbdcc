//! LocalEngine with the full `Scheduler` as its placement places instances where the scheduler
//! alone puts the same pods: required and preferred node affinity, pod anti-affinity,
//! topology spread and priority are honoured, on virtual nodes with zones and labels.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rorqual_core::engine::Engine;
use rorqual_core::model::{
    Affinity, AppKey, AppSpec, ContainerSpec, InstancePhase, LabelSelector, Node, NodeAffinity,
    NodeSelector, NodeSelectorTerm, PodAffinity, PodAffinityTerm, PreferredSchedulingTerm,
    Resources, SelectorOperator, SelectorRequirement, TopologySpreadConstraint, WhenUnsatisfiable,
    WorkloadKind,
};
use rorqual_core::placement::{NodeView, PlacementRequest};
use rorqual_local::LocalEngine;
use rorqual_scheduler::scheduler::placement::{node_from_view, pod_from_request};
use rorqual_scheduler::{Outcome, Scheduler};
use rorqual_testkit::local::{Reaper, all_ready, wait_for};

const ZONE: &str = "topology.kubernetes.io/zone";
const HOSTNAME: &str = "kubernetes.io/hostname";

fn node(name: &str, zone: &str, disk: &str, rank: &str) -> Node {
    Node::new(name, Resources::new(4000, 8 << 30))
        .label(ZONE, zone)
        .label("disk", disk)
        .label("rank", rank)
}

fn sleeper(name: &str) -> AppSpec {
    AppSpec::new(name, vec![ContainerSpec::new("app", ["sleep", "600"])])
        .label("app", name)
        .grace_period_seconds(1)
}

fn engine_builder(dir: &std::path::Path, nodes: &[Node]) -> rorqual_local::LocalEngineBuilder {
    let mut b = LocalEngine::builder()
        .placement(Arc::new(Scheduler::with_default_plugins()))
        .state_dir(dir)
        .restart_backoff(Duration::from_millis(100), Duration::from_secs(2));
    for n in nodes {
        b = b.node(n.clone());
    }
    b
}

/// Where the scheduler alone binds `requests` (queued together, scheduled until idle) on
/// `nodes`: instance id → node, `None` when unschedulable.
async fn scheduler_alone(
    nodes: &[Node],
    requests: &[PlacementRequest],
) -> BTreeMap<String, Option<String>> {
    let scheduler = Scheduler::with_default_plugins();
    scheduler.add_nodes(
        nodes
            .iter()
            .map(|n| node_from_view(&NodeView::new(n.clone()))),
    );
    for r in requests {
        scheduler.enqueue(pod_from_request(r)).unwrap();
    }
    let mut placed = BTreeMap::new();
    while let Some(result) = scheduler.schedule_next().await {
        let node = match result.outcome {
            Outcome::Bound(node) => Some(node.as_str().to_string()),
            Outcome::Unschedulable(_) => None,
            other => panic!("unexpected outcome {other:?}"),
        };
        placed.insert(result.pod.uid.to_string(), node);
    }
    placed
}

async fn placements(engine: &LocalEngine, app: &AppKey) -> BTreeMap<String, Option<String>> {
    engine
        .instances(app)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.id, i.node))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_anti_affinity_and_spread_place_as_the_scheduler_alone() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_owned());
    // n2 is preferred over n3, but the zone spread forces the second identity into zone b;
    // n4 has the wrong disk.
    let nodes = [
        node("n1", "a", "ssd", "1"),
        node("n2", "a", "ssd", "2"),
        node("n3", "b", "ssd", "3"),
        node("n4", "b", "hdd", "1"),
    ];
    let db = LabelSelector::match_labels([("app", "db")]);
    let rank = |value: &str| {
        NodeSelectorTerm::new(vec![SelectorRequirement::new(
            "rank",
            SelectorOperator::In,
            [value],
        )])
    };
    let spec = sleeper("db")
        .kind(WorkloadKind::Stateful)
        .affinity(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm::new(vec![
                        SelectorRequirement::new("disk", SelectorOperator::In, ["ssd"]),
                    ])],
                }),
                preferred_during_scheduling_ignored_during_execution: vec![
                    PreferredSchedulingTerm {
                        weight: 100,
                        preference: rank("1"),
                    },
                    PreferredSchedulingTerm {
                        weight: 50,
                        preference: rank("2"),
                    },
                ],
            }),
            pod_affinity: None,
            pod_anti_affinity: Some(PodAffinity {
                required_during_scheduling_ignored_during_execution: vec![PodAffinityTerm::new(
                    db.clone(),
                    HOSTNAME,
                )],
                preferred_during_scheduling_ignored_during_execution: Vec::new(),
            }),
        })
        .spread(TopologySpreadConstraint::new(
            1,
            ZONE,
            WhenUnsatisfiable::DoNotSchedule,
            db,
        ));
    let engine = engine_builder(dir.path(), &nodes).build().await.unwrap();
    let key = spec.key();
    engine.apply_group(&spec, 3).await.unwrap();
    all_ready(&engine, &key, 3).await;
    let placed = placements(&engine, &key).await;

    let requests: Vec<PlacementRequest> = (0..4)
        .map(|o| {
            PlacementRequest::from_spec(&spec, format!("db-{o}"), spec.revision(), Some(o), None)
        })
        .collect();
    let alone = scheduler_alone(&nodes, &requests).await;
    let expected: BTreeMap<String, Option<String>> = [
        ("db-0", Some("n1")),
        ("db-1", Some("n3")),
        ("db-2", Some("n2")),
        ("db-3", None),
    ]
    .into_iter()
    .map(|(id, n)| (id.to_owned(), n.map(str::to_owned)))
    .collect();
    assert_eq!(alone, expected, "the scheduler alone");
    let mut first_three = alone.clone();
    first_three.remove("db-3");
    assert_eq!(placed, first_three, "the engine places as the scheduler");

    // A fourth identity fits nowhere (n4: node affinity; the rest: anti-affinity).
    engine.scale_group(&key, &spec.revision(), 4).await.unwrap();
    let reason = wait_for(20, "db-3 pending with a reason", || async {
        let list = engine.instances(&key).await.unwrap();
        list.into_iter()
            .find(|i| i.id == "db-3" && i.phase == InstancePhase::Pending)
            .and_then(|i| i.reason)
    })
    .await;
    assert!(reason.starts_with("0/4 nodes are available"), "{reason}");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_is_placed_first_as_by_the_scheduler_alone() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_owned());
    // Room for one of the two instances.
    let nodes = [Node::new("solo", Resources::new(1000, 1 << 30))];
    let cpu = |spec: AppSpec| {
        let mut spec = spec;
        spec.containers[0] = spec.containers[0]
            .clone()
            .resources(Resources::new(800, 1 << 20));
        spec
    };
    // Named so that, without priorities, the low one would go first (apps are visited in
    // name order).
    let low = cpu(sleeper("batch"));
    let high = cpu(sleeper("web")).priority(100);
    let engine = engine_builder(dir.path(), &nodes).build().await.unwrap();
    // Both pending at once: the only node is not ready while they are applied, low first.
    engine.set_node_ready("solo", false).unwrap();
    engine.apply_group(&low, 1).await.unwrap();
    engine.apply_group(&high, 1).await.unwrap();
    for app in [low.key(), high.key()] {
        wait_for(20, "pending on the not-ready node", || async {
            let list = engine.instances(&app).await.unwrap();
            list.iter()
                .any(|i| i.phase == InstancePhase::Pending && i.reason.is_some())
                .then_some(())
        })
        .await;
    }
    engine.set_node_ready("solo", true).unwrap();
    let running = all_ready(&engine, &high.key(), 1).await;
    assert_eq!(running[0].node.as_deref(), Some("solo"));
    let reason = wait_for(20, "low pending for cpu", || async {
        let list = engine.instances(&low.key()).await.unwrap();
        list.into_iter()
            .find(|i| i.phase == InstancePhase::Pending)
            .and_then(|i| i.reason)
            .filter(|r| r.contains("cpu"))
    })
    .await;
    assert!(
        reason.contains("Insufficient cpu") || reason.contains("insufficient cpu"),
        "{reason}"
    );

    // The scheduler alone, with low queued first, also binds high and leaves low out.
    let requests = [
        PlacementRequest::from_spec(&low, "batch-x", low.revision(), None, None),
        PlacementRequest::from_spec(&high, "web-x", high.revision(), None, None),
    ];
    let alone = scheduler_alone(&nodes, &requests).await;
    assert_eq!(alone["web-x"].as_deref(), Some("solo"));
    assert_eq!(alone["batch-x"], None);
    engine.shutdown().await.unwrap();
}
