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

/// A store whose compare-and-swap ignores the expected version (and yields on reads, so that
/// concurrent writers interleave): the suite catches the lost updates.
#[derive(Debug, Default)]
struct IgnoresVersions(
    parking_lot::Mutex<std::collections::BTreeMap<String, rorqual_core::engine::Versioned>>,
);

#[async_trait::async_trait]
impl rorqual_core::engine::StateStore for IgnoresVersions {
    async fn get(
        &self,
        key: &str,
    ) -> rorqual_core::Result<Option<rorqual_core::engine::Versioned>> {
        let read = self.0.lock().get(key).cloned();
        tokio::task::yield_now().await;
        Ok(read)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        _expected: Option<u64>,
        value: Option<Vec<u8>>,
    ) -> rorqual_core::Result<u64> {
        let mut map = self.0.lock();
        let version = map.get(key).map_or(1, |v| v.version + 1);
        match value {
            Some(value) => {
                map.insert(
                    key.to_owned(),
                    rorqual_core::engine::Versioned { value, version },
                );
                Ok(version)
            }
            None => {
                map.remove(key);
                Ok(0)
            }
        }
    }

    async fn list(
        &self,
        prefix: &str,
    ) -> rorqual_core::Result<Vec<(String, rorqual_core::engine::Versioned)>> {
        Ok(rorqual_core::engine::list_prefix(&self.0.lock(), prefix))
    }
}

#[tokio::test]
async fn the_suite_fails_a_store_that_loses_concurrent_updates() {
    let err = conformance::state_store_concurrent_writers(&IgnoresVersions::default(), "t/", 4, 5)
        .await
        .unwrap_err();
    assert_eq!(err.check, "state_store_concurrent_writers");
    assert!(
        err.detail.contains("an update was lost") || err.detail.contains("not 20"),
        "{err}"
    );
}
