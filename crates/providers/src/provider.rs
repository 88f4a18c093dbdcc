//! The [`Provider`] seam: one kind of external resource (a database, a queue), observed,
//! created, updated and deleted so that it matches a declared spec.
//!
//! A provider [connects](Provider::connect) for one managed resource and returns an
//! [`ExternalClient`] that does the work, as Crossplane splits its `ExternalConnecter` and
//! `ExternalClient` (connecting is where credentials and endpoints are resolved, once per
//! reconcile). Both traits are object safe (`Arc<dyn Provider>`, `Box<dyn ExternalClient>`).
//!
//! # The contract
//!
//! - Every call is idempotent: a repeated [`create`](ExternalClient::create) of a resource that
//!   exists is not an "already exists" failure, and a [`delete`](ExternalClient::delete) of a
//!   missing resource succeeds.
//! - [`observe`](ExternalClient::observe) never changes the external resource.
//! - Calls do not wait for slow external work to finish: a create that the service completes
//!   later returns, and the next observation says `available: false` until it is done.
//! - Nothing a provider returns in a [`diff`](Observation::diff), an
//!   [`at_provider`](Observation::at_provider) value or an error message holds a secret:
//!   secrets travel in [`ConnectionDetails`] only.
//!
//! The [`ManagedReconciler`](crate::ManagedReconciler) owns everything else (external names,
//! the create-pending guard, policies, conditions, backoff, polling, publishing connection
//! details), once for every provider.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use rorqual_core::model::FieldError;
use serde_json::Value;

use crate::secret::ConnectionDetails;

/// What a provider is asked about: one managed resource, as the client sees it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ExternalRef<'a> {
    /// The managed resource's name.
    pub name: &'a str,
    /// The name of the external resource (the managed resource's name unless set otherwise).
    pub external_name: &'a str,
    /// The provider-specific parameters (`forProvider`), already validated by
    /// [`Provider::validate`].
    pub parameters: &'a Value,
}

impl<'a> ExternalRef<'a> {
    /// A reference, for calling a client directly in tests.
    pub fn new(name: &'a str, external_name: &'a str, parameters: &'a Value) -> Self {
        ExternalRef {
            name,
            external_name,
            parameters,
        }
    }
}

/// What [`ExternalClient::observe`] found.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Observation {
    /// Whether the external resource exists.
    pub exists: bool,
    /// Whether it matches the parameters (ignored when it does not exist). Normalise before
    /// comparing: a false "not up to date" makes endless updates.
    pub up_to_date: bool,
    /// Whether it is usable now (a database accepting connections); `false` while the
    /// service is still creating it.
    pub available: bool,
    /// The parameters with fields the service defaulted filled in (late initialisation), when
    /// that adds something the spec left out; the reconciler persists them into the spec
    /// when the management policies include `LateInitialize`.
    pub late_initialized: Option<Value>,
    /// Observed state worth showing (`status.atProvider`), never a secret.
    pub at_provider: Option<Value>,
    /// Details for clients; merged into what is published.
    pub connection_details: ConnectionDetails,
    /// A human-readable difference between the parameters and the resource when not up to
    /// date (`max_connections: 100 -> 200`), never a secret.
    pub diff: Option<String>,
}

impl Observation {
    /// The external resource does not exist.
    pub fn missing() -> Self {
        Observation::default()
    }

    /// The external resource exists, is up to date and available.
    pub fn up_to_date() -> Self {
        Observation {
            exists: true,
            up_to_date: true,
            available: true,
            ..Observation::default()
        }
    }

    /// The external resource exists and differs from the parameters as `diff` says.
    pub fn outdated(diff: impl Into<String>) -> Self {
        Observation {
            exists: true,
            up_to_date: false,
            available: true,
            diff: Some(diff.into()),
            ..Observation::default()
        }
    }

    /// Sets whether the resource is available.
    #[must_use]
    pub fn available(mut self, available: bool) -> Self {
        self.available = available;
        self
    }

    /// Sets the late-initialised parameters.
    #[must_use]
    pub fn late_initialized(mut self, parameters: Value) -> Self {
        self.late_initialized = Some(parameters);
        self
    }

    /// Sets the observed state shown in the status.
    #[must_use]
    pub fn at_provider(mut self, state: Value) -> Self {
        self.at_provider = Some(state);
        self
    }

    /// Sets the connection details.
    #[must_use]
    pub fn connection_details(mut self, details: ConnectionDetails) -> Self {
        self.connection_details = details;
        self
    }
}

