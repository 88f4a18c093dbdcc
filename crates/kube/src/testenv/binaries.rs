//! Where the control plane's binaries come from.
//!
//! Each binary is looked up, in order, in
//! 1. its own variable (`TEST_ASSET_KUBE_APISERVER`, `TEST_ASSET_ETCD`, …; controller-runtime's
//!    envtest convention): when set it must name an existing file, there is no fallback;
//! 2. `KUBEBUILDER_ASSETS`, a directory (envtest's assets usually hold etcd and kube-apiserver
//!    only, so a binary it lacks is looked up further);
//! 3. `RORQUAL_KUBE_BIN`, a directory (what `scripts/build-kube` prints);
//! 4. the cache `scripts/build-kube` fills (`$RORQUAL_KUBE_CACHE`, else
//!    `~/.cache/rorqual/kube`): the most recently built complete directory;
//! 5. `PATH` (Debian's `etcd-server` puts etcd in `/usr/bin`).
//!
//! [`BinarySources::locate`] is pure: the environment is captured once by
//! [`BinarySources::from_env`], and whether a file exists is a function the caller passes.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// The command that builds kube-apiserver, kube-controller-manager and kube-scheduler v1.20.2
/// offline (from Debian's source package, 4–8 minutes cold, cached under `~/.cache`).
pub const BUILD_COMMAND: &str =
    "export RORQUAL_KUBE_BIN=$(scripts/build-kube)   # in the rorqual repository";

/// One program of the test control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Component {
    /// etcd, the apiserver's storage.
    Etcd,
    /// kube-apiserver.
    KubeApiserver,
    /// kube-controller-manager (service-account tokens, node lifecycle, garbage collection, …).
    KubeControllerManager,
    /// kube-scheduler.
    KubeScheduler,
}

impl Component {
    /// Every component, in start order.
    pub const ALL: [Component; 4] = [
        Component::Etcd,
        Component::KubeApiserver,
        Component::KubeControllerManager,
        Component::KubeScheduler,
    ];

    /// The executable's file name.
    pub fn binary_name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
        }
    }

    /// The variable naming this binary's path (envtest's `TEST_ASSET_*` convention).
    pub fn asset_variable(self) -> &'static str {
        match self {
            Component::Etcd => "TEST_ASSET_ETCD",
            Component::KubeApiserver => "TEST_ASSET_KUBE_APISERVER",
            Component::KubeControllerManager => "TEST_ASSET_KUBE_CONTROLLER_MANAGER",
            Component::KubeScheduler => "TEST_ASSET_KUBE_SCHEDULER",
        }
    }

    /// How to get the binary on a machine that lacks it.
    pub fn install_hint(self) -> &'static str {
        match self {
            Component::Etcd => "apt-get install etcd-server",
            _ => BUILD_COMMAND,
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.binary_name())
    }
}

/// The directory variable of controller-runtime's envtest.
pub const KUBEBUILDER_ASSETS: &str = "KUBEBUILDER_ASSETS";
/// The directory variable rorqual's scripts export (the output of `scripts/build-kube`).
pub const RORQUAL_KUBE_BIN: &str = "RORQUAL_KUBE_BIN";
/// Overrides the cache root `scripts/build-kube` fills (default `~/.cache/rorqual/kube`).
pub const RORQUAL_KUBE_CACHE: &str = "RORQUAL_KUBE_CACHE";

/// Where binaries are looked up: the relevant variables and the cache's complete build
/// directories, captured once so that [`BinarySources::locate`] itself does no I/O but
/// `exists`.
///
/// Each binary is looked up, in order, in
/// 1. its own variable (`TEST_ASSET_KUBE_APISERVER`, `TEST_ASSET_ETCD`, …; controller-runtime's
///    envtest convention): when set it must name an existing file, there is no fallback;
/// 2. `KUBEBUILDER_ASSETS`, a directory (envtest's assets usually hold etcd and kube-apiserver
///    only, so a binary it lacks is looked up further);
/// 3. `RORQUAL_KUBE_BIN`, a directory (what `scripts/build-kube` prints);
/// 4. the cache `scripts/build-kube` fills (`$RORQUAL_KUBE_CACHE`, else
///    `~/.cache/rorqual/kube`): the most recently built complete directory;
/// 5. `PATH` (Debian's `etcd-server` puts etcd in `/usr/bin`).
#[derive(Debug, Clone, Default)]
pub struct BinarySources {
    vars: BTreeMap<&'static str, OsString>,
    cache_root: Option<PathBuf>,
    cache_dirs: Vec<PathBuf>,
    path_dirs: Vec<PathBuf>,
}

