//! A real Kubernetes control plane for tests, offline: an envtest for Rust.
//!
//! [`TestEnv`] starts etcd, kube-apiserver, kube-controller-manager and, when asked,
//! kube-scheduler as child processes on free loopback ports, with their data and files in a
//! temporary directory:
//! - the apiserver serves TLS with a test CA generated for this start (SAN 127.0.0.1),
//!   authenticates bearer tokens from a token file and authorizes with `Node,RBAC`, signs
//!   service-account tokens with a fresh key;
//! - the controller-manager runs its default controllers, among them node lifecycle (so the
//!   `node.kubernetes.io/not-ready` taint is managed) and the service-account token controller
//!   (pods are admitted only once a namespace's `default` ServiceAccount has its token);
//! - kube-scheduler runs with its defaults or with a configuration of yours
//!   ([`TestEnvBuilder::scheduler_config`]: extenders, profiles);
//! - each start waits until every program answers, and a program that exits or stays silent
//!   is reported with the last lines of its log.
//!
//! Every child is stopped when the [`TestEnv`] drops, and also when the test binary ends any
//! other way, `kill -9` included (see the `process` module: process groups and a parent-death
//! signal set through `setpriv`).
//!
//! Binaries are found as described in [`binaries`](BinarySources): `TEST_ASSET_*`,
//! `KUBEBUILDER_ASSETS`, `RORQUAL_KUBE_BIN`, the cache `scripts/build-kube` fills, `PATH`.
//! With `USE_EXISTING_CLUSTER=true` nothing starts: the current kubeconfig (`KUBECONFIG`, else
//! `~/.kube/config`) is used.
//!
//! A test binary shares one control plane among its tests ([`TestEnv::shared_or_skip`], or the
//! [`testenv_or_skip!`](crate::testenv_or_skip) macro) and gives each test its own namespace
//! ([`TestEnv::new_namespace`]): the apiserver takes about 5 s and 380 MB to start.
//!
//! ```no_run
//! # async fn demo() {
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::Api;
//!
//! // Outside CI, prints "skipped: kube-apiserver not found (…); get it with: …" and returns
//! // when a binary is missing; with CI=true that is a failure.
//! let env = rorqual_kube::testenv_or_skip!();
//! let namespace = env.new_namespace("configmaps").await.expect("namespace");
//! let client = env.client().await.expect("client");
//! let config_maps: Api<ConfigMap> = Api::namespaced(client, &namespace);
//! # }
//! ```

mod binaries;
mod certs;
mod eventually;
mod kubeconfig;
mod namespace;
mod ports;
mod process;
mod readiness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};

pub use binaries::{
    BUILD_COMMAND, BinarySources, Component, KUBEBUILDER_ASSETS, MissingBinary, RORQUAL_KUBE_BIN,
    RORQUAL_KUBE_CACHE, Unavailable, ci_from_env, skip_or_fail,
};
pub use eventually::eventually;
pub use namespace::TEST_NAMESPACE_LABEL;
pub use process::process_alive;

use namespace::Readiness;
use process::ChildProcess;
use readiness::{component_client, etcd_health, http_ok, wait_ready};

/// The variable that makes [`TestEnv`] use the current kubeconfig instead of starting a
/// control plane (value `true`).
pub const USE_EXISTING_CLUSTER: &str = "USE_EXISTING_CLUSTER";

/// The service CIDR the apiserver hands ClusterIPs from.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";

/// Prefix of the temporary directories; the process id follows, so a later start can remove
/// the directories of test binaries that died without cleaning up.
const DIR_PREFIX: &str = "rorqual-testenv.";

/// How many times a start is retried when a program lost its port to another process.
const START_ATTEMPTS: u32 = 3;

