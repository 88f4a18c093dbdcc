//! HTTPS to webhooks and metric providers through a private CA: rcgen makes a test CA and a
//! server certificate for 127.0.0.1 and localhost; axum serves over tokio-rustls on loopback.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use axum::Json;
use axum::routing::{get, post};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rorqual_core::model::{AppKey, Revision};
use rorqual_release::RootCertificateError;
use rorqual_release::analysis::{
    MetricProvider, MetricSpec, PrometheusMetric, PrometheusProvider, ProviderSpec, WebMetric,
    WebProvider,
};
use rorqual_release::notify::{Notification, Notifier, NotifyError, WebhookNotifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;

/// A test CA (its PEM) and an HTTPS server whose certificate it signed.
struct Server {
    addr: SocketAddr,
    ca_pem: String,
    received: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Completes each TLS handshake before handing the connection to axum; a failed handshake (an
/// untrusting client hangs up) is skipped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

async fn https_server() -> Server {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "rorqual test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();

    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();

    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let app = axum::Router::new()
        .route(
            "/hook",
            post(move |Json(body): Json<Value>| async move {
                sink.lock().unwrap().push(body);
                "ok"
            }),
        )
        .route(
            "/metric",
            get(|| async { Json(json!({"data": {"errorRate": 0.01}})) }),
        )
        .route(
            "/api/v1/query",
            get(|| async {
                Json(json!({"status": "success",
                    "data": {"resultType": "scalar", "result": [1.0, "0.25"]}}))
            }),
        );
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener {
        tcp,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    };
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server {
        addr,
        ca_pem: ca_cert.pem(),
        received,
        task,
    }
}

fn notification() -> Notification {
    Notification::new(
        AppKey::new("games", "lobby"),
        Revision::from("9f1c2a7b3d"),
        "aborted",
        "analysis failed",
        UNIX_EPOCH,
    )
    .step(2)
}

#[tokio::test]
async fn webhook_over_https_trusting_a_private_ca_delivers_the_payload() {
    let server = https_server().await;
    for host in ["127.0.0.1".to_owned(), "localhost".to_owned()] {
        let url = format!("https://{host}:{}/hook", server.addr.port());
        let notifier = WebhookNotifier::new(&url)
            .unwrap()
            .root_certificates_pem(&server.ca_pem)
            .unwrap()
            .retries(0);
        notifier.notify(&notification()).await.unwrap();
    }
    let received = server.received.lock().unwrap().clone();
    assert_eq!(received.len(), 2, "{received:?}");
    for body in received {
        assert_eq!(body["app"], "games/lobby");
        assert_eq!(body["revision"], "9f1c2a7b3d");
        assert_eq!(body["step"], 2);
        assert_eq!(body["outcome"], "aborted");
    }
}

#[tokio::test]
async fn webhook_with_an_untrusted_certificate_names_the_url_and_the_certificate() {
    let server = https_server().await;
    let url = format!("https://127.0.0.1:{}/hook", server.addr.port());
    let notifier = WebhookNotifier::new(&url).unwrap().retries(0);
    let err = notifier.notify(&notification()).await.unwrap_err();
    assert!(matches!(err, NotifyError::Request { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&url), "{text}");
    assert!(text.contains("certificate"), "{text}");
    assert!(server.received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn web_and_prometheus_providers_over_https_trust_a_private_ca() {
    let server = https_server().await;
    let base = format!("https://localhost:{}", server.addr.port());
    let args = BTreeMap::new();

    let web = MetricSpec::new(
        "error-rate",
        ProviderSpec::Web(WebMetric::get(format!("{base}/metric")).json_path("$.data.errorRate")),
    );
    let trusted = WebProvider::new()
        .root_certificates_pem(&server.ca_pem)
        .unwrap();
    assert_eq!(trusted.measure(&web, &args).await.unwrap(), json!(0.01));
    let err = WebProvider::new().measure(&web, &args).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("{base}/metric")) && text.contains("certificate"),
        "{text}"
    );

    let prom = MetricSpec::new(
        "p",
        ProviderSpec::Prometheus(PrometheusMetric::new(base.clone(), "vector(0.25)")),
    );
    let trusted = PrometheusProvider::new()
        .root_certificates_pem(server.ca_pem.as_bytes())
        .unwrap();
    assert_eq!(trusted.measure(&prom, &args).await.unwrap(), json!(0.25));
    let err = PrometheusProvider::new()
        .measure(&prom, &args)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&base) && text.contains("certificate"),
        "{text}"
    );
}

#[test]
fn a_pem_without_certificates_is_rejected() {
    let err = WebhookNotifier::new("https://127.0.0.1:1/hook")
        .unwrap()
        .root_certificates_pem("not a certificate")
        .unwrap_err();
    assert!(matches!(err, RootCertificateError::Empty), "{err:?}");
    assert!(err.to_string().contains("no `BEGIN CERTIFICATE` block"));
}
