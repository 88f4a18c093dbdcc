//! The kube-scheduler version an extender talks to: it decides which
//! KubeSchedulerConfiguration API version the stanza is written in and which fields of a
//! filter result the caller reads.

use std::fmt;
use std::str::FromStr;

/// A Kubernetes minor release (`1.20`), parsed from `1.20`, `v1.20.2` or `1.20.2-rc.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    /// Major version (1).
    pub major: u32,
    /// Minor version (20 for 1.20).
    pub minor: u32,
}

/// A version string that is not `MAJOR.MINOR[.PATCH…]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a Kubernetes version (expected MAJOR.MINOR[.PATCH], e.g. 1.20 or v1.20.2)"
)]
pub struct KubeVersionError {
    /// The string as given.
    pub input: String,
}

impl KubeVersion {
    /// Version `major.minor`.
    pub const fn new(major: u32, minor: u32) -> KubeVersion {
        KubeVersion { major, minor }
    }

    /// Whether kube-scheduler at this version decodes `FailedAndUnresolvableNodes` in a
    /// filter result (added in 1.21; 1.20 and earlier drop it and read `FailedNodes` only).
    pub fn reads_unresolvable_nodes(self) -> bool {
        self >= KubeVersion::new(1, 21)
    }
}

impl FromStr for KubeVersion {
    type Err = KubeVersionError;

    fn from_str(input: &str) -> Result<KubeVersion, KubeVersionError> {
        let bad = || KubeVersionError {
            input: input.to_owned(),
        };
        let s = input.trim();
        let s = s.strip_prefix('v').unwrap_or(s);
        let mut parts = s.splitn(3, '.');
        let number = |part: Option<&str>| -> Result<u32, KubeVersionError> {
            match part {
                Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                    p.parse().map_err(|_| bad())
                }
                _ => Err(bad()),
            }
        };
        let major = number(parts.next())?;
        let minor = number(parts.next())?;
        // A patch part, if any, starts with digits (`2`, `2-rc.0`, `2+build`).
        if let Some(rest) = parts.next()
            && !rest.bytes().next().is_some_and(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        Ok(KubeVersion { major, minor })
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_kubernetes_prints() {
        for (s, minor) in [
            ("1.20", 20),
            ("v1.20.2", 20),
            ("1.25.0-rc.1", 25),
            ("v1.21.3+k3s1", 21),
        ] {
            assert_eq!(
                s.parse::<KubeVersion>().unwrap(),
                KubeVersion::new(1, minor)
            );
        }
        for bad in ["", "1", "v1.x", "1.20.x", "one.twenty", "1..20", "-1.20"] {
            let err = bad.parse::<KubeVersion>().unwrap_err();
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn unresolvable_nodes_are_read_from_1_21() {
        assert!(!KubeVersion::new(1, 20).reads_unresolvable_nodes());
        assert!(KubeVersion::new(1, 21).reads_unresolvable_nodes());
        assert!(KubeVersion::new(1, 30).reads_unresolvable_nodes());
    }
}
