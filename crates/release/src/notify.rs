//! Release notifications: what happened to which rollout, sent to people and bots.
//!
//! [`Notifier`] is the seam; `WebhookNotifier` (feature `webhook`) POSTs to a URL with a
//! timeout and a bounded retry, as JSON (the [`Notification`]'s fields) or as a chat message
//! for Slack-compatible or WeCom (企业微信) group robots ([`WebhookFormat`]);
//! [`RecordingNotifier`] keeps notifications in memory for tests.
//!
//! A notification asking for an approval carries the [`ApprovalRequest`]
//! ([`Notification::with_approval`]), so the message tells an approver what they need: the
//! application, cluster, revision, "step i of n", the share of replicas updated, who released
//! it and which commit, and what is asked.

use std::fmt::Debug;
use std::sync::Arc;
#[cfg(feature = "webhook")]
use std::time::Duration;
use std::time::SystemTime;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use rorqual_core::model::{AppKey, Revision};

use crate::approval::ApprovalRequest;

/// Something that happened in a release.
///
/// Its JSON form is the webhook body: `app` (`namespace/name`), `namespace`, `name`,
/// `revision`, `step` (number or null), `outcome`, `message`, `time` (RFC 3339, UTC, in
/// milliseconds) and, when it asks for an approval, `approval` (the [`ApprovalRequest`]: its
/// `key`, `message` and `context`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "NotificationBody", from = "NotificationBody")]
#[non_exhaustive]
pub struct Notification {
    /// The application.
    pub app: AppKey,
    /// The revision being released.
    pub revision: Revision,
    /// The step index, when the notification is about a step.
    pub step: Option<usize>,
    /// What happened, a short word such as `step-completed`, `paused`, `aborted`,
    /// `rolled-back`, `promoted`, `healthy`, `approval-requested`.
    pub outcome: String,
    /// A sentence for people.
    pub message: String,
    /// When it happened.
    pub time: SystemTime,
    /// The approval asked for, when the notification is about one.
    pub approval: Option<ApprovalRequest>,
}

impl Notification {
    /// A notification about `app` at `revision`.
    pub fn new(
        app: AppKey,
        revision: Revision,
        outcome: impl Into<String>,
        message: impl Into<String>,
        time: SystemTime,
    ) -> Self {
        Notification {
            app,
            revision,
            step: None,
            outcome: outcome.into(),
            message: message.into(),
            time,
            approval: None,
        }
    }

    /// Sets the step index.
    #[must_use]
    pub fn step(mut self, step: usize) -> Self {
        self.step = Some(step);
        self
    }

    /// Attaches the approval asked for (and sets the step to its step).
    #[must_use]
    pub fn with_approval(mut self, request: ApprovalRequest) -> Self {
        self.step = Some(request.key.step);
        self.approval = Some(request);
        self
    }

    /// The notification as a short message for people, with `**bold**` markdown (WeCom's);
    /// see [`WebhookFormat`] for Slack's.
    ///
    /// About an approval: the application and cluster, the revision, "step i of n" (steps
    /// counted from 1), the attempt, the share of replicas updated, who released it and the
    /// commit, and what is asked. Otherwise: the application, the outcome, the revision and
    /// step, and the message.
    pub fn text(&self) -> String {
        self.render("**")
    }

    /// The text with `bold` as the bold marker.
    fn render(&self, bold: &str) -> String {
        let b = |s: &str| format!("{bold}{s}{bold}");
        let mut lines = Vec::new();
        match &self.approval {
            Some(req) => {
                let ctx = &req.context;
                let title = if self.outcome == "approval-requested" {
                    "Approval needed".to_owned()
                } else {
                    format!("Approval {}", self.outcome)
                };
                let cluster = ctx
                    .cluster
                    .as_ref()
                    .map(|c| format!(" in cluster {c}"))
                    .unwrap_or_default();
                lines.push(format!("{}: {}{cluster}", b(&title), self.app));
                let step = if ctx.step_count > 0 {
                    format!("step {} of {}", req.key.step + 1, ctx.step_count)
                } else {
                    format!("step {}", req.key.step + 1)
                };
                lines.push(format!(
                    "Revision {}, {step} (attempt {}), {}% of replicas updated",
                    req.key.revision, req.key.attempt, ctx.updated_percent
                ));
                match (&ctx.released_by, &ctx.commit) {
                    (Some(who), Some(commit)) => {
                        lines.push(format!("Released by {who}, commit {commit}"));
                    }
                    (Some(who), None) => lines.push(format!("Released by {who}")),
                    (None, Some(commit)) => lines.push(format!("Commit {commit}")),
                    (None, None) => {}
                }
                lines.push(format!("Asked: {}", req.message));
                if !self.message.is_empty() && self.message != req.message {
                    lines.push(self.message.clone());
                }
            }
            None => {
                lines.push(format!("{}: {}", b(&self.app.to_string()), self.outcome));
                lines.push(match self.step {
                    Some(step) => format!("Revision {}, step {}", self.revision, step + 1),
                    None => format!("Revision {}", self.revision),
                });
                if !self.message.is_empty() {
                    lines.push(self.message.clone());
                }
            }
        }
        lines.join("\n")
    }
}

