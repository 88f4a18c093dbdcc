//! KubeEngine against a real kube-apiserver v1.20.2 with its controller-manager (the shared
//! test control plane): what it writes (server-side apply, field managers, labels), what it
//! refuses (unmanaged objects, specs the cluster cannot express, unreachable or unauthorised
//! servers), and what it reads back through its reflectors (the ReplicaSet and StatefulSet
//! controllers' pods, events).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions unwrap too

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use rorqual_core::engine::Engine;
use rorqual_core::error::Error;
use rorqual_core::model::{AppKey, AppSpec, ContainerSpec, WorkloadKind};
use rorqual_kube::engine::names::{FIELD_MANAGER, SCALE_MANAGER};
use rorqual_kube::testenv::{TestEnv, eventually};
use rorqual_kube::{ConfigMapStateStore, KubeEngine, testenv_or_skip};

fn spec(ns: &str, name: &str, version: &str) -> AppSpec {
    AppSpec::new(
        name,
        vec![
            ContainerSpec::new("app", ["/bin/sleep", "3600"])
                .env("VERSION", version)
                .port("http", 8080),
        ],
    )
    .namespace(ns)
}

async fn engine(env: &TestEnv, ns: &str) -> KubeEngine {
    let client = env.client().await.unwrap();
    KubeEngine::builder(client.clone())
        .process_pods(true)
        .server_name(env.server_url())
        .state_store(Arc::new(ConfigMapStateStore::new(client, ns)))
        .build()
        .await
        .unwrap()
}

