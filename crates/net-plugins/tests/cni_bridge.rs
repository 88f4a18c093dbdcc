//! Debian's real `bridge` plugin delegating to `rorqual-ipam`, in network namespaces this test
//! creates (root only; required when CI=true).
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_rorqual-ipam");
const BRIDGE: &str = "/usr/lib/cni/bridge";

fn can_run() -> bool {
    rorqual_testkit::root::bridge_tests_can_run()
}

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command")
}

/// Deletes the namespaces (and with the host one, the bridge inside it) even when the test
/// panics.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

struct Net {
    host: String,
    path: String,
    conf: Value,
}

impl Net {
    fn cni(
        &self,
        cmd: &str,
        ctr: &str,
        ns: &str,
        args: &str,
        conf: &Value,
    ) -> (bool, Value, String) {
        self.cni_with(BRIDGE, cmd, ctr, ns, args, conf)
    }

    /// Runs `plugin` in the host namespace with the CNI environment.
    fn cni_with(
        &self,
        plugin: &str,
        cmd: &str,
        ctr: &str,
        ns: &str,
        args: &str,
        conf: &Value,
    ) -> (bool, Value, String) {
        let netns = format!("/var/run/netns/{ns}");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.host, "env", "-i"])
            .arg(format!("CNI_COMMAND={cmd}"))
            .arg(format!("CNI_CONTAINERID={ctr}"))
            .arg(format!("CNI_NETNS={netns}"))
            .arg("CNI_IFNAME=eth0")
            .arg(format!("CNI_ARGS={args}"))
            .arg(format!("CNI_PATH={}", self.path))
            .arg(plugin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run plugin");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let v = serde_json::from_str(&text).unwrap_or(Value::Null);
        (
            out.status.success(),
            v,
            format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
        )
    }
}

fn address(result: &Value) -> String {
    let a = result["ips"][0]["address"].as_str().expect("address");
    a.split('/').next().unwrap().to_owned()
}

#[test]
fn bridge_plugin_with_rorqual_ipam_in_namespaces() {
    if !can_run() {
        return;
    }
    let tag = format!("rq{}", std::process::id() % 100_000);
    let (host, a, b) = (format!("{tag}-h"), format!("{tag}-a"), format!("{tag}-b"));
    let _guard = Namespaces(vec![a.clone(), b.clone(), host.clone()]);
    for ns in [&host, &a, &b] {
        let out = sh(&["ip", "netns", "add", ns]);
        assert!(out.status.success(), "ip netns add {ns}: {out:?}");
    }
    let data = tempfile::tempdir().unwrap();
    let bin_dir = PathBuf::from(BIN).parent().unwrap().to_path_buf();
    let conf = json!({
        "cniVersion": "1.0.0", "name": format!("{tag}net"), "type": "bridge",
        "bridge": format!("{tag}br0"), "isGateway": true, "ipMasq": false,
        "ipam": {"type": "rorqual-ipam", "ranges": [[{"subnet": "10.251.7.0/24"}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data.path()}
    });
    let net = Net {
        host: host.clone(),
        path: format!("{}:/usr/lib/cni", bin_dir.display()),
        conf: conf.clone(),
    };
    let mac = "02:42:0a:fb:07:aa";
    let (ok, ra, log) = net.cni(
        "ADD",
        "ctr-a",
        &a,
        &format!("IgnoreUnknown=1;MAC={mac}"),
        &net.conf,
    );
    assert!(ok, "ADD a: {log}");
    let (ok, rb, log) = net.cni("ADD", "ctr-b", &b, "", &net.conf);
    assert!(ok, "ADD b: {log}");
    assert_ne!(address(&ra), address(&rb));
    assert_eq!(ra["ips"][0]["gateway"], "10.251.7.1");
    // The MAC reached the interface.
    let link = sh(&["ip", "netns", "exec", &a, "ip", "link", "show", "eth0"]);
    assert!(
        String::from_utf8_lossy(&link.stdout).contains(mac),
        "{link:?}"
    );
    // The two namespaces reach each other through the bridge.
    let ping = sh(&[
        "ip",
        "netns",
        "exec",
        &a,
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        &address(&rb),
    ]);
    assert!(
        ping.status.success(),
        "ping a -> b: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // A runtime retry of ADD: Debian's bridge plugin (1.1.1) is not idempotent itself, it
    // fails creating the veth before it delegates to IPAM; that failure must not cost b its
    // address.
    let (ok, again, log) = net.cni("ADD", "ctr-b", &b, "", &net.conf);
    assert!(!ok, "the bridge plugin's repeated ADD now succeeds: {log}");
    assert!(
        again["msg"]
            .as_str()
            .unwrap_or("")
            .contains("already exists"),
        "{log}"
    );
    // The delegated IPAM ADD, run exactly as the bridge runs it (same environment, whole
    // config), is idempotent: it succeeds with the same address.
    let (ok, again, log) = net.cni_with(BIN, "ADD", "ctr-b", &b, "", &net.conf);
    assert!(ok, "repeated IPAM ADD: {log}");
    assert_eq!(address(&again), address(&rb), "{log}");
    assert_eq!(again["ips"][0]["gateway"], rb["ips"][0]["gateway"], "{log}");
    // CHECK with the previous result.
    let mut check = conf.clone();
    check["prevResult"] = ra.clone();
    let (ok, _, log) = net.cni("CHECK", "ctr-a", &a, "", &check);
    assert!(ok, "CHECK: {log}");
    // DEL twice succeeds.
    for i in 0..2 {
        let (ok, _, log) = net.cni("DEL", "ctr-a", &a, "", &net.conf);
        assert!(ok, "DEL a #{i}: {log}");
    }
    // DEL after the namespace is gone succeeds, and frees the address.
    assert!(sh(&["ip", "netns", "del", &b]).status.success());
    let (ok, _, log) = net.cni("DEL", "ctr-b", &b, "", &net.conf);
    assert!(ok, "DEL without netns: {log}");
    let store =
        rorqual_net::store::file::FileStore::open(data.path().join(format!("{tag}net"))).unwrap();
    let state = futures::executor::block_on(rorqual_net::store::PoolStore::load(
        &store,
        &format!("{tag}net"),
    ))
    .unwrap()
    .unwrap()
    .state;
    assert!(state.entries().is_empty(), "everything released");
}
