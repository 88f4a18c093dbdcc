//! The pod side of the agent: watches the pods bound to its nodes (`spec.nodeName` field
//! selector, one watch per node and allowed namespace), hands them to the [`PodRuntime`],
//! writes their status through the status subresource, and finishes their deletion.
//!
//! - A new pod is created in the runtime (a pod already in a terminal phase is left alone);
//!   a changed one is passed to [`PodRuntime::update_pod`]. A creation the runtime refuses
//!   (no free address, a network attach that failed) is retried with a capped exponential
//!   backoff ([`CREATE_RETRY`]) while the pod exists, as the kubelet retries a pod sandbox:
//!   the pod stays `Pending` meanwhile, and the reason is logged at warn level and recorded
//!   as a Warning Event `FailedCreatePodSandBox` about the pod (`kubectl describe pod`).
//! - A pod with `deletionTimestamp` is stopped with its grace period, then deleted with grace
//!   0 and its UID as a precondition (the kubelet's final delete).
//! - Statuses are computed by the pure [`status::pod_status`](super::status::pod_status)
//!   whenever the runtime signals a change, deduplicated per pod in a queue, and written by a
//!   few workers, only when they differ from what was last written.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use parking_lot::Mutex;
use tokio::sync::Notify;

use rorqual_core::backoff::Backoff;
use tokio::time::Instant;

use super::runtime::{PodKey, PodRuntime, grace_period};
use super::status::{pod_status, status_changed};
use crate::events::{EventRecorder, EventType};
use crate::watch_errors::WatchErrors;

/// Pods waiting for a status write: each queued at most once, and handed to one writer at a
/// time (a change signalled while a writer handles the pod queues it again when that writer
/// is done), so two writers never race and leave an older status last.
#[derive(Debug, Default)]
pub(crate) struct StatusQueue {
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    order: VecDeque<PodKey>,
    queued: HashSet<PodKey>,
    in_flight: HashSet<PodKey>,
    dirty: HashSet<PodKey>,
}

impl QueueState {
    /// Queues `key`; whether a writer should be woken.
    fn push(&mut self, key: &PodKey) -> bool {
        if self.in_flight.contains(key) {
            self.dirty.insert(key.clone());
            false
        } else if self.queued.insert(key.clone()) {
            self.order.push_back(key.clone());
            true
        } else {
            false
        }
    }

    fn pop(&mut self) -> Option<PodKey> {
        let key = self.order.pop_front()?;
        self.queued.remove(&key);
        self.in_flight.insert(key.clone());
        Some(key)
    }

    /// The writer of `key` is done; whether a writer should be woken for it again.
    fn done(&mut self, key: &PodKey) -> bool {
        self.in_flight.remove(key);
        self.dirty.remove(key) && self.push(key)
    }
}

impl StatusQueue {
    pub(crate) fn push(&self, key: &PodKey) {
        if self.state.lock().push(key) {
            self.ready.notify_one();
        }
    }

    async fn pop(&self) -> PodKey {
        loop {
            {
                let mut state = self.state.lock();
                if let Some(key) = state.pop() {
                    if !state.order.is_empty() {
                        self.ready.notify_one();
                    }
                    return key;
                }
            }
            self.ready.notified().await;
        }
    }

    fn done(&self, key: &PodKey) {
        if self.state.lock().done(key) {
            self.ready.notify_one();
        }
    }
}

/// Shared state of the pod watchers and status writers.
pub(crate) struct PodController {
    pub(crate) client: Client,
    pub(crate) runtime: Arc<dyn PodRuntime>,
    pub(crate) host_ip: String,
    pub(crate) queue: Arc<StatusQueue>,
    /// Writes the agent's Events about pods.
    events: EventRecorder,
    /// The latest object of every pod bound to the agent's nodes.
    pods: Mutex<HashMap<PodKey, Pod>>,
    /// The status last written per pod.
    written: Mutex<HashMap<PodKey, PodStatus>>,
    /// Pods handed to the runtime.
    running: Mutex<HashSet<PodKey>>,
    /// Pods being deleted.
    deleting: Mutex<HashSet<PodKey>>,
    /// Pods the runtime refused to create: failed attempts so far and when to try again.
    refused: Mutex<HashMap<PodKey, (u32, Instant)>>,
}

/// The delays between attempts to create a pod the runtime refused: 1 s doubling to 30 s.
pub(crate) const CREATE_RETRY: Backoff =
    Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// How often the agent looks for refused pods due for another attempt.
const RETRY_TICK: Duration = Duration::from_millis(250);

