//! The nginx router against a real nginx (Debian `nginx-light`) started by the test under a
//! temp prefix, with tiny HTTP backends on loopback whose addresses the router finds through
//! a `StaticEndpoints` map.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rorqual_core::model::{AppKey, Revision};
use rorqual_release::traffic::{
    Backend, NGINX_DEFAULT_BINARY, NginxRouter, NginxRouterBuilder, StaticEndpoints, TrafficError,
    TrafficRouter, TrafficSplit, Verification,
};

/// `true` when nginx is installed; otherwise prints why the test is skipped, or fails under CI.
fn nginx_available() -> bool {
    rorqual_testkit::installed_or_skip(NGINX_DEFAULT_BINARY, "nginx-light")
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

fn v1() -> Revision {
    Revision::from("v1")
}

fn v2() -> Revision {
    Revision::from("v2")
}

/// v1 at `100 - canary_weight`, v2 at `canary_weight`.
fn split(canary_weight: u32) -> TrafficSplit {
    TrafficSplit::new(vec![
        Backend::new(v1(), 100 - canary_weight),
        Backend::new(v2(), canary_weight),
    ])
}

/// `app`'s v1 on `stable` and v2 on `canary`.
fn endpoints(app: &AppKey, stable: &TestBackend, canary: &TestBackend) -> Arc<StaticEndpoints> {
    Arc::new(
        StaticEndpoints::new()
            .with(app, &v1(), [stable.addr])
            .with(app, &v2(), [canary.addr]),
    )
}

/// A router under `prefix` finding endpoints in `endpoints`.
fn builder(prefix: &Path, endpoints: &Arc<StaticEndpoints>) -> NginxRouterBuilder {
    NginxRouter::builder(prefix).endpoints(endpoints.clone())
}

/// How many reloads (SIGHUP) nginx's error log shows so far.
fn reloads(router: &NginxRouter) -> usize {
    std::fs::read_to_string(router.error_log_path())
        .unwrap_or_default()
        .matches("(SIGHUP) received")
        .count()
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
    let router = builder(dir.path(), &endpoints(&app, &stable, &canary))
        .route(app.clone(), listen)
        .build()
        .unwrap();
    assert!(router.routes_traffic());
    router.set_split(&app, &split(20)).await.unwrap();
    assert_eq!(
        router.verify(&app, &split(20)).await.unwrap(),
        Verification::Verified
    );
    let client = fresh_client();
    let (v1, v2) = count(&client, listen, 1000).await;
    assert_eq!(v1 + v2, 1000);
    // 99.9% binomial interval for n=1000, p=0.2: 200 ± 3.29·sqrt(1000·0.2·0.8) ≈ [158, 242].
    assert!((158..=242).contains(&v2), "canary got {v2} of 1000");

    // Back to 100% stable: the canary revision (weight 0) leaves the upstream.
    router.set_split(&app, &split(0)).await.unwrap();
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
        builder(dir.path(), &endpoints(&app, &stable, &canary))
            .keep_versions(2)
            .route(app.clone(), listen)
            .build()
            .unwrap(),
    );
    router.set_split(&app, &split(50)).await.unwrap();
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
    router.set_split(&app, &split(0)).await.unwrap();
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
    let router = builder(dir.path(), &Arc::new(StaticEndpoints::new()))
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
    let err = router
        .set_split(&AppKey::new("x", "y"), &TrafficSplit::single(v1()))
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
    let other = AppKey::new("default", "api");
    let endpoints = endpoints(&app, &blue, &green);
    endpoints.set(&other, &v2(), [green.addr]);
    let router = builder(dir.path(), &endpoints)
        .route(app.clone(), active)
        .preview_route(app.clone(), preview)
        .build()
        .unwrap();
    assert_eq!(router.preview_addr(&app).await, Some(preview));
    router
        .set_split(&app, &TrafficSplit::single(v1()))
        .await
        .unwrap();
    let client = fresh_client();
    let only = |body: &str, n: usize| [(body.to_owned(), n)].into_iter().collect();
    assert_eq!(
        bodies(&client, preview, 5).await,
        only("503", 5),
        "no preview yet"
    );

    // A preview revision without a ready endpoint is refused; the preview stays empty.
    let err = router
        .set_preview(&app, Some(&Backend::preview(Revision::from("v3"))))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TrafficError::NoEndpoints { revision, .. } if revision.as_str() == "v3"),
        "{err}"
    );
    assert!(err.is_retryable());
    assert_eq!(bodies(&client, preview, 3).await, only("503", 3));

    let green_preview = Backend::preview(v2());
    router
        .set_preview(&app, Some(&green_preview))
        .await
        .unwrap();
    assert_eq!(
        router.current_preview(&app).await,
        Some(green_preview.clone())
    );
    let upstream = router.current_preview_upstream(&app).await.unwrap();
    assert_eq!(
        (upstream.revision, upstream.endpoints),
        (v2(), vec![green.addr])
    );
    assert_eq!(bodies(&client, preview, 50).await, only("v2", 50));
    assert_eq!(bodies(&client, active, 50).await, only("v1", 50));

    // The same preview again changes nothing (no reload).
    let (versions, sighups) = (router.versions().await.len(), reloads(&router));
    router
        .set_preview(&app, Some(&green_preview))
        .await
        .unwrap();
    assert_eq!(router.versions().await.len(), versions);
    assert_eq!(reloads(&router), sighups);

    // Promotion: active switches to v2 while preview still serves it; then preview empties.
    router
        .set_split(&app, &TrafficSplit::single(v2()))
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
    let half = Backend::new(v2(), 50);
    let err = router.set_preview(&other, Some(&half)).await.unwrap_err();
    assert!(err.to_string().contains("weight 50"), "{err}");
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_revision_without_endpoints_is_refused_and_the_old_config_keeps_serving() {
    if !nginx_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (stable, canary) = (backend("v1").await, backend("v2").await);
    let app = AppKey::new("default", "web");
    let listen = free_port();
    // v2 has no ready endpoint yet.
    let endpoints = Arc::new(StaticEndpoints::new().with(&app, &v1(), [stable.addr]));
    let router = builder(dir.path(), &endpoints)
        .route(app.clone(), listen)
        .build()
        .unwrap();
    router.set_split(&app, &split(0)).await.unwrap();
    let before = std::fs::read_to_string(router.config_path()).unwrap();
    let versions = router.versions().await;

    let err = router.set_split(&app, &split(20)).await.unwrap_err();
    match &err {
        TrafficError::NoEndpoints {
            router, revision, ..
        } => assert_eq!((router.as_str(), revision), ("nginx", &v2())),
        e => panic!("expected NoEndpoints, got {e}"),
    }
    assert!(err.is_retryable());
    assert_eq!(
        err.to_string(),
        "nginx found no ready endpoint for default/web revision v2"
    );
    assert_eq!(router.versions().await, versions, "nothing was applied");
    assert_eq!(
        std::fs::read_to_string(router.config_path()).unwrap(),
        before
    );
    assert_eq!(router.current_split(&app).await, Some(split(0)));
    assert_eq!(count(&fresh_client(), listen, 50).await, (50, 0));
    // The refused split is not what nginx routes.
    assert!(matches!(
        router.verify(&app, &split(20)).await.unwrap(),
        Verification::Failed(_)
    ));

    // Once v2 has an instance the same split applies.
    endpoints.add(&app, &v2(), canary.addr);
    router.set_split(&app, &split(50)).await.unwrap();
    let (v1, v2) = count(&fresh_client(), listen, 100).await;
    assert!(v1 > 0 && v2 > 0, "v1 {v1}, v2 {v2}");
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_split_reloads_only_when_the_endpoints_changed() {
    if !nginx_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (backend("a").await, backend("b").await);
    let app = AppKey::new("default", "web");
    let listen = free_port();
    let endpoints = Arc::new(StaticEndpoints::new().with(&app, &v1(), [a.addr]));
    let router = builder(dir.path(), &endpoints)
        .route(app.clone(), listen)
        .build()
        .unwrap();
    let all_v1 = TrafficSplit::single(v1());
    router.set_split(&app, &all_v1).await.unwrap();
    let client = fresh_client();
    let only = |body: &str, n: usize| [(body.to_owned(), n)].into_iter().collect();
    assert_eq!(bodies(&client, listen, 20).await, only("a", 20));

    // The same split with the same endpoints: no new version, no SIGHUP.
    let (versions, sighups) = (router.versions().await, reloads(&router));
    router.set_split(&app, &all_v1).await.unwrap();
    router.set_split(&app, &all_v1).await.unwrap();
    assert_eq!(router.versions().await, versions);
    assert_eq!(reloads(&router), sighups);
    assert_eq!(
        router.verify(&app, &all_v1).await.unwrap(),
        Verification::Verified
    );

    // A second v1 instance becomes ready: verify sees nginx lagging behind, and the same
    // split sent again reloads and sends traffic to it.
    endpoints.add(&app, &v1(), b.addr);
    match router.verify(&app, &all_v1).await.unwrap() {
        Verification::Failed(reason) => assert!(
            reason.contains(&format!("nginx routes to [{}]", a.addr))
                && reason.contains(&b.addr.to_string()),
            "{reason}"
        ),
        v => panic!("expected a failed verification, got {v:?}"),
    }
    router.set_split(&app, &all_v1).await.unwrap();
    assert_eq!(router.versions().await.len(), versions.len() + 1);
    assert_eq!(reloads(&router), sighups + 1);
    let diff = router.versions().await.last().unwrap().diff.clone();
    assert!(
        diff.contains(&format!("+        server {} weight=5000;", b.addr)),
        "{diff}"
    );
    let seen = bodies(&client, listen, 100).await;
    // Two servers of equal weight: nginx's round robin alternates between them.
    assert!(
        (40..=60).contains(seen.get("b").unwrap_or(&0)) && seen.len() == 2,
        "{seen:?}"
    );
    assert_eq!(
        router.verify(&app, &all_v1).await.unwrap(),
        Verification::Verified
    );
    let upstream = router.current_upstream(&app).await;
    let mut both = vec![a.addr, b.addr];
    both.sort();
    assert_eq!(upstream.len(), 1);
    assert_eq!(upstream[0].endpoints, both);

    // The first instance goes away: the next split drops it.
    endpoints.remove(&app, &v1(), a.addr);
    router.set_split(&app, &all_v1).await.unwrap();
    assert_eq!(bodies(&client, listen, 20).await, only("b", 20));
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_what_differs_from_the_split() {
    if !nginx_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (stable, canary) = (backend("v1").await, backend("v2").await);
    let app = AppKey::new("default", "web");
    let router = builder(dir.path(), &endpoints(&app, &stable, &canary))
        .route(app.clone(), free_port())
        .build()
        .unwrap();
    let failed = |v: Verification| match v {
        Verification::Failed(reason) => reason,
        v => panic!("expected a failed verification, got {v:?}"),
    };
    let reason = failed(router.verify(&app, &split(20)).await.unwrap());
    assert!(reason.contains("no split yet"), "{reason}");

    router.set_split(&app, &split(20)).await.unwrap();
    assert_eq!(
        router.verify(&app, &split(20)).await.unwrap(),
        Verification::Verified
    );
    // Other weights than nginx routes.
    let reason = failed(router.verify(&app, &split(50)).await.unwrap());
    assert!(
        reason.contains("as v1 80%, v2 20%, not v1 50%, v2 50%"),
        "{reason}"
    );

    // Someone edits the live config: verify notices, and the same split puts it right.
    let path = router.config_path();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("# edited by hand\n");
    std::fs::write(&path, text).unwrap();
    let reason = failed(router.verify(&app, &split(20)).await.unwrap());
    assert!(reason.contains("changed outside the router"), "{reason}");
    let versions = router.versions().await.len();
    router.set_split(&app, &split(20)).await.unwrap();
    assert_eq!(router.versions().await.len(), versions + 1);
    assert_eq!(
        router.verify(&app, &split(20)).await.unwrap(),
        Verification::Verified
    );

    // An application the router does not serve cannot be verified at all.
    let err = router
        .verify(&AppKey::new("x", "y"), &split(20))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("x/y is not routed"), "{err}");
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
