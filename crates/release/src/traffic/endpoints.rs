//! Where a router that sends traffic itself finds a revision's ready instances: the
//! [`Endpoints`] seam, over an engine ([`EngineEndpoints`]) or a fixed set
//! ([`StaticEndpoints`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;

use super::TrafficError;
use rorqual_core::engine::Engine;
use rorqual_core::model::{AppKey, Instance, Revision};

/// The ready endpoints (`address:port`) of an application's revisions, for routers that send
/// traffic to instances themselves (nginx). Routers that hand the revision to a platform
/// object instead (a Kubernetes Service per revision) do not need one.
///
/// Kubernetes mapping: the ready addresses of an `EndpointSlice` for the revision's pods.
#[async_trait]
pub trait Endpoints: Send + Sync + Debug + 'static {
    /// The endpoints of `app`'s `revision` that can take traffic now, sorted and without
    /// duplicates; empty when there are none (the revision is unknown, starting or gone).
    async fn ready(
        &self,
        app: &AppKey,
        revision: &Revision,
    ) -> Result<Vec<SocketAddr>, TrafficError>;
}

/// The endpoints of `revision`'s ready instances among `instances`: each ready instance with
/// an address and a port contributes `address:primary_port`, sorted and without duplicates.
/// Instances without an address or a port (not placed yet, no declared port) are left out.
///
/// ```
/// use std::net::{IpAddr, SocketAddr};
/// use rorqual_core::model::{AppKey, Instance, Revision};
/// use rorqual_release::traffic::ready_endpoints;
///
/// let v1 = Revision::from("v1");
/// let app = AppKey::new("default", "web");
/// let mut i = Instance::new("web-v1-00001", app, v1.clone(), std::time::SystemTime::now());
/// i.address = Some(IpAddr::from([10, 0, 0, 7]));
/// i.ports.insert("http".into(), 8080);
/// assert!(ready_endpoints(std::slice::from_ref(&i), &v1).is_empty(), "not ready yet");
/// i.ready = true;
/// assert_eq!(ready_endpoints(&[i], &v1), [SocketAddr::from(([10, 0, 0, 7], 8080))]);
/// ```
pub fn ready_endpoints(instances: &[Instance], revision: &Revision) -> Vec<SocketAddr> {
    let set: BTreeSet<SocketAddr> = instances
        .iter()
        .filter(|i| &i.revision == revision && i.ready)
        .filter_map(|i| Some(SocketAddr::new(i.address?, i.primary_port()?)))
        .collect();
    set.into_iter().collect()
}

/// [`Endpoints`] from an engine: the ready instances of the revision as
/// [`Engine::instances`] reports them (see [`ready_endpoints`]). Works with any engine.
#[derive(Debug, Clone)]
pub struct EngineEndpoints {
    engine: Arc<dyn Engine>,
}

impl EngineEndpoints {
    /// Endpoints of the instances `engine` runs.
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        EngineEndpoints { engine }
    }
}

#[async_trait]
impl Endpoints for EngineEndpoints {
    async fn ready(
        &self,
        app: &AppKey,
        revision: &Revision,
    ) -> Result<Vec<SocketAddr>, TrafficError> {
        let instances =
            self.engine
                .instances(app)
                .await
                .map_err(|source| TrafficError::Engine {
                    app: app.to_string(),
                    revision: revision.clone(),
                    source,
                })?;
        Ok(ready_endpoints(&instances, revision))
    }
}

/// [`Endpoints`] from a fixed map of (application, revision) to a set of addresses, for
/// hosts whose instances are not run by an engine and for tests. Shared through an `Arc`, it
/// can be changed while a router uses it; the router picks the change up on its next split.
///
/// ```
/// use std::net::SocketAddr;
/// use rorqual_core::model::{AppKey, Revision};
/// use rorqual_release::traffic::StaticEndpoints;
///
/// let app = AppKey::new("default", "web");
/// let v1 = Revision::from("v1");
/// let endpoints = StaticEndpoints::new().with(&app, &v1, ["127.0.0.1:8001".parse()?]);
/// endpoints.add(&app, &v1, "127.0.0.1:8002".parse()?);
/// assert_eq!(endpoints.get(&app, &v1).len(), 2);
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
#[derive(Debug, Default)]
pub struct StaticEndpoints {
    sets: RwLock<BTreeMap<(AppKey, Revision), BTreeSet<SocketAddr>>>,
}

impl StaticEndpoints {
    /// An empty map: every revision has no endpoints.
    pub fn new() -> Self {
        Self::default()
    }

    /// This map with `app`'s `revision` at `endpoints` (replacing what it had).
    #[must_use]
    pub fn with(
        self,
        app: &AppKey,
        revision: &Revision,
        endpoints: impl IntoIterator<Item = SocketAddr>,
    ) -> Self {
        self.set(app, revision, endpoints);
        self
    }

    /// Sets `app`'s `revision` to `endpoints` (replacing what it had; none removes it).
    pub fn set(
        &self,
        app: &AppKey,
        revision: &Revision,
        endpoints: impl IntoIterator<Item = SocketAddr>,
    ) {
        let set: BTreeSet<_> = endpoints.into_iter().collect();
        let key = (app.clone(), revision.clone());
        let mut sets = self.sets.write();
        if set.is_empty() {
            sets.remove(&key);
        } else {
            sets.insert(key, set);
        }
    }

