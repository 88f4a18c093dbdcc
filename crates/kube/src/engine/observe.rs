//! Kubernetes objects read back as rorqual's model (pure): pods as instances, nodes as nodes,
//! events as events, and the counts of a revision group; [`EventFeed`] and
//! [`EventForwarder`] turn a watch of Kubernetes Events into an event stream a consumer can
//! trust (each occurrence once across re-lists, a lagging consumer told what it lost).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Event as KubeEvent, Node as KubeNode, Pod};
use kube::runtime::watcher;
use rorqual_core::model::{
    AppKey, Cpu, Event, EventType, Instance, InstancePhase, Memory, Node, Resources, Revision,
    Taint, TaintEffect,
};
use tokio::sync::mpsc;

use super::names::{self, LABEL_APP, LABEL_REVISION};

/// The application and revision a pod belongs to, from its labels.
pub fn pod_app(pod: &Pod) -> Option<(AppKey, Revision)> {
    let labels = pod.metadata.labels.as_ref()?;
    let app = labels.get(LABEL_APP)?;
    let revision = labels.get(LABEL_REVISION)?;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    Some((
        AppKey::new(namespace, app.clone()),
        Revision(revision.clone()),
    ))
}

fn time(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> SystemTime {
    t.map_or(SystemTime::UNIX_EPOCH, |t| SystemTime::from(t.0))
}

/// A pod as an instance. `stateful` names the set whose pods carry ordinals.
pub fn instance(pod: &Pod, stateful: Option<&str>) -> Option<Instance> {
    let (app, revision) = pod_app(pod)?;
    let name = pod.metadata.name.clone()?;
    let mut i = Instance::new(
        name.clone(),
        app,
        revision,
        time(pod.metadata.creation_timestamp.as_ref()),
    );
    i.ordinal = stateful.and_then(|set| names::ordinal_of(set, &name));
    let spec = pod.spec.as_ref();
    i.node = spec.and_then(|s| s.node_name.clone());
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        for p in c.ports.iter().flatten() {
            if let (Some(n), Ok(number)) = (&p.name, u16::try_from(p.container_port)) {
                i.ports.insert(n.clone(), number);
            }
        }
    }
    let status = pod.status.as_ref();
    i.address = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    let containers = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    i.restarts = containers
        .iter()
        .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
        .sum();
    // A terminating pod takes no new traffic (the endpoint controllers leave it out) and
    // counts as neither ready nor available, whatever its last Ready condition said.
    i.ready = pod.metadata.deletion_timestamp.is_none()
        && status
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
    let waiting = containers
        .iter()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .next();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    i.phase = if pod.metadata.deletion_timestamp.is_some() {
        InstancePhase::Terminating
    } else {
        match phase {
            "Running"
                if waiting.is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff")) =>
            {
                InstancePhase::CrashLoopBackOff
            }
            "Running" if i.ready => InstancePhase::Running,
            "Running" => InstancePhase::Starting,
            "Succeeded" | "Failed" => InstancePhase::Stopped,
            _ => InstancePhase::Pending,
        }
    };
    i.reason = waiting
        .map(|w| {
            let reason = w.reason.clone().unwrap_or_default();
            match &w.message {
                Some(m) if !m.is_empty() => format!("{reason}: {m}"),
                _ => reason,
            }
        })
        .or_else(|| {
            // Pending with a scheduling failure: the PodScheduled condition says why.
            status?
                .conditions
                .as_deref()?
                .iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                .and_then(|c| c.message.clone())
        })
        .or_else(|| status.and_then(|s| s.message.clone()));
    Some(i)
}

