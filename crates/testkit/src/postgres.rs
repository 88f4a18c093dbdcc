//! A real PostgreSQL 15 (Debian's `postgresql-15`) for tests and examples: a fresh cluster
//! made by `initdb` in a temporary directory, started on a free 127.0.0.1 port with its own
//! unix socket directory, and stopped (fast shutdown, then killed) when dropped.
//!
//! PostgreSQL refuses to run as root: when the test runs as root, `initdb` and `postgres`
//! run as `nobody` through util-linux's `setpriv` (which also asks the kernel to kill the
//! server if the test process dies). The superuser `postgres` has a random password;
//! TCP connections authenticate with SCRAM, so a role's password is really checked.
//!
//! ```no_run
//! use rorqual_testkit::postgres::LocalPostgres;
//!
//! # async fn run() -> Result<(), rorqual_testkit::postgres::PostgresError> {
//! // `None` (after printing why) when PostgreSQL is not installed, unless CI=true.
//! let Some(pg) = LocalPostgres::start_or_skip().await? else { return Ok(()) };
//! println!("postgres on 127.0.0.1:{} as {}", pg.port(), pg.user());
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs PostgreSQL 15's server programs.
pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// Starts attempted when the port was taken before the server could bind it.
const ATTEMPTS: u32 = 3;
/// How long the server may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take before the server is killed.
const STOP_WITHIN: Duration = Duration::from_secs(10);
/// Lines of the server's log quoted in errors.
const LOG_LINES: usize = 20;
/// The unprivileged user the server runs as when the test runs as root.
const UNPRIVILEGED: &str = "nobody";

/// Why PostgreSQL could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// `initdb` or `postgres` is missing from [`BIN_DIR`].
    #[error("{path} is missing (apt-get install postgresql; scripts/test installs it)")]
    NotInstalled {
        /// The missing program.
        path: PathBuf,
    },
    /// Running as root but `setpriv` or the user `nobody` is missing.
    #[error("running as root and cannot drop privileges for postgres: {why}")]
    NoUnprivilegedUser {
        /// What is missing.
        why: String,
    },
    /// A file or directory could not be prepared.
    #[error("cannot prepare {}", path.display())]
    Setup {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `initdb` failed.
    #[error("initdb failed ({status}):\n{output}")]
    Initdb {
        /// Its exit status.
        status: String,
        /// What it printed.
        output: String,
    },
    /// The server exited, or did not accept connections, on every attempt.
    #[error("postgres did not start:\n{attempts}")]
    Start {
        /// What happened on each attempt, with the end of its log.
        attempts: String,
    },
}

