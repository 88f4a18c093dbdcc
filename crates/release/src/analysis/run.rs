//! The analysis run: a pure state machine over measurements, persisted by the controller.
//!
//! Measurement bookkeeping lives in [`super::measurement`], the verdicts in
//! [`super::assessment`]. Measuring is split so that a controller can spawn it:
//! [`AnalysisRun::due`] (pure) hands out owned [`PendingMeasurement`]s,
//! [`PendingMeasurement::measure`] (async, I/O) turns one into a [`CompletedMeasurement`], and
//! [`AnalysisRun::record`] (pure) applies it, ignoring stale and duplicate results.

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use futures::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::assessment::judge;
use super::measurement::{MetricResult, Outcome, record};
use super::provider::{MeasureOutcome, MetricProvider, ProviderError};
use super::{AnalysisError, AnalysisPhase, AnalysisSpec, MetricSpec};

/// A running analysis (Argo's `AnalysisRun`): serialisable so a controller can persist it and
/// resume after a restart.
///
/// The run is driven from outside: [`AnalysisRun::due`] lists the measurements due at `now`,
/// the caller takes them ([`PendingMeasurement::measure`], in spawned tasks if it likes) and
/// hands the results to [`AnalysisRun::record`]; [`AnalysisRun::tick`] does all three in
/// place. [`AnalysisRun::next_due`] says when to look again. Terminal phases are final;
/// Inconclusive is terminal too (the controller pauses and reports it), so a run never hangs
/// in it.
///
/// A measurement a provider answers as still running ([`MeasureOutcome::Running`]) stays in
/// progress on its metric and is resumed when next due. When the run ends before it does
/// (terminated, or another metric ended the run), it is set aside: the caller takes those with
/// [`AnalysisRun::take_abandoned`] and stops each with [`RunningMeasurement::terminate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRun {
    spec: AnalysisSpec,
    args: BTreeMap<String, String>,
    started_at: SystemTime,
    phase: AnalysisPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    metrics: Vec<MetricResult>,
    /// Measurements still running whose metric ended: to be terminated by the caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    abandoned: Vec<Abandoned>,
}

/// A running measurement whose metric ended, kept until the caller terminates it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Abandoned {
    metric: String,
    handle: Value,
}

/// One measurement due: owned (`Clone + Send + Sync + 'static`), so it can be moved into a
/// spawned task; its result goes back to [`AnalysisRun::record`].
///
/// It carries the metric with `{{args.x}}` substituted, the run's arguments, and the metric's
/// sequence number (measurements it has taken, errors included), which tells a stale or
/// duplicate result from the one the run waits for. A controller that spawns measurements
/// should not spawn a second one for the same metric and sequence number while one is in
/// flight: [`AnalysisRun::due`] hands out the same measurement until a result is recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingMeasurement {
    metric: String,
    spec: MetricSpec,
    args: BTreeMap<String, String>,
    seq: u64,
    /// The handle of the measurement in progress to resume, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resume: Option<Value>,
    /// Why the metric could not be rendered with the arguments (the spec then is unrendered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    invalid: Option<String>,
}

/// The result of a [`PendingMeasurement`], for [`AnalysisRun::record`].
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedMeasurement {
    metric: String,
    seq: u64,
    resumed: Option<Value>,
    outcome: Outcome,
}

/// A measurement in progress, owned, with what its provider needs to stop it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningMeasurement {
    metric: String,
    spec: MetricSpec,
    args: BTreeMap<String, String>,
    handle: Value,
}

impl AnalysisRun {
    /// Starts a run of `spec` with `args` at `now`; validates the spec with the arguments first.
    pub fn new(
        spec: &AnalysisSpec,
        args: BTreeMap<String, String>,
        now: SystemTime,
    ) -> Result<Self, AnalysisError> {
        spec.validate(&args)?;
        let args = spec.resolve_args(&args)?;
        let metrics = spec
            .metrics
            .iter()
            .map(|m| MetricResult {
                name: m.name.clone(),
                phase: AnalysisPhase::Pending,
                message: None,
                count: 0,
                successful: 0,
                failed: 0,
                inconclusive: 0,
                error: 0,
                consecutive_error: 0,
                consecutive_success: 0,
                measurements: VecDeque::new(),
                next_due: Some(now + m.initial_delay.map(|d| d.0).unwrap_or_default()),
                in_progress: None,
            })
            .collect();
        let mut run = AnalysisRun {
            spec: spec.clone(),
            args,
            started_at: now,
            phase: AnalysisPhase::Pending,
            message: None,
            metrics,
            abandoned: Vec::new(),
        };
        run.update_phase();
        Ok(run)
    }

