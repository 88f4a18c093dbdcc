//! The nginx router against a real nginx (Debian `nginx-light`) started by the test under a
//! temp prefix, with two tiny HTTP backends on loopback.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rorqual_core::model::{AppKey, Revision};
use rorqual_release::traffic::{
    Backend, NGINX_DEFAULT_BINARY, NginxRouter, TrafficError, TrafficRouter, TrafficSplit,
};

/// `true` when nginx is installed; otherwise prints why the test is skipped, or fails under CI.
fn nginx_available() -> bool {
    if Path::new(NGINX_DEFAULT_BINARY).exists() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{NGINX_DEFAULT_BINARY} is missing (install nginx-light); required when CI=true"
    );
    println!("skipped: {NGINX_DEFAULT_BINARY} not installed (Debian package nginx-light)");
    false
}

/// A backend answering `name` on every path; stopped when dropped.
struct TestBackend {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn backend(name: &'static str) -> TestBackend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move || async move { name });
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    TestBackend { addr, task }
}

fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], rorqual_local::free_loopback_port().unwrap()))
}

fn split(stable: &TestBackend, canary: &TestBackend, canary_weight: u32) -> TrafficSplit {
    TrafficSplit::new(vec![
        Backend::new(Revision::from("v1"), 100 - canary_weight, vec![stable.addr]),
        Backend::new(Revision::from("v2"), canary_weight, vec![canary.addr]),
    ])
}

