//! The rollout state machine: a pure function from a rollout's persisted state, what the
//! controller observed, the strategy's plan and what woke it, to the next state and the
//! [`Effect`]s that get there. No I/O: the controller's shell observes, executes the effects in
//! order and persists the new state only once they all succeeded, so a controller killed at
//! any point resumes from the last persisted state and re-plans the same step (effects are
//! idempotent: scale to a count, set a split, request an approval keyed by attempt and step).
//!
//! One [`RolloutMachine::step`]:
//!
//! 1. records the measurements that came back;
//! 2. by state: a Healthy rollout (or a first release, or a fast rollback to the stable
//!    revision) brings the target to full and removes the others once their scale-down delay is
//!    over; an aborting one moves traffic back, brings the stable revision to full and removes
//!    the aborted revision (at once without a router, after `abortScaleDownDelaySeconds` with a
//!    router or a preview, never when that is 0); a paused-by-operator or held one does
//!    nothing; otherwise the strategy plans the current step;
//! 3. turns the plan into effects in a safe order: scale-ups, then the traffic split, then
//!    scale-downs (never of a revision that still receives traffic), identity moves, preview;
//! 4. once nothing needs changing, follows the plan's gate: a completed step moves on (and the
//!    machine plans again with the same observation), a pause or approval waits, a failure
//!    applies the failure policy, the scale-down delay or Done makes the target stable at once
//!    (phase Healthy) and keeps the old revision only for its delay.
//!
//! Verbs ([`Verb`]) are applied by [`RolloutMachine::verb`], also pure.

mod effect;
pub(crate) mod legacy;
mod state;
mod status;
#[cfg(test)]
mod tests;
mod verb;

use std::time::{Duration, SystemTime};

pub use effect::Effect;
pub use state::{PauseReason, Retiring, Rollout, RolloutState, Routed};
pub use status::RolloutStatus;
pub use verb::{Verb, VerbRefusal};

use crate::analysis::{AnalysisRun, CompletedMeasurement};
use crate::approval::{ApprovalContext, ApprovalKey, ApprovalRequest};
use crate::controller::EventReason;
use crate::plan::{Gate, GroupView, IdentityView, Plan, RolloutView, stateful_moves};
use crate::record::{AnalysisStatus, FailurePolicy, HistoryEntry};
use crate::strategy::ReleaseStrategy;
use rorqual_core::model::{Revision, WorkloadKind};

/// How many gates one step may pass with one observation (each completed step plans again).
const MAX_TRANSITIONS: usize = 64;

/// What the controller observed of the application.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Observation {
    /// Every revision group.
    pub groups: Vec<GroupView>,
    /// Stateful workloads: every identity (empty for stateless ones).
    pub identities: Vec<IdentityView>,
}

impl Observation {
    /// An observation of `groups` and `identities`.
    pub fn new(groups: Vec<GroupView>, identities: Vec<IdentityView>) -> Self {
        Observation { groups, identities }
    }

    fn group(&self, revision: &Revision) -> Option<&GroupView> {
        self.groups.iter().find(|g| &g.revision == revision)
    }

    fn available(&self, revision: &Revision) -> u32 {
        self.group(revision).map_or(0, |g| g.available)
    }
}

/// The inputs of one step besides the state.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Input<'a> {
    /// The time of the step.
    pub now: SystemTime,
    /// What the controller observed.
    pub observed: &'a Observation,
    /// Whether the traffic router sets weights itself.
    pub routes_traffic: bool,
    /// The approval decision for the current step, when waiting for one.
    pub approval: Option<bool>,
    /// Measurements that came back, by run key.
    pub measured: Vec<(String, CompletedMeasurement)>,
}

impl<'a> Input<'a> {
    /// Inputs at `now` over `observed`, with no router, decision or measurement.
    pub fn new(now: SystemTime, observed: &'a Observation) -> Self {
        Input {
            now,
            observed,
            routes_traffic: false,
            approval: None,
            measured: Vec::new(),
        }
    }
}

/// What one step decided besides the new state.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Transition {
    /// What to do, in order.
    pub effects: Vec<Effect>,
    /// When to look again at the latest (`None`: on a change only — an engine event, a verb,
    /// a measurement, the resync).
    pub wake: Option<SystemTime>,
}

