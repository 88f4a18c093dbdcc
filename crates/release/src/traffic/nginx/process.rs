//! The nginx process: validating a config (`nginx -t`), starting the master on the shared
//! supervisor ([`rorqual_local::process`]), reloading it (SIGHUP) and waiting until the new
//! config alone serves, and stopping it.
//!
//! Waiting for a reload uses what nginx itself reports: the control server answers the config
//! version a worker serves, and the error log (at `notice`) names every worker the master
//! starts (`start worker process N`) and every worker that stops accepting
//! (`N#N: gracefully shutting down`, `exiting`, `worker process N exited`). Only the new
//! lines of the log are read on each poll; no process table is scanned.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rorqual_local::process::{ProcessSpec, Signal, SupervisedProcess};

use super::render::{Features, VERSION_PATH};
use crate::traffic::TrafficError;
use rorqual_core::model::AppKey;

/// How long a reload may take before it counts as failed.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`NginxProcess::shutdown`] lets nginx stop its workers before killing the group.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The first and the longest pause between two looks while waiting for a config version.
const POLL_FIRST: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(20);

/// The modules this nginx build was configured without (`nginx -V`).
pub(super) fn probe_features(binary: &Path) -> Features {
    match std::process::Command::new(binary).arg("-V").output() {
        Ok(o) => Features::from_configure_args(&String::from_utf8_lossy(&o.stderr)),
        Err(_) => Features::default(),
    }
}

/// One nginx master (when running) under a prefix, and what its error log said about its
/// workers.
#[derive(Debug)]
pub(super) struct NginxProcess {
    binary: PathBuf,
    prefix: PathBuf,
    worker_processes: u32,
    version_url: String,
    /// No pooled connections: a kept-alive connection would stay with an old worker, which
    /// answers the old version until it exits.
    client: reqwest::Client,
    master: Option<SupervisedProcess>,
    log: ErrorLog,
}

