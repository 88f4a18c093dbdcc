//! Canary releases on real processes: the demo app on a `LocalEngine`, traffic through nginx
//! (`NginxRouter`), gated by a Prometheus error-rate analysis.
//!
//! v1 → v2 in 20 / 50 / 100 % steps, each checked by the analysis; then v3, which fails 50 %
//! of its requests, is rolled back automatically. A step timeline is printed as it happens.
//!
//! Needs `nginx` and `prometheus` (Debian packages `nginx-light`, `prometheus`).
//!
//! ```text
//! cargo run --example release_canary
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rorqual_core::analysis::{AnalysisSpec, MetricSpec, PrometheusMetric, ProviderSpec};
use rorqual_core::engine::Engine;
use rorqual_core::local::LocalEngine;
use rorqual_core::model::{AppKey, AppSpec, ContainerSpec, Probe};
use rorqual_core::release::{
    AnalysisStep, Canary, CanaryStep, RolloutController, RolloutPhase, RolloutSpec, Strategy,
};
use rorqual_core::traffic::NginxRouter;

const APP_MODE: &str = "RORQUAL_EXAMPLE_DEMO_APP";

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn app(version: &str, error_rate: f64) -> anyhow::Result<AppSpec> {
    let exe = std::env::current_exe()?.display().to_string();
    Ok(AppSpec::new(
        "shop",
        vec![
            ContainerSpec::new("web", [exe])
                .env(APP_MODE, "1")
                .env("DEMO_VERSION", version)
                .env("DEMO_ERROR_RATE", error_rate.to_string())
                .port("http", 8080)
                .readiness(Probe::http("/healthz", "http").period(0.2)),
        ],
    )
    .replicas(4))
}

/// The error ratio of one revision over the last 10 s, from the demo app's counters.
fn error_rate_analysis(prometheus: &str, revision: &str) -> AnalysisStep {
    let query = "sum(rate(demo_http_requests_total{code=\"500\",revision=\"{{args.revision}}\"}[10s]) or vector(0)) \
                 / clamp_min(sum(rate(demo_http_requests_total{revision=\"{{args.revision}}\"}[10s]) or vector(0)), 0.001)";
    let metric = MetricSpec::new(
        "error-rate",
        ProviderSpec::Prometheus(PrometheusMetric::new(prometheus, query)),
    )
    .initial_delay(Duration::from_secs(4))
    .interval(Duration::from_secs(2))
    .count(2)
    .success_condition("result < 0.05");
    AnalysisStep::new(
        AnalysisSpec::new(vec![metric]).arg("revision", None),
        BTreeMap::from([("revision".to_owned(), revision.to_owned())]),
    )
}

fn canary(prometheus: &str, revision: &str) -> Strategy {
    let check = || CanaryStep::Analysis(error_rate_analysis(prometheus, revision));
    Strategy::Canary(
        Canary::new(vec![
            CanaryStep::SetWeight(20),
            check(),
            CanaryStep::SetWeight(50),
            check(),
        ])
        .scale_down_delay(2),
    )
}

/// Prometheus scraping the instances listed in a file-SD targets file.
struct Prometheus {
    address: String,
    targets: std::path::PathBuf,
    _child: tokio::process::Child,
}

async fn start_prometheus(dir: &Path) -> anyhow::Result<Prometheus> {
    let targets = dir.join("targets.json");
    std::fs::write(&targets, "[]")?;
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: demo\n    file_sd_configs:\n      - files: ['{}']\n        refresh_interval: 1s\n",
            targets.display()
        ),
    )?;
    let port = free_port()?;
    let child = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting prometheus (Debian package prometheus)")?;
    let address = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("{address}/-/ready"))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        if Instant::now() > deadline {
            bail!("prometheus did not become ready in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Prometheus {
        address,
        targets,
        _child: child,
    })
}

/// Writes the ready instances as scrape targets, labelled with their revision.
async fn update_targets(engine: &LocalEngine, app: &AppKey, path: &Path) -> anyhow::Result<()> {
    let groups: Vec<serde_json::Value> = engine
        .instances(app)
        .await?
        .into_iter()
        .filter_map(|i| {
            let ep = SocketAddr::new(i.address?, i.primary_port()?);
            Some(serde_json::json!({"targets": [ep.to_string()], "labels": {"revision": i.revision.as_str()}}))
        })
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&groups)?)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

/// Traffic through nginx; counts answers per version and errors.
#[derive(Debug, Default)]
struct Load {
    stop: AtomicBool,
    per_version: std::sync::Mutex<BTreeMap<String, u64>>,
    errors: AtomicU64,
}

impl Load {
    fn take(&self) -> (BTreeMap<String, u64>, u64) {
        let map = std::mem::take(&mut *self.per_version.lock().unwrap_or_else(|e| e.into_inner()));
        (map, self.errors.swap(0, Ordering::Relaxed))
    }
}

