//! Restart backoff: pure arithmetic, as the kubelet does it (10 s doubling up to 5 min).

use std::time::Duration;

/// Capped exponential restart backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// The delay before the first restart.
    pub(crate) base: Duration,
    /// The longest delay.
    pub(crate) cap: Duration,
}

impl Backoff {
    /// The delay before restarting after the `failures`-th consecutive failure (from 1).
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.base
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// Whether a process that ran for `ran` was healthy long enough to forget earlier failures
    /// (twice the cap: the kubelet's 10 minutes for a 5-minute cap).
    pub(crate) fn resets_after(&self, ran: Duration) -> bool {
        ran >= self.cap.saturating_mul(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let b = Backoff {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(300),
        };
        let delays: Vec<u64> = (1..=7).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(300));
        assert!(b.resets_after(Duration::from_secs(600)));
        assert!(!b.resets_after(Duration::from_secs(599)));
    }
}
