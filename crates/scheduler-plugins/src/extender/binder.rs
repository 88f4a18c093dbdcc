//! Creating a pod's Binding: when the stanza sets `bindVerb`, kube-scheduler delegates binding
//! entirely to the extender, so the extender must create the `v1 Binding` itself
//! (`POST /api/v1/namespaces/{namespace}/pods/{name}/binding`), as kube-scheduler's
//! DefaultBinder would. [`Binder`] is that seam; [`ApiserverBinder`](crate::extender::ApiserverBinder)
//! (feature `extender`) implements it with a small HTTP client, and a host with its own
//! Kubernetes client (kube-rs, say) can implement it instead.

use std::fmt::Debug;

use async_trait::async_trait;
use serde_json::{Value, json};

/// A pod's binding to a node: what kube-scheduler asks an extender's bind verb to create.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PodBinding {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID (the API server refuses the binding if the pod was replaced).
    pub uid: String,
    /// The node.
    pub node: String,
}

impl PodBinding {
    /// The binding of pod `namespace/name` (UID `uid`) to `node`.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        uid: impl Into<String>,
        node: impl Into<String>,
    ) -> PodBinding {
        PodBinding {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            node: node.into(),
        }
    }

    /// `namespace/name`.
    pub fn pod_key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The API path the binding is POSTed to (`/api/v1/namespaces/{ns}/pods/{name}/binding`).
    /// Namespace and pod names are DNS labels and subdomains, so they need no escaping.
    pub fn path(&self) -> String {
        format!(
            "/api/v1/namespaces/{}/pods/{}/binding",
            self.namespace, self.name
        )
    }

    /// The `v1 Binding` object.
    pub fn to_json(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        })
    }
}

/// Why a binding was not created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The API server answered with an error status.
    #[error(
        "apiserver {server} refused the binding of pod {pod} to node {node}: HTTP {status}: {message}"
    )]
    Rejected {
        /// The API server's base URL.
        server: String,
        /// `namespace/name`.
        pod: String,
        /// The node.
        node: String,
        /// The HTTP status code.
        status: u16,
        /// The `message` of the API server's `Status`, or the body.
        message: String,
    },
    /// The request did not get an answer (connection refused, TLS failure, timeout).
    #[error("cannot reach apiserver {server} to bind pod {pod} to node {node}")]
    Unreachable {
        /// The API server's base URL.
        server: String,
        /// `namespace/name`.
        pod: String,
        /// The node.
        node: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The client could not be configured (a bad URL or CA bundle).
    #[error("invalid apiserver client configuration: {what}")]
    Config {
        /// What is wrong.
        what: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl BindError {
    /// Whether trying again may succeed: an unreachable server, HTTP 429 or a 5xx. A 4xx
    /// (the pod is gone, already bound, or the token is not allowed to bind) is permanent
    /// for this binding; kube-scheduler retries the pod from the start either way.
    pub fn is_retryable(&self) -> bool {
        match self {
            BindError::Unreachable { .. } => true,
            BindError::Rejected { status, .. } => *status == 429 || *status >= 500,
            BindError::Config { .. } => false,
        }
    }
}

/// Creates Bindings on a cluster. Object safe; store as `Arc<dyn Binder>`.
#[async_trait]
pub trait Binder: Send + Sync + Debug + 'static {
    /// Creates `binding`; `Ok` once the API server accepted it.
    async fn bind(&self, binding: &PodBinding) -> Result<(), BindError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_shape_and_path() {
        let b = PodBinding::new("games", "game-0", "u-1", "node-3");
        assert_eq!(b.path(), "/api/v1/namespaces/games/pods/game-0/binding");
        assert_eq!(
            b.to_json(),
            json!({"apiVersion": "v1", "kind": "Binding",
                   "metadata": {"name": "game-0", "namespace": "games", "uid": "u-1"},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": "node-3"}})
        );
    }

    #[test]
    fn retryable_classification() {
        let rejected = |status| BindError::Rejected {
            server: "https://127.0.0.1:6443".into(),
            pod: "ns/p".into(),
            node: "n".into(),
            status,
            message: String::new(),
        };
        assert!(!rejected(409).is_retryable());
        assert!(!rejected(403).is_retryable());
        assert!(rejected(429).is_retryable());
        assert!(rejected(503).is_retryable());
    }

    #[test]
    fn binder_is_object_safe_and_send() {
        fn assert_send_sync<T: Send + Sync + ?Sized>() {}
        assert_send_sync::<dyn Binder>();
        let _: Option<std::sync::Arc<dyn Binder>> = None;
    }
}
