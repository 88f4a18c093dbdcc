//! The engine's persisted records and the pure decisions over them: phases, group counts,
//! which instances to create or stop, instance ids.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::proc::ProcIdentity;
use rorqual_core::engine::GroupStatus;
use rorqual_core::model::{AppKey, AppSpec, Instance, InstancePhase, Revision, WorkloadKind};
use rorqual_core::network::Attachment;

/// Everything the engine persists.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct State {
    /// Applications by `namespace/name`.
    pub(crate) apps: BTreeMap<String, AppState>,
    /// Instances by id.
    pub(crate) instances: BTreeMap<String, InstanceRecord>,
    /// Supervisor tasks of placed instances (not persisted).
    #[serde(skip)]
    pub(crate) runtimes: HashMap<String, Runtime>,
}

/// The handle of an instance's supervisor task.
#[derive(Debug)]
pub(crate) struct Runtime {
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) done: watch::Receiver<bool>,
    pub(crate) abort: AbortHandle,
}

/// The desired state of one application.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AppState {
    pub(crate) key: AppKey,
    pub(crate) kind: WorkloadKind,
    /// Specs of the revisions in use.
    pub(crate) specs: BTreeMap<Revision, AppSpec>,
    /// Stateless: replicas per revision group.
    pub(crate) groups: BTreeMap<Revision, u32>,
    /// Stateful: the revision of each identity.
    pub(crate) identities: BTreeMap<u32, Revision>,
}

impl AppState {
    pub(crate) fn new(key: AppKey, kind: WorkloadKind) -> Self {
        AppState {
            key,
            kind,
            specs: BTreeMap::new(),
            groups: BTreeMap::new(),
            identities: BTreeMap::new(),
        }
    }

    pub(crate) fn is_stateful(&self) -> bool {
        self.kind == WorkloadKind::Stateful
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.identities.is_empty()
    }
}

/// Why an instance is being stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum StopIntent {
    /// Removed (scale-down, group deletion).
    Remove,
    /// Stateful identity moved to another revision in place.
    Move(Revision),
    /// The engine shuts down; the instance is started again by the next engine.
    Shutdown,
}

/// One container's process state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ContainerRecord {
    pub(crate) name: String,
    pub(crate) process: Option<ProcIdentity>,
    pub(crate) started: bool,
    pub(crate) ready: bool,
    pub(crate) ready_since_start: bool,
    pub(crate) backing_off: bool,
    pub(crate) last_exit: Option<String>,
    pub(crate) restarts: u32,
}

/// One instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InstanceRecord {
    pub(crate) id: String,
    pub(crate) app: AppKey,
    pub(crate) revision: Revision,
    pub(crate) ordinal: Option<u32>,
    /// The node it is placed on (`None`: pending).
    pub(crate) node: Option<String>,
    /// The node it ran on before (stateful identities prefer it).
    pub(crate) last_node: Option<String>,
    /// Its current network attachment.
    pub(crate) attachment: Option<Attachment>,
    /// Its attachment before a move or shutdown (stateful identities get it back).
    pub(crate) previous_attachment: Option<Attachment>,
    pub(crate) created: SystemTime,
    pub(crate) restarts: u32,
    pub(crate) containers: Vec<ContainerRecord>,
    pub(crate) stopping: Option<StopIntent>,
    /// Stopped by an engine shutdown.
    pub(crate) stopped: bool,
    /// Why it is pending, or what went wrong while starting.
    pub(crate) reason: Option<String>,
}

impl InstanceRecord {
    pub(crate) fn new(id: String, spec: &AppSpec, ordinal: Option<u32>) -> Self {
        InstanceRecord {
            id,
            app: spec.key(),
            revision: spec.revision(),
            ordinal,
            node: None,
            last_node: None,
            attachment: None,
            previous_attachment: None,
            created: SystemTime::now(),
            restarts: 0,
            containers: container_records(spec),
            stopping: None,
            stopped: false,
            reason: None,
        }
    }

    /// Active: counted for its group (not stopping, not stopped).
    pub(crate) fn is_active(&self) -> bool {
        self.stopping.is_none() && !self.stopped
    }

    /// Every container passes readiness.
    pub(crate) fn is_ready(&self) -> bool {
        self.node.is_some()
            && self.is_active()
            && !self.containers.is_empty()
            && self.containers.iter().all(|c| c.ready)
    }

