//! `MemoryEngine`: the [`Engine`] seam entirely in memory, for controller tests
//! (feature `testing`).
//!
//! - **Deterministic.** Instance ids come from per-application counters
//!   (`web-<revision>-00003`), addresses from a global counter (`10.244.0.3`), and time from a
//!   [`Clock`] (a [`ManualClock`] by default). The same calls at the same clock readings give the
//!   same results.
//! - **Lazy and cheap.** No task per instance: an instance records when it will become ready,
//!   crash or restart, and every engine call first brings the application it touches up to the
//!   clock's `now`. Ten thousand applications cost memory, not CPU.
//! - **Faults.** [`Fault::NeverReady`], [`Fault::CrashAfter`] (restarts with capped exponential
//!   backoff and `CrashLoopBackOff`), and [`MemoryEngine::lose_node`] (stateless instances on the
//!   node are replaced elsewhere, stateful identities rescheduled keeping their address).
//! - **Placement** goes through a [`Placement`] ([`LeastAllocated`] by default) over the
//!   engine's nodes, so an instance that fits nowhere stays `Pending` with the reason.
//!
//! Stateful applications: [`Engine::apply_group`] and [`Engine::scale_group`] set the number of
//! identities (new ordinals start at the given revision, the highest ordinals are removed);
//! identities start in ordinal order, each once the previous one is ready (as `LocalEngine`
//! does; the decisions are [`planner`](crate::engine::planner)'s);
//! [`Engine::delete_group`] removes the identities only when every identity is at that revision.
//!
//! ```
//! use std::time::Duration;
//! use rorqual_core::clock::ManualClock;
//! use rorqual_core::engine::Engine;
//! use rorqual_core::memory::MemoryEngine;
//! use rorqual_core::model::{AppSpec, ContainerSpec};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let clock = ManualClock::new();
//! let engine = MemoryEngine::builder().clock(clock.clone()).startup(Duration::from_secs(2)).build();
//! let spec = AppSpec::new("web", vec![ContainerSpec::new("app", ["web"])]).replicas(3);
//! let group = engine.apply_group(&spec, 3).await.unwrap();
//! assert_eq!((group.current, group.ready), (3, 0));
//! clock.advance(Duration::from_secs(2));
//! assert_eq!(engine.groups(&spec.key()).await.unwrap()[0].ready, 3);
//! # });
//! ```

mod fault;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::broadcast;

pub use fault::{Fault, FaultTarget};

use crate::backoff::Backoff;
use crate::clock::{Clock, ManualClock};
use crate::engine::planner::{self, Desired, Member};
use crate::engine::{Engine, EventStream, GroupStatus, MemoryStateStore, StateStore};
use crate::error::{Error, Result};
use crate::model::{
    AppKey, AppSpec, Event, EventType, Instance, InstancePhase, Node, Resources, Revision,
    ValidationTarget, WorkloadKind,
};
use crate::placement::{LeastAllocated, NodeView, Placement, PlacementRequest};
use fault::Faults;

/// Builds a [`MemoryEngine`].
#[derive(Debug)]
#[must_use]
pub struct MemoryEngineBuilder {
    nodes: Vec<Node>,
    clock: Arc<dyn Clock>,
    startup: Duration,
    placement: Arc<dyn Placement>,
    store: Arc<dyn StateStore>,
}

impl MemoryEngineBuilder {
    /// Replaces the nodes (default: three nodes `node-1..3` of 64 cores and 256 GiB).
    pub fn nodes(mut self, nodes: Vec<Node>) -> Self {
        self.nodes = nodes;
        self
    }

    /// `count` nodes `node-1 … node-<count>` with `capacity` each.
    pub fn uniform_nodes(mut self, count: usize, capacity: Resources) -> Self {
        self.nodes = (1..=count)
            .map(|i| Node::new(format!("node-{i}"), capacity))
            .collect();
        self
    }

