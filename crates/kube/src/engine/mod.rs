//! [`KubeEngine`]: rorqual-core's [`Engine`] on a Kubernetes cluster (feature `engine`).
//!
//! | rorqual | Kubernetes |
//! |---|---|
//! | application `ns/app` | namespace `ns`, label `rorqual.io/app=app`, `app.kubernetes.io/managed-by=rorqual` on everything written |
//! | stateless revision group | a ReplicaSet `<app>-<revision>` selecting app + revision (Argo Rollouts' model: a Deployment's controller would fight per-revision counts), and, when the template declares ports, a headless Service selecting the same pods and owned by the ReplicaSet, whose EndpointSlices list the revision's ready addresses (read by `endpoints::KubeEndpoints`) |
//! | stateful identities | a StatefulSet `<app>` (`OrderedReady`, `OnDelete`) and a headless Service `<app>`; [`Engine::move_identity`] applies the new template and deletes pod `<app>-k`, which the controller recreates from it |
//! | apply / scale / delete | server-side apply (field manager `rorqual`; `scale_group` under `rorqual-scale`), DELETE with background propagation |
//! | instances, groups, nodes | reflectors over Pods, ReplicaSets, StatefulSets and Nodes: reads never call the server |
//! | events | a watch over Events, mapped to apps through the reflectors |
//! | logs | `pods/{name}/log` |
//! | state store | whatever the host passes, usually the `ConfigMapStateStore` |
//!
//! Specs are checked before anything is sent: a field a cluster cannot express (`configFiles`,
//! a numeric `priority`, sub-second probe periods) or one the server's version lacks is refused
//! with its path. An object of the same name that rorqual does not manage (no
//! `app.kubernetes.io/managed-by=rorqual`) is never adopted.

mod cache;
pub(crate) mod errors;
pub mod names;
pub mod observe;
pub mod render;
mod stateful;
pub mod version;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event as KubeEvent, Pod, Service};
use kube::api::{Api, DeleteParams, LogParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use rorqual_core::engine::{Engine, EventStream, GroupStatus, LogOptions, LogStream, StateStore};
use rorqual_core::error::{Error, Result};
use rorqual_core::model::{AppKey, AppSpec, Instance, Node, Revision, WorkloadKind};
use serde_json::json;

use cache::Caches;
use errors::{kube_error, not_found};
use names::{FIELD_MANAGER, LABEL_APP, LABEL_REVISION, SCALE_MANAGER};
use render::RenderOptions;
pub use version::ServerVersion;

/// Builds a [`KubeEngine`].
pub struct KubeEngineBuilder {
    client: Client,
    server: String,
    state: Option<Arc<dyn StateStore>>,
    options: RenderOptions,
    sync_timeout: Duration,
    revision_services: bool,
}

impl fmt::Debug for KubeEngineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeEngineBuilder")
            .field("server", &self.server)
            .field("options", &self.options)
            .field("sync_timeout", &self.sync_timeout)
            .field("revision_services", &self.revision_services)
            .finish_non_exhaustive()
    }
}

impl KubeEngineBuilder {
    /// Whether each stateless revision whose template declares ports gets a headless Service
    /// (on by default), whose EndpointSlices tell routers (`endpoints::KubeEndpoints`) where
    /// the revision's ready pods are. Needs `get` and `patch` on `services` (the engine
    /// lists and watches them either way); off, it writes no Service for stateless apps.
    #[must_use]
    pub fn revision_services(mut self, on: bool) -> KubeEngineBuilder {
        self.revision_services = on;
        self
    }

    /// Containers may come without an image: they get [`render::PROCESS_IMAGE`] and the
    /// cluster's nodes run their `command` as processes (rorqual's node agent). Off by default:
    /// every container then needs an image.
    #[must_use]
    pub fn process_pods(mut self, on: bool) -> KubeEngineBuilder {
        self.options.process_pods = on;
        self
    }

    /// How errors name the server (default `the apiserver`; [`KubeEngine::from_config`] uses
    /// the cluster URL).
    #[must_use]
    pub fn server_name(mut self, name: impl Into<String>) -> KubeEngineBuilder {
        self.server = name.into();
        self
    }

