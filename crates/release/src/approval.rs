//! Manual approval of release steps: the [`ApprovalGate`] seam and the built-in [`Approvals`],
//! kept in a [`StateStore`] so that requests and decisions survive a restart, with an HTTP
//! API.
//!
//! An approval is keyed by [`ApprovalKey`]: the application, the revision released, the
//! attempt (the controller numbers each attempt of a release; a retry or a change of template
//! or steps starts a new one) and the step. A decision made for one attempt is therefore never
//! read for a later one, even after a restart. The controller asks with
//! [`ApprovalGate::request`] (idempotent), carrying an [`ApprovalContext`] for the approver
//! (cluster, "step i of n", share of replicas updated, who released it, which commit), and
//! polls [`ApprovalGate::decision`]; an operator approves or rejects with
//! [`Approvals::approve`] / [`Approvals::reject`] or over HTTP (`Approvals::router`, feature
//! `http-api`). Who decided and when is recorded.
//!
//! ```
//! use std::time::SystemTime;
//! use rorqual_release::approval::{
//!     ApprovalContext, ApprovalGate, ApprovalKey, ApprovalRequest, Approvals,
//! };
//! use rorqual_core::model::{AppKey, Revision};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let approvals = Approvals::new(); // or Approvals::with_store(engine.state_store())
//! let key = ApprovalKey::new(AppKey::new("games", "lobby"), Revision::from("9f1c2a7b3d"), 1, 2);
//! let context = ApprovalContext::new()
//!     .step_count(5)
//!     .updated_percent(40)
//!     .released_by("alice");
//! approvals
//!     .request(&ApprovalRequest::new(key.clone(), "promote to 50%?").context(context))
//!     .await?;
//! assert_eq!(approvals.pending().await?.len(), 1);
//! approvals.approve(&key, "bob", Some("dashboards look fine".into())).await?;
//! let decision = approvals.decision(&key).await?.unwrap();
//! assert!(decision.approved && decision.by == "bob");
//! # Ok::<_, rorqual_release::approval::ApprovalError>(())
//! # }).unwrap();
//! ```

use std::collections::BTreeMap;
use std::fmt::{self, Debug};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use rorqual_core::engine::{StateStore, Versioned, apply_cas, list_prefix};
use rorqual_core::model::{AppKey, Revision};

/// Where [`Approvals`] keeps its records in a [`StateStore`]: one JSON record per key, under
/// `approvals/<namespace>/<app>/<revision>/<attempt>/<step>`.
pub const APPROVALS_PREFIX: &str = "approvals/";

/// How often a decision is retried when its compare-and-swap keeps losing to other writers.
const CAS_ATTEMPTS: u32 = 8;

/// Identifies one approval: a step of one attempt of a release.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ApprovalKey {
    /// The application.
    pub app: AppKey,
    /// The revision being released.
    pub revision: Revision,
    /// The attempt of this release, numbered by the controller (a retry or a new template or
    /// steps starts a new one).
    pub attempt: u64,
    /// The step index waiting (0-based).
    pub step: usize,
}

impl ApprovalKey {
    /// The key of `step` in `attempt` of `app`'s release of `revision`.
    pub fn new(app: AppKey, revision: Revision, attempt: u64, step: usize) -> Self {
        ApprovalKey {
            app,
            revision,
            attempt,
            step,
        }
    }

    /// The store key of this approval.
    fn store_key(&self) -> String {
        format!(
            "{}{:020}/{:010}",
            revision_prefix(&self.app, &self.revision),
            self.attempt,
            self.step
        )
    }
}

impl fmt::Display for ApprovalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} revision {} attempt {} step {}",
            self.app, self.revision, self.attempt, self.step
        )
    }
}

/// Escapes `/` and `%` in a store key component.
fn escape(component: &str) -> String {
    component.replace('%', "%25").replace('/', "%2F")
}

/// `approvals/<namespace>/<app>/`.
fn app_prefix(app: &AppKey) -> String {
    format!(
        "{APPROVALS_PREFIX}{}/{}/",
        escape(&app.namespace),
        escape(&app.name)
    )
}

/// `approvals/<namespace>/<app>/<revision>/`.
fn revision_prefix(app: &AppKey, revision: &Revision) -> String {
    format!("{}{}/", app_prefix(app), escape(revision.as_str()))
}

/// What an approver needs to decide: where the release stands. The namespace and workload
/// are the request key's `app`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ApprovalContext {
    /// The cluster the application runs in, when the host names its clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// How many steps the release has (for "step i of n"); 0 when unknown.
    #[serde(default)]
    pub step_count: usize,
    /// The share of replicas on the new revision, in percent.
    #[serde(default)]
    pub updated_percent: u32,
    /// Who started the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_by: Option<String>,
    /// The commit (or other source version) released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

