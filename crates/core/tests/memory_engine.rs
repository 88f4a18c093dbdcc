//! MemoryEngine: readiness on the manual clock, faults, placement, stateful identities, events.
#![cfg(feature = "testing")]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::StreamExt;
use rorqual_core::clock::ManualClock;
use rorqual_core::engine::Engine;
use rorqual_core::memory::{Fault, MemoryEngine};
use rorqual_core::model::{AppSpec, ContainerSpec, InstancePhase, Resources, WorkloadKind};

fn spec(name: &str, version: &str) -> AppSpec {
    AppSpec::new(
        name,
        vec![
            ContainerSpec::new("app", ["demo"])
                .env("DEMO_VERSION", version)
                .port("http", 8080)
                .resources(Resources::new(500, 64 << 20)),
        ],
    )
}

fn engine(clock: &ManualClock) -> MemoryEngine {
    MemoryEngine::builder()
        .clock(clock.clone())
        .startup(Duration::from_secs(2))
        .uniform_nodes(2, Resources::new(2000, 1 << 30))
        .build()
}

#[tokio::test]
async fn instances_become_ready_after_startup_and_ids_are_deterministic() {
    let clock = ManualClock::new();
    let e = engine(&clock);
    let s = spec("web", "v1");
    let g = e.apply_group(&s, 3).await.unwrap();
    assert_eq!((g.desired, g.current, g.ready), (3, 3, 0));
    clock.advance(Duration::from_millis(1999));
    assert_eq!(e.groups(&s.key()).await.unwrap()[0].ready, 0);
    clock.advance(Duration::from_millis(1));
    assert_eq!(e.groups(&s.key()).await.unwrap()[0].ready, 3);
    let ids: Vec<String> = e
        .instances(&s.key())
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    let rev = s.revision();
    assert_eq!(
        ids,
        [1, 2, 3].map(|n| format!("web-{rev}-{n:05}")),
        "ids come from a counter"
    );
    // A second engine given the same calls produces the same instances.
    let clock2 = ManualClock::new();
    let e2 = engine(&clock2);
    e2.apply_group(&s, 3).await.unwrap();
    clock2.advance(Duration::from_secs(2));
    assert_eq!(
        e.instances(&s.key()).await.unwrap(),
        e2.instances(&s.key()).await.unwrap()
    );
    // Scaling down removes the newest first; idempotent apply changes nothing.
    e.scale_group(&s.key(), &rev, 2).await.unwrap();
    let again = e.apply_group(&s, 2).await.unwrap();
    assert_eq!((again.current, again.ready), (2, 2));
    let ids: Vec<String> = e
        .instances(&s.key())
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, [1, 2].map(|n| format!("web-{rev}-{n:05}")));
    e.delete_group(&s.key(), &rev).await.unwrap();
    e.delete_group(&s.key(), &rev).await.unwrap();
    assert!(e.apps().await.unwrap().is_empty());
}

#[tokio::test]
async fn never_ready_faults_by_revision_and_by_instance() {
    let clock = ManualClock::new();
    let e = engine(&clock);
    let v1 = spec("web", "v1");
    let v2 = spec("web", "v2");
    e.inject(Fault::never_ready_revision(&v2.revision()));
    e.inject(Fault::never_ready_instance(format!(
        "web-{}-00002",
        v1.revision()
    )));
    e.apply_group(&v1, 2).await.unwrap();
    e.apply_group(&v2, 1).await.unwrap();
    clock.advance(Duration::from_secs(60));
    let groups = e.groups(&v1.key()).await.unwrap();
    let g1 = groups.iter().find(|g| g.revision == v1.revision()).unwrap();
    let g2 = groups.iter().find(|g| g.revision == v2.revision()).unwrap();
    assert_eq!((g1.current, g1.ready), (2, 1));
    assert_eq!((g2.current, g2.ready), (1, 0));
    let bad = e
        .instances(&v1.key())
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.revision == v2.revision())
        .unwrap();
    assert_eq!(bad.phase, InstancePhase::Running);
    assert_eq!(bad.reason.as_deref(), Some("readiness probe failed"));
}

