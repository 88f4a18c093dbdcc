//! The scheduling queue: an active heap ordered by the QueueSort plugin, and a backoff queue
//! (1 s doubling to 10 s per failed attempt). Time is passed in, so the logic is pure.
//!
//! A QueueSort plugin that panics does not take the scheduler down: the queue records an Error
//! status for it ([`SchedulingQueue::sort_failure`]) and orders by priority, then arrival
//! (FIFO), from then on.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rorqual_core::backoff::Backoff;

use crate::framework::{QueueSortPlugin, QueuedPodInfo, Status};
use crate::snapshot::PodInfo;

/// The first backoff.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// The longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// kube-scheduler's pod backoff policy: 1 s doubling to 10 s.
pub const POD_BACKOFF: Backoff = Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF);

/// The backoff after `attempts` failed attempts: 1 s, 2 s, 4 s, 8 s, then 10 s.
pub fn backoff_for(attempts: u32) -> Duration {
    match attempts {
        0 => Duration::ZERO,
        n => POD_BACKOFF.delay(n - 1),
    }
}

/// The order used once the QueueSort plugin has panicked: higher priority first, then FIFO.
fn fallback_less(a: &QueuedPodInfo, b: &QueuedPodInfo) -> bool {
    a.pod.priority > b.pod.priority
        || (a.pod.priority == b.pod.priority && a.timestamp < b.timestamp)
}

/// Active and backoff queues.
#[derive(Debug)]
pub struct SchedulingQueue {
    sort: Arc<dyn QueueSortPlugin>,
    /// Set once the QueueSort plugin panicked; the fallback order applies from then on.
    sort_failure: Option<Status>,
    active: Vec<QueuedPodInfo>,
    backoff: Vec<(Instant, QueuedPodInfo)>,
    known: HashMap<Arc<str>, ()>,
}

impl SchedulingQueue {
    /// An empty queue ordered by `sort`.
    pub fn new(sort: Arc<dyn QueueSortPlugin>) -> SchedulingQueue {
        SchedulingQueue {
            sort,
            sort_failure: None,
            active: Vec::new(),
            backoff: Vec::new(),
            known: HashMap::new(),
        }
    }

    /// Adds a new pod to the active queue (a pod already queued is ignored; returns false).
    pub fn add(&mut self, pod: Arc<PodInfo>, now: Instant) -> bool {
        if self.known.insert(pod.uid.clone(), ()).is_some() {
            return false;
        }
        self.push_active(QueuedPodInfo {
            pod,
            timestamp: now,
            attempts: 0,
        });
        true
    }

    /// Puts a pod that failed back, into backoff until `now + backoff_for(attempts)`.
    pub fn requeue_backoff(&mut self, mut info: QueuedPodInfo, now: Instant) {
        info.attempts += 1;
        let ready = now + backoff_for(info.attempts);
        self.known.insert(info.pod.uid.clone(), ());
        self.backoff.push((ready, info));
    }

    /// Moves pods whose backoff has expired to the active queue.
    pub fn flush_backoff(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.backoff.len() {
            if self.backoff[i].0 <= now {
                let (_, info) = self.backoff.swap_remove(i);
                self.push_active(info);
            } else {
                i += 1;
            }
        }
    }

    /// Moves every backed-off pod to the active queue now (a cluster event may help them).
    pub fn move_all_to_active(&mut self) {
        for (_, info) in std::mem::take(&mut self.backoff) {
            self.push_active(info);
        }
    }

    /// The next pod to schedule (after flushing expired backoffs).
    pub fn pop(&mut self, now: Instant) -> Option<QueuedPodInfo> {
        self.flush_backoff(now);
        if self.active.is_empty() {
            return None;
        }
        let last = self.active.len() - 1;
        self.active.swap(0, last);
        let top = self.active.pop();
        self.sift_down(0);
        if let Some(info) = &top {
            self.known.remove(&info.pod.uid);
        }
        top
    }

    /// Removes pod `uid` from the queues.
    pub fn remove(&mut self, uid: &str) {
        self.known.remove(uid);
        self.backoff.retain(|(_, i)| &*i.pod.uid != uid);
        if let Some(pos) = self.active.iter().position(|i| &*i.pod.uid == uid) {
            let last = self.active.len() - 1;
            self.active.swap(pos, last);
            self.active.pop();
            if pos < self.active.len() {
                self.sift_down(pos);
                self.sift_up(pos);
            }
        }
    }

    /// Pods in the active queue.
    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    /// Pods in backoff.
    pub fn backoff_len(&self) -> usize {
        self.backoff.len()
    }

    /// Why the QueueSort plugin is no longer used (it panicked), if it is not: an Error status
    /// naming the plugin.
    pub fn sort_failure(&self) -> Option<&Status> {
        self.sort_failure.as_ref()
    }

    /// The earliest backoff expiry.
    pub fn next_backoff(&self) -> Option<Instant> {
        self.backoff.iter().map(|(t, _)| *t).min()
    }

    fn push_active(&mut self, info: QueuedPodInfo) {
        self.active.push(info);
        let i = self.active.len() - 1;
        self.sift_up(i);
    }