/// Errors of starting and using the test control plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A binary was not found; see [`skip_or_fail`] for what a test does then.
    #[error(transparent)]
    MissingBinary(#[from] MissingBinary),
    /// A file or process operation failed.
    #[error("{context}")]
    Io {
        /// What was being done, naming the file or program.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Generating the test CA or a key failed.
    #[error("generating the test control plane's certificates")]
    Certificates(#[source] rcgen::Error),
    /// A program exited while starting.
    #[error("{component} exited during start ({status}); its log ends:\n{log_tail}")]
    Exited {
        /// The program.
        component: Component,
        /// Its exit status.
        status: String,
        /// The last lines of its log.
        log_tail: String,
    },
    /// A program did not become ready in time.
    #[error(
        "{component} at {url} was not ready after {waited:?} (last: {last}); its log ends:\n{log_tail}"
    )]
    NotReady {
        /// The program.
        component: Component,
        /// The address probed.
        url: String,
        /// How long the start waited.
        waited: Duration,
        /// The last probe's answer or error.
        last: String,
        /// The last lines of its log.
        log_tail: String,
    },
    /// A kubeconfig could not be read or used.
    #[error("{context}")]
    Kubeconfig {
        /// Which kubeconfig, and what was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Writing a kubeconfig as YAML failed.
    #[error("encoding the kubeconfig for {path}")]
    KubeconfigEncoding {
        /// Where it was to be written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: yaml_serde::Error,
    },
    /// A request to the apiserver failed.
    #[error("{context}")]
    Kube {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: kube::Error,
    },
    /// The configuration given to [`TestEnvBuilder::scheduler_config`] is not a YAML
    /// mapping (or its `clientConnection` / `leaderElection` is not one).
    #[error("the kube-scheduler configuration for the test control plane {what}")]
    SchedulerConfig {
        /// What is wrong with it.
        what: String,
        /// The YAML parse error, if that was it.
        #[source]
        source: Option<yaml_serde::Error>,
    },
    /// The operation needs a control plane started here, not an existing cluster
    /// (`USE_EXISTING_CLUSTER=true`).
    #[error(
        "cannot {what} on an existing cluster ({USE_EXISTING_CLUSTER}=true): only a control plane this process started can"
    )]
    ExistingCluster {
        /// What was asked.
        what: String,
    },
    /// A new namespace did not get what pods need in time.
    #[error(
        "namespace {namespace} still lacks {missing} after {waited:?} (the controller-manager creates it)"
    )]
    NamespaceNotReady {
        /// The namespace.
        namespace: String,
        /// How long it was waited for.
        waited: Duration,
        /// What it lacks.
        missing: String,
    },
}

