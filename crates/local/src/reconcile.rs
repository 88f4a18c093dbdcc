//! The engine's state and its reconcile loop: the shared [`Inner`], persisting the state,
//! reconciling applications with the [planner](rorqual_core::engine::planner), and the
//! scheduling pass that places pending instances.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{Notify, broadcast, watch};
use tracing::Instrument;

use crate::records::{self, InstanceRecord, State, StopIntent, group_status, plan};
use crate::store::FileStateStore;
use crate::{state_dir, state_file};
use rorqual_core::backoff::Backoff;
use rorqual_core::engine::GroupStatus;
use rorqual_core::engine::planner;
use rorqual_core::error::{Error, Result};
use rorqual_core::model::{AppKey, AppSpec, Event, EventType, Node, Revision};
use rorqual_core::network::Network;
use rorqual_core::placement::{NodeView, Placement, PlacementRequest};

pub(crate) async fn scheduler_loop(inner: Weak<Inner>) {
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

pub(crate) struct Inner {
    /// The virtual nodes; readiness changes at run time ([`crate::LocalEngine::set_node_ready`]).
    /// Lock order: the state lock, then this one.
    pub(crate) nodes: Mutex<Vec<Node>>,
    pub(crate) placement: Arc<dyn Placement>,
    pub(crate) network: Arc<dyn Network>,
    pub(crate) dir: PathBuf,
    pub(crate) owned_dir: bool,
    pub(crate) backoff: Backoff,
    pub(crate) adopt_poll: Duration,
    pub(crate) state: Mutex<State>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) store: Arc<FileStateStore>,
    pub(crate) sched: tokio::sync::Mutex<()>,
    pub(crate) kick: Notify,
    pub(crate) closed: AtomicBool,
    pub(crate) shut_down: AtomicBool,
    /// Set once `shutdown` has stopped every process (it may be cancelled half-way).
    pub(crate) shutdown_done: AtomicBool,
    pub(crate) scheduler: Mutex<Option<tokio::task::AbortHandle>>,
    /// Sequence number of the newest encoded state ([`Inner::encode_state`]).
    pub(crate) state_seq: AtomicU64,
    /// The thread that owns the state file and writes the newest encoded state to it.
    pub(crate) state_writer: state_file::Writer,
}

/// The state file's bytes and the sequence number they were encoded with.
#[derive(Debug)]
pub(crate) struct EncodedState {
    pub(crate) seq: u64,
    pub(crate) bytes: Vec<u8>,
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Encodes `st` (the locked state) and hands it to the state writer thread, which writes
    /// it to the state file, atomically but without waiting for the disk. Returns at once: no
    /// file I/O happens under the state lock. (The encoding does: `State` is not `Clone`, and
    /// cloning it would cost about what encoding it does.)
    pub(crate) fn persist(&self, st: &State) {
        if let Some(encoded) = self.encode_state(st) {
            self.write_state(encoded, false);
        }
    }

    /// Encodes the locked state with the next sequence number. The number is taken under the
    /// state lock, so a higher number always means a newer state.
    pub(crate) fn encode_state(&self, st: &State) -> Option<EncodedState> {
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

    /// Hands an encoded state to the state writer thread unless a newer one was handed
    /// already (the highest sequence number wins). Without `durable` it returns at once; with
    /// it, it waits until this state or a newer one is on disk and synced (or its write
    /// failed, which the writer logs). Must not be called with `durable` under the state lock.
    pub(crate) fn write_state(&self, encoded: EncodedState, durable: bool) {
        let seq = encoded.seq;
        self.state_writer.submit(seq, encoded.bytes);
        if durable {
            self.state_writer.wait_durable(seq);
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
}

impl Inner {
    /// Creates and removes instances of `app` to match its desired state.
    pub(crate) fn reconcile(&self, st: &mut State, app: &AppKey) {
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

    pub(crate) fn node_views(&self, st: &State) -> Vec<NodeView> {
        let mut views: Vec<NodeView> = self
            .nodes
            .lock()
            .iter()
            .cloned()
            .map(NodeView::new)
            .collect();
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

    /// Places pending instances, highest spec priority first and otherwise in creation order
    /// (stateful identities in ordinal order, each after the previous is ready), and starts
    /// the placed ones.
    pub(crate) async fn schedule_pass(self: &Arc<Self>) {
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
            let mut ordered: Vec<(i32, String)> = apps
                .into_iter()
                .flat_map(|app| {
                    planner::start_order(&records::members(app, &st.instances))
                        .into_iter()
                        .map(|id| (priority_of(&st, id), id.to_owned()))
                        .collect::<Vec<_>>()
                })
                .collect();
            // Higher priority first (as kube-scheduler's PrioritySort), creation and ordinal
            // order otherwise: the sort is stable.
            ordered.sort_by_key(|(priority, _)| std::cmp::Reverse(*priority));
            ordered.into_iter().map(|(_, id)| id).collect()
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
                let request = PlacementRequest::from_spec(
                    spec,
                    id.clone(),
                    rec.revision.clone(),
                    rec.ordinal,
                    rec.last_node.clone(),
                );
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
}

/// The scheduling priority of instance `id` (its spec's), 0 when unknown.
fn priority_of(st: &State, id: &str) -> i32 {
    st.instances
        .get(id)
        .and_then(|r| st.apps.get(&r.app.to_string())?.specs.get(&r.revision))
        .map_or(0, |spec| spec.priority)
}

impl Inner {
    /// Records a placement result for a pending instance (under the state lock).
    pub(crate) fn apply_placement(
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
                rec.reserved = decision.address.clone();
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

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.shut_down.load(Ordering::SeqCst) || self.closed.load(Ordering::SeqCst) {
            Err(Error::ShutDown)
        } else {
            Ok(())
        }
    }

    pub(crate) fn status(&self, st: &State, app: &AppKey, revision: &Revision) -> GroupStatus {
        group_status(st.apps.get(&app.to_string()), app, revision, &st.instances)
    }

    pub(crate) async fn wait_all(dones: Vec<watch::Receiver<bool>>) {
        futures::future::join_all(dones.into_iter().map(|mut d| async move {
            let _ = d.wait_for(|done| *done).await;
        }))
        .await;
    }
}
