//! A keyed delay queue: each key is scheduled at most once, at its earliest deadline.
//!
//! The timers are tokio-util's [`tokio_util::time::DelayQueue`] (a hierarchical timer wheel
//! driven by tokio's clock, so tests can pause and advance time); this type adds what a
//! controller needs on top: one entry per key, "the earlier deadline wins" when a key is
//! scheduled again, and the depth and age figures the metrics report.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::poll_fn;
use std::hash::Hash;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::time::delay_queue;

/// The furthest ahead a key can be scheduled; later deadlines are brought forward to it.
///
/// tokio-util's timer wheel covers a little over two years and panics beyond; a controller
/// asking for more than a year means "much later", and a resync or an event wakes it sooner.
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A key that came due, with the deadline it was scheduled at.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Due<K> {
    /// The key.
    pub key: K,
    /// When it was due (it may be popped later, when the consumer was busy).
    pub deadline: Instant,
}

/// A queue of keys, each due at an instant. See the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use rorqual_runtime::KeyedDelayQueue;
/// use tokio::time::Instant;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// let mut queue = KeyedDelayQueue::new();
/// let now = Instant::now();
/// queue.schedule("web", now + Duration::from_secs(5));
/// queue.schedule("web", now + Duration::from_secs(1)); // the earlier deadline wins
/// queue.schedule("db", now + Duration::from_secs(3));
/// assert_eq!(queue.len(), 2);
/// assert_eq!(queue.next().await.map(|due| due.key), Some("web"));
/// assert_eq!(Instant::now() - now, Duration::from_secs(1));
/// # });
/// ```
pub struct KeyedDelayQueue<K> {
    timers: tokio_util::time::DelayQueue<K>,
    entries: HashMap<K, (delay_queue::Key, Instant)>,
    /// How many scheduled keys have each deadline, for the age of the oldest due key.
    deadlines: BTreeMap<Instant, usize>,
}

impl<K> fmt::Debug for KeyedDelayQueue<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedDelayQueue")
            .field("len", &self.entries.len())
            .field("earliest", &self.deadlines.keys().next())
            .finish()
    }
}

impl<K: Clone + Eq + Hash> Default for KeyedDelayQueue<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Clone + Eq + Hash> KeyedDelayQueue<K> {
    /// An empty queue.
    pub fn new() -> Self {
        Self {
            timers: tokio_util::time::DelayQueue::new(),
            entries: HashMap::new(),
            deadlines: BTreeMap::new(),
        }
    }

    /// Schedules `key` at `at` (at most [`MAX_DELAY`] from now). A key already scheduled keeps
    /// the earlier of its two deadlines. Returns whether the key's deadline changed (it was new
    /// or moved earlier).
    pub fn schedule(&mut self, key: K, at: Instant) -> bool {
        let at = at.min(Instant::now() + MAX_DELAY);
        match self.entries.get_mut(&key) {
            Some((timer, deadline)) => {
                if at >= *deadline {
                    return false;
                }
                self.timers.reset_at(timer, at);
                let old = std::mem::replace(deadline, at);
                forget_deadline(&mut self.deadlines, old);
                *self.deadlines.entry(at).or_default() += 1;
                true
            }
            None => {
                let timer = self.timers.insert_at(key.clone(), at);
                self.entries.insert(key, (timer, at));
                *self.deadlines.entry(at).or_default() += 1;
                true
            }
        }
    }

    /// Schedules `key` now (see [`KeyedDelayQueue::schedule`]).
    pub fn schedule_now(&mut self, key: K) -> bool {
        self.schedule(key, Instant::now())
    }

    /// Removes `key`; returns whether it was scheduled.
    pub fn remove(&mut self, key: &K) -> bool {
        match self.entries.remove(key) {
            Some((timer, deadline)) => {
                self.timers.try_remove(&timer);
                forget_deadline(&mut self.deadlines, deadline);
                true
            }
            None => false,
        }
    }