    /// The phase and the reason to show for it.
    pub(crate) fn phase(&self) -> (InstancePhase, Option<String>) {
        if self.stopping.is_some() {
            return (InstancePhase::Terminating, None);
        }
        if self.stopped {
            return (InstancePhase::Stopped, Some("engine shut down".to_owned()));
        }
        if self.node.is_none() {
            return (InstancePhase::Pending, self.reason.clone());
        }
        if let Some(c) = self.containers.iter().find(|c| c.backing_off) {
            return (InstancePhase::CrashLoopBackOff, c.last_exit.clone());
        }
        if self
            .containers
            .iter()
            .all(|c| c.started && c.ready_since_start)
        {
            (InstancePhase::Running, None)
        } else {
            (InstancePhase::Starting, self.reason.clone())
        }
    }

    /// The public view.
    pub(crate) fn to_instance(&self) -> Instance {
        let (phase, reason) = self.phase();
        let mut instance = Instance::new(
            self.id.clone(),
            self.app.clone(),
            self.revision.clone(),
            self.created,
        );
        instance.ordinal = self.ordinal;
        instance.node = self.node.clone();
        instance.address = self.attachment.as_ref().map(|a| a.address);
        instance.ports = self
            .attachment
            .as_ref()
            .map(|a| a.ports.clone())
            .unwrap_or_default();
        instance.phase = phase;
        instance.ready = self.is_ready();
        instance.restarts = self.restarts;
        instance.reason = reason;
        instance
    }
}

/// Fresh container records for `spec`.
pub(crate) fn container_records(spec: &AppSpec) -> Vec<ContainerRecord> {
    spec.containers
        .iter()
        .map(|c| ContainerRecord {
            name: c.name.clone(),
            ..ContainerRecord::default()
        })
        .collect()
}

/// The id of stateful identity `ordinal`.
pub(crate) fn stateful_id(app: &str, ordinal: u32) -> String {
    format!("{app}-{ordinal}")
}

/// Five random characters from the alphabet Kubernetes uses for generated names.
pub(crate) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let mut x = h.finish();
    (0..5)
        .map(|_| {
            // The modulo keeps the index below the alphabet's length.
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize];
            x /= ALPHABET.len() as u64;
            char::from(c)
        })
        .collect()
}

/// Which of `candidates` to stop when scaling down by `count`: pending first, then not
/// ready, then the newest (as a ReplicaSet does).
pub(crate) fn scale_down_victims(candidates: &[&InstanceRecord], count: usize) -> Vec<String> {
    let mut sorted: Vec<&&InstanceRecord> = candidates.iter().collect();
    sorted.sort_by(|a, b| {
        (
            a.node.is_some(),
            a.is_ready(),
            std::cmp::Reverse(a.created),
            std::cmp::Reverse(&a.id),
        )
            .cmp(&(
                b.node.is_some(),
                b.is_ready(),
                std::cmp::Reverse(b.created),
                std::cmp::Reverse(&b.id),
            ))
    });
    sorted
        .into_iter()
        .take(count)
        .map(|r| r.id.clone())
        .collect()
}

/// What reconciling one application decides.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// New instances: (id, revision, ordinal).
    pub(crate) create: Vec<(String, Revision, Option<u32>)>,
    /// Active instances to remove.
    pub(crate) remove: Vec<String>,
}

/// Compares an application's desired state with its instances.
pub(crate) fn plan(app: &AppState, instances: &BTreeMap<String, InstanceRecord>) -> Plan {
    let mine: Vec<&InstanceRecord> = instances.values().filter(|r| r.app == app.key).collect();
    let mut plan = Plan::default();
    if app.is_stateful() {
        for (&ordinal, revision) in &app.identities {
            let id = stateful_id(&app.key.name, ordinal);
            if !instances.contains_key(&id) {
                plan.create.push((id, revision.clone(), Some(ordinal)));
            }
        }
        plan.remove = mine
            .iter()
            .filter(|r| r.is_active())
            .filter(|r| r.ordinal.is_none_or(|o| !app.identities.contains_key(&o)))
            .map(|r| r.id.clone())
            .collect();
        // Highest ordinals first.
        plan.remove.sort_by_key(|id| {
            std::cmp::Reverse(
                instances
                    .get(id)
                    .and_then(|r| r.ordinal)
                    .unwrap_or(u32::MAX),
            )
        });
        return plan;
    }
    for (revision, &desired) in &app.groups {
        let active: Vec<&InstanceRecord> = mine
            .iter()
            .copied()
            .filter(|r| &r.revision == revision && r.is_active())
            .collect();
        let desired = desired as usize;
        if active.len() < desired {
            for _ in active.len()..desired {
                let id = loop {
                    let id = format!("{}-{}-{}", app.key.name, revision, random_suffix());
                    if !instances.contains_key(&id) && !plan.create.iter().any(|(c, _, _)| c == &id)
                    {
                        break id;
                    }
                };
                plan.create.push((id, revision.clone(), None));
            }
        } else {
            plan.remove
                .extend(scale_down_victims(&active, active.len() - desired));
        }
    }
    plan.remove.extend(
        mine.iter()
            .filter(|r| r.is_active() && !app.groups.contains_key(&r.revision))
            .map(|r| r.id.clone()),
    );
    plan
}

