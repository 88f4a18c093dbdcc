//! The test control plane's keys and certificates, generated fresh for every start: a CA, the
//! apiserver's serving certificate (SAN 127.0.0.1 and `localhost`), the service-account
//! signing key, and bearer tokens.

use std::net::{IpAddr, Ipv4Addr};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// PEM files for the control plane.
#[derive(Debug)]
pub(crate) struct ControlPlaneCerts {
    /// The test CA's certificate (clients trust it; the apiserver's `--client-ca-file`, the
    /// controller-manager's `--root-ca-file`).
    pub(crate) ca_cert: String,
    /// The test CA's key (the controller-manager signs CSRs with it).
    pub(crate) ca_key: String,
    /// The apiserver's serving certificate, signed by the CA.
    pub(crate) serving_cert: String,
    /// Its key.
    pub(crate) serving_key: String,
    /// The service-account token signing key (ECDSA P-256, PKCS#8).
    pub(crate) service_account_key: String,
    /// Its public half (the apiserver's `--service-account-key-file`: it does not read the
    /// public key out of a PKCS#8 private key).
    pub(crate) service_account_public_key: String,
}

impl ControlPlaneCerts {
    /// Generates a CA and signs a serving certificate for 127.0.0.1 with it.
    pub(crate) fn generate() -> Result<ControlPlaneCerts, rcgen::Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "rorqual-testenv-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;

        let serving_key = KeyPair::generate()?;
        let mut serving = CertificateParams::new(vec!["localhost".to_owned()])?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        serving.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let serving_cert = serving.signed_by(&serving_key, &ca_cert, &ca_key)?;

        let service_account_key = KeyPair::generate()?;
        Ok(ControlPlaneCerts {
            ca_cert: ca_cert.pem(),
            ca_key: ca_key.serialize_pem(),
            serving_cert: serving_cert.pem(),
            serving_key: serving_key.serialize_pem(),
            service_account_key: service_account_key.serialize_pem(),
            service_account_public_key: service_account_key.public_key_pem(),
        })
    }
}

/// A random bearer token (128 bits from the kernel, hex).
pub(crate) fn random_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
