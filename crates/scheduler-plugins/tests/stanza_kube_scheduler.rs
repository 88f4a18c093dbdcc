//! The generated KubeSchedulerConfiguration against a real kube-scheduler binary: it must
//! load, default and write the configuration back (`--write-config-to`, which exits without
//! contacting an API server). The binary comes from `TEST_ASSET_KUBE_SCHEDULER`, else from
//! the cache the project's kube build script fills (`~/.cache/rorqual/kube/<version>/`).
//! Without one the test says it was skipped and why; with `CI=true` that is a failure.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rorqual_scheduler::extender::{ExtenderStanza, KubeVersion};

/// kube-scheduler binaries found, with the version each reports (`Kubernetes v1.20.2`).
fn kube_schedulers() -> Vec<(PathBuf, KubeVersion)> {
    let mut paths = Vec::new();
    if let Some(p) = std::env::var_os("TEST_ASSET_KUBE_SCHEDULER") {
        paths.push(PathBuf::from(p));
    } else if let Some(home) = std::env::var_os("HOME") {
        let cache = Path::new(&home).join(".cache/rorqual/kube");
        if let Ok(dirs) = std::fs::read_dir(cache) {
            for dir in dirs.flatten() {
                let bin = dir.path().join("kube-scheduler");
                if bin.is_file() {
                    paths.push(bin);
                }
            }
        }
    }
    paths
        .into_iter()
        .map(|p| {
            let out = Command::new(&p).arg("--version").output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let version = text
                .split_whitespace()
                .last()
                .unwrap_or_default()
                .parse()
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, version)
        })
        .collect()
}

/// Runs `kube-scheduler --config <config> --write-config-to <out>`; the exit status and
/// the output.
fn load(bin: &Path, dir: &Path, config: &str) -> (bool, String) {
    let config_path = dir.join("config.yaml");
    let out_path = dir.join("written.yaml");
    std::fs::write(&config_path, config).unwrap();
    let _ = std::fs::remove_file(&out_path);
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&config_path)
        .arg("--write-config-to")
        .arg(&out_path)
        .arg("--port=0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{} did not exit within 60 s", bin.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut stderr).unwrap();
    }
    let written = std::fs::read_to_string(&out_path).unwrap_or_default();
    (status.success(), format!("{written}\n{stderr}"))
}

#[test]
fn kube_scheduler_loads_the_generated_configuration() {
    let found = kube_schedulers();
    if found.is_empty() {
        let why = "skipped: no kube-scheduler binary (set TEST_ASSET_KUBE_SCHEDULER, or build \
                   one into ~/.cache/rorqual/kube/ with the project's kube build script)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("{why}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("rorqual-stanza-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- {name: c, cluster: {server: \"https://127.0.0.1:1\"}}\n\
         contexts:\n- {name: x, context: {cluster: c, user: u}}\ncurrent-context: x\n\
         users:\n- {name: u, user: {token: t}}\n",
    )
    .unwrap();
    for (bin, version) in found {
        let stanza = ExtenderStanza::new("http://127.0.0.1:8888")
            .https(None)
            .kubeconfig(kubeconfig.display().to_string())
            .leader_elect(false);
        let config = stanza.to_yaml(version).unwrap();
        let (ok, out) = load(&bin, &dir, &config);
        assert!(ok, "kube-scheduler {version} refused:\n{config}\n{out}");
        for part in [
            "urlPrefix: http://127.0.0.1:8888",
            "bindVerb: bind",
            "enableHTTPS: true",
            "nodeCacheCapable: true",
            "leaderElect: false",
        ] {
            assert!(out.contains(part), "{part} lost by {version}:\n{out}");
        }
        // The version matters: the group's `v1` is not a KubeSchedulerConfiguration before
        // 1.25 (what the generator wrote before it took a target version).
        if version < KubeVersion::new(1, 25) {
            let v1 = config.replace(
                &format!(
                    "apiVersion: {}",
                    rorqual_scheduler::extender::config_api_version(version).unwrap()
                ),
                "apiVersion: kubescheduler.config.k8s.io/v1",
            );
            let (ok, out) = load(&bin, &dir, &v1);
            assert!(!ok, "kube-scheduler {version} accepted v1:\n{out}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
