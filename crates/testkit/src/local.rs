//! Helpers shared by the LocalEngine integration tests (real processes on loopback).

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rorqual_core::engine::{Engine, EventStream};
use rorqual_core::model::{AppKey, AppSpec, ContainerSpec, Event, Instance, Probe};
use rorqual_local::HostNetwork;
use rorqual_local::{LocalEngine, LocalEngineBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::demo_bin;

/// A builder with short backoffs and its own host port range (tests run in parallel).
pub fn builder(dir: &Path, first_port: u16) -> LocalEngineBuilder {
    LocalEngine::builder()
        .nodes(3)
        .state_dir(dir)
        .network(Arc::new(HostNetwork::with_port_range(
            first_port..=first_port + 499,
        )))
        .restart_backoff(Duration::from_millis(100), Duration::from_secs(2))
        .adopted_poll_interval(Duration::from_millis(50))
}

/// The demo app, probed every 100 ms.
pub fn demo(name: &str) -> AppSpec {
    AppSpec::new(
        name,
        vec![
            ContainerSpec::new("app", [demo_bin()])
                .port("http", 8080)
                .readiness(Probe::http("/healthz", "http").period(0.1)),
        ],
    )
    .grace_period_seconds(5)
}

/// Polls `check` every 50 ms until it returns `Some`, failing after `secs` seconds.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `app` has `n` instances, all ready, and returns them.
pub async fn all_ready(engine: &dyn Engine, app: &AppKey, n: usize) -> Vec<Instance> {
    wait_for(60, &format!("{n} ready instances of {app}"), || async {
        let list = engine.instances(app).await.unwrap();
        (list.len() == n && list.iter().all(|i| i.ready)).then_some(list)
    })
    .await
}

/// One HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((status, body))
}

/// Whether `pid` is a live (non-zombie) process.
pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        !matches!(state, Some("Z" | "X"))
    })
}

/// `kill -9 pid`, as a user would from a shell.
pub fn kill9(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -9 {pid} failed");
}

/// Collects events from `stream` in the background.
pub fn record_events(mut stream: EventStream) -> Arc<std::sync::Mutex<Vec<Event>>> {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = log.clone();
    tokio::spawn(async move {
        while let Some(e) = stream.next().await {
            sink.lock().unwrap().push(e);
        }
    });
    log
}

/// The events recorded so far, as `reason instance: message` lines.
pub fn event_lines(log: &std::sync::Mutex<Vec<Event>>) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}: {}",
                e.reason,
                e.instance.clone().unwrap_or_default(),
                e.message
            )
        })
        .collect()
}

/// Waits until a recorded event line satisfies `matches`; returns every line by then.
pub async fn wait_event(
    log: &std::sync::Mutex<Vec<Event>>,
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> Vec<String> {
    wait_for(30, &format!("event {what}"), || async {
        let lines = event_lines(log);
        lines.iter().any(|l| matches(l)).then_some(lines)
    })
    .await
}

/// Kills the processes an engine recorded in `dir` when the test panics (a passing test shuts
/// its engine down; a failing one must not leave processes behind either).
#[derive(Debug)]
pub struct Reaper(pub std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        if let Some(state) = newest_engine_state(&self.0) {
            let Some(instances) = state["instances"].as_object() else {
                return;
            };
            for instance in instances.values() {
                for c in instance["containers"].as_array().into_iter().flatten() {
                    if let Some(pid) = c["process"]["pid"].as_i64() {
                        let _ = std::process::Command::new("kill")
                            .args(["-9", "--", &format!("-{pid}")])
                            .status();
                    }
                }
            }
        }
    }
}

/// The newest engine state recorded in a state directory: of the slots (`engine.0` to
/// `engine.2`: a header line with `seq=N`, then the JSON) the one with the higher sequence
/// number that parses, else an earlier version's `engine.json`.
pub fn newest_engine_state(dir: &Path) -> Option<serde_json::Value> {
    let first_json = |bytes: &[u8]| {
        // A slot may hold bytes of a longer earlier state past its body.
        serde_json::Deserializer::from_slice(bytes)
            .into_iter::<serde_json::Value>()
            .next()
            .and_then(Result::ok)
    };
    let slot = ["engine.0", "engine.1", "engine.2"]
        .iter()
        .filter_map(|name| std::fs::read(dir.join(name)).ok())
        .filter_map(|bytes| {
            let end = bytes.iter().position(|&b| b == b'\n')?;
            let header = std::str::from_utf8(&bytes[..end]).ok()?;
            let seq: u64 = header
                .split(' ')
                .find_map(|f| f.strip_prefix("seq="))?
                .parse()
                .ok()?;
            Some((seq, first_json(&bytes[end + 1..])?))
        })
        .max_by_key(|(seq, _)| *seq)
        .map(|(_, state)| state);
    slot.or_else(|| first_json(&std::fs::read(dir.join("engine.json")).ok()?))
}
