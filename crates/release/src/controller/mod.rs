//! The `RolloutController`: the shell around the pure [`RolloutMachine`], on `rorqual-runtime`.
//!
//! Each rollout is a [`Rollout`] record persisted as JSON in a [`StateStore`] (injected on the
//! builder; by default the engine's) with compare-and-swap. The controller runs on a
//! [`rorqual_runtime::Controller`]: rollouts reconcile concurrently, never two reconciles of one
//! rollout at once, woken by engine events, verbs, measurement results and the times the
//! machine asks for (a pause's end, an analysis interval, a delay), with a slow resync as a
//! safety net. An idle Healthy rollout is read once per resync, not polled.
//!
//! One reconcile observes the groups, runs the machine, executes its engine and router effects
//! in order, and persists the new state only when they all succeeded; a failed effect leaves
//! the stored state as it was, and the next reconcile plans the same step again (effects are
//! idempotent). Notifications and measurements run as spawned tasks: their results come back
//! through the queue, so a slow webhook or metric query never delays another rollout — nor
//! this one's next step.
//!
//! Deterministic tests run the controller under `tokio::time::pause` with a
//! [`TokioClock`](rorqual_core::clock::TokioClock), so timers and timestamps move together.

mod background;
mod builder;
mod error;
mod event;
mod shell;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

pub use builder::RolloutControllerBuilder;
pub use error::ControllerError;
pub use event::{EventReason, RolloutEvent};

use crate::analysis::{CompletedMeasurement, MetricProvider};
use crate::approval::{ApprovalGate, Approvals};
use crate::machine::{Effect, Rollout, RolloutMachine, RolloutStatus, Verb};
use crate::notify::Notifier;
use crate::record::{HistoryEntry, RolloutSpec};
use crate::registry::StrategyRegistry;
use crate::strategy::{ReleaseStrategy, StrategyError};
use crate::traffic::TrafficRouter;
use rorqual_core::clock::Clock;
use rorqual_core::engine::{Engine, StateStore};
use rorqual_core::model::{AppKey, Revision, WorkloadKind};
use rorqual_runtime::triggers::{TriggerSender, Triggers};

/// Prefix of rollout records in the state store.
pub const STATE_PREFIX: &str = "rollouts/";

/// The rollout controller. Cloning shares it.
#[derive(Debug, Clone)]
pub struct RolloutController {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Arc<dyn Engine>,
    store: Arc<dyn StateStore>,
    router: Arc<dyn TrafficRouter>,
    approvals: Arc<dyn ApprovalGate>,
    /// The built-in gate when it is the one in use (for [`RolloutController::approve`]).
    approvals_api: Option<Approvals>,
    notifier: Option<Arc<dyn Notifier>>,
    providers: Arc<dyn MetricProvider>,
    registry: StrategyRegistry,
    /// Resolved strategies by the hash of their spec and the workload kind, shared by the
    /// rollouts that use them.
    resolved: parking_lot::Mutex<HashMap<String, std::sync::Weak<dyn ReleaseStrategy>>>,
    clock: Arc<dyn Clock>,
    cluster: Option<String>,
    resync: Duration,
    progress_check: Duration,
    concurrency: usize,
    rollouts: parking_lot::Mutex<HashMap<AppKey, Arc<tokio::sync::Mutex<Entry>>>>,
    triggers: parking_lot::Mutex<Option<Triggers<AppKey>>>,
    trigger: TriggerSender<AppKey>,
    events: broadcast::Sender<RolloutEvent>,
    background: background::Background,
    /// The applications whose preview the router answered it has no service for.
    no_preview: parking_lot::Mutex<HashSet<AppKey>>,
}

/// One rollout in memory.
#[derive(Debug)]
struct Entry {
    rollout: Rollout,
    version: Option<u64>,
    /// A hash of the JSON last written (skips writes that change nothing).
    persisted: u64,
    strategy: Arc<dyn ReleaseStrategy>,
}

