//! The `RolloutController`: executes strategy plans on an engine and a traffic router.
//!
//! One controller drives any number of rollouts. Each rollout is a record (spec, stable
//! revision, history, status, analysis runs) persisted as JSON in the engine's
//! [`StateStore`] with compare-and-swap at every transition; a keyed work queue holds at most
//! one entry per rollout, due at the time its next check is needed (a pause's end, an
//! analysis measurement, a resync while instances start). A reconcile observes the groups,
//! asks the strategy for a plan, applies replicas, identity moves, weights and the preview
//! route, then follows the plan's gate. No task per rollout: ten thousand rollouts are ten
//! thousand records.
//!
//! Drive it with [`RolloutController::run`] (a loop on its clock), or step it deterministically
//! in tests with [`RolloutController::process_due`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};
use tracing::Instrument;

use super::plan::{Gate, GroupView, IdentityView, Plan, RolloutView, abort_plan};
use super::queue::WorkQueue;
use super::record::{
    AnalysisStatus, FailurePolicy, HistoryEntry, RolloutPhase, RolloutRecord, RolloutSpec,
    RolloutStatus,
};
use super::strategy::{ReleaseStrategy, StrategyError};
use crate::analysis::{AnalysisPhase, AnalysisRun, MetricProvider, Providers};
use crate::approval::{ApprovalError, ApprovalGate, ApprovalKey, ApprovalRequest, Approvals};

/// The attempt number of every approval this controller asks for: it does not number the
/// attempts of a release yet and relies on withdrawing an ended attempt's approvals instead.
const APPROVAL_ATTEMPT: u64 = 0;
use crate::notify::{Notification, Notifier};
use crate::traffic::{Backend, ReplicaRatio, TrafficError, TrafficRouter, TrafficSplit};
use rorqual_core::clock::{Clock, SystemClock};
use rorqual_core::engine::{Engine, GroupStatus, StateStore};
use rorqual_core::error::Error as EngineError;
use rorqual_core::model::{AppKey, Revision, WorkloadKind};

/// Prefix of rollout records in the state store.
pub const STATE_PREFIX: &str = "rollouts/";

/// Errors of controller operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControllerError {
    /// The rollout's strategy is invalid; nothing started.
    #[error("rollout {app} rejected: {source}")]
    InvalidStrategy {
        /// The application.
        app: AppKey,
        /// What is wrong (names the step index).
        #[source]
        source: Box<StrategyError>,
    },
    /// No rollout for this application.
    #[error("no rollout for {0}")]
    NotFound(AppKey),
    /// A verb that does not apply in the rollout's state.
    #[error("cannot {verb} rollout {app}: {reason}")]
    BadVerb {
        /// The verb.
        verb: &'static str,
        /// The application.
        app: AppKey,
        /// Why.
        reason: String,
    },
    /// The engine or state store failed.
    #[error("engine operation for {app} failed: {source}")]
    Engine {
        /// The application.
        app: AppKey,
        /// The engine's error.
        #[source]
        source: EngineError,
    },
    /// The traffic router failed (emptying the preview route when the rollout completes);
    /// the controller retries.
    #[error("traffic router {router} failed for {app}: {source}")]
    Router {
        /// The application.
        app: AppKey,
        /// The router's name.
        router: String,
        /// The router's error.
        #[source]
        source: Box<TrafficError>,
    },
    /// A stored record could not be decoded.
    #[error("rollout record `{key}` is unreadable: {source}")]
    Corrupt {
        /// The store key.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

/// Something that happened to a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RolloutEvent {
    /// The application.
    pub app: AppKey,
    /// The target revision.
    pub revision: Revision,
    /// The step, when about a step.
    pub step: Option<usize>,
    /// What happened.
    pub reason: EventReason,
    /// A sentence.
    pub message: String,
    /// When (on the controller's clock).
    pub time: SystemTime,
}

/// What a [`RolloutEvent`] is about. Notifications carry the same word as their `outcome`
/// ([`as_str`](EventReason::as_str), kebab-case, also the serde form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum EventReason {
    /// A spec was applied ([`RolloutController::apply`]).
    Updated,
    /// An operator verb (pause, resume, abort, retry, promote, undo) was applied.
    Verb,
    /// The preview route changed (blue-green).
    Preview,
    /// A step completed.
    StepCompleted,
    /// A step waits for a manual approval.
    ApprovalRequested,
    /// The rollout paused (a pause step, an inconclusive analysis, a router error).
    Paused,
    /// The rollout was aborted (by an operator or a failed analysis).
    Aborted,
    /// After an abort, the stable revision serves everything again.
    RolledBack,
    /// The target revision is stable and fully available.
    Healthy,
}

impl EventReason {
    /// The reason's kebab-case word (`step-completed`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventReason::Updated => "updated",
            EventReason::Verb => "verb",
            EventReason::Preview => "preview",
            EventReason::StepCompleted => "step-completed",
            EventReason::ApprovalRequested => "approval-requested",
            EventReason::Paused => "paused",
            EventReason::Aborted => "aborted",
            EventReason::RolledBack => "rolled-back",
            EventReason::Healthy => "healthy",
        }
    }
}

impl std::fmt::Display for EventReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Builds a [`RolloutController`].
#[derive(Debug)]
#[must_use]
pub struct RolloutControllerBuilder {
    engine: Arc<dyn Engine>,
    router: Arc<dyn TrafficRouter>,
    approvals: Arc<dyn ApprovalGate>,
    notifier: Option<Arc<dyn Notifier>>,
    providers: Arc<dyn MetricProvider>,
    clock: Arc<dyn Clock>,
    resync: Duration,
}

impl RolloutControllerBuilder {
    /// The traffic router (default [`ReplicaRatio`]).
    pub fn router(mut self, router: Arc<dyn TrafficRouter>) -> Self {
        self.router = router;
        self
    }
    /// The approval gate (default an in-process [`Approvals`]).
    pub fn approvals(mut self, approvals: Arc<dyn ApprovalGate>) -> Self {
        self.approvals = approvals;
        self
    }
    /// A notifier for step, pause, abort and healthy notifications.
    pub fn notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = Some(notifier);
        self
    }
    /// The analysis metric providers (default: the providers compiled in, see
    /// `Providers::with_defaults`; `command` only with its feature).
    pub fn providers(mut self, providers: Arc<dyn MetricProvider>) -> Self {
        self.providers = providers;
        self
    }
    /// The clock (default the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
    /// How often a rollout waiting for instances is checked again (default 1 s).
    pub fn resync(mut self, resync: Duration) -> Self {
        self.resync = resync;
        self
    }

    /// Builds the controller and loads every rollout persisted in the engine's state store
    /// (a restarted controller resumes them where they stopped).
    pub async fn build(self) -> Result<RolloutController, ControllerError> {
        let (events, _) = broadcast::channel(1024);
        let store = self.engine.state_store();
        let controller = RolloutController {
            inner: Arc::new(Inner {
                engine: self.engine,
                router: self.router,
                approvals: self.approvals,
                notifier: self.notifier,
                providers: self.providers,
                clock: self.clock,
                store,
                resync: self.resync,
                rollouts: parking_lot::Mutex::new(HashMap::new()),
                queue: parking_lot::Mutex::new(WorkQueue::default()),
                wake: Notify::new(),
                events,
            }),
        };
        controller.load().await?;
        Ok(controller)
    }
}

