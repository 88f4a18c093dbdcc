//! The rollout controller on `rorqual-runtime`: a host's own strategy through the registry,
//! bad input refused before anything changes, crash and restart at any point, approvals that
//! outlive the controller, slow notifications that delay nobody, and idle rollouts that are
//! not polled. MemoryEngine under tokio's paused clock.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rorqual_core::clock::TokioClock;
use rorqual_core::engine::Engine;
use rorqual_core::memory::MemoryEngine;
use rorqual_core::model::{AppKey, AppSpec, ContainerSpec};
use rorqual_release::analysis::{AnalysisSpec, MetricSpec, ProviderSpec};
use rorqual_release::approval::Approvals;
use rorqual_release::notify::{Notification, Notifier, NotifyError};
use rorqual_release::{
    AnalysisStep, Canary, CanaryStep, EventReason, Gate, Plan, ReleaseStrategy, RolloutController,
    RolloutControllerBuilder, RolloutPhase, RolloutSpec, RolloutView, StrategyError,
    StrategyRegistry, StrategySpec,
};
use rorqual_testkit::counting::CountingEngine;
use serde::Deserialize;

fn app(version: &str, replicas: u32) -> AppSpec {
    AppSpec::new(
        "web",
        vec![ContainerSpec::new("app", ["demo"]).env("DEMO_VERSION", version)],
    )
    .replicas(replicas)
}

fn key() -> AppKey {
    AppKey::new("default", "web")
}

fn engine(clock: TokioClock) -> Arc<MemoryEngine> {
    Arc::new(
        MemoryEngine::builder()
            .clock(clock)
            .startup(Duration::from_secs(1))
            .build(),
    )
}

/// Runs `ctl` in the background until the handle is aborted (a crash).
fn run(ctl: &RolloutController) -> tokio::task::JoinHandle<()> {
    let ctl = ctl.clone();
    tokio::spawn(async move {
        ctl.run(std::future::pending()).await.unwrap();
    })
}