    /// Pods ask for scheduler `name` (`spec.schedulerName`), such as rorqual's own
    /// (`scheduler::KubeScheduler`, feature `scheduler`); default: the cluster's.
    #[must_use]
    pub fn scheduler_name(mut self, name: impl Into<String>) -> KubeEngineBuilder {
        self.options.scheduler_name = Some(name.into());
        self
    }

    /// The controller state store ([`Engine::state_store`]); required.
    #[must_use]
    pub fn state_store(mut self, store: Arc<dyn StateStore>) -> KubeEngineBuilder {
        self.state = Some(store);
        self
    }

    /// How long [`KubeEngineBuilder::build`] waits for the first list of each watched kind
    /// (default 30 s).
    #[must_use]
    pub fn sync_timeout(mut self, timeout: Duration) -> KubeEngineBuilder {
        self.sync_timeout = timeout;
        self
    }

    /// Reads the server's version and starts the reflectors; returns once each has its first
    /// list. Fails naming the server when it cannot be reached or refuses.
    pub async fn build(self) -> Result<KubeEngine> {
        let state = self.state.ok_or_else(|| {
            Error::BadRequest(
                "KubeEngine needs a state store (KubeEngineBuilder::state_store)".into(),
            )
        })?;
        let server = self.server;
        // An unreachable or failing server may come up: retried with backoff until the sync
        // timeout; a refusal (unauthorised, forbidden) is final.
        let deadline = tokio::time::Instant::now() + self.sync_timeout;
        let mut delay = Duration::from_millis(200);
        let info = loop {
            match self.client.apiserver_version().await {
                Ok(info) => break info,
                Err(e) => {
                    let err = kube_error(&server, "read the server version (GET /version)", e);
                    if !err.is_retryable() || tokio::time::Instant::now() + delay > deadline {
                        return Err(err);
                    }
                    tracing::debug!(error = %err, "kube engine: retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let version = ServerVersion::parse(&info.major, &info.minor).ok_or_else(|| {
            Error::BadRequest(format!(
                "the server's version `{}`.`{}` ({}) cannot be read",
                info.major, info.minor, info.git_version
            ))
        })?;
        if version < version::OLDEST {
            return Err(Error::BadRequest(format!(
                "Kubernetes {version} ({}) is older than {}, the oldest KubeEngine drives",
                info.git_version,
                version::OLDEST
            )));
        }
        let caches = Caches::start(self.client.clone(), &server, self.sync_timeout).await?;
        tracing::debug!(%version, %server, "kube engine: caches synced");
        Ok(KubeEngine {
            inner: Arc::new(Inner {
                server,
                client: self.client,
                options: self.options,
                version,
                caches,
                state,
                revision_services: self.revision_services,
            }),
        })
    }
}

struct Inner {
    server: String,
    client: Client,
    options: RenderOptions,
    version: ServerVersion,
    caches: Caches,
    state: Arc<dyn StateStore>,
    revision_services: bool,
}

/// rorqual-core's [`Engine`] on a Kubernetes cluster. Cheap to clone. See the
/// [module docs](self).
#[derive(Clone)]
pub struct KubeEngine {
    inner: Arc<Inner>,
}

impl fmt::Debug for KubeEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeEngine")
            .field("version", &self.inner.version)
            .field("process_pods", &self.inner.options.process_pods)
            .finish_non_exhaustive()
    }
}

impl KubeEngine {
    /// A builder over `client`.
    pub fn builder(client: Client) -> KubeEngineBuilder {
        KubeEngineBuilder {
            client,
            server: "the apiserver".to_owned(),
            state: None,
            options: RenderOptions::default(),
            sync_timeout: Duration::from_secs(30),
            revision_services: true,
        }
    }

