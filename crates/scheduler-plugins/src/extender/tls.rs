//! TLS for the extender (feature `tls`): rustls with the `ring` backend behind axum's
//! `Listener`, so `axum::serve` runs unchanged over it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;

use crate::extender::ExtenderServer;

/// The certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("extender TLS setup failed: {0}")]
pub struct TlsError(String);

/// A TCP listener whose connections complete a TLS handshake (in their own tasks) before
/// they are handed to the server.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    rx: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsListener {
    /// Wraps `listener` with the PEM certificate chain and private key.
    pub fn new(
        listener: TcpListener,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<TlsListener, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError(format!("certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(TlsError("certificate PEM holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| TlsError(format!("private key PEM: {e}")))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError(e.to_string()))?;
        // HTTP/2 first: kube-scheduler's extender client (a Go `http.Transport` with HTTP/2
        // configured and the default two idle connections per host) then sends every verb
        // over one multiplexed connection instead of dialing a new HTTP/1.1 connection for
        // each request beyond two in flight (concurrent binds).
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let local = listener
            .local_addr()
            .map_err(|e| TlsError(format!("listener address: {e}")))?;
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, addr)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!("cannot set TCP_NODELAY on an extender connection: {e}");
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Err(e) => tracing::debug!("TLS handshake from {addr} failed: {e}"),
                    }
                });
            }
        });
        Ok(TlsListener { local, rx, task })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Some(conn) = self.rx.recv().await {
                return conn;
            }
            // The accept task ended (it never does unless aborted): wait forever like a
            // listener with no clients.
            std::future::pending::<()>().await;
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl ExtenderServer {
    /// Serves over TLS on `listener`.
    pub async fn serve_tls(self, listener: TlsListener) -> io::Result<()> {
        axum::serve(listener, self.router()).await
    }
}
