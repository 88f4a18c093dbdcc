//! rorqual-release: release strategies as pure planning functions, and the rollout controller
//! that executes their plans on any `rorqual_core::engine::Engine` and a traffic router.
//!
//! - strategies ([`Recreate`], [`RollingUpdate`], [`BlueGreen`], [`Canary`]) and the
//!   [`RolloutController`] at the crate root;
//! - [`analysis`]: analysis templates and runs, CEL conditions, metric providers (web,
//!   Prometheus, command);
//! - [`traffic`]: traffic routers (replica ratio, nginx);
//! - [`approval`]: manual approvals keyed by release attempt (`Approvals`, in memory or in a
//!   state store so they survive restarts), with an HTTP API;
//! - [`notify`]: notifications (a JSON webhook).
//!
//! HTTP clients (webhook, web and prometheus providers) speak HTTPS with rustls and the
//! bundled Mozilla roots; `root_certificates_pem` on each adds a private CA.
//!
//! Cargo features (see `Cargo.toml`): `prometheus`, `web`, `nginx`, `http-api` and `webhook`
//! are on by default; `command` (a metric provider that runs programs) is opt-in twice: its
//! feature compiles it in, and a host still registers it with `Providers::with_command`.
//!
//! A [`ReleaseStrategy`] maps a [`RolloutView`] (groups, readiness, step, analysis results,
//! approval, elapsed time) to a [`Plan`] it owns (replicas per revision, traffic weight,
//! analyses to run, and a [`Gate`]); it also says where a promote goes
//! ([`ReleaseStrategy::promote_step`]), how many stateful identities may move at once, also
//! when rolling back ([`ReleaseStrategy::stateful_max_unavailable`]), and whether it never
//! runs two revisions at once ([`ReleaseStrategy::recreates`]). Validation reports every
//! problem with its path ([`StrategyError::Invalid`]). Four strategies: [`Recreate`],
//! [`RollingUpdate`] (Kubernetes arithmetic plus a BCS partition; ordered partitions for
//! stateful workloads), [`BlueGreen`] and [`Canary`] (Argo Rollouts' semantics: without a
//! traffic router a weight becomes replica counts by Argo's surge-aware
//! [`traffic::weighted_replica_counts`], reached within maxSurge and maxUnavailable; pauses
//! in seconds or Go notation, [`PauseDuration`]). See `reference/release.md` for the upstream
//! rules matched.
//!
//! The [`RolloutController`] is a shell on `rorqual-runtime` around the pure
//! [`RolloutMachine`] ([`machine`]): from a persisted [`machine::Rollout`] (one
//! [`RolloutState`]) and the strategy's plan to the next state and [`machine::Effect`]s, which
//! the shell executes in order (new instances, traffic, removals) before persisting the state.
//! Rollout specs name their strategy as `{kind, config}` ([`StrategySpec`]), resolved through a
//! [`StrategyRegistry`] on the builder, so a host's own [`ReleaseStrategy`] runs beside the
//! built-ins.

pub mod analysis;
pub mod approval;
pub mod notify;
pub mod traffic;

pub mod machine;

mod blue_green;
mod canary;
mod controller;
#[cfg(any(feature = "web", feature = "prometheus", feature = "webhook"))]
mod https;
mod plan;
mod record;
mod recreate;
mod registry;
mod rolling;
mod scale;
mod strategy;
mod timestamp;

pub use blue_green::BlueGreen;
pub use canary::{ApprovalStep, BackgroundAnalysis, Canary, CanaryStep, PauseDuration, PauseStep};
pub use controller::{
    ControllerError, EventReason, RolloutController, RolloutControllerBuilder, RolloutEvent,
    STATE_PREFIX,
};
#[cfg(any(feature = "web", feature = "prometheus", feature = "webhook"))]
pub use https::RootCertificateError;
pub use machine::{RolloutMachine, RolloutState, RolloutStatus, Verb, VerbRefusal};
pub use plan::{
    AnalysisRequest, AnalysisStep, Gate, GroupView, IdentityView, Plan, RolloutView, abort_plan,
    stateful_moves,
};
pub use record::{AnalysisStatus, FailurePolicy, HistoryEntry, RolloutPhase, RolloutSpec};
pub use recreate::Recreate;
pub use registry::{StrategyFactory, StrategyRegistry, StrategySpec};
pub use rolling::{RollingUpdate, proportional};
pub use scale::{IntOrPercent, IntOrPercentError, resolve_fenceposts};
pub use strategy::{ReleaseStrategy, Strategy, StrategyError};
