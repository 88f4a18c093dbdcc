//! The real Prometheus scrapes a controller's metrics: Debian's `prometheus` binary is started
//! on loopback with a scrape job pointing at an endpoint this test serves, and its HTTP API
//! must return `rorqual_controller_reconciles_total` with the controller's labels.
//!
//! Skipped with a printed reason when `prometheus` is not installed (`scripts/test` installs
//! it), except under `CI=true`, where a missing binary fails the test.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

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
use serde_json::Value;

const CONTROLLER: &str = "scrape-test";

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A child process killed (and reaped) when dropped, also when the test panics.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

/// Starts Prometheus scraping `127.0.0.1:target` every second; returns it and its API port.
async fn start_prometheus(bin: &Path, dir: &Path, target: u16) -> (KillOnDrop, u16) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: rorqual\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        ),
    )
    .unwrap();
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let port = free_loopback_port().unwrap();
        let log = dir.join(format!("prometheus-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut child = KillOnDrop(
            Command::new(bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = child.0.try_wait().unwrap() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("address already in use") {
                    break; // another process took the port: try another
                }
                panic!("prometheus exited with {status}:\n{text}");
            }
            let ready = client
                .get(format!("http://127.0.0.1:{port}/-/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return (child, port);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if child.0.try_wait().unwrap().is_none() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("prometheus not ready after 30 s:\n{text}");
        }
    }
    panic!("prometheus could not bind a loopback port in 5 tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_controller_metrics() {
    let Some(bin) = find_binary("prometheus") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("prometheus is not installed, and CI=true requires this test to run");
        }
        println!("skipped: prometheus not installed (scripts/test installs it)");
        return;
    };

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
    let dir = tempfile::tempdir().unwrap();
    let (_prometheus, api_port) = start_prometheus(&bin, dir.path(), metrics_port).await;

    // Wait until a scrape has brought every outcome in.
    let client = reqwest::Client::new();
    let url = format!(
        "http://127.0.0.1:{api_port}/api/v1/query?query=rorqual_controller_reconciles_total"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let series = loop {
        let body: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["status"], "success", "{body}");
        let result = body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let positive = result
            .iter()
            .filter(|s| s["value"][1].as_str().is_some_and(|v| v != "0"))
            .count();
        if positive >= 3 {
            break result;
        }
        assert!(
            Instant::now() < deadline,
            "no scrape with every outcome after 60 s; last answer: {body}\nendpoint:\n{}",
            metrics::encode_text(&registry).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

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
