//! A namespace per test, usable when returned: Kubernetes before 1.24 rejects pods in a
//! namespace until its `default` ServiceAccount and that account's token Secret exist (the
//! controller-manager creates both a moment after the namespace).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;

use super::Error;
use super::certs::random_token;

/// The label every test namespace carries (value `true`).
pub const TEST_NAMESPACE_LABEL: &str = "rorqual.io/testenv";

/// What a new namespace waits for before it is handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Nothing: no controller-manager runs to create service accounts.
    Created,
    /// The `default` ServiceAccount (Kubernetes 1.24 and later: no token Secrets).
    ServiceAccount,
    /// The `default` ServiceAccount and its token Secret (before 1.24).
    ServiceAccountToken,
}

/// `prefix-xxxxxx`: the prefix made a DNS-1123 label (lowercase alphanumerics and `-`, at
/// most 50 characters, `test` when nothing is left) and six random hex digits.
pub(crate) fn namespace_name(prefix: &str, random: &str) -> String {
    let mut cleaned: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(50)
        .collect();
    cleaned = cleaned.trim_matches('-').to_owned();
    if cleaned.is_empty() {
        cleaned = "test".to_owned();
    }
    let suffix: String = random.chars().take(6).collect();
    format!("{cleaned}-{suffix}")
}

/// Creates a namespace named from `prefix` and waits, up to `timeout`, for what `readiness`
/// asks.
pub(crate) async fn create(
    client: kube::Client,
    prefix: &str,
    readiness: Readiness,
    timeout: Duration,
) -> Result<String, Error> {
    let random = random_token().map_err(|source| Error::Io {
        context: "reading /dev/urandom for a namespace name".to_owned(),
        source,
    })?;
    let name = namespace_name(prefix, &random);
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([(
                TEST_NAMESPACE_LABEL.to_owned(),
                "true".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .map_err(|source| Error::Kube {
            context: format!("creating namespace {name}"),
            source,
        })?;
    if readiness == Readiness::Created {
        return Ok(name);
    }
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &name);
    let secrets = Api::<Secret>::namespaced(client, &name);
    let started = Instant::now();
    loop {
        let missing = match missing_part(&accounts, &secrets, readiness).await {
            Ok(None) => return Ok(name),
            Ok(Some(missing)) => missing,
            Err(source) => {
                return Err(Error::Kube {
                    context: format!("reading the default ServiceAccount of namespace {name}"),
                    source,
                });
            }
        };
        if started.elapsed() >= timeout {
            return Err(Error::NamespaceNotReady {
                namespace: name,
                waited: timeout,
                missing,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the namespace still lacks (`None`: nothing).
async fn missing_part(
    accounts: &Api<ServiceAccount>,
    secrets: &Api<Secret>,
    readiness: Readiness,
) -> Result<Option<String>, kube::Error> {
    let Some(account) = accounts.get_opt("default").await? else {
        return Ok(Some("the `default` ServiceAccount".to_owned()));
    };
    if readiness == Readiness::ServiceAccount {
        return Ok(None);
    }
    let token_secret = account
        .secrets
        .unwrap_or_default()
        .into_iter()
        .filter_map(|reference| reference.name)
        .next();
    let Some(secret_name) = token_secret else {
        return Ok(Some(
            "a token Secret listed by the `default` ServiceAccount".to_owned(),
        ));
    };
    let has_token = secrets
        .get_opt(&secret_name)
        .await?
        .and_then(|s| s.data)
        .is_some_and(|data| data.contains_key("token"));
    Ok((!has_token).then(|| format!("the token in Secret {secret_name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        assert_eq!(
            namespace_name("ConfigMap_Round", "abcdef99"),
            "configmap-round-abcdef"
        );
        assert_eq!(namespace_name("--", "123456"), "test-123456");
        let long = namespace_name(&"x".repeat(80), "123456");
        assert!(long.len() <= 63, "{long}");
    }
}
