//! HTTPS clients for the webhook notifier and the web and prometheus providers: rustls (ring)
//! with the Mozilla roots bundled by `webpki-roots`, plus any private CA the host adds.

/// Extra root certificates could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootCertificateError {
    /// The text holds no PEM `CERTIFICATE` block.
    #[error("the root certificate PEM holds no `BEGIN CERTIFICATE` block")]
    Empty,
    /// A PEM block could not be read as a certificate.
    #[error("the root certificate PEM cannot be read")]
    Pem {
        /// What the TLS library said.
        #[source]
        source: reqwest::Error,
    },
    /// The HTTPS client could not be built with these roots.
    #[error("cannot build an HTTPS client trusting the given roots")]
    Client {
        /// What the HTTP library said.
        #[source]
        source: reqwest::Error,
    },
}

/// The certificates of a PEM bundle (one or more `CERTIFICATE` blocks).
pub(crate) fn parse_roots(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, RootCertificateError> {
    let roots = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|source| RootCertificateError::Pem { source })?;
    if roots.is_empty() {
        return Err(RootCertificateError::Empty);
    }
    Ok(roots)
}

/// A client trusting the built-in roots and `roots`.
pub(crate) fn client_trusting(
    roots: &[reqwest::Certificate],
) -> Result<reqwest::Client, RootCertificateError> {
    roots
        .iter()
        .fold(reqwest::Client::builder(), |b, root| {
            b.add_root_certificate(root.clone())
        })
        .build()
        .map_err(|source| RootCertificateError::Client { source })
}

/// `error` and its causes, `: `-separated: reqwest's own message ("error sending request for
/// url …") hides why (refused, timed out, an untrusted certificate), which is in the sources.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        // hyper and hyper-util sometimes wrap the same message twice.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}