impl ApprovalContext {
    /// An empty context.
    pub fn new() -> Self {
        ApprovalContext::default()
    }

    /// Sets the cluster.
    #[must_use]
    pub fn cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = Some(cluster.into());
        self
    }

    /// Sets the number of steps.
    #[must_use]
    pub fn step_count(mut self, steps: usize) -> Self {
        self.step_count = steps;
        self
    }

    /// Sets the share of replicas updated, in percent.
    #[must_use]
    pub fn updated_percent(mut self, percent: u32) -> Self {
        self.updated_percent = percent;
        self
    }

    /// Sets who started the release.
    #[must_use]
    pub fn released_by(mut self, who: impl Into<String>) -> Self {
        self.released_by = Some(who.into());
        self
    }

    /// Sets the commit released.
    #[must_use]
    pub fn commit(mut self, commit: impl Into<String>) -> Self {
        self.commit = Some(commit.into());
        self
    }
}

/// A rollout step waiting for a person's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ApprovalRequest {
    /// Which step of which attempt of which release.
    pub key: ApprovalKey,
    /// What the approver is asked.
    pub message: String,
    /// Where the release stands.
    #[serde(default)]
    pub context: ApprovalContext,
}

impl ApprovalRequest {
    /// A request for `key`, asking `message`, without context.
    pub fn new(key: ApprovalKey, message: impl Into<String>) -> Self {
        ApprovalRequest {
            key,
            message: message.into(),
            context: ApprovalContext::default(),
        }
    }

    /// Sets the context.
    #[must_use]
    pub fn context(mut self, context: ApprovalContext) -> Self {
        self.context = context;
        self
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
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// Nobody asked for this approval.
    #[error("no approval was requested for {app} revision {revision}{} step {step} ({known})", attempt.map(|a| format!(" attempt {a}")).unwrap_or_default())]
    NotFound {
        /// The application.
        app: String,
        /// The revision.
        revision: String,
        /// The attempt, when one was named.
        attempt: Option<u64>,
        /// The step.
        step: usize,
        /// What was requested instead (`no approval was requested for games/lobby`,
        /// `attempt 2 asked for steps 1, 3`).
        known: String,
    },
    /// It was decided differently already; decisions are final.
    #[error("{key} was already {} by {by}", if *.approved { "approved" } else { "rejected" })]
    AlreadyDecided {
        /// The approval.
        key: ApprovalKey,
        /// The earlier decision.
        approved: bool,
        /// Who made it.
        by: String,
    },
    /// The decision names no approver (`by` is empty).
    #[error("invalid decision: the approver (`by`) must be named")]
    NoApprover,
    /// The state store failed (retryable).
    #[error("approval store: cannot {operation} `{key}`")]
    Store {
        /// What was being done (`read`, `write`, `list`, `delete`).
        operation: &'static str,
        /// The store key (or prefix).
        key: String,
        /// The store's error.
        #[source]
        source: Arc<rorqual_core::Error>,
    },
    /// A stored record cannot be read (written by something else, or corrupt).
    #[error("approval record `{key}` is unreadable: {reason}")]
    Corrupt {
        /// The store key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A decision kept losing its compare-and-swap to other writers (retryable).
    #[error("approval record `{key}` kept changing under {attempts} attempts to update it")]
    Contended {
        /// The store key.
        key: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The gate's backend failed (a remote approval service).
    #[error("approval backend failed: {0}")]
    Backend(String),
    /// The gate does not offer this optional capability.
    #[error("approval gate does not support {0}")]
    Unsupported(&'static str),
}

impl ApprovalError {
    /// Whether trying again later may succeed (a store or backend failure, contention).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ApprovalError::Store { .. }
                | ApprovalError::Contended { .. }
                | ApprovalError::Backend(_)
        )
    }

    fn store(operation: &'static str, key: &str, source: rorqual_core::Error) -> Self {
        ApprovalError::Store {
            operation,
            key: key.to_owned(),
            source: Arc::new(source),
        }
    }
}

/// Where a rollout asks for manual approval.
#[async_trait]
pub trait ApprovalGate: Send + Sync + Debug + 'static {
    /// Asks for approval; asking again for the same key changes nothing.
    async fn request(&self, req: &ApprovalRequest) -> Result<(), ApprovalError>;

    /// The decision for `key`, `None` while pending (or never requested).
    async fn decision(&self, key: &ApprovalKey) -> Result<Option<Decision>, ApprovalError>;

    /// Withdraws every request and decision for `app`'s release of `revision`, of every
    /// attempt: best-effort cleanup once the release is over (pending requests no longer wait
    /// for anyone). Correctness does not depend on it: a later attempt has its own keys.
    ///
    /// Optional: the default answers [`ApprovalError::Unsupported`].
    async fn withdraw(&self, app: &AppKey, revision: &Revision) -> Result<(), ApprovalError> {
        let _ = (app, revision);
        Err(ApprovalError::Unsupported("withdrawing requests"))
    }
}

/// A request with its state, as listed by [`Approvals`].
///
/// Its JSON form is the HTTP API's: `namespace`, `app`, `revision`, `attempt`, `step`,
/// `message`, `context` (`cluster`, `stepCount`, `updatedPercent`, `releasedBy`, `commit`),
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
    attempt: u64,
    step: usize,
    message: String,
    #[serde(default)]
    context: ApprovalContext,
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
        let key = r.request.key;
        ApprovalView {
            namespace: key.app.namespace,
            app: key.app.name,
            revision: key.revision,
            attempt: key.attempt,
            step: key.step,
            message: r.request.message,
            context: r.request.context,
            requested_at: r.requested_at,
            state,
            decision: r.decision,
        }
    }
}

