//! The reflectors KubeEngine reads from: ReplicaSets, StatefulSets, Pods and Services rorqual
//! manages (label `app.kubernetes.io/managed-by=rorqual`), and every Node. Reads never call the
//! server; each kind is one watch.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod, Service};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use rorqual_core::error::{Error, Result};
use rorqual_core::model::{AppKey, Instance, Node};

use super::names::{self, LABEL_APP};
use super::observe;
use crate::watch_errors::WatchErrors;

/// Stops the reflector tasks when the last clone of the caches goes.
#[derive(Debug)]
struct Tasks(Vec<tokio::task::AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The engine's reflector stores. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Caches {
    replica_sets: Store<ReplicaSet>,
    stateful_sets: Store<StatefulSet>,
    pods: Store<Pod>,
    services: Store<Service>,
    nodes: Store<KubeNode>,
    _tasks: Arc<Tasks>,
}

/// Starts a reflector over `api` and returns its store and task.
fn reflect<K>(api: Api<K>, config: watcher::Config) -> (Store<K>, tokio::task::AbortHandle)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    <K as Resource>::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&Default::default()).to_string();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut errors = WatchErrors::new(format!("kube engine {kind} watch"));
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(e) => errors.delivered(&e),
                Err(e) => errors.failed(&e),
            }
        }
    });
    (reader, task.abort_handle())
}

impl Caches {
    /// Starts the reflectors and waits until each has its first list.
    pub(crate) async fn start(client: Client, server: &str, timeout: Duration) -> Result<Caches> {
        let managed = watcher::Config::default().labels(&names::managed_selector());
        let (replica_sets, t1) = reflect(Api::<ReplicaSet>::all(client.clone()), managed.clone());
        let (stateful_sets, t2) = reflect(Api::<StatefulSet>::all(client.clone()), managed.clone());
        let (pods, t3) = reflect(Api::<Pod>::all(client.clone()), managed.clone());
        let (services, t5) = reflect(Api::<Service>::all(client.clone()), managed);
        let (nodes, t4) = reflect(Api::<KubeNode>::all(client), watcher::Config::default());
        let caches = Caches {
            replica_sets,
            stateful_sets,
            pods,
            services,
            nodes,
            _tasks: Arc::new(Tasks(vec![t1, t2, t3, t4, t5])),
        };
        let ready = async {
            let _ = caches.replica_sets.wait_until_ready().await;
            let _ = caches.stateful_sets.wait_until_ready().await;
            let _ = caches.pods.wait_until_ready().await;
            let _ = caches.services.wait_until_ready().await;
            let _ = caches.nodes.wait_until_ready().await;
        };
        tokio::time::timeout(timeout, ready).await.map_err(|_| Error::Remote {
            context: format!(
                "{server}: the first list of ReplicaSets, StatefulSets, Pods, Services and Nodes did not arrive within {timeout:?} \
                 (is the server reachable, and may this client list and watch them in every namespace?)"
            ),
            retryable: true,
            source: "timed out".into(),
        })?;
        Ok(caches)
    }

    pub(crate) fn replica_set(&self, namespace: &str, name: &str) -> Option<Arc<ReplicaSet>> {
        self.replica_sets
            .get(&ObjectRef::new(name).within(namespace))
    }

    pub(crate) fn stateful_set(&self, namespace: &str, name: &str) -> Option<Arc<StatefulSet>> {
        self.stateful_sets
            .get(&ObjectRef::new(name).within(namespace))
    }

    pub(crate) fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(namespace))
    }

    pub(crate) fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(&ObjectRef::new(name).within(namespace))
    }

    fn of_app<K: Resource>(app: &AppKey) -> impl Fn(&K) -> bool + '_ {
        move |o: &K| {
            o.meta().namespace.as_deref() == Some(app.namespace.as_str())
                && o.labels().get(LABEL_APP) == Some(&app.name)
        }
    }

    pub(crate) fn replica_sets_of(&self, app: &AppKey) -> Vec<Arc<ReplicaSet>> {
        self.replica_sets.state_filter(Self::of_app(app))
    }

    /// The instances of `app` (pods of set `stateful` carry ordinals).
    pub(crate) fn instances(&self, app: &AppKey, stateful: Option<&str>) -> Vec<Instance> {
        self.pods
            .state_filter(Self::of_app(app))
            .iter()
            .filter_map(|p| observe::instance(p, stateful))
            .collect()
    }

    pub(crate) fn nodes(&self) -> Vec<Node> {
        let mut nodes: Vec<Node> = self
            .nodes
            .state()
            .iter()
            .map(|n| observe::node(n))
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }

    pub(crate) fn apps(&self) -> Vec<AppKey> {
        let rs = self.replica_sets.state();
        let sets = self.stateful_sets.state();
        super::distinct_apps(
            rs.iter()
                .map(|o| (o.namespace(), o.meta().labels.as_ref()))
                .chain(
                    sets.iter()
                        .map(|o| (o.namespace(), o.meta().labels.as_ref())),
                ),
        )
    }

    /// The app owning object `kind` `namespace/name`, if rorqual manages it.
    pub(crate) fn app_of(&self, kind: &str, namespace: &str, name: &str) -> Option<AppKey> {
        let key = |labels: &std::collections::BTreeMap<String, String>| {
            labels
                .get(LABEL_APP)
                .map(|a| AppKey::new(namespace, a.clone()))
        };
        match kind {
            "Pod" => self
                .pods
                .get(&ObjectRef::new(name).within(namespace))
                .and_then(|p| key(p.labels())),
            "ReplicaSet" => self
                .replica_sets
                .get(&ObjectRef::new(name).within(namespace))
                .and_then(|o| key(o.labels())),
            "StatefulSet" => self
                .stateful_sets
                .get(&ObjectRef::new(name).within(namespace))
                .and_then(|o| key(o.labels())),
            _ => None,
        }
    }

    /// The managed pod named `name` (instance ids are pod names; a name found in two
    /// namespaces is ambiguous).
    pub(crate) fn pod_named(&self, name: &str) -> Result<Arc<Pod>> {
        let found = self
            .pods
            .state_filter(|p| p.meta().name.as_deref() == Some(name));
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(super::errors::not_found("instance", name)),
            many => Err(Error::BadRequest(format!(
                "instance `{name}` is a pod in {} namespaces ({}); ids are ambiguous across namespaces",
                many.len(),
                many.iter()
                    .map(|p| p.namespace().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}