impl NginxProcess {
    pub(super) fn new(
        binary: PathBuf,
        prefix: PathBuf,
        control: std::net::SocketAddr,
        worker_processes: u32,
    ) -> Result<Self, TrafficError> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| TrafficError::Io {
                context: "building the HTTP client for the nginx control server".into(),
                source: std::io::Error::other(e),
            })?;
        let log = ErrorLog::new(prefix.join("logs/error.log"));
        Ok(NginxProcess {
            binary,
            prefix,
            worker_processes,
            version_url: format!("http://{control}{VERSION_PATH}"),
            client,
            master: None,
            log,
        })
    }

    /// Whether the master is running.
    pub(super) fn is_running(&mut self) -> bool {
        self.master
            .as_mut()
            .is_some_and(SupervisedProcess::is_running)
    }

    /// `nginx -t` on `file`; `app` names the application for the error.
    pub(super) async fn validate(&self, file: &Path, app: &AppKey) -> Result<(), TrafficError> {
        let out = tokio::process::Command::new(&self.binary)
            .arg("-p")
            .arg(&self.prefix)
            .arg("-e")
            .arg(&self.log.path)
            .arg("-t")
            .arg("-c")
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|source| TrafficError::Io {
                context: format!("running {} -t", self.binary.display()),
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason = stderr
            .lines()
            .filter(|l| l.contains("[emerg]") || l.contains("[alert]") || l.contains("failed"))
            .collect::<Vec<_>>()
            .join("; ");
        Err(TrafficError::ValidationFailed {
            router: "nginx".into(),
            app: app.to_string(),
            reason: if reason.is_empty() {
                stderr.trim().to_owned()
            } else {
                reason
            },
        })
    }

    /// Starts the master on `config` and waits until it serves `version`; on failure the
    /// master is killed.
    pub(super) async fn start(&mut self, config: &Path, version: u64) -> Result<(), String> {
        self.log.skip_to_end().await;
        let spec = ProcessSpec::new(&self.binary)
            .arg("-p")
            .arg(&self.prefix)
            .arg("-e")
            .arg(&self.log.path)
            .arg("-c")
            .arg(config)
            .log(self.prefix.join("logs/master.out"));
        let master = SupervisedProcess::spawn(&spec)
            .map_err(|e| format!("starting {}: {e}", self.binary.display()))?;
        self.master = Some(master);
        let result = self.await_version(version, &BTreeSet::new()).await;
        if result.is_err()
            && let Some(mut master) = self.master.take()
        {
            master.stop(Duration::ZERO).await;
        }
        result
    }

    /// SIGHUP to the master, then waits until it serves `version` alone.
    pub(super) async fn reload(&mut self, version: u64) -> Result<(), String> {
        // Catch up on the log first: the workers accepting now are the ones to retire.
        if let Some(line) = self.log.read_new().await {
            tracing::debug!(%line, "nginx logged an error before the reload");
        }
        let old = self.log.accepting.clone();
        self.signal(Signal::SIGHUP)?;
        self.await_version(version, &old).await
    }

    /// The config version nginx's workers serve now, as its control server answers it.
    pub(super) async fn served_version(&self) -> Result<u64, String> {
        let resp = self
            .client
            .get(&self.version_url)
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .map_err(|e| format!("asking nginx's control server {}: {e}", self.version_url))?;
        let text = resp
            .text()
            .await
            .map_err(|e| format!("reading nginx's control server answer: {e}"))?;
        text.trim().parse().map_err(|_| {
            format!(
                "nginx's control server {} answered {:?}, not a config version",
                self.version_url,
                text.trim()
            )
        })
    }

    /// Sends `signal` to the master.
    pub(super) fn signal(&mut self, signal: Signal) -> Result<(), String> {
        let master = self.master.as_mut().ok_or("nginx master is not running")?;
        master
            .signal(signal)
            .map_err(|e| format!("signalling the nginx master: {e}"))
    }

    /// Stops nginx (fast shutdown: SIGTERM to its process group, SIGKILL after 5 s) and waits
    /// for it.
    pub(super) async fn shutdown(&mut self) {
        if let Some(mut master) = self.master.take() {
            let exit = master.stop(SHUTDOWN_GRACE).await;
            tracing::debug!(%exit, "nginx stopped");
        }
    }

    /// Starts a fast shutdown without waiting (SIGTERM to the group), for `Drop`.
    pub(super) fn terminate(&mut self) {
        if let Some(mut master) = self.master.take() {
            master.terminate();
        }
    }

    /// Waits until nginx serves `version` alone: the control server answers it, none of
    /// `old` (the workers accepting before a reload) still accepts, and no more workers accept
    /// than `worker_processes` (a reload still pending from before leaves a third generation
    /// that `old` does not name). nginx lets old and new workers accept side by side for a
    /// moment after a reload. Fails on an `[emerg]`/`[alert]` in the error log, on the master
    /// exiting, or after the timeout.
    async fn await_version(&mut self, version: u64, old: &BTreeSet<i32>) -> Result<(), String> {
        let want = version.to_string();
        let deadline = tokio::time::Instant::now() + RELOAD_TIMEOUT;
        let mut pause = POLL_FIRST;
        let mut serving = false;
        loop {
            if !serving
                && let Ok(resp) = self
                    .client
                    .get(&self.version_url)
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                && let Ok(text) = resp.text().await
            {
                serving = text.trim() == want;
            }
            if let Some(line) = self.log.read_new().await {
                return Err(line);
            }
            if serving && self.log.only_new_workers(old, self.worker_processes) {
                return Ok(());
            }
            if !self.is_running() {
                return Err(format!(
                    "nginx exited while loading config version {version}; see {}",
                    self.log.path.display()
                ));
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(format!(
                    "nginx did not serve config version {version} within {RELOAD_TIMEOUT:?}"
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
        }
    }
}

/// nginx's error log, read incrementally: the first new `[emerg]`/`[alert]` line and the
/// workers that accept connections.
#[derive(Debug)]
struct ErrorLog {
    path: PathBuf,
    /// Where the next read starts: after the last complete line read.
    offset: u64,
    /// Workers started and not yet shutting down or gone.
    accepting: BTreeSet<i32>,
}

impl ErrorLog {
    fn new(path: PathBuf) -> Self {
        ErrorLog {
            path,
            offset: 0,
            accepting: BTreeSet::new(),
        }
    }

    /// Forgets what was logged so far (before a new master starts).
    async fn skip_to_end(&mut self) {
        self.offset = tokio::fs::metadata(&self.path)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        self.accepting.clear();
    }

    /// Reads the complete lines logged since the last read, following worker starts and
    /// shutdowns; returns the first `[emerg]`/`[alert]` among them.
    async fn read_new(&mut self) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = tokio::fs::File::open(&self.path).await.ok()?;
        let len = file.metadata().await.ok()?.len();
        if len < self.offset {
            // Truncated or replaced: start over.
            self.offset = 0;
        }
        if len == self.offset {
            return None;
        }
        file.seek(std::io::SeekFrom::Start(self.offset))
            .await
            .ok()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).await.ok()?;
        // A line still being written is read next time.
        let complete = bytes.iter().rposition(|&b| b == b'\n')? + 1;
        self.offset += complete as u64;
        let text = String::from_utf8_lossy(&bytes[..complete]);
        track_workers(&text, &mut self.accepting)
    }

    fn only_new_workers(&self, old: &BTreeSet<i32>, worker_processes: u32) -> bool {
        self.accepting.is_disjoint(old)
            && self.accepting.len() <= usize::try_from(worker_processes).unwrap_or(usize::MAX)
    }
}

/// Follows `text` (complete error-log lines) into `accepting`, the workers that accept
/// connections; returns the first `[emerg]`/`[alert]` line.
fn track_workers(text: &str, accepting: &mut BTreeSet<i32>) -> Option<String> {
    let mut error = None;
    for line in text.lines() {
        if error.is_none() && (line.contains("[emerg]") || line.contains("[alert]")) {
            error = Some(line.trim().to_owned());
        }
        // `2024/01/01 12:00:00 [notice] 10328#10328: message`
        let Some((who, message)) = line
            .split_once("] ")
            .and_then(|(_, rest)| rest.split_once(": "))
        else {
            continue;
        };
        let pid = |s: &str| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok();
        if let Some(worker) = message.strip_prefix("start worker process ").and_then(pid) {
            accepting.insert(worker);
        } else if let Some(worker) = message.strip_prefix("worker process ").and_then(pid) {
            // `worker process N exited with code 0` / `exited on signal 9`
            if message.contains(" exited") {
                accepting.remove(&worker);
            }
        } else if message == "gracefully shutting down" || message == "exiting" {
            // Logged by the worker itself as it closes its listening sockets.
            if let Some(worker) = pid(who) {
                accepting.remove(&worker);
            }
        }
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "\
2026/12/07 11:31:56 [notice] 10328#10328: using the \"epoll\" event method
2026/12/07 11:31:56 [notice] 10328#10328: start worker processes
2026/12/07 11:31:56 [notice] 10328#10328: start worker process 10331
2026/12/07 11:31:56 [notice] 10328#10328: start worker process 10332
";

    const RELOAD: &str = "\
2026/12/07 11:31:56 [notice] 10328#10328: signal 1 (SIGHUP) received from 10321, reconfiguring
2026/12/07 11:31:56 [notice] 10328#10328: reconfiguring
2026/12/07 11:31:56 [notice] 10328#10328: start worker process 10361
2026/12/07 11:31:56 [notice] 10328#10328: start worker process 10362
2026/12/07 11:31:57 [notice] 10331#10331: gracefully shutting down
";

    #[test]
    fn follows_worker_generations_through_a_reload() {
        let mut accepting = BTreeSet::new();
        assert_eq!(track_workers(START, &mut accepting), None);
        assert_eq!(accepting, BTreeSet::from([10331, 10332]));
        let old = accepting.clone();
        track_workers(RELOAD, &mut accepting);
        // 10332 has not logged its shutdown yet: old and new workers still accept side by side.
        assert_eq!(accepting, BTreeSet::from([10332, 10361, 10362]));
        let log = ErrorLog {
            path: PathBuf::new(),
            offset: 0,
            accepting: accepting.clone(),
        };
        assert!(!log.only_new_workers(&old, 2));
        track_workers(
            "2026/12/07 11:31:57 [notice] 10328#10328: worker process 10332 exited on signal 9\n",
            &mut accepting,
        );
        let log = ErrorLog { accepting, ..log };
        assert!(log.only_new_workers(&old, 2));
    }

    #[test]
    fn reports_the_first_emergency() {
        let text = "2026/12/07 11:31:56 [emerg] 10328#10328: bind() to 127.0.0.1:8080 failed (98: Address already in use)\n\
                    2026/12/07 11:31:56 [emerg] 10328#10328: still could not bind()\n";
        let line = track_workers(text, &mut BTreeSet::new()).unwrap_or_default();
        assert!(line.contains("bind() to 127.0.0.1:8080 failed"), "{line}");
    }
}
