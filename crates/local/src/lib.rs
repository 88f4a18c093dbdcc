//! `LocalEngine`: the embedded engine, running instances as real OS processes on this host.
//!
//! - **Nodes** are virtual: N nodes with CPU/memory capacity on this one host; placement
//!   honours their capacity through the [`Placement`] seam (default [`LeastAllocated`]).
//! - **Instances** are processes started from each container's `command` and `args`, each in
//!   its own process group (so its children are stopped with it), in a working directory under
//!   the state directory where the spec's config files are written. Their environment holds the
//!   spec's variables and `PORT` (the container's first port), `PORT_<NAME>` for every port,
//!   `INSTANCE_ID`, `INSTANCE_IP`, `REVISION`, `NODE_NAME`, `APP_NAME`, `NAMESPACE`, and
//!   `ORDINAL` for stateful identities. An attachment with a network namespace runs the process
//!   through `nsenter --net=<path>`.
//! - **Probes** (HTTP, TCP, exec) set readiness; a failing liveness probe restarts the process.
//! - **Restarts** follow a capped exponential backoff (10 s doubling to 5 min, as the kubelet;
//!   configurable); while waiting the phase is `CrashLoopBackOff` with the last exit reason
//!   (`exit code 1`, `killed by signal 9`).
//! - **Stopping** sends SIGTERM to the process group, waits the spec's grace period, then sends
//!   SIGKILL.
//! - **Logs**: stdout and stderr of each container go to `instances/<id>/logs/<container>.log`,
//!   readable and followable through [`Engine::logs`].
//! - **Pending**: an instance no node can take stays `Pending` with the placement's reason and
//!   is placed as soon as capacity frees up.
//! - **Stateful** workloads have identities `name-0`, `name-1`, … started in ordinal order (each
//!   after the previous is ready), keeping their node and address across restarts and
//!   [`Engine::move_identity`]; scaling down removes the highest ordinals first.
//!
//! # The state directory
//!
//! Applications, groups and instances (with each process's PID *and start time*, so a reused
//! PID is never mistaken for an instance) are kept in the state directory, together with the
//! controller [`StateStore`] ([`FileStateStore`], an append-only log written and fsynced by its
//! own writer thread; see its docs). The engine's own state is written into rotating slot
//! files, so a crashed engine never leaves a torn state; the state at shutdown is fsynced. The
//! directory is locked while an engine uses it.
//!
//! A new `LocalEngine` on the same directory re-adopts the instances whose processes still run
//! (and re-registers their addresses with [`Network::adopt`]) and restarts the ones whose
//! processes are gone: instances are neither orphaned nor lost. A directory that holds other
//! files, a bad marker or undecodable state is refused with [`Error::CorruptState`] naming the
//! file; it is never wiped.
//!
//! [`Engine::shutdown`] stops every process (the desired state stays, so a later engine on the
//! same directory starts the applications again). **Dropping** a `LocalEngine` without
//! `shutdown` leaves its processes running, for the next engine on the directory to adopt.
//!
//! ```no_run
//! use rorqual_core::engine::Engine;
//! use rorqual_local::LocalEngine;
//! use rorqual_core::model::{AppSpec, ContainerSpec, Probe};
//!
//! # async fn run() -> rorqual_core::Result<()> {
//! let engine = LocalEngine::builder().nodes(3).build().await?;
//! let spec = AppSpec::new(
//!     "web",
//!     vec![ContainerSpec::new("app", ["rorqual-demo"]).port("http", 8080)
//!         .readiness(Probe::http("/healthz", "http").period(0.2))],
//! );
//! engine.apply_group(&spec, 3).await?;
//! for instance in engine.instances(&spec.key()).await? {
//!     println!("{} on {:?} at {:?}", instance.id, instance.node, instance.endpoint("http"));
//! }
//! engine.shutdown().await?;
//! # Ok(()) }
//! ```

mod host_network;
mod logs;
mod probe;
mod proc;
mod records;
mod state_dir;
mod state_file;
mod store;
mod supervise;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use nix::fcntl::Flock;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{Notify, broadcast, watch};
use tracing::Instrument;

pub use host_network::{DEFAULT_PORT_RANGE, HostNetwork, SERVER_PORT_RANGE, free_loopback_port};
pub use store::FileStateStore;

use self::proc::{ProcIdentity, is_alive};
use self::records::{
    AppState, InstanceRecord, Runtime, State, StopIntent, container_records, group_status, plan,
    stateful_id,
};
use rorqual_core::backoff::Backoff;
use rorqual_core::engine::planner;
use rorqual_core::engine::{Engine, EventStream, GroupStatus, LogOptions, LogStream, StateStore};
use rorqual_core::error::{Error, Result};
use rorqual_core::model::{
    AppKey, AppSpec, Event, EventType, Instance, Node, Resources, Revision, ValidationTarget,
    WorkloadKind,
};
use rorqual_core::network::Network;
use rorqual_core::placement::{LeastAllocated, NodeView, Placement, PlacementRequest};

/// Builds a [`LocalEngine`].
#[derive(Debug)]
#[must_use]
pub struct LocalEngineBuilder {
    node_count: u32,
    node_capacity: Resources,
    nodes: Vec<Node>,
    placement: Arc<dyn Placement>,
    network: Arc<dyn Network>,
    state_dir: Option<PathBuf>,
    backoff: Backoff,
    adopt_poll: Duration,
}

impl LocalEngineBuilder {
    /// Adds `n` virtual nodes `node-1 … node-n` (after those already added) with the default
    /// capacity (see [`LocalEngineBuilder::node_capacity`]).
    pub fn nodes(mut self, n: u32) -> Self {
        self.node_count = n;
        self
    }

