//! The `rorqual-ipam` executable, invoked the way a runtime invokes it (no root needed: IPAM
//! does not touch namespaces).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rorqual_net::store::PoolStore;
use rorqual_net::store::file::FileStore;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_rorqual-ipam");

fn conf(dir: &Path, version: &str, ipam_extra: Value) -> Value {
    let mut ipam = json!({
        "type": "rorqual-ipam",
        "ranges": [[{"subnet": "10.77.0.0/24", "rangeStart": "10.77.0.10", "rangeEnd": "10.77.0.59"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": dir,
    });
    if let (Some(m), Some(extra)) = (ipam.as_object_mut(), ipam_extra.as_object()) {
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
    }
    json!({"cniVersion": version, "name": "proto", "type": "bridge", "bridge": "x0", "ipam": ipam})
}

fn spawn(cmd: &str, container: &str, args: &str, stdin: &Value) -> Child {
    spawn_raw(cmd, container, args, &stdin.to_string())
}

fn spawn_raw(cmd: &str, container: &str, args: &str, body: &str) -> Child {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", "/var/run/netns/none")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !args.is_empty() {
        c.env("CNI_ARGS", args);
    }
    let mut child = c.spawn().expect("spawn rorqual-ipam");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write stdin");
    child
}

fn run(cmd: &str, container: &str, args: &str, stdin: &Value) -> (bool, Value) {
    let out: Output = spawn(cmd, container, args, stdin)
        .wait_with_output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
    };
    (out.status.success(), v)
}

/// Pool `proto` as the file store under `dir` holds it, as `{"version": N, "state": {..}}`.
fn stored(dir: &Path) -> Value {
    let store = FileStore::open(dir.join("proto")).unwrap();
    let v = futures::executor::block_on(store.load("proto"))
        .unwrap()
        .unwrap();
    json!({"version": v.version, "state": v.state})
}

fn addr(v: &Value) -> String {
    v["ips"][0]["address"].as_str().unwrap().to_owned()
}

#[test]
fn add_is_idempotent_and_results_are_exact() {
    for version in ["1.0.0", "1.1.0"] {
        // A store per version: pools of one store may not overlap.
        let dir = tempfile::tempdir().unwrap();
        let c = conf(
            dir.path(),
            version,
            json!({"pool": format!("p{}", version.replace('.', ""))}),
        );
        let (ok, first) = run("ADD", "ctr-a", "", &c);
        assert!(ok, "{first}");
        assert_eq!(
            first,
            json!({"cniVersion": version, "ips": [{"address": "10.77.0.10/24", "gateway": "10.77.0.1"}],
                   "routes": [{"dst": "0.0.0.0/0"}], "dns": {}})
        );
        let (ok, again) = run("ADD", "ctr-a", "", &c);
        assert!(ok);
        assert_eq!(again, first, "same container and ifname: same result");
        let mut check = c.clone();
        check["prevResult"] = first.clone();
        assert!(run("CHECK", "ctr-a", "", &check).0);
        let (ok, err) = run("CHECK", "ctr-other", "", &check);
        assert!(!ok);
        assert_eq!(err["code"], 3);
        assert_eq!(run("DEL", "ctr-a", "", &c), (true, Value::Null));
        assert_eq!(
            run("DEL", "ctr-a", "", &c),
            (true, Value::Null),
            "DEL twice"
        );
        let (ok, err) = run("CHECK", "ctr-a", "", &check);
        assert!(!ok && err["code"] == 3, "{err}");
    }
}

#[test]
fn specific_ips_from_every_source_and_mac() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), "1.0.0", json!({}));
    let (ok, r) = run(
        "ADD",
        "c1",
        "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.77.0.33",
        &c,
    );
    assert!(ok, "{r}");
    assert_eq!(addr(&r), "10.77.0.33/24");
    let mut c2 = c.clone();
    c2["args"] = json!({"cni": {"ips": ["10.77.0.34/24"], "mac": "02:00:00:00:00:34"}});
    assert_eq!(addr(&run("ADD", "c2", "", &c2).1), "10.77.0.34/24");
    let mut c3 = c.clone();
    c3["runtimeConfig"] = json!({"ips": ["10.77.0.35"], "mac": "02:00:00:00:00:35"});
    assert_eq!(addr(&run("ADD", "c3", "", &c3).1), "10.77.0.35/24");
    // The MAC the runtime set is recorded with the allocation.
    let state: Value = stored(dir.path());
    assert_eq!(
        state["state"]["entries"]["10.77.0.35"]["m"],
        "02:00:00:00:00:35"
    );
    // Taken, outside every range, malformed.
    let (ok, e) = run("ADD", "c4", "IP=10.77.0.33", &c);
    assert!(!ok);
    assert_eq!(e["code"], 111);
    assert!(
        e["msg"].as_str().unwrap().contains("10.77.0.33")
            && e["msg"].as_str().unwrap().contains("proto"),
        "{e}"
    );
    let (ok, e) = run("ADD", "c4", "IP=192.168.1.1", &c);
    assert!(!ok && e["code"] == 111, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("192.168.1.1"));
    let (ok, e) = run("ADD", "c4", "IP=nonsense", &c);
    assert!(!ok && e["code"] == 4, "{e}");
}

