//! [`SnapshotSync`]: keeps a rorqual [`Scheduler`]'s cache in step with a cluster from Node and
//! Pod watches: nodes upserted and removed, pods bound elsewhere recorded on their nodes, pods
//! gone forgotten, and pending pods for a given scheduler name queued. Both a scheduler of its
//! own (`spec.schedulerName: rorqual`) and an extender in cache-capable mode
//! (`nodeCacheCapable: true`, where kube-scheduler sends node names only) need this.
//!
//! The decisions are pure ([`SyncState`]); the watches and the scheduler calls are the shell.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use rorqual_scheduler::Scheduler;
use rorqual_scheduler::kube::{node_from_json, pod_from_json};
use tokio::sync::Notify;

use crate::watch_errors::WatchErrors;

/// What one pod event means for the scheduler's cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodAction {
    /// Nothing to do (already known, or someone else's pending pod).
    Ignore,
    /// Record the pod bound to node `node`.
    Bound {
        /// The node.
        node: String,
    },
    /// Queue the pod for scheduling.
    Queue,
    /// Forget the pod (deleted, finished, or being deleted).
    Forget,
}

/// What the sync knows: which pods are in the scheduler's cache or queue, and which nodes.
#[derive(Debug, Default)]
pub struct SyncState {
    /// Pods bound (in the cache), by uid → node.
    bound: HashMap<String, String>,
    /// Pods queued, by uid.
    queued: HashSet<String>,
    /// Nodes known, by name.
    nodes: HashSet<String>,
    /// Uids and node names seen since a (re)list began.
    relist_pods: Option<HashSet<String>>,
    relist_nodes: Option<HashSet<String>>,
}

