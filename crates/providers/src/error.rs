//! Why a reconcile of a managed resource failed. Each error names the managed resource and
//! says whether retrying can help ([`ReconcileError::is_retryable`]); none holds a secret.

use rorqual_runtime::RecordError;

use crate::provider::{Operation, ProviderError};
use crate::sink::SinkError;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileError {
    /// The spec or its parameters are invalid (permanent until the spec changes).
    #[error("managed resource `{name}` is invalid: {message}")]
    Invalid {
        /// The managed resource.
        name: String,
        /// Every problem, with its path.
        message: String,
    },
    /// A provider call failed.
    #[error("managed resource `{name}`: {operation} failed: {source}")]
    Provider {
        /// The managed resource.
        name: String,
        /// The call.
        operation: Operation,
        /// The provider's error.
        #[source]
        source: ProviderError,
    },
    /// The external resource is missing and may not be created (observe-only).
    #[error(
        "managed resource `{name}`: external resource `{external_name}` does not exist and the management policies do not allow Create"
    )]
    ExternalMissing {
        /// The managed resource.
        name: String,
        /// The external name looked for.
        external_name: String,
    },
    /// A create's result was never recorded and names are not deterministic: a human must
    /// resolve it ([`ManagedResources::resolve_pending_create`](crate::ManagedResources::resolve_pending_create)).
    #[error(
        "managed resource `{name}`: a create of `{external_name}` started at {since_ms} ms and its result was never recorded; resolve the pending create"
    )]
    CreatePending {
        /// The managed resource.
        name: String,
        /// The external name of the create.
        external_name: String,
        /// When it started (ms since the Unix epoch).
        since_ms: u64,
    },
    /// Publishing connection details failed.
    #[error("managed resource `{name}`: publishing connection details failed: {source}")]
    Sink {
        /// The managed resource.
        name: String,
        /// The sink's error.
        #[source]
        source: SinkError,
    },
    /// Reading or writing the managed resource's record failed.
    #[error("managed resource `{name}`: {source}")]
    Record {
        /// The managed resource.
        name: String,
        /// The record error.
        #[source]
        source: RecordError,
    },
}

impl ReconcileError {
    /// Whether retrying (with backoff) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReconcileError::Invalid { .. } | ReconcileError::CreatePending { .. } => false,
            ReconcileError::ExternalMissing { .. } => true,
            ReconcileError::Provider { source, .. } => source.is_retryable(),
            ReconcileError::Sink { source, .. } => source.is_retryable(),
            ReconcileError::Record { source, .. } => source.is_retryable(),
        }
    }

    /// The managed resource the error is about.
    pub fn name(&self) -> &str {
        match self {
            ReconcileError::Invalid { name, .. }
            | ReconcileError::Provider { name, .. }
            | ReconcileError::ExternalMissing { name, .. }
            | ReconcileError::CreatePending { name, .. }
            | ReconcileError::Sink { name, .. }
            | ReconcileError::Record { name, .. } => name,
        }
    }
}
