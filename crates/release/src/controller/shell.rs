//! One reconcile: observe, run the machine, execute its effects in order, persist.

use std::time::SystemTime;

use async_trait::async_trait;

use super::{ControllerError, Entry, EventReason, RolloutController};
use crate::approval::ApprovalKey;
use crate::machine::{Effect, Input, Observation, PauseReason, Rollout, RolloutState, Transition};
use crate::plan::{GroupView, IdentityView};
use crate::traffic::{Backend, TrafficError, TrafficSplit, Verification};
use rorqual_core::model::{AppKey, WorkloadKind};
use rorqual_runtime::{Action, Context, Reconciler};

/// How many observe–act rounds one reconcile runs before handing the key back to the queue.
const MAX_ROUNDS: usize = 8;

/// The runtime's view of the controller.
#[derive(Debug)]
pub(super) struct RolloutReconciler(pub(super) RolloutController);

#[async_trait]
impl Reconciler<AppKey> for RolloutReconciler {
    type Error = ControllerError;

    async fn reconcile(&self, key: AppKey, _ctx: Context) -> Result<Action, ControllerError> {
        self.0.reconcile(&key).await
    }

    fn is_retryable(&self, error: &ControllerError) -> bool {
        error.is_retryable()
    }
}

/// Why executing a transition's effects stopped.
enum Stop {
    /// The router refused or failed a split: hold the rollout with the reason (or retry soon
    /// when it is not ready yet).
    Router(TrafficError),
    /// The router failed to set the preview: retry.
    Preview(TrafficError),
    /// The engine or the approval gate failed: retry with backoff.
    Failed(ControllerError),
}

impl RolloutController {
    /// Reconciles `app`'s rollout once: what [`run`](Self::run) calls for every due rollout.
    /// Returns when to look again.
    pub async fn reconcile(&self, app: &AppKey) -> Result<Action, ControllerError> {
        let Ok(entry) = self.entry(app) else {
            return Ok(Action::forget());
        };
        let mut e = entry.lock().await;
        for _ in 0..MAX_ROUNDS {
            let now = self.inner.clock.now();
            let observed = self.observe(&e).await?;
            let approval = self.decision(&e.rollout).await?;
            let measured = self.take_measured(&e.rollout);
            let taken: Vec<_> = measured.clone();
            let mut next = e.rollout.clone();
            let strategy = e.strategy.clone();
            let mut input = Input::new(now, &observed);
            input.routes_traffic = self.inner.router.routes_traffic();
            input.approval = approval;
            input.measured = measured;
            let t = self.machine(strategy.as_ref()).step(&mut next, &input);
            let result = self.execute(&mut next, &t, &observed).await;
            if result.is_err() {
                // Nothing of this step is kept: its measurements go to the next one.
                let back = taken
                    .into_iter()
                    .filter_map(|(key, done)| {
                        let started = e.rollout.analyses.get(&key)?.started_at();
                        Some((key, started, done))
                    })
                    .collect();
                self.inner.background.put_back(app, back);
            }
            match result {
                Ok(()) => {}
                // Not ready yet (no endpoints, endpoints behind the engine) or not in effect
                // yet: send it again soon.
                Err(Stop::Router(
                    err @ (TrafficError::NoEndpoints { .. }
                    | TrafficError::EndpointsBehind { .. }
                    | TrafficError::VerificationFailed { .. }),
                )) => {
                    tracing::debug!(app = %app, error = %err, "traffic router not ready; retrying");
                    return Ok(Action::requeue(self.inner.progress_check));
                }
                // A split that failed mid-release leaves traffic where it was: hold for a
                // person. A rollback (an abort, a fast rollback, a Healthy rollout) is never
                // held: it is retried with backoff.
                Err(Stop::Router(err)) => {
                    let rolling_back = e.rollout.state.is_aborted()
                        || e.rollout.state == RolloutState::Healthy
                        || e.rollout.stable.is_none()
                        || e.rollout.stable.as_ref() == Some(&e.rollout.target);
                    if rolling_back {
                        return Err(ControllerError::Router {
                            app: app.clone(),
                            router: self.inner.router.name().to_owned(),
                            source: Box::new(err),
                        });
                    }
                    self.hold(&mut e, &err).await?;
                    return Ok(Action::await_change());
                }
                // The preview failed (it carries no live traffic): retry with backoff, showing
                // why.
                Err(Stop::Preview(err)) => {
                    let mut shown = e.rollout.clone();
                    shown.message = format!(
                        "retrying: traffic router {}: {err}",
                        self.inner.router.name()
                    );
                    self.persist(&mut e, shown).await?;
                    return Err(ControllerError::Router {
                        app: app.clone(),
                        router: self.inner.router.name().to_owned(),
                        source: Box::new(err),
                    });
                }
                Err(Stop::Failed(err)) => return Err(err),
            }
            let target = next.target.clone();
            let abandoned = std::mem::take(&mut next.abandoned);
            if let Err(err) = self.persist(&mut e, next).await {
                // Another writer changed the record: start again from the stored one.
                self.reload(&mut e).await;
                return Err(err);
            }
            self.inner.background.terminate(&self.inner, app, abandoned);
            // Events and notifications first; then the withdrawals, awaited so that a later
            // attempt's request is never removed by a slow withdrawal of an earlier one.
            let (withdrawals, rest): (Vec<Effect>, Vec<Effect>) = t
                .effects
                .iter()
                .cloned()
                .partition(|e| matches!(e, Effect::WithdrawApprovals(_)));
            self.announce(app, &target, &rest, Some(&e.rollout));
            self.withdraw_now(app, withdrawals).await;
            if !t.mutates_engine() {
                return Ok(action(t.wake, now));
            }
        }
        // Still changing after every round: look again shortly rather than spin.
        Ok(Action::requeue(self.inner.progress_check))
    }

