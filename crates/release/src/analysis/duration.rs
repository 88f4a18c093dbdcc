//! Durations written the way Argo Rollouts and Go write them (`30s`, `5m`, `1h30m`, `250ms`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration in Go's notation: a sequence of `<number><unit>` with units `ms`, `s`, `m`, `h`
/// (`30s`, `5m`, `1h30m`, `250ms`). A bare integer means seconds (Argo's `timeoutSeconds`
/// style), in YAML/JSON as a number or a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    /// `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        GoDuration(Duration::from_secs(secs))
    }

    /// `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        GoDuration(Duration::from_millis(ms))
    }

    /// The duration.
    pub const fn as_duration(&self) -> Duration {
        self.0
    }

    /// Parses Go notation; the error names the text and what is wrong.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(DurationError::Empty);
        }
        if let Ok(secs) = t.parse::<u64>() {
            return Ok(GoDuration::from_secs(secs));
        }
        let text = || text.to_owned();
        let mut total = Duration::ZERO;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| DurationError::NoUnit { text: text() })?;
            if digits == 0 {
                return Err(DurationError::Malformed { text: text() });
            }
            let number: f64 =
                rest[..digits]
                    .parse()
                    .map_err(|source| DurationError::BadNumber {
                        text: text(),
                        source,
                    })?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let scale = match unit {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                other => {
                    return Err(DurationError::UnknownUnit {
                        text: text(),
                        unit: other.to_owned(),
                    });
                }
            };
            total += Duration::try_from_secs_f64(number * scale).map_err(|source| {
                DurationError::OutOfRange {
                    text: text(),
                    source,
                }
            })?;
        }
        Ok(GoDuration(total))
    }
}

/// Why a duration in Go notation ([`GoDuration::parse`]) cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Nothing was given.
    #[error("empty duration")]
    Empty,
    /// The text ends with a number (`1h30`).
    #[error("duration `{text}` has a number without a unit")]
    NoUnit {
        /// The text given.
        text: String,
    },
    /// A unit or sign where a number should be (`s`, `-5s`, `5 minutes`).
    #[error("duration `{text}` is not like `30s`, `5m`, `1h30m`")]
    Malformed {
        /// The text given.
        text: String,
    },
    /// A number that does not parse (`1.2.3s`).
    #[error("duration `{text}` has a bad number")]
    BadNumber {
        /// The text given.
        text: String,
        /// The number's parse error.
        #[source]
        source: std::num::ParseFloatError,
    },
    /// A unit other than `ns`, `us`, `ms`, `s`, `m`, `h`.
    #[error("duration `{text}` has unknown unit `{unit}` (use ms, s, m or h)")]
    UnknownUnit {
        /// The text given.
        text: String,
        /// The unit found.
        unit: String,
    },
    /// Too long for a [`Duration`].
    #[error("duration `{text}` is out of range")]
    OutOfRange {
        /// The text given.
        text: String,
        /// The conversion's error.
        #[source]
        source: std::time::TryFromFloatSecsError,
    },
}

impl From<Duration> for GoDuration {
    fn from(d: Duration) -> Self {
        GoDuration(d)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            let s = d.as_secs();
            if s == 0 {
                return f.write_str("0s");
            }
            let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
            if h > 0 {
                write!(f, "{h}h")?;
            }
            if m > 0 {
                write!(f, "{m}m")?;
            }
            if s > 0 {
                write!(f, "{s}s")?;
            }
            Ok(())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(GoDuration::from_secs(s)),
            Raw::Text(t) => GoDuration::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_notation() {
        assert_eq!(GoDuration::parse("30s").unwrap(), GoDuration::from_secs(30));
        assert_eq!(GoDuration::parse("5m").unwrap(), GoDuration::from_secs(300));
        assert_eq!(
            GoDuration::parse("1h30m").unwrap(),
            GoDuration::from_secs(5400)
        );
        assert_eq!(
            GoDuration::parse("250ms").unwrap(),
            GoDuration::from_millis(250)
        );
        assert_eq!(
            GoDuration::parse("1.5s").unwrap(),
            GoDuration::from_millis(1500)
        );
        assert_eq!(GoDuration::parse("12").unwrap(), GoDuration::from_secs(12));
        assert_eq!(
            GoDuration::parse("5 minutes"),
            Err(DurationError::UnknownUnit {
                text: "5 minutes".into(),
                unit: " minutes".into()
            })
        );
        assert!(matches!(
            GoDuration::parse("s"),
            Err(DurationError::Malformed { .. })
        ));
        assert_eq!(GoDuration::parse(""), Err(DurationError::Empty));
        assert!(matches!(
            GoDuration::parse("-5s"),
            Err(DurationError::Malformed { .. })
        ));
        assert!(matches!(
            GoDuration::parse("1h30"),
            Err(DurationError::NoUnit { .. })
        ));
        let e = GoDuration::parse("1.2.3s").unwrap_err();
        assert!(std::error::Error::source(&e).is_some(), "{e}");
    }

    #[test]
    fn round_trips_through_serde() {
        for text in ["30s", "5m", "1h30m", "250ms", "1h0m5s"] {
            let d = GoDuration::parse(text).unwrap();
            let json = serde_json::to_string(&d).unwrap();
            let back: GoDuration = serde_json::from_str(&json).unwrap();
            assert_eq!(back, d, "{text} -> {json}");
        }
        let n: GoDuration = serde_json::from_str("10").unwrap();
        assert_eq!(n, GoDuration::from_secs(10));
    }
}