impl Transition {
    fn push(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    fn wake_at(&mut self, at: SystemTime) {
        self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
    }

    fn notify(&mut self, reason: EventReason, step: Option<usize>, message: impl Into<String>) {
        self.push(Effect::Notify {
            reason,
            step,
            message: message.into(),
        });
    }

    /// Whether any effect changes the engine.
    pub fn mutates_engine(&self) -> bool {
        self.effects.iter().any(Effect::mutates_engine)
    }
}

/// Whether the step goes on planning with the same observation.
enum Flow {
    Again,
    Settled,
}

/// The machine for one rollout's strategy.
#[derive(Debug, Clone, Copy)]
pub struct RolloutMachine<'a> {
    strategy: &'a dyn ReleaseStrategy,
    cluster: Option<&'a str>,
    progress_check: Duration,
    approval_check: Duration,
}

impl<'a> RolloutMachine<'a> {
    /// A machine planning with `strategy`. While instances start it asks to look again after
    /// 2 s; while an approval is pending, after 5 s.
    pub fn new(strategy: &'a dyn ReleaseStrategy) -> Self {
        RolloutMachine {
            strategy,
            cluster: None,
            progress_check: Duration::from_secs(2),
            approval_check: Duration::from_secs(5),
        }
    }

    /// The cluster named in approval requests.
    #[must_use]
    pub fn cluster(mut self, cluster: Option<&'a str>) -> Self {
        self.cluster = cluster;
        self
    }

    /// How soon to look again while instances start or stop (default 2 s).
    #[must_use]
    pub fn progress_check(mut self, every: Duration) -> Self {
        self.progress_check = every;
        self
    }

    /// How soon to look again for an approval decision made outside the controller (default
    /// 5 s; decisions made through the controller wake it at once).
    #[must_use]
    pub fn approval_check(mut self, every: Duration) -> Self {
        self.approval_check = every;
        self
    }

    /// One step of `r` (see the [module docs](self)).
    pub fn step(&self, r: &mut Rollout, input: &Input<'_>) -> Transition {
        let mut t = Transition::default();
        for (key, done) in &input.measured {
            if let Some(run) = r.analyses.get_mut(key) {
                run.record(done.clone(), input.now);
                show_run(r, key);
            }
        }
        // A decision belongs to the step it was read for: once that step is passed, the next
        // (approval) step must not see it.
        let decided_step = r.step;
        let mut input = input.clone();
        for _ in 0..MAX_TRANSITIONS {
            if r.step != decided_step {
                input.approval = None;
            }
            let input = &input;
            let flow = match &r.state {
                RolloutState::Healthy => self.steady(r, input, &mut t),
                RolloutState::Aborting { .. } => self.abort(r, input, &mut t),
                RolloutState::Degraded { .. } => Flow::Settled,
                RolloutState::Paused {
                    why: PauseReason::Operator | PauseReason::Held { .. },
                } => self.hold(r, input, &mut t),
                _ if r.stable.is_none() || r.stable.as_ref() == Some(&r.target) => {
                    self.steady(r, input, &mut t)
                }
                _ => self.progress(r, input, &mut t),
            };
            if matches!(flow, Flow::Settled) || t.mutates_engine() {
                break;
            }
        }
        if t.mutates_engine() {
            // Observe what the engine made of it before judging anything else.
            t.wake = Some(input.now);
        }
        for retiring in &r.retiring {
            if retiring.until > input.now {
                t.wake_at(retiring.until);
            }
        }
        if !matches!(
            r.state,
            RolloutState::Paused {
                why: PauseReason::Operator | PauseReason::Held { .. }
            }
        ) {
            r.planned_replicas = Some(r.spec.app.replicas);
        }
        r.fresh = false;
        t
    }

    fn stateful(&self, r: &Rollout) -> bool {
        r.spec.app.kind == WorkloadKind::Stateful
    }

    fn view(&self, r: &Rollout, input: &Input<'_>, stable: &Revision) -> RolloutView {
        let mut v = RolloutView::new(stable.clone(), r.target.clone(), r.spec.app.replicas);
        v.groups = input.observed.groups.clone();
        v.identities = input.observed.identities.clone();
        v.stateful = self.stateful(r);
        v.step = r.step;
        v.step_elapsed = input.now.duration_since(r.step_started).unwrap_or_default();
        v.analysis = r
            .analyses
            .iter()
            .map(|(k, run)| (k.clone(), run.phase()))
            .collect();
        v.approval = input.approval;
        v.routes_traffic = input.routes_traffic;
        v.previous_replicas = r.planned_replicas;
        v
    }

