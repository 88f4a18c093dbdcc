//! Serves rorqual's default scheduling plugins to a real kube-scheduler as an extender.
//!
//! ```text
//! cargo run --example scheduler_extender -- --listen 127.0.0.1:8888 --kube-version 1.20 \
//!     [--apiserver https://127.0.0.1:6443 --apiserver-token-file PATH [--apiserver-ca-file PATH]] \
//!     [--scheduler-kubeconfig PATH] [--token SECRET] [--demo-nodes N]
//! ```
//!
//! It prints the KubeSchedulerConfiguration that points kube-scheduler at it, in the API
//! version that `--kube-version` reads (`v1beta1` for 1.19–1.21, `v1beta2` for 1.22, `v1beta3`
//! for 1.23–1.24, `v1` from 1.25), then serves `/filter`, `/prioritize`, `/bind` and `/preempt`
//! until Ctrl-C. Filter results put reasons where that version reads them (`FailedNodes`
//! before 1.21).
//!
//! Binding: with `--apiserver`, the configuration sets `bindVerb` and the extender creates
//! each pod's `v1 Binding` on the API server itself (kube-scheduler delegates binding to it
//! entirely), with the bearer token read from `--apiserver-token-file` (a ServiceAccount
//! allowed to create `pods/binding`) and the cluster CA from `--apiserver-ca-file`. Without
//! it, `bindVerb` is left out and kube-scheduler binds.
//!
//! The extender's node cache is fed in one of two ways:
//! - without `--demo-nodes`, the configuration says `nodeCacheCapable: false`, so
//!   kube-scheduler sends full nodes with every filter and prioritize call (Nodes mode) and the
//!   extender reads the ones whose JSON changed into its cache;
//! - with `--demo-nodes N`, N simulated nodes are preloaded and the configuration says
//!   `nodeCacheCapable: true` (node names only). A real deployment in this mode feeds the cache
//!   from a Node watch instead (`server.scheduler().upsert_node(...)`).

use std::sync::Arc;

use rorqual::core::model::Resources;
use rorqual::scheduler::NodeInfo;
use rorqual::scheduler::extender::{ApiserverConfig, ExtenderServer, KubeVersion};

fn usage(msg: &str) -> ! {
    eprintln!(
        "{msg}\nusage: scheduler_extender --listen ADDR --kube-version VERSION \
         [--apiserver URL --apiserver-token-file PATH [--apiserver-ca-file PATH]] \
         [--scheduler-kubeconfig PATH] [--token SECRET] [--demo-nodes N]"
    );
    std::process::exit(2)
}

fn read(path: &str, what: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| usage(&format!("cannot read {what} {path}: {e}")))
}

#[tokio::main]
async fn main() {
    let mut listen = "127.0.0.1:8888".to_owned();
    let mut token = None;
    let mut demo_nodes = 0usize;
    let mut kube_version: Option<KubeVersion> = None;
    let mut apiserver = None;
    let mut apiserver_token_file = None;
    let mut apiserver_ca_file = None;
    let mut scheduler_kubeconfig = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--listen" => listen = value("--listen"),
            "--token" => token = Some(value("--token")),
            "--kube-version" => {
                kube_version = Some(
                    value("--kube-version")
                        .parse()
                        .unwrap_or_else(|e| usage(&format!("--kube-version: {e}"))),
                )
            }
            "--apiserver" => apiserver = Some(value("--apiserver")),
            "--apiserver-token-file" => {
                apiserver_token_file = Some(value("--apiserver-token-file"))
            }
            "--apiserver-ca-file" => apiserver_ca_file = Some(value("--apiserver-ca-file")),
            "--scheduler-kubeconfig" => {
                scheduler_kubeconfig = Some(value("--scheduler-kubeconfig"))
            }
            "--demo-nodes" => {
                demo_nodes = value("--demo-nodes")
                    .parse()
                    .unwrap_or_else(|_| usage("--demo-nodes needs a number"))
            }
            other => usage(&format!("unknown argument `{other}`")),
        }
    }
    let Some(kube_version) = kube_version else {
        usage("--kube-version is required (the kube-scheduler release, e.g. 1.20 or v1.20.2)")
    };
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => usage(&format!("cannot listen on {listen}: {e}")),
    };
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| usage(&e.to_string()));
    // Without preloaded nodes, ask for full nodes: Nodes-mode requests then feed the cache.
    let mut server = ExtenderServer::with_default_plugins()
        .node_cache_capable(demo_nodes > 0)
        .kube_scheduler_version(kube_version);
    if let Some(t) = token {
        server = server.bearer_token(t);
    }
    if let Some(url) = apiserver {
        let mut config = ApiserverConfig::new(url);
        match apiserver_token_file {
            Some(path) => {
                let token = String::from_utf8(read(&path, "the apiserver token file"))
                    .unwrap_or_else(|_| usage(&format!("{path} is not UTF-8")));
                config = config.bearer_token(token.trim());
            }
            None => usage("--apiserver needs --apiserver-token-file"),
        }
        if let Some(path) = apiserver_ca_file {
            config = config.ca_pem(read(&path, "the apiserver CA file"));
        }
        let binder = config.build().unwrap_or_else(|e| usage(&e.to_string()));
        server = server.binder(Arc::new(binder));
    }
    server.scheduler().add_nodes(
        (0..demo_nodes)
            .map(|i| NodeInfo::new(&format!("node-{i}"), Resources::new(4000, 16 << 30))),
    );
    let mut stanza = server.stanza(format!("http://{addr}"));
    if let Some(path) = scheduler_kubeconfig {
        stanza = stanza.kubeconfig(path);
    }
    match stanza.to_yaml(kube_version) {
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
