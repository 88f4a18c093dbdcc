//! The `Scheduler`: hosts a profile's plugins over a cached snapshot, runs scheduling cycles
//! (filter and score in parallel with rayon), assumes pods, and runs binding cycles in which a
//! pod waiting at Permit blocks only its own binding.
//!
//! A node a PostFilter plugin nominates for a pod (where preemption would make room, say) is
//! remembered, and the pod's next scheduling cycle evaluates that node first, as
//! kube-scheduler's `evaluateNominatedNode` does; meanwhile the nomination holds room on the
//! node against pods of lower or equal priority (`RunFilterPluginsWithNominatedPods`): see
//! [`Scheduler::nominated_node`].

mod nominator;
pub mod placement;
pub mod queue;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use parking_lot::{Mutex, MutexGuard};
use rayon::prelude::*;

use crate::framework::{
    CycleState, MAX_NODE_SCORE, MAX_PERMIT_TIMEOUT, NodeSet, PodRemoved, Profile, QueuedPodInfo,
    Status, WaitingPods, num_feasible_nodes_to_find,
};
use crate::interner::Sym;
use crate::snapshot::{NodeInfo, PodInfo, Snapshot};
use nominator::NominatedPods;
use queue::SchedulingQueue;

/// Below this many nodes a batch is filtered or scored on the calling thread.
const PARALLEL_THRESHOLD: usize = 128;
/// Nodes per rayon task.
const CHUNK: usize = 64;
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

/// Cycle state: the node a PostFilter plugin nominated in this cycle.
#[derive(Debug, Clone, Copy)]
struct Nominated(Sym);

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

/// Instances placed through the `Placement` seam: uid → (node, pod).
type Placed = HashMap<Arc<str>, (Sym, Arc<PodInfo>)>;

#[derive(Debug, Default)]
struct Cache {
    snapshot: Snapshot,
    /// Pods assumed (scheduled, not yet bound): uid → node.
    assumed: HashMap<Arc<str>, Sym>,
    /// Assumed pods deleted while their binding cycle ran: [`Scheduler::remove_pod`] already
    /// unreserved them, so the binding cycle must not unreserve, bind or requeue them.
    removed: HashSet<Arc<str>>,
    next_start: usize,
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

enum CycleOutcome {
    Assumed {
        node: Sym,
        state: CycleState,
        wait: Option<(tokio::sync::oneshot::Receiver<Status>, Duration)>,
    },
    /// The status, and the node a PostFilter plugin nominated.
    Failed(Status, Option<Sym>),
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
                placed: Mutex::new(HashMap::new()),
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

    /// Adds or replaces a node (see [`Snapshot::upsert_node`]); backed-off pods are retried.
    pub fn upsert_node(&self, node: NodeInfo) {
        self.cache().snapshot.upsert_node(node);
        self.queue().move_all_to_active();
    }

    /// Adds (or replaces) many nodes at once; backed-off pods are retried, as after
    /// [`Scheduler::upsert_node`] (a node event may make room, like kube-scheduler's
    /// MoveAllToActiveOrBackoffQueue).
    pub fn add_nodes(&self, nodes: impl IntoIterator<Item = NodeInfo>) {
        {
            let mut cache = self.cache();
            for node in nodes {
                cache.snapshot.upsert_node(node);
            }
        }
        self.queue().move_all_to_active();
    }

    /// Removes node `name`.
    pub fn remove_node(&self, name: &str) -> bool {
        let Some(sym) = Sym::lookup(name) else {
            return false;
        };
        self.cache().snapshot.remove_node(sym).is_some()
    }

    /// Records a pod already bound to node `node` (not scheduled by this scheduler).
    pub fn add_bound_pod(&self, node: &str, pod: PodInfo) -> Result<(), Status> {
        self.cache()
            .snapshot
            .add_pod(Sym::new(node), Arc::new(pod))
            .map_err(|n| Status::error(format!("node `{n}` is unknown")))
    }

