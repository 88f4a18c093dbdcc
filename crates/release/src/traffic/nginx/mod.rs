//! The nginx router: weighted upstreams in a config nginx validates and reloads.
//!
//! - [`routes`]: the route table (each revision resolved to its endpoints) and the history of
//!   applied config versions;
//! - [`render`]: the config text for a route table (pure);
//! - [`process`]: the nginx process — validate, start, reload, stop — on the shared
//!   supervisor of `rorqual-local`.

#[cfg(test)]
mod golden;
mod process;
mod render;
mod routes;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use rorqual_local::process::Signal;
use tokio::sync::Mutex;

use self::process::NginxProcess;
use self::render::{RenderSettings, render};
use self::routes::{
    AppRoute, ConfigHistory, PreviewRoute, RouteTable, check_free, config_error, not_routed,
    to_split,
};
use super::{Backend, Endpoints, TrafficError, TrafficRouter, TrafficSplit, Verification};
use rorqual_core::model::{AppKey, Revision};

pub use self::routes::{ConfigVersion, RoutedBackend};

/// Where Debian's `nginx-light` installs the binary.
pub const NGINX_DEFAULT_BINARY: &str = "/usr/sbin/nginx";

/// Builds an [`NginxRouter`].
#[derive(Debug, Clone)]
#[must_use]
pub struct NginxRouterBuilder {
    prefix: PathBuf,
    binary: PathBuf,
    keep_versions: usize,
    routes: BTreeMap<AppKey, SocketAddr>,
    previews: BTreeMap<AppKey, SocketAddr>,
    control: Option<SocketAddr>,
    http_snippet: String,
    worker_processes: u32,
    endpoints: Option<Arc<dyn Endpoints>>,
}

impl NginxRouterBuilder {
    /// Where the router finds each revision's ready endpoints (required): usually
    /// [`EngineEndpoints`](crate::traffic::EngineEndpoints) over the engine the rollout
    /// controller drives, or [`StaticEndpoints`](crate::traffic::StaticEndpoints).
    pub fn endpoints(mut self, endpoints: Arc<dyn Endpoints>) -> Self {
        self.endpoints = Some(endpoints);
        self
    }

