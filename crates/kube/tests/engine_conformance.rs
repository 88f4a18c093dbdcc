//! KubeEngine passes rorqual-core's engine conformance suite on a real kube-apiserver v1.20.2
//! with its controller-manager: pods are placed by rorqual's own scheduler
//! (`scheduler::KubeScheduler`, `spec.schedulerName: rorqual`) and run by the node agent with
//! the simulated runtime (pods Running and Ready after short stages). The state-store checks
//! run on the `ConfigMapStateStore`.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions unwrap too

use std::sync::Arc;
use std::time::Duration;

use rorqual_core::conformance::{self, Harness};
use rorqual_core::model::{AppSpec, ContainerSpec};
use rorqual_kube::node_agent::{NodeAgent, SimulatedConfig, SimulatedRuntime, VirtualNode};
use rorqual_kube::scheduler::KubeScheduler;
use rorqual_kube::{ConfigMapStateStore, KubeEngine, testenv_or_skip};
use rorqual_scheduler::plugins::DefaultPlugins;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_engine_passes_the_conformance_suite() {
    let env = testenv_or_skip!();
    let ns = env.new_namespace("conformance").await.unwrap();
    let client = env.client().await.unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        env.kubeconfig().clone(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let mut sim = SimulatedConfig::default();
    sim.plan.start_delay = Duration::from_millis(100);
    sim.plan.ready_delay = Duration::from_millis(200);
    let agent = NodeAgent::builder(config)
        .runtime(Arc::new(SimulatedRuntime::new(sim)))
        .node(VirtualNode::new(format!("{ns}-a")).label("pool", ns.clone()))
        .node(VirtualNode::new(format!("{ns}-b")).label("pool", ns.clone()))
        .namespace(ns.clone())
        .start()
        .await
        .unwrap();
    let scheduler = KubeScheduler::new(client.clone(), "rorqual", DefaultPlugins::new()).unwrap();
    let scheduling = {
        let s = scheduler.clone();
        tokio::spawn(async move { s.run().await })
    };
    let engine = KubeEngine::builder(client.clone())
        .process_pods(true)
        .scheduler_name("rorqual")
        .server_name(env.server_url())
        .state_store(Arc::new(ConfigMapStateStore::new(client, &ns)))
        .build()
        .await
        .unwrap();
    let spec_ns = ns.clone();
    let harness = Harness::new(Arc::new(engine), move |name, version| {
        AppSpec::new(
            name,
            vec![ContainerSpec::new("app", ["/bin/sleep", "3600"]).env("VERSION", version)],
        )
        .namespace(&spec_ns)
        .node_selector("pool", &spec_ns)
    })
    .tick(|| tokio::time::sleep(Duration::from_millis(200)))
    .patience(300);
    let result = conformance::run(&harness).await;
    scheduling.abort();
    agent.shutdown().await.unwrap();
    result.unwrap();
}