/// The rollout controller. Cloning shares it.
#[derive(Debug, Clone)]
pub struct RolloutController {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Arc<dyn Engine>,
    router: Arc<dyn TrafficRouter>,
    approvals: Arc<dyn ApprovalGate>,
    notifier: Option<Arc<dyn Notifier>>,
    providers: Arc<dyn MetricProvider>,
    clock: Arc<dyn Clock>,
    store: Arc<dyn StateStore>,
    resync: Duration,
    rollouts: parking_lot::Mutex<HashMap<AppKey, Arc<tokio::sync::Mutex<Entry>>>>,
    queue: parking_lot::Mutex<WorkQueue>,
    wake: Notify,
    events: broadcast::Sender<RolloutEvent>,
}

/// One rollout in memory: its record, the store version, and the last split sent.
#[derive(Debug)]
struct Entry {
    record: RolloutRecord,
    version: Option<u64>,
    /// A hash of the JSON last written (the store holds the bytes; keeping only a hash here
    /// halves the controller's memory with many rollouts).
    persisted: u64,
    last_split: Option<Vec<(Revision, u32, Vec<SocketAddr>)>>,
    /// The preview last set on the router (`Some(None)`: emptied); `None` until the first
    /// reconcile after loading, which sets it whatever it is.
    last_preview: Option<Preview>,
    /// The strategy, shared so that a plan can borrow it while the record changes.
    strategy: Arc<super::strategy::Strategy>,
}

/// What a verb does to the approvals of the rollout's current target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decisions {
    /// Keep requests and decisions (the attempt goes on at the same gates).
    Keep,
    /// Withdraw them: the attempt ended, restarted or skipped its approval gates.
    Withdraw,
}

/// A preview route's content: the revision and its ready endpoints, or empty.
type Preview = Option<(Revision, Vec<SocketAddr>)>;

impl RolloutController {
    /// A builder over `engine`.
    pub fn builder(engine: Arc<dyn Engine>) -> RolloutControllerBuilder {
        RolloutControllerBuilder {
            engine,
            router: Arc::new(ReplicaRatio),
            approvals: Arc::new(Approvals::new()),
            notifier: None,
            providers: Arc::new(Providers::with_defaults()),
            clock: Arc::new(SystemClock),
            resync: Duration::from_secs(1),
        }
    }

    async fn load(&self) -> Result<(), ControllerError> {
        let app = AppKey::new("", "");
        let records = self
            .inner
            .store
            .list(STATE_PREFIX)
            .await
            .map_err(|source| ControllerError::Engine { app, source })?;
        let now = self.inner.clock.now();
        for (key, versioned) in records {
            let record: RolloutRecord = serde_json::from_slice(&versioned.value)
                .map_err(|source| ControllerError::Corrupt { key, source })?;
            let app = record.status.app.clone();
            let entry = Entry {
                strategy: Arc::new(record.spec.strategy.clone()),
                record,
                version: Some(versioned.version),
                persisted: digest(&versioned.value),
                last_split: None,
                last_preview: None,
            };
            self.inner
                .rollouts
                .lock()
                .insert(app.clone(), Arc::new(tokio::sync::Mutex::new(entry)));
            self.enqueue(&app, now);
        }
        Ok(())
    }

    fn enqueue(&self, app: &AppKey, at: SystemTime) {
        self.inner.queue.lock().push(app, at);
        self.inner.wake.notify_one();
    }

    fn entry(&self, app: &AppKey) -> Result<Arc<tokio::sync::Mutex<Entry>>, ControllerError> {
        self.inner
            .rollouts
            .lock()
            .get(app)
            .cloned()
            .ok_or_else(|| ControllerError::NotFound(app.clone()))
    }

    /// A stream of rollout events from now on.
    pub fn events(&self) -> broadcast::Receiver<RolloutEvent> {
        self.inner.events.subscribe()
    }

    /// The status of `app`'s rollout.
    pub async fn status(&self, app: &AppKey) -> Option<RolloutStatus> {
        let entry = self.entry(app).ok()?;
        let e = entry.lock().await;
        Some(e.record.status.clone())
    }

    /// The revisions kept for `undo`, oldest first.
    pub async fn history(&self, app: &AppKey) -> Vec<HistoryEntry> {
        match self.entry(app) {
            Ok(entry) => entry.lock().await.record.history.clone(),
            Err(_) => Vec::new(),
        }
    }

    /// How many rollouts the controller drives.
    pub fn len(&self) -> usize {
        self.inner.rollouts.lock().len()
    }

    /// How many rollouts are queued for a reconcile.
    pub fn queued(&self) -> usize {
        self.inner.queue.lock().len()
    }

