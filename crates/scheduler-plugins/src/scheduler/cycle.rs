//! The scheduling cycle: PreFilter, Filter (sampled, in parallel batches), PostFilter,
//! PreScore, Score and NormalizeScore, the pick, then assume, Reserve and Permit under the
//! cache lock; and [`Scheduler::evaluate`], the same filter and score without the pick
//! (the extender's verbs).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rayon::prelude::*;

use super::cache::Cache;
use super::nominator::NominatedPods;
use super::{Evaluation, Scheduler, guarded};
use crate::framework::{
    CycleState, MAX_NODE_SCORE, MAX_PERMIT_TIMEOUT, NodeSet, Status, num_feasible_nodes_to_find,
};
use crate::interner::Sym;
use crate::snapshot::{NodeInfo, PodInfo, Snapshot};

/// Below this many nodes a batch is filtered or scored on the calling thread.
const PARALLEL_THRESHOLD: usize = 128;

/// Nodes per rayon task.
const CHUNK: usize = 64;

/// Cycle state: the node a PostFilter plugin nominated in this cycle.
#[derive(Debug, Clone, Copy)]
struct Nominated(Sym);

pub(super) enum CycleOutcome {
    Assumed {
        node: Sym,
        state: CycleState,
        wait: Option<(tokio::sync::oneshot::Receiver<Status>, Duration)>,
    },
    /// The status, and the node a PostFilter plugin nominated.
    Failed(Status, Option<Sym>),
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
    pub(super) fn len(&self) -> usize {
        match self {
            Order::List(l) => l.len(),
            Order::Rotated { n, .. } => *n,
        }
    }

    pub(super) fn fill(&self, from: usize, len: usize, out: &mut Vec<u32>) {
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

impl Scheduler {
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
        let nodes = candidates.map_or(snapshot.len(), <[u32]>::len);
        if nodes < PARALLEL_THRESHOLD || rayon::current_thread_index().is_some() {
            // Nothing forks below the threshold (and a rayon worker forks in place): running
            // here spares the extender's request thread a hand-off to a rayon worker and back,
            // two thread wake-ups per call that cost more than a small cluster's filter.
            return self.evaluate_here(pod, snapshot, candidates, score);
        }
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

    pub(super) fn pre_filter(
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
    pub(super) fn filter_one(
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
        if let Some(node) = nominated
            && self.nominated_node_fits(state, pod, snapshot, set.as_ref(), node, nominated_pods)
        {
            return Ok((node, 0));
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

    pub(super) fn scheduling_cycle(&self, cache: &mut Cache, pod: &Arc<PodInfo>) -> CycleOutcome {
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
}
