//! [`KubeEndpoints`]: where a router that sends traffic itself (rorqual-release's
//! `NginxRouter`) finds a revision's ready pods on Kubernetes (feature `endpoints`).
//!
//! [`KubeEngine`](crate::KubeEngine) gives each stateless revision whose template declares
//! ports a headless Service selecting the revision's pods (labels `rorqual.io/app`,
//! `rorqual.io/revision`). The controller-manager's EndpointSlice controller lists those pods
//! in EndpointSlices, copying the Service's labels and marking each endpoint ready from the
//! pod's `Ready` condition. `KubeEndpoints` keeps one watch over the EndpointSlices rorqual
//! manages and answers [`Endpoints::ready`] from it without calling the server, reading the
//! slices of the revision's Service (label `kubernetes.io/service-name`).
//!
//! Slices follow the pods a moment later than an engine's own pod watch does. A rollout
//! controller that splits traffic when the engine reports a new count could route to the
//! previous set of pods and not look again; with [`KubeEndpoints::following`] an engine, a
//! revision whose slices do not list exactly the engine's ready instances is answered with the
//! retryable [`TrafficError::EndpointsBehind`], and the controller sends the split again soon.
//!
//! EndpointSlices, not the older `Endpoints` objects: those refuse loopback addresses
//! (`127.0.0.0/8`), which is where the node agent's pods live without root; slices accept them.
//! The slice API is `discovery.k8s.io/v1beta1` up to Kubernetes 1.20 and `v1` from 1.21; the
//! version is picked from the server's. Servers before 1.20 are refused: their EndpointSlice
//! controller does not copy the Service's labels (and before 1.18 is off by default).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use rorqual_core::engine::Engine;
use rorqual_core::error::{Error, Result};
use rorqual_core::model::{AppKey, Revision};
use rorqual_release::traffic::{Endpoints, TrafficError, ready_endpoints};
use serde::Deserialize;

use crate::engine::ServerVersion;
use crate::engine::errors::kube_error;
use crate::engine::names::{self, LABEL_APP, LABEL_REVISION};

/// The label the EndpointSlice controller puts on each slice: the name of its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// rorqual-release's [`Endpoints`] from the EndpointSlices of the revisions' Services (see the
/// [module docs](self)): the ready addresses of `app`'s `revision`, each with the port the
/// revision's instances report first (the alphabetically first port name, as
/// `Instance::primary_port`). Cheap to clone; the watch stops with the last clone.
#[derive(Clone)]
pub struct KubeEndpoints {
    store: Store<DynamicObject>,
    engine: Option<Arc<dyn Engine>>,
    _task: Arc<AbortOnDrop>,
}

impl fmt::Debug for KubeEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeEndpoints")
            .field("slices", &self.store.state().len())
            .field(
                "following",
                &self.engine.as_ref().map(|e| e.kind().to_owned()),
            )
            .finish()
    }
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The first version whose EndpointSlice controller copies the Service's labels to its slices
/// (which the watch selects by).
const SLICES_LABELLED: ServerVersion = ServerVersion {
    major: 1,
    minor: 20,
};

/// The API version of EndpointSlices on a server of version `version`.
pub fn slice_api_version(version: ServerVersion) -> &'static str {
    const SLICES_V1: ServerVersion = ServerVersion {
        major: 1,
        minor: 21,
    };
    if version < SLICES_V1 { "v1beta1" } else { "v1" }
}