impl SyncState {
    /// What pod `pod` (seen now) means, for a scheduler that queues pods naming
    /// `scheduler_name` (none: queue nothing, as an extender), and records it.
    pub fn pod(&mut self, pod: &Pod, scheduler_name: Option<&str>) -> PodAction {
        let Some(uid) = pod.metadata.uid.clone() else {
            return PodAction::Ignore;
        };
        if let Some(seen) = &mut self.relist_pods {
            seen.insert(uid.clone());
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let finished = matches!(phase, Some("Succeeded" | "Failed"));
        let spec = pod.spec.as_ref();
        let bound = spec.is_some_and(|s| s.node_name.is_some());
        // A terminating pod still holds its node's resources (and its address) until it is
        // gone, as in kube-scheduler's cache; an unbound one is not scheduled any more.
        if finished || (pod.metadata.deletion_timestamp.is_some() && !bound) {
            return self.forget_pod(&uid);
        }
        match spec.and_then(|s| s.node_name.clone()) {
            Some(node) => {
                self.queued.remove(&uid);
                if self.bound.get(&uid) == Some(&node) {
                    return PodAction::Ignore;
                }
                self.bound.insert(uid, node.clone());
                PodAction::Bound { node }
            }
            None => {
                let ours = scheduler_name
                    .is_some_and(|n| spec.and_then(|s| s.scheduler_name.as_deref()) == Some(n));
                if ours && self.queued.insert(uid) {
                    PodAction::Queue
                } else {
                    PodAction::Ignore
                }
            }
        }
    }

    /// Pod `uid` is gone.
    pub fn forget_pod(&mut self, uid: &str) -> PodAction {
        let known = self.bound.remove(uid).is_some() | self.queued.remove(uid);
        if known {
            PodAction::Forget
        } else {
            PodAction::Ignore
        }
    }

    /// Node `name` exists now; whether it is new.
    pub fn node(&mut self, name: &str) -> bool {
        if let Some(seen) = &mut self.relist_nodes {
            seen.insert(name.to_owned());
        }
        self.nodes.insert(name.to_owned())
    }

    /// Node `name` is gone; whether it was known. The pods bound on it are forgotten too (the
    /// scheduler drops them with the node), so they are recorded again if it comes back.
    pub fn forget_node(&mut self, name: &str) -> bool {
        self.bound.retain(|_, node| node != name);
        self.nodes.remove(name)
    }

    /// A pod relist begins: pods not seen again before it ends are gone.
    pub fn begin_pod_relist(&mut self) {
        self.relist_pods = Some(HashSet::new());
    }

    /// A pod relist ended: the pods known but not seen in it (deleted while the watch was
    /// down).
    pub fn end_pod_relist(&mut self) -> Vec<String> {
        let Some(seen) = self.relist_pods.take() else {
            return Vec::new();
        };
        let gone: Vec<String> = self
            .bound
            .keys()
            .chain(self.queued.iter())
            .filter(|u| !seen.contains(*u))
            .cloned()
            .collect();
        for u in &gone {
            self.forget_pod(u);
        }
        gone
    }

    /// A node relist begins.
    pub fn begin_node_relist(&mut self) {
        self.relist_nodes = Some(HashSet::new());
    }

    /// A node relist ended: the nodes known but not seen in it.
    pub fn end_node_relist(&mut self) -> Vec<String> {
        let Some(seen) = self.relist_nodes.take() else {
            return Vec::new();
        };
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        for n in &gone {
            self.forget_node(n);
        }
        gone
    }
}

/// Feeds a [`Scheduler`]'s cache from the cluster's Node and Pod watches.
#[derive(Debug, Clone)]
pub struct SnapshotSync {
    scheduler: Scheduler,
    scheduler_name: Option<String>,
    state: Arc<parking_lot::Mutex<SyncState>>,
    /// Pods bound to a node the scheduler does not know yet (the Pod watch ran ahead of the
    /// Node watch), by node: recorded when the node arrives.
    waiting: Arc<parking_lot::Mutex<HashMap<String, Vec<rorqual_scheduler::PodInfo>>>>,
    queued: Arc<Notify>,
}

impl SnapshotSync {
    /// Feeds `scheduler`; pending pods whose `spec.schedulerName` is `scheduler_name` are
    /// queued (none: no pod is queued, as for an extender's cache).
    pub fn new(scheduler: Scheduler, scheduler_name: Option<String>) -> SnapshotSync {
        SnapshotSync {
            scheduler,
            scheduler_name,
            state: Arc::default(),
            waiting: Arc::default(),
            queued: Arc::new(Notify::new()),
        }
    }

    /// Notified whenever a pod is queued.
    pub fn queued(&self) -> Arc<Notify> {
        self.queued.clone()
    }

    /// Applies one node as seen now.
    pub fn node_seen(&self, node: &KubeNode) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        self.state.lock().node(&name);
        match serde_json::to_value(node)
            .map_err(|e| e.to_string())
            .and_then(|v| node_from_json(&v).map_err(|e| e.to_string()))
        {
            Ok(info) => {
                self.scheduler.upsert_node(info);
                let waiting = self.waiting.lock().remove(&name).unwrap_or_default();
                for pod in waiting {
                    let uid = pod.uid.clone();
                    if let Err(e) = self.scheduler.add_bound_pod(&name, pod) {
                        tracing::warn!(pod = %uid, node = %name, error = %e.message(), "scheduler sync: bound pod not recorded");
                    }
                }
            }
            Err(e) => tracing::warn!(node = %name, error = %e, "scheduler sync: node not read"),
        }
    }

    /// Applies node `name` gone.
    pub fn node_gone(&self, name: &str) {
        self.waiting.lock().remove(name);
        if self.state.lock().forget_node(name) {
            self.scheduler.remove_node(name);
        }
    }

