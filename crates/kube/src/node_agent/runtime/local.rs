//! [`LocalRuntime`]: each container's `command` and `args` run as a real process on this
//! host, supervised by rorqual-local's [`SupervisedProcess`] (own process group, SIGTERM, the
//! grace period, SIGKILL) and probed with rorqual-local's HTTP / TCP / exec [`probe`]s.
//!
//! - **Addresses**: every pod gets its own address from an [`AddressPool`] (by default one
//!   shared by the process's runtimes, `127.N.0.0/16` with `N` from the process id: all of
//!   `127.0.0.0/8` is on the loopback interface) and keeps its declared
//!   ports. The address is in the container's environment as `POD_IP` (and through
//!   `fieldRef: status.podIP`); **a process must listen on `$POD_IP:<containerPort>`** (a
//!   process that binds `0.0.0.0` takes the port for every pod on the host). Probes connect to
//!   the pod's address. With a network ([`LocalRuntimeBuilder::network`]), the pod runs in
//!   the network namespace the network attaches it to, with the network's address instead.
//! - **Environment**: `POD_IP`, `POD_NAME`, `POD_NAMESPACE`, `NODE_NAME`, then the
//!   container's `env` (literal values with `$(VAR)` references, and `fieldRef` values:
//!   `metadata.name`, `metadata.namespace`, `metadata.uid`, `metadata.labels['…']`,
//!   `metadata.annotations['…']`, `spec.nodeName`, `spec.serviceAccountName`,
//!   `status.podIP`, `status.hostIP`). Secrets, ConfigMaps and `envFrom` are not read: such a
//!   container waits with `CreateContainerConfigError` naming the variable.
//! - **Commands** must be given (`command`, then `args`, with `$(VAR)` expanded); images are
//!   not run. A container without a command, or whose program cannot be started, waits with
//!   `RunContainerError` and the reason (`cannot run `/no/such`: No such file or directory`),
//!   retried with the restart backoff.
//! - **Restarts** follow the pod's `restartPolicy`: the first restart is immediate, later ones
//!   wait out a capped exponential backoff (10 s doubling to 5 min, as the kubelet;
//!   configurable) as `CrashLoopBackOff`; a container that ran for twice the longest delay
//!   starts over. A failing liveness probe stops the container (with the grace period) and
//!   restarts it under the same policy.
//! - **Logs**: stdout and stderr of each container append to `<state dir>/<namespace>_<pod>_<uid>/logs/<container>.log`
//!   (across restarts), readable and followable through [`PodRuntime::logs`].
//! - **Deletion** sends SIGTERM to every container's process group, waits the grace period,
//!   then sends SIGKILL; the pod's directory is removed.
//! - **Image changes** patched into a running pod restart that container (stopped with the
//!   grace period, started again at once, its restart count increased), as on a kubelet.
//! - Init containers, volumes and `kubectl exec` are not supported.
//!
//! [`SupervisedProcess`]: rorqual_local::process::SupervisedProcess
//! [`probe`]: rorqual_local::probe

use std::collections::HashMap;
use std::convert::Infallible;
use std::error::Error as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Container, Pod};
use parking_lot::{Mutex, RwLock};
use rorqual_core::backoff::Backoff;
use rorqual_core::engine::LogStream;
use rorqual_core::model::{AppKey, Probe};
use rorqual_core::network::{AttachRequest, Network};
use rorqual_local::probe::{ProbeTarget, ProbeTracker, check, liveness};
use rorqual_local::process::{
    ExitReason, ProcessIdentity, ProcessSpec, SupervisedProcess, kill_group_now,
};
use tokio::sync::watch;

use super::env::{PodFacts, command_line, container_env, ports, probe, probe_ports};
use super::{
    ContainerPhase, ContainerState, LogRequest, PodKey, PodNotifier, PodRuntime, PodState,
    RestartPolicy, RuntimeError, grace_period,
};
use crate::node_agent::address::AddressPool;

/// Builds a [`LocalRuntime`].
#[derive(Debug)]
#[must_use]
pub struct LocalRuntimeBuilder {
    state_dir: Option<PathBuf>,
    host_ip: IpAddr,
    addresses: Option<AddressPool>,
    restart_backoff: Backoff,
    network: Option<Arc<dyn Network>>,
}