/// A node's resources from a Kubernetes resource list (unparsable quantities count as 0).
fn resources(
    list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> Resources {
    let cpu = list
        .and_then(|l| l.get("cpu"))
        .and_then(|q| q.0.parse::<Cpu>().ok())
        .unwrap_or_default();
    let memory = list
        .and_then(|l| l.get("memory"))
        .and_then(|q| q.0.parse::<Memory>().ok())
        .unwrap_or_default();
    Resources { cpu, memory }
}

/// A Kubernetes node as a node.
pub fn node(n: &KubeNode) -> Node {
    let status = n.status.as_ref();
    let mut out = Node::new(
        n.metadata.name.clone().unwrap_or_default(),
        resources(status.and_then(|s| s.capacity.as_ref())),
    );
    out.allocatable = resources(status.and_then(|s| s.allocatable.as_ref()));
    out.labels = n.metadata.labels.clone().unwrap_or_default();
    let spec = n.spec.as_ref();
    out.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
    out.taints = spec
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .filter_map(|t| {
            let effect = match t.effect.as_str() {
                "NoSchedule" => TaintEffect::NoSchedule,
                "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
                "NoExecute" => TaintEffect::NoExecute,
                _ => return None,
            };
            Some(Taint {
                key: t.key.clone(),
                value: t.value.clone().unwrap_or_default(),
                effect,
            })
        })
        .collect();
    out.ready = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    out
}

/// Counts `(current, ready, available)` of a group from its pods: every pod not terminating
/// or finished is current; ready ones are available (rorqual sets no `minReadySeconds`). Read
/// from the pod reflector, so they never lag a ReplicaSet controller's status update.
pub fn counts(pods: &[&Instance]) -> (u32, u32, u32) {
    let live = pods
        .iter()
        .filter(|i| !matches!(i.phase, InstancePhase::Terminating | InstancePhase::Stopped));
    let (mut current, mut ready) = (0u32, 0u32);
    for i in live {
        current += 1;
        ready += u32::from(i.ready);
    }
    (current, ready, ready)
}

/// Whole seconds since the Unix epoch.
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// When `e` last happened, if it says.
fn event_time(e: &KubeEvent) -> Option<SystemTime> {
    e.last_timestamp
        .as_ref()
        .or(e.first_timestamp.as_ref())
        .map(|t| SystemTime::from(t.0))
        .or_else(|| e.event_time.as_ref().map(|t| SystemTime::from(t.0)))
}

/// Whether `e` last happened in second `since` or later (event timestamps are whole seconds).
pub fn happened_since(e: &KubeEvent, since: u64) -> bool {
    event_time(e).is_some_and(|t| unix_seconds(t) >= since)
}

/// A Kubernetes event as an event, if it concerns a pod or workload of a known app.
/// `app_of(kind, namespace, name)` says which app owns the involved object.
pub fn event(e: &KubeEvent, app_of: impl Fn(&str, &str, &str) -> Option<AppKey>) -> Option<Event> {
    let involved = &e.involved_object;
    let kind = involved.kind.as_deref()?;
    let namespace = involved.namespace.as_deref().unwrap_or_default();
    let name = involved.name.as_deref()?;
    let app = app_of(kind, namespace, name)?;
    let event_type = match e.type_.as_deref() {
        Some("Warning") => EventType::Warning,
        _ => EventType::Normal,
    };
    let mut out = Event::new(
        event_type,
        e.reason.clone().unwrap_or_default(),
        e.message.clone().unwrap_or_default(),
    )
    .app(app);
    if kind == "Pod" {
        out = out.instance(name);
    }
    if let Some(t) = event_time(e) {
        out.time = t;
    }
    Some(out)
}

/// How many times a Kubernetes Event says it happened (`series.count`, else `count`, else
/// once).
fn occurrences(e: &KubeEvent) -> i32 {
    e.series
        .as_ref()
        .and_then(|s| s.count)
        .or(e.count)
        .unwrap_or(1)
}

/// What [`EventFeed`] remembers of an Event object it passed.
#[derive(Debug, Clone)]
struct Passed {
    version: Option<String>,
    count: i32,
}

/// Kubernetes Events from a watch as a consumer expects them: each occurrence once.
///
/// kube's watcher re-lists after a failed or expired watch and then delivers every Event
/// object again; an Event that happens again is the same object with its count raised and
/// `lastTimestamp` moved. The feed passes an Event object when it is new, or changed (another
/// `resourceVersion`) with a higher count than when last passed, and only if it happened in
/// second `since` or later; what a re-list delivers again is dropped. It remembers the
/// Event objects that still exist (forgetting deleted ones, and after each re-list those the
/// list no longer had), so its memory follows the cluster's Events.
#[derive(Debug)]
pub struct EventFeed {
    since: u64,
    passed: HashMap<String, Passed>,
    /// The UIDs listed by the re-list in progress.
    listing: Option<HashSet<String>>,
}

impl EventFeed {
    /// A feed of the Events that happen in second `since` (Unix time) or later.
    pub fn new(since: u64) -> Self {
        EventFeed {
            since,
            passed: HashMap::new(),
            listing: None,
        }
    }

    /// The Event object of a watch event to pass on, if any.
    pub fn accept(&mut self, event: watcher::Event<KubeEvent>) -> Option<KubeEvent> {
        match event {
            watcher::Event::Init => {
                self.listing = Some(HashSet::new());
                None
            }
            watcher::Event::InitDone => {
                if let Some(listed) = self.listing.take() {
                    self.passed.retain(|uid, _| listed.contains(uid));
                }
                None
            }
            watcher::Event::InitApply(e) => {
                if let (Some(listed), Some(uid)) = (&mut self.listing, &e.metadata.uid) {
                    listed.insert(uid.clone());
                }
                self.admit(e)
            }
            watcher::Event::Apply(e) => self.admit(e),
            watcher::Event::Delete(e) => {
                if let Some(uid) = &e.metadata.uid {
                    self.passed.remove(uid);
                }
                None
            }
        }
    }

    fn admit(&mut self, e: KubeEvent) -> Option<KubeEvent> {
        if !happened_since(&e, self.since) {
            return None;
        }
        let Some(uid) = e.metadata.uid.clone() else {
            return Some(e);
        };
        let count = occurrences(&e);
        if let Some(before) = self.passed.get(&uid)
            && (before.version == e.metadata.resource_version || count <= before.count)
        {
            return None;
        }
        self.passed.insert(
            uid,
            Passed {
                version: e.metadata.resource_version.clone(),
                count,
            },
        );
        Some(e)
    }
}

/// The reason of the event [`EventForwarder`] sends after it had to drop events.
pub const EVENTS_DROPPED: &str = "EventsDropped";

/// The consumer of an event stream is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event stream's consumer is gone")]
pub struct ConsumerGone;

/// Hands events to a bounded channel without ever making the watch behind it wait.
///
/// A consumer that lags until the channel is full loses the events that do not fit, and is
/// told so: as soon as there is room again, a Warning event [`EVENTS_DROPPED`] (no app) says
/// how many were lost, and the first drop of a run is logged at warn level. Blocking instead
/// would stall the watch until the apiserver closes it, and the Events that expire meanwhile
/// would be lost without a word.
#[derive(Debug)]
pub struct EventForwarder {
    tx: mpsc::Sender<Event>,
    dropped: u64,
}

impl EventForwarder {
    /// Forwards into `tx`.
    pub fn new(tx: mpsc::Sender<Event>) -> Self {
        EventForwarder { tx, dropped: 0 }
    }

    /// How many events were dropped since the consumer was last told.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Sends `event`, or counts it as dropped when the channel is full.
    ///
    /// # Errors
    ///
    /// [`ConsumerGone`] when the receiver was dropped: stop watching.
    pub fn send(&mut self, event: Event) -> Result<(), ConsumerGone> {
        if self.dropped > 0 {
            let lost = Event::new(
                EventType::Warning,
                EVENTS_DROPPED,
                format!(
                    "{} events were dropped: the consumer fell behind the cluster's events",
                    self.dropped
                ),
            );
            match self.tx.try_send(lost) {
                Ok(()) => self.dropped = 0,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.dropped += 1;
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(ConsumerGone),
            }
        }
        match self.tx.try_send(event) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.dropped == 0 {
                    tracing::warn!(
                        capacity = self.tx.max_capacity(),
                        "kube engine: the event consumer lags; dropping events until it catches up"
                    );
                }
                self.dropped += 1;
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ConsumerGone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kube_event(uid: &str, version: &str, count: i32) -> KubeEvent {
        serde_json::from_value(json!({
            "metadata": {"name": format!("e-{uid}"), "namespace": "g", "uid": uid, "resourceVersion": version},
            "involvedObject": {"kind": "Pod", "namespace": "g", "name": "web-1"},
            "reason": "BackOff", "message": "back-off restarting", "type": "Warning",
            "count": count, "lastTimestamp": "2026-06-01T00:00:10Z"
        }))
        .unwrap()
    }

    /// 2026-06-01T00:00:00Z
    const JUNE: u64 = 1_780_272_000;

    #[test]
    fn a_relist_does_not_repeat_events_and_a_repeat_occurrence_passes_once() {
        let mut feed = EventFeed::new(JUNE);
        let mut passed = Vec::new();
        let mut feed_in = |e: watcher::Event<KubeEvent>| {
            if let Some(e) = feed.accept(e) {
                passed.push((e.metadata.uid.clone().unwrap(), occurrences(&e)));
            }
        };
        feed_in(watcher::Event::Init);
        feed_in(watcher::Event::InitApply(kube_event("a", "10", 1)));
        feed_in(watcher::Event::InitDone);
        feed_in(watcher::Event::Apply(kube_event("b", "11", 1)));
        // The watch expired: kube's watcher lists everything again.
        feed_in(watcher::Event::Init);
        feed_in(watcher::Event::InitApply(kube_event("a", "10", 1)));
        feed_in(watcher::Event::InitApply(kube_event("b", "11", 1)));
        feed_in(watcher::Event::InitDone);
        // "a" happens twice more while the watch is down: the re-list brings it with count 3.
        feed_in(watcher::Event::Init);
        feed_in(watcher::Event::InitApply(kube_event("a", "14", 3)));
        feed_in(watcher::Event::InitApply(kube_event("b", "11", 1)));
        feed_in(watcher::Event::InitDone);
        // Delivered again after the re-list with the same version: not again.
        feed_in(watcher::Event::Apply(kube_event("a", "14", 3)));
        feed_in(watcher::Event::Apply(kube_event("a", "15", 4)));
        assert_eq!(
            passed,
            [
                ("a".to_owned(), 1),
                ("b".to_owned(), 1),
                ("a".to_owned(), 3),
                ("a".to_owned(), 4)
            ]
        );
    }

    #[test]
    fn the_feed_forgets_deleted_and_unlisted_events_and_skips_old_ones() {
        let mut feed = EventFeed::new(JUNE + 60);
        assert!(
            feed.accept(watcher::Event::Apply(kube_event("old", "1", 1)))
                .is_none(),
            "happened before the feed started"
        );
        let mut feed = EventFeed::new(JUNE);
        assert!(
            feed.accept(watcher::Event::Apply(kube_event("a", "1", 1)))
                .is_some()
        );
        assert!(
            feed.accept(watcher::Event::Apply(kube_event("b", "2", 1)))
                .is_some()
        );
        feed.accept(watcher::Event::Delete(kube_event("a", "3", 1)));
        feed.accept(watcher::Event::Init);
        feed.accept(watcher::Event::InitDone);
        assert!(feed.passed.is_empty(), "{:?}", feed.passed);
    }

    #[tokio::test]
    async fn a_lagging_consumer_is_told_how_many_events_it_lost() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut forwarder = EventForwarder::new(tx);
        for i in 0..5 {
            forwarder
                .send(Event::new(EventType::Normal, "Started", format!("e{i}")))
                .unwrap();
        }
        assert_eq!(forwarder.dropped(), 3);
        assert_eq!(rx.recv().await.unwrap().message, "e0");
        assert_eq!(rx.recv().await.unwrap().message, "e1");
        forwarder
            .send(Event::new(EventType::Normal, "Started", "e5"))
            .unwrap();
        let lost = rx.recv().await.unwrap();
        assert_eq!(
            (lost.event_type, lost.reason.as_str()),
            (EventType::Warning, EVENTS_DROPPED)
        );
        assert!(
            lost.message.starts_with("3 events were dropped"),
            "{}",
            lost.message
        );
        assert_eq!(rx.recv().await.unwrap().message, "e5");
        assert_eq!(forwarder.dropped(), 0);
        drop(rx);
        assert_eq!(
            forwarder.send(Event::new(EventType::Normal, "Started", "e6")),
            Err(ConsumerGone)
        );
    }
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_running_ready_pod_is_a_running_ready_instance() {
        let p = pod(json!({
            "metadata": {"name": "game-1", "namespace": "g", "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"rorqual.io/app": "game", "rorqual.io/revision": "abc"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": "127.1.0.5",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "image": "x", "imageID": "", "ready": true, "restartCount": 2,
                    "state": {"running": {}}}]}
        }));
        let i = instance(&p, Some("game")).unwrap();
        assert_eq!(i.id, "game-1");
        assert_eq!(i.ordinal, Some(1));
        assert_eq!(i.app, AppKey::new("g", "game"));
        assert_eq!(i.revision.as_str(), "abc");
        assert_eq!(i.node.as_deref(), Some("n1"));
        assert_eq!(i.address, Some("127.1.0.5".parse().unwrap()));
        assert_eq!(i.ports.get("http"), Some(&8080));
        assert_eq!(
            (i.phase, i.ready, i.restarts),
            (InstancePhase::Running, true, 2)
        );
    }

    #[test]
    fn waiting_reasons_and_scheduling_failures_are_the_reason() {
        let crash = pod(json!({
            "metadata": {"name": "w-1", "namespace": "g", "labels": {"rorqual.io/app": "w", "rorqual.io/revision": "r"}},
            "status": {"phase": "Running", "containerStatuses": [{"name": "app", "image": "x", "imageID": "", "ready": false, "restartCount": 5,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}}]}
        }));
        let i = instance(&crash, None).unwrap();
        assert_eq!(i.phase, InstancePhase::CrashLoopBackOff);
        assert_eq!(i.reason.as_deref(), Some("CrashLoopBackOff: back-off 40s"));
        let pending = pod(json!({
            "metadata": {"name": "w-2", "namespace": "g", "labels": {"rorqual.io/app": "w", "rorqual.io/revision": "r"}},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "message": "0/3 nodes are available: 3 Insufficient cpu."}]}
        }));
        let i = instance(&pending, None).unwrap();
        assert_eq!(i.phase, InstancePhase::Pending);
        assert_eq!(
            i.reason.as_deref(),
            Some("0/3 nodes are available: 3 Insufficient cpu.")
        );
        // Not rorqual's: no labels, no instance.
        assert!(instance(&pod(json!({"metadata": {"name": "x"}})), None).is_none());
    }

    #[test]
    fn nodes_keep_allocatable_taints_and_readiness() {
        let n: KubeNode = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"zone": "a"}},
            "spec": {"unschedulable": true, "taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]},
            "status": {"capacity": {"cpu": "4", "memory": "8Gi", "pods": "1k"},
                "allocatable": {"cpu": "3500m", "memory": "7Gi"},
                "conditions": [{"type": "Ready", "status": "False"}]}
        }))
        .unwrap();
        let node = node(&n);
        assert_eq!(node.capacity, Resources::new(4000, 8 << 30));
        assert_eq!(node.allocatable, Resources::new(3500, 7 << 30));
        assert!(node.unschedulable && !node.ready);
        assert_eq!(node.taints.len(), 1);
        assert_eq!(node.labels.get("zone").map(String::as_str), Some("a"));
    }
}
