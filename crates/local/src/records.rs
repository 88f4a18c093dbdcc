//! The engine's persisted records, their phases and instance ids, and their views for the
//! [`planner`](rorqual_core::engine::planner), which decides what to create and stop and
//! counts the groups.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::proc::ProcIdentity;
use rorqual_core::engine::GroupStatus;
use rorqual_core::engine::planner::{self, Desired, Member};
use rorqual_core::model::{AppKey, AppSpec, Instance, InstancePhase, Revision, WorkloadKind};
use rorqual_core::network::Attachment;
use rorqual_core::placement::ReservedAddress;

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

    /// The desired state, for the planner.
    pub(crate) fn desired(&self) -> Desired<'_> {
        if self.is_stateful() {
            Desired::Stateful(&self.identities)
        } else {
            Desired::Stateless(&self.groups)
        }
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
    /// Its node is not ready: its processes were killed and it goes back to Pending, to be
    /// placed again on a ready node. It still counts for its group meanwhile.
    NodeLost(String),
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
    /// The underlay address its placement reserved (the network attaches exactly this one);
    /// absent in state files written before placements could reserve addresses.
    #[serde(default)]
    pub(crate) reserved: Option<ReservedAddress>,
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
            reserved: None,
            created: SystemTime::now(),
            restarts: 0,
            containers: container_records(spec),
            stopping: None,
            stopped: false,
            reason: None,
        }
    }

    /// Active: counted for its group (not stopped, and not stopping except to leave a lost
    /// node).
    pub(crate) fn is_active(&self) -> bool {
        matches!(self.stopping, None | Some(StopIntent::NodeLost(_))) && !self.stopped
    }

    /// The planner's view of this instance.
    pub(crate) fn member(&self) -> Member<'_> {
        let mut m = Member::new(&self.id, &self.revision, self.created)
            .active(self.is_active())
            .placed(self.node.is_some())
            .ready(self.is_ready());
        m.ordinal = self.ordinal;
        m
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
    planner::identity_id(app, ordinal)
}

/// Five random characters from the alphabet Kubernetes uses for generated names.
pub(crate) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect()
}

/// The planner's view of the instances of `app`.
pub(crate) fn members<'a>(
    app: &AppKey,
    instances: &'a BTreeMap<String, InstanceRecord>,
) -> Vec<Member<'a>> {
    instances
        .values()
        .filter(|r| &r.app == app)
        .map(InstanceRecord::member)
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

/// Compares an application's desired state with its instances ([`planner::plan`]), naming
/// new stateless instances `<app>-<revision>-<random suffix>`.
pub(crate) fn plan(app: &AppState, instances: &BTreeMap<String, InstanceRecord>) -> Plan {
    let decided = planner::plan(&app.key.name, &app.desired(), &members(&app.key, instances));
    let mut plan = Plan {
        create: Vec::with_capacity(decided.create.len()),
        remove: decided.remove,
    };
    for new in decided.create {
        let id = match new.ordinal {
            Some(ordinal) => {
                let id = stateful_id(&app.key.name, ordinal);
                // Ids are global: an application of the same name in another namespace may
                // hold this one.
                if instances.contains_key(&id) {
                    continue;
                }
                id
            }
            None => loop {
                let id = format!("{}-{}-{}", app.key.name, new.revision, random_suffix());
                if !instances.contains_key(&id) && !plan.create.iter().any(|(c, _, _)| c == &id) {
                    break id;
                }
            },
        };
        plan.create.push((id, new.revision, new.ordinal));
    }
    plan
}

/// The counts of one revision group ([`planner::group_status`]).
pub(crate) fn group_status(
    app: Option<&AppState>,
    key: &AppKey,
    revision: &Revision,
    instances: &BTreeMap<String, InstanceRecord>,
) -> GroupStatus {
    let members = members(key, instances);
    match app {
        Some(a) => planner::group_status(key, revision, &a.desired(), &members),
        None => planner::group_status(
            key,
            revision,
            &Desired::Stateless(&BTreeMap::new()),
            &members,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rorqual_core::model::ContainerSpec;

    fn spec() -> AppSpec {
        AppSpec::new("web", vec![ContainerSpec::new("app", ["/bin/true"])])
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

    #[test]
    fn records_without_a_reservation_still_load() {
        let mut r = InstanceRecord::new("x".into(), &spec(), Some(0));
        r.reserved = Some(ReservedAddress::new("p", [10, 0, 0, 1].into()));
        r.stopping = Some(StopIntent::NodeLost("n1".into()));
        let mut json = serde_json::to_value(&r).unwrap();
        let back: InstanceRecord = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.reserved, r.reserved);
        assert_eq!(back.stopping, r.stopping);
        assert!(
            back.is_active(),
            "a node-lost instance still counts for its group"
        );
        // A state file written before reservations existed.
        json.as_object_mut().unwrap().remove("reserved");
        let old: InstanceRecord = serde_json::from_value(json).unwrap();
        assert_eq!(old.reserved, None);
    }
}