impl Error {
    /// Whether a program failed because another process took its port first (a new start on
    /// new ports may pass).
    pub fn is_port_conflict(&self) -> bool {
        match self {
            Error::Exited { log_tail, .. } | Error::NotReady { log_tail, .. } => {
                log_tail.contains("address already in use")
            }
            _ => false,
        }
    }
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to start a [`TestEnv`]; from [`TestEnv::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct TestEnvBuilder {
    controller_manager: bool,
    scheduler: bool,
    scheduler_config: Option<String>,
    start_timeout: Duration,
    namespace_timeout: Duration,
    apiserver_args: Vec<String>,
    sources: Option<BinarySources>,
    use_existing_cluster: Option<bool>,
}

impl Default for TestEnvBuilder {
    fn default() -> Self {
        TestEnvBuilder {
            controller_manager: true,
            scheduler: false,
            scheduler_config: None,
            start_timeout: Duration::from_secs(60),
            namespace_timeout: Duration::from_secs(30),
            apiserver_args: Vec::new(),
            sources: None,
            use_existing_cluster: None,
        }
    }
}

impl TestEnvBuilder {
    /// Whether to run kube-controller-manager (default: yes). Without it namespaces get no
    /// service accounts, so pods are rejected, and nodes no taints.
    pub fn controller_manager(mut self, run: bool) -> Self {
        self.controller_manager = run;
        self
    }

    /// Whether to run kube-scheduler (default: no).
    pub fn scheduler(mut self, run: bool) -> Self {
        self.scheduler = run;
        self
    }

    /// Runs kube-scheduler (as [`scheduler(true)`](TestEnvBuilder::scheduler)) with this
    /// configuration (a `KubeSchedulerConfiguration` in YAML, in the version the binary reads:
    /// `kubescheduler.config.k8s.io/v1beta1` for v1.20), passed as `--config`: extenders,
    /// profiles, plugin arguments.
    ///
    /// With `--config` kube-scheduler ignores its `--kubeconfig` and `--leader-elect` flags,
    /// so the start sets `clientConnection.kubeconfig` (this control plane's scheduler
    /// credentials, a file the start writes) and `leaderElection.leaderElect: false` in it,
    /// replacing those two values and keeping everything else. Ports, serving certificates
    /// and delegated authentication stay on flags, as without a configuration.
    pub fn scheduler_config(mut self, yaml: impl Into<String>) -> Self {
        self.scheduler = true;
        self.scheduler_config = Some(yaml.into());
        self
    }

    /// How long each program may take to become ready (default 60 s; the apiserver needs
    /// about 5 s on an idle machine).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// How long [`TestEnv::new_namespace`] waits for the `default` ServiceAccount and its
    /// token (default 30 s).
    pub fn namespace_timeout(mut self, timeout: Duration) -> Self {
        self.namespace_timeout = timeout;
        self
    }

    /// An extra kube-apiserver flag (`--feature-gates=…`); later flags override earlier ones.
    pub fn apiserver_arg(mut self, arg: impl Into<String>) -> Self {
        self.apiserver_args.push(arg.into());
        self
    }

    /// Where binaries are looked up (default: [`BinarySources::from_env`]).
    pub fn binaries(mut self, sources: BinarySources) -> Self {
        self.sources = Some(sources);
        self
    }

    /// Use the current kubeconfig instead of starting anything (default: whether
    /// `USE_EXISTING_CLUSTER` is `true`).
    pub fn use_existing_cluster(mut self, existing: bool) -> Self {
        self.use_existing_cluster = Some(existing);
        self
    }

    /// Starts the control plane (or connects to the existing cluster) and waits until it is
    /// ready.
    ///
    /// # Errors
    ///
    /// [`Error::MissingBinary`] before anything starts when a binary is missing; otherwise
    /// what failed, with the program's log for a program that did not come up.
    pub async fn start(self) -> Result<TestEnv> {
        let existing = self.use_existing_cluster.unwrap_or_else(|| {
            std::env::var(USE_EXISTING_CLUSTER).is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        });
        if existing {
            return TestEnv::existing(self.namespace_timeout).await;
        }
        let binaries = self.locate_binaries()?;
        let mut attempt = 1;
        loop {
            match self.try_start(&binaries).await {
                Err(e) if e.is_port_conflict() && attempt < START_ATTEMPTS => {
                    tracing::warn!("test control plane lost a port, starting again: {e}");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// The binaries this start needs.
    fn locate_binaries(&self) -> Result<Binaries> {
        let sources = self.sources.clone().unwrap_or_else(BinarySources::from_env);
        let exists = |p: &Path| p.is_file();
        Ok(Binaries {
            etcd: sources.locate(Component::Etcd, &exists)?,
            apiserver: sources.locate(Component::KubeApiserver, &exists)?,
            controller_manager: if self.controller_manager {
                Some(sources.locate(Component::KubeControllerManager, &exists)?)
            } else {
                None
            },
            scheduler: if self.scheduler {
                Some(sources.locate(Component::KubeScheduler, &exists)?)
            } else {
                None
            },
        })
    }

    async fn try_start(&self, binaries: &Binaries) -> Result<TestEnv> {
        let began = Instant::now();
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}.", std::process::id()))
            .tempdir()
            .map_err(|source| Error::Io {
                context: "creating the test control plane's temporary directory".to_owned(),
                source,
            })?;
        let files = Files::write(dir.path())?;
        let port = || {
            ports::free_port().map_err(|source| Error::Io {
                context: "finding a free loopback port".to_owned(),
                source,
            })
        };
        let mut env = TestEnv {
            kubeconfig: Kubeconfig::default(),
            server_url: String::new(),
            readiness: Readiness::Created,
            namespace_timeout: self.namespace_timeout,
            processes: Vec::new(),
            dir: None,
            scheduler_launch: None,
        };

        // etcd
        let (etcd_port, peer_port) = (port()?, port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let data = dir.path().join("etcd");
        let etcd_args = vec![
            "--name=testenv".to_owned(),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=testenv={peer_url}"),
        ];
        let etcd = env.spawn(Component::Etcd, &binaries.etcd, &etcd_args, dir.path())?;
        wait_ready(etcd, &etcd_url, self.start_timeout, || {
            etcd_health(etcd_port)
        })
        .await?;

        // kube-apiserver
        let api_port = port()?;
        let server_url = format!("https://127.0.0.1:{api_port}");
        let mut api_args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={api_port}"),
            "--insecure-port=0".to_owned(),
            format!(
                "--cert-dir={}",
                dir.path().join("apiserver-certs").display()
            ),
            format!("--tls-cert-file={}", files.serving_cert.display()),
            format!("--tls-private-key-file={}", files.serving_key.display()),
            format!("--client-ca-file={}", files.ca_cert.display()),
            format!("--token-auth-file={}", files.tokens.display()),
            "--authorization-mode=Node,RBAC".to_owned(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            format!(
                "--service-account-key-file={}",
                files.service_account_public_key.display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                files.service_account_key.display()
            ),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            "--endpoint-reconciler-type=none".to_owned(),
            "--allow-privileged=true".to_owned(),
        ];
        api_args.extend(self.apiserver_args.iter().cloned());
        env.kubeconfig =
            Kubeconfig::from_yaml(&files.admin_kubeconfig(&server_url)).map_err(|source| {
                Error::Kubeconfig {
                    context: "reading the admin kubeconfig this crate rendered".to_owned(),
                    source,
                }
            })?;
        env.server_url.clone_from(&server_url);
        let admin = env.client().await?;
        let apiserver = env.spawn(
            Component::KubeApiserver,
            &binaries.apiserver,
            &api_args,
            dir.path(),
        )?;
        wait_ready(apiserver, &server_url, self.start_timeout, || {
            http_ok(&admin, "/readyz")
        })
        .await?;

        // kube-controller-manager and kube-scheduler: both only need the apiserver.
        let mut waiting = Vec::new();
        if let Some(binary) = &binaries.controller_manager {
            let kubeconfig = files.write_kubeconfig(
                "controller-manager",
                &server_url,
                "system:kube-controller-manager",
                &files.controller_manager_token,
            )?;
            let cm_port = port()?;
            let args = vec![
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--authentication-kubeconfig={}", kubeconfig.display()),
                format!("--authorization-kubeconfig={}", kubeconfig.display()),
                "--port=0".to_owned(),
                format!("--secure-port={cm_port}"),
                "--bind-address=127.0.0.1".to_owned(),
                format!("--cert-dir={}", dir.path().join("cm-certs").display()),
                "--leader-elect=false".to_owned(),
                "--controllers=*".to_owned(),
                // Each controller acts as its own service account (the ReplicaSet controller
                // as `replicaset-controller`, …), whose bootstrap RBAC roles let it create
                // pods; `system:kube-controller-manager` alone may not.
                "--use-service-account-credentials=true".to_owned(),
                format!(
                    "--service-account-private-key-file={}",
                    files.service_account_key.display()
                ),
                format!("--root-ca-file={}", files.ca_cert.display()),
                format!("--cluster-signing-cert-file={}", files.ca_cert.display()),
                format!("--cluster-signing-key-file={}", files.ca_key.display()),
                format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            ];
            env.spawn(Component::KubeControllerManager, binary, &args, dir.path())?;
            waiting.push((env.processes.len() - 1, cm_port));
        }
        let scheduler_kubeconfig = files.write_kubeconfig(
            "scheduler",
            &server_url,
            "system:kube-scheduler",
            &files.scheduler_token,
        )?;
        env.scheduler_launch = Some(SchedulerLaunch {
            binary: binaries.scheduler.clone(),
            sources: self.sources.clone().unwrap_or_else(BinarySources::from_env),
            kubeconfig: scheduler_kubeconfig,
            dir: dir.path().to_owned(),
            start_timeout: self.start_timeout,
        });
        if binaries.scheduler.is_some() {
            waiting.push(env.spawn_scheduler(self.scheduler_config.as_deref())?);
        }
        for (index, health_port) in waiting {
            let health = component_client(health_port)?;
            let url = format!("https://127.0.0.1:{health_port}/healthz");
            let process = &mut env.processes[index];
            wait_ready(process, &url, self.start_timeout, || {
                http_ok(&health, "/healthz")
            })
            .await?;
        }

        let version = admin
            .apiserver_version()
            .await
            .map_err(|source| Error::Kube {
                context: format!("reading the version of {server_url}"),
                source,
            })?;
        env.readiness = if binaries.controller_manager.is_some() {
            readiness_for(&version.major, &version.minor)
        } else {
            Readiness::Created
        };
        env.dir = Some(dir);
        tracing::info!(
            "test control plane at {server_url} ready in {:?}",
            began.elapsed()
        );
        Ok(env)
    }
}

/// A kube-scheduler configuration (YAML) with `clientConnection.kubeconfig` set to
/// `kubeconfig` and `leaderElection.leaderElect` to false, everything else kept: kube-scheduler
/// reads neither from its flags once it has `--config`.
fn scheduler_config_for(yaml: &str, kubeconfig: &Path) -> Result<String> {
    use serde_json::Value;
    let mut doc: Value = yaml_serde::from_str(yaml).map_err(|source| Error::SchedulerConfig {
        what: "is not YAML".to_owned(),
        source: Some(source),
    })?;
    let not_mapping = |what: &str| Error::SchedulerConfig {
        what: format!("{what} is not a mapping"),
        source: None,
    };
    let Value::Object(fields) = &mut doc else {
        return Err(not_mapping("document"));
    };
    for (section, key, value) in [
        (
            "clientConnection",
            "kubeconfig",
            Value::from(kubeconfig.display().to_string()),
        ),
        ("leaderElection", "leaderElect", Value::Bool(false)),
    ] {
        let entry = fields
            .entry(section)
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        let Value::Object(section_fields) = entry else {
            return Err(not_mapping(section));
        };
        section_fields.insert(key.to_owned(), value);
    }
    yaml_serde::to_string(&doc).map_err(|source| Error::SchedulerConfig {
        what: "cannot be written back as YAML".to_owned(),
        source: Some(source),
    })
}

/// What a new namespace waits for on a server of this version: the token Secret before 1.24.
fn readiness_for(major: &str, minor: &str) -> Readiness {
    let number = |s: &str| -> Option<u32> {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    };
    match (number(major), number(minor)) {
        (Some(1), Some(minor)) if minor < 24 => Readiness::ServiceAccountToken,
        _ => Readiness::ServiceAccount,
    }
}

/// The binaries of one start.
#[derive(Debug)]
struct Binaries {
    etcd: PathBuf,
    apiserver: PathBuf,
    controller_manager: Option<PathBuf>,
    scheduler: Option<PathBuf>,
}

/// The files a start writes into its directory.
#[derive(Debug)]
struct Files {
    dir: PathBuf,
    ca_cert: PathBuf,
    ca_key: PathBuf,
    ca_pem: String,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    service_account_key: PathBuf,
    service_account_public_key: PathBuf,
    tokens: PathBuf,
    admin_token: String,
    controller_manager_token: String,
    scheduler_token: String,
}

impl Files {
    fn write(dir: &Path) -> Result<Files> {
        let certs = certs::ControlPlaneCerts::generate().map_err(Error::Certificates)?;
        let token = || {
            certs::random_token().map_err(|source| Error::Io {
                context: "reading /dev/urandom for a token".to_owned(),
                source,
            })
        };
        let files = Files {
            dir: dir.to_owned(),
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            ca_pem: certs.ca_cert.clone(),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            service_account_key: dir.join("service-account.key"),
            service_account_public_key: dir.join("service-account.pub"),
            tokens: dir.join("tokens.csv"),
            admin_token: token()?,
            controller_manager_token: token()?,
            scheduler_token: token()?,
        };
        // token,user,uid,"group1,group2" (the apiserver's --token-auth-file format).
        let tokens = format!(
            "{},admin,admin,\"system:masters\"\n{},system:kube-controller-manager,system:kube-controller-manager\n{},system:kube-scheduler,system:kube-scheduler\n",
            files.admin_token, files.controller_manager_token, files.scheduler_token
        );
        for (path, contents) in [
            (&files.ca_cert, certs.ca_cert.as_str()),
            (&files.ca_key, certs.ca_key.as_str()),
            (&files.serving_cert, certs.serving_cert.as_str()),
            (&files.serving_key, certs.serving_key.as_str()),
            (
                &files.service_account_key,
                certs.service_account_key.as_str(),
            ),
            (
                &files.service_account_public_key,
                certs.service_account_public_key.as_str(),
            ),
            (&files.tokens, tokens.as_str()),
        ] {
            write_private(path, contents)?;
        }
        Ok(files)
    }

    fn admin_kubeconfig(&self, server_url: &str) -> String {
        kubeconfig::render(server_url, &self.ca_pem, "admin", &self.admin_token)
    }

    fn write_kubeconfig(
        &self,
        name: &str,
        server_url: &str,
        user: &str,
        token: &str,
    ) -> Result<PathBuf> {
        let path = self.dir.join(format!("{name}.kubeconfig"));
        write_private(
            &path,
            &kubeconfig::render(server_url, &self.ca_pem, user, token),
        )?;
        Ok(path)
    }
}

/// Writes a file only its owner can read (keys, tokens, kubeconfigs).
fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|source| Error::Io {
            context: format!("writing {}", path.display()),
            source,
        })
}

/// Removes the temporary directories of test binaries that died without removing theirs (a
/// shared control plane lives in a static, which is never dropped; a killed binary drops
/// nothing). The owner's process id is in the name.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let owner = rest
            .split('.')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| !process_alive(pid)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A running test control plane (or a connection to an existing cluster). Dropping it stops
/// every program it started and removes its files.
#[derive(Debug)]
pub struct TestEnv {
    kubeconfig: Kubeconfig,
    server_url: String,
    readiness: Readiness,
    namespace_timeout: Duration,
    processes: Vec<ChildProcess>,
    dir: Option<tempfile::TempDir>,
    /// How to (re)start kube-scheduler; `None` on an existing cluster.
    scheduler_launch: Option<SchedulerLaunch>,
}

/// What starting this control plane's kube-scheduler needs, kept for
/// [`TestEnv::restart_scheduler`].
#[derive(Debug)]
struct SchedulerLaunch {
    /// The binary, once located (at the start when it ran a scheduler, else at the first
    /// restart).
    binary: Option<PathBuf>,
    sources: BinarySources,
    /// The `system:kube-scheduler` kubeconfig.
    kubeconfig: PathBuf,
    /// The control plane's directory (configuration, certificates, log).
    dir: PathBuf,
    start_timeout: Duration,
}

impl TestEnv {
    /// How to start one: which programs, timeouts, where binaries come from.
    pub fn builder() -> TestEnvBuilder {
        TestEnvBuilder::default()
    }

    /// Starts etcd, kube-apiserver and kube-controller-manager with the defaults (see
    /// [`TestEnvBuilder::start`]).
    ///
    /// # Errors
    ///
    /// As [`TestEnvBuilder::start`].
    pub async fn start() -> Result<TestEnv> {
        TestEnv::builder().start().await
    }

    /// The control plane this test binary shares among its tests, started by the first caller
    /// (default settings); `None` after printing `skipped: <why and how to build it>` when a
    /// binary is missing outside CI.
    ///
    /// It lives until the test binary exits; its programs are then killed by their
    /// parent-death signal. Give each test its own namespace ([`TestEnv::new_namespace`]),
    /// and make a [`client`](TestEnv::client) per test: a `kube::Client` belongs to the tokio
    /// runtime it was made on, and each `#[tokio::test]` has its own.
    ///
    /// # Panics
    ///
    /// When a binary is missing and `CI=true`, and when the control plane does not start (the
    /// message quotes the failing program's log). Every caller sees the same outcome; the
    /// start is not retried.
    pub async fn shared_or_skip() -> Option<&'static TestEnv> {
        static SHARED: tokio::sync::OnceCell<Result<TestEnv>> = tokio::sync::OnceCell::const_new();
        match SHARED.get_or_init(TestEnv::start).await {
            Ok(env) => Some(env),
            Err(Error::MissingBinary(missing)) => match skip_or_fail(missing, ci_from_env()) {
                Unavailable::Skip(line) => {
                    println!("{line}");
                    None
                }
                Unavailable::Fail(message) => panic!("{message}"),
            },
            Err(e) => panic!("the shared test control plane did not start: {e}"),
        }
    }