impl From<ApprovalView> for ApprovalRecord {
    fn from(v: ApprovalView) -> Self {
        let key = ApprovalKey::new(
            AppKey::new(v.namespace, v.app),
            v.revision,
            v.attempt,
            v.step,
        );
        ApprovalRecord {
            request: ApprovalRequest::new(key, v.message).context(v.context),
            requested_at: v.requested_at,
            decision: v.decision,
        }
    }
}

/// The stored form of a record: the request time at full precision (the HTTP view rounds to
/// milliseconds), so "oldest first" holds for requests made in the same millisecond.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredRecord {
    request: ApprovalRequest,
    requested_at: SystemTime,
    decision: Option<Decision>,
}

impl From<StoredRecord> for ApprovalRecord {
    fn from(s: StoredRecord) -> Self {
        ApprovalRecord {
            request: s.request,
            requested_at: s.requested_at,
            decision: s.decision,
        }
    }
}

impl From<&ApprovalRecord> for StoredRecord {
    fn from(r: &ApprovalRecord) -> Self {
        StoredRecord {
            request: r.request.clone(),
            requested_at: r.requested_at,
            decision: r.decision.clone(),
        }
    }
}

/// The built-in approvals: the controller's [`ApprovalGate`] and the operator's API, over a
/// [`StateStore`] (compare-and-swap on every change).
///
/// [`Approvals::new`] keeps them in memory; [`Approvals::with_store`] in a host's store (the
/// engine's, a `FileStateStore`), so that a restarted process lists the pending requests,
/// takes decisions for them, and reads the decisions made before it stopped. Several
/// processes may share one store. Clones share the same store.
#[derive(Debug, Clone)]
pub struct Approvals {
    store: Arc<dyn StateStore>,
}

impl Default for Approvals {
    fn default() -> Self {
        Approvals::new()
    }
}

/// A [`StateStore`] in this process, for [`Approvals::new`].
#[derive(Debug, Default)]
struct InProcessStore {
    map: Mutex<BTreeMap<String, Versioned>>,
}

#[async_trait]
impl StateStore for InProcessStore {
    async fn get(&self, key: &str) -> rorqual_core::Result<Option<Versioned>> {
        Ok(self.map.lock().get(key).cloned())
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Option<Vec<u8>>,
    ) -> rorqual_core::Result<u64> {
        apply_cas(&mut self.map.lock(), key, expected, value)
    }

    async fn list(&self, prefix: &str) -> rorqual_core::Result<Vec<(String, Versioned)>> {
        Ok(list_prefix(&self.map.lock(), prefix))
    }
}

impl Approvals {
    /// Approvals kept in memory (lost with the process).
    pub fn new() -> Self {
        Approvals::with_store(Arc::new(InProcessStore::default()))
    }

    /// Approvals kept in `store`, under [`APPROVALS_PREFIX`].
    pub fn with_store(store: Arc<dyn StateStore>) -> Self {
        Approvals { store }
    }

    /// Approves `key`, recording `by` and now.
    pub async fn approve(
        &self,
        key: &ApprovalKey,
        by: &str,
        comment: Option<String>,
    ) -> Result<Decision, ApprovalError> {
        self.decide(key, true, by, comment, SystemTime::now()).await
    }

    /// Rejects `key`, recording `by` and now.
    pub async fn reject(
        &self,
        key: &ApprovalKey,
        by: &str,
        comment: Option<String>,
    ) -> Result<Decision, ApprovalError> {
        self.decide(key, false, by, comment, SystemTime::now())
            .await
    }

