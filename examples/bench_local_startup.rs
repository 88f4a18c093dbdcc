//! Benchmark: LocalEngine apply-to-all-ready for 20 demo instances, against starting the same
//! 20 processes from a shell loop (and waiting until each answers `/healthz`) in the same run;
//! then the engine's CPU use while idling with the 20 instances probed.
//!
//! ```text
//! cargo run --release --example bench_local_startup [rounds]
//! BENCH_PERIOD_MS=5 cargo run --release --example bench_local_startup [rounds]
//! ```
//!
//! The engine's readiness probe and the baseline's `/healthz` polling use the same period
//! (100 ms, or `BENCH_PERIOD_MS`), so the comparison measures the engine's own overhead
//! (placement, attach, spawn, state persistence, probing) rather than different polling rates.
//! At 100 ms both sides are quantised to the period (the first check of the shell loop comes
//! before any process listens, that of the engine after it has started all of them); a short
//! period such as 5 ms shows the overhead itself. The demo app is this binary re-executed with
//! `--demo-app`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rorqual::local::LocalEngine;
use rorqual::prelude::*;
use rorqual_testkit::demo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const INSTANCES: usize = 20;
/// The probe and poll period: `BENCH_PERIOD_MS` milliseconds, 100 by default.
fn period() -> Duration {
    let ms = std::env::var("BENCH_PERIOD_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&ms: &u64| ms > 0)
        .unwrap_or(100);
    Duration::from_millis(ms)
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--demo-app") {
        return demo::run_from_env();
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(rounds)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn spec(exe: &str, period: f64) -> AppSpec {
    AppSpec::new(
        "bench",
        vec![
            ContainerSpec::new("app", [exe])
                .args(["--demo-app"])
                .port("http", 8080)
                .readiness(Probe::http("/healthz", "http").period(period))
                .liveness(Probe::http("/healthz", "http").period(period)),
        ],
    )
    .grace_period_seconds(5)
}

async fn engine_round(exe: &str) -> anyhow::Result<Duration> {
    let engine = LocalEngine::builder().nodes(3).build().await?;
    let spec = spec(exe, period().as_secs_f64());
    let t = Instant::now();
    engine.apply_group(&spec, INSTANCES as u32).await?;
    loop {
        let ready = engine
            .groups(&spec.key())
            .await?
            .first()
            .map_or(0, |g| g.ready);
        if ready as usize == INSTANCES {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("engine: only {ready} ready after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t.elapsed();
    engine.shutdown().await?;
    Ok(took)
}

async fn healthz(addr: SocketAddr) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.is_ok() && buf.starts_with(b"HTTP/1.1 200")
}

async fn shell_round(exe: &str) -> anyhow::Result<Duration> {
    // Free ports below the kernel's ephemeral range, so outgoing connections cannot take them
    // between this check and the app binding them.
    let ports: Vec<u16> = (15000..20000)
        .filter(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, *p)).is_ok())
        .take(INSTANCES)
        .collect();
    if ports.len() < INSTANCES {
        bail!("not enough free ports in 15000-19999");
    }
    let list = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let script = format!("for p in {list}; do PORT=$p \"$0\" --demo-app & done; wait");
    let t = Instant::now();
    let mut shell = tokio::process::Command::new("sh")
        .args(["-c", &script, exe])
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let pgid = shell.id().context("shell exited at once")?;
    let mut waits = tokio::task::JoinSet::new();
    for &p in &ports {
        waits.spawn(async move {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, p));
            while !healthz(addr).await {
                tokio::time::sleep(period()).await;
            }
        });
    }
    let result = tokio::time::timeout(Duration::from_secs(60), waits.join_all()).await;
    let took = t.elapsed();
    std::process::Command::new("kill")
        .args(["-TERM", "--", &format!("-{pgid}")])
        .status()?;
    let _ = tokio::time::timeout(Duration::from_secs(10), shell.wait()).await;
    result.context("shell loop: not all instances answered within 60 s")?;
    Ok(took)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn cpu_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let rest = stat.rsplit(')').next().context("bad /proc/self/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime); `rest` starts at field 3.
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

async fn idle_cpu(exe: &str, period: f64, window: Duration) -> anyhow::Result<f64> {
    let engine = Arc::new(LocalEngine::builder().nodes(3).build().await?);
    let spec = spec(exe, period);
    engine.apply_group(&spec, INSTANCES as u32).await?;
    let t = Instant::now();
    while engine
        .groups(&spec.key())
        .await?
        .first()
        .map_or(0, |g| g.ready) as usize
        != INSTANCES
    {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("idle: instances not ready after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (c0, t0) = (cpu_ticks()?, Instant::now());
    tokio::time::sleep(window).await;
    let (c1, t1) = (cpu_ticks()?, Instant::now());
    engine.shutdown().await?;
    let secs = (c1 - c0) as f64 / clock_ticks_per_second() as f64;
    Ok(100.0 * secs / (t1 - t0).as_secs_f64())
}

async fn run(rounds: usize) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    println!(
        "{INSTANCES} demo instances, readiness/poll period {:?}, {rounds} rounds, {} CPUs",
        period(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let (mut engine_times, mut shell_times) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let e = engine_round(&exe).await?;
        let s = shell_round(&exe).await?;
        println!(
            "round {round}: engine {:>7.1} ms   shell loop {:>7.1} ms",
            e.as_secs_f64() * 1e3,
            s.as_secs_f64() * 1e3
        );
        engine_times.push(e);
        shell_times.push(s);
    }
    let (e, s) = (median(engine_times), median(shell_times));
    println!(
        "median: engine apply-to-all-ready {:.1} ms, shell loop {:.1} ms, ratio {:.2}",
        e.as_secs_f64() * 1e3,
        s.as_secs_f64() * 1e3,
        e.as_secs_f64() / s.as_secs_f64()
    );
    for period in [1.0, 0.1] {
        let pct = idle_cpu(&exe, period, Duration::from_secs(10)).await?;
        println!(
            "idle engine CPU with {INSTANCES} instances, readiness+liveness every {period} s: {pct:.2}% of one core (10 s window)"
        );
    }
    Ok(())
}
