//! Stateful game servers on underlay addresses, end to end on the embedded engine: the
//! scheduler places identities only where the pool has an address left, reserves it, and the
//! bridge network attaches exactly that address; each identity keeps it across a crash
//! restart, a node loss, a scale down and up, and an in-place revision move.
//!
//! - a pool `games` of 6 addresses (10.254.7.10–15) usable from `node-1` and `node-2`; `node-3`
//!   has no underlay;
//! - `LocalEngine` on the three nodes with the full `Scheduler` (UnderlayIp fed by
//!   `AllocatorCapacity`) as placement and `BridgeNetwork` as network;
//! - a stateful app `gs` with 8 identities and `underlay: {pool: games, fixedIp: true}`.
//!
//! It prints the table of identities, nodes and addresses before and after each event, checks
//! that every identity kept its address, and exits non-zero if one did not.
//!
//! Needs root (network namespaces) and Debian's `containernetworking-plugins`:
//!
//! ```sh
//! sudo cargo run --example ipam_game_servers
//! ```
//!
//! Without root it says so and exits 0. Everything it creates (namespaces `rqg-*`, bridge
//! `rqg0`, the engine's state in a temporary directory) is removed at the end.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rorqual::core::engine::Engine;
use rorqual::core::model::{
    AppKey, AppSpec, ContainerSpec, Instance, InstancePhase, UnderlaySpec, WorkloadKind,
};
use rorqual::local::LocalEngine;
use rorqual::net::store::memory::MemoryStore;
use rorqual::net::{Allocator, AllocatorCapacity, BridgeNetwork, IpRange, PoolSpec};
use rorqual::scheduler::Scheduler;
use rorqual::scheduler::plugins::DefaultPlugins;

const BRIDGE: &str = "rqg0";
const NETNS_PREFIX: &str = "rqg-";

/// Removes the namespaces and the bridge, however the example ends.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let list = sh(&["ip", "netns", "list"]);
        for line in list.lines() {
            if let Some(name) = line.split_whitespace().next()
                && name.starts_with(NETNS_PREFIX)
            {
                sh(&["ip", "netns", "del", name]);
            }
        }
        sh(&["ip", "link", "del", BRIDGE]);
    }
}

