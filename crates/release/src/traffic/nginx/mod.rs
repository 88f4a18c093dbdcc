//! The nginx router: weighted upstreams in a config nginx validates and reloads.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::{Backend, TrafficError, TrafficRouter, TrafficSplit};
use rorqual_core::model::AppKey;

/// Where Debian's `nginx-light` installs the binary.
pub const NGINX_DEFAULT_BINARY: &str = "/usr/sbin/nginx";

/// How long a reload may take before it counts as failed.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// One applied config, with the unified diff from the one before.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigVersion {
    /// Increases by one per applied config, from 1.
    pub version: u64,
    /// When it was applied.
    pub at: SystemTime,
    /// The whole config.
    pub config: String,
    /// Unified diff from the previous version (empty for the first).
    pub diff: String,
}

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
}

impl NginxRouterBuilder {
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
        let mut seen = BTreeMap::new();
        let listens = self
            .routes
            .iter()
            .map(|(app, addr)| (app.to_string(), addr))
            .chain(
                self.previews
                    .iter()
                    .map(|(app, addr)| (format!("{app} (preview)"), addr)),
            );
        for (name, addr) in listens {
            if let Some(other) = seen.insert(*addr, name.clone()) {
                return Err(TrafficError::InvalidSplit {
                    reason: format!("{name} and {other} both listen on {addr}"),
                });
            }
        }
        if let Some(app) = self.previews.keys().find(|a| !self.routes.contains_key(*a)) {
            return Err(TrafficError::InvalidSplit {
                reason: format!("preview route for {app} needs an active route for it too"),
            });
        }
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
        let features = probe_features(&self.binary);
        let previews = self.previews;
        let routes = self
            .routes
            .into_iter()
            .map(|(app, listen)| {
                let preview = previews.get(&app).map(|&listen| PreviewRoute {
                    listen,
                    backend: None,
                });
                (
                    app,
                    AppRoute {
                        listen,
                        split: None,
                        preview,
                    },
                )
            })
            .collect();
        Ok(NginxRouter {
            settings: Settings {
                prefix: self.prefix,
                binary: self.binary,
                keep_versions: self.keep_versions,
                control,
                http_snippet: self.http_snippet,
                worker_processes: self.worker_processes,
                as_root: nix::unistd::geteuid().is_root(),
                features,
            },
            state: Mutex::new(State {
                routes,
                versions: VecDeque::new(),
                next_version: 1,
                master: None,
            }),
            // No pooled connections: a kept-alive connection would stay with an old worker,
            // which answers the old version until it exits.
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .map_err(|e| TrafficError::Io {
                    context: "building the HTTP client for the nginx control server".into(),
                    source: std::io::Error::other(e),
                })?,
        })
    }
}

/// Routes traffic through an nginx it runs under its own prefix directory.
///
/// Each application gets a `server` listening on its address with a weighted `upstream`: a
/// revision at weight `w` over `k` endpoints contributes `server addr weight=…` lines whose
/// weights sum to about `100·w` (so `k` does not skew the split); weight-0 revisions are left
/// out. An application may also have a preview `server` ([`NginxRouterBuilder::preview_route`])
/// whose upstream is the preview revision's endpoints alone ([`TrafficRouter::set_preview`]),
/// answering 503 while no preview is set. Applying a split renders the whole config, checks it with `nginx -t`, swaps it in and
/// reloads (SIGHUP to the router's own master), then waits until nginx serves the new version.
/// A failed reload puts the previous file back (the running nginx never left the previous
/// config) and returns [`TrafficError::ReloadFailed`]. The last versions are kept with diffs.
///
/// The nginx master is a child of this process (`daemon off`), stopped with
/// [`NginxRouter::shutdown`] or when the router is dropped. When running as root the config
/// says `user root;` (otherwise nginx would switch workers to `www-data`/`nobody`); all log,
/// pid, lock and temp paths are under the prefix.
#[derive(Debug)]
pub struct NginxRouter {
    settings: Settings,
    state: Mutex<State>,
    client: reqwest::Client,
}

#[derive(Debug)]
struct Settings {
    prefix: PathBuf,
    binary: PathBuf,
    keep_versions: usize,
    control: SocketAddr,
    http_snippet: String,
    worker_processes: u32,
    as_root: bool,
    features: Features,
}

/// Temp-path directives this nginx build knows (nginx-light may leave modules out).
#[derive(Debug, Clone, Copy, Default)]
struct Features {
    fastcgi: bool,
    uwsgi: bool,
    scgi: bool,
}