impl RolloutController {
    /// A builder over `engine`.
    pub fn builder(engine: Arc<dyn Engine>) -> RolloutControllerBuilder {
        RolloutControllerBuilder::new(engine)
    }

    fn entry(&self, app: &AppKey) -> Result<Arc<tokio::sync::Mutex<Entry>>, ControllerError> {
        self.inner
            .rollouts
            .lock()
            .get(app)
            .cloned()
            .ok_or_else(|| ControllerError::NotFound(app.clone()))
    }

    fn machine<'a>(&'a self, strategy: &'a dyn ReleaseStrategy) -> RolloutMachine<'a> {
        RolloutMachine::new(strategy)
            .cluster(self.inner.cluster.as_deref())
            .progress_check(self.inner.progress_check)
    }

    /// A stream of rollout events from now on.
    pub fn events(&self) -> broadcast::Receiver<RolloutEvent> {
        self.inner.events.subscribe()
    }

    /// The status of `app`'s rollout.
    pub async fn status(&self, app: &AppKey) -> Option<RolloutStatus> {
        let entry = self.entry(app).ok()?;
        let e = entry.lock().await;
        Some(RolloutStatus::of(&e.rollout))
    }

    /// The whole persisted record of `app`'s rollout (state, analysis runs, history).
    pub async fn rollout(&self, app: &AppKey) -> Option<Rollout> {
        let entry = self.entry(app).ok()?;
        let e = entry.lock().await;
        Some(e.rollout.clone())
    }

    /// The revisions kept for `undo`, oldest first.
    pub async fn history(&self, app: &AppKey) -> Vec<HistoryEntry> {
        match self.entry(app) {
            Ok(entry) => entry.lock().await.rollout.history.clone(),
            Err(_) => Vec::new(),
        }
    }

    /// How many rollouts the controller drives.
    pub fn len(&self) -> usize {
        self.inner.rollouts.lock().len()
    }

    /// Whether it drives none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Measurements and notifications still running in the background.
    pub fn background_tasks(&self) -> usize {
        self.inner.background.running()
    }

    /// Validates `spec` and resolves its strategy: the kind must be registered, the strategy
    /// valid (every problem listed with its path), and every analysis metric's provider known.
    fn resolve(&self, spec: &RolloutSpec) -> Result<Arc<dyn ReleaseStrategy>, ControllerError> {
        // Rollouts with the same strategy share one resolved, validated copy (10,000 rollouts
        // of one canary hold one `Canary`).
        let key = format!("{}/{:?}", spec.step_hash(), spec.app.kind);
        if let Some(strategy) = self
            .inner
            .resolved
            .lock()
            .get(&key)
            .and_then(std::sync::Weak::upgrade)
        {
            return Ok(strategy);
        }
        let strategy = self.resolve_new(spec)?;
        let mut resolved = self.inner.resolved.lock();
        resolved.retain(|_, weak| weak.strong_count() > 0);
        resolved.insert(key, Arc::downgrade(&strategy));
        Ok(strategy)
    }

    fn resolve_new(&self, spec: &RolloutSpec) -> Result<Arc<dyn ReleaseStrategy>, ControllerError> {
        let app = spec.app.key();
        let invalid = |source| ControllerError::InvalidStrategy {
            app: app.clone(),
            source: Box::new(source),
        };
        let strategy = self
            .inner
            .registry
            .resolve(&spec.strategy)
            .map_err(invalid)?;
        let mut problems: Vec<StrategyError> = strategy
            .validate(spec.app.kind == WorkloadKind::Stateful)
            .err()
            .into_iter()
            .collect();
        for (location, analysis) in strategy.analyses() {
            if let Err(source) = analysis
                .spec
                .validate_providers(self.inner.providers.as_ref())
            {
                problems.push(StrategyError::Analysis { location, source });
            }
        }
        StrategyError::from_problems(problems).map_err(invalid)?;
        Ok(strategy)
    }