    /// The measurements due at `now`: one per metric that is not terminal and whose next
    /// measurement (or resumption) is due. Empty once the run is terminal. Pure: calling it
    /// again before recording hands out the same measurements.
    pub fn due(&self, now: SystemTime) -> Vec<PendingMeasurement> {
        if self.phase.is_terminal() {
            return Vec::new();
        }
        self.metrics
            .iter()
            .zip(&self.spec.metrics)
            .filter(|(r, _)| !r.phase.is_terminal() && r.next_due.is_some_and(|t| t <= now))
            .map(|(r, spec)| {
                let (spec, invalid) = match spec.render(&self.args) {
                    Ok(rendered) => (rendered, None),
                    Err(reason) => (spec.clone(), Some(reason)),
                };
                PendingMeasurement {
                    metric: r.name.clone(),
                    spec,
                    args: self.args.clone(),
                    seq: r.taken(),
                    resume: r.in_progress.as_ref().map(|p| p.handle.clone()),
                    invalid,
                }
            })
            .collect()
    }

    /// Applies a measurement's result at `now` and recomputes the phases. Returns whether it
    /// applied: a result is ignored when the run is terminal, its metric is unknown or
    /// terminal, its sequence number is not the metric's current one (stale, or a duplicate
    /// of a result already recorded), or it belongs to another attempt at the measurement in
    /// progress (a duplicate of a start whose running measurement the run already holds).
    pub fn record(&mut self, done: CompletedMeasurement, now: SystemTime) -> bool {
        if self.phase.is_terminal() {
            return false;
        }
        let Some(i) = self.metrics.iter().position(|r| r.name == done.metric) else {
            return false;
        };
        let r = &self.metrics[i];
        let current = r.in_progress.as_ref().map(|p| &p.handle);
        if r.phase.is_terminal() || r.taken() != done.seq || current != done.resumed.as_ref() {
            return false;
        }
        let spec = &self.spec.metrics[i];
        record(spec, &mut self.metrics[i], done.outcome, now);
        self.update_phase();
        true
    }

    /// Takes every measurement due at `now` (one per metric, concurrently through
    /// `providers`), records them, stops the running measurements the run abandoned (errors
    /// are logged), and returns the run's phase. The in-place form of [`AnalysisRun::due`],
    /// [`PendingMeasurement::measure`] and [`AnalysisRun::record`].
    pub async fn tick(&mut self, providers: &dyn MetricProvider, now: SystemTime) -> AnalysisPhase {
        let due = self.due(now);
        let done = futures::future::join_all(due.iter().map(|p| p.measure(providers))).await;
        for d in done {
            self.record(d, now);
        }
        for running in self.take_abandoned() {
            if let Err(err) = running.terminate(providers).await {
                tracing::warn!(metric = %running.metric, error = %err,
                    "cannot terminate an abandoned running measurement");
            }
        }
        self.phase
    }

    /// Ends the run now (a background analysis ends with its rollout): metrics still measuring
    /// end Successful unless they already failed. Measurements in progress are set aside for
    /// [`AnalysisRun::take_abandoned`].
    pub fn terminate(&mut self) {
        if self.phase.is_terminal() {
            return;
        }
        for r in &mut self.metrics {
            if !r.phase.is_terminal() {
                r.phase = AnalysisPhase::Successful;
                r.message = Some(format!("terminated after {} measurements", r.count));
                r.next_due = None;
            }
        }
        self.update_phase();
    }

    /// The measurements in progress (a provider answered them as running), in spec order.
    pub fn running(&self) -> Vec<RunningMeasurement> {
        self.metrics
            .iter()
            .zip(&self.spec.metrics)
            .filter_map(|(r, spec)| {
                let p = r.in_progress.as_ref()?;
                Some(self.running_measurement(&r.name, spec, p.handle.clone()))
            })
            .collect()
    }

    /// Removes and returns the running measurements whose metric ended (the run was
    /// terminated, or another metric ended it): the caller stops each with
    /// [`RunningMeasurement::terminate`]. Persisted with the run until taken.
    pub fn take_abandoned(&mut self) -> Vec<RunningMeasurement> {
        std::mem::take(&mut self.abandoned)
            .into_iter()
            .filter_map(|a| {
                // `abandoned` only names metrics of this spec (it is filled from them); a
                // hand-edited record that names another has nothing to terminate it with.
                let Some(spec) = self.spec.metrics.iter().find(|m| m.name == a.metric) else {
                    tracing::warn!(metric = %a.metric, "abandoned measurement of an unknown metric dropped");
                    return None;
                };
                Some(self.running_measurement(&a.metric, spec, a.handle))
            })
            .collect()
    }

    fn running_measurement(
        &self,
        metric: &str,
        spec: &MetricSpec,
        handle: Value,
    ) -> RunningMeasurement {
        RunningMeasurement {
            metric: metric.to_owned(),
            spec: spec.render(&self.args).unwrap_or_else(|_| spec.clone()),
            args: self.args.clone(),
            handle,
        }
    }

    /// The run's phase: the worst of its metrics' phases.
    pub fn phase(&self) -> AnalysisPhase {
        self.phase
    }