    /// The capacity of nodes added by [`LocalEngineBuilder::nodes`] (default 4 cores, 8Gi).
    pub fn node_capacity(mut self, capacity: Resources) -> Self {
        self.node_capacity = capacity;
        self
    }

    /// Adds a node described in full (labels, taints, capacity).
    pub fn node(mut self, node: Node) -> Self {
        self.nodes.push(node);
        self
    }

    /// Where instances go (default [`LeastAllocated`]).
    pub fn placement(mut self, placement: Arc<dyn Placement>) -> Self {
        self.placement = placement;
        self
    }

    /// How instances are reached (default [`HostNetwork`]: 127.0.0.1 and free host ports).
    pub fn network(mut self, network: Arc<dyn Network>) -> Self {
        self.network = network;
        self
    }

    /// The state directory (default: a new temporary directory, removed by
    /// [`Engine::shutdown`]).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// The restart backoff: the first delay and the cap (default 10 s and 5 min, doubling:
    /// [`Backoff::KUBELET_RESTART`]).
    pub fn restart_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff = Backoff::new(base, cap);
        self
    }

    /// How often the liveness of an adopted process (one started by an earlier engine, which
    /// is not this process's child) is checked (default 250 ms).
    pub fn adopted_poll_interval(mut self, interval: Duration) -> Self {
        self.adopt_poll = interval;
        self
    }

    fn all_nodes(&self) -> Result<Vec<Node>> {
        let mut nodes = self.nodes.clone();
        let mut problems = Vec::new();
        let mut i = 0;
        let mut added = 0;
        while added < self.node_count {
            i += 1;
            let name = format!("node-{i}");
            if nodes.iter().any(|n| n.name == name) {
                continue;
            }
            nodes.push(Node::new(name, self.node_capacity));
            added += 1;
        }
        if nodes.is_empty() {
            problems.push("at least one node is required (use .nodes(n) or .node(..))".to_owned());
        }
        let mut names = BTreeSet::new();
        for n in &nodes {
            if !names.insert(n.name.as_str()) {
                problems.push(format!("duplicate node name {:?}", n.name));
            }
        }
        if self.backoff.initial.is_zero() {
            problems.push("restart backoff base must be > 0".to_owned());
        }
        if self.backoff.initial > self.backoff.max {
            problems.push(format!(
                "restart backoff base {:?} exceeds its cap {:?}",
                self.backoff.initial, self.backoff.max
            ));
        }
        if self.adopt_poll.is_zero() {
            problems.push("adopted poll interval must be > 0".to_owned());
        }
        if problems.is_empty() {
            Ok(nodes)
        } else {
            Err(Error::BadRequest(format!(
                "local engine: {}",
                problems.join("; ")
            )))
        }
    }

    /// Validates the configuration, opens and locks the state directory, re-adopts or restarts
    /// the instances recorded there, and starts the engine. Needs a Tokio runtime.
    pub async fn build(self) -> Result<LocalEngine> {
        let nodes = self.all_nodes()?;
        let (dir, owned) = match &self.state_dir {
            Some(d) => (d.clone(), false),
            None => (
                std::env::temp_dir().join(format!(
                    "rorqual-local-{}-{}",
                    std::process::id(),
                    records::random_suffix()
                )),
                true,
            ),
        };
        let lock = state_dir::open_dir(&dir)?;
        let (state_file, loaded) = state_file::StateFile::open(&dir)?;
        let state: State = match &loaded.body {
            Some(body) => serde_json::from_slice(body).map_err(|e| Error::CorruptState {
                location: loaded.path.display().to_string(),
                reason: format!("invalid JSON: {e}"),
            })?,
            None => State::default(),
        };
        let store = Arc::new(FileStateStore::open(dir.join(state_dir::STORE_FILE))?);
        let (events, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            nodes,
            placement: self.placement,
            network: self.network,
            dir: dir.clone(),
            owned_dir: owned,
            backoff: self.backoff,
            adopt_poll: self.adopt_poll,
            state: Mutex::new(State::default()),
            events,
            store,
            sched: tokio::sync::Mutex::new(()),
            kick: Notify::new(),
            closed: AtomicBool::new(false),
            shut_down: AtomicBool::new(false),
            shutdown_done: AtomicBool::new(false),
            scheduler: Mutex::new(None),
            state_seq: AtomicU64::new(0),
            state_written: Mutex::new(StateWriter {
                file: state_file,
                written: 0,
            }),
            state_pending: Mutex::new(None),
        });
        let span = tracing::info_span!("local_engine_build", dir = %dir.display());
        inner.recover(state).instrument(span).await?;
        let weak = Arc::downgrade(&inner);
        let task = tokio::spawn(scheduler_loop(weak));
        *inner.scheduler.lock() = Some(task.abort_handle());
        inner.schedule_pass().await;
        Ok(LocalEngine { inner, _lock: lock })
    }
}

async fn scheduler_loop(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let notified = {
            let kick = &strong.kick;
            kick.notified()
        };
        notified.await;
        strong.schedule_pass().await;
    }
}

/// The embedded engine: instances are OS processes on this host (see the module docs).
pub struct LocalEngine {
    inner: Arc<Inner>,
    _lock: Flock<File>,
}