    async fn observe(&self, e: &Entry) -> Result<Observation, ControllerError> {
        let app = &e.rollout.app;
        let eng = |source| ControllerError::Engine {
            app: app.clone(),
            source,
        };
        let groups = self.inner.engine.groups(app).await.map_err(eng)?;
        let groups = groups
            .iter()
            .map(|g| GroupView::new(g.revision.clone(), g.desired, g.current, g.available))
            .collect();
        let identities = if e.rollout.spec.app.kind == WorkloadKind::Stateful {
            self.inner
                .engine
                .instances(app)
                .await
                .map_err(eng)?
                .into_iter()
                .filter_map(|i| Some(IdentityView::new(i.ordinal?, i.revision, i.ready)))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Observation::new(groups, identities))
    }

    /// The decision for the approval the rollout waits for, if any.
    async fn decision(&self, r: &Rollout) -> Result<Option<bool>, ControllerError> {
        if !matches!(r.state, RolloutState::WaitingApproval { .. }) {
            return Ok(None);
        }
        let key = ApprovalKey::new(r.app.clone(), r.target.clone(), r.attempt, r.step);
        match self.inner.approvals.decision(&key).await {
            Ok(decision) => Ok(decision.map(|d| d.approved)),
            Err(err) => {
                tracing::warn!(app = %r.app, error = %err, "reading the approval decision failed");
                Ok(None)
            }
        }
    }

