//! Managed resources: the declared spec of one external resource (YAML or JSON) and the record
//! the reconciler keeps about it (bookkeeping and status), with Crossplane's policies.
//!
//! ```
//! use rorqual_providers::resource::{DeletionPolicy, ManagementPolicy, ResourceSpec};
//!
//! let spec = ResourceSpec::load(
//!     "name: orders\n\
//!      deletionPolicy: Orphan\n\
//!      managementPolicies: [Observe, Create, Update]\n\
//!      forProvider: {encoding: UTF8}\n\
//!      writeConnectionSecretTo: orders-db\n",
//! )
//! .unwrap();
//! assert_eq!(spec.deletion_policy, DeletionPolicy::Orphan);
//! assert!(!spec.allows(ManagementPolicy::Delete));
//! assert_eq!(spec.external_name(), "orders");
//! ```

use std::collections::BTreeSet;

use rorqual_core::model::{FieldError, ValidationErrors, is_dns_label};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::condition::ResourceStatus;

/// What the reconciler may do to the external resource (Crossplane's `managementPolicies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ManagementPolicy {
    /// `*`: every policy below.
    #[serde(rename = "*")]
    All,
    /// Read the resource (required by every other policy: the reconciler always observes).
    Observe,
    /// Create it when missing.
    Create,
    /// Update it when it differs from the spec.
    Update,
    /// Fill fields the spec left out from what the service defaulted.
    LateInitialize,
    /// Delete it when the managed resource is deleted (with deletion policy `Delete`).
    Delete,
}

/// What happens to the external resource when its managed resource is deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DeletionPolicy {
    /// Delete it (the default).
    #[default]
    Delete,
    /// Leave it: the managed resource goes, the external resource stays.
    Orphan,
}

fn all_policies() -> BTreeSet<ManagementPolicy> {
    BTreeSet::from([ManagementPolicy::All])
}

/// The declared spec of one managed resource, as users write it.
///
/// `managementPolicies` defaults to `["*"]`; an empty list pauses the resource (as in
/// Crossplane); a list without `Observe` is invalid. `paused: true` pauses it too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ResourceSpec {
    /// The managed resource's name: a DNS label (`orders-db`).
    pub name: String,
    /// The external resource's name, when it is not `name` (Crossplane's
    /// `crossplane.io/external-name` annotation): to import an existing resource under its
    /// own name, say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
    /// What the reconciler may do.
    #[serde(default = "all_policies")]
    pub management_policies: BTreeSet<ManagementPolicy>,
    /// What deleting the managed resource does to the external one.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Whether reconciling is paused (nothing is observed or changed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// The provider's parameters.
    #[serde(default)]
    pub for_provider: Value,
    /// The name under which connection details are published, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_connection_secret_to: Option<String>,
}