    /// Records a decision made at `at` (for callers with their own clock).
    ///
    /// Decisions are final: deciding the same way again by the same approver (a retried
    /// call) answers the recorded decision; anything else is
    /// [`ApprovalError::AlreadyDecided`]. A key nobody requested is
    /// [`ApprovalError::NotFound`], saying what was requested instead.
    pub async fn decide(
        &self,
        key: &ApprovalKey,
        approved: bool,
        by: &str,
        comment: Option<String>,
        at: SystemTime,
    ) -> Result<Decision, ApprovalError> {
        let by = by.trim();
        if by.is_empty() {
            return Err(ApprovalError::NoApprover);
        }
        let store_key = key.store_key();
        for _ in 0..CAS_ATTEMPTS {
            let Some((mut record, version)) = self.read(&store_key).await? else {
                return Err(self
                    .not_found(&key.app, &key.revision, Some(key.attempt), key.step)
                    .await);
            };
            if let Some(d) = record.decision {
                if d.approved == approved && d.by == by {
                    return Ok(d);
                }
                return Err(ApprovalError::AlreadyDecided {
                    key: key.clone(),
                    approved: d.approved,
                    by: d.by,
                });
            }
            let decision = Decision {
                approved,
                by: by.to_owned(),
                at,
                comment: comment.clone(),
            };
            record.decision = Some(decision.clone());
            match self.write(&store_key, Some(version), &record).await {
                Ok(()) => {
                    tracing::info!(approval = %key, approved, by, "approval decided");
                    return Ok(decision);
                }
                Err(Written::Conflict) => continue,
                Err(Written::Failed(e)) => return Err(e),
            }
        }
        Err(ApprovalError::Contended {
            key: store_key,
            attempts: CAS_ATTEMPTS,
        })
    }

    /// The record of `key`, pending or decided.
    pub async fn get(&self, key: &ApprovalKey) -> Result<Option<ApprovalRecord>, ApprovalError> {
        Ok(self.read(&key.store_key()).await?.map(|(r, _)| r))
    }

    /// The record of `step` in the newest attempt of `app`'s release of `revision` (how the
    /// HTTP API addresses approvals). Not found when there is no record of that release, or
    /// when its newest attempt did not ask for that step (an earlier attempt's request waits
    /// for nobody); the error says what was requested.
    pub async fn latest(
        &self,
        app: &AppKey,
        revision: &Revision,
        step: usize,
    ) -> Result<ApprovalRecord, ApprovalError> {
        let records = self.list(&revision_prefix(app, revision)).await?;
        let newest = records.iter().map(|r| r.request.key.attempt).max();
        let found = records
            .into_iter()
            .find(|r| Some(r.request.key.attempt) == newest && r.request.key.step == step);
        match found {
            Some(record) => Ok(record),
            None => Err(self.not_found(app, revision, None, step).await),
        }
    }

    /// Requests still waiting for a decision, oldest first. Only the newest attempt of each
    /// release is listed: an earlier attempt's requests wait for nobody.
    pub async fn pending(&self) -> Result<Vec<ApprovalRecord>, ApprovalError> {
        let records = self.list(APPROVALS_PREFIX).await?;
        let mut newest: BTreeMap<(AppKey, Revision), u64> = BTreeMap::new();
        for r in &records {
            let k = &r.request.key;
            let n = newest
                .entry((k.app.clone(), k.revision.clone()))
                .or_default();
            *n = (*n).max(k.attempt);
        }
        let mut out: Vec<ApprovalRecord> = records
            .into_iter()
            .filter(|r| {
                let k = &r.request.key;
                r.decision.is_none()
                    && newest.get(&(k.app.clone(), k.revision.clone())) == Some(&k.attempt)
            })
            .collect();
        out.sort_by(|a, b| (a.requested_at, &a.request.key).cmp(&(b.requested_at, &b.request.key)));
        Ok(out)
    }

    /// Drops every record of `app`'s release of `revision`, of every attempt, pending or
    /// decided (the rollout controller does this through [`ApprovalGate::withdraw`] when a
    /// release is over).
    pub async fn forget(&self, app: &AppKey, revision: &Revision) -> Result<(), ApprovalError> {
        let prefix = revision_prefix(app, revision);
        let entries = self
            .store
            .list(&prefix)
            .await
            .map_err(|e| ApprovalError::store("list", &prefix, e))?;
        for (key, v) in entries {
            self.delete(&key, v.version).await?;
        }
        Ok(())
    }