    /// Adds `endpoint` to `app`'s `revision`; `false` if it was there already.
    pub fn add(&self, app: &AppKey, revision: &Revision, endpoint: SocketAddr) -> bool {
        self.sets
            .write()
            .entry((app.clone(), revision.clone()))
            .or_default()
            .insert(endpoint)
    }

    /// Removes `endpoint` from `app`'s `revision`; `false` if it was not there.
    pub fn remove(&self, app: &AppKey, revision: &Revision, endpoint: SocketAddr) -> bool {
        let key = (app.clone(), revision.clone());
        let mut sets = self.sets.write();
        let Some(set) = sets.get_mut(&key) else {
            return false;
        };
        let removed = set.remove(&endpoint);
        if set.is_empty() {
            sets.remove(&key);
        }
        removed
    }

    /// The endpoints of `app`'s `revision`, sorted.
    pub fn get(&self, app: &AppKey, revision: &Revision) -> Vec<SocketAddr> {
        self.sets
            .read()
            .get(&(app.clone(), revision.clone()))
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }
}

#[async_trait]
impl Endpoints for StaticEndpoints {
    async fn ready(
        &self,
        app: &AppKey,
        revision: &Revision,
    ) -> Result<Vec<SocketAddr>, TrafficError> {
        Ok(self.get(app, revision))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use rorqual_core::clock::ManualClock;
    use rorqual_core::memory::MemoryEngine;
    use rorqual_core::model::{AppSpec, ContainerSpec};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn endpoints_seam_is_object_safe_send_and_sync() {
        fn assert_seam<T: ?Sized + Send + Sync + Debug + 'static>() {}
        assert_seam::<dyn Endpoints>();
        let _: Arc<dyn Endpoints> = Arc::new(StaticEndpoints::new());
        let _: Arc<dyn Endpoints> = Arc::new(EngineEndpoints::new(Arc::new(MemoryEngine::new())));
    }

    #[tokio::test]
    async fn static_endpoints_are_kept_per_app_and_revision_sorted_and_unique() {
        let (web, api) = (AppKey::new("default", "web"), AppKey::new("default", "api"));
        let (v1, v2) = (Revision::from("v1"), Revision::from("v2"));
        let e = StaticEndpoints::new()
            .with(&web, &v1, [addr(8002), addr(8001), addr(8002)])
            .with(&api, &v1, [addr(9001)]);
        assert_eq!(e.ready(&web, &v1).await.unwrap(), [addr(8001), addr(8002)]);
        assert_eq!(e.ready(&api, &v1).await.unwrap(), [addr(9001)]);
        assert!(e.ready(&web, &v2).await.unwrap().is_empty());
        assert!(e.add(&web, &v2, addr(8003)));
        assert!(!e.add(&web, &v2, addr(8003)));
        assert_eq!(e.ready(&web, &v2).await.unwrap(), [addr(8003)]);
        assert!(e.remove(&web, &v2, addr(8003)));
        assert!(!e.remove(&web, &v2, addr(8003)));
        assert!(e.get(&web, &v2).is_empty());
        e.set(&web, &v1, []);
        assert!(e.get(&web, &v1).is_empty());
        assert_eq!(e.get(&api, &v1), [addr(9001)]);
    }

    fn spec(version: &str, port: u16) -> AppSpec {
        AppSpec::new(
            "web",
            vec![
                ContainerSpec::new("app", ["demo"])
                    .env("DEMO_VERSION", version)
                    .port("http", port),
            ],
        )
    }

    #[tokio::test]
    async fn engine_endpoints_are_the_ready_instances_of_the_revision() {
        let clock = ManualClock::new();
        let engine = Arc::new(MemoryEngine::builder().clock(clock.clone()).build());
        let endpoints = EngineEndpoints::new(engine.clone());
        let app = AppKey::new("default", "web");
        let (v1, v2) = (spec("v1", 8080), spec("v2", 9090));
        engine.apply_group(&v1, 2).await.unwrap();
        engine.apply_group(&v2, 1).await.unwrap();
        // Placed and addressed, but still starting: no traffic yet.
        assert!(
            endpoints
                .ready(&app, &v1.revision())
                .await
                .unwrap()
                .is_empty()
        );
        clock.advance(Duration::from_secs(5));
        let ready = endpoints.ready(&app, &v1.revision()).await.unwrap();
        let instances = engine.instances(&app).await.unwrap();
        let want: BTreeSet<SocketAddr> = instances
            .iter()
            .filter(|i| i.revision == v1.revision())
            .map(|i| SocketAddr::new(i.address.unwrap(), 8080))
            .collect();
        assert_eq!(ready.len(), 2);
        assert_eq!(ready, want.into_iter().collect::<Vec<_>>());
        let ready = endpoints.ready(&app, &v2.revision()).await.unwrap();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].port(), 9090);
        // An application the engine does not run has no endpoints (not an error).
        assert!(
            endpoints
                .ready(&AppKey::new("default", "nope"), &v1.revision())
                .await
                .unwrap()
                .is_empty()
        );
    }
}
