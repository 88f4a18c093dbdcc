//! What the machine asks the controller's shell to do: effects are data, executed in order.

use crate::analysis::PendingMeasurement;
use crate::approval::ApprovalRequest;
use crate::controller::EventReason;
use rorqual_core::model::Revision;

/// One thing to do. The shell executes a transition's effects in order and stops at the first
/// failure (nothing of the new state is persisted then, and the next reconcile plans again), so
/// the order carries the safety rules: new instances first, then traffic, then removals, so an
/// instance is never stopped while it still receives traffic.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Effect {
    /// Run `replicas` instances of `revision` (creating its group from the rollout's spec of
    /// that revision when it has none).
    Scale {
        /// The revision.
        revision: Revision,
        /// The count.
        replicas: u32,
    },
    /// Stateful: make the workload have `replicas` identities (of the stable revision's spec,
    /// or the target's on a first release).
    Identities {
        /// The count.
        replicas: u32,
    },
    /// Stateful: move identity `ordinal` to `revision`.
    MoveIdentity {
        /// The identity.
        ordinal: u32,
        /// Where it goes.
        revision: Revision,
    },
    /// Remove `revision`'s (empty) group.
    DeleteGroup(Revision),
    /// Apply this split (revision, weight) to the traffic router, then verify it.
    SetSplit(Vec<(Revision, u32)>),
    /// Point the preview route at `revision`, or empty it.
    SetPreview(Option<Revision>),
    /// Take a measurement in the background; its result comes back through the queue.
    Measure {
        /// The run's key.
        key: String,
        /// What to measure.
        pending: Box<PendingMeasurement>,
    },
    /// Ask for an approval.
    RequestApproval(Box<ApprovalRequest>),
    /// Withdraw `revision`'s approval requests (cleanup; attempts key decisions, so a failure
    /// here cannot make an old decision count).
    WithdrawApprovals(Revision),
    /// Tell the world (event stream, notifier) what happened.
    Notify {
        /// What kind of thing.
        reason: EventReason,
        /// The step it is about.
        step: Option<usize>,
        /// A sentence.
        message: String,
    },
}

impl Effect {
    /// Whether the effect changes the engine (the shell then observes again before judging
    /// the next gate).
    pub fn mutates_engine(&self) -> bool {
        matches!(
            self,
            Effect::Scale { .. }
                | Effect::Identities { .. }
                | Effect::MoveIdentity { .. }
                | Effect::DeleteGroup(_)
        )
    }
}