impl std::fmt::Debug for LocalEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEngine")
            .field("state_dir", &self.inner.dir)
            .field("nodes", &self.inner.nodes.len())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    nodes: Vec<Node>,
    pub(crate) placement: Arc<dyn Placement>,
    pub(crate) network: Arc<dyn Network>,
    dir: PathBuf,
    owned_dir: bool,
    pub(crate) backoff: Backoff,
    pub(crate) adopt_poll: Duration,
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    store: Arc<FileStateStore>,
    sched: tokio::sync::Mutex<()>,
    kick: Notify,
    closed: AtomicBool,
    shut_down: AtomicBool,
    /// Set once `shutdown` has stopped every process (it may be cancelled half-way).
    shutdown_done: AtomicBool,
    scheduler: Mutex<Option<tokio::task::AbortHandle>>,
    /// Sequence number of the newest encoded state ([`Inner::encode_state`]).
    state_seq: AtomicU64,
    /// The state file and the sequence number of the state on it; its lock serialises the
    /// writes.
    state_written: Mutex<StateWriter>,
    /// The newest encoded state not yet taken by a writer.
    state_pending: Mutex<Option<EncodedState>>,
}

/// The engine's state file and what was last written to it.
#[derive(Debug)]
struct StateWriter {
    file: state_file::StateFile,
    /// Sequence number ([`Inner::encode_state`]) of the state on disk.
    written: u64,
}

/// The state file's bytes and the sequence number they were encoded with.
#[derive(Debug)]
struct EncodedState {
    seq: u64,
    bytes: Vec<u8>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Writes `st` (the locked state) to the state file, atomically but without waiting for
    /// the disk.
    fn persist(&self, st: &State) {
        if let Some(encoded) = self.encode_state(st) {
            self.write_state(encoded, false);
        }
    }

