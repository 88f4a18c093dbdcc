//! The node agent against a real control plane (TestEnv: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler v1.20.2), with the local runtime running pods'
//! commands as processes, and Debian's `kubectl` as the client.
//!
//! One control plane for the whole binary; each test has its own namespace and its own agent
//! with its own nodes (labelled with the namespace, so scheduled pods land on them).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Api;
use kube::api::PostParams;
use rorqual_kube::node_agent::{
    LocalRuntime, NodeAgent, PodRuntime, SimulatedConfig, SimulatedRuntime, VirtualNode,
};
use rorqual_kube::testenv::{
    Component, Error as EnvError, TestEnv, Unavailable, ci_from_env, skip_or_fail,
};

const NODE_LABEL: &str = "rorqual.test/namespace";

/// The control plane of this binary, with kube-scheduler; `None` (after printing why) when a
/// binary is missing outside CI.
async fn env() -> Option<&'static TestEnv> {
    // The agent's logs with RUST_LOG (e.g. `RUST_LOG=rorqual_kube=debug`), shown for failed tests.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    static SHARED: tokio::sync::OnceCell<Option<TestEnv>> = tokio::sync::OnceCell::const_new();
    SHARED
        .get_or_init(|| async {
            match TestEnv::builder().scheduler(true).start().await {
                Ok(env) => {
                    let client = env.client().await.expect("client");
                    grant_controller_manager(client).await;
                    Some(env)
                }
                Err(EnvError::MissingBinary(missing)) => {
                    match skip_or_fail(&missing, ci_from_env()) {
                        Unavailable::Skip(line) => {
                            println!("{line}");
                            None
                        }
                        Unavailable::Fail(message) => panic!("{message}"),
                    }
                }
                Err(e) => panic!("the test control plane did not start: {e}"),
            }
        })
        .await
        .as_ref()
}

/// TestEnv's controller-manager authenticates as `system:kube-controller-manager` without
/// `--use-service-account-credentials`, and that user's bootstrap role cannot run the
/// deployment, replica set and node-lifecycle controllers (they fail with "forbidden").
/// Until TestEnv starts it with `--use-service-account-credentials=true`, bind it to
/// `cluster-admin` here.
async fn grant_controller_manager(client: kube::Client) {
    let bindings: Api<ClusterRoleBinding> = Api::all(client);
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "rorqual-test-controller-manager"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:kube-controller-manager"}]
    }))
    .expect("valid binding");
    match bindings.create(&PostParams::default(), &binding).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("cannot grant the controller-manager its permissions: {e}"),
    }
}

struct Agent {
    agent: Option<NodeAgent>,
    runtime: LocalRuntime,
    stopped: bool,
    _dir: tempfile::TempDir,
}

/// A test that fails before stopping its agent leaves no process behind.
impl Drop for Agent {
    fn drop(&mut self) {
        if !self.stopped {
            self.runtime.kill_all_now();
        }
    }
}

/// The same for a runtime a test builds itself.
struct KillOnDrop(LocalRuntime);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill_all_now();
    }
}