    /// The nginx binary (default `/usr/sbin/nginx`).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = path.into();
        self
    }

    /// How many applied config versions to keep (default 10, at least 1).
    pub fn keep_versions(mut self, n: usize) -> Self {
        self.keep_versions = n.max(1);
        self
    }

    /// Serves `app` on `listen` (more apps can be added later with
    /// [`NginxRouter::add_route`]).
    pub fn route(mut self, app: AppKey, listen: SocketAddr) -> Self {
        self.routes.insert(app, listen);
        self
    }

    /// Also serves `app`'s preview on `listen`: the revision given to
    /// [`TrafficRouter::set_preview`] alone (blue-green testers' address), 503 while there is
    /// none. `app` needs a [`route`](Self::route) too. More can be added later with
    /// [`NginxRouter::add_preview_route`].
    pub fn preview_route(mut self, app: AppKey, listen: SocketAddr) -> Self {
        self.previews.insert(app, listen);
        self
    }

    /// The loopback address of the control server the router uses to see which config version
    /// nginx serves (default: a free port on 127.0.0.1).
    pub fn control(mut self, addr: SocketAddr) -> Self {
        self.control = Some(addr);
        self
    }

    /// Extra directives for the `http` block (log formats, timeouts); checked by `nginx -t`.
    pub fn http_snippet(mut self, snippet: impl Into<String>) -> Self {
        self.http_snippet = snippet.into();
        self
    }

    /// nginx worker processes (default 1).
    pub fn worker_processes(mut self, n: u32) -> Self {
        self.worker_processes = n.max(1);
        self
    }

    /// Checks the settings and creates the prefix directories. nginx starts on the first
    /// [`NginxRouter::start`] or split.
    pub fn build(self) -> Result<NginxRouter, TrafficError> {
        let routes = routes::route_table(self.routes, &self.previews)?;
        let Some(endpoints) = self.endpoints else {
            return Err(config_error(
                "no endpoints source: set NginxRouterBuilder::endpoints (EngineEndpoints over \
                 the engine, or StaticEndpoints)"
                    .into(),
            ));
        };
        if !self.binary.exists() {
            return Err(TrafficError::Io {
                context: format!("nginx binary {} not found", self.binary.display()),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        for dir in [
            "",
            "logs",
            "tmp/client",
            "tmp/proxy",
            "tmp/fastcgi",
            "tmp/uwsgi",
            "tmp/scgi",
        ] {
            let path = self.prefix.join(dir);
            std::fs::create_dir_all(&path).map_err(|source| TrafficError::Io {
                context: format!("creating nginx prefix directory {}", path.display()),
                source,
            })?;
        }
        let control = match self.control {
            Some(c) => c,
            None => free_loopback_port().map_err(|source| TrafficError::Io {
                context: "finding a free loopback port for the nginx control server".into(),
                source,
            })?,
        };
        let features = process::probe_features(&self.binary);
        let nginx = NginxProcess::new(
            self.binary,
            self.prefix.clone(),
            control,
            self.worker_processes,
        )?;
        Ok(NginxRouter {
            endpoints,
            render: RenderSettings {
                prefix: self.prefix,
                control,
                http_snippet: self.http_snippet,
                worker_processes: self.worker_processes,
                as_root: nix::unistd::geteuid().is_root(),
                features,
            },
            state: Mutex::new(State {
                routes,
                history: ConfigHistory::new(self.keep_versions),
                nginx,
            }),
        })
    }
}

/// Routes traffic through an nginx it runs under its own prefix directory.
///
/// Each application gets a `server` listening on its address with a weighted `upstream`: the
/// router maps each weighted revision of a split to the revision's ready endpoints, asking its
/// [`Endpoints`] source ([`NginxRouterBuilder::endpoints`]); a revision at weight `w` over `k`
/// endpoints contributes `server addr weight=…` lines whose weights sum to about `100·w` (so
/// `k` does not skew the split); weight-0 revisions are left out. A weighted revision without
/// a ready endpoint is refused with [`TrafficError::NoEndpoints`] (retryable) and nothing
/// changes. An application may also have a preview `server`
/// ([`NginxRouterBuilder::preview_route`]) whose upstream is the preview revision's endpoints
/// alone ([`TrafficRouter::set_preview`]), answering 503 while no preview is set.
///
/// Applying a split renders the whole config, checks it with `nginx -t`, swaps it in and
/// reloads (SIGHUP to the router's own master), then waits until nginx serves the new version
/// alone. A failed reload puts the previous file back (the running nginx never left the
/// previous config) and returns [`TrafficError::ReloadFailed`]. The last versions are kept
/// with diffs. A split (or preview) whose weights and endpoints are those nginx already serves
/// does not reload, as long as nginx runs and its config file is the one the router wrote: so
/// the same split can be sent again whenever a revision's instances change, and only a change
/// reloads.
///
/// [`TrafficRouter::verify`] checks, without reloading: the weights nginx routes are the
/// split's; each weighted revision's endpoints in the upstream are its ready endpoints now;
/// the nginx master runs; the config file on disk is the last one applied; and the workers
/// serve that version (asked from the control server, whose answer is part of each rendered
/// config). Any difference is a [`Verification::Failed`] naming it; sending the split again
/// repairs all of them. It does not send requests to the revisions: whether they answer well is
/// the analysis' question.
///
/// The nginx master is a child of this process (`daemon off`) in its own process group, run
/// by `rorqual-local`'s process supervisor. Stop it with [`NginxRouter::shutdown`], which
/// waits for nginx to exit. Dropping the router instead only *starts* a fast shutdown: it
/// sends SIGTERM to nginx's process group without waiting (nginx exits within milliseconds;
/// nothing escalates to SIGKILL afterwards, and the master is reaped in the background).
/// When running as root the config says `user root;` (otherwise nginx would switch workers
/// to `www-data`/`nobody`); all log, pid, lock and temp paths are under the prefix.
#[derive(Debug)]
pub struct NginxRouter {
    endpoints: Arc<dyn Endpoints>,
    render: RenderSettings,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    routes: RouteTable,
    history: ConfigHistory,
    nginx: NginxProcess,
}

impl NginxRouter {
    /// A builder with nginx's files under `prefix` (created if missing).
    pub fn builder(prefix: impl Into<PathBuf>) -> NginxRouterBuilder {
        NginxRouterBuilder {
            prefix: prefix.into(),
            binary: PathBuf::from(NGINX_DEFAULT_BINARY),
            keep_versions: 10,
            routes: BTreeMap::new(),
            previews: BTreeMap::new(),
            control: None,
            http_snippet: String::new(),
            worker_processes: 1,
            endpoints: None,
        }
    }

    /// The config file nginx runs from.
    pub fn config_path(&self) -> PathBuf {
        self.render.prefix.join("nginx.conf")
    }

    /// The error log.
    pub fn error_log_path(&self) -> PathBuf {
        self.render.prefix.join("logs/error.log")
    }

    /// The address `app` is served on, if routed.
    pub async fn listen_addr(&self, app: &AppKey) -> Option<SocketAddr> {
        self.state.lock().await.routes.get(app).map(|r| r.listen)
    }

    /// The address `app`'s preview is served on, if it has a preview route.
    pub async fn preview_addr(&self, app: &AppKey) -> Option<SocketAddr> {
        self.state
            .lock()
            .await
            .routes
            .get(app)
            .and_then(|r| r.preview.as_ref())
            .map(|p| p.listen)
    }

    /// The backend `app`'s preview currently serves (`None` when empty or without a preview
    /// route).
    pub async fn current_preview(&self, app: &AppKey) -> Option<Backend> {
        self.current_preview_upstream(app)
            .await
            .map(|b| b.to_backend())
    }

    /// The revision `app`'s preview currently serves with the endpoints its upstream lists
    /// (`None` when empty or without a preview route).
    pub async fn current_preview_upstream(&self, app: &AppKey) -> Option<RoutedBackend> {
        self.state
            .lock()
            .await
            .routes
            .get(app)
            .and_then(|r| r.preview.as_ref())
            .and_then(|p| p.backend.clone())
    }

    /// The applied config versions, oldest first (at most `keep_versions`).
    pub async fn versions(&self) -> Vec<ConfigVersion> {
        self.state
            .lock()
            .await
            .history
            .versions()
            .cloned()
            .collect()
    }

    /// The split currently served for `app` (weights only; see
    /// [`current_upstream`](Self::current_upstream) for the endpoints).
    pub async fn current_split(&self, app: &AppKey) -> Option<TrafficSplit> {
        self.state
            .lock()
            .await
            .routes
            .get(app)
            .and_then(|r| r.split.as_deref())
            .map(to_split)
    }

    /// The revisions `app`'s upstream sends traffic to, each with its weight and the endpoints
    /// listed for it, in the split's order; empty while `app` has no split (nginx answers 503).
    /// Weight-0 revisions are left out, as in the config.
    pub async fn current_upstream(&self, app: &AppKey) -> Vec<RoutedBackend> {
        self.state
            .lock()
            .await
            .routes
            .get(app)
            .and_then(|r| r.split.as_ref())
            .map(|split| split.iter().filter(|b| b.is_live()).cloned().collect())
            .unwrap_or_default()
    }

    /// Starts nginx with the current routes (apps without a split answer 503), if it is not
    /// running yet.
    pub async fn start(&self) -> Result<(), TrafficError> {
        let mut state = self.state.lock().await;
        if state.nginx.is_running() {
            return Ok(());
        }
        let routes = state.routes.clone();
        self.apply(&mut state, routes, &AppKey::new("", "nginx"))
            .await
    }

    /// Serves a new `app` on `listen` (503 until it gets a split); reloads nginx.
    pub async fn add_route(&self, app: &AppKey, listen: SocketAddr) -> Result<(), TrafficError> {
        let mut state = self.state.lock().await;
        check_free(&state.routes, app, listen, false)?;
        let mut routes = state.routes.clone();
        routes
            .entry(app.clone())
            .and_modify(|r| r.listen = listen)
            .or_insert_with(|| AppRoute::new(listen));
        self.apply(&mut state, routes, app).await
    }

    /// Serves `app`'s preview on `listen` (503 until [`TrafficRouter::set_preview`] gives it a
    /// revision); reloads nginx. `app` must already be routed.
    pub async fn add_preview_route(
        &self,
        app: &AppKey,
        listen: SocketAddr,
    ) -> Result<(), TrafficError> {
        let mut state = self.state.lock().await;
        check_free(&state.routes, app, listen, true)?;
        let mut routes = state.routes.clone();
        let route = routes.get_mut(app).ok_or_else(|| not_routed(app))?;
        match &mut route.preview {
            Some(p) => p.listen = listen,
            None => {
                route.preview = Some(PreviewRoute {
                    listen,
                    backend: None,
                });
            }
        }
        self.apply(&mut state, routes, app).await
    }

    /// Stops nginx (fast shutdown: SIGTERM to its process group, SIGKILL after 5 s) and waits
    /// for it to exit.
    pub async fn shutdown(&self) {
        self.state.lock().await.nginx.shutdown().await;
    }

    /// `backend` resolved to its ready endpoints: none for weight 0 (nginx leaves it out),
    /// [`TrafficError::NoEndpoints`] for a weighted revision without any.
    async fn resolve(
        &self,
        app: &AppKey,
        backend: &Backend,
    ) -> Result<RoutedBackend, TrafficError> {
        if backend.weight == 0 {
            return Ok(RoutedBackend::new(backend, Vec::new()));
        }
        let endpoints = self.endpoints.ready(app, &backend.revision).await?;
        if endpoints.is_empty() {
            return Err(no_endpoints(app, &backend.revision));
        }
        Ok(RoutedBackend::new(backend, endpoints))
    }

    /// Whether nginx runs from the config the router last applied: the master is running and
    /// the file on disk is that version's text (nobody edited or replaced it).
    async fn serves_applied(&self, state: &mut State) -> bool {
        if !state.nginx.is_running() {
            return false;
        }
        let Some(last) = state.history.versions().last() else {
            return false;
        };
        tokio::fs::read_to_string(self.config_path())
            .await
            .is_ok_and(|text| text == last.config)
    }

    /// What [`TrafficRouter::verify`] checks, with the state locked.
    async fn check(
        &self,
        state: &mut State,
        app: &AppKey,
        split: &TrafficSplit,
    ) -> Result<Verification, TrafficError> {
        let route = state.routes.get(app).ok_or_else(|| not_routed(app))?;
        let Some(routed) = route.split.clone() else {
            return Ok(Verification::Failed(format!(
                "{app} has no split yet: nginx answers 503"
            )));
        };
        let want = weights(split.weighted().map(|b| (&b.revision, b.weight)));
        let have = weights(routed.iter().map(|b| (&b.revision, b.weight)));
        if want != have {
            return Ok(Verification::Failed(format!(
                "nginx routes {app} as {}, not {}",
                show_weights(&have),
                show_weights(&want)
            )));
        }
        for b in routed.iter().filter(|b| b.weight > 0) {
            let mut ready = self.endpoints.ready(app, &b.revision).await?;
            ready.sort_unstable();
            ready.dedup();
            if ready != b.endpoints {
                return Ok(Verification::Failed(format!(
                    "{app} revision {}: nginx routes to [{}] but its ready endpoints are [{}]",
                    b.revision,
                    show_endpoints(&b.endpoints),
                    show_endpoints(&ready)
                )));
            }
        }
        if !state.nginx.is_running() {
            return Ok(Verification::Failed("nginx is not running".into()));
        }
        let Some(applied) = state.history.versions().last().map(|v| v.version) else {
            return Ok(Verification::Failed("no config applied yet".into()));
        };
        if !self.serves_applied(state).await {
            return Ok(Verification::Failed(format!(
                "{} is not the applied config version {applied} (changed outside the router)",
                self.config_path().display()
            )));
        }
        Ok(match state.nginx.served_version().await {
            Ok(v) if v == applied => Verification::Verified,
            Ok(v) => Verification::Failed(format!(
                "nginx serves config version {v}, not the applied version {applied}"
            )),
            Err(reason) => Verification::Failed(reason),
        })
    }

    /// Renders, validates, swaps in and loads `routes`; on success records the version and
    /// makes `routes` the state. `app` names the application for errors.
    async fn apply(
        &self,
        state: &mut State,
        routes: RouteTable,
        app: &AppKey,
    ) -> Result<(), TrafficError> {
        let version = state.history.next_version();
        let config = render(&self.render, &routes, version);
        let path = self.config_path();
        let next = self.render.prefix.join("nginx.conf.next");
        write(&next, &config).await?;
        state.nginx.validate(&next, app).await?;
        let previous = tokio::fs::read_to_string(&path).await.ok();
        tokio::fs::rename(&next, &path)
            .await
            .map_err(|source| TrafficError::Io {
                context: format!("moving {} to {}", next.display(), path.display()),
                source,
            })?;
        let loaded = if state.nginx.is_running() {
            state.nginx.reload(version).await
        } else {
            state.nginx.start(&path, version).await
        };
        if let Err(reason) = loaded {
            // nginx keeps serving the previous config after a failed reload; put its file
            // back so the next check and any restart start from it.
            match &previous {
                Some(text) => write(&path, text).await?,
                None => {
                    let _ = tokio::fs::remove_file(&path).await;
                }
            }
            // nginx may still be retrying (it retries a failed bind for a few seconds) and
            // could then load the rejected file; a second reload makes it end on the restored
            // one. Without a running master there is nothing to reload.
            let _ = state.nginx.signal(Signal::SIGHUP);
            tracing::warn!(app = %app, version, %reason, "nginx reload failed, previous config restored");
            state.history.skip();
            return Err(TrafficError::ReloadFailed {
                router: "nginx".into(),
                app: app.to_string(),
                reason,
            });
        }
        state.history.record(version, config);
        state.routes = routes;
        tracing::info!(app = %app, version, "nginx config applied");
        Ok(())
    }
}

#[async_trait]
impl TrafficRouter for NginxRouter {
    fn name(&self) -> &str {
        "nginx"
    }

    fn routes_traffic(&self) -> bool {
        true
    }

    async fn set_split(&self, app: &AppKey, split: &TrafficSplit) -> Result<(), TrafficError> {
        split.validate_weights()?;
        // Resolving under the lock keeps concurrent splits in order: the last one applied is
        // the last one resolved.
        let mut state = self.state.lock().await;
        if !state.routes.contains_key(app) {
            return Err(not_routed(app));
        }
        let mut routed = Vec::with_capacity(split.backends.len());
        for b in &split.backends {
            routed.push(self.resolve(app, b).await?);
        }
        let mut routes = state.routes.clone();
        let route = routes.get_mut(app).ok_or_else(|| not_routed(app))?;
        if route.split.as_ref() == Some(&routed) && self.serves_applied(&mut state).await {
            return Ok(());
        }
        route.split = Some(routed);
        self.apply(&mut state, routes, app).await
    }

    async fn verify(
        &self,
        app: &AppKey,
        split: &TrafficSplit,
    ) -> Result<Verification, TrafficError> {
        split.validate_weights()?;
        let mut state = self.state.lock().await;
        self.check(&mut state, app, split).await
    }

    async fn set_preview(
        &self,
        app: &AppKey,
        preview: Option<&Backend>,
    ) -> Result<(), TrafficError> {
        if let Some(b) = preview {
            b.validate_preview()?;
        }
        let mut state = self.state.lock().await;
        let mut routes = state.routes.clone();
        let route = routes.get_mut(app).ok_or_else(|| not_routed(app))?;
        let Some(p) = route.preview.as_mut() else {
            return Err(TrafficError::Unsupported {
                router: "nginx".into(),
                capability: format!("preview routing for {app} (no preview route configured)"),
            });
        };
        let routed = match preview {
            Some(b) => Some(self.resolve(app, b).await?),
            None => None,
        };
        if p.backend == routed && self.serves_applied(&mut state).await {
            return Ok(());
        }
        p.backend = routed;
        self.apply(&mut state, routes, app).await
    }
}

impl Drop for NginxRouter {
    /// Starts nginx's fast shutdown without blocking: SIGTERM to its process group (the
    /// master and its workers), no waiting and no SIGKILL afterwards. Use
    /// [`NginxRouter::shutdown`] to wait until nginx has exited and its ports are free.
    fn drop(&mut self) {
        self.state.get_mut().nginx.terminate();
    }
}

fn no_endpoints(app: &AppKey, revision: &Revision) -> TrafficError {
    TrafficError::NoEndpoints {
        router: "nginx".into(),
        app: app.to_string(),
        revision: revision.clone(),
    }
}

/// The positive weights by revision, sorted by revision.
fn weights<'a>(backends: impl Iterator<Item = (&'a Revision, u32)>) -> Vec<(&'a Revision, u32)> {
    let mut weights: Vec<_> = backends.filter(|(_, w)| *w > 0).collect();
    weights.sort_unstable();
    weights
}

