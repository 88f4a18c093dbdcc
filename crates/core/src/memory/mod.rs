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

mod engine;
mod fault;
mod reconcile;
mod sim;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::broadcast;

pub use fault::{Fault, FaultTarget};

use crate::clock::{Clock, ManualClock};
#[cfg(doc)]
use crate::engine::Engine;
use crate::engine::{MemoryStateStore, StateStore};
use crate::error::Result;
use crate::model::{AppKey, Event, EventType, InstancePhase, Node, Resources, WorkloadKind};
use crate::placement::{LeastAllocated, NodeView, Placement};
use fault::Faults;
use reconcile::{State, node_index};
use sim::{Emitter, unplace};

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
}