    /// A client acting as the admin (`system:masters`) on this control plane.
    ///
    /// # Errors
    ///
    /// [`Error::Kubeconfig`] or [`Error::Kube`] when the client cannot be built.
    pub async fn client(&self) -> Result<kube::Client> {
        let config = kube::Config::from_custom_kubeconfig(
            self.kubeconfig.clone(),
            &KubeConfigOptions::default(),
        )
        .await
        .map_err(|source| Error::Kubeconfig {
            context: format!("building a client for {}", self.server_url),
            source,
        })?;
        kube::Client::try_from(config).map_err(|source| Error::Kube {
            context: format!("building a client for {}", self.server_url),
            source,
        })
    }

    /// The apiserver's URL (`https://127.0.0.1:PORT`).
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The admin kubeconfig (the CA inline, a bearer token).
    pub fn kubeconfig(&self) -> &Kubeconfig {
        &self.kubeconfig
    }

    /// Writes the admin kubeconfig to `path` (mode 0600), for `kubectl --kubeconfig PATH`.
    ///
    /// # Errors
    ///
    /// [`Error::KubeconfigEncoding`] or [`Error::Io`].
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let yaml = yaml_serde::to_string(&self.kubeconfig).map_err(|source| {
            Error::KubeconfigEncoding {
                path: path.to_owned(),
                source,
            }
        })?;
        write_private(path, &yaml)
    }

    /// Creates a namespace `<prefix>-<6 random hex digits>` (labelled
    /// [`TEST_NAMESPACE_LABEL`]) and returns its name once pods can be created in it: its
    /// `default` ServiceAccount exists and, before Kubernetes 1.24, has its token Secret.
    ///
    /// Namespaces are not deleted: a started control plane goes with its etcd; on an existing
    /// cluster, `kubectl delete namespace -l rorqual.io/testenv=true` removes them.
    ///
    /// # Errors
    ///
    /// [`Error::Kube`] when the apiserver refuses; [`Error::NamespaceNotReady`] when the
    /// account or token does not appear in time.
    pub async fn new_namespace(&self, prefix: &str) -> Result<String> {
        namespace::create(
            self.client().await?,
            prefix,
            self.readiness,
            self.namespace_timeout,
        )
        .await
    }

    /// Whether this is a connection to an existing cluster (`USE_EXISTING_CLUSTER=true`).
    pub fn uses_existing_cluster(&self) -> bool {
        self.dir.is_none()
    }

    /// The programs started and their process ids, in start order (empty for an existing
    /// cluster).
    pub fn processes(&self) -> Vec<(Component, u32)> {
        self.processes
            .iter()
            .map(|p| (p.component(), p.pid()))
            .collect()
    }

    /// The last `lines` lines of a program's log (`None` when it was not started).
    pub fn log_tail(&self, component: Component, lines: usize) -> Option<String> {
        self.processes
            .iter()
            .find(|p| p.component() == component)
            .map(|p| p.log_tail(lines))
    }

    /// Connects to the cluster of the current kubeconfig.
    async fn existing(namespace_timeout: Duration) -> Result<TestEnv> {
        let kubeconfig = Kubeconfig::read().map_err(|source| Error::Kubeconfig {
            context: format!(
                "{USE_EXISTING_CLUSTER}=true: reading the kubeconfig (KUBECONFIG, else ~/.kube/config)"
            ),
            source,
        })?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig {
                    context: "building a client from the current kubeconfig context".to_owned(),
                    source,
                })?;
        let server_url = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_owned();
        let client = kube::Client::try_from(config).map_err(|source| Error::Kube {
            context: format!("building a client for {server_url}"),
            source,
        })?;
        let version = client
            .apiserver_version()
            .await
            .map_err(|source| Error::Kube {
                context: format!("reading the version of {server_url}"),
                source,
            })?;
        let mut env = TestEnv {
            kubeconfig,
            server_url,
            readiness: Readiness::ServiceAccount,
            namespace_timeout,
            processes: Vec::new(),
            dir: None,
            scheduler_launch: None,
        };
        env.readiness = readiness_for(&version.major, &version.minor);
        Ok(env)
    }

    /// Stops this control plane's kube-scheduler, if one runs, and starts a new one with
    /// `config` (a KubeSchedulerConfiguration, completed as
    /// [`TestEnvBuilder::scheduler_config`] completes it) or, with `None`, its defaults; returns
    /// once the new one answers its health check. Works whether or not the start ran a
    /// scheduler: a benchmark can compare configurations on one control plane, each scheduler
    /// a fresh process. The old scheduler's log is replaced by the new one's.
    ///
    /// # Errors
    ///
    /// [`Error::ExistingCluster`] on an existing cluster (its scheduler is not ours),
    /// [`Error::MissingBinary`], [`Error::SchedulerConfig`], or what
    /// [`TestEnvBuilder::start`] reports for a program that does not come up.
    pub async fn restart_scheduler(&mut self, config: Option<&str>) -> Result<()> {
        self.stop_scheduler()?;
        let mut attempt = 1;
        loop {
            let (index, health_port) = self.spawn_scheduler(config)?;
            let timeout = self
                .scheduler_launch
                .as_ref()
                .map_or(Duration::from_secs(60), |l| l.start_timeout);
            let health = component_client(health_port)?;
            let url = format!("https://127.0.0.1:{health_port}/healthz");
            let process = &mut self.processes[index];
            match wait_ready(process, &url, timeout, || http_ok(&health, "/healthz")).await {
                Err(e) if e.is_port_conflict() && attempt < START_ATTEMPTS => {
                    tracing::warn!("kube-scheduler lost its port, starting it again: {e}");
                    attempt += 1;
                    self.stop_scheduler()?;
                }
                result => return result,
            }
        }
    }

    /// Stops this control plane's kube-scheduler (a no-op when none runs).
    ///
    /// # Errors
    ///
    /// [`Error::ExistingCluster`] on an existing cluster.
    pub fn stop_scheduler(&mut self) -> Result<()> {
        if self.scheduler_launch.is_none() {
            return Err(Error::ExistingCluster {
                what: "stop or restart kube-scheduler".to_owned(),
            });
        }
        self.processes.retain_mut(|p| {
            if p.component() == Component::KubeScheduler {
                p.stop();
                false
            } else {
                true
            }
        });
        Ok(())
    }

    /// Starts kube-scheduler with `config` (or its defaults); its index in `processes` and
    /// its health port. Does not wait for it.
    fn spawn_scheduler(&mut self, config: Option<&str>) -> Result<(usize, u16)> {
        let Some(launch) = self.scheduler_launch.as_mut() else {
            return Err(Error::ExistingCluster {
                what: "start kube-scheduler".to_owned(),
            });
        };
        let binary = match &launch.binary {
            Some(binary) => binary.clone(),
            None => {
                let found = launch
                    .sources
                    .locate(Component::KubeScheduler, &|p: &Path| p.is_file())?;
                launch.binary = Some(found.clone());
                found
            }
        };
        let port = ports::free_port().map_err(|source| Error::Io {
            context: "finding a free loopback port".to_owned(),
            source,
        })?;
        let kubeconfig = launch.kubeconfig.clone();
        let dir = launch.dir.clone();
        let mut args = vec![
            format!("--authentication-kubeconfig={}", kubeconfig.display()),
            format!("--authorization-kubeconfig={}", kubeconfig.display()),
            "--port=0".to_owned(),
            format!("--secure-port={port}"),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--cert-dir={}", dir.join("scheduler-certs").display()),
        ];
        match config {
            Some(yaml) => {
                let path = dir.join("scheduler-config.yaml");
                write_private(&path, &scheduler_config_for(yaml, &kubeconfig)?)?;
                args.push(format!("--config={}", path.display()));
            }
            None => args.extend([
                format!("--kubeconfig={}", kubeconfig.display()),
                "--leader-elect=false".to_owned(),
            ]),
        }
        self.spawn(Component::KubeScheduler, &binary, &args, &dir)?;
        Ok((self.processes.len() - 1, port))
    }

    /// Starts a program of this control plane, its log in `dir`.
    fn spawn(
        &mut self,
        component: Component,
        binary: &Path,
        args: &[String],
        dir: &Path,
    ) -> Result<&mut ChildProcess> {
        let log = dir.join(format!("{component}.log"));
        let process =
            ChildProcess::spawn(component, binary, args, &log).map_err(|source| Error::Io {
                context: format!("starting {}", binary.display()),
                source,
            })?;
        self.processes.push(process);
        let index = self.processes.len() - 1;
        Ok(&mut self.processes[index])
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // The reverse of the start order: clients of the apiserver first, etcd last.
        while let Some(mut process) = self.processes.pop() {
            process.stop();
        }
    }
}