    /// A builder over a client made from `config`; errors name its cluster URL.
    pub fn from_config(config: kube::Config) -> Result<KubeEngineBuilder> {
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|e| Error::Remote {
            context: format!("{server}: cannot build a client: {e}"),
            retryable: false,
            source: Box::new(e),
        })?;
        Ok(KubeEngine::builder(client).server_name(server))
    }

    /// The server's version.
    pub fn server_version(&self) -> ServerVersion {
        self.inner.version
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    fn check(&self, spec: &AppSpec) -> Result<()> {
        render::check(spec, &self.inner.options)?;
        version::check(spec, self.inner.version)?;
        Ok(())
    }

    fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.inner.client.clone(), namespace)
    }

    /// Refuses to write over an object rorqual does not manage. Reads the cache, and the
    /// server when the cache does not know the name (it may lag a create by someone else).
    async fn ensure_ours<K>(&self, api: &Api<K>, cached: Option<Arc<K>>, name: &str) -> Result<()>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        let labels = match cached {
            Some(o) => Some(o.labels().clone()),
            None => api
                .get_opt(name)
                .await
                .map_err(|e| {
                    kube_error(
                        &self.inner.server,
                        &format!("read {} {name}", K::kind(&Default::default())),
                        e,
                    )
                })?
                .map(|o| o.labels().clone()),
        };
        match labels {
            Some(l) if !names::is_managed(Some(&l)) => Err(Error::BadRequest(format!(
                "{} {}/{name} exists and is not managed by rorqual (no label {}={}); it is not adopted",
                K::kind(&Default::default()),
                api.namespace().unwrap_or_default(),
                names::LABEL_MANAGED_BY,
                names::MANAGED_BY
            ))),
            _ => Ok(()),
        }
    }

    async fn apply<K>(
        &self,
        api: &Api<K>,
        name: &str,
        manager: &str,
        body: &serde_json::Value,
    ) -> Result<K>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        api.patch(
            name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(|e| {
            kube_error(
                &self.inner.server,
                &format!(
                    "apply {} {}/{name} (field manager {manager})",
                    K::kind(&Default::default()),
                    api.namespace().unwrap_or_default()
                ),
                e,
            )
        })
    }

    async fn delete<K>(&self, api: &Api<K>, name: &str) -> Result<()>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(kube_error(
                &self.inner.server,
                &format!(
                    "delete {} {}/{name}",
                    K::kind(&Default::default()),
                    api.namespace().unwrap_or_default()
                ),
                e,
            )),
        }
    }

    /// Whether stateless `spec`'s revision Service is to be applied: the template declares
    /// ports, revision Services are on, and the Service is missing from the cache (never made,
    /// deleted by hand or by the garbage collector) or owned by another ReplicaSet than the
    /// cached one of this revision (it was recreated). Refuses when a Service of that name
    /// exists and is not rorqual's.
    async fn service_to_apply(&self, spec: &AppSpec) -> Result<bool> {
        if !self.inner.revision_services || !spec.containers.iter().any(|c| !c.ports.is_empty()) {
            return Ok(false);
        }
        let key = spec.key();
        let revision = spec.revision();
        let name = names::revision_service_name(&key, &revision);
        let cached = self.inner.caches.service(&key.namespace, &name);
        if let Some(svc) = &cached {
            let owner = svc
                .metadata
                .owner_references
                .iter()
                .flatten()
                .map(|o| o.uid.as_str())
                .next();
            let rs = self
                .inner
                .caches
                .replica_set(&key.namespace, &names::replica_set_name(&key, &revision));
            if rs.is_some_and(|rs| rs.metadata.uid.as_deref() == owner) {
                return Ok(false);
            }
        }
        let api: Api<Service> = self.api(&key.namespace);
        self.ensure_ours(&api, cached, &name).await?;
        Ok(true)
    }

    /// Applies `svc` (a revision Service rorqual renders), without forcing: a field another
    /// manager set in the meantime is a conflict, not taken over.
    async fn apply_owned_service(&self, namespace: &str, svc: &Service) -> Result<()> {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let api: Api<Service> = self.api(namespace);
        let body = encode(format!("Service {namespace}/{name}"), svc)?;
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| {
            kube_error(
                &self.inner.server,
                &format!("apply Service {namespace}/{name} (field manager {FIELD_MANAGER})"),
                e,
            )
        })?;
        Ok(())
    }

    /// The group status of `revision` of stateless `app` with `desired` wanted.
    fn stateless_status(&self, app: &AppKey, revision: &Revision, desired: u32) -> GroupStatus {
        let pods = self.inner.caches.instances(app, None);
        let at: Vec<&Instance> = pods.iter().filter(|i| &i.revision == revision).collect();
        let (current, ready, available) = observe::counts(&at);
        let mut g = GroupStatus::new(app.clone(), revision.clone(), desired);
        g.current = current;
        g.ready = ready;
        g.available = available;
        g
    }
}

