//! The real Prometheus scrapes a controller's metrics: Debian's `prometheus` binary is started
//! on loopback with a scrape job pointing at an endpoint this test serves, and its HTTP API
//! must return `rorqual_controller_reconciles_total` with the controller's labels.
//!
//! Skipped with a printed reason when `prometheus` is not installed (`scripts/test` installs
//! it), except under `CI=true`, where a missing binary fails the test.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use prometheus_client::registry::Registry;
use rorqual_core::engine::Engine;
use rorqual_core::memory::MemoryEngine;
use rorqual_core::model::{AppKey, AppSpec, ContainerSpec};
use rorqual_runtime::metrics::{self, ControllerMetrics};
use rorqual_runtime::triggers::{Triggers, app_of};
use rorqual_runtime::{Action, Context, Controller, ErrorPolicy, reconciler_fn};
use rorqual_testkit::free_loopback_port;
use rorqual_testkit::prometheus::LocalPrometheus;

const CONTROLLER: &str = "scrape-test";

/// Serves `registry` at `/metrics` on a free loopback port; returns the port.
async fn serve_metrics(registry: Arc<Registry>) -> u16 {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let text = metrics::encode_text(&registry).unwrap();
                ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], text)
            }
        }),
    );
    for _ in 0..10 {
        let port = free_loopback_port().unwrap();
        // Another process may take the port between the probe and the bind: try another.
        if let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            tokio::spawn(async move { axum::serve(listener, app).await });
            return port;
        }
    }
    panic!("no loopback port could be bound for the metrics endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_controller_metrics() {
    // A controller over the in-memory engine, reporting into the host's registry.
    let mut registry = Registry::default();
    let controller_metrics = ControllerMetrics::register(&mut registry);
    let registry = Arc::new(registry);
    let engine = Arc::new(MemoryEngine::new());
    let failures = Arc::new(AtomicU32::new(0));
    let reconciler = reconciler_fn(move |app: AppKey, _ctx: Context| {
        let failures = failures.clone();
        async move {
            if app.name == "flaky" && failures.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(format!("{app} failed once"));
            }
            Ok(if app.name == "web" {
                Action::requeue(Duration::from_secs(3600))
            } else {
                Action::await_change()
            })
        }
    });
    let controller = Controller::builder(CONTROLLER, Arc::new(reconciler))
        .error_policy(ErrorPolicy::default().min_delay(Duration::from_millis(100)))
        .triggers(Triggers::new().engine_events(&*engine, app_of))
        .metrics(controller_metrics)
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(controller.run(async move {
        let _ = stopped.await;
    }));
    for name in ["web", "api", "flaky"] {
        let spec = AppSpec::new(name, vec![ContainerSpec::new("app", [name])]);
        engine.apply_group(&spec, 1).await.unwrap();
    }

    let metrics_port = serve_metrics(registry.clone()).await;
    // Skipped (saying why) when prometheus is not installed, except under CI=true.
    let Some(prometheus) = LocalPrometheus::builder()
        .scrape(
            "rorqual",
            [format!("127.0.0.1:{metrics_port}")],
            Duration::from_secs(1),
        )
        .start_or_skip()
        .await
    else {
        return;
    };

    // Wait until a scrape has brought every outcome in.
    let waited = prometheus
        .wait_for_series(
            "count(rorqual_controller_reconciles_total > 0) >= 3",
            Duration::from_secs(60),
        )
        .await;
    if let Err(e) = waited {
        panic!(
            "{e}\nendpoint:\n{}",
            metrics::encode_text(&registry).unwrap()
        );
    }
    let series = prometheus
        .query("rorqual_controller_reconciles_total")
        .await
        .unwrap()
        .as_array()
        .cloned()
        .unwrap();

    let mut outcomes = BTreeSet::new();
    for s in &series {
        let m = &s["metric"];
        assert_eq!(m["__name__"], "rorqual_controller_reconciles_total", "{s}");
        assert_eq!(m["controller"], CONTROLLER, "{s}");
        assert_eq!(m["job"], "rorqual", "{s}");
        assert_eq!(m["instance"], format!("127.0.0.1:{metrics_port}"), "{s}");
        outcomes.insert(m["outcome"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        outcomes.into_iter().collect::<Vec<_>>(),
        ["error", "requeue", "success"]
    );
    println!(
        "prometheus scraped {} series of rorqual_controller_reconciles_total: {}",
        series.len(),
        series
            .iter()
            .map(|s| format!("{}={}", s["metric"]["outcome"], s["value"][1]))
            .collect::<Vec<_>>()
            .join(", ")
    );

    stop.send(()).unwrap();
    run.await.unwrap();
}