/// The pool every [`LocalRuntime`] of this process shares unless given its own:
/// `127.N.0.0/16` with `N` from the process id (1–250), so runtimes in one process never hand
/// out the same address and runtimes of different processes rarely do.
fn process_pool() -> Arc<Mutex<AddressPool>> {
    static POOL: std::sync::OnceLock<Arc<Mutex<AddressPool>>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let n = u8::try_from(std::process::id() % 250 + 1).unwrap_or(1);
        Arc::new(Mutex::new(AddressPool::new(
            Ipv4Addr::new(127, n, 0, 0),
            1 << 16,
        )))
    })
    .clone()
}

impl Default for LocalRuntimeBuilder {
    fn default() -> Self {
        LocalRuntimeBuilder {
            state_dir: None,
            host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            addresses: None,
            restart_backoff: Backoff::KUBELET_RESTART,
            network: None,
        }
    }
}

impl LocalRuntimeBuilder {
    /// Where pods' working directories and logs go (default: `rorqual-node-agent-<pid>` in
    /// the temporary directory).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// The node's address (`status.hostIP`; default `127.0.0.1`).
    pub fn host_ip(mut self, ip: IpAddr) -> Self {
        self.host_ip = ip;
        self
    }

    /// Where this runtime's pod addresses come from (default: a pool every `LocalRuntime` of
    /// the process shares, `127.N.0.0/16` with `N` between 1 and 250 from the process id).
    pub fn addresses(mut self, pool: AddressPool) -> Self {
        self.addresses = Some(pool);
        self
    }

    /// The delays between restarts after the first (default 10 s doubling to 5 min).
    pub fn restart_backoff(mut self, backoff: Backoff) -> Self {
        self.restart_backoff = backoff;
        self
    }

    /// Attaches every pod through `network` (rorqual-core's `Network` seam) instead of giving
    /// it a loopback address: rorqual-net's `BridgeNetwork` puts each pod in its own network
    /// namespace on a bridge with an address from an IP pool (root only). The pod's processes
    /// and exec probes then run in that namespace (`nsenter --net=…`), the declared ports are
    /// the attachment's, and the pod is detached (namespace removed, address released) when
    /// deleted and on [`PodRuntime::shutdown`]. HTTP and TCP probes connect to the pod's
    /// address from the host, as the kubelet's do, so the host needs a route to the pods: give
    /// the pool a gateway and `BridgeNetwork` puts it on the bridge. A pod that cannot be
    /// attached (no free address) is refused; the node agent tries it again with a backoff.
    /// The attach request names the pod's UID as the instance, `namespace/name` as the
    /// application and the node.
    pub fn network(mut self, network: Arc<dyn Network>) -> Self {
        self.network = Some(network);
        self
    }

    /// Creates the state directory and the runtime.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::Io`] when the state directory cannot be created.
    pub fn build(self) -> Result<LocalRuntime, RuntimeError> {
        let dir = self.state_dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("rorqual-node-agent-{}", std::process::id()))
        });
        std::fs::create_dir_all(&dir).map_err(|source| RuntimeError::Io {
            pod: "-".to_owned(),
            context: format!("cannot create the state directory {}", dir.display()),
            source,
        })?;
        Ok(LocalRuntime {
            shared: Arc::new(Shared {
                dir,
                host_ip: self.host_ip,
                addresses: self
                    .addresses
                    .map_or_else(process_pool, |pool| Arc::new(Mutex::new(pool))),
                backoff: self.restart_backoff,
                network: self.network,
                pods: Mutex::new(HashMap::new()),
                notifier: RwLock::new(None),
            }),
        })
    }
}

/// Where a pod's address came from, to give it back.
#[derive(Debug, Clone, Copy)]
enum Address {
    Pool(Ipv4Addr),
    Network(IpAddr),
}

impl Address {
    fn ip(self) -> IpAddr {
        match self {
            Address::Pool(ip) => IpAddr::V4(ip),
            Address::Network(ip) => ip,
        }
    }
}

