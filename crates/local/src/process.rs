//! A supervised child process: spawned in its own process group with its output appended to
//! log files, stopped gracefully (SIGTERM to the group, a grace period, then SIGKILL), reaped,
//! and identified by PID *and* start time so a reused PID is never mistaken for it.
//!
//! [`LocalEngine`](crate::LocalEngine) runs every container through this API, and so does
//! `rorqual-release`'s nginx router for its nginx master.
//!
//! ```no_run
//! use std::time::Duration;
//! use rorqual_local::process::{ProcessSpec, SupervisedProcess};
//!
//! # async fn run() -> Result<(), rorqual_local::process::ProcessError> {
//! let spec = ProcessSpec::new("/bin/sleep").arg("60").log("/tmp/sleep.log");
//! let mut sleeper = SupervisedProcess::spawn(&spec)?;
//! assert!(sleeper.is_running());
//! // SIGTERM to the group, SIGKILL after 5 s if anything is left, then reaped.
//! let exit = sleeper.stop(Duration::from_secs(5)).await;
//! println!("sleep ended: {exit}");
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;
use nix::sys::signal::{kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

/// How often [`SupervisedProcess::wait`] looks at an adopted process (one that is not our
/// child, so there is no exit notification) unless told otherwise.
pub const DEFAULT_ADOPT_POLL: Duration = Duration::from_millis(100);

/// Errors of starting and signalling supervised processes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The command line was empty.
    #[error("empty command")]
    EmptyCommand,
    /// A log file could not be opened for appending.
    #[error("cannot open log file {}", path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The program could not be started.
    #[error("cannot run `{program}`")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The program exited before its PID could be read.
    #[error("`{program}` exited at once")]
    ExitedAtOnce {
        /// The program.
        program: String,
    },
    /// Sending a signal failed (the process is gone, or not ours to signal).
    #[error("cannot send {signal} to process {pid}")]
    Signal {
        /// The process.
        pid: i32,
        /// The signal.
        signal: Signal,
        /// Why.
        #[source]
        source: nix::Error,
    },
}

impl ProcessError {
    /// Whether trying again may succeed (a spawn or log failure may be transient; an empty
    /// command or a signal to a gone process will not change).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProcessError::Log { .. } | ProcessError::Spawn { .. })
    }
}

/// A process and its start time (clock ticks after boot, field 22 of `/proc/<pid>/stat`),
/// which together identify it even after its PID is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// The process id.
    pub pid: i32,
    /// Its start time in clock ticks after boot (0 when it could not be read).
    pub start_ticks: u64,
}

impl ProcessIdentity {
    /// The identity of the live (not zombie) process `pid`, if there is one.
    pub fn of(pid: i32) -> Option<ProcessIdentity> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (state, start_ticks) = parse_stat(&text)?;
        (state != 'Z' && state != 'X').then_some(ProcessIdentity { pid, start_ticks })
    }

    /// Whether this is still the same live process (one read of `/proc/<pid>/stat`).
    pub fn is_alive(&self) -> bool {
        is_alive(self)
    }
}

/// Parses `/proc/<pid>/stat`: the state letter and the start time (field 22).
pub(crate) fn parse_stat(text: &str) -> Option<(char, u64)> {
    // The command name (field 2) is in parentheses and may contain spaces and `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `rest` starts at field 3; the start time is field 22.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Whether the process `id` names is still the same live process.
pub fn is_alive(id: &ProcessIdentity) -> bool {
    ProcessIdentity::of(id.pid).is_some_and(|now| now.start_ticks == id.start_ticks)
}

/// Kills the process group led by `id` at once if that process is still the one recorded (a
/// reused PID belongs to someone else and is left alone).
pub fn kill_group_now(id: &ProcessIdentity) {
    if is_alive(id) {
        // ESRCH (the group ended meanwhile) needs no handling.
        let _ = killpg(Pid::from_raw(id.pid), Signal::SIGKILL);
    }
}

/// What is known about a supervised process group's leader, for [`group_is_ours`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leader {
    /// Our child, not reaped yet: alive or a zombie, it holds its PID, so no other process
    /// (and no other group) can have that id.
    Unreaped,
    /// Our child, reaped: its PID, and so the group id, may now belong to anyone.
    Reaped,
    /// Adopted from an earlier supervisor: not our child, so it may be reaped at any time.
    Adopted,
}