#[derive(Debug, Clone)]
struct AppRoute {
    listen: SocketAddr,
    split: Option<TrafficSplit>,
    preview: Option<PreviewRoute>,
}

/// An application's preview server: its address and the revision it serves, if any.
#[derive(Debug, Clone)]
struct PreviewRoute {
    listen: SocketAddr,
    backend: Option<Backend>,
}

impl AppRoute {
    /// Every address this route listens on.
    fn listens(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        std::iter::once(self.listen).chain(self.preview.as_ref().map(|p| p.listen))
    }
}

#[derive(Debug)]
struct State {
    routes: BTreeMap<AppKey, AppRoute>,
    versions: VecDeque<ConfigVersion>,
    next_version: u64,
    master: Option<tokio::process::Child>,
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
        }
    }

    /// The config file nginx runs from.
    pub fn config_path(&self) -> PathBuf {
        self.settings.prefix.join("nginx.conf")
    }

    /// The error log.
    pub fn error_log_path(&self) -> PathBuf {
        self.settings.prefix.join("logs/error.log")
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
        self.state.lock().await.versions.iter().cloned().collect()
    }

    /// The split currently served for `app`.
    pub async fn current_split(&self, app: &AppKey) -> Option<TrafficSplit> {
        self.state
            .lock()
            .await
            .routes
            .get(app)
            .and_then(|r| r.split.clone())
    }

    /// Starts nginx with the current routes (apps without a split answer 503), if it is not
    /// running yet.
    pub async fn start(&self) -> Result<(), TrafficError> {
        let mut state = self.state.lock().await;
        if state.master.is_some() {
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
            .or_insert(AppRoute {
                listen,
                split: None,
                preview: None,
            });
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
        let Some(route) = routes.get_mut(app) else {
            return Err(TrafficError::InvalidSplit {
                reason: format!("{app} is not routed by this nginx router; add a route first"),
            });
        };
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

    /// Stops nginx (fast shutdown, then kill after 5 s) and waits for it.
    pub async fn shutdown(&self) {
        let mut state = self.state.lock().await;
        if let Some(mut child) = state.master.take() {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }

    /// Renders, validates, swaps in and loads `routes`; on success records the version and
    /// makes `routes` the state. `app` names the application for errors.
    async fn apply(
        &self,
        state: &mut State,
        routes: BTreeMap<AppKey, AppRoute>,
        app: &AppKey,
    ) -> Result<(), TrafficError> {
        let version = state.next_version;
        let config = render(&self.settings, &routes, version);
        let path = self.config_path();
        let next = self.settings.prefix.join("nginx.conf.next");
        write(&next, &config).await?;
        self.validate(&next, app).await?;
        let previous = tokio::fs::read_to_string(&path).await.ok();
        tokio::fs::rename(&next, &path)
            .await
            .map_err(|source| TrafficError::Io {
                context: format!("moving {} to {}", next.display(), path.display()),
                source,
            })?;
        let loaded = if master_running(&mut state.master) {
            self.reload(state, version).await
        } else {
            self.spawn(state, version).await
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
            // one.
            if let Some(pid) = state.master.as_ref().and_then(tokio::process::Child::id)
                && let Ok(pid) = i32::try_from(pid)
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGHUP,
                );
            }
            tracing::warn!(app = %app, version, %reason, "nginx reload failed, previous config restored");
            state.next_version += 1;
            return Err(TrafficError::ReloadFailed {
                router: "nginx".into(),
                app: app.to_string(),
                reason,
            });
        }
        let diff = match state.versions.back() {
            Some(prev) => similar::TextDiff::from_lines(&prev.config, &config)
                .unified_diff()
                .context_radius(3)
                .header(
                    &format!("nginx.conf (version {})", prev.version),
                    &format!("nginx.conf (version {version})"),
                )
                .to_string(),
            None => String::new(),
        };
        state.versions.push_back(ConfigVersion {
            version,
            at: SystemTime::now(),
            config,
            diff,
        });
        while state.versions.len() > self.settings.keep_versions {
            state.versions.pop_front();
        }
        state.next_version = version + 1;
        state.routes = routes;
        tracing::info!(app = %app, version, "nginx config applied");
        Ok(())
    }

    /// `nginx -t` on `file`.
    async fn validate(&self, file: &Path, app: &AppKey) -> Result<(), TrafficError> {
        let out = self
            .nginx_command()
            .arg("-t")
            .arg("-c")
            .arg(file)
            .output()
            .await
            .map_err(|source| TrafficError::Io {
                context: format!("running {} -t", self.settings.binary.display()),
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason = stderr
            .lines()
            .filter(|l| l.contains("[emerg]") || l.contains("[alert]") || l.contains("failed"))
            .collect::<Vec<_>>()
            .join("; ");
        Err(TrafficError::ValidationFailed {
            router: "nginx".into(),
            app: app.to_string(),
            reason: if reason.is_empty() {
                stderr.trim().to_owned()
            } else {
                reason
            },
        })
    }

    fn nginx_command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.settings.binary);
        cmd.arg("-p")
            .arg(&self.settings.prefix)
            .arg("-e")
            .arg(self.error_log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts the master on the current config file and waits until it serves `version`.
    async fn spawn(&self, state: &mut State, version: u64) -> Result<(), String> {
        let log_start = file_len(&self.error_log_path()).await;
        let mut cmd = self.nginx_command();
        cmd.arg("-c")
            .arg(self.config_path())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.settings.binary.display()))?;
        state.master = Some(child);
        let result = self.await_version(state, version, log_start, &[]).await;
        if result.is_err()
            && let Some(mut child) = state.master.take()
        {
            let _ = child.kill().await;
        }
        result
    }

    /// SIGHUP to the master, then waits until it serves `version`.
    async fn reload(&self, state: &mut State, version: u64) -> Result<(), String> {
        let log_start = file_len(&self.error_log_path()).await;
        let pid = state
            .master
            .as_ref()
            .and_then(tokio::process::Child::id)
            .and_then(|p| i32::try_from(p).ok())
            .ok_or("nginx master has exited")?;
        let old_workers = worker_pids(pid).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .map_err(|e| format!("signalling nginx master {pid}: {e}"))?;
        self.await_version(state, version, log_start, &old_workers)
            .await
    }

    /// Whether only workers of the newest config accept connections: every worker of the
    /// previous config (`old_workers`) is gone or shutting down, and no more workers accept
    /// than `worker_processes` (a reload still pending from before leaves a third generation
    /// that the old list does not name).
    async fn only_new_workers(&self, state: &State, old_workers: &[i32]) -> bool {
        let Some(master) = state
            .master
            .as_ref()
            .and_then(tokio::process::Child::id)
            .and_then(|p| i32::try_from(p).ok())
        else {
            return false;
        };
        if !workers_retired(old_workers).await {
            return false;
        }
        let mut accepting = 0;
        for pid in worker_pids(master).await {
            if !workers_retired(&[pid]).await {
                accepting += 1;
            }
        }
        accepting <= self.settings.worker_processes
    }

    /// Waits until nginx serves `version` alone: the control server answers it and every
    /// worker of the previous config (`old_workers`) has exited or is shutting down (nginx
    /// lets old and new workers accept side by side for about 100 ms after a reload). Fails on
    /// an `[emerg]` in the error log written since `log_start`, on the master exiting, or
    /// after the timeout.
    async fn await_version(
        &self,
        state: &mut State,
        version: u64,
        log_start: u64,
        old_workers: &[i32],
    ) -> Result<(), String> {
        let mut serving = false;
        let url = format!("http://{}/rorqual/config-version", self.settings.control);
        let want = version.to_string();
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        let wait = Duration::from_millis(5);
        loop {
            if let Ok(resp) = self
                .client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                && let Ok(text) = resp.text().await
                && text.trim() == want
            {
                serving = true;
            }
            if serving && self.only_new_workers(state, old_workers).await {
                return Ok(());
            }
            if let Some(line) = new_errors(&self.error_log_path(), log_start).await {
                return Err(line);
            }
            if !master_running(&mut state.master) {
                return Err(format!(
                    "nginx exited while loading config version {version}; see {}",
                    self.error_log_path().display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "nginx did not serve config version {version} within {RELOAD_TIMEOUT:?}"
                ));
            }
            tokio::time::sleep(wait).await;
        }
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
        split.validate()?;
        let mut state = self.state.lock().await;
        let mut routes = state.routes.clone();
        let Some(route) = routes.get_mut(app) else {
            return Err(TrafficError::InvalidSplit {
                reason: format!("{app} is not routed by this nginx router; add a route first"),
            });
        };
        if route.split.as_ref() == Some(split) && master_running(&mut state.master) {
            return Ok(());
        }
        route.split = Some(split.clone());
        self.apply(&mut state, routes, app).await
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
        let Some(route) = routes.get_mut(app) else {
            return Err(TrafficError::InvalidSplit {
                reason: format!("{app} is not routed by this nginx router; add a route first"),
            });
        };
        let Some(p) = route.preview.as_mut() else {
            return Err(TrafficError::Unsupported {
                router: "nginx".into(),
                capability: format!("preview routing for {app} (no preview route configured)"),
            });
        };
        if p.backend.as_ref() == preview && master_running(&mut state.master) {
            return Ok(());
        }
        p.backend = preview.cloned();
        self.apply(&mut state, routes, app).await
    }
}

