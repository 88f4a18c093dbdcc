//! The binding cycle: wait at Permit, PreBind, Bind (until a plugin does not Skip) and
//! PostBind, with Unreserve and a requeue on failure; and [`Scheduler::bind_to_node`], the
//! extender's bind (re-check, assume, Reserve, bind).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;

use super::cache::Cache;
use super::{Scheduler, guarded, panic_message};
use crate::framework::{BindPlugin, CycleState, QueuedPodInfo, Status};
use crate::interner::Sym;
use crate::snapshot::PodInfo;

impl Scheduler {
    /// Runs Unreserve on every Reserve plugin in reverse order and forgets the assumed pod.
    pub(super) fn unreserve_locked(
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
    pub(super) async fn binding_cycle(
        &self,
        pod: Arc<PodInfo>,
        node: Sym,
        mut state: CycleState,
        wait: Option<(tokio::sync::oneshot::Receiver<Status>, Duration)>,
        retry: Option<QueuedPodInfo>,
        binder: Option<&dyn BindPlugin>,
    ) -> Result<Sym, Status> {
        let result = self
            .bind_after_permit(&pod, node, &state, wait, binder)
            .await;
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
        binder: Option<&dyn BindPlugin>,
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
        let result = AssertUnwindSafe(self.bind_plugins(state, pod, node, binder))
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

    /// PreBind, then `binder` when given (in place of the profile's Bind plugins), else the
    /// profile's Bind plugins until one does not Skip.
    async fn bind_plugins(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        node: Sym,
        binder: Option<&dyn BindPlugin>,
    ) -> Result<(), Status> {
        for p in &self.inner.profile.pre_bind {
            let status = p.pre_bind(state, pod, node).await;
            if !status.is_success() {
                return Err(status.with_plugin(p.name()));
            }
        }
        if let Some(p) = binder {
            let status = p.bind(state, pod, node).await;
            return if status.is_success() {
                Ok(())
            } else {
                Err(status.with_plugin(p.name()))
            };
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
        self.bind_to_node_via(pod, node, None).await
    }

    /// [`Scheduler::bind_to_node`] with `binder` in place of the profile's Bind plugins when
    /// given: the extender's bind verb creates the Binding on the API server this way, after
    /// PreBind (an underlay address committed) and with the usual Unreserve when it fails.
    pub async fn bind_to_node_via(
        &self,
        pod: PodInfo,
        node: &str,
        binder: Option<&dyn BindPlugin>,
    ) -> Result<Sym, Status> {
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
        self.binding_cycle(pod, node, state, None, None, binder)
            .await
    }
}
