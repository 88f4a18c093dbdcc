//! Gang scheduling (coscheduling): members of a group wait at Permit until `minMember` of them
//! are assumed; then all are allowed. When one member is rejected, times out or is deleted
//! while it waits, Unreserve rejects every waiting sibling, so the whole group releases what it
//! held.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use crate::framework::{
    CycleState, PermitPlugin, Plugin, PodRemoved, ReservePlugin, Status, WaitingPods,
};
use crate::interner::Sym;
use crate::snapshot::PodInfo;

/// The Gang plugin.
#[derive(Debug, Clone)]
pub struct Gang {
    default_timeout: Duration,
    /// group key → uids assumed (reserved) or bound.
    members: Arc<Mutex<HashMap<String, HashSet<Arc<str>>>>>,
    /// The scheduler's waiting-pod registry, captured at the first Permit call.
    waiting: Arc<Mutex<Option<WaitingPods>>>,
}

impl Default for Gang {
    fn default() -> Self {
        Gang::new(Duration::from_secs(60))
    }
}

impl Gang {
    /// Members wait at most `default_timeout` unless their membership says otherwise.
    pub fn new(default_timeout: Duration) -> Gang {
        Gang {
            default_timeout,
            members: Arc::default(),
            waiting: Arc::default(),
        }
    }

    fn group(pod: &PodInfo) -> Option<String> {
        pod.gang
            .as_ref()
            .map(|g| format!("{}/{}", pod.namespace, g.name))
    }
}

impl Plugin for Gang {
    fn name(&self) -> &str {
        "Coscheduling"
    }

    fn validate(&self) -> Result<(), String> {
        if self.default_timeout.is_zero() {
            return Err("permit timeout must be positive".into());
        }
        Ok(())
    }
}

impl ReservePlugin for Gang {
    fn reserve(&self, _state: &mut CycleState, pod: &PodInfo, _node: Sym) -> Status {
        if let Some(group) = Gang::group(pod) {
            self.members
                .lock()
                .entry(group)
                .or_default()
                .insert(pod.uid.clone());
        }
        Status::success()
    }

    fn unreserve(&self, state: &mut CycleState, pod: &PodInfo, _node: Sym) {
        let Some(group) = Gang::group(pod) else {
            return;
        };
        if let Some(set) = self.members.lock().get_mut(&group) {
            set.remove(&pod.uid);
        }
        if state.read::<PodRemoved>().is_some() && !self.is_waiting(pod) {
            // A deleted member that no longer waits just stops counting; siblings keep
            // waiting for a replacement.
            return;
        }
        // Release the whole group: siblings waiting at Permit are rejected (their own
        // Unreserve then gives back what they hold). A member deleted while it waits
        // releases the group here: its binding cycle does not run Unreserve again.
        self.reject_siblings(pod);
    }
}

impl Gang {
    /// The registry captured at the first Permit call (Unreserve gets no registry argument).
    fn registry(&self) -> Option<WaitingPods> {
        self.waiting.lock().clone()
    }

    /// Whether `pod` waits at Permit (the host unreserves a deleted pod before rejecting it).
    fn is_waiting(&self, pod: &PodInfo) -> bool {
        self.registry().is_some_and(|w| w.contains(&pod.uid))
    }

    fn reject_siblings(&self, pod: &PodInfo) {
        if let Some(waiting) = self.registry() {
            for other in waiting.pods() {
                if other.uid != pod.uid && Gang::group(&other) == Gang::group(pod) {
                    waiting.reject(
                        &other.uid,
                        "Coscheduling",
                        &format!("gang member {} was rejected", pod.key()),
                    );
                }
            }
        }
    }
}

impl PermitPlugin for Gang {
    fn permit(
        &self,
        _state: &CycleState,
        pod: &PodInfo,
        _node: Sym,
        waiting: &WaitingPods,
    ) -> (Status, Duration) {
        let (Some(group), Some(gang)) = (Gang::group(pod), pod.gang.as_ref()) else {
            return (Status::success(), Duration::ZERO);
        };
        *self.waiting.lock() = Some(waiting.clone());
        let assumed = self.members.lock().get(&group).map_or(0, HashSet::len);
        if assumed as u64 >= u64::from(gang.min_member) {
            for other in waiting.pods() {
                if Gang::group(&other).as_deref() == Some(group.as_str()) {
                    waiting.allow(&other.uid, self.name());
                }
            }
            return (Status::success(), Duration::ZERO);
        }
        (
            Status::wait(format!(
                "gang {group}: {assumed}/{} members assumed",
                gang.min_member
            )),
            gang.timeout.unwrap_or(self.default_timeout),
        )
    }
}