async fn count(client: &reqwest::Client, listen: SocketAddr, n: usize) -> (usize, usize) {
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..n {
        let resp = client
            .get(format!("http://{listen}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        match resp.text().await.unwrap().as_str() {
            "v1" => v1 += 1,
            "v2" => v2 += 1,
            other => panic!("unexpected body {other:?}"),
        }
    }
    (v1, v2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_weight_20_percent_over_1000_requests() {
    if !nginx_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (stable, canary) = (backend("v1").await, backend("v2").await);
    let app = AppKey::new("default", "web");
    let listen = free_port();
    let router = NginxRouter::builder(dir.path())
        .route(app.clone(), listen)
        .build()
        .unwrap();
    assert!(router.routes_traffic());
    router
        .set_split(&app, &split(&stable, &canary, 20))
        .await
        .unwrap();
    let client = fresh_client();
    let (v1, v2) = count(&client, listen, 1000).await;
    assert_eq!(v1 + v2, 1000);
    // 99.9% binomial interval for n=1000, p=0.2: 200 ± 3.29·sqrt(1000·0.2·0.8) ≈ [158, 242].
    assert!((158..=242).contains(&v2), "canary got {v2} of 1000");

    // Back to 100% stable: the canary revision (weight 0) leaves the upstream.
    router
        .set_split(&app, &split(&stable, &canary, 0))
        .await
        .unwrap();
    let (v1, v2) = count(&client, listen, 100).await;
    assert_eq!((v1, v2), (100, 0));

    let versions = router.versions().await;
    assert_eq!(versions.len(), 2);
    assert!(versions[0].diff.is_empty());
    let diff = &versions[1].diff;
    assert!(
        diff.contains(&format!("-        server {} weight=2000;", canary.addr)),
        "{diff}"
    );
    assert!(
        diff.contains(&format!("+        server {} weight=10000;", stable.addr)),
        "{diff}"
    );
    let on_disk = std::fs::read_to_string(router.config_path()).unwrap();
    assert_eq!(on_disk, versions[1].config);
    router.shutdown().await;
    assert!(
        client
            .get(format!("http://{listen}/"))
            .send()
            .await
            .is_err(),
        "nginx still serving after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reload_restores_previous_config_and_traffic_keeps_flowing() {
    if !nginx_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (stable, canary) = (backend("v1").await, backend("v2").await);
    let app = AppKey::new("default", "web");
    let listen = free_port();
    let router = Arc::new(
        NginxRouter::builder(dir.path())
            .keep_versions(2)
            .route(app.clone(), listen)
            .build()
            .unwrap(),
    );
    router
        .set_split(&app, &split(&stable, &canary, 50))
        .await
        .unwrap();
    let before = std::fs::read_to_string(router.config_path()).unwrap();

    // Traffic keeps running during the failed reload.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let client = fresh_client();
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match client.get(format!("http://{listen}/")).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    // `nginx -t` does not bind, so a second app on a port someone else holds passes the check
    // and fails in the reload itself.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = squatter.local_addr().unwrap();
    let other = AppKey::new("default", "api");
    let err = router.add_route(&other, busy).await.unwrap_err();
    match &err {
        TrafficError::ReloadFailed { reason, .. } => {
            assert!(
                reason.contains("bind()") || reason.contains("in use"),
                "{reason}"
            );
        }
        e => panic!("expected ReloadFailed, got {e}"),
    }
    assert!(err.is_retryable());
    assert!(err.reason().contains("previous config restored"), "{err}");
    assert_eq!(
        std::fs::read_to_string(router.config_path()).unwrap(),
        before
    );
    assert_eq!(router.listen_addr(&other).await, None);

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 10, "only {ok} requests got through");
    assert_eq!(
        failed, 0,
        "{failed} requests failed during the failed reload ({ok} ok)"
    );

    // The router still works: a new split applies (after nginx gave up binding).
    drop(squatter);
    router
        .set_split(&app, &split(&stable, &canary, 0))
        .await
        .unwrap();
    let (v1, v2) = count(&fresh_client(), listen, 20).await;
    assert_eq!((v1, v2), (20, 0));
    let versions = router.versions().await;
    assert_eq!(versions.len(), 2, "keep_versions(2)");
    assert!(versions[1].version > versions[0].version);
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_rejected_by_nginx_t_before_anything_changes() {
    if !nginx_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let app = AppKey::new("default", "web");
    let router = NginxRouter::builder(dir.path())
        .http_snippet("no_such_directive on;")
        .route(app.clone(), free_port())
        .build()
        .unwrap();
    let err = router.start().await.unwrap_err();
    match &err {
        TrafficError::ValidationFailed { reason, .. } => {
            assert!(
                reason.contains("unknown directive \"no_such_directive\""),
                "{reason}"
            );
        }
        e => panic!("expected ValidationFailed, got {e}"),
    }
    assert!(
        !router.config_path().exists(),
        "a rejected config must not be installed"
    );
    assert!(router.versions().await.is_empty());

    // A split for an app the router does not serve is refused without touching nginx.
    let be = backend("v1").await;
    let err = router
        .set_split(
            &AppKey::new("x", "y"),
            &TrafficSplit::single(Revision::from("a"), vec![be.addr]),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("x/y is not routed"), "{err}");
}

/// Bodies of `n` requests to `listen`, counted (`"503"` for a 503 answer).
/// A client that opens a new connection per request. nginx lets a worker of the previous
/// configuration finish the kept-alive connections it holds, so a pooled connection may get one
/// more answer from the old configuration after a reload; new connections see the new one only.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn bodies(
    client: &reqwest::Client,
    listen: SocketAddr,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        let resp = client
            .get(format!("http://{listen}/"))
            .send()
            .await
            .unwrap();
        let body = if resp.status() == 503 {
            "503".to_owned()
        } else {
            assert_eq!(resp.status(), 200);
            resp.text().await.unwrap()
        };
        *seen.entry(body).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_listener_serves_the_new_revision_while_active_serves_the_old_one() {
    if !nginx_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (blue, green) = (backend("v1").await, backend("v2").await);
    let app = AppKey::new("default", "shop");
    let (active, preview) = (free_port(), free_port());
    let router = NginxRouter::builder(dir.path())
        .route(app.clone(), active)
        .preview_route(app.clone(), preview)
        .build()
        .unwrap();
    assert_eq!(router.preview_addr(&app).await, Some(preview));
    router
        .set_split(
            &app,
            &TrafficSplit::single(Revision::from("v1"), vec![blue.addr]),
        )
        .await
        .unwrap();
    let client = fresh_client();
    let only = |body: &str, n: usize| [(body.to_owned(), n)].into_iter().collect();
    assert_eq!(
        bodies(&client, preview, 5).await,
        only("503", 5),
        "no preview yet"
    );

    let green_preview = Backend::preview(Revision::from("v2"), vec![green.addr]);
    router
        .set_preview(&app, Some(&green_preview))
        .await
        .unwrap();
    assert_eq!(
        router.current_preview(&app).await,
        Some(green_preview.clone())
    );
    assert_eq!(bodies(&client, preview, 50).await, only("v2", 50));
    assert_eq!(bodies(&client, active, 50).await, only("v1", 50));

    // The same preview again changes nothing (no reload).
    let versions = router.versions().await.len();
    router
        .set_preview(&app, Some(&green_preview))
        .await
        .unwrap();
    assert_eq!(router.versions().await.len(), versions);

    // Promotion: active switches to v2 while preview still serves it; then preview empties.
    router
        .set_split(
            &app,
            &TrafficSplit::single(Revision::from("v2"), vec![green.addr]),
        )
        .await
        .unwrap();
    assert_eq!(bodies(&client, active, 20).await, only("v2", 20));
    assert_eq!(bodies(&client, preview, 20).await, only("v2", 20));
    router.set_preview(&app, None).await.unwrap();
    assert_eq!(bodies(&client, preview, 5).await, only("503", 5));
    assert_eq!(bodies(&client, active, 20).await, only("v2", 20));
    assert_eq!(router.current_preview(&app).await, None);
    let diff = router.versions().await.last().unwrap().diff.clone();
    assert!(
        diff.contains(&format!(
            "-        server {} weight=10000; # revision v2",
            green.addr
        )) && diff.contains("+            return 503;"),
        "{diff}"
    );

    // A preview route can be added later; an app without one has no preview service, and a
    // preview must be one revision at weight 100.
    let other = AppKey::new("default", "api");
    router.add_route(&other, free_port()).await.unwrap();
    let err = router
        .set_preview(&other, Some(&green_preview))
        .await
        .unwrap_err();
    assert!(matches!(err, TrafficError::Unsupported { .. }), "{err}");
    assert!(
        err.to_string().contains("no preview route configured"),
        "{err}"
    );
    let taken = router.add_preview_route(&other, active).await.unwrap_err();
    assert!(taken.to_string().contains("already listens"), "{taken}");
    let other_preview = free_port();
    router
        .add_preview_route(&other, other_preview)
        .await
        .unwrap();
    router
        .set_preview(&other, Some(&green_preview))
        .await
        .unwrap();
    assert_eq!(bodies(&client, other_preview, 10).await, only("v2", 10));
    let half = Backend::new(Revision::from("v2"), 50, vec![green.addr]);
    let err = router.set_preview(&other, Some(&half)).await.unwrap_err();
    assert!(err.to_string().contains("weight 50"), "{err}");
    router.shutdown().await;
}

/// The prefix the golden configs are rendered with (see `src/traffic/nginx/golden.rs`).
const GOLDEN_PREFIX: &str = "/var/lib/rorqual/nginx";

#[test]
fn nginx_t_accepts_every_golden_config() {
    if !nginx_available() {
        return;
    }
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/nginx");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&golden).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("conf") {
            continue;
        }
        // Each file in its own prefix: nginx -t opens the logs and checks the temp paths.
        let prefix = tempfile::tempdir().unwrap();
        for dir in ["logs", "tmp/client", "tmp/proxy"] {
            std::fs::create_dir_all(prefix.path().join(dir)).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(GOLDEN_PREFIX), "{}", path.display());
        let conf = prefix.path().join("nginx.conf");
        std::fs::write(
            &conf,
            text.replace(GOLDEN_PREFIX, &prefix.path().display().to_string()),
        )
        .unwrap();
        let out = std::process::Command::new(NGINX_DEFAULT_BINARY)
            .arg("-p")
            .arg(prefix.path())
            .arg("-e")
            .arg(prefix.path().join("logs/error.log"))
            .arg("-t")
            .arg("-c")
            .arg(&conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nginx -t rejected {}:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    assert!(
        checked.len() >= 5,
        "expected the golden configs under {}, found {checked:?}",
        golden.display()
    );
    println!("nginx -t accepted {checked:?}");
}