/// Why a spec text could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The text is not YAML or JSON.
    #[error("managed resource spec is not YAML or JSON: {0}")]
    Syntax(#[source] yaml_serde::Error),
    /// The text is YAML but not of the spec's shape.
    #[error("managed resource field `{path}` does not parse: {source}")]
    Shape {
        /// Path of the offending field (`managementPolicies[1]`).
        path: String,
        /// What the parser said.
        #[source]
        source: yaml_serde::Error,
    },
    /// The spec broke rules; every problem is listed with its path.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

impl ResourceSpec {
    /// A spec named `name` with every policy, deletion policy `Delete` and `parameters`.
    pub fn new(name: impl Into<String>, parameters: Value) -> Self {
        ResourceSpec {
            name: name.into(),
            external_name: None,
            management_policies: all_policies(),
            deletion_policy: DeletionPolicy::Delete,
            paused: false,
            for_provider: parameters,
            write_connection_secret_to: None,
        }
    }

    /// Sets the external name.
    #[must_use]
    pub fn with_external_name(mut self, name: impl Into<String>) -> Self {
        self.external_name = Some(name.into());
        self
    }

    /// Sets the management policies.
    #[must_use]
    pub fn with_policies(mut self, policies: impl IntoIterator<Item = ManagementPolicy>) -> Self {
        self.management_policies = policies.into_iter().collect();
        self
    }

    /// Sets the deletion policy.
    #[must_use]
    pub fn with_deletion_policy(mut self, policy: DeletionPolicy) -> Self {
        self.deletion_policy = policy;
        self
    }

    /// Pauses or resumes reconciling.
    #[must_use]
    pub fn with_paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }

    /// Publishes connection details under `name`.
    #[must_use]
    pub fn with_connection_secret(mut self, name: impl Into<String>) -> Self {
        self.write_connection_secret_to = Some(name.into());
        self
    }

    /// Reads a spec from YAML (or JSON) and checks it with [`ResourceSpec::validate`].
    ///
    /// # Errors
    ///
    /// [`SpecError`], naming the field path of every problem.
    pub fn load(text: &str) -> Result<ResourceSpec, SpecError> {
        let value: yaml_serde::Value = yaml_serde::from_str(text).map_err(SpecError::Syntax)?;
        let spec: ResourceSpec =
            serde_path_to_error::deserialize(value).map_err(|e| SpecError::Shape {
                path: e.path().to_string(),
                source: e.into_inner(),
            })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the fields every managed resource has (the provider checks `forProvider`):
    /// the name is a DNS label, the external name is not empty, the policies include
    /// `Observe` unless empty, the connection secret name is a DNS label.
    ///
    /// # Errors
    ///
    /// Every problem found, each with its field path.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = Vec::new();
        if !is_dns_label(&self.name) {
            errors.push(field(
                "name",
                format!(
                    "must be a DNS label (1-63 of a-z, 0-9 and `-`), got {:?}",
                    self.name
                ),
            ));
        }
        if let Some(external) = &self.external_name
            && external.trim().is_empty()
        {
            errors.push(field(
                "externalName",
                "must not be empty when set (leave it out to use `name`)",
            ));
        }
        let p = &self.management_policies;
        if !p.is_empty()
            && !p.contains(&ManagementPolicy::All)
            && !p.contains(&ManagementPolicy::Observe)
        {
            errors.push(field(
                "managementPolicies",
                format!(
                    "must include `Observe` (or be `[\"*\"]`, or empty to pause), got {:?}",
                    p.iter().collect::<Vec<_>>()
                ),
            ));
        }
        if let Some(secret) = &self.write_connection_secret_to
            && !is_dns_label(secret)
        {
            errors.push(field(
                "writeConnectionSecretTo",
                format!("must be a DNS label, got {secret:?}"),
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors {
                subject: format!("managed resource {}", self.name),
                errors,
            })
        }
    }

    /// Whether the management policies allow `policy` (`*` allows everything).
    pub fn allows(&self, policy: ManagementPolicy) -> bool {
        self.management_policies.contains(&ManagementPolicy::All)
            || self.management_policies.contains(&policy)
    }

    /// Whether reconciling is paused: `paused: true` or no management policy at all.
    pub fn is_paused(&self) -> bool {
        self.paused || self.management_policies.is_empty()
    }

    /// Whether deleting the managed resource deletes the external one: deletion policy
    /// `Delete` and the `Delete` management policy.
    pub fn deletes_external(&self) -> bool {
        self.deletion_policy == DeletionPolicy::Delete && self.allows(ManagementPolicy::Delete)
    }

    /// The external name the spec asks for: `externalName`, or else `name`.
    pub fn external_name(&self) -> &str {
        self.external_name.as_deref().unwrap_or(&self.name)
    }
}

pub(crate) fn field(path: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.into(),
        message: message.into(),
    }
}

/// What the reconciler keeps about a managed resource beside its spec: Kubernetes keeps the
/// same in `metadata` (generation, deletion timestamp) and in Crossplane's annotations
/// (external name, create markers). Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Bookkeeping {
    /// Grows by one with every change of the spec.
    pub generation: u64,
    /// When the managed resource was first applied.
    pub created_at_ms: u64,
    /// When its deletion was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_requested_at_ms: Option<u64>,
    /// The external name in effect, once the reconciler has set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
    /// When a create was last about to start (written before calling create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_pending_at_ms: Option<u64>,
    /// When a create last succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_succeeded_at_ms: Option<u64>,
    /// When a create last failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_failed_at_ms: Option<u64>,
}

