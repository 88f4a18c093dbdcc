//! LocalEngine with real processes: probes, restarts, graceful stop, stateful identities,
//! Pending on capacity, logs.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use futures::StreamExt;
use rorqual_core::engine::{Engine, LogOptions};
use rorqual_core::model::{
    AppSpec, ContainerSpec, InstancePhase, Probe, ProbeAction, Resources, WorkloadKind,
};
use rorqual_testkit::demo_bin;
use rorqual_testkit::local::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_http_tcp_and_exec_probes() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_owned());
    let engine = builder(dir.path(), 21000).build().await.unwrap();
    let events = record_events(engine.events());

    // HTTP probe: the app only listens after 3 s.
    let mut web = demo("web");
    web.containers[0] = web.containers[0]
        .clone()
        .env("DEMO_STARTUP_DELAY_MS", "3000");
    let status = engine.apply_group(&web, 2).await.unwrap();
    assert_eq!((status.desired, status.current, status.ready), (2, 2, 0));
    let early = engine.instances(&web.key()).await.unwrap();
    assert!(
        early.iter().all(|i| !i.ready),
        "not ready before the app listens: {early:?}"
    );
    let ready = all_ready(&engine, &web.key(), 2).await;
    for i in &ready {
        assert_eq!(i.phase, InstancePhase::Running);
        let (code, body) = http_get(i.endpoint("http").unwrap(), "/").await.unwrap();
        assert_eq!((code, body.as_str()), (200, "v1\n"));
    }
    let groups = engine.groups(&web.key()).await.unwrap();
    assert_eq!(
        (groups[0].desired, groups[0].ready, groups[0].available),
        (2, 2, 2)
    );

    // TCP probe.
    let tcp = AppSpec::new(
        "tcp",
        vec![
            ContainerSpec::new("app", [demo_bin()])
                .port("http", 8080)
                .readiness(Probe::tcp("http").period(0.1)),
        ],
    );
    engine.apply_group(&tcp, 1).await.unwrap();
    all_ready(&engine, &tcp.key(), 1).await;

    // Exec probe, run in the instance's working directory.
    let exec = AppSpec::new(
        "exec",
        vec![
            ContainerSpec::new("app", ["sh", "-c", "sleep 3; touch ready; exec sleep 600"])
                .readiness(
                    Probe::new(ProbeAction::Exec {
                        command: vec!["test".into(), "-f".into(), "ready".into()],
                    })
                    .period(0.1),
                ),
        ],
    )
    .grace_period_seconds(1);
    engine.apply_group(&exec, 1).await.unwrap();
    let i = &engine.instances(&exec.key()).await.unwrap()[0];
    assert!(!i.ready);
    all_ready(&engine, &exec.key(), 1).await;

    let lines = wait_event(&events, "Ready", |l| l.starts_with("Ready ")).await;
    for reason in ["Scheduled ", "Started ", "Ready "] {
        assert!(
            lines.iter().any(|l| l.starts_with(reason)),
            "no {reason} event in {lines:#?}"
        );
    }
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_is_restarted_and_crash_loops_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_owned());
    let engine = builder(dir.path(), 21500).build().await.unwrap();
    let events = record_events(engine.events());
    let web = demo("web");
    engine.apply_group(&web, 1).await.unwrap();
    let before = all_ready(&engine, &web.key(), 1).await.remove(0);
    let pid = engine.pids(&before.id).unwrap()[0];
    kill9(pid);
    let after = wait_for(30, "restart after kill -9", || async {
        let i = engine.instances(&web.key()).await.unwrap().remove(0);
        (i.restarts == 1 && i.ready).then_some(i)
    })
    .await;
    assert_eq!(after.id, before.id);
    assert_ne!(engine.pids(&after.id).unwrap()[0], pid);
    let (code, _) = http_get(after.endpoint("http").unwrap(), "/")
        .await
        .unwrap();
    assert_eq!(code, 200);
    wait_event(&events, "BackOff after kill -9", |l| {
        l.starts_with("BackOff") && l.contains("killed by signal 9")
    })
    .await;

    // A process that keeps failing: CrashLoopBackOff with the exit reason, growing delays.
    let crash = AppSpec::new(
        "crash",
        vec![ContainerSpec::new("app", ["sh", "-c", "echo boom; exit 3"])],
    );
    engine.apply_group(&crash, 1).await.unwrap();
    let i = wait_for(30, "crash loop", || async {
        let i = engine.instances(&crash.key()).await.unwrap().remove(0);
        (i.phase == InstancePhase::CrashLoopBackOff && i.restarts >= 3).then_some(i)
    })
    .await;
    assert_eq!(i.reason.as_deref(), Some("exit code 3"));
    let log: Vec<String> = engine
        .logs(&i.id, LogOptions::all())
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert!(log.iter().filter(|l| *l == "boom").count() >= 3, "{log:?}");
    let backoffs: Vec<String> = wait_for(30, "two BackOff events", || async {
        let b: Vec<String> = event_lines(&events)
            .into_iter()
            .filter(|l| l.starts_with("BackOff") && l.contains("exit code 3"))
            .collect();
        (b.len() >= 2).then_some(b)
    })
    .await;
    assert!(backoffs[0].contains("back-off 100ms"), "{backoffs:?}");
    assert!(backoffs[1].contains("back-off 200ms"), "{backoffs:?}");

    // A failing liveness probe restarts a process that is still running.
    let sick = AppSpec::new(
        "sick",
        vec![
            ContainerSpec::new("app", [demo_bin()])
                .port("http", 8080)
                .liveness(
                    Probe::http("/missing", "http")
                        .period(0.1)
                        .failure_threshold(2),
                ),
        ],
    );
    engine.apply_group(&sick, 1).await.unwrap();
    wait_for(30, "liveness restart", || async {
        let i = engine.instances(&sick.key()).await.unwrap().remove(0);
        (i.restarts >= 1).then_some(())
    })
    .await;
    wait_event(&events, "Unhealthy (liveness)", |l| {
        l.starts_with("Unhealthy")
            && l.contains("liveness probe failed")
            && l.contains("status 404")
    })
    .await;
    engine.shutdown().await.unwrap();
    assert!(!pid_alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_honours_sigterm_and_kills_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_owned());
    let engine = builder(dir.path(), 22000).build().await.unwrap();
    let events = record_events(engine.events());

    // The demo app exits on SIGTERM: deleting it takes far less than its 10 s grace period.
    let web = demo("web").grace_period_seconds(10);
    engine.apply_group(&web, 1).await.unwrap();
    let i = all_ready(&engine, &web.key(), 1).await.remove(0);
    let pid = engine.pids(&i.id).unwrap()[0];
    let t = Instant::now();
    engine
        .delete_group(&web.key(), &web.revision())
        .await
        .unwrap();
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(9),
        "SIGTERM honoured (grace period 10 s), took {took:?}"
    );
    assert!(!pid_alive(pid));
    assert!(engine.instances(&web.key()).await.unwrap().is_empty());

    // A process (and its child) ignoring SIGTERM is killed after the 1 s grace period.
    let stubborn = AppSpec::new(
        "stubborn",
        vec![ContainerSpec::new(
            "app",
            [
                "sh",
                "-c",
                "trap '' TERM; sleep 600 & while true; do sleep 0.1; done",
            ],
        )],
    )
    .grace_period_seconds(1);
    engine.apply_group(&stubborn, 1).await.unwrap();
    let i = all_ready(&engine, &stubborn.key(), 1).await.remove(0);
    let pid = engine.pids(&i.id).unwrap()[0];
    // Wait for the background `sleep 600` to exist, then remember the group's members.
    let group: Vec<u32> = wait_for(10, "child process", || async {
        let members = process_group_members(pid);
        (members.len() >= 2).then_some(members)
    })
    .await;
    let t = Instant::now();
    engine
        .delete_group(&stubborn.key(), &stubborn.revision())
        .await
        .unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(950),
        "grace period waited, took {took:?}"
    );
    assert!(
        took < Duration::from_secs(15),
        "SIGKILL after the grace period, took {took:?}"
    );
    wait_for(10, "process group gone", || async {
        group.iter().all(|p| !pid_alive(*p)).then_some(())
    })
    .await;
    wait_event(&events, "Killing", |l| l.starts_with("Killing")).await;
    engine.shutdown().await.unwrap();
}

