//! Metric result assessment: how a measured value is judged against the metric's conditions,
//! and when the metric's limits make it Successful, Failed, Inconclusive or Error.

use std::collections::BTreeMap;

use serde_json::Value;

use super::measurement::{MetricResult, Outcome};
use super::{AnalysisPhase, MetricSpec, condition};

/// Argo's outcome rules: neither condition → Successful; only success → Failed when false;
/// only failure → Successful when false; both → Failed if failure holds, Successful if success
/// holds, Inconclusive when neither does. A condition that cannot be evaluated is an Error.
pub(super) fn judge(spec: &MetricSpec, value: Value, args: &BTreeMap<String, String>) -> Outcome {
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

/// The metric's phase after its latest measurement.
pub(super) fn assess(
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
    // BCS HookRun checks `successfulLimit` right after the failure limit.
    if spec.successful_limit > 0 && r.successful >= spec.successful_limit {
        return (
            AnalysisPhase::Successful,
            Some(format!(
                "{} of {} measurements successful (successfulLimit {})",
                r.successful, r.count, spec.successful_limit
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
        // Argo's rule: a success limit not reached by `count` is Inconclusive while the failure
        // limit also applies (neither limit decided), and Failed when the failure limit is
        // disabled (−1), the success limit then being the only criterion. BCS's
        // `successfulLimit` is held to the same rule (BCS itself passes the metric).
        let mut unmet = Vec::new();
        if spec.consecutive_success_limit > 0 {
            unmet.push(format!(
                "{} consecutive successes",
                spec.consecutive_success_limit
            ));
        }
        if spec.successful_limit > 0 {
            unmet.push(format!(
                "{} successes (successfulLimit; {} so far)",
                spec.successful_limit, r.successful
            ));
        }
        if !unmet.is_empty() {
            let (phase, failure) = if spec.failure_limit >= 0 {
                (
                    AnalysisPhase::Inconclusive,
                    format!("failureLimit {} not exceeded either", spec.failure_limit),
                )
            } else {
                (AnalysisPhase::Failed, "failureLimit disabled".to_owned())
            };
            return (
                phase,
                Some(format!(
                    "{count} measurements without {} ({failure}); {last}",
                    unmet.join(" or ")
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
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde_json::json;

    use crate::analysis::test_support::{Scripted, drive, err, fake, spec, t};
    use crate::analysis::{
        AnalysisPhase, AnalysisRun, ERROR_RETRY_INTERVAL, MetricSpec, ProviderError,
    };

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
    async fn consecutive_success_limit_succeeds_early_or_fails_at_count_without_failure_limit() {
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

    /// Argo: with the failure limit in force, running out of measurements without the streak
    /// decides nothing (Inconclusive, the rollout pauses); it used to fail the metric.
    #[tokio::test]
    async fn consecutive_success_limit_not_reached_at_count_is_inconclusive() {
        let m = MetricSpec::new("m", fake())
            .interval(Duration::from_secs(1))
            .count(4)
            .failure_limit(2)
            .consecutive_success_limit(3)
            .success_condition("result");
        let answers = [true, false, true, true].map(|b| Ok(json!(b)));
        let p = Scripted::new(answers.into());
        let mut run = AnalysisRun::new(&spec(m), BTreeMap::new(), t(0)).unwrap();
        let phases = drive(&mut run, &p, 10).await;
        assert_eq!(phases.len(), 4);
        assert_eq!(phases.last(), Some(&AnalysisPhase::Inconclusive));
        assert_eq!(run.metrics()[0].phase, AnalysisPhase::Inconclusive);
        let msg = run.message().unwrap();
        assert!(
            msg.contains("metric `m` inconclusive")
                && msg.contains("4 measurements without 3 consecutive successes")
                && msg.contains("failureLimit 2 not exceeded"),
            "{msg}"
        );
        assert_eq!(run.next_due(), None, "Inconclusive is terminal");

        // The default failure limit (0) applies too: an error breaks the streak without
        // counting, so three measurements end with a streak of two.
        let m = MetricSpec::new("m", fake())
            .interval(Duration::from_secs(1))
            .count(3)
            .consecutive_success_limit(3)
            .success_condition("result > 0");
        let p = Scripted::new(vec![Ok(json!(1)), err(), Ok(json!(1)), Ok(json!(1))]);
        let mut run = AnalysisRun::new(&spec(m), BTreeMap::new(), t(0)).unwrap();
        let phases = drive(&mut run, &p, 10).await;
        assert_eq!(phases.last(), Some(&AnalysisPhase::Inconclusive));
    }

    /// BCS HookRun's `successfulLimit`: successes in total, not in a row, end the metric.
    #[tokio::test]
    async fn successful_limit_counts_successes_in_total() {
        // Interval without count would run until terminated; the limit ends it.
        let m = MetricSpec::new("ready", fake())
            .interval(Duration::from_secs(5))
            .failure_limit(-1)
            .successful_limit(3)
            .success_condition("result");
        let answers = [true, false, true, false, false, true, true].map(|b| Ok(json!(b)));
        let p = Scripted::new(answers.into());
        let mut run = AnalysisRun::new(&spec(m), BTreeMap::new(), t(0)).unwrap();
        let phases = drive(&mut run, &p, 20).await;
        assert_eq!(phases.len(), 6, "the third success ends it: {phases:?}");
        assert_eq!(phases.last(), Some(&AnalysisPhase::Successful));
        let r = &run.metrics()[0];
        assert_eq!((r.count, r.successful, r.failed), (6, 3, 3));
        assert!(
            r.message
                .as_deref()
                .unwrap()
                .contains("3 of 6 measurements successful (successfulLimit 3)"),
            "{:?}",
            r.message
        );
        assert_eq!(p.calls(), 6);

        // The failure limit is checked first, as in BCS.
        let m = MetricSpec::new("ready", fake())
            .interval(Duration::from_secs(5))
            .count(5)
            .failure_limit(1)
            .successful_limit(2)
            .success_condition("result");
        let p = Scripted::new([false, true, false].map(|b| Ok(json!(b))).into());
        let mut run = AnalysisRun::new(&spec(m.clone()), BTreeMap::new(), t(0)).unwrap();
        assert_eq!(
            drive(&mut run, &p, 20).await.last(),
            Some(&AnalysisPhase::Failed)
        );

        // Not reached by `count`: Inconclusive while the failure limit applies (BCS would pass
        // it), Failed when the failure limit is disabled.
        let p = Scripted::new(
            [true, false, false, false, false]
                .map(|b| Ok(json!(b)))
                .into(),
        );
        let lenient = m.clone().failure_limit(4);
        let mut run = AnalysisRun::new(&spec(lenient), BTreeMap::new(), t(0)).unwrap();
        assert_eq!(
            drive(&mut run, &p, 20).await.last(),
            Some(&AnalysisPhase::Inconclusive)
        );
        let msg = run.message().unwrap();
        assert!(
            msg.contains("5 measurements without 2 successes (successfulLimit; 1 so far)"),
            "{msg}"
        );
        let p = Scripted::new(
            [true, false, false, false, false]
                .map(|b| Ok(json!(b)))
                .into(),
        );
        let only_success = m.failure_limit(-1);
        let mut run = AnalysisRun::new(&spec(only_success), BTreeMap::new(), t(0)).unwrap();
        assert_eq!(
            drive(&mut run, &p, 20).await.last(),
            Some(&AnalysisPhase::Failed)
        );
    }

    #[test]
    fn successful_limit_reads_from_bcs_yaml_and_is_validated() {
        let s: crate::analysis::AnalysisSpec = yaml_serde::from_str(
            "metrics:\n  - name: m\n    interval: 5s\n    successfulLimit: 2\n    \
             provider:\n      plugin:\n        fake: {}\n",
        )
        .unwrap();
        assert_eq!(s.metrics[0].successful_limit, 2);
        s.validate(&BTreeMap::new()).unwrap();
        // Off (0) is not written back, so specs without it keep their form.
        let plain = MetricSpec::new("m", fake());
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("successfulLimit").is_none(), "{json}");

        let impossible = spec(MetricSpec::new("m", fake()).successful_limit(2));
        let e = impossible.validate(&BTreeMap::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("metrics[0].successfulLimit (metric `m`): 2 successes can never happen in 1 measurements"),
            "{e}"
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
    async fn a_condition_that_cannot_be_evaluated_is_an_error_measurement() {
        let m = MetricSpec::new("m", fake())
            .success_condition("result.x > 1")
            .consecutive_error_limit(0);
        let p = Scripted::new(vec![Ok(json!(5))]);
        let mut run = AnalysisRun::new(&spec(m), BTreeMap::new(), t(0)).unwrap();
        assert_eq!(run.tick(&p, t(0)).await, AnalysisPhase::Error);
    }
}
