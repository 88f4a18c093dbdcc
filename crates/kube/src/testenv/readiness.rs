//! Waiting for each program to answer: etcd's `/health`, the apiserver's `/readyz`, the
//! controller-manager's and scheduler's `/healthz`. A program that exits, or does not answer in
//! time, is reported with the last lines of its log.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Error;
use super::process::ChildProcess;

/// Lines of a program's log quoted in an error.
pub(crate) const LOG_LINES: usize = 25;

/// Polls `probe` every 100 ms until it succeeds; fails when `process` exits or `timeout`
/// passes, quoting the last answer and the log.
pub(crate) async fn wait_ready<F, Fut>(
    process: &mut ChildProcess,
    url: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    loop {
        if let Some(status) = process.exited() {
            return Err(Error::Exited {
                component: process.component(),
                status: status.to_string(),
                log_tail: process.log_tail(LOG_LINES),
            });
        }
        let last = match tokio::time::timeout(Duration::from_secs(5), probe()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(why)) => why,
            Err(_) => "the probe took longer than 5s".to_owned(),
        };
        if started.elapsed() >= timeout {
            return Err(Error::NotReady {
                component: process.component(),
                url: url.to_owned(),
                waited: timeout,
                last,
                log_tail: process.log_tail(LOG_LINES),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// etcd's `/health` over plain HTTP/1.0 on loopback: healthy when the body says
/// `"health":"true"`.
pub(crate) async fn etcd_health(port: u16) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .map_err(|e| format!("sending: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    if answer.contains(r#""health":"true""#) {
        Ok(())
    } else {
        Err(format!(
            "answered: {}",
            answer.lines().last().unwrap_or_default()
        ))
    }
}

/// `GET path` through `client`: ready when the answer is `ok`.
pub(crate) async fn http_ok(client: &kube::Client, path: &str) -> Result<(), String> {
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match client.request_text(request).await {
        Ok(body) if body.trim() == "ok" => Ok(()),
        Ok(body) => Err(format!("answered: {}", body.trim())),
        Err(e) => Err(e.to_string()),
    }
}

/// A client for a component's own HTTPS port (`/healthz` is always allowed): its serving
/// certificate is self-signed in memory, so it is not verified; nothing secret is sent.
pub(crate) fn component_client(port: u16) -> Result<kube::Client, Error> {
    let url: http::Uri =
        format!("https://127.0.0.1:{port}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| Error::Io {
                context: format!("health URL for port {port}"),
                source: std::io::Error::other(e),
            })?;
    let mut config = kube::Config::new(url);
    config.accept_invalid_certs = true;
    config.connect_timeout = Some(Duration::from_secs(2));
    kube::Client::try_from(config).map_err(|source| Error::Kube {
        context: format!("building a health client for 127.0.0.1:{port}"),
        source,
    })
}