async fn until(
    ctl: &RolloutController,
    max_secs: u32,
    what: &str,
    pred: impl Fn(&rorqual_release::RolloutStatus) -> bool,
) {
    for _ in 0..max_secs {
        if let Some(s) = ctl.status(&key()).await
            && pred(&s)
        {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!(
        "{what} not reached in {max_secs}s: {:?}",
        ctl.status(&key()).await
    );
}

/// A host's own strategy: move to the target in fixed batches of instances, one batch per
/// step, each step complete once its instances are available.
#[derive(Debug, Deserialize)]
struct Batches {
    batch: u32,
}

impl ReleaseStrategy for Batches {
    fn name(&self) -> &'static str {
        "batches"
    }
    fn validate(&self, _stateful: bool) -> Result<(), StrategyError> {
        if self.batch == 0 {
            return Err(StrategyError::Field {
                field: "batch".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }
    fn steps(&self) -> usize {
        // Enough batches for any replica count this test uses.
        10
    }
    fn plan(&self, view: &RolloutView) -> Plan {
        let want = (self.batch * (view.step as u32 + 1)).min(view.replicas);
        let target = view.target_group();
        let mut plan = Plan::gate(if target.available < want {
            Gate::Progressing(format!("{}/{want} new instances", target.available))
        } else if want == view.replicas {
            Gate::Done
        } else {
            Gate::StepComplete
        });
        plan.replicas = vec![
            (view.target.clone(), want),
            (
                view.stable.clone(),
                view.replicas - target.available.min(want),
            ),
        ];
        plan.target_weight = Some(want * 100 / view.replicas.max(1));
        plan
    }
}

fn with_batches(b: RolloutControllerBuilder) -> RolloutControllerBuilder {
    b.strategies(StrategyRegistry::with_builtins().with_serde::<Batches>("batches"))
}

#[tokio::test(start_paused = true)]
async fn a_hosts_own_strategy_runs_end_to_end_through_the_registry() {
    let clock = TokioClock::new();
    let engine = engine(clock);
    let ctl = with_batches(RolloutController::builder(engine.clone()).clock(Arc::new(clock)))
        .build()
        .await
        .unwrap();
    let _run = run(&ctl);
    let batches = || StrategySpec::new("batches", serde_json::json!({"batch": 2}));
    ctl.apply(RolloutSpec::new(app("v1", 5), batches()))
        .await
        .unwrap();
    until(&ctl, 30, "v1 healthy", |s| s.phase == RolloutPhase::Healthy).await;
    let mut events = ctl.events();
    ctl.apply(RolloutSpec::new(app("v2", 5), batches()))
        .await
        .unwrap();
    until(&ctl, 60, "v2 healthy", |s| {
        s.phase == RolloutPhase::Healthy && s.stable == Some(app("v2", 5).revision())
    })
    .await;
    let mut steps = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if ev.reason == EventReason::StepCompleted {
            steps.push(ev.step.unwrap());
        }
    }
    assert_eq!(steps, [0, 1], "batches of 2, 4, then 5 (done)");
    let groups = engine.groups(&key()).await.unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0].available, 5);
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_refused_before_anything_changes() {
    let clock = TokioClock::new();
    let engine = engine(clock);
    let ctl = RolloutController::builder(engine.clone())
        .clock(Arc::new(clock))
        .build()
        .await
        .unwrap();
    // An unknown kind names itself and the registered kinds.
    let err = ctl
        .apply(RolloutSpec::new(
            app("v1", 2),
            StrategySpec::new("wave", serde_json::json!({})),
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown strategy kind `wave`") && err.contains("blueGreen, canary"),
        "{err}"
    );
    // Every problem of a spec, with its path: a weight above 100, a negative pause, and an
    // analysis whose metric names a provider nobody registered.
    let metric = MetricSpec::new("m", ProviderSpec::plugin("datadog", serde_json::json!({})));
    let analysis = AnalysisStep::new(AnalysisSpec::new(vec![metric]), Default::default());
    let canary = Canary::new(vec![
        CanaryStep::SetWeight(120),
        CanaryStep::pause(-5),
        CanaryStep::Analysis(analysis),
    ]);
    let err = ctl
        .apply(RolloutSpec::new(app("v1", 2), canary))
        .await
        .unwrap_err()
        .to_string();
    for part in [
        "steps[0].setWeight",
        "steps[1].pause.duration",
        "steps[2].analysis",
        "datadog",
    ] {
        assert!(err.contains(part), "{part} missing from: {err}");
    }
    assert!(ctl.is_empty(), "nothing was created");
    assert!(engine.groups(&key()).await.unwrap().is_empty());
    // A verb on a rollout that does not exist names it.
    let err = ctl.promote(&key()).await.unwrap_err().to_string();
    assert_eq!(err, "no rollout for default/web");
}

#[tokio::test(start_paused = true)]
async fn a_controller_killed_at_any_point_resumes_without_repeating_or_skipping_a_step() {
    let clock = TokioClock::new();
    let engine = engine(clock);
    let steps = || {
        Canary::new(vec![
            CanaryStep::SetWeight(20),
            CanaryStep::pause(7),
            CanaryStep::SetWeight(50),
            CanaryStep::pause(5),
            CanaryStep::SetWeight(80),
            CanaryStep::pause(3),
        ])
        .scale_down_delay(0)
    };
    let build = || async {
        RolloutController::builder(engine.clone())
            .clock(Arc::new(clock))
            .build()
            .await
            .unwrap()
    };
    let ctl = build().await;
    let runner = run(&ctl);
    ctl.apply(RolloutSpec::new(app("v1", 10), steps()))
        .await
        .unwrap();
    until(&ctl, 30, "v1 healthy", |s| s.phase == RolloutPhase::Healthy).await;
    runner.abort();
    let mut completed = Vec::new();
    let mut ctl = build().await;
    let mut events = ctl.events();
    ctl.apply(RolloutSpec::new(app("v2", 10), steps()))
        .await
        .unwrap();
    // Crash and restart every 1.3 s of simulated time, at whatever the controller was doing.
    let mut restarts = 0;
    for _ in 0..200 {
        let runner = run(&ctl);
        tokio::time::sleep(Duration::from_millis(1300)).await;
        runner.abort();
        let _ = runner.await;
        while let Ok(ev) = events.try_recv() {
            if ev.reason == EventReason::StepCompleted {
                completed.push(ev.step.unwrap());
            }
        }
        if ctl.status(&key()).await.unwrap().phase == RolloutPhase::Healthy {
            break;
        }
        ctl = build().await;
        events = ctl.events();
        restarts += 1;
    }
    let s = ctl.status(&key()).await.unwrap();
    assert_eq!(s.phase, RolloutPhase::Healthy, "{s:?}");
    assert_eq!(s.stable, Some(app("v2", 10).revision()));
    assert!(restarts >= 10, "killed {restarts} times");
    assert_eq!(completed, [0, 1, 2, 3, 4, 5], "each step once, in order");
}

#[tokio::test(start_paused = true)]
async fn an_approval_outlives_the_controller_that_asked_for_it() {
    let clock = TokioClock::new();
    let engine = engine(clock);
    let strategy = || {
        Canary::new(vec![
            CanaryStep::SetWeight(50),
            CanaryStep::Approval(Default::default()),
        ])
        .scale_down_delay(0)
    };
    let ctl = RolloutController::builder(engine.clone())
        .clock(Arc::new(clock))
        .build()
        .await
        .unwrap();
    let runner = run(&ctl);
    ctl.apply(RolloutSpec::new(app("v1", 4), strategy()))
        .await
        .unwrap();
    until(&ctl, 30, "v1 healthy", |s| s.phase == RolloutPhase::Healthy).await;
    ctl.apply(RolloutSpec::new(app("v2", 4), strategy()).released("alice", Some("9f1e2d3".into())))
        .await
        .unwrap();
    until(&ctl, 30, "waiting", |s| s.waiting_for_approval()).await;
    runner.abort();
    drop(ctl);
    // A new controller process over the same state store; the approvals API reads the same
    // store.
    let ctl = RolloutController::builder(engine.clone())
        .clock(Arc::new(clock))
        .build()
        .await
        .unwrap();
    let _runner = run(&ctl);
    let api = Approvals::with_store(engine.state_store());
    let pending = api.pending().await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let req = &pending[0].request;
    assert_eq!(req.key.revision, app("v2", 4).revision());
    assert_eq!(req.context.released_by.as_deref(), Some("alice"));
    assert_eq!(req.context.commit.as_deref(), Some("9f1e2d3"));
    api.approve(&req.key, "carol", None).await.unwrap();
    until(&ctl, 30, "v2 healthy", |s| {
        s.phase == RolloutPhase::Healthy && s.stable == Some(app("v2", 4).revision())
    })
    .await;
    // The controller's own verb reaches the same store.
    let err = ctl
        .decide(&key(), true, "carol", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not waiting for an approval"), "{err}");
}

/// A notifier that takes a minute per notification.
#[derive(Debug, Default)]
struct SlowNotifier {
    sent: AtomicU64,
}

#[async_trait]
impl Notifier for SlowNotifier {
    async fn notify(&self, _n: &Notification) -> Result<(), NotifyError> {
        tokio::time::sleep(Duration::from_secs(60)).await;
        self.sent.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_notifier_delays_no_step() {
    let clock = TokioClock::new();
    let engine = engine(clock);
    let notifier = Arc::new(SlowNotifier::default());
    let ctl = RolloutController::builder(engine.clone())
        .clock(Arc::new(clock))
        .notifier(notifier.clone())
        .build()
        .await
        .unwrap();
    let _runner = run(&ctl);
    let strategy =
        || Canary::new(vec![CanaryStep::SetWeight(50), CanaryStep::pause(5)]).scale_down_delay(0);
    ctl.apply(RolloutSpec::new(app("v1", 4), strategy()))
        .await
        .unwrap();
    until(&ctl, 30, "v1 healthy", |s| s.phase == RolloutPhase::Healthy).await;
    let start = tokio::time::Instant::now();
    ctl.apply(RolloutSpec::new(app("v2", 4), strategy()))
        .await
        .unwrap();
    until(&ctl, 30, "v2 healthy", |s| {
        s.phase == RolloutPhase::Healthy && s.stable == Some(app("v2", 4).revision())
    })
    .await;
    let took = start.elapsed();
    // Each of the half-dozen notifications takes a minute; the steps did not wait for them.
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(ctl.background_tasks() > 0, "notifications still being sent");
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(notifier.sent.load(Ordering::SeqCst) >= 4);
    assert_eq!(ctl.background_tasks(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_healthy_rollout_is_read_only_by_the_resync() {
    let clock = TokioClock::new();
    let engine = Arc::new(CountingEngine::new(Arc::new(
        MemoryEngine::builder().clock(clock).build(),
    )));
    let ctl = RolloutController::builder(engine.clone())
        .clock(Arc::new(clock))
        .resync(Duration::from_secs(300))
        .build()
        .await
        .unwrap();
    let _runner = run(&ctl);
    ctl.apply(RolloutSpec::new(app("v1", 3), Canary::new(vec![])))
        .await
        .unwrap();
    until(&ctl, 30, "healthy", |s| s.phase == RolloutPhase::Healthy).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = engine.reads();
    tokio::time::sleep(Duration::from_secs(600)).await;
    let reads = engine.reads() - before;
    assert!(
        reads <= 10,
        "{reads} reads in 10 idle minutes (resync every 5)"
    );
    assert!(reads >= 1, "the resync still looks");
}
