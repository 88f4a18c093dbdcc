//! Gates on the apiserver's version (pure): a field the server does not know is refused before
//! anything is sent, naming the field and the server's version (a 1.20 server answers an
//! unknown field in a server-side apply with HTTP 500).

use std::fmt;

use rorqual_core::model::{AppSpec, FieldError, ValidationErrors};

/// A Kubernetes server version (`major.minor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl ServerVersion {
    /// From `/version`'s `major` and `minor` (providers append `+`, as in `"20+"`).
    pub fn parse(major: &str, minor: &str) -> Option<ServerVersion> {
        let digits = |s: &str| -> Option<u32> {
            let d: String = s.chars().take_while(char::is_ascii_digit).collect();
            d.parse().ok()
        };
        Some(ServerVersion {
            major: digits(major)?,
            minor: digits(minor)?,
        })
    }

    const fn v1(minor: u32) -> ServerVersion {
        ServerVersion { major: 1, minor }
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The oldest server KubeEngine drives: server-side apply is on by default from 1.16.
pub const OLDEST: ServerVersion = ServerVersion::v1(16);

/// Refuses what `version` cannot take from `spec`, every field with its path.
pub fn check(spec: &AppSpec, version: ServerVersion) -> Result<(), ValidationErrors> {
    let mut errors = Vec::new();
    let mut needs = |path: &str, since: ServerVersion| {
        if version < since {
            errors.push(FieldError {
                path: path.to_owned(),
                message: format!("needs Kubernetes {since} or later; the server is {version}"),
            });
        }
    };
    if version < OLDEST {
        needs("", OLDEST);
    }
    if !spec.topology_spread_constraints.is_empty() {
        // Beta and on by default from 1.18.
        needs("topologySpreadConstraints", ServerVersion::v1(18));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors {
            subject: format!("spec {} for Kubernetes {version}", spec.key()),
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rorqual_core::model::{
        ContainerSpec, LabelSelector, TopologySpreadConstraint, WhenUnsatisfiable,
    };

    #[test]
    fn versions_parse_with_provider_suffixes() {
        assert_eq!(ServerVersion::parse("1", "20"), Some(ServerVersion::v1(20)));
        assert_eq!(
            ServerVersion::parse("1", "20+"),
            Some(ServerVersion::v1(20))
        );
        assert_eq!(ServerVersion::parse("", "20"), None);
    }

    #[test]
    fn a_field_the_server_lacks_is_named_with_the_server_version() {
        let spec = AppSpec::new("web", vec![ContainerSpec::new("app", ["x"])]).spread(
            TopologySpreadConstraint::new(
                1,
                "zone",
                WhenUnsatisfiable::DoNotSchedule,
                LabelSelector::default(),
            ),
        );
        let err = check(&spec, ServerVersion::v1(17)).unwrap_err();
        assert_eq!(err.errors[0].path, "topologySpreadConstraints");
        assert_eq!(
            err.errors[0].message,
            "needs Kubernetes 1.18 or later; the server is 1.17"
        );
        assert!(check(&spec, ServerVersion::v1(20)).is_ok());
    }
}
