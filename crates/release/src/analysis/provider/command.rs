//! The command provider: a program whose standard output is the value.
//!
//! A program that outlasts [`CommandProvider::inline_wait`] becomes a running measurement
//! (Argo's job provider shape): its output is collected by a task of this provider, the run
//! keeps a handle naming it, and resumes it when next due or terminates it (killing the
//! program) when the run ends first.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::json_path::{extract, last_chars, truncate};
use super::{MeasureOutcome, MetricProvider, ProviderError};
use crate::analysis::{CommandMetric, MetricSpec, ProviderSpec};

/// Default time a command may run.
pub const COMMAND_DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Default time [`MetricProvider::start`] waits for a program before answering that the
/// measurement is still running.
pub const COMMAND_INLINE_WAIT: Duration = Duration::from_secs(10);

/// Default time after which a running program is checked again.
pub const COMMAND_RESUME_AFTER: Duration = Duration::from_secs(5);

/// Measurement numbers, unique in this process across every `CommandProvider`.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Measures [`CommandMetric`](crate::analysis::CommandMetric)s: runs the program (killed after
/// its timeout, default 60 s), parses its trimmed standard output as JSON (a bare number or
/// `true` is JSON) and applies the JSONPath. A non-zero exit is an error carrying the end of
/// standard error; a program that does not exist is a configuration error.
///
/// [`measure`](MetricProvider::measure) waits for the program.
/// [`start`](MetricProvider::start), which analysis runs use, waits up to [`inline_wait`]
/// (default 10 s); a program still running then is a running measurement whose handle
/// (`{"id": …, "pid": …, "process": …}`) the run keeps: [`resume`](MetricProvider::resume)
/// answers its value once it has ended (checking again every [`resume_after`], default 5 s),
/// and [`terminate`](MetricProvider::terminate) kills it. The program's output is collected
/// by this provider in the meantime, so the handle is only good in the process (and with the
/// provider, or a clone of it) that started it: after a restart, resuming it is a measurement
/// error and the next measurement starts the program again. Dropping the last clone of the
/// provider kills the programs it still runs.
///
/// [`inline_wait`]: CommandProvider::inline_wait
/// [`resume_after`]: CommandProvider::resume_after
#[derive(Debug, Clone)]
pub struct CommandProvider {
    inline_wait: Duration,
    resume_after: Duration,
    running: Arc<Running>,
}

/// Programs still running (or ended but not yet resumed), by measurement number.
#[derive(Debug, Default)]
struct Running {
    tasks: Mutex<BTreeMap<u64, JoinHandle<Result<Value, ProviderError>>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Aborting a task drops its child, which is killed on drop.
        for task in self.tasks.get_mut().values() {
            task.abort();
        }
    }
}

/// A collecting task aborted (its program killed) when dropped while still held.
struct AbortOnDrop(Option<JoinHandle<Result<Value, ProviderError>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// The handle of a running command measurement.
#[derive(Debug, Serialize, Deserialize)]
struct Handle {
    /// The measurement number in the provider.
    id: u64,
    /// The program's process id (for people reading the run).
    pid: Option<u32>,
    /// The id of the process that runs the provider: a handle from another one is stale.
    process: u32,
}

impl Default for CommandProvider {
    fn default() -> Self {
        CommandProvider {
            inline_wait: COMMAND_INLINE_WAIT,
            resume_after: COMMAND_RESUME_AFTER,
            running: Arc::default(),
        }
    }
}

impl CommandProvider {
    /// The provider, with the default waits.
    pub fn new() -> Self {
        CommandProvider::default()
    }

    /// Sets how long `start` waits for the program before answering that the measurement is
    /// running (zero: always answer at once).
    #[must_use]
    pub fn inline_wait(mut self, wait: Duration) -> Self {
        self.inline_wait = wait;
        self
    }

    /// Sets how long a run waits before checking a running program again.
    #[must_use]
    pub fn resume_after(mut self, after: Duration) -> Self {
        self.resume_after = after;
        self
    }

    /// Programs this provider (and its clones) started that no run has collected or
    /// terminated yet.
    pub fn in_flight(&self) -> usize {
        self.running.tasks.lock().len()
    }

    fn running(&self, id: u64, pid: Option<u32>) -> MeasureOutcome {
        let handle = Handle {
            id,
            pid,
            process: std::process::id(),
        };
        MeasureOutcome::Running {
            // A struct of integers always serialises.
            handle: serde_json::to_value(handle).unwrap_or(Value::Null),
            resume_after: self.resume_after,
        }
    }
}

/// The command spec of `metric`.
fn command_of(metric: &MetricSpec) -> Result<&CommandMetric, ProviderError> {
    match &metric.provider {
        ProviderSpec::Command(c) => Ok(c),
        _ => Err(ProviderError::config(
            "command",
            "metric has no command provider spec",
        )),
    }
}

/// Starts the program of `c`.
fn spawn(c: &CommandMetric) -> Result<tokio::process::Child, ProviderError> {
    let Some((program, args)) = c.command.split_first() else {
        return Err(ProviderError::config("command", "no program given"));
    };
    tokio::process::Command::new(program)
        .args(args)
        .envs(&c.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            let reason = format!("cannot start `{program}`: {e}");
            if e.kind() == std::io::ErrorKind::NotFound {
                ProviderError::config("command", reason)
            } else {
                ProviderError::measurement("command", reason)
            }
        })
}

