//! [`LocalEngine`] and its [`Engine`] implementation.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use nix::fcntl::Flock;
use tokio::sync::broadcast;

use crate::builder::LocalEngineBuilder;
use crate::logs;
use crate::proc::{self};
use crate::records::{AppState, InstanceRecord, StopIntent, stateful_id};

use crate::reconcile::Inner;
use rorqual_core::engine::{Engine, EventStream, GroupStatus, LogOptions, LogStream, StateStore};
use rorqual_core::error::{Error, Result};
use rorqual_core::model::{
    AppKey, AppSpec, Instance, Node, Revision, ValidationTarget, WorkloadKind,
};

/// The embedded engine: instances are OS processes on this host (see the module docs).
pub struct LocalEngine {
    pub(crate) inner: Arc<Inner>,
    /// The state directory's lock, held while the engine lives.
    pub(crate) _lock: Flock<File>,
}

impl std::fmt::Debug for LocalEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEngine")
            .field("state_dir", &self.inner.dir)
            .field("nodes", &self.inner.nodes.lock().len())
            .finish_non_exhaustive()
    }
}

impl LocalEngine {
    /// A builder: add nodes, optionally a placement, a network and a state directory.
    pub fn builder() -> LocalEngineBuilder {
        LocalEngineBuilder::default()
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
        // The controller store is closed with the engine, so that a new engine may open the
        // directory at once, even while a task or a caller still holds the store.
        self.inner.store.close();
        if let Some(task) = self.inner.scheduler.lock().take() {
            task.abort();
        }
        let st = self.inner.lock();
        for rt in st.runtimes.values() {
            rt.abort.abort();
        }
        // Every state encoded before `closed` was set was handed to the writer under the lock
        // just taken: let the writer thread write it and join it, so that a new engine on this
        // directory starts after the last write.
        self.inner.state_writer.close();
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
        Ok(self.inner.nodes.lock().clone())
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
                Some((rev, Some(StopIntent::NodeLost(_)))) => {
                    // Its node was lost: it is being killed and returns to Pending anyway;
                    // it comes back at the new revision.
                    if rev != revision
                        && let Some(r) = st.instances.get_mut(&id)
                    {
                        r.stopping = Some(StopIntent::Move(revision.clone()));
                    }
                    st.runtimes.get(&id).map(|r| r.done.clone())
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
