//! The analysis run: a pure state machine over measurements, persisted by the controller.
//!
//! Measurement bookkeeping lives in [`super::measurement`], the verdicts in
//! [`super::assessment`].

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::assessment::judge;
use super::measurement::{MetricResult, Outcome, record};
use super::provider::{MetricProvider, ProviderError};
use super::{AnalysisError, AnalysisPhase, AnalysisSpec, MetricSpec};

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use serde_json::{Value, json};

    use super::*;
    use crate::analysis::test_support::{Scripted, fake, spec, t};
    use crate::analysis::{ProviderSpec, Providers};

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
