//! The command provider: a program whose standard output is the value.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::json_path::{extract, last_chars, truncate};
use super::{MetricProvider, ProviderError};
use crate::analysis::{MetricSpec, ProviderSpec};

/// Default time a command may run.
pub const COMMAND_DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Measures [`CommandMetric`](crate::analysis::CommandMetric)s: runs the program (killed after
/// its timeout, default 60 s), parses its trimmed standard output as JSON (a bare number or
/// `true` is JSON) and applies the JSONPath. A non-zero exit is an error carrying the end of
/// standard error; a program that does not exist is a configuration error.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommandProvider;

impl CommandProvider {
    /// The provider.
    pub fn new() -> Self {
        CommandProvider
    }
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
        let ProviderSpec::Command(c) = &metric.provider else {
            return Err(ProviderError::config(
                "command",
                "metric has no command provider spec",
            ));
        };
        let Some((program, args)) = c.command.split_first() else {
            return Err(ProviderError::config("command", "no program given"));
        };
        let timeout = c.timeout.map(|d| d.0).unwrap_or(COMMAND_DEFAULT_TIMEOUT);
        let child = tokio::process::Command::new(program)
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
            })?;
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
}
