//! Helpers shared by the release examples (`release_canary`, `release_blue_green`): the demo
//! app spec, a bounded traffic generator that counts answers per version, instance summaries
//! and a timeline printer. Used as `use rorqual_testkit::examples as support;`. Tests that run
//! an example as a separate process find it with [`example_bin`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use parking_lot::Mutex;
use rorqual_core::engine::Engine;
use rorqual_core::model::{AppKey, AppSpec, ContainerSpec, Probe, Revision};
use rorqual_local::LocalEngine;

/// The path of example `name` of the `rorqual-examples` package, for tests that run an
/// example as a separate process (and may `kill -9` it). It is built first, once per test
/// process, with `cargo build -p rorqual-examples --example NAME` in the running program's
/// profile and target directory (a no-op when it is up to date), so a test never runs a stale
/// example.
///
/// # Panics
///
/// When the running program is not in a cargo target directory, or the build fails; the
/// panic gives the command to run by hand.
pub fn example_bin(name: &str) -> PathBuf {
    example_bin_of("rorqual-examples", name)
}

/// [`example_bin`] for an example of package `package` (such as `rorqual-kube-examples`).
///
/// # Panics
///
/// As [`example_bin`].
pub fn example_bin_of(package: &str, name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<Mutex<Vec<String>>> = std::sync::OnceLock::new();
    let Some(profile_dir) = crate::profile_dir() else {
        panic!("example `{name}`: this program is not in a cargo target directory");
    };
    let bin = profile_dir.join("examples").join(name);
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    // Held across the build: two tests asking at once build once.
    let mut built = built.lock();
    let key = format!("{package}/{name}");
    if built.contains(&key) {
        return bin;
    }
    let how = format!("cargo build -p {package} --example {name}");
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "-q",
        "-p",
        package,
        "--example",
        name,
    ]);
    if profile_dir.ends_with("release") {
        cargo.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        cargo.env("CARGO_TARGET_DIR", target);
    }
    match cargo.status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("`{how}` failed ({status}); run it by hand to see why"),
        Err(e) => panic!("could not run `{how}`: {e}"),
    }
    assert!(
        bin.exists(),
        "`{how}` succeeded but {} is missing",
        bin.display()
    );
    built.push(key);
    bin
}

/// The argument that turns the example binary into the demo app (see [`demo_app`]).
pub const DEMO_APP_ARG: &str = "--demo-app";

/// Fails with an install hint when one of the external programs is missing.
pub fn require_binaries(binaries: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<String> = binaries
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(path, package)| format!("{path} (Debian package `{package}`)"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing {}; install with `apt-get install {}` (scripts/test installs them)",
            missing.join(", "),
            binaries
                .iter()
                .map(|(_, package)| *package)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(rorqual_local::free_loopback_port()?)
}

/// The demo app `version` failing `error_rate` of its requests: this very binary re-executed
/// with [`DEMO_APP_ARG`], ready once `/healthz` answers.
pub fn demo_app(
    name: &str,
    version: &str,
    error_rate: f64,
    replicas: u32,
) -> anyhow::Result<AppSpec> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    Ok(AppSpec::new(
        name,
        vec![
            ContainerSpec::new("web", [exe.display().to_string()])
                .args([DEMO_APP_ARG])
                .env("DEMO_VERSION", version)
                .env("DEMO_ERROR_RATE", error_rate.to_string())
                .port("http", 8080)
                .readiness(Probe::http("/healthz", "http").period(0.2)),
        ],
    )
    .replicas(replicas))
}

/// The ready endpoints of `revision`'s instances.
pub async fn ready_endpoints(
    engine: &LocalEngine,
    app: &AppKey,
    revision: &Revision,
) -> anyhow::Result<Vec<SocketAddr>> {
    Ok(engine
        .instances(app)
        .await?
        .into_iter()
        .filter(|i| &i.revision == revision && i.ready)
        .filter_map(|i| Some(SocketAddr::new(i.address?, i.primary_port()?)))
        .collect())
}

