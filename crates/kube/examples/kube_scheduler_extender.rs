//! What rorqual's scheduler extender costs a real kube-scheduler (v1.20.2 from
//! `scripts/build-kube`): pods/s without the extender, with it in Nodes mode and in
//! cache-capable mode (`NodeNames`), in one run, alternating.
//!
//! 1. starts etcd and kube-apiserver (no controller-manager: nothing else competes for the 2
//!    cores; the `ServiceAccount` admission plugin is off, since no controller makes the
//!    namespace's account), registers the nodes (Ready, no taint: nothing taints them without
//!    a node lifecycle controller);
//! 2. per measurement: creates the pending pods while no scheduler runs, waits 2 s, starts a
//!    fresh extender (in this process: its own cache, binder and port) and a fresh
//!    kube-scheduler whose configuration names it (or none), and times from the first pod seen
//!    bound to the last (a watch on the namespace); then stops kube-scheduler and deletes the
//!    pods (grace 0);
//! 3. prints each measurement (pods/s, CPU milliseconds per pod of each process, the
//!    extender's TCP connections by state, and where a pod's time went: the extender's handler
//!    time per verb against kube-scheduler's time between the calls, from a timing layer on
//!    the extender's router), then the medians and their ratios to the median without
//!    extender.
//!
//! ```sh
//! export RORQUAL_KUBE_BIN=$(scripts/build-kube)
//! cargo run --release -p rorqual-kube --features testenv,scheduler --example kube_scheduler_extender -- \
//!     --pods 200 --nodes 50 --rounds 3
//! ```
//! Options: `--pods N` (200), `--nodes N` (50), `--rounds N` (3; each runs the first mode
//! given, then the others rotated by one per round, and one more run without extender closes
//! the series), `--modes LIST`
//! (`none,nodes,names,names-tls`; `-tls`: the extender serves HTTPS with a self-signed
//! certificate in the stanza's `tlsConfig.caData` and offers HTTP/2; `-nobind`: no
//! `bindVerb`, kube-scheduler binds; `-noprio`: no `prioritizeVerb`; `-h1binder`: the
//! extender's binder speaks HTTP/1.1 to the apiserver, not HTTP/2),
//! `--no-contention-profiling` (`enableContentionProfiling: false` in every configuration),
//! `--perf-dir DIR` (records each measurement with `perf record -g` over kube-scheduler, the apiserver, etcd and this process, into
//! `DIR/<mode>-<run>.data`).
//!
//! Each configuration gets its own kube-scheduler process rather than a profile in a shared
//! one: in `kubescheduler.config.k8s.io/v1beta1` extenders belong to the whole configuration,
//! not to a profile, so profiles cannot tell "with" from "without", and a fresh process starts
//! each measurement with the same empty caches. All use `clientConnection.qps`/`burst` 5000
//! (as upstream's scheduler_perf does) so that kube-scheduler's client rate limiter (50/100 by
//! default) does not cap the run without extender, where kube-scheduler binds itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use rorqual_kube::scheduler::SnapshotSync;
use rorqual_kube::testenv::{Component, TestEnv};
use rorqual_scheduler::extender::{
    ApiserverConfig, ExtenderServer, KubeVersion, TlsListener, config_api_version,
};
use serde_json::{Value, json};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long one measurement may take before it is reported as stuck.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(120);

/// The pause before each measurement, once its pods exist.
const SETTLE: Duration = Duration::from_secs(2);

/// Linux's `USER_HZ`: the unit of `utime` and `stime` in `/proc/<pid>/stat`.
const USER_HZ: f64 = 100.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    /// kube-scheduler alone.
    None,
    /// rorqual's extender.
    Extender {
        /// `nodeCacheCapable: true` (names only, the extender's cache fed by watches) or
        /// false (full Nodes in every filter and prioritize request).
        cache_capable: bool,
        /// Served over HTTPS (HTTP/2 by ALPN) rather than plain HTTP/1.1.
        tls: bool,
        /// `bindVerb`: the extender creates the Bindings (else kube-scheduler does).
        bind: bool,
        /// `prioritizeVerb` (else the extender only filters).
        prioritize: bool,
        /// The binder offers HTTP/2 to the apiserver (else HTTP/1.1 only).
        binder_http2: bool,
    },
}

