//! The error policy: per-key exponential backoff after a failed reconcile, reset on success.
//!
//! The delays come from `backon`'s [`ExponentialBuilder`] (the backoff crate kube-runtime uses):
//! the first retry waits `min_delay`, each further one `factor` times longer, capped at
//! `max_delay`; with jitter, each delay is stretched by a random fraction of itself (never past
//! `max_delay`), so keys that failed together do not retry in lockstep.
//!
//! A controller refuses a policy that cannot produce a schedule (see [`ErrorPolicy::validate`]
//! and [`ErrorPolicyError`]), including a `max_delay` beyond [`MAX_DELAY`], the furthest ahead
//! a controller can schedule a key.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::delay_queue::MAX_DELAY;

/// What is wrong with an [`ErrorPolicy`]; see [`ErrorPolicy::validate`].
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorPolicyError {
    /// `factor` is below 1 (delays would shrink) or not a finite number.
    #[error("backoff `factor` {factor} must be a finite number of at least 1")]
    Factor {
        /// The factor given.
        factor: f32,
    },
    /// `min_delay` is longer than `max_delay`.
    #[error("backoff `min_delay` {min_delay:?} is above `max_delay` {max_delay:?}")]
    MinAboveMax {
        /// The minimum delay given.
        min_delay: Duration,
        /// The maximum delay given.
        max_delay: Duration,
    },
    /// `max_delay` is longer than a controller can schedule a key ahead ([`MAX_DELAY`]).
    #[error(
        "backoff `max_delay` {max_delay:?} is above the longest delay a controller can schedule ({limit:?})"
    )]
    MaxDelayTooLong {
        /// The maximum delay given.
        max_delay: Duration,
        /// The longest delay allowed ([`MAX_DELAY`]).
        limit: Duration,
    },
}

/// How a controller retries a key whose reconcile failed. The default is 1 s doubling to 60 s,
/// with jitter.
///
/// ```
/// use std::time::Duration;
/// use rorqual_runtime::ErrorPolicy;
///
/// let policy = ErrorPolicy::default()
///     .min_delay(Duration::from_millis(500))
///     .max_delay(Duration::from_secs(4))
///     .jitter(false);
/// let secs: Vec<f32> = policy.delays().take(5).map(|d| d.as_secs_f32()).collect();
/// assert_eq!(secs, [0.5, 1.0, 2.0, 4.0, 4.0]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct ErrorPolicy {
    /// The delay before the first retry.
    pub min_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
    /// How much longer each delay is than the one before (at least 1).
    pub factor: f32,
    /// Whether each delay is stretched by a random fraction of itself.
    pub jitter: bool,
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        ErrorPolicy {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            factor: 2.0,
            jitter: true,
        }
    }
}

impl ErrorPolicy {
    /// Sets the delay before the first retry.
    #[must_use]
    pub fn min_delay(mut self, delay: Duration) -> Self {
        self.min_delay = delay;
        self
    }

    /// Sets the longest delay.
    #[must_use]
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets the growth factor.
    #[must_use]
    pub fn factor(mut self, factor: f32) -> Self {
        self.factor = factor;
        self
    }

    /// Turns jitter on or off.
    #[must_use]
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Checks that this policy can produce a backoff schedule: a finite `factor` of at least 1,
    /// `min_delay` at most `max_delay`, and `max_delay` at most [`MAX_DELAY`] (one year).
    /// [`ControllerBuilder::build`](crate::ControllerBuilder::build) runs this check.
    ///
    /// # Errors
    ///
    /// The first problem found, naming the setting and its value.
    pub fn validate(&self) -> Result<(), ErrorPolicyError> {
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(ErrorPolicyError::Factor {
                factor: self.factor,
            });
        }
        if self.max_delay > MAX_DELAY {
            return Err(ErrorPolicyError::MaxDelayTooLong {
                max_delay: self.max_delay,
                limit: MAX_DELAY,
            });
        }
        if self.min_delay > self.max_delay {
            return Err(ErrorPolicyError::MinAboveMax {
                min_delay: self.min_delay,
                max_delay: self.max_delay,
            });
        }
        Ok(())
    }

    /// The retry delays of one key failing again and again, from the first retry on (an
    /// endless iterator). Delays never exceed [`MAX_DELAY`], even for a policy that
    /// [`validate`](ErrorPolicy::validate) refuses.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + Sync + 'static {
        // Capping the inputs keeps backon's arithmetic (jitter multiplies a delay) far from
        // `Duration`'s range.
        let max = self.max_delay.min(MAX_DELAY);
        let mut builder = ExponentialBuilder::new()
            .with_min_delay(self.min_delay.min(max))
            .with_max_delay(max)
            .with_factor(self.factor)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        // Jitter may stretch a delay past the cap; the cap is the promise, so clamp.
        builder.build().map(move |d| d.min(max))
    }
}