/// "v1 4/4 ready, v2 1/2 ready": instances per revision, named by `names`.
pub async fn ready_summary(
    engine: &LocalEngine,
    app: &AppKey,
    names: &BTreeMap<Revision, String>,
) -> anyhow::Result<String> {
    let mut counts: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for i in engine.instances(app).await? {
        let name = names
            .get(&i.revision)
            .cloned()
            .unwrap_or_else(|| i.revision.to_string());
        let c = counts.entry(name).or_default();
        c.0 += u32::from(i.ready);
        c.1 += 1;
    }
    if counts.is_empty() {
        return Ok("no instances".into());
    }
    Ok(counts
        .iter()
        .map(|(v, (ready, all))| format!("{v} {ready}/{all}"))
        .collect::<Vec<_>>()
        .join(", "))
}

/// The process ids of every instance, to check after shutdown that none is left.
pub async fn instance_pids(engine: &LocalEngine) -> anyhow::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for app in engine.apps().await? {
        for i in engine.instances(&app).await? {
            pids.extend(engine.pids(&i.id)?);
        }
    }
    Ok(pids)
}

/// Fails when one of `pids` still runs.
pub fn check_stopped(pids: &[u32]) -> anyhow::Result<()> {
    let left: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .collect();
    if !left.is_empty() {
        bail!("processes left behind: {left:?}");
    }
    Ok(())
}

/// Prints lines prefixed with the time since the start.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    started: Instant,
}

impl Timeline {
    /// A timeline starting now.
    pub fn start() -> Self {
        Timeline {
            started: Instant::now(),
        }
    }

    /// Seconds since the start.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Prints `text` at the current time.
    pub fn print(&self, text: impl std::fmt::Display) {
        println!("{:6.1}s  {text}", self.elapsed());
    }
}

/// What the traffic generator saw since the last [`Load::take`].
#[derive(Debug, Default)]
struct Seen {
    per_version: BTreeMap<String, u64>,
    last_at: BTreeMap<String, SystemTime>,
}

/// A bounded traffic generator: one request at a time to `url`, counting answers per
/// `X-Version` header.
#[derive(Debug)]
pub struct Load {
    stop: AtomicBool,
    seen: Mutex<Seen>,
    errors: AtomicU64,
    total: AtomicU64,
}

impl Load {
    /// Starts sending requests to `url` (127.0.0.1 only) until [`Load::stop`], at most
    /// `max_requests`, with `gap` between requests.
    pub fn start(
        url: String,
        max_requests: u64,
        gap: Duration,
    ) -> (Arc<Load>, tokio::task::JoinHandle<()>) {
        let load = Arc::new(Load {
            stop: AtomicBool::new(false),
            seen: Mutex::new(Seen::default()),
            errors: AtomicU64::new(0),
            total: AtomicU64::new(0),
        });
        let task = tokio::spawn(load.clone().run(url, max_requests, gap));
        (load, task)
    }

    async fn run(self: Arc<Self>, url: String, max_requests: u64, gap: Duration) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        for _ in 0..max_requests {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            if let Ok(response) = client.get(&url).send().await {
                let version = response
                    .headers()
                    .get("x-version")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                if response.status().is_server_error() {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                }
                self.total.fetch_add(1, Ordering::Relaxed);
                let mut seen = self.seen.lock();
                *seen.per_version.entry(version.clone()).or_default() += 1;
                seen.last_at.insert(version, SystemTime::now());
            }
            tokio::time::sleep(gap).await;
        }
    }

    /// Asks the generator to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Requests answered so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// When the last answer from `version` arrived.
    pub fn last_answer_from(&self, version: &str) -> Option<SystemTime> {
        self.seen.lock().last_at.get(version).copied()
    }

    /// "v1 80%, v2 20% (5xx: 3)": the share of answers per version since the last call.
    pub fn take(&self) -> String {
        let counts = std::mem::take(&mut self.seen.lock().per_version);
        let errors = self.errors.swap(0, Ordering::Relaxed);
        let total: u64 = counts.values().sum();
        if total == 0 {
            return "no answers".into();
        }
        let shares: Vec<String> = counts
            .iter()
            .map(|(v, n)| format!("{v} {:.0}%", 100.0 * *n as f64 / total as f64))
            .collect();
        format!("{} of {total} (5xx: {errors})", shares.join(", "))
    }
}

/// Sends `n` requests to `url` and returns the `X-Version` of each answer.
pub async fn sample_versions(url: &str, n: usize) -> anyhow::Result<BTreeMap<String, u32>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut versions = BTreeMap::new();
    for _ in 0..n {
        let response = client
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let version = response
            .headers()
            .get("x-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        *versions.entry(version).or_default() += 1;
    }
    Ok(versions)
}