    /// Starts or updates a rollout. The spec is validated first; nothing changes when it is
    /// invalid. A new template or new steps start a new attempt at step 0; a template equal
    /// to the stable revision rolls back at once, skipping every step (fast rollback); a
    /// replica change alone is spread over the groups.
    pub async fn apply(&self, spec: RolloutSpec) -> Result<RolloutStatus, ControllerError> {
        let strategy = self.resolve(&spec)?;
        let app = spec.app.key();
        let existing = self.inner.rollouts.lock().get(&app).cloned();
        let (status, effects) = match existing {
            None => {
                let rollout = Rollout::new(spec, self.inner.clock.now());
                let mut entry = Entry {
                    rollout: rollout.clone(),
                    version: None,
                    persisted: 0,
                    strategy,
                };
                self.persist(&mut entry, rollout).await?;
                let status = RolloutStatus::of(&entry.rollout);
                self.inner
                    .rollouts
                    .lock()
                    .insert(app.clone(), Arc::new(tokio::sync::Mutex::new(entry)));
                (status, Vec::new())
            }
            Some(entry) => {
                let mut e = entry.lock().await;
                let now = self.inner.clock.now();
                let mut next = e.rollout.clone();
                let target = spec.app.revision();
                let step_hash = spec.step_hash();
                let previous = next.target.clone();
                let new_attempt = next.target != target || next.step_hash != step_hash;
                next.spec = spec;
                let mut effects = Vec::new();
                if new_attempt {
                    next.restart(now, "rollout updated");
                    next.target = target.clone();
                    next.step_hash = step_hash;
                    if previous != target {
                        effects.push(Effect::WithdrawApprovals(previous));
                    }
                }
                e.strategy = strategy;
                self.persist(&mut e, next).await?;
                (RolloutStatus::of(&e.rollout), effects)
            }
        };
        let effects = self.withdraw_now(&app, effects).await;
        self.announce(&app, &status.target, &effects, None);
        self.emit(
            &app,
            &status.target,
            None,
            EventReason::Updated,
            format!("rollout of {} applied", status.target),
        );
        self.inner.trigger.trigger(app);
        Ok(status)
    }

    /// Promote: passes what the current step waits for (a pause, an approval, an analysis
    /// that ended failed, errored or inconclusive) and goes to the next step. The step index
    /// never passes the number of steps, and the final step still waits for the new revision
    /// to be fully available. A blue-green promote passes only the promotion gate.
    pub async fn promote(&self, app: &AppKey) -> Result<RolloutStatus, ControllerError> {
        self.verb(app, Verb::Promote).await
    }

    /// Promote-full: skips every remaining pause, approval and analysis. The new revision is
    /// still brought to full availability before it takes all traffic, and the old revision
    /// still gets its scale-down delay.
    pub async fn promote_full(&self, app: &AppKey) -> Result<RolloutStatus, ControllerError> {
        self.verb(app, Verb::PromoteFull).await
    }

    /// Abort: traffic and replicas back to the stable revision; Degraded until retried or
    /// updated. Aborting an aborted rollout changes nothing.
    pub async fn abort(&self, app: &AppKey) -> Result<RolloutStatus, ControllerError> {
        self.verb(app, Verb::Abort).await
    }

    /// Retry an aborted (or held) rollout from step 0, as a new attempt.
    pub async fn retry(&self, app: &AppKey) -> Result<RolloutStatus, ControllerError> {
        self.verb(app, Verb::Retry).await
    }

    /// Pause where it is until [`resume`](Self::resume).
    pub async fn pause(&self, app: &AppKey) -> Result<RolloutStatus, ControllerError> {
        self.verb(app, Verb::Pause).await
    }

