//! Writes per second of the LocalEngine's controller state store (`FileStateStore`).
//!
//! For n = 1,000 and 10,000 keys: filling the store (n creates), then updates of existing keys
//! by one writer, then by 16 concurrent writers. Every write is durable when it returns.
//!
//! ```text
//! cargo bench -p rorqual-local --bench state_store
//! ```
//!
//! `STATE_STORE_BENCH_SECS` bounds each update phase (default 5 s); `STATE_STORE_BENCH_N`
//! replaces the key counts (comma-separated). Without `--bench` (as `cargo test --all-targets`
//! runs it) it is a smoke run: 100 keys, 50 ms per phase.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rorqual_core::engine::StateStore;
use rorqual_local::FileStateStore;

/// A value the size of a small rollout record.
fn value(i: usize, round: u64) -> Vec<u8> {
    format!(
        r#"{{"app":"default/app-{i}","revision":"r{round}","step":3,"phase":"Progressing","weights":{{"stable":80,"canary":20}},"message":"step 3 of 5: set weight 20, waiting for analysis run app-{i}-3 to finish","updated":"2026-01-01T00:00:00Z"}}"#
    )
    .into_bytes()
}

fn key(i: usize) -> String {
    format!("rollouts/default/app-{i:06}")
}

async fn run(n: usize, budget: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.json");
    let store = Arc::new(FileStateStore::open(&path).unwrap());

    let start = Instant::now();
    for i in 0..n {
        store
            .compare_and_swap(&key(i), None, Some(value(i, 1)))
            .await
            .unwrap();
    }
    let fill = start.elapsed();
    println!(
        "n={n:>6} fill            {n:>7} writes in {:>8.2?}: {:>9.0} writes/s",
        fill,
        n as f64 / fill.as_secs_f64()
    );

    // One writer updating existing keys, until the budget is spent.
    let mut versions = vec![1u64; n];
    let start = Instant::now();
    let mut writes = 0usize;
    while start.elapsed() < budget {
        let i = fastrand::usize(0..n);
        versions[i] = store
            .compare_and_swap(&key(i), Some(versions[i]), Some(value(i, versions[i] + 1)))
            .await
            .unwrap();
        writes += 1;
    }
    let took = start.elapsed();
    println!(
        "n={n:>6} update 1 writer {writes:>7} writes in {took:>8.2?}: {:>9.0} writes/s",
        writes as f64 / took.as_secs_f64()
    );

    // 16 writers, each on its own slice of keys.
    let writers = 16;
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut writes = 0usize;
                let mut i = w;
                while start.elapsed() < budget {
                    let current = store.get(&key(i)).await.unwrap().unwrap().version;
                    store
                        .compare_and_swap(&key(i), Some(current), Some(value(i, current + 1)))
                        .await
                        .unwrap();
                    writes += 1;
                    i = (i + writers) % n;
                }
                writes
            })
        })
        .collect();
    let mut writes = 0;
    for t in tasks {
        writes += t.await.unwrap();
    }
    let took = start.elapsed();
    println!(
        "n={n:>6} update {writers} writers {writes:>6} writes in {took:>8.2?}: {:>9.0} writes/s",
        writes as f64 / took.as_secs_f64()
    );

    drop(store);
    let size = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum::<u64>();
    let start = Instant::now();
    let reopened = FileStateStore::open(&path).unwrap();
    let open = start.elapsed();
    assert_eq!(reopened.list("").await.unwrap().len(), n);
    println!(
        "n={n:>6} reopen {open:>8.2?}, {:.1} MiB on disk",
        size as f64 / (1 << 20) as f64
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not.
    let full = std::env::args().any(|a| a == "--bench");
    let budget = if full {
        Duration::from_secs(
            std::env::var("STATE_STORE_BENCH_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(5),
        )
    } else {
        Duration::from_millis(50)
    };
    let ns: Vec<usize> = if full {
        std::env::var("STATE_STORE_BENCH_N")
            .ok()
            .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![1_000, 10_000])
    } else {
        vec![100]
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for n in ns {
        rt.block_on(run(n, budget));
    }
}
