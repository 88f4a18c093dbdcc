//! The demo workload: a small HTTP app for examples, tests and benchmarks.
//!
//! It serves its version, a health check and Prometheus metrics, with a configurable error rate
//! and startup delay, so release strategies and analyses have something real to watch:
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | `200` with body `<version>\n` and header `X-Version`, or `500` for the configured error fraction |
//! | `GET /healthz` | `200 ok` |
//! | `GET /metrics` | `demo_http_requests_total{code="200"} N`, `demo_http_requests_total{code="500"} M` (requests to `/` only), `demo_info{version="v1"} 1` |
//!
//! Configuration comes from the environment ([`DemoConfig::from_env`]): `PORT` (required),
//! `INSTANCE_IP` or else `POD_IP` (bind address, default `127.0.0.1`), `DEMO_VERSION` (default `v1`),
//! `DEMO_ERROR_RATE` (0.0–1.0, default 0) and `DEMO_STARTUP_DELAY_MS` (default 0). SIGTERM or
//! SIGINT stops it gracefully.
//!
//! The binary `rorqual-demo` runs it; an example can also re-execute itself in app mode and
//! call [`run_from_env`].
//!
//! ```
//! use rorqual_testkit::demo::fails;
//! // With a 25% error rate exactly every fourth request fails.
//! let failed: Vec<u64> = (1..=8).filter(|&n| fails(n, 0.25)).collect();
//! assert_eq!(failed, [4, 8]);
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The demo app's configuration.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DemoConfig {
    /// The port to listen on.
    pub port: u16,
    /// The address to bind.
    pub bind: IpAddr,
    /// The version served on `/`.
    pub version: String,
    /// Fraction (0.0–1.0) of `GET /` requests answered with 500.
    pub error_rate: f64,
    /// How long to wait before listening.
    pub startup_delay: Duration,
}

/// A bad demo configuration: which variable and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("demo app: {variable}: {message}")]
pub struct DemoConfigError {
    /// The environment variable.
    pub variable: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl DemoConfig {
    /// A configuration listening on 127.0.0.1:`port`, version `v1`, no errors, no delay.
    pub fn new(port: u16) -> Self {
        DemoConfig {
            port,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            version: "v1".to_owned(),
            error_rate: 0.0,
            startup_delay: Duration::ZERO,
        }
    }

    /// Sets the version.
    #[must_use]
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Sets the error rate.
    #[must_use]
    pub fn error_rate(mut self, rate: f64) -> Self {
        self.error_rate = rate;
        self
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, DemoConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `lookup` (a variable name to its value).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, DemoConfigError> {
        let bad = |variable: &'static str, message: String| DemoConfigError { variable, message };
        let port_text = lookup("PORT").ok_or_else(|| bad("PORT", "is required".to_owned()))?;
        let port = match port_text.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(bad("PORT", format!("must be 1-65535, got {port_text:?}"))),
        };
        let mut config = DemoConfig::new(port);
        // `INSTANCE_IP` (rorqual's engines), else `POD_IP` (the node agent's pods).
        for variable in ["INSTANCE_IP", "POD_IP"] {
            if let Some(ip) = lookup(variable).filter(|s| !s.is_empty()) {
                config.bind = ip
                    .parse()
                    .map_err(|_| bad(variable, format!("not an IP address: {ip:?}")))?;
                break;
            }
        }
        if let Some(v) = lookup("DEMO_VERSION").filter(|s| !s.is_empty()) {
            config.version = v;
        }
        if let Some(rate) = lookup("DEMO_ERROR_RATE").filter(|s| !s.is_empty()) {
            config.error_rate = match rate.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => {
                    return Err(bad(
                        "DEMO_ERROR_RATE",
                        format!("must be a number in 0.0-1.0, got {rate:?}"),
                    ));
                }
            };
        }
        if let Some(ms) = lookup("DEMO_STARTUP_DELAY_MS").filter(|s| !s.is_empty()) {
            let ms = ms.trim().parse::<u64>().map_err(|_| {
                bad(
                    "DEMO_STARTUP_DELAY_MS",
                    format!("must be a whole number of milliseconds, got {ms:?}"),
                )
            })?;
            config.startup_delay = Duration::from_millis(ms);
        }
        Ok(config)
    }
}