    /// Forgets pod `uid` (deleted); backed-off pods are retried. A pod in the cache (bound,
    /// assumed or waiting at Permit) is unreserved with [`PodRemoved`] in the cycle state, so
    /// plugins give back what it held (a gang stops counting it); a pod waiting at Permit is
    /// rejected, and a pod whose binding cycle is running neither unreserves again nor binds
    /// nor is requeued. Its nominated node ([`Scheduler::nominated_node`]) is forgotten.
    pub fn remove_pod(&self, uid: &str) -> Option<Arc<PodInfo>> {
        let removed = {
            let mut cache = self.cache();
            // Under the cache lock, like a pop and its scheduling cycle (and a failed pod's
            // requeue): the pod is then either queued or in the cache, never in between.
            {
                let mut queue = self.queue();
                queue.remove(uid);
                queue.move_all_to_active();
            }
            self.forget_nomination(uid);
            let node = cache.snapshot.node_of_pod(uid).map(|n| n.name);
            if let Some((key, _)) = cache.assumed.remove_entry(uid) {
                cache.removed.insert(key);
                self.note_removals(&cache);
            }
            let removed = cache.snapshot.remove_pod(uid);
            if let (Some(node), Some(pod)) = (node, &removed) {
                let mut state = CycleState::new();
                state.write(PodRemoved);
                for p in self.inner.profile.reserve.iter().rev() {
                    let _ = guarded("Unreserve", || {
                        p.unreserve(&mut state, pod, node);
                        Ok(())
                    });
                }
            }
            removed
        };
        self.inner
            .waiting
            .reject(uid, "Scheduler", "the pod was deleted");
        removed
    }

    /// Publishes `cache.removed.len()` (called under the cache lock after changing it).
    fn note_removals(&self, cache: &Cache) {
        self.inner
            .removals
            .store(cache.removed.len(), Ordering::Relaxed);
    }

    /// Whether pod `uid` was deleted while assumed; takes the cache lock only while some
    /// deletion is pending (a deletion racing with this check is caught after binding).
    fn was_removed(&self, uid: &str) -> bool {
        self.inner.removals.load(Ordering::Relaxed) != 0 && self.cache().removed.contains(uid)
    }

