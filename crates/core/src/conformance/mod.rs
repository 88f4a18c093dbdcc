//! The engine conformance suite (feature `testing`): checks every [`Engine`] and
//! [`StateStore`] must pass, whatever runs the instances (memory, local processes, a
//! Kubernetes cluster).
//!
//! An engine's tests build a [`Harness`] (the engine, a spec of a workload it can run, and how
//! to let time pass) and call [`run`], or the checks one by one. Each check uses its own
//! application names under the harness's prefix and deletes what it created, so checks can
//! share one engine (and one cluster namespace). A check returns a [`Failure`] naming the check
//! and what it saw; it never panics.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use rorqual_core::clock::ManualClock;
//! use rorqual_core::conformance::{self, Harness};
//! use rorqual_core::memory::MemoryEngine;
//! use rorqual_core::model::{AppSpec, ContainerSpec};
//!
//! let clock = ManualClock::new();
//! let engine = MemoryEngine::builder().clock(clock.clone()).build();
//! let harness = Harness::new(Arc::new(engine), |name, version| {
//!     AppSpec::new(name, vec![ContainerSpec::new("app", ["demo"]).env("VERSION", version)])
//! })
//! .tick(move || {
//!     let clock = clock.clone();
//!     Box::pin(async move { clock.advance(Duration::from_secs(1)) })
//! });
//! conformance::run(&harness).await.unwrap();
//! # }
//! ```

mod engine_checks;
mod state_store_checks;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::engine::Engine;
use crate::model::AppSpec;

pub use engine_checks::{
    apply_scale_delete_are_idempotent, events_name_the_app, invalid_spec_starts_nothing,
    revisions_are_counted_apart, stateful_identities_start_in_order_and_move,
};
pub use state_store_checks::{state_store_compare_and_swap, state_store_concurrent_writers};

/// A check that did not pass: which one, and what it saw.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conformance check `{check}` failed: {detail}")]
pub struct Failure {
    /// The check.
    pub check: &'static str,
    /// What was expected and what the engine did.
    pub detail: String,
}

impl Failure {
    pub(crate) fn new(check: &'static str, detail: impl fmt::Display) -> Failure {
        Failure {
            check,
            detail: detail.to_string(),
        }
    }
}

/// The result of a check.
pub type CheckResult = Result<(), Failure>;

type SpecFn = dyn Fn(&str, &str) -> AppSpec + Send + Sync;
type TickFn = dyn Fn() -> BoxFuture<'static, ()> + Send + Sync;

/// How the suite drives one engine.
#[derive(Clone)]
pub struct Harness {
    engine: Arc<dyn Engine>,
    spec: Arc<SpecFn>,
    tick: Arc<TickFn>,
    patience: u32,
    prefix: String,
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("engine", &self.engine.kind())
            .field("patience", &self.patience)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Harness {
    /// Drives `engine`. `spec(name, version)` is a stateless spec of a workload the engine can
    /// run, named `name` (in the namespace the tests want), whose revision differs for
    /// different `version`s; it must become ready by itself. By default time passes by
    /// sleeping 100 ms per tick, with a patience of 600 ticks.
    pub fn new(
        engine: Arc<dyn Engine>,
        spec: impl Fn(&str, &str) -> AppSpec + Send + Sync + 'static,
    ) -> Harness {
        Harness {
            engine,
            spec: Arc::new(spec),
            tick: Arc::new(|| Box::pin(tokio::time::sleep(Duration::from_millis(100)))),
            patience: 600,
            prefix: "conf".to_owned(),
        }
    }

    /// How time passes between two observations (a manual clock's advance, a sleep).
    #[must_use]
    pub fn tick<F>(mut self, tick: impl Fn() -> F + Send + Sync + 'static) -> Harness
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tick = Arc::new(move || Box::pin(tick()));
        self
    }

    /// How many ticks a check waits for the engine to converge before it fails.
    #[must_use]
    pub fn patience(mut self, ticks: u32) -> Harness {
        self.patience = ticks;
        self
    }

    /// The prefix of the application names the checks create (default `conf`).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Harness {
        self.prefix = prefix.into();
        self
    }

    /// The engine.
    pub fn engine(&self) -> &dyn Engine {
        &*self.engine
    }

    /// The spec of application `<prefix>-<name>` at `version`.
    pub fn spec(&self, name: &str, version: &str) -> AppSpec {
        (self.spec)(&format!("{}-{name}", self.prefix), version)
    }

    /// Waits until `probe` answers `Some`, letting time pass between tries; fails with the
    /// last observation (what `probe` returned as `Err`) when patience runs out.
    pub(crate) async fn wait_for<T, Fut>(
        &self,
        check: &'static str,
        what: &str,
        mut probe: impl FnMut() -> Fut,
    ) -> Result<T, Failure>
    where
        Fut: Future<Output = Result<Option<T>, String>>,
    {
        let mut last = String::from("nothing observed");
        for _ in 0..=self.patience {
            match probe().await {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(seen) => last = seen,
            }
            (self.tick)().await;
        }
        Err(Failure::new(
            check,
            format!(
                "{what}: not reached after {} ticks; last seen: {last}",
                self.patience
            ),
        ))
    }
}

/// Every engine check in order, then the state-store checks on the engine's
/// [`Engine::state_store`], stopping at the first failure.
pub async fn run(h: &Harness) -> CheckResult {
    invalid_spec_starts_nothing(h).await?;
    apply_scale_delete_are_idempotent(h).await?;
    revisions_are_counted_apart(h).await?;
    stateful_identities_start_in_order_and_move(h).await?;
    events_name_the_app(h).await?;
    let store = h.engine.state_store();
    let prefix = format!("{}/", h.prefix);
    state_store_compare_and_swap(&*store, &prefix).await?;
    state_store_concurrent_writers(&*store, &prefix, 8, 10).await?;
    Ok(())
}