    /// The clock (default: a fresh [`ManualClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The clock, shared.
    pub fn shared_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How long an instance takes from placement to ready (default 1 s).
    pub fn startup(mut self, startup: Duration) -> Self {
        self.startup = startup;
        self
    }

    /// The placement (default [`LeastAllocated`]).
    pub fn placement(mut self, placement: Arc<dyn Placement>) -> Self {
        self.placement = placement;
        self
    }

    /// The controller state store (default a fresh [`MemoryStateStore`]).
    pub fn state_store(mut self, store: Arc<dyn StateStore>) -> Self {
        self.store = store;
        self
    }

    /// Builds the engine.
    pub fn build(self) -> MemoryEngine {
        let (events, _) = broadcast::channel(4096);
        MemoryEngine {
            state: tokio::sync::Mutex::new(State {
                nodes: self.nodes.into_iter().map(NodeView::new).collect(),
                apps: BTreeMap::new(),
                next_address: 0,
            }),
            faults: Mutex::new(Faults::default()),
            clock: self.clock,
            startup: self.startup,
            placement: self.placement,
            store: self.store,
            events,
        }
    }
}

/// The in-memory engine. See the [module docs](self).
#[derive(Debug)]
pub struct MemoryEngine {
    state: tokio::sync::Mutex<State>,
    faults: Mutex<Faults>,
    clock: Arc<dyn Clock>,
    startup: Duration,
    placement: Arc<dyn Placement>,
    store: Arc<dyn StateStore>,
    events: broadcast::Sender<Event>,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::builder().build()
    }
}

#[derive(Debug)]
struct State {
    nodes: Vec<NodeView>,
    apps: BTreeMap<AppKey, AppState>,
    next_address: u32,
}

#[derive(Debug)]
struct AppState {
    kind: WorkloadKind,
    /// Every spec applied or moved to, by revision.
    specs: BTreeMap<Revision, Arc<AppSpec>>,
    /// Stateless: desired replicas per revision group.
    groups: BTreeMap<Revision, u32>,
    /// Stateful: the revision of each identity, by ordinal.
    identities: BTreeMap<u32, Revision>,
    /// Stateful: the revision new ordinals start at.
    identity_revision: Option<Revision>,
    instances: BTreeMap<String, Sim>,
    next_id: u64,
}

/// One simulated instance and its scheduled transitions.
#[derive(Debug)]
struct Sim {
    instance: Instance,
    resources: Resources,
    /// When it becomes ready (or shows its readiness failure) after the current start.
    ready_at: Option<SystemTime>,
    /// When it crashes after the current start.
    crash_at: Option<SystemTime>,
    /// When it restarts after a crash.
    restart_at: Option<SystemTime>,
    /// The last scheduling failure reported, to report each new reason once.
    last_unschedulable: Option<String>,
    /// Since when it passes readiness (stateful identities start after their predecessors).
    ready_since: Option<SystemTime>,
    /// Stateful: since when it has waited for a lower ordinal to be ready.
    waiting_since: Option<SystemTime>,
}

impl Sim {
    /// The planner's view of this instance.
    fn member(&self) -> Member<'_> {
        let i = &self.instance;
        let mut m = Member::new(&i.id, &i.revision, i.created)
            .active(i.phase != InstancePhase::Stopped)
            .placed(i.phase != InstancePhase::Pending)
            .ready(i.ready);
        m.ordinal = i.ordinal;
        m
    }
}

impl AppState {
    /// The planner's view of the application's instances.
    fn members(&self) -> Vec<Member<'_>> {
        self.instances.values().map(Sim::member).collect()
    }

    /// The desired state, for the planner.
    fn desired(&self) -> Desired<'_> {
        match self.kind {
            WorkloadKind::Stateful => Desired::Stateful(&self.identities),
            _ => Desired::Stateless(&self.groups),
        }
    }
}

/// Collects events during one call and publishes them afterwards.
struct Emitter<'a> {
    tx: &'a broadcast::Sender<Event>,
    on: bool,
}