    /// Deletes `key`, last seen at `version`, whatever it holds by then (a record changed
    /// meanwhile belongs to the same finished release).
    async fn delete(&self, key: &str, mut version: u64) -> Result<(), ApprovalError> {
        for _ in 0..CAS_ATTEMPTS {
            match self.store.compare_and_swap(key, Some(version), None).await {
                Ok(_) => return Ok(()),
                Err(rorqual_core::Error::Conflict { found: None, .. }) => return Ok(()),
                Err(rorqual_core::Error::Conflict {
                    found: Some(now), ..
                }) => version = now,
                Err(e) => return Err(ApprovalError::store("delete", key, e)),
            }
        }
        Err(ApprovalError::Contended {
            key: key.to_owned(),
            attempts: CAS_ATTEMPTS,
        })
    }

    /// Reads and parses one record, with its version.
    async fn read(&self, key: &str) -> Result<Option<(ApprovalRecord, u64)>, ApprovalError> {
        let Some(v) = self
            .store
            .get(key)
            .await
            .map_err(|e| ApprovalError::store("read", key, e))?
        else {
            return Ok(None);
        };
        Ok(Some((parse(key, &v.value)?, v.version)))
    }

    /// Every record under `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<ApprovalRecord>, ApprovalError> {
        self.store
            .list(prefix)
            .await
            .map_err(|e| ApprovalError::store("list", prefix, e))?
            .into_iter()
            .map(|(key, v)| parse(&key, &v.value))
            .collect()
    }

    /// Writes `record` if the key is still at `expected`.
    async fn write(
        &self,
        key: &str,
        expected: Option<u64>,
        record: &ApprovalRecord,
    ) -> Result<(), Written> {
        let bytes = serde_json::to_vec(&StoredRecord::from(record)).map_err(|e| {
            Written::Failed(ApprovalError::Corrupt {
                key: key.to_owned(),
                reason: format!("cannot encode: {e}"),
            })
        })?;
        match self
            .store
            .compare_and_swap(key, expected, Some(bytes))
            .await
        {
            Ok(_) => Ok(()),
            Err(rorqual_core::Error::Conflict { .. }) => Err(Written::Conflict),
            Err(e) => Err(Written::Failed(ApprovalError::store("write", key, e))),
        }
    }

    /// The not-found error for `step` of `app`'s `revision`, saying what was requested.
    async fn not_found(
        &self,
        app: &AppKey,
        revision: &Revision,
        attempt: Option<u64>,
        step: usize,
    ) -> ApprovalError {
        let known = match self.list(&app_prefix(app)).await {
            Err(e) => format!("the requests could not be listed: {e}"),
            Ok(records) if records.is_empty() => format!("no approval was requested for {app}"),
            Ok(records) => {
                let of_revision: Vec<&ApprovalKey> = records
                    .iter()
                    .map(|r| &r.request.key)
                    .filter(|k| &k.revision == revision)
                    .collect();
                if of_revision.is_empty() {
                    let mut revisions: Vec<&str> = records
                        .iter()
                        .map(|r| r.request.key.revision.as_str())
                        .collect();
                    revisions.dedup();
                    format!(
                        "{app} has requests for revision {} only",
                        revisions.join(", ")
                    )
                } else {
                    let newest = of_revision.iter().map(|k| k.attempt).max().unwrap_or(0);
                    let shown = attempt.unwrap_or(newest);
                    let steps: Vec<String> = of_revision
                        .iter()
                        .filter(|k| k.attempt == shown)
                        .map(|k| k.step.to_string())
                        .collect();
                    if steps.is_empty() {
                        format!("the newest attempt of revision {revision} is {newest}")
                    } else {
                        format!("attempt {shown} asked for step {}", steps.join(", "))
                    }
                }
            }
        };
        ApprovalError::NotFound {
            app: app.to_string(),
            revision: revision.to_string(),
            attempt,
            step,
            known,
        }
    }
}

/// Why a write did not happen.
enum Written {
    /// Another writer changed the key first.
    Conflict,
    Failed(ApprovalError),
}

fn parse(key: &str, bytes: &[u8]) -> Result<ApprovalRecord, ApprovalError> {
    serde_json::from_slice::<StoredRecord>(bytes)
        .map(ApprovalRecord::from)
        .map_err(|e| ApprovalError::Corrupt {
            key: key.to_owned(),
            reason: e.to_string(),
        })
}

#[async_trait]
impl ApprovalGate for Approvals {
    async fn request(&self, req: &ApprovalRequest) -> Result<(), ApprovalError> {
        let key = req.key.store_key();
        let record = ApprovalRecord {
            request: req.clone(),
            requested_at: SystemTime::now(),
            decision: None,
        };
        match self.write(&key, None, &record).await {
            Ok(()) => {
                tracing::info!(approval = %req.key, "approval requested");
                Ok(())
            }
            // Requested before (by this process or an earlier one): unchanged.
            Err(Written::Conflict) => Ok(()),
            Err(Written::Failed(e)) => Err(e),
        }
    }