struct LocalPod {
    key: PodKey,
    ip: Address,
    dir: PathBuf,
    accepted_at: SystemTime,
    grace: Duration,
    containers: Mutex<Vec<ContainerState>>,
    logs: Vec<(String, PathBuf)>,
    stop: watch::Sender<Option<Duration>>,
    tasks: tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    pids: Mutex<Vec<(String, ProcessIdentity)>>,
    /// Each container's image, and a counter bumped to restart it when that changes.
    images: Mutex<Vec<Option<String>>>,
    replace: Vec<watch::Sender<u64>>,
}

impl LocalPod {
    /// Records (or forgets) the process of container `name`.
    fn pids_set(&self, name: &str, pid: Option<ProcessIdentity>) {
        let mut pids = self.pids.lock();
        pids.retain(|(n, _)| n != name);
        if let Some(pid) = pid {
            pids.push((name.to_owned(), pid));
        }
    }
}

struct Shared {
    dir: PathBuf,
    host_ip: IpAddr,
    addresses: Arc<Mutex<AddressPool>>,
    backoff: Backoff,
    network: Option<Arc<dyn Network>>,
    pods: Mutex<HashMap<PodKey, Arc<LocalPod>>>,
    notifier: RwLock<Option<PodNotifier>>,
}

impl Shared {
    /// Gives a pod's address back (detaching it from the network it came from).
    async fn release(&self, key: &PodKey, address: Address) {
        match address {
            Address::Pool(ip) => self.addresses.lock().release(ip),
            Address::Network(_) => {
                if let Some(network) = &self.network
                    && let Err(e) = network.detach(&key.uid).await
                {
                    tracing::warn!(pod = %key, error = %e, "detaching the pod failed");
                }
            }
        }
    }

    fn notify(&self, key: &PodKey) {
        if let Some(n) = self.notifier.read().as_ref() {
            n(key);
        }
    }

    /// Changes container `index` of `pod` and tells the agent.
    fn update(&self, pod: &LocalPod, index: usize, change: impl FnOnce(&mut ContainerState)) {
        if let Some(c) = pod.containers.lock().get_mut(index) {
            change(c);
        }
        self.notify(&pod.key);
    }
}

/// A [`PodRuntime`] running containers as processes on this host (see the module docs).
#[derive(Clone)]
pub struct LocalRuntime {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LocalRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRuntime")
            .field("state_dir", &self.shared.dir)
            .field("pods", &self.shared.pods.lock().len())
            .finish_non_exhaustive()
    }
}

impl LocalRuntime {
    /// Settings, then [`LocalRuntimeBuilder::build`].
    pub fn builder() -> LocalRuntimeBuilder {
        LocalRuntimeBuilder::default()
    }

    /// The process ids of the pod's running containers, by container name (for tests and
    /// diagnostics).
    pub fn process_ids(&self, namespace: &str, name: &str) -> Vec<(String, i32)> {
        let pods = self.shared.pods.lock();
        pods.values()
            .filter(|p| p.key.namespace == namespace && p.key.name == name)
            .flat_map(|p| p.pids.lock().clone())
            .map(|(name, id)| (name, id.pid))
            .collect()
    }

    /// Kills every pod's processes at once (SIGKILL to each container's process group, only
    /// while that process is still the one started), for an owner that cannot wait for
    /// [`PodRuntime::shutdown`] (a `Drop`, a failing test). The pods stay known until deleted
    /// or shut down, but their supervisors start nothing more.
    pub fn kill_all_now(&self) {
        let pods: Vec<Arc<LocalPod>> = self.shared.pods.lock().values().cloned().collect();
        for pod in pods {
            // Stop the supervisors from starting them again.
            pod.stop.send_if_modified(|grace| {
                if grace.is_none() {
                    *grace = Some(Duration::ZERO);
                    true
                } else {
                    false
                }
            });
            for (_, id) in pod.pids.lock().iter() {
                kill_group_now(id);
            }
        }
    }
}