impl Mode {
    /// `none`, or `nodes`/`names` followed by `-tls`, `-nobind`, `-noprio` and/or `-h1binder`.
    fn parse(s: &str) -> Result<Mode, BoxError> {
        let mut parts = s.split('-');
        let cache_capable = match parts.next() {
            Some("none") if s == "none" => return Ok(Mode::None),
            Some("nodes") => false,
            Some("names") => true,
            _ => {
                return Err(
                    format!("unknown mode `{s}` (none, nodes, names, with -tls, -nobind)").into(),
                );
            }
        };
        let (mut tls, mut bind, mut prioritize, mut binder_http2) = (false, true, true, true);
        for part in parts {
            match part {
                "tls" => tls = true,
                "nobind" => bind = false,
                "noprio" => prioritize = false,
                "h1binder" => binder_http2 = false,
                other => return Err(format!("unknown mode suffix `-{other}` in `{s}`").into()),
            }
        }
        Ok(Mode::Extender {
            cache_capable,
            tls,
            bind,
            prioritize,
            binder_http2,
        })
    }

    fn label(self) -> String {
        match self {
            Mode::None => "no extender".to_owned(),
            Mode::Extender {
                cache_capable,
                tls,
                bind,
                prioritize,
                binder_http2,
            } => format!(
                "extender, {}{}{}{}{}",
                if cache_capable {
                    "cache-capable"
                } else {
                    "Nodes mode"
                },
                if tls { ", HTTPS/2" } else { "" },
                if bind { "" } else { ", no bindVerb" },
                if prioritize {
                    ""
                } else {
                    ", no prioritizeVerb"
                },
                if binder_http2 {
                    ""
                } else {
                    ", binder HTTP/1.1"
                }
            ),
        }
    }

    fn short(self) -> String {
        match self {
            Mode::None => "none".to_owned(),
            Mode::Extender {
                cache_capable,
                tls,
                bind,
                prioritize,
                binder_http2,
            } => format!(
                "{}{}{}{}{}",
                if cache_capable { "names" } else { "nodes" },
                if tls { "-tls" } else { "" },
                if bind { "" } else { "-nobind" },
                if prioritize { "" } else { "-noprio" },
                if binder_http2 { "" } else { "-h1binder" }
            ),
        }
    }
}

#[derive(Debug)]
struct Options {
    pods: usize,
    nodes: usize,
    rounds: usize,
    modes: Vec<Mode>,
    perf_dir: Option<PathBuf>,
    /// `enableContentionProfiling: false` in every configuration (kube-scheduler's default
    /// is true: every blocked goroutine records a stack trace).
    no_contention_profiling: bool,
}

fn options() -> Result<Options, BoxError> {
    let mut o = Options {
        pods: 200,
        nodes: 50,
        rounds: 3,
        modes: ["none", "nodes", "names", "names-tls"]
            .into_iter()
            .map(Mode::parse)
            .collect::<Result<_, _>>()?,
        perf_dir: None,
        no_contention_profiling: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| BoxError::from(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--pods" => o.pods = value()?.parse()?,
            "--nodes" => o.nodes = value()?.parse()?,
            "--rounds" => o.rounds = value()?.parse()?,
            "--modes" => {
                o.modes = value()?
                    .split(',')
                    .map(Mode::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--perf-dir" => o.perf_dir = Some(PathBuf::from(value()?)),
            "--no-contention-profiling" => o.no_contention_profiling = true,
            other => return Err(format!("unknown option `{other}`").into()),
        }
    }
    if o.pods < 2 || o.nodes == 0 || o.rounds == 0 || o.modes.is_empty() {
        return Err("need --pods ≥ 2, --nodes ≥ 1, --rounds ≥ 1 and a mode".into());
    }
    Ok(o)
}

fn node(name: &str) -> Result<Node, serde_json::Error> {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    }))
}

fn pod(name: &str) -> Result<Pod, serde_json::Error> {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {
            "containers": [{"name": "c", "image": "none",
                "resources": {"requests": {"cpu": "10m", "memory": "50Mi"}}}]
        }
    }))
}