    /// Resume after [`pause`](Self::pause) (a rollout not paused by an operator is unchanged).
    pub async fn resume(&self, app: &AppKey) -> Result<RolloutStatus, ControllerError> {
        self.verb(app, Verb::Resume).await
    }

    /// Undo: roll out an earlier revision again (the previous stable one when `to` is `None`).
    /// Going back to the stable revision skips every step.
    pub async fn undo(
        &self,
        app: &AppKey,
        to: Option<&Revision>,
    ) -> Result<RolloutStatus, ControllerError> {
        let spec = {
            let entry = self.entry(app)?;
            let e = entry.lock().await;
            let r = &e.rollout;
            let found = match to {
                Some(rev) => r.spec_of(rev),
                None => r
                    .stable_spec
                    .clone()
                    .filter(|s| s.revision() != r.target)
                    .or_else(|| {
                        r.history
                            .iter()
                            .rev()
                            .find(|h| h.revision != r.target)
                            .map(|h| h.spec.clone())
                    })
                    .map(|s| s.replicas(r.spec.app.replicas)),
            };
            let Some(app_spec) = found else {
                return Err(ControllerError::NoSuchRevision {
                    app: app.clone(),
                    what: match to {
                        Some(rev) => format!("revision {rev} is not in the history"),
                        None => "no earlier revision in the history".into(),
                    },
                });
            };
            let mut spec = r.spec.clone();
            spec.app = app_spec;
            spec
        };
        self.apply(spec).await
    }

    /// Approves (or rejects) the approval `app`'s rollout waits for, as `by`, through the
    /// built-in [`Approvals`] gate, and wakes the rollout at once.
    pub async fn decide(
        &self,
        app: &AppKey,
        approved: bool,
        by: &str,
        comment: Option<String>,
    ) -> Result<RolloutStatus, ControllerError> {
        let entry = self.entry(app)?;
        let key = {
            let e = entry.lock().await;
            let r = &e.rollout;
            if !matches!(
                r.state,
                crate::machine::RolloutState::WaitingApproval { .. }
            ) {
                return Err(ControllerError::NotWaitingForApproval {
                    app: app.clone(),
                    doing: r.message.clone(),
                });
            }
            crate::approval::ApprovalKey::new(app.clone(), r.target.clone(), r.attempt, r.step)
        };
        let Some(api) = &self.inner.approvals_api else {
            return Err(ControllerError::Approval {
                app: app.clone(),
                source: Box::new(crate::approval::ApprovalError::Unsupported(
                    "decisions through the controller need the built-in Approvals gate",
                )),
            });
        };
        api.decide(&key, approved, by, comment, self.inner.clock.now())
            .await
            .map_err(|source| ControllerError::Approval {
                app: app.clone(),
                source: Box::new(source),
            })?;
        self.inner.trigger.trigger(app.clone());
        let e = entry.lock().await;
        Ok(RolloutStatus::of(&e.rollout))
    }

    async fn verb(&self, app: &AppKey, verb: Verb) -> Result<RolloutStatus, ControllerError> {
        let entry = self.entry(app)?;
        let (status, effects) = {
            let mut e = entry.lock().await;
            let now = self.inner.clock.now();
            let mut next = e.rollout.clone();
            let strategy = e.strategy.clone();
            let effects = self
                .machine(strategy.as_ref())
                .verb(&mut next, verb, now)
                .map_err(|source| ControllerError::Refused {
                    verb,
                    app: app.clone(),
                    source,
                })?;
            self.persist(&mut e, next).await?;
            (RolloutStatus::of(&e.rollout), effects)
        };
        let rest = self.withdraw_now(app, effects).await;
        self.announce(app, &status.target, &rest, None);
        self.inner.trigger.trigger(app.clone());
        Ok(status)
    }

