//! Kubeconfig files for the test control plane: one per user (the admin the tests act as, the
//! controller-manager, the scheduler), each self-contained (the CA inline), so a written copy
//! keeps working wherever it is moved while the control plane runs.

use base64::Engine as _;

/// A kubeconfig (YAML) for `user` with a bearer `token` against the apiserver at `server`,
/// trusting the PEM `ca_cert`. The only context is `rorqual-testenv`, and it is current.
pub(crate) fn render(server: &str, ca_cert: &str, user: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_cert);
    // Every value is a URL, base64, hex or one of this crate's fixed names: nothing to quote.
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: rorqual-testenv
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: rorqual-testenv
  context:
    cluster: rorqual-testenv
    user: {user}
    namespace: default
current-context: rorqual-testenv
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_reads_what_is_rendered() {
        let yaml = render(
            "https://127.0.0.1:16443",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "admin",
            "0123abcd",
        );
        let config = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(config.current_context.as_deref(), Some("rorqual-testenv"));
        let cluster = config.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:16443"));
        let ca = base64::engine::general_purpose::STANDARD
            .decode(cluster.certificate_authority_data.as_deref().unwrap())
            .unwrap();
        assert!(ca.starts_with(b"-----BEGIN CERTIFICATE-----"));
        let user = &config.auth_infos[0];
        assert_eq!(user.name, "admin");
        assert!(user.auth_info.as_ref().unwrap().token.is_some());
    }
}
