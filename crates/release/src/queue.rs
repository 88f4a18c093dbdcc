//! A keyed, time-ordered work queue: each key is queued at most once, at its earliest due time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::SystemTime;

use rorqual_core::model::AppKey;

/// The controller's work queue.
#[derive(Debug, Default)]
pub(crate) struct WorkQueue {
    heap: BinaryHeap<Reverse<(SystemTime, u64, AppKey)>>,
    due: HashMap<AppKey, SystemTime>,
    seq: u64,
}

impl WorkQueue {
    /// Queues `key` at `at`, unless it is already queued at or before `at`.
    pub(crate) fn push(&mut self, key: &AppKey, at: SystemTime) {
        if let Some(existing) = self.due.get(key)
            && *existing <= at
        {
            return;
        }
        self.due.insert(key.clone(), at);
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, key.clone())));
    }

    /// Takes the next key due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: SystemTime) -> Option<AppKey> {
        while let Some(Reverse((at, _, _))) = self.heap.peek() {
            if *at > now {
                return None;
            }
            let Reverse((at, _, key)) = self.heap.pop()?;
            // Skip entries superseded by an earlier push of the same key.
            if self.due.get(&key) == Some(&at) {
                self.due.remove(&key);
                return Some(key);
            }
        }
        None
    }

    /// The earliest due time.
    pub(crate) fn next_due(&self) -> Option<SystemTime> {
        self.due.values().min().copied()
    }

    /// How many keys are queued.
    pub(crate) fn len(&self) -> usize {
        self.due.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn dedupes_and_orders_by_time() {
        let t0 = SystemTime::UNIX_EPOCH;
        let a = AppKey::new("d", "a");
        let b = AppKey::new("d", "b");
        let mut q = WorkQueue::default();
        q.push(&a, t0 + Duration::from_secs(10));
        q.push(&b, t0 + Duration::from_secs(5));
        q.push(&a, t0 + Duration::from_secs(3));
        q.push(&a, t0 + Duration::from_secs(20));
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop_due(t0), None);
        assert_eq!(q.pop_due(t0 + Duration::from_secs(30)), Some(a.clone()));
        assert_eq!(q.pop_due(t0 + Duration::from_secs(30)), Some(b));
        assert_eq!(
            q.pop_due(t0 + Duration::from_secs(30)),
            None,
            "stale entry skipped"
        );
        assert_eq!(q.next_due(), None);
    }
}
