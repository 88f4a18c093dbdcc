//! An IP pool on a Linux bridge: two instances in their own network namespaces reach each
//! other, and a stateful instance keeps its fixed address across a restart.
//!
//! Needs root (network namespaces) and Debian's `containernetworking-plugins`:
//!
//! ```sh
//! sudo cargo run --example ipam_cni_bridge
//! ```
//!
//! Without root it says so and exits 0. Everything it creates (namespaces `rqx-*`, bridge
//! `rqx0`, a pool file in a temporary directory) is removed at the end.

use std::process::Command;
use std::sync::Arc;

use rorqual::core::model::{AppKey, PortSpec, Protocol};
use rorqual::core::network::{AttachRequest, Network};
use rorqual::net::store::file::FileStore;
use rorqual::net::{Allocator, BridgeNetwork, IpRange, PoolSpec};

fn request(instance: &str, ordinal: Option<u32>) -> AttachRequest {
    let ports = vec![PortSpec {
        name: "game".into(),
        number: 7777,
        protocol: Protocol::Udp,
    }];
    let mut r = AttachRequest::new(instance, AppKey::new("games", "lobby"), "node-1", ports);
    r.ordinal = ordinal;
    r
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        println!("ipam_cni_bridge needs root to create network namespaces; run it with sudo");
        return Ok(());
    }
    if !std::path::Path::new("/usr/lib/cni/bridge").exists() {
        println!(
            "ipam_cni_bridge needs /usr/lib/cni/bridge: apt-get install containernetworking-plugins"
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    // A durable pool: a /24 with a gateway, one excluded address, and claims kept for 10 min.
    let allocator = Allocator::new(Arc::new(FileStore::open(dir.path())?));
    allocator
        .create_pool(
            PoolSpec::new("lobby")
                .with_range(
                    IpRange::new("10.253.0.0/24".parse()?).with_gateway("10.253.0.1".parse()?),
                )
                .with_exclude("10.253.0.2/32".parse()?)
                .with_claim_keep_secs(600),
        )
        .await?;
    let net = BridgeNetwork::new(allocator.clone(), "lobby", "rqx0").with_netns_prefix("rqx-");
    let result = run(&net, &allocator).await;
    for instance in ["lobby-0", "lobby-web"] {
        let _ = net.detach(instance).await;
    }
    let _ = Command::new("ip").args(["link", "del", "rqx0"]).status();
    result
}

async fn run(net: &BridgeNetwork, allocator: &Allocator) -> anyhow::Result<()> {
    let db = net.attach(&request("lobby-0", Some(0))).await?;
    let web = net.attach(&request("lobby-web", None)).await?;
    println!(
        "lobby-0   {} in {}",
        db.address,
        db.netns
            .as_ref()
            .map_or(String::new(), |p| p.display().to_string())
    );
    println!(
        "lobby-web {} in {}",
        web.address,
        web.netns
            .as_ref()
            .map_or(String::new(), |p| p.display().to_string())
    );
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            "rqx-lobby-web",
            "ping",
            "-c",
            "1",
            "-W",
            "2",
        ])
        .arg(db.address.to_string())
        .output()?;
    println!(
        "ping lobby-web -> lobby-0: {}",
        if ping.status.success() {
            "ok"
        } else {
            "FAILED"
        }
    );
    net.detach("lobby-0").await?;
    println!(
        "lobby-0 stopped; its address is {:?} for its identity",
        allocator.pool("lobby").await?.state_of(db.address)
    );
    let again = net.attach(&request("lobby-0", Some(0))).await?;
    println!(
        "lobby-0 restarted with {} ({})",
        again.address,
        if again.address == db.address {
            "same fixed address"
        } else {
            "a different address!"
        }
    );
    let usage = allocator.usage("lobby").await?;
    println!(
        "pool lobby: {} active, {} available",
        usage.active, usage.available
    );
    anyhow::ensure!(
        ping.status.success() && again.address == db.address,
        "the example did not behave as expected"
    );
    Ok(())
}
