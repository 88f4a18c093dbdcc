//! Errors of pool operations and stores.

use std::net::IpAddr;

use crate::model::IpState;

/// Errors of a pool store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("{context}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stored data is unreadable (corrupt, truncated, or from an incompatible version).
    #[error("pool store at {location} is corrupt: {reason}")]
    Corrupt {
        /// Where (a path or an etcd key).
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// A compare-and-swap lost against a concurrent writer.
    #[error("conflict on pool `{pool}`: expected version {expected:?}, found {found:?}")]
    Conflict {
        /// The pool.
        pool: String,
        /// The version expected (`None`: must not exist).
        expected: Option<u64>,
        /// The version found.
        found: Option<u64>,
    },
    /// Too many concurrent writers: the update kept losing.
    #[error("pool `{pool}` is contended: gave up after {attempts} conflicting attempts")]
    Contended {
        /// The pool.
        pool: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The backend (etcd) failed.
    #[error("{context}: {reason}")]
    Backend {
        /// What was being done.
        context: String,
        /// What went wrong.
        reason: String,
    },
    /// The core [`rorqual_core::engine::StateStore`] under a
    /// [`crate::store::state_store::StateStorePools`] failed.
    #[error("{context}")]
    StateStore {
        /// What was being done, naming the key.
        context: String,
        /// The state store's error.
        #[source]
        source: rorqual_core::error::Error,
    },
    /// A watch was asked to resume after a revision the store no longer keeps changes for;
    /// the consumer must resynchronise from [`crate::store::PoolStore::snapshot`].
    #[error(
        "pool store at {location} no longer keeps changes after revision {requested} (oldest kept: {oldest})"
    )]
    Compacted {
        /// Where (a path or an etcd prefix).
        location: String,
        /// The revision asked for.
        requested: u64,
        /// The oldest revision a watch can still resume after.
        oldest: u64,
    },
    /// The store does not implement an optional capability (see [`crate::store::PoolStore`]).
    #[error("pool store {store} does not support {operation}")]
    Unsupported {
        /// The store's type.
        store: String,
        /// The capability (`watch`).
        operation: &'static str,
    },
    /// A watcher fell behind and missed changes: re-read the pools to catch up.
    #[error("the watch fell {missed} changes behind; re-read the pools")]
    Lagged {
        /// How many changes were missed.
        missed: u64,
    },
}

impl StoreError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Conflict { .. }
            | StoreError::Contended { .. }
            | StoreError::Backend { .. } => true,
            StoreError::StateStore { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}

/// Errors of pool operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The pool does not exist.
    #[error("pool `{pool}` does not exist")]
    NoSuchPool {
        /// The pool.
        pool: String,
    },
    /// A pool with this name exists already (with a different spec).
    #[error("pool `{pool}` already exists")]
    PoolExists {
        /// The pool.
        pool: String,
    },
    /// The pool's definition is wrong.
    #[error("pool `{pool}` is invalid: {reason}")]
    InvalidSpec {
        /// The pool.
        pool: String,
        /// What is wrong.
        reason: String,
    },
    /// No address is free.
    #[error(
        "pool `{pool}` has no free address in {ranges} ({active} active, {reserved} reserved, {disabled} disabled)"
    )]
    Exhausted {
        /// The pool.
        pool: String,
        /// Its ranges and addresses, printed.
        ranges: String,
        /// Active addresses.
        active: u64,
        /// Reserved addresses.
        reserved: u64,
        /// Disabled addresses.
        disabled: u64,
    },
    /// A requested address is in none of the pool's ranges (or is excluded or a gateway).
    #[error("address {ip} is not in pool `{pool}` ({ranges}){why}")]
    OutOfRange {
        /// The pool.
        pool: String,
        /// The address.
        ip: IpAddr,
        /// The pool's ranges, printed.
        ranges: String,
        /// Extra reason (`: excluded`, `: it is a gateway`), or empty.
        why: String,
    },
    /// A requested address is not available.
    #[error("address {ip} in pool `{pool}` is {state}{holder}")]
    Unavailable {
        /// The pool.
        pool: String,
        /// The address.
        ip: IpAddr,
        /// Its state.
        state: IpState,
        /// Who holds it (` by ctr/eth0`, ` for identity ns/db-0`), or empty.
        holder: String,
    },
    /// An identity's claimed address is still active under another owner (the old instance
    /// has not released it yet); retry later.
    #[error("pool `{pool}`: address {ip} claimed by `{identity}` is still held by {holder}")]
    ClaimBusy {
        /// The pool.
        pool: String,
        /// The identity.
        identity: String,
        /// The claimed address.
        ip: IpAddr,
        /// The owner still holding it.
        holder: String,
    },
    /// The owner (or identity) already holds a different address than the one requested.
    #[error("pool `{pool}`: {who} already holds {held}, cannot also take requested {requested}")]
    AlreadyHolds {
        /// The pool.
        pool: String,
        /// Owner or identity.
        who: String,
        /// The address held.
        held: IpAddr,
        /// The address requested.
        requested: IpAddr,
    },
    /// The pool still has active addresses and cannot be deleted.
    #[error("pool `{pool}` has {active} active addresses and cannot be deleted")]
    PoolInUse {
        /// The pool.
        pool: String,
        /// Active addresses.
        active: u64,
    },
    /// The store failed.
    #[error("pool `{pool}`: {source}")]
    Store {
        /// The pool.
        pool: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

impl PoolError {
    /// Wraps a store error for `pool`.
    pub fn store(pool: impl Into<String>, source: StoreError) -> Self {
        PoolError::Store {
            pool: pool.into(),
            source,
        }
    }

    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            PoolError::ClaimBusy { .. } => true,
            PoolError::Store { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}

/// Why one address of a bulk transfer was not moved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum TransferError {
    /// Not in the pool.
    #[error("{ip} is not in the pool")]
    NotInPool {
        /// The address.
        ip: IpAddr,
    },
    /// In a state that cannot move.
    #[error("{ip} is {state}{holder}")]
    WrongState {
        /// The address.
        ip: IpAddr,
        /// Its state.
        state: IpState,
        /// Who holds it, or empty.
        holder: String,
    },
}

/// A pool state whose indexes disagree with its entries ([`crate::PoolState::check_consistent`]):
/// a bug in this crate or a hand-edited store, never a user error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsistencyError {
    /// The owner index points at an address whose entry is not that owner's active one.
    #[error("pool `{pool}`: owner {owner} is indexed at {ip} but the entry there is {entry}")]
    OwnerIndex {
        /// The pool.
        pool: String,
        /// The owner (`container/ifname`).
        owner: String,
        /// The indexed address.
        ip: IpAddr,
        /// The entry found there, printed.
        entry: String,
    },
    /// The number of active entries differs from the number of indexed owners.
    #[error("pool `{pool}` has {active} active entries but {owners} indexed owners")]
    ActiveCount {
        /// The pool.
        pool: String,
        /// Active entries.
        active: usize,
        /// Indexed owners.
        owners: usize,
    },
    /// A claim names an address whose entry is not held for its identity.
    #[error("pool `{pool}`: claim of `{identity}` is on {ip} but the entry there is {entry}")]
    Claim {
        /// The pool.
        pool: String,
        /// The identity.
        identity: String,
        /// The claimed address.
        ip: IpAddr,
        /// The entry found there, printed.
        entry: String,
    },
}