    /// Withdraws the approval requests `effects` end before answering an operator (who waits
    /// for the verb or apply); returns the other effects.
    async fn withdraw_now(&self, app: &AppKey, effects: Vec<Effect>) -> Vec<Effect> {
        let (withdrawals, rest): (Vec<Effect>, Vec<Effect>) = effects
            .into_iter()
            .partition(|e| matches!(e, Effect::WithdrawApprovals(_)));
        for effect in withdrawals {
            if let Effect::WithdrawApprovals(revision) = effect
                && let Err(err) = self.inner.approvals.withdraw(app, &revision).await
                && !matches!(err, crate::approval::ApprovalError::Unsupported(_))
            {
                tracing::warn!(app = %app, revision = %revision, error = %err, "withdrawing approval requests failed");
            }
        }
        rest
    }

    /// Runs the controller until `shutdown` completes (running reconciles finish first).
    /// Errors when it is already running.
    pub async fn run(
        &self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ControllerError> {
        let Some(triggers) = self.inner.triggers.lock().take() else {
            return Err(ControllerError::AlreadyRunning);
        };
        let keys: Vec<AppKey> = self.inner.rollouts.lock().keys().cloned().collect();
        let triggers = triggers.keys(keys).resync(self.inner.resync);
        let reconciler = Arc::new(shell::RolloutReconciler(self.clone()));
        let controller = rorqual_runtime::Controller::builder("rollouts", reconciler)
            .concurrency(self.inner.concurrency)
            .triggers(triggers)
            .build()
            .map_err(ControllerError::Runtime)?;
        controller.run(shutdown).await;
        Ok(())
    }

    fn emit(
        &self,
        app: &AppKey,
        revision: &Revision,
        step: Option<usize>,
        reason: EventReason,
        message: String,
    ) {
        tracing::info!(app = %app, revision = %revision, step, reason = reason.as_str(), "{message}");
        if self.inner.events.receiver_count() > 0 {
            let _ = self.inner.events.send(RolloutEvent {
                app: app.clone(),
                revision: revision.clone(),
                step,
                reason,
                message,
                time: self.inner.clock.now(),
            });
        }
    }

    /// Persists `next` as `e`'s rollout (compare-and-swap; a write that changes nothing is
    /// skipped).
    async fn persist(&self, e: &mut Entry, next: Rollout) -> Result<(), ControllerError> {
        let app = next.app.clone();
        // Plain data: serialisation cannot fail.
        let bytes = serde_json::to_vec(&next).unwrap_or_default();
        let hash = digest(&bytes);
        if hash != e.persisted || e.version.is_none() {
            let key = Rollout::store_key(STATE_PREFIX, &app);
            let version = self
                .inner
                .store
                .compare_and_swap(&key, e.version, Some(bytes))
                .await
                .map_err(|source| ControllerError::Engine { app, source })?;
            e.version = Some(version);
            e.persisted = hash;
        }
        e.rollout = next;
        Ok(())
    }

    /// Runs the effects that follow a persisted transition: events, notifications, approval
    /// cleanup and measurements, in the background.
    fn announce(
        &self,
        app: &AppKey,
        revision: &Revision,
        effects: &[Effect],
        runs: Option<&Rollout>,
    ) {
        let mut approval = None;
        for effect in effects {
            match effect {
                Effect::RequestApproval(req) => approval = Some((**req).clone()),
                Effect::Notify {
                    reason,
                    step,
                    message,
                } => {
                    self.emit(app, revision, *step, *reason, message.clone());
                    let with = (*reason == EventReason::ApprovalRequested)
                        .then(|| approval.clone())
                        .flatten();
                    self.inner.background.notify(
                        &self.inner,
                        app,
                        revision,
                        *step,
                        *reason,
                        message,
                        with,
                    );
                }
                // A preview the router took (not one it has no service for).
                Effect::SetPreview(preview)
                    if runs.is_some_and(|r| r.preview == *preview)
                        && !self.inner.no_preview.lock().contains(app) =>
                {
                    let message = match preview {
                        Some(rev) => format!("preview route serves {rev}"),
                        None => "preview route emptied".to_owned(),
                    };
                    let step = runs.map(|r| r.step);
                    self.emit(app, revision, step, EventReason::Preview, message);
                }
                Effect::WithdrawApprovals(rev) => {
                    self.inner.background.withdraw(&self.inner, app, rev);
                }
                Effect::Measure { key, pending } => {
                    let Some(started) = runs
                        .and_then(|r| r.analyses.get(key))
                        .map(|run| run.started_at())
                    else {
                        continue;
                    };
                    self.inner.background.measure(
                        &self.inner,
                        app,
                        (key, started),
                        (**pending).clone(),
                    );
                }
                _ => {}
            }
        }
    }

    /// Takes the measurements that came back for `r`'s current runs (a result for a run that
    /// ended or was started again since is dropped).
    fn take_measured(&self, r: &Rollout) -> Vec<(String, CompletedMeasurement)> {
        self.inner
            .background
            .take_measured(&r.app)
            .into_iter()
            .filter(|(key, started, _)| {
                r.analyses
                    .get(key)
                    .is_some_and(|run| run.started_at() == *started)
            })
            .map(|(key, _, done)| (key, done))
            .collect()
    }

    /// Loads every persisted rollout (a restarted controller resumes them where they stopped).
    async fn load(&self) -> Result<(), ControllerError> {
        let records = self
            .inner
            .store
            .list(STATE_PREFIX)
            .await
            .map_err(|source| ControllerError::Load { source })?;
        let mut seen = HashSet::new();
        for (key, versioned) in records {
            let rollout = match serde_json::from_slice::<Rollout>(&versioned.value) {
                Ok(rollout) => rollout,
                // A record of the controller before the state machine: migrated on load (and
                // written in the new form at its next change).
                Err(source) => crate::machine::legacy::migrate(&versioned.value)
                    .ok_or(ControllerError::Corrupt { key, source })?,
            };
            let app = rollout.app.clone();
            // A spec that no longer resolves (a strategy kind unregistered since) is held
            // with the reason instead of stopping the controller.
            let (rollout, strategy) = match self.resolve(&rollout.spec) {
                Ok(strategy) => (rollout, strategy),
                Err(err) => {
                    let mut held = rollout;
                    held.state = crate::machine::RolloutState::Paused {
                        why: crate::machine::PauseReason::Held {
                            reason: err.to_string(),
                            step_failed: false,
                        },
                    };
                    held.message = err.to_string();
                    (held, Arc::new(Unresolved) as Arc<dyn ReleaseStrategy>)
                }
            };
            seen.insert(app.clone());
            let entry = Entry {
                rollout,
                version: Some(versioned.version),
                persisted: digest(&versioned.value),
                strategy,
            };
            self.inner
                .rollouts
                .lock()
                .insert(app, Arc::new(tokio::sync::Mutex::new(entry)));
        }
        Ok(())
    }
}

/// The strategy of a loaded rollout whose spec no longer resolves (a kind no longer
/// registered): it plans nothing, so the held rollout changes nothing until a new spec is
/// applied (an abort still rolls back to the stable revision).
#[derive(Debug)]
struct Unresolved;

impl ReleaseStrategy for Unresolved {
    fn name(&self) -> &'static str {
        "unresolved"
    }
    fn validate(&self, _stateful: bool) -> Result<(), StrategyError> {
        Ok(())
    }
    fn steps(&self) -> usize {
        0
    }
    fn plan(&self, _view: &crate::plan::RolloutView) -> crate::plan::Plan {
        crate::plan::Plan::gate(crate::plan::Gate::Progressing(
            "the rollout's strategy does not resolve; apply a new spec".into(),
        ))
    }
    fn promote_step(&self, _step: usize) -> Option<usize> {
        None
    }
}

/// A 64-bit hash of stored bytes, to skip writes that change nothing.
fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}
