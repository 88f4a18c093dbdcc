//! The quickstart's walk-through on KubeEngine: the same demo app, deployed, requested,
//! scaled and healed, on a Kubernetes cluster instead of the embedded engine. Point it at the
//! dev cluster (`kube_devcluster`, whose nodes run each pod's command as a process):
//!
//! ```sh
//! cargo run --release --example kube_devcluster -- --nodes 3 --kubeconfig /tmp/dev.kubeconfig &
//! # after "ready":
//! cargo run --release --example kube_engine_quickstart -- --kubeconfig /tmp/dev.kubeconfig
//! ```
//!
//! The demo app is this same binary re-executed with `--demo-app`, listening on the pod's
//! address (`$POD_IP`). Controller state goes to ConfigMaps in the namespace.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use rorqual_core::engine::{Engine, StateStore};
use rorqual_core::model::{AppKey, AppSpec, ContainerSpec, Instance, Probe, Resources};
use rorqual_kube::{ConfigMapStateStore, KubeEngine};
use rorqual_testkit::demo;

/// The quickstart on a Kubernetes cluster.
#[derive(Debug, Parser)]
#[command(name = "kube_engine_quickstart")]
struct Args {
    /// The cluster's kubeconfig (the dev cluster's).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// The namespace to deploy into (created when missing).
    #[arg(long, default_value = "rorqual-quickstart")]
    namespace: String,
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--demo-app") {
        return demo::run_from_env();
    }
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube_engine_quickstart failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let client = kube::Client::try_from(config.clone())?;
    ensure_namespace(&client, &args.namespace).await?;
    let state: Arc<dyn StateStore> =
        Arc::new(ConfigMapStateStore::new(client.clone(), &args.namespace));
    let engine = KubeEngine::from_config(config)?
        .process_pods(true)
        .state_store(state)
        .build()
        .await?;
    println!(
        "KubeEngine up: Kubernetes {}, {} nodes",
        engine.server_version(),
        engine.nodes().await?.len()
    );

    let spec = AppSpec::new(
        "demo",
        vec![
            ContainerSpec::new("app", [exe.to_string_lossy().into_owned()])
                .args(["--demo-app"])
                .env("DEMO_VERSION", "v1")
                .env("PORT", "8080")
                .port("http", 8080)
                .resources(Resources::new(250, 64 << 20))
                .readiness(Probe::http("/healthz", "http").period(1.0)),
        ],
    )
    .namespace(&args.namespace)
    .grace_period_seconds(5);
    let key = spec.key();
    println!(
        "\ndeploying {key} v1 (ReplicaSet demo-{}) with 3 replicas",
        spec.revision()
    );
    engine.apply_group(&spec, 3).await?;
    let list = wait_ready(&engine, &key, 3).await?;
    print_table(&list);

    println!("\nrequesting each pod:");
    let http = reqwest::Client::new();
    for i in &list {
        let addr = i.endpoint("http").context("pod without an address yet")?;
        let body = http
            .get(format!("http://{addr}/"))
            .send()
            .await?
            .text()
            .await?;
        println!("  {addr} -> {}", body.trim());
    }

    println!("\nscaling to 5");
    engine.scale_group(&key, &spec.revision(), 5).await?;
    print_table(&wait_ready(&engine, &key, 5).await?);

    let victim = list[0].id.clone();
    println!("\ndeleting pod {victim}: its ReplicaSet replaces it");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &args.namespace);
    pods.delete(&victim, &DeleteParams::default()).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine.instances(&key).await?.iter().any(|i| i.id == victim) {
        anyhow::ensure!(Instant::now() < deadline, "{victim} still there after 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    print_table(&wait_ready(&engine, &key, 5).await?);

    println!("\ndeleting the group");
    engine.delete_group(&key, &spec.revision()).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !engine.instances(&key).await?.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "pods still there after 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "\nevery pod stopped; finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Creates `name` when missing and waits until it can take pods (its `default` service account
/// and, before Kubernetes 1.24, that account's token).
async fn ensure_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(name).await?.is_none() {
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
        namespaces.create(&PostParams::default(), &ns).await?;
    }
    // Before 1.24 the service account's token secret must exist too (admission needs it).
    let version = client.apiserver_version().await?;
    let minor: u32 = version
        .minor
        .trim_end_matches('+')
        .parse()
        .unwrap_or(u32::MAX);
    let needs_token = version.major == "1" && minor < 24;
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), name);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = accounts
            .get_opt("default")
            .await?
            .is_some_and(|sa| !needs_token || sa.secrets.is_some_and(|s| !s.is_empty()));
        if ready {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "namespace {name}: no default service account token after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_ready(engine: &KubeEngine, key: &AppKey, n: usize) -> anyhow::Result<Vec<Instance>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = engine.instances(key).await?;
        if list.len() == n && list.iter().all(|i| i.ready) {
            return Ok(list);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{key}: not {n} ready pods after 120 s: {:?}",
            list.iter()
                .map(|i| (&i.id, i.phase, &i.reason))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_table(list: &[Instance]) {
    println!(
        "  {:<28} {:<8} {:<12} {:<9} ready",
        "pod", "node", "address", "phase"
    );
    for i in list {
        println!(
            "  {:<28} {:<8} {:<12} {:<9} {}",
            i.id,
            i.node.as_deref().unwrap_or("-"),
            i.address
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            i.phase.to_string(),
            i.ready
        );
    }
}
