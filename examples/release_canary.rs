//! Canary releases on real processes, gated by a Prometheus error-rate analysis.
//!
//! ```text
//! cargo run --example release_canary
//! ```
//!
//! Starts a `LocalEngine` (3 virtual nodes) running the demo app (this binary re-executed with
//! `--demo-app`), nginx in front of it through `NginxRouter` on a free 127.0.0.1 port (finding
//! each revision's ready instances through `EngineEndpoints` over the engine), and Prometheus
//! scraping every instance's `/metrics` each second (file-based service discovery, labelled
//! with the instance's revision). Then, with a bounded traffic generator sending requests
//! through nginx:
//!
//! 1. v1 is deployed;
//! 2. v2 is released in steps setWeight 20 → pause 5 s → analysis → setWeight 50 → analysis →
//!    100 %, each analysis asking Prometheus for v2's error ratio;
//! 3. v3, which fails half of its requests, fails the analysis and is rolled back to v2
//!    automatically. The time from the analysis failure to the last v3 answer seen through nginx
//!    (v2 serving 100 %) is printed.
//!
//! Needs `/usr/sbin/nginx` and `/usr/bin/prometheus` (Debian packages `nginx-light` and
//! `prometheus`). Does not need root. Everything runs in a temporary directory and is stopped
//! at the end.

use rorqual_testkit::examples as support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use rorqual::core::engine::Engine;
use rorqual::core::model::{AppKey, Revision};
use rorqual::local::LocalEngine;
use rorqual::release::analysis::{AnalysisSpec, MetricSpec, PrometheusMetric, ProviderSpec};
use rorqual::release::traffic::{EngineEndpoints, NginxRouter};
use rorqual::release::{
    AnalysisStep, Canary, CanaryStep, EventReason, RolloutController, RolloutEvent, RolloutPhase,
    RolloutSpec, RolloutStatus, Strategy,
};
use rorqual_testkit::demo;
use rorqual_testkit::prometheus::LocalPrometheus;
use support::{Load, Timeline};

