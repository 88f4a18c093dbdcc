//! Kubernetes client errors as rorqual-core errors, naming the server and the call.

use rorqual_core::error::Error;

/// `e`, from calling `server` to `what`: a [`Error::Remote`] that says whether a retry may
/// pass (unreachable, throttled or failing servers) or not (refused: unauthorised, forbidden,
/// invalid).
pub(crate) fn kube_error(server: &str, what: &str, e: kube::Error) -> Error {
    let (retryable, answer) = match &e {
        kube::Error::Api(s) => {
            let retryable = s.code == 429 || s.code >= 500;
            let answer = match s.code {
                401 => "unauthorised (401: the credentials were not accepted)".to_owned(),
                403 => format!("forbidden (403): {}", s.message),
                404 => format!("not found (404): {}", s.message),
                409 => format!("conflict (409): {}", s.message),
                422 => format!("invalid (422): {}", s.message),
                code => format!("HTTP {code} {}: {}", s.reason, s.message),
            };
            (retryable, answer)
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => (true, format!("unreachable: {e}")),
        other => (false, other.to_string()),
    };
    Error::Remote {
        context: format!("{server}: cannot {what}: {answer}"),
        retryable,
        source: Box::new(e),
    }
}

/// Nothing named `name` of `kind`.
pub(crate) fn not_found(kind: &'static str, name: impl Into<String>) -> Error {
    Error::NotFound {
        kind,
        name: name.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn refusals_are_final_and_name_the_server_and_call() {
        let e = kube_error(
            "https://127.0.0.1:6443",
            "apply ReplicaSet g/web-1",
            api(
                403,
                "Forbidden",
                "replicasets.apps is forbidden: User \"x\" cannot patch",
            ),
        );
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            "https://127.0.0.1:6443: cannot apply ReplicaSet g/web-1: forbidden (403): replicasets.apps is forbidden: User \"x\" cannot patch"
        );
        let e = kube_error(
            "s",
            "list pods",
            api(503, "ServiceUnavailable", "etcd down"),
        );
        assert!(e.is_retryable(), "{e}");
    }
}