/// What one container runs, prepared from the pod spec.
struct ContainerPlan {
    name: String,
    argv: Result<Vec<String>, (&'static str, String)>,
    env: std::collections::BTreeMap<String, String>,
    cwd: PathBuf,
    log: PathBuf,
    readiness: Option<Probe>,
    liveness: Option<Probe>,
    target: ProbeTarget,
    policy: RestartPolicy,
    grace: Duration,
}

fn plan_container(
    facts: &PodFacts<'_>,
    container: &Container,
    dir: &std::path::Path,
    grace: Duration,
    netns: Option<&std::path::Path>,
) -> ContainerPlan {
    let env_result = container_env(facts, container);
    let env = env_result.clone().unwrap_or_default();
    let argv = match env_result {
        Err(message) => Err(("CreateContainerConfigError", message)),
        Ok(env) => command_line(container, &env).map(|argv| in_netns(argv, netns)).ok_or((
            "RunContainerError",
            format!(
                "container {} has no command: the node agent runs `command` and `args`, not images",
                container.name
            ),
        )),
    };
    let readiness = container.readiness_probe.as_ref().and_then(probe);
    let liveness = container.liveness_probe.as_ref().and_then(probe);
    let probes: Vec<&Probe> = readiness.iter().chain(liveness.iter()).collect();
    let (declared, by_name) = probe_ports(&ports(container), &probes);
    let cwd = container
        .working_dir
        .clone()
        .map_or_else(|| dir.join("work"), PathBuf::from);
    let address = facts
        .pod_ip
        .parse()
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    ContainerPlan {
        name: container.name.clone(),
        argv,
        target: {
            let target = ProbeTarget::new(address, declared, by_name, cwd.clone(), env.clone());
            match netns {
                Some(ns) => target.netns(ns),
                None => target,
            }
        },
        env,
        cwd,
        log: dir.join("logs").join(format!("{}.log", container.name)),
        readiness,
        liveness,
        policy: RestartPolicy::of(facts.pod),
        grace,
    }
}

/// Runs `argv` in the network namespace at `netns` (through util-linux's `nsenter`).
fn in_netns(argv: Vec<String>, netns: Option<&std::path::Path>) -> Vec<String> {
    match netns {
        Some(ns) => [
            "nsenter".to_owned(),
            format!("--net={}", ns.display()),
            "--".to_owned(),
        ]
        .into_iter()
        .chain(argv)
        .collect(),
        None => argv,
    }
}

async fn stop_requested(rx: &mut watch::Receiver<Option<Duration>>) -> Duration {
    match rx.wait_for(Option::is_some).await {
        Ok(grace) => grace.unwrap_or_default(),
        // The pod was forgotten: stop at once.
        Err(_) => Duration::ZERO,
    }
}

/// Sleeps `d` unless a stop comes first; returns whether it was stopped.
async fn sleep_or_stop(d: Duration, rx: &mut watch::Receiver<Option<Duration>>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        _ = stop_requested(rx) => true,
    }
}