const NGINX: &str = "/usr/sbin/nginx";
const PROMETHEUS: &str = "/usr/bin/prometheus";

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(support::DEMO_APP_ARG) {
        return demo::run_from_env();
    }
    if let Err(e) = support::require_binaries(&[(NGINX, "nginx-light"), (PROMETHEUS, "prometheus")])
    {
        eprintln!("release_canary: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = tokio::runtime::Runtime::new()
        .context("cannot start a runtime")
        .and_then(|rt| rt.block_on(run()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("release_canary failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything the release runs against.
struct World {
    engine: Arc<LocalEngine>,
    router: Arc<NginxRouter>,
    prometheus: Prometheus,
    controller: RolloutController,
    app: AppKey,
    listen: SocketAddr,
    /// Revision → "v1", "v2", … for printing.
    names: BTreeMap<Revision, String>,
    timeline: Timeline,
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
    let app = AppKey::new("default", "shop");
    let listen = SocketAddr::from(([127, 0, 0, 1], support::free_port()?));
    let router = Arc::new(
        NginxRouter::builder(dir.path().join("nginx"))
            // nginx finds each revision's ready instances in the engine the controller drives.
            .endpoints(Arc::new(EngineEndpoints::new(engine.clone())))
            .route(app.clone(), listen)
            .build()?,
    );
    let started = async {
        router.start().await?;
        let prometheus = Prometheus::start(dir.path()).await?;
        let controller = RolloutController::builder(engine.clone())
            .router(router.clone())
            .resync(Duration::from_millis(500))
            .build()
            .await?;
        anyhow::Ok((prometheus, controller))
    }
    .await;
    let result = match started {
        Ok((prometheus, controller)) => {
            let mut world = World {
                engine: engine.clone(),
                router: router.clone(),
                prometheus,
                controller,
                app,
                listen,
                names: BTreeMap::new(),
                timeline: Timeline::start(),
            };
            let runner = tokio::spawn({
                let controller = world.controller.clone();
                async move { controller.run(std::future::pending()).await }
            });
            let result = release(&mut world).await;
            runner.abort();
            world.prometheus.stop();
            result
        }
        Err(e) => Err(e),
    };
    // Clean up whatever happened: nginx, every instance, then check nothing is left.
    let pids = support::instance_pids(&engine).await?;
    router.shutdown().await;
    engine.shutdown().await?;
    support::check_stopped(&pids)?;
    result?;
    println!("== shut down: nginx, prometheus and every instance stopped");
    Ok(())
}

/// v1, then v2 in canary steps, then v3 rolled back.
async fn release(w: &mut World) -> anyhow::Result<()> {
    println!("== v1: 4 replicas behind nginx on {}", w.listen);
    deploy(w, "v1", 0.0).await?;
    follow(w, None, |s| s.phase == RolloutPhase::Healthy).await?;

    // Bounded: at most 20,000 requests (about 100 per second) to 127.0.0.1 only.
    let (load, traffic) = Load::start(
        format!("http://{}/", w.listen),
        20_000,
        Duration::from_millis(10),
    );
    let result = canaries(w, &load).await;
    load.stop();
    traffic.await.context("traffic generator")?;
    println!("== {} requests sent through nginx", load.total());
    result
}

async fn canaries(w: &mut World, load: &Load) -> anyhow::Result<()> {
    println!("== v2: setWeight 20 → pause 5s → analysis → setWeight 50 → analysis → 100%");
    let v2 = deploy(w, "v2", 0.0).await?;
    follow(w, Some(load), |s| {
        s.phase == RolloutPhase::Healthy && s.stable.as_ref() == Some(&v2)
    })
    .await?;

    println!("== v3 fails 50% of its requests: the analysis fails, the rollout rolls back");
    deploy(w, "v3", 0.5).await?;
    let failed_at = follow(w, Some(load), |s| {
        s.phase == RolloutPhase::Degraded && s.aborted()
    })
    .await?
    .context("the rollout ended without an analysis failure")?;
    // The aborted canary is removed after the abort scale-down delay (2 s here).
    follow(w, Some(load), |s| {
        s.phase == RolloutPhase::Degraded && s.reason.starts_with("aborted")
    })
    .await?;
    let status = w.controller.status(&w.app).await.context("no status")?;
    if status.stable.as_ref() != Some(&v2) {
        bail!("expected v2 to stay stable, got {:?}", status.stable);
    }
    // nginx serves only v2 now: check it, then measure when the last v3 answer was seen.
    let sample = support::sample_versions(&format!("http://{}/", w.listen), 200).await?;
    if sample.keys().any(|v| v != "v2") {
        bail!("nginx still answers with other versions than v2: {sample:?}");
    }
    let last_v3 = load.last_answer_from("v3").context("v3 never answered")?;
    let recovery = last_v3.duration_since(failed_at).unwrap_or(Duration::ZERO);
    println!("== final: {:?}, {}", status.phase, status.reason);
    println!("== 200 requests after the rollback: {sample:?}");
    println!(
        "== analysis failure → v2 serving 100% through nginx: {} ms (last v3 answer)",
        recovery.as_millis()
    );
    let versions = w.router.versions().await.len();
    println!("== nginx config versions kept: {versions}");
    Ok(())
}

/// Applies the demo app `version` with the canary strategy and returns its revision.
async fn deploy(w: &mut World, version: &str, error_rate: f64) -> anyhow::Result<Revision> {
    let spec = support::demo_app(&w.app.name, version, error_rate, 4)?;
    let revision = spec.revision();
    w.names.insert(revision.clone(), version.to_owned());
    let strategy = canary(&w.prometheus.address, &revision);
    w.controller
        .apply(
            RolloutSpec::new(spec, strategy)
                .abort_scale_down_delay(2)
                .progress_deadline(60),
        )
        .await
        .with_context(|| format!("applying {version}"))?;
    Ok(revision)
}

/// The steps: 20 %, pause, analysis, 50 %, analysis (then 100 %).
fn canary(prometheus: &str, revision: &Revision) -> Strategy {
    let analysis = || CanaryStep::Analysis(error_rate_analysis(prometheus, revision));
    Strategy::Canary(
        Canary::new(vec![
            CanaryStep::SetWeight(20),
            CanaryStep::pause(5),
            analysis(),
            CanaryStep::SetWeight(50),
            analysis(),
        ])
        .scale_down_delay(2),
    )
}

/// The error ratio of one revision over the last 10 s, from the demo app's request counters
/// (the `revision` label comes from the scrape targets). Two measurements 2 s apart; any ratio
/// of 5 % or more fails the analysis.
fn error_rate_analysis(prometheus: &str, revision: &Revision) -> AnalysisStep {
    let query = "sum(rate(demo_http_requests_total{code=\"500\",revision=\"{{args.revision}}\"}[10s])) \
                 / clamp_min(sum(rate(demo_http_requests_total{revision=\"{{args.revision}}\"}[10s])), 0.001)";
    let metric = MetricSpec::new(
        "error-rate",
        ProviderSpec::Prometheus(PrometheusMetric::new(prometheus, query)),
    )
    .initial_delay(Duration::from_secs(2))
    .interval(Duration::from_secs(2))
    .count(2)
    .success_condition("result < 0.05");
    AnalysisStep::new(
        AnalysisSpec::new(vec![metric]).arg("revision", None),
        BTreeMap::from([("revision".to_owned(), revision.to_string())]),
    )
}

/// Prints the timeline (events as they come, progress each second) until `done` holds.
/// Returns when the last "aborted" event happened, if any.
async fn follow(
    w: &World,
    load: Option<&Load>,
    done: impl Fn(&RolloutStatus) -> bool,
) -> anyhow::Result<Option<SystemTime>> {
    let mut events = w.controller.events();
    let mut aborted_at = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        w.prometheus
            .update_targets(&w.engine, &w.app, &w.names)
            .await?;
        while let Ok(event) = events.try_recv() {
            if event.reason == EventReason::Aborted {
                aborted_at = Some(event.time);
            }
            print_event(w, &event);
        }
        let status = w.controller.status(&w.app).await.context("no rollout")?;
        let ready = support::ready_summary(&w.engine, &w.app, &w.names).await?;
        let traffic = load.map_or_else(|| "-".to_owned(), Load::take);
        let errors = w.prometheus.error_rates().await;
        w.timeline.print(format_args!(
            "step {} {:<11} weight {:>3}%  ready [{ready}]  nginx [{traffic}]  \
             prometheus 5xx [{errors}]  {}",
            status.step,
            format!("{:?}", status.phase),
            status.weight.unwrap_or(0),
            status.reason
        ));
        if done(&status) {
            // Events of the transition just seen may follow the status by a moment.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(event) = events.try_recv() {
                if event.reason == EventReason::Aborted {
                    aborted_at = Some(event.time);
                }
                print_event(w, &event);
            }
            return Ok(aborted_at);
        }
        if Instant::now() > deadline {
            bail!("no progress within 60 s: {status:?}");
        }
    }
}

fn print_event(w: &World, event: &RolloutEvent) {
    if event.reason == EventReason::Verb {
        return;
    }
    let version = w
        .names
        .get(&event.revision)
        .map_or(event.revision.as_str(), String::as_str);
    w.timeline.print(format_args!(
        "event {:<16} {version}: {}",
        event.reason, event.message
    ));
}

/// Prometheus scraping the demo instances listed in a targets file every second.
struct Prometheus {
    server: LocalPrometheus,
    address: String,
    targets: PathBuf,
}

impl Prometheus {
    async fn start(dir: &Path) -> anyhow::Result<Prometheus> {
        let targets = dir.join("targets.json");
        std::fs::write(&targets, "[]")?;
        let server = LocalPrometheus::builder()
            .scrape_file("demo", &targets, Duration::from_secs(1))
            .start()
            .await?;
        let address = server.url().to_owned();
        println!("== prometheus on {address}");
        Ok(Prometheus {
            server,
            address,
            targets,
        })
    }

    /// Writes every instance with an address as a scrape target labelled with its revision
    /// (Prometheus re-reads the file within a second).
    async fn update_targets(
        &self,
        engine: &LocalEngine,
        app: &AppKey,
        names: &BTreeMap<Revision, String>,
    ) -> anyhow::Result<()> {
        let groups: Vec<serde_json::Value> = engine
            .instances(app)
            .await?
            .into_iter()
            .filter_map(|i| {
                let endpoint = SocketAddr::new(i.address?, i.primary_port()?);
                let version = names.get(&i.revision).map_or("", String::as_str);
                Some(serde_json::json!({
                    "targets": [endpoint.to_string()],
                    "labels": {"revision": i.revision.as_str(), "version": version},
                }))
            })
            .collect();
        let tmp = self.targets.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&groups)?)?;
        std::fs::rename(tmp, &self.targets)?;
        Ok(())
    }

    /// "v2 0.00, v3 0.48": the error ratio per version over the last 10 s, as the analysis
    /// sees it (or why it is unknown).
    async fn error_rates(&self) -> String {
        let query = "sum by (version) (rate(demo_http_requests_total{code=\"500\"}[10s])) \
                     / sum by (version) (rate(demo_http_requests_total[10s]))";
        let Ok(result) = self.server.query(query).await else {
            return "unavailable".into();
        };
        let rates: Vec<String> = result
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|series| {
                let version = series["metric"]["version"].as_str()?;
                let value: f64 = series["value"][1].as_str()?.parse().ok()?;
                // A version without requests in the window has no ratio (NaN).
                if !value.is_finite() {
                    return None;
                }
                Some(format!("{version} {value:.2}"))
            })
            .collect();
        if rates.is_empty() {
            "no data".into()
        } else {
            rates.join(", ")
        }
    }

    /// Kills and reaps Prometheus and removes its storage.
    fn stop(self) {
        self.server.stop();
    }
}