/// What [`ExternalClient::create`] returns.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Creation {
    /// The name the service gave the resource, for providers whose names are not
    /// deterministic (see [`Provider::deterministic_external_names`]); `None` when the name
    /// asked for is the name.
    pub external_name: Option<String>,
    /// Details for clients known only at creation (a generated password).
    pub connection_details: ConnectionDetails,
}

impl Creation {
    /// Created under the name asked for, with no details.
    pub fn new() -> Self {
        Creation::default()
    }

    /// Created under a name the service chose.
    #[must_use]
    pub fn named(mut self, external_name: impl Into<String>) -> Self {
        self.external_name = Some(external_name.into());
        self
    }

    /// Sets the connection details.
    #[must_use]
    pub fn connection_details(mut self, details: ConnectionDetails) -> Self {
        self.connection_details = details;
        self
    }
}

/// What [`ExternalClient::update`] returns.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Update {
    /// Details that changed with the update.
    pub connection_details: ConnectionDetails,
}

/// One call of the seam, to name in errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// [`Provider::connect`].
    Connect,
    /// [`ExternalClient::observe`].
    Observe,
    /// [`ExternalClient::create`].
    Create,
    /// [`ExternalClient::update`].
    Update,
    /// [`ExternalClient::delete`].
    Delete,
}

impl Operation {
    /// The operation's name (`create`).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Connect => "connect",
            Operation::Observe => "observe",
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A boxed error from a provider's client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a provider call failed. Messages name the resource and what was wrong, never a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The service could not be reached or refused for now (connection refused, timeout,
    /// overloaded, a lock held): retrying later may succeed.
    #[error("{message}")]
    Unavailable {
        /// What was being done and what went wrong.
        message: String,
        /// The client library's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The service rejected the request as it stands (bad parameters, permission denied):
    /// retrying the same request cannot succeed.
    #[error("{message}")]
    Rejected {
        /// What was rejected and why.
        message: String,
        /// The client library's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The parameters are invalid; every problem is listed with its field path under
    /// `forProvider`.
    #[error("invalid parameters: {}", join(.0))]
    Invalid(Vec<FieldError>),
    /// The provider does not support this operation.
    #[error("provider does not support {operation}")]
    Unsupported {
        /// The operation.
        operation: Operation,
    },
    /// The call did not finish in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// The operation.
        operation: Operation,
        /// How long it was given.
        after: Duration,
    },
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ProviderError {
    /// A retryable failure.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ProviderError::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// A permanent failure.
    pub fn rejected(message: impl Into<String>) -> Self {
        ProviderError::Rejected {
            message: message.into(),
            source: None,
        }
    }

    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::Unavailable { .. } | ProviderError::Timeout { .. }
        )
    }
}

/// The result of a provider call.
pub type Result<T, E = ProviderError> = std::result::Result<T, E>;

/// One kind of external resource. See the [module docs](self) for the contract.
#[async_trait]
pub trait Provider: Send + Sync + Debug + 'static {
    /// The kind of resource (`Database`, `Queue`); names the reconciler's records and logs.
    fn kind(&self) -> &str;

    /// Checks the parameters before anything runs; every problem with its path relative to
    /// `forProvider` (`columns[2].type`). The default accepts anything.
    fn validate(&self, parameters: &Value) -> Result<(), Vec<FieldError>> {
        let _ = parameters;
        Ok(())
    }

    /// Whether the external name is known before create (the default: the managed resource's
    /// name, or the one set in its spec). A provider whose service names resources at create
    /// time returns `false`: then a create whose result was not recorded (a crash between
    /// the two) is refused until a human says what happened, instead of creating a second
    /// resource.
    fn deterministic_external_names(&self) -> bool {
        true
    }

    /// Connects for the resource `resource` (resolves endpoints and credentials).
    async fn connect(&self, resource: &ExternalRef<'_>) -> Result<Box<dyn ExternalClient>>;
}

/// The client [`Provider::connect`] returns for one reconcile. See the
/// [module docs](self) for the contract.
#[async_trait]
pub trait ExternalClient: Send + Sync + Debug + 'static {
    /// Observes the resource; changes nothing.
    async fn observe(&self, resource: &ExternalRef<'_>) -> Result<Observation>;

    /// Creates the resource; succeeds when it exists already.
    async fn create(&self, resource: &ExternalRef<'_>) -> Result<Creation>;

    /// Makes the resource match the parameters.
    async fn update(&self, resource: &ExternalRef<'_>) -> Result<Update>;

    /// Deletes the resource; succeeds when it is missing.
    async fn delete(&self, resource: &ExternalRef<'_>) -> Result<()>;

    /// Releases what [`Provider::connect`] acquired (a connection pool). The default does
    /// nothing.
    async fn disconnect(&self) -> Result<()> {
        Ok(())
    }
}
