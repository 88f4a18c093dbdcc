//! [`LocalEngineBuilder`]: the engine's configuration, its validation, and starting an engine
//! on a state directory.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast};
use tracing::Instrument;

use crate::host_network::HostNetwork;
use crate::records::{self, State};
use crate::store::FileStateStore;
use crate::{state_dir, state_file};

use crate::engine::LocalEngine;
use crate::reconcile::Inner;
use rorqual_core::backoff::Backoff;
use rorqual_core::error::{Error, Result};
use rorqual_core::model::{Node, Resources};
use rorqual_core::network::Network;
use rorqual_core::placement::{LeastAllocated, Placement};

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

impl Default for LocalEngineBuilder {
    fn default() -> Self {
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
    /// [`Engine::shutdown`](rorqual_core::engine::Engine::shutdown)).
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
            nodes: Mutex::new(nodes),
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
            state_writer: state_file::Writer::spawn(state_file)?,
        });
        let span = tracing::info_span!("local_engine_build", dir = %dir.display());
        inner.recover(state).instrument(span).await?;
        let weak = Arc::downgrade(&inner);
        let task = tokio::spawn(crate::reconcile::scheduler_loop(weak));
        *inner.scheduler.lock() = Some(task.abort_handle());
        inner.schedule_pass().await;
        Ok(LocalEngine { inner, _lock: lock })
    }
}
