//! Replica arithmetic shared by the strategies: int-or-percent values and Kubernetes'
//! maxSurge / maxUnavailable fenceposts.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A count or a percentage of the replicas, as in Kubernetes (`3` or `"25%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntOrPercent {
    /// An absolute count.
    Int(u32),
    /// A percentage of the replicas.
    Percent(u32),
}

impl IntOrPercent {
    /// The value against `total` replicas: percentages are rounded up or down as asked
    /// (Kubernetes' `GetScaledValueFromIntOrPercent`).
    pub fn scaled(self, total: u32, round_up: bool) -> u32 {
        match self {
            IntOrPercent::Int(n) => n,
            IntOrPercent::Percent(p) => {
                let product = u64::from(p) * u64::from(total);
                let value = if round_up {
                    product.div_ceil(100)
                } else {
                    product / 100
                };
                u32::try_from(value).unwrap_or(u32::MAX)
            }
        }
    }
}

impl fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrPercent::Int(n) => write!(f, "{n}"),
            IntOrPercent::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Why text is not an [`IntOrPercent`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntOrPercentError {
    /// It ends with `%` but the rest is not a whole non-negative number.
    #[error("`{text}` is not a whole non-negative percentage")]
    Percent {
        /// The text given.
        text: String,
        /// The number's parse error.
        #[source]
        source: std::num::ParseIntError,
    },
    /// It is not a whole non-negative number.
    #[error("`{text}` is neither a non-negative count nor a percentage")]
    Count {
        /// The text given.
        text: String,
        /// The number's parse error.
        #[source]
        source: std::num::ParseIntError,
    },
}

impl std::str::FromStr for IntOrPercent {
    type Err = IntOrPercentError;
    fn from_str(s: &str) -> Result<Self, IntOrPercentError> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            p.trim()
                .parse()
                .map(IntOrPercent::Percent)
                .map_err(|source| IntOrPercentError::Percent {
                    text: s.to_owned(),
                    source,
                })
        } else {
            s.parse()
                .map(IntOrPercent::Int)
                .map_err(|source| IntOrPercentError::Count {
                    text: s.to_owned(),
                    source,
                })
        }
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrPercent::Int(n) => s.serialize_u32(*n),
            IntOrPercent::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrPercent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative count or a percentage such as \"25%\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrPercent, E> {
                u32::try_from(v)
                    .map(IntOrPercent::Int)
                    .map_err(|_| E::custom(format!("count {v} is too large")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrPercent, E> {
                u32::try_from(v)
                    .map(IntOrPercent::Int)
                    .map_err(|_| E::custom(format!("count must be 0 or more, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrPercent, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Kubernetes' `ResolveFenceposts`: surge is rounded up, unavailable down, and when both come
/// out 0, unavailable is 1 (so a rollout can always progress). Returns `(surge, unavailable)`.
pub fn resolve_fenceposts(
    max_surge: IntOrPercent,
    max_unavailable: IntOrPercent,
    replicas: u32,
) -> (u32, u32) {
    let surge = max_surge.scaled(replicas, true);
    let unavailable = max_unavailable.scaled(replicas, false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_and_prints_both_forms() {
        let v: IntOrPercent = serde_json::from_str("\"25%\"").unwrap();
        assert_eq!(v, IntOrPercent::Percent(25));
        let v: IntOrPercent = serde_json::from_str("3").unwrap();
        assert_eq!(v, IntOrPercent::Int(3));
        assert_eq!(
            serde_json::to_string(&IntOrPercent::Percent(25)).unwrap(),
            "\"25%\""
        );
        assert!(serde_json::from_str::<IntOrPercent>("-1").is_err());
        assert!(serde_json::from_str::<IntOrPercent>("\"x%\"").is_err());
    }

    #[test]
    fn kubernetes_fencepost_table() {
        let p = IntOrPercent::Percent;
        // Defaults 25%/25% of 10: surge ceil(2.5) = 3, unavailable floor(2.5) = 2.
        assert_eq!(resolve_fenceposts(p(25), p(25), 10), (3, 2));
        assert_eq!(resolve_fenceposts(p(25), p(25), 1), (1, 0));
        assert_eq!(resolve_fenceposts(p(25), p(25), 3), (1, 0));
        assert_eq!(resolve_fenceposts(p(25), p(25), 4), (1, 1));
        // Both zero: unavailable becomes 1.
        assert_eq!(
            resolve_fenceposts(IntOrPercent::Int(0), IntOrPercent::Int(0), 5),
            (0, 1)
        );
        assert_eq!(resolve_fenceposts(p(10), p(10), 5), (1, 0));
        assert_eq!(
            resolve_fenceposts(p(0), p(10), 5),
            (0, 1),
            "floor(0.5) = 0 -> 1"
        );
        assert_eq!(resolve_fenceposts(IntOrPercent::Int(2), p(30), 10), (2, 3));
    }

    proptest! {
        #[test]
        fn percent_rounding_brackets_the_exact_value(p in 0u32..=200, total in 0u32..10_000) {
            let up = IntOrPercent::Percent(p).scaled(total, true);
            let down = IntOrPercent::Percent(p).scaled(total, false);
            let exact = f64::from(p) * f64::from(total) / 100.0;
            prop_assert!(f64::from(down) <= exact && exact <= f64::from(up));
            prop_assert!(up - down <= 1);
        }
    }
}
