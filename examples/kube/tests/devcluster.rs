//! `kube_devcluster` as a user runs it, with Debian's kubectl 1.20 as the client: it prints
//! `ready`, a Deployment whose container has a command becomes Available with its pods Running
//! and Ready on distinct addresses, `kubectl logs` shows the command's output, `kubectl delete`
//! stops the processes, and SIGINT stops everything the example started; the same with
//! `--pod-network bridge` (root), the pods' addresses then from the bridge's subnet.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rorqual_kube::testenv::{BinarySources, Component, Unavailable, ci_from_env, skip_or_fail};

fn kubectl() -> String {
    std::env::var("RORQUAL_KUBECTL").unwrap_or_else(|_| "kubectl".to_owned())
}

fn run(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: 3
  selector:
    matchLabels: {app: hello}
  template:
    metadata:
      labels: {app: hello}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: hello
        image: none
        command: ["/bin/sh", "-c", "echo hello from $POD_IP; exec python3 -m http.server 8080 --bind $POD_IP"]
        ports: [{containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
"#;

#[test]
fn kubectl_works_against_the_dev_cluster() {
    dev_cluster(&[], "127.");
}

/// The same with `--pod-network bridge`: pods in their own namespaces on a bridge, addresses
/// from the subnet (root only; required under CI=true).
#[test]
fn kubectl_works_against_the_dev_cluster_on_a_bridge() {
    if !rorqual_testkit::root::bridge_tests_can_run() {
        return;
    }
    // Names and a subnet of this process, so concurrent runs do not collide.
    let id = std::process::id() % 100_000;
    let octet = std::process::id() % 200 + 20;
    let bridge = format!("rqd{id}");
    let subnet = format!("10.252.{octet}.0/24");
    dev_cluster(
        &[
            "--pod-network",
            "bridge",
            "--pod-subnet",
            &subnet,
            "--bridge",
            &bridge,
        ],
        &format!("10.252.{octet}."),
    );
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.contains(&format!("{bridge}-")),
        "namespaces left behind: {left}"
    );
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&bridge)
            .exists(),
        "bridge {bridge} left behind"
    );
}

/// Runs the example with `args`, checks kubectl against it and that pods' addresses start
/// with `prefix`, then stops it with SIGINT.
fn dev_cluster(args: &[&str], prefix: &str) {
    let sources = BinarySources::from_env();
    for c in [
        Component::KubeApiserver,
        Component::KubeControllerManager,
        Component::KubeScheduler,
        Component::Etcd,
    ] {
        if let Err(missing) = sources.locate(c, &|p| p.exists()) {
            match skip_or_fail(&missing, ci_from_env()) {
                Unavailable::Skip(line) => {
                    println!("{line}");
                    return;
                }
                Unavailable::Fail(message) => panic!("{message}"),
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("dev.kubeconfig");
    let bin = rorqual_testkit::examples::example_bin_of("rorqual-kube-examples", "kube_devcluster");
    let mut child = Command::new(bin)
        .args(["--nodes", "2", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = out.next().unwrap().unwrap();
    assert!(ready.starts_with("ready in "), "{ready}");

    let nodes = run(&kubeconfig, &["get", "nodes", "--no-headers"]);
    assert_eq!(
        nodes.lines().filter(|l| l.contains(" Ready ")).count(),
        2,
        "{nodes}"
    );
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, DEPLOYMENT).unwrap();
    run(&kubeconfig, &["apply", "-f", file.to_str().unwrap()]);
    run(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Available",
            "deploy/hello",
            "--timeout=90s",
        ],
    );
    let pods = run(
        &kubeconfig,
        &[
            "get",
            "pods",
            "-l",
            "app=hello",
            "-o",
            "jsonpath={range .items[*]}{.status.podIP} {.status.phase}{\"\\n\"}{end}",
        ],
    );
    let lines: Vec<&str> = pods.lines().collect();
    assert_eq!(lines.len(), 3, "{pods}");
    let mut ips: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "distinct pod addresses: {pods}");
    assert!(lines.iter().all(|l| l.ends_with("Running")), "{pods}");
    assert!(ips.iter().all(|ip| ip.starts_with(prefix)), "{pods}");
    let name = run(
        &kubeconfig,
        &["get", "pods", "-l", "app=hello", "-o", "name"],
    );
    let first = name.lines().next().unwrap();
    let logs = run(&kubeconfig, &["logs", first]);
    assert!(logs.starts_with(&format!("hello from {prefix}")), "{logs}");

    let started = Instant::now();
    run(&kubeconfig, &["delete", "deploy", "hello", "--wait=true"]);
    loop {
        let left = run(
            &kubeconfig,
            &["get", "pods", "-l", "app=hello", "--no-headers"],
        );
        if left.trim().is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "pods left: {left}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let servers = |ip: &str| {
        Command::new("pgrep")
            .args(["-f", &format!("http.server 8080 --bind {ip}")])
            .output()
            .unwrap()
            .stdout
            .is_empty()
    };
    assert!(ips.iter().all(|ip| servers(ip)), "pod processes stopped");

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let rest: Vec<String> = out.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {rest:?}");
    assert_eq!(rest, ["stopping", "stopped"]);
}