#[async_trait]
impl Engine for KubeEngine {
    fn kind(&self) -> &str {
        "kubernetes"
    }

    async fn nodes(&self) -> Result<Vec<Node>> {
        Ok(self.inner.caches.nodes())
    }

    async fn apply_group(&self, spec: &AppSpec, replicas: u32) -> Result<GroupStatus> {
        self.check(spec)?;
        let key = spec.key();
        match spec.kind {
            WorkloadKind::Stateful => stateful::apply(self, spec, replicas).await,
            _ => {
                let revision = spec.revision();
                let name = names::replica_set_name(&key, &revision);
                let api: Api<ReplicaSet> = self.api(&key.namespace);
                let cached = self.inner.caches.replica_set(&key.namespace, &name);
                self.ensure_ours(&api, cached, &name).await?;
                // The revision's Service (for its EndpointSlices), applied after its ReplicaSet
                // (its owner) when the cache lacks it; someone else's Service of that name
                // stops the apply before anything is written.
                let service = self.service_to_apply(spec).await?;
                let rs = render::replica_set(spec, replicas, &self.inner.options);
                let body = encode(format!("ReplicaSet {}/{name}", key.namespace), &rs)?;
                let applied = self
                    .apply::<ReplicaSet>(&api, &name, FIELD_MANAGER, &body)
                    .await?;
                if service && let Some(svc) = render::revision_service(spec, &applied) {
                    self.apply_owned_service(&key.namespace, &svc).await?;
                }
                Ok(self.stateless_status(&key, &revision, replicas))
            }
        }
    }

