//! The underlay address a placement reserves reaches the network: the engine records it with
//! the instance (persisted) and asks the network to attach exactly that address; a stopped
//! instance's reservation is released.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rorqual_core::engine::Engine;
use rorqual_core::model::{AppSpec, ContainerSpec, WorkloadKind};
use rorqual_core::network::{AttachRequest, Attachment, Network};
use rorqual_core::placement::{
    NodeView, Placement, PlacementDecision, PlacementRequest, ReservedAddress, least_allocated,
};
use rorqual_local::LocalEngine;
use rorqual_testkit::local::{Reaper, all_ready, wait_for};

/// Least-allocated placement that reserves `10.9.0.<ordinal + 1>` in pool `games` for every
/// instance that needs an underlay address, and records releases.
#[derive(Debug, Default)]
struct ReservingPlacement {
    released: Mutex<Vec<String>>,
}

#[async_trait]
impl Placement for ReservingPlacement {
    async fn place(
        &self,
        request: &PlacementRequest,
        nodes: &[NodeView],
    ) -> rorqual_core::Result<PlacementDecision> {
        let decision = least_allocated(request, nodes)?;
        Ok(match &request.underlay {
            Some(need) => {
                assert_eq!(need.pool.as_deref(), Some("games"));
                let last = u8::try_from(request.ordinal.unwrap_or(0) + 1).unwrap();
                decision.with_address(ReservedAddress::new(
                    "games",
                    IpAddr::from([10, 9, 0, last]),
                ))
            }
            None => decision,
        })
    }

    async fn release(&self, instance: &str) -> rorqual_core::Result<()> {
        self.released.lock().unwrap().push(instance.to_owned());
        Ok(())
    }
}

/// Attaches each instance at the reserved address (loopback otherwise), recording requests.
#[derive(Debug, Default)]
struct RecordingNetwork {
    requests: Mutex<Vec<AttachRequest>>,
}

#[async_trait]
impl Network for RecordingNetwork {
    async fn attach(&self, request: &AttachRequest) -> rorqual_core::Result<Attachment> {
        self.requests.lock().unwrap().push(request.clone());
        let address = request
            .reserved
            .as_ref()
            .map_or(IpAddr::from([127, 0, 0, 1]), |r| r.address);
        Ok(Attachment::new(address, BTreeMap::new()))
    }

    async fn detach(&self, _instance: &str) -> rorqual_core::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reserved_address_is_attached_persisted_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_owned());
    let placement = Arc::new(ReservingPlacement::default());
    let network = Arc::new(RecordingNetwork::default());
    let engine = LocalEngine::builder()
        .nodes(2)
        .placement(placement.clone())
        .network(network.clone())
        .state_dir(dir.path())
        .restart_backoff(Duration::from_millis(100), Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let spec = AppSpec::from_yaml(
        "name: game\nkind: stateful\ncontainers: [{name: app, command: [sleep, '600']}]\n\
         terminationGracePeriodSeconds: 1\nunderlay: {pool: games, fixedIp: true}\n",
    )
    .unwrap();
    let key = spec.key();
    engine.apply_group(&spec, 2).await.unwrap();
    let ready = all_ready(&engine, &key, 2).await;
    let addresses: Vec<String> = ready
        .iter()
        .map(|i| i.address.unwrap().to_string())
        .collect();
    assert_eq!(addresses, ["10.9.0.1", "10.9.0.2"]);
    {
        let requests = network.requests.lock().unwrap();
        let reserved: Vec<_> = requests
            .iter()
            .map(|r| (r.instance.clone(), r.reserved.clone()))
            .collect();
        assert_eq!(
            reserved,
            [
                (
                    "game-0".to_owned(),
                    Some(ReservedAddress::new("games", IpAddr::from([10, 9, 0, 1])))
                ),
                (
                    "game-1".to_owned(),
                    Some(ReservedAddress::new("games", IpAddr::from([10, 9, 0, 2])))
                ),
            ]
        );
    }
    // Persisted with the instance.
    let persisted = wait_for(10, "the reservation in the state file", || async {
        let state = rorqual_testkit::local::newest_engine_state(dir.path())?;
        let reserved = state["instances"]["game-1"]["reserved"].clone();
        (!reserved.is_null()).then_some(reserved)
    })
    .await;
    assert_eq!(
        persisted,
        serde_json::json!({"pool": "games", "address": "10.9.0.2"})
    );

    // Scaling down stops game-1 and releases its placement.
    engine.scale_group(&key, &spec.revision(), 1).await.unwrap();
    wait_for(20, "game-1 released", || async {
        placement
            .released
            .lock()
            .unwrap()
            .iter()
            .any(|id| id == "game-1")
            .then_some(())
    })
    .await;
    // A stateless spec without underlay reserves nothing.
    let plain = AppSpec::new("web", vec![ContainerSpec::new("app", ["sleep", "600"])])
        .kind(WorkloadKind::Stateless)
        .grace_period_seconds(1);
    engine.apply_group(&plain, 1).await.unwrap();
    let web = all_ready(&engine, &plain.key(), 1).await;
    assert_eq!(web[0].address.unwrap().to_string(), "127.0.0.1");
    engine.shutdown().await.unwrap();
}