/// Fails when another application's route (or, for `preview`, `app`'s own active route)
/// already listens on `listen`.
fn check_free(
    routes: &BTreeMap<AppKey, AppRoute>,
    app: &AppKey,
    listen: SocketAddr,
    preview: bool,
) -> Result<(), TrafficError> {
    for (a, r) in routes {
        let taken = if a == app {
            // Re-adding a route may keep its own address; the other kind of route may not.
            if preview {
                r.listen == listen
            } else {
                r.preview.as_ref().is_some_and(|p| p.listen == listen)
            }
        } else {
            r.listens().any(|l| l == listen)
        };
        if taken {
            return Err(TrafficError::InvalidSplit {
                reason: format!("{a} already listens on {listen}"),
            });
        }
    }
    Ok(())
}

impl Drop for NginxRouter {
    fn drop(&mut self) {
        // Fast shutdown: the master stops its workers (a SIGKILL to the master alone would
        // leave them holding the ports). kill_on_drop on the child handle is the fallback.
        if let Some(child) = self.state.get_mut().master.as_ref()
            && let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        // Give the master a moment to stop its workers before kill_on_drop fires.
        if let Some(mut child) = self.state.get_mut().master.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The pids of `master`'s child processes (its workers), from `/proc`.
async fn worker_pids(master: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(mut dir) = tokio::fs::read_dir("/proc").await else {
        return out;
    };
    while let Ok(Some(entry)) = dir.next_entry().await {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = tokio::fs::read_to_string(format!("/proc/{pid}/stat")).await else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses, so split after the
        // last `)`.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(master) {
            out.push(pid);
        }
    }
    out
}

/// Whether every one of `pids` has exited or retitled itself "shutting down" (it no longer
/// accepts connections).
async fn workers_retired(pids: &[i32]) -> bool {
    for pid in pids {
        match tokio::fs::read(format!("/proc/{pid}/cmdline")).await {
            Ok(cmdline) => {
                let title = String::from_utf8_lossy(&cmdline);
                if !title.is_empty() && !title.contains("shutting down") {
                    return false;
                }
            }
            Err(_) => continue,
        }
    }
    true
}

fn master_running(master: &mut Option<tokio::process::Child>) -> bool {
    match master {
        Some(child) => matches!(child.try_wait(), Ok(None)),
        None => false,
    }
}

/// The whole nginx config for `routes` at `version`.
fn render(s: &Settings, routes: &BTreeMap<AppKey, AppRoute>, version: u64) -> String {
    let p = s.prefix.display();
    let mut c = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        c,
        "# Generated by rorqual's nginx router; do not edit. Version {version}."
    );
    if s.as_root {
        let _ = writeln!(c, "user root;");
    }
    let _ = writeln!(c, "daemon off;");
    let _ = writeln!(c, "master_process on;");
    let _ = writeln!(c, "worker_processes {};", s.worker_processes);
    let _ = writeln!(c, "pid {p}/nginx.pid;");
    let _ = writeln!(c, "lock_file {p}/nginx.lock;");
    let _ = writeln!(c, "error_log {p}/logs/error.log notice;");
    let _ = writeln!(c, "events {{\n    worker_connections 1024;\n}}");
    let _ = writeln!(c, "http {{");
    let _ = writeln!(c, "    access_log off;");
    let _ = writeln!(c, "    server_tokens off;");
    let _ = writeln!(c, "    client_body_temp_path {p}/tmp/client;");
    let _ = writeln!(c, "    proxy_temp_path {p}/tmp/proxy;");
    if s.features.fastcgi {
        let _ = writeln!(c, "    fastcgi_temp_path {p}/tmp/fastcgi;");
    }
    if s.features.uwsgi {
        let _ = writeln!(c, "    uwsgi_temp_path {p}/tmp/uwsgi;");
    }
    if s.features.scgi {
        let _ = writeln!(c, "    scgi_temp_path {p}/tmp/scgi;");
    }
    if !s.http_snippet.trim().is_empty() {
        for line in s.http_snippet.lines() {
            let _ = writeln!(c, "    {line}");
        }
    }
    let _ = writeln!(c, "    server {{");
    let _ = writeln!(c, "        listen {};", s.control);
    let _ = writeln!(c, "        location = /rorqual/config-version {{");
    let _ = writeln!(c, "            return 200 \"{version}\\n\";");
    let _ = writeln!(c, "        }}");
    let _ = writeln!(
        c,
        "        location / {{\n            return 404;\n        }}"
    );
    let _ = writeln!(c, "    }}");
    for (app, route) in routes {
        let live: Vec<_> = route
            .split
            .iter()
            .flat_map(|s| s.backends.iter())
            .filter(|b| b.weight > 0 && !b.endpoints.is_empty())
            .collect();
        let _ = writeln!(c, "    # {app}");
        render_server(&mut c, &upstream_name(app), route.listen, &live);
        if let Some(p) = &route.preview {
            let live: Vec<_> = p
                .backend
                .iter()
                .filter(|b| !b.endpoints.is_empty())
                .collect();
            let _ = writeln!(c, "    # {app} preview");
            // `-` never appears in `upstream_name`'s cleaned parts, so no app's active
            // upstream can be called this.
            let upstream = format!("{}-preview", upstream_name(app));
            render_server(&mut c, &upstream, p.listen, &live);
        }
    }
    let _ = writeln!(c, "}}");
    c
}