/// `v1 80%, v2 20%`.
fn show_weights(weights: &[(&Revision, u32)]) -> String {
    let mut text = String::new();
    for (i, (revision, weight)) in weights.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        // Writing to a String cannot fail.
        let _ = write!(text, "{sep}{revision} {weight}%");
    }
    text
}

/// `127.0.0.1:8001, 127.0.0.1:8002`.
fn show_endpoints(endpoints: &[SocketAddr]) -> String {
    endpoints
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn free_loopback_port() -> std::io::Result<SocketAddr> {
    rorqual_local::free_loopback_port().map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
}

async fn write(path: &Path, text: &str) -> Result<(), TrafficError> {
    tokio::fs::write(path, text)
        .await
        .map_err(|source| TrafficError::Io {
            context: format!("writing {}", path.display()),
            source,
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_preview_routes_may_not_share_an_address() {
        // The routes are checked before anything touches the disk or runs nginx.
        let dir = Path::new("/nonexistent/rorqual-nginx");
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let (a, b) = (AppKey::new("x", "a"), AppKey::new("x", "b"));
        let build = |builder: NginxRouterBuilder| builder.build().map(|_| ()).unwrap_err();
        let err = build(
            NginxRouter::builder(dir)
                .route(a.clone(), addr)
                .route(b.clone(), "127.0.0.1:8081".parse().unwrap())
                .preview_route(b.clone(), addr),
        );
        assert!(
            err.to_string().contains("both listen on 127.0.0.1:8080"),
            "{err}"
        );
        let err = build(NginxRouter::builder(dir).preview_route(a.clone(), addr));
        assert!(err.to_string().contains("needs an active route"), "{err}");
        assert!(matches!(err, TrafficError::Config { .. }) && !err.is_retryable());
    }

    #[test]
    fn the_endpoints_source_is_required() {
        let err = NginxRouter::builder("/nonexistent/rorqual-nginx")
            .route(AppKey::new("x", "a"), "127.0.0.1:8080".parse().unwrap())
            .build()
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, TrafficError::Config { .. }), "{err}");
        assert!(
            err.to_string().contains("NginxRouterBuilder::endpoints"),
            "{err}"
        );
    }

    #[test]
    fn weights_and_endpoints_are_shown_sorted() {
        let (a, b) = (Revision::from("a"), Revision::from("b"));
        let w = weights([(&b, 20), (&a, 80), (&a, 0)].into_iter());
        assert_eq!(show_weights(&w), "a 80%, b 20%");
        let e: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap()];
        assert_eq!(show_endpoints(&e), "127.0.0.1:1, [::1]:2");
    }
}