/// Whether a signal to the process group `recorded.pid` can only reach the group `recorded`
/// leads. `now` is whoever runs under that PID now (`/proc/<pid>/stat`).
///
/// After its leader was reaped a group is never signalled: the PID may have been reused by
/// an unrelated process leading its own group (another `LocalEngine` instance, say). An
/// adopted leader is signalled only while its PID still shows the recorded start time.
fn group_is_ours(leader: Leader, recorded: &ProcessIdentity, now: Option<ProcessIdentity>) -> bool {
    match leader {
        Leader::Unreaped => true,
        Leader::Reaped => false,
        Leader::Adopted => now.is_some_and(|now| now == *recorded),
    }
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// Exited with a code.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
    /// Ended, with no status known (an adopted process is not our child).
    Unknown(&'static str),
}

impl ExitReason {
    /// Whether the process exited with code 0.
    pub fn is_success(&self) -> bool {
        *self == ExitReason::Code(0)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Code(c) => write!(f, "exit code {c}"),
            ExitReason::Signal(s) => write!(f, "killed by signal {s}"),
            ExitReason::Unknown(why) => f.write_str(why),
        }
    }
}

impl From<std::process::ExitStatus> for ExitReason {
    fn from(status: std::process::ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitReason::Code(code),
            (None, Some(sig)) => ExitReason::Signal(sig),
            (None, None) => ExitReason::Unknown("ended with an unknown status"),
        }
    }
}

/// What to run: program, arguments, environment, working directory and where its output
/// goes. stdin is always `/dev/null`; stdout and stderr go to `/dev/null` unless a log file
/// is given (appended to, created if missing).
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ProcessSpec {
    program: OsString,
    args: Vec<OsString>,
    env: BTreeMap<OsString, OsString>,
    cwd: Option<PathBuf>,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
}

impl ProcessSpec {
    /// Runs `program` (looked up in `PATH` when it has no `/`).
    pub fn new(program: impl Into<OsString>) -> Self {
        ProcessSpec {
            program: program.into(),
            ..ProcessSpec::default()
        }
    }

    /// From a command line: the program and its arguments; [`ProcessError::EmptyCommand`] at
    /// spawn when `argv` is empty.
    pub fn from_argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut argv = argv.into_iter().map(Into::into);
        let program = argv.next().unwrap_or_default();
        ProcessSpec {
            program,
            args: argv.collect(),
            ..ProcessSpec::default()
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets one environment variable (on top of the inherited environment).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets environment variables (on top of the inherited environment).
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// The working directory (default: this process's).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Appends both stdout and stderr to `path`.
    pub fn log(self, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        self.stdout_log(path.clone()).stderr_log(path)
    }

    /// Appends stdout to `path`.
    pub fn stdout_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdout = Some(path.into());
        self
    }

    /// Appends stderr to `path`.
    pub fn stderr_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.stderr = Some(path.into());
        self
    }

    /// The program, for messages.
    pub fn program(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }
}

fn open_log(path: &Path) -> Result<std::fs::File, ProcessError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| ProcessError::Log {
            path: path.to_owned(),
            source,
        })
}

fn output(path: Option<&Path>) -> Result<Stdio, ProcessError> {
    Ok(match path {
        Some(p) => Stdio::from(open_log(p)?),
        None => Stdio::null(),
    })
}

/// A process being supervised: our child (spawned in a new process group it leads), or one
/// adopted from an earlier supervisor by its [`ProcessIdentity`].
///
/// Dropping it leaves the process running (a later supervisor may adopt it); stop it with
/// [`stop`](Self::stop), or with [`terminate`](Self::terminate) where waiting is impossible
/// (in a `Drop`). tokio reaps a dropped child in the background.
///
/// When our child is found to have exited, what is left of its group is killed *before* the
/// child is reaped (the zombie still holds the PID, so the group id is still ours); once it
/// is reaped, its group is never signalled again, since the PID may have been reused.
#[derive(Debug)]
pub struct SupervisedProcess {
    child: Option<Child>,
    /// Whether `child` has been reaped (its PID is free for reuse).
    reaped: bool,
    identity: ProcessIdentity,
    started: Instant,
    poll: Duration,
}

