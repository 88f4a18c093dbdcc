//! Benchmark: engine reads of idle Healthy rollouts. Deploys N rollouts on a MemoryEngine
//! wrapped in a counter of read calls (`groups`, `instances`, `apps`, `nodes`), waits until all
//! are Healthy, then lets the controller run for ten simulated minutes (tokio's paused clock,
//! so the run takes a moment) and prints the engine reads per idle rollout per minute.
//!
//! ```text
//! cargo run --release --example release_idle_reads -- 100
//! ```

use std::sync::Arc;
use std::time::Duration;

use rorqual::core::clock::TokioClock;
use rorqual::core::memory::MemoryEngine;
use rorqual::core::model::{AppSpec, ContainerSpec};
use rorqual::release::{Canary, CanaryStep, RolloutController, RolloutPhase, RolloutSpec};
use rorqual_testkit::counting::CountingEngine;

fn app(i: usize, version: &str) -> AppSpec {
    AppSpec::new(
        format!("app-{i:04}"),
        vec![ContainerSpec::new("app", ["demo"]).env("DEMO_VERSION", version)],
    )
    .replicas(3)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    rt.block_on(async move {
        let clock = TokioClock::new();
        let engine = Arc::new(CountingEngine::new(Arc::new(
            MemoryEngine::builder()
                .clock(clock)
                .startup(Duration::from_secs(1))
                .build(),
        )));
        let ctl = RolloutController::builder(engine.clone())
            .clock(Arc::new(clock))
            .build()
            .await?;
        let runner = {
            let ctl = ctl.clone();
            tokio::spawn(async move { ctl.run(std::future::pending()).await })
        };
        for i in 0..n {
            let strategy = Canary::new(vec![CanaryStep::SetWeight(50)]).scale_down_delay(0);
            ctl.apply(RolloutSpec::new(app(i, "v1"), strategy)).await?;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut healthy = 0;
            for i in 0..n {
                let s = ctl.status(&app(i, "v1").key()).await;
                healthy += usize::from(s.map(|s| s.phase) == Some(RolloutPhase::Healthy));
            }
            if healthy == n {
                break;
            }
        }
        // Let the last reconciles of the deploy finish, then count.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = engine.reads();
        let minutes = 10u64;
        tokio::time::sleep(Duration::from_secs(60 * minutes)).await;
        let reads = engine.reads() - before;
        println!(
            "{n} idle Healthy rollouts, {minutes} simulated minutes: {reads} engine reads = {:.3} per rollout per minute",
            reads as f64 / (n as f64 * minutes as f64)
        );
        runner.abort();
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
