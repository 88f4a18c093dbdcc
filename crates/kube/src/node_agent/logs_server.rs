//! The kubelet HTTPS endpoint: `GET /containerLogs/{namespace}/{pod}/{container}` with the
//! query parameters `follow` and `tailLines`, which the apiserver proxies `kubectl logs` to,
//! and `GET /healthz`.
//!
//! TLS uses a self-signed certificate made at start (SANs: the node address, `127.0.0.1`,
//! `localhost` and the node names); the apiserver does not verify kubelet certificates unless
//! it runs with `--kubelet-certificate-authority`. Requests are not authenticated: the endpoint
//! listens on the node address (loopback by default) only. Other kubelet paths (`exec`,
//! `attach`, `portForward`, `--previous` logs) answer an error saying they are unsupported.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring::default_provider;

use super::NodeAgentError;
use super::runtime::{LogRequest, PodRuntime, RuntimeError};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Logs {
        namespace: String,
        pod: String,
        request: LogRequest,
    },
    Healthz,
}

fn query_params(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Parses a request's path and query: the route, or the status and message to answer.
pub(crate) fn route(path: &str, query: Option<&str>) -> Result<Route, (StatusCode, String)> {
    if path == "/healthz" {
        return Ok(Route::Healthz);
    }
    let Some(rest) = path.strip_prefix("/containerLogs/") else {
        let what = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        return Err(match what {
            "exec" | "attach" | "portForward" | "run" => (
                StatusCode::NOT_IMPLEMENTED,
                format!("the rorqual node agent does not support {what}"),
            ),
            _ => (StatusCode::NOT_FOUND, format!("no such path {path}")),
        });
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let [namespace, pod, container] = parts.as_slice() else {
        return Err((
            StatusCode::BAD_REQUEST,
            "expected /containerLogs/{namespace}/{pod}/{container}".to_owned(),
        ));
    };
    let mut request = LogRequest {
        container: Some((*container).to_owned()),
        ..LogRequest::default()
    };
    for (key, value) in query_params(query) {
        match key {
            "follow" => request.follow = value == "true" || value == "1",
            "tailLines" => {
                let n = value.parse::<i64>().map_err(|_| {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("tailLines {value} is not a number"),
                    )
                })?;
                request.tail_lines = Some(usize::try_from(n.max(0)).unwrap_or(0));
            }
            "previous" if value == "true" || value == "1" => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "the rorqual node agent keeps one log per container across restarts: \
                     previous logs are in the current one"
                        .to_owned(),
                ));
            }
            _ => {}
        }
    }
    Ok(Route::Logs {
        namespace: (*namespace).to_owned(),
        pod: (*pod).to_owned(),
        request,
    })
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message + "\n")).boxed_unsync());
    *response.status_mut() = status;
    response
}

async fn handle(
    runtime: Arc<dyn PodRuntime>,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    if req.method() != hyper::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET".to_owned());
    }
    match route(req.uri().path(), req.uri().query()) {
        Err((status, message)) => text(status, message),
        Ok(Route::Healthz) => text(StatusCode::OK, "ok".to_owned()),
        Ok(Route::Logs {
            namespace,
            pod,
            request,
        }) => match runtime.logs(&namespace, &pod, request).await {
            Ok(lines) => {
                let frames = lines.map(|line| {
                    let text = match line {
                        Ok(line) => line + "\n",
                        Err(e) => format!("rorqual node agent: reading the log failed: {e}\n"),
                    };
                    Ok::<_, Infallible>(Frame::data(Bytes::from(text)))
                });
                let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain"),
                );
                response
            }
            Err(e @ (RuntimeError::UnknownPod { .. } | RuntimeError::UnknownContainer { .. })) => {
                text(StatusCode::NOT_FOUND, e.to_string())
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
    }
}

fn tls_config(names: &[String], address: IpAddr) -> Result<ServerConfig, NodeAgentError> {
    let mut sans = vec![
        address.to_string(),
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
    ];
    sans.extend(names.iter().cloned());
    sans.dedup();
    let cert = rcgen::generate_simple_self_signed(sans).map_err(|e| NodeAgentError::Tls {
        message: format!("generating the kubelet certificate: {e}"),
    })?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let chain = vec![CertificateDer::from(cert.cert.der().to_vec())];
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| NodeAgentError::Tls {
            message: format!("kubelet TLS versions: {e}"),
        })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| NodeAgentError::Tls {
            message: format!("kubelet certificate: {e}"),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Binds `bind` and serves until the returned task is aborted; returns the bound port.
pub(crate) async fn serve(
    bind: SocketAddr,
    names: &[String],
    runtime: Arc<dyn PodRuntime>,
) -> Result<(u16, tokio::task::JoinHandle<()>), NodeAgentError> {
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(names, bind.ip())?));
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|source| NodeAgentError::Bind {
            address: bind,
            source,
        })?;
    let port = listener
        .local_addr()
        .map_err(|source| NodeAgentError::Bind {
            address: bind,
            source,
        })?
        .port();
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet port: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, runtime) = (acceptor.clone(), runtime.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(stream).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "kubelet port: TLS handshake failed");
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |req| {
                    let runtime = runtime.clone();
                    async move { Ok::<_, Infallible>(handle(runtime, req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "kubelet port: connection ended");
                }
            });
        }
    });
    Ok((port, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_routes_read_follow_and_tail() {
        let r = route(
            "/containerLogs/ns/web-1/app",
            Some("follow=true&tailLines=5&timestamps=false"),
        );
        assert_eq!(
            r,
            Ok(Route::Logs {
                namespace: "ns".to_owned(),
                pod: "web-1".to_owned(),
                request: LogRequest {
                    container: Some("app".to_owned()),
                    tail_lines: Some(5),
                    follow: true,
                },
            })
        );
        assert_eq!(route("/healthz", None), Ok(Route::Healthz));
    }

    #[test]
    fn bad_and_unsupported_requests_say_why() {
        let code = |p: &str, q: Option<&str>| route(p, q).map_err(|(c, _)| c).err();
        assert_eq!(
            code("/containerLogs/ns/pod", None),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            code("/containerLogs/a/b/c", Some("tailLines=x")),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            code("/containerLogs/a/b/c", Some("previous=true")),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(code("/exec/a/b/c", None), Some(StatusCode::NOT_IMPLEMENTED));
        assert_eq!(code("/metrics", None), Some(StatusCode::NOT_FOUND));
    }
}
