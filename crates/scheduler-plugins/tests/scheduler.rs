//! The in-process Scheduler: queue, cycles, Reserve/Permit/Bind, gang and underlay plugins,
//! panics and bad scores, and the core `Placement` seam.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rorqual_core::model::{AppKey, Node, Resources, Revision};
use rorqual_core::placement::{NodeView, Placement, PlacementRequest};
use rorqual_scheduler::framework::{
    BindPlugin, CycleState, FilterPlugin, NodeSet, PermitPlugin, Plugin, PreBindPlugin,
    PreFilterPlugin, ReservePlugin, ScorePlugin, Status, WaitingPods,
};
use rorqual_scheduler::plugins::{
    DefaultBinder, DefaultPlugins, IpCapacity, MemoryIpCapacity, NodeResourcesFit, PrioritySort,
    ReserveRequest, ScoringStrategy,
};
use rorqual_scheduler::snapshot::{
    AffinityTerm, GangMembership, HOSTNAME_LABEL, StatefulIdentity, UnderlayRequest,
};
use rorqual_scheduler::{NodeInfo, Outcome, PodInfo, Scheduler, Snapshot, Sym};

fn nodes(n: usize, cpu: u64) -> Vec<NodeInfo> {
    (0..n)
        .map(|i| NodeInfo::new(&format!("n{i}"), Resources::new(cpu, 8 << 30)))
        .collect()
}

fn pod(uid: &str, cpu: u64) -> PodInfo {
    PodInfo::new(uid, "default", uid, Resources::new(cpu, 1 << 20))
}

#[tokio::test]
async fn least_allocated_spreads_and_full_cluster_backs_off_with_a_diagnosis() {
    let s = Scheduler::with_default_plugins();
    s.add_nodes(nodes(3, 1000));
    for i in 0..3 {
        s.enqueue(pod(&format!("p{i}"), 600)).unwrap();
    }
    assert_eq!(s.run_until_idle().await.bound, 3);
    let per_node: Vec<usize> =
        s.with_snapshot(|snap| snap.nodes().iter().map(|n| n.pods.len()).collect());
    assert_eq!(per_node, [1, 1, 1], "least allocated spreads");
    s.enqueue(pod("late", 600)).unwrap();
    let r = s.schedule_next().await.unwrap();
    let Outcome::Unschedulable(status) = r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(
        status.message(),
        "0/3 nodes are available for default/late: 3 Insufficient cpu"
    );
    assert_eq!(s.queue_len(), (0, 1), "the pod waits in backoff");
    assert!(
        s.schedule_next().await.is_none(),
        "not before its backoff expires"
    );
    // Deleting a pod is a cluster event: backed-off pods are retried.
    let home = s.with_snapshot(|snap| snap.node_of_pod("p0").unwrap().name);
    s.remove_pod("p0");
    let r = s.schedule_next().await.unwrap();
    assert!(
        matches!(r.outcome, Outcome::Bound(n) if n == home),
        "{:?}",
        r.outcome
    );
}

#[tokio::test]
async fn required_anti_affinity_puts_one_replica_per_host() {
    let s = Scheduler::with_default_plugins();
    s.add_nodes(nodes(3, 4000));
    for i in 0..4 {
        let mut p = pod(&format!("db-{i}"), 100).label("app", "db");
        p.anti_affinity
            .required
            .push(AffinityTerm::new("app", "db", HOSTNAME_LABEL));
        s.enqueue(p).unwrap();
    }
    let summary = s.run_until_idle().await;
    assert_eq!((summary.bound, summary.unschedulable), (3, 1));
    let per_node: Vec<usize> =
        s.with_snapshot(|snap| snap.nodes().iter().map(|n| n.pods.len()).collect());
    assert_eq!(per_node, [1, 1, 1]);
}

#[tokio::test]
async fn existing_pods_affinity_terms_draw_and_repel_new_pods() {
    let s = Scheduler::with_default_plugins();
    s.add_nodes(nodes(3, 4000));
    // A cache on n1 prefers web pods on its host; least allocated alone would avoid n1.
    let mut cache = pod("cache", 500);
    cache
        .affinity
        .preferred
        .push((100, AffinityTerm::new("app", "web", HOSTNAME_LABEL)));
    s.add_bound_pod("n1", cache).unwrap();
    // A batch job on n2 would rather not share its host with web pods.
    let mut batch = pod("batch", 100);
    batch
        .anti_affinity
        .preferred
        .push((100, AffinityTerm::new("app", "web", HOSTNAME_LABEL)));
    s.add_bound_pod("n2", batch).unwrap();
    s.enqueue(pod("web-0", 100).label("app", "web")).unwrap();
    let r = s.schedule_next().await.unwrap();
    assert!(
        matches!(r.outcome, Outcome::Bound(n) if n == Sym::new("n1")),
        "next to the cache: {:?}",
        r.outcome
    );
    // Pods the terms do not select are placed on resources alone: n0 is the least allocated.
    s.enqueue(pod("api-0", 100).label("app", "api")).unwrap();
    let r = s.schedule_next().await.unwrap();
    assert!(
        matches!(r.outcome, Outcome::Bound(n) if n == Sym::new("n0")),
        "{:?}",
        r.outcome
    );
    // With the cache gone, n2 (the batch job, 100m) is the least allocated node: n0 holds
    // 1100m, n1 300m. The batch job's term still keeps web pods off it.
    s.remove_pod("cache");
    s.add_bound_pod("n0", pod("filler-0", 1000)).unwrap();
    s.add_bound_pod("n1", pod("filler-1", 200)).unwrap();
    s.enqueue(pod("web-1", 100).label("app", "web")).unwrap();
    let r = s.schedule_next().await.unwrap();
    assert!(
        matches!(r.outcome, Outcome::Bound(n) if n == Sym::new("n1")),
        "away from the batch job: {:?}",
        r.outcome
    );
}

#[derive(Debug)]
struct Panicky;
impl Plugin for Panicky {
    fn name(&self) -> &str {
        "Panicky"
    }
}
impl FilterPlugin for Panicky {
    fn filter(&self, _s: &CycleState, pod: &PodInfo, _n: &NodeInfo) -> Status {
        assert!(
            !pod.name.starts_with("boom"),
            "filter blew up on {}",
            pod.name
        );
        Status::success()
    }
}

#[derive(Debug)]
struct OutOfRange;
impl Plugin for OutOfRange {
    fn name(&self) -> &str {
        "OutOfRange"
    }
}
impl ScorePlugin for OutOfRange {
    fn score(&self, _s: &CycleState, pod: &PodInfo, _n: &NodeInfo) -> Result<i64, Status> {
        Ok(if pod.name.starts_with("wild") {
            101
        } else {
            100
        })
    }
}

