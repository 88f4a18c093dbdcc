//! Benchmark: many concurrent canary rollouts of five steps on the MemoryEngine, driven by one
//! RolloutController under tokio's paused clock (simulated time). Prints the CPU time of the rollout phase, the step
//! transitions made, and the process's peak RSS.
//!
//! ```text
//! cargo run --release --example release_many_rollouts -- 10000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use rorqual::core::clock::TokioClock;
use rorqual::core::memory::MemoryEngine;
use rorqual::core::model::{AppKey, AppSpec, ContainerSpec};
use rorqual::release::{Canary, CanaryStep, RolloutController, RolloutPhase, RolloutSpec};

const REPLICAS: u32 = 5;

fn app(i: usize, version: &str) -> AppSpec {
    AppSpec::new(
        format!("app-{i:05}"),
        vec![ContainerSpec::new("app", ["demo"]).env("DEMO_VERSION", version)],
    )
    .replicas(REPLICAS)
}

fn canary() -> Canary {
    Canary::new(vec![
        CanaryStep::SetWeight(20),
        CanaryStep::pause(10),
        CanaryStep::SetWeight(60),
        CanaryStep::pause(10),
        CanaryStep::SetWeight(80),
    ])
    .scale_down_delay(0)
}

/// User + system CPU time of this process, from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the full line: 11 and 12 after the name.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    let hz = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(100);
    Duration::from_millis(ticks * 1000 / hz)
}

/// Peak resident set size in MiB, from /proc/self/status.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Waits (in simulated seconds) until every rollout is Healthy.
async fn drive(ctl: &RolloutController, keys: &[AppKey]) -> u32 {
    let mut seconds = 0;
    loop {
        let mut done = true;
        for k in keys {
            let s = ctl.status(k).await.map(|s| s.phase);
            if s != Some(RolloutPhase::Healthy) {
                done = false;
                break;
            }
        }
        if done || seconds > 600 {
            return seconds;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        seconds += 1;
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?
        .block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let clock = TokioClock::new();
    let engine = Arc::new(
        MemoryEngine::builder()
            .clock(clock)
            .startup(Duration::from_secs(2))
            .build(),
    );
    let ctl = RolloutController::builder(engine.clone())
        .clock(Arc::new(clock))
        .build()
        .await?;
    let runner = {
        let ctl = ctl.clone();
        tokio::spawn(async move { ctl.run(std::future::pending()).await })
    };
    let keys: Vec<AppKey> = (0..n).map(|i| app(i, "v1").key()).collect();

    let (cpu0, wall0) = (cpu_time(), Instant::now());
    for i in 0..n {
        ctl.apply(RolloutSpec::new(app(i, "v1"), canary())).await?;
    }
    let secs = drive(&ctl, &keys).await;
    println!(
        "deploy v1: {n} apps x {REPLICAS} replicas healthy after {secs} simulated s; cpu {:.2} s, wall {:.2} s",
        (cpu_time() - cpu0).as_secs_f64(),
        wall0.elapsed().as_secs_f64()
    );

    let (cpu1, wall1) = (cpu_time(), Instant::now());
    for i in 0..n {
        ctl.apply(RolloutSpec::new(app(i, "v2"), canary())).await?;
    }
    let secs = drive(&ctl, &keys).await;
    let cpu = (cpu_time() - cpu1).as_secs_f64();
    let mut transitions = 0u64;
    let mut healthy = 0;
    for k in &keys {
        if let Some(s) = ctl.status(k).await {
            transitions += s.step as u64;
            healthy += usize::from(s.phase == RolloutPhase::Healthy);
        }
    }
    println!(
        "canary v1->v2: {healthy}/{n} healthy after {secs} simulated s; {transitions} step transitions; \
         cpu {cpu:.2} s ({:.3} s per 10,000 transitions), wall {:.2} s",
        cpu / (transitions as f64 / 10_000.0),
        wall1.elapsed().as_secs_f64()
    );
    println!("peak RSS {:.1} MiB", peak_rss_mib());
    runner.abort();
    if healthy != n {
        return Err(format!("only {healthy} of {n} rollouts became healthy").into());
    }
    Ok(())
}