    /// Whether it drives none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts or updates a rollout. The strategy is validated first (errors name the step).
    /// A new template restarts the steps at 0; edited steps restart at 0; a template equal to
    /// the stable revision rolls back at once, skipping every step (fast rollback); a replica
    /// change alone is spread over the groups.
    pub async fn apply(&self, spec: RolloutSpec) -> Result<RolloutStatus, ControllerError> {
        let app = spec.app.key();
        let stateful = spec.app.kind == WorkloadKind::Stateful;
        spec.strategy
            .validate(stateful)
            .map_err(|source| ControllerError::InvalidStrategy {
                app: app.clone(),
                source: Box::new(source),
            })?;
        let now = self.inner.clock.now();
        let target = spec.app.revision();
        let step_hash = spec.step_hash();
        let existing = self.inner.rollouts.lock().get(&app).cloned();
        let status = match existing {
            None => {
                let record = RolloutRecord {
                    status: RolloutStatus {
                        app: app.clone(),
                        phase: RolloutPhase::Progressing,
                        reason: "rollout created".into(),
                        target,
                        stable: None,
                        step: 0,
                        step_hash,
                        step_started: now,
                        scale_down_started: None,
                        last_progress: now,
                        progress_mark: 0,
                        aborted: false,
                        aborted_at: None,
                        abort_reason: None,
                        hold: None,
                        promote_full: false,
                        approval_requested: false,
                        planned_replicas: None,
                        weight: None,
                        preview: None,
                        analysis: None,
                        background_analysis: None,
                        withdrawals_owed: Vec::new(),
                    },
                    spec,
                    stable: None,
                    history: Vec::new(),
                    analyses: Default::default(),
                };
                let mut entry = Entry {
                    strategy: Arc::new(record.spec.strategy.clone()),
                    record,
                    version: None,
                    persisted: 0,
                    last_split: None,
                    last_preview: None,
                };
                self.persist(&mut entry).await?;
                // A new attempt: no decision from an earlier one counts.
                let target = entry.record.status.target.clone();
                if self.withdraw_or_owe(&mut entry.record, &target).await {
                    self.persist(&mut entry).await?;
                }
                let status = entry.record.status.clone();
                self.inner
                    .rollouts
                    .lock()
                    .insert(app.clone(), Arc::new(tokio::sync::Mutex::new(entry)));
                status
            }
            Some(entry) => {
                let mut e = entry.lock().await;
                e.strategy = Arc::new(spec.strategy.clone());
                // The new target's share as routed now (before its first split is applied).
                let routed = e.last_split.as_ref().map(|split| {
                    split
                        .iter()
                        .filter(|(rev, ..)| *rev == target)
                        .map(|(_, w, _)| *w)
                        .sum::<u32>()
                });
                let r = &mut e.record;
                let new_template = r.status.target != target;
                let new_steps = r.status.step_hash != step_hash;
                let previous_target = r.status.target.clone();
                r.spec = spec;
                if new_template {
                    // The weight shown so far was the previous target's.
                    r.status.weight = routed.or(match &r.status.stable {
                        // Back to stable: it has what the previous target did not.
                        Some(stable) if *stable == target => {
                            r.status.weight.map(|w| 100 - w.min(100))
                        }
                        Some(_) => Some(0),
                        None => None,
                    });
                }
                let new_attempt = new_template || new_steps;
                if new_attempt {
                    restart(&mut r.status, now, "rollout updated");
                    r.status.target = target.clone();
                    r.status.step_hash = step_hash;
                    terminate_all(r);
                    r.analyses.clear();
                }
                self.persist(&mut e).await?;
                if new_attempt {
                    // The superseded attempt's requests wait for nobody, and the new attempt
                    // (perhaps of a revision released before) asks again.
                    let mut owed = false;
                    if previous_target != target {
                        owed |= self.withdraw_or_owe(&mut e.record, &previous_target).await;
                    }
                    owed |= self.withdraw_or_owe(&mut e.record, &target).await;
                    if owed {
                        self.persist(&mut e).await?;
                    }
                }
                e.record.status.clone()
            }
        };
        self.emit(
            &status,
            None,
            EventReason::Updated,
            format!("rollout of {} applied", status.target),
        );
        self.enqueue(&app, now);
        Ok(status)
    }

    /// Promote: completes the current step (a pause, an approval, an analysis) and goes to the
    /// next; or resumes a held rollout.
    ///
    /// Promote acknowledges what stopped the rollout: a failed, errored or inconclusive
    /// analysis no longer gates it (the step it blocked is completed; a background analysis
    /// starts a new run, as Argo does after a resume), and a rejected approval step is passed.
    /// A rollout held for anything else (a traffic router error, the progress deadline) resumes
    /// at its current step.
    pub async fn promote(&self, app: &AppKey) -> Result<RolloutStatus, ControllerError> {
        self.verb(app, "promote", |r, now| {
            if r.status.aborted {
                return Err("the rollout is aborted; use retry".into());
            }
            let held = r.status.hold.take().is_some();
            let step_analysis_ended_badly = r
                .status
                .analysis
                .as_ref()
                .is_some_and(|a| ended_badly(a.phase));
            r.analyses.retain(|_, run| !ended_badly(run.phase()));
            if r.status
                .background_analysis
                .as_ref()
                .is_some_and(|a| ended_badly(a.phase))
            {
                r.status.background_analysis = None;
            }
            // Passing an approval gate: its request waits for nobody any more.
            let at_approval = r.status.approval_requested;
            let decisions = if at_approval {
                Decisions::Withdraw
            } else {
                Decisions::Keep
            };
            if !held || at_approval || step_analysis_ended_badly {
                r.status.step += 1;
                r.status.step_started = now;
                r.status.progress_mark = 0;
                r.status.approval_requested = false;
                r.status.analysis = None;
            }
            r.status.last_progress = now;
            Ok(decisions)
        })
        .await
    }

    /// Promote-full: skips every remaining pause, approval and analysis. The new revision is
    /// still brought to full availability before it takes all traffic (blue-green scales it up
    /// and waits before the switch; the old group keeps its replicas until then), and the
    /// scale-down delay still applies to the old group after the switch (Argo's semantics).
    pub async fn promote_full(&self, app: &AppKey) -> Result<RolloutStatus, ControllerError> {
        self.verb(app, "promote-full", |r, now| {
            if r.status.aborted {
                return Err("the rollout is aborted; use retry".into());
            }
            r.status.hold = None;
            r.status.promote_full = true;
            let step = r.spec.strategy.promote_full_step(r.status.step);
            if step != r.status.step {
                // Staying at the step (already in the final scale-down delay) keeps its clock.
                r.status.step = step;
                r.status.step_started = now;
            }
            r.status.approval_requested = false;
            r.status.last_progress = now;
            terminate_all(r);
            r.status.analysis = None;
            // Every approval gate is skipped: pending requests wait for nobody.
            Ok(Decisions::Withdraw)
        })
        .await
    }

    /// Abort: traffic and replicas back to the stable revision; the rollout stays Degraded
    /// until retried or updated.
    pub async fn abort(&self, app: &AppKey) -> Result<RolloutStatus, ControllerError> {
        self.verb(app, "abort", |r, now| {
            if r.status.stable.is_none() || r.status.stable.as_ref() == Some(&r.status.target) {
                return Err("nothing to abort: the target is the stable revision".into());
            }
            mark_aborted(r, now, "aborted by an operator".into());
            Ok(Decisions::Withdraw)
        })
        .await
    }