#[test]
fn bad_input_gives_the_right_codes_and_names_the_pool_and_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), "1.0.0", json!({}));
    let named = conf(dir.path(), "1.0.0", json!({"pool": "games"}));
    let ipam = |extra: Value| conf(dir.path(), "1.0.0", extra);
    // (command, container, CNI_ARGS, stdin, code, what the message must name)
    type Case<'a> = (&'a str, &'a str, &'a str, Value, u64, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "ADD",
            "c1",
            "",
            json!({"cniVersion": "0.2.0", "name": "n", "ipam": c["ipam"]}),
            1,
            vec!["pool `n`", "0.2.0"],
        ),
        (
            "ADD",
            "c1",
            "",
            ipam(json!({"bogus": 1})),
            2,
            vec!["pool `proto`", "ipam.bogus = 1"],
        ),
        (
            "ADD",
            "c1",
            "",
            ipam(json!({"pool": "games", "bogus": [2]})),
            2,
            vec!["pool `games`", "ipam.bogus = [2]"],
        ),
        (
            "ADD",
            "c1",
            "Foo=bar",
            named.clone(),
            2,
            vec!["pool `games`", "Foo=bar"],
        ),
        (
            "ADD",
            "c1",
            "IgnoreUnknown=1;novalue",
            named.clone(),
            4,
            vec!["pool `games`", "`novalue`"],
        ),
        (
            "ADD",
            "c1",
            "IP=10.77.0.300",
            named.clone(),
            4,
            vec!["pool `games`", "IP=`10.77.0.300`"],
        ),
        (
            "ADD",
            "c1",
            "MAC=zz:zz",
            named.clone(),
            4,
            vec!["pool `games`", "zz:zz"],
        ),
        (
            "ADD",
            "-bad",
            "",
            c.clone(),
            4,
            vec!["pool `proto`", "CNI_CONTAINERID `-bad`"],
        ),
        ("NOPE", "c1", "", c.clone(), 4, vec!["pool `proto`", "NOPE"]),
        (
            "ADD",
            "c1",
            "",
            json!({"cniVersion": "1.0.0", "name": "n"}),
            6,
            vec!["pool `n`", "missing field `ipam`", "\"name\":\"n\""],
        ),
        (
            "ADD",
            "c1",
            "",
            ipam(json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.1.0.1"}]]})),
            7,
            vec!["pool `proto`", "rangeStart 10.1.0.1"],
        ),
        (
            "ADD",
            "c1",
            "",
            ipam(json!({"ranges": "x"})),
            7,
            vec!["pool `proto`", "ipam.ranges = \"x\""],
        ),
        (
            "ADD",
            "c1",
            "",
            ipam(json!({"pool": "games", "vlan": 70000})),
            7,
            vec!["pool `games`", "ipam.vlan = 70000"],
        ),
        (
            "ADD",
            "c1",
            "",
            ipam(json!({"pool": "games", "macs": {"10.77.0.20": "nope"}})),
            7,
            vec!["pool `games`", "ipam.macs", "nope"],
        ),
        (
            "ADD",
            "c1",
            "",
            ipam(json!({"pool": "games", "exclude": ["10.77.0.x"]})),
            7,
            vec!["pool `games`", "10.77.0.x"],
        ),
        {
            let mut rc = named.clone();
            rc["runtimeConfig"] = json!({"ips": ["banana"]});
            (
                "ADD",
                "c1",
                "",
                rc,
                7,
                vec!["pool `games`", "runtimeConfig.ips", "banana"],
            )
        },
        ("GC", "c1", "", c.clone(), 1, vec!["pool `proto`", "1.1.0"]),
    ];
    for (cmd, ctr, args, stdin, code, needles) in cases {
        let (ok, e) = run(cmd, ctr, args, &stdin);
        assert!(!ok, "{cmd} {args} {stdin} should fail");
        assert_eq!(e["code"], code, "{e}");
        let msg = e["msg"].as_str().unwrap();
        for needle in needles {
            assert!(msg.contains(needle), "{e} should mention {needle}");
        }
        assert!(e["cniVersion"].is_string());
    }
    // Unknown ipam keys pass with IgnoreUnknown.
    assert!(run("ADD", "c1", "IgnoreUnknown=1", &ipam(json!({"bogus": 1}))).0);
    // Non-JSON stdin: a decode error quoting the input.
    let out = spawn_raw("ADD", "c1", "", "{\"cniVersion\": 1.0.0 oops")
        .wait_with_output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], 6);
    assert!(v["msg"].as_str().unwrap().contains("1.0.0 oops"), "{v}");
}