fn process_group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        if fields.get(2) == Some(&pgid.to_string().as_str()) && pid_alive(pid) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_identities_keep_node_and_ports_across_restart_and_move() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_owned());
    let engine = builder(dir.path(), 22500).build().await.unwrap();
    let events = record_events(engine.events());
    let v1 = demo("game").kind(WorkloadKind::Stateful);
    engine.apply_group(&v1, 3).await.unwrap();
    let first = all_ready(&engine, &v1.key(), 3).await;
    let ids: Vec<&str> = first.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["game-0", "game-1", "game-2"]);
    assert_eq!(
        first.iter().map(|i| i.ordinal).collect::<Vec<_>>(),
        [Some(0), Some(1), Some(2)]
    );

    // Ordered start: game-k starts only after game-(k-1) is ready.
    let lines = wait_event(&events, "Ready game-2", |l| l.starts_with("Ready game-2")).await;
    let pos = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in {lines:#?}"))
    };
    assert!(pos("Ready game-0") < pos("Started game-1"), "{lines:#?}");
    assert!(pos("Ready game-1") < pos("Started game-2"), "{lines:#?}");

    // A crash keeps the identity's node and ports.
    let g1 = first[1].clone();
    kill9(engine.pids("game-1").unwrap()[0]);
    let again = wait_for(30, "game-1 restarted", || async {
        let i = engine.instances(&v1.key()).await.unwrap().remove(1);
        (i.restarts == 1 && i.ready).then_some(i)
    })
    .await;
    assert_eq!(
        (&again.node, &again.ports, again.address),
        (&g1.node, &g1.ports, g1.address)
    );

    // Moving game-1 to v2 in place keeps node and ports; the others stay on v1.
    let mut v2 = v1.clone();
    v2.containers[0] = v2.containers[0].clone().env("DEMO_VERSION", "v2");
    let moved = engine.move_identity(&v2, 1).await.unwrap();
    assert_eq!(moved.revision, v2.revision());
    let moved = wait_for(30, "game-1 ready on v2", || async {
        let i = engine.instances(&v1.key()).await.unwrap().remove(1);
        (i.ready && i.revision == v2.revision()).then_some(i)
    })
    .await;
    assert_eq!((&moved.node, &moved.ports), (&g1.node, &g1.ports));
    let (_, body) = http_get(moved.endpoint("http").unwrap(), "/")
        .await
        .unwrap();
    assert_eq!(body, "v2\n");
    let now = engine.instances(&v1.key()).await.unwrap();
    assert_eq!(now[0].revision, v1.revision());
    assert_eq!(now[2].revision, v1.revision());
    let groups = engine.groups(&v1.key()).await.unwrap();
    let counts: Vec<(String, u32)> = groups
        .iter()
        .map(|g| (g.revision.to_string(), g.desired))
        .collect();
    assert!(
        counts.contains(&(v1.revision().to_string(), 2)),
        "{counts:?}"
    );
    assert!(
        counts.contains(&(v2.revision().to_string(), 1)),
        "{counts:?}"
    );
    assert_eq!(
        engine.move_identity(&v2, 1).await.unwrap().revision,
        v2.revision(),
        "idempotent"
    );

    // Scaling down removes the highest ordinal.
    engine
        .scale_group(&v1.key(), &v1.revision(), 2)
        .await
        .unwrap();
    let left = wait_for(30, "game-2 removed", || async {
        let l = engine.instances(&v1.key()).await.unwrap();
        (l.len() == 2).then_some(l)
    })
    .await;
    assert_eq!(
        left.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["game-0", "game-1"]
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_does_not_fit_stays_pending_until_capacity_frees() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_owned());
    let engine = builder(dir.path(), 23000)
        .nodes(2)
        .node_capacity(Resources::new(1000, 1 << 30))
        .build()
        .await
        .unwrap();
    let events = record_events(engine.events());
    let big = |name: &str| {
        let mut s = demo(name);
        s.containers[0] = s.containers[0]
            .clone()
            .resources(Resources::new(600, 1 << 20));
        s
    };
    let a = big("a");
    let b = big("b");
    engine.apply_group(&a, 2).await.unwrap();
    all_ready(&engine, &a.key(), 2).await;
    engine.apply_group(&b, 1).await.unwrap();
    let pending = engine.instances(&b.key()).await.unwrap().remove(0);
    assert_eq!(pending.phase, InstancePhase::Pending);
    assert_eq!(pending.node, None);
    assert_eq!(
        pending.reason.as_deref(),
        Some("0/2 nodes available: 2 insufficient cpu"),
        "{pending:?}"
    );
    wait_event(&events, "FailedScheduling", |l| {
        l.starts_with("FailedScheduling") && l.contains("insufficient cpu")
    })
    .await;
    // Still pending a while later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        engine.instances(&b.key()).await.unwrap()[0].phase,
        InstancePhase::Pending
    );

    engine
        .scale_group(&a.key(), &a.revision(), 1)
        .await
        .unwrap();
    let placed = all_ready(&engine, &b.key(), 1).await.remove(0);
    assert!(placed.node.is_some());
    assert_eq!(placed.reason, None);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_can_be_tailed_and_followed() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_owned());
    let engine = builder(dir.path(), 23500).build().await.unwrap();
    // `late` is written only once the test has started following (it creates `go`).
    let go = dir.path().join("go");
    let script = format!(
        "for i in 1 2 3 4 5; do echo line$i; done; echo err >&2; while [ ! -e '{}' ]; do sleep 0.05; done; echo late; exec sleep 600",
        go.display()
    );
    let app = AppSpec::new(
        "talk",
        vec![ContainerSpec::new(
            "app",
            ["sh".to_owned(), "-c".to_owned(), script],
        )],
    )
    .grace_period_seconds(1);
    engine.apply_group(&app, 1).await.unwrap();
    let id = all_ready(&engine, &app.key(), 1).await.remove(0).id;
    let first: Vec<String> = wait_for(10, "six log lines", || async {
        let lines: Vec<String> = engine
            .logs(&id, LogOptions::all())
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        (lines.len() >= 6).then_some(lines)
    })
    .await;
    assert_eq!(
        &first[..6],
        ["line1", "line2", "line3", "line4", "line5", "err"]
    );
    let tail: Vec<String> = engine
        .logs(&id, LogOptions::all().tail(2))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(tail, ["line5", "err"]);
    let mut follow = engine.logs(&id, LogOptions::all().follow()).await.unwrap();
    std::fs::write(&go, "").unwrap();
    let late = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = follow.next().await {
            if line.unwrap() == "late" {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(late, "followed the line written later");
    let missing = engine.logs("nope", LogOptions::all()).await.err().unwrap();
    assert_eq!(missing.to_string(), "instance `nope` not found");
    engine.shutdown().await.unwrap();
}
