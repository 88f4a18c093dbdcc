//! Quickstart: the embedded LocalEngine running a real HTTP app.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Starts a LocalEngine with 3 virtual nodes, deploys the demo app v1 with 3 replicas, shows
//! the instances, requests each one, scales to 5, kills one process with `kill -9` and watches
//! the engine restart it, then shuts everything down. The demo app is this same binary
//! re-executed with `--demo-app`, so nothing else needs building.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rorqual::local::LocalEngine;
use rorqual::prelude::*;
use rorqual_testkit::demo;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--demo-app") {
        return demo::run_from_env();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let engine = LocalEngine::builder()
        .nodes(3)
        .restart_backoff(Duration::from_millis(500), Duration::from_secs(10))
        .build()
        .await?;
    println!(
        "LocalEngine up: 3 virtual nodes, state in {}",
        engine.state_dir().display()
    );
    let result = steps(&engine, &exe.to_string_lossy()).await;
    let mut pids = Vec::new();
    for app in engine.apps().await? {
        for i in engine.instances(&app).await? {
            pids.extend(engine.pids(&i.id)?);
        }
    }
    engine.shutdown().await?;
    let left: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
    result?;
    if !left.is_empty() {
        bail!("processes left behind: {left:?}");
    }
    println!(
        "\nshut down: every process stopped; finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn steps(engine: &LocalEngine, exe: &str) -> anyhow::Result<()> {
    let spec = AppSpec::new(
        "demo",
        vec![
            ContainerSpec::new("app", [exe])
                .args(["--demo-app"])
                .env("DEMO_VERSION", "v1")
                .port("http", 8080)
                .resources(Resources::new(250, 64 << 20))
                .readiness(Probe::http("/healthz", "http").period(0.2)),
        ],
    )
    .grace_period_seconds(5);
    let key = spec.key();
    println!(
        "\ndeploying {key} v1 (revision {}) with 3 replicas",
        spec.revision()
    );
    engine.apply_group(&spec, 3).await?;
    wait_ready(engine, &key, 3).await?;
    print_table(&engine.instances(&key).await?);

    println!("\nrequesting each instance:");
    let client = reqwest::Client::new();
    for i in engine.instances(&key).await? {
        let addr = i.endpoint("http").context("instance without an endpoint")?;
        let resp = client.get(format!("http://{addr}/")).send().await?;
        let status = resp.status();
        let version = resp
            .headers()
            .get("x-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let body = resp.text().await?;
        println!(
            "  GET http://{addr}/ -> {status}, X-Version: {version}, body: {:?}",
            body
        );
    }

    println!("\nscaling to 5 replicas");
    engine.scale_group(&key, &spec.revision(), 5).await?;
    wait_ready(engine, &key, 5).await?;
    print_table(&engine.instances(&key).await?);

    let victim = engine.instances(&key).await?.remove(0);
    let pid = *engine
        .pids(&victim.id)?
        .first()
        .context("instance has no process")?;
    println!(
        "\nkilling {} (pid {pid}) from outside: kill -9 {pid}",
        victim.id
    );
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -9 {pid} failed");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_phase = None;
    loop {
        let i = engine
            .instances(&key)
            .await?
            .into_iter()
            .find(|i| i.id == victim.id)
            .context("instance vanished")?;
        if last_phase != Some(i.phase) {
            println!(
                "  {}: {} restarts={} {}",
                i.id,
                i.phase,
                i.restarts,
                i.reason.clone().unwrap_or_default()
            );
            last_phase = Some(i.phase);
        }
        if i.restarts >= 1 && i.ready {
            let new_pid = engine.pids(&i.id)?.first().copied().unwrap_or(0);
            println!("  restarted as pid {new_pid} and ready again");
            break;
        }
        if Instant::now() > deadline {
            bail!("{} was not restarted within 20 s", victim.id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    print_table(&engine.instances(&key).await?);
    Ok(())
}

async fn wait_ready(engine: &LocalEngine, key: &AppKey, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut shown = usize::MAX;
    loop {
        let list = engine.instances(key).await?;
        let ready = list.iter().filter(|i| i.ready).count();
        if ready != shown {
            println!("  {ready}/{n} ready");
            shown = ready;
        }
        if ready == n && list.len() == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {ready}/{n} instances ready after 20 s: {list:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_table(instances: &[Instance]) {
    println!(
        "\n  {:<24} {:<8} {:<17} {:<11} {:<16} {:>8}",
        "INSTANCE", "NODE", "ADDRESS", "REVISION", "PHASE", "RESTARTS"
    );
    for i in instances {
        let address = i
            .endpoint("http")
            .map_or_else(|| "-".to_owned(), |a| a.to_string());
        println!(
            "  {:<24} {:<8} {:<17} {:<11} {:<16} {:>8}",
            i.id,
            i.node.as_deref().unwrap_or("-"),
            address,
            i.revision.to_string(),
            i.phase.to_string(),
            i.restarts
        );
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        !matches!(state, Some("Z" | "X"))
    })
}
