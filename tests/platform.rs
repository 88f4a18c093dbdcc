//! Cross-crate test: the embedded LocalEngine placing real processes with rorqual-scheduler's
//! full `Scheduler` as its `Placement`, everything reached through the `rorqual` facade.
//!
//! A plain `main` (no libtest harness) so that this binary can also serve as the demo app:
//! re-executed with `--demo-app`, it runs `rorqual_testkit::demo` instead of the tests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rorqual::prelude::*;
use rorqual::scheduler::Scheduler;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEMO_APP_ARG: &str = "--demo-app";

fn main() -> std::process::ExitCode {
    if std::env::args().any(|a| a == DEMO_APP_ARG) {
        return rorqual_testkit::demo::run_from_env();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let tests: [(&str, fn() -> _); 1] = [(
        "scheduler_places_a_stateful_app_on_the_local_engine",
        || Box::pin(scheduler_places_a_stateful_app_on_the_local_engine()),
    )];
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        let fut: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> = test();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(fut)));
        match outcome {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn game(version: &str) -> AppSpec {
    let exe = std::env::current_exe().unwrap().display().to_string();
    AppSpec::new(
        "game",
        vec![
            ContainerSpec::new("server", [exe])
                .args([DEMO_APP_ARG])
                .env("DEMO_VERSION", version)
                .port("http", 8080)
                .resources(Resources::new(1500, 256 << 20))
                .readiness(Probe::http("/healthz", "http").period(0.1)),
        ],
    )
    .kind(WorkloadKind::Stateful)
    .replicas(3)
    .grace_period_seconds(5)
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

async fn all_ready(engine: &LocalEngine, app: &AppKey, n: usize) -> Vec<Instance> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = engine.instances(app).await.unwrap();
        if list.len() == n && list.iter().all(|i| i.ready) {
            return list;
        }
        assert!(Instant::now() < deadline, "not all ready in 60 s: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scheduler_places_a_stateful_app_on_the_local_engine() {
    let dir = tempfile::tempdir().unwrap();
    // Three nodes of 2 CPUs: one 1.5-CPU server fits per node, so the scheduler must spread.
    let engine = LocalEngine::builder()
        .nodes(3)
        .node_capacity(Resources::new(2000, 4 << 30))
        .placement(Arc::new(Scheduler::with_default_plugins()))
        .network(Arc::new(HostNetwork::with_port_range(26000..=26099)))
        .state_dir(dir.path())
        .build()
        .await
        .unwrap();
    let v1 = game("v1");
    let key = v1.key();
    engine.apply_group(&v1, 3).await.unwrap();
    let ready = all_ready(&engine, &key, 3).await;
    let mut nodes: Vec<_> = ready.iter().map(|i| i.node.clone().unwrap()).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "one server per node: {ready:?}");
    let ids: Vec<&str> = ready.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["game-0", "game-1", "game-2"]);
    for instance in &ready {
        let body = get(instance.endpoint("http").unwrap(), "/").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("v1"), "{body}");
    }

    // A fourth identity does not fit anywhere: it stays Pending with the scheduler's reason.
    engine.scale_group(&key, &v1.revision(), 4).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let pending = loop {
        let list = engine.instances(&key).await.unwrap();
        if let Some(p) = list
            .iter()
            .find(|i| i.phase == InstancePhase::Pending && i.reason.is_some())
        {
            break p.clone();
        }
        assert!(Instant::now() < deadline, "no Pending instance: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(pending.id, "game-3");
    let reason = pending.reason.unwrap();
    assert!(reason.to_lowercase().contains("cpu"), "{reason}");

    // Back to three: the identities keep their nodes (sticky identity) across a restart.
    engine.scale_group(&key, &v1.revision(), 3).await.unwrap();
    let game1 = ready[1].clone();
    let pid = engine.pids(&game1.id).unwrap()[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = all_ready(&engine, &key, 3).await;
        let again = list.iter().find(|i| i.id == game1.id).unwrap();
        if again.restarts >= 1 {
            assert_eq!(again.node, game1.node, "same node after a restart");
            assert_eq!(again.ports, game1.ports, "same port after a restart");
            break;
        }
        assert!(Instant::now() < deadline, "no restart seen: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    engine.shutdown().await.unwrap();
}