impl BinarySources {
    /// Captures the variables, the cache directories (newest first) and `PATH` of this process.
    pub fn from_env() -> Self {
        let mut vars = BTreeMap::new();
        for name in Component::ALL
            .iter()
            .map(|c| c.asset_variable())
            .chain([KUBEBUILDER_ASSETS, RORQUAL_KUBE_BIN])
        {
            if let Some(value) = std::env::var_os(name).filter(|v| !v.is_empty()) {
                vars.insert(name, value);
            }
        }
        let cache_root = std::env::var_os(RORQUAL_KUBE_CACHE)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/rorqual/kube"))
            });
        let cache_dirs = cache_root.as_deref().map(cache_dirs).unwrap_or_default();
        let path_dirs = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        BinarySources {
            vars,
            cache_root,
            cache_dirs,
            path_dirs,
        }
    }

    /// Sources made of the given variables only (no cache, no `PATH`); for tests of the lookup.
    #[must_use]
    pub fn with_vars<'a>(vars: impl IntoIterator<Item = (&'static str, &'a str)>) -> Self {
        BinarySources {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k, OsString::from(v)))
                .collect(),
            ..BinarySources::default()
        }
    }

    /// Adds a cache root and its complete build directories (newest first).
    #[must_use]
    pub fn with_cache(mut self, root: impl Into<PathBuf>, dirs: Vec<PathBuf>) -> Self {
        self.cache_root = Some(root.into());
        self.cache_dirs = dirs;
        self
    }

    /// Adds `PATH` directories.
    #[must_use]
    pub fn with_path(mut self, dirs: Vec<PathBuf>) -> Self {
        self.path_dirs = dirs;
        self
    }

    /// The path of `component`'s binary: the first source that has it (in the order listed
    /// on [`BinarySources`]), where `exists` says whether a file is there.
    ///
    /// # Errors
    ///
    /// [`MissingBinary`] naming every place looked at and how to get the binary.
    pub fn locate(
        &self,
        component: Component,
        exists: &dyn Fn(&Path) -> bool,
    ) -> Result<PathBuf, MissingBinary> {
        let name = component.binary_name();
        let mut looked = Vec::new();
        let asset = component.asset_variable();
        if let Some(path) = self.vars.get(asset) {
            let path = PathBuf::from(path);
            if exists(&path) {
                return Ok(path);
            }
            // An explicit path is a decision: no fallback to a binary elsewhere.
            return Err(MissingBinary {
                component,
                looked: vec![format!("${asset}={} (no such file)", path.display())],
            });
        }
        looked.push(format!("${asset} (unset)"));
        for dir_var in [KUBEBUILDER_ASSETS, RORQUAL_KUBE_BIN] {
            match self.vars.get(dir_var) {
                Some(dir) => {
                    let path = Path::new(dir).join(name);
                    if exists(&path) {
                        return Ok(path);
                    }
                    looked.push(format!(
                        "${dir_var}={} (no {name})",
                        Path::new(dir).display()
                    ));
                }
                None => looked.push(format!("${dir_var} (unset)")),
            }
        }
        for dir in &self.cache_dirs {
            let path = dir.join(name);
            if exists(&path) {
                return Ok(path);
            }
        }
        match &self.cache_root {
            Some(root) => looked.push(format!(
                "the scripts/build-kube cache {} ({} complete builds)",
                root.display(),
                self.cache_dirs.len()
            )),
            None => looked.push("the scripts/build-kube cache (no $HOME)".to_owned()),
        }
        for dir in &self.path_dirs {
            let path = dir.join(name);
            if exists(&path) {
                return Ok(path);
            }
        }
        looked.push("$PATH".to_owned());
        Err(MissingBinary { component, looked })
    }
}

/// The complete build directories under a `scripts/build-kube` cache root, newest first: those
/// holding all three Kubernetes binaries.
fn cache_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        // `.staging.*` and `.lock` are the script's own; only published directories count.
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
        .filter(|p| {
            [
                Component::KubeApiserver,
                Component::KubeControllerManager,
                Component::KubeScheduler,
            ]
            .iter()
            .all(|c| p.join(c.binary_name()).is_file())
        })
        .filter_map(|p| {
            let modified = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
            Some((modified, p))
        })
        .collect();
    dirs.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    dirs.into_iter().map(|(_, p)| p).collect()
}

/// A binary of the control plane was not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{component} not found (looked at {}); get it with: {}",
    looked.join(", "),
    component.install_hint()
)]
pub struct MissingBinary {
    /// The missing program.
    pub component: Component,
    /// Where it was looked for, in order.
    pub looked: Vec<String>,
}

/// What a test does when the control plane cannot start for want of a binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// Outside CI: print this line (`skipped: …`) and return.
    Skip(String),
    /// With `CI=true`: fail with this message.
    Fail(String),
}

