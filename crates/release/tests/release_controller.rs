//! RolloutController on the MemoryEngine with a manual clock: every strategy, the failure
//! policy, the verbs, approvals, restarts and deadlines.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rorqual_core::clock::{Clock, TokioClock};
use rorqual_core::engine::Engine;
use rorqual_core::memory::{Fault, MemoryEngine};
use rorqual_core::model::{AppKey, AppSpec, ContainerSpec, Revision, WorkloadKind};
use rorqual_release::analysis::AnalysisPhase;
use rorqual_release::analysis::{
    AnalysisSpec, MetricProvider, MetricSpec, ProviderError, ProviderSpec,
};
use rorqual_release::approval::{
    ApprovalError, ApprovalGate, ApprovalKey, ApprovalRequest, Approvals, Decision,
};
use rorqual_release::notify::RecordingNotifier;
use rorqual_release::traffic::{Backend, TrafficError, TrafficRouter, TrafficSplit};
use rorqual_release::{
    AnalysisStep, ApprovalStep, BlueGreen, Canary, CanaryStep, EventReason, FailurePolicy,
    IntOrPercent, RollingUpdate, RolloutController, RolloutPhase, RolloutSpec, RolloutStatus,
    Strategy,
};

/// A metric whose value the test sets.
#[derive(Debug, Default)]
struct FakeMetric {
    value: Mutex<f64>,
    calls: Mutex<u32>,
}

#[async_trait]
impl MetricProvider for FakeMetric {
    fn kind(&self) -> &str {
        "fake"
    }
    async fn measure(
        &self,
        _metric: &MetricSpec,
        _args: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value, ProviderError> {
        *self.calls.lock().unwrap() += 1;
        Ok(serde_json::json!(*self.value.lock().unwrap()))
    }
}

struct Harness {
    clock: TokioClock,
    engine: Arc<MemoryEngine>,
    ctl: RolloutController,
    /// The controller's run loop (stopped when the harness is dropped).
    runner: tokio::task::JoinHandle<()>,
    approvals: Arc<Approvals>,
    metric: Arc<FakeMetric>,
    notes: Arc<RecordingNotifier>,
}

impl Harness {
    async fn new() -> Self {
        let clock = TokioClock::new();
        let engine = engine_with_startup(&clock, Duration::from_secs(2));
        Self::on(clock, engine, None).await
    }

    async fn on(
        clock: TokioClock,
        engine: Arc<MemoryEngine>,
        router: Option<Arc<dyn TrafficRouter>>,
    ) -> Self {
        let approvals = Arc::new(Approvals::new());
        Self::with_gate(clock, engine, router, approvals.clone(), approvals).await
    }

    /// A harness whose controller asks `gate`; `approvals` is what the test decides through.
    async fn with_gate(
        clock: TokioClock,
        engine: Arc<MemoryEngine>,
        router: Option<Arc<dyn TrafficRouter>>,
        approvals: Arc<Approvals>,
        gate: Arc<dyn ApprovalGate>,
    ) -> Self {
        let metric = Arc::new(FakeMetric::default());
        let notes = Arc::new(RecordingNotifier::new());
        let mut b = RolloutController::builder(engine.clone())
            .clock(Arc::new(clock))
            .approvals(gate)
            .providers(metric.clone())
            .notifier(notes.clone());
        if let Some(r) = router {
            b = b.router(r);
        }
        let ctl = b.build().await.unwrap();
        let runner = tokio::spawn({
            let ctl = ctl.clone();
            async move {
                ctl.run(std::future::pending()).await.unwrap();
            }
        });
        Harness {
            clock,
            engine,
            ctl,
            runner,
            approvals,
            metric,
            notes,
        }
    }

    async fn tick(&self) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    /// Stops the controller (a crash: nothing more is reconciled or persisted).
    fn stop(&self) {
        self.runner.abort();
    }

    async fn status(&self) -> RolloutStatus {
        self.ctl.status(&key()).await.unwrap()
    }

    /// Ticks until `pred` holds; panics after `max` seconds.
    async fn until(&self, max: u32, what: &str, pred: impl Fn(&RolloutStatus) -> bool) {
        settle().await;
        for _ in 0..max {
            if pred(&self.status().await) {
                return;
            }
            self.tick().await;
        }
        panic!("{what} not reached in {max}s: {:?}", self.status().await);
    }

    /// (desired, available) of each revision.
    async fn counts(&self) -> BTreeMap<Revision, (u32, u32)> {
        self.engine
            .groups(&key())
            .await
            .unwrap()
            .into_iter()
            .map(|g| (g.revision, (g.desired, g.available)))
            .collect()
    }

    async fn deploy_v1(&self, strategy: Strategy) {
        self.ctl
            .apply(RolloutSpec::new(app("v1"), strategy))
            .await
            .unwrap();
        self.until(30, "v1 healthy", |s| s.phase == RolloutPhase::Healthy)
            .await;
    }

    fn outcomes(&self) -> Vec<(String, Option<usize>)> {
        self.notes
            .notifications()
            .into_iter()
            .map(|n| (n.outcome, n.step))
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.runner.abort();
    }
}

/// Lets the controller and its background tasks run what is ready (tokio's paused clock moves
/// only when everything waits).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// A MemoryEngine on `clock` whose instances become ready `startup` after they start.
fn engine_with_startup(clock: &TokioClock, startup: Duration) -> Arc<MemoryEngine> {
    Arc::new(
        MemoryEngine::builder()
            .clock(*clock)
            .startup(startup)
            .build(),
    )
}

fn key() -> AppKey {
    AppKey::new("default", "web")
}

fn app(version: &str) -> AppSpec {
    AppSpec::new(
        "web",
        vec![
            ContainerSpec::new("app", ["demo"])
                .env("DEMO_VERSION", version)
                .port("http", 8080),
        ],
    )
    .replicas(10)
}

fn error_rate_analysis() -> AnalysisStep {
    let metric = MetricSpec::new(
        "error-rate",
        ProviderSpec::plugin("fake", serde_json::json!({})),
    )
    .success_condition("result < 0.05");
    AnalysisStep::new(AnalysisSpec::new(vec![metric]), BTreeMap::new())
}

fn canary(steps: Vec<CanaryStep>) -> Strategy {
    Strategy::Canary(Canary::new(steps).scale_down_delay(0))
}

#[tokio::test(start_paused = true)]
async fn canary_happy_path_with_weights_pause_and_analysis() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    let v1 = app("v1").revision();
    let v2 = app("v2").revision();
    h.ctl
        .apply(RolloutSpec::new(
            app("v2"),
            canary(vec![
                CanaryStep::SetWeight(20),
                CanaryStep::pause(30),
                CanaryStep::SetWeight(50),
                CanaryStep::Analysis(error_rate_analysis()),
            ]),
        ))
        .await
        .unwrap();
    h.until(10, "step 1", |s| s.step == 1).await;
    assert_eq!(h.counts().await[&v2], (2, 2), "20% of 10");
    assert_eq!(h.counts().await[&v1].0, 8);
    assert_eq!(h.status().await.phase, RolloutPhase::Paused);
    assert_eq!(h.status().await.weight, Some(20));
    // The pause lasts 30 s.
    for _ in 0..25 {
        h.tick().await;
    }
    assert_eq!(h.status().await.step, 1);
    // The analysis passes at its first measurement, so step 3 completes at once.
    h.until(10, "past step 3", |s| s.step >= 4).await;
    assert!(h.counts().await[&v2].1 >= 5);
    h.until(40, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    assert!(*h.metric.calls.lock().unwrap() >= 1);
    let s = h.status().await;
    assert_eq!(s.stable, Some(v2.clone()));
    assert_eq!(
        h.counts().await.len(),
        1,
        "old group deleted: {:?}",
        h.counts().await
    );
    assert_eq!(h.counts().await[&v2], (10, 10));
    let history = h.ctl.history(&key()).await;
    assert_eq!(history.last().unwrap().revision, v1);
    let steps: Vec<_> = h
        .outcomes()
        .into_iter()
        .filter(|(o, _)| o == "step-completed")
        .filter_map(|(_, s)| s)
        .collect();
    assert_eq!(steps, [0, 1, 2, 3], "every step exactly once");
}

#[tokio::test(start_paused = true)]
async fn analysis_failure_rolls_back_and_stable_never_shrinks() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    let v1 = app("v1").revision();
    let v2 = app("v2").revision();
    *h.metric.value.lock().unwrap() = 0.5;
    h.ctl
        .apply(
            RolloutSpec::new(
                app("v2"),
                canary(vec![
                    CanaryStep::SetWeight(40),
                    CanaryStep::Analysis(error_rate_analysis()),
                    CanaryStep::SetWeight(80),
                ]),
            )
            .abort_scale_down_delay(5),
        )
        .await
        .unwrap();
    h.until(20, "aborted", |s| s.aborted()).await;
    let s = h.status().await;
    assert_eq!(s.phase, RolloutPhase::Degraded);
    assert!(s.reason.contains("analysis step-1 failed"), "{}", s.reason);
    assert_eq!(s.weight, Some(0));
    // From the abort on, the stable group is wanted at full size.
    for _ in 0..20 {
        let c = h.counts().await;
        assert_eq!(c[&v1].0, 10, "stable desired never below 10: {c:?}");
        h.tick().await;
    }
    let c = h.counts().await;
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[&v1], (10, 10));
    assert!(!c.contains_key(&v2));
    let s = h.status().await;
    assert_eq!(s.phase, RolloutPhase::Degraded);
    assert!(s.reason.starts_with("aborted: "), "{}", s.reason);
    assert!(h.outcomes().iter().any(|(o, _)| o == "aborted"));
    assert!(h.outcomes().iter().any(|(o, _)| o == "rolled-back"));
}

