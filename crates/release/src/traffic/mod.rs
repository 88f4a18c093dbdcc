//! Traffic routing between the revisions of an application during a release.
//!
//! A release strategy decides a [`TrafficSplit`] (a weight per revision, summing to 100) and the
//! rollout controller hands it to a [`TrafficRouter`]:
//!
//! - [`ReplicaRatio`]: no router at all; traffic follows the replica counts, so the strategy
//!   derives the canary and stable replica counts from the weight with
//!   [`weighted_replica_counts`] (Argo Rollouts' surge-aware rule);
//! - `NginxRouter` (feature `nginx`): renders an nginx config with a weighted upstream over each revision's
//!   instance addresses, validates it with `nginx -t`, reloads, keeps the last versions with
//!   diffs and restores the previous config when a reload fails.
//!
//! Blue-green releases also use a *preview* route ([`TrafficRouter::set_preview`]): a second
//! address per application that serves only the new revision before it is promoted (Argo's
//! preview service). It is an optional capability: routers without it answer
//! [`TrafficError::Unsupported`] and the controller carries on without a preview.
//!
//! ```
//! use rorqual_release::traffic::weighted_replica_counts;
//!
//! // Without a router, setWeight 25 on 10 replicas with a positive maxSurge runs 3 canary and
//! // 8 stable instances (3 of 11 is closer to 25 % than 3 of 10); weights 1-99 never leave a
//! // side empty.
//! assert_eq!(weighted_replica_counts(25, 10, 3), (3, 8));
//! assert_eq!(weighted_replica_counts(1, 10, 3), (1, 10));
//! assert_eq!(weighted_replica_counts(41, 10, 0), (4, 6));
//! ```

#[cfg(feature = "nginx")]
mod nginx;
mod ratio;

use std::fmt::Debug;
use std::net::SocketAddr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use rorqual_core::model::{AppKey, Revision};

#[cfg(feature = "nginx")]
pub use nginx::{ConfigVersion, NGINX_DEFAULT_BINARY, NginxRouter, NginxRouterBuilder};
pub use ratio::{ReplicaRatio, weighted_replica_counts};

/// One revision's share of an application's traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// The revision serving this share.
    pub revision: Revision,
    /// Its weight in percent, `0..=100`; a weight-0 backend receives no traffic.
    pub weight: u32,
    /// The addresses of the revision's ready instances; traffic is spread evenly over them.
    pub endpoints: Vec<SocketAddr>,
}

impl Backend {
    /// A backend for `revision` at `weight` percent over `endpoints`.
    pub fn new(revision: Revision, weight: u32, endpoints: Vec<SocketAddr>) -> Self {
        Backend {
            revision,
            weight,
            endpoints,
        }
    }

    /// A preview backend: all of the preview traffic to `revision` over `endpoints`.
    pub fn preview(revision: Revision, endpoints: Vec<SocketAddr>) -> Self {
        Backend::new(revision, 100, endpoints)
    }

    /// Checks a backend given to [`TrafficRouter::set_preview`]: weight 100 (a preview serves
    /// one revision) and at least one endpoint (an empty preview is cleared with `None`).
    pub fn validate_preview(&self) -> Result<(), TrafficError> {
        if self.weight != 100 {
            return Err(TrafficError::InvalidSplit {
                reason: format!(
                    "preview backend {} has weight {}; a preview serves one revision at weight 100",
                    self.revision, self.weight
                ),
            });
        }
        if self.endpoints.is_empty() {
            return Err(TrafficError::InvalidSplit {
                reason: format!(
                    "preview backend {} has no endpoints; clear the preview with None instead",
                    self.revision
                ),
            });
        }
        Ok(())
    }
}

/// How an application's traffic is split between its revisions; the weights sum to 100.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplit {
    /// One entry per revision (at most one each).
    pub backends: Vec<Backend>,
}

impl TrafficSplit {
    /// A split over `backends`.
    pub fn new(backends: Vec<Backend>) -> Self {
        TrafficSplit { backends }
    }

    /// All traffic to one revision.
    pub fn single(revision: Revision, endpoints: Vec<SocketAddr>) -> Self {
        TrafficSplit {
            backends: vec![Backend::new(revision, 100, endpoints)],
        }
    }

    /// The weight of `revision` (0 when absent).
    pub fn weight_of(&self, revision: &Revision) -> u32 {
        self.backends
            .iter()
            .filter(|b| &b.revision == revision)
            .map(|b| b.weight)
            .sum()
    }