/// The counts of one revision group.
pub(crate) fn group_status(
    app: Option<&AppState>,
    key: &AppKey,
    revision: &Revision,
    instances: &BTreeMap<String, InstanceRecord>,
) -> GroupStatus {
    let desired = app.map_or(0, |a| {
        if a.is_stateful() {
            a.identities.values().filter(|r| *r == revision).count() as u32
        } else {
            a.groups.get(revision).copied().unwrap_or(0)
        }
    });
    let active: Vec<&InstanceRecord> = instances
        .values()
        .filter(|r| &r.app == key && &r.revision == revision && r.is_active())
        .collect();
    let ready = active.iter().filter(|r| r.is_ready()).count() as u32;
    let mut status = GroupStatus::new(key.clone(), revision.clone(), desired);
    status.current = active.len() as u32;
    status.ready = ready;
    status.available = ready;
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use rorqual_core::model::ContainerSpec;

    fn spec() -> AppSpec {
        AppSpec::new("web", vec![ContainerSpec::new("app", ["/bin/true"])])
    }

    fn placed_ready(id: &str, age_secs: u64) -> InstanceRecord {
        let mut r = InstanceRecord::new(id.into(), &spec(), None);
        r.created = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 - age_secs);
        r.node = Some("node-1".into());
        r.containers[0].started = true;
        r.containers[0].ready = true;
        r.containers[0].ready_since_start = true;
        r
    }

    #[test]
    fn scale_down_prefers_pending_then_unready_then_newest() {
        let old = placed_ready("old", 100);
        let new = placed_ready("new", 10);
        let mut unready = placed_ready("unready", 200);
        unready.containers[0].ready = false;
        let mut pending = placed_ready("pending", 300);
        pending.node = None;
        let all = [&old, &new, &unready, &pending];
        assert_eq!(scale_down_victims(&all, 3), ["pending", "unready", "new"]);
    }

    #[test]
    fn plans_stateless_and_stateful() {
        let s = spec();
        let rev = s.revision();
        let mut app = AppState::new(s.key(), WorkloadKind::Stateless);
        app.groups.insert(rev.clone(), 3);
        let p = plan(&app, &BTreeMap::new());
        assert_eq!(p.create.len(), 3);
        assert!(
            p.create
                .iter()
                .all(|(id, _, _)| id.starts_with(&format!("web-{rev}-")))
        );
        assert!(
            p.create
                .iter()
                .all(|(id, _, _)| id.len() == format!("web-{rev}-").len() + 5)
        );

        let mut st = AppState::new(s.key(), WorkloadKind::Stateful);
        st.identities = (0..3).map(|o| (o, rev.clone())).collect();
        let existing: BTreeMap<String, InstanceRecord> = (0..5)
            .map(|o| {
                let id = stateful_id("web", o);
                (id.clone(), InstanceRecord::new(id, &s, Some(o)))
            })
            .collect();
        let p = plan(&st, &existing);
        assert!(p.create.is_empty());
        assert_eq!(p.remove, ["web-4", "web-3"], "highest ordinals first");
    }

    #[test]
    fn phases() {
        let mut r = InstanceRecord::new("x".into(), &spec(), None);
        r.reason = Some("0/3 nodes available: 3 insufficient cpu".into());
        assert_eq!(r.phase().0, InstancePhase::Pending);
        assert_eq!(
            r.phase().1.as_deref(),
            Some("0/3 nodes available: 3 insufficient cpu")
        );
        r.node = Some("node-1".into());
        r.reason = None;
        r.containers[0].started = true;
        assert_eq!(r.phase().0, InstancePhase::Starting);
        r.containers[0].ready = true;
        r.containers[0].ready_since_start = true;
        assert_eq!(r.phase().0, InstancePhase::Running);
        assert!(r.is_ready());
        r.containers[0].backing_off = true;
        r.containers[0].ready = false;
        r.containers[0].last_exit = Some("exit code 1".into());
        assert_eq!(
            r.phase(),
            (InstancePhase::CrashLoopBackOff, Some("exit code 1".into()))
        );
    }
}