    /// Retry an aborted (or held) rollout from step 0.
    pub async fn retry(&self, app: &AppKey) -> Result<RolloutStatus, ControllerError> {
        self.verb(app, "retry", |r, now| {
            if !r.status.aborted && r.status.hold.is_none() {
                return Err("only an aborted or held rollout can be retried".into());
            }
            restart(&mut r.status, now, "retried");
            terminate_all(r);
            r.analyses.clear();
            // A new attempt: an earlier rejection (or approval) does not count.
            Ok(Decisions::Withdraw)
        })
        .await
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
            let r = &e.record;
            let found = match to {
                Some(rev) => r.spec_of(rev),
                None => r
                    .history
                    .iter()
                    .rev()
                    .find(|h| h.revision != r.status.target)
                    .map(|h| h.spec.clone().replicas(r.spec.app.replicas)),
            };
            let Some(app_spec) = found else {
                return Err(ControllerError::BadVerb {
                    verb: "undo",
                    app: app.clone(),
                    reason: match to {
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

    async fn verb(
        &self,
        app: &AppKey,
        verb: &'static str,
        f: impl FnOnce(&mut RolloutRecord, SystemTime) -> Result<Decisions, String>,
    ) -> Result<RolloutStatus, ControllerError> {
        let entry = self.entry(app)?;
        let now = self.inner.clock.now();
        let status = {
            let mut e = entry.lock().await;
            let decisions = f(&mut e.record, now).map_err(|reason| ControllerError::BadVerb {
                verb,
                app: app.clone(),
                reason,
            })?;
            self.persist(&mut e).await?;
            // Still under the entry's lock, so no reconcile asks (or reads a decision) between
            // the verb and the withdrawal.
            if decisions == Decisions::Withdraw {
                let target = e.record.status.target.clone();
                if self.withdraw_or_owe(&mut e.record, &target).await {
                    self.persist(&mut e).await?;
                }
            }
            e.record.status.clone()
        };
        self.emit(
            &status,
            Some(status.step),
            EventReason::Verb,
            format!("{verb} by an operator"),
        );
        self.enqueue(app, now);
        Ok(status)
    }

    /// Reconciles every rollout due now (repeatedly, until none is due). Returns how many
    /// reconciles ran. Tests call this after advancing a manual clock.
    pub async fn process_due(&self) -> usize {
        let mut count = 0;
        loop {
            let now = self.inner.clock.now();
            let Some(app) = self.inner.queue.lock().pop_due(now) else {
                return count;
            };
            count += 1;
            self.reconcile(&app).await;
        }
    }

    /// When the next rollout is due.
    pub fn next_due(&self) -> Option<SystemTime> {
        self.inner.queue.lock().next_due()
    }

    /// Runs the controller until the returned future is dropped: reconciles due rollouts, then
    /// sleeps on the clock until the next is due or a verb wakes it.
    pub async fn run(&self) {
        loop {
            self.process_due().await;
            let wait = self
                .next_due()
                .map(|t| t.duration_since(self.inner.clock.now()).unwrap_or_default())
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                () = self.inner.clock.sleep(wait) => {}
                () = self.inner.wake.notified() => {}
            }
        }
    }

    /// Reconciles one rollout now. Errors are recorded in the status and retried later.
    pub async fn reconcile(&self, app: &AppKey) {
        let Ok(entry) = self.entry(app) else {
            return;
        };
        let span = tracing::info_span!("reconcile", app = %app);
        let mut e = entry.lock().await;
        let result = self.reconcile_entry(&mut e).instrument(span).await;
        let now = self.inner.clock.now();
        match result {
            Ok(next) => {
                if let Err(err) = self.persist(&mut e).await {
                    tracing::warn!(app = %app, error = %err, "persisting rollout failed");
                    self.reload(&mut e).await;
                    self.enqueue(app, now + self.inner.resync);
                    return;
                }
                if let Some(at) = next {
                    self.enqueue(app, at.max(now));
                }
            }
            Err(err) => {
                tracing::warn!(app = %app, error = %err, "reconcile failed; retrying");
                e.record.status.reason = format!("retrying after error: {err}");
                // Best effort: the next reconcile persists again.
                let _ = self.persist(&mut e).await;
                self.enqueue(app, now + self.inner.resync);
            }
        }
    }

    async fn reload(&self, e: &mut Entry) {
        let key = RolloutRecord::key(&e.record.status.app);
        if let Ok(Some(v)) = self.inner.store.get(&key).await
            && let Ok(record) = serde_json::from_slice(&v.value)
        {
            e.record = record;
            e.version = Some(v.version);
            e.persisted = digest(&v.value);
        }
    }

    async fn persist(&self, e: &mut Entry) -> Result<(), ControllerError> {
        let app = e.record.status.app.clone();
        // Plain data: serialisation cannot fail.
        let bytes = serde_json::to_vec(&e.record).unwrap_or_default();
        let hash = digest(&bytes);
        if hash == e.persisted {
            return Ok(());
        }
        let key = RolloutRecord::key(&app);
        let version = self
            .inner
            .store
            .compare_and_swap(&key, e.version, Some(bytes))
            .await
            .map_err(|source| ControllerError::Engine { app, source })?;
        e.version = Some(version);
        e.persisted = hash;
        Ok(())
    }

    fn emit(
        &self,
        status: &RolloutStatus,
        step: Option<usize>,
        reason: EventReason,
        message: String,
    ) {
        tracing::info!(app = %status.app, revision = %status.target, step, reason = reason.as_str(), "{message}");
        if self.inner.events.receiver_count() > 0 {
            let _ = self.inner.events.send(RolloutEvent {
                app: status.app.clone(),
                revision: status.target.clone(),
                step,
                reason,
                message,
                time: self.inner.clock.now(),
            });
        }
    }

    async fn notify(
        &self,
        status: &RolloutStatus,
        step: Option<usize>,
        outcome: EventReason,
        msg: &str,
    ) {
        self.emit(status, step, outcome, msg.to_owned());
        if let Some(n) = &self.inner.notifier {
            let mut note = Notification::new(
                status.app.clone(),
                status.target.clone(),
                outcome.as_str(),
                msg,
                self.inner.clock.now(),
            );
            note.step = step;
            if let Err(err) = n.notify(&note).await {
                tracing::warn!(app = %status.app, error = %err, "notification failed");
            }
        }
    }

    /// One reconcile: returns when to look again (`None`: only on a verb).
    async fn reconcile_entry(&self, e: &mut Entry) -> Result<Option<SystemTime>, ControllerError> {
        let inner = &self.inner;
        let app = e.record.status.app.clone();
        let eng = |source| ControllerError::Engine {
            app: app.clone(),
            source,
        };
        // A held rollout keeps its step, weights and gate, but still follows replica changes
        // (Kubernetes: a paused rollout still scales): its groups are re-planned below.
        let held = e.record.status.hold.clone();
        if let Some(hold) = &held {
            let r = &mut e.record;
            r.status.phase = RolloutPhase::Paused;
            r.status.reason = hold.clone();
            if r.status.planned_replicas != Some(r.spec.app.replicas) {
                // A scaling event: follow it until the groups settle (bounded by the progress
                // deadline, so a crash-looping group is not polled for ever).
                r.status.last_progress = inner.clock.now();
            }
        }
        let stateful = e.record.spec.app.kind == WorkloadKind::Stateful;
        // Each step may take an iteration to act and one to observe the result.
        let max_iterations = 2 * e.record.spec.strategy.steps() + 16;
        // Withdrawals an earlier attempt owes, before any decision is read.
        self.settle_withdrawals(e).await?;
        for _ in 0..max_iterations {
            let now = inner.clock.now();
            let groups = inner.engine.groups(&app).await.map_err(eng)?;
            let identities = if stateful {
                inner
                    .engine
                    .instances(&app)
                    .await
                    .map_err(eng)?
                    .into_iter()
                    .filter_map(|i| Some(IdentityView::new(i.ordinal?, i.revision, i.ready)))
                    .collect()
            } else {
                Vec::new()
            };
            let strategy = e.strategy.clone();
            let r = &mut e.record;
            let replicas = r.spec.app.replicas;
            let target = r.status.target.clone();
            let stable = r.status.stable.clone().unwrap_or_else(|| target.clone());
            let steady = stable == target;
            let mut view = RolloutView::new(stable.clone(), target.clone(), replicas);
            view.groups = groups.iter().map(group_view).collect();
            view.stateful = stateful;
            view.identities = identities;
            view.step = r.status.step;
            view.step_elapsed = now
                .duration_since(r.status.step_started)
                .unwrap_or_default();
            view.scale_down_elapsed = r
                .status
                .scale_down_started
                .filter(|(step, _)| *step == r.status.step)
                .map(|(_, since)| now.duration_since(since).unwrap_or_default());
            view.routes_traffic = inner.router.routes_traffic();
            view.previous_replicas = r.status.planned_replicas;
            view.analysis = r
                .analyses
                .iter()
                .map(|(k, run)| (k.clone(), run.phase()))
                .collect();
            // A decision for the target from an earlier attempt may still stand.
            let withdrawal_owed = r.status.withdrawals_owed.contains(&target);
            if r.status.approval_requested && !steady && !r.status.aborted && !withdrawal_owed {
                view.approval = inner
                    .approvals
                    .decision(&ApprovalKey::new(
                        app.clone(),
                        target.clone(),
                        APPROVAL_ATTEMPT,
                        r.status.step,
                    ))
                    .await
                    .ok()
                    .flatten()
                    .map(|d| d.approved);
            }
            let max_unavailable = replicas.max(1);
            let plan: Plan<'_> = if steady {
                let mut v = view.clone();
                v.step_elapsed = Duration::MAX;
                abort_plan(&v, Duration::ZERO, max_unavailable)
            } else if r.status.aborted {
                let mut v = view.clone();
                v.step_elapsed = r
                    .status
                    .aborted_at
                    .and_then(|t| now.duration_since(t).ok())
                    .unwrap_or_default();
                abort_plan(
                    &v,
                    Duration::from_secs(r.spec.abort_scale_down_delay_seconds),
                    1,
                )
            } else {
                strategy.plan(&view)
            };
            // Apply replicas.
            let mut mutated = false;
            if stateful && view.identities.len() as u32 != replicas {
                let base = if r.stable.is_some() {
                    r.spec_of(&stable)
                } else {
                    Some(r.spec.app.clone())
                };
                if let Some(spec) = base {
                    inner
                        .engine
                        .apply_group(&spec, replicas)
                        .await
                        .map_err(eng)?;
                    mutated = true;
                }
            }
            for (rev, n) in &plan.replicas {
                if stateful {
                    break;
                }
                match groups.iter().find(|g| &g.revision == rev) {
                    Some(g) if g.desired == *n => {}
                    Some(_) => {
                        inner.engine.scale_group(&app, rev, *n).await.map_err(eng)?;
                        mutated = true;
                    }
                    None if *n == 0 => {}
                    None => {
                        if let Some(spec) = r.spec_of(rev) {
                            inner.engine.apply_group(&spec, *n).await.map_err(eng)?;
                            mutated = true;
                        }
                    }
                }
            }
            for (ordinal, rev) in &plan.moves {
                if mutated || held.is_some() {
                    break;
                }
                if let Some(spec) = r.spec_of(rev) {
                    inner
                        .engine
                        .move_identity(&spec, *ordinal)
                        .await
                        .map_err(eng)?;
                }
            }
            mutated |= held.is_none() && !plan.moves.is_empty();
            r.status.planned_replicas = Some(replicas);
            if held.is_some() {
                // Replicas only: no weights, preview, analyses or gates while held. Look again
                // while the planned groups are still changing or starting.
                let unsettled = plan.replicas.iter().any(|(rev, n)| {
                    groups
                        .iter()
                        .find(|g| &g.revision == rev)
                        .map_or(*n > 0, |g| g.current != *n || g.available < *n)
                });
                let deadline = Duration::from_secs(r.spec.progress_deadline_seconds);
                let recent = now
                    .duration_since(r.status.last_progress)
                    .is_ok_and(|d| d <= deadline);
                return Ok(((mutated || unsettled) && recent).then(|| now + inner.resync));
            }
            // Apply weights, then the preview route (Argo's order: the active switch happens
            // in the split; the preview follows the target from its first ready instance until
            // the rollout is done or aborted).
            let routes = inner.router.routes_traffic();
            let preview_wanted = plan.preview && !steady && !r.status.aborted;
            let instances = if (routes && plan.target_weight.is_some()) || preview_wanted {
                inner.engine.instances(&app).await.map_err(eng)?
            } else {
                Vec::new()
            };
            let ready_endpoints = |rev: &Revision| -> Vec<SocketAddr> {
                instances
                    .iter()
                    .filter(|i| &i.revision == rev && i.ready)
                    .filter_map(|i| Some(SocketAddr::new(i.address?, i.primary_port()?)))
                    .collect()
            };
            if let Some(w) = plan.target_weight {
                let w = if steady { 100 } else { w };
                let split = if steady {
                    vec![(target.clone(), 100)]
                } else {
                    vec![
                        (stable.clone(), 100 - w.min(100)),
                        (target.clone(), w.min(100)),
                    ]
                };
                let mut desired: Vec<_> = split
                    .into_iter()
                    .map(|(rev, weight)| {
                        let endpoints = if routes {
                            ready_endpoints(&rev)
                        } else {
                            Vec::new()
                        };
                        (rev, weight, endpoints)
                    })
                    .collect();
                // A router that sends traffic itself needs somewhere to send it: a weighted
                // revision without ready endpoints waits (the next reconcile retries), and
                // unweighted revisions without endpoints are left out.
                if routes {
                    desired.retain(|(_, w, ep)| *w > 0 || !ep.is_empty());
                }
                let routable =
                    !routes || desired.iter().all(|(_, w, ep)| *w == 0 || !ep.is_empty());
                if routable && e.last_split.as_ref() != Some(&desired) {
                    let split = TrafficSplit::new(
                        desired
                            .iter()
                            .map(|(r, w, ep)| Backend::new(r.clone(), *w, ep.clone()))
                            .collect(),
                    );
                    if let Err(err) = inner.router.set_split(&app, &split).await {
                        self.hold_for_router(e, &err).await;
                        return Ok(None);
                    }
                    e.last_split = Some(desired);
                    e.record.status.weight = Some(w);
                }
            }
            // The preview serves the target once it has a ready instance; until then, and
            // outside blue-green, it is empty.
            let preview: Preview = if preview_wanted {
                let endpoints = ready_endpoints(&target);
                (!endpoints.is_empty()).then(|| (target.clone(), endpoints))
            } else {
                None
            };
            drop(instances);
            if let Err(err) = self.route_preview(e, preview).await {
                self.hold_for_router(e, &err).await;
                return Ok(None);
            }
            let r = &mut e.record;
            if mutated {
                // Observe what the engine made of the changes before judging the gate.
                continue;
            }
            // Run analyses.
            let mut next: Option<SystemTime> = None;
            let mut soonest = |t: SystemTime| {
                next = Some(next.map_or(t, |n: SystemTime| n.min(t)));
            };
            let mut analysis_changed = false;
            let mut start_error = None;
            for req in &plan.analyses {
                if r.status.promote_full {
                    break;
                }
                if !r.analyses.contains_key(&req.key) {
                    match AnalysisRun::new(&req.analysis.spec, req.analysis.args.clone(), now) {
                        Ok(run) => {
                            r.analyses.insert(req.key.clone(), run);
                        }
                        Err(err) => {
                            let reason = format!("analysis {} cannot start: {err}", req.key);
                            let shown = Some(AnalysisStatus::error(&req.key, reason.clone()));
                            if req.background {
                                r.status.background_analysis = shown;
                            } else {
                                r.status.analysis = shown;
                            }
                            start_error = Some(reason);
                            break;
                        }
                    }
                }
                if let Some(run) = r.analyses.get_mut(&req.key) {
                    if !run.phase().is_terminal() && run.next_due().is_some_and(|d| d <= now) {
                        let before = run.phase();
                        run.tick(inner.providers.as_ref(), now).await;
                        analysis_changed |= before != run.phase();
                    }
                    if let Some(d) = run.next_due()
                        && !run.phase().is_terminal()
                    {
                        soonest(d);
                    }
                    let shown = Some(AnalysisStatus::from_run(&req.key, run));
                    if req.background {
                        r.status.background_analysis = shown;
                    } else {
                        r.status.analysis = shown;
                    }
                }
            }
            if let Some(reason) = start_error {
                self.fail(e, now, reason).await;
                return Ok(Some(now));
            }
            if analysis_changed {
                continue;
            }
            // Progress bookkeeping: the high-water mark of target availability in this step.
            let target_available = groups
                .iter()
                .find(|g| g.revision == target)
                .map_or(0, |g| g.available);
            let available_mark = if stateful {
                view.identities
                    .iter()
                    .filter(|i| i.ready && i.revision == target)
                    .count() as u32
            } else {
                target_available
            };
            let r = &mut e.record;
            if available_mark > r.status.progress_mark {
                r.status.progress_mark = available_mark;
                r.status.last_progress = now;
            }
            let mut gate = plan.gate.clone();
            if r.status.promote_full
                && matches!(
                    gate,
                    Gate::Analysis(_) | Gate::Approval(_) | Gate::Pause(..)
                )
            {
                gate = Gate::StepComplete;
            }
            let step = r.status.step;
            match gate {
                Gate::Progressing(reason) => {
                    // The new revision lost availability (and full traffic) during the
                    // scale-down delay: the delay starts again once it is back.
                    if view.scale_down_elapsed.is_some() {
                        r.status.scale_down_started = None;
                        self.persist(e).await?;
                    }
                    let r = &mut e.record;
                    r.status.phase = if r.status.aborted {
                        RolloutPhase::Degraded
                    } else {
                        RolloutPhase::Progressing
                    };
                    if !r.status.aborted {
                        r.status.reason = reason;
                    }
                    let deadline = Duration::from_secs(r.spec.progress_deadline_seconds);
                    let stalled = now
                        .duration_since(r.status.last_progress)
                        .unwrap_or_default();
                    if !r.status.aborted && !steady && stalled > deadline {
                        let reason = format!(
                            "ProgressDeadlineExceeded: no progress for {}s at step {step} ({})",
                            stalled.as_secs(),
                            r.status.reason
                        );
                        self.fail(e, now, reason).await;
                        if e.record.status.hold.is_some() {
                            return Ok(None);
                        }
                        continue;
                    }
                    soonest(now + inner.resync);
                    return Ok(next);
                }
                Gate::StepComplete => {
                    r.status.step += 1;
                    r.status.step_started = now;
                    r.status.last_progress = now;
                    r.status.progress_mark = 0;
                    r.status.approval_requested = false;
                    r.status.analysis = None;
                    let status = r.status.clone();
                    self.persist(e).await?;
                    self.notify(
                        &status,
                        Some(step),
                        EventReason::StepCompleted,
                        &format!("step {step} completed"),
                    )
                    .await;
                    continue;
                }
                Gate::Pause(duration, reason) => {
                    self.pause(r, now, reason).await;
                    if let Some(d) = duration {
                        soonest(now + d);
                    }
                    return Ok(next);
                }
                // A timed pause that promote-full keeps (not converted above).
                Gate::ScaleDownDelay(delay, reason) => {
                    if view.scale_down_elapsed.is_none() {
                        r.status.scale_down_started = Some((r.status.step, now));
                        self.persist(e).await?;
                    }
                    let r = &mut e.record;
                    self.pause(r, now, reason).await;
                    soonest(now + delay);
                    return Ok(next);
                }
                Gate::Approval(message) if withdrawal_owed => {
                    // Neither ask nor read a decision until the earlier attempt's decisions
                    // are withdrawn (retried on every reconcile).
                    r.status.phase = RolloutPhase::Paused;
                    r.status.last_progress = now;
                    r.status.reason = format!(
                        "waiting for approval: {message} (withdrawing an earlier attempt's \
                         approval decisions first; the approval gate failed, retrying)"
                    );
                    soonest(now + inner.resync);
                    return Ok(next);
                }
                Gate::Approval(message) => {
                    r.status.phase = RolloutPhase::Paused;
                    r.status.last_progress = now;
                    r.status.reason = format!("waiting for approval: {message}");
                    if !r.status.approval_requested {
                        let req = ApprovalRequest::new(
                            ApprovalKey::new(app.clone(), target.clone(), APPROVAL_ATTEMPT, step),
                            message.clone(),
                        );
                        if let Err(err) = inner.approvals.request(&req).await {
                            tracing::warn!(app = %app, error = %err, "approval request failed");
                            soonest(now + inner.resync);
                            return Ok(next);
                        }
                        r.status.approval_requested = true;
                        let status = r.status.clone();
                        self.persist(e).await?;
                        self.notify(
                            &status,
                            Some(step),
                            EventReason::ApprovalRequested,
                            &message,
                        )
                        .await;
                    }
                    soonest(now + inner.resync);
                    return Ok(next);
                }
                Gate::Analysis(key) => {
                    r.status.phase = RolloutPhase::Progressing;
                    r.status.last_progress = now;
                    r.status.reason = format!("running analysis {key}");
                    return Ok(next.or(Some(now + inner.resync)));
                }
                Gate::Abort(reason) => {
                    self.fail(e, now, reason).await;
                    if e.record.status.hold.is_some() {
                        return Ok(None);
                    }
                    continue;
                }
                Gate::Done => {
                    self.complete(e, &groups, now).await?;
                    return Ok(None);
                }
            }
        }
        Ok(Some(inner.clock.now() + inner.resync))
    }

    /// Waits behind a pause gate: Paused with `reason` (notified when it changes), or, while
    /// aborted (the abort's scale-down delay), still Degraded with the reason unchanged.
    async fn pause(&self, r: &mut RolloutRecord, now: SystemTime, reason: String) {
        r.status.last_progress = now;
        if r.status.aborted {
            return;
        }
        r.status.phase = RolloutPhase::Paused;
        if r.status.reason != reason {
            r.status.reason = reason.clone();
            let status = r.status.clone();
            self.notify(&status, Some(status.step), EventReason::Paused, &reason)
                .await;
        }
    }

    /// Holds the rollout after a traffic router error, with the router's reason.
    async fn hold_for_router(&self, e: &mut Entry, err: &TrafficError) {
        let reason = format!(
            "traffic router {}: {}",
            self.inner.router.name(),
            err.reason()
        );
        let r = &mut e.record;
        r.status.hold = Some(reason.clone());
        r.status.phase = RolloutPhase::Paused;
        r.status.reason = reason.clone();
        let status = r.status.clone();
        self.notify(&status, Some(status.step), EventReason::Paused, &reason)
            .await;
    }

    /// Sets the preview route to `preview` unless it already is. A router without a preview
    /// service ([`TrafficError::Unsupported`]) counts as done, with no preview in the status.
    async fn route_preview(&self, e: &mut Entry, preview: Preview) -> Result<(), TrafficError> {
        if e.last_preview.as_ref() == Some(&preview) {
            return Ok(());
        }
        let router = &self.inner.router;
        let app = e.record.status.app.clone();
        let backend = preview
            .as_ref()
            .map(|(rev, endpoints)| Backend::preview(rev.clone(), endpoints.clone()));
        let shown = match router.set_preview(&app, backend.as_ref()).await {
            Ok(()) => preview.as_ref().map(|(rev, _)| rev.clone()),
            Err(TrafficError::Unsupported { capability, .. }) => {
                tracing::debug!(app = %app, router = router.name(), "no preview: {capability}");
                None
            }
            Err(err) => return Err(err),
        };
        let status = &mut e.record.status;
        if status.preview != shown {
            status.preview = shown;
            let message = match &preview {
                Some((rev, endpoints)) if status.preview.is_some() => format!(
                    "preview route serves {rev} ({} ready instance{})",
                    endpoints.len(),
                    if endpoints.len() == 1 { "" } else { "s" }
                ),
                _ => "preview route emptied".to_owned(),
            };
            let status = status.clone();
            self.emit(&status, Some(status.step), EventReason::Preview, message);
        }
        e.last_preview = Some(preview);
        Ok(())
    }

    /// Applies the failure policy.
    async fn fail(&self, e: &mut Entry, now: SystemTime, reason: String) {
        let r = &mut e.record;
        let status = match r.spec.failure_policy {
            FailurePolicy::RollBack if r.status.stable.is_some() => {
                mark_aborted(r, now, reason.clone());
                r.status.clone()
            }
            _ => {
                r.status.hold = Some(reason.clone());
                r.status.phase = RolloutPhase::Paused;
                r.status.reason = reason.clone();
                r.status.clone()
            }
        };
        let outcome = if status.aborted {
            EventReason::Aborted
        } else {
            EventReason::Paused
        };
        if status.aborted {
            // Recorded in the status, which the reconcile persists next.
            self.withdraw_or_owe(&mut e.record, &status.target).await;
        }
        self.notify(&status, Some(status.step), outcome, &reason)
            .await;
    }

    /// Withdraws the approval requests and decisions of `app`'s release of `revision` (the
    /// attempt they belonged to is over). A gate that cannot withdraw is logged: a later
    /// attempt of the same revision may then see an earlier decision.
    ///
    /// Returns false when the gate failed; [`Self::withdraw_or_owe`] then records the
    /// withdrawal as owed.
    async fn withdraw_approvals(&self, app: &AppKey, revision: &Revision) -> bool {
        match self.inner.approvals.withdraw(app, revision).await {
            Ok(()) => true,
            Err(ApprovalError::Unsupported(what)) => {
                tracing::debug!(
                    app = %app, revision = %revision,
                    "approval gate does not support {what}; earlier decisions may be reused"
                );
                true
            }
            Err(err) => {
                tracing::warn!(
                    app = %app, revision = %revision, error = %err,
                    "withdrawing approval requests failed; retrying before the next approval"
                );
                false
            }
        }
    }

    /// Withdraws `revision`'s approvals for the rollout in `r`; when the gate fails, records
    /// the withdrawal in [`RolloutStatus::withdrawals_owed`] (persist `r` afterwards). Returns
    /// whether it was recorded as owed.
    async fn withdraw_or_owe(&self, r: &mut RolloutRecord, revision: &Revision) -> bool {
        let app = r.status.app.clone();
        if self.withdraw_approvals(&app, revision).await {
            r.status.withdrawals_owed.retain(|owed| owed != revision);
            false
        } else {
            if !r.status.withdrawals_owed.contains(revision) {
                r.status.withdrawals_owed.push(revision.clone());
            }
            true
        }
    }

    /// Retries the owed withdrawals of the rollout in `e`; persists when the list changed.
    async fn settle_withdrawals(&self, e: &mut Entry) -> Result<(), ControllerError> {
        if e.record.status.withdrawals_owed.is_empty() {
            return Ok(());
        }
        let app = e.record.status.app.clone();
        let owed = std::mem::take(&mut e.record.status.withdrawals_owed);
        let mut still = Vec::new();
        for revision in &owed {
            if !self.withdraw_approvals(&app, revision).await {
                still.push(revision.clone());
            }
        }
        let changed = still != owed;
        e.record.status.withdrawals_owed = still;
        if changed {
            self.persist(e).await?;
        }
        Ok(())
    }

    /// The plan reached Done: the target becomes stable (or, when aborted, the abort is
    /// complete), other groups are deleted and the history trimmed.
    async fn complete(
        &self,
        e: &mut Entry,
        groups: &[GroupStatus],
        now: SystemTime,
    ) -> Result<(), ControllerError> {
        let inner = &self.inner;
        // Done (or the abort finished): the preview route serves nothing any more.
        self.route_preview(e, None)
            .await
            .map_err(|source| ControllerError::Router {
                app: e.record.status.app.clone(),
                router: inner.router.name().to_owned(),
                source: Box::new(source),
            })?;
        let r = &mut e.record;
        let app = r.status.app.clone();
        let keep = if r.status.aborted {
            r.status
                .stable
                .clone()
                .unwrap_or_else(|| r.status.target.clone())
        } else {
            r.status.target.clone()
        };
        for g in groups {
            if g.revision != keep && r.spec.app.kind != WorkloadKind::Stateful {
                inner
                    .engine
                    .delete_group(&app, &g.revision)
                    .await
                    .map_err(|source| ControllerError::Engine {
                        app: app.clone(),
                        source,
                    })?;
            }
        }
        terminate_all(r);
        let already_healthy = r.status.phase == RolloutPhase::Healthy
            || (r.status.aborted
                && r.status.phase == RolloutPhase::Degraded
                && r.status.reason.starts_with("aborted: "));
        if r.status.aborted {
            r.status.phase = RolloutPhase::Degraded;
            let why = r.status.abort_reason.clone().unwrap_or_default();
            r.status.reason = format!("aborted: {why}");
        } else {
            if r.status.stable.as_ref() != Some(&r.status.target) {
                if let Some(old) = r.stable.take() {
                    let revision = old.revision();
                    r.history.retain(|h| h.revision != revision);
                    r.history.push(HistoryEntry {
                        revision,
                        spec: old,
                        promoted_at: now,
                    });
                }
                let limit = r.spec.revision_history_limit;
                let excess = r.history.len().saturating_sub(limit);
                r.history.drain(..excess);
                r.history.retain(|h| h.revision != r.status.target);
                r.stable = Some(r.spec.app.clone());
                r.status.stable = Some(r.status.target.clone());
            }
            r.status.phase = RolloutPhase::Healthy;
            r.status.reason = "target revision is stable and fully available".into();
            r.status.promote_full = false;
            r.status.analysis = None;
            r.status.background_analysis = None;
        }
        r.analyses.clear();
        let target = r.status.target.clone();
        if !already_healthy {
            // The attempt is over: its decisions do not carry over to a later release.
            self.withdraw_or_owe(r, &target).await;
            let status = r.status.clone();
            self.persist(e).await?;
            let outcome = if status.aborted {
                EventReason::RolledBack
            } else {
                EventReason::Healthy
            };
            let msg = status.reason.clone();
            self.notify(&status, None, outcome, &msg).await;
        }
        Ok(())
    }
}

/// A 64-bit hash of stored bytes, to skip writes that change nothing.
fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn group_view(g: &GroupStatus) -> GroupView {
    GroupView::new(g.revision.clone(), g.desired, g.current, g.available)
}

/// Ends every analysis run and shows their final phases in the status.
fn terminate_all(r: &mut RolloutRecord) {
    for run in r.analyses.values_mut() {
        run.terminate();
    }
    for shown in [&mut r.status.analysis, &mut r.status.background_analysis]
        .into_iter()
        .flatten()
    {
        if let Some(run) = r.analyses.get(&shown.key) {
            *shown = AnalysisStatus::from_run(&shown.key, run);
        }
    }
}

/// Whether an analysis ended without success (failed, errored or inconclusive): what a promote
/// acknowledges.
fn ended_badly(phase: AnalysisPhase) -> bool {
    phase.is_terminal() && phase != AnalysisPhase::Successful
}

fn mark_aborted(r: &mut RolloutRecord, now: SystemTime, reason: String) {
    r.status.aborted = true;
    r.status.aborted_at = Some(now);
    r.status.abort_reason = Some(reason.clone());
    r.status.hold = None;
    r.status.phase = RolloutPhase::Degraded;
    r.status.reason = format!("rolling back: {reason}");
    terminate_all(r);
}

fn restart(status: &mut RolloutStatus, now: SystemTime, reason: &str) {
    status.step = 0;
    status.step_started = now;
    status.scale_down_started = None;
    status.last_progress = now;
    status.progress_mark = 0;
    status.aborted = false;
    status.aborted_at = None;
    status.abort_reason = None;
    status.hold = None;
    status.promote_full = false;
    status.approval_requested = false;
    status.analysis = None;
    status.background_analysis = None;
    status.phase = RolloutPhase::Progressing;
    status.reason = reason.to_owned();
}