    /// When the next measurement is due; `None` once the run is terminal.
    pub fn next_due(&self) -> Option<SystemTime> {
        if self.phase.is_terminal() {
            return None;
        }
        self.metrics.iter().filter_map(|r| r.next_due).min()
    }

    /// Why the run failed, errored or was inconclusive (the worst metric's message).
    pub fn message(&self) -> Option<String> {
        self.message.clone()
    }

    /// The metrics' states, in spec order.
    pub fn metrics(&self) -> &[MetricResult] {
        &self.metrics
    }

    /// The argument values of this run.
    pub fn args(&self) -> &BTreeMap<String, String> {
        &self.args
    }

    /// The spec this run measures.
    pub fn spec(&self) -> &AnalysisSpec {
        &self.spec
    }

    /// When the run started.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// Recomputes the run phase: the worst metric phase; a Failed, Error or Inconclusive metric
    /// ends the others (their measurements stop, their phase stays what it was measured as).
    /// Measurements in progress of metrics that ended are set aside as abandoned.
    fn update_phase(&mut self) {
        let terminating = self.metrics.iter().any(|r| {
            matches!(
                r.phase,
                AnalysisPhase::Failed | AnalysisPhase::Error | AnalysisPhase::Inconclusive
            )
        });
        if terminating {
            for r in &mut self.metrics {
                if !r.phase.is_terminal() {
                    r.phase = AnalysisPhase::Successful;
                    r.message = Some(format!(
                        "stopped after {} measurements: another metric ended the run",
                        r.count
                    ));
                    r.next_due = None;
                }
            }
        }
        for r in &mut self.metrics {
            if r.phase.is_terminal()
                && let Some(p) = r.in_progress.take()
            {
                self.abandoned.push(Abandoned {
                    metric: r.name.clone(),
                    handle: p.handle,
                });
            }
        }
        let worst = self
            .metrics
            .iter()
            .max_by_key(|r| r.phase.severity())
            .map(|r| (r.phase, r.message.clone(), r.name.clone()));
        if let Some((phase, message, name)) = worst {
            self.phase = phase;
            self.message = match phase {
                AnalysisPhase::Failed | AnalysisPhase::Error | AnalysisPhase::Inconclusive => {
                    Some(format!(
                        "metric `{name}` {}: {}",
                        phase.as_str().to_ascii_lowercase(),
                        message.unwrap_or_default()
                    ))
                }
                _ => None,
            };
        }
    }
}

impl PendingMeasurement {
    /// The metric's name.
    pub fn metric(&self) -> &str {
        &self.metric
    }

    /// The metric, `{{args.x}}` substituted.
    pub fn spec(&self) -> &MetricSpec {
        &self.spec
    }

    /// The run's arguments.
    pub fn args(&self) -> &BTreeMap<String, String> {
        &self.args
    }

    /// The metric's sequence number: measurements it had taken (errors included) when this
    /// one was handed out.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The handle of the measurement in progress this resumes, if it resumes one.
    pub fn resumes(&self) -> Option<&Value> {
        self.resume.as_ref()
    }

    /// Takes the measurement through `providers` (starting it, or resuming the one in
    /// progress) and judges the value against the metric's conditions. Never fails or
    /// panics: a provider error, a panic in the provider or a condition that cannot be
    /// evaluated becomes an Error measurement.
    pub async fn measure(&self, providers: &dyn MetricProvider) -> CompletedMeasurement {
        let outcome = match &self.invalid {
            Some(reason) => Outcome::Error(reason.clone(), true),
            None => {
                let call = async {
                    match &self.resume {
                        None => providers.start(&self.spec, &self.args).await,
                        Some(handle) => providers.resume(&self.spec, &self.args, handle).await,
                    }
                };
                match std::panic::AssertUnwindSafe(call).catch_unwind().await {
                    Ok(answer) => self.judge(answer),
                    Err(panic) => Outcome::Error(
                        format!(
                            "{}: the provider panicked: {}",
                            self.spec.provider.kind(),
                            panic_message(panic.as_ref())
                        ),
                        false,
                    ),
                }
            }
        };
        CompletedMeasurement {
            metric: self.metric.clone(),
            seq: self.seq,
            resumed: self.resume.clone(),
            outcome,
        }
    }