/// The wire form of a [`Notification`] (the webhook body).
#[derive(Serialize, Deserialize)]
struct NotificationBody {
    /// `namespace/name`, for receivers that want one string.
    app: String,
    namespace: String,
    name: String,
    revision: Revision,
    step: Option<usize>,
    outcome: String,
    message: String,
    #[serde(with = "crate::timestamp")]
    time: SystemTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    approval: Option<ApprovalRequest>,
}

impl From<Notification> for NotificationBody {
    fn from(n: Notification) -> Self {
        NotificationBody {
            app: n.app.to_string(),
            namespace: n.app.namespace,
            name: n.app.name,
            revision: n.revision,
            step: n.step,
            outcome: n.outcome,
            message: n.message,
            time: n.time,
            approval: n.approval,
        }
    }
}

impl From<NotificationBody> for Notification {
    fn from(b: NotificationBody) -> Self {
        Notification {
            app: AppKey::new(b.namespace, b.name),
            revision: b.revision,
            step: b.step,
            outcome: b.outcome,
            message: b.message,
            time: b.time,
            approval: b.approval,
        }
    }
}

/// How a `WebhookNotifier` writes its request body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebhookFormat {
    /// The [`Notification`]'s JSON form (its [`Serialize`] impl).
    #[default]
    Json,
    /// A Slack incoming-webhook message, `{"text": "…"}`, also taken by Slack-compatible
    /// receivers (Mattermost, Rocket.Chat); bold is `*…*`.
    Slack,
    /// A WeCom (企业微信) group robot markdown message,
    /// `{"msgtype": "markdown", "markdown": {"content": "…"}}`; bold is `**…**`.
    WeCom,
}

impl WebhookFormat {
    /// The request body for `n`.
    pub fn body(self, n: &Notification) -> serde_json::Value {
        match self {
            // A notification is plain data (strings, numbers, times): it always serialises.
            WebhookFormat::Json => serde_json::to_value(n).unwrap_or_default(),
            WebhookFormat::Slack => serde_json::json!({ "text": n.render("*") }),
            WebhookFormat::WeCom => serde_json::json!({
                "msgtype": "markdown",
                "markdown": { "content": n.render("**") },
            }),
        }
    }
}

/// Errors of notifiers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The webhook URL is not an `http://` or `https://` URL.
    #[error("webhook URL `{url}` is not an http(s) URL")]
    InvalidUrl {
        /// The URL given.
        url: String,
    },
    /// The request could not be sent or got no response (refused, timed out, the server's
    /// certificate is not trusted). The message carries the causes, since reqwest's own
    /// message does not say why.
    #[cfg(feature = "webhook")]
    #[error(
        "webhook {url} failed after {attempts} attempt(s): {}",
        crate::https::error_chain(source)
    )]
    Request {
        /// The webhook URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: reqwest::Error,
    },
    /// The receiver answered 2xx but refused the message: a WeCom robot answers
    /// `{"errcode": 93000, "errmsg": "…"}` for a wrong key or a malformed message. Not
    /// retried.
    #[error("webhook {url} refused the message: {reason}")]
    Refused {
        /// The webhook URL.
        url: String,
        /// The receiver's error code and message.
        reason: String,
    },
    /// The receiver answered with a non-2xx status.
    #[error("webhook {url} answered {status} after {attempts} attempt(s): {body}")]
    Status {
        /// The webhook URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
}

/// Sends release notifications somewhere.
#[async_trait]
pub trait Notifier: Send + Sync + Debug + 'static {
    /// Delivers one notification.
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError>;
}

#[cfg(feature = "webhook")]
/// POSTs each notification to a URL, over HTTP or HTTPS: as JSON (its [`Serialize`] form) by
/// default, or as a Slack or WeCom chat message ([`WebhookNotifier::format`]).
///
/// HTTPS trusts the bundled Mozilla roots; [`root_certificates_pem`] adds a private or test
/// CA.
///
/// [`root_certificates_pem`]: WebhookNotifier::root_certificates_pem
///
/// Each attempt has a timeout (default 5 s). Connection errors, timeouts, 429 and 5xx answers
/// are retried up to `retries` more times (default 2) with a doubling backoff from 200 ms;
/// other 4xx answers are not retried.
#[derive(Debug, Clone)]
pub struct WebhookNotifier {
    url: String,
    client: reqwest::Client,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
    headers: Vec<(String, String)>,
    format: WebhookFormat,
}

