//! A real Prometheus (Debian's `prometheus` binary) for tests and examples: started on a
//! loopback port with its storage in a temporary directory, scraping the jobs it is given,
//! queried through its HTTP API, and killed (and reaped) when dropped.
//!
//! The port comes from [`free_loopback_port`](crate::free_loopback_port); if another process
//! takes it before Prometheus binds, Prometheus is started again on a new port (like
//! [`etcd`](crate::etcd)). Any other failure quotes the end of Prometheus's own log.
//!
//! ```no_run
//! use std::time::Duration;
//! use rorqual_testkit::prometheus::LocalPrometheus;
//!
//! # async fn run() -> Result<(), rorqual_testkit::prometheus::PrometheusError> {
//! // In a test: `None` (after printing why) when prometheus is not installed, unless CI=true.
//! let Some(prometheus) = LocalPrometheus::builder()
//!     .scrape("demo", ["127.0.0.1:9898"], Duration::from_secs(1))
//!     .start_or_skip()
//!     .await
//! else {
//!     return Ok(());
//! };
//! let up = prometheus.wait_for_series("up{job=\"demo\"} == 1", Duration::from_secs(30)).await?;
//! println!("prometheus at {}: {up:?}", prometheus.url());
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Starts attempted when the port was taken before Prometheus could bind it.
const ATTEMPTS: u32 = 3;
/// How long Prometheus may take to answer `/-/ready`.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Lines of Prometheus's log quoted in errors.
const LOG_LINES: usize = 20;

/// Why Prometheus could not be started or queried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrometheusError {
    /// No `prometheus` binary on `PATH` or in `/usr/bin`.
    #[error("prometheus is not installed (apt-get install prometheus; scripts/test installs it)")]
    NotInstalled,
    /// Its directory, configuration or log file could not be written.
    #[error("cannot prepare prometheus's files in {}", path.display())]
    Setup {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It exited, or did not become ready, on every attempt.
    #[error("prometheus did not start:\n{attempts}")]
    Start {
        /// What happened on each attempt, with the end of its log.
        attempts: String,
    },
    /// The HTTP request to its API failed.
    #[error("querying prometheus at {url} for `{query}` failed")]
    Request {
        /// Its URL.
        url: String,
        /// The PromQL query.
        query: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// It answered, but not with `"status": "success"` (a malformed query, say).
    #[error("prometheus rejected `{query}`: {answer}")]
    Rejected {
        /// The PromQL query.
        query: String,
        /// Its answer.
        answer: String,
    },
    /// The query returned no series within the timeout.
    #[error(
        "no series for `{query}` within {timeout:?}; last answer: {last}\nprometheus's log ends:\n{log}"
    )]
    NoSeries {
        /// The PromQL query.
        query: String,
        /// How long it waited.
        timeout: Duration,
        /// The last answer (or error).
        last: String,
        /// The end of Prometheus's log.
        log: String,
    },
}

impl PrometheusError {
    /// Whether trying again cannot help (not installed, a rejected query).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            PrometheusError::NotInstalled | PrometheusError::Rejected { .. }
        )
    }
}

/// Where a scrape job finds its targets.
#[derive(Debug, Clone)]
enum Targets {
    /// A fixed list of `host:port`.
    Static(Vec<String>),
    /// A file-based service discovery file (JSON target groups), re-read at the job's interval.
    File(PathBuf),
}

/// One scrape job.
#[derive(Debug, Clone)]
struct ScrapeJob {
    name: String,
    targets: Targets,
    interval: Duration,
}

/// Configures a [`LocalPrometheus`]: its scrape jobs.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct LocalPrometheusBuilder {
    jobs: Vec<ScrapeJob>,
}

impl LocalPrometheusBuilder {
    /// Adds the scrape job `job` for `targets` (`host:port`, scraped at `/metrics`) every
    /// `interval` (the scrape timeout is the interval too).
    pub fn scrape<I, T>(mut self, job: &str, targets: I, interval: Duration) -> Self
    where
        I: IntoIterator<Item = T>,
        T: ToString,
    {
        self.jobs.push(ScrapeJob {
            name: job.to_owned(),
            targets: Targets::Static(targets.into_iter().map(|t| t.to_string()).collect()),
            interval,
        });
        self
    }