impl KubeEndpoints {
    /// Starts the watch over the EndpointSlices labelled `app.kubernetes.io/managed-by=rorqual`
    /// in every namespace and returns once the first list has arrived. `server` names the
    /// cluster in errors. Fails when the server cannot be reached or read within `timeout`
    /// (the client may list and watch `endpointslices` in the `discovery.k8s.io` group), and
    /// refuses servers before Kubernetes 1.20 (see the [module docs](self)).
    pub async fn start(client: Client, server: &str, timeout: Duration) -> Result<KubeEndpoints> {
        // An unreachable or failing server may come up: retried with backoff until `timeout`;
        // a refusal is final.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(200);
        let info = loop {
            match client.apiserver_version().await {
                Ok(info) => break info,
                Err(e) => {
                    let err = kube_error(server, "read the server version (GET /version)", e);
                    if !err.is_retryable() || tokio::time::Instant::now() + delay > deadline {
                        return Err(err);
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let version = ServerVersion::parse(&info.major, &info.minor).ok_or_else(|| {
            Error::BadRequest(format!(
                "{server}: the server's version `{}`.`{}` ({}) cannot be read",
                info.major, info.minor, info.git_version
            ))
        })?;
        if version < SLICES_LABELLED {
            return Err(Error::BadRequest(format!(
                "{server}: KubeEndpoints needs Kubernetes {SLICES_LABELLED} or later (EndpointSlices \
                 carrying their Service's labels); the server is {version} ({})",
                info.git_version
            )));
        }
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(
                "discovery.k8s.io",
                slice_api_version(version),
                "EndpointSlice",
            ),
            "endpointslices",
        );
        let api: Api<DynamicObject> = Api::all_with(client, &resource);
        let writer = reflector::store::Writer::new(resource);
        let store = writer.as_reader();
        let config = watcher::Config::default().labels(&names::managed_selector());
        let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                if let Err(e) = ev {
                    tracing::warn!(error = %e, "endpoint slices: watch failed; retrying with backoff");
                }
            }
        });
        let endpoints = KubeEndpoints {
            store,
            engine: None,
            _task: Arc::new(AbortOnDrop(task.abort_handle())),
        };
        tokio::time::timeout(timeout, endpoints.store.wait_until_ready())
            .await
            .map_err(|_| Error::Remote {
                context: format!(
                    "{server}: the first list of EndpointSlices (discovery.k8s.io/{}) did not arrive within \
                     {timeout:?} (is the server reachable, and may this client list and watch them in every namespace?)",
                    slice_api_version(version)
                ),
                retryable: true,
                source: "timed out".into(),
            })?
            .map_err(|e| Error::Remote {
                context: format!("{server}: the EndpointSlice watch stopped before its first list"),
                retryable: true,
                source: Box::new(e),
            })?;
        Ok(endpoints)
    }

    /// These endpoints, answering [`TrafficError::EndpointsBehind`] while a revision's slices
    /// do not list exactly the ready instances `engine` reports for it (see the
    /// [module docs](self)). `engine` is the one the rollout controller drives, usually the
    /// [`KubeEngine`](crate::KubeEngine) of the same cluster.
    #[must_use]
    pub fn following(mut self, engine: Arc<dyn Engine>) -> KubeEndpoints {
        self.engine = Some(engine);
        self
    }

    /// The ready endpoints of `app`'s `revision` as the watch has them now (sorted, without
    /// duplicates).
    pub fn ready_now(&self, app: &AppKey, revision: &Revision) -> Vec<SocketAddr> {
        let service = names::revision_service_name(app, revision);
        let slices = self.store.state_filter(|o| {
            o.namespace().as_deref() == Some(app.namespace.as_str())
                && o.labels().get(SERVICE_NAME_LABEL) == Some(&service)
                && o.labels().get(LABEL_APP) == Some(&app.name)
                && o.labels().get(LABEL_REVISION).map(String::as_str) == Some(revision.as_str())
        });
        let mut out = BTreeSet::new();
        for slice in slices {
            match serde_json::from_value::<Slice>(slice.data.clone()) {
                Ok(s) => out.extend(s.ready_endpoints()),
                Err(e) => tracing::warn!(
                    slice = %slice.name_any(),
                    namespace = %app.namespace,
                    error = %e,
                    "endpoint slices: cannot read a slice; left out"
                ),
            }
        }
        out.into_iter().collect()
    }
}