fn describe(e: &rorqual_local::process::ProcessError) -> String {
    match e.source() {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

fn terminated(exit: &ExitReason, started: SystemTime, message: Option<String>) -> ContainerPhase {
    let (code, signal) = match exit {
        ExitReason::Code(c) => (*c, None),
        ExitReason::Signal(s) => (128 + s, Some(*s)),
        _ => (255, None),
    };
    ContainerPhase::terminated(code, signal, Some(started), SystemTime::now(), message)
}

enum Outcome {
    Stop(Duration),
    Replaced,
    Exited(ExitReason),
    Liveness(String),
}

async fn run_container(
    shared: Arc<Shared>,
    pod: Arc<LocalPod>,
    index: usize,
    plan: ContainerPlan,
    mut stop: watch::Receiver<Option<Duration>>,
    mut replace: watch::Receiver<u64>,
) {
    let mut backoff = shared.backoff.counter();
    let mut failed_before = false;
    loop {
        if stop.borrow().is_some() {
            return;
        }
        let argv = match &plan.argv {
            Ok(argv) => argv,
            Err((reason, message)) => {
                shared.update(&pod, index, |c| {
                    c.phase = ContainerPhase::waiting(*reason, Some(message.clone()));
                });
                stop_requested(&mut stop).await;
                return;
            }
        };
        let spec = ProcessSpec::from_argv(argv)
            .envs(&plan.env)
            .current_dir(&plan.cwd)
            .log(&plan.log);
        let mut process = match SupervisedProcess::spawn(&spec) {
            Ok(p) => p,
            Err(e) => {
                let message = describe(&e);
                tracing::warn!(pod = %pod.key, container = %plan.name, error = %message, "container cannot start");
                shared.update(&pod, index, |c| {
                    c.phase = ContainerPhase::waiting("RunContainerError", Some(message));
                    c.ready = false;
                });
                if sleep_or_stop(backoff.next(), &mut stop).await {
                    return;
                }
                continue;
            }
        };
        let started = SystemTime::now();
        pod.pids_set(&plan.name, Some(process.identity()));
        shared.update(&pod, index, |c| {
            c.phase = ContainerPhase::Running {
                started_at: started,
            };
            c.ready = plan.readiness.is_none();
        });
        let outcome = tokio::select! {
            biased;
            grace = stop_requested(&mut stop) => Outcome::Stop(grace),
            exit = process.wait() => Outcome::Exited(exit),
            () = replaced(&mut replace) => Outcome::Replaced,
            msg = liveness(plan.liveness.as_ref(), &plan.target) => Outcome::Liveness(msg),
            never = readiness(&shared, &pod, index, plan.readiness.as_ref(), &plan.target) => match never {},
        };
        let (exit, message) = match outcome {
            Outcome::Stop(grace) => {
                let exit = process.stop(grace).await;
                pod.pids_set(&plan.name, None);
                tracing::info!(pod = %pod.key, container = %plan.name, %exit, "container stopped");
                shared.update(&pod, index, |c| {
                    c.phase = terminated(&exit, started, None);
                    c.ready = false;
                });
                return;
            }
            Outcome::Replaced => {
                // As the kubelet when a container's image changes in place: stop it with the
                // grace period and start it again at once.
                let exit = process.stop(plan.grace).await;
                pod.pids_set(&plan.name, None);
                let message = format!("container {} definition changed, restarted", plan.name);
                shared.update(&pod, index, |c| {
                    c.last_termination = Some(terminated(&exit, started, Some(message)));
                    c.ready = false;
                    c.restart_count += 1;
                });
                continue;
            }
            Outcome::Exited(exit) => (exit, None),
            Outcome::Liveness(msg) => {
                let exit = process.stop(plan.grace).await;
                (exit, Some(format!("liveness probe failed: {msg}")))
            }
        };
        pod.pids_set(&plan.name, None);
        let ended = terminated(&exit, started, message);
        if !plan.policy.restarts(exit.is_success()) {
            shared.update(&pod, index, |c| {
                c.phase = ended;
                c.ready = false;
            });
            stop_requested(&mut stop).await;
            return;
        }
        // As the kubelet: a container that ran for twice the longest delay was healthy.
        let ran = started.elapsed().unwrap_or_default();
        if ran >= backoff.policy().max.saturating_mul(2) {
            backoff.reset();
            failed_before = false;
        }
        let delay = if failed_before {
            backoff.next()
        } else {
            Duration::ZERO
        };
        failed_before = true;
        tracing::warn!(pod = %pod.key, container = %plan.name, %exit, ?delay, "container ended; restarting");
        let message = format!(
            "back-off {}s restarting failed container={} pod={}",
            delay.as_secs(),
            plan.name,
            pod.key
        );
        shared.update(&pod, index, |c| {
            c.last_termination = Some(ended);
            c.ready = false;
            c.phase = ContainerPhase::waiting("CrashLoopBackOff", Some(message));
        });
        if sleep_or_stop(delay, &mut stop).await {
            return;
        }
        shared.update(&pod, index, |c| c.restart_count += 1);
    }
}

/// Returns when the container is to be replaced (its image changed).
async fn replaced(rx: &mut watch::Receiver<u64>) {
    if rx.changed().await.is_err() {
        // The pod is gone; its stop signal ends the container.
        std::future::pending::<()>().await;
    }
}

async fn readiness(
    shared: &Shared,
    pod: &LocalPod,
    index: usize,
    probe: Option<&Probe>,
    target: &ProbeTarget,
) -> Infallible {
    let Some(probe) = probe else {
        return std::future::pending().await;
    };
    tokio::time::sleep(Duration::from_secs_f64(probe.initial_delay_seconds)).await;
    let mut tracker = ProbeTracker::new(probe, false);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(probe.period_seconds));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = check(probe, target).await;
        if let Some(passing) = tracker.record(result.is_ok()) {
            shared.update(pod, index, |c| c.ready = passing);
        }
    }
}