/// The admin token and CA (PEM) of the control plane's kubeconfig.
fn admin_credentials(env: &TestEnv) -> Result<(String, Vec<u8>), BoxError> {
    use base64::Engine as _;
    let config = serde_json::to_value(env.kubeconfig())?;
    let token = config["users"][0]["user"]["token"]
        .as_str()
        .ok_or("the admin kubeconfig has no token")?
        .to_owned();
    let ca = base64::engine::general_purpose::STANDARD.decode(
        config["clusters"][0]["cluster"]["certificate-authority-data"]
            .as_str()
            .ok_or("the admin kubeconfig has no CA data")?,
    )?;
    Ok((token, ca))
}

/// The scheduler configuration: client rate limits raised, and the extender if any.
fn scheduler_config(
    version: KubeVersion,
    extender: Option<Value>,
    options: &Options,
) -> Result<String, BoxError> {
    let mut doc = json!({
        "apiVersion": config_api_version(version)?,
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"qps": 5000, "burst": 5000},
    });
    if options.no_contention_profiling {
        doc["enableContentionProfiling"] = json!(false);
    }
    if let Some(entry) = extender {
        doc["extenders"] = json!([entry]);
    }
    // JSON is YAML.
    Ok(serde_json::to_string_pretty(&doc)?)
}

/// CPU seconds (user + system) a process has used so far; 0 when it is gone.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) end with `)`; utime and stime are
    // fields 14 and 15 of the whole line, 12 and 13 after it.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(u), Some(s)) => (u + s) / USER_HZ,
        _ => 0.0,
    }
}

/// The processes whose CPU a measurement reports: each control-plane program and this one
/// (the extender, its binder and cache feed, and the benchmark's own watch).
fn tracked(env: &TestEnv) -> Vec<(String, u32)> {
    let mut list: Vec<(String, u32)> = env
        .processes()
        .into_iter()
        .map(|(c, pid)| (c.to_string(), pid))
        .collect();
    list.push(("this process".to_owned(), std::process::id()));
    list
}

/// TCP sockets on 127.0.0.1 with `port` at either end, by state (from `/proc/net/tcp`).
fn sockets_by_state(port: u16) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return out;
    };
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(state)) = (f.get(1), f.get(2), f.get(3)) else {
            continue;
        };
        let port_of = |a: &str| {
            a.rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
        };
        if port_of(local) != Some(port) && port_of(remote) != Some(port) {
            continue;
        }
        let name = match *state {
            "01" => "ESTABLISHED",
            "06" => "TIME_WAIT",
            "08" => "CLOSE_WAIT",
            "0A" => "LISTEN",
            _ => "other",
        };
        *out.entry(name).or_insert(0) += 1;
    }
    out
}

/// When each extender request arrived and was answered, by verb (the measurement's
/// extender only: the log is cleared before each one).
#[derive(Debug, Default)]
struct RequestLog {
    requests: Vec<(Verb, Instant, Instant)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Filter,
    Prioritize,
    Bind,
    Other,
}

static REQUESTS: std::sync::Mutex<RequestLog> = std::sync::Mutex::new(RequestLog {
    requests: Vec::new(),
});

fn request_log() -> std::sync::MutexGuard<'static, RequestLog> {
    // A panic while holding the lock leaves a log that is still usable.
    REQUESTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records a request's verb, arrival and answer (before the body is sent).
async fn timed(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let verb = match request.uri().path() {
        "/filter" => Verb::Filter,
        "/prioritize" => Verb::Prioritize,
        "/bind" => Verb::Bind,
        _ => Verb::Other,
    };
    let began = Instant::now();
    let response = next.run(request).await;
    request_log().requests.push((verb, began, Instant::now()));
    response
}

/// Where a pod's time goes from kube-scheduler's filter request to the next pod's: the
/// extender's handler times and kube-scheduler's own time between the calls (its in-process
/// work, the Go client's JSON, the loopback round trip), means in milliseconds.
#[derive(Debug, Default)]
struct Breakdown {
    filter: f64,
    filter_to_prioritize: f64,
    prioritize: f64,
    prioritize_to_next_filter: f64,
    bind: f64,
}