#[tokio::test(start_paused = true)]
async fn failure_policy_pause_holds_instead_of_rolling_back() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    *h.metric.value.lock().unwrap() = 0.5;
    h.ctl
        .apply(
            RolloutSpec::new(
                app("v2"),
                canary(vec![
                    CanaryStep::SetWeight(30),
                    CanaryStep::Analysis(error_rate_analysis()),
                ]),
            )
            .failure_policy(FailurePolicy::Pause),
        )
        .await
        .unwrap();
    h.until(20, "held", |s| s.held().is_some()).await;
    let s = h.status().await;
    assert_eq!(s.phase, RolloutPhase::Paused);
    assert!(!s.aborted());
    assert_eq!(h.counts().await[&app("v2").revision()].0, 3, "canary kept");
    // Retry re-runs from step 0 with a good metric.
    *h.metric.value.lock().unwrap() = 0.0;
    h.ctl.retry(&key()).await.unwrap();
    h.until(30, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
}

#[tokio::test(start_paused = true)]
async fn approval_gate_through_the_approvals_api() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    let v2 = app("v2").revision();
    h.ctl
        .apply(RolloutSpec::new(
            app("v2"),
            canary(vec![
                CanaryStep::SetWeight(10),
                CanaryStep::Approval(ApprovalStep::default()),
                CanaryStep::SetWeight(60),
                CanaryStep::Approval(ApprovalStep::default()),
            ]),
        ))
        .await
        .unwrap();
    h.until(10, "approval requested", |s| s.waiting_for_approval())
        .await;
    assert_eq!(h.status().await.phase, RolloutPhase::Paused);
    let pending = h.approvals.pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    for _ in 0..10 {
        h.tick().await;
    }
    assert_eq!(h.status().await.step, 1, "waits for the decision");
    approve(&h.approvals, &v2, 1, "alice", Some("looks good".into())).await;
    h.until(10, "second approval", |s| {
        s.step == 3 && s.waiting_for_approval()
    })
    .await;
    assert_eq!(h.counts().await[&v2].0, 6);
    reject(&h.approvals, &v2, 3, "bob").await;
    h.until(10, "aborted", |s| s.aborted()).await;
    assert!(h.status().await.reason.contains("rejected"));
}

#[tokio::test(start_paused = true)]
async fn verbs_abort_retry_promote_full_and_undo() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    let v1 = app("v1").revision();
    let v2 = app("v2").revision();
    let steps = vec![
        CanaryStep::SetWeight(20),
        CanaryStep::pause_until_promoted(),
        CanaryStep::SetWeight(50),
        CanaryStep::pause_until_promoted(),
    ];
    h.ctl
        .apply(RolloutSpec::new(app("v2"), canary(steps)).abort_scale_down_delay(0))
        .await
        .unwrap();
    h.until(10, "paused at 1", |s| s.step == 1).await;
    assert!(h.ctl.retry(&key()).await.is_err(), "nothing to retry");
    h.ctl.abort(&key()).await.unwrap();
    h.until(10, "abort done", |s| s.reason.starts_with("aborted: "))
        .await;
    assert!(!h.counts().await.contains_key(&v2));
    assert!(
        h.ctl.promote(&key()).await.is_err(),
        "aborted: promote refused"
    );
    h.ctl.retry(&key()).await.unwrap();
    h.until(10, "paused at 1 again", |s| s.step == 1 && !s.aborted())
        .await;
    h.ctl.promote(&key()).await.unwrap();
    h.until(10, "paused at 3", |s| s.step == 3).await;
    assert_eq!(h.counts().await[&v2].0, 5);
    h.ctl.promote_full(&key()).await.unwrap();
    h.until(20, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    assert_eq!(h.status().await.stable, Some(v2.clone()));
    // Undo goes back to v1 through the steps (v1 is no longer stable).
    h.ctl.undo(&key(), Some(&v1)).await.unwrap();
    assert_eq!(h.status().await.target, v1);
    h.until(10, "undo paused at 1", |s| s.step == 1).await;
    h.ctl.promote_full(&key()).await.unwrap();
    h.until(20, "healthy on v1", |s| s.phase == RolloutPhase::Healthy)
        .await;
    assert_eq!(h.status().await.stable, Some(v1.clone()));
    assert!(h.ctl.undo(&key(), Some(&"nope".into())).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn going_back_to_stable_mid_rollout_skips_every_step() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    let v1 = app("v1").revision();
    let steps = vec![
        CanaryStep::SetWeight(50),
        CanaryStep::pause_until_promoted(),
        CanaryStep::SetWeight(70),
    ];
    h.ctl
        .apply(RolloutSpec::new(app("v2"), canary(steps.clone())))
        .await
        .unwrap();
    h.until(10, "paused", |s| s.step == 1).await;
    assert_eq!(h.counts().await[&v1].0, 5);
    // Re-applying v1 (the stable template) is a fast rollback.
    h.ctl
        .apply(RolloutSpec::new(app("v1"), canary(steps)))
        .await
        .unwrap();
    settle().await;
    assert_eq!(h.counts().await[&v1].0, 10, "stable back to full at once");
    h.until(10, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    assert_eq!(h.counts().await.len(), 1);
    assert!(
        !h.outcomes()
            .iter()
            .any(|(o, s)| o == "step-completed" && *s == Some(1)),
        "the pause was skipped, not completed"
    );
}

#[tokio::test(start_paused = true)]
async fn controller_restart_mid_rollout_resumes_exactly() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    let steps = vec![
        CanaryStep::SetWeight(20),
        CanaryStep::pause(20),
        CanaryStep::SetWeight(40),
        CanaryStep::Analysis(error_rate_analysis()),
        CanaryStep::SetWeight(60),
    ];
    h.ctl
        .apply(RolloutSpec::new(app("v2"), canary(steps)))
        .await
        .unwrap();
    h.until(10, "in the pause", |s| s.step == 1).await;
    for _ in 0..5 {
        h.tick().await;
    }
    let before = h.status().await;
    let before_started = h.ctl.rollout(&key()).await.unwrap().step_started;
    let first_steps: Vec<_> = h.outcomes();
    h.stop();
    // A new controller over the same engine (and so the same state store).
    let h2 = Harness::on(h.clock, h.engine.clone(), None).await;
    let resumed = h2.status().await;
    assert_eq!(resumed.step, before.step);
    assert_eq!(
        h2.ctl.rollout(&key()).await.unwrap().step_started,
        before_started,
        "pause time is kept"
    );
    h2.until(40, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    let mut steps: Vec<usize> = first_steps
        .into_iter()
        .chain(h2.outcomes())
        .filter(|(o, _)| o == "step-completed")
        .filter_map(|(_, s)| s)
        .collect();
    steps.sort_unstable();
    assert_eq!(steps, [0, 1, 2, 3, 4], "no step repeated or skipped");
}

#[tokio::test(start_paused = true)]
async fn crash_looping_canary_hits_the_progress_deadline() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    let v2 = app("v2").revision();
    h.engine
        .inject(Fault::crash_revision_after(&v2, Duration::from_secs(4)));
    h.ctl
        .apply(
            RolloutSpec::new(app("v2"), canary(vec![CanaryStep::SetWeight(30)]))
                .progress_deadline(60)
                .abort_scale_down_delay(0),
        )
        .await
        .unwrap();
    h.until(120, "deadline", |s| s.aborted()).await;
    let s = h.status().await;
    assert!(
        s.reason.contains("ProgressDeadlineExceeded"),
        "{}",
        s.reason
    );
    h.until(20, "rolled back", |s| s.reason.starts_with("aborted: "))
        .await;
    assert_eq!(h.counts().await[&app("v1").revision()], (10, 10));
}

#[tokio::test(start_paused = true)]
async fn rolling_update_arithmetic_on_the_engine() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    let v1 = app("v1").revision();
    let v2 = app("v2").revision();
    h.ctl
        .apply(RolloutSpec::new(app("v2"), Strategy::default()))
        .await
        .unwrap();
    settle().await;
    // Kubernetes' moves within one instant: new +3 (surge, total 13), old -2 (unavailable,
    // 8 available left), new +2 (total 13 again); then nothing until new instances are ready.
    let c = h.counts().await;
    assert_eq!((c[&v2].0, c[&v1].0), (5, 8), "{c:?}");
    let mut seen = Vec::new();
    for _ in 0..60 {
        let c = h.counts().await;
        let total: u32 = c.values().map(|(d, _)| d).sum();
        let available: u32 = c.values().map(|(_, a)| a).sum();
        assert!(total <= 13, "max surge 3: {c:?}");
        assert!(available >= 8, "max unavailable 2: {c:?}");
        seen.push((c.get(&v2).map_or(0, |x| x.0), c.get(&v1).map_or(0, |x| x.0)));
        if h.status().await.phase == RolloutPhase::Healthy {
            break;
        }
        h.tick().await;
    }
    assert_eq!(h.status().await.phase, RolloutPhase::Healthy, "{seen:?}");
    seen.dedup();
    assert_eq!(
        seen,
        [(5, 8), (10, 3), (10, 0)],
        "Kubernetes' sequence for 25%/25%"
    );
    assert_eq!(h.counts().await[&v2], (10, 10));
}

