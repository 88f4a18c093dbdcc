//! The test control plane against real binaries: etcd from Debian, kube-apiserver and
//! kube-controller-manager v1.20.2 from `scripts/build-kube`, Debian's kubectl.
//!
//! The tests share one control plane (`testenv_or_skip!`), except the two that check that a
//! control plane's processes end: with a drop, and with `kill -9` of the process that started
//! it. Outside CI a missing binary skips each test with the reason; with CI=true it fails.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions unwrap too

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use rorqual_kube::testenv::{
    BinarySources, Component, Error, TestEnv, TestEnvBuilder, Unavailable, ci_from_env,
    process_alive, skip_or_fail,
};
use rorqual_kube::testenv_or_skip;

/// Set in the child of `kill_9_of_the_test_binary_leaves_no_process`.
const HELPER_VAR: &str = "RORQUAL_TESTENV_KILL_HELPER";
/// Set in the child of `use_existing_cluster_starts_nothing_and_uses_the_kubeconfig`.
const EXISTING_HELPER_VAR: &str = "RORQUAL_TESTENV_EXISTING_HELPER";

#[tokio::test]
async fn a_new_namespace_has_its_service_account_token() {
    let env = testenv_or_skip!();
    let namespace = env.new_namespace("token").await.unwrap();
    assert!(namespace.starts_with("token-"), "{namespace}");
    let client = env.client().await.unwrap();
    let account = Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .get("default")
        .await
        .unwrap();
    let secret_name = account.secrets.unwrap()[0].name.clone().unwrap();
    let secret = Api::<Secret>::namespaced(client, &namespace)
        .get(&secret_name)
        .await
        .unwrap();
    assert!(secret.data.unwrap().contains_key("token"));
}

#[tokio::test]
async fn a_configmap_round_trips() {
    let env = testenv_or_skip!();
    let namespace = env.new_namespace("configmap").await.unwrap();
    let api = Api::<ConfigMap>::namespaced(env.client().await.unwrap(), &namespace);
    let map = ConfigMap {
        metadata: ObjectMeta {
            name: Some("settings".to_owned()),
            ..ObjectMeta::default()
        },
        data: Some([("greeting".to_owned(), "hello".to_owned())].into()),
        ..ConfigMap::default()
    };
    api.create(&PostParams::default(), &map).await.unwrap();
    let read = api.get("settings").await.unwrap();
    assert_eq!(read.data.unwrap()["greeting"], "hello");
    assert!(read.metadata.resource_version.is_some());
}

/// Debian's kubectl: `RORQUAL_KUBECTL` (scripts/test points it at Debian's 1.20 client when
/// another package owns /usr/bin/kubectl), else `kubectl` on PATH.
fn kubectl() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RORQUAL_KUBECTL") {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
}

#[tokio::test]
async fn kubectl_uses_the_written_kubeconfig() {
    let env = testenv_or_skip!();
    let Some(kubectl) = kubectl() else {
        assert!(
            !ci_from_env(),
            "CI=true but kubectl is missing (apt-get install kubernetes-client)"
        );
        println!("skipped: kubectl is missing (apt-get install kubernetes-client)");
        return;
    };
    let namespace = env.new_namespace("kubectl").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.kubeconfig");
    env.write_kubeconfig(&path).unwrap();
    let version = Command::new(&kubectl)
        .args(["version", "--client", "--short"])
        .output()
        .unwrap();
    println!(
        "{}: {}",
        kubectl.display(),
        String::from_utf8_lossy(&version.stdout).trim()
    );
    let output = tokio::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&path)
        .args(["get", "ns", "-o", "name"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubectl get ns failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l == format!("namespace/{namespace}")),
        "{namespace} not in:\n{stdout}"
    );
}