    fn judge(&self, answer: Result<MeasureOutcome, ProviderError>) -> Outcome {
        match answer {
            Ok(MeasureOutcome::Done(value)) => judge(&self.spec, value, &self.args),
            Ok(MeasureOutcome::Running {
                handle,
                resume_after,
            }) => Outcome::Running {
                handle,
                resume_after,
            },
            Err(ProviderError::Inconclusive { reason, .. }) => Outcome::Inconclusive(reason),
            Err(e) => {
                let permanent = e.is_permanent();
                Outcome::Error(e.to_string(), permanent)
            }
        }
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

impl CompletedMeasurement {
    /// The metric's name.
    pub fn metric(&self) -> &str {
        &self.metric
    }

    /// The sequence number of the measurement this completes.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The measurement's phase: Successful, Failed, Inconclusive or Error, or Running when
    /// the provider answered that it goes on.
    pub fn phase(&self) -> AnalysisPhase {
        self.outcome.phase()
    }
}

impl RunningMeasurement {
    /// The metric's name.
    pub fn metric(&self) -> &str {
        &self.metric
    }

    /// The metric, `{{args.x}}` substituted.
    pub fn spec(&self) -> &MetricSpec {
        &self.spec
    }

    /// The provider's handle.
    pub fn handle(&self) -> &Value {
        &self.handle
    }

    /// Stops the measurement through `providers` ([`MetricProvider::terminate`]).
    pub async fn terminate(&self, providers: &dyn MetricProvider) -> Result<(), ProviderError> {
        providers
            .terminate(&self.spec, &self.args, &self.handle)
            .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use serde_json::{Value, json};

    use super::*;
    use crate::analysis::test_support::{Scripted, fake, spec, t};
    use crate::analysis::{MeasureOutcome, ProviderSpec, Providers};

    #[test]
    fn provider_seam_is_object_safe_send_and_sync() {
        fn assert_seam<T: ?Sized + Send + Sync + std::fmt::Debug + 'static>() {}
        assert_seam::<dyn MetricProvider>();
        let p: Arc<dyn MetricProvider> = Arc::new(Providers::with_defaults());
        assert_eq!(p.kind(), "registry");
        fn assert_send<T: Send>(_: &T) {}
        let mut run =
            AnalysisRun::new(&spec(MetricSpec::new("m", fake())), BTreeMap::new(), t(0)).unwrap();
        assert_send(&run.tick(p.as_ref(), t(0)));
    }

    #[tokio::test]
    async fn single_measurement_without_conditions_succeeds() {
        let p = Scripted::new(vec![Ok(json!(1))]);
        let mut run =
            AnalysisRun::new(&spec(MetricSpec::new("m", fake())), BTreeMap::new(), t(0)).unwrap();
        assert_eq!(run.phase(), AnalysisPhase::Pending);
        assert_eq!(run.next_due(), Some(t(0)));
        assert_eq!(run.tick(&p, t(0)).await, AnalysisPhase::Successful);
        assert_eq!(run.next_due(), None);
        assert_eq!(run.message(), None);
        // Terminal runs do not measure again.
        assert_eq!(run.tick(&p, t(100)).await, AnalysisPhase::Successful);
        assert_eq!(p.calls(), 1);
    }

    #[tokio::test]
    async fn worst_metric_wins_and_ends_the_others() {
        let background = MetricSpec::new("latency", fake()).interval(Duration::from_secs(5));
        let gate = MetricSpec::new("errors", ProviderSpec::plugin("other", json!({})))
            .initial_delay(Duration::from_secs(12))
            .success_condition("result == 0");
        let s = AnalysisSpec::new(vec![background, gate]).arg("svc", Some("web"));
        let bg = Arc::new(Scripted::new(vec![
            Ok(json!(1)),
            Ok(json!(1)),
            Ok(json!(1)),
        ]));
        #[derive(Debug)]
        struct Other;
        #[async_trait]
        impl MetricProvider for Other {
            fn kind(&self) -> &str {
                "other"
            }
            async fn measure(
                &self,
                _: &MetricSpec,
                _: &BTreeMap<String, String>,
            ) -> Result<Value, ProviderError> {
                Ok(json!(3))
            }
        }
        let providers = Providers::new().with(bg.clone()).with(Arc::new(Other));
        let mut run = AnalysisRun::new(&s, BTreeMap::new(), t(0)).unwrap();
        // latency Running, errors Pending → run Pending (Pending is worse than Running).
        assert_eq!(run.tick(&providers, t(0)).await, AnalysisPhase::Pending);
        assert_eq!(run.next_due(), Some(t(5)));
        assert_eq!(run.tick(&providers, t(5)).await, AnalysisPhase::Pending);
        assert_eq!(run.next_due(), Some(t(10)));
        assert_eq!(run.tick(&providers, t(10)).await, AnalysisPhase::Pending);
        assert_eq!(run.next_due(), Some(t(12)));
        assert_eq!(run.tick(&providers, t(12)).await, AnalysisPhase::Failed);
        assert_eq!(run.metrics()[0].phase, AnalysisPhase::Successful);
        assert_eq!(run.metrics()[1].phase, AnalysisPhase::Failed);
        assert!(run.message().unwrap().starts_with("metric `errors` failed"));
        assert_eq!(bg.calls(), 3);
    }

    #[tokio::test]
    async fn arguments_are_substituted_and_passed() {
        let m = MetricSpec::new("m", fake())
            .success_condition("result == '{{args.svc}}' && args.svc == 'api'");
        let p = Scripted::new(vec![Ok(json!("api"))]);
        let args = [("svc".to_string(), "api".to_string())].into();
        let mut run = AnalysisRun::new(&spec(m), args, t(0)).unwrap();
        assert_eq!(run.tick(&p, t(0)).await, AnalysisPhase::Successful);
        let seen = p.seen.lock().unwrap();
        assert_eq!(
            seen[0].0.provider,
            ProviderSpec::plugin("fake", json!({"q": "api"}))
        );
        assert_eq!(seen[0].1["svc"], "api");
    }

    #[tokio::test]
    async fn unknown_provider_kind_errors_at_once() {
        let mut run =
            AnalysisRun::new(&spec(MetricSpec::new("m", fake())), BTreeMap::new(), t(0)).unwrap();
        assert_eq!(
            run.tick(&Providers::new(), t(0)).await,
            AnalysisPhase::Error
        );
        assert!(
            run.message()
                .unwrap()
                .contains("no provider of kind `fake`")
        );
    }

    #[tokio::test]
    async fn a_persisted_run_resumes_where_it_stopped() {
        let m = MetricSpec::new("m", fake())
            .interval(Duration::from_secs(10))
            .count(3)
            .success_condition("result < 1");
        let p = Scripted::new(vec![Ok(json!(0)), Ok(json!(0)), Ok(json!(0))]);
        let mut run = AnalysisRun::new(&spec(m), BTreeMap::new(), t(0)).unwrap();
        run.tick(&p, t(0)).await;
        run.tick(&p, t(10)).await;
        let json = serde_json::to_string(&run).unwrap();
        let mut back: AnalysisRun = serde_json::from_str(&json).unwrap();
        assert_eq!(back, run);
        assert_eq!(back.next_due(), Some(t(20)));
        assert_eq!(back.tick(&p, t(20)).await, AnalysisPhase::Successful);
        assert_eq!(p.calls(), 3);
    }

    fn counted(interval: u64, count: u32) -> AnalysisSpec {
        spec(
            MetricSpec::new("m", fake())
                .interval(Duration::from_secs(interval))
                .count(count)
                .success_condition("result < 1"),
        )
    }

    #[tokio::test]
    async fn duplicate_and_stale_completions_are_ignored() {
        let p = Scripted::new(vec![Ok(json!(0)), Ok(json!(0)), Ok(json!(0))]);
        let mut run = AnalysisRun::new(&counted(10, 3), BTreeMap::new(), t(0)).unwrap();
        let due = run.due(t(0));
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].metric(), due[0].seq()), ("m", 0));
        assert_eq!(run.due(t(0)), due, "pure: the same until recorded");
        // Arguments are substituted in what is handed out.
        assert_eq!(
            due[0].spec().provider,
            ProviderSpec::plugin("fake", json!({"q": "web"}))
        );
        let first = due[0].measure(&p).await;
        assert_eq!(first.phase(), AnalysisPhase::Successful);
        assert!(run.record(first.clone(), t(1)));
        assert_eq!(run.metrics()[0].count, 1);
        assert!(!run.record(first.clone(), t(1)), "a duplicate");
        assert_eq!(run.metrics()[0].count, 1, "not counted twice");

        // A second measurement of the same sequence number (spawned twice) is stale once the
        // first of them is recorded.
        let due = run.due(t(11));
        assert_eq!(due[0].seq(), 1);
        let a = due[0].measure(&p).await;
        let b = due[0].measure(&p).await;
        assert!(run.record(a, t(11)));
        assert!(!run.record(b, t(12)));
        assert!(!run.record(first, t(12)), "an old result stays stale");
        assert_eq!(run.metrics()[0].count, 2);
        assert_eq!(run.next_due(), Some(t(21)));

        // A result for a metric the run does not have.
        let mut other = AnalysisRun::new(
            &spec(MetricSpec::new("other", fake())),
            BTreeMap::new(),
            t(0),
        )
        .unwrap();
        let foreign = other.due(t(0))[0].clone();
        let done = foreign.measure(&Scripted::new(vec![Ok(json!(0))])).await;
        assert!(!run.record(done.clone(), t(21)));
        assert!(other.record(done, t(0)));
    }

