//! A registry sync sidecar: keeps a service registry in etcd in step with every allocation
//! and release in an etcd pool store, resuming where it stopped after a restart.
//!
//! ```text
//! cargo run --example ipam_registry_sync -- --etcd http://127.0.0.1:2379 \
//!     --pools /rorqual/ipam/ --registry /rorqual/registry [--registry-etcd URL]
//! ```
//!
//! The registry gets one key per Active address, `<registry>/<pool>/<ip>`, holding
//! `{"instance","ifname","identity","node","mac","state"}`, and its checkpoint (the pool
//! store's revision it reflects) at `<registry>/.revision`. It prints what it does, one line
//! per applied revision, until Ctrl-C or SIGTERM. Stop it any way you like (`kill -9`
//! included): the next run resumes after the checkpoint, or rebuilds the registry from a
//! snapshot of the pools when etcd has compacted the changes after it. Without arguments it
//! prints this usage and exits 2; it exits 1 when the sync stops on an error that needs a
//! person (overlapping prefixes, an unreadable checkpoint, a registry value it cannot parse).

use std::process::ExitCode;
use std::sync::Arc;

use rorqual::net::store::etcd::EtcdStore;
use rorqual::net::sync::{EtcdRegistry, RegistrySync, ResyncReason, SyncReport};

const USAGE: &str = "usage: ipam_registry_sync --etcd URL --pools PREFIX --registry PREFIX \
                     [--registry-etcd URL]";

fn usage(msg: &str) -> ExitCode {
    if !msg.is_empty() {
        eprintln!("{msg}");
    }
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

/// The command line.
struct Args {
    etcd: String,
    pools: String,
    registry: String,
    registry_etcd: Option<String>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut etcd, mut pools, mut registry, mut registry_etcd) = (None, None, None, None);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--etcd" => &mut etcd,
            "--pools" => &mut pools,
            "--registry" => &mut registry,
            "--registry-etcd" => &mut registry_etcd,
            other => return Err(format!("unknown argument `{other}`")),
        };
        *slot = Some(args.next().ok_or(format!("{arg} needs a value"))?);
    }
    Ok(Args {
        etcd: etcd.ok_or("--etcd is required")?,
        pools: pools.ok_or("--pools is required")?,
        registry: registry.ok_or("--registry is required")?,
        registry_etcd,
    })
}

fn print(report: &SyncReport<'_>) {
    match report {
        SyncReport::Resynced {
            reason,
            revision,
            puts,
            deletes,
        } => {
            let why = match reason {
                ResyncReason::NoCheckpoint => "no checkpoint".to_owned(),
                ResyncReason::Compacted { requested, oldest } => {
                    format!("checkpoint {requested} compacted, oldest resumable {oldest}")
                }
                _ => "resync".to_owned(),
            };
            println!("resynced revision {revision} ({why}): {puts} puts, {deletes} deletes");
        }
        SyncReport::Resumed { after } => println!("resumed after revision {after}"),
        SyncReport::Applied {
            revision,
            puts,
            deletes,
        } => println!("applied revision {revision}: {puts} puts, {deletes} deletes"),
        SyncReport::Retrying { error, delay } => {
            println!("retrying in {} ms: {error}", delay.as_millis());
        }
        _ => {}
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminated => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        return usage("");
    }
    let args = match parse(args.into_iter()) {
        Ok(a) => a,
        Err(msg) => return usage(&msg),
    };
    let store = match EtcdStore::connect(std::slice::from_ref(&args.etcd), &args.pools).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut registry = EtcdRegistry::builder(&args.registry).beside(&store);
    if let Some(url) = &args.registry_etcd {
        registry = registry.endpoints([url.clone()]);
    }
    let registry = match registry.build().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "syncing pools {} into registry {} (checkpoint {})",
        args.pools,
        registry.prefix(),
        registry.checkpoint_key()
    );
    let sync = RegistrySync::new(Arc::new(store), Arc::new(registry)).on_report(print);
    match sync.run(shutdown()).await {
        Ok(()) => {
            println!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // The chain of causes: the top error names the key, its sources say why.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("error: {text}");
            ExitCode::FAILURE
        }
    }
}
