//! What a reconcile asks the runtime to do next.

use std::time::Duration;

/// The result of a successful reconcile: when to look at the key again, or never.
///
/// - [`Action::requeue`]: look again after a delay (work that waits on time);
/// - [`Action::await_change`]: look again when a trigger names the key (an event, a verb, the
///   periodic resync);
/// - [`Action::forget`]: the object is gone; the controller drops everything it keeps about
///   the key (its place in the periodic resync, its backoff streak) until a trigger names it
///   again.
///
/// The controller remembers every key a trigger has named, to resync it, until a reconcile
/// of that key returns [`Action::forget`]: a controller whose objects come and go (keyed by
/// application, say) should forget a key when it finds its object deleted, or its resync set
/// only grows.
///
/// An error is not an `Action`: the controller's [`ErrorPolicy`](crate::ErrorPolicy) schedules
/// the retry with per-key backoff (or, for an error its
/// [`Reconciler::is_retryable`](crate::Reconciler::is_retryable) calls permanent, waits for a
/// change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Action {
    next: Next,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Next {
    Requeue(Duration),
    AwaitChange,
    Forget,
}

impl Action {
    /// Reconcile the key again after `delay` (sooner if a trigger fires first): for work that
    /// waits on time (a pause step, a probe, a slow external resource).
    pub const fn requeue(delay: Duration) -> Self {
        Action {
            next: Next::Requeue(delay),
        }
    }

    /// Nothing to do until something changes: the key is reconciled again only when a trigger
    /// (an engine event, an extra trigger stream, the periodic resync) names it.
    pub const fn await_change() -> Self {
        Action {
            next: Next::AwaitChange,
        }
    }

    /// Done, and the object is gone: the controller drops the key from its periodic resync
    /// and forgets its backoff streak, and does not requeue it. A later trigger naming the key
    /// (the object was created again) reconciles it as a new key. A trigger that arrived while
    /// this reconcile ran still runs it once more, as after any reconcile.
    pub const fn forget() -> Self {
        Action { next: Next::Forget }
    }

    /// The requeue delay, or `None` for [`Action::await_change`] and [`Action::forget`].
    pub const fn requeue_after(&self) -> Option<Duration> {
        match self.next {
            Next::Requeue(delay) => Some(delay),
            Next::AwaitChange | Next::Forget => None,
        }
    }

    /// Whether this is [`Action::forget`].
    pub const fn is_forget(&self) -> bool {
        matches!(self.next, Next::Forget)
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
        assert!(!Action::await_change().is_forget());
    }

    #[test]
    fn forget_neither_requeues_nor_awaits() {
        assert_eq!(Action::forget().requeue_after(), None);
        assert!(Action::forget().is_forget());
        assert_ne!(Action::forget(), Action::await_change());
    }
}