/// A running PostgreSQL on 127.0.0.1, stopped when dropped.
#[derive(Debug)]
pub struct LocalPostgres {
    child: Option<Child>,
    port: u16,
    password: String,
    socket_dir: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LocalPostgres {
    /// Whether `initdb` and `postgres` are installed in [`BIN_DIR`].
    pub fn installed() -> bool {
        Path::new(BIN_DIR).join("initdb").is_file() && Path::new(BIN_DIR).join("postgres").is_file()
    }

    /// Starts a server, or returns `None` after printing why when PostgreSQL is not
    /// installed. With `CI=true` a missing installation is an error (CI installs it).
    ///
    /// # Errors
    ///
    /// [`PostgresError`] when it cannot start (or is missing under `CI=true`).
    pub async fn start_or_skip() -> Result<Option<LocalPostgres>, PostgresError> {
        match Self::start().await {
            Err(PostgresError::NotInstalled { path })
                if std::env::var("CI").as_deref() != Ok("true") =>
            {
                println!(
                    "skipped: {} not installed (Debian package postgresql)",
                    path.display()
                );
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// Makes a cluster with `initdb` and starts the server; waits until it accepts
    /// connections.
    ///
    /// # Errors
    ///
    /// [`PostgresError`] saying which step failed, with the server's log when it ran.
    pub async fn start() -> Result<LocalPostgres, PostgresError> {
        for program in ["initdb", "postgres", "pg_isready"] {
            let path = Path::new(BIN_DIR).join(program);
            if !path.is_file() {
                return Err(PostgresError::NotInstalled { path });
            }
        }
        let runner = Runner::detect()?;
        let dir = tempfile::Builder::new()
            .prefix("rorqual-pg-")
            .tempdir()
            .map_err(|source| PostgresError::Setup {
                path: std::env::temp_dir(),
                source,
            })?;
        let setup = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PostgresError::Setup { path, source }
        };
        let socket_dir = dir.path().join("socket");
        std::fs::create_dir(&socket_dir).map_err(setup(&socket_dir))?;
        let password = format!("pg-{:016x}{:016x}", random_u64(), random_u64());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n")).map_err(setup(&pwfile))?;
        runner.give(dir.path()).map_err(setup(dir.path()))?;
        runner.give(&socket_dir).map_err(setup(&socket_dir))?;
        runner.give(&pwfile).map_err(setup(&pwfile))?;

        let data = dir.path().join("data");
        let output = runner
            .command(&Path::new(BIN_DIR).join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .map_err(setup(&data))?;
        if !output.status.success() {
            return Err(PostgresError::Initdb {
                status: output.status.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        let _ = std::fs::remove_file(&pwfile);

        let log = dir.path().join("postgres.log");
        let mut failures = Vec::new();
        for attempt in 1..=ATTEMPTS {
            let port = rorqual_local::free_loopback_port().map_err(setup(dir.path()))?;
            let log_file = std::fs::File::create(&log).map_err(setup(&log))?;
            runner.give(&log).map_err(setup(&log))?;
            let err_file = log_file.try_clone().map_err(setup(&log))?;
            let child = runner
                .command(&Path::new(BIN_DIR).join("postgres"))
                .arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(&socket_dir)
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "max_connections=200",
                ])
                .stdin(Stdio::null())
                .stdout(log_file)
                .stderr(err_file)
                .spawn()
                .map_err(setup(&data))?;
            let mut child = Some(child);
            match wait_ready(&mut child, port, &log).await {
                Ok(()) => {
                    return Ok(LocalPostgres {
                        child,
                        port,
                        password,
                        socket_dir,
                        log,
                        _dir: dir,
                    });
                }
                Err(why) => {
                    failures.push(format!("attempt {attempt} on port {port}: {why}"));
                    shutdown(&mut child);
                }
            }
        }
        Err(PostgresError::Start {
            attempts: failures.join("\n"),
        })
    }

    /// The server's process id (the postmaster), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host to connect to: `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The superuser's name: `postgres`.
    pub fn user(&self) -> &'static str {
        "postgres"
    }

    /// The superuser's password (random per server).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The unix socket directory (connections there need no password).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server's whole log (what it printed so far), to grep in tests.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// Stops it now (fast shutdown, killed if it takes longer than 10 s), as dropping does.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        shutdown(&mut self.child);
    }
}

/// Waits until the server on `port` accepts connections, or says why not.
async fn wait_ready(child: &mut Option<Child>, port: u16, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Some(child) = child
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(format!("exited ({status}); log ends:\n{}", tail(log)));
        }
        let ready = Command::new(Path::new(BIN_DIR).join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "-t", "1"])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not ready within {READY_WITHIN:?}; log ends:\n{}",
                tail(log)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last [`LOG_LINES`] lines of the log at `path`.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_LINES)..].join("\n")
}

/// Fast shutdown (SIGINT), then SIGKILL after [`STOP_WITHIN`]; reaps the process.
fn shutdown(child: &mut Option<Child>) {
    {
        let Some(mut child) = child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SIGINT is PostgreSQL's fast shutdown: it ends sessions and exits cleanly.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let deadline = Instant::now() + STOP_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// 64 random bits (std's randomly keyed hasher over the time), for a password.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// How the server's programs are run: directly, or as `nobody` through `setpriv` when root.
#[derive(Debug)]
enum Runner {
    Direct,
    Setpriv {
        setpriv: PathBuf,
        uid: nix::unistd::Uid,
        gid: nix::unistd::Gid,
    },
}

impl Runner {
    fn detect() -> Result<Runner, PostgresError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(Runner::Direct);
        }
        let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| PostgresError::NoUnprivilegedUser {
                why: "setpriv is not installed (apt-get install util-linux)".to_owned(),
            })?;
        let user = nix::unistd::User::from_name(UNPRIVILEGED)
            .ok()
            .flatten()
            .ok_or_else(|| PostgresError::NoUnprivilegedUser {
                why: format!("there is no user `{UNPRIVILEGED}`"),
            })?;
        Ok(Runner::Setpriv {
            setpriv,
            uid: user.uid,
            gid: user.gid,
        })
    }

    /// Gives `path` to the user the server runs as.
    fn give(&self, path: &Path) -> std::io::Result<()> {
        match self {
            Runner::Direct => Ok(()),
            Runner::Setpriv { uid, gid, .. } => {
                nix::unistd::chown(path, Some(*uid), Some(*gid)).map_err(std::io::Error::from)
            }
        }
    }

    fn command(&self, program: &Path) -> Command {
        match self {
            Runner::Direct => Command::new(program),
            Runner::Setpriv { setpriv, uid, gid } => {
                let mut command = Command::new(setpriv);
                command
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .args(["--clear-groups", "--pdeathsig", "KILL", "--"])
                    .arg(program)
                    .env("HOME", "/tmp");
                command
            }
        }
    }
}
