//! The prometheus provider against a real Prometheus (Debian `prometheus`) started by the test,
//! scraping the demo app's `/metrics` every second.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use rorqual_release::analysis::{
    AnalysisPhase, AnalysisRun, AnalysisSpec, MetricProvider, MetricSpec, PrometheusMetric,
    PrometheusProvider, ProviderError, ProviderSpec,
};
use serde_json::json;

const PROMETHEUS: &str = "/usr/bin/prometheus";

fn prometheus_available() -> bool {
    if Path::new(PROMETHEUS).exists() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{PROMETHEUS} is missing (install prometheus); required when CI=true"
    );
    println!("skipped: {PROMETHEUS} not installed (Debian package prometheus)");
    false
}

/// The demo app (`rorqual-demo`) at a 5% error rate, after 100 requests: exactly 95 answered
/// 200 and 5 answered 500 (the demo fails deterministically).
async fn demo_with_traffic() -> (SocketAddr, tokio::process::Child) {
    let port = rorqual_local::free_loopback_port().unwrap();
    let child = tokio::process::Command::new(rorqual_testkit::demo_bin())
        .env("PORT", port.to_string())
        .env("DEMO_VERSION", "v2")
        .env("DEMO_ERROR_RATE", "0.05")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "demo app did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut failed = 0;
    for _ in 0..100 {
        let status = client
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .status();
        if status == 500 {
            failed += 1;
        }
    }
    assert_eq!(failed, 5);
    (addr, child)
}

struct Prometheus {
    address: String,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

async fn start_prometheus(target: SocketAddr) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: demo\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = rorqual_local::free_loopback_port().unwrap();
    let child = tokio::process::Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let p = Prometheus {
        address: format!("http://127.0.0.1:{port}"),
        _child: child,
        _dir: dir,
    };
    // Wait until the target has been scraped.
    let provider = PrometheusProvider::new();
    let up = metric("up", "up{job=\"demo\"}", &p.address);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(v) = provider.measure(&up, &BTreeMap::new()).await
            && v == json!(1.0)
        {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus did not scrape the target within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn metric(name: &str, query: &str, address: &str) -> MetricSpec {
    MetricSpec::new(
        name,
        ProviderSpec::Prometheus(PrometheusMetric::new(address, query)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_a_real_prometheus() {
    if !prometheus_available() {
        return;
    }
    let (target, _demo) = demo_with_traffic().await;
    let prom = start_prometheus(target).await;
    let provider = PrometheusProvider::new();
    let none = BTreeMap::new();

    // An error ratio from the scraped counters: 5 / 100.
    let ratio = "sum(demo_http_requests_total{code=~\"5..\"}) / sum(demo_http_requests_total)";
    let v = provider
        .measure(&metric("r", ratio, &prom.address), &none)
        .await
        .unwrap();
    assert!((v.as_f64().unwrap() - 0.05).abs() < 1e-9, "{v}");

    // Scalars, and vectors of several samples as arrays.
    let v = provider
        .measure(&metric("s", "scalar(demo_info)", &prom.address), &none)
        .await
        .unwrap();
    assert_eq!(v, json!(1.0));
    let v = provider
        .measure(
            &metric("v", "sort_desc(demo_http_requests_total)", &prom.address),
            &none,
        )
        .await
        .unwrap();
    assert_eq!(v, json!([95.0, 5.0]));

    // Errors since a baseline over requests since the baseline: no new requests gives 0/0 =
    // NaN, which is inconclusive.
    let rate =
        "(sum(demo_http_requests_total{code=\"500\"}) - 5) / (sum(demo_http_requests_total) - 100)";
    let e = provider
        .measure(&metric("n", rate, &prom.address), &none)
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Inconclusive { .. }), "{e}");

    // No series: an error that a later measurement may fix.
    let e = provider
        .measure(&metric("e", "no_such_metric", &prom.address), &none)
        .await
        .unwrap_err();
    assert!(
        !e.is_permanent() && e.to_string().contains("no samples"),
        "{e}"
    );

    // A malformed query is permanent.
    let e = provider
        .measure(&metric("b", "sum(", &prom.address), &none)
        .await
        .unwrap_err();
    assert!(
        e.is_permanent() && e.to_string().contains("bad_data"),
        "{e}"
    );

    // Through a run, with the address and label templated from arguments.
    let spec = AnalysisSpec::new(vec![
        metric(
            "error-rate",
            "sum(demo_http_requests_total{code=~\"5..\",job=\"{{args.job}}\"}) / sum(demo_http_requests_total{job=\"{{args.job}}\"})",
            "{{args.prometheus}}",
        )
        .interval(Duration::from_secs(1))
        .count(2)
        .success_condition("result <= 0.05"),
        metric("nan", rate, "{{args.prometheus}}"),
    ])
    .arg("job", Some("demo"))
    .arg("prometheus", None);
    let args = [("prometheus".to_string(), prom.address.clone())].into();
    let mut run = AnalysisRun::new(&spec, args, SystemTime::now()).unwrap();
    let phase = run
        .tick(
            &rorqual_release::analysis::Providers::with_defaults(),
            SystemTime::now(),
        )
        .await;
    // The NaN metric is inconclusive, which ends the run: it never hangs in Inconclusive.
    assert_eq!(phase, AnalysisPhase::Inconclusive);
    assert_eq!(run.next_due(), None);
    assert!(
        run.message().unwrap().contains("metric `nan` inconclusive"),
        "{:?}",
        run.message()
    );
    assert_eq!(run.metrics()[0].measurements[0].value, Some(json!(0.05)));
}
