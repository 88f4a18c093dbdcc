//! The analysis run: a pure state machine over measurements, persisted by the controller.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::provider::{MetricProvider, ProviderError};
use super::{AnalysisError, AnalysisPhase, AnalysisSpec, MetricSpec, condition};

/// Measurements kept per metric (Argo keeps 10).
pub const MEASUREMENTS_KEPT: usize = 10;

/// After an errored measurement the next one comes after this long, or the metric's interval
/// when shorter (Argo's default error retry interval).
pub const ERROR_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// One measurement of a metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// Successful, Failed, Inconclusive or Error.
    pub phase: AnalysisPhase,
    /// The measured value (absent on error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Why it errored or was inconclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it was taken.
    pub at: SystemTime,
}

/// The state of one metric in a run (Argo's `MetricResult`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct MetricResult {
    /// The metric's name.
    pub name: String,
    /// Pending (no measurement yet), Running, or a terminal phase.
    pub phase: AnalysisPhase,
    /// Why the metric ended as it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Measurements without error (successful + failed + inconclusive).
    pub count: u32,
    /// Successful measurements.
    pub successful: u32,
    /// Failed measurements.
    pub failed: u32,
    /// Inconclusive measurements.
    pub inconclusive: u32,
    /// Errored measurements.
    pub error: u32,
    /// Errors in a row up to the last measurement.
    pub consecutive_error: u32,
    /// Successes in a row up to the last measurement.
    pub consecutive_success: u32,
    /// The last [`MEASUREMENTS_KEPT`] measurements, oldest first.
    pub measurements: VecDeque<Measurement>,
    /// When the next measurement is due (absent once terminal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_due: Option<SystemTime>,
}

/// A running analysis (Argo's `AnalysisRun`): serialisable so a controller can persist it and
/// resume after a restart.
///
/// The run is driven from outside: [`AnalysisRun::tick`] takes every measurement due at `now`;
/// [`AnalysisRun::next_due`] says when to tick again. Terminal phases are final; Inconclusive
/// is terminal too (the controller pauses and reports it), so a run never hangs in it.
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
}

/// What one measurement turned into, before counting.
#[derive(Debug)]
enum Outcome {
    Value(AnalysisPhase, Value),
    Inconclusive(String),
    Error(String, bool),
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
            })
            .collect();
        let mut run = AnalysisRun {
            spec: spec.clone(),
            args,
            started_at: now,
            phase: AnalysisPhase::Pending,
            message: None,
            metrics,
        };
        run.update_phase();
        Ok(run)
    }

    /// Takes every measurement due at `now` (one per metric, concurrently through
    /// `providers`), updates the metrics' and the run's phases and returns the run's phase.
    pub async fn tick(&mut self, providers: &dyn MetricProvider, now: SystemTime) -> AnalysisPhase {
        if self.phase.is_terminal() {
            return self.phase;
        }
        let due: Vec<usize> = self
            .metrics
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.phase.is_terminal() && r.next_due.is_some_and(|t| t <= now))
            .map(|(i, _)| i)
            .collect();
        let args = &self.args;
        let specs = &self.spec.metrics;
        let outcomes = futures::future::join_all(
            due.iter()
                .map(|&i| async move { measure(&specs[i], args, providers).await }),
        )
        .await;
        for (i, outcome) in due.into_iter().zip(outcomes) {
            let spec = self.spec.metrics[i].clone();
            record(&spec, &mut self.metrics[i], outcome, now);
        }
        self.update_phase();
        self.phase
    }

    /// Ends the run now (a background analysis ends with its rollout): metrics still measuring
    /// end Successful unless they already failed.
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

/// Takes one measurement of `spec` and judges it.
async fn measure(
    spec: &MetricSpec,
    args: &BTreeMap<String, String>,
    providers: &dyn MetricProvider,
) -> Outcome {
    let rendered = match spec.render(args) {
        Ok(r) => r,
        Err(e) => return Outcome::Error(e, true),
    };
    match providers.measure(&rendered, args).await {
        Ok(value) => judge(&rendered, value, args),
        Err(ProviderError::Inconclusive { reason, .. }) => Outcome::Inconclusive(reason),
        Err(e) => {
            let permanent = e.is_permanent();
            Outcome::Error(e.to_string(), permanent)
        }
    }
}