/// An error and its sources, `: `-separated (the reason a network attach failed is often in
/// a source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl std::fmt::Debug for PodController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodController")
            .field("runtime", &self.runtime)
            .field("pods", &self.pods.lock().len())
            .finish_non_exhaustive()
    }
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl PodController {
    pub(crate) fn new(
        client: Client,
        runtime: Arc<dyn PodRuntime>,
        host_ip: String,
        queue: Arc<StatusQueue>,
    ) -> Self {
        PodController {
            events: EventRecorder::new(client.clone(), "kubelet"),
            client,
            runtime,
            host_ip,
            queue,
            pods: Mutex::default(),
            written: Mutex::default(),
            running: Mutex::default(),
            deleting: Mutex::default(),
            refused: Mutex::default(),
        }
    }

    /// Tries again to create the pods the runtime refused, each when its backoff is over,
    /// until aborted.
    pub(crate) async fn retry_refused(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RETRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let due: Vec<PodKey> = self
                .refused
                .lock()
                .iter()
                .filter(|(_, (_, at))| *at <= now)
                .map(|(key, _)| key.clone())
                .collect();
            for key in due {
                let pod = self.pods.lock().get(&key).cloned();
                match pod {
                    Some(pod)
                        if !self.running.lock().contains(&key)
                            && !self.deleting.lock().contains(&key) =>
                    {
                        self.clone().on_pod(pod).await;
                    }
                    _ => {
                        self.refused.lock().remove(&key);
                    }
                }
            }
        }
    }

    /// Watches the pods bound to `node` (in `namespace`, or every namespace) until aborted.
    pub(crate) async fn watch(self: Arc<Self>, node: String, namespace: Option<String>) {
        let api: Api<Pod> = match &namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        let mut listed: HashSet<PodKey> = HashSet::new();
        let scope = namespace.as_deref().unwrap_or("all namespaces");
        let mut errors = WatchErrors::new(format!("pod watch of node {node} in {scope}"));
        while let Some(event) = events.next().await {
            if let Ok(e) = &event {
                errors.delivered(e);
            }
            match event {
                Ok(Event::Apply(pod)) => self.clone().on_pod(pod).await,
                Ok(Event::InitApply(pod)) => {
                    if let Some(key) = PodKey::of(&pod) {
                        listed.insert(key);
                    }
                    self.clone().on_pod(pod).await;
                }
                Ok(Event::Delete(pod)) => self.clone().on_gone(pod),
                Ok(Event::Init) => listed.clear(),
                Ok(Event::InitDone) => {
                    // Pods that vanished while the watch was down.
                    let gone: Vec<Pod> = self
                        .pods
                        .lock()
                        .iter()
                        .filter(|(key, pod)| {
                            node_of(pod) == Some(node.as_str())
                                && namespace.as_ref().is_none_or(|ns| *ns == key.namespace)
                                && !listed.contains(*key)
                        })
                        .map(|(_, pod)| pod.clone())
                        .collect();
                    for pod in gone {
                        self.clone().on_gone(pod);
                    }
                    listed.clear();
                }
                Err(e) => errors.failed(&e),
            }
        }
    }

    async fn on_pod(self: Arc<Self>, mut pod: Pod) {
        let Some(key) = PodKey::of(&pod) else {
            return;
        };
        // Never read here, and often the biggest part of a pod: not worth keeping per pod.
        pod.metadata.managed_fields = None;
        self.pods.lock().insert(key.clone(), pod.clone());
        if pod.metadata.deletion_timestamp.is_some() {
            self.start_deletion(key, pod, true);
            return;
        }
        let known = self.running.lock().contains(&key);
        if known {
            if let Err(e) = self.runtime.update_pod(&pod).await {
                tracing::warn!(pod = %key, error = %e, "runtime update failed");
            }
        } else if !is_terminal(&pod) {
            match self.runtime.create_pod(&pod).await {
                Ok(()) => {
                    self.refused.lock().remove(&key);
                    self.running.lock().insert(key.clone());
                    tracing::debug!(pod = %key, "pod started");
                }
                Err(e) => {
                    let delay = {
                        let mut refused = self.refused.lock();
                        let attempts = refused.get(&key).map_or(0, |(n, _)| *n);
                        let delay = CREATE_RETRY.delay(attempts);
                        refused.insert(key.clone(), (attempts + 1, Instant::now() + delay));
                        delay
                    };
                    let reason = error_chain(&e);
                    tracing::warn!(
                        pod = %key,
                        error = %reason,
                        retry_in = ?delay,
                        "the runtime did not take the pod; retrying"
                    );
                    // Best effort, as the kubelet's: a failed write is logged by the recorder.
                    let _ = self
                        .events
                        .record(
                            &pod,
                            EventType::Warning,
                            "FailedCreatePodSandBox",
                            &format!("Failed to create pod sandbox: {reason}"),
                        )
                        .await;
                }
            }
        }
        self.queue.push(&key);
    }

    /// The pod is gone from the API (deleted with grace 0 by us or someone else).
    fn on_gone(self: Arc<Self>, pod: Pod) {
        let Some(key) = PodKey::of(&pod) else {
            return;
        };
        self.start_deletion(key, pod, false);
    }

    fn forget(&self, key: &PodKey) {
        self.pods.lock().remove(key);
        self.written.lock().remove(key);
        self.running.lock().remove(key);
        self.deleting.lock().remove(key);
        self.refused.lock().remove(key);
    }

    fn start_deletion(self: Arc<Self>, key: PodKey, pod: Pod, in_api: bool) {
        if !self.deleting.lock().insert(key.clone()) {
            if !in_api {
                self.pods.lock().remove(&key);
            }
            return;
        }
        tokio::spawn(async move {
            let grace = if in_api {
                grace_period(&pod)
            } else {
                Duration::ZERO
            };
            tracing::info!(pod = %key, ?grace, "stopping deleted pod");
            if let Err(e) = self.runtime.delete_pod(&key, grace).await {
                tracing::error!(pod = %key, error = %e, "runtime deletion failed");
            }
            if in_api {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
                let params = DeleteParams::default()
                    .grace_period(0)
                    .preconditions(Preconditions {
                        uid: Some(key.uid.clone()),
                        resource_version: None,
                    });
                match api.delete(&key.name, &params).await {
                    Ok(_) => tracing::info!(pod = %key, "pod deleted"),
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => tracing::warn!(pod = %key, error = %e, "final delete failed"),
                }
            }
            self.forget(&key);
        });
    }

    /// Writes statuses from the queue until aborted.
    pub(crate) async fn write_statuses(self: Arc<Self>) {
        loop {
            let key = self.queue.pop().await;
            let written = self.write_status(&key).await;
            self.queue.done(&key);
            if let Err(e) = written {
                tracing::warn!(pod = %key, error = %e, "status write failed; retrying");
                let (this, key) = (self.clone(), key.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if this.pods.lock().contains_key(&key) {
                        this.queue.push(&key);
                    }
                });
            }
        }
    }

    async fn write_status(&self, key: &PodKey) -> Result<(), kube::Error> {
        let Some(pod) = self.pods.lock().get(key).cloned() else {
            return Ok(());
        };
        let state = match self.runtime.pod_state(key).await {
            Ok(Some(state)) => state,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(pod = %key, error = %e, "runtime state unavailable");
                return Ok(());
            }
        };
        let previous = self
            .written
            .lock()
            .get(key)
            .cloned()
            .or_else(|| pod.status.clone());
        let status = pod_status(
            &pod,
            &state,
            &self.host_ip,
            previous.as_ref(),
            SystemTime::now(),
        );
        if !status_changed(previous.as_ref(), &status) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        let patch = serde_json::json!({
            "metadata": {"uid": key.uid},
            "status": status,
        });
        match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.written.lock().insert(key.clone(), status);
                Ok(())
            }
            // Gone, or another pod of the same name now: nothing to write.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The namespaces to watch: every namespace (`None`) or each allowed one.
pub(crate) fn watch_scopes(namespaces: Option<&BTreeSet<String>>) -> Vec<Option<String>> {
    match namespaces {
        None => vec![None],
        Some(allowed) => allowed.iter().cloned().map(Some).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_handed_to_one_writer_at_a_time() {
        let (a, b) = (PodKey::new("ns", "a", "1"), PodKey::new("ns", "b", "2"));
        let mut q = QueueState::default();
        assert!(q.push(&a));
        assert!(!q.push(&a), "queued once");
        assert!(q.push(&b));
        assert_eq!(q.pop(), Some(a.clone()));
        assert!(
            !q.push(&a),
            "a change while a is written waits for that writer"
        );
        assert_eq!(
            q.pop(),
            Some(b.clone()),
            "a is not handed to a second writer"
        );
        assert_eq!(q.pop(), None);
        assert!(q.done(&a), "then a is queued again");
        assert_eq!(q.pop(), Some(a.clone()));
        assert!(!q.done(&a), "nothing changed meanwhile");
        assert!(!q.done(&b));
        assert_eq!(q.pop(), None);
    }
}
