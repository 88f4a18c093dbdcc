//! Events an engine reports: what happened to which object.

use std::time::SystemTime;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::spec::AppKey;

/// Normal or warning, as in Kubernetes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something that may need attention.
    Warning,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Event {
    /// When it happened.
    pub time: SystemTime,
    /// Normal or warning.
    pub event_type: EventType,
    /// The application concerned, if any.
    pub app: Option<AppKey>,
    /// The instance concerned, if any.
    pub instance: Option<String>,
    /// A short CamelCase reason (`Started`, `Ready`, `BackOff`, `Killing`, `FailedScheduling`).
    pub reason: String,
    /// A human-readable message.
    pub message: String,
}

impl Event {
    /// A new event stamped now.
    pub fn new(
        event_type: EventType,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Event {
            time: SystemTime::now(),
            event_type,
            app: None,
            instance: None,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// Sets the application.
    #[must_use]
    pub fn app(mut self, app: AppKey) -> Self {
        self.app = Some(app);
        self
    }

    /// Sets the instance.
    #[must_use]
    pub fn instance(mut self, id: impl Into<String>) -> Self {
        self.instance = Some(id.into());
        self
    }
}