    #[tokio::test]
    async fn due_is_empty_for_a_terminal_run() {
        let p = Scripted::new(vec![Ok(json!(0)), Ok(json!(0))]);
        let mut run =
            AnalysisRun::new(&spec(MetricSpec::new("m", fake())), BTreeMap::new(), t(0)).unwrap();
        let late = run.due(t(0)).remove(0);
        assert_eq!(run.tick(&p, t(0)).await, AnalysisPhase::Successful);
        assert!(run.due(t(1_000)).is_empty());
        assert!(!run.record(late.measure(&p).await, t(1)));

        // Terminated background analysis: nothing due, late results ignored.
        let bg = spec(MetricSpec::new("m", fake()).interval(Duration::from_secs(5)));
        let mut run = AnalysisRun::new(&bg, BTreeMap::new(), t(0)).unwrap();
        let pending = run.due(t(0)).remove(0);
        run.terminate();
        assert!(run.due(t(0)).is_empty());
        let p = Scripted::new(vec![Ok(json!(0))]);
        assert!(!run.record(pending.measure(&p).await, t(1)));
        assert_eq!(run.metrics()[0].count, 0);
    }

    #[tokio::test]
    async fn pending_measurements_can_be_spawned() {
        fn assert_owned<T: Clone + Send + Sync + 'static>(_: &T) {}
        let providers: Arc<dyn MetricProvider> =
            Arc::new(Scripted::new(vec![Ok(json!(0)), Ok(json!(0))]));
        let mut run = AnalysisRun::new(&counted(10, 2), BTreeMap::new(), t(0)).unwrap();
        let mut now = t(0);
        while let Some(due) = run.next_due() {
            now = due;
            let tasks: Vec<_> = run
                .due(now)
                .into_iter()
                .map(|pending| {
                    assert_owned(&pending);
                    let providers = providers.clone();
                    tokio::spawn(async move { pending.measure(providers.as_ref()).await })
                })
                .collect();
            for task in tasks {
                let done = task.await.unwrap();
                assert_owned(&done);
                assert!(run.record(done, now));
            }
        }
        assert_eq!(run.phase(), AnalysisPhase::Successful);
        assert_eq!(now, t(10));
    }