    /// Adds the scrape job `job` whose targets are in `file`: a JSON list of target groups
    /// (`[{"targets": ["host:port"], "labels": {...}}]`) that Prometheus re-reads every
    /// `interval`, so the caller can change the targets while it runs. The file must exist
    /// before [`start`](Self::start) (`[]` for none yet).
    pub fn scrape_file(mut self, job: &str, file: impl Into<PathBuf>, interval: Duration) -> Self {
        self.jobs.push(ScrapeJob {
            name: job.to_owned(),
            targets: Targets::File(file.into()),
            interval,
        });
        self
    }

    /// The configuration file's contents (JSON, which is YAML too).
    fn config(&self) -> Value {
        let jobs: Vec<Value> = self
            .jobs
            .iter()
            .map(|job| {
                let interval = format!("{}ms", job.interval.as_millis().max(1));
                let mut value = json!({
                    "job_name": job.name,
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                });
                match &job.targets {
                    Targets::Static(targets) => {
                        value["static_configs"] = json!([{ "targets": targets }]);
                    }
                    Targets::File(file) => {
                        value["file_sd_configs"] = json!([{
                            "files": [file.display().to_string()],
                            "refresh_interval": interval,
                        }]);
                    }
                }
                value
            })
            .collect();
        json!({
            "global": { "evaluation_interval": "1s" },
            "scrape_configs": jobs,
        })
    }