    /// The target is (or becomes) the stable revision: a Healthy rollout, a first release, or
    /// a fast rollback. Brings it to full; removes the other revisions once it is fully
    /// available and their scale-down delay is over.
    fn steady(&self, r: &mut Rollout, input: &Input<'_>, t: &mut Transition) -> Flow {
        let now = input.now;
        let obs = input.observed;
        let target = r.target.clone();
        let replicas = r.spec.app.replicas;
        let mut desired = Desired::default();
        let full;
        if self.stateful(r) {
            desired.identities = Some(replicas);
            let limit = self.strategy.stateful_max_unavailable(replicas).max(1);
            let (moves, reached) = stateful_moves(&obs.identities, &target, &target, 0, limit);
            desired.moves = moves;
            full = reached && obs.identities.len() as u32 == replicas;
        } else {
            desired.replicas.push((target.clone(), replicas));
            full = obs.available(&target) >= replicas;
        }
        if !input.routes_traffic || obs.available(&target) > 0 || self.stateful(r) {
            desired.split = Some(vec![(target.clone(), 100)]);
        }
        // The other groups: kept through a retiring delay (restarted while the target is not
        // full), removed when the target is full — or first, for a strategy that recreates.
        let recreate = self.strategy.recreates() && !self.stateful(r);
        let mut others_left = false;
        for g in obs.groups.iter().filter(|g| g.revision != target) {
            others_left = true;
            if let Some(ret) = r.retiring.iter_mut().find(|x| x.revision == g.revision) {
                if !full {
                    ret.waiting = true;
                    continue;
                }
                if ret.waiting {
                    // Full again: the whole delay from now.
                    ret.waiting = false;
                    ret.until = now + ret.delay;
                }
                if ret.until > now {
                    continue;
                }
            }
            if (full || recreate) && !self.stateful(r) {
                if g.desired > 0 || g.current > 0 {
                    desired.replicas.push((g.revision.clone(), 0));
                } else {
                    desired.deletes.push(g.revision.clone());
                }
            }
        }
        if recreate && others_left {
            // Nothing of the target starts before the others are gone.
            desired
                .replicas
                .retain(|(rev, n)| rev != &target || *n == 0);
            if obs
                .groups
                .iter()
                .all(|g| g.revision == target || g.current == 0)
            {
                desired.replicas.push((target.clone(), replicas));
            }
        }
        r.retiring
            .retain(|ret| obs.group(&ret.revision).is_some() || ret.until > now);
        self.apply(r, input, &desired, t);
        if t.mutates_engine() {
            return Flow::Settled;
        }
        // Stateful workloads keep one group per revision their identities ran; only the
        // identities matter.
        let settled = full
            && (self.stateful(r)
                || !obs.groups.iter().any(|g| {
                    g.revision != target && !r.retiring.iter().any(|x| x.revision == g.revision)
                }));
        if r.state != RolloutState::Healthy {
            if settled || (full && r.stable.is_some()) {
                self.promote(r, now, None, t);
                return Flow::Again;
            }
            r.message = format!(
                "bringing {target} to {replicas} instances ({} available)",
                obs.available(&target)
            );
        }
        if !settled {
            t.wake_at(now + self.progress_check);
        }
        Flow::Settled
    }

    /// Paused by an operator or held: the step, weights and gate stay as they are, but a
    /// replica change is still followed (Kubernetes: a paused rollout still scales), spread
    /// over the groups as the strategy plans it.
    fn hold(&self, r: &mut Rollout, input: &Input<'_>, t: &mut Transition) -> Flow {
        let (Some(stable), false) = (r.stable.clone(), self.stateful(r)) else {
            return Flow::Settled;
        };
        if stable == r.target || r.planned_replicas == Some(r.spec.app.replicas) {
            return Flow::Settled;
        }
        let view = self.view(r, input, &stable);
        let plan = self.strategy.plan(&view);
        let desired = Desired {
            replicas: plan.replicas,
            ..Desired::default()
        };
        self.apply(r, input, &desired, t);
        if t.effects.is_empty() {
            // The groups reached the new size: nothing more moves while paused.
            r.planned_replicas = Some(r.spec.app.replicas);
        }
        Flow::Settled
    }

