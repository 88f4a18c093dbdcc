//! Benchmark: step latency with slow I/O. 1,000 canary rollouts on the MemoryEngine, each
//! notifying a loopback webhook that answers after 2 s and measuring a loopback web metric
//! that answers after 500 ms. For every timed transition it prints the delay from the step's
//! due time to the transition, excluding the step's own I/O:
//!
//! - a timed pause (5 s) that ends: the step-completed event minus (the previous step's
//!   completion + 5 s);
//! - an analysis step (one 500 ms measurement): its completion minus (the previous step's
//!   completion + 500 ms).
//!
//! ```text
//! cargo run --release --example release_concurrency -- 1000   # needs ~4,000 open files
//! ```
//!
//! Then it waits for every rollout to be Healthy (bounded by `BENCH_TIMEOUT_S`, 600 s) and prints p50, p90,
//! p99 and the maximum of the delays.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::routing::{get, post};
use rorqual::core::clock::SystemClock;
use rorqual::core::memory::MemoryEngine;
use rorqual::core::model::{AppKey, AppSpec, ContainerSpec};
use rorqual::release::analysis::{AnalysisSpec, MetricSpec, ProviderSpec, WebMetric};
use rorqual::release::notify::WebhookNotifier;
use rorqual::release::{
    AnalysisStep, Canary, CanaryStep, EventReason, RolloutController, RolloutPhase, RolloutSpec,
};

const PAUSE: Duration = Duration::from_secs(5);
const METRIC_DELAY: Duration = Duration::from_millis(500);
const WEBHOOK_DELAY: Duration = Duration::from_secs(2);

fn app(i: usize, version: &str) -> AppSpec {
    AppSpec::new(
        format!("app-{i:04}"),
        vec![ContainerSpec::new("app", ["demo"]).env("DEMO_VERSION", version)],
    )
    .replicas(4)
}

/// A loopback server: POST /hook answers after 2 s, GET /metric after 500 ms.
async fn slow_servers() -> std::net::SocketAddr {
    let router = axum::Router::new()
        .route(
            "/hook",
            post(|| async {
                tokio::time::sleep(WEBHOOK_DELAY).await;
                "ok"
            }),
        )
        .route(
            "/metric",
            get(|| async {
                tokio::time::sleep(METRIC_DELAY).await;
                axum::Json(serde_json::json!({"ok": true}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// How long to wait for all rollouts (`BENCH_TIMEOUT_S`, default 600 s).
fn timeout() -> Duration {
    Duration::from_secs(
        std::env::var("BENCH_TIMEOUT_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1000);
    let addr = slow_servers().await;
    let engine = Arc::new(
        MemoryEngine::builder()
            .clock(SystemClock)
            .startup(Duration::from_millis(200))
            .build(),
    );
    let notifier = WebhookNotifier::new(format!("http://{addr}/hook"))?.retries(0);
    let ctl = RolloutController::builder(engine.clone())
        .notifier(Arc::new(notifier))
        .progress_check(Duration::from_millis(250))
        .build()
        .await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let ctl = ctl.clone();
        tokio::spawn(async move {
            ctl.run(async move {
                let _ = stopped.await;
            })
            .await
        })
    };
    let keys: Vec<AppKey> = (0..n).map(|i| app(i, "v1").key()).collect();
    let healthy = |ctl: RolloutController, keys: Vec<AppKey>| async move {
        let start = Instant::now();
        loop {
            let mut all = true;
            for k in &keys {
                if ctl.status(k).await.map(|s| s.phase) != Some(RolloutPhase::Healthy) {
                    all = false;
                    break;
                }
            }
            if all || start.elapsed() > timeout() {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    for i in 0..n {
        ctl.apply(RolloutSpec::new(app(i, "v1"), Canary::new(vec![])))
            .await?;
    }
    healthy(ctl.clone(), keys.clone()).await;
    println!("v1 healthy on {n} apps");

    let metric = MetricSpec::new(
        "ok",
        ProviderSpec::Web(WebMetric::get(format!("http://{addr}/metric")).json_path("$.ok")),
    )
    .success_condition("result == true");
    let analysis = AnalysisStep::new(AnalysisSpec::new(vec![metric]), Default::default());
    let strategy = Canary::new(vec![
        CanaryStep::SetWeight(50),
        CanaryStep::pause(PAUSE.as_secs() as i64),
        CanaryStep::Analysis(analysis),
        CanaryStep::pause(PAUSE.as_secs() as i64),
    ])
    .scale_down_delay(0);
    let mut events = ctl.events();
    let collector = tokio::spawn(async move {
        let mut completed: HashMap<(AppKey, usize), SystemTime> = HashMap::new();
        // Until the controller is gone, or nothing happened for 20 s (the bench has stopped).
        while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_secs(20), events.recv()).await {
            if ev.reason == EventReason::StepCompleted
                && let Some(step) = ev.step
            {
                completed.insert((ev.app, step), ev.time);
            }
        }
        completed
    });
    let started = Instant::now();
    for i in 0..n {
        ctl.apply(RolloutSpec::new(app(i, "v2"), strategy.clone()))
            .await?;
    }
    let all = healthy(ctl.clone(), keys.clone()).await;
    let wall = started.elapsed();
    // Let the last notifications finish, then stop.
    let _ = stop.send(());
    let _ = runner.await;
    drop(ctl);
    let completed = collector.await?;
    let mut delays = Vec::new();
    let mut missing = 0;
    for k in &keys {
        for (step, own) in [(1usize, PAUSE), (2, METRIC_DELAY), (3, PAUSE)] {
            match (
                completed.get(&(k.clone(), step - 1)),
                completed.get(&(k.clone(), step)),
            ) {
                (Some(prev), Some(done)) => {
                    let delay = done.duration_since(*prev + own).unwrap_or_default();
                    delays.push(delay);
                }
                _ => missing += 1,
            }
        }
    }
    delays.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{n} rollouts, all healthy: {all}, wall {:.1} s; {} timed transitions ({missing} missing)",
        wall.as_secs_f64(),
        delays.len()
    );
    println!(
        "delay from due time to transition, own I/O excluded: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(&delays, 0.5)),
        ms(percentile(&delays, 0.9)),
        ms(percentile(&delays, 0.99)),
        ms(delays.last().copied().unwrap_or_default()),
    );
    Ok(())
}
