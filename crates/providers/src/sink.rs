//! Where connection details go: a [`ConnectionSink`] publishes them under a name (on
//! Kubernetes, a `Secret`), and [`MemorySink`] keeps them in memory for tests and embedding.

use std::collections::BTreeMap;
use std::fmt::Debug;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::secret::ConnectionDetails;

/// Why publishing connection details failed. Messages never hold a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The sink cannot be reached for now; retrying later may succeed.
    #[error("connection secret `{name}`: sink unavailable: {message}")]
    Unavailable {
        /// The secret's name.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// The sink refused (permission denied, invalid name); retrying cannot help.
    #[error("connection secret `{name}`: refused: {message}")]
    Rejected {
        /// The secret's name.
        name: String,
        /// Why.
        message: String,
    },
}

impl SinkError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Unavailable { .. })
    }
}

/// Publishes connection details. Object safe: store it as `Arc<dyn ConnectionSink>`.
#[async_trait]
pub trait ConnectionSink: Send + Sync + Debug + 'static {
    /// Adds `details` to the secret `name` (creating it), replacing keys it has and keeping
    /// the others: details are additive.
    async fn publish(&self, name: &str, details: &ConnectionDetails) -> Result<(), SinkError>;

    /// Removes the secret `name`; succeeds when it is missing.
    async fn unpublish(&self, name: &str) -> Result<(), SinkError>;
}

/// A [`ConnectionSink`] in memory.
#[derive(Debug, Default)]
pub struct MemorySink {
    secrets: Mutex<BTreeMap<String, ConnectionDetails>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// The details published as `name`.
    pub fn get(&self, name: &str) -> Option<ConnectionDetails> {
        self.secrets.lock().get(name).cloned()
    }

    /// The names published.
    pub fn names(&self) -> Vec<String> {
        self.secrets.lock().keys().cloned().collect()
    }
}

#[async_trait]
impl ConnectionSink for MemorySink {
    async fn publish(&self, name: &str, details: &ConnectionDetails) -> Result<(), SinkError> {
        self.secrets
            .lock()
            .entry(name.to_owned())
            .or_default()
            .merge(details);
        Ok(())
    }

    async fn unpublish(&self, name: &str) -> Result<(), SinkError> {
        self.secrets.lock().remove(name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishing_is_additive_and_unpublish_is_idempotent() {
        let sink = MemorySink::new();
        sink.publish("db", &ConnectionDetails::new().with("user", "app"))
            .await
            .unwrap();
        sink.publish("db", &ConnectionDetails::new().with("password", "pw"))
            .await
            .unwrap();
        let got = sink.get("db").unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), ["password", "user"]);
        sink.unpublish("db").await.unwrap();
        sink.unpublish("db").await.unwrap();
        assert!(sink.get("db").is_none());
    }
}