impl Agent {
    async fn start(env: &TestEnv, namespace: &str, nodes: usize) -> Agent {
        let dir = tempfile::tempdir().expect("temporary directory");
        let runtime = LocalRuntime::builder()
            .state_dir(dir.path())
            .build()
            .expect("local runtime");
        let config = kube::Config::from_custom_kubeconfig(
            env.kubeconfig().clone(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("client config");
        let mut builder = NodeAgent::builder(config)
            .runtime(Arc::new(runtime.clone()))
            .namespace(namespace);
        for i in 0..nodes {
            builder = builder
                .node(VirtualNode::new(format!("{namespace}-n{i}")).label(NODE_LABEL, namespace));
        }
        let agent = builder.start().await.expect("agent starts");
        Agent {
            agent: Some(agent),
            runtime,
            stopped: false,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(agent) = self.agent.take() {
            agent.shutdown().await.expect("agent stops");
        }
        self.stopped = true;
    }
}

fn pod(name: &str, node: Option<&str>, script: &str, extra: serde_json::Value) -> Pod {
    let mut container = serde_json::json!({
        "name": "app",
        "image": "none",
        "command": ["/bin/sh", "-c", script],
        "env": [
            {"name": "MY_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
    });
    if let (Some(c), Some(extra)) = (container.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 5, "containers": [container]}
    }))
    .expect("valid pod")
}

/// Polls the pod until `done` holds, or fails with its last status.
async fn wait_pod(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Pod) -> bool,
) -> Pod {
    let deadline = Instant::now() + timeout;
    loop {
        let pod = pods.get(name).await.expect("pod readable");
        if done(&pod) {
            return pod;
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} not {what} after {timeout:?}: {}\nspec images: {:?}",
            serde_json::to_string_pretty(&pod.status).unwrap_or_default(),
            pod.spec.as_ref().map(|s| s
                .containers
                .iter()
                .map(|c| c.image.clone())
                .collect::<Vec<_>>())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn condition(pod: &Pod, kind: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

fn kubeconfig(env: &TestEnv, dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    env.write_kubeconfig(&path).expect("kubeconfig written");
    path
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(
        std::env::var("RORQUAL_KUBECTL").unwrap_or_else(|_| "kubectl".to_owned()),
    )
    .arg(format!("--kubeconfig={}", kubeconfig.display()))
    .args(args)
    .output()
    .expect("kubectl runs (Debian's kubernetes-client)")
}

fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // A zombie has exited.
    !stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .trim_start()
        .starts_with('Z')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_ready_with_leases() {
    let Some(env) = env().await else { return };
    let ns = env.new_namespace("agent-nodes").await.expect("namespace");
    let agent = Agent::start(env, &ns, 2).await;
    let client = env.client().await.expect("client");
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    for i in 0..2 {
        let name = format!("{ns}-n{i}");
        let node = nodes.get(&name).await.expect("node registered");
        let status = node.status.clone().expect("status");
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(ready.status, "True");
        assert_eq!(status.allocatable.expect("allocatable")["pods"].0, "110");
        let port = status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port);
        assert_eq!(
            port,
            agent.agent.as_ref().map(|a| i32::from(a.kubelet_port()))
        );
        let lease = leases.get(&name).await.expect("lease exists");
        let spec = lease.spec.expect("lease spec");
        assert_eq!(spec.holder_identity.as_deref(), Some(name.as_str()));
        assert_eq!(spec.lease_duration_seconds, Some(40));
    }
    // The node-lifecycle controller sees the nodes Ready and lifts the not-ready taint.
    let deadline = Instant::now() + Duration::from_secs(60);
    let name = format!("{ns}-n0");
    loop {
        let node = nodes.get(&name).await.expect("node");
        let tainted = node
            .spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .iter()
            .any(|t| t.key == "node.kubernetes.io/not-ready");
        if !tainted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {name} still tainted not-ready after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_runs_ready_with_logs_and_graceful_delete() {
    let Some(env) = env().await else { return };
    let ns = env.new_namespace("agent-pod").await.expect("namespace");
    let agent = Agent::start(env, &ns, 1).await;
    let pods: Api<Pod> = Api::namespaced(env.client().await.expect("client"), &ns);
    let node = format!("{ns}-n0");
    let script = "echo \"hello from $POD_NAME on $MY_NODE at $MY_IP\"; \
                  exec python3 -m http.server --bind \"$POD_IP\" 8080";
    let spec = pod(
        "web",
        Some(&node),
        script,
        serde_json::json!({
            "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        }),
    );
    pods.create(&PostParams::default(), &spec)
        .await
        .expect("pod created");
    let ready = wait_pod(
        &pods,
        "web",
        "Running and Ready",
        Duration::from_secs(60),
        |p| condition(p, "Ready").as_deref() == Some("True"),
    )
    .await;
    let status = ready.status.expect("status");
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let ip = status.pod_ip.expect("pod IP");
    let parsed: std::net::Ipv4Addr = ip.parse().expect("an IPv4 pod address");
    assert!(
        parsed.is_loopback() && parsed.octets()[1] != 0,
        "a pod loopback address, got {ip}"
    );
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(status.start_time.is_some());
    let running = status.container_statuses.expect("container statuses");
    assert!(
        running[0].ready
            && running[0]
                .state
                .as_ref()
                .and_then(|s| s.running.as_ref())
                .is_some()
    );
    // The pod serves on its own address and its declared port.
    let answer = tokio::net::TcpStream::connect((ip.as_str(), 8080)).await;
    assert!(answer.is_ok(), "connect {ip}:8080: {answer:?}");

    // `kubectl logs` goes through the apiserver to the agent's kubelet port.
    let dir = tempfile::tempdir().expect("temporary directory");
    let kubeconfig = kubeconfig(env, dir.path());
    let logs = kubectl(&kubeconfig, &["logs", "-n", &ns, "web"]);
    let out = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.status.success(),
        "kubectl logs failed: {}",
        String::from_utf8_lossy(&logs.stderr)
    );
    assert!(
        out.contains(&format!("hello from web on {node} at {ip}")),
        "kubectl logs said: {out}"
    );
    let tail = kubectl(
        &kubeconfig,
        &["logs", "-n", &ns, "web", "--tail=1", "-c", "app"],
    );
    assert!(
        tail.status.success(),
        "{}",
        String::from_utf8_lossy(&tail.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&tail.stdout).lines().count(), 1);

    // `kubectl logs -f` streams new lines (http.server logs each readiness probe's GET).
    let mut follow = tokio::process::Command::new(
        std::env::var("RORQUAL_KUBECTL").unwrap_or_else(|_| "kubectl".to_owned()),
    )
    .arg(format!("--kubeconfig={}", kubeconfig.display()))
    .args(["logs", "-f", "--tail=0", "-n", &ns, "web"])
    .stdout(std::process::Stdio::piped())
    .kill_on_drop(true)
    .spawn()
    .expect("kubectl logs -f starts");
    let stdout = follow.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let streamed = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("GET /") {
                return Some(line);
            }
        }
        None
    })
    .await;
    assert!(
        matches!(streamed, Ok(Some(_))),
        "kubectl logs -f streamed no new probe line in 15 s: {streamed:?}"
    );
    follow.kill().await.expect("kubectl logs -f stops");

    // `kubectl delete` finishes within the grace period and the process is gone.
    let pids: Vec<i32> = agent
        .runtime
        .process_ids(&ns, "web")
        .into_iter()
        .map(|(_, pid)| pid)
        .collect();
    assert_eq!(pids.len(), 1, "one process for one container");
    let started = Instant::now();
    let deleted = kubectl(
        &kubeconfig,
        &[
            "delete",
            "pod",
            "-n",
            &ns,
            "web",
            "--wait=true",
            "--timeout=30s",
        ],
    );
    let took = started.elapsed();
    assert!(
        deleted.status.success(),
        "kubectl delete failed: {}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    assert!(
        took < Duration::from_secs(5),
        "deletion took {took:?}, the grace period is 5 s"
    );
    assert!(
        !alive(pids[0]),
        "process {} still runs after deletion",
        pids[0]
    );
    assert!(pods.get_opt("web").await.expect("readable").is_none());
    assert!(agent.runtime.list_pods().await.expect("list").is_empty());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_command_restarts_into_crash_loop_back_off() {
    let Some(env) = env().await else { return };
    let ns = env.new_namespace("agent-crash").await.expect("namespace");
    let agent = Agent::start(env, &ns, 1).await;
    let pods: Api<Pod> = Api::namespaced(env.client().await.expect("client"), &ns);
    let spec = pod(
        "crash",
        Some(&format!("{ns}-n0")),
        "echo crashing; exit 3",
        serde_json::json!({}),
    );
    pods.create(&PostParams::default(), &spec)
        .await
        .expect("pod created");
    let looping = wait_pod(
        &pods,
        "crash",
        "in CrashLoopBackOff",
        Duration::from_secs(60),
        |p| {
            let c = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first().cloned());
            c.is_some_and(|c| {
                c.restart_count >= 1
                    && c.state
                        .and_then(|s| s.waiting)
                        .and_then(|w| w.reason)
                        .as_deref()
                        == Some("CrashLoopBackOff")
            })
        },
    )
    .await;
    let status = looping.status.expect("status");
    assert_eq!(
        status.phase.as_deref(),
        Some("Running"),
        "restartPolicy Always keeps it Running"
    );
    assert_eq!(condition_of(&status, "Ready").as_deref(), Some("False"));
    let c = &status.container_statuses.expect("statuses")[0];
    let last = c
        .last_state
        .clone()
        .and_then(|s| s.terminated)
        .expect("last termination");
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    agent.stop().await;
}

fn condition_of(status: &k8s_openapi::api::core::v1::PodStatus, kind: &str) -> Option<String> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_command_waits_with_the_reason() {
    let Some(env) = env().await else { return };
    let ns = env.new_namespace("agent-missing").await.expect("namespace");
    let agent = Agent::start(env, &ns, 1).await;
    let pods: Api<Pod> = Api::namespaced(env.client().await.expect("client"), &ns);
    let mut spec = pod(
        "missing",
        Some(&format!("{ns}-n0")),
        "",
        serde_json::json!({}),
    );
    if let Some(s) = spec.spec.as_mut() {
        s.containers[0].command = Some(vec![
            "/nonexistent/rorqual-program".to_owned(),
            "--flag".to_owned(),
        ]);
    }
    pods.create(&PostParams::default(), &spec)
        .await
        .expect("pod created");
    let waiting = wait_pod(
        &pods,
        "missing",
        "waiting with RunContainerError",
        Duration::from_secs(30),
        |p| {
            let c = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first().cloned());
            c.and_then(|c| c.state)
                .and_then(|s| s.waiting)
                .and_then(|w| w.reason)
                .as_deref()
                == Some("RunContainerError")
        },
    )
    .await;
    let status = waiting.status.expect("status");
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    let w = status.container_statuses.expect("statuses")[0]
        .state
        .clone()
        .and_then(|s| s.waiting)
        .expect("waiting");
    let message = w.message.unwrap_or_default();
    assert!(
        message.contains("/nonexistent/rorqual-program"),
        "message names the program: {message}"
    );
    assert!(
        message.contains("No such file"),
        "message says why: {message}"
    );
    // The agent still works: a good pod next to it runs.
    let ok = pod(
        "fine",
        Some(&format!("{ns}-n0")),
        "echo fine; exec sleep 600",
        serde_json::json!({}),
    );
    pods.create(&PostParams::default(), &ok)
        .await
        .expect("pod created");
    wait_pod(&pods, "fine", "Ready", Duration::from_secs(30), |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_pods_are_scheduled_onto_agent_nodes_and_become_ready() {
    let Some(env) = env().await else { return };
    let ns = env.new_namespace("agent-deploy").await.expect("namespace");
    let agent = Agent::start(env, &ns, 2).await;
    let client = env.client().await.expect("client");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "nodeSelector": {NODE_LABEL: ns},
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "web",
                        "image": "none",
                        "command": ["python3", "-m", "http.server", "--bind", "$(POD_IP)", "8080"],
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
                    }]
                }
            }
        }
    }))
    .expect("valid deployment");
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("deployment created");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let d = deployments.get("web").await.expect("deployment");
        let ready = d
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        if ready == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deployment not ready after 90 s: {:?}\ncontroller-manager: {}\nscheduler: {}",
            d.status,
            env.log_tail(Component::KubeControllerManager, 30)
                .unwrap_or_default(),
            env.log_tail(Component::KubeScheduler, 30)
                .unwrap_or_default(),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let list = pods.list(&Default::default()).await.expect("pods");
    let mut ips: Vec<String> = list
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "every pod has its own address: {ips:?}");
    for p in &list.items {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert!(node.starts_with(&ns), "pod {:?} on {node}", p.metadata.name);
    }
    let pids: Vec<i32> = list
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .flat_map(|name| agent.runtime.process_ids(&ns, &name))
        .map(|(_, pid)| pid)
        .collect();
    assert_eq!(pids.len(), 3, "one process per pod");
    agent.stop().await;
    let still: Vec<i32> = pids.into_iter().filter(|pid| alive(*pid)).collect();
    assert!(
        still.is_empty(),
        "processes {still:?} outlived the agent's shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_pods_follow_their_stages_and_other_namespaces_are_left_alone() {
    let Some(env) = env().await else { return };
    let ns = env.new_namespace("agent-sim").await.expect("namespace");
    let other = env
        .new_namespace("agent-sim-other")
        .await
        .expect("namespace");
    let config = kube::Config::from_custom_kubeconfig(
        env.kubeconfig().clone(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("client config");
    let runtime = SimulatedRuntime::new(SimulatedConfig::default());
    let node = format!("{ns}-sim");
    let agent = NodeAgent::builder(config)
        .runtime(Arc::new(runtime.clone()))
        .node(VirtualNode::new(&node))
        .namespace(&ns)
        .start()
        .await
        .expect("agent starts");
    let client = env.client().await.expect("client");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let healthy: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "healthy"},
        "spec": {"nodeName": node, "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}
    }))
    .expect("valid pod");
    let crashing: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "crashing", "annotations": {
            "sim.rorqual.io/crash-after": "0.5", "sim.rorqual.io/exit-code": "7"}},
        "spec": {"nodeName": node, "containers": [{"name": "a", "image": "x"}]}
    }))
    .expect("valid pod");
    pods.create(&PostParams::default(), &healthy)
        .await
        .expect("created");
    pods.create(&PostParams::default(), &crashing)
        .await
        .expect("created");
    let ready = wait_pod(&pods, "healthy", "Ready", Duration::from_secs(30), |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    let status = ready.status.expect("status");
    assert_eq!(status.container_statuses.map(|c| c.len()), Some(2));
    assert!(status.pod_ip.is_some_and(|ip| ip.starts_with("10.88.")));
    let crashed = wait_pod(
        &pods,
        "crashing",
        "backing off",
        Duration::from_secs(30),
        |p| {
            let c = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first().cloned());
            c.is_some_and(|c| {
                c.restart_count >= 1
                    && c.state
                        .and_then(|s| s.waiting)
                        .and_then(|w| w.reason)
                        .as_deref()
                        == Some("CrashLoopBackOff")
            })
        },
    )
    .await;
    let last = crashed
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c[0].last_state.clone())
        .and_then(|s| s.terminated);
    assert_eq!(last.map(|t| t.exit_code), Some(7));

    // A pod of a namespace the agent is not limited to is never run, even on its node.
    let outsider_api: Api<Pod> = Api::namespaced(client, &other);
    let outsider: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "outsider"},
        "spec": {"nodeName": node, "containers": [{"name": "a", "image": "x"}]}
    }))
    .expect("valid pod");
    outsider_api
        .create(&PostParams::default(), &outsider)
        .await
        .expect("created");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = outsider_api.get("outsider").await.expect("readable");
    assert!(
        seen.status.and_then(|s| s.container_statuses).is_none(),
        "the agent ran a pod outside its namespaces"
    );
    assert_eq!(runtime.len(), 2);

    // Deleting finishes at once (nothing to stop), through the agent's grace-0 delete.
    pods.delete("healthy", &Default::default())
        .await
        .expect("deleted");
    let deadline = Instant::now() + Duration::from_secs(15);
    while pods.get_opt("healthy").await.expect("readable").is_some() {
        assert!(
            Instant::now() < deadline,
            "pod not gone 15 s after deletion"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(runtime.len(), 1);
    agent.shutdown().await.expect("agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_patched_in_place_restarts_the_container_keeping_the_pod() {
    let Some(env) = env().await else { return };
    let ns = env.new_namespace("agent-image").await.expect("namespace");
    let agent = Agent::start(env, &ns, 1).await;
    let pods: Api<Pod> = Api::namespaced(env.client().await.expect("client"), &ns);
    let spec = pod(
        "game",
        Some(&format!("{ns}-n0")),
        "exec sleep 600",
        serde_json::json!({}),
    );
    pods.create(&PostParams::default(), &spec)
        .await
        .expect("pod created");
    let before = wait_pod(&pods, "game", "Ready", Duration::from_secs(30), |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    let old_pids = agent.runtime.process_ids(&ns, "game");
    let patch = serde_json::json!({"spec": {"containers": [{"name": "app", "image": "v2"}]}});
    pods.patch(
        "game",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Strategic(&patch),
    )
    .await
    .expect("image patched");
    let after = wait_pod(
        &pods,
        "game",
        "restarted and Ready",
        Duration::from_secs(30),
        |p| {
            let restarted = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .is_some_and(|c| c.restart_count == 1 && c.image == "v2");
            restarted && condition(p, "Ready").as_deref() == Some("True")
        },
    )
    .await;
    assert_eq!(after.metadata.uid, before.metadata.uid, "the same pod");
    assert_eq!(
        after.status.as_ref().and_then(|s| s.pod_ip.clone()),
        before.status.as_ref().and_then(|s| s.pod_ip.clone()),
        "the same address"
    );
    let new_pids = agent.runtime.process_ids(&ns, "game");
    assert_eq!(new_pids.len(), 1);
    assert_ne!(new_pids, old_pids, "a new process");
    assert!(!alive(old_pids[0].1), "the old process was stopped");
    agent.stop().await;
}

/// A `Network` that hands out `127.77.0.x` (no namespace) and records what it was asked.
#[derive(Debug, Default)]
struct RecordingNetwork {
    attached: std::sync::Mutex<Vec<String>>,
    detached: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl rorqual_core::network::Network for RecordingNetwork {
    async fn attach(
        &self,
        request: &rorqual_core::network::AttachRequest,
    ) -> rorqual_core::Result<rorqual_core::network::Attachment> {
        let mut attached = self.attached.lock().expect("not poisoned");
        attached.push(request.instance.clone());
        let last = u8::try_from(attached.len()).expect("few pods");
        let ports = request
            .ports
            .iter()
            .map(|p| (p.name.clone(), p.number))
            .collect();
        Ok(rorqual_core::network::Attachment::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 77, 0, last)),
            ports,
        ))
    }

    async fn detach(&self, instance: &str) -> rorqual_core::Result<()> {
        self.detached
            .lock()
            .expect("not poisoned")
            .push(instance.to_owned());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_take_their_address_from_a_configured_network() {
    let Some(env) = env().await else { return };
    let ns = env.new_namespace("agent-net").await.expect("namespace");
    let network = Arc::new(RecordingNetwork::default());
    let dir = tempfile::tempdir().expect("temporary directory");
    let runtime = LocalRuntime::builder()
        .state_dir(dir.path())
        .network(network.clone())
        .build()
        .expect("local runtime");
    let _guard = KillOnDrop(runtime.clone());
    let config = kube::Config::from_custom_kubeconfig(
        env.kubeconfig().clone(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("client config");
    let node = format!("{ns}-n0");
    let agent = NodeAgent::builder(config)
        .runtime(Arc::new(runtime))
        .node(VirtualNode::new(&node))
        .namespace(&ns)
        .start()
        .await
        .expect("agent starts");
    let pods: Api<Pod> = Api::namespaced(env.client().await.expect("client"), &ns);
    let spec = pod(
        "web",
        Some(&node),
        "exec python3 -m http.server --bind \"$POD_IP\" 8080",
        serde_json::json!({
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
        }),
    );
    let created = pods
        .create(&PostParams::default(), &spec)
        .await
        .expect("pod created");
    let uid = created.metadata.uid.expect("uid");
    let ready = wait_pod(&pods, "web", "Ready", Duration::from_secs(30), |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    assert_eq!(
        ready.status.and_then(|s| s.pod_ip).as_deref(),
        Some("127.77.0.1")
    );
    assert_eq!(
        *network.attached.lock().expect("not poisoned"),
        std::slice::from_ref(&uid)
    );
    pods.delete("web", &Default::default())
        .await
        .expect("deleted");
    let deadline = Instant::now() + Duration::from_secs(15);
    while pods.get_opt("web").await.expect("readable").is_some() {
        assert!(
            Instant::now() < deadline,
            "pod not gone 15 s after deletion"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(*network.detached.lock().expect("not poisoned"), [uid]);
    agent.shutdown().await.expect("agent stops");
}

/// Removes what a bridge test created even when it fails: namespaces named with `prefix` and
/// the bridge.
struct BridgeCleanup {
    prefix: String,
    bridge: String,
}

fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("command runs")
}

impl Drop for BridgeCleanup {
    fn drop(&mut self) {
        let list = run(&["ip", "netns", "list"]);
        for line in String::from_utf8_lossy(&list.stdout).lines() {
            if let Some(name) = line.split_whitespace().next()
                && name.starts_with(&self.prefix)
            {
                let _ = run(&["ip", "netns", "del", name]);
            }
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}

/// `GET path` over HTTP/1.0 from this host; the body.
async fn http_get(ip: &str, port: u16, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((ip, port)),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_a_bridge_get_their_own_namespace_address_and_ports() {
    use rorqual_net::store::memory::MemoryStore;
    use rorqual_net::{Allocator, BridgeNetwork, IpRange, PoolSpec, instance_owner};

    if !rorqual_testkit::root::bridge_tests_can_run() {
        return;
    }
    let Some(env) = env().await else { return };
    let ns = env.new_namespace("agent-bridge").await.expect("namespace");
    // Names and a subnet of this process, so concurrent runs do not collide.
    let id = std::process::id() % 100_000;
    let octet = std::process::id() % 200 + 20;
    let cleanup = BridgeCleanup {
        prefix: format!("rqk{id}-"),
        bridge: format!("rqk{id}"),
    };
    let subnet = format!("10.253.{octet}.0/24");
    let gateway = format!("10.253.{octet}.1");
    let allocator = Allocator::new(Arc::new(MemoryStore::new()));
    allocator
        .create_pool(
            // Two addresses: a third pod waits for one.
            PoolSpec::new("pods").with_range(
                IpRange::new(subnet.parse().expect("valid subnet"))
                    .with_bounds(
                        format!("10.253.{octet}.10").parse().expect("valid address"),
                        format!("10.253.{octet}.11").parse().expect("valid address"),
                    )
                    .with_gateway(gateway.parse().expect("valid gateway")),
            ),
        )
        .await
        .expect("pool created");
    let network = BridgeNetwork::new(allocator.clone(), "pods", cleanup.bridge.clone())
        .with_netns_prefix(cleanup.prefix.clone());
    let dir = tempfile::tempdir().expect("temporary directory");
    let runtime = LocalRuntime::builder()
        .state_dir(dir.path())
        .network(Arc::new(network.clone()))
        .build()
        .expect("local runtime");
    let _kill = KillOnDrop(runtime.clone());
    let config = kube::Config::from_custom_kubeconfig(
        env.kubeconfig().clone(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("client config");
    let node = format!("{ns}-n0");
    let agent = NodeAgent::builder(config)
        .runtime(Arc::new(runtime.clone()))
        .node(VirtualNode::new(&node))
        .namespace(&ns)
        .start()
        .await
        .expect("agent starts");
    let pods: Api<Pod> = Api::namespaced(env.client().await.expect("client"), &ns);
    // Both pods serve on the same port; each writes the address the API gave it
    // (`fieldRef: status.podIP`) where the host can fetch it.
    let script = "echo \"$MY_IP\" > ip.txt; exec python3 -m http.server --bind \"$POD_IP\" 8080";
    let web = |name: &str| {
        pod(
            name,
            Some(&node),
            script,
            serde_json::json!({
                "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
            }),
        )
    };
    let mut uids = Vec::new();
    for name in ["web-a", "web-b"] {
        let created = pods
            .create(&PostParams::default(), &web(name))
            .await
            .expect("pod created");
        uids.push(created.metadata.uid.expect("uid"));
    }
    let mut ips = Vec::new();
    for (name, uid) in ["web-a", "web-b"].into_iter().zip(&uids) {
        let ready = wait_pod(&pods, name, "Ready", Duration::from_secs(60), |p| {
            condition(p, "Ready").as_deref() == Some("True")
        })
        .await;
        let ip = ready.status.and_then(|s| s.pod_ip).expect("pod IP");
        let parsed: std::net::Ipv4Addr = ip.parse().expect("an IPv4 pod address");
        assert!(
            ip.starts_with(&format!("10.253.{octet}.")) && ip != gateway,
            "{name}: an address of the bridge's subnet {subnet}, got {ip}"
        );
        assert!(!parsed.is_loopback());
        // The host reaches the pod on its address and declared port, and the pod saw the
        // same address in its environment.
        let body = http_get(&ip, 8080, "/ip.txt").await;
        assert_eq!(
            body.as_ref().map(|b| b.trim().to_owned()).ok(),
            Some(ip.clone()),
            "{name}: GET http://{ip}:8080/ip.txt: {body:?}"
        );
        // Its process runs in the pod's own network namespace.
        let netns = network.netns_path(uid);
        assert!(netns.exists(), "{name}: no namespace {}", netns.display());
        let namespace = netns
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a namespace name")
            .to_owned();
        let pids = runtime.process_ids(&ns, name);
        assert_eq!(pids.len(), 1, "{name}: one process");
        let identify = run(&["ip", "netns", "identify", &pids[0].1.to_string()]);
        assert_eq!(
            String::from_utf8_lossy(&identify.stdout).trim(),
            namespace,
            "{name}: process {} is not in the pod's namespace",
            pids[0].1
        );
        ips.push((ip, netns));
    }
    assert_ne!(ips[0].0, ips[1].0, "two pods, two addresses");
    assert_eq!(allocator.usage("pods").await.expect("usage").active, 2);

    // The pool is full: a third pod waits, Pending without an address.
    pods.create(&PostParams::default(), &web("web-c"))
        .await
        .expect("pod created");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = pods.get("web-c").await.expect("readable");
    assert_eq!(
        waiting.status.as_ref().and_then(|s| s.pod_ip.clone()),
        None,
        "no free address, yet web-c has one"
    );
    // `kubectl describe pod` says why, as for a kubelet whose CNI plugin failed.
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(env.client().await.expect("client"), &ns);
    let why = events
        .list(&Default::default())
        .await
        .expect("events listed")
        .items
        .into_iter()
        .find(|e| {
            e.reason.as_deref() == Some("FailedCreatePodSandBox")
                && e.involved_object.name.as_deref() == Some("web-c")
        })
        .expect("a FailedCreatePodSandBox event about web-c");
    assert_eq!(why.type_.as_deref(), Some("Warning"));
    let message = why.message.unwrap_or_default();
    assert!(message.contains("pods"), "names the pool: {message}");

    // Deleting a pod removes its namespace and gives its address back to the pool.
    pods.delete("web-a", &Default::default())
        .await
        .expect("deleted");
    let deadline = Instant::now() + Duration::from_secs(15);
    while pods.get_opt("web-a").await.expect("readable").is_some() {
        assert!(
            Instant::now() < deadline,
            "web-a not gone 15 s after deletion"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !ips[0].1.exists(),
        "{} left behind after deletion",
        ips[0].1.display()
    );
    assert_eq!(
        allocator
            .lookup("pods", &instance_owner(&uids[0]))
            .await
            .expect("lookup"),
        None,
        "web-a's address is still allocated"
    );
    // The other pod still serves.
    assert!(http_get(&ips[1].0, 8080, "/ip.txt").await.is_ok());
    // The waiting pod gets the freed address (the agent retries a refused pod).
    let started = wait_pod(&pods, "web-c", "Ready", Duration::from_secs(30), |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    let ip_c = started.status.and_then(|s| s.pod_ip).expect("pod IP");
    assert!(
        ip_c.starts_with(&format!("10.253.{octet}.")) && ip_c != ips[1].0,
        "web-c: {ip_c}"
    );
    assert_eq!(
        http_get(&ip_c, 8080, "/ip.txt")
            .await
            .ok()
            .map(|b| b.trim().to_owned()),
        Some(ip_c.clone())
    );
    assert_eq!(allocator.usage("pods").await.expect("usage").active, 2);
    let netns_c = network.netns_path(started.metadata.uid.as_deref().expect("uid"));

    // Shutting the agent down stops the remaining pods and detaches them too.
    agent.shutdown().await.expect("agent stops");
    for netns in [&ips[1].1, &netns_c] {
        assert!(
            !netns.exists(),
            "{} left behind after shutdown",
            netns.display()
        );
    }
    assert_eq!(allocator.usage("pods").await.expect("usage").active, 0);
    assert!(runtime.list_pods().await.expect("list").is_empty());
    drop(cleanup);
}
