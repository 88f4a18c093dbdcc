//! Manual approval of release steps: the [`ApprovalGate`] seam and the in-process
//! [`Approvals`] API with an HTTP router.
//!
//! A rollout controller asks for an approval with [`ApprovalGate::request`] (idempotent) and
//! polls [`ApprovalGate::decision`]; an operator approves or rejects with
//! [`Approvals::approve`] / [`Approvals::reject`] or over HTTP (`Approvals::router`, feature
//! `http-api`). Who
//! decided and when is recorded.
//!
//! ```
//! use std::time::SystemTime;
//! use rorqual_release::approval::{ApprovalGate, ApprovalRequest, Approvals};
//! use rorqual_core::model::{AppKey, Revision};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let approvals = Approvals::new();
//! let app = AppKey::new("games", "lobby");
//! let rev = Revision::from("9f1c2a7b3d");
//! approvals.request(&ApprovalRequest::new(app.clone(), rev.clone(), 2, "promote to 50%?")).await?;
//! assert_eq!(approvals.pending().len(), 1);
//! approvals.approve(&app, &rev, 2, "alice", Some("dashboards look fine".into()))?;
//! let decision = approvals.decision(&app, &rev, 2).await?.unwrap();
//! assert!(decision.approved && decision.by == "alice");
//! # Ok::<_, rorqual_release::approval::ApprovalError>(())
//! # }).unwrap();
//! ```

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};

use rorqual_core::model::{AppKey, Revision};

/// A rollout step waiting for a person's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequest {
    /// The application.
    pub app: AppKey,
    /// The revision being released.
    pub revision: Revision,
    /// The step index waiting.
    pub step: usize,
    /// What the approver is asked.
    pub message: String,
}

impl ApprovalRequest {
    /// A request for `step` of `app`'s release of `revision`.
    pub fn new(app: AppKey, revision: Revision, step: usize, message: impl Into<String>) -> Self {
        ApprovalRequest {
            app,
            revision,
            step,
            message: message.into(),
        }
    }
}

/// A recorded decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Approved (`true`) or rejected.
    pub approved: bool,
    /// Who decided.
    pub by: String,
    /// When (RFC 3339 in JSON).
    #[serde(with = "crate::timestamp")]
    pub at: SystemTime,
    /// Why, optionally.
    pub comment: Option<String>,
}

/// Errors of approval gates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// Nobody asked for this approval (wrong app, revision or step).
    #[error("no approval was requested for {app} revision {revision} step {step}")]
    NotFound {
        /// The application.
        app: String,
        /// The revision.
        revision: String,
        /// The step.
        step: usize,
    },
    /// It was decided already; decisions are final.
    #[error("{app} revision {revision} step {step} was already {} by {by}", if *.approved { "approved" } else { "rejected" })]
    AlreadyDecided {
        /// The application.
        app: String,
        /// The revision.
        revision: String,
        /// The step.
        step: usize,
        /// The earlier decision.
        approved: bool,
        /// Who made it.
        by: String,
    },
    /// The decision names no approver (`by` is empty).
    #[error("invalid decision: the approver (`by`) must be named")]
    NoApprover,
    /// The gate's backend failed (a remote approval service).
    #[error("approval backend failed: {0}")]
    Backend(String),
    /// The gate does not offer this optional capability.
    #[error("approval gate does not support {0}")]
    Unsupported(&'static str),
}

/// Where a rollout asks for manual approval.
#[async_trait]
pub trait ApprovalGate: Send + Sync + Debug + 'static {
    /// Asks for approval; asking again for the same app, revision and step changes nothing.
    async fn request(&self, req: &ApprovalRequest) -> Result<(), ApprovalError>;

    /// The decision for a step, `None` while pending (or never requested).
    async fn decision(
        &self,
        app: &AppKey,
        revision: &Revision,
        step: usize,
    ) -> Result<Option<Decision>, ApprovalError>;

    /// Withdraws every request and decision for `app`'s release of `revision`: the rollout
    /// attempt they belonged to is over (aborted, retried, superseded, promoted past the gate
    /// or complete), so pending requests no longer wait for anyone and a later attempt asks
    /// again instead of reusing an earlier decision.
    ///
    /// Optional: the default answers [`ApprovalError::Unsupported`], and the controller then
    /// logs that earlier decisions may be reused. Any other error is retried on every
    /// reconcile; until a withdrawal of the target's revision succeeds, the rollout neither
    /// reads a decision for it nor asks again (its approval gate waits).
    async fn withdraw(&self, app: &AppKey, revision: &Revision) -> Result<(), ApprovalError> {
        let _ = (app, revision);
        Err(ApprovalError::Unsupported("withdrawing requests"))
    }
}