    /// Reads the cached snapshot.
    pub fn with_snapshot<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> R {
        f(&self.cache().snapshot)
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
                .binding_cycle(pod.clone(), node, state, None, Some(info))
                .await
            {
                Ok(node) => Outcome::Bound(node),
                Err(status) => Outcome::Error(status),
            },
            CycleOutcome::Assumed { node, state, wait } => {
                let this = self.clone();
                let pod = pod.clone();
                let binding = tokio::spawn(async move {
                    this.binding_cycle(pod, node, state, wait, Some(info)).await
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
        let pod = Arc::new(pod);
        let outcome = self.scheduling_cycle(&mut self.cache(), &pod);
        match outcome {
            CycleOutcome::Failed(status, _) => Err(status),
            CycleOutcome::Assumed { node, state, wait } => {
                self.binding_cycle(pod, node, state, wait, None).await
            }
        }
    }

    /// Filters `pod` over `candidates` of `snapshot` (all nodes when `None`; no sampling) and
    /// scores the feasible ones when `score` is set. The extender uses this. Pods this
    /// scheduler nominated to a node hold room there as in a scheduling cycle (see
    /// [`Scheduler::nominated_node`]), on the nodes of `snapshot` with their names.
    pub fn evaluate(
        &self,
        pod: &PodInfo,
        snapshot: &Snapshot,
        candidates: Option<&[u32]>,
        score: bool,
    ) -> Result<(CycleState, Evaluation), Status> {
        // On a rayon worker, so the parallel parts fork inside the pool.
        rayon::scope(|_| self.evaluate_here(pod, snapshot, candidates, score))
    }

    fn evaluate_here(
        &self,
        pod: &PodInfo,
        snapshot: &Snapshot,
        candidates: Option<&[u32]>,
        score: bool,
    ) -> Result<(CycleState, Evaluation), Status> {
        guarded("filter and score", || {
            let mut state = CycleState::new();
            let set = self.pre_filter(&mut state, pod, snapshot)?;
            let all: Vec<u32>;
            let order: &[u32] = match candidates {
                Some(c) => c,
                None => {
                    all = (0..snapshot.len() as u32).collect();
                    &all
                }
            };
            let mut eval = Evaluation::default();
            let order: Vec<u32> = match &set {
                Some(set) => order
                    .iter()
                    .copied()
                    .filter(|&i| {
                        let keep = set.contains(&snapshot.nodes()[i as usize].name);
                        if !keep {
                            eval.failed
                                .push((i, Status::unresolvable("node(s) excluded by PreFilter")));
                        }
                        keep
                    })
                    .collect(),
                None => order.to_vec(),
            };
            let nominated_pods = self.nominated_pods();
            self.filter_nodes(
                &state,
                pod,
                snapshot,
                Order::List(&order),
                usize::MAX,
                nominated_pods.as_deref(),
                &mut eval,
            )?;
            if score && !eval.feasible.is_empty() {
                let (scores, max) = self.score_nodes(&mut state, pod, snapshot, &eval.feasible)?;
                eval.scores = scores;
                eval.max_score = max;
            }
            Ok((state, eval))
        })
    }

    fn pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
    ) -> Result<Option<NodeSet>, Status> {
        let mut set: Option<NodeSet> = None;
        let mut skip_filter = Vec::new();
        for (i, p) in self.inner.profile.pre_filter.iter().enumerate() {
            let (nodes, status) = p.pre_filter(state, pod, snapshot);
            if status.is_skip() {
                if let Some(f) = self.inner.prefilter_pairs[i] {
                    skip_filter.push(f);
                }
                continue;
            }
            if !status.is_success() {
                return Err(status.with_plugin(p.name()));
            }
            if let Some(nodes) = nodes {
                set = Some(match set {
                    None => nodes,
                    Some(prev) => prev.intersection(&nodes).copied().collect(),
                });
            }
        }
        state.set_skips(skip_filter, Vec::new());
        Ok(set)
    }

    /// Runs the active filters for `pod` on `node`, counting the pods `nominated` to it (see
    /// [`filter_with_nominated`]).
    fn filter_one(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        nominated: Option<&NominatedPods>,
    ) -> Status {
        let active = self.active_filters(state);
        filter_with_nominated(&active, state, pod, node, nominated)
    }

    /// The Filter plugins not disabled by their PreFilter's Skip.
    fn active_filters(&self, state: &CycleState) -> Vec<&dyn crate::framework::FilterPlugin> {
        let skip = state.skip_filter();
        self.inner
            .profile
            .filter
            .iter()
            .enumerate()
            .filter(|(j, _)| !skip.contains(j))
            .map(|(_, f)| &**f)
            .collect()
    }

    /// Filters `order` until `target` feasible nodes are found (in parallel batches),
    /// counting the pods `nominated` to each node (see [`filter_with_nominated`]; `None`: no
    /// pod is nominated anywhere).
    // Eight arguments: bundling them into a struct used by this one function would only move
    // the list.
    #[allow(clippy::too_many_arguments)]
    fn filter_nodes(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
        order: Order<'_>,
        target: usize,
        nominated: Option<&NominatedPods>,
        eval: &mut Evaluation,
    ) -> Result<(), Status> {
        let nodes = snapshot.nodes();
        let active = self.active_filters(state);
        let mut pos = 0;
        let mut buf = Vec::new();
        while pos < order.len() && eval.feasible.len() < target {
            let want = target.saturating_sub(eval.feasible.len());
            // First batch: a little more than needed; later ones: scaled by the feasible
            // ratio seen so far.
            let len = if pos == 0 {
                want.saturating_add(want / 16 + 8)
            } else {
                want.saturating_mul(pos) / eval.feasible.len().max(1) + 16
            }
            .min(order.len() - pos);
            buf.clear();
            order.fill(pos, len, &mut buf);
            let batch = &buf[..];
            pos += len;
            let check = |&i: &u32| {
                let node = &nodes[i as usize];
                (
                    i,
                    filter_with_nominated(&active, state, pod, node, nominated),
                )
            };
            let results: Vec<(u32, Status)> = if batch.len() < PARALLEL_THRESHOLD {
                batch.iter().map(check).collect()
            } else {
                batch.par_iter().with_min_len(CHUNK).map(check).collect()
            };
            for (i, status) in results {
                if status.is_success() {
                    if eval.feasible.len() < target {
                        eval.feasible.push(i);
                    }
                } else if status.code() == crate::framework::Code::Error {
                    return Err(status);
                } else {
                    eval.failed.push((i, status));
                }
            }
        }
        eval.examined += pos;
        Ok(())
    }

    /// Weighted totals for `feasible`.
    fn score_nodes(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
        feasible: &[u32],
    ) -> Result<(Vec<i64>, i64), Status> {
        let profile = &self.inner.profile;
        let nodes = snapshot.nodes();
        let feasible_nodes: Vec<&NodeInfo> = feasible.iter().map(|&i| &nodes[i as usize]).collect();
        let mut skip_score = Vec::new();
        for (i, p) in profile.pre_score.iter().enumerate() {
            let status = p.pre_score(state, pod, snapshot, &feasible_nodes);
            if status.is_skip() {
                if let Some(s) = self.inner.prescore_pairs[i] {
                    skip_score.push(s);
                }
            } else if !status.is_success() {
                return Err(status.with_plugin(p.name()));
            }
        }
        *state.skip_score_mut() = skip_score;
        let state: &CycleState = state;
        let active: Vec<usize> = (0..profile.score.len())
            .filter(|j| !state.skip_score().contains(j))
            .collect();
        let mut totals = vec![0i64; feasible.len()];
        let max: i64 = active
            .iter()
            .map(|&j| i64::from(profile.score[j].1) * MAX_NODE_SCORE)
            .sum();
        if active.is_empty() {
            return Ok((totals, max));
        }
        let a = active.len();
        let score_chunk = |chunk: &[&NodeInfo]| -> Result<Vec<i64>, Status> {
            let mut out = Vec::with_capacity(chunk.len() * a);
            for node in chunk {
                for &j in &active {
                    let plugin = &profile.score[j].0;
                    out.push(
                        plugin
                            .score(state, pod, node)
                            .map_err(|s| s.with_plugin(plugin.name()))?,
                    );
                }
            }
            Ok(out)
        };
        let raw: Vec<i64> = if feasible_nodes.len() < PARALLEL_THRESHOLD {
            score_chunk(&feasible_nodes)?
        } else {
            let parts: Result<Vec<Vec<i64>>, Status> =
                feasible_nodes.par_chunks(CHUNK).map(score_chunk).collect();
            parts?.concat()
        };
        let mut column = vec![0i64; feasible.len()];
        for (k, &j) in active.iter().enumerate() {
            let (plugin, weight) = &profile.score[j];
            for (n, slot) in column.iter_mut().enumerate() {
                *slot = raw[n * a + k];
            }
            let status = plugin.normalize(state, pod, &mut column);
            if !status.is_success() {
                return Err(status.with_plugin(plugin.name()));
            }
            for (n, &s) in column.iter().enumerate() {
                if !(0..=MAX_NODE_SCORE).contains(&s) {
                    return Err(Status::error(format!(
                        "plugin {} returned score {s} for node {}, outside 0..={MAX_NODE_SCORE}",
                        plugin.name(),
                        feasible_nodes[n].name
                    ))
                    .with_plugin(plugin.name()));
                }
                totals[n] += s * i64::from(*weight);
            }
        }
        Ok((totals, max))
    }

    /// Filter (sampled) and score over the whole snapshot, then pick a node; a `nominated`
    /// node that passes Filter is taken first, without scoring (see
    /// [`Scheduler::nominated_node`]). Returns the node and how many nodes the rotating
    /// full scan examined. Pure with respect to the cache.
    fn find_node(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
        start: usize,
        nominated: Option<Sym>,
        nominated_pods: Option<&NominatedPods>,
    ) -> Result<(Sym, usize), Status> {
        let n = snapshot.len();
        if n == 0 {
            return Err(Status::unschedulable("no nodes available to schedule pods"));
        }
        let set = self.pre_filter(state, pod, snapshot)?;
        if let Some(node) = nominated {
            if self.nominated_node_fits(state, pod, snapshot, set.as_ref(), node, nominated_pods) {
                return Ok((node, 0));
            }
        }
        let mut eval = Evaluation::default();
        let target = num_feasible_nodes_to_find(n, self.inner.profile.percentage_of_nodes_to_score);
        let excluded = match &set {
            Some(set) => {
                let order: Vec<u32> = set
                    .iter()
                    .filter_map(|name| snapshot.index_of(*name).map(|i| i as u32))
                    .collect();
                self.filter_nodes(
                    state,
                    pod,
                    snapshot,
                    Order::List(&order),
                    target,
                    nominated_pods,
                    &mut eval,
                )?;
                n - order.len()
            }
            None => {
                let start = start % n;
                let order = Order::Rotated { start, n };
                self.filter_nodes(
                    state,
                    pod,
                    snapshot,
                    order,
                    target,
                    nominated_pods,
                    &mut eval,
                )?;
                0
            }
        };
        if eval.feasible.is_empty() {
            let statuses: Vec<(Sym, Status)> = eval
                .failed
                .iter()
                .map(|(i, s)| (snapshot.nodes()[*i as usize].name, s.clone()))
                .collect();
            for p in &self.inner.profile.post_filter {
                let (nominated, status) = p.post_filter(state, pod, snapshot, &statuses);
                if let (true, Some(node)) = (status.is_success(), nominated) {
                    // Nomination only: the pod is retried after its backoff.
                    state.write(Nominated(node));
                    break;
                }
            }
            return Err(diagnose(n, &eval.failed, excluded, pod));
        }
        let examined = eval.examined;
        if eval.feasible.len() == 1 {
            return Ok((snapshot.nodes()[eval.feasible[0] as usize].name, examined));
        }
        let (totals, _) = self.score_nodes(state, pod, snapshot, &eval.feasible)?;
        let mut best = 0;
        let mut ties = 0u32;
        for (k, &t) in totals.iter().enumerate() {
            if t > totals[best] {
                best = k;
                ties = 1;
            } else if t == totals[best] {
                ties += 1;
                if ties > 1 && fastrand::u32(0..ties) == 0 {
                    best = k;
                }
            }
        }
        Ok((
            snapshot.nodes()[eval.feasible[best] as usize].name,
            examined,
        ))
    }

    /// Whether the pod's nominated node `node` passes Filter (and is in the PreFilter node
    /// set, if any): upstream's `evaluateNominatedNode`. A node that is gone or rejects the
    /// pod sends the cycle to the full evaluation, and so does a filter Error (logged; the
    /// full evaluation meets the node again and reports it).
    fn nominated_node_fits(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
        set: Option<&NodeSet>,
        node: Sym,
        nominated_pods: Option<&NominatedPods>,
    ) -> bool {
        let Some(index) = snapshot.index_of(node) else {
            return false;
        };
        if set.is_some_and(|set| !set.contains(&node)) {
            return false;
        }
        // Other pods nominated here count; the pod's own nomination does not.
        let status = self.filter_one(state, pod, &snapshot.nodes()[index], nominated_pods);
        if status.code() == crate::framework::Code::Error {
            tracing::warn!(
                pod = %pod.key(),
                node = %node,
                %status,
                "evaluation failed on the nominated node; filtering every node"
            );
        }
        status.is_success()
    }

    fn scheduling_cycle(&self, cache: &mut Cache, pod: &Arc<PodInfo>) -> CycleOutcome {
        let profile = &self.inner.profile;
        let mut state = CycleState::new();
        let start = cache.next_start;
        let nominated_pods = self.nominated_pods();
        let nominated = nominated_pods.as_ref().and_then(|n| n.node_of(&pod.uid));
        let found = guarded("filter and score", || {
            self.find_node(
                &mut state,
                pod,
                &cache.snapshot,
                start,
                nominated,
                nominated_pods.as_deref(),
            )
        });
        let (node, examined) = match found {
            Ok(found) => found,
            Err(status) => {
                // This cycle's nomination replaces the last one. Without one, the last is kept
                // (upstream's no-op nominating mode: a preemption plugin that waits for its
                // victims to terminate nominates nothing), except after an Error, which
                // clears it; the next cycle re-checks a kept nomination before every node.
                let nominated = state.read::<Nominated>().map(|n| n.0);
                match nominated {
                    Some(node) => self.nominate(pod, node),
                    None if status.code() == crate::framework::Code::Error => {
                        self.forget_nomination(&pod.uid);
                    }
                    None => {}
                }
                return CycleOutcome::Failed(status, nominated);
            }
        };
        let n = cache.snapshot.len().max(1);
        cache.next_start = (start + examined) % n;
        // Assume; the pod no longer needs its nomination (upstream drops it from the nominator
        // on assume and clears it when the binding fails).
        self.forget_nomination(&pod.uid);
        if cache.snapshot.add_pod(node, pod.clone()).is_err() {
            return CycleOutcome::Failed(Status::error(format!("node `{node}` vanished")), None);
        }
        cache.assumed.insert(pod.uid.clone(), node);
        // Reserve.
        for (i, p) in profile.reserve.iter().enumerate() {
            let status =
                guarded("Reserve", || Ok(p.reserve(&mut state, pod, node))).unwrap_or_else(|s| s);
            if !status.is_success() {
                let _ = i;
                self.unreserve_locked(cache, &mut state, pod, node);
                return CycleOutcome::Failed(status.with_plugin(p.name()), None);
            }
        }
        // Permit.
        let mut pending = HashSet::new();
        let mut timeout = Duration::ZERO;
        for p in &profile.permit {
            let (status, wait) = guarded("Permit", || {
                Ok(p.permit(&state, pod, node, &self.inner.waiting))
            })
            .unwrap_or_else(|s| (s, Duration::ZERO));
            match status.code() {
                crate::framework::Code::Success | crate::framework::Code::Skip => {}
                crate::framework::Code::Wait => {
                    pending.insert(p.name().to_owned());
                    timeout = timeout.max(wait.min(MAX_PERMIT_TIMEOUT));
                }
                _ => {
                    self.unreserve_locked(cache, &mut state, pod, node);
                    return CycleOutcome::Failed(status.with_plugin(p.name()), None);
                }
            }
        }
        let wait = if pending.is_empty() {
            None
        } else {
            Some((self.inner.waiting.add(pod.clone(), pending), timeout))
        };
        CycleOutcome::Assumed { node, state, wait }
    }

    /// Runs Unreserve on every Reserve plugin in reverse order and forgets the assumed pod.
    fn unreserve_locked(
        &self,
        cache: &mut Cache,
        state: &mut CycleState,
        pod: &PodInfo,
        node: Sym,
    ) {
        for p in self.inner.profile.reserve.iter().rev() {
            let _ = guarded("Unreserve", || {
                p.unreserve(state, pod, node);
                Ok(())
            });
        }
        if cache.assumed.remove(&pod.uid).is_some() {
            cache.snapshot.remove_pod(&pod.uid);
        }
    }

    /// The binding cycle. On failure the pod is unreserved and `retry` (its queue entry) is
    /// requeued with backoff, in one hold of the cache lock, unless [`Scheduler::remove_pod`]
    /// deleted it meanwhile: that already ran Unreserve with [`PodRemoved`], and running it
    /// again from this cycle's state would give back what a replacement holds now (an
    /// underlay address kept under a stateful identity, say).
    async fn binding_cycle(
        &self,
        pod: Arc<PodInfo>,
        node: Sym,
        mut state: CycleState,
        wait: Option<(tokio::sync::oneshot::Receiver<Status>, Duration)>,
        retry: Option<QueuedPodInfo>,
    ) -> Result<Sym, Status> {
        let result = self.bind_after_permit(&pod, node, &state, wait).await;
        {
            let mut cache = self.cache();
            let removed = !cache.removed.is_empty() && cache.removed.remove(&pod.uid);
            if removed {
                self.note_removals(&cache);
            }
            if result.is_ok() {
                cache.assumed.remove(&pod.uid);
            } else if !removed {
                self.unreserve_locked(&mut cache, &mut state, &pod, node);
                if let Some(info) = retry {
                    self.queue().requeue_backoff(info, Instant::now());
                }
            }
        }
        if result.is_ok() {
            for p in &self.inner.profile.post_bind {
                let _ = AssertUnwindSafe(p.post_bind(&state, &pod, node))
                    .catch_unwind()
                    .await;
            }
        }
        result
    }

    /// Waits at Permit, then runs the binding plugins unless the pod was deleted meanwhile.
    async fn bind_after_permit(
        &self,
        pod: &Arc<PodInfo>,
        node: Sym,
        state: &CycleState,
        wait: Option<(tokio::sync::oneshot::Receiver<Status>, Duration)>,
    ) -> Result<Sym, Status> {
        if let Some((rx, timeout)) = wait {
            let status = match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(status)) => status,
                Ok(Err(_)) => Status::error("permit waiter dropped"),
                Err(_) => {
                    self.inner.waiting.remove(&pod.uid);
                    Status::unschedulable(format!(
                        "rejected at Permit: timed out after {timeout:?}"
                    ))
                }
            };
            if !status.is_success() {
                return Err(status);
            }
        }
        if self.was_removed(&pod.uid) {
            return Err(Status::unschedulable(format!(
                "{} was deleted before binding",
                pod.key()
            )));
        }
        let result = AssertUnwindSafe(self.bind_plugins(state, pod, node))
            .catch_unwind()
            .await
            .unwrap_or_else(|payload| {
                Err(Status::error(format!(
                    "plugin panicked during binding: {}",
                    panic_message(&*payload)
                )))
            });
        result.map(|()| node)
    }