fn breakdown(log: &RequestLog) -> Breakdown {
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1000.0;
    let of = |verb: Verb| -> Vec<(Instant, Instant)> {
        let mut v: Vec<_> = log
            .requests
            .iter()
            .filter(|r| r.0 == verb)
            .map(|r| (r.1, r.2))
            .collect();
        v.sort();
        v
    };
    let (filters, prioritizes, binds) = (of(Verb::Filter), of(Verb::Prioritize), of(Verb::Bind));
    let handler =
        |v: &[(Instant, Instant)]| mean(&v.iter().map(|&(a, b)| ms(a, b)).collect::<Vec<_>>());
    // kube-scheduler's scheduling loop is serial: filter i, prioritize i, filter i + 1.
    let mut to_prioritize = Vec::new();
    let mut to_next = Vec::new();
    for (i, &(_, filter_end)) in filters.iter().enumerate() {
        if prioritizes.is_empty() {
            // Filter only: from one pod's filter answer to the next pod's filter.
            if let Some(&(next, _)) = filters.get(i + 1) {
                to_next.push(ms(filter_end, next));
            }
        } else if let Some(&(p_start, p_end)) = prioritizes.iter().find(|p| p.0 >= filter_end) {
            to_prioritize.push(ms(filter_end, p_start));
            if let Some(&(next, _)) = filters.get(i + 1) {
                to_next.push(ms(p_end, next));
            }
        }
    }
    Breakdown {
        filter: handler(&filters),
        filter_to_prioritize: mean(&to_prioritize),
        prioritize: handler(&prioritizes),
        prioritize_to_next_filter: mean(&to_next),
        bind: handler(&binds),
    }
}

/// One measurement's outcome.
#[derive(Debug)]
struct Measurement {
    mode: Mode,
    pods_per_sec: f64,
    /// CPU milliseconds per pod, by process, over the measured window.
    cpu_ms_per_pod: Vec<(String, f64)>,
    /// The extender port's sockets by state just after the last bind.
    sockets: BTreeMap<&'static str, usize>,
    /// Where a pod's time went (extender modes).
    breakdown: Option<Breakdown>,
}

/// The extender of one measurement: a task serving it, and the cache feed in cache-capable
/// mode. Aborted on drop.
struct RunningExtender {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    port: u16,
    stanza: Value,
}

