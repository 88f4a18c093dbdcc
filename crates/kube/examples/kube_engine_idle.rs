//! API requests per idle app: starts the test control plane, applies `APPS` (default 20)
//! stateless apps of one replica through KubeEngine, then for `SECS` (default 60) seconds reads
//! every app's groups and instances once a second, as a controller watching them would, and
//! counts every HTTP request the engine's client sends (a tower layer under the client).
//!
//! ```sh
//! export RORQUAL_KUBE_BIN=$(scripts/build-kube)
//! cargo run --release -p rorqual-kube --features testenv,engine --example kube_engine_idle
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use kube::client::ClientBuilder;
use rorqual_core::engine::{Engine, MemoryStateStore};
use rorqual_core::model::{AppSpec, ContainerSpec};
use rorqual_kube::KubeEngine;
use rorqual_kube::testenv::TestEnv;

/// Requests seen, by `METHOD path-without-namespace-and-name` (watches apart).
type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

#[derive(Clone)]
struct Count<S> {
    inner: S,
    counts: Counts,
}

impl<S, B> tower::Service<http::Request<B>> for Count<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let watch = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        let resource = req
            .uri()
            .path()
            .rsplit('/')
            .find(|seg| !seg.is_empty() && !seg.contains('-'))
            .unwrap_or("")
            .to_owned();
        let key = format!(
            "{} {resource}{}",
            req.method(),
            if watch { " (watch)" } else { "" }
        );
        if let Ok(mut c) = self.counts.lock() {
            *c.entry(key).or_default() += 1;
        }
        self.inner.call(req)
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let apps = env_number("APPS", 20);
    let secs = env_number("SECS", 60);
    let env = TestEnv::start().await?;
    let namespace = env.new_namespace("idle").await?;
    let config = kube::Config::from_custom_kubeconfig(
        env.kubeconfig().clone(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let counts: Counts = Arc::default();
    let layer_counts = counts.clone();
    let client = ClientBuilder::try_from(config)?
        .with_layer(&tower::layer::layer_fn(move |inner| Count {
            inner,
            counts: layer_counts.clone(),
        }))
        .build();
    let engine = KubeEngine::builder(client)
        .process_pods(true)
        .server_name(env.server_url())
        .state_store(Arc::new(MemoryStateStore::new()))
        .build()
        .await?;
    let mut keys = Vec::new();
    for i in 0..apps {
        let spec = AppSpec::new(
            format!("idle-{i}"),
            vec![ContainerSpec::new("app", ["/bin/sleep", "3600"])],
        )
        .namespace(&namespace);
        engine.apply_group(&spec, 1).await?;
        keys.push(spec.key());
    }
    // Let the writes' echoes arrive, then count from zero.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let setup: u64 = counts.lock().map(|c| c.values().sum()).unwrap_or(0);
    if let Ok(mut c) = counts.lock() {
        c.clear();
    }
    let began = Instant::now();
    let mut reads = 0u64;
    while began.elapsed() < Duration::from_secs(secs) {
        for k in &keys {
            let groups = engine.groups(k).await?;
            let instances = engine.instances(k).await?;
            reads += 2;
            assert_eq!(groups.len(), 1, "{k}: {groups:?}");
            assert!(instances.len() <= 1);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let minutes = began.elapsed().as_secs_f64() / 60.0;
    let counts = counts.lock().map(|c| c.clone()).unwrap_or_default();
    let total: u64 = counts.values().sum();
    let non_watch: u64 = counts
        .iter()
        .filter(|(k, _)| !k.ends_with("(watch)"))
        .map(|(_, n)| n)
        .sum();
    println!(
        "{apps} idle apps for {:.1} min, {reads} engine reads: {total} API requests \
         ({non_watch} not watches) = {:.3} requests per idle app per minute; setup took {setup} \
         requests; by kind: {counts:?}",
        minutes,
        total as f64 / apps as f64 / minutes
    );
    Ok(())
}