    #[tokio::test]
    async fn a_panicking_provider_is_an_error_measurement() {
        #[derive(Debug)]
        struct Panics;
        #[async_trait]
        impl MetricProvider for Panics {
            fn kind(&self) -> &str {
                "fake"
            }
            async fn measure(
                &self,
                _: &MetricSpec,
                _: &BTreeMap<String, String>,
            ) -> Result<Value, ProviderError> {
                panic!("index out of bounds")
            }
        }
        let m = MetricSpec::new("m", fake()).consecutive_error_limit(0);
        let mut run = AnalysisRun::new(&spec(m), BTreeMap::new(), t(0)).unwrap();
        let done = run.due(t(0))[0].measure(&Panics).await;
        assert_eq!(done.phase(), AnalysisPhase::Error);
        assert!(run.record(done, t(0)));
        assert_eq!(run.phase(), AnalysisPhase::Error);
        assert!(
            run.message()
                .unwrap()
                .contains("fake: the provider panicked: index out of bounds"),
            "{:?}",
            run.message()
        );
    }

    /// A provider with Argo's job shape: `start` launches a job and answers Running; `resume`
    /// answers Running once more, then the value; `terminate` deletes the job.
    #[derive(Debug, Default)]
    struct Jobs {
        launched: std::sync::Mutex<u64>,
        polls: std::sync::Mutex<BTreeMap<u64, u32>>,
        deleted: std::sync::Mutex<Vec<Value>>,
    }

