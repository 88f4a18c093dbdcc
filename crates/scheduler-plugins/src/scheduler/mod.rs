//! The `Scheduler`: hosts a profile's plugins over a cached snapshot, runs scheduling cycles
//! (filter and score in parallel with rayon), assumes pods, and runs binding cycles in which a
//! pod waiting at Permit blocks only its own binding.
//!
//! A node a PostFilter plugin nominates for a pod (where preemption would make room, say) is
//! remembered, and the pod's next scheduling cycle evaluates that node first, as
//! kube-scheduler's `evaluateNominatedNode` does; meanwhile the nomination holds room on the
//! node against pods of lower or equal priority (`RunFilterPluginsWithNominatedPods`): see
//! [`Scheduler::nominated_node`].

mod binding;
mod cache;
mod cycle;
mod nominator;
pub mod placement;
pub mod queue;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use crate::framework::{Profile, QueuedPodInfo, Status, WaitingPods};
use crate::interner::Sym;
use crate::snapshot::PodInfo;
use cache::{Cache, Placed};
use cycle::CycleOutcome;
use nominator::NominatedPods;
use queue::SchedulingQueue;

/// Scheduling cycles run back to back before their binding cycles.
const BATCH: usize = 256;

/// The result of filtering (and optionally scoring) a pod over candidate nodes.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// Feasible nodes (dense indices).
    pub feasible: Vec<u32>,
    /// Infeasible nodes and why.
    pub failed: Vec<(u32, Status)>,
    /// Weighted total scores, parallel to `feasible` (empty when not scored).
    pub scores: Vec<i64>,
    /// The highest total possible from the Score plugins that ran for this pod (skipped
    /// plugins excluded): `Σ weight × 100`.
    pub max_score: i64,
    /// How many candidates were examined.
    pub examined: usize,
}

/// What happened to one pod.
#[derive(Debug)]
pub enum Outcome {
    /// Bound to the node.
    Bound(Sym),
    /// Assumed on the node and waiting at Permit; the handle yields the binding's result.
    Waiting {
        /// The node.
        node: Sym,
        /// The binding task.
        binding: tokio::task::JoinHandle<Result<Sym, Status>>,
    },
    /// No node fits (the pod is back in the queue, with backoff).
    Unschedulable(Status),
    /// A plugin failed or panicked (the pod is back in the queue, with backoff).
    Error(Status),
}

/// One pod's scheduling result.
#[derive(Debug)]
pub struct ScheduleResult {
    /// The pod.
    pub pod: Arc<PodInfo>,
    /// What happened.
    pub outcome: Outcome,
    /// The node a PostFilter plugin nominated in this cycle when no node fit (for example
    /// where preemption would make room); the pod itself is retried after its backoff. The
    /// scheduler remembers the nomination ([`Scheduler::nominated_node`]), holds room on the
    /// node for the pod against pods of lower or equal priority, and its next cycle for the
    /// pod tries that node first.
    pub nominated: Option<Sym>,
}

/// Where [`Scheduler::schedule_pod_reserving`] bound a pod, and what was reserved for it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PodPlacement {
    /// The node.
    pub node: Sym,
    /// The underlay address reserved for the pod, if any.
    pub address: Option<rorqual_core::placement::ReservedAddress>,
}

/// Totals of [`Scheduler::run_until_idle`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Pods bound.
    pub bound: usize,
    /// Pods that did not fit (requeued).
    pub unschedulable: usize,
    /// Pods whose cycle errored (requeued).
    pub errors: usize,
}

#[derive(Debug)]
struct Inner {
    profile: Profile,
    prefilter_pairs: Vec<Option<usize>>,
    prescore_pairs: Vec<Option<usize>>,
    /// Lock order: `cache`, then `queue` (a pod moves between them under both), then
    /// `nominated_pods`.
    cache: Mutex<Cache>,
    queue: Mutex<SchedulingQueue>,
    /// The nominations (each nominated pod's node, and the nominated pods by node), changed
    /// under the cache lock. Behind a lock of its own because [`Scheduler::evaluate`] runs
    /// while its caller holds the cache lock; readers clone the `Arc` and let go at once
    /// (never held across parallel filtering), and a change copies the maps only while a
    /// reader holds them.
    nominated_pods: Mutex<Arc<NominatedPods>>,
    /// `cache.removed.len()`, readable without the lock, so a binding cycle checks for its
    /// pod's deletion before binding only while some deletion is pending.
    removals: AtomicUsize,
    waiting: WaitingPods,
    placed: Mutex<Placed>,
    /// Serializes `Placement` calls: each replaces the snapshot from the engine's views and
    /// records its pod in `placed` only after binding, so two calls overlapping would each
    /// drop the other's pod from the snapshot.
    placing: tokio::sync::Mutex<()>,
}