#[test]
fn exhausted_and_corrupt_and_unwritable_store() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(
        dir.path(),
        "1.0.0",
        json!({"ranges": [[{"subnet": "10.78.0.0/30"}]]}),
    );
    // /30 with the default gateway .1: one address (.2).
    assert!(run("ADD", "c1", "", &c).0);
    let (ok, e) = run("ADD", "c2", "", &c);
    assert!(!ok);
    assert_eq!(e["code"], 110);
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("pool `proto` has no free address"),
        "{e}"
    );
    // A corrupt index file is an error naming the pool and the file, and is left as it is.
    let path = dir.path().join("proto/proto.pool/meta.json");
    std::fs::write(&path, b"{\"spec\":").unwrap();
    let (ok, e) = run("ADD", "c3", "", &c);
    assert!(!ok);
    assert_eq!(e["code"], 5);
    let msg = e["msg"].as_str().unwrap();
    assert!(
        msg.contains("meta.json") && msg.contains("pool `proto`"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"{\"spec\":",
        "left as it was"
    );
    let (ok, e) = run("DEL", "c1", "", &c);
    assert!(!ok && e["code"] == 5, "{e}");
    // A data dir that cannot be created.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    let (ok, e) = run("ADD", "c1", "", &conf(&file, "1.0.0", json!({})));
    assert!(!ok && e["code"] == 5, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("plain-file"), "{e}");
}

#[test]
fn gc_accepts_both_attachment_keys_and_status_reports_full_pools() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(
        dir.path(),
        "1.1.0",
        json!({"ranges": [[{"subnet": "10.79.0.0/29"}]]}),
    );
    // /29 with the default gateway .1: five addresses.
    for i in 0..4 {
        assert!(run("ADD", &format!("c{i}"), "", &c).0);
    }
    assert!(run("STATUS", "", "", &c).0);
    assert!(run("ADD", "c4", "", &c).0);
    let (ok, e) = run("STATUS", "", "", &c);
    assert!(!ok && e["code"] == 50, "{e}");
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c0", "ifname": "eth0"}]);
    gc["cni.dev/attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    assert!(run("GC", "", "", &gc).0);
    // c0 and c1 keep theirs; three were freed.
    let state: Value = stored(dir.path());
    assert_eq!(state["state"]["entries"].as_object().unwrap().len(), 2);
    assert!(run("STATUS", "", "", &c).0);
}

