//! The `Engine` seam: what every orchestration engine offers the platform.
//!
//! An engine runs *revision groups*: for one application, the instances of one revision.
//! Release strategies work by setting each group's replica count (and, through a traffic
//! router, each revision's weight), so every strategy works on every engine.
//!
//! Stateful applications are one set of identities `name-0 … name-(n-1)`. For them a "group"
//! is the set of identities currently at a revision; [`Engine::apply_group`] sets the total
//! number of identities (new ordinals start at the applied revision, removed ones are the
//! highest), and [`Engine::move_identity`] moves one identity to another revision in place.
//!
//! # Mapping to Kubernetes
//!
//! | rorqual | Kubernetes |
//! |---|---|
//! | [`AppKey`] | namespace + workload name |
//! | revision group (stateless) | a ReplicaSet per revision (label `rorqual.io/revision`), or a Deployment per revision |
//! | stateful set + [`Engine::move_identity`] | a StatefulSet with `OnDelete` updates: patch the template, delete pod `name-k` |
//! | [`Instance`] | a Pod (`phase`, `ready` from the Ready condition, `restarts` from container statuses) |
//! | [`Node`] | a Node (allocatable, labels, taints, `spec.unschedulable`) |
//! | [`GroupStatus`] counts | ReplicaSet `spec.replicas`, `status.replicas`, `readyReplicas`, `availableReplicas` |
//! | [`Event`] stream | Events (watch) |
//! | [`StateStore`] | a custom resource's `status`, compare-and-swap on `resourceVersion` |
//! | traffic weights (routers, not the engine) | Service selectors, ingress canary weights |

pub mod planner;
mod state;

use std::fmt::Debug;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Stream;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{AppKey, AppSpec, Event, Instance, Node, Revision};

#[cfg(any(test, feature = "testing"))]
pub use state::MemoryStateStore;
pub use state::{StateStore, Versioned, apply_cas, list_prefix};

/// The observed state of one revision group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct GroupStatus {
    /// The application.
    pub app: AppKey,
    /// The revision of this group.
    pub revision: Revision,
    /// How many instances are wanted.
    pub desired: u32,
    /// How many instances exist (any phase but Stopped).
    pub current: u32,
    /// How many pass readiness.
    pub ready: u32,
    /// How many are available (ready; engines with a min-ready time may count fewer).
    pub available: u32,
}

impl GroupStatus {
    /// The status of a group with `desired` instances wanted and none observed yet; engines set
    /// the observed counts.
    pub fn new(app: AppKey, revision: Revision, desired: u32) -> Self {
        GroupStatus {
            app,
            revision,
            desired,
            current: 0,
            ready: 0,
            available: 0,
        }
    }
}

/// A stream of engine events.
pub type EventStream = Pin<Box<dyn Stream<Item = Event> + Send>>;

/// A stream of log lines.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<String>> + Send>>;

/// What part of an instance's log to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogOptions {
    /// Which container (the first when `None`).
    pub container: Option<String>,
    /// Only the last `tail` lines that exist now.
    pub tail: Option<usize>,
    /// Keep the stream open and yield new lines as they are written.
    pub follow: bool,
}

impl LogOptions {
    /// Reads the whole log once.
    pub fn all() -> Self {
        Self::default()
    }
    /// Follows the log.
    #[must_use]
    pub fn follow(mut self) -> Self {
        self.follow = true;
        self
    }
    /// Only the last `n` lines.
    #[must_use]
    pub fn tail(mut self, n: usize) -> Self {
        self.tail = Some(n);
        self
    }
    /// Which container.
    #[must_use]
    pub fn container(mut self, name: impl Into<String>) -> Self {
        self.container = Some(name.into());
        self
    }
}

/// An orchestration engine. Object safe: store it as `Arc<dyn Engine>`.
///
/// Every mutating call is idempotent: applying the same group twice, scaling to the current
/// count, or deleting a missing group succeeds and changes nothing.
#[async_trait]
pub trait Engine: Send + Sync + Debug + 'static {
    /// A short name of the engine kind (`local`, `memory`, `kubernetes`).
    fn kind(&self) -> &str;

    /// The engine's nodes.
    async fn nodes(&self) -> Result<Vec<Node>>;

    /// Creates or updates the group of `spec.revision()` with `replicas` instances. The spec is
    /// validated first; an invalid spec starts nothing. For stateful specs, sets the number of
    /// identities (see the module docs).
    async fn apply_group(&self, spec: &AppSpec, replicas: u32) -> Result<GroupStatus>;

    /// Sets the replica count of an existing group.
    async fn scale_group(
        &self,
        app: &AppKey,
        revision: &Revision,
        replicas: u32,
    ) -> Result<GroupStatus>;

    /// Stops and removes every instance of a group. Deleting a missing group succeeds.
    async fn delete_group(&self, app: &AppKey, revision: &Revision) -> Result<()>;

    /// The groups of an application with their counts (empty when it has none).
    async fn groups(&self, app: &AppKey) -> Result<Vec<GroupStatus>>;

    /// The instances of an application, ordered by id.
    async fn instances(&self, app: &AppKey) -> Result<Vec<Instance>>;

    /// Every application the engine runs.
    async fn apps(&self) -> Result<Vec<AppKey>>;

    /// Stateful workloads only: moves identity `ordinal` to `spec`'s revision in place (stop it,
    /// start it again with the same identity, node preference and address on the new revision).
    /// Moving an identity to the revision it already runs does nothing.
    async fn move_identity(&self, spec: &AppSpec, ordinal: u32) -> Result<Instance>;

    /// A stream of events from now on.
    fn events(&self) -> EventStream;

    /// The controller state store of this engine.
    fn state_store(&self) -> Arc<dyn StateStore>;

    /// Reads an instance's log. Optional: engines without logs return [`Error::Unsupported`].
    async fn logs(&self, instance: &str, options: LogOptions) -> Result<LogStream> {
        let _ = (instance, options);
        Err(Error::Unsupported {
            engine: self.kind().to_owned(),
            operation: "logs",
        })
    }

    /// Stops every instance and releases the engine's resources. Optional: engines whose
    /// instances outlive them (Kubernetes) do nothing.
    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }
}
