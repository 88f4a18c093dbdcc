//! Pod label values that nothing matches on are not interned: a long-running scheduler (an
//! extender fed every pod of a cluster) does not grow the process-wide symbol table with
//! values such as `controller-uid`, and matching on such values still works.
//!
//! One test in its own binary: the table is process-wide, and another test interning
//! concurrently would change its size.

#![allow(clippy::unwrap_used)]

use rorqual_core::model::Resources;
use rorqual_scheduler::kube::pod_from_json;
use rorqual_scheduler::selector::Selector;
use rorqual_scheduler::snapshot::{AffinityTerm, HOSTNAME_LABEL};
use rorqual_scheduler::{NodeInfo, Outcome, PodInfo, Scheduler, Sym};
use serde_json::json;

fn job_pod(i: usize, uid: &str) -> PodInfo {
    pod_from_json(&json!({
        "metadata": {"name": format!("job-{i}"), "namespace": "batch", "uid": format!("u-job-{i}"),
            "labels": {"controller-uid": uid, "app": "web"}},
        "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "10m"}}}],
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}
    }))
    .unwrap()
}

async fn node_of(scheduler: &Scheduler, pod: PodInfo) -> Sym {
    scheduler.enqueue(pod).unwrap();
    match scheduler.schedule_next().await.unwrap().outcome {
        Outcome::Bound(node) => node,
        other => panic!("not bound: {other:?}"),
    }
}

#[tokio::test]
async fn unknown_label_values_are_not_interned_and_still_match() {
    // Keys, namespace and the selector's values get interned by the first pod.
    let _ = job_pod(0, "warm-up");
    let before = Sym::interned_count();
    let pods: Vec<PodInfo> = (1..=2000)
        .map(|i| job_pod(i, &format!("3f1c9a52-uid-{i}")))
        .collect();
    assert_eq!(
        Sym::interned_count(),
        before,
        "2000 distinct controller-uid values grew the symbol table"
    );
    assert!(Sym::lookup("3f1c9a52-uid-7").is_none());
    let app = Sym::lookup("app").unwrap();
    assert!(
        pods[0].labels.iter().any(|(k, _)| k == app),
        "a value a selector mentions is stored as its symbol"
    );

    // A selector made later (interning the value) matches the pod read before.
    let selector = Selector::match_labels([("controller-uid", "3f1c9a52-uid-7")]);
    assert!(selector.matches(&pods[6].labels));
    assert!(!selector.matches(&pods[7].labels));
    assert_eq!(
        pods[6].labels.text(Sym::new("controller-uid")).as_deref(),
        Some("3f1c9a52-uid-7")
    );

    // In the scheduler: a bound pod whose value was not interned is found by a term that
    // names that value later...
    let scheduler = Scheduler::with_default_plugins();
    scheduler.add_nodes(["n1", "n2"].map(|n| NodeInfo::new(n, Resources::new(4000, 8 << 30))));
    let bound = pods[99].clone();
    scheduler.add_bound_pod("n1", bound).unwrap();
    let mut avoid = PodInfo::new("avoid", "batch", "avoid", Resources::new(10, 0));
    avoid.anti_affinity.required.push(AffinityTerm::new(
        "controller-uid",
        "3f1c9a52-uid-100",
        HOSTNAME_LABEL,
    ));
    assert_eq!(node_of(&scheduler, avoid).await, Sym::new("n2"));
    let mut join = PodInfo::new("join", "batch", "join", Resources::new(10, 0));
    join.affinity.required.push(AffinityTerm::new(
        "controller-uid",
        "3f1c9a52-uid-100",
        HOSTNAME_LABEL,
    ));
    assert_eq!(node_of(&scheduler, join).await, Sym::new("n1"));

    // ...and an incoming pod read before an existing pod's anti-affinity term named its
    // value is kept away from that pod.
    let incoming = pod_from_json(&json!({
        "metadata": {"name": "late", "namespace": "batch", "uid": "u-late", "labels": {"tier": "cold-51d2"}},
        "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "10m"}}}]}
    }))
    .unwrap();
    assert!(Sym::lookup("cold-51d2").is_none());
    let mut guard = PodInfo::new("guard", "batch", "guard", Resources::new(10, 0));
    guard
        .anti_affinity
        .required
        .push(AffinityTerm::new("tier", "cold-51d2", HOSTNAME_LABEL));
    let scheduler = Scheduler::with_default_plugins();
    scheduler.add_nodes(["n1", "n2"].map(|n| NodeInfo::new(n, Resources::new(4000, 8 << 30))));
    scheduler.add_bound_pod("n2", guard).unwrap();
    assert_eq!(node_of(&scheduler, incoming).await, Sym::new("n1"));
}