/// One `server` on `listen` proxying to a weighted `upstream` over `live` (at least one
/// endpoint each), or answering 503 when `live` is empty.
fn render_server(c: &mut String, upstream: &str, listen: SocketAddr, live: &[&Backend]) {
    if !live.is_empty() {
        let _ = writeln!(c, "    upstream {upstream} {{");
        for b in live {
            let k = u32::try_from(b.endpoints.len()).unwrap_or(u32::MAX);
            // weight·100 spread over the revision's endpoints, at least 1 each.
            let per = ((b.weight * 100 + k / 2) / k).max(1);
            for e in &b.endpoints {
                let _ = writeln!(
                    c,
                    "        server {e} weight={per}; # revision {} {}%",
                    b.revision, b.weight
                );
            }
        }
        let _ = writeln!(c, "        keepalive 16;");
        let _ = writeln!(c, "    }}");
    }
    let _ = writeln!(c, "    server {{");
    let _ = writeln!(c, "        listen {listen};");
    let _ = writeln!(c, "        location / {{");
    if live.is_empty() {
        let _ = writeln!(c, "            return 503;");
    } else {
        let _ = writeln!(c, "            proxy_pass http://{upstream};");
        let _ = writeln!(c, "            proxy_http_version 1.1;");
        let _ = writeln!(c, "            proxy_set_header Connection \"\";");
        let _ = writeln!(c, "            proxy_set_header Host $host;");
        let _ = writeln!(
            c,
            "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"
        );
        let _ = writeln!(c, "            proxy_next_upstream error timeout;");
    }
    let _ = writeln!(c, "        }}");
    let _ = writeln!(c, "    }}");
}