    /// Checks the split for a router that sends traffic itself: [`validate_weights`] and every
    /// backend with a positive weight has at least one endpoint.
    ///
    /// [`validate_weights`]: TrafficSplit::validate_weights
    pub fn validate(&self) -> Result<(), TrafficError> {
        self.validate_weights()?;
        match self
            .backends
            .iter()
            .find(|b| b.weight > 0 && b.endpoints.is_empty())
        {
            Some(b) => Err(TrafficError::InvalidSplit {
                reason: format!(
                    "revision {} has weight {} but no endpoints",
                    b.revision, b.weight
                ),
            }),
            None => Ok(()),
        }
    }

    /// Checks the weights only: at least one backend, weights `0..=100` summing to 100, no
    /// revision twice.
    pub fn validate_weights(&self) -> Result<(), TrafficError> {
        let invalid = |reason: String| Err(TrafficError::InvalidSplit { reason });
        if self.backends.is_empty() {
            return invalid("no backends".into());
        }
        let mut sum = 0u32;
        for (i, b) in self.backends.iter().enumerate() {
            if b.weight > 100 {
                return invalid(format!(
                    "backend {i} (revision {}) has weight {}, over 100",
                    b.revision, b.weight
                ));
            }
            if self.backends[..i].iter().any(|o| o.revision == b.revision) {
                return invalid(format!("revision {} appears twice", b.revision));
            }
            sum += b.weight;
        }
        if sum != 100 {
            return invalid(format!("weights sum to {sum}, not 100"));
        }
        Ok(())
    }
}

/// Errors of traffic routers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrafficError {
    /// The split itself is wrong (weights, duplicates, no endpoints).
    #[error("invalid traffic split: {reason}")]
    InvalidSplit {
        /// What is wrong.
        reason: String,
    },
    /// The rendered config was rejected by the proxy's own check (`nginx -t`); nothing changed.
    #[error("{router} rejected the new config for {app}: {reason}")]
    ValidationFailed {
        /// The router's name.
        router: String,
        /// The application.
        app: String,
        /// The checker's output.
        reason: String,
    },
    /// Reloading the proxy failed; the previous config was restored and still serves.
    #[error("{router} reload for {app} failed, previous config restored: {reason}")]
    ReloadFailed {
        /// The router's name.
        router: String,
        /// The application.
        app: String,
        /// What the proxy said.
        reason: String,
    },
    /// The router does not offer this capability (for this application); nothing changed.
    /// The rollout controller treats it as "no such service" and carries on.
    #[error("{router} does not support {capability}")]
    Unsupported {
        /// The router's name.
        router: String,
        /// What is not supported, naming the application when it is per application.
        capability: String,
    },
    /// Writing the config or starting the proxy failed.
    #[error("{context}")]
    Io {
        /// What was being done, naming the path or program.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl TrafficError {
    /// A human-readable reason, for the rollout's status and events.
    pub fn reason(&self) -> String {
        self.to_string()
    }

    /// Whether a later retry of the same split may succeed (I/O and reload failures).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TrafficError::ReloadFailed { .. } | TrafficError::Io { .. }
        )
    }
}

/// Routes an application's traffic between revisions.
///
/// Kubernetes mapping: an ingress controller's canary weights or a service mesh's weighted
/// routes; without either, the Service selector spreads traffic by replica count
/// ([`ReplicaRatio`]).
#[async_trait]
pub trait TrafficRouter: Send + Sync + Debug + 'static {
    /// The router's name, for events and errors (`replica-ratio`, `nginx`).
    fn name(&self) -> &str;

    /// Whether this router sets weights itself. `false` for [`ReplicaRatio`]: traffic follows
    /// replica counts, so the strategy derives replica counts from the weight with
    /// [`weighted_replica_counts`].
    fn routes_traffic(&self) -> bool;

    /// Applies `split` to `app`'s traffic. On error the previous split keeps serving.
    async fn set_split(&self, app: &AppKey, split: &TrafficSplit) -> Result<(), TrafficError>;

    /// Points `app`'s preview route (blue-green: what testers reach before promotion) at
    /// `preview` — one revision at weight 100 over its ready endpoints — or, with `None`,
    /// empties it. Active traffic ([`set_split`](TrafficRouter::set_split)) is not touched.
    ///
    /// Optional capability: the default answers [`TrafficError::Unsupported`], which the
    /// rollout controller treats as "this router has no preview service".
    async fn set_preview(
        &self,
        app: &AppKey,
        preview: Option<&Backend>,
    ) -> Result<(), TrafficError> {
        let _ = (app, preview);
        Err(TrafficError::Unsupported {
            router: self.name().to_owned(),
            capability: "preview routing".into(),
        })
    }
}