    async fn decision(&self, key: &ApprovalKey) -> Result<Option<Decision>, ApprovalError> {
        Ok(self.get(key).await?.and_then(|r| r.decision))
    }

    async fn withdraw(&self, app: &AppKey, revision: &Revision) -> Result<(), ApprovalError> {
        self.forget(app, revision).await
    }
}

#[cfg(feature = "http-api")]
impl Approvals {
    /// An HTTP API over these approvals. A release's approval is addressed by namespace, app,
    /// revision and step; the newest attempt of that release is meant (its `attempt` is in
    /// every answer):
    ///
    /// - `GET /approvals`: pending requests (newest attempts), oldest first;
    /// - `GET /approvals/{namespace}/{app}/{revision}/{step}`: one record;
    /// - `POST /approvals/{namespace}/{app}/{revision}/{step}/approve` and `…/reject` with a
    ///   JSON body `{"by": "alice", "comment": "optional"}`.
    ///
    /// Answers 200 with the record; errors as `{"error": "…"}` naming what is wrong: 404 for
    /// an approval nobody requested (saying what was requested), 409 when it was decided
    /// differently already (the same decision again answers 200), 400 without an approver
    /// or with a malformed path or body, 503 when the store fails.
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

    use super::{ApprovalError, Approvals};
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

    async fn list_pending(State(a): State<Approvals>) -> Response {
        match a.pending().await {
            Ok(records) => Json(records).into_response(),
            Err(e) => error_response(&e),
        }
    }

    async fn show(State(a): State<Approvals>, Path((ns, app, rev, step)): StepPath) -> Response {
        match a.latest(&AppKey::new(ns, app), &Revision(rev), step).await {
            Ok(record) => Json(record).into_response(),
            Err(e) => error_response(&e),
        }
    }

    async fn approve(
        State(a): State<Approvals>,
        Path((ns, app, rev, step)): StepPath,
        Json(body): Json<DecisionBody>,
    ) -> Response {
        decide_http(&a, AppKey::new(ns, app), Revision(rev), step, true, body).await
    }

    async fn reject(
        State(a): State<Approvals>,
        Path((ns, app, rev, step)): StepPath,
        Json(body): Json<DecisionBody>,
    ) -> Response {
        decide_http(&a, AppKey::new(ns, app), Revision(rev), step, false, body).await
    }

    async fn decide_http(
        a: &Approvals,
        app: AppKey,
        revision: Revision,
        step: usize,
        approved: bool,
        body: DecisionBody,
    ) -> Response {
        let result = async {
            let key = a.latest(&app, &revision, step).await?.request.key;
            a.decide(&key, approved, &body.by, body.comment, SystemTime::now())
                .await?;
            a.get(&key).await
        }
        .await;
        match result {
            Ok(Some(record)) => Json(record).into_response(),
            // Withdrawn between the decision and this read.
            Ok(None) => error_response(&ApprovalError::NotFound {
                app: app.to_string(),
                revision: revision.to_string(),
                attempt: None,
                step,
                known: "it was withdrawn after the decision".into(),
            }),
            Err(e) => error_response(&e),
        }
    }