/// The in-process scheduler. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// Runs `f`, turning a panic into an Error status.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, Status>) -> Result<T, Status> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(Status::error(format!(
            "plugin panicked during {what}: {}",
            panic_message(&*payload)
        ))),
    }
}

impl Scheduler {
    /// A scheduler running `profile`.
    pub fn new(profile: Profile) -> Scheduler {
        let prefilter_pairs = profile
            .pre_filter
            .iter()
            .map(|p| profile.filter.iter().position(|f| f.name() == p.name()))
            .collect();
        let prescore_pairs = profile
            .pre_score
            .iter()
            .map(|p| profile.score.iter().position(|(s, _)| s.name() == p.name()))
            .collect();
        let queue = SchedulingQueue::new(profile.queue_sort.clone());
        Scheduler {
            inner: Arc::new(Inner {
                profile,
                prefilter_pairs,
                prescore_pairs,
                cache: Mutex::new(Cache::default()),
                queue: Mutex::new(queue),
                nominated_pods: Mutex::default(),
                removals: AtomicUsize::new(0),
                waiting: WaitingPods::new(),
                placed: Mutex::new(Placed::default()),
                placing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// A scheduler with [`crate::plugins::default_profile`].
    pub fn with_default_plugins() -> Scheduler {
        Scheduler::new(crate::plugins::default_profile())
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.inner.profile
    }

    /// Pods waiting at Permit.
    pub fn waiting_pods(&self) -> &WaitingPods {
        &self.inner.waiting
    }

    /// The node nominated for pod `uid`, if any: the node a PostFilter plugin nominated in
    /// the pod's last failed scheduling cycle (as [`ScheduleResult::nominated`] reported it).
    ///
    /// As in kube-scheduler (`evaluateNominatedNode`), the pod's next cycle runs PreFilter,
    /// then filters only this node; if it passes (and a PreFilter node set does not exclude
    /// it) the pod goes there directly, without scoring. Otherwise (the node fails a filter
    /// or is gone) the cycle filters and scores every node as usual. A failed cycle replaces
    /// the nomination with its own PostFilter's; one that nominates nothing keeps it, and one
    /// that ends in an Error clears it. The nomination is dropped
    /// once the pod is assumed on a node (bound, or waiting at Permit: a binding that fails
    /// then retries without one, like upstream's `clearNominatedNode`) and when the pod is
    /// deleted ([`Scheduler::remove_pod`]) or released through the `Placement` seam.
    ///
    /// A nomination holds room on its node, as upstream's `RunFilterPluginsWithNominatedPods`
    /// does: when any pod is nominated, filtering another pod on a node first runs the filters
    /// on a copy of the node with the pods nominated there of priority at least that pod's
    /// (never the pod itself) added, then, if that passes, on the node as it is; both must
    /// pass. So a pod of lower or equal priority scheduled in the meantime does not take the
    /// room a preemption freed, while one of higher priority is not held back. This applies
    /// to scheduling cycles (the nominated-node check included), to [`Scheduler::evaluate`]
    /// (the extender's filter, prioritize and preempt verbs: upstream runs an extender after
    /// its own filters, which count the nominated pods) and to [`Scheduler::bind_to_node`]'s
    /// re-check. What the copy makes visible is what Filter plugins read from the node: its
    /// requests and pod count (NodeResourcesFit) and host ports (NodePorts), and any custom
    /// filter that looks at the node's pods. Upstream also adds the nominated pods to the
    /// PreFilter state through PreFilter extensions (`AddPod`); this framework has none, so
    /// filters that decide from what their PreFilter computed over the snapshot
    /// (InterPodAffinity's affinity and anti-affinity counts, PodTopologySpread's domain
    /// counts, UnderlayIp's pool capacity) do not count nominated pods. Scoring does not count
    /// them either, as upstream. With no pod nominated, filtering costs nothing extra.
    pub fn nominated_node(&self, uid: &str) -> Option<Sym> {
        self.nominated_pods_lock().node_of(uid)
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.inner.cache.lock()
    }

    fn queue(&self) -> MutexGuard<'_, SchedulingQueue> {
        self.inner.queue.lock()
    }

    fn nominated_pods_lock(&self) -> MutexGuard<'_, Arc<NominatedPods>> {
        self.inner.nominated_pods.lock()
    }

    /// Nominates `pod` to `node`, replacing its earlier nomination. Callers hold the cache
    /// lock, so a cycle sees nominations change only between cycles.
    fn nominate(&self, pod: &Arc<PodInfo>, node: Sym) {
        Arc::make_mut(&mut self.nominated_pods_lock()).add(node, pod.clone());
    }

    /// Drops pod `uid`'s nomination, if any (callers hold the cache lock).
    fn forget_nomination(&self, uid: &str) {
        let mut pods = self.nominated_pods_lock();
        if pods.node_of(uid).is_some() {
            Arc::make_mut(&mut pods).remove(uid);
        }
    }

    /// The nominations filtering must count, or `None` when no pod is nominated (the common
    /// case: filtering then costs nothing extra). The lock is held only to clone the `Arc`.
    fn nominated_pods(&self) -> Option<Arc<NominatedPods>> {
        let pods = self.nominated_pods_lock();
        (!pods.is_empty()).then(|| Arc::clone(&pods))
    }

    /// Queues `pod` unless a PreEnqueue plugin gates it (its status is returned).
    pub fn enqueue(&self, pod: PodInfo) -> Result<(), Status> {
        for p in &self.inner.profile.pre_enqueue {
            let status = guarded("PreEnqueue", || Ok(p.pre_enqueue(&pod)))?;
            if !status.is_success() {
                return Err(status.with_plugin(p.name()));
            }
        }
        self.queue().add(Arc::new(pod), Instant::now());
        Ok(())
    }

    /// Why the profile's QueueSort plugin is no longer used, if it panicked: an Error status
    /// naming it. The queue then orders by priority, then arrival.
    pub fn queue_sort_failure(&self) -> Option<Status> {
        self.queue().sort_failure().cloned()
    }

    /// Pods in the active queue and in backoff.
    pub fn queue_len(&self) -> (usize, usize) {
        let q = self.queue();
        (q.active_len(), q.backoff_len())
    }

    /// Pops the next pod, runs its scheduling cycle and its binding cycle (inline, or as a
    /// task when it waits at Permit). `None` when the active queue is empty.
    pub async fn schedule_next(&self) -> Option<ScheduleResult> {
        // Run the cycle on a rayon worker: its parallel filter and score then fork inside the
        // pool instead of handing work over from this thread twice per cycle.
        let (info, outcome) = rayon::scope(|_| self.pop_and_schedule())?;
        Some(self.finish(info, outcome).await)
    }

    /// Runs up to `max` scheduling cycles back to back inside the rayon pool. Each assumed
    /// pod is in the cache before the next cycle starts, so later pods see earlier ones.
    fn schedule_batch(&self, max: usize) -> Vec<(QueuedPodInfo, CycleOutcome)> {
        rayon::scope(|_| {
            let mut out = Vec::new();
            while out.len() < max {
                let Some(next) = self.pop_and_schedule() else {
                    break;
                };
                out.push(next);
            }
            out
        })
    }

    /// Pops the next pod and runs its scheduling cycle in one hold of the cache lock, and
    /// requeues it (with backoff) there if the cycle failed. [`Scheduler::remove_pod`] takes
    /// the cache lock too, so it finds a popped pod queued again or assumed, never in
    /// between: a pod deleted before its result is finished does not come back.
    fn pop_and_schedule(&self) -> Option<(QueuedPodInfo, CycleOutcome)> {
        let mut cache = self.cache();
        let info = self.queue().pop(Instant::now())?;
        let outcome = self.scheduling_cycle(&mut cache, &info.pod);
        if let CycleOutcome::Failed(..) = outcome {
            self.queue().requeue_backoff(info.clone(), Instant::now());
        }
        Some((info, outcome))
    }

    /// The binding half for one pod whose scheduling cycle ended with `outcome` (a failed one
    /// is already requeued).
    async fn finish(&self, info: QueuedPodInfo, outcome: CycleOutcome) -> ScheduleResult {
        let pod = info.pod.clone();
        let mut nominated = None;
        let outcome = match outcome {
            CycleOutcome::Failed(status, nomination) => {
                nominated = nomination;
                if status.code() == crate::framework::Code::Error {
                    Outcome::Error(status)
                } else {
                    Outcome::Unschedulable(status)
                }
            }
            CycleOutcome::Assumed {
                node,
                state,
                wait: None,
            } => match self
                .binding_cycle(pod.clone(), node, state, None, Some(info), None)
                .await
            {
                Ok(node) => Outcome::Bound(node),
                Err(status) => Outcome::Error(status),
            },
            CycleOutcome::Assumed { node, state, wait } => {
                let this = self.clone();
                let pod = pod.clone();
                let binding = tokio::spawn(async move {
                    this.binding_cycle(pod, node, state, wait, Some(info), None)
                        .await
                });
                Outcome::Waiting { node, binding }
            }
        };
        ScheduleResult {
            pod,
            outcome,
            nominated,
        }
    }

    /// Schedules until the active queue is empty, then waits for pending bindings. Pods in
    /// backoff are not waited for.
    pub async fn run_until_idle(&self) -> RunSummary {
        let mut summary = RunSummary::default();
        let mut pending = Vec::new();
        loop {
            let batch = self.schedule_batch(BATCH);
            if batch.is_empty() {
                break;
            }
            for (info, outcome) in batch {
                match self.finish(info, outcome).await.outcome {
                    Outcome::Bound(_) => summary.bound += 1,
                    Outcome::Unschedulable(_) => summary.unschedulable += 1,
                    Outcome::Error(_) => summary.errors += 1,
                    Outcome::Waiting { binding, .. } => pending.push(binding),
                }
            }
        }
        for handle in pending {
            match handle.await {
                Ok(Ok(_)) => summary.bound += 1,
                Ok(Err(s)) if s.is_rejected() => summary.unschedulable += 1,
                _ => summary.errors += 1,
            }
        }
        summary
    }

    /// When the earliest backed-off pod becomes ready to retry, if any pod is in backoff.
    pub fn next_backoff(&self) -> Option<Instant> {
        self.queue().next_backoff()
    }

    /// [`Scheduler::run_until_idle`], then again each time a backed-off pod becomes ready
    /// (sleeping until then), until no pod is in backoff or the next retry would be more than
    /// `max_wait` after the call. Counts are per attempt: a pod that fails twice counts twice.
    pub async fn run_until_idle_with_backoff(&self, max_wait: Duration) -> RunSummary {
        let deadline = Instant::now() + max_wait;
        let mut total = RunSummary::default();
        loop {
            let summary = self.run_until_idle().await;
            total.bound += summary.bound;
            total.unschedulable += summary.unschedulable;
            total.errors += summary.errors;
            match self.next_backoff() {
                Some(next) if next <= deadline => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
                }
                _ => break,
            }
        }
        total
    }

    /// Schedules and binds `pod` now, bypassing the queue (the Placement path).
    pub async fn schedule_pod(&self, pod: PodInfo) -> Result<Sym, Status> {
        self.schedule_pod_reserving(pod)
            .await
            .map(|placed| placed.node)
    }

    /// [`Scheduler::schedule_pod`], also reporting the underlay address a Reserve plugin
    /// reserved for the pod ([`crate::plugins::reserved_address`]).
    pub async fn schedule_pod_reserving(&self, pod: PodInfo) -> Result<PodPlacement, Status> {
        let pod = Arc::new(pod);
        let outcome = self.scheduling_cycle(&mut self.cache(), &pod);
        match outcome {
            CycleOutcome::Failed(status, _) => Err(status),
            CycleOutcome::Assumed { node, state, wait } => {
                let address = crate::plugins::reserved_address(&state);
                let node = self
                    .binding_cycle(pod, node, state, wait, None, None)
                    .await?;
                Ok(PodPlacement { node, address })
            }
        }
    }
}
