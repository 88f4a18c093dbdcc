//! Errors of engine, placement, network and state operations.

use crate::model::ValidationErrors;

/// Errors of the core seams.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A spec or request was rejected before anything started.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    /// A request that is wrong in itself (not a spec field).
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// The named object does not exist.
    #[error("{kind} `{name}` not found")]
    NotFound {
        /// What kind of object (`application`, `group`, `instance`, `state key`).
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A compare-and-swap lost against a concurrent writer; re-read and retry.
    #[error("conflict on `{key}`: expected version {expected:?}, found {found:?}")]
    Conflict {
        /// The contested key.
        key: String,
        /// The version the writer expected (`None`: must not exist).
        expected: Option<u64>,
        /// The version found (`None`: does not exist).
        found: Option<u64>,
    },
    /// The engine does not support this optional capability.
    #[error("{engine} engine does not support {operation}")]
    Unsupported {
        /// The engine's name.
        engine: String,
        /// The operation.
        operation: &'static str,
    },
    /// The state directory or store is unusable (corrupt, foreign, or from another version).
    #[error("state at {location} is unusable: {reason}")]
    CorruptState {
        /// Where the state lives.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// No node can take an instance.
    #[error("cannot place {instance}: {reason}")]
    Unschedulable {
        /// The instance.
        instance: String,
        /// Why, per node or in sum.
        reason: String,
    },
    /// Attaching or detaching a network failed.
    #[error("network {operation} for {instance} failed: {reason}")]
    Network {
        /// `attach` or `detach`.
        operation: &'static str,
        /// The instance.
        instance: String,
        /// What went wrong.
        reason: String,
    },
    /// An I/O operation failed.
    #[error("{context}")]
    Io {
        /// What was being done, naming the path or process.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Encoding or decoding stored data failed.
    #[error("{context}")]
    Codec {
        /// What was being decoded or encoded.
        context: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The engine is shutting down or shut down.
    #[error("engine is shut down")]
    ShutDown,
    /// A remote API (a cluster's apiserver) refused or failed a call.
    #[error("{context}")]
    Remote {
        /// The server, the call and what it answered.
        context: String,
        /// Whether the same call may pass later (the server was unreachable, overloaded or
        /// failing, not refusing).
        retryable: bool,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Conflict { .. }
                | Error::Unschedulable { .. }
                | Error::Io { .. }
                | Error::Network { .. }
                | Error::Remote {
                    retryable: true,
                    ..
                }
        )
    }
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
