//! Apply-to-all-ready of `PODS` (default 20) pods: through KubeEngine, beside `kubectl apply`
//! of the equivalent ReplicaSet followed by `kubectl wait`, in the same run, alternating, `RUNS`
//! (default 3) times each. The control plane is the test one; rorqual's scheduler places the
//! pods and the node agent's local runtime runs each as a real process (`/bin/sleep`), so
//! "ready" means started.
//!
//! ```sh
//! export RORQUAL_KUBE_BIN=$(scripts/build-kube)
//! cargo run --release -p rorqual-kube --features testenv,engine,node-agent,scheduler \
//!     --example kube_engine_vs_kubectl
//! ```

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rorqual_core::engine::{Engine, MemoryStateStore};
use rorqual_core::model::{AppSpec, ContainerSpec};
use rorqual_kube::KubeEngine;
use rorqual_kube::node_agent::{LocalRuntime, NodeAgent, VirtualNode};
use rorqual_kube::scheduler::KubeScheduler;
use rorqual_kube::testenv::TestEnv;
use rorqual_scheduler::plugins::DefaultPlugins;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn kubectl() -> String {
    std::env::var("RORQUAL_KUBECTL").unwrap_or_else(|_| "kubectl".to_owned())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The ReplicaSet `kubectl apply` gets: the same pod template KubeEngine writes.
fn replica_set_yaml(ns: &str, name: &str, pods: usize) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: {name}
  namespace: {ns}
spec:
  replicas: {pods}
  selector:
    matchLabels: {{bench: {name}}}
  template:
    metadata:
      labels: {{bench: {name}}}
    spec:
      schedulerName: rorqual
      nodeSelector: {{pool: {ns}}}
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: rorqual.io/process
        command: ["/bin/sleep", "3600"]
"#
    )
}

fn run(cmd: &mut Command) -> Result<String, Box<dyn std::error::Error>> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pods = env_number("PODS", 20);
    let runs = env_number("RUNS", 3);
    let env = TestEnv::start().await?;
    let ns = env.new_namespace("bench").await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    env.write_kubeconfig(&kubeconfig)?;
    let client = env.client().await?;
    let config = kube::Config::from_custom_kubeconfig(
        env.kubeconfig().clone(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let agent = NodeAgent::builder(config)
        .runtime(Arc::new(
            LocalRuntime::builder()
                .state_dir(dir.path().join("pods"))
                .build()?,
        ))
        .node(
            VirtualNode::new(format!("{ns}-a"))
                .label("pool", ns.clone())
                .max_pods(200),
        )
        .node(
            VirtualNode::new(format!("{ns}-b"))
                .label("pool", ns.clone())
                .max_pods(200),
        )
        .namespace(ns.clone())
        .start()
        .await?;
    let scheduler = KubeScheduler::new(client.clone(), "rorqual", DefaultPlugins::new())?;
    let scheduling = {
        let s = scheduler.clone();
        tokio::spawn(async move { s.run().await })
    };
    let engine = KubeEngine::builder(client)
        .process_pods(true)
        .scheduler_name("rorqual")
        .server_name(env.server_url())
        .state_store(Arc::new(MemoryStateStore::new()))
        .build()
        .await?;

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 0..runs {
        // KubeEngine: apply, then read the group until every pod is ready.
        let spec = AppSpec::new(
            format!("eng-{round}"),
            vec![ContainerSpec::new("app", ["/bin/sleep", "3600"])],
        )
        .namespace(&ns)
        .node_selector("pool", &ns)
        .grace_period_seconds(1);
        let began = Instant::now();
        engine.apply_group(&spec, pods as u32).await?;
        loop {
            let g = engine.groups(&spec.key()).await?;
            if g.iter().any(|g| g.ready as usize == pods) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ours.push(began.elapsed().as_secs_f64());
        engine.delete_group(&spec.key(), &spec.revision()).await?;

        // kubectl: apply the equivalent ReplicaSet, then wait for its pods.
        let name = format!("kc-{round}");
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, replica_set_yaml(&ns, &name, pods))?;
        let kc = kubectl();
        let kcfg = kubeconfig.display().to_string();
        let began = Instant::now();
        run(Command::new(&kc)
            .args(["--kubeconfig", &kcfg, "apply", "-f"])
            .arg(&file))?;
        loop {
            // `kubectl wait` waits for the pods that exist when it starts: again until all do.
            let out = run(Command::new(&kc).args([
                "--kubeconfig",
                &kcfg,
                "wait",
                "-n",
                &ns,
                "--for=condition=Ready",
                "pod",
                "-l",
                &format!("bench={name}"),
                "--timeout=60s",
            ]))
            .unwrap_or_default();
            if out.lines().filter(|l| l.contains("condition met")).count() == pods {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        theirs.push(began.elapsed().as_secs_f64());
        run(Command::new(&kc).args([
            "--kubeconfig",
            &kcfg,
            "delete",
            "-n",
            &ns,
            "replicaset",
            &name,
            "--wait=false",
        ]))?;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let (a, b) = (median(ours.clone()), median(theirs.clone()));
    println!(
        "apply to all {pods} ready: KubeEngine median {a:.2} s (runs {ours:.2?}); kubectl apply + \
         kubectl wait median {b:.2} s (runs {theirs:.2?}); ratio {:.2}",
        a / b
    );
    scheduling.abort();
    agent.shutdown().await?;
    Ok(())
}
