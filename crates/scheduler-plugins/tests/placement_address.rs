//! `Scheduler` as core's `Placement` reports the underlay address its UnderlayIp plugin
//! reserved, for the engine to attach exactly that address; releasing gives it back.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::sync::Arc;

use rorqual_core::model::{AppSpec, ContainerSpec, Node, Resources, UnderlaySpec};
use rorqual_core::placement::{NodeView, Placement, PlacementRequest, ReservedAddress};
use rorqual_scheduler::Scheduler;
use rorqual_scheduler::plugins::{DefaultPlugins, MemoryIpCapacity};

fn views() -> Vec<NodeView> {
    ["a", "b"]
        .iter()
        .map(|n| NodeView::new(Node::new(*n, Resources::new(2000, 4 << 30))))
        .collect()
}

fn spec(pool: Option<&str>) -> AppSpec {
    AppSpec::new("game", vec![ContainerSpec::new("server", ["/bin/game"])]).underlay(UnderlaySpec {
        pool: pool.map(str::to_owned),
        fixed_ip: false,
    })
}

#[tokio::test]
async fn the_decision_carries_the_reserved_address() {
    let cap = Arc::new(MemoryIpCapacity::new());
    cap.add_pool("p", ["b"], [IpAddr::from([10, 0, 0, 1])]);
    let scheduler = Scheduler::new(DefaultPlugins::new().underlay(cap.clone()).build().unwrap());
    let placement: Arc<dyn Placement> = Arc::new(scheduler);
    let views = views();

    let s = spec(Some("p"));
    let request = PlacementRequest::from_spec(&s, "game-x", s.revision(), None, None);
    let decision = placement.place(&request, &views).await.unwrap();
    assert_eq!(decision.node, "b", "only b is in the pool");
    assert_eq!(
        decision.address,
        Some(ReservedAddress::new("p", IpAddr::from([10, 0, 0, 1])))
    );
    assert_eq!(cap.free("p"), 0);

    // Exhausted: the next one does not fit, naming why.
    let other = PlacementRequest::from_spec(&s, "game-y", s.revision(), None, None);
    let err = placement
        .place(&other, &views)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("underlay"), "{err}");

    // Released: the address is free again, and a request for any pool gets it, with its
    // pool.
    placement.release("game-x").await.unwrap();
    assert_eq!(cap.free("p"), 1);
    let any = spec(None);
    let request = PlacementRequest::from_spec(&any, "game-z", any.revision(), None, None);
    let decision = placement.place(&request, &views).await.unwrap();
    assert_eq!(decision.node, "b");
    assert_eq!(
        decision.address,
        Some(ReservedAddress::new("p", IpAddr::from([10, 0, 0, 1])))
    );

    // No underlay need: no address.
    let plain = AppSpec::new("web", vec![ContainerSpec::new("app", ["/bin/web"])]);
    let request = PlacementRequest::from_spec(&plain, "web-x", plain.revision(), None, None);
    assert_eq!(
        placement.place(&request, &views).await.unwrap().address,
        None
    );
}