/// Argo's outcome rules: neither condition → Successful; only success → Failed when false;
/// only failure → Successful when false; both → Failed if failure holds, Successful if success
/// holds, Inconclusive when neither does. A condition that cannot be evaluated is an Error.
fn judge(spec: &MetricSpec, value: Value, args: &BTreeMap<String, String>) -> Outcome {
    let eval = |c: &Option<String>| -> Result<Option<bool>, String> {
        c.as_deref()
            .map(|expr| condition::evaluate(expr, &value, args))
            .transpose()
    };
    let (success, failure) = match (eval(&spec.success_condition), eval(&spec.failure_condition)) {
        (Ok(s), Ok(f)) => (s, f),
        (Err(e), _) | (_, Err(e)) => return Outcome::Error(e, false),
    };
    let phase = match (success, failure) {
        (None, None) => AnalysisPhase::Successful,
        (Some(s), None) => {
            if s {
                AnalysisPhase::Successful
            } else {
                AnalysisPhase::Failed
            }
        }
        (None, Some(f)) => {
            if f {
                AnalysisPhase::Failed
            } else {
                AnalysisPhase::Successful
            }
        }
        (Some(s), Some(f)) => {
            if f {
                AnalysisPhase::Failed
            } else if s {
                AnalysisPhase::Successful
            } else {
                AnalysisPhase::Inconclusive
            }
        }
    };
    Outcome::Value(phase, value)
}

/// Counts one measurement into `r` and assesses the metric.
fn record(spec: &MetricSpec, r: &mut MetricResult, outcome: Outcome, now: SystemTime) {
    let (measurement, permanent) = match outcome {
        Outcome::Value(phase, value) => (
            Measurement {
                phase,
                value: Some(value),
                message: None,
                at: now,
            },
            false,
        ),
        Outcome::Inconclusive(reason) => (
            Measurement {
                phase: AnalysisPhase::Inconclusive,
                value: None,
                message: Some(reason),
                at: now,
            },
            false,
        ),
        Outcome::Error(reason, permanent) => (
            Measurement {
                phase: AnalysisPhase::Error,
                value: None,
                message: Some(reason),
                at: now,
            },
            permanent,
        ),
    };
    match measurement.phase {
        AnalysisPhase::Error => {
            r.error += 1;
            r.consecutive_error += 1;
            r.consecutive_success = 0;
        }
        phase => {
            r.count += 1;
            r.consecutive_error = 0;
            match phase {
                AnalysisPhase::Successful => {
                    r.successful += 1;
                    r.consecutive_success += 1;
                }
                AnalysisPhase::Failed => {
                    r.failed += 1;
                    r.consecutive_success = 0;
                }
                _ => {
                    r.inconclusive += 1;
                    r.consecutive_success = 0;
                }
            }
        }
    }
    let errored = measurement.phase == AnalysisPhase::Error;
    r.measurements.push_back(measurement);
    while r.measurements.len() > MEASUREMENTS_KEPT {
        r.measurements.pop_front();
    }
    let (phase, message) = assess(spec, r, permanent);
    r.phase = phase;
    if phase.is_terminal() {
        r.message = message;
        r.next_due = None;
    } else {
        let interval = spec.interval.map(|d| d.0);
        let wait = match (errored, interval) {
            (true, Some(i)) => i.min(ERROR_RETRY_INTERVAL),
            (true, None) => ERROR_RETRY_INTERVAL,
            (false, Some(i)) => i,
            // Without an interval a single measurement completes the metric, so a non-error
            // measurement always ends it above; this wait is never used.
            (false, None) => ERROR_RETRY_INTERVAL,
        };
        r.next_due = Some(now + wait);
    }
}

