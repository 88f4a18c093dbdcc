//! Measurement bookkeeping: one metric's counters, its last [`MEASUREMENTS_KEPT`]
//! measurements and when it is next due.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::assessment::assess;
use super::{AnalysisPhase, MetricSpec};

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
    /// When the next measurement is due (absent once terminal); for a measurement in progress,
    /// when it is resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_due: Option<SystemTime>,
    /// A measurement the provider answered as still running, resumed when next due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<InProgress>,
}

impl MetricResult {
    /// Measurements taken so far, errors included: the sequence number a completed
    /// measurement must carry to be recorded.
    pub fn taken(&self) -> u64 {
        u64::from(self.count) + u64::from(self.error)
    }
}

/// A measurement in progress: what the provider handed back to resume (or stop) it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct InProgress {
    /// The provider's handle (a job name, a process id), passed back to `resume` and
    /// `terminate`.
    pub handle: Value,
    /// When the measurement started.
    pub started_at: SystemTime,
}

/// What one measurement turned into, before counting.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Outcome {
    Value(AnalysisPhase, Value),
    Inconclusive(String),
    /// The reason, and whether it is permanent.
    Error(String, bool),
    /// Not finished: resume with `handle` after `resume_after`.
    Running {
        handle: Value,
        resume_after: Duration,
    },
}

impl Outcome {
    /// The measurement's phase (Running while in progress).
    pub(super) fn phase(&self) -> AnalysisPhase {
        match self {
            Outcome::Value(phase, _) => *phase,
            Outcome::Inconclusive(_) => AnalysisPhase::Inconclusive,
            Outcome::Error(..) => AnalysisPhase::Error,
            Outcome::Running { .. } => AnalysisPhase::Running,
        }
    }
}

/// Counts one measurement into `r` and assesses the metric; a measurement still running is
/// kept in progress and nothing is counted.
pub(super) fn record(spec: &MetricSpec, r: &mut MetricResult, outcome: Outcome, now: SystemTime) {
    let (measurement, permanent) = match outcome {
        Outcome::Running {
            handle,
            resume_after,
        } => {
            let started_at = r.in_progress.as_ref().map_or(now, |p| p.started_at);
            r.in_progress = Some(InProgress { handle, started_at });
            r.phase = AnalysisPhase::Running;
            r.next_due = Some(now + resume_after);
            return;
        }
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
    r.in_progress = None;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::analysis::AnalysisRun;
    use crate::analysis::test_support::{Scripted, drive, err, fake, spec, t};

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
}
