//! Watch errors a user needs to see, without flooding the log.
//!
//! kube's watcher retries a failed watch with backoff; each failure comes out of the stream as
//! an error. A watch that keeps failing (the apiserver is gone, RBAC forbids the list, a CRD
//! was removed) leaves the caches behind it stale, so the first failure is logged at warn
//! level at once, later ones at most once per [`WARN_INTERVAL`] with how many failed
//! meanwhile, and the recovery at info level.

use std::time::{Duration, Instant};

/// At most one warning per this interval while a watch keeps failing.
pub(crate) const WARN_INTERVAL: Duration = Duration::from_secs(30);

/// The failures of one watch (`what`, such as `pod watch of node n1`).
#[derive(Debug)]
pub(crate) struct WatchErrors {
    what: String,
    /// Failures since the watch last worked.
    failures: u32,
    /// Failures not logged since the last warning.
    unlogged: u32,
    last_warning: Option<Instant>,
}

impl WatchErrors {
    pub(crate) fn new(what: impl Into<String>) -> Self {
        WatchErrors {
            what: what.into(),
            failures: 0,
            unlogged: 0,
            last_warning: None,
        }
    }

    /// Counts a failure at `now`; `Some(n)` when it is to be logged, `n` being the failures
    /// held back before it.
    fn failed_at(&mut self, now: Instant) -> Option<u32> {
        self.failures += 1;
        let due = self
            .last_warning
            .is_none_or(|at| now.saturating_duration_since(at) >= WARN_INTERVAL);
        if due {
            self.last_warning = Some(now);
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        }
    }

    /// The watch delivered again; `Some(n)` after `n` failures.
    fn recovered(&mut self) -> Option<u32> {
        if self.failures == 0 {
            return None;
        }
        self.unlogged = 0;
        self.last_warning = None;
        Some(std::mem::take(&mut self.failures))
    }

    /// Logs `error` at warn level unless a warning about this watch went out less than
    /// [`WARN_INTERVAL`] ago.
    pub(crate) fn failed(&mut self, error: &dyn std::error::Error) {
        if let Some(held_back) = self.failed_at(Instant::now()) {
            tracing::warn!(
                watch = %self.what,
                error = %error,
                failures = self.failures,
                held_back,
                "watch failed; retrying with backoff (what it feeds is stale meanwhile)"
            );
        }
    }

    /// Notes an event of the watch: anything but `Init` (which the watcher emits before each
    /// list attempt, also one about to fail) shows it works again (a recovery is logged at
    /// info level).
    pub(crate) fn delivered<K>(&mut self, event: &kube::runtime::watcher::Event<K>) {
        if matches!(event, kube::runtime::watcher::Event::Init) {
            return;
        }
        if let Some(failures) = self.recovered() {
            tracing::info!(watch = %self.what, failures, "watch recovered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_logged_then_one_per_interval_with_the_count() {
        let mut w = WatchErrors::new("pods");
        let t = Instant::now();
        assert_eq!(w.failed_at(t), Some(0));
        assert_eq!(w.failed_at(t + Duration::from_secs(1)), None);
        assert_eq!(w.failed_at(t + Duration::from_secs(5)), None);
        assert_eq!(w.failed_at(t + WARN_INTERVAL), Some(2));
        assert_eq!(w.recovered(), Some(4));
        assert_eq!(w.recovered(), None, "once");
        assert_eq!(
            w.failed_at(t + WARN_INTERVAL + Duration::from_secs(1)),
            Some(0),
            "a new run of failures is logged at once"
        );
    }
}
