//! Operator verbs as pure transitions: each is idempotent where repeating it means the same
//! thing (abort, pause, resume, promote-full), and refuses with a [`VerbRefusal`] where it does
//! not apply.

use std::fmt;
use std::time::SystemTime;

use super::{Effect, PauseReason, Rollout, RolloutMachine, RolloutState};
use crate::analysis::AnalysisPhase;
use crate::controller::EventReason;

/// An operator verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Verb {
    /// Pass what the current step waits for (a pause, an approval, an analysis that ended
    /// badly) and go to the next step; the step index never passes the number of steps.
    Promote,
    /// Skip every remaining pause, approval and analysis; the new revision still reaches full
    /// availability before it takes all traffic.
    PromoteFull,
    /// Roll back to the stable revision.
    Abort,
    /// Start an aborted or held rollout again from step 0 (a new attempt).
    Retry,
    /// Stop where it is until resumed.
    Pause,
    /// Continue after a pause by an operator.
    Resume,
}

impl Verb {
    /// The verb's name (`promote-full`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Promote => "promote",
            Verb::PromoteFull => "promote-full",
            Verb::Abort => "abort",
            Verb::Retry => "retry",
            Verb::Pause => "pause",
            Verb::Resume => "resume",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why a verb does not apply to a rollout in its state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerbRefusal {
    /// The rollout is Healthy: its target is stable.
    #[error("is Healthy: nothing to {0}")]
    Healthy(Verb),
    /// The rollout is aborted (or aborting); `retry` or a new release continues.
    #[error("is aborted: use retry")]
    Aborted,
    /// There is no stable revision to roll back to (a first release).
    #[error("has no stable revision to roll back to")]
    NoStable,
    /// Only an aborted or held rollout can be retried.
    #[error("is {0}: only an aborted or held rollout can be retried")]
    NotRetryable(&'static str),
    /// What the current step waits for is not something a promote skips.
    #[error("is at step {step}, waiting for {waiting}: promote does not skip it")]
    NotSkippable {
        /// The step.
        step: usize,
        /// What it waits for.
        waiting: String,
    },
}

impl RolloutMachine<'_> {
    /// Applies `verb` to `r` at `now`: the new state and the effects to execute (notifications,
    /// approval cleanup), or why it does not apply (then `r` is unchanged).
    pub fn verb(
        &self,
        r: &mut Rollout,
        verb: Verb,
        now: SystemTime,
    ) -> Result<Vec<Effect>, VerbRefusal> {
        let steady = r.stable.is_none() || r.stable.as_ref() == Some(&r.target);
        let before = (r.state.clone(), r.step, r.full, r.attempt);
        let mut effects = Vec::new();
        match verb {
            Verb::Promote => {
                self.check_movable(r, verb, steady)?;
                self.promote_one(r, now)?;
            }
            Verb::PromoteFull => {
                self.check_movable(r, verb, steady)?;
                r.full = true;
                let step = self.strategy.promote_full_step(r.step);
                if step != r.step {
                    r.go_to_step(step, now);
                }
                r.state = RolloutState::Progressing;
                r.terminate_analyses();
                r.analysis = None;
                effects.push(Effect::WithdrawApprovals(r.target.clone()));
            }
            Verb::Abort => match &r.state {
                RolloutState::Aborting { .. } | RolloutState::Degraded { .. } => {}
                RolloutState::Healthy => return Err(VerbRefusal::Healthy(verb)),
                _ if steady && r.stable.is_some() => return Err(VerbRefusal::Healthy(verb)),
                _ if r.stable.is_none() => return Err(VerbRefusal::NoStable),
                _ => {
                    let reason = "aborted by an operator".to_owned();
                    r.state = RolloutState::Aborting {
                        at: now,
                        reason: reason.clone(),
                    };
                    r.message = format!("rolling back: {reason}");
                    r.terminate_analyses();
                    effects.push(Effect::WithdrawApprovals(r.target.clone()));
                    effects.push(Effect::Notify {
                        reason: EventReason::Aborted,
                        step: Some(r.step),
                        message: reason,
                    });
                }
            },
            Verb::Retry => match &r.state {
                RolloutState::Aborting { .. }
                | RolloutState::Degraded { .. }
                | RolloutState::Paused {
                    why: PauseReason::Held { .. },
                } => {
                    effects.push(Effect::WithdrawApprovals(r.target.clone()));
                    r.restart(now, "retried");
                }
                other => return Err(VerbRefusal::NotRetryable(state_name(other))),
            },
            Verb::Pause => match &r.state {
                RolloutState::Paused {
                    why: PauseReason::Operator,
                } => {}
                RolloutState::Healthy => return Err(VerbRefusal::Healthy(verb)),
                RolloutState::Aborting { .. } | RolloutState::Degraded { .. } => {
                    return Err(VerbRefusal::Aborted);
                }
                _ => {
                    r.state = RolloutState::Paused {
                        why: PauseReason::Operator,
                    };
                    r.message = "paused by an operator".into();
                }
            },
            Verb::Resume => {
                if r.state
                    == (RolloutState::Paused {
                        why: PauseReason::Operator,
                    })
                {
                    r.state = RolloutState::Progressing;
                    r.message = "resumed by an operator".into();
                    r.last_progress = now;
                }
            }
        }
        // A verb that changed nothing (a second pause, a resume of a running rollout) is not
        // an event.
        if before != (r.state.clone(), r.step, r.full, r.attempt) {
            effects.push(Effect::Notify {
                reason: EventReason::Verb,
                step: Some(r.step),
                message: format!("{verb} by an operator"),
            });
        }
        Ok(effects)
    }

    fn check_movable(&self, r: &Rollout, verb: Verb, steady: bool) -> Result<(), VerbRefusal> {
        match &r.state {
            RolloutState::Healthy => Err(VerbRefusal::Healthy(verb)),
            RolloutState::Aborting { .. } | RolloutState::Degraded { .. } => {
                Err(VerbRefusal::Aborted)
            }
            _ if steady && r.stable.is_some() => Err(VerbRefusal::Healthy(verb)),
            _ => Ok(()),
        }
    }

    /// One promote: acknowledges an analysis that ended badly (its step is passed; a
    /// background run starts again), passes an approval, or goes to the strategy's next step.
    fn promote_one(&self, r: &mut Rollout, now: SystemTime) -> Result<(), VerbRefusal> {
        let ended_badly = |p: AnalysisPhase| p.is_terminal() && p != AnalysisPhase::Successful;
        let step_key_bad = r
            .analyses
            .iter()
            .any(|(k, run)| k != "background" && ended_badly(run.phase()));
        let background_bad = r
            .analyses
            .get("background")
            .is_some_and(|run| ended_badly(run.phase()));
        let (held, step_failed) = match &r.state {
            RolloutState::Paused {
                why: PauseReason::Held { step_failed, .. },
            } => (true, *step_failed),
            _ => (false, false),
        };
        let approval = matches!(r.state, RolloutState::WaitingApproval { .. }) || step_failed;
        let last = self.strategy.steps();
        let next = if step_key_bad || approval {
            Some(
                self.strategy
                    .promote_step(r.step)
                    .unwrap_or((r.step + 1).min(last)),
            )
        } else if held || background_bad {
            // Resume where it is: the hold (or the background run) is acknowledged.
            Some(r.step)
        } else {
            self.strategy.promote_step(r.step)
        };
        let Some(next) = next else {
            return Err(VerbRefusal::NotSkippable {
                step: r.step,
                waiting: r.message.clone(),
            });
        };
        r.analyses.retain(|_, run| !ended_badly(run.phase()));
        if background_bad {
            r.background_analysis = None;
        }
        if next != r.step {
            r.go_to_step(next, now);
        } else {
            r.state = RolloutState::Progressing;
            r.last_progress = now;
        }
        Ok(())
    }
}

fn state_name(state: &RolloutState) -> &'static str {
    match state {
        RolloutState::Progressing => "Progressing",
        RolloutState::Paused { .. } => "Paused",
        RolloutState::WaitingApproval { .. } => "waiting for approval",
        RolloutState::Aborting { .. } => "aborting",
        RolloutState::Degraded { .. } => "Degraded",
        RolloutState::Healthy => "Healthy",
    }
}