#[async_trait]
impl PodRuntime for LocalRuntime {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn create_pod(&self, pod: &Pod) -> Result<(), RuntimeError> {
        let Some(key) = PodKey::of(pod) else {
            return Ok(());
        };
        let shared = &self.shared;
        if shared.pods.lock().contains_key(&key) {
            return Ok(());
        }
        let (address, netns) = match &shared.network {
            Some(network) => {
                let ports: Vec<_> = pod
                    .spec
                    .iter()
                    .flat_map(|s| s.containers.iter().flat_map(ports))
                    .collect();
                let node = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default();
                let request = AttachRequest::new(
                    key.uid.clone(),
                    AppKey::new(&key.namespace, &key.name),
                    node,
                    ports,
                );
                let attachment =
                    network
                        .attach(&request)
                        .await
                        .map_err(|source| RuntimeError::Network {
                            pod: key.to_string(),
                            source,
                        })?;
                (Address::Network(attachment.address), attachment.netns)
            }
            None => {
                let mut pool = shared.addresses.lock();
                let ip = pool
                    .allocate()
                    .ok_or_else(|| RuntimeError::AddressesExhausted {
                        range: pool.describe(),
                        used: pool.used(),
                    })?;
                (Address::Pool(ip), None)
            }
        };
        let dir = shared
            .dir
            .join(format!("{}_{}_{}", key.namespace, key.name, key.uid));
        let prepared = std::fs::create_dir_all(dir.join("work"))
            .and_then(|()| std::fs::create_dir_all(dir.join("logs")));
        if let Err(source) = prepared {
            shared.release(&key, address).await;
            return Err(RuntimeError::Io {
                pod: key.to_string(),
                context: format!("cannot create {}", dir.display()),
                source,
            });
        }
        let facts = PodFacts {
            pod,
            pod_ip: address.ip().to_string(),
            host_ip: shared.host_ip.to_string(),
        };
        let grace = grace_period(pod);
        let specs = pod
            .spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or_default();
        let plans: Vec<ContainerPlan> = specs
            .iter()
            .map(|c| plan_container(&facts, c, &dir, grace, netns.as_deref()))
            .collect();
        let (stop, stop_rx) = watch::channel(None);
        let (replace, replace_rx): (Vec<_>, Vec<_>) =
            plans.iter().map(|_| watch::channel(0u64)).unzip();
        let local = Arc::new(LocalPod {
            key: key.clone(),
            ip: address,
            dir,
            accepted_at: SystemTime::now(),
            grace,
            containers: Mutex::new(
                specs
                    .iter()
                    .map(|c| ContainerState::creating(&c.name))
                    .collect(),
            ),
            logs: plans
                .iter()
                .map(|p| (p.name.clone(), p.log.clone()))
                .collect(),
            stop,
            tasks: tokio::sync::Mutex::new(Vec::new()),
            pids: Mutex::new(Vec::new()),
            images: Mutex::new(specs.iter().map(|c| c.image.clone()).collect()),
            replace,
        });
        // Hold the pod's task list until its supervisors are in it, so a deletion racing this
        // creation waits for them (the lock is fresh: taking it never waits).
        let mut tasks = local.tasks.lock().await;
        let duplicate = {
            let mut pods = shared.pods.lock();
            if pods.contains_key(&key) {
                true
            } else {
                pods.insert(key.clone(), local.clone());
                false
            }
        };
        if duplicate {
            drop(tasks);
            shared.release(&key, address).await;
            return Ok(());
        }
        *tasks = plans
            .into_iter()
            .zip(replace_rx)
            .enumerate()
            .map(|(index, (plan, replace))| {
                tokio::spawn(run_container(
                    shared.clone(),
                    local.clone(),
                    index,
                    plan,
                    stop_rx.clone(),
                    replace,
                ))
            })
            .collect();
        drop(tasks);
        shared.notify(&key);
        Ok(())
    }

    async fn update_pod(&self, pod: &Pod) -> Result<(), RuntimeError> {
        // The one change Kubernetes allows to a running container: its image. Images are not
        // run here, but the container restarts as it would on a kubelet.
        let Some(key) = PodKey::of(pod) else {
            return Ok(());
        };
        let Some(local) = self.shared.pods.lock().get(&key).cloned() else {
            return Ok(());
        };
        let specs = pod
            .spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or_default();
        let mut images = local.images.lock();
        for (index, (image, spec)) in images.iter_mut().zip(specs).enumerate() {
            if *image != spec.image {
                tracing::info!(pod = %key, container = %spec.name, "image changed; restarting the container");
                image.clone_from(&spec.image);
                if let Some(replace) = local.replace.get(index) {
                    replace.send_modify(|generation| *generation += 1);
                }
            }
        }
        Ok(())
    }

