//! End to end: core's `LocalEngine` running real processes inside the namespaces that
//! `BridgeNetwork` creates, with addresses from a pool (root only; required when CI=true).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rorqual_core::engine::Engine;
use rorqual_core::model::{AppSpec, ContainerSpec, InstancePhase};
use rorqual_local::LocalEngine;
use rorqual_net::store::memory::MemoryStore;
use rorqual_net::{Allocator, BridgeNetwork, IpRange, PoolSpec};

fn can_run() -> bool {
    rorqual_testkit::root::bridge_tests_can_run()
}

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command")
}

struct Cleanup {
    prefix: String,
    bridge: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let list = sh(&["ip", "netns", "list"]);
        for line in String::from_utf8_lossy(&list.stdout).lines() {
            if let Some(name) = line.split_whitespace().next()
                && name.starts_with(&self.prefix)
            {
                let _ = sh(&["ip", "netns", "del", name]);
            }
        }
        let _ = sh(&["ip", "link", "del", &self.bridge]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_engine_runs_instances_in_bridge_namespaces() {
    if !can_run() {
        return;
    }
    let id = std::process::id() % 100_000;
    let guard = Cleanup {
        prefix: format!("rqe{id}-"),
        bridge: format!("rqe{id}"),
    };
    let alloc = Allocator::new(Arc::new(MemoryStore::new()));
    alloc
        .create_pool(
            PoolSpec::new("e2e").with_range(
                IpRange::new("10.254.3.0/24".parse().unwrap())
                    .with_gateway("10.254.3.1".parse().unwrap()),
            ),
        )
        .await
        .unwrap();
    let net = BridgeNetwork::new(alloc.clone(), "e2e", guard.bridge.clone())
        .with_netns_prefix(guard.prefix.clone());
    let dir = tempfile::tempdir().unwrap();
    let engine = LocalEngine::builder()
        .nodes(1)
        .state_dir(dir.path())
        .network(Arc::new(net.clone()))
        .build()
        .await
        .unwrap();
    let spec = AppSpec::new(
        "sleeper",
        vec![ContainerSpec::new("app", ["sleep", "600"]).port("http", 8080)],
    )
    .grace_period_seconds(1);
    engine.apply_group(&spec, 2).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let instances = loop {
        let list = engine.instances(&spec.key()).await.unwrap();
        if list.len() == 2
            && list.iter().all(|i| i.phase == InstancePhase::Running)
            && list
                .iter()
                .all(|i| engine.pids(&i.id).is_ok_and(|p| !p.is_empty()))
        {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "instances did not start: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut addresses = Vec::new();
    for i in &instances {
        let address = i.address.expect("address");
        assert!(
            "10.254.3.0/24"
                .parse::<ipnet::IpNet>()
                .unwrap()
                .contains(&address)
        );
        assert_eq!(
            i.ports.get("http"),
            Some(&8080),
            "declared port in a namespace"
        );
        // The process runs in the instance's namespace (it enters it through `nsenter` just
        // after it is spawned, so allow it a moment).
        let pid = engine.pids(&i.id).unwrap()[0].to_string();
        let ns = net.netns_path(&i.id);
        let name = ns.file_name().unwrap().to_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let identify = sh(&["ip", "netns", "identify", &pid]);
            if String::from_utf8_lossy(&identify.stdout).trim() == name {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pid {pid} is not in namespace {name}: {identify:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        addresses.push((name, address));
    }
    assert_ne!(addresses[0].1, addresses[1].1);
    let ping = sh(&[
        "ip",
        "netns",
        "exec",
        &addresses[0].0,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        &addresses[1].1.to_string(),
    ]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert_eq!(alloc.usage("e2e").await.unwrap().active, 2);
    engine
        .delete_group(&spec.key(), &spec.revision())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while alloc.usage("e2e").await.unwrap().active > 0 {
        assert!(
            Instant::now() < deadline,
            "addresses not released after delete"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (name, _) in &addresses {
        assert!(
            !Path::new("/var/run/netns").join(name).exists(),
            "{name} left behind"
        );
    }
    engine.shutdown().await.unwrap();
}
