//! A Kubernetes dev cluster with no container runtime, no images and no internet: a real
//! control plane (etcd, kube-apiserver, kube-controller-manager and kube-scheduler v1.20.2 on
//! loopback) and rorqual's node agent, whose nodes run each pod's `command` as a local process
//! (each pod on its own loopback address, in `$POD_IP`; listen there). Debian's `kubectl` works
//! against it as against any cluster: apply a Deployment whose container has a `command`, watch
//! its pods become Running and Ready, read `kubectl logs`, `kubectl delete`.
//!
//! ```sh
//! export RORQUAL_KUBE_BIN=$(scripts/build-kube)    # kube-apiserver & co. (cached)
//! cargo run --release --example kube_devcluster -- --nodes 3 --kubeconfig /tmp/dev.kubeconfig
//! # once it prints "ready":
//! kubectl --kubeconfig /tmp/dev.kubeconfig get nodes
//! ```
//!
//! Runs until SIGINT or SIGTERM, then stops every pod process and the control plane. Pods that
//! name `schedulerName: rorqual` are placed by rorqual's own scheduler; the others by
//! kube-scheduler.
//!
//! With `--pod-network bridge` (root, Debian's `containernetworking-plugins`), each pod runs in
//! its own network namespace (`<bridge>-<pod uid>`) on the bridge `--bridge` (default `rqdev0`),
//! with an address from rorqual's IPAM in `--pod-subnet` (default `10.244.0.0/24`, gateway `.1`
//! on the bridge so the host reaches the pods); on stop, the pods' namespaces and the bridge are
//! removed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use rorqual_kube::node_agent::{LocalRuntime, NodeAgent, VirtualNode};
use rorqual_kube::scheduler::KubeScheduler;
use rorqual_kube::testenv::TestEnv;
use rorqual_net::store::memory::MemoryStore;
use rorqual_net::{Allocator, BridgeNetwork, IpRange, PoolSpec};
use rorqual_scheduler::plugins::DefaultPlugins;
use tokio::signal::unix::{SignalKind, signal};

/// A Kubernetes dev cluster whose pods run as local processes.
#[derive(Debug, Parser)]
#[command(name = "kube_devcluster")]
struct Args {
    /// How many nodes the agent registers (`node-0` …).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Where to write the admin kubeconfig (for `kubectl --kubeconfig PATH`).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// CPU per node, in cores.
    #[arg(long, default_value_t = 4)]
    cpus: u32,
    /// Pods per node.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// How pods get their addresses.
    #[arg(long, value_enum, default_value_t = PodNetwork::Loopback)]
    pod_network: PodNetwork,
    /// The pods' subnet with `--pod-network bridge` (its first address is the bridge's).
    #[arg(long, default_value = "10.244.0.0/24")]
    pod_subnet: ipnet::Ipv4Net,
    /// The bridge with `--pod-network bridge` (at most 15 characters); pods' namespaces are
    /// named `<bridge>-<pod uid>`.
    #[arg(long, default_value = "rqdev0")]
    bridge: String,
}

/// Where pods' addresses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PodNetwork {
    /// A distinct loopback address per pod (`127.N.x.y`), no namespaces; any user.
    Loopback,
    /// A network namespace per pod on the bridge `--bridge`, addresses from `--pod-subnet`;
    /// root.
    Bridge,
}

