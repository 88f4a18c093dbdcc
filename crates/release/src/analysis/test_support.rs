//! Test fixtures shared by the analysis run's tests: a scripted provider and a driver.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{
    AnalysisPhase, AnalysisRun, AnalysisSpec, MetricProvider, MetricSpec, ProviderError,
    ProviderSpec,
};

/// Answers from a script, one per call, and records the specs it was given.
#[derive(Debug, Default)]
pub(super) struct Scripted {
    answers: Mutex<VecDeque<Result<Value, ProviderError>>>,
    pub(super) seen: Mutex<Vec<(MetricSpec, BTreeMap<String, String>)>>,
}

impl Scripted {
    pub(super) fn new(answers: Vec<Result<Value, ProviderError>>) -> Self {
        Scripted {
            answers: Mutex::new(answers.into()),
            seen: Mutex::default(),
        }
    }
    pub(super) fn calls(&self) -> usize {
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

pub(super) fn err() -> Result<Value, ProviderError> {
    Err(ProviderError::measurement("fake", "connection refused"))
}

pub(super) fn fake() -> ProviderSpec {
    ProviderSpec::plugin("fake", json!({"q": "{{args.svc}}"}))
}

pub(super) fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
}

pub(super) fn spec(metric: MetricSpec) -> AnalysisSpec {
    AnalysisSpec::new(vec![metric]).arg("svc", Some("web"))
}

/// Ticks at every due time until terminal or `max` ticks; returns the phases seen.
pub(super) async fn drive(
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