/// The metric's phase after its latest measurement.
fn assess(
    spec: &MetricSpec,
    r: &MetricResult,
    permanent_error: bool,
) -> (AnalysisPhase, Option<String>) {
    let last = r
        .measurements
        .back()
        .and_then(|m| {
            m.message
                .clone()
                .or_else(|| m.value.as_ref().map(|v| format!("last value {v}")))
        })
        .unwrap_or_default();
    if permanent_error {
        return (AnalysisPhase::Error, Some(last));
    }
    if spec.failure_limit >= 0 && r.failed > spec.failure_limit.unsigned_abs() {
        return (
            AnalysisPhase::Failed,
            Some(format!(
                "{} of {} measurements failed (failureLimit {}); {last}",
                r.failed, r.count, spec.failure_limit
            )),
        );
    }
    if spec.inconclusive_limit >= 0 && r.inconclusive > spec.inconclusive_limit.unsigned_abs() {
        return (
            AnalysisPhase::Inconclusive,
            Some(format!(
                "{} of {} measurements inconclusive (inconclusiveLimit {}); {last}",
                r.inconclusive, r.count, spec.inconclusive_limit
            )),
        );
    }
    if spec.consecutive_error_limit >= 0
        && r.consecutive_error > spec.consecutive_error_limit.unsigned_abs()
    {
        return (
            AnalysisPhase::Error,
            Some(format!(
                "{} consecutive errors (consecutiveErrorLimit {}); {last}",
                r.consecutive_error, spec.consecutive_error_limit
            )),
        );
    }
    if spec.consecutive_success_limit > 0 && r.consecutive_success >= spec.consecutive_success_limit
    {
        return (
            AnalysisPhase::Successful,
            Some(format!(
                "{} consecutive successes (consecutiveSuccessLimit {})",
                r.consecutive_success, spec.consecutive_success_limit
            )),
        );
    }
    if let Some(count) = spec.effective_count()
        && r.count >= count
    {
        if spec.consecutive_success_limit > 0 {
            return (
                AnalysisPhase::Failed,
                Some(format!(
                    "{count} measurements without {} consecutive successes; {last}",
                    spec.consecutive_success_limit
                )),
            );
        }
        return (
            AnalysisPhase::Successful,
            Some(format!(
                "{} of {} measurements successful",
                r.successful, r.count
            )),
        );
    }
    (AnalysisPhase::Running, None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::UNIX_EPOCH;

    use async_trait::async_trait;
    use serde_json::json;

    use super::*;
    use crate::analysis::{ProviderSpec, Providers};

    /// Answers from a script, one per call, and records the specs it was given.
    #[derive(Debug, Default)]
    struct Scripted {
        answers: Mutex<VecDeque<Result<Value, ProviderError>>>,
        seen: Mutex<Vec<(MetricSpec, BTreeMap<String, String>)>>,
    }

    impl Scripted {
        fn new(answers: Vec<Result<Value, ProviderError>>) -> Self {
            Scripted {
                answers: Mutex::new(answers.into()),
                seen: Mutex::default(),
            }
        }
        fn calls(&self) -> usize {
            self.seen.lock().unwrap().len()
        }
    }

    #[async_trait]
    impl MetricProvider for Scripted {
        fn kind(&self) -> &str {
            "fake"
        }
        async fn measure(
            &self,
            metric: &MetricSpec,
            args: &BTreeMap<String, String>,
        ) -> Result<Value, ProviderError> {
            self.seen
                .lock()
                .unwrap()
                .push((metric.clone(), args.clone()));
            self.answers
                .lock()
                .unwrap()
                .pop_front()
                .expect("script ran out of answers")
        }
    }

    fn err() -> Result<Value, ProviderError> {
        Err(ProviderError::measurement("fake", "connection refused"))
    }

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

    fn fake() -> ProviderSpec {
        ProviderSpec::plugin("fake", json!({"q": "{{args.svc}}"}))
    }

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn spec(metric: MetricSpec) -> AnalysisSpec {
        AnalysisSpec::new(vec![metric]).arg("svc", Some("web"))
    }

    /// Ticks at every due time until terminal or `max` ticks; returns the phases seen.
    async fn drive(
        run: &mut AnalysisRun,
        p: &dyn MetricProvider,
        max: usize,
    ) -> Vec<AnalysisPhase> {
        let mut phases = Vec::new();
        for _ in 0..max {
            let Some(due) = run.next_due() else { break };
            phases.push(run.tick(p, due).await);
        }
        phases
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
    async fn outcome_rules_for_conditions() {
        let cases = [
            (Some("result < 5"), None, 1, AnalysisPhase::Successful),
            (Some("result < 5"), None, 9, AnalysisPhase::Failed),
            (None, Some("result > 5"), 1, AnalysisPhase::Successful),
            (None, Some("result > 5"), 9, AnalysisPhase::Failed),
            (
                Some("result < 5"),
                Some("result > 7"),
                1,
                AnalysisPhase::Successful,
            ),
            (
                Some("result < 5"),
                Some("result > 7"),
                9,
                AnalysisPhase::Failed,
            ),
            (
                Some("result < 5"),
                Some("result > 7"),
                6,
                AnalysisPhase::Inconclusive,
            ),
        ];
        for (success, failure, value, want) in cases {
            let mut m = MetricSpec::new("m", fake());
            m.success_condition = success.map(Into::into);
            m.failure_condition = failure.map(Into::into);
            let p = Scripted::new(vec![Ok(json!(value))]);
            let mut run = AnalysisRun::new(&spec(m), BTreeMap::new(), t(0)).unwrap();
            let got = run.tick(&p, t(0)).await;
            assert_eq!(
                got, want,
                "success={success:?} failure={failure:?} value={value}"
            );
            assert!(
                run.next_due().is_none(),
                "every outcome of a one-shot metric is terminal"
            );
        }
    }

    #[tokio::test]
    async fn failure_limit_counts_failed_measurements() {
        let m = MetricSpec::new("error-rate", fake())
            .interval(Duration::from_secs(10))
            .count(4)
            .failure_limit(1)
            .success_condition("result < 0.05");
        let p = Scripted::new(vec![Ok(json!(0.2)), Ok(json!(0.01)), Ok(json!(0.3))]);
        let mut run = AnalysisRun::new(&spec(m), BTreeMap::new(), t(0)).unwrap();
        assert_eq!(run.tick(&p, t(0)).await, AnalysisPhase::Running);
        assert_eq!(run.next_due(), Some(t(10)));
        // Not due yet: nothing measured.
        assert_eq!(run.tick(&p, t(5)).await, AnalysisPhase::Running);
        assert_eq!(p.calls(), 1);
        assert_eq!(run.tick(&p, t(10)).await, AnalysisPhase::Running);
        assert_eq!(run.tick(&p, t(20)).await, AnalysisPhase::Failed);
        let msg = run.message().unwrap();
        assert!(
            msg.contains("metric `error-rate` failed") && msg.contains("failureLimit 1"),
            "{msg}"
        );
        assert_eq!(run.next_due(), None);
        let r = &run.metrics()[0];
        assert_eq!((r.count, r.successful, r.failed), (3, 1, 2));
    }

    #[tokio::test]
    async fn failure_limit_minus_one_disables_it() {
        let m = MetricSpec::new("m", fake())
            .interval(Duration::from_secs(1))
            .count(3)
            .failure_limit(-1)
            .success_condition("result < 1");
        let p = Scripted::new(vec![Ok(json!(5)), Ok(json!(5)), Ok(json!(5))]);
        let mut run = AnalysisRun::new(&spec(m), BTreeMap::new(), t(0)).unwrap();
        let phases = drive(&mut run, &p, 10).await;
        assert_eq!(phases.last(), Some(&AnalysisPhase::Successful));
        assert_eq!(run.metrics()[0].failed, 3);
    }

    #[tokio::test]
    async fn consecutive_error_limit_is_applied_and_reset_by_a_measurement() {
        // Default limit 4: four errors in a row are tolerated, the fifth errors the metric.
        let m = MetricSpec::new("m", fake())
            .interval(Duration::from_secs(30))
            .count(2);
        let mut script = vec![err(), err(), err(), err(), Ok(json!(1))];
        script.extend([err(), err(), err(), err(), err()]);
        let p = Scripted::new(script);
        let mut run = AnalysisRun::new(&spec(m), BTreeMap::new(), t(0)).unwrap();
        let mut now = t(0);
        for i in 0..4 {
            assert_eq!(run.tick(&p, now).await, AnalysisPhase::Running, "error {i}");
            // Errors are retried after 10 s, sooner than the 30 s interval.
            let next = run.next_due().unwrap();
            assert_eq!(next.duration_since(now).unwrap(), ERROR_RETRY_INTERVAL);
            now = next;
        }
        assert_eq!(run.tick(&p, now).await, AnalysisPhase::Running);
        assert_eq!(run.metrics()[0].consecutive_error, 0);
        assert_eq!(
            run.metrics()[0].count,
            1,
            "errors do not count towards count"
        );
        let phases = drive(&mut run, &p, 10).await;
        assert_eq!(phases.last(), Some(&AnalysisPhase::Error));
        let msg = run.message().unwrap();
        assert!(
            msg.contains("5 consecutive errors") && msg.contains("connection refused"),
            "{msg}"
        );
        assert_eq!(run.metrics()[0].error, 9);
    }

    #[tokio::test]
    async fn one_shot_metric_retries_errors_until_the_limit() {
        let m = MetricSpec::new("m", fake()).consecutive_error_limit(1);
        let p = Scripted::new(vec![err(), Ok(json!(true))]);
        let mut run = AnalysisRun::new(&spec(m), BTreeMap::new(), t(0)).unwrap();
        assert_eq!(run.tick(&p, t(0)).await, AnalysisPhase::Running);
        assert_eq!(run.next_due(), Some(t(10)));
        assert_eq!(run.tick(&p, t(10)).await, AnalysisPhase::Successful);
    }

    #[tokio::test]
    async fn consecutive_success_limit_succeeds_early_or_fails_at_count() {
        let make = || {
            MetricSpec::new("m", fake())
                .interval(Duration::from_secs(1))
                .count(5)
                .failure_limit(-1)
                .consecutive_success_limit(2)
                .success_condition("result")
        };
        let p = Scripted::new(vec![Ok(json!(false)), Ok(json!(true)), Ok(json!(true))]);
        let mut run = AnalysisRun::new(&spec(make()), BTreeMap::new(), t(0)).unwrap();
        let phases = drive(&mut run, &p, 10).await;
        assert_eq!(
            phases,
            [
                AnalysisPhase::Running,
                AnalysisPhase::Running,
                AnalysisPhase::Successful
            ]
        );

        let flaky = [true, false, true, false, true].map(|b| Ok(json!(b)));
        let p = Scripted::new(flaky.into());
        let mut run = AnalysisRun::new(&spec(make()), BTreeMap::new(), t(0)).unwrap();
        let phases = drive(&mut run, &p, 10).await;
        assert_eq!(phases.len(), 5);
        assert_eq!(phases.last(), Some(&AnalysisPhase::Failed));
        assert!(
            run.message()
                .unwrap()
                .contains("without 2 consecutive successes")
        );
    }

    #[tokio::test]
    async fn inconclusive_is_terminal_and_explained() {
        // A NaN from the provider.
        let p = Scripted::new(vec![Err(ProviderError::Inconclusive {
            provider: "fake".into(),
            reason: "the query returned NaN".into(),
        })]);
        let m = MetricSpec::new("m", fake())
            .interval(Duration::from_secs(1))
            .count(3);
        let mut run = AnalysisRun::new(&spec(m), BTreeMap::new(), t(0)).unwrap();
        assert_eq!(run.tick(&p, t(0)).await, AnalysisPhase::Inconclusive);
        assert_eq!(run.next_due(), None);
        assert!(run.message().unwrap().contains("NaN"));

        // With a tolerance, an inconclusive measurement does not end the metric.
        let m = MetricSpec::new("m", fake())
            .interval(Duration::from_secs(1))
            .count(2)
            .inconclusive_limit(1)
            .success_condition("result < 1")
            .failure_condition("result > 2");
        let p = Scripted::new(vec![Ok(json!(1.5)), Ok(json!(0.5))]);
        let mut run = AnalysisRun::new(&spec(m), BTreeMap::new(), t(0)).unwrap();
        let phases = drive(&mut run, &p, 10).await;
        assert_eq!(phases, [AnalysisPhase::Running, AnalysisPhase::Successful]);
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
    async fn background_metric_runs_until_terminated_and_keeps_ten() {
        let m = MetricSpec::new("m", fake())
            .interval(Duration::from_secs(1))
            .success_condition("result < 1");
        let p = Scripted::new((0..25).map(|_| Ok(json!(0))).collect());
        let mut run = AnalysisRun::new(&spec(m), BTreeMap::new(), t(0)).unwrap();
        let phases = drive(&mut run, &p, 25).await;
        assert!(phases.iter().all(|p| *p == AnalysisPhase::Running));
        let r = &run.metrics()[0];
        assert_eq!(r.count, 25);
        assert_eq!(r.measurements.len(), MEASUREMENTS_KEPT);
        assert_eq!(r.measurements.back().unwrap().at, t(24));
        run.terminate();
        assert_eq!(run.phase(), AnalysisPhase::Successful);
        assert_eq!(run.next_due(), None);
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
    async fn a_condition_that_cannot_be_evaluated_is_an_error_measurement() {
        let m = MetricSpec::new("m", fake())
            .success_condition("result.x > 1")
            .consecutive_error_limit(0);
        let p = Scripted::new(vec![Ok(json!(5))]);
        let mut run = AnalysisRun::new(&spec(m), BTreeMap::new(), t(0)).unwrap();
        assert_eq!(run.tick(&p, t(0)).await, AnalysisPhase::Error);
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
            e.to_string().contains("count: count 3 needs an interval"),
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
