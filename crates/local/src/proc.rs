//! OS processes of instances: spawning in their own process group, identity checks through
//! `/proc/<pid>/stat`, waiting, and graceful stop (SIGTERM, grace period, SIGKILL).

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use rorqual_core::error::{Error, Result};

/// A process and its start time (clock ticks after boot), which together identify it even
/// after its PID is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcIdentity {
    pub(crate) pid: i32,
    pub(crate) start_ticks: u64,
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

/// The identity of the live (not zombie) process `pid`, if there is one.
pub(crate) fn identity_of(pid: i32) -> Option<ProcIdentity> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (state, start_ticks) = parse_stat(&text)?;
    (state != 'Z' && state != 'X').then_some(ProcIdentity { pid, start_ticks })
}

/// Whether the process `id` names is still the same live process.
pub(crate) fn is_alive(id: &ProcIdentity) -> bool {
    identity_of(id.pid).is_some_and(|now| now.start_ticks == id.start_ticks)
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExitReason {
    /// Exited with a code.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
    /// Ended, with no status known (an adopted process is not our child).
    Unknown(&'static str),
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

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) command: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) cwd: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) netns: Option<PathBuf>,
}

/// A process being supervised: our child, or adopted from an earlier engine.
#[derive(Debug)]
pub(crate) struct Running {
    child: Option<Child>,
    pub(crate) identity: ProcIdentity,
    pub(crate) started: Instant,
}

/// Builds the argv, wrapping it in `nsenter` when the instance has its own network namespace.
pub(crate) fn argv(command: &[String], netns: Option<&Path>) -> Vec<String> {
    match netns {
        Some(ns) => {
            let mut v = vec![
                "nsenter".to_owned(),
                format!("--net={}", ns.display()),
                "--".to_owned(),
            ];
            v.extend(command.iter().cloned());
            v
        }
        None => command.to_vec(),
    }
}

fn open_log(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(format!("cannot open log file {}", path.display()), e))
}

/// Kills the process group of `id` at once if that process is still the one recorded (a
/// reused PID belongs to someone else and is left alone).
pub(crate) fn kill_group_now(id: &ProcIdentity) {
    if is_alive(id) {
        // ESRCH (the group ended meanwhile) needs no handling.
        let _ = killpg(Pid::from_raw(id.pid), Signal::SIGKILL);
    }
}

impl Running {
    /// Starts `launch` in a new process group with stdout and stderr appended to its log.
    pub(crate) fn spawn(launch: &Launch) -> Result<Running> {
        let argv = argv(&launch.command, launch.netns.as_deref());
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| Error::BadRequest("empty command".to_owned()))?;
        let out = open_log(&launch.log)?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io(format!("cannot open log file {}", launch.log.display()), e))?;
        let child = Command::new(program)
            .args(args)
            .envs(&launch.env)
            .current_dir(&launch.cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| Error::io(format!("cannot run `{program}`"), e))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| Error::BadRequest(format!("`{program}` exited at once")))?;
        let start_ticks = identity_of(pid).map_or(0, |i| i.start_ticks);
        Ok(Running {
            child: Some(child),
            identity: ProcIdentity { pid, start_ticks },
            started: Instant::now(),
        })
    }

    /// Supervises a process started by an earlier engine (it must be alive: see [`is_alive`]).
    pub(crate) fn adopt(identity: ProcIdentity) -> Running {
        Running {
            child: None,
            identity,
            started: Instant::now(),
        }
    }

    /// Waits until the process ends; then kills what is left of its process group.
    pub(crate) async fn wait(&mut self, poll: Duration) -> ExitReason {
        let reason = match &mut self.child {
            Some(child) => match child.wait().await {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => ExitReason::Code(code),
                    (None, Some(sig)) => ExitReason::Signal(sig),
                    (None, None) => ExitReason::Unknown("ended with an unknown status"),
                },
                Err(_) => ExitReason::Unknown("ended; waiting for it failed"),
            },
            None => {
                while is_alive(&self.identity) {
                    tokio::time::sleep(poll).await;
                }
                ExitReason::Unknown("exited (status unknown: adopted process)")
            }
        };
        self.signal_group(Signal::SIGKILL);
        reason
    }

    fn signal_group(&self, signal: Signal) {
        // ESRCH (nothing left in the group) is the expected outcome once a group is gone.
        let _ = killpg(Pid::from_raw(self.identity.pid), signal);
    }

    /// Stops the process: SIGTERM to its group, then SIGKILL after `grace`.
    pub(crate) async fn stop(&mut self, grace: Duration, poll: Duration) -> ExitReason {
        if self.child.is_none() && !is_alive(&self.identity) {
            return ExitReason::Unknown("already gone");
        }
        self.signal_group(Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        if let Ok(reason) = tokio::time::timeout_at(deadline, self.wait(poll)).await {
            return reason;
        }
        tracing::debug!(
            pid = self.identity.pid,
            "grace period over, sending SIGKILL"
        );
        self.signal_group(Signal::SIGKILL);
        self.wait(poll).await
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
    fn exit_reasons_read_like_kubernetes() {
        assert_eq!(ExitReason::Code(1).to_string(), "exit code 1");
        assert_eq!(ExitReason::Signal(9).to_string(), "killed by signal 9");
    }

    #[test]
    fn netns_wraps_in_nsenter() {
        let cmd = vec!["/bin/app".to_owned(), "-v".to_owned()];
        assert_eq!(argv(&cmd, None), cmd);
        assert_eq!(
            argv(&cmd, Some(Path::new("/run/netns/x"))),
            ["nsenter", "--net=/run/netns/x", "--", "/bin/app", "-v"]
        );
    }
}
