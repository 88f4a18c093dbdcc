//! The web and command metric providers through whole analysis runs, against a local HTTP
//! server and real programs (including long ones, resumed and terminated).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use rorqual_release::analysis::{
    AnalysisPhase, AnalysisRun, AnalysisSpec, CommandMetric, CommandProvider, MetricProvider,
    MetricSpec, ProviderSpec, Providers, WebMetric,
};
use serde_json::json;

struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn server() -> Server {
    let app =
        axum::Router::new()
            .route(
                "/metrics/{service}",
                get(
                    |axum::extract::Path(service): axum::extract::Path<String>,
                     headers: HeaderMap| async move {
                        if headers.get("authorization").and_then(|v| v.to_str().ok())
                            != Some("Bearer s3cret")
                        {
                            return (StatusCode::UNAUTHORIZED, "no token".to_owned());
                        }
                        let rate = if service == "good" { 0.01 } else { 0.2 };
                        (
                            StatusCode::OK,
                            json!({"data": {"service": service, "errorRate": rate}}).to_string(),
                        )
                    },
                ),
            )
            .route("/echo", post(|body: String| async move { body }))
            .route(
                "/unavailable",
                get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "overloaded") }),
            )
            .route("/text", get(|| async { "not json" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "1"
                }),
            );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { addr, task }
}

/// Runs `spec` to the end, ticking at each due time (a simulated clock: no real waiting).
async fn run_to_end(spec: &AnalysisSpec, args: &[(&str, &str)]) -> AnalysisRun {
    let args: BTreeMap<String, String> = args
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // The command provider runs programs, so it is never a default: this test opts in.
    let providers = Providers::with_defaults().with_command();
    let mut run = AnalysisRun::new(spec, args, SystemTime::now()).unwrap();
    for _ in 0..20 {
        let Some(due) = run.next_due() else { break };
        run.tick(&providers, due).await;
    }
    assert!(run.phase().is_terminal(), "run did not finish: {run:?}");
    run
}

fn web(url: String) -> WebMetric {
    WebMetric::get(url)
}

#[tokio::test]
async fn web_provider_templates_url_and_headers_and_follows_the_json_path() {
    let s = server().await;
    let spec = AnalysisSpec::new(vec![
        MetricSpec::new(
            "error-rate",
            ProviderSpec::Web(
                web(format!("http://{}/metrics/{{{{args.service}}}}", s.addr))
                    .header("Authorization", "Bearer {{args.token}}")
                    .json_path("$.data.errorRate"),
            ),
        )
        .interval(Duration::from_secs(10))
        .count(2)
        .success_condition("result < 0.05"),
    ])
    .arg("service", None)
    .arg("token", Some("s3cret"));

    let run = run_to_end(&spec, &[("service", "good")]).await;
    assert_eq!(
        run.phase(),
        AnalysisPhase::Successful,
        "{:?}",
        run.message()
    );
    let m = &run.metrics()[0];
    assert_eq!(m.count, 2);
    assert_eq!(m.measurements[0].value, Some(json!(0.01)));

    // Argo writes the JSONPath in Kubernetes' braced form.
    let mut braced = spec.clone();
    if let ProviderSpec::Web(w) = &mut braced.metrics[0].provider {
        w.json_path = Some("{$.data.errorRate}".into());
    }
    let run = run_to_end(&braced, &[("service", "good")]).await;
    assert_eq!(
        run.phase(),
        AnalysisPhase::Successful,
        "{:?}",
        run.message()
    );
    assert_eq!(run.metrics()[0].measurements[0].value, Some(json!(0.01)));

    let run = run_to_end(&spec, &[("service", "bad")]).await;
    assert_eq!(run.phase(), AnalysisPhase::Failed);
    assert!(
        run.message().unwrap().contains("last value 0.2"),
        "{:?}",
        run.message()
    );

    // A wrong token: 401 is an error, retried until consecutiveErrorLimit (4) is exceeded.
    let run = run_to_end(&spec, &[("service", "good"), ("token", "wrong")]).await;
    assert_eq!(run.phase(), AnalysisPhase::Error);
    assert_eq!(run.metrics()[0].error, 5);
    assert!(
        run.message().unwrap().contains("401"),
        "{:?}",
        run.message()
    );
}

