//! The control plane's child processes: how they start, how their logs are read, how they
//! stop, and how they are stopped when the test binary dies without running destructors.
//!
//! Two mechanisms together:
//! - **Process groups.** Each child leads its own process group (`process_group(0)`), so that
//!   stopping it reaches anything it forked, and a Ctrl-C in the terminal (sent to the
//!   terminal's foreground group) is handled by the test binary, which then drops its
//!   [`ChildProcess`]es.
//! - **A parent-death signal.** `PR_SET_PDEATHSIG` makes the kernel send SIGKILL to the child
//!   when its parent goes away, which covers a test binary killed with SIGKILL, where no
//!   destructor runs. It must be set inside the child between `fork` and `exec`; from Rust that
//!   takes `CommandExt::pre_exec`, an `unsafe` hook, and the workspace forbids unsafe code. So
//!   each child is started through util-linux's `setpriv --pdeathsig KILL -- <binary> …`, which
//!   makes exactly that `prctl` and then execs the binary (util-linux is Essential on Debian;
//!   without `setpriv` the children start without the signal and a warning is logged).
//!
//! The parent-death signal fires when the *thread* that forked the child exits, not the
//! process. A test's tokio runtime thread ends with its test, which would kill a control plane
//! the next tests share; so every child is forked by one spawner thread that lives as long as
//! the process.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::binaries::Component;

/// A spawn request for the spawner thread, and where to send the child.
type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// The spawner thread's request queue, created with the thread on first use.
fn spawner() -> io::Result<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    if let Some(sender) = SPAWNER.get() {
        return Ok(lock(sender).clone());
    }
    let (sender, requests) = mpsc::channel::<SpawnRequest>();
    let started = std::thread::Builder::new()
        .name("rorqual-testenv-spawner".to_owned())
        .spawn(move || {
            // Lives until the process exits: every `Sender` sits in a static.
            for (mut command, reply) in requests {
                let _ = reply.send(command.spawn());
            }
        });
    match started {
        Ok(_) => {
            // Another thread may have won the race; both senders work, the loser's thread
            // then waits forever on its own channel, which costs one idle thread.
            let stored = SPAWNER.get_or_init(|| Mutex::new(sender));
            Ok(lock(stored).clone())
        }
        Err(e) => Err(e),
    }
}

/// Locks a mutex whose data (a channel sender) cannot be left inconsistent by a panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `setpriv`, when installed.
fn setpriv() -> Option<&'static Path> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            ["/usr/bin/setpriv", "/bin/setpriv", "/usr/local/bin/setpriv"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
        .as_deref()
}

/// A running control-plane program with its log file; killed (with its process group) on drop.
#[derive(Debug)]
pub(crate) struct ChildProcess {
    component: Component,
    child: Child,
    log: PathBuf,
    stopped: bool,
}

impl ChildProcess {
    /// Starts `binary args…` in its own process group with the parent-death signal set (see
    /// the [module docs](self)), stdout and stderr appended to `log`.
    pub(crate) fn spawn(
        component: Component,
        binary: &Path,
        args: &[String],
        log: &Path,
    ) -> io::Result<ChildProcess> {
        let out = File::create(log)?;
        let err = out.try_clone()?;
        let mut command = match setpriv() {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(binary);
                c
            }
            None => {
                tracing::warn!(
                    "setpriv (util-linux) not found: {component} will survive a killed test binary"
                );
                Command::new(binary)
            }
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let (reply, child) = mpsc::channel();
        spawner()?
            .send((command, reply))
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        let child = child
            .recv()
            .map_err(|_| io::Error::other("the spawner thread did not answer"))??;
        Ok(ChildProcess {
            component,
            child,
            log: log.to_owned(),
            stopped: false,
        })
    }

    /// Which program this is.
    pub(crate) fn component(&self) -> Component {
        self.component
    }

    /// Its process id (also its process group id).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of its log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Kills its process group with SIGKILL and reaps it. A test control plane keeps nothing
    /// worth a graceful shutdown (etcd's data is a temporary directory), and the apiserver's
    /// graceful shutdown takes seconds.
    pub(crate) fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if self.exited().is_some() {
            return;
        }
        let pid = i32::try_from(self.child.id()).ok().map(Pid::from_raw);
        match pid.map(|pid| killpg(pid, Signal::SIGKILL)) {
            Some(Ok(())) => {}
            // The group may be gone already; kill the child itself in any case.
            _ => {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of the file at `path` (empty when unreadable).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    last_lines(&String::from_utf8_lossy(&text), lines)
}

/// The last `lines` lines of `text`.
fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether the process `pid` exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\nb\nc", 10), "a\nb\nc");
        assert_eq!(last_lines("", 3), "");
    }
}