impl Emitter<'_> {
    fn emit(
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

impl MemoryEngine {
    /// A builder with the defaults.
    pub fn builder() -> MemoryEngineBuilder {
        let capacity = Resources::new(64_000, 256 * 1024 * 1024 * 1024);
        MemoryEngineBuilder {
            nodes: (1..=3)
                .map(|i| Node::new(format!("node-{i}"), capacity))
                .collect(),
            clock: Arc::new(ManualClock::new()),
            startup: Duration::from_secs(1),
            placement: Arc::new(LeastAllocated),
            store: Arc::new(MemoryStateStore::new()),
        }
    }

    /// An engine with the defaults (three large nodes, a fresh manual clock, 1 s startup).
    pub fn new() -> Self {
        Self::default()
    }

    /// The engine's clock.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Injects a fault. It applies from the next transition of each matching instance.
    pub fn inject(&self, fault: Fault) {
        self.faults.lock().add(fault);
    }

    /// Removes every injected fault (node losses stay until [`MemoryEngine::restore_node`]).
    pub fn clear_faults(&self) {
        self.faults.lock().clear();
    }

    fn emitter(&self) -> Emitter<'_> {
        Emitter {
            tx: &self.events,
            on: self.events.receiver_count() > 0,
        }
    }

    /// Marks node `name` lost: it becomes not ready, its stateless instances are removed and
    /// replaced elsewhere, its stateful identities are rescheduled (keeping their address).
    pub async fn lose_node(&self, name: &str) -> Result<()> {
        let now = self.clock.now();
        let mut st = self.state.lock().await;
        let node_index = node_index(&st, name)?;
        st.nodes[node_index].node.ready = false;
        let ev = self.emitter();
        let keys: Vec<AppKey> = st.apps.keys().cloned().collect();
        for key in keys {
            let State { nodes, apps, .. } = &mut *st;
            let Some(app) = apps.get_mut(&key) else {
                continue;
            };
            let on_node: Vec<String> = app
                .instances
                .iter()
                .filter(|(_, s)| s.instance.node.as_deref() == Some(name))
                .map(|(id, _)| id.clone())
                .collect();
            for id in on_node {
                ev.emit(now, EventType::Warning, &key, &id, "NodeLost", || {
                    format!("node {name} was lost")
                });
                let release = match app.kind {
                    WorkloadKind::Stateful => {
                        let Some(sim) = app.instances.get_mut(&id) else {
                            continue;
                        };
                        unplace(nodes, sim);
                        sim.instance.phase = InstancePhase::Pending;
                        sim.instance.ready = false;
                        sim.instance.reason = Some(format!("node {name} was lost"));
                        sim.ready_at = None;
                        sim.crash_at = None;
                        sim.restart_at = None;
                        id
                    }
                    _ => {
                        if let Some(mut sim) = app.instances.remove(&id) {
                            unplace(nodes, &mut sim);
                        }
                        id
                    }
                };
                self.placement.release(&release).await?;
            }
            if app.kind != WorkloadKind::Stateful {
                self.reconcile_app(&mut st, &key, now).await?;
            }
            self.sync_app(&mut st, &key, now).await?;
        }
        Ok(())
    }

    /// Brings node `name` back; pending instances are placed on the next call.
    pub async fn restore_node(&self, name: &str) -> Result<()> {
        let mut st = self.state.lock().await;
        let i = node_index(&st, name)?;
        st.nodes[i].node.ready = true;
        Ok(())
    }

    /// Brings every application up to the clock's `now` (the engine is lazy: calls about one
    /// application only update that one).
    pub async fn tick(&self) -> Result<()> {
        let now = self.clock.now();
        let mut st = self.state.lock().await;
        let keys: Vec<AppKey> = st.apps.keys().cloned().collect();
        for key in keys {
            self.sync_app(&mut st, &key, now).await?;
        }
        Ok(())
    }

    /// Advances every instance of `key` to `now` and places pending ones.
    async fn sync_app(&self, st: &mut State, key: &AppKey, now: SystemTime) -> Result<()> {
        let ev = self.emitter();
        {
            let Some(app) = st.apps.get_mut(key) else {
                return Ok(());
            };
            let faults = self.faults.lock();
            for sim in app.instances.values_mut() {
                if sim.instance.phase != InstancePhase::Pending {
                    advance(sim, now, &faults, self.startup, &ev);
                }
            }
        }
        self.place_pending(st, key, now).await
    }

    /// Places the pending instances of `key` in the planner's start order. A stateful
    /// identity waits until every lower ordinal is ready, and then starts at the time the last
    /// of them became ready (so the same calls give the same times however the clock is
    /// read); it is then advanced to `now`, so that the next one may start in the same call.
    async fn place_pending(&self, st: &mut State, key: &AppKey, now: SystemTime) -> Result<()> {
        let order: Vec<String> = match st.apps.get(key) {
            Some(app) => planner::start_order(&app.members())
                .into_iter()
                .map(str::to_owned)
                .collect(),
            None => return Ok(()),
        };
        let ev = self.emitter();
        for id in order {
            let mut at = now;
            {
                let Some(app) = st.apps.get_mut(key) else {
                    return Ok(());
                };
                let Some(ordinal) = app.instances.get(&id).and_then(|s| s.instance.ordinal) else {
                    self.try_place(st, key, &id, now).await?;
                    continue;
                };
                let members = app.members();
                if let Some(blocker) = planner::start_blocker(&members, ordinal) {
                    let reason = format!("waiting for {blocker} to be ready");
                    if let Some(sim) = app.instances.get_mut(&id) {
                        sim.instance.reason = Some(reason);
                        sim.waiting_since.get_or_insert(now);
                    }
                    continue;
                }
                if let Some(since) = app.instances.get(&id).and_then(|s| s.waiting_since) {
                    let predecessors_ready = app
                        .instances
                        .values()
                        .filter(|s| s.instance.ordinal.is_some_and(|o| o < ordinal))
                        .filter_map(|s| s.ready_since)
                        .max();
                    at = predecessors_ready.map_or(since, |r| r.max(since)).min(now);
                }
            }
            self.try_place(st, key, &id, at).await?;
            if let Some(sim) = st.apps.get_mut(key).and_then(|a| a.instances.get_mut(&id))
                && sim.instance.phase != InstancePhase::Pending
            {
                let faults = self.faults.lock();
                advance(sim, now, &faults, self.startup, &ev);
            }
        }
        Ok(())
    }

    /// Tries to place a pending instance; on success it starts at `now`.
    async fn try_place(
        &self,
        st: &mut State,
        key: &AppKey,
        id: &str,
        now: SystemTime,
    ) -> Result<()> {
        let ev = self.emitter();
        let State {
            nodes,
            apps,
            next_address,
        } = st;
        let Some(app) = apps.get_mut(key) else {
            return Ok(());
        };
        let Some(sim) = app.instances.get_mut(id) else {
            return Ok(());
        };
        let spec = app.specs.get(&sim.instance.revision);
        let mut request = PlacementRequest::new(
            id,
            key.clone(),
            sim.instance.revision.clone(),
            sim.resources,
        );
        request.ordinal = sim.instance.ordinal;
        request.previous_node = sim.instance.node.clone();
        if let Some(spec) = spec {
            request.labels = spec.labels.clone();
            request.node_selector = spec.node_selector.clone();
            request.tolerations = spec.tolerations.clone();
        }
        match self.placement.place(&request, nodes).await {
            Ok(decision) => {
                let Some(view) = nodes.iter_mut().find(|v| v.node.name == decision.node) else {
                    return Err(Error::BadRequest(format!(
                        "placement chose unknown node `{}` for {id}",
                        decision.node
                    )));
                };
                view.requested = view.requested.saturating_add(sim.resources);
                view.instances.insert(id.to_owned());
                if sim.instance.address.is_none() {
                    *next_address += 1;
                    let n = *next_address;
                    sim.instance.address = Some(IpAddr::V4(Ipv4Addr::new(
                        10,
                        244,
                        (n >> 8) as u8,
                        (n & 0xff) as u8,
                    )));
                }
                sim.instance.node = Some(decision.node.clone());
                sim.last_unschedulable = None;
                sim.waiting_since = None;
                ev.emit(now, EventType::Normal, key, id, "Scheduled", || {
                    format!("assigned {id} to {}", decision.node)
                });
                let faults = self.faults.lock();
                start(sim, now, &faults, self.startup, &ev);
                Ok(())
            }
            Err(Error::Unschedulable { reason, .. }) => {
                if sim.last_unschedulable.as_deref() != Some(reason.as_str()) {
                    ev.emit(now, EventType::Warning, key, id, "FailedScheduling", || {
                        reason.clone()
                    });
                    sim.last_unschedulable = Some(reason.clone());
                }
                sim.instance.reason = Some(reason);
                Ok(())
            }
            Err(other) => Err(other),
        }
    }

    /// Creates and removes instances of `key` as the planner decides, then places pending
    /// ones.
    async fn reconcile_app(&self, st: &mut State, key: &AppKey, now: SystemTime) -> Result<()> {
        let ev = self.emitter();
        let mut removed = Vec::new();
        {
            let State { nodes, apps, .. } = &mut *st;
            let Some(app) = apps.get_mut(key) else {
                return Ok(());
            };
            let plan = planner::plan(&key.name, &app.desired(), &app.members());
            let why = match app.kind {
                WorkloadKind::Stateful => "identities scaled down",
                _ => "group scaled down",
            };
            for id in plan.remove {
                if let Some(mut sim) = app.instances.remove(&id) {
                    unplace(nodes, &mut sim);
                    ev.emit(now, EventType::Normal, key, &id, "Killing", || {
                        format!("stopping {id}: {why}")
                    });
                    removed.push(id);
                }
            }
            for new in plan.create {
                let Some(spec) = app.specs.get(&new.revision).cloned() else {
                    continue;
                };
                let id = match new.ordinal {
                    Some(ordinal) => planner::identity_id(&key.name, ordinal),
                    None => {
                        app.next_id += 1;
                        format!("{}-{}-{:05}", key.name, new.revision, app.next_id)
                    }
                };
                let sim = new_sim(id.clone(), key, &new.revision, new.ordinal, &spec, now);
                app.instances.insert(id, sim);
            }
        }
        for id in removed {
            self.placement.release(&id).await?;
        }
        self.place_pending(st, key, now).await
    }

    fn validate(spec: &AppSpec) -> Result<()> {
        spec.validate(ValidationTarget::default())?;
        Ok(())
    }

    fn group_status(app: &AppState, key: &AppKey, revision: &Revision) -> GroupStatus {
        planner::group_status(key, revision, &app.desired(), &app.members())
    }
}

