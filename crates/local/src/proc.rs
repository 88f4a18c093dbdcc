//! How LocalEngine launches a container's process on the shared supervisor
//! ([`crate::process`]): its command line (wrapped in `nsenter` for an instance with its own
//! network namespace), environment, working directory and log file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::process::{ProcessError, ProcessSpec};
pub(crate) use crate::process::{
    ProcessIdentity as ProcIdentity, SupervisedProcess, is_alive, kill_group_now,
};

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) command: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) cwd: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) netns: Option<PathBuf>,
}

impl Launch {
    /// Starts the container's process in a new process group with stdout and stderr appended
    /// to its log.
    pub(crate) fn spawn(&self) -> Result<SupervisedProcess, ProcessError> {
        let spec = ProcessSpec::from_argv(argv(&self.command, self.netns.as_deref()))
            .envs(&self.env)
            .current_dir(&self.cwd)
            .log(&self.log);
        SupervisedProcess::spawn(&spec)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
