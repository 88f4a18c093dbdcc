//! Faults a test can inject into the [`MemoryEngine`](super::MemoryEngine).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::model::Revision;

/// What a fault applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultTarget {
    /// Every instance of a revision (present and future).
    Revision(Revision),
    /// One instance, by id.
    Instance(String),
}

/// A fault of instances.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The instances start but never pass readiness (a failing readiness probe).
    NeverReady(FaultTarget),
    /// The instances exit this long after every start, are restarted with Kubernetes' capped
    /// exponential backoff (10 s doubling to 5 min) and show `CrashLoopBackOff` in between.
    CrashAfter(FaultTarget, Duration),
}

impl Fault {
    /// Every instance of `revision` never becomes ready.
    pub fn never_ready_revision(revision: &Revision) -> Self {
        Fault::NeverReady(FaultTarget::Revision(revision.clone()))
    }
    /// Instance `id` never becomes ready.
    pub fn never_ready_instance(id: impl Into<String>) -> Self {
        Fault::NeverReady(FaultTarget::Instance(id.into()))
    }
    /// Every instance of `revision` crashes `after` each start.
    pub fn crash_revision_after(revision: &Revision, after: Duration) -> Self {
        Fault::CrashAfter(FaultTarget::Revision(revision.clone()), after)
    }
    /// Instance `id` crashes `after` each start.
    pub fn crash_instance_after(id: impl Into<String>, after: Duration) -> Self {
        Fault::CrashAfter(FaultTarget::Instance(id.into()), after)
    }
}

/// The injected faults, looked up at every instance transition.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    never_ready: HashSet<FaultTarget>,
    crash_after: HashMap<FaultTarget, Duration>,
}

impl Faults {
    pub(crate) fn add(&mut self, fault: Fault) {
        match fault {
            Fault::NeverReady(t) => {
                self.never_ready.insert(t);
            }
            Fault::CrashAfter(t, d) => {
                // A zero delay would restart and crash in the same instant forever.
                self.crash_after.insert(t, d.max(Duration::from_millis(1)));
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.never_ready.clear();
        self.crash_after.clear();
    }

    pub(crate) fn never_ready(&self, id: &str, revision: &Revision) -> bool {
        !self.never_ready.is_empty()
            && (self
                .never_ready
                .contains(&FaultTarget::Instance(id.to_owned()))
                || self
                    .never_ready
                    .contains(&FaultTarget::Revision(revision.clone())))
    }

    pub(crate) fn crash_after(&self, id: &str, revision: &Revision) -> Option<Duration> {
        if self.crash_after.is_empty() {
            return None;
        }
        self.crash_after
            .get(&FaultTarget::Instance(id.to_owned()))
            .or_else(|| {
                self.crash_after
                    .get(&FaultTarget::Revision(revision.clone()))
            })
            .copied()
    }
}