    /// Applies one pod as seen now.
    pub fn pod_seen(&self, pod: &Pod) {
        let action = self.state.lock().pod(pod, self.scheduler_name.as_deref());
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let info = || {
            serde_json::to_value(pod)
                .map_err(|e| e.to_string())
                .and_then(|v| pod_from_json(&v).map_err(|e| e.to_string()))
        };
        match action {
            PodAction::Ignore => {}
            PodAction::Forget => {
                self.scheduler.remove_pod(&uid);
            }
            PodAction::Bound { node } => {
                // A pod this scheduler bound is in its cache already.
                let known = self
                    .scheduler
                    .with_snapshot(|s| s.node_of_pod(&uid).is_some());
                if known {
                    return;
                }
                // Bound by someone else: out of this scheduler's queue first.
                self.scheduler.remove_pod(&uid);
                match info() {
                    Ok(p) => {
                        let known_node = self.scheduler.with_snapshot(|s| {
                            rorqual_scheduler::Sym::lookup(&node)
                                .is_some_and(|n| s.node(n).is_some())
                        });
                        if known_node {
                            if let Err(e) = self.scheduler.add_bound_pod(&node, p) {
                                tracing::warn!(pod = %uid, node, error = %e.message(), "scheduler sync: bound pod not recorded");
                            }
                        } else {
                            // Recorded when its node arrives.
                            self.waiting.lock().entry(node).or_default().push(p);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(pod = %uid, error = %e, "scheduler sync: pod not read")
                    }
                }
            }
            PodAction::Queue => match info() {
                Ok(p) => match self.scheduler.enqueue(p) {
                    Ok(()) => self.queued.notify_one(),
                    Err(e) => {
                        tracing::warn!(pod = %uid, error = %e.message(), "scheduler sync: pod refused at PreEnqueue")
                    }
                },
                Err(e) => {
                    tracing::warn!(pod = %uid, error = %e, "scheduler sync: pod not read");
                    self.state.lock().forget_pod(&uid);
                }
            },
        }
    }

    /// Applies pod `uid` gone.
    pub fn pod_gone(&self, uid: &str) {
        for pods in self.waiting.lock().values_mut() {
            pods.retain(|p| &*p.uid != uid);
        }
        if self.state.lock().forget_pod(uid) == PodAction::Forget {
            self.scheduler.remove_pod(uid);
        }
    }

    /// Runs the Node and Pod watches until the returned future is dropped.
    pub async fn run(self, client: Client) {
        let nodes = follow(
            Api::<KubeNode>::all(client.clone()),
            "node",
            |change| match change {
                Change::Relist => self.state.lock().begin_node_relist(),
                Change::Seen(n) => self.node_seen(&n),
                Change::RelistDone => {
                    let gone = self.state.lock().end_node_relist();
                    for n in gone {
                        self.scheduler.remove_node(&n);
                    }
                }
                Change::Gone(n) => {
                    if let Some(name) = n.metadata.name {
                        self.node_gone(&name);
                    }
                }
            },
        );
        let pods = follow(Api::<Pod>::all(client), "pod", |change| match change {
            Change::Relist => self.state.lock().begin_pod_relist(),
            Change::Seen(p) => self.pod_seen(&p),
            Change::RelistDone => {
                let gone = self.state.lock().end_pod_relist();
                for uid in gone {
                    self.scheduler.remove_pod(&uid);
                }
            }
            Change::Gone(p) => {
                if let Some(uid) = p.metadata.uid {
                    self.pod_gone(&uid);
                }
            }
        });
        futures::future::join(nodes, pods).await;
    }
}

/// A watch's news, as the sync reads it.
enum Change<K> {
    /// A (re)list begins.
    Relist,
    /// The object as it is now.
    Seen(K),
    /// The (re)list is complete.
    RelistDone,
    /// The object is gone.
    Gone(K),
}

/// Follows a watch over `api` (with backoff on errors) and hands each change to `apply`.
async fn follow<K>(api: Api<K>, kind: &str, mut apply: impl FnMut(Change<K>))
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut errors = WatchErrors::new(format!("scheduler sync {kind} watch"));
    while let Some(ev) = stream.next().await {
        if let Ok(e) = &ev {
            errors.delivered(e);
        }
        match ev {
            Ok(watcher::Event::Init) => apply(Change::Relist),
            Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o)) => apply(Change::Seen(o)),
            Ok(watcher::Event::InitDone) => apply(Change::RelistDone),
            Ok(watcher::Event::Delete(o)) => apply(Change::Gone(o)),
            Err(e) => errors.failed(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str, node: Option<&str>, scheduler: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "ns", "uid": uid},
            "spec": {"schedulerName": scheduler, "nodeName": node, "containers": []}
        }))
        .unwrap()
    }

    #[test]
    fn pending_pods_are_queued_once_and_only_for_their_scheduler() {
        let mut s = SyncState::default();
        assert_eq!(
            s.pod(&pod("a", None, "rorqual"), Some("rorqual")),
            PodAction::Queue
        );
        assert_eq!(
            s.pod(&pod("a", None, "rorqual"), Some("rorqual")),
            PodAction::Ignore
        );
        assert_eq!(
            s.pod(&pod("b", None, "default-scheduler"), Some("rorqual")),
            PodAction::Ignore
        );
        // An extender's cache queues nothing.
        assert_eq!(s.pod(&pod("c", None, "rorqual"), None), PodAction::Ignore);
        // Bound (by us or anyone): recorded once, per node.
        assert_eq!(
            s.pod(&pod("a", Some("n1"), "rorqual"), Some("rorqual")),
            PodAction::Bound { node: "n1".into() }
        );
        assert_eq!(
            s.pod(&pod("a", Some("n1"), "rorqual"), Some("rorqual")),
            PodAction::Ignore
        );
        assert_eq!(s.forget_pod("a"), PodAction::Forget);
        assert_eq!(s.forget_pod("a"), PodAction::Ignore);
    }

    #[test]
    fn finished_or_deleting_pods_are_forgotten() {
        let mut s = SyncState::default();
        s.pod(&pod("a", Some("n1"), "x"), None);
        let mut done = pod("a", Some("n1"), "x");
        done.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        assert_eq!(s.pod(&done, None), PodAction::Forget);
    }

    #[test]
    fn a_terminating_bound_pod_keeps_its_place_until_it_is_gone() {
        let mut s = SyncState::default();
        s.pod(&pod("a", Some("n1"), "x"), None);
        let mut leaving = pod("a", Some("n1"), "x");
        leaving.metadata.deletion_timestamp =
            Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
        assert_eq!(s.pod(&leaving, None), PodAction::Ignore, "still holds n1");
        let mut pending = pod("b", None, "rorqual");
        pending.metadata.deletion_timestamp = leaving.metadata.deletion_timestamp.clone();
        assert_eq!(
            s.pod(&pending, Some("rorqual")),
            PodAction::Ignore,
            "not scheduled"
        );
    }

    #[test]
    fn pods_of_a_node_that_goes_are_recorded_again_when_it_returns() {
        let mut s = SyncState::default();
        s.node("n1");
        s.pod(&pod("a", Some("n1"), "x"), None);
        assert!(s.forget_node("n1"));
        assert_eq!(
            s.pod(&pod("a", Some("n1"), "x"), None),
            PodAction::Bound { node: "n1".into() }
        );
    }

    #[test]
    fn a_relist_finds_what_was_deleted_while_the_watch_was_down() {
        let mut s = SyncState::default();
        s.pod(&pod("a", Some("n1"), "x"), None);
        s.pod(&pod("b", Some("n1"), "x"), None);
        s.node("n1");
        s.node("n2");
        s.begin_pod_relist();
        s.pod(&pod("b", Some("n1"), "x"), None);
        assert_eq!(s.end_pod_relist(), ["a"]);
        s.begin_node_relist();
        s.node("n1");
        assert_eq!(s.end_node_relist(), ["n2"]);
    }
}
