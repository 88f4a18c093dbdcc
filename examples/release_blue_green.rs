//! Blue-green release on real processes: the demo app on a `LocalEngine` behind nginx. The new
//! revision starts as a preview (one instance, no production traffic), waits for a manual
//! approval given through the approvals HTTP API, then takes all traffic at once; the old
//! revision is removed after the scale-down delay.
//!
//! Needs `nginx` (Debian package `nginx-light`).
//!
//! ```text
//! cargo run --example release_blue_green
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rorqual_core::approval::Approvals;
use rorqual_core::engine::Engine;
use rorqual_core::local::LocalEngine;
use rorqual_core::model::{AppKey, AppSpec, ContainerSpec, Probe, Revision};
use rorqual_core::release::{
    BlueGreen, RolloutController, RolloutPhase, RolloutSpec, RolloutStatus, Strategy,
};
use rorqual_core::traffic::NginxRouter;

const APP_MODE: &str = "RORQUAL_EXAMPLE_DEMO_APP";

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn app(version: &str) -> anyhow::Result<AppSpec> {
    let exe = std::env::current_exe()?.display().to_string();
    Ok(AppSpec::new(
        "store",
        vec![
            ContainerSpec::new("web", [exe])
                .env(APP_MODE, "1")
                .env("DEMO_VERSION", version)
                .port("http", 8080)
                .readiness(Probe::http("/healthz", "http").period(0.2)),
        ],
    )
    .replicas(3))
}

fn strategy() -> Strategy {
    let mut bg = BlueGreen::manual(Some(1));
    bg.scale_down_delay_seconds = 3;
    Strategy::BlueGreen(bg)
}

/// Asks `url` ten times and counts the versions answering.
async fn sample(client: &reqwest::Client, url: &str) -> String {
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..10 {
        let v = match client.get(url).send().await {
            Ok(r) => r.text().await.unwrap_or_default().trim().to_owned(),
            Err(_) => "unreachable".to_owned(),
        };
        *seen.entry(v).or_default() += 1;
    }
    seen.iter()
        .map(|(v, n)| format!("{v}×{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn wait_for(
    ctl: &RolloutController,
    key: &AppKey,
    started: Instant,
    what: &str,
    pred: impl Fn(&RolloutStatus) -> bool,
) -> anyhow::Result<RolloutStatus> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        let s = ctl.status(key).await.context("no rollout")?;
        let line = format!("step {} {:?}: {}", s.step, s.phase, s.reason);
        if line != last {
            println!("{:6.1}s  {line}", started.elapsed().as_secs_f64());
            last = line;
        }
        if pred(&s) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("{what} not reached in 60 s: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
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
            .nodes(2)
            .state_dir(dir.path().join("engine"))
            .build()
            .await?,
    );
    let key = AppKey::new("default", "store");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let router = Arc::new(
        NginxRouter::builder(dir.path().join("nginx"))
            .route(key.clone(), listen)
            .build()?,
    );
    router.start().await?;

    // The approvals API, served over HTTP on loopback.
    let approvals = Approvals::new();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_addr = api.local_addr()?;
    let api_task = tokio::spawn({
        let routes = approvals.router();
        async move { axum::serve(api, routes).await }
    });

    let ctl = RolloutController::builder(engine.clone())
        .router(router.clone())
        .approvals(Arc::new(approvals))
        .resync(Duration::from_millis(200))
        .build()
        .await?;
    let runner = tokio::spawn({
        let ctl = ctl.clone();
        async move { ctl.run().await }
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let started = Instant::now();
    let public = format!("http://{listen}/");

    let result = async {
        println!("== blue: deploy v1 (3 replicas) behind nginx on {listen}");
        ctl.apply(RolloutSpec::new(app("v1")?, strategy())).await?;
        wait_for(&ctl, &key, started, "v1 healthy", |s| {
            s.phase == RolloutPhase::Healthy
        })
        .await?;
        println!(
            "         public traffic: {}",
            sample(&client, &public).await
        );

        println!("== green: v2 as a preview of one instance, waiting for approval");
        let v2 = app("v2")?.revision();
        ctl.apply(RolloutSpec::new(app("v2")?, strategy())).await?;
        let s = wait_for(&ctl, &key, started, "approval request", |s| {
            s.approval_requested
        })
        .await?;
        let preview: Vec<SocketAddr> = engine
            .instances(&key)
            .await?
            .into_iter()
            .filter(|i| i.revision == v2 && i.ready)
            .filter_map(|i| Some(SocketAddr::new(i.address?, i.primary_port()?)))
            .collect();
        let first = preview.first().context("no preview instance")?;
        println!(
            "         preview {first}: {}",
            sample(&client, &format!("http://{first}/")).await
        );
        println!(
            "         public traffic: {}",
            sample(&client, &public).await
        );
        let pending: serde_json::Value = client
            .get(format!("http://{api_addr}/approvals"))
            .send()
            .await?
            .json()
            .await?;
        println!("         GET /approvals -> {pending}");

        println!("== approve through the API");
        let url = format!(
            "http://{api_addr}/approvals/default/store/{}/{}/approve",
            Revision::as_str(&v2),
            s.step
        );
        let answer = client
            .post(&url)
            .json(&serde_json::json!({"by": "release-manager", "comment": "preview checked"}))
            .send()
            .await?;
        println!("         POST {url} -> {}", answer.status());
        if !answer.status().is_success() {
            bail!("approval refused: {}", answer.text().await?);
        }
        wait_for(&ctl, &key, started, "switch", |s| s.weight == Some(100)).await?;
        println!(
            "         public traffic: {}",
            sample(&client, &public).await
        );
        let s = wait_for(&ctl, &key, started, "v2 healthy", |s| {
            s.phase == RolloutPhase::Healthy
        })
        .await?;
        println!(
            "== done: stable {:?}, groups {:?}",
            s.stable,
            engine
                .groups(&key)
                .await?
                .iter()
                .map(|g| (g.revision.to_string(), g.ready))
                .collect::<Vec<_>>()
        );
        if s.stable != Some(v2) {
            bail!("v2 did not become stable");
        }
        anyhow::Ok(())
    }
    .await;

    runner.abort();
    api_task.abort();
    router.shutdown().await;
    engine.shutdown().await?;
    result
}