    /// Executes the engine, router and approval-request effects in order, stopping at the
    /// first failure.
    async fn execute(
        &self,
        next: &mut Rollout,
        t: &Transition,
        observed: &Observation,
    ) -> Result<(), Stop> {
        let inner = &self.inner;
        let app = next.app.clone();
        let eng = |source| {
            Stop::Failed(ControllerError::Engine {
                app: app.clone(),
                source,
            })
        };
        for effect in &t.effects {
            match effect {
                Effect::Scale { revision, replicas } => {
                    let exists = observed.groups.iter().any(|g| &g.revision == revision);
                    if exists {
                        inner
                            .engine
                            .scale_group(&app, revision, *replicas)
                            .await
                            .map_err(eng)?;
                    } else if let Some(spec) = next.spec_of(revision) {
                        inner
                            .engine
                            .apply_group(&spec, *replicas)
                            .await
                            .map_err(eng)?;
                    } else {
                        tracing::warn!(app = %app, revision = %revision, "no spec kept for this revision; not scaled");
                    }
                }
                Effect::Identities { replicas } => {
                    let spec = next
                        .stable_spec
                        .clone()
                        .map(|s| s.replicas(*replicas))
                        .unwrap_or_else(|| next.spec.app.clone());
                    inner
                        .engine
                        .apply_group(&spec, *replicas)
                        .await
                        .map_err(eng)?;
                }
                Effect::MoveIdentity { ordinal, revision } => {
                    if let Some(spec) = next.spec_of(revision) {
                        inner
                            .engine
                            .move_identity(&spec, *ordinal)
                            .await
                            .map_err(eng)?;
                    }
                }
                Effect::DeleteGroup(revision) => {
                    inner
                        .engine
                        .delete_group(&app, revision)
                        .await
                        .map_err(eng)?;
                }
                Effect::SetSplit(weights) => {
                    let split = TrafficSplit::new(
                        weights
                            .iter()
                            .map(|(rev, w)| Backend::new(rev.clone(), *w))
                            .collect(),
                    );
                    inner
                        .router
                        .set_split(&app, &split)
                        .await
                        .map_err(Stop::Router)?;
                    if let Verification::Failed(reason) = inner
                        .router
                        .verify(&app, &split)
                        .await
                        .map_err(Stop::Router)?
                    {
                        return Err(Stop::Router(TrafficError::VerificationFailed {
                            router: inner.router.name().to_owned(),
                            app: app.to_string(),
                            reason,
                        }));
                    }
                }
                Effect::SetPreview(preview) => {
                    if inner.no_preview.lock().contains(&app) {
                        next.preview = None;
                        continue;
                    }
                    let backend = preview.as_ref().map(|rev| Backend::new(rev.clone(), 100));
                    match inner.router.set_preview(&app, backend.as_ref()).await {
                        // The event goes out with the transition's others, once persisted.
                        Ok(()) => {}
                        Err(TrafficError::Unsupported { capability, .. }) => {
                            tracing::debug!(app = %app, router = inner.router.name(), "no preview: {capability}");
                            inner.no_preview.lock().insert(app.clone());
                            next.preview = None;
                        }
                        Err(err) => return Err(Stop::Preview(err)),
                    }
                }
                Effect::RequestApproval(req) => {
                    inner.approvals.request(req).await.map_err(|source| {
                        Stop::Failed(ControllerError::Approval {
                            app: app.clone(),
                            source: Box::new(source),
                        })
                    })?;
                }
                // After the new state is persisted (see `announce`).
                Effect::Measure { .. } | Effect::WithdrawApprovals(_) | Effect::Notify { .. } => {}
            }
        }
        Ok(())
    }

    /// Holds the rollout after a traffic router error, with the router's reason.
    async fn hold(&self, e: &mut Entry, err: &TrafficError) -> Result<(), ControllerError> {
        let reason = format!("traffic router {}: {err}", self.inner.router.name());
        let mut held = e.rollout.clone();
        held.state = RolloutState::Paused {
            why: PauseReason::Held {
                reason: reason.clone(),
                step_failed: false,
            },
        };
        held.message = reason.clone();
        let (app, target, step) = (held.app.clone(), held.target.clone(), held.step);
        self.persist(e, held).await?;
        self.announce(
            &app,
            &target,
            &[Effect::Notify {
                reason: EventReason::Paused,
                step: Some(step),
                message: reason,
            }],
            None,
        );
        Ok(())
    }
}

impl RolloutController {
    /// Reads `e`'s record again from the store (after a write conflict).
    async fn reload(&self, e: &mut Entry) {
        let key = Rollout::store_key(super::STATE_PREFIX, &e.rollout.app);
        if let Ok(Some(v)) = self.inner.store.get(&key).await
            && let Ok(rollout) = serde_json::from_slice::<Rollout>(&v.value)
        {
            e.rollout = rollout;
            e.version = Some(v.version);
            e.persisted = super::digest(&v.value);
        }
    }
}

/// The runtime action for a wake time.
fn action(wake: Option<SystemTime>, now: SystemTime) -> Action {
    match wake {
        Some(at) => Action::requeue(at.duration_since(now).unwrap_or_default()),
        None => Action::await_change(),
    }
}