/// `rorqual_<namespace>_<name>` with anything but ASCII letters and digits as `_`.
fn upstream_name(app: &AppKey) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
            .collect()
    };
    format!("rorqual_{}__{}", clean(&app.namespace), clean(&app.name))
}

fn probe_features(binary: &Path) -> Features {
    let out = std::process::Command::new(binary).arg("-V").output();
    let text = match out {
        Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
        Err(_) => return Features::default(),
    };
    Features {
        fastcgi: !text.contains("--without-http_fastcgi_module"),
        uwsgi: !text.contains("--without-http_uwsgi_module"),
        scgi: !text.contains("--without-http_scgi_module"),
    }
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

async fn file_len(path: &Path) -> u64 {
    tokio::fs::metadata(path)
        .await
        .map(|m| m.len())
        .unwrap_or(0)
}

/// The first `[emerg]`/`[alert]` line logged after `start`.
async fn new_errors(path: &Path, start: u64) -> Option<String> {
    let bytes = tokio::fs::read(path).await.ok()?;
    let start = usize::try_from(start).unwrap_or(0).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    text.lines()
        .find(|l| l.contains("[emerg]") || l.contains("[alert]"))
        .map(|l| l.trim().to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::traffic::Backend;
    use rorqual_core::model::Revision;

    fn settings() -> Settings {
        Settings {
            prefix: PathBuf::from("/tmp/p"),
            binary: PathBuf::from(NGINX_DEFAULT_BINARY),
            keep_versions: 3,
            control: "127.0.0.1:9000".parse().unwrap(),
            http_snippet: String::new(),
            worker_processes: 1,
            as_root: true,
            features: Features::default(),
        }
    }

    #[test]
    fn renders_weights_per_endpoint_and_drops_zero_weight_revisions() {
        let app = AppKey::new("games", "lobby");
        let split = TrafficSplit::new(vec![
            Backend::new(
                Revision::from("stable"),
                80,
                vec![
                    "127.0.0.1:8001".parse().unwrap(),
                    "127.0.0.1:8002".parse().unwrap(),
                ],
            ),
            Backend::new(
                Revision::from("canary"),
                20,
                vec!["127.0.0.1:8003".parse().unwrap()],
            ),
            Backend::new(
                Revision::from("old"),
                0,
                vec!["127.0.0.1:8004".parse().unwrap()],
            ),
        ]);
        let routes = [(
            app,
            AppRoute {
                listen: "127.0.0.1:8080".parse().unwrap(),
                split: Some(split),
                preview: None,
            },
        )]
        .into();
        let c = render(&settings(), &routes, 7);
        assert!(c.contains("upstream rorqual_games__lobby {"), "{c}");
        assert!(c.contains("server 127.0.0.1:8001 weight=4000;"), "{c}");
        assert!(c.contains("server 127.0.0.1:8002 weight=4000;"), "{c}");
        assert!(c.contains("server 127.0.0.1:8003 weight=2000;"), "{c}");
        assert!(
            !c.contains("8004"),
            "weight-0 revision must be left out: {c}"
        );
        assert!(c.contains("listen 127.0.0.1:8080;"));
        assert!(c.contains("return 200 \"7\\n\";"));
        assert!(c.starts_with("# Generated") && c.contains("user root;"));
        assert!(c.contains("pid /tmp/p/nginx.pid;"));
    }

    #[test]
    fn an_app_without_a_split_answers_503() {
        let routes = [(
            AppKey::new("default", "web"),
            AppRoute {
                listen: "127.0.0.1:8080".parse().unwrap(),
                split: None,
                preview: None,
            },
        )]
        .into();
        let c = render(&settings(), &routes, 1);
        assert!(c.contains("return 503;") && !c.contains("upstream"), "{c}");
    }

    #[test]
    fn a_preview_server_serves_its_revision_alone_or_503() {
        let app = AppKey::new("shop", "web");
        let blue: SocketAddr = "127.0.0.1:8001".parse().unwrap();
        let green: SocketAddr = "127.0.0.1:8002".parse().unwrap();
        let route = |backend: Option<Backend>| {
            [(
                app.clone(),
                AppRoute {
                    listen: "127.0.0.1:8080".parse().unwrap(),
                    split: Some(TrafficSplit::single(Revision::from("blue"), vec![blue])),
                    preview: Some(PreviewRoute {
                        listen: "127.0.0.1:8081".parse().unwrap(),
                        backend,
                    }),
                },
            )]
            .into()
        };
        let c = render(
            &settings(),
            &route(Some(Backend::preview(Revision::from("green"), vec![green]))),
            2,
        );
        let preview = c.split("# shop/web preview").nth(1).unwrap();
        assert!(
            preview.contains("upstream rorqual_shop__web-preview {")
                && preview.contains("server 127.0.0.1:8002 weight=10000; # revision green")
                && preview.contains("listen 127.0.0.1:8081;")
                && preview.contains("proxy_pass http://rorqual_shop__web-preview;")
                && !preview.contains("8001"),
            "{c}"
        );
        let active = c.split("# shop/web preview").next().unwrap();
        assert!(
            active.contains("server 127.0.0.1:8001 weight=10000;") && !active.contains("8002"),
            "{c}"
        );
        let c = render(&settings(), &route(None), 3);
        let preview = c.split("# shop/web preview").nth(1).unwrap();
        assert!(
            preview.contains("listen 127.0.0.1:8081;")
                && preview.contains("return 503;")
                && !preview.contains("upstream"),
            "{c}"
        );
    }

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
        let err = build(NginxRouter::builder(dir).preview_route(a, addr));
        assert!(err.to_string().contains("needs an active route"), "{err}");
    }
}
