//! Times on the wire: RFC 3339 in UTC with millisecond precision (`2026-11-22T01:02:03.456Z`),
//! formatted and parsed with the `time` crate.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serializer};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

/// `2026-11-22T01:02:03.456Z`: RFC 3339 with three fractional digits, always UTC.
const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// `time` as RFC 3339 in UTC with millisecond precision.
///
/// Times outside the years 0000–9999 (which no clock gives, but a corrupt record might) are
/// clamped to that range instead of panicking.
pub(crate) fn format(time: SystemTime) -> String {
    let utc = to_utc(time);
    // The format has only date and time components, which every `OffsetDateTime` has.
    utc.format(FORMAT)
        .unwrap_or_else(|_| utc.format(&Rfc3339).unwrap_or_default())
}

/// `time` in UTC, clamped to the representable range (`OffsetDateTime::from` panics outside).
fn to_utc(time: SystemTime) -> OffsetDateTime {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => time::Duration::try_from(after)
            .ok()
            .and_then(|d| OffsetDateTime::UNIX_EPOCH.checked_add(d))
            .unwrap_or_else(|| PrimitiveDateTime::MAX.assume_utc()),
        Err(before) => time::Duration::try_from(before.duration())
            .ok()
            .and_then(|d| OffsetDateTime::UNIX_EPOCH.checked_sub(d))
            .unwrap_or_else(|| PrimitiveDateTime::MIN.assume_utc()),
    }
}

/// Parses any RFC 3339 time (any offset, any precision).
pub(crate) fn parse(text: &str) -> Result<SystemTime, time::error::Parse> {
    OffsetDateTime::parse(text, &Rfc3339).map(SystemTime::from)
}

/// `#[serde(with = "crate::timestamp")]` for a `SystemTime` field.
pub(crate) fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*time))
}

/// `#[serde(with = "crate::timestamp")]` for a `SystemTime` field.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(|e| serde::de::Error::custom(format!("time `{text}`: {e}")))
}

#[cfg(test)]
#[test]
fn far_future_and_past_times_are_clamped_not_panics() {
    let far = UNIX_EPOCH + std::time::Duration::from_secs(400_000_000_000);
    assert!(
        format(far).starts_with("9999-12-31T23:59:59"),
        "{}",
        format(far)
    );
    assert_eq!(format(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn formats_and_parses_rfc3339() {
        assert_eq!(format(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789); // 2024-02-29 (leap day)
        assert_eq!(format(t), "2024-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format(t), "2000-02-29T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799); // last second of 2099
        assert_eq!(format(t), "2099-12-31T23:59:59.000Z");
        assert_eq!(
            parse("2024-02-29T12:34:56.789Z").unwrap(),
            UNIX_EPOCH + Duration::from_millis(1_709_210_096_789)
        );
        assert_eq!(
            parse("2024-02-29T13:34:56.789+01:00").unwrap(),
            UNIX_EPOCH + Duration::from_millis(1_709_210_096_789)
        );
        assert!(parse("yesterday").is_err());
    }
}
