//! The rollout controller's errors.

use crate::approval::ApprovalError;
use crate::machine::{Verb, VerbRefusal};
use crate::strategy::StrategyError;
use crate::traffic::TrafficError;
use rorqual_core::error::Error as EngineError;
use rorqual_core::model::AppKey;

/// Errors of controller operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControllerError {
    /// The rollout's spec is invalid (every problem listed with its path); nothing changed.
    #[error("rollout {app} rejected: {source}")]
    InvalidStrategy {
        /// The application.
        app: AppKey,
        /// What is wrong.
        #[source]
        source: Box<StrategyError>,
    },
    /// No rollout for this application.
    #[error("no rollout for {0}")]
    NotFound(AppKey),
    /// A verb that does not apply in the rollout's state; nothing changed.
    #[error("cannot {verb} rollout {app}: rollout {app} {source}")]
    Refused {
        /// The verb.
        verb: Verb,
        /// The application.
        app: AppKey,
        /// Why.
        #[source]
        source: VerbRefusal,
    },
    /// `undo` names a revision the rollout does not keep.
    #[error("cannot undo rollout {app}: {what}")]
    NoSuchRevision {
        /// The application.
        app: AppKey,
        /// What is missing (`revision v3 is not in the history`).
        what: String,
    },
    /// A decision was given for a rollout that waits for no approval.
    #[error("rollout {app} is not waiting for an approval: {doing}")]
    NotWaitingForApproval {
        /// The application.
        app: AppKey,
        /// What it is doing instead.
        doing: String,
    },
    /// An approval decision through the controller failed.
    #[error("approval for rollout {app}: {source}")]
    Approval {
        /// The application.
        app: AppKey,
        /// The gate's error.
        #[source]
        source: Box<ApprovalError>,
    },
    /// The engine or the state store failed.
    #[error("engine operation for {app} failed: {source}")]
    Engine {
        /// The application.
        app: AppKey,
        /// The engine's error.
        #[source]
        source: EngineError,
    },
    /// The traffic router failed; the rollout is held with the reason, or retried.
    #[error("traffic router {router} failed for {app}: {source}")]
    Router {
        /// The application.
        app: AppKey,
        /// The router's name.
        router: String,
        /// The router's error.
        #[source]
        source: Box<TrafficError>,
    },
    /// Listing the stored rollouts failed.
    #[error("loading the rollouts from the state store failed: {source}")]
    Load {
        /// The store's error.
        #[source]
        source: EngineError,
    },
    /// A stored record could not be decoded.
    #[error("rollout record `{key}` is unreadable: {source}")]
    Corrupt {
        /// The store key.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The runtime refused the controller's settings (a concurrency of 0).
    #[error("rollout controller settings: {0}")]
    Runtime(#[source] rorqual_runtime::controller::BuildError),
    /// [`RolloutController::run`](super::RolloutController::run) was called while it runs.
    #[error("the rollout controller is already running")]
    AlreadyRunning,
}

impl ControllerError {
    /// Whether retrying the same call later may succeed (engine, store and router failures).
    pub fn is_retryable(&self) -> bool {
        match self {
            ControllerError::Engine { source, .. } | ControllerError::Load { source } => {
                source.is_retryable()
            }
            ControllerError::Approval { source, .. } => source.is_retryable(),
            // A preview the router could not set is retried whatever the error.
            ControllerError::Router { .. } => true,
            _ => false,
        }
    }
}