    async fn bind_plugins(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        node: Sym,
    ) -> Result<(), Status> {
        for p in &self.inner.profile.pre_bind {
            let status = p.pre_bind(state, pod, node).await;
            if !status.is_success() {
                return Err(status.with_plugin(p.name()));
            }
        }
        for p in &self.inner.profile.bind {
            let status = p.bind(state, pod, node).await;
            if status.is_skip() {
                continue;
            }
            if status.is_success() {
                return Ok(());
            }
            return Err(status.with_plugin(p.name()));
        }
        Err(Status::error("every bind plugin skipped the pod"))
    }

    /// Checks `pod` against node `node` again, assumes and reserves it there, and runs the
    /// binding plugins (no Permit): the extender's bind verb, which must re-check capacity
    /// under the cache lock because extenders have no Reserve of their own. The re-check
    /// counts pods nominated to the node, as the filter verb does (see
    /// [`Scheduler::nominated_node`]).
    pub async fn bind_to_node(&self, pod: PodInfo, node: &str) -> Result<Sym, Status> {
        let pod = Arc::new(pod);
        let node = Sym::new(node);
        let state = {
            let mut cache = self.cache();
            let mut state = CycleState::new();
            let nominated_pods = self.nominated_pods();
            let checked = guarded("filter", || {
                let snapshot = &cache.snapshot;
                let Some(index) = snapshot.index_of(node) else {
                    return Err(Status::unresolvable(format!("node `{node}` is unknown")));
                };
                let set = self.pre_filter(&mut state, &pod, snapshot)?;
                if set.is_some_and(|set| !set.contains(&node)) {
                    return Err(Status::unresolvable("node(s) excluded by PreFilter"));
                }
                let status = self.filter_one(
                    &state,
                    &pod,
                    &snapshot.nodes()[index],
                    nominated_pods.as_deref(),
                );
                if status.is_success() {
                    Ok(())
                } else {
                    Err(status)
                }
            });
            checked?;
            self.forget_nomination(&pod.uid);
            if cache.snapshot.add_pod(node, pod.clone()).is_err() {
                return Err(Status::error(format!("node `{node}` vanished")));
            }
            cache.assumed.insert(pod.uid.clone(), node);
            for p in &self.inner.profile.reserve {
                let status = guarded("Reserve", || Ok(p.reserve(&mut state, &pod, node)))
                    .unwrap_or_else(|s| s);
                if !status.is_success() {
                    self.unreserve_locked(&mut cache, &mut state, &pod, node);
                    return Err(status.with_plugin(p.name()));
                }
            }
            state
        };
        self.binding_cycle(pod, node, state, None, None).await
    }

