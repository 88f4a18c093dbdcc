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