impl SupervisedProcess {
    /// Starts `spec` in a new process group.
    pub fn spawn(spec: &ProcessSpec) -> Result<SupervisedProcess, ProcessError> {
        let program = spec.program();
        if spec.program.is_empty() {
            return Err(ProcessError::EmptyCommand);
        }
        // One open file when stdout and stderr share a log, so their lines interleave in order.
        let (stdout, stderr) = match (&spec.stdout, &spec.stderr) {
            (Some(o), Some(e)) if o == e => {
                let file = open_log(o)?;
                let copy = file.try_clone().map_err(|source| ProcessError::Log {
                    path: o.clone(),
                    source,
                })?;
                (Stdio::from(file), Stdio::from(copy))
            }
            (o, e) => (output(o.as_deref())?, output(e.as_deref())?),
        };
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(false);
        if let Some(dir) = &spec.cwd {
            cmd.current_dir(dir);
        }
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or(ProcessError::ExitedAtOnce { program })?;
        let start_ticks = ProcessIdentity::of(pid).map_or(0, |i| i.start_ticks);
        Ok(SupervisedProcess {
            child: Some(child),
            reaped: false,
            identity: ProcessIdentity { pid, start_ticks },
            started: Instant::now(),
            poll: DEFAULT_ADOPT_POLL,
        })
    }

    /// Supervises a process started by an earlier supervisor (check it with [`is_alive`]
    /// first). Its exit is noticed by looking at it every `poll`.
    pub fn adopt(identity: ProcessIdentity, poll: Duration) -> SupervisedProcess {
        SupervisedProcess {
            child: None,
            reaped: false,
            identity,
            started: Instant::now(),
            poll,
        }
    }

    /// Who the process is.
    pub fn identity(&self) -> ProcessIdentity {
        self.identity
    }

    /// Its process id (also its process group id when we spawned it).
    pub fn pid(&self) -> i32 {
        self.identity.pid
    }

    /// When it was spawned or adopted.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Whether it is still running, without blocking (if it has exited, kills what is left
    /// of its group and reaps it).
    pub fn is_running(&mut self) -> bool {
        if self.child.is_some() {
            self.reap_if_exited().is_none()
        } else {
            is_alive(&self.identity)
        }
    }

    /// What is known about the group's leader.
    fn leader(&self) -> Leader {
        match (&self.child, self.reaped) {
            (Some(_), false) => Leader::Unreaped,
            (Some(_), true) => Leader::Reaped,
            (None, _) => Leader::Adopted,
        }
    }

