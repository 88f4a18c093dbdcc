//! One simulated instance: its record, and the transitions (start, ready, crash, restart)
//! it goes through on the engine's clock.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use super::fault::Faults;
use crate::backoff::Backoff;
use crate::engine::planner::Member;
use crate::model::{
    AppKey, AppSpec, Event, EventType, Instance, InstancePhase, Resources, Revision,
};
use crate::placement::NodeView;

/// One simulated instance and its scheduled transitions.
#[derive(Debug)]
pub(super) struct Sim {
    pub(super) instance: Instance,
    pub(super) resources: Resources,
    /// When it becomes ready (or shows its readiness failure) after the current start.
    pub(super) ready_at: Option<SystemTime>,
    /// When it crashes after the current start.
    pub(super) crash_at: Option<SystemTime>,
    /// When it restarts after a crash.
    pub(super) restart_at: Option<SystemTime>,
    /// The last scheduling failure reported, to report each new reason once.
    pub(super) last_unschedulable: Option<String>,
    /// Since when it passes readiness (stateful identities start after their predecessors).
    pub(super) ready_since: Option<SystemTime>,
    /// Stateful: since when it has waited for a lower ordinal to be ready.
    pub(super) waiting_since: Option<SystemTime>,
}

impl Sim {
    /// The planner's view of this instance.
    pub(super) fn member(&self) -> Member<'_> {
        let i = &self.instance;
        let mut m = Member::new(&i.id, &i.revision, i.created)
            .active(i.phase != InstancePhase::Stopped)
            .placed(i.phase != InstancePhase::Pending)
            .ready(i.ready);
        m.ordinal = i.ordinal;
        m
    }
}

/// Collects events during one call and publishes them afterwards.
pub(super) struct Emitter<'a> {
    pub(super) tx: &'a broadcast::Sender<Event>,
    pub(super) on: bool,
}

impl Emitter<'_> {
    pub(super) fn emit(
        &self,
        time: SystemTime,
        kind: EventType,
        app: &AppKey,
        instance: &str,
        reason: &str,
        message: impl FnOnce() -> String,
    ) {
        if !self.on {
            return;
        }
        let mut event = Event::new(kind, reason, message())
            .app(app.clone())
            .instance(instance);
        event.time = time;
        // Nobody listening is fine: events are best-effort, as in Kubernetes.
        let _ = self.tx.send(event);
    }
}

pub(super) fn new_sim(
    id: String,
    key: &AppKey,
    revision: &Revision,
    ordinal: Option<u32>,
    spec: &AppSpec,
    now: SystemTime,
) -> Sim {
    let ports = spec
        .ports()
        .map(|p| (p.name.clone(), p.number))
        .collect::<BTreeMap<_, _>>();
    Sim {
        instance: Instance {
            id,
            app: key.clone(),
            revision: revision.clone(),
            ordinal,
            node: None,
            address: None,
            ports,
            phase: InstancePhase::Pending,
            ready: false,
            restarts: 0,
            reason: None,
            created: now,
        },
        resources: spec.instance_resources(),
        ready_at: None,
        crash_at: None,
        restart_at: None,
        last_unschedulable: None,
        ready_since: None,
        waiting_since: None,
    }
}

/// Takes an instance off its node's books (its node name stays, as a preference).
pub(super) fn unplace(nodes: &mut [NodeView], sim: &mut Sim) {
    if sim.instance.phase == InstancePhase::Pending {
        return;
    }
    if let Some(view) = sim
        .instance
        .node
        .as_deref()
        .and_then(|n| nodes.iter_mut().find(|v| v.node.name == n))
    {
        view.requested = view.requested.saturating_sub(sim.resources);
        view.instances.remove(&sim.instance.id);
    }
}

/// Starts (or restarts) an instance's processes at `at`.
pub(super) fn start(
    sim: &mut Sim,
    at: SystemTime,
    faults: &Faults,
    startup: Duration,
    ev: &Emitter<'_>,
) {
    sim.instance.phase = InstancePhase::Starting;
    sim.instance.ready = false;
    sim.instance.reason = None;
    sim.ready_since = None;
    sim.ready_at = Some(at + startup);
    sim.restart_at = None;
    sim.crash_at = faults
        .crash_after(&sim.instance.id, &sim.instance.revision)
        .map(|d| at + d);
    let id = &sim.instance.id;
    ev.emit(
        at,
        EventType::Normal,
        &sim.instance.app,
        id,
        "Started",
        || format!("started {id}"),
    );
}

/// Applies every transition of a placed instance due at or before `now`, in time order.
pub(super) fn advance(
    sim: &mut Sim,
    now: SystemTime,
    faults: &Faults,
    startup: Duration,
    ev: &Emitter<'_>,
) {
    loop {
        let next = [sim.ready_at, sim.crash_at, sim.restart_at]
            .into_iter()
            .flatten()
            .min();
        let Some(at) = next else {
            return;
        };
        if at > now {
            return;
        }
        let id = sim.instance.id.clone();
        let app = sim.instance.app.clone();
        if sim.restart_at == Some(at) {
            start(sim, at, faults, startup, ev);
        } else if sim.crash_at == Some(at) {
            sim.instance.restarts += 1;
            let backoff = Backoff::KUBELET_RESTART.delay(sim.instance.restarts.saturating_sub(1));
            sim.instance.phase = InstancePhase::CrashLoopBackOff;
            sim.instance.ready = false;
            sim.ready_since = None;
            sim.instance.reason =
                Some(format!("exit code 1; restarting in {}s", backoff.as_secs()));
            sim.ready_at = None;
            sim.crash_at = None;
            sim.restart_at = Some(at + backoff);
            ev.emit(at, EventType::Warning, &app, &id, "BackOff", || {
                format!(
                    "{id} exited with code 1; back-off {}s restarting",
                    backoff.as_secs()
                )
            });
        } else {
            sim.ready_at = None;
            sim.instance.phase = InstancePhase::Running;
            if faults.never_ready(&id, &sim.instance.revision) {
                sim.instance.ready = false;
                sim.instance.reason = Some("readiness probe failed".to_owned());
                ev.emit(at, EventType::Warning, &app, &id, "Unhealthy", || {
                    format!("readiness probe of {id} failed")
                });
            } else {
                sim.instance.ready = true;
                sim.ready_since = Some(at);
                sim.instance.reason = None;
                ev.emit(at, EventType::Normal, &app, &id, "Ready", || {
                    format!("{id} is ready")
                });
            }
        }
    }
}
