//! The status a managed resource reports: Crossplane's two conditions, `Synced` (did the last
//! reconcile succeed) and `Ready` (is the external resource usable), each with the generation
//! of the spec it describes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ConditionType {
    /// Whether the last reconcile succeeded.
    Synced,
    /// Whether the external resource is usable.
    Ready,
}

/// A condition's truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConditionStatus {
    /// It holds.
    True,
    /// It does not hold.
    False,
    /// Not known yet.
    Unknown,
}

/// Why a condition has its status (Crossplane's reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Reason {
    /// `Synced` true: the last reconcile succeeded.
    ReconcileSuccess,
    /// `Synced` false: the last reconcile failed; the message says why.
    ReconcileError,
    /// `Synced` false: reconciling is paused.
    ReconcilePaused,
    /// `Ready` true: the external resource is usable.
    Available,
    /// `Ready` false: it exists but is not usable (yet).
    Unavailable,
    /// `Ready` false: it is being created.
    Creating,
    /// `Ready` false: it is being deleted.
    Deleting,
}

impl Reason {
    /// The condition this reason belongs to and the status it gives it.
    pub fn condition(self) -> (ConditionType, ConditionStatus) {
        use ConditionStatus::{False, True};
        match self {
            Reason::ReconcileSuccess => (ConditionType::Synced, True),
            Reason::ReconcileError | Reason::ReconcilePaused => (ConditionType::Synced, False),
            Reason::Available => (ConditionType::Ready, True),
            Reason::Unavailable | Reason::Creating | Reason::Deleting => {
                (ConditionType::Ready, False)
            }
        }
    }
}

/// One condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Condition {
    /// Which condition.
    #[serde(rename = "type")]
    pub type_: ConditionType,
    /// Its truth.
    pub status: ConditionStatus,
    /// Why.
    pub reason: Reason,
    /// Details (an error's message), never a secret.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When the status last changed (ms since the Unix epoch).
    pub last_transition_ms: u64,
    /// The spec generation this condition describes.
    pub observed_generation: u64,
}

/// What the reconciler reports about a managed resource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ResourceStatus {
    /// `Synced` and `Ready`, once set.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation of the spec last reconciled.
    #[serde(default)]
    pub observed_generation: u64,
    /// Observed state the provider reports (`atProvider`), never a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_provider: Option<Value>,
    /// The last difference between spec and resource the provider reported, if not up to date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

impl ResourceStatus {
    /// The condition of type `type_`, if set.
    pub fn condition(&self, type_: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// The reason of condition `type_`, if set.
    pub fn reason(&self, type_: ConditionType) -> Option<Reason> {
        self.condition(type_).map(|c| c.reason)
    }

    /// Whether `Ready` and `Synced` are both true (what a health check waits for).
    pub fn is_healthy(&self) -> bool {
        [ConditionType::Ready, ConditionType::Synced]
            .into_iter()
            .all(|t| self.condition(t).map(|c| c.status) == Some(ConditionStatus::True))
    }

    /// Sets the condition `reason` belongs to, for `generation`, at `now_ms`. The transition
    /// time changes only when the status does.
    pub fn set(
        &mut self,
        reason: Reason,
        message: impl Into<String>,
        generation: u64,
        now_ms: u64,
    ) {
        let (type_, status) = reason.condition();
        let message = message.into();
        self.observed_generation = self.observed_generation.max(generation);
        match self.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_ms = now_ms;
                }
                c.status = status;
                c.reason = reason;
                c.message = message;
                c.observed_generation = generation;
            }
            None => self.conditions.push(Condition {
                type_,
                status,
                reason,
                message,
                last_transition_ms: now_ms,
                observed_generation: generation,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let mut s = ResourceStatus::default();
        s.set(Reason::Creating, "", 1, 100);
        s.set(Reason::Unavailable, "", 1, 200);
        let ready = s.condition(ConditionType::Ready).unwrap();
        assert_eq!(
            (ready.reason, ready.last_transition_ms),
            (Reason::Unavailable, 100)
        );
        s.set(Reason::Available, "", 2, 300);
        let ready = s.condition(ConditionType::Ready).unwrap();
        assert_eq!(
            (ready.status, ready.last_transition_ms),
            (ConditionStatus::True, 300)
        );
        assert_eq!((ready.observed_generation, s.observed_generation), (2, 2));
        assert!(!s.is_healthy(), "Synced is not set");
        s.set(Reason::ReconcileSuccess, "", 2, 300);
        assert!(s.is_healthy());
        s.set(Reason::ReconcileError, "boom", 2, 400);
        assert!(!s.is_healthy());
        assert_eq!(s.conditions.len(), 2);
    }
}
