//! Traffic routing between the revisions of an application during a release.
//!
//! The shape of the seam:
//!
//! - A release strategy decides a [`TrafficSplit`]: which **revisions** get which **weight**
//!   (summing to 100), nothing else. It names no addresses, Services or upstreams.
//! - A [`TrafficRouter`] maps each revision to a backend of its own kind and applies the
//!   weights: a Kubernetes or mesh router to a Service or subset per revision, nginx to an
//!   upstream over the revision's ready instances. Where a router needs the instances it finds
//!   them itself through an [`Endpoints`] source: [`EngineEndpoints`] (the ready instances an
//!   [`Engine`](rorqual_core::engine::Engine) reports) or [`StaticEndpoints`] (a fixed set,
//!   for hosts and tests). A weighted revision with no ready instance is refused with the
//!   retryable [`TrafficError::NoEndpoints`] and the previous split keeps serving.
//! - After a weight change the rollout controller asks the router to
//!   [`verify`](TrafficRouter::verify) that the split is in effect: [`Verification::Verified`],
//!   [`Verification::Failed`] with what differs, or [`Verification::Skipped`] for routers that
//!   cannot look (the default).
//!
//! Routers:
//!
//! - [`ReplicaRatio`]: no router at all; traffic follows the replica counts, so the strategy
//!   derives the canary and stable replica counts from the weight with
//!   [`weighted_replica_counts`] (Argo Rollouts' surge-aware rule);
//! - `NginxRouter` (feature `nginx`): renders an nginx config with a weighted upstream over each
//!   weighted revision's ready endpoints (from its [`Endpoints`] source), validates it with
//!   `nginx -t`, reloads, keeps the last versions with diffs and restores the previous config
//!   when a reload fails. Sending the same split again reloads only when a revision's ready
//!   endpoints changed, so the controller re-sends the split whenever a weighted revision's
//!   instances come or go.
//!
//! Blue-green releases also use a *preview* route ([`TrafficRouter::set_preview`]): a second
//! address per application that serves only the new revision before it is promoted (Argo's
//! preview service). It is an optional capability: routers without it answer
//! [`TrafficError::Unsupported`] and the controller carries on without a preview.
//!
//! ```
//! use rorqual_core::model::Revision;
//! use rorqual_release::traffic::{Backend, TrafficSplit, weighted_replica_counts};
//!
//! // A split is revisions and weights; the router finds where each revision runs.
//! let split = TrafficSplit::new(vec![
//!     Backend::new(Revision::from("stable"), 80),
//!     Backend::new(Revision::from("canary"), 20),
//! ]);
//! split.validate_weights()?;
//! assert_eq!(split.weight_of(&Revision::from("canary")), 20);
//!
//! // Without a router, setWeight 25 on 10 replicas with a positive maxSurge runs 3 canary and
//! // 8 stable instances (3 of 11 is closer to 25 % than 3 of 10); weights 1-99 never leave a
//! // side empty.
//! assert_eq!(weighted_replica_counts(25, 10, 3), (3, 8));
//! assert_eq!(weighted_replica_counts(1, 10, 3), (1, 10));
//! assert_eq!(weighted_replica_counts(41, 10, 0), (4, 6));
//! # Ok::<(), rorqual_release::traffic::TrafficError>(())
//! ```

mod endpoints;
#[cfg(feature = "nginx")]
mod nginx;
mod ratio;

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use rorqual_core::model::{AppKey, Revision};

pub use endpoints::{Endpoints, EngineEndpoints, StaticEndpoints, ready_endpoints};
#[cfg(feature = "nginx")]
pub use nginx::{
    ConfigVersion, NGINX_DEFAULT_BINARY, NginxRouter, NginxRouterBuilder, RoutedBackend,
};
pub use ratio::{ReplicaRatio, weighted_replica_counts};

/// One revision's share of an application's traffic: the revision and its weight. Where the
/// revision runs is the router's business (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// The revision serving this share.
    pub revision: Revision,
    /// Its weight in percent, `0..=100`; a weight-0 backend receives no traffic.
    pub weight: u32,
}

impl Backend {
    /// A backend for `revision` at `weight` percent.
    pub fn new(revision: Revision, weight: u32) -> Self {
        Backend { revision, weight }
    }

    /// A preview backend: all of the preview traffic to `revision`.
    pub fn preview(revision: Revision) -> Self {
        Backend::new(revision, 100)
    }

