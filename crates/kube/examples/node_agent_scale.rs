//! Node agent throughput with the simulated runtime: how fast pods already bound to the agent's
//! nodes go from bound to Running and Ready (kwok is the anchor), and the agent's memory per
//! 1,000 pods.
//!
//! 1. starts the test control plane and an agent that registers the nodes and keeps them
//!    Ready but runs no pods of the benchmark's namespace (it is limited to another one);
//! 2. creates the pods, bound to those nodes (`spec.nodeName`), which nothing runs yet;
//! 3. starts a second agent on the same nodes for the benchmark's namespace, with the
//!    simulated runtime (no stage delays), and times until every pod is Running and Ready;
//! 4. reports pods/s and the growth of this process's resident memory per 1,000 pods.
//!
//! ```sh
//! export RORQUAL_KUBE_BIN=$(scripts/build-kube)
//! cargo run --release -p rorqual-kube --features testenv,node-agent --example node_agent_scale -- 5000 10
//! ```
//! Arguments: pods (default 5,000), nodes (default 10), status writers (default 16).
//!
//! With no stage delays the simulated runtime reports each pod Running and Ready at once, so
//! the first status the agent writes is the final one; completion is counted with a
//! metadata-only list on `status.phase=Running`, which keeps this process's memory the agent's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};
use rorqual_kube::node_agent::{NodeAgent, SimulatedConfig, SimulatedRuntime, VirtualNode};
use rorqual_kube::testenv::TestEnv;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn nodes(
    mut builder: rorqual_kube::node_agent::NodeAgentBuilder,
    count: usize,
    pods: usize,
) -> rorqual_kube::node_agent::NodeAgentBuilder {
    let per_node = u32::try_from(pods / count + 10).unwrap_or(u32::MAX);
    for i in 0..count {
        builder = builder.node(VirtualNode::new(format!("scale-{i}")).max_pods(per_node));
    }
    builder
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let pods: usize = args.next().map_or(Ok(5000), |a| a.parse())?;
    let node_count: usize = args.next().map_or(Ok(10), |a| a.parse())?;
    let writers: usize = args.next().map_or(Ok(16), |a| a.parse())?;
    let env = TestEnv::start().await?;
    let namespace = env.new_namespace("scale").await?;
    let config = || async {
        kube::Config::from_custom_kubeconfig(env.kubeconfig().clone(), &Default::default()).await
    };

    // The nodes, kept Ready by an agent that runs nothing of `namespace`.
    let keeper = nodes(NodeAgent::builder(config().await?), node_count, pods)
        .runtime(Arc::new(SimulatedRuntime::default()))
        .namespace("kube-public")
        .start()
        .await?;

    let client = env.client().await?;
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let began = Instant::now();
    let created = futures::stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            async move {
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("p-{i}")},
                    "spec": {
                        "nodeName": format!("scale-{}", i % node_count),
                        "containers": [{"name": "app", "image": "none"}]
                    }
                }))?;
                api.create(&PostParams::default(), &pod).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    if let Some(Err(e)) = created.into_iter().find(Result::is_err) {
        return Err(e.to_string().into());
    }
    println!(
        "created {pods} bound pods in {:.1} s",
        began.elapsed().as_secs_f64()
    );

    let mut sim = SimulatedConfig::default();
    sim.plan.start_delay = Duration::ZERO;
    sim.plan.ready_delay = Duration::ZERO;
    let before = rss_kib();
    let began = Instant::now();
    let agent = nodes(NodeAgent::builder(config().await?), node_count, pods)
        .runtime(Arc::new(SimulatedRuntime::new(sim)))
        .namespace(&namespace)
        .status_workers(writers)
        .start()
        .await?;
    let ready = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let running = ListParams::default().fields("status.phase=Running");
        let ready = api.list_metadata(&running).await?.items.len();
        if ready == pods {
            break began.elapsed();
        }
        if began.elapsed() > Duration::from_secs(600) {
            return Err(
                format!("only {ready} of {pods} pods Running and Ready after 600 s").into(),
            );
        }
    };
    let after = rss_kib();
    println!(
        "{pods} pods bound → Running and Ready in {:.2} s: {:.0} pods/s ({node_count} nodes, simulated runtime, {writers} status writers)",
        ready.as_secs_f64(),
        pods as f64 / ready.as_secs_f64()
    );
    println!(
        "resident memory {:.1} MiB → {:.1} MiB: {:.1} MiB per 1,000 pods (this process: agent, client and bookkeeping)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / 1024.0 / (pods as f64 / 1000.0)
    );
    agent.shutdown().await?;
    keeper.shutdown().await?;
    Ok(())
}
