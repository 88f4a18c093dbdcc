//! A custom scheduling plugin in about 30 lines, run in-process over 1,000 simulated nodes,
//! then served to kube-scheduler as an extender (this example sends itself a few loopback
//! requests, prints them and exits).
//!
//! ```text
//! cargo run --release --example scheduler_custom_plugin
//! ```

use std::sync::Arc;

use rorqual::core::model::Resources;
use rorqual::scheduler::extender::ExtenderServer;
use rorqual::scheduler::framework::{CycleState, FilterPlugin, Plugin, ScorePlugin, Status};
use rorqual::scheduler::plugins::DefaultPlugins;
use rorqual::scheduler::{NodeInfo, PodInfo, Scheduler, Sym};

// --- the plugin: critical pods never go to spot nodes; everyone else prefers spot ---------
#[derive(Debug)]
struct SpotAware {
    lifecycle: Sym,
    spot: Sym,
    tier: Sym,
    critical: Sym,
}

impl Plugin for SpotAware {
    fn name(&self) -> &str {
        "SpotAware"
    }
}

impl FilterPlugin for SpotAware {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let spot = node.labels.get(self.lifecycle) == Some(self.spot);
        if spot && pod.labels.get(self.tier) == Some(self.critical) {
            return Status::unresolvable("critical pods avoid spot nodes");
        }
        Status::success()
    }
}

impl ScorePlugin for SpotAware {
    fn score(&self, _: &CycleState, _: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        Ok(if node.labels.get(self.lifecycle) == Some(self.spot) {
            100
        } else {
            0
        })
    }
}
// ------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let plugin = Arc::new(SpotAware {
        lifecycle: Sym::new("lifecycle"),
        spot: Sym::new("spot"),
        tier: Sym::new("tier"),
        critical: Sym::new("critical"),
    });
    let profile = DefaultPlugins::new()
        .builder("spot-aware")
        .filter(plugin.clone())
        .score(plugin, 5)
        .build()?;
    let scheduler = Scheduler::new(profile);
    scheduler.add_nodes((0..1000).map(|i| {
        let node = NodeInfo::new(&format!("node-{i}"), Resources::new(8000, 32 << 30));
        if i % 4 == 0 {
            node.label("lifecycle", "spot")
        } else {
            node.label("lifecycle", "on-demand")
        }
    }));
    for i in 0..2000 {
        let tier = if i % 3 == 0 { "critical" } else { "batch" };
        scheduler.enqueue(
            PodInfo::new(
                &format!("uid-{i}"),
                "demo",
                &format!("job-{i}"),
                Resources::new(250, 1 << 30),
            )
            .label("tier", tier),
        )?;
    }
    let started = std::time::Instant::now();
    let summary = scheduler.run_until_idle().await;
    let (critical_on_spot, batch_on_spot) = scheduler.with_snapshot(|snap| {
        let mut counts = (0, 0);
        for node in snap
            .nodes()
            .iter()
            .filter(|n| n.labels.get(Sym::new("lifecycle")) == Some(Sym::new("spot")))
        {
            for pod in &node.pods {
                if pod.labels.get(Sym::new("tier")) == Some(Sym::new("critical")) {
                    counts.0 += 1
                } else {
                    counts.1 += 1
                }
            }
        }
        counts
    });
    println!(
        "in-process: {} pods bound over 1000 nodes in {:?}; critical pods on spot nodes: {critical_on_spot}; batch pods on spot nodes: {batch_on_spot}",
        summary.bound,
        started.elapsed()
    );
    assert_eq!(critical_on_spot, 0);

    // The same plugin, served as a kube-scheduler extender on loopback.
    let server = ExtenderServer::new(scheduler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(server.serve(listener));
    let client = reqwest::Client::new();
    let pod = |tier: &str| {
        serde_json::json!({"metadata": {"name": "web", "namespace": "demo", "uid": format!("u-{tier}"), "labels": {"tier": tier}},
        "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}]}})
    };
    for (verb, tier) in [
        ("filter", "critical"),
        ("filter", "batch"),
        ("prioritize", "batch"),
    ] {
        let body = serde_json::json!({"Pod": pod(tier), "Nodes": null, "NodeNames": ["node-0", "node-1", "node-2"]});
        let response = client
            .post(format!("{url}/{verb}"))
            .json(&body)
            .send()
            .await?;
        println!(
            "POST /{verb} ({tier} pod, NodeNames node-0..2) → {} {}",
            response.status(),
            response.text().await?
        );
    }
    task.abort();
    Ok(())
}
