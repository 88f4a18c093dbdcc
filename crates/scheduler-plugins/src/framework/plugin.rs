//! The plugin traits, one per extension point.
//!
//! The per-node points (Filter, Score) and the scheduling-cycle points are synchronous: they
//! run millions of times per second across rayon workers, where a boxed future per call would
//! cost more than the check itself. The binding-cycle points (PreBind, Bind, PostBind) are
//! async (`#[async_trait]`): they talk to the outside world.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::framework::cycle_state::CycleState;
use crate::framework::status::Status;
use crate::framework::waiting::WaitingPods;
use crate::interner::Sym;
use crate::snapshot::{NodeInfo, PodInfo, Snapshot};
use std::collections::HashSet;
use std::sync::Arc;

/// The highest score a Score plugin may give (after normalisation).
pub const MAX_NODE_SCORE: i64 = 100;
/// The longest a Permit plugin may make a pod wait.
pub const MAX_PERMIT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// What every plugin has: a name, and a configuration check run when a profile is built.
pub trait Plugin: Send + Sync + Debug + 'static {
    /// The plugin's name, unique within a profile.
    fn name(&self) -> &str;

    /// Rejects an invalid configuration with a message naming the bad value.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A pod waiting in the scheduling queue.
#[derive(Debug, Clone)]
pub struct QueuedPodInfo {
    /// The pod.
    pub pod: Arc<PodInfo>,
    /// When it was first queued.
    pub timestamp: Instant,
    /// Failed scheduling attempts so far.
    pub attempts: u32,
}

/// Gate before a pod enters the active queue. Must be cheap.
pub trait PreEnqueuePlugin: Plugin {
    /// Success admits the pod; anything else keeps it out (with the reason).
    fn pre_enqueue(&self, pod: &PodInfo) -> Status;
}

/// The queue order (exactly one per profile).
pub trait QueueSortPlugin: Plugin {
    /// Whether `a` should be scheduled before `b`.
    fn less(&self, a: &QueuedPodInfo, b: &QueuedPodInfo) -> bool;
}

/// Nodes a PreFilter plugin restricts the pod to; sets from several plugins intersect.
pub type NodeSet = HashSet<Sym>;

/// Runs once per cycle before filtering.
pub trait PreFilterPlugin: Plugin {
    /// Precomputes state; may restrict the candidate nodes (`Some(set)`), or return Skip to
    /// disable the plugin's own Filter for this pod.
    fn pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
    ) -> (Option<NodeSet>, Status);
}

/// Decides per node whether the pod can run there.
pub trait FilterPlugin: Plugin {
    /// Success, Unschedulable, UnschedulableAndUnresolvable, or Error.
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status;
}

/// Filter outcomes per node, for PostFilter plugins.
pub type NodeStatuses = Vec<(Sym, Status)>;

/// Runs when no node fits (for example preemption).
///
/// The first plugin that nominates a node ends PostFilter. The scheduler reports the
/// nomination ([`ScheduleResult::nominated`](crate::ScheduleResult::nominated)), remembers it
/// for the pod ([`Scheduler::nominated_node`](crate::Scheduler::nominated_node)), other pods
/// of lower or equal priority are filtered as if the pod already ran there, and the pod's next
/// cycle filters that node first and takes it without scoring when it passes, as
/// kube-scheduler does with `nominatedNodeName`.
pub trait PostFilterPlugin: Plugin {
    /// May nominate a node (Success with `Some`), or explain why not. A cycle that nominates
    /// nothing keeps the pod's earlier nomination (the next cycle checks that node first and
    /// falls back to every node when it no longer fits); a cycle that ends in an Error clears
    /// it.
    fn post_filter(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
        statuses: &NodeStatuses,
    ) -> (Option<Sym>, Status);
}

/// Runs once before scoring, with the feasible nodes.
pub trait PreScorePlugin: Plugin {
    /// Precomputes state; Skip disables the plugin's Score for this pod.
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
        nodes: &[&NodeInfo],
    ) -> Status;
}

/// Scores a feasible node; scores are normalised to 0..=100 and weighted.
pub trait ScorePlugin: Plugin {
    /// The raw score of `node`.
    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status>;

    /// Maps raw scores (parallel to the feasible nodes) into 0..=100. The default leaves them.
    fn normalize(&self, state: &CycleState, pod: &PodInfo, scores: &mut [i64]) -> Status {
        let _ = (state, pod, scores);
        Status::success()
    }
}

/// Reserves per-node resources a pod will use (before binding); Unreserve undoes it.
pub trait ReservePlugin: Plugin {
    /// Reserves; a failure unreserves every Reserve plugin in reverse order.
    fn reserve(&self, state: &mut CycleState, pod: &PodInfo, node: Sym) -> Status;
    /// Undoes [`ReservePlugin::reserve`]. Idempotent; may run without a prior reserve.
    fn unreserve(&self, state: &mut CycleState, pod: &PodInfo, node: Sym);
}

/// Allows, rejects or delays a pod's binding.
pub trait PermitPlugin: Plugin {
    /// Success, Unschedulable (reject), or Wait with a timeout (capped at 15 minutes).
    /// `waiting` lets the plugin allow or reject other waiting pods.
    fn permit(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        node: Sym,
        waiting: &WaitingPods,
    ) -> (Status, Duration);
}

/// Runs before binding (for example to provision something the pod needs).
#[async_trait]
pub trait PreBindPlugin: Plugin {
    /// A failure aborts the binding (and unreserves).
    async fn pre_bind(&self, state: &CycleState, pod: &PodInfo, node: Sym) -> Status;
}

/// Binds the pod to the node. Bind plugins run in order until one does not return Skip.
#[async_trait]
pub trait BindPlugin: Plugin {
    /// Success, Skip (let the next binder do it), or a failure.
    async fn bind(&self, state: &CycleState, pod: &PodInfo, node: Sym) -> Status;
}

/// Informational, after a successful bind.
#[async_trait]
pub trait PostBindPlugin: Plugin {
    /// Called after the pod was bound.
    async fn post_bind(&self, state: &CycleState, pod: &PodInfo, node: Sym);
}