#[tokio::test]
async fn crashing_instances_restart_with_backoff_and_crash_loop() {
    let clock = ManualClock::new();
    let e = engine(&clock);
    let s = spec("web", "v1");
    e.inject(Fault::crash_revision_after(
        &s.revision(),
        Duration::from_secs(5),
    ));
    e.apply_group(&s, 1).await.unwrap();
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        e.groups(&s.key()).await.unwrap()[0].ready,
        1,
        "ready before the crash"
    );
    clock.advance(Duration::from_secs(3));
    let i = &e.instances(&s.key()).await.unwrap()[0];
    assert_eq!(
        (i.phase, i.restarts, i.ready),
        (InstancePhase::CrashLoopBackOff, 1, false)
    );
    assert!(
        i.reason.as_deref().unwrap().contains("restarting in 10s"),
        "{:?}",
        i.reason
    );
    // Restarted after 10 s, crashes again 5 s later; next backoff is 20 s.
    clock.advance(Duration::from_secs(15));
    let i = &e.instances(&s.key()).await.unwrap()[0];
    assert_eq!((i.phase, i.restarts), (InstancePhase::CrashLoopBackOff, 2));
    assert!(
        i.reason.as_deref().unwrap().contains("restarting in 20s"),
        "{:?}",
        i.reason
    );
    // Hours later the backoff is capped at 5 minutes.
    clock.advance(Duration::from_secs(3600));
    let i = &e.instances(&s.key()).await.unwrap()[0];
    assert!(i.restarts >= 12, "{}", i.restarts);
    assert!(
        i.phase != InstancePhase::CrashLoopBackOff || i.reason.as_deref().unwrap().contains("300s"),
        "{:?}",
        i.reason
    );
    // Clearing faults lets the next start succeed.
    e.clear_faults();
    clock.advance(Duration::from_secs(310));
    let i = &e.instances(&s.key()).await.unwrap()[0];
    assert!(i.ready, "{i:?}");
}

#[tokio::test]
async fn pending_on_capacity_then_placed_when_capacity_frees() {
    let clock = ManualClock::new();
    let e = engine(&clock);
    // Two nodes of 2000m: eight 500m instances fit, the ninth does not.
    let a = spec("a", "v1");
    let b = spec("b", "v1");
    e.apply_group(&a, 8).await.unwrap();
    let g = e.apply_group(&b, 1).await.unwrap();
    assert_eq!(g.current, 1);
    let pending = &e.instances(&b.key()).await.unwrap()[0];
    assert_eq!(pending.phase, InstancePhase::Pending);
    assert_eq!(
        pending.reason.as_deref(),
        Some("0/2 nodes available: 2 insufficient cpu")
    );
    clock.advance(Duration::from_secs(10));
    assert_eq!(e.groups(&b.key()).await.unwrap()[0].ready, 0);
    e.scale_group(&a.key(), &a.revision(), 7).await.unwrap();
    clock.advance(Duration::from_secs(1));
    let i = &e.instances(&b.key()).await.unwrap()[0];
    assert_eq!(i.phase, InstancePhase::Starting, "{i:?}");
    clock.advance(Duration::from_secs(2));
    assert_eq!(e.groups(&b.key()).await.unwrap()[0].ready, 1);
}

#[tokio::test]
async fn node_loss_replaces_stateless_and_reschedules_stateful() {
    let clock = ManualClock::new();
    let e = engine(&clock);
    let web = spec("web", "v1");
    let game = spec("game", "v1").kind(WorkloadKind::Stateful);
    e.apply_group(&web, 2).await.unwrap();
    e.apply_group(&game, 2).await.unwrap();
    // game-1 starts once game-0 is ready (2 s) and is ready 2 s later.
    clock.advance(Duration::from_secs(4));
    let before = e.instances(&game.key()).await.unwrap();
    assert!(before.iter().all(|i| i.ready));
    let lost = before[0].node.clone().unwrap();
    let lost_web: Vec<String> = e
        .instances(&web.key())
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.node.as_deref() == Some(lost.as_str()))
        .map(|i| i.id)
        .collect();
    assert_eq!(lost_web.len(), 1, "least-allocated spreads over both nodes");
    e.lose_node(&lost).await.unwrap();
    let web_now = e.instances(&web.key()).await.unwrap();
    assert_eq!(web_now.len(), 2);
    assert!(
        web_now
            .iter()
            .all(|i| i.node.as_deref() != Some(lost.as_str()))
    );
    assert!(
        !web_now.iter().any(|i| i.id == lost_web[0]),
        "replaced, not kept"
    );
    let game_now = e.instances(&game.key()).await.unwrap();
    assert_eq!(game_now[0].id, before[0].id, "identity kept");
    assert_eq!(game_now[0].address, before[0].address, "address kept");
    assert_ne!(game_now[0].node, before[0].node);
    assert!(!game_now[0].ready);
    // A rescheduled game-1 would wait for game-0 again: 2 s + 2 s at most.
    clock.advance(Duration::from_secs(4));
    assert_eq!(e.groups(&game.key()).await.unwrap()[0].ready, 2);
    assert!(
        !e.nodes()
            .await
            .unwrap()
            .iter()
            .find(|n| n.name == lost)
            .unwrap()
            .ready
    );
    e.restore_node(&lost).await.unwrap();
    assert!(e.nodes().await.unwrap().iter().all(|n| n.ready));
}

