//! A blue-green release with a preview route and manual approval through the HTTP API.
//!
//! ```text
//! cargo run --example release_blue_green
//! ```
//!
//! Starts a `LocalEngine` (3 virtual nodes) running the demo app (this binary re-executed with
//! `--demo-app`) and nginx through `NginxRouter` with the app's two listeners on free
//! 127.0.0.1 ports: *active* (what users get, `.route`) and *preview* (what testers get,
//! `.preview_route`), finding each revision's ready instances through `EngineEndpoints` over
//! the engine. The rollout controller drives both. The approvals API
//! (`Approvals::router()`) is served with axum on 127.0.0.1. Then:
//!
//! 1. v1 (blue) is deployed behind the active listener;
//! 2. v2 (green) is released blue-green: two preview instances start and the controller points
//!    the preview listener at them as they become ready; the example checks through nginx that
//!    preview answers v2 while active still answers v1;
//! 3. the rollout pauses for approval; the example approves it with
//!    `POST /approvals/{namespace}/{app}/{revision}/{step}/approve` (the request is printed);
//! 4. v2 is scaled to full, the active listener switches to it, v1 is scaled down after the
//!    scale-down delay (3 s here), and the controller empties the preview listener (503).
//!
//! Needs `/usr/sbin/nginx` (Debian package `nginx-light`). Does not need root.

use rorqual_testkit::examples as support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rorqual::core::engine::Engine;
use rorqual::core::model::{AppKey, Revision};
use rorqual::local::LocalEngine;
use rorqual::release::approval::Approvals;
use rorqual::release::traffic::{EngineEndpoints, NginxRouter};
use rorqual::release::{
    BlueGreen, EventReason, RolloutController, RolloutPhase, RolloutSpec, RolloutStatus, Strategy,
};
use rorqual_testkit::demo;
use support::Timeline;