    /// Rolling back after an abort: traffic to stable first, stable to full, then the aborted
    /// revision goes (at once without a router; after the abort delay with a router or a
    /// preview; never when that delay is 0).
    fn abort(&self, r: &mut Rollout, input: &Input<'_>, t: &mut Transition) -> Flow {
        let RolloutState::Aborting { at, reason } = r.state.clone() else {
            return Flow::Settled;
        };
        let now = input.now;
        let obs = input.observed;
        let Some(stable) = r.stable.clone() else {
            // Nothing to roll back to (a first release): hold where it is.
            r.state = RolloutState::Paused {
                why: PauseReason::Held {
                    reason: reason.clone(),
                    step_failed: false,
                },
            };
            return Flow::Settled;
        };
        let replicas = r.spec.app.replicas;
        let view = self.view(r, input, &stable);
        let previewed = self.strategy.plan(&view).preview;
        let has_delay = input.routes_traffic || previewed;
        let delay = Duration::from_secs(r.spec.abort_scale_down_delay_seconds);
        let mut desired = Desired {
            split: Some(vec![(stable.clone(), 100)]),
            preview: Some(None),
            ..Desired::default()
        };
        let done;
        if self.stateful(r) {
            let limit = self.strategy.stateful_max_unavailable(replicas).max(1);
            let (moves, reached) =
                stateful_moves(&obs.identities, &stable, &r.target, replicas, limit);
            desired.moves = moves;
            done = reached;
        } else if self.strategy.recreates() {
            let others_running = obs
                .groups
                .iter()
                .any(|g| g.revision != stable && (g.current > 0 || g.desired > 0));
            for g in obs.groups.iter().filter(|g| g.revision != stable) {
                if g.desired > 0 || g.current > 0 {
                    desired.replicas.push((g.revision.clone(), 0));
                }
            }
            if !others_running {
                desired.replicas.push((stable.clone(), replicas));
            }
            done = !others_running && obs.available(&stable) >= replicas;
        } else {
            desired.replicas.push((stable.clone(), replicas));
            let stable_full = obs.available(&stable) >= replicas;
            let keep = has_delay && delay.is_zero();
            let delay_over = !has_delay || now >= at + delay;
            let others: Vec<&GroupView> =
                obs.groups.iter().filter(|g| g.revision != stable).collect();
            if !keep && (delay_over || !stable_full) {
                for g in &others {
                    if !has_delay || stable_full {
                        desired.replicas.push((g.revision.clone(), 0));
                    }
                }
            }
            if stable_full && !delay_over && !keep {
                r.message = format!(
                    "rolling back: {reason}; abort scale-down delay before removing {}",
                    r.target
                );
                t.wake_at(at + delay);
            }
            done = stable_full && (keep || others.iter().all(|g| g.current == 0 && g.desired == 0));
        }
        self.apply(r, input, &desired, t);
        if t.mutates_engine() {
            return Flow::Settled;
        }
        if done {
            for g in obs.groups.iter().filter(|g| g.revision != stable) {
                if g.current == 0 && g.desired == 0 && !self.stateful(r) {
                    t.push(Effect::DeleteGroup(g.revision.clone()));
                }
            }
            r.state = RolloutState::Degraded {
                reason: reason.clone(),
            };
            r.message = format!("aborted: {reason}");
            t.notify(EventReason::RolledBack, None, r.message.clone());
            return Flow::Settled;
        }
        t.wake_at(now + self.progress_check);
        Flow::Settled
    }