#[tokio::test]
async fn web_provider_posts_bodies_and_reports_errors() {
    let s = server().await;
    let post = AnalysisSpec::new(vec![
        MetricSpec::new(
            "echo",
            ProviderSpec::Web(
                web(format!("http://{}/echo", s.addr))
                    .post(r#"{"ok": true, "n": 3}"#)
                    .json_path("$.n"),
            ),
        )
        .success_condition("result == 3"),
    ]);
    assert_eq!(
        run_to_end(&post, &[]).await.phase(),
        AnalysisPhase::Successful
    );

    for (path, expect) in [("unavailable", "503"), ("text", "not JSON")] {
        let spec = AnalysisSpec::new(vec![
            MetricSpec::new(
                "m",
                ProviderSpec::Web(web(format!("http://{}/{path}", s.addr))),
            )
            .consecutive_error_limit(0),
        ]);
        let run = run_to_end(&spec, &[]).await;
        assert_eq!(run.phase(), AnalysisPhase::Error, "{path}");
        assert!(
            run.message().unwrap().contains(expect),
            "{path}: {:?}",
            run.message()
        );
    }

    let slow = AnalysisSpec::new(vec![
        MetricSpec::new(
            "m",
            ProviderSpec::Web(web(format!("http://{}/slow", s.addr)).timeout_seconds(1)),
        )
        .consecutive_error_limit(0),
    ]);
    let started = std::time::Instant::now();
    let run = run_to_end(&slow, &[]).await;
    assert_eq!(run.phase(), AnalysisPhase::Error);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "timeout not applied"
    );
}

