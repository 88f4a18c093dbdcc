//! What a reconcile asks the runtime to do next.

use std::time::Duration;

/// The result of a successful reconcile: when to look at the key again.
///
/// An error is not an `Action`: the controller's [`ErrorPolicy`](crate::ErrorPolicy) schedules
/// the retry with per-key backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Reconcile the key again after `delay` (sooner if a trigger fires first): for work that
    /// waits on time (a pause step, a probe, a slow external resource).
    pub const fn requeue(delay: Duration) -> Self {
        Action {
            requeue_after: Some(delay),
        }
    }

    /// Nothing to do until something changes: the key is reconciled again only when a trigger
    /// (an engine event, an extra trigger stream, the periodic resync) names it.
    pub const fn await_change() -> Self {
        Action {
            requeue_after: None,
        }
    }

    /// The requeue delay, or `None` for [`Action::await_change`].
    pub const fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeue_carries_its_delay_and_await_change_none() {
        let s = Duration::from_secs(7);
        assert_eq!(Action::requeue(s).requeue_after(), Some(s));
        assert_eq!(Action::await_change().requeue_after(), None);
    }
}
