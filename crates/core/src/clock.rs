//! Clocks: the wall clock for production and a manual clock for deterministic tests.
//!
//! Controllers never call `SystemTime::now()` or `tokio::time::sleep` directly; they ask a
//! [`Clock`], so a test can drive hours of rollout in microseconds with a `ManualClock`
//! (feature `testing`).
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

use std::fmt::Debug;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

#[cfg(any(test, feature = "testing"))]
mod manual;
#[cfg(any(test, feature = "testing"))]
pub use manual::ManualClock;

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

/// A wall clock that follows tokio's timer: `now` is the wall time when the clock was made
/// plus the tokio time elapsed since. In production it starts at the wall time and then moves
/// with tokio's monotonic timer (so it does not follow later changes of the system's clock);
/// under `tokio::time::pause` it moves only as tokio's paused
/// time does, so a test that auto-advances or calls `tokio::time::advance` drives both the
/// timestamps and the timers a controller running on tokio (the `rorqual-runtime` queue)
/// sees, in step.
///
/// ```
/// use std::time::Duration;
/// use rorqual_core::clock::{Clock, TokioClock};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// let clock = TokioClock::new();
/// let start = clock.now();
/// tokio::time::advance(Duration::from_secs(90)).await;
/// assert_eq!(clock.now(), start + Duration::from_secs(90));
/// # });
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: SystemTime,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading the wall time now, following tokio's timer from here on. Call it
    /// inside a tokio runtime (after `tokio::time::pause`, when pausing).
    pub fn new() -> Self {
        TokioClock {
            wall: SystemTime::now(),
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.wall + tokio::time::Instant::now().saturating_duration_since(self.origin)
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

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
