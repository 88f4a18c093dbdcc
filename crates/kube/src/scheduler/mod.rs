//! rorqual's scheduler on Kubernetes (feature `scheduler`), BCS-style: a scheduler of its own
//! for pods with `spec.schedulerName: rorqual` (or any name you give it), binding through the
//! API, plus [`SnapshotSync`], which feeds a [`Scheduler`]'s cache from Node and Pod watches
//! (what an extender in cache-capable mode needs too).
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use rorqual_kube::scheduler::KubeScheduler;
//! use rorqual_scheduler::plugins::DefaultPlugins;
//!
//! let scheduler = KubeScheduler::new(client, "rorqual", DefaultPlugins::new())?;
//! scheduler.run().await; // until dropped
//! # Ok(()) }
//! ```

mod bind;
mod sync;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use rorqual_scheduler::Scheduler;
use rorqual_scheduler::plugins::DefaultPlugins;
use rorqual_scheduler::scheduler::Outcome;
use serde_json::json;

use crate::events::{EventRecorder, EventType};

pub use bind::{ApiBinder, binding};
pub use sync::{PodAction, SnapshotSync, SyncState};

/// The profile could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the scheduling profile `{name}`: {reason}")]
pub struct KubeSchedulerError {
    /// The profile (scheduler) name.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// A scheduler of its own on Kubernetes: schedules pending pods whose `spec.schedulerName`
/// is its name with rorqual's [`Scheduler`], binds them with a `Binding` through the API, and
/// marks a pod that fits nowhere with `PodScheduled=False` (`Unschedulable`) and the reason,
/// as kube-scheduler does, with a Warning Event `FailedScheduling` about the pod (source: the
/// scheduler's name; a repeat of the same message counts on the same Event, see
/// [`EventRecorder`]). Cheap to clone.
#[derive(Clone)]
pub struct KubeScheduler {
    client: Client,
    name: String,
    events: EventRecorder,
    scheduler: Scheduler,
    sync: SnapshotSync,
}

impl std::fmt::Debug for KubeScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeScheduler")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl KubeScheduler {
    /// A scheduler named `name` (the `spec.schedulerName` it serves) with `plugins`, binding
    /// through `client`.
    pub fn new(
        client: Client,
        name: &str,
        plugins: DefaultPlugins,
    ) -> Result<KubeScheduler, KubeSchedulerError> {
        let profile = plugins
            .binder(Arc::new(ApiBinder::new(client.clone())))
            .builder(name)
            .build()
            .map_err(|e| KubeSchedulerError {
                name: name.to_owned(),
                reason: e.to_string(),
            })?;
        let scheduler = Scheduler::new(profile);
        let sync = SnapshotSync::new(scheduler.clone(), Some(name.to_owned()));
        Ok(KubeScheduler {
            events: EventRecorder::new(client.clone(), name),
            client,
            name: name.to_owned(),
            scheduler,
            sync,
        })
    }

    /// The scheduler (its cache, queue and plugins).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Watches nodes and pods and schedules until the future is dropped.
    pub async fn run(&self) {
        let sync = self.sync.clone().run(self.client.clone());
        let queued = self.sync.queued();
        let schedule = async {
            loop {
                match self.scheduler.schedule_next().await {
                    Some(result) => self.report(&result.pod, &result.outcome).await,
                    None => {
                        // Idle: until a pod is queued or a backed-off one is due.
                        let wait = self
                            .scheduler
                            .next_backoff()
                            .map(|at| at.saturating_duration_since(std::time::Instant::now()))
                            .unwrap_or(Duration::from_secs(1));
                        let _ = tokio::time::timeout(wait, queued.notified()).await;
                    }
                }
            }
        };
        futures::future::join(sync, schedule).await;
    }

    /// Writes a scheduling failure on the pod and as an Event, as kube-scheduler does.
    async fn report(&self, pod: &rorqual_scheduler::snapshot::PodInfo, outcome: &Outcome) {
        let (reason, message) = match outcome {
            Outcome::Unschedulable(status) => ("Unschedulable", status.message()),
            Outcome::Error(status) => ("SchedulerError", status.message()),
            _ => return,
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace.as_str());
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        );
        let patch = json!({
            "status": {"conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
            }]}
        });
        if let Err(e) = api
            .patch_status(
                &pod.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            tracing::warn!(pod = %format!("{}/{}", pod.namespace.as_str(), pod.name),
                scheduler = %self.name, error = %e,
                "rorqual scheduler: cannot record the scheduling failure on the pod");
        }
        let subject = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(pod.name.to_string()),
                namespace: Some(pod.namespace.as_str().to_string()),
                uid: Some(pod.uid.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        // Failures are logged by the recorder; an Event is best effort, as in Kubernetes.
        let _ = self
            .events
            .record(&subject, EventType::Warning, "FailedScheduling", &message)
            .await;
    }
}
