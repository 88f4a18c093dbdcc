//! CNI errors: the codes of the spec (and rorqual's, from 100) and the error JSON.

use serde_json::{Value, json};

use crate::error::PoolError;

/// CNI error codes.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const BAD_ENV: u32 = 4;
    /// I/O failure (here: the pool store is unreadable, unwritable or corrupt).
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin cannot serve ADD (every pool is full, or the store is unusable).
    pub const NOT_AVAILABLE: u32 = 50;
    /// rorqual: no free address in a pool.
    pub const EXHAUSTED: u32 = 110;
    /// rorqual: a requested address is outside every range or not available.
    pub const ADDRESS_UNAVAILABLE: u32 = 111;
    /// rorqual: CHECK found a different address than the previous result.
    pub const CHECK_MISMATCH: u32 = 112;
}

/// A CNI error: printed as `{"cniVersion","code","msg","details"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
#[non_exhaustive]
pub struct CniError {
    /// The code.
    pub code: u32,
    /// The message.
    pub msg: String,
    /// Details.
    pub details: String,
}

impl CniError {
    /// An error with `code`.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The JSON printed on stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

impl From<PoolError> for CniError {
    fn from(e: PoolError) -> Self {
        let code = match &e {
            PoolError::Exhausted { .. } => code::EXHAUSTED,
            PoolError::OutOfRange { .. }
            | PoolError::Unavailable { .. }
            | PoolError::AlreadyHolds { .. } => code::ADDRESS_UNAVAILABLE,
            PoolError::InvalidSpec { .. } | PoolError::PoolExists { .. } => code::INVALID_CONFIG,
            _ if e.is_retryable() => code::TRY_AGAIN,
            PoolError::Store { .. } => code::IO,
            _ => code::INVALID_CONFIG,
        };
        let details = std::error::Error::source(&e)
            .and_then(std::error::Error::source)
            .map(ToString::to_string)
            .unwrap_or_default();
        CniError::new(code, e.to_string(), details)
    }
}
