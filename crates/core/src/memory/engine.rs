//! [`MemoryEngine`]'s [`Engine`] implementation.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::MemoryEngine;
use super::reconcile::{AppState, State, set_identities};
use super::sim::unplace;
use crate::engine::{Engine, EventStream, GroupStatus, StateStore};
use crate::error::{Error, Result};
use crate::model::{
    AppKey, AppSpec, EventType, Instance, InstancePhase, Node, Revision, WorkloadKind,
};

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
                    // A set scaled to no identities goes with the revision new ones would
                    // start at (or its last revision).
                    if state.instances.is_empty()
                        && (state.identity_revision.as_ref() == Some(revision)
                            || state.specs.is_empty())
                    {
                        st.apps.remove(app);
                    }
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