    #[async_trait]
    impl MetricProvider for Jobs {
        fn kind(&self) -> &str {
            "fake"
        }
        async fn measure(
            &self,
            _: &MetricSpec,
            _: &BTreeMap<String, String>,
        ) -> Result<Value, ProviderError> {
            Err(ProviderError::config("fake", "jobs are only started"))
        }
        async fn start(
            &self,
            metric: &MetricSpec,
            _: &BTreeMap<String, String>,
        ) -> Result<MeasureOutcome, ProviderError> {
            let mut n = self.launched.lock().unwrap();
            *n += 1;
            Ok(MeasureOutcome::Running {
                handle: json!({"job": format!("{}-{n}", metric.name)}),
                resume_after: Duration::from_secs(30),
            })
        }
        async fn resume(
            &self,
            _: &MetricSpec,
            _: &BTreeMap<String, String>,
            handle: &Value,
        ) -> Result<MeasureOutcome, ProviderError> {
            let n: u64 = handle["job"]
                .as_str()
                .unwrap()
                .rsplit('-')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let mut polls = self.polls.lock().unwrap();
            let seen = polls.entry(n).or_default();
            *seen += 1;
            Ok(if *seen < 2 {
                MeasureOutcome::Running {
                    handle: handle.clone(),
                    resume_after: Duration::from_secs(30),
                }
            } else {
                MeasureOutcome::Done(json!(0))
            })
        }
        async fn terminate(
            &self,
            _: &MetricSpec,
            _: &BTreeMap<String, String>,
            handle: &Value,
        ) -> Result<(), ProviderError> {
            self.deleted.lock().unwrap().push(handle.clone());
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_long_measurement_runs_is_resumed_and_completes() {
        let jobs = Jobs::default();
        let m = MetricSpec::new("smoke", fake())
            .interval(Duration::from_secs(60))
            .count(2)
            .success_condition("result == 0");
        let mut run = AnalysisRun::new(&spec(m), BTreeMap::new(), t(0)).unwrap();
        assert_eq!(run.tick(&jobs, t(0)).await, AnalysisPhase::Running);
        let r = &run.metrics()[0];
        assert_eq!(r.count, 0, "nothing counted while it runs");
        let handle = json!({"job": "smoke-1"});
        assert_eq!(r.in_progress.as_ref().unwrap().handle, handle);
        assert_eq!(r.in_progress.as_ref().unwrap().started_at, t(0));
        assert_eq!(
            run.next_due(),
            Some(t(30)),
            "resumed after the provider's delay"
        );
        assert_eq!(run.running().len(), 1);
        assert_eq!(run.running()[0].handle(), &handle);

        // Resumed: still running, then done.
        let due = run.due(t(30));
        assert_eq!(due[0].resumes(), Some(&handle));
        assert_eq!(due[0].seq(), 0);
        // A duplicate of the start (it returned Running already) is not applied again.
        let dup_start = PendingMeasurement {
            resume: None,
            ..due[0].clone()
        }
        .measure(&jobs)
        .await;
        assert!(!run.record(dup_start, t(30)));
        assert_eq!(run.tick(&jobs, t(30)).await, AnalysisPhase::Running);
        assert_eq!(run.tick(&jobs, t(60)).await, AnalysisPhase::Running);
        let r = &run.metrics()[0];
        assert_eq!((r.count, r.successful), (1, 1));
        assert!(r.in_progress.is_none());
        assert_eq!(r.measurements[0].value, Some(json!(0)));
        assert_eq!(
            run.next_due(),
            Some(t(120)),
            "the interval runs from completion"
        );
        // A persisted run keeps the measurement in progress (job 3: the duplicate start above
        // launched job 2, whose result was ignored).
        run.tick(&jobs, t(120)).await;
        let back: AnalysisRun =
            serde_json::from_str(&serde_json::to_string(&run).unwrap()).unwrap();
        assert_eq!(back, run);
        assert_eq!(
            back.metrics()[0].in_progress.as_ref().unwrap().handle,
            json!({"job": "smoke-3"})
        );
        assert_eq!(run.tick(&jobs, t(150)).await, AnalysisPhase::Running);
        assert_eq!(run.tick(&jobs, t(180)).await, AnalysisPhase::Successful);
        assert!(run.running().is_empty() && run.take_abandoned().is_empty());
        assert!(jobs.deleted.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn running_measurements_of_an_ended_run_are_handed_back_to_terminate() {
        let jobs = Jobs::default();
        let bg = MetricSpec::new("soak", fake()).interval(Duration::from_secs(60));
        let mut run = AnalysisRun::new(&spec(bg.clone()), BTreeMap::new(), t(0)).unwrap();
        run.tick(&jobs, t(0)).await;
        assert_eq!(run.running().len(), 1);
        // Terminating is pure: the running measurement is set aside, persisted, and handed
        // back once.
        run.terminate();
        assert_eq!(run.phase(), AnalysisPhase::Successful);
        assert!(run.running().is_empty());
        let back: AnalysisRun =
            serde_json::from_str(&serde_json::to_string(&run).unwrap()).unwrap();
        let mut run = back;
        let abandoned = run.take_abandoned();
        assert_eq!(abandoned.len(), 1);
        assert_eq!(abandoned[0].metric(), "soak");
        assert_eq!(abandoned[0].handle(), &json!({"job": "soak-1"}));
        assert!(run.take_abandoned().is_empty());
        abandoned[0].terminate(&jobs).await.unwrap();
        assert_eq!(*jobs.deleted.lock().unwrap(), [json!({"job": "soak-1"})]);

        // Another metric failing ends the run; `tick` terminates the abandoned job itself.
        let gate = MetricSpec::new("gate", ProviderSpec::plugin("gate", json!({})))
            .initial_delay(Duration::from_secs(10))
            .success_condition("result == 0");
        let s = AnalysisSpec::new(vec![bg, gate]).arg("svc", Some("web"));
        #[derive(Debug)]
        struct Bad;
        #[async_trait]
        impl MetricProvider for Bad {
            fn kind(&self) -> &str {
                "gate"
            }
            async fn measure(
                &self,
                _: &MetricSpec,
                _: &BTreeMap<String, String>,
            ) -> Result<Value, ProviderError> {
                Ok(json!(1))
            }
        }
        let jobs = Arc::new(Jobs::default());
        let providers = Providers::new().with(jobs.clone()).with(Arc::new(Bad));
        let mut run = AnalysisRun::new(&s, BTreeMap::new(), t(0)).unwrap();
        run.tick(&providers, t(0)).await;
        assert_eq!(run.tick(&providers, t(10)).await, AnalysisPhase::Failed);
        assert_eq!(*jobs.deleted.lock().unwrap(), [json!({"job": "soak-1"})]);
        assert!(run.take_abandoned().is_empty());
    }

    #[tokio::test]
    async fn a_running_answer_without_resume_support_errors_the_metric() {
        #[derive(Debug)]
        struct StartsOnly;
        #[async_trait]
        impl MetricProvider for StartsOnly {
            fn kind(&self) -> &str {
                "fake"
            }
            async fn measure(
                &self,
                _: &MetricSpec,
                _: &BTreeMap<String, String>,
            ) -> Result<Value, ProviderError> {
                Ok(json!(0))
            }
            async fn start(
                &self,
                _: &MetricSpec,
                _: &BTreeMap<String, String>,
            ) -> Result<MeasureOutcome, ProviderError> {
                Ok(MeasureOutcome::Running {
                    handle: json!(1),
                    resume_after: Duration::from_secs(1),
                })
            }
        }
        let mut run =
            AnalysisRun::new(&spec(MetricSpec::new("m", fake())), BTreeMap::new(), t(0)).unwrap();
        assert_eq!(run.tick(&StartsOnly, t(0)).await, AnalysisPhase::Running);
        assert_eq!(run.tick(&StartsOnly, t(1)).await, AnalysisPhase::Error);
        assert!(
            run.message()
                .unwrap()
                .contains("fake: does not support resuming a running measurement"),
            "{:?}",
            run.message()
        );
        // The errored resume ended the measurement: nothing is left to terminate.
        assert!(run.running().is_empty() && run.take_abandoned().is_empty());
    }

    #[test]
    fn invalid_specs_are_rejected_naming_metric_and_field() {
        let none = BTreeMap::new();
        let bad_cel = spec(MetricSpec::new("error-rate", fake()).success_condition("result <"));
        let e = AnalysisRun::new(&bad_cel, none.clone(), t(0)).unwrap_err();
        assert_eq!(e.metric(), Some("error-rate"));
        let text = e.to_string();
        assert!(
            text.contains("successCondition") && text.contains("CEL syntax error"),
            "{text}"
        );

        let unknown = AnalysisSpec::new(vec![MetricSpec::new(
            "latency",
            ProviderSpec::plugin("fake", json!({"q": "{{args.service}}"})),
        )]);
        let e = unknown.validate(&none).unwrap_err();
        assert_eq!(e.metric(), Some("latency"));
        assert!(e.to_string().contains("unknown argument `service`"), "{e}");

        let provided: BTreeMap<String, String> = [("nope".to_string(), "1".to_string())].into();
        let e = spec(MetricSpec::new("m", fake()))
            .validate(&provided)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown argument `nope` (declared: svc)"),
            "{e}"
        );

        let missing = AnalysisSpec::new(vec![MetricSpec::new("m", fake())]).arg("svc", None);
        let e = missing.validate(&none).unwrap_err();
        assert!(e.to_string().contains("`svc` has no value"), "{e}");

        let count = spec(MetricSpec::new("m", fake()).count(3));
        let e = count.validate(&none).unwrap_err();
        assert!(
            e.to_string()
                .contains("metrics[0].count (metric `m`): count 3 needs an interval"),
            "{e}"
        );

        let limit = spec(MetricSpec::new("m", fake()).failure_limit(-2));
        assert!(
            limit
                .validate(&none)
                .unwrap_err()
                .to_string()
                .contains("failureLimit")
        );

        let dup = AnalysisSpec::new(vec![
            MetricSpec::new("m", fake()),
            MetricSpec::new("m", fake()),
        ])
        .arg("svc", Some("x"));
        assert!(
            dup.validate(&none)
                .unwrap_err()
                .to_string()
                .contains("used twice")
        );

        let web = spec(MetricSpec::new(
            "w",
            ProviderSpec::Web(crate::analysis::WebMetric::get("localhost/x")),
        ));
        let e = web.validate(&none).unwrap_err();
        assert!(e.to_string().contains("provider.web.url"), "{e}");

        assert!(AnalysisSpec::new(vec![]).validate(&none).is_err());
    }

    #[test]
    fn argo_yaml_parses_with_defaults() {
        let s: AnalysisSpec = yaml_serde::from_str(
            r#"
args:
  - name: service
    value: web
metrics:
  - name: success-rate
    interval: 1m
    count: 5
    successCondition: result[0] >= 0.95
    failureLimit: 3
    provider:
      web:
        url: http://metrics.local/{{args.service}}
        jsonPath: $.data.rate
        headers:
          - key: Authorization
            value: Bearer x
"#,
        )
        .unwrap();
        let m = &s.metrics[0];
        assert_eq!(m.interval.unwrap().0, Duration::from_secs(60));
        assert_eq!(m.consecutive_error_limit, 4);
        assert_eq!(m.consecutive_success_limit, 0);
        assert_eq!(m.inconclusive_limit, 0);
        assert_eq!(m.provider.kind(), "web");
        s.validate(&BTreeMap::new()).unwrap();
        let back: AnalysisSpec = yaml_serde::from_str(&yaml_serde::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let two: Result<ProviderSpec, _> = serde_json::from_value(
            json!({"web": {"url": "http://x"}, "command": {"command": ["x"]}}),
        );
        assert!(two.unwrap_err().to_string().contains("exactly one"));
    }
}
