//! Serves rorqual's default scheduling plugins to a real kube-scheduler as an extender.
//!
//! ```text
//! cargo run --example scheduler_extender -- --listen 127.0.0.1:8888 [--token SECRET] [--demo-nodes N]
//! ```
//!
//! It prints the KubeSchedulerConfiguration stanza that points kube-scheduler at it, then
//! serves `/filter`, `/prioritize`, `/bind` and `/preempt` until Ctrl-C. The bind verb needs
//! the node in the extender's node cache, which is fed in one of two ways:
//! - without `--demo-nodes`, the stanza says `nodeCacheCapable: false`, so kube-scheduler sends
//!   full nodes with every filter and prioritize call (Nodes mode) and the extender upserts
//!   them into its cache;
//! - with `--demo-nodes N`, N simulated nodes are preloaded and the stanza says
//!   `nodeCacheCapable: true` (node names only). A real deployment in this mode feeds the cache
//!   from a Node watch instead (`server.scheduler().upsert_node(...)`).

use rorqual::core::model::Resources;
use rorqual::scheduler::NodeInfo;
use rorqual::scheduler::extender::ExtenderServer;

fn usage(msg: &str) -> ! {
    eprintln!("{msg}\nusage: scheduler_extender --listen ADDR [--token SECRET] [--demo-nodes N]");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut listen = "127.0.0.1:8888".to_owned();
    let mut token = None;
    let mut demo_nodes = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--listen" => listen = value("--listen"),
            "--token" => token = Some(value("--token")),
            "--demo-nodes" => {
                demo_nodes = value("--demo-nodes")
                    .parse()
                    .unwrap_or_else(|_| usage("--demo-nodes needs a number"))
            }
            other => usage(&format!("unknown argument `{other}`")),
        }
    }
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => usage(&format!("cannot listen on {listen}: {e}")),
    };
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| usage(&e.to_string()));
    // Without preloaded nodes, ask for full nodes: Nodes-mode requests then feed the cache.
    let mut server = ExtenderServer::with_default_plugins().node_cache_capable(demo_nodes > 0);
    if let Some(t) = token {
        server = server.bearer_token(t);
    }
    server.scheduler().add_nodes(
        (0..demo_nodes)
            .map(|i| NodeInfo::new(&format!("node-{i}"), Resources::new(4000, 16 << 30))),
    );
    match server.stanza(format!("http://{addr}")).to_yaml() {
        Ok(yaml) => println!("# KubeSchedulerConfiguration for kube-scheduler:\n{yaml}"),
        Err(e) => usage(&e.to_string()),
    }
    println!(
        "serving default plugins on http://{addr} (/filter, /prioritize, /bind, /preempt); Ctrl-C stops"
    );
    tokio::select! {
        result = server.serve(listener) => {
            if let Err(e) = result {
                eprintln!("server failed: {e}");
                std::process::exit(1);
            }
        }
        _ = tokio::signal::ctrl_c() => println!("stopping"),
    }
}