/// A request with its state, as listed by [`Approvals`].
///
/// Its JSON form is the HTTP API's: `namespace`, `app`, `revision`, `step`, `message`,
/// `requestedAt` (RFC 3339), `state` (`pending`, `approved`, `rejected`; derived from the
/// decision) and `decision` (`approved`, `by`, `at`, `comment`, or null).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "ApprovalView", from = "ApprovalView")]
pub struct ApprovalRecord {
    /// The request.
    pub request: ApprovalRequest,
    /// When it was first requested.
    pub requested_at: SystemTime,
    /// The decision, once made.
    pub decision: Option<Decision>,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ApprovalState {
    Pending,
    Approved,
    Rejected,
}

/// The wire form of an [`ApprovalRecord`].
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApprovalView {
    namespace: String,
    app: String,
    revision: Revision,
    step: usize,
    message: String,
    #[serde(with = "crate::timestamp")]
    requested_at: SystemTime,
    state: ApprovalState,
    decision: Option<Decision>,
}

impl From<ApprovalRecord> for ApprovalView {
    fn from(r: ApprovalRecord) -> Self {
        let state = match &r.decision {
            None => ApprovalState::Pending,
            Some(d) if d.approved => ApprovalState::Approved,
            Some(_) => ApprovalState::Rejected,
        };
        ApprovalView {
            namespace: r.request.app.namespace,
            app: r.request.app.name,
            revision: r.request.revision,
            step: r.request.step,
            message: r.request.message,
            requested_at: r.requested_at,
            state,
            decision: r.decision,
        }
    }
}

impl From<ApprovalView> for ApprovalRecord {
    fn from(v: ApprovalView) -> Self {
        ApprovalRecord {
            request: ApprovalRequest::new(
                AppKey::new(v.namespace, v.app),
                v.revision,
                v.step,
                v.message,
            ),
            requested_at: v.requested_at,
            decision: v.decision,
        }
    }
}

type Key = (AppKey, Revision, usize);

/// In-process approvals: the controller's [`ApprovalGate`] and the operator's API.
///
/// Clones share the same records.
#[derive(Debug, Clone, Default)]
pub struct Approvals {
    store: Arc<Mutex<Store>>,
}

/// Records by key, each with its arrival number (for "oldest first" when clocks tie).
#[derive(Debug, Default)]
struct Store {
    records: BTreeMap<Key, (u64, ApprovalRecord)>,
    next: u64,
}

impl Approvals {
    /// No requests yet.
    pub fn new() -> Self {
        Approvals::default()
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock()
    }

    /// Approves a requested step, recording `by` and now.
    pub fn approve(
        &self,
        app: &AppKey,
        revision: &Revision,
        step: usize,
        by: &str,
        comment: Option<String>,
    ) -> Result<Decision, ApprovalError> {
        self.decide(app, revision, step, true, by, comment, SystemTime::now())
    }

    /// Rejects a requested step, recording `by` and now.
    pub fn reject(
        &self,
        app: &AppKey,
        revision: &Revision,
        step: usize,
        by: &str,
        comment: Option<String>,
    ) -> Result<Decision, ApprovalError> {
        self.decide(app, revision, step, false, by, comment, SystemTime::now())
    }

    /// Records a decision made at `at` (for callers with their own clock).
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &self,
        app: &AppKey,
        revision: &Revision,
        step: usize,
        approved: bool,
        by: &str,
        comment: Option<String>,
        at: SystemTime,
    ) -> Result<Decision, ApprovalError> {
        if by.trim().is_empty() {
            return Err(ApprovalError::NoApprover);
        }
        let mut store = self.lock();
        let key = (app.clone(), revision.clone(), step);
        let (_, record) = store
            .records
            .get_mut(&key)
            .ok_or_else(|| ApprovalError::NotFound {
                app: app.to_string(),
                revision: revision.to_string(),
                step,
            })?;
        if let Some(d) = &record.decision {
            return Err(ApprovalError::AlreadyDecided {
                app: app.to_string(),
                revision: revision.to_string(),
                step,
                approved: d.approved,
                by: d.by.clone(),
            });
        }
        let decision = Decision {
            approved,
            by: by.trim().to_owned(),
            at,
            comment,
        };
        record.decision = Some(decision.clone());
        tracing::info!(app = %app, revision = %revision, step, approved, by, "approval decided");
        Ok(decision)
    }

    /// Requests still waiting for a decision, oldest first.
    pub fn pending(&self) -> Vec<ApprovalRecord> {
        let store = self.lock();
        let mut out: Vec<&(u64, ApprovalRecord)> = store
            .records
            .values()
            .filter(|(_, r)| r.decision.is_none())
            .collect();
        out.sort_by_key(|(seq, _)| *seq);
        out.into_iter().map(|(_, r)| r.clone()).collect()
    }

