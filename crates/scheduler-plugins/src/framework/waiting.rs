//! Pods held at Permit: each waits on its own channel, so a waiting pod blocks only its own
//! binding.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use tokio::sync::oneshot;

use crate::framework::status::Status;
use crate::snapshot::PodInfo;

#[derive(Debug)]
struct Waiting {
    pod: Arc<PodInfo>,
    pending: HashSet<String>,
    done: Option<oneshot::Sender<Status>>,
}

/// The registry of pods waiting at Permit, keyed by uid.
#[derive(Debug, Clone, Default)]
pub struct WaitingPods {
    inner: Arc<Mutex<HashMap<Arc<str>, Waiting>>>,
}

impl WaitingPods {
    /// An empty registry.
    pub fn new() -> WaitingPods {
        WaitingPods::default()
    }

    /// Registers `pod` as waiting for each of `plugins`; the receiver yields Success once all
    /// allowed, or the first rejection.
    pub(crate) fn add(
        &self,
        pod: Arc<PodInfo>,
        plugins: HashSet<String>,
    ) -> oneshot::Receiver<Status> {
        let (tx, rx) = oneshot::channel();
        self.inner.lock().insert(
            pod.uid.clone(),
            Waiting {
                pod,
                pending: plugins,
                done: Some(tx),
            },
        );
        rx
    }

    pub(crate) fn remove(&self, uid: &str) {
        self.inner.lock().remove(uid);
    }

    /// Plugin `plugin` allows pod `uid`; the pod proceeds when no plugin is pending.
    pub fn allow(&self, uid: &str, plugin: &str) {
        let mut map = self.inner.lock();
        let finished = match map.get_mut(uid) {
            Some(w) => {
                w.pending.remove(plugin);
                w.pending.is_empty()
            }
            None => false,
        };
        if finished
            && let Some(mut w) = map.remove(uid)
            && let Some(tx) = w.done.take()
        {
            let _ = tx.send(Status::success());
        }
    }

    /// Rejects pod `uid` (its binding fails with `reason`).
    pub fn reject(&self, uid: &str, plugin: &str, reason: &str) {
        if let Some(mut w) = self.inner.lock().remove(uid)
            && let Some(tx) = w.done.take()
        {
            let _ = tx.send(Status::unschedulable(reason).with_plugin(plugin));
        }
    }

    /// Whether pod `uid` waits.
    pub fn contains(&self, uid: &str) -> bool {
        self.inner.lock().contains_key(uid)
    }

    /// The waiting pods.
    pub fn pods(&self) -> Vec<Arc<PodInfo>> {
        self.inner.lock().values().map(|w| w.pod.clone()).collect()
    }

    /// The number of waiting pods.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// Whether no pod waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
