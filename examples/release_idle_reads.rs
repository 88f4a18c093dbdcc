//! Benchmark: engine reads of idle Healthy rollouts. Deploys N rollouts on a MemoryEngine
//! wrapped in a counter of read calls (`groups`, `instances`, `apps`, `nodes`), waits until all
//! are Healthy, then lets the controller run for ten simulated minutes (tokio's paused clock,
//! so the run takes a moment) and prints the engine reads per idle rollout per minute.
//!
//! ```text
//! cargo run --release --example release_idle_reads -- 100
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rorqual::core::clock::TokioClock;
use rorqual::core::engine::{Engine, EventStream, GroupStatus, StateStore};
use rorqual::core::memory::MemoryEngine;
use rorqual::core::model::{AppKey, AppSpec, ContainerSpec, Instance, Node, Revision};
use rorqual::release::{Canary, CanaryStep, RolloutController, RolloutPhase, RolloutSpec};

/// A MemoryEngine that counts read calls.
#[derive(Debug)]
struct Counting {
    inner: MemoryEngine,
    reads: AtomicU64,
}

impl Counting {
    fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Engine for Counting {
    fn kind(&self) -> &str {
        "counting-memory"
    }
    async fn nodes(&self) -> rorqual::core::Result<Vec<Node>> {
        self.read();
        self.inner.nodes().await
    }
    async fn apply_group(
        &self,
        spec: &AppSpec,
        replicas: u32,
    ) -> rorqual::core::Result<GroupStatus> {
        self.inner.apply_group(spec, replicas).await
    }
    async fn scale_group(
        &self,
        app: &AppKey,
        revision: &Revision,
        replicas: u32,
    ) -> rorqual::core::Result<GroupStatus> {
        self.inner.scale_group(app, revision, replicas).await
    }
    async fn delete_group(&self, app: &AppKey, revision: &Revision) -> rorqual::core::Result<()> {
        self.inner.delete_group(app, revision).await
    }
    async fn groups(&self, app: &AppKey) -> rorqual::core::Result<Vec<GroupStatus>> {
        self.read();
        self.inner.groups(app).await
    }
    async fn instances(&self, app: &AppKey) -> rorqual::core::Result<Vec<Instance>> {
        self.read();
        self.inner.instances(app).await
    }
    async fn apps(&self) -> rorqual::core::Result<Vec<AppKey>> {
        self.read();
        self.inner.apps().await
    }
    async fn move_identity(&self, spec: &AppSpec, ordinal: u32) -> rorqual::core::Result<Instance> {
        self.inner.move_identity(spec, ordinal).await
    }
    fn events(&self) -> EventStream {
        self.inner.events()
    }
    fn state_store(&self) -> Arc<dyn StateStore> {
        self.inner.state_store()
    }
}

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
        let engine = Arc::new(Counting {
            inner: MemoryEngine::builder()
                .clock(clock)
                .startup(Duration::from_secs(1))
                .build(),
            reads: AtomicU64::new(0),
        });
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
        let before = engine.reads.load(Ordering::Relaxed);
        let minutes = 10u64;
        tokio::time::sleep(Duration::from_secs(60 * minutes)).await;
        let reads = engine.reads.load(Ordering::Relaxed) - before;
        println!(
            "{n} idle Healthy rollouts, {minutes} simulated minutes: {reads} engine reads = {:.3} per rollout per minute",
            reads as f64 / (n as f64 * minutes as f64)
        );
        runner.abort();
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