async fn generate_load(load: Arc<Load>, url: String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    // Bounded: at most 10 minutes of 200 requests per second.
    for _ in 0..120_000 {
        if load.stop.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(r) = client.get(&url).send().await {
            let version = r
                .headers()
                .get("x-version")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_owned();
            if r.status().is_server_error() {
                load.errors.fetch_add(1, Ordering::Relaxed);
            }
            *load
                .per_version
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(version)
                .or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Drives the timeline until `done` holds for the status, printing a line per second.
async fn follow(
    ctl: &RolloutController,
    engine: &LocalEngine,
    prom: &Prometheus,
    load: &Load,
    key: &AppKey,
    started: Instant,
    done: impl Fn(&rorqual_core::release::RolloutStatus) -> bool,
) -> anyhow::Result<()> {
    let mut events = ctl.events();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        update_targets(engine, key, &prom.targets).await?;
        while let Ok(ev) = events.try_recv() {
            if ev.reason != "Verb" {
                println!(
                    "{:6.1}s  event   {:<18} {}",
                    started.elapsed().as_secs_f64(),
                    ev.reason,
                    ev.message
                );
            }
        }
        let Some(s) = ctl.status(key).await else {
            bail!("rollout vanished");
        };
        let (seen, errors) = load.take();
        let total: u64 = seen.values().sum();
        let shares: Vec<String> = seen
            .iter()
            .map(|(v, n)| format!("{v} {:.0}%", 100.0 * *n as f64 / total.max(1) as f64))
            .collect();
        println!(
            "{:6.1}s  step {} {:<11} weight {:>3}%  traffic [{}] errors {errors}  {}",
            started.elapsed().as_secs_f64(),
            s.step,
            format!("{:?}", s.phase),
            s.weight.unwrap_or(0),
            shares.join(", "),
            s.reason
        );
        if done(&s) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out: {s:?}");
        }
    }
}

fn main() -> anyhow::Result<()> {
    // Re-executed by the engine as an instance: serve the demo app (on its own runtime).
    if std::env::var_os(APP_MODE).is_some() {
        let code = rorqual_core::demo::run_from_env();
        std::process::exit(i32::from(code != std::process::ExitCode::SUCCESS));
    }
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Arc::new(
        LocalEngine::builder()
            .nodes(3)
            .state_dir(dir.path().join("engine"))
            .build()
            .await?,
    );
    let prom = start_prometheus(dir.path()).await?;
    let key = AppKey::new("default", "shop");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let router = Arc::new(
        NginxRouter::builder(dir.path().join("nginx"))
            .route(key.clone(), listen)
            .build()?,
    );
    router.start().await?;
    let ctl = RolloutController::builder(engine.clone())
        .router(router.clone())
        .resync(Duration::from_millis(500))
        .build()
        .await?;
    let runner = tokio::spawn({
        let ctl = ctl.clone();
        async move { ctl.run().await }
    });
    let started = Instant::now();
    let load = Arc::new(Load::default());
    let loader = tokio::spawn(generate_load(load.clone(), format!("http://{listen}/")));

    let result = async {
        println!("== deploy v1 (4 replicas) behind nginx on {listen}");
        let v1 = app("v1", 0.0)?;
        ctl.apply(RolloutSpec::new(
            v1.clone(),
            canary(&prom.address, v1.revision().as_str()),
        ))
        .await?;
        follow(&ctl, &engine, &prom, &load, &key, started, |s| {
            s.phase == RolloutPhase::Healthy
        })
        .await?;

        println!("== canary v2: 20% -> analysis -> 50% -> analysis -> 100%");
        let v2 = app("v2", 0.0)?;
        ctl.apply(RolloutSpec::new(
            v2.clone(),
            canary(&prom.address, v2.revision().as_str()),
        ))
        .await?;
        follow(&ctl, &engine, &prom, &load, &key, started, |s| {
            s.phase == RolloutPhase::Healthy && s.stable.as_ref() == Some(&v2.revision())
        })
        .await?;

        println!("== canary v3 (50% errors): the analysis fails and the rollout rolls back");
        let v3 = app("v3", 0.5)?;
        let t_abort = std::sync::Mutex::new(None::<Instant>);
        ctl.apply(
            RolloutSpec::new(v3.clone(), canary(&prom.address, v3.revision().as_str()))
                .abort_scale_down_delay(5),
        )
        .await?;
        follow(&ctl, &engine, &prom, &load, &key, started, |s| {
            if s.aborted {
                t_abort
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(Instant::now);
            }
            s.phase == RolloutPhase::Degraded && s.reason.starts_with("aborted: ")
        })
        .await?;
        let status = ctl.status(&key).await.context("status")?;
        println!("== final: {:?} — {}", status.phase, status.reason);
        if status.stable != Some(v2.revision()) {
            bail!("expected v2 to stay stable, got {:?}", status.stable);
        }
        let split = router.current_split(&key).await.context("no split")?;
        println!(
            "== nginx serves {} (config versions kept: {})",
            split
                .backends
                .iter()
                .map(|b| format!("{} {}%", b.revision, b.weight))
                .collect::<Vec<_>>()
                .join(", "),
            router.versions().await.len()
        );
        anyhow::Ok(())
    }
    .await;

    load.stop.store(true, Ordering::Relaxed);
    let _ = loader.await;
    runner.abort();
    router.shutdown().await;
    engine.shutdown().await?;
    result
}
