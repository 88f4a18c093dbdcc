//! Sequential ADD+DEL through the `rorqual-ipam` executable against Debian's host-local, same
//! range, same run, with 1,000 existing allocations in each.
//!
//! `cargo bench -p rorqual-net --bench cni_vs_host_local` (set `ROUNDS` to change the count of
//! pairs, `PREFILL` the existing allocations, up to 60,000).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use rorqual_net::store::file::FileStore;
use rorqual_net::{AllocRequest, IpRange, Owner, PoolSpec, PoolState};
use serde_json::json;

const HOST_LOCAL: &str = "/usr/lib/cni/host-local";

fn invoke(bin: &str, cmd: &str, ctr: &str, conf: &str) {
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", ctr)
        .env("CNI_NETNS", "/var/run/netns/bench")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{bin} {cmd}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn conf(plugin: &str, dir: &Path, fsync: Option<bool>) -> String {
    let mut c = json!({"cniVersion": "1.0.0", "name": "bench", "type": "bridge",
           "ipam": {"type": plugin, "ranges": [[{"subnet": "10.200.0.0/16"}]],
                    "routes": [{"dst": "0.0.0.0/0"}], "dataDir": dir}});
    if let Some(fsync) = fsync {
        c["ipam"]["store"] = json!({"type": "file", "fsync": fsync, "dir": dir.join("bench")});
    }
    c.to_string()
}

fn nth(i: u32) -> String {
    format!("10.200.{}.{}", (i + 2) / 256, (i + 2) % 256)
}

fn main() {
    if !Path::new(HOST_LOCAL).exists() {
        println!("skipped: {HOST_LOCAL} is missing (apt-get install containernetworking-plugins)");
        return;
    }
    let rounds: u32 = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let prefill: u32 = std::env::var("PREFILL")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1000)
        .clamp(1, 60_000);
    let ours = env!("CARGO_BIN_EXE_rorqual-ipam");

    // host-local's on-disk format: one file per address, "containerID\r\nifname".
    let hl = tempfile::tempdir().expect("tempdir");
    let hl_net = hl.path().join("bench");
    std::fs::create_dir_all(&hl_net).expect("mkdir");
    for i in 0..prefill {
        std::fs::write(hl_net.join(nth(i)), format!("pre{i}\r\neth0")).expect("prefill");
    }
    std::fs::write(hl_net.join("last_reserved_ip.0"), nth(prefill - 1)).expect("prefill");

    // rorqual's: the pool state file, filled through the allocator.
    let rq = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(rq.path().join("bench")).expect("store");
    let spec = PoolSpec::new("bench").with_range(
        IpRange::new("10.200.0.0/16".parse().expect("cidr"))
            .with_gateway("10.200.0.1".parse().expect("ip")),
    );
    let mut state = PoolState::new(spec.clone()).expect("spec");
    for i in 0..prefill {
        state
            .allocate(&AllocRequest::new(Owner::new(format!("pre{i}"), "eth0")), 0)
            .expect("prefill");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt");
    rt.block_on(rorqual_net::store::PoolStore::compare_and_swap(
        &store,
        "bench",
        None,
        Some(&state),
    ))
    .expect("prefill");

    let mut results = Vec::new();
    let runs = [
        ("host-local", HOST_LOCAL, hl.path(), None),
        ("rorqual-ipam (fsync)", ours, rq.path(), Some(true)),
        ("rorqual-ipam (no fsync)", ours, rq.path(), Some(false)),
    ];
    for (name, bin, dir, fsync) in runs {
        let plugin = Path::new(bin)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(bin);
        let c = conf(plugin, dir, fsync);
        invoke(bin, "ADD", "warmup", &c);
        invoke(bin, "DEL", "warmup", &c);
        let start = Instant::now();
        for i in 0..rounds {
            let ctr = format!("bench{i}");
            invoke(bin, "ADD", &ctr, &c);
            invoke(bin, "DEL", &ctr, &c);
        }
        let secs = start.elapsed().as_secs_f64();
        let rate = f64::from(rounds) / secs;
        println!(
            "{name:>24}: {rounds} sequential ADD+DEL at {prefill} existing allocations in {secs:.2}s = {rate:.1} ADD+DEL/s ({:.2} ms per pair)",
            secs * 1000.0 / f64::from(rounds)
        );
        results.push(rate);
    }
    println!(
        "rorqual-ipam / host-local = {:.2}x with fsync, {:.2}x without (host-local never fsyncs)",
        results[1] / results[0],
        results[2] / results[0]
    );
}