#[test]
fn claims_keep_a_fixed_ip_for_a_stateful_identity() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), "1.0.0", json!({"claimKeepSeconds": 3600}));
    let pod = "IgnoreUnknown=1;K8S_POD_NAMESPACE=games;K8S_POD_NAME=db-0";
    let first = addr(&run("ADD", "old", pod, &c).1);
    assert!(run("DEL", "old", pod, &c).0);
    for i in 0..3 {
        assert_ne!(addr(&run("ADD", &format!("x{i}"), "", &c).1), first);
    }
    assert_eq!(addr(&run("ADD", "new", pod, &c).1), first);
}

#[test]
fn sixty_four_concurrent_adds_for_fifty_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), "1.0.0", json!({})); // .10 - .59: 50 addresses
    let children: Vec<Child> = (0..64)
        .map(|i| spawn("ADD", &format!("ctr{i}"), "", &c))
        .collect();
    let mut got = HashSet::new();
    let mut failures = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        if out.status.success() {
            assert!(got.insert(addr(&v)), "duplicate {}", addr(&v));
        } else {
            failures.push(v);
        }
    }
    assert_eq!(got.len(), 50);
    assert_eq!(failures.len(), 14);
    assert!(failures.iter().all(|f| f["code"] == 110), "{failures:?}");
}

