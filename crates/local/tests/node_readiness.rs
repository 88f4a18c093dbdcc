//! Node loss on the LocalEngine: a node marked not ready loses its instances (killed, then
//! placed again on ready nodes, stateful identities keeping their id and ordinal), and takes
//! instances again once ready.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use rorqual_core::engine::Engine;
use rorqual_core::error::Error;
use rorqual_core::model::{AppSpec, ContainerSpec, EventType, Resources, WorkloadKind};
use rorqual_local::LocalEngine;
use rorqual_testkit::local::{Reaper, all_ready, record_events, wait_for};

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_s_instances_are_killed_and_placed_again_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_owned());
    let engine = LocalEngine::builder()
        .nodes(2)
        .node_capacity(Resources::new(1000, 1 << 30))
        .state_dir(dir.path())
        .restart_backoff(Duration::from_millis(100), Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let events = record_events(engine.events());
    // One instance per node fits. A long grace period: the lost node's processes must die at
    // once regardless.
    let spec = AppSpec::new(
        "db",
        vec![ContainerSpec::new("app", ["sleep", "600"]).resources(Resources::new(600, 1 << 20))],
    )
    .kind(WorkloadKind::Stateful)
    .grace_period_seconds(300);
    let key = spec.key();
    engine.apply_group(&spec, 1).await.unwrap();
    let before = all_ready(&engine, &key, 1).await.remove(0);
    let lost_node = before.node.clone().unwrap();
    let pids = engine.pids("db-0").unwrap();
    assert_eq!(pids.len(), 1);

    let err = engine.set_node_ready("node-9", false).unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { kind: "node", name } if name == "node-9"),
        "{err}"
    );

    engine.set_node_ready(&lost_node, false).unwrap();
    let after = wait_for(20, "db-0 ready on another node", || async {
        let list = engine.instances(&key).await.unwrap();
        list.into_iter()
            .find(|i| i.ready && i.node.as_deref() != Some(lost_node.as_str()))
    })
    .await;
    assert_eq!((after.id.as_str(), after.ordinal), ("db-0", Some(0)));
    assert!(
        !alive(pids[0]),
        "the lost node's process {} was killed",
        pids[0]
    );
    let nodes = engine.nodes().await.unwrap();
    assert!(!nodes.iter().find(|n| n.name == lost_node).unwrap().ready);
    {
        let log = events.lock().unwrap();
        let warnings: Vec<_> = log
            .iter()
            .filter(|e| e.reason == "NodeNotReady" && e.event_type == EventType::Warning)
            .collect();
        assert!(
            warnings.iter().any(|e| e.instance.is_none()
                && e.message.contains(&lost_node)
                && e.message.contains("db-0")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|e| e.instance.as_deref() == Some("db-0")),
            "{warnings:?}"
        );
    }

    // Ready again (twice: idempotent), it takes instances again: a second identity can only
    // go there, the other node being full.
    engine.set_node_ready(&lost_node, true).unwrap();
    engine.set_node_ready(&lost_node, true).unwrap();
    engine.apply_group(&spec, 2).await.unwrap();
    let both = all_ready(&engine, &key, 2).await;
    assert_eq!(both[1].id, "db-1");
    assert_eq!(
        both[1].node.as_deref(),
        Some(lost_node.as_str()),
        "{both:?}"
    );
    engine.shutdown().await.unwrap();
}