#[tokio::test(start_paused = true)]
async fn blue_green_with_preview_and_manual_approval() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    let v1 = app("v1").revision();
    let v2 = app("v2").revision();
    let mut bg = BlueGreen::manual(Some(2));
    bg.scale_down_delay_seconds = 10;
    h.ctl
        .apply(RolloutSpec::new(app("v2"), Strategy::BlueGreen(bg)))
        .await
        .unwrap();
    h.until(10, "awaiting promotion", |s| s.waiting_for_approval())
        .await;
    let c = h.counts().await;
    assert_eq!(c[&v2], (2, 2), "preview replicas");
    assert_eq!(c[&v1], (10, 10));
    assert_eq!(h.status().await.weight, Some(0), "active still v1");
    approve(&h.approvals, &v2, 2, "carol", None).await;
    h.until(10, "switched", |s| s.weight == Some(100)).await;
    assert_eq!(h.counts().await[&v2], (10, 10), "full before the switch");
    assert_eq!(h.counts().await[&v1].0, 10, "old kept for the delay");
    h.until(20, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    assert_eq!(h.status().await.stable, Some(v2), "stable at the switch");
    assert_eq!(
        h.counts().await[&v1].0,
        10,
        "the old revision waits for its delay"
    );
    for _ in 0..15 {
        h.tick().await;
    }
    assert_eq!(h.counts().await.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn stateful_partition_update_moves_highest_ordinals_first() {
    let h = Harness::new().await;
    let game = |v: &str| app(v).kind(WorkloadKind::Stateful).replicas(5);
    let strategy =
        Strategy::RollingUpdate(RollingUpdate::default().partition(IntOrPercent::Int(2)));
    h.ctl
        .apply(RolloutSpec::new(game("v1"), strategy.clone()))
        .await
        .unwrap();
    h.until(20, "v1 healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    let v2 = game("v2").revision();
    h.ctl
        .apply(RolloutSpec::new(game("v2"), strategy))
        .await
        .unwrap();
    let mut order = Vec::new();
    for _ in 0..40 {
        for i in h.engine.instances(&key()).await.unwrap() {
            if i.revision == v2 && !order.contains(&i.id) {
                order.push(i.id.clone());
            }
        }
        let unready = h
            .engine
            .instances(&key())
            .await
            .unwrap()
            .iter()
            .filter(|i| !i.ready)
            .count();
        assert!(
            unready <= 1,
            "maxUnavailable 1: {:?}",
            h.engine.instances(&key()).await.unwrap()
        );
        if h.status().await.phase == RolloutPhase::Paused {
            break;
        }
        h.tick().await;
    }
    assert_eq!(order, ["web-4", "web-3", "web-2"]);
    assert!(h.status().await.reason.contains("partition"));
    h.ctl.promote(&key()).await.unwrap();
    h.until(20, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    let all = h.engine.instances(&key()).await.unwrap();
    assert!(all.iter().all(|i| i.revision == v2 && i.ready));
}

#[derive(Debug)]
struct BrokenNginx;

#[async_trait]
impl TrafficRouter for BrokenNginx {
    fn name(&self) -> &str {
        "nginx"
    }
    fn routes_traffic(&self) -> bool {
        true
    }
    async fn set_split(&self, app: &AppKey, split: &TrafficSplit) -> Result<(), TrafficError> {
        if split
            .backends
            .iter()
            .any(|b| b.weight > 0 && b.weight < 100)
        {
            return Err(TrafficError::ReloadFailed {
                router: "nginx".into(),
                app: app.to_string(),
                reason: "nginx: [emerg] unexpected end of file".into(),
            });
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn router_failure_pauses_with_the_reason_and_bad_steps_are_rejected() {
    let clock = TokioClock::new();
    let engine = Arc::new(MemoryEngine::builder().clock(clock).build());
    let h = Harness::on(clock, engine, Some(Arc::new(BrokenNginx))).await;
    h.deploy_v1(Strategy::default()).await;
    h.ctl
        .apply(RolloutSpec::new(
            app("v2"),
            canary(vec![CanaryStep::SetWeight(20)]),
        ))
        .await
        .unwrap();
    h.until(10, "held", |s| s.held().is_some()).await;
    let s = h.status().await;
    assert_eq!(s.phase, RolloutPhase::Paused);
    assert!(
        s.reason.contains("reload") && s.reason.contains("emerg"),
        "{}",
        s.reason
    );
    assert_eq!(h.counts().await[&app("v1").revision()].0, 10);

    let err = h
        .ctl
        .apply(RolloutSpec::new(
            app("v3"),
            canary(vec![CanaryStep::SetWeight(10), CanaryStep::SetWeight(101)]),
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("steps[1].setWeight"), "{err}");
    let bad_cel = MetricSpec::new("m", ProviderSpec::plugin("fake", serde_json::json!({})))
        .success_condition("result <");
    let err = h
        .ctl
        .apply(RolloutSpec::new(
            app("v3"),
            canary(vec![CanaryStep::Analysis(AnalysisStep::new(
                AnalysisSpec::new(vec![bad_cel]),
                BTreeMap::new(),
            ))]),
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("steps[0].analysis"), "{err}");
    assert_eq!(
        h.status().await.target,
        app("v2").revision(),
        "rejected specs change nothing"
    );
    let _ = h.clock.now();
}

#[tokio::test(start_paused = true)]
async fn history_limit_and_event_stream() {
    let h = Harness::new().await;
    let mut events = h.ctl.events();
    let spec = |v: &str| RolloutSpec::new(app(v), Strategy::default()).revision_history_limit(2);
    for v in ["v1", "v2", "v3", "v4"] {
        h.ctl.apply(spec(v)).await.unwrap();
        h.until(60, "healthy", |s| {
            s.phase == RolloutPhase::Healthy && s.stable == Some(app(v).revision())
        })
        .await;
    }
    let kept: Vec<Revision> = h
        .ctl
        .history(&key())
        .await
        .into_iter()
        .map(|e| e.revision)
        .collect();
    assert_eq!(
        kept,
        [app("v2").revision(), app("v3").revision()],
        "limit 2, oldest dropped"
    );
    assert!(
        h.ctl
            .undo(&key(), Some(&app("v1").revision()))
            .await
            .is_err(),
        "v1 was dropped"
    );
    let mut reasons = Vec::new();
    while let Ok(e) = events.try_recv() {
        reasons.push(e.reason);
    }
    assert!(
        reasons
            .iter()
            .filter(|r| **r == EventReason::Healthy)
            .count()
            >= 4,
        "{reasons:?}"
    );
    assert!(reasons.contains(&EventReason::Updated), "{reasons:?}");
    // Events and notifications use one vocabulary: the reason's word is the outcome.
    assert_eq!(
        serde_json::to_value(EventReason::StepCompleted).unwrap(),
        "step-completed"
    );
    assert_eq!(EventReason::Updated.to_string(), "updated");
}

/// A router that sends traffic itself (like nginx) and records every split and preview call as
/// `split v1=80 v2=20` / `preview v2` / `preview none`, naming revisions v1…v4.
#[derive(Debug, Default)]
struct RecordingRouter {
    calls: Mutex<Vec<String>>,
}

fn version_name(rev: &Revision) -> String {
    ["v1", "v2", "v3", "v4"]
        .into_iter()
        .find(|v| app(v).revision() == *rev)
        .unwrap_or("other")
        .to_owned()
}

#[async_trait]
impl TrafficRouter for RecordingRouter {
    fn name(&self) -> &str {
        "recording"
    }
    fn routes_traffic(&self) -> bool {
        true
    }
    async fn set_split(&self, _app: &AppKey, split: &TrafficSplit) -> Result<(), TrafficError> {
        split.validate_weights()?;
        let call = ["v1", "v2"]
            .map(|v| format!("{v}={}", split.weight_of(&app(v).revision())))
            .join(" ");
        self.calls.lock().unwrap().push(format!("split {call}"));
        Ok(())
    }
    async fn set_preview(
        &self,
        _app: &AppKey,
        preview: Option<&Backend>,
    ) -> Result<(), TrafficError> {
        let call = match preview {
            Some(b) => {
                b.validate_preview()?;
                version_name(&b.revision)
            }
            None => "none".into(),
        };
        self.calls.lock().unwrap().push(format!("preview {call}"));
        Ok(())
    }
}

impl RecordingRouter {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

/// Each distinct call once, in the order of its first occurrence.
fn first_occurrences(calls: &[String]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for c in calls {
        if !seen.contains(c) {
            seen.push(c.clone());
        }
    }
    seen
}

/// After promotion: while v2 scales up, active stays on v1 and preview on v2; then active
/// switches to v2 (once), and the preview is emptied last.
fn assert_switch_then_preview_emptied(calls: &[String]) {
    let switch = calls
        .iter()
        .position(|c| c == "split v1=0 v2=100")
        .unwrap_or_else(|| panic!("no switch: {calls:?}"));
    assert!(
        calls[..switch]
            .iter()
            .all(|c| c == "split v1=100 v2=0" || c == "preview v2"),
        "before the switch: {calls:?}"
    );
    assert_eq!(
        first_occurrences(&calls[switch..]),
        ["split v1=0 v2=100", "preview none"],
        "{calls:?}"
    );
    assert_eq!(calls.last().map(String::as_str), Some("preview none"));
}

async fn recorded_harness() -> (Harness, Arc<RecordingRouter>) {
    recorded_harness_with_startup(Duration::from_secs(2)).await
}

/// A harness with a recording router, whose instances become ready `startup` after they start.
async fn recorded_harness_with_startup(startup: Duration) -> (Harness, Arc<RecordingRouter>) {
    let clock = TokioClock::new();
    let engine = engine_with_startup(&clock, startup);
    let router = Arc::new(RecordingRouter::default());
    let h = Harness::on(clock, engine, Some(router.clone())).await;
    (h, router)
}

fn manual_blue_green() -> Strategy {
    let mut bg = BlueGreen::manual(Some(2));
    bg.scale_down_delay_seconds = 10;
    Strategy::BlueGreen(bg)
}

#[tokio::test(start_paused = true)]
async fn blue_green_preview_is_routed_by_the_controller_in_argos_order() {
    let (h, router) = recorded_harness().await;
    h.deploy_v1(Strategy::default()).await;
    let mut calls = first_occurrences(&router.take());
    calls.sort();
    assert_eq!(
        calls,
        ["split v1=100 v2=0"],
        "a rollout without a preview never touches the preview route"
    );
    let v2 = app("v2").revision();
    h.ctl
        .apply(RolloutSpec::new(app("v2"), manual_blue_green()))
        .await
        .unwrap();
    h.until(10, "awaiting promotion", |s| s.waiting_for_approval())
        .await;
    let s = h.status().await;
    assert_eq!(
        s.preview,
        Some(v2.clone()),
        "preview serves v2 before approval"
    );
    assert_eq!(s.weight, Some(0), "active still v1");
    assert_eq!(
        first_occurrences(&router.take()),
        ["preview v2"],
        "preview points at v2 once it has ready instances; active untouched (still all v1)"
    );
    approve(&h.approvals, &v2, 2, "carol", None).await;
    h.until(10, "switched", |s| s.weight == Some(100)).await;
    h.until(20, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    assert_eq!(
        h.status().await.preview,
        None,
        "preview emptied once the new revision is stable"
    );
    assert_switch_then_preview_emptied(&router.take());
    let events: Vec<_> = h.outcomes();
    assert!(events.iter().any(|(o, _)| o == "healthy"), "{events:?}");
}

#[tokio::test(start_paused = true)]
async fn blue_green_abort_switches_back_and_empties_the_preview() {
    let (h, router) = recorded_harness().await;
    h.deploy_v1(Strategy::default()).await;
    h.ctl
        .apply(RolloutSpec::new(app("v2"), manual_blue_green()).abort_scale_down_delay(5))
        .await
        .unwrap();
    h.until(10, "awaiting promotion", |s| s.waiting_for_approval())
        .await;
    router.take();
    h.ctl.abort(&key()).await.unwrap();
    h.until(20, "rolled back", |s| {
        s.aborted() && s.reason.starts_with("aborted: ")
    })
    .await;
    let s = h.status().await;
    assert_eq!(s.preview, None);
    assert_eq!(s.weight, Some(0));
    let calls = router.take();
    assert_eq!(
        calls.first().map(String::as_str),
        Some("preview none"),
        "the preview is emptied at the abort, before v2 is scaled down: {calls:?}"
    );
    assert!(
        calls
            .iter()
            .all(|c| c == "preview none" || c.starts_with("split v1=100")),
        "{calls:?}"
    );
    assert_eq!(h.counts().await.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn blue_green_preview_resumes_after_a_controller_restart() {
    let (h, router) = recorded_harness().await;
    h.deploy_v1(Strategy::default()).await;
    let v2 = app("v2").revision();
    h.ctl
        .apply(RolloutSpec::new(app("v2"), manual_blue_green()))
        .await
        .unwrap();
    h.until(10, "awaiting promotion", |s| s.waiting_for_approval())
        .await;
    let before = h.status().await;
    assert_eq!(before.preview, Some(v2.clone()));
    h.stop();
    router.take();
    // A new controller and a new router (say, nginx restarted too) over the same engine.
    let router2 = Arc::new(RecordingRouter::default());
    let h2 = Harness::on(h.clock, h.engine.clone(), Some(router2.clone())).await;
    settle().await;
    let resumed = h2.status().await;
    assert_eq!(resumed.step, before.step, "still at the promotion gate");
    assert!(resumed.waiting_for_approval());
    assert_eq!(resumed.preview, Some(v2.clone()));
    assert_eq!(
        first_occurrences(&router2.take()),
        ["split v1=100 v2=0", "preview v2"],
        "the restarted controller sets active and preview again, nothing more"
    );
    assert!(router.take().is_empty(), "the old router is not used");
    h2.ctl.promote(&key()).await.unwrap();
    h2.until(30, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    assert_switch_then_preview_emptied(&router2.take());
    assert_eq!(h2.status().await.stable, Some(v2));
}

#[tokio::test(start_paused = true)]
async fn analysis_phases_and_messages_are_in_the_status() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    *h.metric.value.lock().unwrap() = 0.01;
    let measured = |count: Option<u32>| {
        let mut m = MetricSpec::new(
            "error-rate",
            ProviderSpec::plugin("fake", serde_json::json!({})),
        )
        .success_condition("result < 0.05")
        .interval(Duration::from_secs(5));
        if let Some(n) = count {
            m = m.count(n);
        }
        AnalysisStep::new(AnalysisSpec::new(vec![m]), BTreeMap::new())
    };
    let strategy = Canary::new(vec![
        CanaryStep::SetWeight(20),
        CanaryStep::Analysis(measured(Some(10))),
        CanaryStep::SetWeight(50),
    ])
    .scale_down_delay(0)
    .background(measured(None), 1);
    h.ctl
        .apply(RolloutSpec::new(app("v2"), Strategy::Canary(strategy)).abort_scale_down_delay(0))
        .await
        .unwrap();
    let s = h.status().await;
    assert_eq!(
        (s.analysis.clone(), s.background_analysis.clone()),
        (None, None)
    );
    h.until(10, "step 1 analysis running", |s| {
        s.step == 1 && s.analysis.is_some()
    })
    .await;
    for _ in 0..6 {
        h.tick().await;
    }
    let s = h.status().await;
    let step = s.analysis.clone().unwrap();
    assert_eq!(step.key, "step-1");
    assert_eq!(step.phase, AnalysisPhase::Running);
    assert!(
        step.message.starts_with(
            "error-rate: Running after 2 measurements (2 successful), last value 0.01"
        ),
        "{}",
        step.message
    );
    let bg = s.background_analysis.clone().unwrap();
    assert_eq!(
        (bg.key.as_str(), bg.phase),
        ("background", AnalysisPhase::Running)
    );
    assert!(bg.message.contains("successful"), "{}", bg.message);

    // The metric goes bad: the step analysis fails, the rollout aborts, and the status keeps
    // the failed run with its message.
    *h.metric.value.lock().unwrap() = 0.5;
    h.until(10, "aborted", |s| s.aborted()).await;
    let s = h.status().await;
    let step = s.analysis.clone().unwrap();
    assert_eq!(
        (step.key.as_str(), step.phase),
        ("step-1", AnalysisPhase::Failed)
    );
    assert!(
        step.message.contains("failed") && step.message.contains("last value 0.5"),
        "{}",
        step.message
    );
    assert!(s.background_analysis.is_some());
    h.until(30, "rolled back", |s| s.reason.starts_with("aborted: "))
        .await;
    assert_eq!(
        h.status().await.analysis.map(|a| a.phase),
        Some(AnalysisPhase::Failed),
        "still shown after the rollback"
    );
    // A new rollout starts with no analysis shown.
    *h.metric.value.lock().unwrap() = 0.0;
    let s = h
        .ctl
        .apply(RolloutSpec::new(
            app("v3"),
            canary(vec![CanaryStep::SetWeight(50)]),
        ))
        .await
        .unwrap();
    assert_eq!((s.analysis, s.background_analysis), (None, None));
}

#[tokio::test(start_paused = true)]
async fn weight_is_the_new_targets_from_step_0() {
    let (h, _router) = recorded_harness().await;
    h.deploy_v1(Strategy::default()).await;
    assert_eq!(h.status().await.weight, Some(100));
    let s = h
        .ctl
        .apply(RolloutSpec::new(
            app("v2"),
            canary(vec![
                CanaryStep::SetWeight(20),
                CanaryStep::pause_until_promoted(),
            ]),
        ))
        .await
        .unwrap();
    assert_eq!((s.step, s.weight), (0, Some(0)), "not v1's 100");
    settle().await;
    let s = h.status().await;
    assert_eq!(
        h.counts().await[&app("v2").revision()].1,
        0,
        "canary still starting"
    );
    assert_eq!((s.step, s.weight), (0, Some(0)), "nothing routed to v2 yet");
    h.until(10, "at the pause", |s| s.step == 1).await;
    assert_eq!(h.status().await.weight, Some(20));
    // Going back to v1 mid-rollout: v1 has what v2 did not.
    let s = h
        .ctl
        .apply(RolloutSpec::new(app("v1"), Strategy::default()))
        .await
        .unwrap();
    assert_eq!(s.weight, Some(80));
    h.until(20, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    assert_eq!(h.status().await.weight, Some(100));
}

/// Fails the first `clears` attempts to empty the preview once a preview was set.
#[derive(Debug)]
struct StickyPreview {
    inner: RecordingRouter,
    clears: Mutex<u32>,
    previewed: Mutex<bool>,
}

#[async_trait]
impl TrafficRouter for StickyPreview {
    fn name(&self) -> &str {
        "sticky"
    }
    fn routes_traffic(&self) -> bool {
        true
    }
    async fn set_split(&self, app: &AppKey, split: &TrafficSplit) -> Result<(), TrafficError> {
        self.inner.set_split(app, split).await
    }
    async fn set_preview(
        &self,
        app: &AppKey,
        preview: Option<&Backend>,
    ) -> Result<(), TrafficError> {
        if preview.is_some() {
            *self.previewed.lock().unwrap() = true;
        } else if *self.previewed.lock().unwrap() {
            let mut clears = self.clears.lock().unwrap();
            if *clears > 0 {
                *clears -= 1;
                return Err(TrafficError::ReloadFailed {
                    router: "sticky".into(),
                    app: app.to_string(),
                    reason: "reload timed out".into(),
                });
            }
        }
        self.inner.set_preview(app, preview).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_preview_clear_at_completion_is_retried() {
    let clock = TokioClock::new();
    let engine = Arc::new(MemoryEngine::builder().clock(clock).build());
    let router = Arc::new(StickyPreview {
        inner: RecordingRouter::default(),
        clears: Mutex::new(2),
        previewed: Mutex::new(false),
    });
    let h = Harness::on(clock, engine, Some(router.clone())).await;
    h.deploy_v1(Strategy::default()).await;
    let mut bg = BlueGreen::default();
    bg.scale_down_delay_seconds = 0;
    h.ctl
        .apply(RolloutSpec::new(app("v2"), Strategy::BlueGreen(bg)))
        .await
        .unwrap();
    // The clear fails twice at completion (the reconcile errs and is retried, showing
    // "retrying: …" meanwhile) and then goes through.
    h.until(10, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    assert_eq!(*router.clears.lock().unwrap(), 0, "both failures seen");
    let s = h.status().await;
    assert_eq!((s.preview, s.stable), (None, Some(app("v2").revision())));
    assert_eq!(
        router.inner.take().last().map(String::as_str),
        Some("preview none")
    );
}

/// (desired, available) of `rev`, zeros when its group is gone.
fn of(c: &BTreeMap<Revision, (u32, u32)>, rev: &Revision) -> (u32, u32) {
    c.get(rev).copied().unwrap_or((0, 0))
}

#[tokio::test(start_paused = true)]
async fn blue_green_promote_full_from_preview_scales_up_before_the_switch_and_keeps_the_delay() {
    let (h, router) = recorded_harness().await;
    h.deploy_v1(Strategy::default()).await;
    let v1 = app("v1").revision();
    let v2 = app("v2").revision();
    h.ctl
        .apply(RolloutSpec::new(app("v2"), manual_blue_green()))
        .await
        .unwrap();
    h.until(10, "awaiting promotion", |s| s.waiting_for_approval())
        .await;
    assert_eq!(h.counts().await[&v2], (2, 2), "2 of 10 green in preview");
    router.take();
    let promoted = h.clock.now();
    h.ctl.promote_full(&key()).await.unwrap();
    assert!(
        h.approvals.pending().await.unwrap().is_empty(),
        "the skipped promotion gate no longer waits for anyone"
    );
    let mut switched = None;
    let mut blue_shrunk = None;
    for _ in 0..60 {
        settle().await;
        let c = h.counts().await;
        let s = h.status().await;
        let now = h.clock.now();
        if switched.is_none() {
            if s.weight == Some(100) {
                switched = Some(now);
                assert_eq!(of(&c, &v2), (10, 10), "green fully available at the switch");
            } else {
                assert_eq!(s.weight, Some(0), "active stays blue until the switch");
            }
            assert_eq!(of(&c, &v1), (10, 10), "blue keeps every replica: {c:?}");
        }
        if blue_shrunk.is_none() && of(&c, &v1).0 < 10 {
            blue_shrunk = Some(now);
        }
        // Healthy at the switch; the old revision goes after its delay.
        if s.phase == RolloutPhase::Healthy && c.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(h.status().await.phase, RolloutPhase::Healthy);
    let switched = switched.expect("traffic switched");
    assert!(
        switched.duration_since(promoted).unwrap() >= Duration::from_secs(2),
        "green needed its startup time before the switch"
    );
    let shrunk = blue_shrunk.expect("blue scaled down");
    assert!(
        shrunk.duration_since(switched).unwrap() >= Duration::from_secs(10),
        "the scale-down delay (10 s) still applies after promote-full"
    );
    assert_switch_then_preview_emptied(&router.take());
    let c = h.counts().await;
    assert_eq!((c.len(), of(&c, &v2)), (1, (10, 10)), "{c:?}");
    assert_eq!(h.status().await.stable, Some(v2));
}

#[tokio::test(start_paused = true)]
async fn canary_promote_full_with_a_router_keeps_the_scale_down_delay() {
    let (h, _router) = recorded_harness().await;
    h.deploy_v1(Strategy::default()).await;
    let v1 = app("v1").revision();
    let v2 = app("v2").revision();
    let strategy = Canary::new(vec![
        CanaryStep::SetWeight(20),
        CanaryStep::pause_until_promoted(),
        CanaryStep::SetWeight(50),
        CanaryStep::pause_until_promoted(),
    ])
    .scale_down_delay(10);
    h.ctl
        .apply(RolloutSpec::new(app("v2"), Strategy::Canary(strategy)))
        .await
        .unwrap();
    h.until(10, "paused at 1", |s| s.step == 1).await;
    let promoted = h.clock.now();
    h.ctl.promote_full(&key()).await.unwrap();
    let mut stable_shrunk = None;
    for _ in 0..60 {
        settle().await;
        let c = h.counts().await;
        if of(&c, &v1).0 < 10 {
            stable_shrunk = Some(h.clock.now());
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let shrunk = stable_shrunk.expect("stable scaled down");
    assert_eq!(h.status().await.weight, Some(100));
    assert!(
        shrunk.duration_since(promoted).unwrap() >= Duration::from_secs(10),
        "the stable group is kept for the scale-down delay after promote-full"
    );
    h.until(20, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    assert_eq!(of(&h.counts().await, &v2), (10, 10));
}

#[tokio::test(start_paused = true)]
async fn promote_full_during_the_scale_down_delay_keeps_its_clock() {
    let (h, _router) = recorded_harness().await;
    h.deploy_v1(Strategy::default()).await;
    let v1 = app("v1").revision();
    let strategy = Canary::new(vec![
        CanaryStep::SetWeight(20),
        CanaryStep::pause_until_promoted(),
    ])
    .scale_down_delay(10);
    h.ctl
        .apply(RolloutSpec::new(app("v2"), Strategy::Canary(strategy)))
        .await
        .unwrap();
    h.until(10, "paused at 1", |s| s.step == 1).await;
    h.ctl.promote_full(&key()).await.unwrap();
    // Run until the delay has begun: all traffic on v2, v1 still at full size.
    let mut delay_started = None;
    for _ in 0..60 {
        settle().await;
        if h.status().await.weight == Some(100) && of(&h.counts().await, &v1).0 == 10 {
            delay_started = Some(h.clock.now());
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let delay_started = delay_started.expect("the scale-down delay began");
    tokio::time::sleep(Duration::from_secs(6)).await;
    settle().await;
    // In the delay the new revision is already stable (Argo ≥ 1.2): a second promote-full has
    // nothing to promote, and the delay is not restarted.
    let err = h.ctl.promote_full(&key()).await.unwrap_err().to_string();
    assert!(err.contains("is Healthy: nothing to promote-full"), "{err}");
    assert_eq!(h.status().await.stable, Some(app("v2").revision()));
    let mut shrunk = None;
    for _ in 0..30 {
        settle().await;
        if of(&h.counts().await, &v1).0 < 10 {
            shrunk = Some(h.clock.now());
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let waited = shrunk
        .expect("stable scaled down")
        .duration_since(delay_started)
        .unwrap();
    assert!(
        waited < Duration::from_secs(13),
        "the 10 s delay runs from its start, not again from the second promote-full 6 s in: {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_canary_scale_down_delay_counts_from_the_full_switch_not_the_step_start() {
    // Instances take 15 s to become ready, longer than the 10 s delay: the final step spends
    // 15 s scaling the canary up before it takes all traffic, and the delay must still run in
    // full after that.
    let (h, _router) = recorded_harness_with_startup(Duration::from_secs(15)).await;
    h.deploy_v1(Strategy::default()).await;
    let v1 = app("v1").revision();
    let strategy = Canary::new(vec![CanaryStep::SetWeight(20)]).scale_down_delay(10);
    h.ctl
        .apply(RolloutSpec::new(app("v2"), Strategy::Canary(strategy)))
        .await
        .unwrap();
    let (mut switched, mut shrunk) = (None, None);
    for _ in 0..120 {
        settle().await;
        let now = h.clock.now();
        if switched.is_none() && h.status().await.weight == Some(100) {
            switched = Some(now);
        }
        if of(&h.counts().await, &v1).0 < 10 {
            shrunk = Some(now);
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let switched = switched.expect("all traffic on v2");
    let waited = shrunk
        .expect("stable scaled down")
        .duration_since(switched)
        .unwrap();
    // The switch is seen by polling once a second, so up to a second after it happened.
    assert!(
        waited >= Duration::from_secs(9),
        "the old stable group was kept only {waited:?} after the switch"
    );
    h.until(30, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_new_stable_that_loses_availability_in_the_scale_down_delay_keeps_the_old_revision() {
    let (h, _router) = recorded_harness().await;
    h.deploy_v1(Strategy::default()).await;
    let (v1, v2) = (app("v1").revision(), app("v2").revision());
    // Every v2 instance crashes 12 s after it starts, inside the 10 s delay that begins once
    // all ten are ready and take all traffic.
    h.engine
        .inject(Fault::crash_revision_after(&v2, Duration::from_secs(12)));
    let strategy = Canary::new(vec![CanaryStep::SetWeight(20)]).scale_down_delay(10);
    h.ctl
        .apply(RolloutSpec::new(app("v2"), Strategy::Canary(strategy)))
        .await
        .unwrap();
    let (mut crashed, mut full_again, mut shrunk) = (false, None, None);
    for _ in 0..120 {
        settle().await;
        let c = h.counts().await;
        let s = h.status().await;
        if s.stable == Some(v2.clone()) && of(&c, &v2).1 < 10 && !crashed {
            crashed = true;
            h.engine.clear_faults();
            assert_eq!(
                s.weight,
                Some(100),
                "traffic stays on the new stable revision"
            );
        } else if crashed && full_again.is_none() && of(&c, &v2).1 == 10 {
            full_again = Some(h.clock.now());
        }
        if of(&c, &v1).0 < 10 {
            assert!(
                full_again.is_some(),
                "v1 removed while v2 was not full: {c:?}"
            );
            shrunk = Some(h.clock.now());
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(crashed, "v2 crashed during the delay");
    let waited = shrunk
        .expect("old revision scaled down")
        .duration_since(full_again.expect("v2 full again"))
        .unwrap();
    assert!(
        waited >= Duration::from_secs(9),
        "the delay starts again once v2 is full again (polled each second): {waited:?}"
    );
}

fn approval_canary() -> Strategy {
    canary(vec![
        CanaryStep::SetWeight(10),
        CanaryStep::Approval(ApprovalStep::default()),
        CanaryStep::SetWeight(60),
    ])
}

/// Approves `step` of the newest attempt of `revision`'s release, as the HTTP API does.
async fn approve(
    approvals: &Approvals,
    revision: &Revision,
    step: usize,
    by: &str,
    comment: Option<String>,
) {
    let k = approvals
        .latest(&key(), revision, step)
        .await
        .unwrap()
        .request
        .key;
    approvals.approve(&k, by, comment).await.unwrap();
}

/// Rejects `step` of the newest attempt of `revision`'s release, as the HTTP API does.
async fn reject(approvals: &Approvals, revision: &Revision, step: usize, by: &str) {
    let k = approvals
        .latest(&key(), revision, step)
        .await
        .unwrap()
        .request
        .key;
    approvals.reject(&k, by, None).await.unwrap();
}

/// The in-process approvals, whose `withdraw` fails while `failing` is set (a remote approval
/// service that is down).
#[derive(Debug)]
struct FlakyWithdraw {
    inner: Arc<Approvals>,
    failing: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl ApprovalGate for FlakyWithdraw {
    async fn request(&self, req: &ApprovalRequest) -> Result<(), ApprovalError> {
        self.inner.request(req).await
    }
    async fn decision(&self, key: &ApprovalKey) -> Result<Option<Decision>, ApprovalError> {
        self.inner.decision(key).await
    }
    async fn withdraw(&self, app: &AppKey, revision: &Revision) -> Result<(), ApprovalError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ApprovalError::Backend(
                "approval service unavailable".into(),
            ));
        }
        self.inner.withdraw(app, revision).await
    }
}

#[tokio::test(start_paused = true)]
async fn an_earlier_attempts_decision_is_never_read_even_when_withdrawing_fails() {
    let clock = TokioClock::new();
    let engine = engine_with_startup(&clock, Duration::from_secs(2));
    let approvals = Arc::new(Approvals::new());
    let gate = Arc::new(FlakyWithdraw {
        inner: approvals.clone(),
        failing: std::sync::atomic::AtomicBool::new(true),
    });
    let h = Harness::with_gate(clock, engine, None, approvals, gate.clone()).await;
    h.deploy_v1(Strategy::default()).await;
    let v2 = app("v2").revision();
    h.ctl
        .apply(RolloutSpec::new(app("v2"), approval_canary()).abort_scale_down_delay(0))
        .await
        .unwrap();
    h.until(10, "approval requested", |s| s.waiting_for_approval())
        .await;
    // The approval service cannot withdraw anything; bob rejects attempt 1.
    reject(&h.approvals, &v2, 1, "bob").await;
    h.until(20, "rolled back", |s| s.reason.starts_with("aborted: "))
        .await;
    let first = h.status().await.attempt;
    h.ctl.retry(&key()).await.unwrap();
    h.until(10, "asked again", |s| s.waiting_for_approval())
        .await;
    for _ in 0..5 {
        h.tick().await;
    }
    let s = h.status().await;
    assert!(!s.aborted(), "bob's earlier rejection is not read: {s:?}");
    assert_eq!(s.attempt, first + 1);
    let pending = h.approvals.pending().await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].request.key.attempt, s.attempt);
    approve(&h.approvals, &v2, 1, "alice", None).await;
    h.until(30, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    assert_eq!(h.status().await.stable, Some(v2));
}

#[tokio::test(start_paused = true)]
async fn retry_after_a_rejection_asks_for_approval_again() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    let v2 = app("v2").revision();
    h.ctl
        .apply(RolloutSpec::new(app("v2"), approval_canary()).abort_scale_down_delay(0))
        .await
        .unwrap();
    h.until(10, "approval requested", |s| s.waiting_for_approval())
        .await;
    reject(&h.approvals, &v2, 1, "bob").await;
    h.until(20, "rolled back", |s| s.reason.starts_with("aborted: "))
        .await;
    assert!(
        h.approvals.latest(&key(), &v2, 1).await.is_err(),
        "the attempt's rejection is withdrawn"
    );
    h.ctl.retry(&key()).await.unwrap();
    h.until(10, "asked again", |s| {
        s.step == 1 && s.waiting_for_approval()
    })
    .await;
    for _ in 0..5 {
        h.tick().await;
    }
    let s = h.status().await;
    assert!(!s.aborted(), "the earlier rejection is not re-read: {s:?}");
    assert_eq!((s.step, s.phase), (1, RolloutPhase::Paused));
    let pending = h.approvals.pending().await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(
        (
            pending[0].request.key.revision.clone(),
            pending[0].request.key.step
        ),
        (v2.clone(), 1)
    );
    approve(&h.approvals, &v2, 1, "alice", None).await;
    h.until(30, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    assert_eq!(h.status().await.stable, Some(v2));
}

#[tokio::test(start_paused = true)]
async fn an_abort_withdraws_pending_approvals_and_a_re_release_asks_again() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    let v1 = app("v1").revision();
    let v2 = app("v2").revision();
    let spec = |v: &str| RolloutSpec::new(app(v), approval_canary()).abort_scale_down_delay(0);
    h.ctl.apply(spec("v2")).await.unwrap();
    h.until(10, "approval requested", |s| s.waiting_for_approval())
        .await;
    assert_eq!(h.approvals.pending().await.unwrap().len(), 1);
    h.ctl.abort(&key()).await.unwrap();
    assert!(
        h.approvals.pending().await.unwrap().is_empty(),
        "an aborted rollout asks nobody: {:?}",
        h.approvals.pending().await.unwrap()
    );
    // Superseding a waiting rollout withdraws its request too.
    h.ctl.retry(&key()).await.unwrap();
    h.until(10, "approval requested again", |s| s.waiting_for_approval())
        .await;
    h.ctl.apply(spec("v3")).await.unwrap();
    let waiting: Vec<_> = h
        .approvals
        .pending()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.request.key.revision)
        .collect();
    assert!(!waiting.contains(&v2), "{waiting:?}");
    // v2 released with an approval, then undone, then released again: it asks again.
    h.ctl.apply(spec("v2")).await.unwrap();
    h.until(10, "v2 approval requested", |s| s.waiting_for_approval())
        .await;
    approve(&h.approvals, &v2, 1, "alice", None).await;
    h.until(30, "v2 healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    h.ctl.undo(&key(), Some(&v1)).await.unwrap();
    h.until(10, "v1 approval requested", |s| s.waiting_for_approval())
        .await;
    approve(&h.approvals, &v1, 1, "alice", None).await;
    h.until(30, "v1 healthy", |s| {
        s.phase == RolloutPhase::Healthy && s.stable == Some(v1.clone())
    })
    .await;
    h.ctl.apply(spec("v2")).await.unwrap();
    h.until(10, "at the approval step", |s| s.step == 1).await;
    for _ in 0..5 {
        h.tick().await;
    }
    let s = h.status().await;
    assert_eq!(
        (s.step, s.phase),
        (1, RolloutPhase::Paused),
        "alice's approval of the earlier release does not count: {s:?}"
    );
    assert!(s.waiting_for_approval());
    assert_eq!(h.approvals.pending().await.unwrap().len(), 1);
    assert_eq!(
        h.approvals.pending().await.unwrap()[0].request.key.revision,
        v2
    );
}

/// Successful below 0.05, failed above 0.5, inconclusive in between.
fn three_way_analysis() -> AnalysisStep {
    let metric = MetricSpec::new(
        "error-rate",
        ProviderSpec::plugin("fake", serde_json::json!({})),
    )
    .success_condition("result < 0.05")
    .failure_condition("result > 0.5");
    AnalysisStep::new(AnalysisSpec::new(vec![metric]), BTreeMap::new())
}

#[tokio::test(start_paused = true)]
async fn promote_continues_past_a_failed_analysis_under_the_pause_policy() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    *h.metric.value.lock().unwrap() = 0.9;
    h.ctl
        .apply(
            RolloutSpec::new(
                app("v2"),
                canary(vec![
                    CanaryStep::SetWeight(30),
                    CanaryStep::Analysis(three_way_analysis()),
                    CanaryStep::SetWeight(60),
                ]),
            )
            .failure_policy(FailurePolicy::Pause),
        )
        .await
        .unwrap();
    h.until(20, "held", |s| s.held().is_some()).await;
    assert_eq!(
        h.status().await.analysis.map(|a| a.phase),
        Some(AnalysisPhase::Failed)
    );
    // The operator looked at the failure and accepts it: promote goes on, the metric is
    // still bad and is not measured again.
    let calls = *h.metric.calls.lock().unwrap();
    h.ctl.promote(&key()).await.unwrap();
    h.until(30, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    assert_eq!(*h.metric.calls.lock().unwrap(), calls);
    assert_eq!(h.status().await.stable, Some(app("v2").revision()));
}

#[tokio::test(start_paused = true)]
async fn promote_continues_past_a_rejected_approval_under_the_pause_policy() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    let v2 = app("v2").revision();
    h.ctl
        .apply(RolloutSpec::new(app("v2"), approval_canary()).failure_policy(FailurePolicy::Pause))
        .await
        .unwrap();
    h.until(10, "approval requested", |s| s.waiting_for_approval())
        .await;
    reject(&h.approvals, &v2, 1, "bob").await;
    h.until(10, "held", |s| s.held().is_some()).await;
    assert!(h.status().await.reason.contains("rejected"));
    h.ctl.promote(&key()).await.unwrap();
    h.until(30, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    assert_eq!(h.status().await.stable, Some(v2));
}

#[tokio::test(start_paused = true)]
async fn promote_after_an_inconclusive_background_analysis_proceeds() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    *h.metric.value.lock().unwrap() = 0.2;
    let strategy = Canary::new(vec![
        CanaryStep::SetWeight(20),
        CanaryStep::SetWeight(40),
        CanaryStep::SetWeight(60),
    ])
    .scale_down_delay(0)
    .background(three_way_analysis(), 0);
    h.ctl
        .apply(RolloutSpec::new(app("v2"), Strategy::Canary(strategy)))
        .await
        .unwrap();
    h.until(10, "paused", |s| s.phase == RolloutPhase::Paused)
        .await;
    let s = h.status().await;
    assert_eq!(s.step, 0);
    assert!(s.reason.contains("inconclusive"), "{}", s.reason);
    assert_eq!(
        s.background_analysis.map(|a| a.phase),
        Some(AnalysisPhase::Inconclusive)
    );
    // The metric recovers; promote acknowledges the inconclusive run, and a new background run
    // (as in Argo after a resume) lets the later steps go on.
    *h.metric.value.lock().unwrap() = 0.0;
    h.ctl.promote(&key()).await.unwrap();
    h.until(30, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    assert!(*h.metric.calls.lock().unwrap() >= 2, "measured again");
}

#[tokio::test(start_paused = true)]
async fn promote_after_an_inconclusive_step_analysis_proceeds() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    *h.metric.value.lock().unwrap() = 0.2;
    h.ctl
        .apply(RolloutSpec::new(
            app("v2"),
            canary(vec![
                CanaryStep::SetWeight(20),
                CanaryStep::Analysis(three_way_analysis()),
                CanaryStep::SetWeight(50),
            ]),
        ))
        .await
        .unwrap();
    h.until(10, "paused", |s| s.phase == RolloutPhase::Paused)
        .await;
    assert_eq!(h.status().await.step, 1);
    h.ctl.promote(&key()).await.unwrap();
    h.until(30, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_held_rollout_still_follows_replica_changes() {
    let h = Harness::new().await;
    h.deploy_v1(Strategy::default()).await;
    let v1 = app("v1").revision();
    let v2 = app("v2").revision();
    *h.metric.value.lock().unwrap() = 0.9;
    let spec = |replicas: u32| {
        RolloutSpec::new(
            app("v2").replicas(replicas),
            canary(vec![
                CanaryStep::SetWeight(30),
                CanaryStep::Analysis(error_rate_analysis()),
                CanaryStep::SetWeight(60),
            ]),
        )
        .failure_policy(FailurePolicy::Pause)
    };
    h.ctl.apply(spec(10)).await.unwrap();
    h.until(20, "held", |s| s.held().is_some()).await;
    let held = h.status().await;
    let c = h.counts().await;
    assert_eq!((of(&c, &v2), of(&c, &v1)), ((3, 3), (7, 7)), "{c:?}");
    // Scaled up while held: 30% of 20 on v2, the rest on v1; the step, weight and hold stay.
    h.ctl.apply(spec(20)).await.unwrap();
    for _ in 0..10 {
        h.tick().await;
    }
    let c = h.counts().await;
    assert_eq!((of(&c, &v2), of(&c, &v1)), ((6, 6), (14, 14)), "{c:?}");
    let s = h.status().await;
    assert_eq!(
        (s.step, s.weight, s.phase, s.held().map(str::to_owned)),
        (
            held.step,
            held.weight,
            RolloutPhase::Paused,
            held.held().map(str::to_owned)
        )
    );
    // And down again.
    h.ctl.apply(spec(5)).await.unwrap();
    for _ in 0..10 {
        h.tick().await;
    }
    let c = h.counts().await;
    // Argo's surge-aware rule: 2 of 6 is nearer 30 % than 2 of 5.
    assert_eq!((of(&c, &v2), of(&c, &v1)), ((2, 2), (4, 4)), "{c:?}");
    assert_eq!(h.status().await.held(), held.held());
    // Retry with a good metric finishes at the new size.
    *h.metric.value.lock().unwrap() = 0.0;
    h.ctl.retry(&key()).await.unwrap();
    h.until(30, "healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    assert_eq!(h.counts().await[&v2], (5, 5));
}

/// Applies `strategy` on a controller with nothing deployed; returns the error and checks that
/// nothing was created.
async fn rejected(strategy: Strategy) -> String {
    let h = Harness::new().await;
    let err = h
        .ctl
        .apply(RolloutSpec::new(app("v1"), strategy))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            rorqual_release::ControllerError::InvalidStrategy { .. }
        ),
        "{err:?}"
    );
    settle().await;
    for _ in 0..3 {
        h.tick().await;
    }
    assert!(h.ctl.status(&key()).await.is_none(), "no rollout");
    assert!(h.ctl.is_empty());
    assert!(
        h.engine.groups(&key()).await.unwrap().is_empty(),
        "no group"
    );
    assert!(
        h.engine
            .state_store()
            .list(rorqual_release::STATE_PREFIX)
            .await
            .unwrap()
            .is_empty(),
        "no record"
    );
    err.to_string()
}

#[tokio::test(start_paused = true)]
async fn bad_steps_are_rejected_by_apply_naming_the_step_before_anything_starts() {
    let fake = |config: serde_json::Value| {
        MetricSpec::new("m", ProviderSpec::plugin("fake", config)).success_condition("result < 1")
    };
    let steps = |bad: CanaryStep| {
        canary(vec![
            CanaryStep::SetWeight(10),
            CanaryStep::pause(5),
            bad,
            CanaryStep::SetWeight(50),
        ])
    };
    // An argument the template does not declare.
    let unknown_arg = AnalysisStep::new(
        AnalysisSpec::new(vec![fake(serde_json::json!({}))]),
        [("service".to_owned(), "web".to_owned())].into(),
    );
    let err = rejected(steps(CanaryStep::Analysis(unknown_arg))).await;
    assert!(
        err.contains("steps[2].analysis") && err.contains("unknown argument `service`"),
        "{err}"
    );
    // A template that uses an argument it does not declare.
    let undeclared = AnalysisStep::new(
        AnalysisSpec::new(vec![fake(
            serde_json::json!({"query": "errors{service=\"{{args.service}}\"}"}),
        )]),
        BTreeMap::new(),
    );
    let err = rejected(steps(CanaryStep::Analysis(undeclared))).await;
    assert!(
        err.contains("steps[2].analysis") && err.contains("service"),
        "{err}"
    );
    // A negative pause.
    let err = rejected(steps(CanaryStep::pause(-30))).await;
    assert!(err.contains("steps[2].pause.duration"), "{err}");
    assert!(err.contains("-30"), "{err}");
    // Blue-green's analyses are named by their field.
    let mut bg = BlueGreen::default();
    bg.pre_promotion_analysis = Some(AnalysisStep::new(
        AnalysisSpec::new(vec![fake(serde_json::json!({}))]),
        [("service".to_owned(), "web".to_owned())].into(),
    ));
    let err = rejected(Strategy::BlueGreen(bg)).await;
    assert!(err.contains("prePromotionAnalysis"), "{err}");
}
