//! Release notifications: what happened to which rollout, sent to people and bots.
//!
//! [`Notifier`] is the seam; `WebhookNotifier` (feature `webhook`) POSTs JSON to a URL with a timeout and a
//! bounded retry; [`RecordingNotifier`] keeps notifications in memory for tests.

use std::fmt::Debug;
use std::sync::Arc;
#[cfg(feature = "webhook")]
use std::time::Duration;
use std::time::SystemTime;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use rorqual_core::model::{AppKey, Revision};

/// Something that happened in a release.
///
/// Its JSON form is the webhook body: `app` (`namespace/name`), `namespace`, `name`,
/// `revision`, `step` (number or null), `outcome`, `message` and `time` (RFC 3339, UTC, in
/// milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "NotificationBody", from = "NotificationBody")]
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
        }
    }

    /// Sets the step index.
    #[must_use]
    pub fn step(mut self, step: usize) -> Self {
        self.step = Some(step);
        self
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
/// POSTs each notification as JSON (its [`Serialize`] form) to a URL, over HTTP or HTTPS.
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
        })
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
        let mut req = self.client.post(&self.url).timeout(self.timeout).json(n);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        match req.send().await {
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
}