    /// Unreserves and forgets a pod bound by [`Scheduler::schedule_pod`] (Placement release).
    pub(crate) fn release_pod(&self, uid: &str) -> bool {
        let mut cache = self.cache();
        self.forget_nomination(uid);
        let Some(pod) = cache.snapshot.node_of_pod(uid).and_then(|n| {
            n.pods
                .iter()
                .find(|p| &*p.uid == uid)
                .map(|p| (n.name, p.clone()))
        }) else {
            return false;
        };
        let (node, pod) = pod;
        let mut state = CycleState::new();
        state.write(PodRemoved);
        for p in self.inner.profile.reserve.iter().rev() {
            let _ = guarded("Unreserve", || {
                p.unreserve(&mut state, &pod, node);
                Ok(())
            });
        }
        cache.assumed.remove(uid);
        cache.snapshot.remove_pod(uid);
        true
    }

    pub(crate) fn placed(&self) -> MutexGuard<'_, Placed> {
        self.inner.placed.lock()
    }

    /// Held across one whole `Placement` call.
    pub(crate) async fn placing(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.placing.lock().await
    }

    pub(crate) fn replace_snapshot(&self, snapshot: Snapshot) {
        let mut cache = self.cache();
        cache.snapshot = snapshot;
        cache.assumed.clear();
    }
}

