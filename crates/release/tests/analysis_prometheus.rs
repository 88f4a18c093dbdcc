//! The prometheus provider against a real Prometheus (Debian `prometheus`) started by the test,
//! scraping the demo app's `/metrics` every second.
//!
//! Skipped with a printed reason when `prometheus` is not installed (`scripts/test` installs
//! it), except under `CI=true`, where a missing binary fails the test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use rorqual_release::analysis::{
    AnalysisPhase, AnalysisRun, AnalysisSpec, MetricProvider, MetricSpec, PrometheusMetric,
    PrometheusProvider, ProviderError, ProviderSpec,
};
use rorqual_testkit::prometheus::LocalPrometheus;
use serde_json::json;

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

/// Prometheus scraping the demo app every second, once it has scraped it; `None` (saying why)
/// when prometheus is not installed outside CI.
async fn start_prometheus(target: SocketAddr) -> Option<LocalPrometheus> {
    let prometheus = LocalPrometheus::builder()
        .scrape("demo", [target], Duration::from_secs(1))
        .start_or_skip()
        .await?;
    prometheus
        .wait_for_series("up{job=\"demo\"} == 1", Duration::from_secs(60))
        .await
        .unwrap();
    Some(prometheus)
}

fn metric(name: &str, query: &str, address: &str) -> MetricSpec {
    MetricSpec::new(
        name,
        ProviderSpec::Prometheus(PrometheusMetric::new(address, query)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_a_real_prometheus() {
    if LocalPrometheus::binary().is_none() {
        // Prints why it is skipped, or fails under CI=true.
        assert!(LocalPrometheus::builder().start_or_skip().await.is_none());
        return;
    }
    let (target, _demo) = demo_with_traffic().await;
    let Some(prom) = start_prometheus(target).await else {
        return;
    };
    let address = prom.url().to_owned();
    let provider = PrometheusProvider::new();
    let none = BTreeMap::new();

    // An error ratio from the scraped counters: 5 / 100.
    let ratio = "sum(demo_http_requests_total{code=~\"5..\"}) / sum(demo_http_requests_total)";
    let v = provider
        .measure(&metric("r", ratio, &address), &none)
        .await
        .unwrap();
    assert!((v.as_f64().unwrap() - 0.05).abs() < 1e-9, "{v}");

    // Scalars, and vectors of several samples as arrays.
    let v = provider
        .measure(&metric("s", "scalar(demo_info)", &address), &none)
        .await
        .unwrap();
    assert_eq!(v, json!(1.0));
    let v = provider
        .measure(
            &metric("v", "sort_desc(demo_http_requests_total)", &address),
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
        .measure(&metric("n", rate, &address), &none)
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Inconclusive { .. }), "{e}");

    // No series: an error that a later measurement may fix.
    let e = provider
        .measure(&metric("e", "no_such_metric", &address), &none)
        .await
        .unwrap_err();
    assert!(
        !e.is_permanent() && e.to_string().contains("no samples"),
        "{e}"
    );

    // A malformed query is permanent.
    let e = provider
        .measure(&metric("b", "sum(", &address), &none)
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
    let args = [("prometheus".to_string(), address.clone())].into();
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