impl Bookkeeping {
    /// Whether a create started and its result was never recorded: the pending marker is
    /// newer than both result markers (Crossplane's `ExternalCreateIncomplete`).
    pub fn create_incomplete(&self) -> bool {
        let Some(pending) = self.create_pending_at_ms else {
            return false;
        };
        match self.create_succeeded_at_ms.max(self.create_failed_at_ms) {
            None => true,
            Some(done) => pending > done,
        }
    }
}

/// A managed resource as stored: the spec, the reconciler's bookkeeping and the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ManagedResource {
    /// What is declared.
    pub spec: ResourceSpec,
    /// What the reconciler keeps.
    pub meta: Bookkeeping,
    /// What the reconciler reports.
    #[serde(default)]
    pub status: ResourceStatus,
}

impl ManagedResource {
    /// A freshly applied resource (generation 1) created at `now_ms`.
    pub fn new(spec: ResourceSpec, now_ms: u64) -> Self {
        ManagedResource {
            spec,
            meta: Bookkeeping {
                generation: 1,
                created_at_ms: now_ms,
                ..Bookkeeping::default()
            },
            status: ResourceStatus::default(),
        }
    }

    /// The managed resource's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The external name in effect: the recorded one, or the one the spec asks for.
    pub fn external_name(&self) -> &str {
        self.meta
            .external_name
            .as_deref()
            .unwrap_or_else(|| self.spec.external_name())
    }

    /// Whether its deletion was asked for.
    pub fn is_deleting(&self) -> bool {
        self.meta.deletion_requested_at_ms.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_every_policy_and_delete() {
        let spec = ResourceSpec::load("name: orders\n").unwrap();
        assert!(spec.allows(ManagementPolicy::LateInitialize));
        assert!(spec.deletes_external());
        assert!(!spec.is_paused());
        assert_eq!(spec.for_provider, Value::Null);
    }

    #[test]
    fn every_error_names_its_path() {
        let err = ResourceSpec::load(
            "name: Orders_DB\nexternalName: ' '\nmanagementPolicies: [Create]\nwriteConnectionSecretTo: 'a b'\n",
        )
        .unwrap_err();
        let SpecError::Invalid(errors) = err else {
            panic!("{err}")
        };
        let paths: Vec<_> = errors.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "name",
                "externalName",
                "managementPolicies",
                "writeConnectionSecretTo"
            ]
        );
        assert!(errors.to_string().contains("\"Orders_DB\""), "{errors}");
    }

    #[test]
    fn shape_errors_name_the_field() {
        let err =
            ResourceSpec::load("name: a\nmanagementPolicies: [Observe, Destroy]\n").unwrap_err();
        assert!(
            matches!(&err, SpecError::Shape { path, .. } if path == "managementPolicies[1]"),
            "{err}"
        );
        let err = ResourceSpec::load("name: a\ndeletePolicy: Orphan\n").unwrap_err();
        assert!(matches!(&err, SpecError::Shape { .. }), "{err}");
        assert!(err.to_string().contains("deletePolicy"), "{err}");
    }

    #[test]
    fn empty_policies_pause_and_orphan_or_no_delete_keeps_the_external_resource() {
        let spec = ResourceSpec::new("a", Value::Null).with_policies([]);
        assert!(spec.validate().is_ok() && spec.is_paused());
        let orphan =
            ResourceSpec::new("a", Value::Null).with_deletion_policy(DeletionPolicy::Orphan);
        assert!(!orphan.deletes_external());
        let no_delete = ResourceSpec::new("a", Value::Null)
            .with_policies([ManagementPolicy::Observe, ManagementPolicy::Create]);
        assert!(!no_delete.deletes_external());
    }

    #[test]
    fn create_is_incomplete_while_the_pending_marker_is_newest() {
        let mut b = Bookkeeping::default();
        assert!(!b.create_incomplete());
        b.create_pending_at_ms = Some(10);
        assert!(b.create_incomplete());
        b.create_failed_at_ms = Some(10);
        assert!(
            !b.create_incomplete(),
            "a result at the same instant completes it"
        );
        b.create_pending_at_ms = Some(20);
        b.create_succeeded_at_ms = Some(15);
        assert!(b.create_incomplete());
        b.create_succeeded_at_ms = Some(21);
        assert!(!b.create_incomplete());
    }
}
