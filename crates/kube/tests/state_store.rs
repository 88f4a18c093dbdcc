//! `ConfigMapStateStore` against a real kube-apiserver (the shared test control plane), checked
//! with the same compare-and-swap scenario as rorqual-core's `MemoryStateStore`.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions unwrap too

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use rorqual_core::engine::{MemoryStateStore, StateStore};
use rorqual_core::error::Error;
use rorqual_kube::ConfigMapStateStore;
use rorqual_kube::testenv_or_skip;

/// The compare-and-swap contract, run against every store the same way.
async fn cas_contract(store: &dyn StateStore) {
    let v1 = store
        .compare_and_swap("a", None, Some(b"1".to_vec()))
        .await
        .unwrap();
    let err = store
        .compare_and_swap("a", None, Some(b"x".to_vec()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { expected: None, found: Some(found), .. } if found == v1),
        "{err}"
    );
    let v2 = store
        .compare_and_swap("a", Some(v1), Some(b"2".to_vec()))
        .await
        .unwrap();
    assert!(v2 > v1, "versions grow: {v1} then {v2}");
    let stale = store
        .compare_and_swap("a", Some(v1), Some(b"3".to_vec()))
        .await
        .unwrap_err();
    assert!(
        matches!(stale, Error::Conflict { expected: Some(e), found: Some(f), .. } if e == v1 && f == v2),
        "{stale}"
    );
    let read = store.get("a").await.unwrap().unwrap();
    assert_eq!((read.value.as_slice(), read.version), (&b"2"[..], v2));

    store
        .compare_and_swap("ab", None, Some(Vec::new()))
        .await
        .unwrap();
    store
        .compare_and_swap("b", None, Some(vec![0xff, 0xfe]))
        .await
        .unwrap();
    store
        .compare_and_swap("rollout-step/Web", None, Some(b"{\"step\":1}".to_vec()))
        .await
        .unwrap();
    let keys: Vec<String> = store
        .list("a")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["a", "ab"]);
    let all = store.list("").await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[2].1.value, vec![0xff, 0xfe], "bytes round-trip");
    assert_eq!(all[3].0, "rollout-step/Web");

    let stale_delete = store
        .compare_and_swap("a", Some(v1), None)
        .await
        .unwrap_err();
    assert!(
        matches!(stale_delete, Error::Conflict { .. }),
        "{stale_delete}"
    );
    assert_eq!(
        store.compare_and_swap("a", Some(v2), None).await.unwrap(),
        0
    );
    assert!(store.get("a").await.unwrap().is_none());
    let gone = store
        .compare_and_swap("a", Some(v2), Some(b"4".to_vec()))
        .await
        .unwrap_err();
    assert!(
        matches!(gone, Error::Conflict { found: None, .. }),
        "{gone}"
    );
    assert_eq!(store.compare_and_swap("a", None, None).await.unwrap(), 0);
    let recreated = store
        .compare_and_swap("a", None, Some(b"5".to_vec()))
        .await
        .unwrap();
    assert!(recreated >= 1);
}

#[tokio::test]
async fn the_memory_store_passes_the_contract() {
    // The reference: the same scenario on rorqual-core's in-memory store.
    cas_contract(&MemoryStateStore::new()).await;
}

