//! How long `NginxRouter::set_split` takes end to end: look up the revisions' endpoints
//! (a `StaticEndpoints` map here), render, `nginx -t`, swap, SIGHUP, and wait until nginx
//! serves the new config version. This is the "plus one reload" in "from an
//! analysis failure to the stable revision serving 100% through nginx".
//!
//! `cargo bench -p rorqual-release --bench nginx_split` (needs /usr/sbin/nginx; prints
//! `skipped: …` without it). Runs 20 splits alternating between 80/20 and 100/0.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rorqual_core::model::{AppKey, Revision};
use rorqual_release::traffic::{
    Backend, NGINX_DEFAULT_BINARY, NginxRouter, StaticEndpoints, TrafficRouter, TrafficSplit,
};

const RUNS: usize = 20;

fn main() {
    if !std::path::Path::new(NGINX_DEFAULT_BINARY).exists() {
        println!("skipped: {NGINX_DEFAULT_BINARY} not installed (Debian package nginx-light)");
        return;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run()) {
        eprintln!("nginx_split failed: {e}");
        std::process::exit(1);
    }
}

async fn backend(name: &'static str) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(move || async move { name });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let stable = backend("v1").await?;
    let canary = backend("v2").await?;
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], rorqual_local::free_loopback_port()?));
    let app = AppKey::new("default", "web");
    let (v1, v2) = (Revision::from("v1"), Revision::from("v2"));
    let endpoints = StaticEndpoints::new()
        .with(&app, &v1, [stable])
        .with(&app, &v2, [canary]);
    let router = NginxRouter::builder(dir.path())
        .endpoints(Arc::new(endpoints))
        .route(app.clone(), listen)
        .build()?;
    let split = |w: u32| {
        TrafficSplit::new(vec![
            Backend::new(v1.clone(), 100 - w),
            Backend::new(v2.clone(), w),
        ])
    };
    let started = Instant::now();
    router.set_split(&app, &split(0)).await?;
    println!("first split (starts nginx): {:?}", started.elapsed());
    // No pooled connections: an idle keep-alive connection to a worker that a reload is
    // shutting down can be closed under a request sent on it.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let mut times: Vec<Duration> = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let w = if i % 2 == 0 { 20 } else { 0 };
        let t = Instant::now();
        router.set_split(&app, &split(w)).await?;
        times.push(t.elapsed());
        // Traffic in between, so every reload has connections to hand over.
        for _ in 0..20 {
            client
                .get(format!("http://{listen}/"))
                .send()
                .await?
                .text()
                .await?;
        }
    }
    // After the last (100/0) split only the stable revision answers.
    for _ in 0..50 {
        let body = client
            .get(format!("http://{listen}/"))
            .send()
            .await?
            .text()
            .await?;
        if body != "v1" {
            return Err(format!("canary answered after a 100/0 split: {body}").into());
        }
    }
    router.shutdown().await;
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "set_split end to end over {RUNS} runs: median {:.1} ms, p90 {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(times[RUNS / 2]),
        ms(times[RUNS * 9 / 10]),
        ms(times[0]),
        ms(times[RUNS - 1])
    );
    Ok(())
}
