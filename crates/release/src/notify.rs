//! Release notifications: what happened to which rollout, sent to people and bots.
//!
//! [`Notifier`] is the seam; [`WebhookNotifier`] POSTs JSON to a URL with a timeout and a
//! bounded retry; [`RecordingNotifier`] keeps notifications in memory for tests.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use rorqual_core::model::{AppKey, Revision};

/// Something that happened in a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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

    /// The webhook body: `app` (`namespace/name`), `namespace`, `name`, `revision`, `step`
    /// (number or null), `outcome`, `message` and `time` (RFC 3339, UTC).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "app": self.app.to_string(),
            "namespace": self.app.namespace,
            "name": self.app.name,
            "revision": self.revision.as_str(),
            "step": self.step,
            "outcome": self.outcome,
            "message": self.message,
            "time": rfc3339(self.time),
        })
    }
}

/// Errors of notifiers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The notifier was configured wrongly.
    #[error("invalid notifier config: {0}")]
    Config(String),
    /// The request could not be sent or got no response.
    #[error("webhook {url} failed after {attempts} attempt(s): {reason}")]
    Request {
        /// The webhook URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
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

/// POSTs each notification as JSON ([`Notification::to_json`]) to a URL.
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

impl WebhookNotifier {
    /// A notifier posting to `url` (http or https).
    pub fn new(url: impl Into<String>) -> Result<Self, NotifyError> {
        let url = url.into();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(NotifyError::Config(format!(
                "webhook URL `{url}` is not an http(s) URL"
            )));
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

    /// The webhook URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        let body = n.to_json();
        let mut backoff = self.backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut req = self
                .client
                .post(&self.url)
                .timeout(self.timeout)
                .json(&body);
            for (k, v) in &self.headers {
                req = req.header(k, v);
            }
            let (err, retryable) = match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    let retryable = status.is_server_error() || status.as_u16() == 429;
                    let body: String = text.chars().take(200).collect();
                    (
                        NotifyError::Status {
                            url: self.url.clone(),
                            attempts,
                            status: status.as_u16(),
                            body,
                        },
                        retryable,
                    )
                }
                Err(e) => (
                    NotifyError::Request {
                        url: self.url.clone(),
                        attempts,
                        reason: e.to_string(),
                    },
                    true,
                ),
            };
            if !retryable || attempts > self.retries {
                return Err(err);
            }
            tracing::debug!(url = %self.url, attempts, error = %err, "webhook delivery failed, retrying");
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
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
        // A poisoned lock only means another thread panicked mid-push; the data is still valid.
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait]
impl Notifier for RecordingNotifier {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(n.clone());
        Ok(())
    }
}

/// `time` as RFC 3339 in UTC with millisecond precision (`2026-11-22T01:02:03.456Z`); times
/// before 1970 print as the epoch.
pub fn rfc3339(time: SystemTime) -> String {
    let d = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    // d is 1..=31 and m is 1..=12 by construction.
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn notifier_seam_is_object_safe_send_and_sync() {
        fn assert_seam<T: ?Sized + Send + Sync + Debug + 'static>() {}
        assert_seam::<dyn Notifier>();
        let _: Arc<dyn Notifier> = Arc::new(RecordingNotifier::new());
        let _: Arc<dyn Notifier> = Arc::new(WebhookNotifier::new("http://127.0.0.1:1/").unwrap());
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789); // 2024-02-29 (leap day)
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799); // last second of 2099
        assert_eq!(rfc3339(t), "2099-12-31T23:59:59.000Z");
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
        let j = n.to_json();
        assert_eq!(j["app"], "games/lobby");
        assert_eq!(j["revision"], "abc");
        assert_eq!(j["step"], 2);
        assert_eq!(j["outcome"], "aborted");
        assert_eq!(j["time"], "1970-01-01T00:00:00.000Z");
        assert!(WebhookNotifier::new("ftp://x").is_err());
    }
}