    async fn delete_pod(&self, key: &PodKey, grace: Duration) -> Result<(), RuntimeError> {
        let Some(pod) = self.shared.pods.lock().get(key).cloned() else {
            return Ok(());
        };
        pod.stop.send_if_modified(|g| {
            if g.is_none() {
                *g = Some(grace);
                true
            } else {
                false
            }
        });
        let handles = std::mem::take(&mut *pod.tasks.lock().await);
        for handle in handles {
            if let Err(e) = handle.await {
                tracing::error!(pod = %key, error = %e, "a container supervisor failed");
            }
        }
        let removed = {
            let mut pods = self.shared.pods.lock();
            match pods.get(key) {
                Some(p) if Arc::ptr_eq(p, &pod) => pods.remove(key),
                _ => None,
            }
        };
        if removed.is_some() {
            self.shared.release(key, pod.ip).await;
            if let Err(e) = std::fs::remove_dir_all(&pod.dir) {
                tracing::warn!(pod = %key, error = %e, "cannot remove the pod's directory");
            }
        }
        Ok(())
    }

    async fn pod_state(&self, key: &PodKey) -> Result<Option<PodState>, RuntimeError> {
        let pod = self.shared.pods.lock().get(key).cloned();
        Ok(pod.map(|p| PodState {
            key: key.clone(),
            pod_ip: Some(p.ip.ip()),
            started_at: Some(p.accepted_at),
            containers: p.containers.lock().clone(),
        }))
    }

    async fn list_pods(&self) -> Result<Vec<PodKey>, RuntimeError> {
        Ok(self.shared.pods.lock().keys().cloned().collect())
    }

    fn notify_pods(&self, notifier: PodNotifier) {
        *self.shared.notifier.write() = Some(notifier);
    }

    async fn logs(
        &self,
        namespace: &str,
        name: &str,
        request: LogRequest,
    ) -> Result<LogStream, RuntimeError> {
        let pod_name = format!("{namespace}/{name}");
        let pod = self
            .shared
            .pods
            .lock()
            .values()
            .filter(|p| p.key.namespace == namespace && p.key.name == name)
            .max_by_key(|p| p.accepted_at)
            .cloned()
            .ok_or_else(|| RuntimeError::UnknownPod {
                runtime: "local",
                pod: pod_name.clone(),
            })?;
        let (container, path) = match &request.container {
            Some(wanted) => pod.logs.iter().find(|(n, _)| n == wanted),
            None => pod.logs.first(),
        }
        .cloned()
        .ok_or_else(|| RuntimeError::UnknownContainer {
            pod: pod_name.clone(),
            container: request.container.clone().unwrap_or_default(),
        })?;
        let (lines, offset) =
            rorqual_local::logs::read_lines(&path, request.tail_lines).map_err(|source| {
                RuntimeError::Logs {
                    pod: pod_name,
                    container: container.clone(),
                    source,
                }
            })?;
        let index = pod.logs.iter().position(|(n, _)| *n == container);
        let watched = pod.clone();
        let alive = Arc::new(move || {
            watched.stop.borrow().is_none()
                && index.is_some_and(|i| {
                    watched
                        .containers
                        .lock()
                        .get(i)
                        .is_some_and(|c| !matches!(c.phase, ContainerPhase::Terminated { .. }))
                })
        });
        Ok(rorqual_local::logs::stream(
            path,
            lines,
            offset,
            request.follow,
            alive,
        ))
    }

    async fn shutdown(&self) -> Result<(), RuntimeError> {
        let pods: Vec<(PodKey, Duration)> = self
            .shared
            .pods
            .lock()
            .values()
            .map(|p| (p.key.clone(), p.grace))
            .collect();
        let stops = pods.iter().map(|(key, grace)| self.delete_pod(key, *grace));
        for result in futures::future::join_all(stops).await {
            result?;
        }
        Ok(())
    }
}
