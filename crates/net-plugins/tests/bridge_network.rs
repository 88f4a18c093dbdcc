//! `BridgeNetwork` (core's `Network` seam) on a real bridge with test-created namespaces
//! (root only; required when CI=true).
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;

use rorqual_core::model::{AppKey, PortSpec, Protocol};
use rorqual_core::network::{AttachRequest, Network};
use rorqual_net::store::memory::MemoryStore;
use rorqual_net::{Allocator, BridgeNetwork, IpRange, IpState, PoolSpec};

fn can_run() -> bool {
    rorqual_testkit::root::bridge_tests_can_run()
}

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command")
}

/// Removes every namespace with the test's prefix and the bridge, even on panic.
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

fn request(instance: &str, ordinal: Option<u32>) -> AttachRequest {
    let ports = vec![PortSpec {
        name: "http".into(),
        number: 8080,
        protocol: Protocol::Tcp,
    }];
    let mut r = AttachRequest::new(instance, AppKey::new("games", "db"), "node-1", ports);
    r.ordinal = ordinal;
    r
}

#[tokio::test]
async fn attach_ping_detach_and_keep_a_stateful_address() {
    if !can_run() {
        return;
    }
    let id = std::process::id() % 100_000;
    let guard = Cleanup {
        prefix: format!("rqn{id}-"),
        bridge: format!("rqb{id}"),
    };
    let alloc = Allocator::new(Arc::new(MemoryStore::new()));
    alloc
        .create_pool(
            PoolSpec::new("lan")
                .with_range(
                    IpRange::new("10.252.9.0/24".parse().unwrap())
                        .with_gateway("10.252.9.1".parse().unwrap()),
                )
                .with_claim_keep_secs(600),
        )
        .await
        .unwrap();
    let net = BridgeNetwork::new(alloc.clone(), "lan", guard.bridge.clone())
        .with_netns_prefix(guard.prefix.clone());
    let db = net.attach(&request("db-0", Some(0))).await.unwrap();
    let web = net.attach(&request("web-x1", None)).await.unwrap();
    assert_ne!(db.address, web.address);
    assert_eq!(db.ports.get("http"), Some(&8080));
    let db_ns = db.netns.clone().unwrap();
    assert!(db_ns.exists());
    assert_eq!(
        net.attach(&request("db-0", Some(0))).await.unwrap(),
        db,
        "attach is idempotent"
    );
    // The pool's MAC is on the interface.
    let state = alloc.pool("lan").await.unwrap();
    let mac = state.mac_of(db.address).to_string();
    let name = db_ns.file_name().unwrap().to_str().unwrap().to_owned();
    let link = sh(&["ip", "netns", "exec", &name, "ip", "link", "show", "eth0"]);
    assert!(
        String::from_utf8_lossy(&link.stdout).contains(&mac),
        "{link:?}"
    );
    // Namespace to namespace, and host to namespace through the bridge's gateway address.
    let ping = sh(&[
        "ip",
        "netns",
        "exec",
        &name,
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        &web.address.to_string(),
    ]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let ping = sh(&["ping", "-c", "1", "-W", "2", &db.address.to_string()]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // A restart of the stateful identity keeps its address; the namespace goes and comes back.
    net.detach("db-0").await.unwrap();
    net.detach("db-0").await.unwrap();
    assert!(!db_ns.exists());
    assert_eq!(
        alloc.pool("lan").await.unwrap().state_of(db.address),
        Some(IpState::Reserved)
    );
    let again = net.attach(&request("db-0", Some(0))).await.unwrap();
    assert_eq!(again.address, db.address);
    net.detach("db-0").await.unwrap();
    net.detach("web-x1").await.unwrap();
    assert_eq!(alloc.usage("lan").await.unwrap().active, 0);
    assert!(!web.netns.unwrap().exists());
}