type Delays = Box<dyn Iterator<Item = Duration> + Send + Sync>;

/// Per-key failure streaks under one [`ErrorPolicy`].
pub(crate) struct Backoffs<K> {
    policy: ErrorPolicy,
    keys: HashMap<K, (u32, Delays)>,
}

impl<K: Eq + Hash> Backoffs<K> {
    pub(crate) fn new(policy: ErrorPolicy) -> Self {
        Backoffs {
            policy,
            keys: HashMap::new(),
        }
    }

    /// The attempt number of the next reconcile of `key`: 1, or 1 + its consecutive failures.
    pub(crate) fn attempt(&self, key: &K) -> u32 {
        self.keys.get(key).map_or(1, |(failures, _)| failures + 1)
    }

    /// Records a failure of `key`; returns how long to wait before retrying it.
    pub(crate) fn failed(&mut self, key: K) -> Duration {
        let policy = self.policy;
        let (failures, delays) = self
            .keys
            .entry(key)
            .or_insert_with(|| (0, Box::new(policy.delays())));
        *failures = failures.saturating_add(1);
        // The iterator is endless (no max times); the cap is the fallback all the same.
        delays.next().unwrap_or(policy.max_delay.min(MAX_DELAY))
    }

    /// Records a success of `key`: its next failure starts from the minimum delay again. Also
    /// drops everything kept about `key` (a forgotten key).
    pub(crate) fn succeeded(&mut self, key: &K) {
        self.keys.remove(key);
    }
}

impl<K> std::fmt::Debug for Backoffs<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backoffs")
            .field("policy", &self.policy)
            .field("failing_keys", &self.keys.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn default_doubles_from_one_second_to_a_minute() {
        let delays: Vec<_> = ErrorPolicy::default()
            .jitter(false)
            .delays()
            .take(8)
            .collect();
        assert_eq!(
            delays,
            [S, 2 * S, 4 * S, 8 * S, 16 * S, 32 * S, 60 * S, 60 * S]
        );
    }

    #[test]
    fn jitter_stretches_but_never_past_the_cap() {
        let plain: Vec<_> = ErrorPolicy::default()
            .jitter(false)
            .delays()
            .take(20)
            .collect();
        let jittered: Vec<_> = ErrorPolicy::default().delays().take(20).collect();
        for (p, j) in plain.iter().zip(&jittered) {
            assert!(*j >= *p && *j <= (*p * 2).min(60 * S), "{j:?} vs {p:?}");
        }
    }

    #[test]
    fn streaks_are_per_key_and_reset_on_success() {
        let mut b = Backoffs::new(ErrorPolicy::default().jitter(false));
        assert_eq!(b.attempt(&"a"), 1);
        assert_eq!(b.failed("a"), S);
        assert_eq!(b.failed("a"), 2 * S);
        assert_eq!(b.failed("b"), S, "another key has its own streak");
        assert_eq!(b.attempt(&"a"), 3);
        b.succeeded(&"a");
        assert_eq!(b.attempt(&"a"), 1);
        assert_eq!(b.failed("a"), S, "reset on success");
    }

    #[test]
    fn rejects_shrinking_inverted_or_endless_policies() {
        assert_eq!(ErrorPolicy::default().validate(), Ok(()));
        assert_eq!(
            ErrorPolicy::default().factor(0.5).validate(),
            Err(ErrorPolicyError::Factor { factor: 0.5 })
        );
        assert!(matches!(
            ErrorPolicy::default().factor(f32::NAN).validate(),
            Err(ErrorPolicyError::Factor { .. })
        ));
        let inverted = ErrorPolicy::default().min_delay(10 * S).max_delay(S);
        assert_eq!(
            inverted.validate(),
            Err(ErrorPolicyError::MinAboveMax {
                min_delay: 10 * S,
                max_delay: S
            })
        );
        let err = ErrorPolicy::default()
            .max_delay(Duration::MAX)
            .validate()
            .unwrap_err();
        assert_eq!(
            err,
            ErrorPolicyError::MaxDelayTooLong {
                max_delay: Duration::MAX,
                limit: MAX_DELAY
            }
        );
        assert!(err.to_string().starts_with("backoff `max_delay` "), "{err}");
        assert_eq!(
            ErrorPolicy::default().max_delay(MAX_DELAY).validate(),
            Ok(()),
            "a year is the limit, and allowed"
        );
    }

    #[test]
    fn delays_of_a_huge_policy_are_capped_not_a_panic() {
        for jitter in [false, true] {
            let policy = ErrorPolicy::default()
                .min_delay(Duration::MAX)
                .max_delay(Duration::MAX)
                .jitter(jitter);
            for delay in policy.delays().take(100) {
                assert!(delay <= MAX_DELAY, "{delay:?}");
            }
            let mut b = Backoffs::new(policy);
            for _ in 0..100 {
                assert!(b.failed("k") <= MAX_DELAY);
            }
        }
    }
}