#[tokio::test]
async fn a_missing_binary_names_its_variable_and_the_build_command() {
    let sources =
        BinarySources::with_vars([("TEST_ASSET_KUBE_APISERVER", "/nonexistent/kube-apiserver")]);
    // Nothing starts: the lookup fails first.
    let error = TestEnv::builder()
        .binaries(sources)
        .use_existing_cluster(false)
        .start()
        .await
        .unwrap_err();
    let Error::MissingBinary(missing) = &error else {
        panic!("expected a missing binary, got {error}");
    };
    assert_eq!(
        missing.component,
        Component::Etcd,
        "etcd is looked up first"
    );

    let sources = BinarySources::with_vars([]).with_cache("/nowhere/.cache/rorqual/kube", vec![]);
    let missing = sources
        .locate(Component::KubeApiserver, &|_: &Path| false)
        .unwrap_err();
    let Unavailable::Skip(line) = skip_or_fail(&missing, false) else {
        panic!("outside CI: a skip");
    };
    assert!(
        line.starts_with("skipped: kube-apiserver not found"),
        "{line}"
    );
    assert!(
        line.contains("$TEST_ASSET_KUBE_APISERVER (unset)"),
        "{line}"
    );
    assert!(line.contains("$KUBEBUILDER_ASSETS (unset)"), "{line}");
    assert!(line.contains("scripts/build-kube"), "{line}");
    let Unavailable::Fail(message) = skip_or_fail(&missing, true) else {
        panic!("with CI=true: a failure");
    };
    assert!(message.contains("$RORQUAL_KUBE_BIN (unset)"), "{message}");
}

/// Starts a control plane of its own (not the shared one), or says why it cannot.
async fn own_env(builder: TestEnvBuilder) -> Option<TestEnv> {
    if std::env::var("USE_EXISTING_CLUSTER").is_ok_and(|v| v == "true") {
        println!("skipped: USE_EXISTING_CLUSTER=true starts no processes");
        return None;
    }
    match builder.start().await {
        Ok(env) => Some(env),
        Err(Error::MissingBinary(missing)) => match skip_or_fail(&missing, ci_from_env()) {
            Unavailable::Skip(line) => {
                println!("{line}");
                None
            }
            Unavailable::Fail(message) => panic!("{message}"),
        },
        Err(e) => panic!("{e}"),
    }
}

/// Waits up to `within` for every pid to be gone; the ones still alive.
async fn survivors(pids: &[u32], within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| process_alive(*p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_processes_are_gone_after_drop() {
    // With the scheduler, so that its start and its flags are checked too.
    let Some(env) = own_env(TestEnv::builder().scheduler(true)).await else {
        return;
    };
    let processes = env.processes();
    let started: Vec<Component> = processes.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        started,
        [
            Component::Etcd,
            Component::KubeApiserver,
            Component::KubeControllerManager,
            Component::KubeScheduler
        ]
    );
    let pids: Vec<u32> = processes.iter().map(|(_, pid)| *pid).collect();
    assert!(
        pids.iter().all(|p| process_alive(*p)),
        "all running: {processes:?}"
    );
    drop(env);
    // Drop kills and reaps: nothing may be left, not even for a moment.
    assert_eq!(survivors(&pids, Duration::ZERO).await, Vec::<u32>::new());
}

#[tokio::test]
async fn kill_9_of_the_test_binary_leaves_no_process() {
    if std::env::var("USE_EXISTING_CLUSTER").is_ok_and(|v| v == "true") {
        println!("skipped: USE_EXISTING_CLUSTER=true starts no processes");
        return;
    }
    // This test binary again, running only the helper below, which starts a control plane,
    // prints its pids and waits to be killed.
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill_helper", "--nocapture", "--test-threads=1"])
        .env(HELPER_VAR, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = helper.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // The harness prints `test kill_helper ... ` before the helper's own output.
            .find(|l| l.contains("pids:") || l.contains("skipped:"))
    });
    let line = tokio::time::timeout(Duration::from_secs(120), lines)
        .await
        .expect("the helper started a control plane within 120 s")
        .unwrap();
    let Some(line) = line else {
        let _ = helper.kill();
        panic!("the helper ended without printing its pids");
    };
    if let Some((_, why)) = line.split_once("skipped:") {
        let _ = helper.wait();
        println!("skipped:{why}");
        return;
    }
    let Some((_, pids)) = line.split_once("pids:") else {
        unreachable!("the line was chosen for holding `pids:`")
    };
    let pids: Vec<u32> = pids
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "{line}");
    assert!(
        pids.iter().all(|p| process_alive(*p)),
        "all running: {line}"
    );
    // SIGKILL: no destructor runs in the helper.
    helper.kill().unwrap();
    helper.wait().unwrap();
    let left = survivors(&pids, Duration::from_secs(10)).await;
    assert!(
        left.is_empty(),
        "still running 10 s after kill -9: {left:?}"
    );
}