/// Stateful: sets the number of identities; new ordinals start at `revision`, the highest
/// ordinals go.
fn set_identities(app: &mut AppState, revision: &Revision, count: u32) {
    for ordinal in 0..count {
        app.identities
            .entry(ordinal)
            .or_insert_with(|| revision.clone());
    }
    app.identities.retain(|o, _| *o < count);
    app.identity_revision = Some(revision.clone());
}

fn node_index(st: &State, name: &str) -> Result<usize> {
    st.nodes
        .iter()
        .position(|v| v.node.name == name)
        .ok_or_else(|| Error::NotFound {
            kind: "node",
            name: name.to_owned(),
        })
}

fn new_sim(
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
fn unplace(nodes: &mut [NodeView], sim: &mut Sim) {
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
fn start(sim: &mut Sim, at: SystemTime, faults: &Faults, startup: Duration, ev: &Emitter<'_>) {
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
fn advance(sim: &mut Sim, now: SystemTime, faults: &Faults, startup: Duration, ev: &Emitter<'_>) {
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

#[async_trait]
impl Engine for MemoryEngine {
    fn kind(&self) -> &str {
        "memory"
    }

    async fn nodes(&self) -> Result<Vec<Node>> {
        Ok(self
            .state
            .lock()
            .await
            .nodes
            .iter()
            .map(|v| v.node.clone())
            .collect())
    }

    async fn apply_group(&self, spec: &AppSpec, replicas: u32) -> Result<GroupStatus> {
        Self::validate(spec)?;
        let now = self.clock.now();
        let key = spec.key();
        let revision = spec.revision();
        let mut st = self.state.lock().await;
        let app = st.apps.entry(key.clone()).or_insert_with(|| AppState {
            kind: spec.kind,
            specs: BTreeMap::new(),
            groups: BTreeMap::new(),
            identities: BTreeMap::new(),
            identity_revision: None,
            instances: BTreeMap::new(),
            next_id: 0,
        });
        if app.kind != spec.kind {
            return Err(Error::BadRequest(format!(
                "application {key} is {:?}; cannot apply a {:?} spec",
                app.kind, spec.kind
            )));
        }
        app.specs
            .entry(revision.clone())
            .or_insert_with(|| Arc::new(spec.clone()));
        match spec.kind {
            WorkloadKind::Stateful => {
                set_identities(app, &revision, replicas);
            }
            _ => {
                app.groups.insert(revision.clone(), replicas);
            }
        }
        self.sync_app(&mut st, &key, now).await?;
        self.reconcile_app(&mut st, &key, now).await?;
        let app = st.apps.get(&key).ok_or_else(|| Error::NotFound {
            kind: "application",
            name: key.to_string(),
        })?;
        Ok(Self::group_status(app, &key, &revision))
    }

    async fn scale_group(
        &self,
        app: &AppKey,
        revision: &Revision,
        replicas: u32,
    ) -> Result<GroupStatus> {
        let now = self.clock.now();
        let mut st = self.state.lock().await;
        let not_found = || Error::NotFound {
            kind: "group",
            name: format!("{app}@{revision}"),
        };
        let state = st.apps.get_mut(app).ok_or_else(not_found)?;
        if !state.specs.contains_key(revision) {
            return Err(not_found());
        }
        match state.kind {
            WorkloadKind::Stateful => set_identities(state, revision, replicas),
            _ => {
                if !state.groups.contains_key(revision) {
                    return Err(not_found());
                }
                state.groups.insert(revision.clone(), replicas);
            }
        }
        self.sync_app(&mut st, app, now).await?;
        self.reconcile_app(&mut st, app, now).await?;
        let state = st.apps.get(app).ok_or_else(not_found)?;
        Ok(Self::group_status(state, app, revision))
    }

    async fn delete_group(&self, app: &AppKey, revision: &Revision) -> Result<()> {
        let now = self.clock.now();
        let mut st = self.state.lock().await;
        let Some(state) = st.apps.get_mut(app) else {
            return Ok(());
        };
        match state.kind {
            WorkloadKind::Stateful => {
                let at_rev = state
                    .instances
                    .values()
                    .filter(|s| &s.instance.revision == revision)
                    .count();
                if at_rev == 0 {
                    state.specs.remove(revision);
                    return Ok(());
                }
                if at_rev < state.instances.len() {
                    return Err(Error::BadRequest(format!(
                        "cannot delete revision {revision} of stateful {app}: {} identities run \
                         other revisions; move or scale them first",
                        state.instances.len() - at_rev
                    )));
                }
                state.identities.clear();
                self.reconcile_app(&mut st, app, now).await?;
                st.apps.remove(app);
            }
            _ => {
                if state.groups.remove(revision).is_none() {
                    return Ok(());
                }
                self.reconcile_app(&mut st, app, now).await?;
                if let Some(state) = st.apps.get_mut(app) {
                    state.groups.remove(revision);
                    state.specs.remove(revision);
                    if state.groups.is_empty() {
                        st.apps.remove(app);
                    }
                }
            }
        }
        Ok(())
    }

    async fn groups(&self, app: &AppKey) -> Result<Vec<GroupStatus>> {
        let now = self.clock.now();
        let mut st = self.state.lock().await;
        self.sync_app(&mut st, app, now).await?;
        let Some(state) = st.apps.get(app) else {
            return Ok(Vec::new());
        };
        let revisions: Vec<&Revision> = match state.kind {
            WorkloadKind::Stateful => {
                let mut revs: Vec<&Revision> = state
                    .instances
                    .values()
                    .map(|s| &s.instance.revision)
                    .collect();
                revs.extend(state.identity_revision.as_ref());
                revs.sort();
                revs.dedup();
                revs
            }
            _ => state.groups.keys().collect(),
        };
        Ok(revisions
            .into_iter()
            .map(|r| Self::group_status(state, app, r))
            .collect())
    }

    async fn instances(&self, app: &AppKey) -> Result<Vec<Instance>> {
        let now = self.clock.now();
        let mut st = self.state.lock().await;
        self.sync_app(&mut st, app, now).await?;
        Ok(st
            .apps
            .get(app)
            .map(|a| a.instances.values().map(|s| s.instance.clone()).collect())
            .unwrap_or_default())
    }

    async fn apps(&self) -> Result<Vec<AppKey>> {
        Ok(self.state.lock().await.apps.keys().cloned().collect())
    }

    async fn move_identity(&self, spec: &AppSpec, ordinal: u32) -> Result<Instance> {
        Self::validate(spec)?;
        let now = self.clock.now();
        let key = spec.key();
        let revision = spec.revision();
        let id = format!("{}-{ordinal}", key.name);
        let mut st = self.state.lock().await;
        self.sync_app(&mut st, &key, now).await?;
        let ev = self.emitter();
        {
            let State { nodes, apps, .. } = &mut *st;
            let app = apps.get_mut(&key).ok_or_else(|| Error::NotFound {
                kind: "application",
                name: key.to_string(),
            })?;
            if app.kind != WorkloadKind::Stateful || spec.kind != WorkloadKind::Stateful {
                return Err(Error::BadRequest(format!(
                    "move_identity needs a stateful application and spec; {key} or the spec is stateless"
                )));
            }
            let sim = app.instances.get_mut(&id).ok_or_else(|| Error::NotFound {
                kind: "instance",
                name: id.clone(),
            })?;
            if sim.instance.revision == revision {
                return Ok(sim.instance.clone());
            }
            ev.emit(now, EventType::Normal, &key, &id, "Killing", || {
                format!("stopping {id} to move it to revision {revision}")
            });
            unplace(nodes, sim);
            sim.instance.revision = revision.clone();
            sim.instance.phase = InstancePhase::Pending;
            sim.instance.ready = false;
            sim.instance.restarts = 0;
            sim.instance.reason = None;
            sim.ready_at = None;
            sim.crash_at = None;
            sim.restart_at = None;
            sim.resources = spec.instance_resources();
            app.identities.insert(ordinal, revision.clone());
            app.specs
                .entry(revision.clone())
                .or_insert_with(|| Arc::new(spec.clone()));
        }
        self.placement.release(&id).await?;
        self.place_pending(&mut st, &key, now).await?;
        st.apps
            .get(&key)
            .and_then(|a| a.instances.get(&id))
            .map(|s| s.instance.clone())
            .ok_or(Error::NotFound {
                kind: "instance",
                name: id,
            })
    }

    fn events(&self) -> EventStream {
        let rx = self.events.subscribe();
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(event) => return Some((event, rx)),
                    // A slow reader skips what it missed rather than ending the stream.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }))
    }

    fn state_store(&self) -> Arc<dyn StateStore> {
        self.store.clone()
    }
}
