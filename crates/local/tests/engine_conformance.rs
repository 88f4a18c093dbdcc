//! LocalEngine (real processes) and FileStateStore pass the engine conformance suite.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use rorqual_core::conformance::{self, Harness};
use rorqual_core::engine::Engine;
use rorqual_local::FileStateStore;
use rorqual_testkit::local::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_engine_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_owned());
    let engine = Arc::new(builder(dir.path(), 27200).build().await.unwrap());
    let h = Harness::new(engine.clone(), |name, version| {
        let mut spec = demo(name);
        spec.containers[0] = spec.containers[0].clone().env("DEMO_VERSION", version);
        spec
    })
    .tick(|| tokio::time::sleep(Duration::from_millis(100)))
    .patience(300);
    let result = conformance::run(&h).await;
    engine.shutdown().await.unwrap();
    result.unwrap();
}

#[tokio::test]
async fn file_state_store_passes_the_state_store_checks() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStateStore::open(dir.path().join("store.json")).unwrap();
    conformance::state_store_compare_and_swap(&store, "t/")
        .await
        .unwrap();
    conformance::state_store_concurrent_writers(&store, "t/", 8, 20)
        .await
        .unwrap();
}