#[test]
fn kill_9_during_a_storm_leaves_no_duplicate_and_gc_reclaims_leaks() {
    let dir = tempfile::tempdir().unwrap();
    // 509 addresses: room for every round below (at most 24 rounds of 12 ADDs, all of which
    // may commit, plus 3).
    let c = conf(
        dir.path(),
        "1.1.0",
        json!({"ranges": [[{"subnet": "10.77.0.0/23"}]]}),
    );
    let read = || -> Value { stored(dir.path()) };
    let holders = |state: &Value| -> Vec<String> {
        state["state"]["entries"]
            .as_object()
            .map(|m| {
                m.values()
                    .map(|e| e["o"]["container"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    // How long one ADD takes here (debug builds and loaded machines differ a lot), so that the
    // kill delays below fall before, during and after the commit.
    let started = std::time::Instant::now();
    assert!(run("ADD", "probe", "", &c).0);
    assert!(run("DEL", "probe", "", &c).0);
    let one_add = started.elapsed() / 2;
    // Rounds of 12 ADDs with every other one SIGKILLed after a delay from a quarter of an ADD
    // to twice one (at least the 8 rounds that cover that spread), until a killed ADD has
    // committed (a leak) in at least two rounds (at most 24 rounds).
    let mut survivors: Vec<String> = Vec::new();
    let mut leaky_rounds = 0;
    let mut rounds = 0u64;
    while rounds < 24 && (rounds < 8 || leaky_rounds < 2) {
        let before = holders(&read()).len();
        let mut children: Vec<(String, Child)> = (0..12)
            .map(|i| {
                let id = format!("r{rounds}c{i}");
                let child = spawn("ADD", &id, "", &c);
                (id, child)
            })
            .collect();
        // 12 concurrent ADDs take longer than one: spread over 1/4 .. 2 ADD-times.
        let eighths = 2 + u32::try_from(rounds % 8).unwrap() * 2;
        std::thread::sleep(one_add * eighths / 8);
        for (i, (_, child)) in children.iter_mut().enumerate() {
            if i % 2 == 0 {
                let _ = child.kill(); // SIGKILL
            }
        }
        let mut ok = 0;
        for (id, child) in children {
            let out = child.wait_with_output().unwrap();
            if out.status.success() {
                survivors.push(id);
                ok += 1;
            }
        }
        let after = holders(&read()).len();
        if after > before + ok {
            leaky_rounds += 1;
        }
        rounds += 1;
    }
    // The store is intact, addresses are unique, and whatever a killed process committed is
    // a leak that GC reclaims while the survivors keep theirs.
    let owners = holders(&read());
    let unique: HashSet<&String> = owners.iter().collect();
    assert_eq!(unique.len(), owners.len(), "an owner holds two addresses");
    for s in &survivors {
        assert!(owners.contains(s), "{s} succeeded but holds nothing");
    }
    // Kill timing cannot be forced; ADDs whose results the runtime lost (it crashed before
    // recording them) are leaks of the same kind, so GC always has some to reclaim.
    for i in 0..3 {
        let (ok, out) = run("ADD", &format!("lost{i}"), "", &c);
        assert!(ok, "ADD after the storm failed: {out}");
    }
    let owners = holders(&read());
    let leaked: Vec<&String> = owners.iter().filter(|o| !survivors.contains(o)).collect();
    eprintln!(
        "{} leaks, {} of them from killed ADDs ({leaky_rounds} leaky rounds of {rounds}; one ADD took {one_add:?})",
        leaked.len(),
        leaked.len() - 3
    );
    assert!(leaked.len() >= 3);
    assert!(owners.len() > survivors.len());
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = Value::Array(
        survivors
            .iter()
            .map(|s| json!({"containerID": s, "ifname": "eth0"}))
            .collect(),
    );
    assert!(run("GC", "", "", &gc).0);
    let left: HashSet<String> = holders(&read()).into_iter().collect();
    for l in &leaked {
        assert!(!left.contains(*l), "GC left the leak of {l}");
    }
    assert_eq!(left, survivors.iter().cloned().collect::<HashSet<_>>());
    // No temp files left behind by the killed writers, and no other pool.
    let store = FileStore::open(dir.path().join("proto")).unwrap();
    let pools = futures::executor::block_on(store.list()).unwrap();
    assert_eq!(pools, ["proto"]);
    let temps: Vec<String> = std::fs::read_dir(dir.path().join("proto"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
    // The journal agrees with the index: replaying every event from revision 0 gives exactly
    // the owners the store holds (no commit lost or delivered twice by a killed writer).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (snapshot, events) = rt.block_on(async {
        use futures::StreamExt;
        let snapshot = store.snapshot().await.unwrap();
        let mut watch = store.watch_from(0).await.unwrap();
        let mut events = Vec::new();
        while let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_millis(500), watch.next()).await
        {
            events.push(item.unwrap());
        }
        (snapshot, events)
    });
    let mut active = std::collections::BTreeMap::new();
    let mut last = 0;
    for e in events.iter().filter(|e| e.revision <= snapshot.revision) {
        assert!(e.revision >= last, "revisions out of order");
        last = e.revision;
        if e.event.from == rorqual_net::IpState::Active {
            assert!(active.remove(&e.event.ip).is_some(), "{e:?} was not active");
        }
        if e.event.to == rorqual_net::IpState::Active {
            let o = e.event.owner.clone().unwrap();
            assert!(active.insert(e.event.ip, o).is_none(), "{e:?} twice");
        }
    }
    let held: std::collections::BTreeMap<_, _> = snapshot.pools[0]
        .owners()
        .map(|(o, ip)| (ip, o.clone()))
        .collect();
    assert_eq!(active, held);
}

#[test]
fn gc_spares_allocations_younger_than_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), "1.1.0", json!({"gcGraceSeconds": 2}));
    assert!(run("ADD", "old", "", &c).0);
    std::thread::sleep(Duration::from_millis(2_500));
    assert!(run("ADD", "young", "", &c).0);
    // Neither owner is live; only the one older than the grace period is reclaimed (a
    // runtime's GC can race an ADD that has not been recorded as an attachment yet).
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    assert!(run("GC", "", "", &gc).0);
    let state: Value = stored(dir.path());
    let left: Vec<&str> = state["state"]["entries"]
        .as_object()
        .unwrap()
        .values()
        .map(|e| e["o"]["container"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["young"]);
}

#[test]
fn dual_stack_config_with_gateway_exclude_and_macs_and_the_mac_in_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let extra = json!({
        "ranges": [[{"subnet": "10.80.0.0/29", "gateway": "10.80.0.6"}],
                   [{"subnet": "fd00:80::/125"}]],
        "exclude": ["10.80.0.1", "fd00:80::2/127"],
        "macs": {"10.80.0.2": "02:00:0a:50:00:02"},
    });
    // Default: the abbreviated IPAM result, no interfaces.
    let c = conf(dir.path(), "1.0.0", extra.clone());
    let (ok, r) = run("ADD", "c1", "", &c);
    assert!(ok, "{r}");
    assert_eq!(
        r,
        json!({"cniVersion": "1.0.0",
               "ips": [{"address": "10.80.0.2/29", "gateway": "10.80.0.6"},
                       {"address": "fd00:80::4/125", "gateway": "fd00:80::1"}],
               "routes": [{"dst": "0.0.0.0/0"}], "dns": {}})
    );
    // With reportMac: the address's MAC from `macs`, on the interface the runtime named.
    let mut with_mac = extra.clone();
    with_mac["reportMac"] = json!(true);
    let c = conf(dir.path(), "1.0.0", with_mac);
    let (ok, again) = run("ADD", "c1", "", &c);
    assert!(ok, "{again}");
    assert_eq!(
        again,
        json!({"cniVersion": "1.0.0",
               "interfaces": [{"name": "eth0", "mac": "02:00:0a:50:00:02",
                               "sandbox": "/var/run/netns/none"}],
               "ips": [{"address": "10.80.0.2/29", "gateway": "10.80.0.6", "interface": 0},
                       {"address": "fd00:80::4/125", "gateway": "fd00:80::1", "interface": 0}],
               "routes": [{"dst": "0.0.0.0/0"}], "dns": {}})
    );
    // Next: .3 (.1 excluded, .6 the gateway); a generated MAC, stable for the address.
    let (ok, r2) = run("ADD", "c2", "", &c);
    assert!(ok, "{r2}");
    assert_eq!(r2["ips"][0]["address"], "10.80.0.3/29");
    assert_eq!(r2["ips"][1]["address"], "fd00:80::5/125");
    let generated = r2["interfaces"][0]["mac"].as_str().unwrap().to_owned();
    assert_eq!(generated.len(), 17, "{r2}");
    assert_ne!(generated, "02:00:0a:50:00:02");
    assert_eq!(run("ADD", "c2", "", &c).1, r2, "the same MAC again");
    // A MAC the runtime asked for is the one reported.
    let (ok, r3) = run("ADD", "c3", "MAC=02:aa:bb:cc:dd:ee", &c);
    assert!(ok, "{r3}");
    assert_eq!(r3["interfaces"][0]["mac"], "02:aa:bb:cc:dd:ee");
    // The excluded addresses and the gateway were never handed out.
    let (ok, r4) = run("ADD", "c4", "", &c);
    assert!(ok, "{r4}");
    assert_eq!(r4["ips"][0]["address"], "10.80.0.5/29");
    let (ok, e) = run("ADD", "c5", "", &c);
    assert!(!ok && e["code"] == 110, "{e}");
}

#[test]
fn version_echoes_the_requested_version_and_lists_the_supported_ones() {
    let supported = json!(["1.0.0", "1.1.0"]);
    for (stdin, want) in [
        (r#"{"cniVersion":"1.0.0"}"#, "1.0.0"),
        (r#"{"cniVersion":"1.1.0"}"#, "1.1.0"),
        // Not one it speaks, none given, or no input: the newest it speaks.
        (r#"{"cniVersion":"0.4.0"}"#, "1.1.0"),
        ("{}", "1.1.0"),
        ("", "1.1.0"),
    ] {
        let out = spawn_raw("VERSION", "", "", stdin)
            .wait_with_output()
            .unwrap();
        assert!(out.status.success(), "VERSION with {stdin}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v,
            json!({"cniVersion": want, "supportedVersions": supported}),
            "VERSION with {stdin}"
        );
    }
}

#[test]
fn only_the_etcd_store_needs_an_async_runtime() {
    use rorqual_net::cni::needs_async_runtime;
    let etcd = json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "rorqual-ipam",
        "store": {"type": "etcd", "endpoints": ["http://127.0.0.1:2379"]}}});
    assert!(needs_async_runtime(etcd.to_string().as_bytes()));
    let file = json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "rorqual-ipam",
        "store": {"type": "file", "fsync": false}}});
    assert!(!needs_async_runtime(file.to_string().as_bytes()));
    let default = json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "rorqual-ipam"}});
    assert!(!needs_async_runtime(default.to_string().as_bytes()));
    assert!(!needs_async_runtime(b"{not json"));
    assert!(!needs_async_runtime(b"{\"ipam\": \"a string\"}"));
}