    /// A rollout from stable to target at its current step.
    fn progress(&self, r: &mut Rollout, input: &Input<'_>, t: &mut Transition) -> Flow {
        let now = input.now;
        let Some(stable) = r.stable.clone() else {
            return Flow::Settled;
        };
        let view = self.view(r, input, &stable);
        let plan = self.strategy.plan(&view);
        let desired = Desired::from_plan(&plan, &stable, &r.target);
        self.apply(r, input, &desired, t);
        if t.mutates_engine() {
            return Flow::Settled;
        }
        if !r.full
            && let Err(reason) = self.run_analyses(r, &plan, now, t)
        {
            self.fail(r, now, reason, t);
            return Flow::Again;
        }
        let mark = if self.stateful(r) {
            input
                .observed
                .identities
                .iter()
                .filter(|i| i.ready && i.revision == r.target)
                .count() as u32
        } else {
            input.observed.available(&r.target)
        };
        if mark > r.progress_mark {
            r.progress_mark = mark;
            r.last_progress = now;
        }
        let mut gate = plan.gate;
        if r.full
            && matches!(
                gate,
                Gate::Analysis(_) | Gate::Approval(_) | Gate::Pause(..)
            )
        {
            gate = Gate::StepComplete;
        }
        let step = r.step;
        match gate {
            Gate::Progressing(message) => {
                r.state = RolloutState::Progressing;
                r.message = message;
                let deadline = Duration::from_secs(r.spec.progress_deadline_seconds);
                let stalled = now.duration_since(r.last_progress).unwrap_or_default();
                if stalled > deadline {
                    let reason = format!(
                        "ProgressDeadlineExceeded: no progress for {}s at step {step} ({})",
                        stalled.as_secs(),
                        r.message
                    );
                    self.fail(r, now, reason, t);
                    return Flow::Again;
                }
                t.wake_at(now + self.progress_check);
                Flow::Settled
            }
            Gate::StepComplete => {
                t.notify(
                    EventReason::StepCompleted,
                    Some(step),
                    format!("step {step} completed"),
                );
                r.go_to_step(step + 1, now);
                Flow::Again
            }
            Gate::Pause(duration, message) => {
                let until = duration.map(|d| now + d);
                let entering = !matches!(&r.state, RolloutState::Paused { why: PauseReason::Step { message: m, .. } } if *m == message);
                if entering {
                    t.notify(EventReason::Paused, Some(step), message.clone());
                }
                r.state = RolloutState::Paused {
                    why: PauseReason::Step {
                        message: message.clone(),
                        until,
                    },
                };
                r.message = message;
                r.last_progress = now;
                if let Some(until) = until {
                    t.wake_at(until);
                }
                Flow::Settled
            }
            Gate::ScaleDownDelay(delay, _) => {
                self.promote(r, now, Some(delay), t);
                Flow::Again
            }
            Gate::Approval(message) => {
                // Asked once per attempt and step; again after a restart, in case the request
                // (or its notification) was lost with the previous process.
                if !matches!(r.state, RolloutState::WaitingApproval { .. }) || r.fresh {
                    let request = self.approval_request(r, input, &message);
                    t.push(Effect::RequestApproval(Box::new(request)));
                    t.notify(EventReason::ApprovalRequested, Some(step), message.clone());
                }
                r.state = RolloutState::WaitingApproval {
                    message: message.clone(),
                };
                r.message = format!("waiting for approval: {message}");
                r.last_progress = now;
                t.wake_at(now + self.approval_check);
                Flow::Settled
            }
            Gate::Analysis(key) => {
                r.state = RolloutState::Progressing;
                r.message = format!("running analysis {key}");
                Flow::Settled
            }
            Gate::Abort(reason) => {
                // The step's own gate, unless the background analysis is what failed.
                let background_failed = r.analyses.get("background").is_some_and(|run| {
                    run.phase().is_terminal()
                        && run.phase() != crate::analysis::AnalysisPhase::Successful
                });
                self.fail_step(r, now, reason, !background_failed, t);
                Flow::Again
            }
            Gate::Done => {
                self.promote(r, now, None, t);
                Flow::Again
            }
        }
    }

    fn approval_request(&self, r: &Rollout, input: &Input<'_>, message: &str) -> ApprovalRequest {
        let replicas = r.spec.app.replicas.max(1);
        let updated = if self.stateful(r) {
            input
                .observed
                .identities
                .iter()
                .filter(|i| i.revision == r.target)
                .count() as u32
        } else {
            input.observed.group(&r.target).map_or(0, |g| g.current)
        };
        let mut context = ApprovalContext::new()
            .step_count(self.strategy.steps())
            .updated_percent((updated.min(replicas) * 100) / replicas);
        context.cluster = self.cluster.map(str::to_owned);
        context.released_by = r.spec.released_by.clone();
        context.commit = r.spec.commit.clone();
        ApprovalRequest::new(
            ApprovalKey::new(r.app.clone(), r.target.clone(), r.attempt, r.step),
            message,
        )
        .context(context)
    }