    /// Checks a backend given to [`TrafficRouter::set_preview`]: weight 100 (a preview serves
    /// one revision).
    pub fn validate_preview(&self) -> Result<(), TrafficError> {
        if self.weight != 100 {
            return Err(TrafficError::InvalidSplit {
                reason: format!(
                    "preview backend {} has weight {}; a preview serves one revision at weight 100",
                    self.revision, self.weight
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
    pub fn single(revision: Revision) -> Self {
        TrafficSplit {
            backends: vec![Backend::new(revision, 100)],
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

    /// The backends with a positive weight: the revisions that receive traffic.
    pub fn weighted(&self) -> impl Iterator<Item = &Backend> {
        self.backends.iter().filter(|b| b.weight > 0)
    }

    /// Checks the weights: at least one backend, weights `0..=100` summing to 100, no
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

/// What [`TrafficRouter::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verification {
    /// The router looked and the split is in effect.
    Verified,
    /// The router cannot look (the default for routers without a way to observe their proxy).
    Skipped,
    /// The router looked and the split is not in effect; says what differs.
    Failed(String),
}

/// Errors of traffic routers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrafficError {
    /// The split itself is wrong (weights, duplicates, an application the router does not
    /// serve).
    #[error("invalid traffic split: {reason}")]
    InvalidSplit {
        /// What is wrong.
        reason: String,
    },
    /// A revision with a positive weight (or the preview revision) has no ready endpoint, so
    /// the router has nowhere to send its share; nothing changed. Retryable: the revision's
    /// instances may become ready.
    #[error("{router} found no ready endpoint for {app} revision {revision}")]
    NoEndpoints {
        /// The router's name.
        router: String,
        /// The application.
        app: String,
        /// The revision without endpoints.
        revision: Revision,
    },
    /// The endpoint source has not caught up with the engine yet (a Kubernetes EndpointSlice
    /// lags its pods' readiness), so a split now would route to a stale set of instances;
    /// nothing changed. Retryable: the controller sends the split again soon.
    #[error("the endpoints of {app} revision {revision} are behind the engine: {reason}")]
    EndpointsBehind {
        /// The application.
        app: String,
        /// The revision.
        revision: Revision,
        /// What differs.
        reason: String,
    },
    /// Looking up a revision's endpoints in the engine failed; nothing changed.
    #[error("looking up the ready endpoints of {app} revision {revision}")]
    Engine {
        /// The application.
        app: String,
        /// The revision.
        revision: Revision,
        /// What the engine said.
        #[source]
        source: rorqual_core::Error,
    },
    /// The router's own settings are wrong (a missing setting, two routes on one address).
    #[error("{router} router configuration: {reason}")]
    Config {
        /// The router's name.
        router: String,
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
    /// After a weight change the router reports that the split is not (yet) in effect; the
    /// controller sends it again.
    #[error("{router} has not applied the split for {app}: {reason}")]
    VerificationFailed {
        /// The router's name.
        router: String,
        /// The application.
        app: String,
        /// What differs.
        reason: String,
    },
}

impl TrafficError {
    /// A human-readable reason, for the rollout's status and events: the message followed by
    /// its sources (`looking up … : engine is shut down`).
    pub fn reason(&self) -> String {
        let mut reason = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            reason.push_str(": ");
            reason.push_str(&s.to_string());
            source = s.source();
        }
        reason
    }

    /// Whether a later retry of the same split may succeed: I/O and reload failures, a
    /// weighted revision without ready endpoints yet, and engine errors the engine itself calls
    /// retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            TrafficError::ReloadFailed { .. }
            | TrafficError::Io { .. }
            | TrafficError::NoEndpoints { .. }
            | TrafficError::EndpointsBehind { .. }
            | TrafficError::VerificationFailed { .. } => true,
            TrafficError::Engine { source, .. } => source.is_retryable(),
            TrafficError::InvalidSplit { .. }
            | TrafficError::ValidationFailed { .. }
            | TrafficError::Unsupported { .. }
            | TrafficError::Config { .. } => false,
        }
    }
}

/// Routes an application's traffic between revisions.
///
/// Kubernetes mapping: an ingress controller's canary weights or a service mesh's weighted
/// routes (a Service or subset per revision); without either, the Service selector spreads
/// traffic by replica count ([`ReplicaRatio`]).
#[async_trait]
pub trait TrafficRouter: Send + Sync + Debug + 'static {
    /// The router's name, for events and errors (`replica-ratio`, `nginx`).
    fn name(&self) -> &str;

    /// Whether this router sets weights itself. `false` for [`ReplicaRatio`]: traffic follows
    /// replica counts, so the strategy derives replica counts from the weight with
    /// [`weighted_replica_counts`].
    fn routes_traffic(&self) -> bool;

    /// Applies `split` to `app`'s traffic: maps each weighted revision to the router's backend
    /// for it and sets the weights. On error the previous split keeps serving.
    ///
    /// Routers that find the revisions' instances themselves refuse a weighted revision without
    /// any with [`TrafficError::NoEndpoints`] (retryable). Calling again with the same split
    /// is cheap and picks up instances that came or went since (the rollout controller does so
    /// whenever a weighted revision's ready count changes).
    async fn set_split(&self, app: &AppKey, split: &TrafficSplit) -> Result<(), TrafficError>;

    /// Checks that `split` is what `app`'s traffic follows now, after a
    /// [`set_split`](TrafficRouter::set_split) with it. An `Err` means the check itself could
    /// not run (an unknown application, an endpoint lookup failing); a check that ran and
    /// found a difference is [`Verification::Failed`].
    ///
    /// Optional capability: the default answers [`Verification::Skipped`] (the router cannot
    /// look at its proxy).
    async fn verify(
        &self,
        app: &AppKey,
        split: &TrafficSplit,
    ) -> Result<Verification, TrafficError> {
        let _ = (app, split);
        Ok(Verification::Skipped)
    }

    /// Points `app`'s preview route (blue-green: what testers reach before promotion) at
    /// `preview` — one revision at weight 100 — or, with `None`, empties it. Active traffic
    /// ([`set_split`](TrafficRouter::set_split)) is not touched. A router that finds instances
    /// itself refuses a preview revision without any with [`TrafficError::NoEndpoints`].
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_split_is_revisions_and_weights_on_the_wire() {
        let split = TrafficSplit::new(vec![
            Backend::new(Revision::from("v1"), 80),
            Backend::new(Revision::from("v2"), 20),
        ]);
        let json = serde_json::json!({
            "backends": [
                {"revision": "v1", "weight": 80},
                {"revision": "v2", "weight": 20},
            ]
        });
        assert_eq!(serde_json::to_value(&split).unwrap(), json);
        assert_eq!(serde_json::from_value::<TrafficSplit>(json).unwrap(), split);
        let weighted: Vec<_> = TrafficSplit::new(vec![
            Backend::new(Revision::from("v1"), 100),
            Backend::new(Revision::from("v2"), 0),
        ])
        .weighted()
        .map(|b| b.revision.to_string())
        .collect();
        assert_eq!(weighted, ["v1"]);
        assert_eq!(
            TrafficSplit::single(Revision::from("v1")).backends[0].weight,
            100
        );
    }

    #[tokio::test]
    async fn verify_is_skipped_by_default() {
        let split = TrafficSplit::single(Revision::from("v1"));
        let verdict = ReplicaRatio
            .verify(&AppKey::new("default", "web"), &split)
            .await
            .unwrap();
        assert_eq!(verdict, Verification::Skipped);
    }

    #[test]
    fn missing_endpoints_and_engine_errors_classify_themselves() {
        let none = TrafficError::NoEndpoints {
            router: "nginx".into(),
            app: "default/web".into(),
            revision: Revision::from("v2"),
        };
        assert!(none.is_retryable());
        assert_eq!(
            none.reason(),
            "nginx found no ready endpoint for default/web revision v2"
        );
        let engine = |source| TrafficError::Engine {
            app: "default/web".into(),
            revision: Revision::from("v2"),
            source,
        };
        let io = engine(rorqual_core::Error::io(
            "reading instances",
            std::io::Error::other("disk gone"),
        ));
        assert!(io.is_retryable());
        assert_eq!(
            io.reason(),
            "looking up the ready endpoints of default/web revision v2: reading instances: \
             disk gone"
        );
        assert!(!engine(rorqual_core::Error::ShutDown).is_retryable());
        let config = TrafficError::Config {
            router: "nginx".into(),
            reason: "no endpoints source".into(),
        };
        assert!(!config.is_retryable());
    }
}