#[cfg(feature = "webhook")]
impl WebhookNotifier {
    /// A notifier posting to `url` (http or https).
    pub fn new(url: impl Into<String>) -> Result<Self, NotifyError> {
        let url = url.into();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(NotifyError::InvalidUrl { url });
        }
        Ok(WebhookNotifier {
            url,
            client: reqwest::Client::new(),
            timeout: Duration::from_secs(5),
            retries: 2,
            backoff: Duration::from_millis(200),
            headers: Vec::new(),
            format: WebhookFormat::Json,
        })
    }

    /// Sets the body format (default [`WebhookFormat::Json`]).
    #[must_use]
    pub fn format(mut self, format: WebhookFormat) -> Self {
        self.format = format;
        self
    }

    /// Sets the per-attempt timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how many times a failed delivery is retried.
    #[must_use]
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Sets the first backoff between attempts (doubles each retry).
    #[must_use]
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// Adds a header to every request (an authorization token).
    #[must_use]
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// Trusts the CA certificates in `pem` (one or more PEM `CERTIFICATE` blocks) besides the
    /// bundled public roots, for receivers behind a private or test CA. Call it again to
    /// replace them.
    pub fn root_certificates_pem(
        mut self,
        pem: impl AsRef<[u8]>,
    ) -> Result<Self, crate::RootCertificateError> {
        let roots = crate::https::parse_roots(pem.as_ref())?;
        self.client = crate::https::client_trusting(&roots)?;
        Ok(self)
    }

    /// The webhook URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(feature = "webhook")]
#[async_trait]
impl Notifier for WebhookNotifier {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        use backon::Retryable;
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let attempt = || async {
            let attempts = attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            self.send_once(n, attempts).await
        };
        let policy = backon::ExponentialBuilder::default()
            .with_min_delay(self.backoff)
            .with_max_delay(Duration::MAX)
            .with_factor(2.0)
            .with_max_times(self.retries as usize);
        attempt
            .retry(policy)
            .sleep(tokio::time::sleep)
            .when(|failure| failure.retryable)
            .notify(|failure, delay| {
                tracing::debug!(url = %self.url, error = %failure.error, ?delay, "webhook delivery failed, retrying");
            })
            .await
            .map_err(|failure| failure.error)
    }
}

/// One failed delivery attempt, and whether another may succeed (a network error, a 5xx or a
/// 429 may; another 4xx will not).
#[cfg(feature = "webhook")]
struct FailedAttempt {
    error: NotifyError,
    retryable: bool,
}

#[cfg(feature = "webhook")]
impl WebhookNotifier {
    async fn send_once(&self, n: &Notification, attempts: u32) -> Result<(), FailedAttempt> {
        let mut req = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .json(&self.format.body(n));
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() && self.format == WebhookFormat::WeCom => {
                // WeCom answers 200 with `errcode` 0, or another code when it refuses.
                let text = resp.text().await.unwrap_or_default();
                let answer: serde_json::Value =
                    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
                match answer["errcode"].as_i64() {
                    Some(0) | None => Ok(()),
                    Some(code) => Err(FailedAttempt {
                        retryable: false,
                        error: NotifyError::Refused {
                            url: self.url.clone(),
                            reason: format!(
                                "errcode {code}: {}",
                                answer["errmsg"].as_str().unwrap_or_default()
                            ),
                        },
                    }),
                }
            }
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                Err(FailedAttempt {
                    retryable: status.is_server_error() || status.as_u16() == 429,
                    error: NotifyError::Status {
                        url: self.url.clone(),
                        attempts,
                        status: status.as_u16(),
                        body: text.chars().take(200).collect(),
                    },
                })
            }
            Err(source) => Err(FailedAttempt {
                retryable: true,
                error: NotifyError::Request {
                    url: self.url.clone(),
                    attempts,
                    source,
                },
            }),
        }
    }
}

/// Keeps every notification in memory, for tests and for showing a timeline.
#[derive(Debug, Clone, Default)]
pub struct RecordingNotifier {
    sent: Arc<Mutex<Vec<Notification>>>,
}

impl RecordingNotifier {
    /// An empty recorder.
    pub fn new() -> Self {
        RecordingNotifier::default()
    }

    /// The notifications so far, oldest first.
    pub fn notifications(&self) -> Vec<Notification> {
        self.sent.lock().clone()
    }
}