    /// Starts the plan's analyses and asks for their due measurements. Errors when one cannot
    /// start (the reason aborts the rollout).
    fn run_analyses(
        &self,
        r: &mut Rollout,
        plan: &Plan,
        now: SystemTime,
        t: &mut Transition,
    ) -> Result<(), String> {
        for req in &plan.analyses {
            if !r.analyses.contains_key(&req.key) {
                match AnalysisRun::new(&req.analysis.spec, req.analysis.args.clone(), now) {
                    Ok(run) => {
                        r.analyses.insert(req.key.clone(), run);
                    }
                    Err(err) => {
                        let reason = format!("analysis {} cannot start: {err}", req.key);
                        let shown = Some(AnalysisStatus::error(&req.key, reason.clone()));
                        if req.background {
                            r.background_analysis = shown;
                        } else {
                            r.analysis = shown;
                        }
                        return Err(reason);
                    }
                }
            }
            if let Some(run) = r.analyses.get(&req.key) {
                for pending in run.due(now) {
                    t.push(Effect::Measure {
                        key: req.key.clone(),
                        pending: Box::new(pending),
                    });
                }
                if let Some(due) = run.next_due().filter(|d| *d > now) {
                    t.wake_at(due);
                }
            }
            show_run(r, &req.key);
        }
        Ok(())
    }

    /// Applies the failure policy.
    fn fail(&self, r: &mut Rollout, now: SystemTime, reason: String, t: &mut Transition) {
        self.fail_step(r, now, reason, false, t);
    }

    /// Applies the failure policy; `step_failed` when the step's own gate failed (a rejected
    /// approval, a failed step analysis), so that a promote of a held rollout passes the step.
    fn fail_step(
        &self,
        r: &mut Rollout,
        now: SystemTime,
        reason: String,
        step_failed: bool,
        t: &mut Transition,
    ) {
        let step = Some(r.step);
        if r.spec.failure_policy == FailurePolicy::RollBack && r.stable.is_some() {
            r.state = RolloutState::Aborting {
                at: now,
                reason: reason.clone(),
            };
            r.message = format!("rolling back: {reason}");
            r.terminate_analyses();
            t.push(Effect::WithdrawApprovals(r.target.clone()));
            t.notify(EventReason::Aborted, step, reason);
        } else {
            r.state = RolloutState::Paused {
                why: PauseReason::Held {
                    reason: reason.clone(),
                    step_failed,
                },
            };
            r.message = reason.clone();
            t.notify(EventReason::Paused, step, reason);
        }
    }

    /// The target becomes the stable revision (phase Healthy); the old one is kept for
    /// `retire` when given (its scale-down delay), otherwise removed by the steady state.
    fn promote(
        &self,
        r: &mut Rollout,
        now: SystemTime,
        retire: Option<Duration>,
        t: &mut Transition,
    ) {
        let target = r.target.clone();
        if r.stable.as_ref() != Some(&target) {
            if let Some(old) = r.stable.clone()
                && let Some(delay) = retire
            {
                r.retiring.retain(|x| x.revision != old);
                r.retiring.push(Retiring {
                    revision: old,
                    until: now + delay,
                    delay,
                    waiting: false,
                });
            }
            if let Some(old) = r.stable_spec.take() {
                let revision = old.revision();
                r.history.retain(|h| h.revision != revision);
                r.history.push(HistoryEntry {
                    revision,
                    spec: old,
                    promoted_at: now,
                });
            }
            let excess = r
                .history
                .len()
                .saturating_sub(r.spec.revision_history_limit);
            r.history.drain(..excess);
            r.history.retain(|h| h.revision != target);
            r.stable_spec = Some(r.spec.app.clone());
            r.stable = Some(target.clone());
        }
        r.retiring.retain(|x| x.revision != target);
        r.state = RolloutState::Healthy;
        r.message = if r.retiring.is_empty() {
            "target revision is stable and fully available".into()
        } else {
            "target revision is stable; the old revision is kept for its scale-down delay".into()
        };
        r.full = false;
        r.terminate_analyses();
        r.analyses.clear();
        r.analysis = None;
        r.background_analysis = None;
        if r.preview.is_some() {
            r.preview = None;
            t.push(Effect::SetPreview(None));
        }
        t.push(Effect::WithdrawApprovals(target));
        t.notify(EventReason::Healthy, None, r.message.clone());
    }

