//! [`ManualClock`]: a clock for tests that moves only when told to.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::oneshot;

use super::Clock;

/// A clock that moves only when told to ([`ManualClock::advance`]). Sleepers wake when the clock
/// is advanced to or past their deadline. Cloning shares the clock.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<Mutex<ManualInner>>,
}

#[derive(Debug)]
struct ManualInner {
    now: SystemTime,
    /// Sleepers by (deadline, sequence number).
    sleepers: BTreeMap<(SystemTime, u64), oneshot::Sender<()>>,
    next_seq: u64,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A manual clock starting at a fixed instant (2026-01-01T00:00:00Z), so that runs are
    /// reproducible.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600))
    }

    /// A manual clock starting at `start`.
    pub fn starting_at(start: SystemTime) -> Self {
        ManualClock {
            inner: Arc::new(Mutex::new(ManualInner {
                now: start,
                sleepers: BTreeMap::new(),
                next_seq: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ManualInner> {
        self.inner.lock()
    }

    /// Moves the clock forward by `duration` and wakes every sleeper whose deadline is reached.
    pub fn advance(&self, duration: Duration) {
        let woken = {
            let mut inner = self.lock();
            inner.now += duration;
            let now = inner.now;
            let later = inner.sleepers.split_off(&(now, u64::MAX));
            std::mem::replace(&mut inner.sleepers, later)
        };
        for (_, tx) in woken {
            // The sleeper may have been dropped (its future cancelled); nothing to wake then.
            let _ = tx.send(());
        }
    }

    /// How many sleepers are waiting.
    pub fn sleepers(&self) -> usize {
        let mut inner = self.lock();
        inner.sleepers.retain(|_, tx| !tx.is_closed());
        inner.sleepers.len()
    }

    /// The earliest deadline of a waiting sleeper.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        let mut inner = self.lock();
        inner.sleepers.retain(|_, tx| !tx.is_closed());
        inner.sleepers.keys().next().map(|(t, _)| *t)
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.lock().now
    }

    async fn sleep(&self, duration: Duration) {
        let rx = {
            let mut inner = self.lock();
            if duration.is_zero() {
                return;
            }
            let deadline = inner.now + duration;
            let (tx, rx) = oneshot::channel();
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.sleepers.insert((deadline, seq), tx);
            rx
        };
        // The sender lives in the clock until the deadline passes; if the clock is dropped
        // first, the error ends the sleep, which is the only sensible outcome.
        let _ = rx.await;
    }
}