/// Not a test on its own: runs only as the child of `kill_9_of_the_test_binary_leaves_no_process`.
#[tokio::test]
async fn kill_helper() {
    if std::env::var_os(HELPER_VAR).is_none() {
        return;
    }
    let Some(env) = own_env(TestEnv::builder()).await else {
        return;
    };
    let pids: Vec<String> = env.processes().iter().map(|(_, p)| p.to_string()).collect();
    println!("pids: {}", pids.join(" "));
    tokio::time::sleep(Duration::from_secs(600)).await;
    panic!("the helper was not killed within 600 s");
}

#[tokio::test]
async fn use_existing_cluster_starts_nothing_and_uses_the_kubeconfig() {
    let env = testenv_or_skip!();
    if env.uses_existing_cluster() {
        println!("skipped: already running with USE_EXISTING_CLUSTER=true");
        return;
    }
    // The shared control plane plays the existing cluster: this test binary again, running
    // only the helper below with USE_EXISTING_CLUSTER=true and KUBECONFIG naming it (a
    // child process, because changing this process's environment is not thread-safe).
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("existing.kubeconfig");
    env.write_kubeconfig(&kubeconfig).unwrap();
    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "existing_cluster_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(EXISTING_HELPER_VAR, "1")
        .env("USE_EXISTING_CLUSTER", "true")
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "helper failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let Some((_, report)) = stdout.split_once("existing-ok: ") else {
        panic!("the helper did not report:\n{stdout}");
    };
    let mut words = report.split_whitespace();
    let (namespace, server) = (words.next().unwrap(), words.next().unwrap());
    assert_eq!(
        server.trim_end_matches('/'),
        env.server_url(),
        "the kubeconfig's cluster"
    );
    // The namespace the helper made is on the shared control plane.
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(env.client().await.unwrap());
    assert!(
        namespaces.get_opt(namespace).await.unwrap().is_some(),
        "{namespace}"
    );
}

/// Not a test on its own: runs only as the child of
/// `use_existing_cluster_starts_nothing_and_uses_the_kubeconfig`.
#[tokio::test]
async fn existing_cluster_helper() {
    if std::env::var_os(EXISTING_HELPER_VAR).is_none() {
        return;
    }
    let env = TestEnv::start().await.unwrap();
    assert!(env.uses_existing_cluster());
    assert!(env.processes().is_empty(), "nothing started");
    let namespace = env.new_namespace("existing").await.unwrap();
    println!("existing-ok: {namespace} {}", env.server_url());
}

/// A benchmark compares scheduler configurations on one control plane: each restart is a new
/// kube-scheduler process running the configuration given, and the old one is gone.
#[tokio::test]
async fn kube_scheduler_restarts_with_another_configuration() {
    // No controller-manager (fewer processes): pods then need no ServiceAccount.
    let builder = TestEnv::builder()
        .controller_manager(false)
        .apiserver_arg("--disable-admission-plugins=ServiceAccount");
    let Some(mut env) = own_env(builder).await else {
        return;
    };
    let schedulers = |env: &TestEnv| -> Vec<u32> {
        env.processes()
            .into_iter()
            .filter(|(c, _)| *c == Component::KubeScheduler)
            .map(|(_, pid)| pid)
            .collect()
    };
    assert!(schedulers(&env).is_empty(), "none asked for at the start");
    env.restart_scheduler(None).await.unwrap();
    let first = schedulers(&env);
    assert_eq!(first.len(), 1);
    // A profile with its own name: only this configuration schedules the pod below.
    let config = r#"{"apiVersion": "kubescheduler.config.k8s.io/v1beta1",
        "kind": "KubeSchedulerConfiguration",
        "profiles": [{"schedulerName": "second"}]}"#;
    env.restart_scheduler(Some(config)).await.unwrap();
    let second = schedulers(&env);
    assert_eq!(second.len(), 1);
    assert_ne!(first, second);
    assert_eq!(survivors(&first, Duration::ZERO).await, Vec::<u32>::new());

    let client = env.client().await.unwrap();
    let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "n0"},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap();
    Api::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    let namespace = env.new_namespace("restart").await.unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, &namespace);
    let pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p"},
        "spec": {"schedulerName": "second", "tolerations": [{"operator": "Exists"}],
                 "containers": [{"name": "c", "image": "none"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let bound = pods.get("p").await.unwrap().spec.and_then(|s| s.node_name);
        if bound.as_deref() == Some("n0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pod p not bound by scheduler `second`"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    env.stop_scheduler().unwrap();
    assert!(schedulers(&env).is_empty());
    assert_eq!(survivors(&second, Duration::ZERO).await, Vec::<u32>::new());
}
