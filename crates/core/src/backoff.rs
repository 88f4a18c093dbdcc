//! Capped exponential backoff: the pure arithmetic of retry policies.
//!
//! A [`Backoff`] is a policy (`initial`, `max`, `factor`); [`Backoff::delay`] gives the delay
//! before a retry from the number of retries already made, and a [`BackoffCounter`] keeps that
//! number for one retrying thing (`next()` after each failure, `reset()` after a success). No
//! clock and no sleeping: callers wait however they wait.
//!
//! ```
//! use std::time::Duration;
//! use rorqual_core::backoff::Backoff;
//!
//! // The kubelet's restart backoff: 10 s doubling up to 5 minutes.
//! let restarts = Backoff::KUBELET_RESTART;
//! let delays: Vec<u64> = (0..7).map(|n| restarts.delay(n).as_secs()).collect();
//! assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
//!
//! // A scheduling queue: 1 s doubling up to 10 s.
//! let mut pod = Backoff::new(Duration::from_secs(1), Duration::from_secs(10)).counter();
//! assert_eq!(pod.next(), Duration::from_secs(1));
//! assert_eq!(pod.next(), Duration::from_secs(2));
//! pod.reset();
//! assert_eq!(pod.next(), Duration::from_secs(1));
//! ```

use std::time::Duration;

/// A capped exponential backoff policy: `initial × factor^retries`, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Backoff {
    /// The delay before the first retry.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// What each delay is multiplied by for the next retry (at least 1; 2 doubles).
    pub factor: u32,
}

impl Backoff {
    /// The kubelet's container restart backoff: 10 s, doubling, at most 5 minutes.
    pub const KUBELET_RESTART: Backoff =
        Backoff::new(Duration::from_secs(10), Duration::from_secs(300));

    /// A doubling backoff from `initial` up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            factor: 2,
        }
    }

    /// The same policy with another factor (1 keeps the delay constant).
    #[must_use]
    pub const fn with_factor(mut self, factor: u32) -> Self {
        self.factor = factor;
        self
    }

    /// The delay before the next retry when `retries` retries were already made: `initial`
    /// for the first (`retries == 0`), then multiplied by `factor` each time, never above
    /// `max` (also when the arithmetic would overflow).
    pub fn delay(&self, retries: u32) -> Duration {
        let factor = self.factor.max(1);
        let grown = factor
            .checked_pow(retries)
            .and_then(|m| self.initial.checked_mul(m));
        grown.unwrap_or(self.max).min(self.max)
    }

    /// A counter starting at no retries.
    pub fn counter(self) -> BackoffCounter {
        BackoffCounter {
            policy: self,
            retries: 0,
        }
    }
}

/// The retries of one retrying thing under a [`Backoff`] policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffCounter {
    policy: Backoff,
    retries: u32,
}

impl BackoffCounter {
    /// The delay before the next retry; counts the retry.
    #[allow(clippy::should_implement_trait)] // An endless iterator would invite `collect`.
    pub fn next(&mut self) -> Duration {
        let delay = self.policy.delay(self.retries);
        self.retries = self.retries.saturating_add(1);
        delay
    }

    /// The delay the next call to [`BackoffCounter::next`] returns, without counting it.
    pub fn peek(&self) -> Duration {
        self.policy.delay(self.retries)
    }

    /// Forgets the retries (after a success).
    pub fn reset(&mut self) {
        self.retries = 0;
    }

    /// How many retries were counted since the last reset.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The policy.
    pub fn policy(&self) -> &Backoff {
        &self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn delays() {
        let cases: &[(&str, Backoff, &[u64])] = &[
            (
                "kubelet",
                Backoff::KUBELET_RESTART,
                &[10, 20, 40, 80, 160, 300, 300],
            ),
            (
                "scheduler queue",
                Backoff::new(S(1), S(10)),
                &[1, 2, 4, 8, 10, 10, 10],
            ),
            (
                "factor 3",
                Backoff::new(S(1), S(100)).with_factor(3),
                &[1, 3, 9, 27, 81, 100, 100],
            ),
            (
                "constant",
                Backoff::new(S(5), S(60)).with_factor(1),
                &[5, 5, 5, 5, 5, 5, 5],
            ),
            (
                "factor 0 acts as 1",
                Backoff::new(S(5), S(60)).with_factor(0),
                &[5, 5, 5, 5, 5, 5, 5],
            ),
        ];
        for (name, b, want) in cases {
            let got: Vec<u64> = (0..7).map(|n| b.delay(n).as_secs()).collect();
            assert_eq!(&got, want, "{name}");
        }
    }

    #[test]
    fn never_overflows() {
        for b in [
            Backoff::KUBELET_RESTART,
            Backoff::new(S(1), Duration::MAX).with_factor(u32::MAX),
        ] {
            for n in [31, 32, 64, 1000, u32::MAX] {
                assert_eq!(b.delay(n), b.max, "{b:?} after {n}");
            }
        }
    }

    #[test]
    fn counter_counts_and_resets() {
        let mut c = Backoff::new(S(1), S(10)).counter();
        let got: Vec<u64> = (0..6).map(|_| c.next().as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
        assert_eq!(c.retries(), 6);
        assert_eq!(c.peek(), S(10));
        c.reset();
        assert_eq!((c.retries(), c.next()), (0, S(1)));
    }
}
