//! Pools of one store never share an address: creating or changing a pool so that it overlaps
//! another is refused, naming both pools and an address, and changes nothing.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rorqual_net::store::memory::MemoryStore;
use rorqual_net::{AllocRequest, Allocator, IpRange, Owner, PoolError, PoolSpec};

fn range(cidr: &str) -> IpRange {
    IpRange::new(cidr.parse().unwrap())
}

#[tokio::test]
async fn overlapping_pools_are_refused_and_nothing_changes() {
    let alloc = Allocator::new(Arc::new(MemoryStore::new()));
    alloc
        .create_pool(PoolSpec::new("a").with_range(range("10.5.0.0/24")))
        .await
        .unwrap();
    let held = alloc
        .allocate("a", &AllocRequest::new(Owner::new("c1", "eth0")))
        .await
        .unwrap();
    let err = alloc
        .create_pool(PoolSpec::new("b").with_range(range("10.5.0.128/25")))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "pool `b` overlaps pool `a`: both could hand out 10.5.0.129"
    );
    assert!(matches!(err, PoolError::Overlaps { .. }));
    assert_eq!(alloc.pools().await.unwrap(), ["a"]);
    // Disjoint: fine. Then widening it onto `a` is refused and leaves it as it was.
    let b = PoolSpec::new("b").with_range(range("10.5.1.0/24"));
    alloc.create_pool(b.clone()).await.unwrap();
    let err = alloc
        .ensure_pool(PoolSpec::new("b").with_range(range("10.5.0.0/23")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("overlaps pool `a`"), "{err}");
    assert_eq!(alloc.pool("b").await.unwrap().spec(), &b);
    assert_eq!(
        alloc
            .lookup("a", &Owner::new("c1", "eth0"))
            .await
            .unwrap()
            .map(|x| x.address),
        Some(held.address),
        "nothing allocated was lost"
    );
}
