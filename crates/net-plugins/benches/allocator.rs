//! Allocate + release throughput: the pure logic, the memory store, and the file store.
// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rorqual_net::store::file::FileStore;
use rorqual_net::store::memory::MemoryStore;
use rorqual_net::{AllocRequest, Allocator, IpRange, Owner, PoolSpec, PoolState};

fn spec(name: &str) -> PoolSpec {
    PoolSpec::new(name).with_range(IpRange::new("10.0.0.0/16".parse().expect("cidr")))
}

/// Pools with 1,000 existing allocations, as in the CNI comparison.
fn prefill(state: &mut PoolState) {
    for i in 0..1000 {
        state
            .allocate(&AllocRequest::new(Owner::new(format!("pre{i}"), "eth0")), 0)
            .expect("prefill");
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("allocate_release");
    g.throughput(Throughput::Elements(2));
    g.sample_size(20);
    g.measurement_time(std::time::Duration::from_secs(3));

    let mut state = PoolState::new(spec("pure")).expect("spec");
    prefill(&mut state);
    let req = AllocRequest::new(Owner::new("bench", "eth0"));
    let owner = req.owner.clone();
    g.bench_function("pool_state", |b| {
        b.iter(|| {
            state.allocate(&req, 1).expect("allocate");
            state.release(&owner, 1);
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let store = Arc::new(MemoryStore::new());
    let alloc = Allocator::new(store);
    let mut s = spec("mem");
    s.claim_keep_secs = 0;
    rt.block_on(alloc.create_pool(s)).expect("create");
    for i in 0..1000 {
        rt.block_on(alloc.allocate(
            "mem",
            &AllocRequest::new(Owner::new(format!("pre{i}"), "eth0")),
        ))
        .expect("prefill");
    }
    g.bench_function("memory_store", |b| {
        b.iter(|| {
            rt.block_on(async {
                alloc.allocate("mem", &req).await.expect("allocate");
                alloc.release("mem", &owner).await.expect("release");
            })
        })
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let falloc = Allocator::new(Arc::new(FileStore::open(dir.path()).expect("store")));
    rt.block_on(falloc.create_pool(spec("file")))
        .expect("create");
    let mut st = PoolState::new(spec("file")).expect("spec");
    prefill(&mut st);
    let fstore = FileStore::open(dir.path()).expect("store");
    fstore
        .update_sync("file", &mut |s: &mut PoolState| {
            *s = st.clone();
            Ok(true)
        })
        .expect("prefill");
    g.sample_size(10);
    g.bench_function("file_store_1000_allocated", |b| {
        b.iter(|| {
            rt.block_on(async {
                falloc.allocate("file", &req).await.expect("allocate");
                falloc.release("file", &owner).await.expect("release");
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