/// The order in which candidates are filtered.
#[derive(Debug, Clone, Copy)]
enum Order<'a> {
    /// These indices.
    List(&'a [u32]),
    /// All `n` nodes, starting at `start` and wrapping around.
    Rotated { start: usize, n: usize },
}

impl Order<'_> {
    fn len(&self) -> usize {
        match self {
            Order::List(l) => l.len(),
            Order::Rotated { n, .. } => *n,
        }
    }

    fn fill(&self, from: usize, len: usize, out: &mut Vec<u32>) {
        match self {
            Order::List(l) => out.extend_from_slice(&l[from..from + len]),
            Order::Rotated { start, n } => {
                out.extend((from..from + len).map(|k| ((start + k) % n) as u32));
            }
        }
    }
}

fn run_filters(
    active: &[&dyn crate::framework::FilterPlugin],
    state: &CycleState,
    pod: &PodInfo,
    node: &NodeInfo,
) -> Status {
    for f in active {
        let status = f.filter(state, pod, node);
        if !status.is_success() {
            return status.with_plugin(f.name());
        }
    }
    Status::success()
}

/// kube-scheduler's `RunFilterPluginsWithNominatedPods`: when pods of priority at least
/// `pod`'s (other than `pod`) are nominated to `node`, the filters run on a copy of the node
/// with them added, so the room they were nominated for is held (NodeResourcesFit counts
/// their requests and pod slots, NodePorts their host ports); if that passes, the filters run
/// again on the node as it is (a pod whose affinity is satisfied only by a nominated pod must
/// not rely on it). Both must pass. Without such pods this is [`run_filters`].
///
/// Upstream also updates the PreFilter state through the PreFilter extensions (`AddPod`) for
/// the first run; this framework has no such extension, so plugins whose Filter reads what
/// their PreFilter computed from the snapshot (InterPodAffinity, PodTopologySpread,
/// UnderlayIp) do not see nominated pods.
fn filter_with_nominated(
    active: &[&dyn crate::framework::FilterPlugin],
    state: &CycleState,
    pod: &PodInfo,
    node: &NodeInfo,
    nominated: Option<&NominatedPods>,
) -> Status {
    let Some(with_nominated) = nominated.and_then(|n| n.node_with_nominated(pod, node)) else {
        return run_filters(active, state, pod, node);
    };
    let status = run_filters(active, state, pod, &with_nominated);
    if !status.is_success() {
        return status;
    }
    run_filters(active, state, pod, node)
}

/// "0/5 nodes are available: 3 Insufficient cpu, 2 node(s) had untolerated taint."
fn diagnose(total: usize, failed: &[(u32, Status)], excluded: usize, pod: &PodInfo) -> Status {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut resolvable = false;
    for (_, status) in failed {
        if status.code() == crate::framework::Code::Unschedulable {
            resolvable = true;
        }
        *counts.entry(status.message()).or_default() += 1;
    }
    if excluded > 0 {
        *counts
            .entry("node(s) excluded by PreFilter".to_owned())
            .or_default() += excluded;
    }
    let parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    let message = format!(
        "0/{total} nodes are available for {}: {}",
        pod.key(),
        parts.join(", ")
    );
    if resolvable {
        Status::unschedulable(message)
    } else {
        Status::unresolvable(message)
    }
}
