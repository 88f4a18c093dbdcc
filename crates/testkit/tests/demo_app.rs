//! The `rorqual-demo` binary as the tests and examples run it: a real process on a loopback
//! port answering its version, health and metrics, counting errors at its configured rate.
//!
//! Being an integration test of this package, it also makes `cargo test --workspace` build the
//! binary that `rorqual_testkit::demo_bin()` hands to other packages' tests.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use rorqual_testkit::free_loopback_port;
use rorqual_testkit::local::{http_get, wait_for};

#[tokio::test]
async fn the_demo_binary_serves_version_health_and_error_counts() {
    let port = free_loopback_port().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rorqual-demo"))
        .env("PORT", port.to_string())
        .env("DEMO_VERSION", "v7")
        .env("DEMO_ERROR_RATE", "0.5")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(10, "the demo app to answer /healthz", || async move {
        matches!(http_get(addr, "/healthz").await, Ok((200, _))).then_some(())
    })
    .await;

    let mut codes = Vec::new();
    for _ in 0..10 {
        let (code, body) = http_get(addr, "/").await.unwrap();
        if code == 200 {
            assert_eq!(body.trim(), "v7");
        }
        codes.push(code);
    }
    let errors = codes.iter().filter(|&&c| c == 500).count();
    assert_eq!(
        errors, 5,
        "a 0.5 error rate fails exactly half of 10 requests: {codes:?}"
    );

    let (code, metrics) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains(r#"demo_http_requests_total{code="200"} 5"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"demo_http_requests_total{code="500"} 5"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"demo_info{version="v7"} 1"#),
        "{metrics}"
    );

    child.kill().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn demo_bin_points_at_the_built_binary() {
    let path = rorqual_testkit::demo_bin();
    assert!(std::path::Path::new(path).exists(), "{path} does not exist");
    assert!(path.ends_with("rorqual-demo"));
}