/// The shared control plane of this test binary ([`TestEnv::shared_or_skip`]), or `return`
/// from the calling test (which must return `()`) after printing why it was skipped.
#[macro_export]
macro_rules! testenv_or_skip {
    () => {
        match $crate::testenv::TestEnv::shared_or_skip().await {
            ::std::option::Option::Some(env) => env,
            ::std::option::Option::None => return,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_secrets_are_awaited_before_1_24_only() {
        assert_eq!(readiness_for("1", "20"), Readiness::ServiceAccountToken);
        assert_eq!(readiness_for("1", "23+"), Readiness::ServiceAccountToken);
        assert_eq!(readiness_for("1", "24"), Readiness::ServiceAccount);
        assert_eq!(readiness_for("1", "33"), Readiness::ServiceAccount);
    }

    #[test]
    fn a_scheduler_config_gets_this_control_planes_kubeconfig_and_no_leader_election() {
        let given = "apiVersion: kubescheduler.config.k8s.io/v1beta1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: /elsewhere/scheduler.conf
  qps: 200
leaderElection:
  leaderElect: true
extenders:
- urlPrefix: http://127.0.0.1:8888
  filterVerb: filter
";
        let written =
            scheduler_config_for(given, Path::new("/tmp/testenv/scheduler.kubeconfig")).unwrap();
        let doc: serde_json::Value = yaml_serde::from_str(&written).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "apiVersion": "kubescheduler.config.k8s.io/v1beta1",
                "kind": "KubeSchedulerConfiguration",
                "clientConnection": {
                    "kubeconfig": "/tmp/testenv/scheduler.kubeconfig",
                    "qps": 200
                },
                "leaderElection": {"leaderElect": false},
                "extenders": [{"urlPrefix": "http://127.0.0.1:8888", "filterVerb": "filter"}]
            })
        );
        // Sections the caller left out are added.
        let minimal =
            scheduler_config_for("kind: KubeSchedulerConfiguration\n", Path::new("/k")).unwrap();
        let doc: serde_json::Value = yaml_serde::from_str(&minimal).unwrap();
        assert_eq!(doc["clientConnection"]["kubeconfig"], "/k");
        assert_eq!(doc["leaderElection"]["leaderElect"], false);
    }

    #[test]
    fn a_scheduler_config_that_is_no_mapping_is_refused_by_part() {
        for (yaml, part) in [
            ("- a\n- b\n", "document is not a mapping"),
            ("clientConnection: 3\n", "clientConnection is not a mapping"),
            ("kind: [unclosed\n", "is not YAML"),
        ] {
            let err = scheduler_config_for(yaml, Path::new("/k")).unwrap_err();
            assert!(err.to_string().contains(part), "{yaml}: {err}");
        }
    }

    #[test]
    fn only_a_bind_failure_is_a_port_conflict() {
        let exited = |log: &str| Error::Exited {
            component: Component::KubeApiserver,
            status: "exit status: 1".to_owned(),
            log_tail: log.to_owned(),
        };
        assert!(
            exited("failed to listen on 127.0.0.1:10001: listen tcp: bind: address already in use")
                .is_port_conflict()
        );
        assert!(!exited("unknown flag: --bogus").is_port_conflict());
    }
}
