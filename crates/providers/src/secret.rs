//! Secret values (passwords, tokens, connection strings) that never print.
//!
//! [`Secret`] wraps a string whose `Debug` and `Display` both print `<redacted>`; the value is
//! read only through [`Secret::expose`], so a secret reaches a log line, an event, an error or a
//! status only when code asks for it by name. [`ConnectionDetails`], what a provider returns
//! for clients of a resource (an endpoint, a user, a password), holds only `Secret`s.
//!
//! Neither type implements `Serialize`: they cannot end up in a persisted record by accident.
//! Connection details go to a [`ConnectionSink`](crate::sink::ConnectionSink) only.
//!
//! ```
//! use rorqual_providers::secret::{ConnectionDetails, Secret};
//!
//! let password = Secret::new("hunter2");
//! assert_eq!(format!("{password} {password:?}"), "<redacted> <redacted>");
//! assert_eq!(password.expose(), "hunter2");
//!
//! let details = ConnectionDetails::new().with("password", "hunter2");
//! assert!(!format!("{details:?}").contains("hunter2"));
//! ```

use std::collections::BTreeMap;
use std::fmt;

/// What a [`Secret`] prints instead of its value.
pub const REDACTED: &str = "<redacted>";

/// A string that never prints: `Debug` and `Display` show [`REDACTED`]. Read it with
/// [`Secret::expose`].
///
/// Equality compares the values (so tests and change detection work) but takes time
/// independent of where two values of the same length differ.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value. Call it only to hand the secret to whatever needs it (a client, a sink).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

/// The details a client needs to use an external resource (endpoint, port, user, password),
/// by key, every value a [`Secret`]. `Debug` prints the keys only.
///
/// Details are additive: [`ConnectionDetails::merge`] adds or replaces keys and never drops
/// one, as Crossplane merges what observe and create return.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnectionDetails(BTreeMap<String, Secret>);

impl ConnectionDetails {
    /// No details.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `key`.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Secret>) -> Self {
        self.insert(key, value);
        self
    }

    /// Adds (or replaces) `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Secret>) {
        self.0.insert(key.into(), value.into());
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Secret> {
        self.0.get(key)
    }

    /// Adds every key of `other`, replacing values of keys both have.
    pub fn merge(&mut self, other: &ConnectionDetails) {
        for (k, v) in &other.0 {
            self.0.insert(k.clone(), v.clone());
        }
    }

    /// Whether there are no details.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The keys and values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Secret)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl fmt::Debug for ConnectionDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, REDACTED)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_but_compare_by_value() {
        let s = Secret::new("p4ss-w0rd");
        for shown in [
            format!("{s}"),
            format!("{s:?}"),
            format!("{s:#?}"),
            format!("{:?}", Some(&s)),
        ] {
            assert!(!shown.contains("p4ss"), "{shown}");
            assert!(shown.contains(REDACTED));
        }
        assert_eq!(s, Secret::from("p4ss-w0rd"));
        assert_ne!(s, Secret::from("p4ss-w0rD"));
        assert_ne!(s, Secret::from("p4ss"));
        assert_eq!(s.expose(), "p4ss-w0rd");
    }

    #[test]
    fn details_merge_additively_and_print_keys_only() {
        let mut d = ConnectionDetails::new()
            .with("user", "app")
            .with("password", "old");
        d.merge(
            &ConnectionDetails::new()
                .with("password", "n3w-secret")
                .with("port", "5432"),
        );
        assert_eq!(d.keys().collect::<Vec<_>>(), ["password", "port", "user"]);
        assert_eq!(d.get("password").map(Secret::expose), Some("n3w-secret"));
        let shown = format!("{d:?}");
        assert!(shown.contains("\"password\""), "{shown}");
        assert!(
            !shown.contains("n3w-secret") && !shown.contains("app"),
            "{shown}"
        );
    }
}
