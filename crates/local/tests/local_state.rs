//! LocalEngine's state directory: re-adoption after an engine restart, corrupt or foreign
//! directories, the lock, the file-backed state store; and invalid specs rejected up front.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use rorqual_core::Error;
use rorqual_core::engine::Engine;
use rorqual_core::model::{AppSpec, ContainerSpec, PortSpec, Probe, Protocol};
use rorqual_testkit::local::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_engine_readopts_running_instances_and_restarts_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_owned());
    let web = demo("web");
    let key = web.key();

    let engine = builder(dir.path(), 24000).build().await.unwrap();
    engine.apply_group(&web, 2).await.unwrap();
    let before = all_ready(&engine, &key, 2).await;
    let pids: Vec<u32> = before
        .iter()
        .map(|i| engine.pids(&i.id).unwrap()[0])
        .collect();
    let store = engine.state_store();
    store
        .compare_and_swap("rollout/web", None, Some(b"step 2".to_vec()))
        .await
        .unwrap();
    drop(engine);
    assert!(
        pids.iter().all(|p| pid_alive(*p)),
        "dropping the engine leaves processes running"
    );

    // Same instances, same processes, same addresses; ready again through probes.
    let engine = builder(dir.path(), 24000).build().await.unwrap();
    let adopted = all_ready(&engine, &key, 2).await;
    for (b, a) in before.iter().zip(&adopted) {
        assert_eq!(
            (&a.id, &a.ports, &a.node, a.restarts),
            (&b.id, &b.ports, &b.node, 0)
        );
    }
    let adopted_pids: Vec<u32> = adopted
        .iter()
        .map(|i| engine.pids(&i.id).unwrap()[0])
        .collect();
    assert_eq!(adopted_pids, pids, "no new processes");
    let v = engine
        .state_store()
        .get("rollout/web")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((v.value.as_slice(), v.version), (&b"step 2"[..], 1));

    // The directory is locked while an engine uses it.
    let err = builder(dir.path(), 24600).build().await.unwrap_err();
    assert!(matches!(err, Error::CorruptState { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by another LocalEngine"),
        "{err}"
    );

    // A process killed while no engine runs is restarted by the next engine; the other is kept.
    drop(engine);
    kill9(pids[0]);
    wait_for(10, "killed process gone", || async {
        (!pid_alive(pids[0])).then_some(())
    })
    .await;
    let engine = builder(dir.path(), 24000).build().await.unwrap();
    let after = wait_for(60, "restarted instance ready", || async {
        let l = engine.instances(&key).await.unwrap();
        (l.len() == 2 && l.iter().all(|i| i.ready)).then_some(l)
    })
    .await;
    assert_eq!(after[0].id, before[0].id);
    assert_eq!(after[0].restarts, 1);
    assert_ne!(engine.pids(&after[0].id).unwrap()[0], pids[0]);
    assert_eq!(engine.pids(&after[1].id).unwrap()[0], pids[1]);
    assert_eq!(after[1].restarts, 0);
    let (code, _) = http_get(after[0].endpoint("http").unwrap(), "/")
        .await
        .unwrap();
    assert_eq!(code, 200);

    // Shutdown stops everything: no orphans.
    let last: Vec<u32> = after
        .iter()
        .map(|i| engine.pids(&i.id).unwrap()[0])
        .collect();
    engine.shutdown().await.unwrap();
    wait_for(10, "no processes left", || async {
        last.iter().all(|p| !pid_alive(*p)).then_some(())
    })
    .await;
    let stopped = engine.instances(&key).await.unwrap();
    assert!(stopped.iter().all(|i| !i.ready), "{stopped:?}");
    assert!(matches!(
        engine.apply_group(&web, 1).await,
        Err(Error::ShutDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_foreign_state_dirs_are_refused_and_left_untouched() {
    // A directory holding someone else's files.
    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("notes.txt"), "mine").unwrap();
    let err = builder(foreign.path(), 25000).build().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::CorruptState { .. }), "{text}");
    assert!(
        text.contains(&foreign.path().display().to_string()),
        "{text}"
    );
    assert!(
        text.contains("not a rorqual local state directory"),
        "{text}"
    );
    let names: Vec<String> = std::fs::read_dir(foreign.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["notes.txt"], "nothing added or removed");

    // Our directory with a damaged state file.
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_owned());
    let engine = builder(dir.path(), 25000).build().await.unwrap();
    engine.apply_group(&demo("web"), 1).await.unwrap();
    engine.shutdown().await.unwrap();
    drop(engine);
    // Both slots of the engine state damaged: refused, naming them, and left as they are.
    let slots = ["engine.0", "engine.1", "engine.2"].map(|name| dir.path().join(name));
    for slot in &slots {
        std::fs::write(slot, "{\"apps\": [oops").unwrap();
    }
    let err = builder(dir.path(), 25000).build().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::CorruptState { .. }), "{text}");
    assert!(
        slots
            .iter()
            .all(|s| text.contains(&s.display().to_string()))
            && text.contains("no complete engine state"),
        "{text}"
    );
    for slot in &slots {
        assert_eq!(
            std::fs::read_to_string(slot).unwrap(),
            "{\"apps\": [oops",
            "left as it was"
        );
    }

    // A complete slot whose JSON is not an engine state: refused with the JSON error.
    let other = tempfile::tempdir().unwrap();
    let engine = builder(other.path(), 25000).build().await.unwrap();
    engine.shutdown().await.unwrap();
    drop(engine);
    for name in ["engine.0", "engine.1", "engine.2"] {
        std::fs::remove_file(other.path().join(name)).unwrap();
    }
    let legacy = other.path().join("engine.json");
    std::fs::write(&legacy, "{\"apps\": [oops").unwrap();
    let err = builder(other.path(), 25000).build().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&legacy.display().to_string()) && text.contains("invalid JSON"),
        "{text}"
    );

    // A marker of another format version.
    let marker = dir.path().join("rorqual-state.json");
    std::fs::write(&marker, r#"{"format":"rorqual-local-state","version":99}"#).unwrap();
    let err = builder(dir.path(), 25000).build().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&marker.display().to_string()) && text.contains("version 99"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        r#"{"format":"rorqual-local-state","version":99}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_rejected_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_owned());
    let engine = builder(dir.path(), 25500).build().await.unwrap();
    let mut bad = AppSpec::new(
        "bad",
        vec![
            ContainerSpec::new("app", Vec::<String>::new()).port("http", 8080),
            ContainerSpec::new("app", ["/bin/true"]).readiness(Probe::http("/", "admin")),
        ],
    );
    bad.containers[0].ports.push(PortSpec {
        name: "zero".into(),
        number: 0,
        protocol: Protocol::Tcp,
    });
    let err = engine.apply_group(&bad, 3).await.unwrap_err();
    let Error::Invalid(errors) = &err else {
        panic!("expected a validation error, got {err}");
    };
    let text = err.to_string();
    assert_eq!(errors.errors.len(), 4, "{text}");
    for expected in [
        "containers[0].command: required by the local engine",
        "containers[0].ports[1].number: must be 1-65535, got 0",
        "containers[1].name: duplicate container name \"app\"",
        "containers[1].readinessProbe.port: refers to undeclared port admin",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    assert!(
        engine.apps().await.unwrap().is_empty(),
        "nothing was created"
    );
    assert!(
        !dir.path().join("instances").exists(),
        "nothing was started"
    );

    // A bad quantity is rejected when the spec is read.
    let yaml =
        "name: q\ncontainers:\n- name: app\n  command: [/bin/true]\n  resources: {cpu: 5x}\n";
    let err = AppSpec::from_yaml(yaml).unwrap_err().to_string();
    assert!(err.contains("5x"), "{err}");

    // Builder validation lists every problem.
    let err = rorqual_local::LocalEngine::builder()
        .restart_backoff(
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(1),
        )
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("at least one node") && err.contains("exceeds its cap"),
        "{err}"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pid_is_neither_adopted_nor_killed() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_owned());
    let web = demo("reuse");
    let key = web.key();
    let engine = builder(dir.path(), 26200).build().await.unwrap();
    engine.apply_group(&web, 1).await.unwrap();
    let before = all_ready(&engine, &key, 1).await;
    let pid = engine.pids(&before[0].id).unwrap()[0];
    drop(engine);

    // The recorded process dies while no engine runs and its PID goes to an unrelated process:
    // rewrite the record to name a live foreign process (`sleep`) with a start time that is
    // not its own, which is what a reused PID looks like.
    kill9(pid);
    wait_for(10, "recorded process gone", || async {
        (!pid_alive(pid)).then_some(())
    })
    .await;
    let mut foreign = std::process::Command::new("sleep")
        .arg("120")
        .spawn()
        .unwrap();
    let foreign_pid = foreign.id();
    // Rewritten as an earlier version's single `engine.json` (read when no slot was written).
    let mut state = newest_engine_state(dir.path()).unwrap();
    let process = &mut state["instances"][&before[0].id]["containers"][0]["process"];
    assert_eq!(process["pid"].as_i64(), Some(i64::from(pid)), "{state}");
    process["pid"] = serde_json::json!(foreign_pid);
    for name in ["engine.0", "engine.1", "engine.2"] {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    std::fs::write(
        dir.path().join("engine.json"),
        serde_json::to_vec(&state).unwrap(),
    )
    .unwrap();

    let engine = builder(dir.path(), 26200).build().await.unwrap();
    let after = wait_for(60, "instance restarted on a new process", || async {
        let l = engine.instances(&key).await.unwrap();
        (l.len() == 1 && l[0].ready).then_some(l)
    })
    .await;
    assert_eq!(after[0].id, before[0].id);
    let new_pid = engine.pids(&after[0].id).unwrap()[0];
    assert_ne!(new_pid, foreign_pid, "the foreign process was not adopted");
    assert_eq!(after[0].restarts, 1, "{after:?}");
    assert!(
        pid_alive(foreign_pid),
        "the process now owning the PID is not the engine's and is left alone"
    );
    engine.shutdown().await.unwrap();
    assert!(
        pid_alive(foreign_pid),
        "shutdown leaves the foreign process alone"
    );
    foreign.kill().unwrap();
    foreign.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_engine_on_a_temporary_directory_leaves_no_process() {
    let engine = rorqual_local::LocalEngine::builder()
        .nodes(1)
        .network(std::sync::Arc::new(
            rorqual_local::HostNetwork::with_port_range(27200..=27299),
        ))
        .build()
        .await
        .unwrap();
    let web = demo("temp");
    engine.apply_group(&web, 2).await.unwrap();
    let ready = all_ready(&engine, &web.key(), 2).await;
    let pids: Vec<u32> = ready
        .iter()
        .map(|i| engine.pids(&i.id).unwrap()[0])
        .collect();
    let dir = engine.state_dir().to_owned();
    // No later engine could find a temporary directory, so dropping must not orphan.
    drop(engine);
    assert!(!dir.exists(), "{} is removed", dir.display());
    wait_for(10, "processes of the dropped engine gone", || async {
        pids.iter().all(|p| !pid_alive(*p)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_holding_only_a_stale_lock_is_still_fresh() {
    // What an engine that died between taking the lock and writing its marker leaves behind.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lock"), "12345").unwrap();
    let engine = builder(dir.path(), 26700).build().await.unwrap();
    assert!(dir.path().join("rorqual-state.json").exists());
    engine.shutdown().await.unwrap();
}