    /// The record of one step, pending or decided.
    pub fn get(&self, app: &AppKey, revision: &Revision, step: usize) -> Option<ApprovalRecord> {
        self.lock()
            .records
            .get(&(app.clone(), revision.clone(), step))
            .map(|(_, r)| r.clone())
    }

    /// Drops every record of `app`'s release of `revision`, pending or decided (the rollout
    /// controller does this through [`ApprovalGate::withdraw`] when a rollout attempt ends).
    pub fn forget(&self, app: &AppKey, revision: &Revision) {
        self.lock()
            .records
            .retain(|(a, r, _), _| !(a == app && r == revision));
    }
}

#[async_trait]
impl ApprovalGate for Approvals {
    async fn request(&self, req: &ApprovalRequest) -> Result<(), ApprovalError> {
        let mut store = self.lock();
        let key = (req.app.clone(), req.revision.clone(), req.step);
        let seq = store.next;
        store.next += 1;
        store.records.entry(key).or_insert_with(|| {
            tracing::info!(app = %req.app, revision = %req.revision, step = req.step, "approval requested");
            (
                seq,
                ApprovalRecord {
                    request: req.clone(),
                    requested_at: SystemTime::now(),
                    decision: None,
                },
            )
        });
        Ok(())
    }

    async fn decision(
        &self,
        app: &AppKey,
        revision: &Revision,
        step: usize,
    ) -> Result<Option<Decision>, ApprovalError> {
        Ok(self.get(app, revision, step).and_then(|r| r.decision))
    }

    async fn withdraw(&self, app: &AppKey, revision: &Revision) -> Result<(), ApprovalError> {
        self.forget(app, revision);
        Ok(())
    }
}

#[cfg(feature = "http-api")]
impl Approvals {
    /// An HTTP API over these approvals:
    ///
    /// - `GET /approvals`: pending requests;
    /// - `GET /approvals/{namespace}/{app}/{revision}/{step}`: one record;
    /// - `POST /approvals/{namespace}/{app}/{revision}/{step}/approve` and `…/reject` with a
    ///   JSON body `{"by": "alice", "comment": "optional"}`.
    ///
    /// Answers 200 with the record, 404 for an unknown request, 409 when already decided, 400
    /// without an approver.
    pub fn router(&self) -> axum::Router {
        http_api::router(self.clone())
    }
}

/// The HTTP API's handlers (feature `http-api`).
#[cfg(feature = "http-api")]
mod http_api {
    use std::time::SystemTime;

    use axum::Json;
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use serde::{Deserialize, Serialize};

    use super::{ApprovalError, ApprovalRecord, Approvals};
    use rorqual_core::model::{AppKey, Revision};

    /// The body of an approve or reject call.
    #[derive(Debug, Deserialize)]
    struct DecisionBody {
        by: String,
        #[serde(default)]
        comment: Option<String>,
    }

    /// The body of an error answer.
    #[derive(Debug, Serialize)]
    struct ErrorBody {
        error: String,
    }

    pub(super) fn router(approvals: Approvals) -> axum::Router {
        use axum::routing::{get, post};
        axum::Router::new()
            .route("/approvals", get(list_pending))
            .route("/approvals/{ns}/{app}/{revision}/{step}", get(show))
            .route(
                "/approvals/{ns}/{app}/{revision}/{step}/approve",
                post(approve),
            )
            .route(
                "/approvals/{ns}/{app}/{revision}/{step}/reject",
                post(reject),
            )
            .with_state(approvals)
    }

    type StepPath = Path<(String, String, String, usize)>;

    async fn list_pending(State(a): State<Approvals>) -> Json<Vec<ApprovalRecord>> {
        Json(a.pending())
    }

    async fn show(State(a): State<Approvals>, Path((ns, app, rev, step)): StepPath) -> Response {
        let key = AppKey::new(ns, app);
        let revision = Revision(rev);
        match a.get(&key, &revision, step) {
            Some(r) => Json(r).into_response(),
            None => error_response(&ApprovalError::NotFound {
                app: key.to_string(),
                revision: revision.to_string(),
                step,
            }),
        }
    }

    async fn approve(
        State(a): State<Approvals>,
        Path((ns, app, rev, step)): StepPath,
        Json(body): Json<DecisionBody>,
    ) -> Response {
        decide_http(&a, AppKey::new(ns, app), Revision(rev), step, true, body)
    }

    async fn reject(
        State(a): State<Approvals>,
        Path((ns, app, rev, step)): StepPath,
        Json(body): Json<DecisionBody>,
    ) -> Response {
        decide_http(&a, AppKey::new(ns, app), Revision(rev), step, false, body)
    }

