//! Prometheus metrics of controllers, through `prometheus-client`.
//!
//! [`ControllerMetrics::register`] adds one set of metric families to a host's
//! [`Registry`]; every controller given (a clone of) that handle reports under its own
//! `controller` label, so several controllers share one registry and one scrape endpoint:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `rorqual_controller_reconciles_total` | counter | `controller`, `outcome` (`success`, `requeue`, `error`) |
//! | `rorqual_controller_reconcile_errors_total` | counter | `controller` |
//! | `rorqual_controller_reconcile_duration_seconds` | histogram | `controller` |
//! | `rorqual_controller_running_reconciles` | gauge | `controller` |
//! | `rorqual_controller_queue_depth` | gauge | `controller` |
//! | `rorqual_controller_queue_oldest_due_age_seconds` | gauge | `controller` |
//! | `rorqual_controller_queue_wait_seconds` | histogram | `controller` |
//!
//! `success` is a reconcile that returned [`Action::await_change`](crate::Action::await_change),
//! `requeue` one that returned [`Action::requeue`](crate::Action::requeue). The queue wait is
//! the time from a key's deadline to the start of its reconcile (how far behind the controller
//! runs); the oldest-due age is the same for the key waiting longest right now.
//!
//! Serve the registry with [`encode_text`] and [`CONTENT_TYPE`] from any HTTP server.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`encode_text`]'s output (OpenMetrics text, which Prometheus scrapes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes every metric of `registry` in the OpenMetrics text format.
///
/// # Errors
///
/// Only if a metric fails to format, which `prometheus-client`'s own metrics do not.
pub fn encode_text(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// How a reconcile ended, as the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Succeeded and awaits a change.
    Success,
    /// Succeeded and asked to be requeued after a delay.
    Requeue,
    /// Failed (returned an error or panicked).
    Error,
}

impl Outcome {
    /// The label value: `success`, `requeue` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Requeue => "requeue",
            Outcome::Error => "error",
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    controller: String,
    outcome: Outcome,
}

type HistogramFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The metric families of every controller sharing one registry. Cheap to clone; register
/// once per registry and hand a clone to each controller.
#[derive(Debug, Clone)]
pub struct ControllerMetrics {
    reconciles: Family<OutcomeLabels, Counter>,
    errors: Family<ControllerLabels, Counter>,
    duration: HistogramFamily,
    running: Family<ControllerLabels, Gauge>,
    queue_depth: Family<ControllerLabels, Gauge>,
    queue_oldest_due_age: Family<ControllerLabels, Gauge<f64, AtomicU64>>,
    queue_wait: HistogramFamily,
}

impl ControllerMetrics {
    /// Registers the controller metric families (prefix `rorqual_controller`) in `registry`.
    /// Call it once per registry: registering twice would expose each family twice.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ControllerMetrics {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            running: Family::default(),
            queue_depth: Family::default(),
            queue_oldest_due_age: Family::default(),
            queue_wait: Family::new_with_constructor(duration_histogram),
        };
        let r = registry.sub_registry_with_prefix("rorqual_controller");
        r.register(
            "reconciles",
            "Reconciles finished, by controller and outcome",
            m.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconciles that failed, by controller",
            m.errors.clone(),
        );
        r.register_with_unit(
            "reconcile_duration",
            "How long reconciles took, by controller",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register(
            "running_reconciles",
            "Reconciles running now, by controller",
            m.running.clone(),
        );
        r.register(
            "queue_depth",
            "Keys scheduled in the controller's queue (due or not)",
            m.queue_depth.clone(),
        );
        r.register_with_unit(
            "queue_oldest_due_age",
            "How long the key due longest has waited for a free worker",
            Unit::Seconds,
            m.queue_oldest_due_age.clone(),
        );
        r.register_with_unit(
            "queue_wait",
            "Time from a key's deadline to the start of its reconcile",
            Unit::Seconds,
            m.queue_wait.clone(),
        );
        m
    }

    /// The meters of one controller.
    pub(crate) fn meters(&self, controller: &str) -> Meters {
        let c = ControllerLabels {
            controller: controller.to_owned(),
        };
        let outcome = |outcome| OutcomeLabels {
            controller: controller.to_owned(),
            outcome,
        };
        Meters {
            success: self
                .reconciles
                .get_or_create_owned(&outcome(Outcome::Success)),
            requeue: self
                .reconciles
                .get_or_create_owned(&outcome(Outcome::Requeue)),
            error: self
                .reconciles
                .get_or_create_owned(&outcome(Outcome::Error)),
            errors: self.errors.get_or_create_owned(&c),
            duration: self.duration.get_or_create_owned(&c),
            running: self.running.get_or_create_owned(&c),
            queue_depth: self.queue_depth.get_or_create_owned(&c),
            queue_oldest_due_age: self.queue_oldest_due_age.get_or_create_owned(&c),
            queue_wait: self.queue_wait.get_or_create_owned(&c),
        }
    }
}

/// One controller's meters (handles into the shared families).
#[derive(Debug, Clone)]
pub(crate) struct Meters {
    success: Counter,
    requeue: Counter,
    error: Counter,
    errors: Counter,
    duration: Histogram,
    running: Gauge,
    queue_depth: Gauge,
    queue_oldest_due_age: Gauge<f64, AtomicU64>,
    queue_wait: Histogram,
}

impl Meters {
    /// Meters registered nowhere, for a controller without metrics.
    pub(crate) fn detached() -> Self {
        ControllerMetrics::register(&mut Registry::default()).meters("")
    }

    pub(crate) fn finished(&self, outcome: Outcome, took: Duration) {
        match outcome {
            Outcome::Success => self.success.inc(),
            Outcome::Requeue => self.requeue.inc(),
            Outcome::Error => {
                self.errors.inc();
                self.error.inc()
            }
        };
        self.duration.observe(took.as_secs_f64());
    }

    pub(crate) fn started(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    pub(crate) fn set_queue(&self, depth: usize, oldest_due_age: Option<Duration>, running: usize) {
        self.queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.running.set(i64::try_from(running).unwrap_or(i64::MAX));
        self.queue_oldest_due_age
            .set(oldest_due_age.map_or(0.0, |d| d.as_secs_f64()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_controllers_share_one_registry_by_label() {
        let mut registry = Registry::default();
        let metrics = ControllerMetrics::register(&mut registry);
        let a = metrics.meters("rollouts");
        let b = metrics.clone().meters("providers");
        a.finished(Outcome::Success, Duration::from_millis(3));
        a.finished(Outcome::Error, Duration::from_millis(3));
        b.finished(Outcome::Requeue, Duration::from_millis(3));
        b.set_queue(4, Some(Duration::from_millis(1500)), 2);
        let text = encode_text(&registry).unwrap();
        for line in [
            r#"rorqual_controller_reconciles_total{controller="rollouts",outcome="success"} 1"#,
            r#"rorqual_controller_reconciles_total{controller="rollouts",outcome="error"} 1"#,
            r#"rorqual_controller_reconciles_total{controller="providers",outcome="requeue"} 1"#,
            r#"rorqual_controller_reconcile_errors_total{controller="rollouts"} 1"#,
            r#"rorqual_controller_reconcile_duration_seconds_count{controller="rollouts"} 2"#,
            r#"rorqual_controller_queue_depth{controller="providers"} 4"#,
            r#"rorqual_controller_running_reconciles{controller="providers"} 2"#,
            r#"rorqual_controller_queue_oldest_due_age_seconds{controller="providers"} 1.5"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE rorqual_controller_reconciles counter")
                .count(),
            1,
            "one family, not one per controller:\n{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