/// Outside CI a missing binary skips the test with the reason and the command that builds the
/// binary; in CI (`ci`, from `CI=true`) it is a failure.
pub fn skip_or_fail(missing: &MissingBinary, ci: bool) -> Unavailable {
    if ci {
        Unavailable::Fail(format!(
            "CI=true and the test control plane cannot start: {missing}"
        ))
    } else {
        Unavailable::Skip(format!("skipped: {missing}"))
    }
}

/// Whether `CI` says this is a CI run (`true` or `1`).
pub fn ci_from_env() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(paths: &'static [&'static str]) -> impl Fn(&Path) -> bool {
        move |p: &Path| paths.iter().any(|q| Path::new(q) == p)
    }

    #[test]
    fn the_per_binary_variable_wins_and_has_no_fallback() {
        let sources = BinarySources::with_vars([
            ("TEST_ASSET_KUBE_APISERVER", "/opt/a/kube-apiserver"),
            (RORQUAL_KUBE_BIN, "/opt/b"),
        ]);
        let found = sources.locate(
            Component::KubeApiserver,
            &only(&["/opt/a/kube-apiserver", "/opt/b/kube-apiserver"]),
        );
        assert_eq!(found.unwrap(), Path::new("/opt/a/kube-apiserver"));

        let err = sources
            .locate(Component::KubeApiserver, &only(&["/opt/b/kube-apiserver"]))
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("$TEST_ASSET_KUBE_APISERVER=/opt/a/kube-apiserver (no such file)"),
            "{message}"
        );
    }

    #[test]
    fn directories_are_searched_in_order_and_a_lacking_one_falls_through() {
        let sources = BinarySources::with_vars([
            (KUBEBUILDER_ASSETS, "/assets"),
            (RORQUAL_KUBE_BIN, "/built"),
        ]);
        let exists = only(&[
            "/assets/kube-apiserver",
            "/built/kube-apiserver",
            "/built/kube-controller-manager",
        ]);
        assert_eq!(
            sources.locate(Component::KubeApiserver, &exists).unwrap(),
            Path::new("/assets/kube-apiserver")
        );
        assert_eq!(
            sources
                .locate(Component::KubeControllerManager, &exists)
                .unwrap(),
            Path::new("/built/kube-controller-manager")
        );
    }

    #[test]
    fn the_cache_comes_before_path() {
        let sources = BinarySources::with_vars([])
            .with_cache(
                "/cache",
                vec![PathBuf::from("/cache/v-new"), PathBuf::from("/cache/v-old")],
            )
            .with_path(vec![PathBuf::from("/usr/bin")]);
        let exists = only(&[
            "/cache/v-old/kube-scheduler",
            "/cache/v-new/kube-scheduler",
            "/usr/bin/kube-scheduler",
            "/usr/bin/etcd",
        ]);
        assert_eq!(
            sources.locate(Component::KubeScheduler, &exists).unwrap(),
            Path::new("/cache/v-new/kube-scheduler")
        );
        assert_eq!(
            sources.locate(Component::Etcd, &exists).unwrap(),
            Path::new("/usr/bin/etcd")
        );
    }

    #[test]
    fn a_missing_binary_names_the_variables_and_the_build_command() {
        let sources =
            BinarySources::with_vars([]).with_cache("/home/u/.cache/rorqual/kube", vec![]);
        let err = sources
            .locate(Component::KubeApiserver, &|_: &Path| false)
            .unwrap_err();
        assert_eq!(err.component, Component::KubeApiserver);
        let skipped = skip_or_fail(&err, false);
        let Unavailable::Skip(line) = skipped else {
            panic!("outside CI a missing binary skips: {skipped:?}")
        };
        for needle in [
            "skipped: kube-apiserver not found",
            "$TEST_ASSET_KUBE_APISERVER (unset)",
            "$KUBEBUILDER_ASSETS (unset)",
            "$RORQUAL_KUBE_BIN (unset)",
            "/home/u/.cache/rorqual/kube (0 complete builds)",
            "scripts/build-kube",
        ] {
            assert!(line.contains(needle), "`{needle}` missing from: {line}");
        }

        let etcd = sources
            .locate(Component::Etcd, &|_: &Path| false)
            .unwrap_err();
        let Unavailable::Fail(message) = skip_or_fail(&etcd, true) else {
            panic!("with CI=true a missing binary fails")
        };
        assert!(message.starts_with("CI=true"), "{message}");
        assert!(message.contains("$TEST_ASSET_ETCD (unset)"), "{message}");
        assert!(message.contains("apt-get install etcd-server"), "{message}");
    }
}
