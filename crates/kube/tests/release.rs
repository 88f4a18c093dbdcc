//! Releases on Kubernetes: the canary and blue-green flows of `examples/release_canary.rs` and
//! `examples/release_blue_green.rs`, run by rorqual-release's `RolloutController` on
//! `KubeEngine` against a real kube-apiserver v1.20.2 with its controller-manager. Pods are
//! placed by rorqual's scheduler (`KubeScheduler`) and run by the node agent's local runtime as
//! real processes (the demo app, each pod on its own loopback address). Traffic goes through a
//! real nginx driven by `NginxRouter`, which finds each revision's ready pods in the
//! EndpointSlices of the revision's Service (`KubeEndpoints`, following a KubeEngine of its
//! own so that a split waits until the slices list the pods the engine reports ready); the
//! canary's analysis asks a real Prometheus scraping the pods. In each flow the controller is
//! dropped mid-step (its task aborted, its engine, state store and approvals handle gone) and a
//! new one, built from the cluster (a new `KubeEngine` and `ConfigMapStateStore`), resumes the
//! same step. The data plane stays up meanwhile, as it would beside a crashed controller: the
//! node agent, nginx and its `NginxRouter` (routes held in memory) are the same.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions unwrap too

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rorqual_core::engine::{Engine, StateStore};
use rorqual_core::model::{AppKey, AppSpec, ContainerSpec, Probe, Revision};
use rorqual_kube::node_agent::{LocalRuntime, NodeAgent, VirtualNode};
use rorqual_kube::scheduler::KubeScheduler;
use rorqual_kube::testenv::TestEnv;
use rorqual_kube::{ConfigMapStateStore, KubeEndpoints, KubeEngine, testenv_or_skip};
use rorqual_release::analysis::{AnalysisSpec, MetricSpec, PrometheusMetric, ProviderSpec};
use rorqual_release::approval::Approvals;
use rorqual_release::traffic::{Endpoints, NGINX_DEFAULT_BINARY, NginxRouter};
use rorqual_release::{
    AnalysisStep, BlueGreen, Canary, CanaryStep, RolloutController, RolloutPhase, RolloutSpec,
    RolloutStatus, Strategy,
};
use rorqual_scheduler::plugins::DefaultPlugins;
use rorqual_testkit::examples::{Load, sample_versions};
use rorqual_testkit::prometheus::LocalPrometheus;

const NODE_LABEL: &str = "release-test";

/// `true` when nginx is installed; otherwise prints why the test is skipped, or fails under CI.
fn nginx_available() -> bool {
    rorqual_testkit::installed_or_skip(NGINX_DEFAULT_BINARY, "nginx-light")
}

/// The demo app at `version` (4 replicas), failing `error_rate` of its requests, listening on
/// `$POD_IP:8080`, ready when `/healthz` answers.
fn demo(ns: &str, version: &str, error_rate: f64) -> AppSpec {
    AppSpec::new(
        "shop",
        vec![
            ContainerSpec::new("web", [rorqual_testkit::demo_bin()])
                .env("PORT", "8080")
                .env("DEMO_VERSION", version)
                .env("DEMO_ERROR_RATE", error_rate.to_string())
                .port("http", 8080)
                .readiness(Probe::http("/healthz", "http").period(1.0)),
        ],
    )
    .namespace(ns)
    .node_selector(NODE_LABEL, ns)
    .replicas(4)
}

/// Everything one flow runs on. The controller (with its engine and state store) can be
/// dropped and rebuilt; the cluster, the node agent, nginx and Prometheus stay.
struct World {
    env: &'static TestEnv,
    ns: String,
    app: AppKey,
    scheduler_name: String,
    agent: Option<NodeAgent>,
    runtime: LocalRuntime,
    scheduling: tokio::task::JoinHandle<()>,
    router: Arc<NginxRouter>,
    endpoints: KubeEndpoints,
    listen: SocketAddr,
    preview: SocketAddr,
    approvals: Option<Approvals>,
    controller: Option<(RolloutController, tokio::task::JoinHandle<()>)>,
    engine: Option<KubeEngine>,
    dir: tempfile::TempDir,
}

