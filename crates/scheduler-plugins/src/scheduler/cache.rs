//! The scheduler's cache: the snapshot with assumed pods, and the changes the host makes to
//! it (nodes and bound pods added or removed, pods deleted, Placement's snapshot swaps).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;

use super::{Scheduler, guarded};
use crate::framework::{CycleState, PodRemoved, Status};
use crate::interner::Sym;
use crate::snapshot::{NodeInfo, PodInfo, Snapshot};

/// Instances placed through the `Placement` seam: uid → (node, pod).
pub(super) type Placed = HashMap<Arc<str>, (Sym, Arc<PodInfo>)>;

#[derive(Debug, Default)]
pub(super) struct Cache {
    pub(super) snapshot: Snapshot,
    /// Pods assumed (scheduled, not yet bound): uid → node.
    pub(super) assumed: HashMap<Arc<str>, Sym>,
    /// Assumed pods deleted while their binding cycle ran: [`Scheduler::remove_pod`] already
    /// unreserved them, so the binding cycle must not unreserve, bind or requeue them.
    pub(super) removed: HashSet<Arc<str>>,
    pub(super) next_start: usize,
}

impl Scheduler {
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
    pub(super) fn note_removals(&self, cache: &Cache) {
        self.inner
            .removals
            .store(cache.removed.len(), Ordering::Relaxed);
    }

    /// Whether pod `uid` was deleted while assumed; takes the cache lock only while some
    /// deletion is pending (a deletion racing with this check is caught after binding).
    pub(super) fn was_removed(&self, uid: &str) -> bool {
        self.inner.removals.load(Ordering::Relaxed) != 0 && self.cache().removed.contains(uid)
    }

    /// Reads the cached snapshot.
    pub fn with_snapshot<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> R {
        f(&self.cache().snapshot)
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