    async fn scale_group(
        &self,
        app: &AppKey,
        revision: &Revision,
        replicas: u32,
    ) -> Result<GroupStatus> {
        if let Some(set) = stateful::current_set(self, app).await?
            && names::is_managed(set.metadata.labels.as_ref())
        {
            return stateful::scale(self, app, revision, replicas).await;
        }
        let name = names::replica_set_name(app, revision);
        let api: Api<ReplicaSet> = self.api(&app.namespace);
        let exists = match self.inner.caches.replica_set(&app.namespace, &name) {
            Some(_) => true,
            None => api
                .get_opt(&name)
                .await
                .map_err(|e| {
                    kube_error(
                        &self.inner.server,
                        &format!("read ReplicaSet {}/{name}", app.namespace),
                        e,
                    )
                })?
                .is_some(),
        };
        if !exists {
            return Err(not_found("group", format!("{app} at {revision}")));
        }
        self.ensure_ours(
            &api,
            self.inner.caches.replica_set(&app.namespace, &name),
            &name,
        )
        .await?;
        let body = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": app.namespace},
            "spec": {"replicas": replicas},
        });
        self.apply::<ReplicaSet>(&api, &name, SCALE_MANAGER, &body)
            .await?;
        Ok(self.stateless_status(app, revision, replicas))
    }

    async fn delete_group(&self, app: &AppKey, revision: &Revision) -> Result<()> {
        if let Some(set) = stateful::current_set(self, app).await?
            && names::is_managed(set.metadata.labels.as_ref())
        {
            return stateful::delete(self, app, &set, revision).await;
        }
        let name = names::replica_set_name(app, revision);
        let api: Api<ReplicaSet> = self.api(&app.namespace);
        let cached = self.inner.caches.replica_set(&app.namespace, &name);
        self.ensure_ours(&api, cached, &name).await?;
        // The garbage collector deletes the revision's Service with it.
        self.delete(&api, &name).await
    }

    async fn groups(&self, app: &AppKey) -> Result<Vec<GroupStatus>> {
        if let Some(set) = self.inner.caches.stateful_set(&app.namespace, &app.name) {
            return Ok(stateful::groups(self, app, &set));
        }
        let mut out = Vec::new();
        for rs in self.inner.caches.replica_sets_of(app) {
            let Some(revision) = rs.labels().get(LABEL_REVISION).cloned() else {
                continue;
            };
            let desired = rs
                .spec
                .replicas
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(1);
            out.push(self.stateless_status(app, &Revision(revision), desired));
        }
        out.sort_by(|a, b| a.revision.cmp(&b.revision));
        Ok(out)
    }

    async fn instances(&self, app: &AppKey) -> Result<Vec<Instance>> {
        let stateful = self
            .inner
            .caches
            .stateful_set(&app.namespace, &app.name)
            .map(|_| app.name.as_str());
        let mut list = self.inner.caches.instances(app, stateful);
        list.sort_by(|a, b| (a.ordinal, &a.id).cmp(&(b.ordinal, &b.id)));
        Ok(list)
    }

    async fn apps(&self) -> Result<Vec<AppKey>> {
        Ok(self.inner.caches.apps())
    }

    async fn move_identity(&self, spec: &AppSpec, ordinal: u32) -> Result<Instance> {
        self.check(spec)?;
        stateful::move_identity(self, spec, ordinal).await
    }

    fn events(&self) -> EventStream {
        let api: Api<KubeEvent> = Api::all(self.inner.client.clone());
        let caches = self.inner.caches.clone();
        // Events from now on: the watch starts here (not when the stream is first polled),
        // and of its initial list only what happened since this second passes.
        let since = observe::unix_seconds(SystemTime::now());
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).default_backoff();
            let mut stream = std::pin::pin!(stream);
            let mut feed = observe::EventFeed::new(since);
            let mut forwarder = observe::EventForwarder::new(tx.clone());
            let mut errors = crate::watch_errors::WatchErrors::new("kube engine Event watch");
            loop {
                let next = tokio::select! {
                    () = tx.closed() => return,
                    next = stream.next() => next,
                };
                let event = match next {
                    None => return,
                    Some(Ok(event)) => {
                        errors.delivered(&event);
                        match feed.accept(event) {
                            Some(event) => event,
                            None => continue,
                        }
                    }
                    Some(Err(e)) => {
                        errors.failed(&e);
                        continue;
                    }
                };
                let mapped = observe::event(&event, |kind, namespace, name| {
                    caches.app_of(kind, namespace, name)
                });
                if let Some(m) = mapped
                    && forwarder.send(m).is_err()
                {
                    return;
                }
            }
        });
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|e| (e, rx))
        }))
    }

    fn state_store(&self) -> Arc<dyn StateStore> {
        self.inner.state.clone()
    }

    async fn logs(&self, instance: &str, options: LogOptions) -> Result<LogStream> {
        let pod = self.inner.caches.pod_named(instance)?;
        let namespace = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = self.api(&namespace);
        let params = LogParams {
            container: options.container.clone(),
            follow: options.follow,
            tail_lines: options.tail.and_then(|n| i64::try_from(n).ok()),
            ..LogParams::default()
        };
        let reader = api.log_stream(instance, &params).await.map_err(|e| {
            kube_error(
                &self.inner.server,
                &format!("read the log of pod {namespace}/{instance}"),
                e,
            )
        })?;
        let context = format!("log of pod {namespace}/{instance}");
        let lines = reader
            .lines()
            .map_err(move |e| Error::io(context.clone(), e));
        Ok(Box::pin(lines))
    }
}

/// `object` as the JSON body of an apply; `what` names it in the error.
pub(crate) fn encode<T: serde::Serialize>(what: String, object: &T) -> Result<serde_json::Value> {
    serde_json::to_value(object).map_err(|e| Error::Codec {
        context: format!("encode {what}"),
        source: e,
    })
}

/// When `t` was, as the engine reports it.
pub(crate) fn now() -> SystemTime {
    SystemTime::now()
}

/// The distinct apps among labelled objects.
pub(crate) fn distinct_apps<'a>(
    objects: impl Iterator<Item = (Option<String>, Option<&'a BTreeMap<String, String>>)>,
) -> Vec<AppKey> {
    let set: BTreeSet<AppKey> = objects
        .filter_map(|(ns, labels)| {
            let app = labels?.get(LABEL_APP)?;
            Some(AppKey::new(ns.unwrap_or_default(), app.clone()))
        })
        .collect();
    set.into_iter().collect()
}