    /// Turns what is wanted into effects, in the safe order, and records the split and preview
    /// they set.
    fn apply(&self, r: &mut Rollout, input: &Input<'_>, d: &Desired, t: &mut Transition) {
        let obs = input.observed;
        let now = input.now;
        // 1. New capacity first.
        let mut downs = Vec::new();
        // Stateful: the engine starts identities one after another, so compare what it was
        // asked for (the groups' desired counts), not the identities started so far.
        if let Some(n) = d.identities
            && obs.groups.iter().map(|g| g.desired).sum::<u32>() != n
        {
            t.push(Effect::Identities { replicas: n });
        }
        for (rev, n) in &d.replicas {
            if self.stateful(r) {
                break;
            }
            match obs.group(rev) {
                Some(g) if g.desired == *n => {}
                Some(g) if g.desired > *n => downs.push((rev.clone(), *n)),
                Some(_) => t.push(Effect::Scale {
                    revision: rev.clone(),
                    replicas: *n,
                }),
                None if *n == 0 => {}
                None => t.push(Effect::Scale {
                    revision: rev.clone(),
                    replicas: *n,
                }),
            }
        }
        // 2. Traffic.
        if let Some(split) = &d.split {
            let routable = !input.routes_traffic
                || split
                    .iter()
                    .all(|(rev, w)| *w == 0 || obs.available(rev) > 0 || self.stateful(r));
            let wanted: Vec<Routed> = split
                .iter()
                .filter(|(_, w)| *w > 0)
                .map(|(rev, w)| Routed {
                    revision: rev.clone(),
                    weight: *w,
                    available: if input.routes_traffic {
                        obs.available(rev)
                    } else {
                        0
                    },
                })
                .collect();
            if routable && (wanted != r.routed || r.router_stale) {
                r.router_stale = false;
                t.push(Effect::SetSplit(
                    wanted
                        .iter()
                        .map(|x| (x.revision.clone(), x.weight))
                        .collect(),
                ));
                r.routed = wanted;
            }
        }
        // 3. Removals: never of a revision that still receives traffic through a router, nor of
        // a retiring one before its delay is over.
        // A strategy that recreates accepts the downtime: its old revision goes first.
        let guard_traffic = input.routes_traffic && !self.strategy.recreates();
        for (rev, n) in downs {
            let routed = guard_traffic && r.routed_weight(&rev) > 0;
            let retiring = r
                .retiring
                .iter()
                .any(|x| x.revision == rev && x.until > now);
            if (n == 0 && routed) || retiring {
                continue;
            }
            t.push(Effect::Scale {
                revision: rev,
                replicas: n,
            });
        }
        for rev in &d.deletes {
            t.push(Effect::DeleteGroup(rev.clone()));
        }
        if !t
            .effects
            .iter()
            .any(|e| matches!(e, Effect::Identities { .. }))
        {
            for (ordinal, rev) in &d.moves {
                t.push(Effect::MoveIdentity {
                    ordinal: *ordinal,
                    revision: rev.clone(),
                });
            }
        }
        // 4. Preview.
        let wanted = if d.preview_target {
            Some((obs.available(&r.target) > 0).then(|| r.target.clone()))
        } else {
            d.preview.clone()
        };
        match wanted {
            Some(preview) if preview != r.preview || r.fresh => {
                t.push(Effect::SetPreview(preview.clone()));
                r.preview = preview;
            }
            // After a restart, a preview the router may have lost is set again.
            None if r.fresh && r.preview.is_some() => {
                t.push(Effect::SetPreview(r.preview.clone()));
            }
            _ => {}
        }
    }
}

/// What a step wants of the engine and the router.
#[derive(Debug, Default)]
struct Desired {
    replicas: Vec<(Revision, u32)>,
    identities: Option<u32>,
    moves: Vec<(u32, Revision)>,
    deletes: Vec<Revision>,
    split: Option<Vec<(Revision, u32)>>,
    /// Set the preview to this.
    preview: Option<Option<Revision>>,
    /// The preview follows the target from its first available instance.
    preview_target: bool,
}

impl Desired {
    fn from_plan(plan: &Plan, stable: &Revision, target: &Revision) -> Self {
        Desired {
            replicas: plan.replicas.clone(),
            identities: None,
            moves: plan.moves.clone(),
            deletes: Vec::new(),
            split: plan.target_weight.map(|w| {
                let w = w.min(100);
                vec![(stable.clone(), 100 - w), (target.clone(), w)]
            }),
            preview: None,
            preview_target: plan.preview,
        }
    }
}

/// Shows run `key`'s state in the status.
fn show_run(r: &mut Rollout, key: &str) {
    let Some(run) = r.analyses.get(key) else {
        return;
    };
    let shown = Some(AnalysisStatus::from_run(key, run));
    if key == "background" {
        r.background_analysis = shown;
    } else {
        r.analysis = shown;
    }
}
