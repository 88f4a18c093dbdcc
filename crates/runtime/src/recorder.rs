//! Event recorders: how a controller tells people what it did to an object ("scaled group
//! v2 to 3", "analysis failed"), as Kubernetes controllers emit Events.
//!
//! [`Recorder`] is the seam; [`TracingRecorder`] writes each event as a `tracing` event and
//! [`MemoryRecorder`] keeps them for tests to assert on. A Kubernetes-backed recorder (posting
//! `Event` objects) belongs with the Kubernetes engine.

use std::borrow::Cow;
use std::fmt::Debug;

use parking_lot::Mutex;
use rorqual_core::model::EventType;

/// Why an event is recorded: its type and a short CamelCase reason (`ScalingReplicaSet`,
/// `AnalysisFailed`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Reason {
    /// Normal or warning.
    pub event_type: EventType,
    /// The reason.
    pub reason: Cow<'static, str>,
}

impl Reason {
    /// A normal event (something expected happened).
    pub fn normal(reason: impl Into<Cow<'static, str>>) -> Self {
        Reason {
            event_type: EventType::Normal,
            reason: reason.into(),
        }
    }

    /// A warning (something may need attention).
    pub fn warning(reason: impl Into<Cow<'static, str>>) -> Self {
        Reason {
            event_type: EventType::Warning,
            reason: reason.into(),
        }
    }
}

/// Records events about objects. Object safe: store it as `Arc<dyn Recorder>`.
///
/// Recording is fire-and-forget: an implementation that talks to a server buffers and reports
/// its own failures; it never fails or blocks the reconcile that records.
pub trait Recorder: Send + Sync + Debug + 'static {
    /// Records that `reason` happened to the object named `object`, with a human-readable
    /// message.
    fn record(&self, object: &str, reason: Reason, message: &str);
}

/// A [`Recorder`] writing each event as a `tracing` event (target `rorqual_runtime::event`):
/// info for normal events, warn for warnings.
#[derive(Debug, Clone, Default)]
pub struct TracingRecorder {
    controller: Option<String>,
}

impl TracingRecorder {
    /// A recorder that names no controller.
    pub fn new() -> Self {
        Self::default()
    }

    /// A recorder whose events name the controller that recorded them.
    pub fn for_controller(name: impl Into<String>) -> Self {
        TracingRecorder {
            controller: Some(name.into()),
        }
    }
}

impl Recorder for TracingRecorder {
    fn record(&self, object: &str, reason: Reason, message: &str) {
        let controller = self.controller.as_deref().unwrap_or("");
        match reason.event_type {
            EventType::Warning => tracing::warn!(
                target: "rorqual_runtime::event",
                controller, object, reason = %reason.reason, "{message}"
            ),
            EventType::Normal => tracing::info!(
                target: "rorqual_runtime::event",
                controller, object, reason = %reason.reason, "{message}"
            ),
        }
    }
}

/// One event a [`MemoryRecorder`] kept.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordedEvent {
    /// The object.
    pub object: String,
    /// Its type and reason.
    pub reason: Reason,
    /// The message.
    pub message: String,
}

/// A [`Recorder`] keeping every event in memory, for tests.
#[derive(Debug, Default)]
pub struct MemoryRecorder {
    events: Mutex<Vec<RecordedEvent>>,
}

impl MemoryRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every event recorded so far, oldest first.
    pub fn events(&self) -> Vec<RecordedEvent> {
        self.events.lock().clone()
    }

    /// The events recorded about `object`, oldest first.
    pub fn events_for(&self, object: &str) -> Vec<RecordedEvent> {
        self.events
            .lock()
            .iter()
            .filter(|e| e.object == object)
            .cloned()
            .collect()
    }

    /// Removes and returns every event recorded so far.
    pub fn take(&self) -> Vec<RecordedEvent> {
        std::mem::take(&mut *self.events.lock())
    }
}

impl Recorder for MemoryRecorder {
    fn record(&self, object: &str, reason: Reason, message: &str) {
        self.events.lock().push(RecordedEvent {
            object: object.to_owned(),
            reason,
            message: message.to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn memory_recorder_keeps_events_per_object_in_order() {
        let memory = Arc::new(MemoryRecorder::new());
        let recorder: Arc<dyn Recorder> = memory.clone();
        recorder.record("default/web", Reason::normal("Scaled"), "v2 to 3");
        recorder.record("default/db", Reason::warning("BackOff"), "retrying");
        recorder.record("default/web", Reason::warning("AnalysisFailed"), "5xx 12%");
        let web = memory.events_for("default/web");
        assert_eq!(web.len(), 2);
        assert_eq!(web[0].reason, Reason::normal("Scaled"));
        assert_eq!(web[1].reason.event_type, EventType::Warning);
        assert_eq!(web[1].message, "5xx 12%");
        assert_eq!(memory.take().len(), 3);
        assert!(memory.events().is_empty());
    }

    #[test]
    fn tracing_recorder_records_without_a_subscriber() {
        let r = TracingRecorder::for_controller("rollouts");
        r.record("default/web", Reason::warning("BackOff"), "retrying in 2s");
        r.record("default/web", Reason::normal("Ready"), "3/3 ready");
    }
}