const NGINX: &str = "/usr/sbin/nginx";

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(support::DEMO_APP_ARG) {
        return demo::run_from_env();
    }
    if let Err(e) = support::require_binaries(&[(NGINX, "nginx-light")]) {
        eprintln!("release_blue_green: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = tokio::runtime::Runtime::new()
        .context("cannot start a runtime")
        .and_then(|rt| rt.block_on(run()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("release_blue_green failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything the release runs against.
struct World {
    engine: Arc<LocalEngine>,
    router: Arc<NginxRouter>,
    controller: RolloutController,
    /// The application and its active and preview listeners.
    app: AppKey,
    active: SocketAddr,
    preview: SocketAddr,
    /// Where the approvals API listens.
    approvals_url: String,
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
    let active = SocketAddr::from(([127, 0, 0, 1], support::free_port()?));
    let preview = SocketAddr::from(([127, 0, 0, 1], support::free_port()?));
    let router = Arc::new(
        NginxRouter::builder(dir.path().join("nginx"))
            // nginx finds each revision's ready instances in the engine the controller drives.
            .endpoints(Arc::new(EngineEndpoints::new(engine.clone())))
            .route(app.clone(), active)
            .preview_route(app.clone(), preview)
            .build()?,
    );
    let approvals = Approvals::new();
    let api = serve_approvals(&approvals).await?;
    let result = async {
        router.start().await?;
        let controller = RolloutController::builder(engine.clone())
            .router(router.clone())
            .approvals(Arc::new(approvals.clone()))
            .resync(Duration::from_millis(500))
            .build()
            .await?;
        let world = World {
            engine: engine.clone(),
            router: router.clone(),
            controller,
            app,
            active,
            preview,
            approvals_url: format!("http://{}", api.0),
            names: BTreeMap::new(),
            timeline: Timeline::start(),
        };
        let runner = tokio::spawn({
            let controller = world.controller.clone();
            async move { controller.run(std::future::pending()).await }
        });
        let result = release(world).await;
        runner.abort();
        result
    }
    .await;
    // Clean up whatever happened: the API, nginx, every instance; then check nothing is left.
    api.1.abort();
    let pids = support::instance_pids(&engine).await?;
    router.shutdown().await;
    engine.shutdown().await?;
    support::check_stopped(&pids)?;
    result?;
    println!("== shut down: nginx, the approvals API and every instance stopped");
    Ok(())
}

/// Serves `Approvals::router()` on a free 127.0.0.1 port.
async fn serve_approvals(
    approvals: &Approvals,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = approvals.router();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            eprintln!("approvals API stopped: {e}");
        }
    });
    println!("== approvals API on http://{addr}/approvals");
    Ok((addr, task))
}

async fn release(mut w: World) -> anyhow::Result<()> {
    println!(
        "== v1 (blue): 4 replicas behind the active route {}",
        w.active
    );
    let v1 = deploy(&mut w, "v1").await?;
    follow(&w, |s| s.phase == RolloutPhase::Healthy).await?;

    println!("== v2 (green): preview of 2 instances on {}", w.preview);
    let v2 = deploy(&mut w, "v2").await?;
    follow(&w, |s| s.waiting_for_approval()).await?;
    let status = w.controller.status(&w.app).await.context("no rollout")?;
    if status.preview.as_ref() != Some(&v2) {
        bail!("the controller has not pointed the preview at v2: {status:?}");
    }
    check_listeners(&w, "v2", "v1").await?;

    let record = approve(&w, "release-bot", "preview answers v2").await?;
    w.timeline.print(format_args!("approved: {record}"));
    follow(&w, |s| {
        s.phase == RolloutPhase::Healthy && s.stable.as_ref() == Some(&v2)
    })
    .await?;

    let active = support::sample_versions(&format!("http://{}/", w.active), 50).await?;
    println!("== 50 requests to the active listener after promotion: {active:?}");
    if active.keys().any(|v| v != "v2") {
        bail!("the active listener still answers other versions than v2: {active:?}");
    }
    let preview_status = reqwest::get(format!("http://{}/", w.preview))
        .await?
        .status();
    println!("== the preview listener after the rollout: {preview_status}");
    if preview_status != reqwest::StatusCode::SERVICE_UNAVAILABLE {
        bail!("the preview listener should be empty (503) after the rollout, got {preview_status}");
    }
    let left = support::ready_endpoints(&w.engine, &w.app, &v1).await?;
    if !left.is_empty() {
        bail!(
            "v1 still has {} instances after the scale-down delay",
            left.len()
        );
    }
    println!("== v1 scaled down; v2 is stable");
    Ok(())
}

/// Applies the demo app `version` blue-green with manual promotion.
async fn deploy(w: &mut World, version: &str) -> anyhow::Result<Revision> {
    let spec = support::demo_app(&w.app.name, version, 0.0, 4)?;
    let revision = spec.revision();
    w.names.insert(revision.clone(), version.to_owned());
    let mut strategy = BlueGreen::manual(Some(2));
    strategy.scale_down_delay_seconds = 3;
    w.controller
        .apply(RolloutSpec::new(spec, Strategy::BlueGreen(strategy)).progress_deadline(60))
        .await
        .with_context(|| format!("applying {version}"))?;
    Ok(revision)
}

/// Checks through nginx that the preview listener answers only `preview` and the active one
/// only `active` (the controller set both).
async fn check_listeners(w: &World, preview: &str, active: &str) -> anyhow::Result<()> {
    if let Some(upstream) = w.router.current_preview_upstream(&w.app).await {
        w.timeline.print(format_args!(
            "preview listener → {}",
            upstream
                .endpoints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let seen_preview = support::sample_versions(&format!("http://{}/", w.preview), 50).await?;
    let seen_active = support::sample_versions(&format!("http://{}/", w.active), 50).await?;
    w.timeline.print(format_args!(
        "50 requests each: preview {seen_preview:?}, active {seen_active:?}"
    ));
    if seen_preview.keys().any(|v| v != preview) || seen_active.keys().any(|v| v != active) {
        bail!("preview should answer only {preview} and active only {active}");
    }
    Ok(())
}

/// Lists the pending approvals and approves the one for this app through the HTTP API.
async fn approve(w: &World, by: &str, comment: &str) -> anyhow::Result<serde_json::Value> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let list_url = format!("{}/approvals", w.approvals_url);
    let pending: Vec<serde_json::Value> = client
        .get(&list_url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    w.timeline.print(format_args!(
        "GET {list_url} → {}",
        serde_json::Value::from(pending.clone())
    ));
    let request = pending
        .iter()
        .find(|r| r["app"] == w.app.name.as_str() && r["namespace"] == w.app.namespace.as_str())
        .context("no pending approval for the app")?;
    let url = format!(
        "{}/approvals/{}/{}/{}/{}/approve",
        w.approvals_url,
        w.app.namespace,
        w.app.name,
        request["revision"].as_str().context("revision")?,
        request["step"].as_u64().context("step")?
    );
    let body = serde_json::json!({ "by": by, "comment": comment });
    w.timeline.print(format_args!("POST {url} {body}"));
    let response = client.post(&url).json(&body).send().await?;
    let status = response.status();
    let record: serde_json::Value = response.json().await?;
    if !status.is_success() {
        bail!("approval refused with {status}: {record}");
    }
    Ok(record)
}

/// Prints the timeline (events as they come, progress every 500 ms) until `done` holds.
async fn follow(w: &World, done: impl Fn(&RolloutStatus) -> bool) -> anyhow::Result<()> {
    let mut events = w.controller.events();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        while let Ok(event) = events.try_recv() {
            if event.reason != EventReason::Verb {
                let version = w
                    .names
                    .get(&event.revision)
                    .map_or(event.revision.as_str(), String::as_str);
                w.timeline.print(format_args!(
                    "event {:<19} {version}: {}",
                    event.reason, event.message
                ));
            }
        }
        let status = w.controller.status(&w.app).await.context("no rollout")?;
        let ready = support::ready_summary(&w.engine, &w.app, &w.names).await?;
        let preview = status
            .preview
            .as_ref()
            .map_or("-", |r| w.names.get(r).map_or(r.as_str(), String::as_str));
        w.timeline.print(format_args!(
            "step {} {:<11} active weight {:>3}%  preview {preview:<2}  ready [{ready}]  {}",
            status.step,
            format!("{:?}", status.phase),
            status.weight.unwrap_or(0),
            status.reason
        ));
        if done(&status) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no progress within 60 s: {status:?}");
        }
    }
}