#[tokio::test]
async fn the_configmap_store_passes_the_contract() {
    let env = testenv_or_skip!();
    let namespace = env.new_namespace("state-contract").await.unwrap();
    let client = env.client().await.unwrap();
    let store = ConfigMapStateStore::new(client.clone(), &namespace);
    cas_contract(&store).await;

    // Every ConfigMap is labelled and names its key.
    let maps = Api::<ConfigMap>::namespaced(client.clone(), &namespace)
        .list(&Default::default())
        .await
        .unwrap();
    let step = maps
        .items
        .iter()
        .find(|m| {
            m.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a["rorqual.io/state-key"] == "rollout-step/Web")
        })
        .expect("the ConfigMap of rollout-step/Web");
    assert_eq!(
        step.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
        "rorqual"
    );
    let name = step.metadata.name.as_deref().unwrap();
    assert!(name.starts_with("rorqual.rollout-step-web-"), "{name}");
    assert_eq!(step.data.as_ref().unwrap()["value"], "{\"step\":1}");

    // Another store in the same namespace sees none of these keys.
    let other = ConfigMapStateStore::named(client, &namespace, "other").unwrap();
    assert!(other.list("").await.unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_increments_are_never_lost() {
    let env = testenv_or_skip!();
    let namespace = env.new_namespace("state-cas").await.unwrap();
    let store: Arc<dyn StateStore> = Arc::new(ConfigMapStateStore::new(
        env.client().await.unwrap(),
        &namespace,
    ));
    const WRITERS: u64 = 8;
    const INCREMENTS: u64 = 20;
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..INCREMENTS {
                loop {
                    let current = store.get("counter").await.unwrap();
                    let (expected, n) = match &current {
                        Some(v) => (
                            Some(v.version),
                            std::str::from_utf8(&v.value)
                                .unwrap()
                                .parse::<u64>()
                                .unwrap(),
                        ),
                        None => (None, 0),
                    };
                    match store
                        .compare_and_swap(
                            "counter",
                            expected,
                            Some((n + 1).to_string().into_bytes()),
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(Error::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("increment failed: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }
    let end = store.get("counter").await.unwrap().unwrap();
    assert_eq!(
        std::str::from_utf8(&end.value).unwrap(),
        (WRITERS * INCREMENTS).to_string()
    );
    println!(
        "{} increments, {conflicts} conflicts retried",
        WRITERS * INCREMENTS
    );
}

#[tokio::test]
async fn a_configmap_edited_into_garbage_is_reported_and_kept() {
    let env = testenv_or_skip!();
    let namespace = env.new_namespace("state-garbage").await.unwrap();
    let client = env.client().await.unwrap();
    let store = ConfigMapStateStore::new(client.clone(), &namespace);
    let key = "rollout-step/web";
    let version = store
        .compare_and_swap(key, None, Some(b"{\"step\":2}".to_vec()))
        .await
        .unwrap();

    // By hand: the value replaced by another entry.
    let api = Api::<ConfigMap>::namespaced(client, &namespace);
    let name = store.configmap_name(key);
    let garbage = serde_json::json!({"data": {"value": null, "notes": "edited"}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&garbage))
        .await
        .unwrap();

    let read = store.get(key).await.unwrap_err();
    let Error::CorruptState { location, reason } = &read else {
        panic!("expected corrupt state, got {read}");
    };
    assert!(location.contains("`rollout-step/web`"), "{location}");
    assert!(location.contains(&name), "{location}");
    assert!(reason.contains("data.notes"), "{reason}");
    assert!(!read.is_retryable());
    let listed = store.list("rollout").await.unwrap_err();
    assert!(
        listed.to_string().contains("`rollout-step/web`"),
        "{listed}"
    );

    // A writer holding the version from before the edit cannot overwrite it.
    let write = store
        .compare_and_swap(key, Some(version), Some(b"{\"step\":3}".to_vec()))
        .await
        .unwrap_err();
    assert!(
        matches!(write, Error::CorruptState { .. }),
        "a stale write reports the corrupt entry: {write}"
    );
    let kept = api.get(&name).await.unwrap();
    assert_eq!(kept.data.unwrap()["notes"], "edited");
}

#[tokio::test]
async fn a_configmap_the_store_did_not_write_is_left_alone() {
    let env = testenv_or_skip!();
    let namespace = env.new_namespace("state-foreign").await.unwrap();
    let client = env.client().await.unwrap();
    let store = ConfigMapStateStore::new(client.clone(), &namespace);
    let api = Api::<ConfigMap>::namespaced(client, &namespace);
    let foreign = ConfigMap {
        metadata: ObjectMeta {
            name: Some(store.configmap_name("settings")),
            ..ObjectMeta::default()
        },
        data: Some([("value".to_owned(), "theirs".to_owned())].into()),
        ..ConfigMap::default()
    };
    api.create(&PostParams::default(), &foreign).await.unwrap();

    let read = store.get("settings").await.unwrap_err();
    assert!(read.to_string().contains("not managed"), "{read}");
    let write = store
        .compare_and_swap("settings", None, Some(b"ours".to_vec()))
        .await
        .unwrap_err();
    assert!(write.to_string().contains("not managed"), "{write}");
    let kept = api.get(&store.configmap_name("settings")).await.unwrap();
    assert_eq!(kept.data.unwrap()["value"], "theirs");
}