    /// Whether `active[a]` goes before `active[b]`. A panic in the plugin is caught: it is
    /// recorded, and the heap is rebuilt in the fallback order once the current sift is done
    /// (the comparisons made so far mixed two orders).
    fn less(&mut self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.active[a], &self.active[b]);
        if self.sort_failure.is_some() {
            return fallback_less(x, y);
        }
        let sort = &self.sort;
        match catch_unwind(AssertUnwindSafe(|| sort.less(x, y))) {
            Ok(less) => less,
            Err(payload) => {
                let status = Status::error(format!(
                    "QueueSort plugin panicked: {}; ordering by priority, then FIFO",
                    super::panic_message(&*payload)
                ))
                .with_plugin(self.sort.name());
                tracing::error!(plugin = self.sort.name(), %status, "QueueSort plugin failed");
                self.sort_failure = Some(status);
                fallback_less(&self.active[a], &self.active[b])
            }
        }
    }

    /// Restores the heap in the fallback order after the plugin panicked mid-sift (a sorted
    /// vector is a valid heap).
    fn reheap_if_degraded(&mut self, was_degraded: bool) {
        if !was_degraded && self.sort_failure.is_some() {
            self.active.sort_by(|a, b| {
                if fallback_less(a, b) {
                    Ordering::Less
                } else if fallback_less(b, a) {
                    Ordering::Greater
                } else {
                    Ordering::Equal
                }
            });
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        let was_degraded = self.sort_failure.is_some();
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.less(i, parent) {
                self.active.swap(i, parent);
                i = parent;
            } else {
                break;
            }
        }
        self.reheap_if_degraded(was_degraded);
    }

    fn sift_down(&mut self, mut i: usize) {
        let was_degraded = self.sort_failure.is_some();
        let n = self.active.len();
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut best = i;
            if l < n && self.less(l, best) {
                best = l;
            }
            if r < n && self.less(r, best) {
                best = r;
            }
            if best == i {
                break;
            }
            self.active.swap(i, best);
            i = best;
        }
        self.reheap_if_degraded(was_degraded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::PrioritySort;
    use rorqual_core::model::Resources;

    fn pod(uid: &str, priority: i32) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(uid, "ns", uid, Resources::default()).priority(priority))
    }

    #[derive(Debug)]
    struct PanickingSort;

    impl crate::framework::Plugin for PanickingSort {
        fn name(&self) -> &str {
            "PanickingSort"
        }
    }

    impl QueueSortPlugin for PanickingSort {
        fn less(&self, _a: &QueuedPodInfo, _b: &QueuedPodInfo) -> bool {
            panic!("sort exploded")
        }
    }

    #[test]
    fn a_panicking_queue_sort_falls_back_to_priority_then_fifo() {
        let mut q = SchedulingQueue::new(Arc::new(PanickingSort));
        let t0 = Instant::now();
        q.add(pod("first", 1), t0);
        assert!(q.sort_failure().is_none(), "one pod needs no comparison");
        for (k, (uid, priority)) in [("second", 1), ("urgent", 9), ("third", 1), ("low", 0)]
            .into_iter()
            .enumerate()
        {
            q.add(pod(uid, priority), t0 + Duration::from_millis(k as u64 + 1));
        }
        let failure = q.sort_failure().expect("the panic is recorded");
        assert_eq!(failure.code(), crate::framework::Code::Error);
        assert_eq!(failure.plugin(), Some("PanickingSort"));
        assert!(failure.message().contains("sort exploded"), "{failure}");
        let order: Vec<String> = std::iter::from_fn(|| q.pop(t0))
            .map(|i| i.pod.uid.to_string())
            .collect();
        assert_eq!(order, ["urgent", "first", "second", "third", "low"]);
    }

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        let secs: Vec<u64> = (1..=6).map(|a| backoff_for(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn priority_then_fifo_and_backoff_timing() {
        let mut q = SchedulingQueue::new(Arc::new(PrioritySort));
        let t0 = Instant::now();
        q.add(pod("low", 1), t0);
        q.add(pod("high", 10), t0 + Duration::from_millis(1));
        q.add(pod("low2", 1), t0 + Duration::from_millis(2));
        assert!(!q.add(pod("low", 1), t0), "duplicates are ignored");
        let order: Vec<String> = std::iter::from_fn(|| q.pop(t0))
            .map(|i| i.pod.uid.to_string())
            .collect();
        assert_eq!(order, ["high", "low", "low2"]);
        let info = QueuedPodInfo {
            pod: pod("x", 0),
            timestamp: t0,
            attempts: 1,
        };
        q.requeue_backoff(info, t0);
        assert!(
            q.pop(t0 + Duration::from_millis(1999)).is_none(),
            "second attempt waits 2 s"
        );
        let again = q.pop(t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(again.attempts, 2);
        q.requeue_backoff(again, t0);
        q.move_all_to_active();
        assert!(q.pop(t0).is_some());
        q.add(pod("gone", 0), t0);
        q.remove("gone");
        assert!(q.pop(t0).is_none());
    }
}