fn managers(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Vec<String> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_sets_per_revision_are_applied_scaled_read_and_deleted() {
    let env = testenv_or_skip!();
    let ns = env.new_namespace("engine").await.unwrap();
    let engine = engine(env, &ns).await;
    let v1 = spec(&ns, "web", "v1");
    let (key, rev) = (v1.key(), v1.revision());
    let status = engine.apply_group(&v1, 2).await.unwrap();
    assert_eq!(status.desired, 2);

    let api: Api<ReplicaSet> = Api::namespaced(env.client().await.unwrap(), &ns);
    let name = format!("web-{rev}");
    let rs = api.get(&name).await.unwrap();
    let labels = rs.metadata.labels.clone().unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "rorqual");
    assert_eq!(labels["rorqual.io/app"], "web");
    assert_eq!(labels["rorqual.io/revision"], rev.as_str());
    assert_eq!(rs.spec.replicas, Some(2));
    assert!(managers(&rs.metadata).contains(&FIELD_MANAGER.to_owned()));
    // The revision's headless Service (for its EndpointSlices), owned by the ReplicaSet.
    let services: Api<Service> = Api::namespaced(env.client().await.unwrap(), &ns);
    let svc = services.get(&name).await.unwrap();
    let owner = &svc.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("ReplicaSet", rs.metadata.uid.as_deref().unwrap())
    );
    assert_eq!(
        svc.spec.as_ref().unwrap().selector.as_ref(),
        rs.spec.selector.match_labels.as_ref()
    );

    // Scaling is a second field manager's apply; applying the template again keeps working.
    engine.scale_group(&key, &rev, 3).await.unwrap();
    let rs = api.get(&name).await.unwrap();
    assert_eq!(rs.spec.replicas, Some(3));
    assert!(
        managers(&rs.metadata).contains(&SCALE_MANAGER.to_owned()),
        "{:?}",
        managers(&rs.metadata)
    );
    engine.apply_group(&v1, 3).await.unwrap();

    // The ReplicaSet controller's pods come back through the reflectors (Pending: no node runs
    // them in this test).
    let instances = eventually(Duration::from_secs(30), "3 pods of web", || async {
        let list = engine.instances(&key).await.unwrap();
        (list.len() == 3).then_some(list)
    })
    .await;
    assert!(instances.iter().all(|i| i.revision == rev && !i.ready));
    let groups = engine.groups(&key).await.unwrap();
    assert_eq!(
        groups
            .iter()
            .map(|g| (g.revision.clone(), g.desired, g.current))
            .collect::<Vec<_>>(),
        [(rev.clone(), 3, 3)]
    );
    assert!(engine.apps().await.unwrap().contains(&key));

    // A Service deleted by hand comes back with the next apply of its revision.
    services
        .delete(&name, &kube::api::DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the Service back", || async {
        engine.apply_group(&v1, 3).await.unwrap();
        services.get_opt(&name).await.unwrap().map(|_| ())
    })
    .await;

    engine.delete_group(&key, &rev).await.unwrap();
    engine.delete_group(&key, &rev).await.unwrap();
    eventually(Duration::from_secs(30), "web gone", || async {
        let g = engine.groups(&key).await.unwrap();
        let i = engine.instances(&key).await.unwrap();
        (g.is_empty() && i.is_empty()).then_some(())
    })
    .await;
    // The garbage collector removes the Service with its ReplicaSet.
    eventually(
        Duration::from_secs(30),
        "the revision's Service gone",
        || async {
            services
                .get_opt(&name)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmanaged_objects_and_inexpressible_specs_are_refused_before_anything_changes() {
    let env = testenv_or_skip!();
    let ns = env.new_namespace("refuse").await.unwrap();
    let engine = engine(env, &ns).await;
    let client = env.client().await.unwrap();

    // Someone else's ReplicaSet under the name rorqual would use.
    let theirs = spec(&ns, "legacy", "v1");
    let name = format!("legacy-{}", theirs.revision());
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let foreign: ReplicaSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"team": "other"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"team": "other"}},
            "template": {"metadata": {"labels": {"team": "other"}},
                "spec": {"containers": [{"name": "c", "image": "other/image"}]}}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &foreign).await.unwrap();
    let err = engine.apply_group(&theirs, 1).await.unwrap_err();
    assert!(
        matches!(&err, Error::BadRequest(m) if m.contains(&format!("ReplicaSet {ns}/{name} exists and is not managed by rorqual"))),
        "{err}"
    );
    let after = api.get(&name).await.unwrap();
    assert_eq!(after.spec.replicas, Some(0), "left untouched");
    assert!(!managers(&after.metadata).contains(&FIELD_MANAGER.to_owned()));

    // Someone else's Service under the name of a revision's Service: refused before the
    // ReplicaSet is written.
    let other = spec(&ns, "shop", "v1");
    let svc_name = format!("shop-{}", other.revision());
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let foreign: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": svc_name, "labels": {"team": "other"}},
        "spec": {"ports": [{"port": 80}]}
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    let err = engine.apply_group(&other, 1).await.unwrap_err();
    assert!(
        matches!(&err, Error::BadRequest(m) if m.contains(&format!("Service {ns}/{svc_name} exists and is not managed by rorqual"))),
        "{err}"
    );
    assert!(
        api.get_opt(&format!("shop-{}", other.revision()))
            .await
            .unwrap()
            .is_none(),
        "no ReplicaSet written"
    );

    // A numeric priority and a sub-second probe cannot be sent: refused with their paths.
    let mut local_only = spec(&ns, "local", "v1");
    local_only.priority = 5;
    local_only.containers[0] = local_only.containers[0]
        .clone()
        .readiness(rorqual_core::model::Probe::http("/", "http").period(0.5));
    let err = engine.apply_group(&local_only, 1).await.unwrap_err();
    let Error::Invalid(v) = &err else {
        panic!("{err}")
    };
    let paths: Vec<&str> = v.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["priority", "containers[0].readinessProbe.periodSeconds"],
        "{err}"
    );
    assert!(
        engine
            .groups(&AppKey::new(&ns, "local"))
            .await
            .unwrap()
            .is_empty()
    );
    let rs_names: Vec<String> = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .collect();
    assert_eq!(rs_names, [name], "nothing else was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_app_is_a_stateful_set_whose_identities_move_by_pod_deletion() {
    let env = testenv_or_skip!();
    let ns = env.new_namespace("set").await.unwrap();
    let engine = engine(env, &ns).await;
    let client = env.client().await.unwrap();
    let mut events = engine.events();
    let v1 = spec(&ns, "game", "v1").kind(WorkloadKind::Stateful);
    let v2 = spec(&ns, "game", "v2").kind(WorkloadKind::Stateful);
    let key = v1.key();
    engine.apply_group(&v1, 2).await.unwrap();

    let set = Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .get("game")
        .await
        .unwrap();
    assert_eq!(
        set.spec.pod_management_policy.as_deref(),
        Some("OrderedReady")
    );
    assert_eq!(
        set.spec.update_strategy.unwrap().type_.as_deref(),
        Some("OnDelete")
    );
    let svc = Api::<Service>::namespaced(client.clone(), &ns)
        .get("game")
        .await
        .unwrap();
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("None"));

    // OrderedReady: game-1 waits for game-0, which never becomes ready here.
    let first = eventually(Duration::from_secs(30), "game-0", || async {
        let list = engine.instances(&key).await.unwrap();
        (list.len() == 1).then_some(list)
    })
    .await;
    assert_eq!(
        (first[0].id.as_str(), first[0].ordinal),
        ("game-0", Some(0))
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        engine.instances(&key).await.unwrap().len(),
        1,
        "game-1 waits"
    );
    let groups = engine.groups(&key).await.unwrap();
    assert_eq!(
        groups.iter().map(|g| g.desired).sum::<u32>(),
        2,
        "two identities wanted: {groups:?}"
    );

    // Moving game-0 to v2: the template is applied and the pod recreated from it.
    let moved = engine.move_identity(&v2, 0).await.unwrap();
    assert_eq!(
        (moved.id.as_str(), &moved.revision),
        ("game-0", &v2.revision())
    );
    eventually(Duration::from_secs(30), "game-0 at v2", || async {
        let list = engine.instances(&key).await.unwrap();
        list.iter()
            .any(|i| i.id == "game-0" && i.revision == v2.revision())
            .then_some(())
    })
    .await;
    assert_eq!(
        engine.move_identity(&v2, 0).await.unwrap().revision,
        v2.revision(),
        "moving again changes nothing"
    );
    let err = engine.move_identity(&v2, 5).await.unwrap_err();
    assert!(err.to_string().contains("no ordinal 5"), "{err}");

    // The controllers' events reach the stream, mapped to the app.
    let event = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let e = events.next().await.unwrap();
            if e.app.as_ref() == Some(&key) {
                return e;
            }
        }
    })
    .await
    .expect("an event about games/game");
    assert!(!event.reason.is_empty());

    // Scaled to no identities, then every revision deleted: the set and its Service go.
    engine.scale_group(&key, &v2.revision(), 0).await.unwrap();
    engine.delete_group(&key, &v1.revision()).await.unwrap();
    engine.delete_group(&key, &v2.revision()).await.unwrap();
    eventually(Duration::from_secs(30), "game gone", || async {
        (engine.groups(&key).await.unwrap().is_empty()
            && engine.instances(&key).await.unwrap().is_empty())
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_unauthorised_servers_are_named_in_the_error() {
    let env = testenv_or_skip!();
    // Nothing listens on port 1: retried until the timeout, then named.
    let mut config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    config.connect_timeout = Some(Duration::from_millis(200));
    let client = kube::Client::try_from(config.clone()).unwrap();
    let store = Arc::new(ConfigMapStateStore::new(client, "default"));
    let err = KubeEngine::from_config(config)
        .unwrap()
        .state_store(store.clone())
        .sync_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string()
            .starts_with("https://127.0.0.1:1/: cannot read the server version"),
        "{err}"
    );

    // The real server with a token it does not know: refused at once, not retried.
    let mut config = kube::Config::new(env.server_url().parse().unwrap());
    config.accept_invalid_certs = true;
    config.auth_info.token = Some("not-a-token".to_owned().into());
    let started = std::time::Instant::now();
    let err = KubeEngine::from_config(config)
        .unwrap()
        .state_store(store)
        .build()
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("unauthorised (401"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_only_move_patches_the_pod_in_place() {
    let env = testenv_or_skip!();
    let ns = env.new_namespace("inplace").await.unwrap();
    let engine = engine(env, &ns).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(env.client().await.unwrap(), &ns);
    let with_image = |image: &str| {
        let mut s = spec(&ns, "gs", "v1").kind(WorkloadKind::Stateful);
        s.containers[0].image = Some(image.to_owned());
        s
    };
    let (v1, v2) = (with_image("example/gs:1"), with_image("example/gs:2"));
    assert_ne!(v1.revision(), v2.revision());
    engine.apply_group(&v1, 1).await.unwrap();
    let before = eventually(Duration::from_secs(30), "gs-0 in the cache", || async {
        let pod = pods.get_opt("gs-0").await.unwrap()?;
        let cached = engine.instances(&v1.key()).await.unwrap();
        (cached.len() == 1).then_some(pod)
    })
    .await;
    let moved = engine.move_identity(&v2, 0).await.unwrap();
    assert_eq!(moved.revision, v2.revision());
    let after = pods.get("gs-0").await.unwrap();
    assert_eq!(after.metadata.uid, before.metadata.uid, "the same pod");
    assert_eq!(
        after.spec.unwrap().containers[0].image.as_deref(),
        Some("example/gs:2")
    );
    assert_eq!(
        after.metadata.labels.unwrap()["rorqual.io/revision"],
        v2.revision().as_str()
    );
    // A change beyond images is not in place: the pod is replaced.
    let mut v3 = v2.clone();
    v3.containers[0] = v3.containers[0].clone().env("MORE", "1");
    engine.move_identity(&v3, 0).await.unwrap();
    eventually(Duration::from_secs(30), "gs-0 replaced at v3", || async {
        let pod = pods.get_opt("gs-0").await.unwrap()?;
        (pod.metadata.uid != before.metadata.uid
            && pod.metadata.labels.as_ref()?.get("rorqual.io/revision")
                == Some(&v3.revision().to_string()))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_a_stateful_app_honours_the_revision() {
    let env = testenv_or_skip!();
    let ns = env.new_namespace("setscale").await.unwrap();
    let engine = engine(env, &ns).await;
    let sets = Api::<StatefulSet>::namespaced(env.client().await.unwrap(), &ns);
    let replicas = || async { sets.get("game").await.unwrap().spec.replicas };
    let v1 = spec(&ns, "game", "v1").kind(WorkloadKind::Stateful);
    let v2 = spec(&ns, "game", "v2").kind(WorkloadKind::Stateful);
    let key = v1.key();
    engine.apply_group(&v1, 1).await.unwrap();
    eventually(Duration::from_secs(30), "game-0 at v1", || async {
        let list = engine.instances(&key).await.unwrap();
        list.iter()
            .any(|i| i.id == "game-0" && i.revision == v1.revision())
            .then_some(())
    })
    .await;

    // A revision the app never ran is no group: nothing is scaled.
    let unknown = rorqual_core::model::Revision("0123456789".to_owned());
    let err = engine.scale_group(&key, &unknown, 3).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert_eq!(replicas().await, Some(1), "scaled for an unknown revision");

    // With the template at v2, game-0 still runs v1: an identity added would start at v2, so
    // adding one "at v1" is refused rather than started at another revision.
    engine.apply_group(&v2, 1).await.unwrap();
    let err = engine
        .scale_group(&key, &v1.revision(), 2)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadRequest(_)), "{err}");
    assert_eq!(replicas().await, Some(1), "scaled at the wrong revision");
    let status = engine.scale_group(&key, &v2.revision(), 2).await.unwrap();
    assert_eq!(status.revision, v2.revision());
    assert_eq!(replicas().await, Some(2));

    // Deleting right after scaling to none: the engine's cache may not have seen the scale,
    // the delete decides on the server's set.
    engine.scale_group(&key, &v2.revision(), 0).await.unwrap();
    engine.delete_group(&key, &v1.revision()).await.unwrap();
    engine.delete_group(&key, &v2.revision()).await.unwrap();
}