#[async_trait]
impl Notifier for RecordingNotifier {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        self.sent.lock().push(n.clone());
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn notifier_seam_is_object_safe_send_and_sync() {
        fn assert_seam<T: ?Sized + Send + Sync + Debug + 'static>() {}
        assert_seam::<dyn Notifier>();
        let _: Arc<dyn Notifier> = Arc::new(RecordingNotifier::new());
        #[cfg(feature = "webhook")]
        let _: Arc<dyn Notifier> = Arc::new(WebhookNotifier::new("http://127.0.0.1:1/").unwrap());
    }

    #[test]
    fn notification_json_has_the_fields() {
        let n = Notification::new(
            AppKey::new("games", "lobby"),
            Revision::from("abc"),
            "aborted",
            "analysis failed",
            UNIX_EPOCH,
        )
        .step(2);
        let j = serde_json::to_value(&n).unwrap();
        assert_eq!(j["app"], "games/lobby");
        assert_eq!(j["revision"], "abc");
        assert_eq!(j["step"], 2);
        assert_eq!(j["outcome"], "aborted");
        assert_eq!(j["namespace"], "games");
        assert_eq!(j["name"], "lobby");
        assert_eq!(j["message"], "analysis failed");
        assert_eq!(j["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(j.as_object().unwrap().len(), 8, "{j}");
        // The same shape reads back.
        let back: Notification = serde_json::from_value(j).unwrap();
        assert_eq!(back, n);
        #[cfg(feature = "webhook")]
        assert!(WebhookNotifier::new("ftp://x").is_err());
    }

    fn approval_request() -> ApprovalRequest {
        use crate::approval::{ApprovalContext, ApprovalKey};
        ApprovalRequest::new(
            ApprovalKey::new(
                AppKey::new("games", "lobby"),
                Revision::from("9f1c2a7b3d"),
                2,
                2,
            ),
            "promote to 50%?",
        )
        .context(
            ApprovalContext::new()
                .cluster("sh-1")
                .step_count(5)
                .updated_percent(40)
                .released_by("alice")
                .commit("abc1234"),
        )
    }

    #[test]
    fn an_approval_notification_tells_the_approver_what_they_need() {
        let n = Notification::new(
            AppKey::new("games", "lobby"),
            Revision::from("9f1c2a7b3d"),
            "approval-requested",
            "promote to 50%?",
            UNIX_EPOCH,
        )
        .with_approval(approval_request());
        assert_eq!(n.step, Some(2));
        assert_eq!(
            n.text(),
            "**Approval needed**: games/lobby in cluster sh-1\n\
             Revision 9f1c2a7b3d, step 3 of 5 (attempt 2), 40% of replicas updated\n\
             Released by alice, commit abc1234\n\
             Asked: promote to 50%?"
        );
        assert_eq!(
            WebhookFormat::Slack.body(&n)["text"],
            n.text().replace("**", "*")
        );
        let wecom = WebhookFormat::WeCom.body(&n);
        assert_eq!(wecom["msgtype"], "markdown");
        assert_eq!(wecom["markdown"]["content"], n.text());
        // The JSON form carries the request, and reads back.
        let j = WebhookFormat::Json.body(&n);
        assert_eq!(j["approval"]["key"]["attempt"], 2);
        assert_eq!(j["approval"]["context"]["updatedPercent"], 40);
        assert_eq!(serde_json::from_value::<Notification>(j).unwrap(), n);

        // Unknown parts are left out.
        let bare = Notification::new(
            AppKey::new("games", "lobby"),
            Revision::from("v2"),
            "approval-requested",
            "",
            UNIX_EPOCH,
        )
        .with_approval(ApprovalRequest::new(
            crate::approval::ApprovalKey::new(AppKey::new("games", "lobby"), "v2".into(), 0, 0),
            "go?",
        ));
        assert_eq!(
            bare.text(),
            "**Approval needed**: games/lobby\n\
             Revision v2, step 1 (attempt 0), 0% of replicas updated\nAsked: go?"
        );
    }

    #[test]
    fn other_notifications_say_the_outcome_and_message() {
        let n = Notification::new(
            AppKey::new("games", "lobby"),
            Revision::from("abc"),
            "aborted",
            "analysis failed",
            UNIX_EPOCH,
        )
        .step(2);
        assert_eq!(
            n.text(),
            "**games/lobby**: aborted\nRevision abc, step 3\nanalysis failed"
        );
        let healthy = Notification::new(
            AppKey::new("games", "lobby"),
            Revision::from("abc"),
            "healthy",
            "",
            UNIX_EPOCH,
        );
        assert_eq!(
            WebhookFormat::Slack.body(&healthy),
            serde_json::json!({"text": "*games/lobby*: healthy\nRevision abc"})
        );
    }
}
