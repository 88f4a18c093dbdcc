//! A tiny controller on rorqual-runtime serving its metrics in the Prometheus text format.
//!
//! Run it:
//!
//! ```text
//! cargo run --example runtime_metrics                       # until Ctrl-C
//! cargo run --example runtime_metrics -- --listen 127.0.0.1:9898
//! cargo run --example runtime_metrics -- --once             # print and exit
//! cargo run --example runtime_metrics -- --prometheus       # scraped by a real Prometheus
//! ```
//!
//! then `curl http://127.0.0.1:<port>/metrics`, or point a Prometheus scrape job at it.
//!
//! With `--prometheus`, the example starts Debian's `prometheus` binary itself (on a free
//! loopback port, storage in a temporary directory) scraping its own `/metrics` every second,
//! waits until the controller's series arrive, prints the answer to
//! `sum by (outcome) (rorqual_controller_reconciles_total)` and exits, stopping Prometheus.
//! It needs `/usr/bin/prometheus` (Debian package `prometheus`; `scripts/test` installs it).
//! `crates/runtime/tests/prometheus_scrape.rs` checks the same scrape in the test suite.
//!
//! The controller ("inventory") reconciles every application of an in-memory engine when the
//! engine reports an event about it; the application `flaky` fails its first reconciles, so
//! the error counters and the backoff show up too. A background task applies and scales a few
//! applications every few seconds so that there is something to see.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use rorqual::core::engine::Engine;
use rorqual::core::memory::MemoryEngine;
use rorqual::core::model::{AppKey, AppSpec, ContainerSpec};
use rorqual::runtime::metrics::{self, ControllerMetrics};
use rorqual::runtime::triggers::{Triggers, app_of};
use rorqual::runtime::{Action, Context, Controller, ErrorPolicy, reconciler_fn};
use rorqual_testkit::prometheus::LocalPrometheus;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut once = false;
    let mut with_prometheus = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?.parse()?,
            "--once" => once = true,
            "--prometheus" => with_prometheus = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }

    // One registry for the whole host; every controller reports into it under its name.
    let mut registry = Registry::default();
    let controller_metrics = ControllerMetrics::register(&mut registry);
    let registry = Arc::new(registry);

    let engine = Arc::new(MemoryEngine::new());
    let flaky_failures = Arc::new(AtomicU32::new(0));
    let reconciler = {
        let engine = engine.clone();
        reconciler_fn(move |app: AppKey, ctx: Context| {
            let (engine, flaky_failures) = (engine.clone(), flaky_failures.clone());
            async move {
                if app.name == "flaky" && flaky_failures.fetch_add(1, Ordering::SeqCst) < 3 {
                    return Err(format!("{app} is flaky (attempt {})", ctx.attempt));
                }
                let groups = engine.groups(&app).await.map_err(|e| e.to_string())?;
                let replicas: u32 = groups.iter().map(|g| g.desired).sum();
                println!(
                    "reconciled {app}: {} group(s), {replicas} replica(s)",
                    groups.len()
                );
                Ok(Action::requeue(Duration::from_secs(30)))
            }
        })
    };
    let controller = Controller::builder("inventory", Arc::new(reconciler))
        .concurrency(4)
        .error_policy(ErrorPolicy::default().min_delay(Duration::from_millis(500)))
        .triggers(
            Triggers::new()
                .engine_events(&*engine, app_of)
                .resync(Duration::from_secs(300)),
        )
        .metrics(controller_metrics)
        .build()?;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(controller.run(async move {
        let _ = stopped.await;
    }));

    // Something for the controller to do.
    let workload = {
        let engine = engine.clone();
        tokio::spawn(async move {
            for round in 1..=u32::MAX {
                for name in ["web", "api", "flaky"] {
                    let spec = AppSpec::new(name, vec![ContainerSpec::new("app", [name])]);
                    if let Err(err) = engine.apply_group(&spec, 1 + round % 3).await {
                        eprintln!("apply {name}: {err}");
                    }
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };

    if once {
        tokio::time::sleep(Duration::from_secs(3)).await;
        print!("{}", metrics::encode_text(&registry)?);
    } else {
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    match metrics::encode_text(&registry) {
                        Ok(text) => ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
                        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let endpoint = listener.local_addr()?;
        if with_prometheus {
            let server = tokio::spawn(async move { axum::serve(listener, app).await });
            let scraped = scrape_with_prometheus(endpoint).await;
            server.abort();
            scraped?;
        } else {
            println!("metrics on http://{endpoint}/metrics (Ctrl-C to stop)");
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
        }
    }

    workload.abort();
    let _ = stop.send(());
    run.await?;
    engine.shutdown().await?;
    Ok(())
}

/// Starts a real Prometheus scraping `endpoint` every second, waits for the controller's
/// reconcile counters and prints them per outcome; Prometheus is stopped on return.
async fn scrape_with_prometheus(endpoint: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let prometheus = LocalPrometheus::builder()
        .scrape("runtime_metrics", [endpoint], Duration::from_secs(1))
        .start()
        .await?;
    println!(
        "metrics on http://{endpoint}/metrics, scraped every second by prometheus on {}",
        prometheus.url()
    );
    let query = "sum by (outcome) (rorqual_controller_reconciles_total)";
    // The application `flaky` fails its first reconciles: wait until errors are in too.
    let series = prometheus
        .wait_for_series(
            &format!("{query} and on() (sum(rorqual_controller_reconciles_total{{outcome=\"error\"}}) > 0)"),
            Duration::from_secs(60),
        )
        .await?;
    println!("{query}:");
    for s in &series {
        let outcome = s["metric"]["outcome"].as_str().unwrap_or("?");
        let value = s["value"][1].as_str().unwrap_or("?");
        println!("  outcome={outcome:<8} {value}");
    }
    prometheus.stop();
    println!("prometheus stopped");
    Ok(())
}