#[tokio::test]
async fn panics_and_out_of_range_scores_fail_only_that_pod() {
    let profile = DefaultPlugins::new()
        .builder("p")
        .filter(Arc::new(Panicky))
        .score(Arc::new(OutOfRange), 1)
        .build()
        .unwrap();
    let s = Scheduler::new(profile);
    s.add_nodes(nodes(200, 4000));
    s.enqueue(pod("boom", 10)).unwrap();
    s.enqueue(pod("wild", 10)).unwrap();
    s.enqueue(pod("fine", 10)).unwrap();
    let mut outcomes = Vec::new();
    while let Some(r) = s.schedule_next().await {
        outcomes.push((r.pod.name.to_string(), r.outcome));
    }
    let msg = |o: &Outcome| match o {
        Outcome::Error(s) => s.to_string(),
        other => format!("{other:?}"),
    };
    assert!(
        msg(&outcomes[0].1)
            .contains("plugin panicked during filter and score: filter blew up on boom"),
        "{}",
        msg(&outcomes[0].1)
    );
    assert!(
        msg(&outcomes[1].1).contains("returned score 101"),
        "{}",
        msg(&outcomes[1].1)
    );
    assert!(matches!(outcomes[2].1, Outcome::Bound(_)));
}

// On tokio's paused clock: the 300 ms Permit timeout elapses only once every task is idle
// (here when the test awaits the held pod's binding), never because the machine stalled
// between two assertions. Nothing in it does real I/O.
#[tokio::test(start_paused = true)]
async fn a_waiting_pod_blocks_only_its_own_binding_and_times_out() {
    let gate = Arc::new(Gate::holding_for(Duration::from_millis(300)));
    let profile = DefaultPlugins::new()
        .builder("p")
        .permit(gate.clone())
        .build()
        .unwrap();
    let s = Scheduler::new(profile);
    s.add_nodes(nodes(1, 1000));
    s.enqueue(pod("held-1", 400).label("hold", "yes")).unwrap();
    s.enqueue(pod("held-2", 400).label("hold", "yes")).unwrap();
    s.enqueue(pod("free", 100)).unwrap();
    let started = tokio::time::Instant::now();
    let r1 = s.schedule_next().await.unwrap();
    let r2 = s.schedule_next().await.unwrap();
    let r3 = s.schedule_next().await.unwrap();
    assert!(
        matches!(r3.outcome, Outcome::Bound(_)),
        "others bind while pods wait: {:?}",
        r3.outcome
    );
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(s.waiting_pods().len(), 2);
    // Held pods keep their resources assumed: a 400m pod does not fit now.
    let used = s.with_snapshot(|snap| snap.nodes()[0].requested.cpu.0);
    assert_eq!(used, 900);
    gate.allow("held-1");
    let (Outcome::Waiting { binding: b1, .. }, Outcome::Waiting { binding: b2, .. }) =
        (r1.outcome, r2.outcome)
    else {
        panic!("both held pods wait")
    };
    assert_eq!(b1.await.unwrap().unwrap(), Sym::new("n0"));
    let err = b2.await.unwrap().unwrap_err();
    assert!(err.message().contains("timed out"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not before its Permit timeout: {:?}",
        started.elapsed()
    );
    let used = s.with_snapshot(|snap| snap.nodes()[0].requested.cpu.0);
    assert_eq!(used, 500, "the timed-out pod was unreserved and forgotten");
    assert_eq!(s.queue_len().1, 1, "and requeued with backoff");
}

// On tokio's paused clock (in-memory plugins only, no real I/O), and the complete gang waits
// up to 30 s: only the short gang's 300 ms timeout is under test, and it expires when every
// task is idle, not because a loaded machine stalled.
#[tokio::test(start_paused = true)]
async fn a_gang_binds_together_or_releases_together() {
    let cap = Arc::new(MemoryIpCapacity::new());
    cap.add_pool(
        "p",
        ["n0", "n1"],
        (1..=10).map(|i| IpAddr::from([10, 0, 0, i])),
    );
    let profile = DefaultPlugins::new().underlay(cap.clone()).build().unwrap();
    let s = Scheduler::new(profile);
    s.add_nodes(nodes(2, 4000));
    let member = |uid: &str, group: &str, min: u32, timeout: Duration| {
        let mut p = pod(uid, 100);
        p.gang = Some(GangMembership {
            name: Arc::from(group),
            min_member: min,
            timeout: Some(timeout),
        });
        p.underlay = Some(UnderlayRequest {
            pool: None,
            bound_claim: None,
            claim: None,
        });
        p
    };
    let long = Duration::from_secs(30);
    for i in 0..3 {
        s.enqueue(member(&format!("a{i}"), "complete", 3, long))
            .unwrap();
    }
    let short = Duration::from_millis(300);
    for i in 0..2 {
        s.enqueue(member(&format!("b{i}"), "short", 3, short))
            .unwrap();
    }
    let started = tokio::time::Instant::now();
    std::thread::sleep(Duration::from_millis(400));
    let summary = s.run_until_idle().await;
    assert_eq!(summary.bound, 3, "{summary:?}");
    assert_eq!(summary.unschedulable, 2, "{summary:?}");
    assert!(
        started.elapsed() >= short && started.elapsed() < long,
        "the short gang was released by its own timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(cap.free("p"), 7, "the short gang's addresses came back");
    let pods = s.with_snapshot(Snapshot::pod_count);
    assert_eq!(pods, 3);
}

#[derive(Debug)]
struct Recorder {
    name: &'static str,
    fail: bool,
    log: Arc<Mutex<Vec<String>>>,
}
impl Plugin for Recorder {
    fn name(&self) -> &str {
        self.name
    }
}
impl ReservePlugin for Recorder {
    fn reserve(&self, _s: &mut CycleState, _p: &PodInfo, _n: Sym) -> Status {
        self.log
            .lock()
            .unwrap()
            .push(format!("reserve {}", self.name));
        if self.fail {
            Status::unschedulable("no room")
        } else {
            Status::success()
        }
    }
    fn unreserve(&self, _s: &mut CycleState, _p: &PodInfo, _n: Sym) {
        self.log
            .lock()
            .unwrap()
            .push(format!("unreserve {}", self.name));
    }
}
#[async_trait]
impl BindPlugin for Recorder {
    async fn bind(&self, _s: &CycleState, _p: &PodInfo, _n: Sym) -> Status {
        self.log.lock().unwrap().push(format!("bind {}", self.name));
        if self.fail {
            Status::skip()
        } else {
            Status::success()
        }
    }
}

#[tokio::test]
async fn reserve_failure_unreserves_in_reverse_and_binders_skip_in_order() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let r = |name, fail| {
        Arc::new(Recorder {
            name,
            fail,
            log: log.clone(),
        })
    };
    let profile = rorqual_scheduler::framework::Profile::builder("p")
        .queue_sort(Arc::new(rorqual_scheduler::plugins::PrioritySort))
        .reserve(r("A", false))
        .reserve(r("B", true))
        .bind(r("A", false))
        .build()
        .unwrap();
    let s = Scheduler::new(profile);
    s.add_nodes(nodes(1, 1000));
    s.enqueue(pod("x", 1)).unwrap();
    let out = s.schedule_next().await.unwrap();
    assert!(matches!(out.outcome, Outcome::Unschedulable(_)));
    assert_eq!(
        *log.lock().unwrap(),
        ["reserve A", "reserve B", "unreserve B", "unreserve A"]
    );
    assert_eq!(
        s.with_snapshot(Snapshot::pod_count),
        0,
        "the assumed pod is forgotten"
    );

    log.lock().unwrap().clear();
    let profile = rorqual_scheduler::framework::Profile::builder("p")
        .queue_sort(Arc::new(rorqual_scheduler::plugins::PrioritySort))
        .bind(r("Skipper", true))
        .bind(r("Binder", false))
        .build()
        .unwrap();
    let s = Scheduler::new(profile);
    s.add_nodes(nodes(1, 1000));
    s.enqueue(pod("y", 1)).unwrap();
    assert!(matches!(
        s.schedule_next().await.unwrap().outcome,
        Outcome::Bound(_)
    ));
    assert_eq!(*log.lock().unwrap(), ["bind Skipper", "bind Binder"]);
}

#[derive(Debug)]
struct OnlyEven;
impl Plugin for OnlyEven {
    fn name(&self) -> &str {
        "OnlyEven"
    }
}
impl PreFilterPlugin for OnlyEven {
    fn pre_filter(
        &self,
        _s: &mut CycleState,
        _p: &PodInfo,
        snap: &Snapshot,
    ) -> (Option<NodeSet>, Status) {
        let set = snap
            .nodes()
            .iter()
            .map(|n| n.name)
            .filter(|n| n.as_str().trim_start_matches('n').parse::<u32>().unwrap() % 2 == 0)
            .collect();
        (Some(set), Status::success())
    }
}

#[tokio::test]
async fn prefilter_node_sets_restrict_candidates() {
    let profile = DefaultPlugins::new()
        .builder("p")
        .pre_filter(Arc::new(OnlyEven))
        .build()
        .unwrap();
    let s = Scheduler::new(profile);
    s.add_nodes(nodes(300, 100_000));
    for i in 0..50 {
        s.enqueue(pod(&format!("p{i}"), 10)).unwrap();
    }
    assert_eq!(s.run_until_idle().await.bound, 50);
    let odd_pods: usize = s.with_snapshot(|snap| {
        snap.nodes()
            .iter()
            .filter(|n| {
                n.name
                    .as_str()
                    .trim_start_matches('n')
                    .parse::<u32>()
                    .unwrap()
                    % 2
                    == 1
            })
            .map(|n| n.pods.len())
            .sum()
    });
    assert_eq!(odd_pods, 0);
}

fn view(name: &str, zone: &str) -> NodeView {
    NodeView::new(
        Node::new(name, Resources::new(2000, 4 << 30)).label("topology.kubernetes.io/zone", zone),
    )
}

#[tokio::test]
async fn placement_seam_places_sticks_and_releases() {
    let cap = Arc::new(MemoryIpCapacity::new());
    cap.add_pool("p", ["a", "b", "c"], [IpAddr::from([10, 0, 0, 1])]);
    let scheduler = Scheduler::new(DefaultPlugins::new().build().unwrap());
    let placement: Arc<dyn Placement> = Arc::new(scheduler.clone());
    let mut views = vec![view("a", "z1"), view("b", "z1"), view("c", "z2")];
    views[0].requested = Resources::new(1500, 0);
    let mut req = PlacementRequest::new(
        "game-0",
        AppKey::new("games", "game"),
        Revision::from("r1"),
        Resources::new(400, 1 << 20),
    );
    req.ordinal = Some(0);
    req.previous_node = Some("c".into());
    assert_eq!(
        placement.place(&req, &views).await.unwrap().node,
        "c",
        "sticks to its previous node"
    );
    req.previous_node = Some("gone".into());
    req.instance = "game-0b".into();
    let chosen = placement.place(&req, &views).await.unwrap().node;
    assert!(chosen == "b" || chosen == "c", "{chosen}");
    // Too big everywhere: core's Unschedulable error with the diagnosis.
    let mut big = PlacementRequest::new(
        "huge",
        AppKey::new("games", "game"),
        Revision::from("r1"),
        Resources::new(5000, 1),
    );
    big.labels.insert("app".into(), "game".into());
    let err = placement.place(&big, &views).await.unwrap_err().to_string();
    assert!(
        err.contains("cannot place huge: 0/3 nodes are available"),
        "{err}"
    );
    // Placed instances count until released, even before the engine's views list them.
    let before = scheduler.with_snapshot(|s| s.pod_count());
    assert_eq!(before, 2);
    placement.release("game-0b").await.unwrap();
    placement.release("game-0b").await.unwrap();
    let fill = PlacementRequest::new(
        "fill",
        AppKey::new("games", "x"),
        Revision::from("r1"),
        Resources::new(1600, 1),
    );
    let node = placement.place(&fill, &views).await.unwrap().node;
    assert_ne!(node, "a");
}

#[derive(Debug)]
struct FailingPreBind;
impl Plugin for FailingPreBind {
    fn name(&self) -> &str {
        "FailingPreBind"
    }
}
#[async_trait]
impl PreBindPlugin for FailingPreBind {
    async fn pre_bind(&self, _s: &CycleState, _p: &PodInfo, _n: Sym) -> Status {
        Status::error("volume attach failed")
    }
}

#[tokio::test]
async fn a_failed_binding_keeps_an_already_bound_claim_address() {
    let claimed = IpAddr::from([10, 0, 0, 7]);
    let cap = Arc::new(MemoryIpCapacity::new());
    cap.add_pool("p", ["n0"], [claimed, IpAddr::from([10, 0, 0, 8])]);
    // An earlier pod of identity games/game-1 took the address; its claim keeps it.
    cap.reserve(
        &ReserveRequest::new("p", "game-1-earlier")
            .identity("games/game-1")
            .address(claimed),
    )
    .unwrap();
    cap.release("game-1-earlier");
    let profile = DefaultPlugins::new()
        .underlay(cap.clone())
        .builder("p")
        .pre_bind(Arc::new(FailingPreBind))
        .build()
        .unwrap();
    let s = Scheduler::new(profile);
    s.add_nodes(nodes(1, 4000));
    let mut game = pod("game-1-uid", 100);
    game.identity = Some(StatefulIdentity {
        key: Arc::from("games/game-1"),
        previous_node: None,
        previous_zone: None,
    });
    game.underlay = Some(UnderlayRequest {
        pool: None,
        bound_claim: Some((Arc::from("p"), claimed)),
        claim: Some(Arc::from("games/game-1")),
    });
    s.enqueue(game).unwrap();
    let r = s.schedule_next().await.unwrap();
    assert!(matches!(r.outcome, Outcome::Error(_)), "{:?}", r.outcome);
    assert_eq!(
        cap.held_by("game-1-uid"),
        None,
        "the failed cycle gave it back"
    );
    assert_eq!(
        cap.claim("games/game-1").map(|c| c.address),
        Some(claimed),
        "the claim keeps the address"
    );
    assert_eq!(cap.free("p"), 1);
    // An address the failed cycle did take goes back.
    let mut fresh = pod("fresh", 100);
    fresh.underlay = Some(UnderlayRequest {
        pool: None,
        bound_claim: None,
        claim: None,
    });
    s.enqueue(fresh).unwrap();
    let r = s.schedule_next().await.unwrap();
    assert!(matches!(r.outcome, Outcome::Error(_)), "{:?}", r.outcome);
    assert_eq!(cap.held_by("fresh"), None);
    assert_eq!(cap.free("p"), 1);
}

#[derive(Debug)]
struct PanickingSort;
impl Plugin for PanickingSort {
    fn name(&self) -> &str {
        "PanickingSort"
    }
}
impl rorqual_scheduler::framework::QueueSortPlugin for PanickingSort {
    fn less(
        &self,
        _a: &rorqual_scheduler::framework::QueuedPodInfo,
        _b: &rorqual_scheduler::framework::QueuedPodInfo,
    ) -> bool {
        panic!("queue sort exploded")
    }
}

#[tokio::test]
async fn a_panicking_queue_sort_degrades_to_priority_order_and_keeps_scheduling() {
    let profile = DefaultPlugins::new()
        .builder("p")
        .queue_sort(Arc::new(PanickingSort))
        .build()
        .unwrap();
    let s = Scheduler::new(profile);
    s.add_nodes(nodes(2, 4000));
    for (uid, priority) in [("a", 0), ("b", 5), ("c", 0)] {
        s.enqueue(pod(uid, 100).priority(priority)).unwrap();
    }
    let failure = s.queue_sort_failure().expect("recorded");
    assert_eq!(failure.plugin(), Some("PanickingSort"));
    assert!(
        failure.message().contains("queue sort exploded"),
        "{failure}"
    );
    let first = s.schedule_next().await.unwrap();
    assert_eq!(&*first.pod.uid, "b", "higher priority first");
    assert_eq!(s.run_until_idle().await.bound, 2);
}

/// Makes every binding take a while, so concurrent placements overlap.
#[derive(Debug)]
struct SlowPreBind;
impl Plugin for SlowPreBind {
    fn name(&self) -> &str {
        "SlowPreBind"
    }
}
#[async_trait]
impl PreBindPlugin for SlowPreBind {
    async fn pre_bind(&self, _s: &CycleState, _p: &PodInfo, _n: Sym) -> Status {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Status::success()
    }
}

#[tokio::test]
async fn concurrent_placements_do_not_overcommit_a_node() {
    let profile = DefaultPlugins::new()
        .builder("p")
        .pre_bind(Arc::new(SlowPreBind))
        .build()
        .unwrap();
    let scheduler = Scheduler::new(profile);
    // The engine's views lag: they never list what was just placed.
    let views = vec![NodeView::new(Node::new(
        "only",
        Resources::new(1000, 4 << 30),
    ))];
    let requests: Vec<PlacementRequest> = (0..6)
        .map(|i| {
            PlacementRequest::new(
                format!("web-{i}"),
                AppKey::new("default", "web"),
                Revision::from("r1"),
                Resources::new(400, 1 << 20),
            )
        })
        .collect();
    let results =
        futures::future::join_all(requests.iter().map(|r| scheduler.place(r, &views))).await;
    let placed = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(placed, 2, "1000m fits two 400m instances: {results:?}");
    let used = scheduler.with_snapshot(|s| s.nodes()[0].requested.cpu.0);
    assert_eq!(used, 800);
}

#[tokio::test]
async fn a_deleted_gang_member_no_longer_counts_toward_min_member() {
    let s = Scheduler::with_default_plugins();
    s.add_nodes(nodes(2, 4000));
    let member = |uid: &str| {
        let mut p = pod(uid, 100);
        p.gang = Some(GangMembership {
            name: Arc::from("g"),
            min_member: 2,
            timeout: Some(Duration::from_secs(30)),
        });
        p
    };
    s.enqueue(member("m0")).unwrap();
    let r = s.schedule_next().await.unwrap();
    let Outcome::Waiting { binding, .. } = r.outcome else {
        panic!("{:?}", r.outcome)
    };
    // m0 is deleted while it waits: its binding ends, and it is not requeued.
    assert!(s.remove_pod("m0").is_some());
    let err = binding.await.unwrap().unwrap_err();
    assert!(err.message().contains("deleted"), "{err}");
    assert_eq!(s.queue_len(), (0, 0), "a deleted pod is not retried");
    assert_eq!(s.with_snapshot(Snapshot::pod_count), 0);
    // m1 alone is 1/2 members: it waits instead of binding on m0's count.
    s.enqueue(member("m1")).unwrap();
    let r = s.schedule_next().await.unwrap();
    let Outcome::Waiting { binding, .. } = r.outcome else {
        panic!("m1 must wait for a second member: {:?}", r.outcome)
    };
    s.enqueue(member("m2")).unwrap();
    let r = s.schedule_next().await.unwrap();
    assert!(matches!(r.outcome, Outcome::Bound(_)), "{:?}", r.outcome);
    assert!(binding.await.unwrap().is_ok());
}

/// Nominates the first node that failed filtering.
#[derive(Debug)]
struct NominateFirst;
impl Plugin for NominateFirst {
    fn name(&self) -> &str {
        "NominateFirst"
    }
}
impl rorqual_scheduler::framework::PostFilterPlugin for NominateFirst {
    fn post_filter(
        &self,
        _s: &CycleState,
        _p: &PodInfo,
        _snap: &Snapshot,
        statuses: &rorqual_scheduler::framework::NodeStatuses,
    ) -> (Option<Sym>, Status) {
        match statuses.first() {
            Some((node, _)) => (Some(*node), Status::success()),
            None => (None, Status::unschedulable("nothing to nominate")),
        }
    }
}

#[tokio::test]
async fn post_filter_runs_and_nominates_when_a_prefilter_set_leaves_no_node() {
    for with_set in [true, false] {
        let mut builder = DefaultPlugins::new()
            .builder("p")
            .post_filter(Arc::new(NominateFirst));
        if with_set {
            builder = builder.pre_filter(Arc::new(OnlyEven));
        }
        let s = Scheduler::new(builder.build().unwrap());
        s.add_nodes(nodes(4, 1000));
        s.enqueue(pod("too-big", 2000)).unwrap();
        let r = s.schedule_next().await.unwrap();
        assert!(
            matches!(r.outcome, Outcome::Unschedulable(_)),
            "{:?}",
            r.outcome
        );
        let nominated = r.nominated.expect("PostFilter nominated a node");
        if with_set {
            let index: u32 = nominated.as_str()[1..].parse().unwrap();
            assert_eq!(index % 2, 0, "only PreFilter's nodes were filtered");
        }
        // A pod that fits has no nomination.
        s.enqueue(pod("small", 100)).unwrap();
        assert!(s.schedule_next().await.unwrap().nominated.is_none());
    }
}

/// Nominates node `0` when it failed filtering, records the nodes Filter sees for pods named
/// `big` and counts how often Score runs for them.
#[derive(Debug)]
struct Nominator(&'static str, Mutex<Vec<String>>, Mutex<usize>);
impl Nominator {
    fn new(node: &'static str) -> Nominator {
        Nominator(node, Mutex::default(), Mutex::default())
    }
    /// The nodes Filter saw for `big` since the last call, and the Score calls for it.
    fn take(&self) -> (Vec<String>, usize) {
        let seen = std::mem::take(&mut *self.1.lock().unwrap());
        let scored = std::mem::take(&mut *self.2.lock().unwrap());
        (seen, scored)
    }
}
impl Plugin for Nominator {
    fn name(&self) -> &str {
        "Nominator"
    }
}
impl rorqual_scheduler::framework::PostFilterPlugin for Nominator {
    fn post_filter(
        &self,
        _s: &CycleState,
        _p: &PodInfo,
        _snap: &Snapshot,
        statuses: &rorqual_scheduler::framework::NodeStatuses,
    ) -> (Option<Sym>, Status) {
        match statuses.iter().find(|(n, _)| *n == Sym::new(self.0)) {
            Some((node, _)) => (Some(*node), Status::success()),
            None => (None, Status::unschedulable("my node did not fail")),
        }
    }
}
impl FilterPlugin for Nominator {
    fn filter(&self, _s: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if &*pod.name == "big" {
            self.1.lock().unwrap().push(node.name.to_string());
        }
        Status::success()
    }
}
impl ScorePlugin for Nominator {
    fn score(&self, _s: &CycleState, pod: &PodInfo, _n: &NodeInfo) -> Result<i64, Status> {
        if &*pod.name == "big" {
            *self.2.lock().unwrap() += 1;
        }
        Ok(0)
    }
}

/// Three 1000m nodes, each with a 600m pod already bound (`f0`, `f1`, `f2`), under resource
/// fit (least allocated) plus `nominator`; pod `big` (800m) is nominated to `n2` by its failed
/// first cycle.
async fn nominated_big_pod(nominator: &Arc<Nominator>) -> Scheduler {
    let fit = Arc::new(NodeResourcesFit::new(ScoringStrategy::LeastAllocated));
    let profile = rorqual_scheduler::framework::Profile::builder("p")
        .queue_sort(Arc::new(PrioritySort))
        // First, so it sees every node the scheduler filters.
        .filter(nominator.clone())
        .filter(fit.clone())
        .post_filter(nominator.clone())
        .score(fit, 1)
        .score(nominator.clone(), 1)
        .bind(Arc::new(DefaultBinder))
        .build()
        .unwrap();
    let s = Scheduler::new(profile);
    s.add_nodes(nodes(3, 1000));
    for i in 0..3 {
        s.add_bound_pod(&format!("n{i}"), pod(&format!("f{i}"), 600))
            .unwrap();
    }
    s.enqueue(pod("big", 800)).unwrap();
    let r = s.schedule_next().await.unwrap();
    assert!(
        matches!(r.outcome, Outcome::Unschedulable(_)),
        "{:?}",
        r.outcome
    );
    assert_eq!(r.nominated, Some(Sym::new("n2")));
    assert_eq!(s.nominated_node("big"), Some(Sym::new("n2")));
    nominator.take();
    s
}

#[tokio::test]
async fn a_nominated_node_that_fits_is_taken_first_without_scoring() {
    let nominator = Arc::new(Nominator::new("n2"));
    let s = nominated_big_pod(&nominator).await;
    // Room on n2 (900m free) and more on n0 (1000m free): scoring every node would pick n0,
    // the least allocated.
    s.remove_pod("f2");
    s.add_bound_pod("n2", pod("small", 100)).unwrap();
    s.remove_pod("f0");
    let r = s.schedule_next().await.unwrap();
    assert_eq!(&*r.pod.uid, "big");
    assert!(
        matches!(r.outcome, Outcome::Bound(n) if n == Sym::new("n2")),
        "the nominated node is used: {:?}",
        r.outcome
    );
    let (seen, scored) = nominator.take();
    assert_eq!(seen, ["n2"], "only the nominated node is filtered");
    assert_eq!(scored, 0, "and nothing is scored");
    assert_eq!(
        s.nominated_node("big"),
        None,
        "a bound pod has no nomination"
    );
}

#[tokio::test]
async fn a_nominated_node_that_does_not_fit_falls_back_to_every_node() {
    let nominator = Arc::new(Nominator::new("n2"));
    let s = nominated_big_pod(&nominator).await;
    // Room on n0 and n1, none on the nominated n2.
    s.remove_pod("f0");
    s.remove_pod("f1");
    s.add_bound_pod("n1", pod("small", 100)).unwrap();
    let r = s.schedule_next().await.unwrap();
    assert!(
        matches!(r.outcome, Outcome::Bound(n) if n == Sym::new("n0")),
        "the best of every node: {:?}",
        r.outcome
    );
    let (seen, scored) = nominator.take();
    assert_eq!(seen[0], "n2", "the nominated node is tried first: {seen:?}");
    let mut rest = seen[1..].to_vec();
    rest.sort();
    assert_eq!(rest, ["n0", "n1", "n2"], "then every node: {seen:?}");
    assert_eq!(scored, 2, "the two feasible nodes are scored");
    assert_eq!(s.nominated_node("big"), None);

    // A deleted pod's nomination is forgotten.
    s.enqueue(pod("big-2", 5000)).unwrap();
    let r = s.schedule_next().await.unwrap();
    assert_eq!(r.nominated, Some(Sym::new("n2")));
    assert_eq!(s.nominated_node("big-2"), Some(Sym::new("n2")));
    assert!(s.remove_pod("big-2").is_none(), "never assumed");
    assert_eq!(s.nominated_node("big-2"), None);
}

#[tokio::test]
async fn a_cycle_that_nominates_nothing_keeps_the_earlier_nomination() {
    let nominator = Arc::new(Nominator::new("n2"));
    let s = nominated_big_pod(&nominator).await;
    // n2 leaves: the next cycle fails everywhere and its PostFilter nominates nothing (as a
    // preemption plugin waiting for its victims to terminate would).
    assert!(s.remove_node("n2"));
    // A small node arrives (too small for `big`), which moves the pod out of backoff.
    s.add_nodes([NodeInfo::new("n3", Resources::new(100, 8 << 30))]);
    let r = s.schedule_next().await.unwrap();
    assert!(
        matches!(r.outcome, Outcome::Unschedulable(_)),
        "{:?}",
        r.outcome
    );
    assert_eq!(r.nominated, None);
    assert_eq!(
        s.nominated_node("big"),
        Some(Sym::new("n2")),
        "kept when nothing else is nominated"
    );
    // n2 comes back with room: it is tried first and taken without scoring.
    s.upsert_node(NodeInfo::new("n2", Resources::new(1000, 8 << 30)));
    nominator.take();
    let r = s.schedule_next().await.unwrap();
    assert!(
        matches!(r.outcome, Outcome::Bound(n) if n == Sym::new("n2")),
        "{:?}",
        r.outcome
    );
    assert_eq!(nominator.take(), (vec!["n2".to_owned()], 0));
}

/// Rejects every pod on its first attempt only.
#[derive(Debug, Default)]
struct RejectFirstAttempt {
    seen: Mutex<std::collections::HashSet<String>>,
}
impl Plugin for RejectFirstAttempt {
    fn name(&self) -> &str {
        "RejectFirstAttempt"
    }
}
impl PreFilterPlugin for RejectFirstAttempt {
    fn pre_filter(
        &self,
        _s: &mut CycleState,
        p: &PodInfo,
        _snap: &Snapshot,
    ) -> (Option<NodeSet>, Status) {
        if self.seen.lock().unwrap().insert(p.uid.to_string()) {
            (None, Status::unschedulable("not yet"))
        } else {
            (None, Status::success())
        }
    }
}

#[tokio::test]
async fn backed_off_pods_are_retried_when_their_backoff_expires_or_a_node_is_added() {
    let profile = DefaultPlugins::new()
        .builder("p")
        .pre_filter(Arc::new(RejectFirstAttempt::default()))
        .build()
        .unwrap();
    let s = Scheduler::new(profile);
    s.add_nodes(nodes(1, 1000));
    s.enqueue(pod("retry-me", 100)).unwrap();
    let started = std::time::Instant::now();
    let summary = s.run_until_idle_with_backoff(Duration::from_secs(5)).await;
    assert_eq!(
        (summary.unschedulable, summary.bound),
        (1, 1),
        "{summary:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited for the 1 s backoff"
    );
    assert_eq!(s.queue_len(), (0, 0));
    assert!(s.next_backoff().is_none());
    // A pod that can never fit: the wait is bounded.
    s.enqueue(pod("huge", 5000)).unwrap();
    let started = std::time::Instant::now();
    let summary = s
        .run_until_idle_with_backoff(Duration::from_millis(1500))
        .await;
    assert_eq!(summary.bound, 0);
    // Generous upper bound: a loaded 2-core CI machine can stall for seconds; what matters
    // is that the wait ends near `max_wait`, not after the pod's 2 s, 4 s, … backoffs forever.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.queue_len(), (0, 1));
    // Adding a node is a cluster event: the backed-off pod is active again at once.
    s.add_nodes([NodeInfo::new("big", Resources::new(8000, 8 << 30))]);
    assert_eq!(s.queue_len(), (1, 0));
    let r = s.schedule_next().await.unwrap();
    assert!(
        matches!(r.outcome, Outcome::Bound(n) if n == Sym::new("big")),
        "{:?}",
        r.outcome
    );
}

/// Holds pods labelled `hold=yes` at Permit (up to 30 s unless [`Gate::holding_for`] says
/// otherwise; a test allows them through the registry), records every pod PreBind sees, and
/// keeps pods labelled `gate` in PreBind until `open` is notified (then fails them when the
/// label is `fail`).
#[derive(Debug, Default)]
struct Gate {
    /// How long Permit holds a pod; 30 s when `None`.
    hold_for: Option<Duration>,
    registry: Mutex<Option<WaitingPods>>,
    pre_bound: Mutex<Vec<String>>,
    open: tokio::sync::Notify,
}
impl Gate {
    fn holding_for(hold_for: Duration) -> Gate {
        Gate {
            hold_for: Some(hold_for),
            ..Gate::default()
        }
    }
    fn allow(&self, uid: &str) {
        let registry = self.registry.lock().unwrap().clone().unwrap();
        registry.allow(uid, "Gate");
    }
    fn saw(&self, uid: &str) -> bool {
        self.pre_bound.lock().unwrap().iter().any(|u| u == uid)
    }
}
impl Plugin for Gate {
    fn name(&self) -> &str {
        "Gate"
    }
}
impl PermitPlugin for Gate {
    fn permit(
        &self,
        _s: &CycleState,
        pod: &PodInfo,
        _n: Sym,
        waiting: &WaitingPods,
    ) -> (Status, Duration) {
        *self.registry.lock().unwrap() = Some(waiting.clone());
        if pod.labels.get(Sym::new("hold")).is_some() {
            (
                Status::wait("held"),
                self.hold_for.unwrap_or(Duration::from_secs(30)),
            )
        } else {
            (Status::success(), Duration::ZERO)
        }
    }
}
#[async_trait]
impl PreBindPlugin for Gate {
    async fn pre_bind(&self, _s: &CycleState, pod: &PodInfo, _n: Sym) -> Status {
        self.pre_bound.lock().unwrap().push(pod.uid.to_string());
        match pod.labels.get(Sym::new("gate")) {
            None => Status::success(),
            Some(verdict) => {
                self.open.notified().await;
                if verdict == Sym::new("fail") {
                    Status::error("volume attach failed")
                } else {
                    Status::success()
                }
            }
        }
    }
}

/// Polls `done` every millisecond for up to 5 s.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..5000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{what}: not reached within 5 s");
}

#[tokio::test]
async fn a_deleted_stateful_pod_never_frees_its_replacements_underlay_address() {
    let cap = Arc::new(MemoryIpCapacity::new());
    cap.add_pool("p", ["n0"], (1..=10).map(|i| IpAddr::from([10, 0, 0, i])));
    let gate = Arc::new(Gate::default());
    let profile = DefaultPlugins::new()
        .underlay(cap.clone())
        .builder("p")
        .permit(gate.clone())
        .pre_bind(gate.clone())
        .build()
        .unwrap();
    let s = Scheduler::new(profile);
    s.add_nodes(nodes(1, 4000));
    let db = |uid: &str, identity: &str| {
        let mut p = pod(uid, 100);
        p.identity = Some(StatefulIdentity {
            key: Arc::from(identity),
            previous_node: None,
            previous_zone: None,
        });
        p.underlay = Some(UnderlayRequest {
            pool: None,
            bound_claim: None,
            claim: Some(Arc::from(identity)),
        });
        p
    };
    // A replacement (new uid, same identity) binds and holds the identity's address.
    let replace = |uid: &str, identity: &str| {
        s.enqueue(db(uid, identity)).unwrap();
        let s = s.clone();
        async move {
            let r = s.schedule_next().await.unwrap();
            assert!(matches!(r.outcome, Outcome::Bound(_)), "{:?}", r.outcome);
        }
    };
    let waiting = |r: rorqual_scheduler::ScheduleResult| match r.outcome {
        Outcome::Waiting { binding, .. } => binding,
        other => panic!("must wait at Permit: {other:?}"),
    };

    // Deleted while waiting at Permit.
    s.enqueue(db("db-0-old", "ns/db-0").label("hold", "yes"))
        .unwrap();
    let old = waiting(s.schedule_next().await.unwrap());
    assert!(s.remove_pod("db-0-old").is_some());
    assert_eq!(cap.held_by("db-0-old"), None, "the deletion released it");
    assert_eq!(cap.free("p"), 9, "the identity's claim keeps the address");
    replace("db-0-new", "ns/db-0").await;
    let held = cap
        .held_by("db-0-new")
        .expect("the replacement holds an address");
    assert_eq!(cap.claim("ns/db-0").map(|c| c.address), Some(held));
    assert!(old.await.unwrap().is_err());
    assert_eq!(
        cap.held_by("db-0-new"),
        Some(held),
        "the old binding freed the replacement's address"
    );

    // Allowed at Permit, deleted while its PreBind runs, which then fails.
    s.enqueue(
        db("db-1-old", "ns/db-1")
            .label("hold", "yes")
            .label("gate", "fail"),
    )
    .unwrap();
    let old_1 = waiting(s.schedule_next().await.unwrap());
    gate.allow("db-1-old");
    until("db-1-old in PreBind", || gate.saw("db-1-old")).await;
    assert!(s.remove_pod("db-1-old").is_some());
    replace("db-1-new", "ns/db-1").await;
    let held_1 = cap
        .held_by("db-1-new")
        .expect("the replacement holds an address");
    gate.open.notify_one();
    assert!(old_1.await.unwrap().is_err());
    assert_eq!(
        cap.held_by("db-1-new"),
        Some(held_1),
        "the old binding freed the replacement's address"
    );

    // Allowed at Permit and deleted before its binding ran: nothing is bound for it.
    s.enqueue(db("db-2-old", "ns/db-2").label("hold", "yes"))
        .unwrap();
    let old_2 = waiting(s.schedule_next().await.unwrap());
    gate.allow("db-2-old");
    assert!(s.remove_pod("db-2-old").is_some());
    let err = old_2.await.unwrap().unwrap_err();
    assert!(err.message().contains("deleted"), "{err}");
    assert!(!gate.saw("db-2-old"), "PreBind ran for a deleted pod");

    assert_eq!(cap.held_by("db-2-old"), None);
    assert!(
        cap.claim("ns/db-2").is_some(),
        "its claim keeps its address"
    );
    assert_eq!(
        cap.free("p"),
        7,
        "two addresses held and one claimed, no double hand-out"
    );
    assert_eq!(s.with_snapshot(Snapshot::pod_count), 2);
    assert_eq!(s.queue_len(), (0, 0), "no deleted pod is retried");
}

#[tokio::test]
async fn a_gang_member_deleted_while_waiting_still_releases_its_group() {
    let cap = Arc::new(MemoryIpCapacity::new());
    cap.add_pool("p", ["n0"], (1..=10).map(|i| IpAddr::from([10, 0, 0, i])));
    let profile = DefaultPlugins::new().underlay(cap.clone()).build().unwrap();
    let s = Scheduler::new(profile);
    s.add_nodes(nodes(1, 4000));
    let mut bindings = Vec::new();
    for uid in ["g0", "g1"] {
        let mut p = pod(uid, 100);
        p.gang = Some(GangMembership {
            name: Arc::from("g"),
            min_member: 3,
            timeout: Some(Duration::from_secs(30)),
        });
        p.underlay = Some(UnderlayRequest {
            pool: None,
            bound_claim: None,
            claim: None,
        });
        s.enqueue(p).unwrap();
        match s.schedule_next().await.unwrap().outcome {
            Outcome::Waiting { binding, .. } => bindings.push(binding),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(cap.free("p"), 8);
    assert!(s.remove_pod("g0").is_some());
    let g1 = bindings.pop().unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), g1)
        .await
        .expect("the sibling is released at once, not after its 30 s Permit timeout")
        .unwrap()
        .unwrap_err();
    assert!(err.message().contains("gang member"), "{err}");
    assert!(bindings.pop().unwrap().await.unwrap().is_err());
    assert_eq!(cap.free("p"), 10, "both addresses came back, once each");
    assert_eq!(s.with_snapshot(Snapshot::pod_count), 0);
    assert_eq!(
        s.queue_len(),
        (0, 1),
        "the sibling is retried, the deleted pod is not"
    );
}

#[tokio::test]
async fn a_pod_deleted_while_its_batch_binds_is_not_requeued() {
    let gate = Arc::new(Gate::default());
    let profile = DefaultPlugins::new()
        .builder("p")
        .pre_bind(gate.clone())
        .build()
        .unwrap();
    let s = Scheduler::new(profile);
    s.add_nodes(nodes(1, 1000));
    // One batch: `slow` binds slowly; `huge` fits no node, so its cycle fails.
    s.enqueue(pod("slow", 100).label("gate", "pass")).unwrap();
    s.enqueue(pod("huge", 8000)).unwrap();
    let (summary, ()) = tokio::join!(s.run_until_idle(), async {
        until("slow in PreBind", || gate.saw("slow")).await;
        // Deleted after its cycle failed, before the batch reached its result.
        assert!(s.remove_pod("huge").is_none(), "never assumed");
        gate.open.notify_one();
    });
    assert_eq!(summary.bound, 1, "{summary:?}");
    assert_eq!(summary.unschedulable, 1, "{summary:?}");
    assert_eq!(s.queue_len(), (0, 0), "the deleted pod is not retried");
    // A node it would fit changes nothing: no phantom pod is scheduled.
    s.add_nodes([NodeInfo::new("big", Resources::new(16000, 8 << 30))]);
    assert_eq!(s.run_until_idle().await, Default::default());
    assert_eq!(s.with_snapshot(Snapshot::pod_count), 1);
}

/// Nominates node `.1` for the pod named `.0` when that node failed filtering (as preemption
/// would, once it picked victims there).
#[derive(Debug)]
struct NominateFor(&'static str, &'static str);
impl Plugin for NominateFor {
    fn name(&self) -> &str {
        "NominateFor"
    }
}
impl rorqual_scheduler::framework::PostFilterPlugin for NominateFor {
    fn post_filter(
        &self,
        _s: &CycleState,
        pod: &PodInfo,
        _snap: &Snapshot,
        statuses: &rorqual_scheduler::framework::NodeStatuses,
    ) -> (Option<Sym>, Status) {
        let node = Sym::new(self.1);
        if &*pod.name == self.0 && statuses.iter().any(|(n, _)| *n == node) {
            (Some(node), Status::success())
        } else {
            (None, Status::unschedulable("not the pod to nominate for"))
        }
    }
}

/// Three 1000m nodes holding 900m (`f0`), 900m (`f1`) and 600m (`f2`); pod `big` (800m,
/// priority 100) fails everywhere and is nominated to `n2`, where deleting `f2` (its victim)
/// would make room. It waits in backoff.
async fn big_nominated_to_n2() -> Scheduler {
    let profile = DefaultPlugins::new()
        .builder("p")
        .post_filter(Arc::new(NominateFor("big", "n2")))
        .build()
        .unwrap();
    let s = Scheduler::new(profile);
    s.add_nodes(nodes(3, 1000));
    for (i, cpu) in [900, 900, 600].into_iter().enumerate() {
        s.add_bound_pod(&format!("n{i}"), pod(&format!("f{i}"), cpu))
            .unwrap();
    }
    s.enqueue(pod("big", 800).priority(100)).unwrap();
    let r = s.schedule_next().await.unwrap();
    assert!(
        matches!(r.outcome, Outcome::Unschedulable(_)),
        "{:?}",
        r.outcome
    );
    assert_eq!(s.nominated_node("big"), Some(Sym::new("n2")));
    assert_eq!(s.queue_len(), (0, 1), "big waits in backoff");
    s
}

#[tokio::test]
async fn a_nomination_holds_room_against_pods_of_lower_or_equal_priority() {
    let s = big_nominated_to_n2().await;
    // `small` fits only on n2 (400m free), but there it would leave `big` without room once
    // `f2` is gone: n2 with `big` counted is full.
    for (name, priority) in [("small", 0), ("peer", 100)] {
        s.enqueue(pod(name, 300).priority(priority)).unwrap();
        let r = s.schedule_next().await.unwrap();
        assert_eq!(&*r.pod.uid, name);
        let Outcome::Unschedulable(status) = r.outcome else {
            panic!("{name} must not take big's room: {:?}", r.outcome)
        };
        assert!(status.message().ends_with("3 Insufficient cpu"), "{status}");
    }
    // The extender's filter verb and bind re-check count the nomination too.
    let small = pod("small-2", 300);
    let eval = s.with_snapshot(|snap| s.evaluate(&small, snap, None, false));
    assert!(eval.unwrap().1.feasible.is_empty());
    let err = s.bind_to_node(small, "n2").await.unwrap_err();
    assert!(err.message().contains("Insufficient cpu"), "{err}");

    // A pod of higher priority than `big` is not held back.
    s.enqueue(pod("urgent", 300).priority(1000)).unwrap();
    let r = s.schedule_next().await.unwrap();
    assert_eq!(&*r.pod.uid, "urgent");
    assert!(
        matches!(r.outcome, Outcome::Bound(n) if n == Sym::new("n2")),
        "{:?}",
        r.outcome
    );

    // `urgent` finishes and the victim `f2` is deleted: `big` (first by priority) takes n2
    // through its nomination, which does not count `big` itself.
    s.remove_pod("urgent");
    s.remove_pod("f2");
    let r = s.schedule_next().await.unwrap();
    assert_eq!(&*r.pod.uid, "big");
    assert!(
        matches!(r.outcome, Outcome::Bound(n) if n == Sym::new("n2")),
        "{:?}",
        r.outcome
    );
    assert_eq!(s.nominated_node("big"), None);
}

#[tokio::test]
async fn deleting_a_nominated_pod_releases_the_room_it_held() {
    let s = big_nominated_to_n2().await;
    s.enqueue(pod("small", 300)).unwrap();
    let r = s.schedule_next().await.unwrap();
    assert!(
        matches!(r.outcome, Outcome::Unschedulable(_)),
        "{:?}",
        r.outcome
    );
    assert!(s.remove_pod("big").is_none(), "never assumed");
    assert_eq!(s.nominated_node("big"), None);
    // The deletion moved `small` out of backoff; n2's room is free for it now.
    let r = s.schedule_next().await.unwrap();
    assert_eq!(&*r.pod.uid, "small");
    assert!(
        matches!(r.outcome, Outcome::Bound(n) if n == Sym::new("n2")),
        "{:?}",
        r.outcome
    );
    assert!(s.schedule_next().await.is_none(), "big is gone");
}