/// The bridge network of `--pod-network bridge`: a pool over `subnet` with its first address
/// as the gateway (on the bridge).
async fn bridge_network(subnet: ipnet::Ipv4Net, bridge: &str) -> anyhow::Result<BridgeNetwork> {
    anyhow::ensure!(
        !bridge.is_empty() && bridge.len() <= 15,
        "--bridge `{bridge}`: an interface name has 1 to 15 characters"
    );
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "--pod-network bridge needs root (network namespaces)"
    );
    anyhow::ensure!(
        std::path::Path::new("/usr/lib/cni/bridge").exists(),
        "--pod-network bridge needs /usr/lib/cni/bridge: apt-get install containernetworking-plugins"
    );
    let gateway = subnet
        .hosts()
        .next()
        .with_context(|| format!("--pod-subnet {subnet} has no host addresses"))?;
    let allocator = Allocator::new(Arc::new(MemoryStore::new()));
    allocator
        .create_pool(
            PoolSpec::new("pods")
                .with_range(IpRange::new(subnet.into()).with_gateway(gateway.into())),
        )
        .await
        .with_context(|| format!("creating the pod pool over {subnet}"))?;
    Ok(BridgeNetwork::new(allocator, "pods", bridge).with_netns_prefix(format!("{bridge}-")))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // The client logs each failed poll while the apiserver starts: not news here.
                .unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .init();
    let args = Args::parse();
    anyhow::ensure!(args.nodes > 0, "--nodes must be at least 1");
    // Signals first: a SIGINT during start-up stops what has started.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let began = Instant::now();
    let env =
        TestEnv::builder().scheduler(true).start().await.context(
            "starting the control plane (is RORQUAL_KUBE_BIN set? `scripts/build-kube`)",
        )?;
    env.write_kubeconfig(&args.kubeconfig)
        .with_context(|| format!("writing {}", args.kubeconfig.display()))?;
    let state = tempfile::tempdir()?;
    let config = kube::Config::from_custom_kubeconfig(
        env.kubeconfig().clone(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let mut runtime = LocalRuntime::builder().state_dir(state.path().join("pods"));
    if args.pod_network == PodNetwork::Bridge {
        runtime = runtime.network(Arc::new(
            bridge_network(args.pod_subnet, &args.bridge).await?,
        ));
    }
    let runtime = runtime.build()?;
    let mut builder = NodeAgent::builder(config).runtime(Arc::new(runtime));
    for i in 0..args.nodes {
        builder = builder.node(
            VirtualNode::new(format!("node-{i}"))
                .capacity("cpu", args.cpus.to_string())
                .max_pods(args.max_pods),
        );
    }
    let agent = builder.start().await.context("starting the node agent")?;
    let client = env.client().await?;
    let scheduler = KubeScheduler::new(client.clone(), "rorqual", DefaultPlugins::new())?;
    let scheduling = {
        let s = scheduler.clone();
        tokio::spawn(async move { s.run().await })
    };
    wait_ready(&client, args.nodes).await?;
    println!(
        "ready in {:.1} s: {} nodes; kubectl --kubeconfig {} get nodes (apiserver {})",
        began.elapsed().as_secs_f64(),
        args.nodes,
        args.kubeconfig.display(),
        env.server_url()
    );
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    println!("stopping");
    scheduling.abort();
    agent.shutdown().await.context("stopping the node agent")?;
    if args.pod_network == PodNetwork::Bridge
        && std::path::Path::new("/sys/class/net")
            .join(&args.bridge)
            .exists()
    {
        // The pods' namespaces went with them; the bridge (made by the first pod) stays until
        // removed.
        let removed = tokio::process::Command::new("ip")
            .args(["link", "del", &args.bridge])
            .status()
            .await;
        if !removed.is_ok_and(|s| s.success()) {
            eprintln!("cannot remove the bridge: ip link del {}", args.bridge);
        }
    }
    drop(env);
    println!("stopped");
    Ok(())
}

/// Waits until every agent node is Ready and untainted (the node lifecycle controller lifts
/// `node.kubernetes.io/not-ready` once it sees them Ready), so the first `kubectl apply` runs.
async fn wait_ready(client: &kube::Client, nodes: usize) -> anyhow::Result<()> {
    let api: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let list = api.list(&Default::default()).await?.items;
        let ready = list
            .iter()
            .filter(|n| {
                let ready = n
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let tainted = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| t.iter().any(|t| t.key == "node.kubernetes.io/not-ready"));
                ready && !tainted
            })
            .count();
        if ready >= nodes {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{ready} of {nodes} nodes Ready and untainted after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