    /// For our child: `None` while it runs; once it has exited, kills what is left of its
    /// group (while the unreaped zombie still holds the PID), reaps it and returns how it
    /// ended (again on later calls, without signalling).
    fn reap_if_exited(&mut self) -> Option<ExitReason> {
        let pid = self.identity.pid;
        let child = self.child.as_mut()?;
        if !self.reaped {
            // WNOWAIT: look without reaping. ECHILD (not waitable) falls through to try_wait.
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            match waitid(Id::Pid(Pid::from_raw(pid)), flags) {
                Ok(WaitStatus::StillAlive) => return None,
                Ok(_) => {
                    // ESRCH (nothing left in the group) needs no handling.
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                Err(_) => {}
            }
        }
        let reason = match child.try_wait() {
            Ok(None) => return None,
            Ok(Some(status)) => ExitReason::from(status),
            Err(_) => ExitReason::Unknown("ended; waiting for it failed"),
        };
        self.reaped = true;
        Some(reason)
    }

    /// Sends `signal` to the process alone (a reload, say), if it is still the one recorded.
    pub fn signal(&mut self, signal: Signal) -> Result<(), ProcessError> {
        let pid = self.identity.pid;
        let gone = |source| ProcessError::Signal {
            pid,
            signal,
            source,
        };
        if !self.is_running() {
            return Err(gone(nix::Error::ESRCH));
        }
        kill(Pid::from_raw(pid), signal).map_err(gone)
    }

    /// Sends `signal` to the whole process group if the group is provably still the one
    /// this process leads: our child not reaped yet, or an adopted process whose PID still
    /// shows the recorded start time. Returns whether it was sent (ESRCH, nothing left in the
    /// group, counts as sent).
    pub fn signal_group(&self, signal: Signal) -> bool {
        let now = match self.leader() {
            Leader::Adopted => ProcessIdentity::of(self.identity.pid),
            Leader::Unreaped | Leader::Reaped => None,
        };
        if !group_is_ours(self.leader(), &self.identity, now) {
            return false;
        }
        let _ = killpg(Pid::from_raw(self.identity.pid), signal);
        true
    }

    /// Starts a graceful stop without waiting: SIGTERM to the process group (unless its
    /// leader was reaped already, see [`signal_group`](Self::signal_group)). For `Drop`
    /// implementations; nothing escalates to SIGKILL afterwards, and the child is reaped by
    /// tokio in the background once the handle is dropped.
    pub fn terminate(&mut self) {
        self.signal_group(Signal::SIGTERM);
    }

    /// Waits until the process ends. For our child, what is left of its group is killed
    /// before the child is reaped; an adopted process's group is not signalled once the
    /// process is gone (its PID may belong to someone else by then). Cancel safe.
    pub async fn wait(&mut self) -> ExitReason {
        if self.child.is_none() {
            while is_alive(&self.identity) {
                tokio::time::sleep(self.poll).await;
            }
            return ExitReason::Unknown("exited (status unknown: adopted process)");
        }
        // SIGCHLD says when to look (registered before the first look, so none is missed);
        // the timeout covers a runtime without signal handling.
        let mut sigchld =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
        loop {
            if let Some(reason) = self.reap_if_exited() {
                return reason;
            }
            match &mut sigchld {
                Some(sigchld) => {
                    let _ = tokio::time::timeout(DEFAULT_ADOPT_POLL, sigchld.recv()).await;
                }
                None => tokio::time::sleep(DEFAULT_ADOPT_POLL).await,
            }
        }
    }

    /// Stops the process: SIGTERM to its group, SIGKILL to the group after `grace`, then
    /// waits for (and reaps) it.
    pub async fn stop(&mut self, grace: Duration) -> ExitReason {
        if let Some(reason) = self.reap_if_exited() {
            return reason;
        }
        if self.child.is_none() && !is_alive(&self.identity) {
            return ExitReason::Unknown("already gone");
        }
        self.signal_group(Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        if let Ok(reason) = tokio::time::timeout_at(deadline, self.wait()).await {
            return reason;
        }
        tracing::debug!(
            pid = self.identity.pid,
            "grace period over, sending SIGKILL"
        );
        self.signal_group(Signal::SIGKILL);
        self.wait().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let text = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(text), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_reaped_leaders_group_is_never_signalled() {
        let recorded = ProcessIdentity {
            pid: 4242,
            start_ticks: 1000,
        };
        let reused = ProcessIdentity {
            pid: 4242,
            start_ticks: 9000,
        };
        // Reaped: whoever has the PID now (nobody, a stranger, even an identical-looking
        // record) is not signalled.
        for now in [None, Some(reused), Some(recorded)] {
            assert!(!group_is_ours(Leader::Reaped, &recorded, now), "{now:?}");
        }
        // Unreaped, alive or a zombie: the PID is still ours.
        assert!(group_is_ours(Leader::Unreaped, &recorded, None));
        // Adopted: only while the PID shows the recorded start time.
        assert!(group_is_ours(Leader::Adopted, &recorded, Some(recorded)));
        assert!(!group_is_ours(Leader::Adopted, &recorded, Some(reused)));
        assert!(!group_is_ours(Leader::Adopted, &recorded, None));
    }

    #[test]
    fn exit_reasons_read_like_kubernetes() {
        assert_eq!(ExitReason::Code(1).to_string(), "exit code 1");
        assert_eq!(ExitReason::Signal(9).to_string(), "killed by signal 9");
        assert!(ExitReason::Code(0).is_success());
    }

    #[test]
    fn a_spec_from_an_empty_argv_has_no_program() {
        let spec = ProcessSpec::from_argv(Vec::<String>::new());
        assert_eq!(spec.program(), "");
        let spec = ProcessSpec::from_argv(["/bin/app", "-v"]);
        assert_eq!(spec.program(), "/bin/app");
        assert_eq!(spec.args, [OsString::from("-v")]);
    }
}