/// Whether request number `n` (counting from 1) fails at error rate `rate`: deterministic, so
/// that after `n` requests exactly `floor(n * rate)` have failed.
pub fn fails(n: u64, rate: f64) -> bool {
    if rate <= 0.0 || n == 0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    // Precision loss is irrelevant for request counts below 2^52.
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    let failed = |k: u64| ((k as f64) * rate).floor() as u64;
    failed(n) > failed(n - 1)
}

#[derive(Debug)]
struct Counters {
    version: String,
    error_rate: f64,
    requests: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
}

/// The demo app's routes, without a server (for tests that call it in-process).
pub fn router(config: &DemoConfig) -> Router {
    let counters = Arc::new(Counters {
        version: config.version.clone(),
        error_rate: config.error_rate,
        requests: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    Router::new()
        .route("/", get(root))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .with_state(counters)
}

async fn root(State(c): State<Arc<Counters>>) -> Response {
    let n = c.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let version = HeaderValue::from_str(&c.version).unwrap_or(HeaderValue::from_static("invalid"));
    if fails(n, c.error_rate) {
        c.errors.fetch_add(1, Ordering::Relaxed);
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("x-version", version)],
            "injected error\n",
        )
            .into_response()
    } else {
        c.ok.fetch_add(1, Ordering::Relaxed);
        (
            StatusCode::OK,
            [("x-version", version)],
            format!("{}\n", c.version),
        )
            .into_response()
    }
}

async fn metrics(State(c): State<Arc<Counters>>) -> Response {
    let body = format!(
        "# HELP demo_http_requests_total Requests to / by status code.\n\
         # TYPE demo_http_requests_total counter\n\
         demo_http_requests_total{{code=\"200\"}} {}\n\
         demo_http_requests_total{{code=\"500\"}} {}\n\
         # HELP demo_info The demo app's version.\n\
         # TYPE demo_info gauge\n\
         demo_info{{version=\"{}\"}} 1\n",
        c.ok.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        c.version.replace('\\', "\\\\").replace('"', "\\\""),
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        body,
    )
        .into_response()
}

/// Serves the demo app until SIGTERM or SIGINT.
pub async fn serve(config: DemoConfig) -> std::io::Result<()> {
    if !config.startup_delay.is_zero() {
        tokio::time::sleep(config.startup_delay).await;
    }
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(config.bind, config.port))
        .await
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "demo app: cannot listen on {}:{}: {e}",
                    config.bind, config.port
                ),
            )
        })?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    axum::serve(listener, router(&config))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Runs the demo app from the environment on a single-threaded runtime: what the
/// `rorqual-demo` binary (and examples re-executed in app mode) do. Returns the exit code.
pub fn run_from_env() -> std::process::ExitCode {
    let config = match DemoConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo app: cannot start a runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rate_is_exact_and_deterministic() {
        for rate in [0.0, 0.1, 0.25, 0.5, 1.0] {
            let failed = (1..=100).filter(|&n| fails(n, rate)).count();
            assert_eq!(failed as f64, (100.0 * rate).floor(), "rate {rate}");
        }
    }

    #[test]
    fn config_from_env_names_the_bad_variable() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let err = DemoConfig::from_lookup(env(&[])).unwrap_err();
        assert_eq!(err.to_string(), "demo app: PORT: is required");
        let err =
            DemoConfig::from_lookup(env(&[("PORT", "80"), ("DEMO_ERROR_RATE", "2")])).unwrap_err();
        assert_eq!(err.variable, "DEMO_ERROR_RATE");
        let c = DemoConfig::from_lookup(env(&[
            ("PORT", "8080"),
            ("INSTANCE_IP", "127.0.0.2"),
            ("DEMO_VERSION", "v2"),
            ("DEMO_ERROR_RATE", "0.5"),
            ("DEMO_STARTUP_DELAY_MS", "20"),
        ]))
        .unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.bind.to_string(), "127.0.0.2");
        assert_eq!(c.version, "v2");
        assert_eq!(c.error_rate, 0.5);
        assert_eq!(c.startup_delay, Duration::from_millis(20));
    }
}