#[tokio::test]
async fn command_provider_parses_output_and_reports_exit_codes() {
    let cmd = |script: &str| ProviderSpec::Command(CommandMetric::new(["sh", "-c", script]));
    let ok = AnalysisSpec::new(vec![
        MetricSpec::new("number", cmd("echo {{args.value}}")).success_condition("result < 0.5"),
        MetricSpec::new("json", cmd(r#"echo '{"healthy": true, "pods": [1, 2]}'"#))
            .success_condition("result.healthy && size(result.pods) == 2"),
    ])
    .arg("value", Some("0.25"));
    let run = run_to_end(&ok, &[]).await;
    assert_eq!(
        run.phase(),
        AnalysisPhase::Successful,
        "{:?}",
        run.message()
    );

    let failing = AnalysisSpec::new(vec![
        MetricSpec::new("m", cmd("echo 'database unreachable' >&2; exit 3"))
            .consecutive_error_limit(1),
    ]);
    let run = run_to_end(&failing, &[]).await;
    assert_eq!(run.phase(), AnalysisPhase::Error);
    assert_eq!(run.metrics()[0].error, 2);
    let msg = run.message().unwrap();
    assert!(
        msg.contains("exit status: 3") && msg.contains("database unreachable"),
        "{msg}"
    );

    // A missing program cannot get better: Error at once, no retries.
    let missing = AnalysisSpec::new(vec![MetricSpec::new(
        "m",
        ProviderSpec::Command(CommandMetric::new(["/nonexistent/probe"])),
    )]);
    let run = run_to_end(&missing, &[]).await;
    assert_eq!(run.phase(), AnalysisPhase::Error);
    assert_eq!(run.metrics()[0].error, 1);
    assert!(
        run.message()
            .unwrap()
            .contains("cannot start `/nonexistent/probe`")
    );

    let garbage = AnalysisSpec::new(vec![
        MetricSpec::new("m", cmd("echo hello")).consecutive_error_limit(0),
    ]);
    let run = run_to_end(&garbage, &[]).await;
    assert!(
        run.message().unwrap().contains("not JSON or a number"),
        "{:?}",
        run.message()
    );

    let mut slow = CommandMetric::new(["sleep", "60"]);
    slow.timeout = Some(rorqual_release::analysis::GoDuration::from_millis(300));
    let spec = AnalysisSpec::new(vec![
        MetricSpec::new("m", ProviderSpec::Command(slow)).consecutive_error_limit(0),
    ]);
    let started = std::time::Instant::now();
    let run = run_to_end(&spec, &[]).await;
    assert!(
        run.message().unwrap().contains("did not finish"),
        "{:?}",
        run.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "timeout not applied"
    );
}

/// A program outlasting the provider's inline wait is a running measurement: the run keeps
/// its handle, resumes it when due and gets the value once the program has ended.
#[tokio::test]
async fn a_long_command_runs_in_the_background_and_is_resumed() {
    let provider = Arc::new(
        CommandProvider::new()
            .inline_wait(Duration::from_millis(50))
            .resume_after(Duration::from_millis(100)),
    );
    let providers = Providers::new().with(provider.clone());
    let spec = AnalysisSpec::new(vec![
        MetricSpec::new(
            "smoke",
            ProviderSpec::Command(CommandMetric::new([
                "sh",
                "-c",
                "sleep 0.4; echo '{\"passed\": 12, \"failed\": 0}'",
            ])),
        )
        .success_condition("result.failed == 0 && result.passed > 10"),
    ]);
    let mut run = AnalysisRun::new(&spec, BTreeMap::new(), SystemTime::now()).unwrap();
    assert_eq!(
        run.tick(&providers, SystemTime::now()).await,
        AnalysisPhase::Running
    );
    let handle = run.metrics()[0].in_progress.clone().unwrap().handle;
    assert!(handle["pid"].as_u64().is_some(), "{handle}");
    assert_eq!(provider.in_flight(), 1);
    let mut resumes = 0;
    while !run.phase().is_terminal() {
        let due = run.next_due().unwrap();
        if let Ok(wait) = due.duration_since(SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
        run.tick(&providers, SystemTime::now()).await;
        resumes += 1;
        assert!(resumes < 50, "never finished: {run:?}");
    }
    assert_eq!(
        run.phase(),
        AnalysisPhase::Successful,
        "{:?}",
        run.message()
    );
    assert!(resumes >= 2, "resumed while it ran, then collected");
    assert_eq!(
        run.metrics()[0].measurements[0].value,
        Some(json!({"passed": 12, "failed": 0}))
    );
    assert_eq!(provider.in_flight(), 0, "collected");

    // The handle means nothing to another provider (a restarted controller): a measurement
    // error, so the metric measures again instead of waiting forever.
    let other = CommandProvider::new();
    let err = other
        .resume(&spec.metrics[0], &BTreeMap::new(), &handle)
        .await
        .unwrap_err();
    assert!(!err.is_permanent(), "{err}");
    assert!(
        err.to_string().contains("is not running in this process"),
        "{err}"
    );
}

/// Terminating a run hands back its running program, and terminating that kills it.
#[tokio::test]
async fn terminating_a_long_command_kills_it() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("finished");
    let provider = Arc::new(CommandProvider::new().inline_wait(Duration::ZERO));
    let providers = Providers::new().with(provider.clone());
    let script = format!("sleep 1; touch '{}'; echo 1", marker.display());
    let spec = AnalysisSpec::new(vec![
        MetricSpec::new(
            "soak",
            ProviderSpec::Command(CommandMetric::new(["sh", "-c", script.as_str()])),
        )
        .interval(Duration::from_secs(60)),
    ]);
    let mut run = AnalysisRun::new(&spec, BTreeMap::new(), SystemTime::now()).unwrap();
    run.tick(&providers, SystemTime::now()).await;
    assert_eq!(run.running().len(), 1);
    run.terminate();
    let abandoned = run.take_abandoned();
    assert_eq!(abandoned.len(), 1);
    abandoned[0].terminate(&providers).await.unwrap();
    assert_eq!(provider.in_flight(), 0);
    // Terminating again (or a handle already collected) is not an error.
    abandoned[0].terminate(&providers).await.unwrap();

    // A start cancelled while it waits for the program (its caller gave up) kills it too.
    let patient = CommandProvider::new().inline_wait(Duration::from_secs(30));
    let cancelled = tokio::time::timeout(
        Duration::from_millis(100),
        patient.start(&spec.metrics[0], &BTreeMap::new()),
    )
    .await;
    assert!(cancelled.is_err(), "still waiting when cancelled");
    assert_eq!(patient.in_flight(), 0);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !marker.exists(),
        "the programs were killed before they finished"
    );
}