#[async_trait]
impl Endpoints for KubeEndpoints {
    async fn ready(
        &self,
        app: &AppKey,
        revision: &Revision,
    ) -> std::result::Result<Vec<SocketAddr>, TrafficError> {
        let slices = self.ready_now(app, revision);
        let Some(engine) = &self.engine else {
            return Ok(slices);
        };
        let instances = engine
            .instances(app)
            .await
            .map_err(|source| TrafficError::Engine {
                app: app.to_string(),
                revision: revision.clone(),
                source,
            })?;
        let expected = ready_endpoints(&instances, revision);
        if slices != expected {
            return Err(TrafficError::EndpointsBehind {
                app: app.to_string(),
                revision: revision.clone(),
                reason: format!(
                    "its EndpointSlices list {} ready address(es), the {} engine {}",
                    slices.len(),
                    engine.kind(),
                    expected.len()
                ),
            });
        }
        Ok(slices)
    }
}

/// The fields of an EndpointSlice (`v1beta1` or `v1`: the same here) a router needs.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Slice {
    address_type: String,
    #[serde(default)]
    endpoints: Option<Vec<SliceEndpoint>>,
    #[serde(default)]
    ports: Option<Vec<SlicePort>>,
}

#[derive(Debug, Deserialize)]
struct SliceEndpoint {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Option<Conditions>,
}

#[derive(Debug, Deserialize)]
struct Conditions {
    ready: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct SlicePort {
    name: Option<String>,
    port: Option<i32>,
}

impl Slice {
    /// `address:port` of each ready endpoint (a missing `ready` means ready, as the API
    /// documents), with the port whose name sorts first; nothing for FQDN slices or slices
    /// without a port.
    fn ready_endpoints(&self) -> Vec<SocketAddr> {
        if self.address_type != "IPv4" && self.address_type != "IPv6" {
            return Vec::new();
        }
        let port = self
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone().unwrap_or_default(), p.port?)))
            .min()
            .and_then(|(_, port)| u16::try_from(port).ok());
        let Some(port) = port else {
            return Vec::new();
        };
        self.endpoints
            .iter()
            .flatten()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .flat_map(|e| &e.addresses)
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, port))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ready_endpoints_take_ready_addresses_with_the_first_named_port() {
        let slice: Slice = serde_json::from_value(json!({
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["127.1.0.1"], "conditions": {"ready": true}},
                {"addresses": ["127.1.0.2"], "conditions": {"ready": false}},
                {"addresses": ["127.1.0.3"], "conditions": {}},
                {"addresses": ["not-an-ip"]}
            ],
            "ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8080}]
        }))
        .unwrap();
        assert_eq!(
            slice.ready_endpoints(),
            [
                SocketAddr::from(([127, 1, 0, 1], 8080)),
                SocketAddr::from(([127, 1, 0, 3], 8080))
            ]
        );
    }

    #[test]
    fn slices_without_ports_or_of_names_give_nothing() {
        let no_ports: Slice = serde_json::from_value(json!({
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"]}],
            "ports": null
        }))
        .unwrap();
        assert!(no_ports.ready_endpoints().is_empty());
        let fqdn: Slice = serde_json::from_value(json!({
            "addressType": "FQDN",
            "endpoints": [{"addresses": ["db.example"]}],
            "ports": [{"name": "pg", "port": 5432}]
        }))
        .unwrap();
        assert!(fqdn.ready_endpoints().is_empty());
        let empty: Slice =
            serde_json::from_value(json!({"addressType": "IPv6", "endpoints": null})).unwrap();
        assert!(empty.ready_endpoints().is_empty());
    }

    #[test]
    fn the_slice_api_follows_the_server_version() {
        assert_eq!(
            slice_api_version(ServerVersion {
                major: 1,
                minor: 20
            }),
            "v1beta1"
        );
        assert_eq!(
            slice_api_version(ServerVersion {
                major: 1,
                minor: 21
            }),
            "v1"
        );
        assert_eq!(
            slice_api_version(ServerVersion {
                major: 1,
                minor: 30
            }),
            "v1"
        );
    }
}