    /// Encodes the locked state with the next sequence number. The number is taken under the
    /// state lock, so a higher number always means a newer state.
    fn encode_state(&self, st: &State) -> Option<EncodedState> {
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        match state_dir::encode(&self.dir, st) {
            Ok(bytes) => Some(EncodedState {
                seq: self.state_seq.fetch_add(1, Ordering::SeqCst) + 1,
                bytes,
            }),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the local engine's state");
                None
            }
        }
    }

    /// Writes an encoded state unless a newer one is already on disk. Callers may do this
    /// after releasing the state lock, so that supervisors do not queue behind file I/O.
    ///
    /// Writes coalesce: the state is left in a slot that holds the newest one, and whoever gets
    /// the write lock writes what the slot holds. A caller whose state a newer one replaced
    /// returns once that newer state is on disk (its writer held the lock meanwhile).
    fn write_state(&self, encoded: EncodedState, durable: bool) {
        {
            let mut slot = self.state_pending.lock();
            if slot.as_ref().is_none_or(|p| p.seq < encoded.seq) {
                *slot = Some(encoded);
            }
        }
        let mut writer = self.state_written.lock();
        let pending = self.state_pending.lock().take();
        let result = match pending {
            Some(newest) if newest.seq > writer.written => {
                let seq = newest.seq;
                writer
                    .file
                    .write(&newest.bytes, durable)
                    .map(|()| writer.written = seq)
            }
            // Someone else wrote this state or a newer one, perhaps without waiting for the
            // disk: a durable caller still needs it there.
            _ if durable => writer.file.sync_newest(),
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot persist the local engine's state");
        }
    }

    pub(crate) fn emit(
        &self,
        event_type: EventType,
        reason: &str,
        app: &AppKey,
        instance: Option<&str>,
        message: impl Into<String>,
    ) {
        let message = message.into();
        match event_type {
            EventType::Normal => {
                tracing::info!(reason, app = %app, instance, "{message}");
            }
            EventType::Warning => {
                tracing::warn!(reason, app = %app, instance, "{message}");
            }
        }
        let mut event = Event::new(event_type, reason, message).app(app.clone());
        if let Some(id) = instance {
            event = event.instance(id);
        }
        // No subscribers is fine.
        let _ = self.events.send(event);
    }

    pub(crate) fn instance_dir(&self, id: &str) -> PathBuf {
        self.dir.join("instances").join(id)
    }

    pub(crate) fn spec_and_record(&self, id: &str) -> Option<(AppSpec, InstanceRecord)> {
        let st = self.lock();
        let rec = st.instances.get(id)?;
        let spec = st
            .apps
            .get(&rec.app.to_string())?
            .specs
            .get(&rec.revision)?;
        Some((spec.clone(), rec.clone()))
    }

    fn with_record(&self, id: &str, persist: bool, f: impl FnOnce(&mut InstanceRecord)) {
        let encoded = {
            let mut st = self.lock();
            let Some(rec) = st.instances.get_mut(id) else {
                return;
            };
            f(rec);
            if !persist {
                return;
            }
            self.encode_state(&st)
        };
        if let Some(encoded) = encoded {
            self.write_state(encoded, false);
        }
    }

    pub(crate) fn set_reason(&self, id: &str, reason: Option<String>) {
        self.with_record(id, false, |r| r.reason = reason);
    }

    /// Records the instance's attachment. It reaches the disk with the process that uses it
    /// ([`Inner::container_started`]): an attachment without a process needs no adopting, and
    /// the network hands the same owner the same address again.
    pub(crate) fn set_attachment(&self, id: &str, attachment: rorqual_core::network::Attachment) {
        self.with_record(id, false, |r| {
            r.attachment = Some(attachment);
            r.previous_attachment = None;
        });
    }

    pub(crate) fn container_started(
        &self,
        id: &str,
        index: usize,
        process: ProcIdentity,
        adopted: bool,
        ready_without_probe: bool,
    ) {
        let mut app = None;
        let mut became_ready = false;
        self.with_record(id, true, |r| {
            // Checked under the state lock, which `Drop` takes after setting `closed`: either
            // the process is recorded before `Drop` looks, or it is ended here.
            if self.owned_dir && self.closed.load(Ordering::SeqCst) {
                // Started while the engine was being dropped: nobody could adopt it later.
                proc::kill_group_now(&process);
                return;
            }
            let was_ready = r.is_ready();
            if let Some(c) = r.containers.get_mut(index) {
                c.process = Some(process);
                c.started = true;
                c.backing_off = false;
                c.ready = ready_without_probe;
                c.ready_since_start = ready_without_probe;
            }
            became_ready = !was_ready && r.is_ready();
            app = Some(r.app.clone());
        });
        if let Some(app) = app {
            let (reason, verb) = if adopted {
                ("Adopted", "adopted running")
            } else {
                ("Started", "started")
            };
            self.emit(
                EventType::Normal,
                reason,
                &app,
                Some(id),
                format!("{verb} process {}", process.pid),
            );
            if became_ready {
                self.emit(
                    EventType::Normal,
                    "Ready",
                    &app,
                    Some(id),
                    "instance is ready",
                );
                self.kick.notify_one();
            }
        }
    }

    pub(crate) fn container_exited(&self, id: &str, index: usize, reason: &str, delay: Duration) {
        let mut app = None;
        let mut name = String::new();
        self.with_record(id, true, |r| {
            if let Some(c) = r.containers.get_mut(index) {
                c.process = None;
                c.ready = false;
                c.backing_off = true;
                c.last_exit = Some(reason.to_owned());
                name.clone_from(&c.name);
            }
            app = Some(r.app.clone());
        });
        if let Some(app) = app {
            self.emit(
                EventType::Warning,
                "BackOff",
                &app,
                Some(id),
                format!("back-off {delay:?} restarting failed container {name}: {reason}"),
            );
        }
    }

    pub(crate) fn container_restarting(&self, id: &str, index: usize) {
        self.with_record(id, false, |r| {
            r.restarts = r.restarts.saturating_add(1);
            if let Some(c) = r.containers.get_mut(index) {
                c.restarts = c.restarts.saturating_add(1);
            }
        });
    }

    pub(crate) fn container_stopped(&self, id: &str, index: usize) {
        self.with_record(id, true, |r| {
            if let Some(c) = r.containers.get_mut(index) {
                c.process = None;
                c.ready = false;
                c.started = false;
                c.backing_off = false;
            }
        });
    }

    pub(crate) fn set_ready(&self, id: &str, index: usize, passing: bool, error: Option<String>) {
        let mut change = None;
        self.with_record(id, false, |r| {
            let was = r.is_ready();
            if let Some(c) = r.containers.get_mut(index) {
                c.ready = passing;
                if passing {
                    c.ready_since_start = true;
                }
            }
            if was != r.is_ready() || !passing {
                change = Some((r.app.clone(), r.is_ready()));
            }
        });
        match change {
            Some((app, true)) => {
                self.emit(
                    EventType::Normal,
                    "Ready",
                    &app,
                    Some(id),
                    "instance is ready",
                );
                self.kick.notify_one();
            }
            Some((app, false)) => self.emit(
                EventType::Warning,
                "Unhealthy",
                &app,
                Some(id),
                format!(
                    "readiness probe failed: {}",
                    error.unwrap_or_else(|| "unknown error".to_owned())
                ),
            ),
            None => {}
        }
    }

    /// Marks `id` as stopping for `intent`: signals its supervisor, or finishes at once when it
    /// has none. Returns the supervisor's completion signal.
    fn begin_stop(
        &self,
        st: &mut State,
        id: &str,
        intent: StopIntent,
    ) -> Option<watch::Receiver<bool>> {
        let rec = st.instances.get_mut(id)?;
        if rec.stopping.is_some() {
            return st.runtimes.get(id).map(|r| r.done.clone());
        }
        rec.stopping = Some(intent.clone());
        let app = rec.app.clone();
        if let Some(rt) = st.runtimes.get(id) {
            let done = rt.done.clone();
            // The supervisor may already have ended; then the intent is applied below.
            let _ = rt.stop.send(true);
            self.emit(
                EventType::Normal,
                "Killing",
                &app,
                Some(id),
                match intent {
                    StopIntent::Remove => "stopping instance".to_owned(),
                    StopIntent::Move(rev) => format!("stopping instance to move it to {rev}"),
                    StopIntent::Shutdown => "stopping instance: engine shutdown".to_owned(),
                },
            );
            Some(done)
        } else {
            self.apply_stop(st, id);
            None
        }
    }

    /// Applies a finished stop to the record (under the state lock).
    fn apply_stop(&self, st: &mut State, id: &str) {
        st.runtimes.remove(id);
        let Some(rec) = st.instances.get_mut(id) else {
            return;
        };
        let Some(intent) = rec.stopping.take() else {
            // The supervisor ended without a stop request (the engine is closing).
            return;
        };
        let app = rec.app.clone();
        let stateful = rec.ordinal.is_some();
        if let Some(node) = rec.node.take() {
            rec.last_node = Some(node);
        }
        let previous = rec.attachment.take();
        if stateful && previous.is_some() {
            rec.previous_attachment = previous;
        }
        for c in &mut rec.containers {
            c.process = None;
            c.started = false;
            c.ready = false;
            c.ready_since_start = false;
            c.backing_off = false;
        }
        match intent {
            StopIntent::Remove => {
                st.instances.remove(id);
                let dir = self.instance_dir(id);
                if let Err(e) = std::fs::remove_dir_all(&dir)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(error = %e, dir = %dir.display(), "cannot remove instance directory");
                }
                self.emit(
                    EventType::Normal,
                    "Removed",
                    &app,
                    Some(id),
                    "instance removed",
                );
            }
            StopIntent::Move(revision) => {
                let containers = st
                    .apps
                    .get(&app.to_string())
                    .and_then(|a| a.specs.get(&revision))
                    .map(container_records);
                if let Some(rec) = st.instances.get_mut(id) {
                    rec.revision = revision;
                    rec.reason = None;
                    if let Some(containers) = containers {
                        rec.containers = containers;
                    }
                }
            }
            StopIntent::Shutdown => rec.stopped = true,
        }
        self.reconcile(st, &app);
    }

    pub(crate) fn finish_stop(&self, id: &str) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut st = self.lock();
        self.apply_stop(&mut st, id);
        self.persist(&st);
        drop(st);
        self.kick.notify_one();
    }

    /// Creates and removes instances of `app` to match its desired state.
    fn reconcile(&self, st: &mut State, app: &AppKey) {
        if self.shut_down.load(Ordering::SeqCst) {
            return;
        }
        let Some(app_state) = st.apps.get(&app.to_string()) else {
            return;
        };
        let plan = plan(app_state, &st.instances);
        let mut specs = Vec::new();
        for (id, revision, ordinal) in plan.create {
            if let Some(spec) = app_state.specs.get(&revision) {
                specs.push(InstanceRecord::new(id, spec, ordinal));
            }
        }
        for rec in specs {
            st.instances.insert(rec.id.clone(), rec);
        }
        for id in plan.remove {
            self.begin_stop(st, &id, StopIntent::Remove);
        }
        // Forget specs no group, identity or instance uses.
        let used: BTreeSet<Revision> = st
            .instances
            .values()
            .filter(|r| &r.app == app)
            .map(|r| r.revision.clone())
            .chain(st.instances.values().filter(|r| &r.app == app).filter_map(
                |r| match &r.stopping {
                    Some(StopIntent::Move(rev)) => Some(rev.clone()),
                    _ => None,
                },
            ))
            .collect();
        if let Some(a) = st.apps.get_mut(&app.to_string()) {
            let keep: BTreeSet<Revision> = a
                .groups
                .keys()
                .chain(a.identities.values())
                .cloned()
                .chain(used)
                .collect();
            a.specs.retain(|rev, _| keep.contains(rev));
            if a.is_empty() && a.specs.is_empty() {
                st.apps.remove(&app.to_string());
            }
        }
    }

    fn node_views(&self, st: &State) -> Vec<NodeView> {
        let mut views: Vec<NodeView> = self.nodes.iter().cloned().map(NodeView::new).collect();
        for rec in st.instances.values() {
            let Some(node) = &rec.node else { continue };
            let Some(view) = views.iter_mut().find(|v| &v.node.name == node) else {
                continue;
            };
            let resources = st
                .apps
                .get(&rec.app.to_string())
                .and_then(|a| a.specs.get(&rec.revision))
                .map(AppSpec::instance_resources)
                .unwrap_or_default();
            view.requested = view.requested.saturating_add(resources);
            view.instances.insert(rec.id.clone());
            if let Some(a) = &rec.attachment
                && a.netns.is_none()
            {
                view.used_ports.extend(a.ports.values().copied());
            }
        }
        views
    }

    /// Places pending instances, in creation order (stateful identities in ordinal order, each
    /// after the previous is ready), and starts the placed ones.
    async fn schedule_pass(self: &Arc<Self>) {
        let _guard = self.sched.lock().await;
        if self.closed.load(Ordering::SeqCst) || self.shut_down.load(Ordering::SeqCst) {
            return;
        }
        let candidates: Vec<String> = {
            let st = self.lock();
            let apps: BTreeSet<&AppKey> = st
                .instances
                .values()
                .filter(|r| r.node.is_none() && r.is_active())
                .map(|r| &r.app)
                .collect();
            apps.into_iter()
                .flat_map(|app| {
                    planner::start_order(&records::members(app, &st.instances))
                        .into_iter()
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for id in candidates {
            let (request, views) = {
                let mut st = self.lock();
                let Some(rec) = st.instances.get(&id) else {
                    continue;
                };
                if rec.node.is_some() || !rec.is_active() {
                    continue;
                }
                if let Some(ordinal) = rec.ordinal {
                    let members = records::members(&rec.app, &st.instances);
                    if let Some(blocker) = planner::start_blocker(&members, ordinal) {
                        let reason = format!("waiting for {blocker} to be ready");
                        if let Some(r) = st.instances.get_mut(&id) {
                            r.reason = Some(reason);
                        }
                        continue;
                    }
                }
                let Some(spec) = st
                    .apps
                    .get(&rec.app.to_string())
                    .and_then(|a| a.specs.get(&rec.revision))
                else {
                    continue;
                };
                let mut request = PlacementRequest::new(
                    id.clone(),
                    rec.app.clone(),
                    rec.revision.clone(),
                    spec.instance_resources(),
                );
                request.ordinal = rec.ordinal;
                request.labels = spec.labels.clone();
                request.node_selector = spec.node_selector.clone();
                request.tolerations = spec.tolerations.clone();
                request.previous_node = rec.last_node.clone();
                (request, self.node_views(&st))
            };
            let result = self
                .placement
                .place(&request, &views)
                .instrument(tracing::debug_span!("place", instance = %id))
                .await;
            let release = {
                let mut st = self.lock();
                let eligible = st
                    .instances
                    .get(&id)
                    .is_some_and(|r| r.node.is_none() && r.is_active());
                if !eligible || self.closed.load(Ordering::SeqCst) {
                    result.is_ok()
                } else {
                    self.apply_placement(&mut st, &id, result);
                    false
                }
            };
            if release {
                let _ = self.placement.release(&id).await;
            }
        }
    }

    /// Records a placement result for a pending instance (under the state lock).
    fn apply_placement(
        self: &Arc<Self>,
        st: &mut State,
        id: &str,
        result: Result<rorqual_core::placement::PlacementDecision>,
    ) {
        match result {
            Ok(decision) => {
                let Some(rec) = st.instances.get_mut(id) else {
                    return;
                };
                rec.node = Some(decision.node.clone());
                rec.reason = None;
                let app = rec.app.clone();
                self.emit(
                    EventType::Normal,
                    "Scheduled",
                    &app,
                    Some(id),
                    format!("assigned {id} to {}", decision.node),
                );
                // Persisted by the supervisor once attached (a crash before that leaves the
                // instance pending, and the next engine places it again).
                self.start_supervisor(st, id, false, false);
            }
            Err(e) => {
                let reason = match e {
                    Error::Unschedulable { reason, .. } => reason,
                    other => other.to_string(),
                };
                if let Some(rec) = st.instances.get_mut(id)
                    && rec.reason.as_deref() != Some(reason.as_str())
                {
                    rec.reason = Some(reason.clone());
                    let app = rec.app.clone();
                    self.emit(
                        EventType::Warning,
                        "FailedScheduling",
                        &app,
                        Some(id),
                        reason,
                    );
                }
            }
        }
    }

    fn start_supervisor(self: &Arc<Self>, st: &mut State, id: &str, adopt: bool, stop_now: bool) {
        let (stop_tx, stop_rx) = watch::channel(stop_now);
        let (done_tx, done_rx) = watch::channel(false);
        let task = tokio::spawn(supervise::run_instance(
            self.clone(),
            id.to_owned(),
            stop_rx,
            done_tx,
            adopt,
        ));
        st.runtimes.insert(
            id.to_owned(),
            Runtime {
                stop: stop_tx,
                done: done_rx,
                abort: task.abort_handle(),
            },
        );
    }

    /// Takes over the state a previous engine left.
    async fn recover(self: &Arc<Self>, mut state: State) -> Result<()> {
        let mut restarted = Vec::new();
        for rec in state.instances.values_mut() {
            rec.stopped = false;
            for c in &mut rec.containers {
                c.ready = false;
                c.ready_since_start = false;
                c.backing_off = false;
                c.started = false;
                if let Some(p) = c.process
                    && !is_alive(&p)
                {
                    c.process = None;
                    if rec.stopping.is_none() {
                        c.restarts = c.restarts.saturating_add(1);
                        rec.restarts = rec.restarts.saturating_add(1);
                        c.last_exit =
                            Some("process ended while no engine supervised it".to_owned());
                        restarted.push((rec.app.clone(), rec.id.clone(), c.name.clone(), p.pid));
                    }
                }
            }
        }
        let placed: Vec<(String, Option<rorqual_core::network::Attachment>, bool)> = state
            .instances
            .values()
            .filter(|r| r.node.is_some())
            .map(|r| (r.id.clone(), r.attachment.clone(), r.stopping.is_some()))
            .collect();
        for (id, attachment, _) in &placed {
            if let Some(a) = attachment {
                self.network.adopt(id, a).await?;
            }
        }
        let mut st = self.lock();
        *st = state;
        for (id, _, stopping) in &placed {
            self.start_supervisor(&mut st, id, true, *stopping);
        }
        // Pending instances that were stopping have no process: finish them now.
        let pending_stops: Vec<String> = st
            .instances
            .values()
            .filter(|r| r.node.is_none() && r.stopping.is_some())
            .map(|r| r.id.clone())
            .collect();
        for id in pending_stops {
            self.apply_stop(&mut st, &id);
        }
        let apps: Vec<AppKey> = st.apps.values().map(|a| a.key.clone()).collect();
        for app in &apps {
            self.reconcile(&mut st, app);
        }
        self.persist(&st);
        drop(st);
        for (app, id, container, pid) in restarted {
            self.emit(
                EventType::Warning,
                "Restarting",
                &app,
                Some(&id),
                format!("process {pid} of container {container} ended while no engine supervised it; restarting"),
            );
        }
        Ok(())
    }

    fn check_open(&self) -> Result<()> {
        if self.shut_down.load(Ordering::SeqCst) || self.closed.load(Ordering::SeqCst) {
            Err(Error::ShutDown)
        } else {
            Ok(())
        }
    }

    fn status(&self, st: &State, app: &AppKey, revision: &Revision) -> GroupStatus {
        group_status(st.apps.get(&app.to_string()), app, revision, &st.instances)
    }

    async fn wait_all(dones: Vec<watch::Receiver<bool>>) {
        futures::future::join_all(dones.into_iter().map(|mut d| async move {
            let _ = d.wait_for(|done| *done).await;
        }))
        .await;
    }
}

impl LocalEngine {
    /// A builder: add nodes, optionally a placement, a network and a state directory.
    pub fn builder() -> LocalEngineBuilder {
        LocalEngineBuilder {
            node_count: 0,
            node_capacity: Resources::new(4000, 8 << 30),
            nodes: Vec::new(),
            placement: Arc::new(LeastAllocated),
            network: Arc::new(HostNetwork::default()),
            state_dir: None,
            backoff: Backoff::KUBELET_RESTART,
            adopt_poll: Duration::from_millis(250),
        }
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The PIDs of an instance's running processes (one per running container; each is also
    /// the id of the process group the container runs in).
    pub fn pids(&self, instance: &str) -> Result<Vec<u32>> {
        let st = self.inner.lock();
        let rec = st.instances.get(instance).ok_or_else(|| Error::NotFound {
            kind: "instance",
            name: instance.to_owned(),
        })?;
        Ok(rec
            .containers
            .iter()
            .filter_map(|c| c.process)
            .filter_map(|p| u32::try_from(p.pid).ok())
            .collect())
    }
}

impl Drop for LocalEngine {
    fn drop(&mut self) {
        // Without shutdown the processes keep running for the next engine to adopt (when the
        // state directory was given): stop supervising them and stop writing state.
        self.inner.closed.store(true, Ordering::SeqCst);
        if let Some(task) = self.inner.scheduler.lock().take() {
            task.abort();
        }
        let st = self.inner.lock();
        for rt in st.runtimes.values() {
            rt.abort.abort();
        }
        // A temporary state directory cannot be found by a later engine, so its processes
        // would be orphans: end them and remove the directory.
        if self.inner.owned_dir && !self.inner.shutdown_done.load(Ordering::SeqCst) {
            for rec in st.instances.values() {
                for process in rec.containers.iter().filter_map(|c| c.process.as_ref()) {
                    proc::kill_group_now(process);
                }
            }
            drop(st);
            if let Err(e) = std::fs::remove_dir_all(&self.inner.dir) {
                tracing::warn!(error = %e, "cannot remove the temporary state directory");
            }
        }
    }
}

fn not_found_group(app: &AppKey, revision: &Revision) -> Error {
    Error::NotFound {
        kind: "group",
        name: format!("{app}@{revision}"),
    }
}

#[async_trait]
impl Engine for LocalEngine {
    fn kind(&self) -> &str {
        "local"
    }

    async fn nodes(&self) -> Result<Vec<Node>> {
        Ok(self.inner.nodes.clone())
    }

    #[tracing::instrument(skip(self, spec), fields(app = %spec.key(), revision = %spec.revision()))]
    async fn apply_group(&self, spec: &AppSpec, replicas: u32) -> Result<GroupStatus> {
        spec.validate(ValidationTarget::LOCAL)?;
        self.inner.check_open()?;
        let key = spec.key();
        let revision = spec.revision();
        {
            let mut st = self.inner.lock();
            let app = st
                .apps
                .entry(key.to_string())
                .or_insert_with(|| AppState::new(key.clone(), spec.kind));
            if app.kind != spec.kind {
                return Err(Error::BadRequest(format!(
                    "application {key} is {:?}; a {:?} spec cannot be applied to it",
                    app.kind, spec.kind
                )));
            }
            app.specs.insert(revision.clone(), spec.clone());
            if app.is_stateful() {
                for ordinal in 0..replicas {
                    app.identities
                        .entry(ordinal)
                        .or_insert_with(|| revision.clone());
                }
                app.identities.retain(|o, _| *o < replicas);
            } else {
                app.groups.insert(revision.clone(), replicas);
            }
            self.inner.reconcile(&mut st, &key);
            self.inner.persist(&st);
        }
        self.inner.schedule_pass().await;
        let st = self.inner.lock();
        Ok(self.inner.status(&st, &key, &revision))
    }

    #[tracing::instrument(skip(self))]
    async fn scale_group(
        &self,
        app: &AppKey,
        revision: &Revision,
        replicas: u32,
    ) -> Result<GroupStatus> {
        self.inner.check_open()?;
        {
            let mut st = self.inner.lock();
            let Some(state) = st.apps.get_mut(&app.to_string()) else {
                return Err(not_found_group(app, revision));
            };
            if !state.specs.contains_key(revision) {
                return Err(not_found_group(app, revision));
            }
            if state.is_stateful() {
                for ordinal in 0..replicas {
                    state
                        .identities
                        .entry(ordinal)
                        .or_insert_with(|| revision.clone());
                }
                state.identities.retain(|o, _| *o < replicas);
            } else {
                if !state.groups.contains_key(revision) {
                    return Err(not_found_group(app, revision));
                }
                state.groups.insert(revision.clone(), replicas);
            }
            self.inner.reconcile(&mut st, app);
            self.inner.persist(&st);
        }
        self.inner.schedule_pass().await;
        let st = self.inner.lock();
        Ok(self.inner.status(&st, app, revision))
    }

    #[tracing::instrument(skip(self))]
    async fn delete_group(&self, app: &AppKey, revision: &Revision) -> Result<()> {
        self.inner.check_open()?;
        let dones = {
            let mut st = self.inner.lock();
            let Some(state) = st.apps.get_mut(&app.to_string()) else {
                return Ok(());
            };
            state.groups.remove(revision);
            state.identities.retain(|_, r| r != revision);
            let ids: Vec<String> = st
                .instances
                .values()
                .filter(|r| &r.app == app && &r.revision == revision)
                .map(|r| r.id.clone())
                .collect();
            self.inner.reconcile(&mut st, app);
            let dones: Vec<_> = ids
                .iter()
                .filter_map(|id| st.runtimes.get(id).map(|r| r.done.clone()))
                .collect();
            self.inner.persist(&st);
            dones
        };
        Inner::wait_all(dones).await;
        Ok(())
    }

    async fn groups(&self, app: &AppKey) -> Result<Vec<GroupStatus>> {
        let st = self.inner.lock();
        let mut revisions: BTreeSet<Revision> = st
            .instances
            .values()
            .filter(|r| &r.app == app && r.is_active())
            .map(|r| r.revision.clone())
            .collect();
        if let Some(a) = st.apps.get(&app.to_string()) {
            revisions.extend(a.groups.keys().cloned());
            revisions.extend(a.identities.values().cloned());
        }
        Ok(revisions
            .iter()
            .map(|rev| self.inner.status(&st, app, rev))
            .collect())
    }

    async fn instances(&self, app: &AppKey) -> Result<Vec<Instance>> {
        let st = self.inner.lock();
        Ok(st
            .instances
            .values()
            .filter(|r| &r.app == app)
            .map(InstanceRecord::to_instance)
            .collect())
    }

    async fn apps(&self) -> Result<Vec<AppKey>> {
        let st = self.inner.lock();
        let keys: BTreeSet<AppKey> = st
            .apps
            .values()
            .map(|a| a.key.clone())
            .chain(st.instances.values().map(|r| r.app.clone()))
            .collect();
        Ok(keys.into_iter().collect())
    }

    #[tracing::instrument(skip(self, spec), fields(app = %spec.key(), revision = %spec.revision()))]
    async fn move_identity(&self, spec: &AppSpec, ordinal: u32) -> Result<Instance> {
        spec.validate(ValidationTarget::LOCAL)?;
        self.inner.check_open()?;
        if spec.kind != WorkloadKind::Stateful {
            return Err(Error::BadRequest(format!(
                "move_identity needs a stateful spec; {} is stateless",
                spec.key()
            )));
        }
        let key = spec.key();
        let revision = spec.revision();
        let id = stateful_id(&spec.name, ordinal);
        let done = {
            let mut st = self.inner.lock();
            let Some(app) = st.apps.get_mut(&key.to_string()) else {
                return Err(Error::NotFound {
                    kind: "application",
                    name: key.to_string(),
                });
            };
            if !app.is_stateful() {
                return Err(Error::BadRequest(format!("application {key} is stateless")));
            }
            if !app.identities.contains_key(&ordinal) {
                return Err(Error::NotFound {
                    kind: "instance",
                    name: id,
                });
            }
            app.specs.insert(revision.clone(), spec.clone());
            app.identities.insert(ordinal, revision.clone());
            let current = st
                .instances
                .get(&id)
                .map(|r| (r.revision.clone(), r.stopping.clone()));
            let done = match current {
                Some((rev, None)) if rev == revision => None,
                Some((_, None)) => {
                    self.inner
                        .begin_stop(&mut st, &id, StopIntent::Move(revision.clone()))
                }
                Some((_, Some(_))) => {
                    return Err(Error::BadRequest(format!(
                        "instance {id} is already being stopped; retry when it is back"
                    )));
                }
                None => {
                    self.inner.reconcile(&mut st, &key);
                    None
                }
            };
            self.inner.persist(&st);
            done
        };
        if let Some(done) = done {
            Inner::wait_all(vec![done]).await;
        }
        self.inner.schedule_pass().await;
        let st = self.inner.lock();
        st.instances
            .get(&id)
            .map(InstanceRecord::to_instance)
            .ok_or(Error::NotFound {
                kind: "instance",
                name: id,
            })
    }

    fn events(&self) -> EventStream {
        let rx = self.inner.events.subscribe();
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(event) => return Some((event, rx)),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "event subscriber lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }))
    }

    fn state_store(&self) -> Arc<dyn StateStore> {
        self.inner.store.clone()
    }

    async fn logs(&self, instance: &str, options: LogOptions) -> Result<LogStream> {
        let (path, container) = {
            let st = self.inner.lock();
            let rec = st.instances.get(instance).ok_or_else(|| Error::NotFound {
                kind: "instance",
                name: instance.to_owned(),
            })?;
            let container = match &options.container {
                Some(name) => rec
                    .containers
                    .iter()
                    .find(|c| &c.name == name)
                    .map(|c| c.name.clone())
                    .ok_or_else(|| Error::NotFound {
                        kind: "container",
                        name: format!("{instance}/{name}"),
                    })?,
                None => rec
                    .containers
                    .first()
                    .map(|c| c.name.clone())
                    .unwrap_or_default(),
            };
            (
                self.inner
                    .instance_dir(instance)
                    .join("logs")
                    .join(format!("{container}.log")),
                container,
            )
        };
        tracing::debug!(instance, container, "reading logs");
        let (lines, offset) = logs::read_lines(&path, options.tail)?;
        let weak = Arc::downgrade(&self.inner);
        let id = instance.to_owned();
        let alive = Arc::new(move || {
            weak.upgrade().is_some_and(|inner| {
                !inner.closed.load(Ordering::SeqCst) && inner.lock().instances.contains_key(&id)
            })
        });
        Ok(logs::stream(path, lines, offset, options.follow, alive))
    }

    #[tracing::instrument(skip(self))]
    async fn shutdown(&self) -> Result<()> {
        if self.inner.shut_down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let dones = {
            let _sched = self.inner.sched.lock().await;
            let mut st = self.inner.lock();
            let ids: Vec<String> = st.instances.keys().cloned().collect();
            let mut dones = Vec::new();
            for id in ids {
                if st.runtimes.contains_key(&id) {
                    dones.extend(self.inner.begin_stop(&mut st, &id, StopIntent::Shutdown));
                } else if let Some(rec) = st.instances.get_mut(&id)
                    && rec.stopping.is_none()
                {
                    rec.stopped = true;
                }
            }
            self.inner.persist(&st);
            dones
        };
        Inner::wait_all(dones).await;
        if let Some(task) = self.inner.scheduler.lock().take() {
            task.abort();
        }
        let encoded = self.inner.encode_state(&self.inner.lock());
        if let Some(encoded) = encoded {
            self.inner.write_state(encoded, true);
        }
        if self.inner.owned_dir
            && let Err(e) = std::fs::remove_dir_all(&self.inner.dir)
        {
            tracing::warn!(error = %e, "cannot remove the temporary state directory");
        }
        self.inner.shutdown_done.store(true, Ordering::SeqCst);
        tracing::info!("local engine shut down");
        Ok(())
    }
}
