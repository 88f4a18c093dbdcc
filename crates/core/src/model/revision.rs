//! Revision hashes of instance templates.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::spec::AppSpec;

/// A revision: a short hash of an application's instance template (everything but `replicas`).
///
/// The hash is SHA-256 over the template's canonical JSON (struct fields in declaration order,
/// maps sorted), hex-encoded and cut to 10 characters: stable across runs, platforms and
/// processes, and unchanged by scaling.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct Revision(pub String);

impl Revision {
    /// The revision as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` honours width and alignment, so revisions line up in tables.
        f.pad(&self.0)
    }
}

impl From<&str> for Revision {
    fn from(s: &str) -> Self {
        Revision(s.to_owned())
    }
}

impl AppSpec {
    /// The revision of this spec's instance template.
    pub fn revision(&self) -> Revision {
        let mut template = self.clone();
        template.replicas = 0;
        // Serialising a struct of strings, numbers, vectors and BTreeMaps cannot fail.
        let canonical = serde_json::to_vec(&template).unwrap_or_default();
        let digest = Sha256::digest(&canonical);
        let hex: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
        Revision(hex)
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{AppSpec, ContainerSpec};

    fn spec() -> AppSpec {
        AppSpec::new(
            "web",
            vec![
                ContainerSpec::new("app", ["/bin/demo"])
                    .env("B", "2")
                    .env("A", "1"),
            ],
        )
    }

    #[test]
    fn revision_is_stable_across_runs() {
        // A fixed value: if this changes, every running revision would look new after an upgrade.
        assert_eq!(spec().revision().as_str(), spec().revision().as_str());
        assert_eq!(spec().revision().as_str().len(), 10);
        assert_eq!(
            spec().revision().as_str(),
            super::Revision::from(GOLDEN).as_str()
        );
    }

    const GOLDEN: &str = "4645a8e082";

    #[test]
    fn revision_ignores_replicas_but_not_template() {
        assert_eq!(spec().revision(), spec().replicas(7).revision());
        let mut changed = spec();
        changed.containers[0].args.push("--v2".into());
        assert_ne!(spec().revision(), changed.revision());
    }
}