    fn error_response(e: &ApprovalError) -> Response {
        let status = match e {
            ApprovalError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApprovalError::AlreadyDecided { .. } => StatusCode::CONFLICT,
            ApprovalError::NoApprover => StatusCode::BAD_REQUEST,
            ApprovalError::Store { .. } | ApprovalError::Contended { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApprovalError::Backend(_) => StatusCode::BAD_GATEWAY,
            ApprovalError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            ApprovalError::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let error = match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        };
        (status, Json(ErrorBody { error })).into_response()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rorqual_core::engine::MemoryStateStore;

    use super::*;

    fn lobby() -> AppKey {
        AppKey::new("games", "lobby")
    }

    fn key(rev: &str, attempt: u64, step: usize) -> ApprovalKey {
        ApprovalKey::new(lobby(), Revision::from(rev), attempt, step)
    }

    async fn ask(a: &Approvals, key: &ApprovalKey) {
        a.request(&ApprovalRequest::new(key.clone(), "go?"))
            .await
            .unwrap();
    }

    #[test]
    fn gate_seam_is_object_safe_send_and_sync() {
        fn assert_seam<T: ?Sized + Send + Sync + Debug + 'static>() {}
        assert_seam::<dyn ApprovalGate>();
        let _: Arc<dyn ApprovalGate> = Arc::new(Approvals::new());
    }

    #[tokio::test]
    async fn a_decision_of_one_attempt_is_never_read_for_another() {
        let a = Approvals::new();
        ask(&a, &key("v2", 1, 1)).await;
        a.reject(&key("v2", 1, 1), "bob", None).await.unwrap();
        // A retry of the same revision: attempt 2 asks again and waits, without any withdrawal.
        ask(&a, &key("v2", 2, 1)).await;
        assert_eq!(a.decision(&key("v2", 2, 1)).await.unwrap(), None);
        assert!(
            !a.decision(&key("v2", 1, 1))
                .await
                .unwrap()
                .unwrap()
                .approved
        );
        let pending = a.pending().await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].request.key, key("v2", 2, 1));
        // The newest attempt is what `latest` (and so the HTTP API) addresses.
        let latest = a.latest(&lobby(), &"v2".into(), 1).await.unwrap();
        assert_eq!(latest.request.key.attempt, 2);
        a.approve(&latest.request.key, "alice", None).await.unwrap();
        assert!(
            a.decision(&key("v2", 2, 1))
                .await
                .unwrap()
                .unwrap()
                .approved
        );
        // An earlier attempt's pending request is not listed: it waits for nobody.
        ask(&a, &key("v3", 1, 0)).await;
        ask(&a, &key("v3", 2, 4)).await;
        let pending: Vec<ApprovalKey> = a
            .pending()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.request.key)
            .collect();
        assert_eq!(pending, [key("v3", 2, 4)]);
    }

    #[tokio::test]
    async fn a_restarted_process_sees_requests_and_decisions_in_the_store() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let before = Approvals::with_store(store.clone());
        let req = ApprovalRequest::new(key("v2", 3, 2), "promote to 50%?").context(
            ApprovalContext::new()
                .cluster("sh-1")
                .step_count(5)
                .updated_percent(20)
                .released_by("alice")
                .commit("abc123"),
        );
        before.request(&req).await.unwrap();
        drop(before);

        let after = Approvals::with_store(store.clone());
        let pending = after.pending().await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].request, req, "context and all");
        // Asking again (the restarted controller) changes nothing.
        after
            .request(&ApprovalRequest::new(key("v2", 3, 2), "changed?"))
            .await
            .unwrap();
        assert_eq!(after.get(&req.key).await.unwrap().unwrap().request, req);
        after.approve(&req.key, "bob", None).await.unwrap();
        let third = Approvals::with_store(store.clone());
        assert_eq!(third.decision(&req.key).await.unwrap().unwrap().by, "bob");
        // Stored as JSON under the prefix.
        let keys: Vec<String> = store
            .list(APPROVALS_PREFIX)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            ["approvals/games/lobby/v2/00000000000000000003/0000000002"]
        );
    }

    /// A store whose calls yield first, so that two concurrent deciders both read the
    /// pending record before either writes: the second write must lose its compare-and-swap.
    #[derive(Debug, Default)]
    struct YieldingStore(MemoryStateStore);

    #[async_trait]
    impl StateStore for YieldingStore {
        async fn get(&self, key: &str) -> rorqual_core::Result<Option<Versioned>> {
            tokio::task::yield_now().await;
            self.0.get(key).await
        }
        async fn compare_and_swap(
            &self,
            key: &str,
            expected: Option<u64>,
            value: Option<Vec<u8>>,
        ) -> rorqual_core::Result<u64> {
            tokio::task::yield_now().await;
            self.0.compare_and_swap(key, expected, value).await
        }
        async fn list(&self, prefix: &str) -> rorqual_core::Result<Vec<(String, Versioned)>> {
            self.0.list(prefix).await
        }
    }

    #[tokio::test]
    async fn decisions_are_final_and_compare_and_swapped() {
        let store: Arc<dyn StateStore> = Arc::new(YieldingStore::default());
        let (one, two) = (
            Approvals::with_store(store.clone()),
            Approvals::with_store(store),
        );
        let k = key("v2", 1, 1);
        ask(&one, &k).await;
        let (a, b) = tokio::join!(
            one.approve(&k, "alice", None),
            two.reject(&k, "bob", Some("no".into()))
        );
        assert!(a.is_ok() != b.is_ok(), "exactly one wins: {a:?} {b:?}");
        let winner = one.decision(&k).await.unwrap().unwrap();
        let loser = a.err().or(b.err()).unwrap();
        assert!(
            matches!(&loser, ApprovalError::AlreadyDecided { by, .. } if *by == winner.by),
            "{loser}"
        );
        // The same decision again (a retried call) answers the recorded one.
        let again = one
            .decide(&k, winner.approved, &winner.by, None, SystemTime::now())
            .await
            .unwrap();
        assert_eq!(again, winner);
        // Deciding differently is refused, naming the approval and the earlier decision.
        let err = one
            .decide(&k, !winner.approved, "carol", None, SystemTime::now())
            .await;
        let text = err.unwrap_err().to_string();
        assert!(
            text.starts_with("games/lobby revision v2 attempt 1 step 1 was already")
                && text.ends_with(&format!("by {}", winner.by)),
            "{text}"
        );
        assert!(matches!(
            one.approve(&k, "  ", None).await,
            Err(ApprovalError::NoApprover)
        ));
    }

    #[tokio::test]
    async fn unknown_approvals_are_named_with_what_was_requested() {
        let a = Approvals::new();
        let err = a
            .approve(&key("v2", 1, 0), "alice", None)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no approval was requested for games/lobby revision v2 attempt 1 step 0 (no \
             approval was requested for games/lobby)"
        );
        ask(&a, &key("v2", 1, 1)).await;
        ask(&a, &key("v2", 1, 3)).await;
        let err = a.latest(&lobby(), &"v2".into(), 7).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "no approval was requested for games/lobby revision v2 step 7 (attempt 1 asked \
             for step 1, 3)"
        );
        let err = a.latest(&lobby(), &"v9".into(), 1).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("(games/lobby has requests for revision v2 only)"),
            "{err}"
        );
        let err = a
            .approve(&key("v2", 4, 1), "alice", None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("attempt 4 step 1"), "{err}");
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn withdraw_drops_every_attempt_of_one_revision() {
        let a = Approvals::new();
        for k in [key("v1", 1, 1), key("v1", 2, 3), key("v2", 1, 1)] {
            ask(&a, &k).await;
        }
        a.reject(&key("v1", 1, 1), "bob", None).await.unwrap();
        a.withdraw(&lobby(), &"v1".into()).await.unwrap();
        assert_eq!(a.get(&key("v1", 1, 1)).await.unwrap(), None);
        let pending: Vec<Revision> = a
            .pending()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.request.key.revision)
            .collect();
        assert_eq!(pending, [Revision::from("v2")]);
        // Withdrawing again, or a release with nothing recorded, is fine.
        a.withdraw(&lobby(), &"v1".into()).await.unwrap();
        a.withdraw(&AppKey::new("x", "y"), &"v1".into())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn names_with_slashes_do_not_mix_releases() {
        let a = Approvals::new();
        let odd = ApprovalKey::new(AppKey::new("games", "lobby/v2"), "x%2F".into(), 1, 0);
        ask(&a, &odd).await;
        ask(&a, &key("v2", 1, 0)).await;
        a.forget(&lobby(), &"v2".into()).await.unwrap();
        assert!(a.get(&odd).await.unwrap().is_some());
        assert_eq!(a.pending().await.unwrap()[0].request.key, odd);
    }

    #[tokio::test]
    async fn an_unreadable_record_is_named() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let k = key("v2", 1, 1);
        store
            .compare_and_swap(&k.store_key(), None, Some(b"{}".to_vec()))
            .await
            .unwrap();
        let err = Approvals::with_store(store).decision(&k).await.unwrap_err();
        assert!(
            matches!(&err, ApprovalError::Corrupt { key, .. } if key.ends_with("/0000000001")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn records_serialize_in_the_http_api_shape_and_read_back() {
        let a = Approvals::new();
        let k = key("v2", 2, 3);
        let req = ApprovalRequest::new(k.clone(), "go?")
            .context(ApprovalContext::new().step_count(4).updated_percent(50));
        a.request(&req).await.unwrap();
        let pending = serde_json::to_value(a.get(&k).await.unwrap().unwrap()).unwrap();
        assert_eq!(pending["namespace"], "games");
        assert_eq!(pending["app"], "lobby");
        assert_eq!(pending["revision"], "v2");
        assert_eq!(pending["attempt"], 2);
        assert_eq!(pending["step"], 3);
        assert_eq!(
            pending["context"],
            serde_json::json!({"stepCount": 4, "updatedPercent": 50})
        );
        assert_eq!(pending["state"], "pending");
        assert!(pending["decision"].is_null());
        assert!(
            pending["requestedAt"].as_str().unwrap().ends_with('Z'),
            "{pending}"
        );
        a.decide(&k, false, "bob", Some("no".into()), std::time::UNIX_EPOCH)
            .await
            .unwrap();
        let record = a.get(&k).await.unwrap().unwrap();
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
            async fn decision(&self, _: &ApprovalKey) -> Result<Option<Decision>, ApprovalError> {
                Ok(None)
            }
        }
        let err = Minimal.withdraw(&lobby(), &"v1".into()).await;
        assert!(matches!(err, Err(ApprovalError::Unsupported(_))), "{err:?}");
    }
}
