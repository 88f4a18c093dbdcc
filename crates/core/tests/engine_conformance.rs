//! MemoryEngine and MemoryStateStore pass the engine conformance suite.
#![cfg(feature = "testing")]
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use rorqual_core::clock::ManualClock;
use rorqual_core::conformance::{self, Harness};
use rorqual_core::engine::MemoryStateStore;
use rorqual_core::memory::MemoryEngine;
use rorqual_core::model::{AppSpec, ContainerSpec, Resources};

fn harness() -> Harness {
    let clock = ManualClock::new();
    let engine = MemoryEngine::builder()
        .clock(clock.clone())
        .startup(Duration::from_secs(2))
        .uniform_nodes(2, Resources::new(4000, 4 << 30))
        .build();
    Harness::new(Arc::new(engine), |name, version| {
        AppSpec::new(
            name,
            vec![
                ContainerSpec::new("app", ["demo"])
                    .env("DEMO_VERSION", version)
                    .resources(Resources::new(100, 16 << 20)),
            ],
        )
    })
    .tick(move || {
        clock.advance(Duration::from_millis(500));
        tokio::task::yield_now()
    })
    .patience(100)
}

#[tokio::test]
async fn memory_engine_passes_the_conformance_suite() {
    conformance::run(&harness()).await.unwrap();
}

#[tokio::test]
async fn memory_state_store_passes_the_state_store_checks() {
    let store = MemoryStateStore::new();
    conformance::state_store_compare_and_swap(&store, "t/")
        .await
        .unwrap();
    conformance::state_store_concurrent_writers(&store, "t/", 8, 20)
        .await
        .unwrap();
}

/// The suite finds a broken engine: one whose groups never become ready.
#[tokio::test]
async fn the_suite_fails_an_engine_that_never_gets_ready() {
    let clock = ManualClock::new();
    let engine = MemoryEngine::builder()
        .clock(clock.clone())
        .startup(Duration::from_secs(3600))
        .uniform_nodes(2, Resources::new(4000, 4 << 30))
        .build();
    let h = Harness::new(Arc::new(engine), |name, version| {
        AppSpec::new(
            name,
            vec![ContainerSpec::new("app", ["demo"]).env("V", version)],
        )
    })
    .tick(tokio::task::yield_now)
    .patience(5);
    let err = conformance::apply_scale_delete_are_idempotent(&h)
        .await
        .unwrap_err();
    assert_eq!(err.check, "apply_scale_delete_are_idempotent");
    assert!(err.detail.contains("3 ready"), "{err}");
}