/// Waits for `child` (killing it after the spec's timeout) and turns its output into the value.
async fn collect(c: CommandMetric, child: tokio::process::Child) -> Result<Value, ProviderError> {
    let program = c.command.first().cloned().unwrap_or_default();
    let timeout = c.timeout.map(|d| d.0).unwrap_or(COMMAND_DEFAULT_TIMEOUT);
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            return Err(ProviderError::measurement(
                "command",
                format!("waiting for `{program}`: {e}"),
            ));
        }
        // The child was moved into the timed-out future and is killed on drop.
        Err(_) => {
            return Err(ProviderError::measurement(
                "command",
                format!("`{program}` did not finish within {timeout:?} and was killed"),
            ));
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail = last_chars(stderr.trim(), 300);
        return Err(ProviderError::measurement(
            "command",
            format!("`{program}` exited with {}: {tail}", output.status),
        ));
    }
    let text = stdout.trim();
    let doc: Value = serde_json::from_str(text).map_err(|e| {
        ProviderError::measurement(
            "command",
            format!(
                "output of `{program}` is not JSON or a number ({e}): `{}`",
                truncate(text, 200)
            ),
        )
    })?;
    extract(doc, c.json_path.as_deref())
        .map_err(|e| ProviderError::measurement("command", format!("`{program}`: {e}")))
}

/// The result of a finished collecting task.
fn joined(
    result: Result<Result<Value, ProviderError>, tokio::task::JoinError>,
) -> Result<MeasureOutcome, ProviderError> {
    match result {
        Ok(value) => value.map(MeasureOutcome::Done),
        Err(e) => Err(ProviderError::measurement(
            "command",
            format!("collecting the program's output failed: {e}"),
        )),
    }
}

/// Reads a handle; `None` when it is not one of this process's.
fn parse_handle(handle: &Value) -> Result<Option<Handle>, ProviderError> {
    let h: Handle = serde_json::from_value(handle.clone()).map_err(|e| {
        ProviderError::config(
            "command",
            format!("`{handle}` is not a command measurement handle: {e}"),
        )
    })?;
    Ok((h.process == std::process::id()).then_some(h))
}

#[async_trait]
impl MetricProvider for CommandProvider {
    fn kind(&self) -> &str {
        "command"
    }

    async fn measure(
        &self,
        metric: &MetricSpec,
        _args: &BTreeMap<String, String>,
    ) -> Result<Value, ProviderError> {
        let c = command_of(metric)?;
        let child = spawn(c)?;
        collect(c.clone(), child).await
    }

    async fn start(
        &self,
        metric: &MetricSpec,
        _args: &BTreeMap<String, String>,
    ) -> Result<MeasureOutcome, ProviderError> {
        let c = command_of(metric)?;
        let child = spawn(c)?;
        let pid = child.id();
        // Owned until registered: if this call is cancelled while it waits, the program is
        // killed instead of running unseen until its timeout.
        let mut owned = AbortOnDrop(Some(tokio::spawn(collect(c.clone(), child))));
        let waited = match &mut owned.0 {
            Some(task) => tokio::time::timeout(self.inline_wait, task).await,
            None => return Err(ProviderError::measurement("command", "no task to wait for")),
        };
        match (waited, owned.0.take()) {
            (Ok(result), _) => joined(result),
            (Err(_), Some(task)) => {
                let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                self.running.tasks.lock().insert(id, task);
                tracing::debug!(id, ?pid, program = ?c.command.first(), "command still running");
                Ok(self.running(id, pid))
            }
            (Err(_), None) => Err(ProviderError::measurement("command", "no task to wait for")),
        }
    }

    async fn resume(
        &self,
        metric: &MetricSpec,
        _args: &BTreeMap<String, String>,
        handle: &Value,
    ) -> Result<MeasureOutcome, ProviderError> {
        let program = command_of(metric)?
            .command
            .first()
            .cloned()
            .unwrap_or_default();
        let stale = || {
            ProviderError::measurement(
                "command",
                format!(
                    "`{program}` (measurement {handle}) is not running in this process: it was \
                     started before a restart or by another provider"
                ),
            )
        };
        let Some(h) = parse_handle(handle)? else {
            return Err(stale());
        };
        let task = {
            let mut tasks = self.running.tasks.lock();
            match tasks.get(&h.id) {
                None => return Err(stale()),
                Some(task) if !task.is_finished() => return Ok(self.running(h.id, h.pid)),
                Some(_) => tasks.remove(&h.id),
            }
        };
        match task {
            Some(task) => joined(task.await),
            None => Err(stale()),
        }
    }

    async fn terminate(
        &self,
        _metric: &MetricSpec,
        _args: &BTreeMap<String, String>,
        handle: &Value,
    ) -> Result<(), ProviderError> {
        // A handle of another process, or one already collected: nothing runs any more.
        if let Some(h) = parse_handle(handle)?
            && let Some(task) = self.running.tasks.lock().remove(&h.id)
        {
            task.abort();
            tracing::debug!(id = h.id, pid = ?h.pid, "command terminated");
        }
        Ok(())
    }
}