#[tokio::test]
async fn stateful_identities_move_in_place_and_keep_node_and_address() {
    let clock = ManualClock::new();
    let e = engine(&clock);
    let v1 = spec("game", "v1").kind(WorkloadKind::Stateful);
    let v2 = spec("game", "v2").kind(WorkloadKind::Stateful);
    e.apply_group(&v1, 3).await.unwrap();
    // Started in ordinal order, each 2 s after the previous.
    clock.advance(Duration::from_secs(6));
    let before = e.instances(&v1.key()).await.unwrap();
    assert!(before.iter().all(|i| i.ready && i.node.is_some()));
    assert_eq!(
        before.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["game-0", "game-1", "game-2"]
    );
    let moved = e.move_identity(&v2, 2).await.unwrap();
    assert_eq!(moved.revision, v2.revision());
    assert_eq!(moved.node, before[2].node);
    assert_eq!(moved.address, before[2].address);
    assert!(!moved.ready);
    let again = e.move_identity(&v2, 2).await.unwrap();
    assert_eq!(again, moved, "moving to the same revision does nothing");
    let groups = e.groups(&v1.key()).await.unwrap();
    let count = |rev| {
        groups
            .iter()
            .find(|g| g.revision == rev)
            .map(|g| (g.desired, g.ready))
    };
    assert_eq!(count(v1.revision()), Some((2, 2)));
    assert_eq!(count(v2.revision()), Some((1, 0)));
    clock.advance(Duration::from_secs(2));
    let groups = e.groups(&v1.key()).await.unwrap();
    assert_eq!(
        groups
            .iter()
            .find(|g| g.revision == v2.revision())
            .unwrap()
            .ready,
        1
    );
    // Scaling the identities removes the highest ordinal.
    e.apply_group(&v1, 2).await.unwrap();
    let ids: Vec<String> = e
        .instances(&v1.key())
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, ["game-0", "game-1"]);
    assert!(e.move_identity(&v2, 5).await.is_err());
    assert!(
        e.move_identity(&spec("game", "v2"), 0).await.is_err(),
        "stateless spec"
    );
    let err = e.delete_group(&v1.key(), &v1.revision()).await;
    assert!(err.is_ok(), "all identities at v1 now: {err:?}");
}

#[tokio::test]
async fn events_stream_and_invalid_specs() {
    let clock = ManualClock::new();
    let e = engine(&clock);
    let mut events = e.events();
    let s = spec("web", "v1");
    e.apply_group(&s, 1).await.unwrap();
    clock.advance(Duration::from_secs(2));
    e.groups(&s.key()).await.unwrap();
    let mut reasons = Vec::new();
    for _ in 0..3 {
        reasons.push(events.next().await.unwrap().reason);
    }
    assert_eq!(reasons, ["Scheduled", "Started", "Ready"]);
    let bad = AppSpec::new("Bad_Name", vec![]);
    let err = e.apply_group(&bad, 1).await.unwrap_err().to_string();
    assert!(err.contains("name"), "{err}");
    assert!(e.apps().await.unwrap().len() == 1);
}

#[tokio::test]
async fn stateful_identities_start_in_ordinal_order_each_after_the_previous_is_ready() {
    let clock = ManualClock::new();
    let e = engine(&clock);
    let game = spec("game", "v1").kind(WorkloadKind::Stateful);
    let g = e.apply_group(&game, 3).await.unwrap();
    assert_eq!((g.desired, g.current, g.ready), (3, 3, 0));
    let phases = |instances: Vec<rorqual_core::model::Instance>| {
        instances
            .into_iter()
            .map(|i| (i.id, i.phase, i.ready))
            .collect::<Vec<_>>()
    };
    let now = phases(e.instances(&game.key()).await.unwrap());
    assert_eq!(
        now,
        [
            ("game-0".to_owned(), InstancePhase::Starting, false),
            ("game-1".to_owned(), InstancePhase::Pending, false),
            ("game-2".to_owned(), InstancePhase::Pending, false),
        ],
        "only ordinal 0 starts at first"
    );
    let waiting = e.instances(&game.key()).await.unwrap()[2].reason.clone();
    assert_eq!(waiting.as_deref(), Some("waiting for game-0 to be ready"));
    clock.advance(Duration::from_secs(2));
    let now = phases(e.instances(&game.key()).await.unwrap());
    assert_eq!(
        now,
        [
            ("game-0".to_owned(), InstancePhase::Running, true),
            ("game-1".to_owned(), InstancePhase::Starting, false),
            ("game-2".to_owned(), InstancePhase::Pending, false),
        ],
        "game-1 starts once game-0 is ready"
    );
    clock.advance(Duration::from_secs(2));
    assert_eq!(e.groups(&game.key()).await.unwrap()[0].ready, 2);
    clock.advance(Duration::from_secs(2));
    assert_eq!(e.groups(&game.key()).await.unwrap()[0].ready, 3);
    // Read once, much later: the start times still chain (ready at 2, 4 and 6 s).
    let clock2 = ManualClock::new();
    let e2 = engine(&clock2);
    e2.apply_group(&game, 3).await.unwrap();
    clock2.advance(Duration::from_secs(5));
    assert_eq!(e2.groups(&game.key()).await.unwrap()[0].ready, 2);
    // A never-ready identity holds back the ones above it.
    let clock3 = ManualClock::new();
    let e3 = engine(&clock3);
    e3.inject(Fault::never_ready_instance("game-1"));
    e3.apply_group(&game, 3).await.unwrap();
    clock3.advance(Duration::from_secs(60));
    let now = phases(e3.instances(&game.key()).await.unwrap());
    assert_eq!(now[2].1, InstancePhase::Pending, "{now:?}");
}
