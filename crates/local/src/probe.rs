//! Probes: HTTP GET, TCP connect and exec checks, and the pure threshold logic around them.
//!
//! [`LocalEngine`](crate::LocalEngine) probes its instances with these; other supervisors of
//! [`SupervisedProcess`](crate::process::SupervisedProcess)es (rorqual-kube's node agent) use
//! the same checks and thresholds.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use rorqual_core::model::{PortRef, PortSpec, Probe, ProbeAction};

/// Counts consecutive results against a probe's thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTracker {
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    passing: bool,
}

impl ProbeTracker {
    /// A tracker for `probe`, starting as `passing` (readiness starts failing, liveness passing).
    pub fn new(probe: &Probe, passing: bool) -> Self {
        ProbeTracker {
            success_threshold: probe.success_threshold.max(1),
            failure_threshold: probe.failure_threshold.max(1),
            successes: 0,
            failures: 0,
            passing,
        }
    }

    /// Records one result; returns the new state when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.passing && self.successes >= self.success_threshold {
                self.passing = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.passing && self.failures >= self.failure_threshold {
                self.passing = false;
                return Some(false);
            }
        }
        None
    }
}

/// Where a probe of one instance goes: its address, ports, and the working directory and
/// environment of exec probes.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub(crate) address: IpAddr,
    pub(crate) declared: Vec<PortSpec>,
    pub(crate) ports: BTreeMap<String, u16>,
    pub(crate) cwd: PathBuf,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) netns: Option<PathBuf>,
}

impl ProbeTarget {
    /// Probes `address`; `declared` are the instance's declared ports and `ports` the port to
    /// connect to for each declared port name; exec probes run in `cwd` with `env` (in the
    /// host's network namespace).
    pub fn new(
        address: IpAddr,
        declared: Vec<PortSpec>,
        ports: BTreeMap<String, u16>,
        cwd: PathBuf,
        env: BTreeMap<String, String>,
    ) -> Self {
        ProbeTarget {
            address,
            declared,
            ports,
            cwd,
            env,
            netns: None,
        }
    }

    /// Runs exec probes in the network namespace at `netns` (through `nsenter`).
    #[must_use]
    pub fn netns(mut self, netns: impl Into<PathBuf>) -> Self {
        self.netns = Some(netns.into());
        self
    }
}

/// The port to connect to for `port`: the attachment's port for that declared port.
pub(crate) fn resolve_port(
    declared: &[PortSpec],
    ports: &BTreeMap<String, u16>,
    port: &PortRef,
) -> Option<u16> {
    let name = match port {
        PortRef::Name(name) => name.as_str(),
        PortRef::Number(n) => declared.iter().find(|p| p.number == *n)?.name.as_str(),
    };
    ports.get(name).copied()
}

/// Reads an HTTP status code from the start of a response.
pub(crate) fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: rorqual-probe\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    match parse_status(&head) {
        Some(code) if (200..400).contains(&code) => Ok(()),
        Some(code) => Err(format!("GET http://{addr}{path}: status {code}")),
        None => Err(format!("GET http://{addr}{path}: no HTTP response")),
    }
}

async fn exec(command: &[String], target: &ProbeTarget) -> Result<(), String> {
    let argv = super::proc::argv(command, target.netns.as_deref());
    let Some((program, args)) = argv.split_first() else {
        return Err("exec probe has no command".to_owned());
    };
    let status = tokio::process::Command::new(program)
        .args(args)
        .envs(&target.env)
        .current_dir(&target.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("exec {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("exec {program}: {status}"))
    }
}

/// Runs one check of `probe` against `target`: `Err` says why it failed (a refused
/// connection, a status code, an exit status, a timeout).
pub async fn check(probe: &Probe, target: &ProbeTarget) -> Result<(), String> {
    let timeout = Duration::from_secs_f64(probe.timeout_seconds.max(0.001));
    let port_of = |port: &PortRef| {
        resolve_port(&target.declared, &target.ports, port)
            .map(|p| SocketAddr::new(target.address, p))
            .ok_or_else(|| format!("port {port} is not attached"))
    };
    let work = async {
        match &probe.action {
            ProbeAction::Http { path, port } => http_get(port_of(port)?, path).await,
            ProbeAction::Tcp { port } => {
                let addr = port_of(port)?;
                tokio::net::TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|e| format!("connect {addr}: {e}"))
            }
            ProbeAction::Exec { command } => exec(command, target).await,
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

/// Runs `probe` (a liveness probe) against `target` until it fails for good (its failure
/// threshold), and returns the last failure; never returns without a probe. Shared by every
/// supervisor of a container (LocalEngine, the node agent).
pub async fn liveness(probe: Option<&Probe>, target: &ProbeTarget) -> String {
    let Some(probe) = probe else {
        return std::future::pending().await;
    };
    tokio::time::sleep(Duration::from_secs_f64(probe.initial_delay_seconds)).await;
    let mut tracker = ProbeTracker::new(probe, true);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(probe.period_seconds));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = String::new();
    loop {
        tick.tick().await;
        let result = check(probe, target).await;
        if let Err(e) = &result {
            last_error.clone_from(e);
        }
        if tracker.record(result.is_ok()) == Some(false) {
            return last_error;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rorqual_core::model::Protocol;

    #[test]
    fn thresholds_gate_transitions() {
        let probe = Probe::tcp(80).failure_threshold(2);
        let mut t = ProbeTracker::new(&probe, false);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(false), None, "one failure is below the threshold");
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
    }

    #[test]
    fn ports_resolve_by_name_or_number() {
        let declared = vec![PortSpec {
            name: "http".into(),
            number: 8080,
            protocol: Protocol::Tcp,
        }];
        let ports = BTreeMap::from([("http".to_owned(), 21000)]);
        assert_eq!(
            resolve_port(&declared, &ports, &PortRef::Number(8080)),
            Some(21000)
        );
        assert_eq!(resolve_port(&declared, &ports, &"http".into()), Some(21000));
        assert_eq!(resolve_port(&declared, &ports, &PortRef::Number(9)), None);
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 500 x\r\n"), Some(500));
        assert_eq!(parse_status(b"SSH-2.0\r\n"), None);
    }
}
