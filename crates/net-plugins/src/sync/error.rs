//! What can go wrong while keeping a registry in step with the pools.

use crate::error::StoreError;

/// Errors of the registry sync ([`super::RegistrySync`]) and of registries
/// ([`super::RegistrySink`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The pool store failed.
    #[error("pool store {operation} failed")]
    Store {
        /// What was asked of the store (`snapshot`, `watch_from`, `the watch`).
        operation: &'static str,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The pool store's watch ended without an error (a closed connection): watch again.
    #[error("the pool store's watch ended after revision {after}")]
    WatchEnded {
        /// The last revision applied.
        after: u64,
    },
    /// A change arrived that is not after the last one applied: the store broke the
    /// [`crate::store::PoolStore::watch_from`] contract; watch again from the checkpoint.
    #[error("the pool store delivered revision {revision} after revision {applied} was applied")]
    OutOfOrder {
        /// The revision that arrived.
        revision: u64,
        /// The revision applied last.
        applied: u64,
    },
    /// The registry could not be read or written (a connection, a timeout).
    #[error("registry {registry}: {context}: {reason}")]
    Registry {
        /// Which registry (`etcd prefix /registry/`).
        registry: String,
        /// What was being done.
        context: String,
        /// The underlying error's message.
        reason: String,
    },
    /// The registry's checkpoint is no longer the revision a batch follows: another sync wrote
    /// to the same registry. Read the checkpoint again.
    #[error(
        "registry checkpoint {key} moved: expected revision {expected}, found {}",
        found.map_or_else(|| "none".to_owned(), |r| r.to_string())
    )]
    CheckpointMoved {
        /// The checkpoint's key.
        key: String,
        /// The revision the batch follows.
        expected: u64,
        /// The revision found (`None`: no checkpoint).
        found: Option<u64>,
    },
    /// Another sync wrote to the registry while this one was replacing its contents: read the
    /// checkpoint again.
    #[error("registry checkpoint {key} changed during a resync: another sync writes this registry")]
    ResyncInterrupted {
        /// The checkpoint's key.
        key: String,
    },
    /// The registry's checkpoint does not hold a revision.
    #[error("registry checkpoint {key} holds {value:?}, not a revision: {reason}")]
    CorruptCheckpoint {
        /// The checkpoint's key.
        key: String,
        /// What it holds (lossy UTF-8).
        value: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A key under the registry's prefix that is not an entry this sync writes (not
    /// `<pool>/<ip>`, or a value that is not an entry): something else writes there.
    #[error("registry key {key} is not a registry entry: {reason}")]
    CorruptEntry {
        /// The key.
        key: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The registry's keys would overlap the pool store's.
    #[error(
        "registry prefix {registry:?} overlaps pool store prefix {pools:?} in the same etcd: \
         choose prefixes neither of which starts with the other"
    )]
    OverlappingPrefixes {
        /// The registry's prefix.
        registry: String,
        /// The pool store's prefix.
        pools: String,
    },
    /// A registry's configuration is invalid.
    #[error("invalid registry configuration: {reason}")]
    InvalidConfig {
        /// What is wrong, naming the value.
        reason: String,
    },
}

impl SyncError {
    /// A failed store operation.
    pub fn store(operation: &'static str, source: StoreError) -> Self {
        SyncError::Store { operation, source }
    }

    /// Whether trying again later can succeed (a connection, a concurrent writer, a watch
    /// that ended); `false` for bad data and bad configuration, which need a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            SyncError::Store { source, .. } => {
                source.is_retryable() || matches!(source, StoreError::Compacted { .. })
            }
            SyncError::WatchEnded { .. }
            | SyncError::OutOfOrder { .. }
            | SyncError::Registry { .. }
            | SyncError::CheckpointMoved { .. }
            | SyncError::ResyncInterrupted { .. } => true,
            _ => false,
        }
    }
}