    fn decide_http(
        a: &Approvals,
        app: AppKey,
        revision: Revision,
        step: usize,
        approved: bool,
        body: DecisionBody,
    ) -> Response {
        let result = a.decide(
            &app,
            &revision,
            step,
            approved,
            &body.by,
            body.comment,
            SystemTime::now(),
        );
        match result.map(|_| a.get(&app, &revision, step)) {
            Ok(Some(record)) => Json(record).into_response(),
            Ok(None) => error_response(&ApprovalError::NotFound {
                app: app.to_string(),
                revision: revision.to_string(),
                step,
            }),
            Err(e) => error_response(&e),
        }
    }

    fn error_response(e: &ApprovalError) -> Response {
        let status = match e {
            ApprovalError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApprovalError::AlreadyDecided { .. } => StatusCode::CONFLICT,
            ApprovalError::NoApprover => StatusCode::BAD_REQUEST,
            ApprovalError::Backend(_) => StatusCode::BAD_GATEWAY,
            ApprovalError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
        };
        (
            status,
            Json(ErrorBody {
                error: e.to_string(),
            }),
        )
            .into_response()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn gate_seam_is_object_safe_send_and_sync() {
        fn assert_seam<T: ?Sized + Send + Sync + Debug + 'static>() {}
        assert_seam::<dyn ApprovalGate>();
        let _: Arc<dyn ApprovalGate> = Arc::new(Approvals::new());
    }

    #[tokio::test]
    async fn withdraw_drops_pending_and_decided_records_of_one_revision() {
        let a = Approvals::new();
        let app = AppKey::new("games", "lobby");
        let (v1, v2): (Revision, Revision) = ("v1".into(), "v2".into());
        for (rev, step) in [(&v1, 1), (&v1, 3), (&v2, 1)] {
            a.request(&ApprovalRequest::new(app.clone(), rev.clone(), step, "go?"))
                .await
                .unwrap();
        }
        a.reject(&app, &v1, 1, "bob", None).unwrap();
        a.withdraw(&app, &v1).await.unwrap();
        assert_eq!(a.get(&app, &v1, 1), None, "the rejection is gone");
        let pending: Vec<_> = a
            .pending()
            .into_iter()
            .map(|r| r.request.revision)
            .collect();
        assert_eq!(pending, [v2], "v1's pending request withdrawn, v2's kept");
        // Asked again, the step waits for a new decision.
        a.request(&ApprovalRequest::new(app.clone(), v1.clone(), 1, "go?"))
            .await
            .unwrap();
        assert_eq!(a.decision(&app, &v1, 1).await, Ok(None));
    }

    #[tokio::test]
    async fn records_serialize_in_the_http_api_shape_and_read_back() {
        let a = Approvals::new();
        let app = AppKey::new("games", "lobby");
        let rev = Revision::from("v2");
        a.request(&ApprovalRequest::new(app.clone(), rev.clone(), 3, "go?"))
            .await
            .unwrap();
        let pending = serde_json::to_value(a.get(&app, &rev, 3).unwrap()).unwrap();
        assert_eq!(pending["namespace"], "games");
        assert_eq!(pending["app"], "lobby");
        assert_eq!(pending["revision"], "v2");
        assert_eq!(pending["step"], 3);
        assert_eq!(pending["state"], "pending");
        assert!(pending["decision"].is_null());
        assert!(
            pending["requestedAt"].as_str().unwrap().ends_with('Z'),
            "{pending}"
        );
        a.decide(
            &app,
            &rev,
            3,
            false,
            "bob",
            Some("no".into()),
            std::time::UNIX_EPOCH,
        )
        .unwrap();
        let record = a.get(&app, &rev, 3).unwrap();
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["state"], "rejected");
        assert_eq!(
            json["decision"],
            serde_json::json!({"approved": false, "by": "bob",
                "at": "1970-01-01T00:00:00.000Z", "comment": "no"})
        );
        // Times keep millisecond precision on the wire.
        let mut back: ApprovalRecord = serde_json::from_value(json).unwrap();
        back.requested_at = record.requested_at;
        assert_eq!(back, record);
    }

    #[tokio::test]
    async fn withdraw_is_unsupported_by_default() {
        #[derive(Debug)]
        struct Minimal;
        #[async_trait]
        impl ApprovalGate for Minimal {
            async fn request(&self, _: &ApprovalRequest) -> Result<(), ApprovalError> {
                Ok(())
            }
            async fn decision(
                &self,
                _: &AppKey,
                _: &Revision,
                _: usize,
            ) -> Result<Option<Decision>, ApprovalError> {
                Ok(None)
            }
        }
        let err = Minimal.withdraw(&AppKey::new("a", "b"), &"v1".into()).await;
        assert!(matches!(err, Err(ApprovalError::Unsupported(_))), "{err:?}");
    }
}