impl Drop for RunningExtender {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn start_extender(
    env: &TestEnv,
    client: &kube::Client,
    mode: Mode,
    version: KubeVersion,
    options: &Options,
) -> Result<RunningExtender, BoxError> {
    let Mode::Extender {
        cache_capable,
        tls,
        bind,
        prioritize,
        binder_http2,
    } = mode
    else {
        return Err("no extender in this mode".into());
    };
    let (token, ca) = admin_credentials(env)?;
    let binder = ApiserverConfig::new(env.server_url())
        .bearer_token(token)
        .ca_pem(ca)
        .http2(binder_http2)
        .build()?;
    let mut server = ExtenderServer::with_default_plugins()
        .node_cache_capable(cache_capable)
        .kube_scheduler_version(version);
    if bind {
        server = server.binder(Arc::new(binder));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let serving = server.clone();
    let (stanza, task) = if tls {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
        let cert_pem = cert.cert.pem();
        let listener = TlsListener::new(
            listener,
            cert_pem.as_bytes(),
            cert.key_pair.serialize_pem().as_bytes(),
        )?;
        let stanza = server
            .stanza(format!("https://127.0.0.1:{port}"))
            .https(Some(cert_pem));
        // What `ExtenderServer::serve_tls` does, with the timing layer.
        let router = serving.router().layer(axum::middleware::from_fn(timed));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                eprintln!("the extender stopped: {e}");
            }
        });
        (stanza, task)
    } else {
        let stanza = server.stanza(format!("http://127.0.0.1:{port}"));
        // What `ExtenderServer::serve` does (TCP_NODELAY), with the timing layer.
        let router = serving.router().layer(axum::middleware::from_fn(timed));
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                eprintln!("the extender stopped: {e}");
            }
        });
        (stanza, task)
    };
    let mut tasks = vec![task];
    if cache_capable {
        let sync = SnapshotSync::new(server.scheduler().clone(), None);
        tasks.push(tokio::spawn(sync.run(client.clone())));
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.scheduler().with_snapshot(|s| s.nodes().len()) < options.nodes {
            if Instant::now() > deadline {
                return Err("the extender's cache did not get the nodes in 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut stanza = stanza.to_value()?;
    if !prioritize && let Some(entry) = stanza.as_object_mut() {
        entry.remove("prioritizeVerb");
    }
    Ok(RunningExtender {
        tasks,
        port,
        stanza,
    })
}

/// Starts `perf record` over `pids` into `path`; stopped with SIGINT by [`stop_perf`].
fn start_perf(pids: &[u32], path: &std::path::Path) -> Result<tokio::process::Child, BoxError> {
    let list = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    Ok(tokio::process::Command::new("/usr/bin/perf")
        .args(["record", "-F", "999", "-g", "-o"])
        .arg(path)
        .args(["-p", &list])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

async fn stop_perf(mut child: tokio::process::Child) -> Result<(), BoxError> {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
    }
    tokio::time::timeout(Duration::from_secs(60), child.wait()).await??;
    Ok(())
}

#[allow(clippy::too_many_arguments)] // one measurement's whole setting, spelled out
async fn measure(
    env: &mut TestEnv,
    client: &kube::Client,
    namespace: &str,
    version: KubeVersion,
    mode: Mode,
    options: &Options,
    run: usize,
) -> Result<Measurement, BoxError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    // The pods, pending: no scheduler runs yet.
    futures::stream::iter(0..options.pods)
        .map(|i| {
            let pods = pods.clone();
            async move {
                pods.create(&PostParams::default(), &pod(&format!("p{i}"))?)
                    .await?;
                Ok::<(), BoxError>(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await?;

    // Let the API server and etcd finish with the previous run's deletions and these
    // creations: without the pause the mode measured right after the run without extender
    // came out slower whichever it was.
    tokio::time::sleep(SETTLE).await;

    let extender = match mode {
        Mode::None => None,
        Mode::Extender { .. } => Some(start_extender(env, client, mode, version, options).await?),
    };
    let config = scheduler_config(
        version,
        extender.as_ref().map(|e| e.stanza.clone()),
        options,
    )?;

    // Watch before kube-scheduler starts, so no binding is missed.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watch = tokio::spawn({
        let pods = pods.clone();
        async move {
            let stream = watcher(pods, watcher::Config::default());
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                let objects = match event {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => vec![p],
                    _ => continue,
                };
                for p in objects {
                    let bound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                    if let (true, Some(name)) = (bound, p.metadata.name) {
                        let _ = tx.send((name, Instant::now()));
                    }
                }
            }
        }
    });

    request_log().requests.clear();
    env.restart_scheduler(Some(&config)).await?;
    let pids = tracked(env);
    let perf = match &options.perf_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            let pids: Vec<u32> = pids.iter().map(|&(_, pid)| pid).collect();
            let path = dir.join(format!("{}-{run}.data", mode.short()));
            Some(start_perf(&pids, &path)?)
        }
        None => None,
    };
    let cpu_before: Vec<f64> = pids.iter().map(|&(_, pid)| cpu_seconds(pid)).collect();

    let mut bound: BTreeMap<String, Instant> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + MEASURE_TIMEOUT;
    while bound.len() < options.pods {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((name, at))) => {
                bound.entry(name).or_insert(at);
            }
            Ok(None) => return Err("the pod watch ended".into()),
            Err(_) => {
                let log = env
                    .log_tail(Component::KubeScheduler, 20)
                    .unwrap_or_default();
                let why = pods
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .find(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_none()))
                    .and_then(|p| p.status?.conditions)
                    .map(|c| format!("{c:?}"))
                    .unwrap_or_default();
                return Err(format!(
                    "{}: {} of {} pods bound after {MEASURE_TIMEOUT:?}; a pending pod's conditions: {why}; kube-scheduler's log ends:\n{log}",
                    mode.label(),
                    bound.len(),
                    options.pods
                )
                .into());
            }
        }
    }
    let cpu_after: Vec<f64> = pids.iter().map(|&(_, pid)| cpu_seconds(pid)).collect();
    let breakdown = extender.as_ref().map(|_| breakdown(&request_log()));
    let sockets = extender
        .as_ref()
        .map(|e| sockets_by_state(e.port))
        .unwrap_or_default();
    if let Some(perf) = perf {
        stop_perf(perf).await?;
    }
    watch.abort();
    let first = bound.values().min().copied().ok_or("no pod bound")?;
    let last = bound.values().max().copied().ok_or("no pod bound")?;
    let span = last.duration_since(first).as_secs_f64();
    // n pods bound over n − 1 intervals between the first and the last.
    let pods_per_sec = (options.pods - 1) as f64 / span.max(1e-9);
    let cpu_ms_per_pod = pids
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .map(|((name, _), (b, a))| (name.clone(), (a - b) * 1000.0 / options.pods as f64))
        .collect();

    // Clean up for the next measurement: no scheduler, no extender, no pods.
    env.stop_scheduler()?;
    drop(extender);
    pods.delete_collection(
        &DeleteParams::default().grace_period(0),
        &ListParams::default(),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pods
        .list(&ListParams::default().limit(1))
        .await?
        .items
        .is_empty()
    {
        if Instant::now() > deadline {
            return Err("the pods were not deleted in 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Measurement {
        mode,
        pods_per_sec,
        cpu_ms_per_pod,
        sockets,
        breakdown,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let options = options()?;
    let mut env = TestEnv::builder()
        .use_existing_cluster(false)
        .controller_manager(false)
        .apiserver_arg("--disable-admission-plugins=ServiceAccount")
        .start()
        .await?;
    let client = env.client().await?;
    let info = client.apiserver_version().await?;
    let version: KubeVersion = info.git_version.parse()?;
    println!(
        "control plane {} ({}), {} nodes, {} pods per run, {} rounds of {:?}",
        env.server_url(),
        info.git_version,
        options.nodes,
        options.pods,
        options.rounds,
        options.modes.iter().map(|m| m.short()).collect::<Vec<_>>()
    );

    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..options.nodes {
        let name = format!("node-{i}");
        nodes.create(&PostParams::default(), &node(&name)?).await?;
        // The TaintNodesByCondition admission plugin taints a new Node not-ready; without a
        // node lifecycle controller nothing would take the taint off.
        nodes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"taints": null}})),
            )
            .await?;
    }
    let namespace = env.new_namespace("extender-bench").await?;

    // The run right after the one without extender came out slower whichever mode it was:
    // each round keeps its first mode first and rotates the others by one, so that no mode
    // always takes that place.
    let mut plan: Vec<Mode> = Vec::new();
    for round in 0..options.rounds {
        let (first, rest) = options.modes.split_at(1);
        plan.extend(first);
        let mut rest = rest.to_vec();
        let others = rest.len();
        if others > 0 {
            rest.rotate_left(round % others);
        }
        plan.extend(rest);
    }
    if options.modes.first() == Some(&Mode::None) && options.modes.len() > 1 {
        plan.push(Mode::None);
    }
    let mut results = Vec::new();
    for (run, mode) in plan.into_iter().enumerate() {
        let m = measure(&mut env, &client, &namespace, version, mode, &options, run).await?;
        let cpu: Vec<String> = m
            .cpu_ms_per_pod
            .iter()
            .map(|(name, ms)| format!("{name} {ms:.2}"))
            .collect();
        println!(
            "run {run:>2} {:<36} {:>8.1} pods/s  CPU ms/pod: {}  extender sockets: {:?}",
            m.mode.label(),
            m.pods_per_sec,
            cpu.join(", "),
            m.sockets
        );
        if let Some(b) = &m.breakdown {
            println!(
                "       ms per pod: filter {:.3}, kube-scheduler {:.3}, prioritize {:.3}, kube-scheduler to the next pod {:.3}; bind {:.3} (concurrent)",
                b.filter, b.filter_to_prioritize, b.prioritize, b.prioritize_to_next_filter, b.bind
            );
        }
        results.push(m);
    }

    let medians: BTreeMap<Mode, f64> = options
        .modes
        .iter()
        .map(|&mode| {
            let figures = results
                .iter()
                .filter(|m| m.mode == mode)
                .map(|m| m.pods_per_sec)
                .collect();
            (mode, median(figures))
        })
        .collect();
    println!("medians:");
    for (mode, figure) in &medians {
        let ratio = medians
            .get(&Mode::None)
            .map(|none| format!(" ({:.2} of no extender)", figure / none))
            .unwrap_or_default();
        println!("  {:<36} {figure:>8.1} pods/s{ratio}", mode.label());
    }
    env.stop_scheduler()?;
    drop(env);
    Ok(())
}
