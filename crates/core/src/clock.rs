//! Clocks: the wall clock for production and a manual clock for deterministic tests.
//!
//! Controllers never call `SystemTime::now()` or `tokio::time::sleep` directly; they ask a
//! [`Clock`], so a test can drive hours of rollout in microseconds with a [`ManualClock`].
//!
//! ```
//! use std::time::Duration;
//! use rorqual_core::clock::{Clock, ManualClock};
//!
//! # tokio_test_block(async {
//! let clock = ManualClock::new();
//! let start = clock.now();
//! let sleeper = {
//!     let clock = clock.clone();
//!     tokio::spawn(async move { clock.sleep(Duration::from_secs(5)).await })
//! };
//! tokio::task::yield_now().await;
//! clock.advance(Duration::from_secs(5));
//! sleeper.await.unwrap();
//! assert_eq!(clock.now(), start + Duration::from_secs(5));
//! # });
//! # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::oneshot;

/// A source of time. Object safe: store it as `Arc<dyn Clock>`.
#[async_trait]
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// Waits until `duration` has passed on this clock.
    async fn sleep(&self, duration: Duration);
}

/// The system's wall clock and tokio's timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

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
        // Every update under this lock is a single assignment or map operation, so a panic
        // elsewhere cannot leave it inconsistent; a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_at_their_deadline() {
        let clock = ManualClock::new();
        let start = clock.now();
        let short = tokio::spawn({
            let c = clock.clone();
            async move { c.sleep(Duration::from_secs(2)).await }
        });
        let long = tokio::spawn({
            let c = clock.clone();
            async move { c.sleep(Duration::from_secs(10)).await }
        });
        while clock.sleepers() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(clock.next_deadline(), Some(start + Duration::from_secs(2)));
        clock.advance(Duration::from_secs(1));
        tokio::task::yield_now().await;
        assert!(!short.is_finished());
        clock.advance(Duration::from_secs(1));
        short.await.unwrap();
        assert!(!long.is_finished());
        assert_eq!(clock.sleepers(), 1);
        clock.advance(Duration::from_secs(30));
        long.await.unwrap();
        assert_eq!(clock.now(), start + Duration::from_secs(32));
        assert_eq!(clock.sleepers(), 0);
    }

    #[tokio::test]
    async fn zero_sleep_returns_at_once_and_system_clock_moves() {
        ManualClock::new().sleep(Duration::ZERO).await;
        let c = SystemClock;
        let a = c.now();
        c.sleep(Duration::from_millis(5)).await;
        assert!(c.now() > a);
    }

    #[test]
    fn clock_is_object_safe() {
        let _: Arc<dyn Clock> = Arc::new(ManualClock::new());
        let _: Arc<dyn Clock> = Arc::new(SystemClock);
    }
}