    /// The deadline of `key`, when scheduled.
    pub fn deadline(&self, key: &K) -> Option<Instant> {
        self.entries.get(key).map(|(_, at)| *at)
    }

    /// Whether `key` is scheduled.
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// How many keys are scheduled (due or not): the queue depth.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is scheduled.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How long the oldest due key has been due at `now` (`None` when no key is due). A key
    /// stays due but unpopped while its consumer is busy, so this is how far behind it is.
    pub fn oldest_due_age(&self, now: Instant) -> Option<Duration> {
        let earliest = *self.deadlines.keys().next()?;
        (earliest <= now).then(|| now - earliest)
    }

    /// Polls for the next due key; `Ready(None)` when the queue is empty.
    pub fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<Option<Due<K>>> {
        match self.timers.poll_expired(cx) {
            Poll::Ready(Some(expired)) => {
                let key = expired.into_inner();
                let deadline = match self.entries.remove(&key) {
                    Some((_, deadline)) => deadline,
                    // Every timer has an entry (both change together), so this is unreachable;
                    // reporting the key due now is the harmless answer.
                    None => Instant::now(),
                };
                forget_deadline(&mut self.deadlines, deadline);
                Poll::Ready(Some(Due { key, deadline }))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Waits for the next due key and removes it; `None` at once when the queue is empty.
    pub async fn next(&mut self) -> Option<Due<K>> {
        poll_fn(|cx| self.poll_due(cx)).await
    }
}

fn forget_deadline(deadlines: &mut BTreeMap<Instant, usize>, at: Instant) {
    if let Some(count) = deadlines.get_mut(&at) {
        *count -= 1;
        if *count == 0 {
            deadlines.remove(&at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn pops_in_deadline_order_when_due() {
        let start = Instant::now();
        let mut q = KeyedDelayQueue::new();
        q.schedule("c", start + 3 * S);
        q.schedule("a", start + S);
        q.schedule("b", start + 2 * S);
        let mut popped = Vec::new();
        while let Some(due) = q.next().await {
            popped.push((due.key, Instant::now() - start));
        }
        assert_eq!(popped, [("a", S), ("b", 2 * S), ("c", 3 * S)]);
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_scheduled_twice_keeps_the_earlier_deadline() {
        let start = Instant::now();
        let mut q = KeyedDelayQueue::new();
        assert!(q.schedule("k", start + 10 * S));
        assert!(q.schedule("k", start + 2 * S), "earlier deadline moves it");
        assert!(!q.schedule("k", start + 5 * S), "later deadline is ignored");
        assert_eq!(q.len(), 1);
        assert_eq!(q.deadline(&"k"), Some(start + 2 * S));
        let due = q.next().await.unwrap();
        assert_eq!((due.key, due.deadline), ("k", start + 2 * S));
        assert_eq!(Instant::now() - start, 2 * S);
        assert!(q.next().await.is_none(), "popped once, not twice");
    }

    #[tokio::test(start_paused = true)]
    async fn reports_depth_and_the_age_of_the_oldest_due_key() {
        let start = Instant::now();
        let mut q = KeyedDelayQueue::new();
        q.schedule(1, start + S);
        q.schedule(2, start + 4 * S);
        assert_eq!(q.len(), 2);
        assert_eq!(q.oldest_due_age(start), None, "nothing due yet");
        tokio::time::advance(3 * S).await;
        assert_eq!(q.oldest_due_age(Instant::now()), Some(2 * S));
        assert_eq!(q.next().await.unwrap().key, 1);
        assert_eq!(q.oldest_due_age(Instant::now()), None);
        assert!(q.remove(&2));
        assert!(!q.contains(&2));
        assert_eq!(q.len(), 0);
        assert_eq!(q.oldest_due_age(Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn far_deadlines_are_capped_instead_of_panicking() {
        let start = Instant::now();
        let mut q = KeyedDelayQueue::new();
        q.schedule("k", start + 10 * MAX_DELAY);
        assert_eq!(q.deadline(&"k"), Some(start + MAX_DELAY));
    }
}