    /// Starts Prometheus and waits until it is ready. Fails with
    /// [`PrometheusError::NotInstalled`] when there is no binary.
    pub async fn start(self) -> Result<LocalPrometheus, PrometheusError> {
        let bin = LocalPrometheus::binary().ok_or(PrometheusError::NotInstalled)?;
        let dir = tempfile::tempdir().map_err(|source| PrometheusError::Setup {
            path: std::env::temp_dir(),
            source,
        })?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, self.config().to_string()).map_err(|source| {
            PrometheusError::Setup {
                path: config.clone(),
                source,
            }
        })?;
        let mut failures = Vec::new();
        for attempt in 1..=ATTEMPTS {
            match try_start(&bin, dir.path(), &config, attempt).await? {
                Ok((child, url, log)) => {
                    return Ok(LocalPrometheus {
                        child,
                        url,
                        log,
                        client: reqwest::Client::new(),
                        _dir: dir,
                    });
                }
                Err(port_taken) => failures.push(format!("attempt {attempt}: {port_taken}")),
            }
        }
        Err(PrometheusError::Start {
            attempts: failures.join("\n"),
        })
    }

    /// [`start`](Self::start) for a test: `None`, after printing
    /// "skipped: prometheus not installed (scripts/test installs it)", when the binary is
    /// missing outside CI.
    ///
    /// # Panics
    ///
    /// When the binary is missing and `CI=true`, or when Prometheus does not start (the panic
    /// quotes its log).
    pub async fn start_or_skip(self) -> Option<LocalPrometheus> {
        match self.start().await {
            Ok(prometheus) => Some(prometheus),
            Err(PrometheusError::NotInstalled) => {
                assert_ne!(
                    std::env::var("CI").as_deref(),
                    Ok("true"),
                    "prometheus is not installed, and CI=true requires this test to run"
                );
                println!("skipped: prometheus not installed (scripts/test installs it)");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// One start on a new port. The outer error is fatal; the inner one means the port was taken
/// and another attempt may succeed.
async fn try_start(
    bin: &Path,
    dir: &Path,
    config: &Path,
    attempt: u32,
) -> Result<Result<(Child, String, PathBuf), String>, PrometheusError> {
    let setup = |path: &Path| {
        let path = path.to_owned();
        move |source| PrometheusError::Setup { path, source }
    };
    let port = crate::free_loopback_port().map_err(setup(dir))?;
    let url = format!("http://127.0.0.1:{port}");
    let log = dir.join(format!("prometheus-{attempt}.log"));
    let out = std::fs::File::create(&log).map_err(setup(&log))?;
    let err = out.try_clone().map_err(setup(&log))?;
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| PrometheusError::Start {
            attempts: format!("cannot run {}: {e}", bin.display()),
        })?;
    // Killed and reaped on every early return.
    let mut child = Reaped(Some(child));
    let client = reqwest::Client::new();
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Ok(Some(status)) = child.get().try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let why = format!(
                "prometheus on {url} exited with {status}; its log ends:\n{}",
                tail(&text)
            );
            if text.contains("address already in use") {
                return Ok(Err(why));
            }
            return Err(PrometheusError::Start { attempts: why });
        }
        let ready = client
            .get(format!("{url}/-/ready"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(Ok((child.take(), url, log)));
        }
        if Instant::now() >= deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(PrometheusError::Start {
                attempts: format!(
                    "prometheus on {url} not ready within {READY_WITHIN:?}; its log ends:\n{}",
                    tail(&text)
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A child killed and reaped when dropped unless taken.
struct Reaped(Option<Child>);

impl Reaped {
    fn get(&mut self) -> &mut Child {
        // Proven: only `take` empties it, and it consumes `self`.
        self.0.as_mut().expect("child present until taken")
    }

    fn take(mut self) -> Child {
        self.0.take().expect("child present until taken")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last [`LOG_LINES`] lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_LINES)..].join("\n")
}

/// A running Prometheus on 127.0.0.1, killed and reaped when dropped.
#[derive(Debug)]
pub struct LocalPrometheus {
    child: Child,
    url: String,
    log: PathBuf,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for LocalPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LocalPrometheus {
    /// A builder without scrape jobs.
    pub fn builder() -> LocalPrometheusBuilder {
        LocalPrometheusBuilder::default()
    }

    /// The `prometheus` binary: the first on `PATH`, else `/usr/bin/prometheus`, if installed.
    pub fn binary() -> Option<PathBuf> {
        let on_path = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("prometheus"))
                .find(|p| p.is_file())
        });
        on_path.or_else(|| {
            let usr_bin = PathBuf::from("/usr/bin/prometheus");
            usr_bin.is_file().then_some(usr_bin)
        })
    }

    /// Its base URL, `http://127.0.0.1:PORT` (the API is under `/api/v1`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs the instant query `promql` and returns `data.result` of the answer: an array of
    /// series (`{"metric": {...}, "value": [time, "value"]}`) for a vector, `[time, "value"]`
    /// for a scalar.
    pub async fn query(&self, promql: &str) -> Result<Value, PrometheusError> {
        let request = |source| PrometheusError::Request {
            url: self.url.clone(),
            query: promql.to_owned(),
            source,
        };
        let mut answer: Value = self
            .client
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(request)?
            .json()
            .await
            .map_err(request)?;
        if answer["status"] != "success" {
            return Err(PrometheusError::Rejected {
                query: promql.to_owned(),
                answer: answer.to_string(),
            });
        }
        Ok(answer["data"]["result"].take())
    }

    /// Runs `promql` until it returns at least one series, and returns them; fails after
    /// `timeout` (quoting the last answer and Prometheus's log), or at once if Prometheus
    /// rejects the query. A filter in the query waits for a condition:
    /// `up{job="demo"} == 1`, `count(my_counter > 0) >= 3`.
    pub async fn wait_for_series(
        &self,
        promql: &str,
        timeout: Duration,
    ) -> Result<Vec<Value>, PrometheusError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.query(promql).await {
                Ok(Value::Array(series)) if !series.is_empty() => return Ok(series),
                Ok(other) => other.to_string(),
                Err(e @ PrometheusError::Rejected { .. }) => return Err(e),
                Err(e) => format!("{e}"),
            };
            if Instant::now() >= deadline {
                return Err(PrometheusError::NoSeries {
                    query: promql.to_owned(),
                    timeout,
                    last,
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The end of Prometheus's log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Stops it: kills and reaps the process (as dropping it does) and removes its storage.
    pub fn stop(self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_has_one_job_per_scrape_with_its_interval() {
        let config = LocalPrometheus::builder()
            .scrape("app", ["127.0.0.1:9000"], Duration::from_secs(1))
            .scrape_file("files", "/tmp/t.json", Duration::from_millis(500))
            .config();
        assert_eq!(
            config["scrape_configs"],
            json!([
                {
                    "job_name": "app",
                    "scrape_interval": "1000ms",
                    "scrape_timeout": "1000ms",
                    "static_configs": [{"targets": ["127.0.0.1:9000"]}],
                },
                {
                    "job_name": "files",
                    "scrape_interval": "500ms",
                    "scrape_timeout": "500ms",
                    "file_sd_configs": [{"files": ["/tmp/t.json"], "refresh_interval": "500ms"}],
                },
            ])
        );
    }
}