/// A flow that fails leaves no pod process behind.
impl Drop for World {
    fn drop(&mut self) {
        if let Some((_, runner)) = self.controller.take() {
            runner.abort();
        }
        self.scheduling.abort();
        self.runtime.kill_all_now();
    }
}

fn free_port() -> SocketAddr {
    SocketAddr::from((
        [127, 0, 0, 1],
        rorqual_testkit::examples::free_port().unwrap(),
    ))
}

impl World {
    async fn start(env: &'static TestEnv, flow: &str) -> World {
        let ns = env.new_namespace(flow).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let runtime = LocalRuntime::builder()
            .state_dir(dir.path().join("pods"))
            .build()
            .unwrap();
        let config = kube::Config::from_custom_kubeconfig(
            env.kubeconfig().clone(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        let mut agent = NodeAgent::builder(config)
            .runtime(Arc::new(runtime.clone()))
            .namespace(ns.clone());
        for i in 0..3 {
            agent = agent.node(VirtualNode::new(format!("{ns}-n{i}")).label(NODE_LABEL, &ns));
        }
        let agent = agent.start().await.unwrap();
        let client = env.client().await.unwrap();
        // Its own scheduler name: the flows of this binary run side by side.
        let scheduler_name = format!("rorqual-{ns}");
        let scheduler =
            KubeScheduler::new(client.clone(), &scheduler_name, DefaultPlugins::new()).unwrap();
        let scheduling = tokio::spawn(async move {
            let _ = scheduler.run().await;
        });
        // The router's view of the pods: slices, checked against an engine of its own.
        let follow = KubeEngine::builder(client.clone())
            .process_pods(true)
            .server_name(env.server_url())
            .state_store(Arc::new(ConfigMapStateStore::new(client.clone(), &ns)))
            .build()
            .await
            .unwrap();
        let endpoints = KubeEndpoints::start(client, env.server_url(), Duration::from_secs(30))
            .await
            .unwrap()
            .following(Arc::new(follow));
        let app = AppKey::new(&ns, "shop");
        let (listen, preview) = (free_port(), free_port());
        let router = Arc::new(
            NginxRouter::builder(dir.path().join("nginx"))
                .endpoints(Arc::new(endpoints.clone()))
                .route(app.clone(), listen)
                .preview_route(app.clone(), preview)
                .build()
                .unwrap(),
        );
        router.start().await.unwrap();
        World {
            env,
            ns,
            app,
            scheduler_name,
            agent: Some(agent),
            runtime,
            scheduling,
            router,
            endpoints,
            listen,
            preview,
            approvals: None,
            controller: None,
            engine: None,
            dir,
        }
    }

    /// A new controller from nothing but the cluster: a new engine (its reflectors list
    /// everything again) and a new ConfigMap state store.
    async fn start_controller(&mut self) {
        let client = self.env.client().await.unwrap();
        let store: Arc<dyn StateStore> =
            Arc::new(ConfigMapStateStore::new(client.clone(), &self.ns));
        let engine = KubeEngine::builder(client)
            .process_pods(true)
            .scheduler_name(&self.scheduler_name)
            .server_name(self.env.server_url())
            .state_store(store.clone())
            .build()
            .await
            .unwrap();
        let approvals = Approvals::with_store(store);
        let controller = RolloutController::builder(Arc::new(engine.clone()))
            .router(self.router.clone())
            .approvals(Arc::new(approvals.clone()))
            .resync(Duration::from_millis(500))
            .build()
            .await
            .unwrap();
        let runner = tokio::spawn({
            let c = controller.clone();
            async move {
                let _ = c.run(std::future::pending()).await;
            }
        });
        self.controller = Some((controller, runner));
        self.engine = Some(engine);
        self.approvals = Some(approvals);
    }

    /// Stops the controller and forgets it, its engine and its approvals handle.
    async fn kill_controller(&mut self) {
        if let Some((_, runner)) = self.controller.take() {
            runner.abort();
            let _ = runner.await;
        }
        self.engine = None;
        self.approvals = None;
    }

    fn controller(&self) -> &RolloutController {
        &self.controller.as_ref().unwrap().0
    }

    async fn status(&self) -> RolloutStatus {
        self.controller().status(&self.app).await.unwrap()
    }

    /// Waits (at most `secs`) until the rollout's status satisfies `done`.
    async fn until(&self, secs: u64, what: &str, done: impl Fn(&RolloutStatus) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = self.controller().status(&self.app).await
                && done(&s)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {secs} s; status {:?}",
                self.controller().status(&self.app).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits (at most 30 s) until the slices of `revision` list `n` ready addresses, which
    /// the engine reports too; returns them.
    async fn endpoints_of(&self, revision: &Revision, n: usize) -> Vec<SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.endpoints.ready(&self.app, revision).await;
            if let Ok(list) = &now
                && list.len() == n
            {
                return list.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{n} endpoints of {revision}: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits (at most 30 s) until nginx's upstream sends `revision`'s share to `n` addresses.
    async fn upstream_of(&self, revision: &Revision, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let upstream = self.router.current_upstream(&self.app).await;
            if upstream
                .iter()
                .any(|b| &b.revision == revision && b.endpoints.len() == n)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} upstream servers for {revision}: {upstream:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(mut self) {
        self.kill_controller().await;
        self.router.shutdown().await;
        self.scheduling.abort();
        if let Some(agent) = self.agent.take() {
            agent.shutdown().await.unwrap();
        }
    }
}

/// Writes each pod of the app as a Prometheus scrape target labelled with its revision.
async fn update_targets(engine: &KubeEngine, app: &AppKey, file: &Path) {
    let groups: Vec<serde_json::Value> = engine
        .instances(app)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|i| {
            let endpoint = SocketAddr::new(i.address?, i.primary_port()?);
            Some(serde_json::json!({
                "targets": [endpoint.to_string()],
                "labels": {"revision": i.revision.as_str()},
            }))
        })
        .collect();
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&groups).unwrap()).unwrap();
    std::fs::rename(tmp, file).unwrap();
}

/// The share of the revision's answers that succeeded over the last 10 s (the demo app's
/// counters, as Prometheus scraped them from the pods); under 95 % fails, twice 2 s apart.
fn success_rate_analysis(prometheus: &str, revision: &Revision) -> CanaryStep {
    let rev = "revision=\"{{args.revision}}\"";
    let query = format!(
        "sum(rate(demo_http_requests_total{{code=\"200\",{rev}}}[10s])) \
         / clamp_min(sum(rate(demo_http_requests_total{{{rev}}}[10s])), 0.001)"
    );
    let provider = ProviderSpec::Prometheus(PrometheusMetric::new(prometheus, query));
    let mut metric = MetricSpec::new("success-rate", provider).success_condition("result >= 0.95");
    metric = metric
        .initial_delay(Duration::from_secs(2))
        .interval(Duration::from_secs(2))
        .count(2);
    let args = BTreeMap::from([("revision".to_owned(), revision.to_string())]);
    CanaryStep::Analysis(AnalysisStep::new(
        AnalysisSpec::new(vec![metric]).arg("revision", None),
        args,
    ))
}

fn canary_steps(prometheus: &str, revision: &Revision) -> Strategy {
    Strategy::Canary(
        Canary::new(vec![
            CanaryStep::SetWeight(25),
            CanaryStep::pause(12),
            success_rate_analysis(prometheus, revision),
            CanaryStep::SetWeight(50),
            success_rate_analysis(prometheus, revision),
        ])
        .scale_down_delay(2),
    )
}

/// Keeps Prometheus' targets current while `f` runs.
async fn with_targets<T>(w: &World, targets: &Path, f: impl Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    loop {
        if let Some(engine) = &w.engine {
            update_targets(engine, &w.app, targets).await;
        }
        tokio::select! {
            out = &mut f => return out,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_on_kubernetes_shifts_nginx_traffic_resumes_after_a_restart_and_rolls_back() {
    let env = testenv_or_skip!();
    if !nginx_available() {
        return;
    }
    let mut w = World::start(env, "canary").await;
    let targets = w.dir.path().join("targets.json");
    std::fs::write(&targets, "[]").unwrap();
    let Some(prometheus) = LocalPrometheus::builder()
        .scrape_file("demo", &targets, Duration::from_secs(1))
        .start_or_skip()
        .await
    else {
        w.stop().await;
        return;
    };
    let prom = prometheus.url().to_owned();
    w.start_controller().await;
    let url = format!("http://{}/", w.listen);

    // v1: 4 pods, all traffic.
    let v1 = demo(&w.ns, "v1", 0.0);
    let rev1 = v1.revision();
    w.controller()
        .apply(RolloutSpec::new(v1, canary_steps(&prom, &rev1)).progress_deadline(120))
        .await
        .unwrap();
    w.until(90, "v1 healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;
    let seen = sample_versions(&url, 20).await.unwrap();
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["v1"], "{seen:?}");
    // nginx found v1's pods in the EndpointSlices of v1's Service: 4 loopback addresses, all
    // in nginx's upstream.
    let ready = w.endpoints_of(&rev1, 4).await;
    assert!(
        ready
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8080)
    );
    w.upstream_of(&rev1, 4).await;

    // Bounded traffic through nginx while the canaries run (at most 30,000 requests).
    let (load, traffic) = Load::start(url.clone(), 30_000, Duration::from_millis(10));

    // v2: 25 % of the pods and of the traffic, then a 12 s pause.
    let v2 = demo(&w.ns, "v2", 0.0);
    let rev2 = v2.revision();
    w.controller()
        .apply(RolloutSpec::new(v2, canary_steps(&prom, &rev2)).progress_deadline(120))
        .await
        .unwrap();
    with_targets(
        &w,
        &targets,
        w.until(90, "v2 in the pause", |s| {
            s.step == 1 && s.weight == Some(25)
        }),
    )
    .await;
    let seen = sample_versions(&url, 200).await.unwrap();
    let v2_share = f64::from(seen.get("v2").copied().unwrap_or(0)) / 200.0;
    assert!(
        seen.len() == 2 && (0.1..=0.4).contains(&v2_share),
        "25 % to v2 through nginx: {seen:?}"
    );

    // The controller dies in the pause; a new one resumes the same step, with the pause's
    // start kept, from the ConfigMaps alone.
    let before = w.controller().rollout(&w.app).await.unwrap();
    w.kill_controller().await;
    let store = ConfigMapStateStore::new(env.client().await.unwrap(), &w.ns);
    assert!(
        !store.list("").await.unwrap().is_empty(),
        "the rollout's state is in ConfigMaps"
    );
    w.start_controller().await;
    let after = w.controller().rollout(&w.app).await.unwrap();
    assert_eq!(after.step, before.step, "the same step");
    assert_eq!(
        after.step_started, before.step_started,
        "the pause is not restarted"
    );
    assert_eq!(after.stable, Some(rev1.clone()));

    with_targets(
        &w,
        &targets,
        w.until(120, "v2 stable", |s| {
            s.phase == RolloutPhase::Healthy && s.stable.as_ref() == Some(&rev2)
        }),
    )
    .await;
    let seen = sample_versions(&url, 50).await.unwrap();
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["v2"], "{seen:?}");
    // All 4 of v2's pods, not the set of an earlier split.
    w.upstream_of(&rev2, 4).await;

    // v3 fails half of its requests: the analysis fails and v2 keeps (or gets back) everything.
    let v3 = demo(&w.ns, "v3", 0.5);
    let rev3 = v3.revision();
    w.controller()
        .apply(RolloutSpec::new(v3, canary_steps(&prom, &rev3)).progress_deadline(120))
        .await
        .unwrap();
    with_targets(
        &w,
        &targets,
        w.until(120, "v3 aborted", |s| {
            s.phase == RolloutPhase::Degraded && s.aborted()
        }),
    )
    .await;
    let status = w.status().await;
    assert_eq!(status.stable, Some(rev2.clone()), "{status:?}");
    let seen = sample_versions(&url, 100).await.unwrap();
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["v2"], "{seen:?}");
    assert!(
        load.last_answer_from("v3").is_some(),
        "v3 took traffic first"
    );
    load.stop();
    traffic.await.unwrap();
    println!("{} requests through nginx: {}", load.total(), load.take());

    prometheus.stop();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_on_kubernetes_previews_waits_for_approval_across_a_restart_and_promotes() {
    let env = testenv_or_skip!();
    if !nginx_available() {
        return;
    }
    let mut w = World::start(env, "bluegreen").await;
    w.start_controller().await;
    let active = format!("http://{}/", w.listen);
    let preview = format!("http://{}/", w.preview);
    let strategy = || {
        let mut s = BlueGreen::manual(Some(2));
        s.scale_down_delay_seconds = 2;
        Strategy::BlueGreen(s)
    };

    let v1 = demo(&w.ns, "v1", 0.0);
    let rev1 = v1.revision();
    w.controller()
        .apply(RolloutSpec::new(v1, strategy()).progress_deadline(120))
        .await
        .unwrap();
    w.until(90, "v1 healthy", |s| s.phase == RolloutPhase::Healthy)
        .await;

    let v2 = demo(&w.ns, "v2", 0.0);
    let rev2 = v2.revision();
    w.controller()
        .apply(RolloutSpec::new(v2, strategy()).progress_deadline(120))
        .await
        .unwrap();
    w.until(
        90,
        "v2 waiting for approval",
        RolloutStatus::waiting_for_approval,
    )
    .await;
    assert_eq!(w.status().await.preview, Some(rev2.clone()));
    let seen_preview = sample_versions(&preview, 30).await.unwrap();
    let seen_active = sample_versions(&active, 30).await.unwrap();
    assert_eq!(
        seen_preview.keys().collect::<Vec<_>>(),
        ["v2"],
        "{seen_preview:?}"
    );
    assert_eq!(
        seen_active.keys().collect::<Vec<_>>(),
        ["v1"],
        "{seen_active:?}"
    );
    w.endpoints_of(&rev2, 2).await;

    // The controller dies at the approval gate; a new one is still there, and the approval
    // (kept in the same ConfigMaps) reaches it.
    let before = w.status().await;
    w.kill_controller().await;
    w.start_controller().await;
    let resumed = w.status().await;
    assert_eq!(resumed.step, before.step, "still at the promotion gate");
    assert!(resumed.waiting_for_approval(), "{resumed:?}");
    let approvals = w.approvals.clone().unwrap();
    let pending = approvals.pending().await.unwrap();
    let request = pending
        .iter()
        .find(|r| r.request.key.app == w.app)
        .expect("a pending approval for the app");
    approvals
        .approve(
            &request.request.key,
            "release-bot",
            Some("preview answers v2".into()),
        )
        .await
        .unwrap();

    w.until(90, "v2 promoted", |s| {
        s.phase == RolloutPhase::Healthy && s.stable.as_ref() == Some(&rev2)
    })
    .await;
    let seen_active = sample_versions(&active, 50).await.unwrap();
    assert_eq!(
        seen_active.keys().collect::<Vec<_>>(),
        ["v2"],
        "{seen_active:?}"
    );
    // v1 goes after the scale-down delay, and with it its Service's endpoints.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !w.endpoints.ready_now(&w.app, &rev1).is_empty() {
        assert!(Instant::now() < deadline, "v1 still has ready endpoints");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = reqwest::get(&preview).await.unwrap().status();
    assert_eq!(
        status,
        reqwest::StatusCode::SERVICE_UNAVAILABLE,
        "preview emptied"
    );
    w.stop().await;
}
