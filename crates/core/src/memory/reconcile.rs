//! The engine's state and its reconciling: bringing applications up to the clock, placing
//! pending instances in the planner's order, creating and removing instances as the
//! [planner](crate::engine::planner) decides, and the group counts.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::SystemTime;

use super::MemoryEngine;
use super::sim::{Sim, advance, new_sim, start, unplace};
use crate::engine::GroupStatus;
use crate::engine::planner::{self, Desired, Member};
use crate::error::{Error, Result};
use crate::model::{
    AppKey, AppSpec, EventType, InstancePhase, Revision, ValidationTarget, WorkloadKind,
};
use crate::placement::{NodeView, PlacementRequest};

#[derive(Debug)]
pub(super) struct State {
    pub(super) nodes: Vec<NodeView>,
    pub(super) apps: BTreeMap<AppKey, AppState>,
    pub(super) next_address: u32,
}

#[derive(Debug)]
pub(super) struct AppState {
    pub(super) kind: WorkloadKind,
    /// Every spec applied or moved to, by revision.
    pub(super) specs: BTreeMap<Revision, Arc<AppSpec>>,
    /// Stateless: desired replicas per revision group.
    pub(super) groups: BTreeMap<Revision, u32>,
    /// Stateful: the revision of each identity, by ordinal.
    pub(super) identities: BTreeMap<u32, Revision>,
    /// Stateful: the revision new ordinals start at.
    pub(super) identity_revision: Option<Revision>,
    pub(super) instances: BTreeMap<String, Sim>,
    pub(super) next_id: u64,
}

impl AppState {
    /// The planner's view of the application's instances.
    pub(super) fn members(&self) -> Vec<Member<'_>> {
        self.instances.values().map(Sim::member).collect()
    }

    /// The desired state, for the planner.
    pub(super) fn desired(&self) -> Desired<'_> {
        match self.kind {
            WorkloadKind::Stateful => Desired::Stateful(&self.identities),
            _ => Desired::Stateless(&self.groups),
        }
    }
}

impl MemoryEngine {
    /// Advances every instance of `key` to `now` and places pending ones.
    pub(super) async fn sync_app(
        &self,
        st: &mut State,
        key: &AppKey,
        now: SystemTime,
    ) -> Result<()> {
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
    pub(super) async fn place_pending(
        &self,
        st: &mut State,
        key: &AppKey,
        now: SystemTime,
    ) -> Result<()> {
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
    pub(super) async fn try_place(
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
        let revision = sim.instance.revision.clone();
        let previous_node = sim.instance.node.clone();
        let mut request = match spec {
            Some(spec) => {
                PlacementRequest::from_spec(spec, id, revision, sim.instance.ordinal, previous_node)
            }
            None => {
                let mut request = PlacementRequest::new(id, key.clone(), revision, sim.resources);
                request.ordinal = sim.instance.ordinal;
                request.previous_node = previous_node;
                request
            }
        };
        request.resources = sim.resources;
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
                if let Some(reserved) = &decision.address {
                    sim.instance.address = Some(reserved.address);
                } else if sim.instance.address.is_none() {
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
    pub(super) async fn reconcile_app(
        &self,
        st: &mut State,
        key: &AppKey,
        now: SystemTime,
    ) -> Result<()> {
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

    pub(super) fn validate(spec: &AppSpec) -> Result<()> {
        spec.validate(ValidationTarget::default())?;
        Ok(())
    }

    pub(super) fn group_status(app: &AppState, key: &AppKey, revision: &Revision) -> GroupStatus {
        planner::group_status(key, revision, &app.desired(), &app.members())
    }
}

/// Stateful: sets the number of identities; new ordinals start at `revision`, the highest
/// ordinals go.
pub(super) fn set_identities(app: &mut AppState, revision: &Revision, count: u32) {
    for ordinal in 0..count {
        app.identities
            .entry(ordinal)
            .or_insert_with(|| revision.clone());
    }
    app.identities.retain(|o, _| *o < count);
    app.identity_revision = Some(revision.clone());
}

pub(super) fn node_index(st: &State, name: &str) -> Result<usize> {
    st.nodes
        .iter()
        .position(|v| v.node.name == name)
        .ok_or_else(|| Error::NotFound {
            kind: "node",
            name: name.to_owned(),
        })
}