fn sh(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn game_server(version: &str) -> AppSpec {
    AppSpec::new(
        "gs",
        vec![
            ContainerSpec::new("server", ["sleep", "600"])
                .port("game", 7777)
                .env("VERSION", version),
        ],
    )
    .kind(WorkloadKind::Stateful)
    .underlay(UnderlaySpec {
        pool: Some("games".into()),
        fixed_ip: true,
    })
    .grace_period_seconds(1)
}

/// Identity ordinal → its instance.
type Table = BTreeMap<u32, Instance>;

async fn table(engine: &LocalEngine, app: &AppKey) -> anyhow::Result<Table> {
    Ok(engine
        .instances(app)
        .await?
        .into_iter()
        .filter(|i| i.phase != InstancePhase::Stopped && i.phase != InstancePhase::Terminating)
        .filter_map(|i| Some((i.ordinal?, i)))
        .collect())
}

fn print(title: &str, t: &Table) {
    println!("\n== {title}");
    println!(
        "{:<6} {:<9} {:<8} {:<14} {:<9} note",
        "id", "revision", "node", "address", "phase"
    );
    for i in t.values() {
        println!(
            "{:<6} {:<9} {:<8} {:<14} {:<9} {}",
            i.id,
            &i.revision.to_string()[..8.min(i.revision.to_string().len())],
            i.node.as_deref().unwrap_or("-"),
            i.address.map_or("-".to_owned(), |a| a.to_string()),
            format!("{:?}", i.phase),
            i.reason.as_deref().unwrap_or("")
        );
    }
}

/// Waits until exactly `running` identities run (with a process), the rest are Pending, and
/// `done` holds.
async fn settle(
    engine: &LocalEngine,
    app: &AppKey,
    running: usize,
    what: &str,
    done: impl Fn(&Table) -> bool,
) -> anyhow::Result<Table> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = table(engine, app).await?;
        let up = t
            .values()
            .filter(|i| {
                i.phase == InstancePhase::Running && engine.pids(&i.id).is_ok_and(|p| !p.is_empty())
            })
            .count();
        let rest_pending = t
            .values()
            .all(|i| i.phase == InstancePhase::Running || i.phase == InstancePhase::Pending);
        if up == running && rest_pending && done(&t) {
            return Ok(t);
        }
        if Instant::now() > deadline {
            print(&format!("timed out waiting for: {what}"), &t);
            bail!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn addresses(t: &Table) -> BTreeMap<u32, IpAddr> {
    t.iter()
        .filter_map(|(o, i)| Some((*o, i.address?)))
        .collect()
}

/// Every identity of `before` that is in `after` with an address kept it, and that address
/// is on the `eth0` of its network namespace.
fn kept(event: &str, before: &BTreeMap<u32, IpAddr>, after: &Table) -> anyhow::Result<()> {
    for (ordinal, address) in before {
        let Some(i) = after.get(ordinal) else {
            continue;
        };
        let Some(now) = i.address else {
            continue;
        };
        ensure!(
            now == *address,
            "{event}: gs-{ordinal} had {address} and now has {now}"
        );
        let netns = format!("{NETNS_PREFIX}{}", i.id);
        let shown = sh(&["ip", "-n", &netns, "-4", "-o", "addr", "show", "eth0"]);
        ensure!(
            shown.contains(&format!(" {now}/")),
            "{event}: {now} is not on eth0 in {netns}: {shown}"
        );
    }
    println!("{event}: every identity kept its address (checked on eth0 in its namespace)");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    if !nix::unistd::geteuid().is_root() {
        println!("ipam_game_servers needs root to create network namespaces; run it with sudo");
        return Ok(());
    }
    if !std::path::Path::new("/usr/lib/cni/bridge").exists() {
        println!(
            "ipam_game_servers needs /usr/lib/cni/bridge: apt-get install containernetworking-plugins"
        );
        return Ok(());
    }
    let _cleanup = Cleanup;

    // The pool, its allocator and the scheduler's view of it.
    let alloc = Allocator::new(Arc::new(MemoryStore::new()));
    alloc
        .create_pool(
            PoolSpec::new("games")
                .with_range(
                    IpRange::new("10.254.7.0/24".parse()?)
                        .with_bounds("10.254.7.10".parse()?, "10.254.7.15".parse()?)
                        .with_gateway("10.254.7.1".parse()?),
                )
                .with_nodes(["node-1", "node-2"])
                .with_claim_keep_secs(3600),
        )
        .await?;
    let capacity = AllocatorCapacity::start(alloc.clone()).await?;
    let scheduler = Scheduler::new(
        DefaultPlugins::new()
            .underlay(Arc::new(capacity.clone()))
            .build()?,
    );
    let network =
        BridgeNetwork::new(alloc.clone(), "games", BRIDGE).with_netns_prefix(NETNS_PREFIX);
    let dir = tempfile::tempdir()?;
    let engine = LocalEngine::builder()
        .nodes(3)
        .state_dir(dir.path())
        .placement(Arc::new(scheduler))
        .network(Arc::new(network))
        .build()
        .await?;
    let v1 = game_server("1");
    let app = v1.key();

    // 8 identities, 6 addresses: 6 start; gs-6 waits naming the pool and its counts (and gs-7,
    // started in order, waits for gs-6).
    engine.apply_group(&v1, 8).await?;
    let t = settle(&engine, &app, 6, "6 running, 2 pending on the pool", |t| {
        t.len() == 8
            && t.get(&6).is_some_and(|i| {
                i.reason.as_deref().is_some_and(|r| {
                    r.contains("underlay pool `games` has no free address (6 of 6 taken)")
                })
            })
    })
    .await?;
    print("applied: 8 identities, 6 addresses", &t);
    ensure!(
        t.values().all(|i| i.node.as_deref() != Some("node-3")),
        "an identity was placed on node-3, which has no underlay"
    );
    let first = addresses(&t);
    ensure!(
        first.len() == 6,
        "6 identities should have addresses: {first:?}"
    );

    // A crash: the process of gs-0 is killed and restarted.
    let restarts = t[&0].restarts;
    let pid = engine
        .pids("gs-0")?
        .first()
        .copied()
        .context("gs-0 has no process")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let t = settle(&engine, &app, 6, "gs-0 restarted", |t| {
        t.get(&0).is_some_and(|i| i.restarts > restarts)
    })
    .await?;
    print("gs-0 crashed (kill -9) and restarted", &t);
    kept("crash restart", &first, &t)?;

    // A node loss: node-1's identities come back on node-2, the other host of the pool.
    let lost: Vec<u32> = t
        .iter()
        .filter(|(_, i)| i.node.as_deref() == Some("node-1"))
        .map(|(o, _)| *o)
        .collect();
    engine.set_node_ready("node-1", false)?;
    let t = settle(&engine, &app, 6, "node-1's identities on node-2", |t| {
        lost.iter().all(|o| {
            t.get(o)
                .is_some_and(|i| i.node.as_deref() == Some("node-2"))
        })
    })
    .await?;
    print(&format!("node-1 lost: {} identities moved", lost.len()), &t);
    kept("node loss", &first, &t)?;
    engine.set_node_ready("node-1", true)?;

    // Scale down to 4 and up to 6 again: gs-4 and gs-5 get their old addresses back (their
    // claims keep them meanwhile, so the pending gs-6 and gs-7 never take them).
    engine.scale_group(&app, &v1.revision(), 4).await?;
    let t = settle(&engine, &app, 4, "scaled down to 4", |t| t.len() == 4).await?;
    print("scaled down to 4", &t);
    // The removed identities detach in the background; then their claims keep 2 addresses.
    let deadline = Instant::now() + Duration::from_secs(30);
    let usage = loop {
        let usage = alloc.usage("games").await?;
        if usage.reserved == 2 || Instant::now() > deadline {
            break usage;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "pool games: {} active, {} reserved by claims, {} available",
        usage.active, usage.reserved, usage.available
    );
    ensure!(
        (usage.active, usage.reserved, usage.available) == (4, 2, 0),
        "the claims of gs-4 and gs-5 should keep 2 addresses"
    );
    engine.scale_group(&app, &v1.revision(), 6).await?;
    let t = settle(&engine, &app, 6, "scaled up to 6", |t| t.len() == 6).await?;
    print("scaled up to 6", &t);
    kept("scale down and up", &first, &t)?;

    // An in-place revision move of gs-2.
    let v2 = game_server("2");
    engine.move_identity(&v2, 2).await?;
    let t = settle(&engine, &app, 6, "gs-2 at the new revision", |t| {
        t.get(&2).is_some_and(|i| i.revision == v2.revision())
    })
    .await?;
    print("gs-2 moved in place to revision 2", &t);
    kept("in-place revision move", &first, &t)?;

    engine.delete_group(&app, &v1.revision()).await?;
    engine.delete_group(&app, &v2.revision()).await?;
    engine.shutdown().await?;
    println!("\nall checks passed");
    Ok(())
}
