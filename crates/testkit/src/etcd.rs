//! A single-member etcd (Debian's `etcd-server`) for the etcd store's tests and bench, on
//! loopback ports in a temporary data directory.
//!
//! Ports come from below the kernel's ephemeral range (`free_loopback_port`), so a client
//! connection elsewhere in the test run cannot take one between the probe and etcd's bind. If etcd still exits early or
//! does not answer, it is started again on new ports; after the last attempt the panic carries
//! the tail of etcd's own log.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ATTEMPTS: u32 = 3;
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running etcd, killed on drop.
#[derive(Debug)]
pub struct LocalEtcd {
    child: Child,
    /// Its client URL (`http://127.0.0.1:PORT`).
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The etcd binary, if installed.
fn etcd_binary() -> Option<&'static str> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// Whether etcd at `url` answers its health endpoint with `"health":"true"`.
async fn etcd_healthy(url: &str) -> bool {
    let Ok(response) = reqwest::get(format!("{url}/health")).await else {
        return false;
    };
    response
        .text()
        .await
        .is_ok_and(|body| body.contains(r#""health":"true""#))
}

/// The last `lines` lines of `path`.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl LocalEtcd {
    /// Starts etcd and waits until it answers; `None` (after saying why) when etcd is not
    /// installed outside CI. Panics, with etcd's log, when it does not come up.
    pub async fn start() -> Option<LocalEtcd> {
        let Some(bin) = etcd_binary() else {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "CI=true but etcd is not installed"
            );
            println!("skipped: etcd is not installed (apt-get install etcd-server)");
            return None;
        };
        let mut failures = Vec::new();
        for attempt in 1..=ATTEMPTS {
            match Self::try_start(bin).await {
                Ok(etcd) => return Some(etcd),
                Err(why) => failures.push(format!("attempt {attempt}: {why}")),
            }
        }
        panic!("etcd did not start:\n{}", failures.join("\n"));
    }

    async fn try_start(bin: &str) -> Result<LocalEtcd, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let port = rorqual_local::free_loopback_port;
        let (client, peer) = (
            port().map_err(|e| format!("client port: {e}"))?,
            port().map_err(|e| format!("peer port: {e}"))?,
        );
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = dir.path().join("etcd.log");
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(bin)
            .args(["--name", "rq", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &url])
            .args(["--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("rq={peer_url}")])
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("spawning {bin}: {e}"))?;
        let mut etcd = LocalEtcd {
            child,
            url,
            _dir: dir,
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if etcd_healthy(&etcd.url).await && matches!(etcd.child.try_wait(), Ok(None)) {
                return Ok(etcd);
            }
            if let Ok(Some(status)) = etcd.child.try_wait() {
                return Err(format!(
                    "etcd at {} exited with {status}; its log ends:\n{}",
                    etcd.url,
                    tail(&log, 15)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "etcd at {} did not answer within {READY_WITHIN:?}; its log ends:\n{}",
                    etcd.url,
                    tail(&log, 15)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
