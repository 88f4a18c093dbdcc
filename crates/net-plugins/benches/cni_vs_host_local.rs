//! ADD+DEL pairs through the `rorqual-ipam` executable and Debian's host-local from a shell loop
//! exactly as a runtime invokes them (`benches/cni_loop.sh`: config on stdin, `CNI_*`
//! variables, a new process per call), same range, same run, with existing allocations in
//! each; beside them the same pairs in process (`Allocator` over `FileStore`, fsync on), and
//! the loop with `/bin/true` (the cost of the shell and process start alone). The pairs run in
//! ten chunks, alternating between the plugins, so that the machine's load weighs on all alike.
//!
//! `cargo bench -p rorqual-net --bench cni_vs_host_local` runs two cases: 1,000 existing
//! allocations in a /20 and 10,000 in a /18 (`ROUNDS` pairs each, default 200; `CASES=1000`
//! or `CASES=10000` runs one).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use rorqual_net::store::PoolStore;
use rorqual_net::store::file::FileStore;
use rorqual_net::{AllocRequest, Allocator, IpRange, Owner, PoolSpec, PoolState, Route};
use serde_json::json;

const HOST_LOCAL: &str = "/usr/lib/cni/host-local";

fn conf(plugin: &str, subnet: &str, dir: &Path, fsync: Option<bool>) -> String {
    let mut c = json!({"cniVersion": "1.0.0", "name": "bench", "type": "bridge",
           "ipam": {"type": plugin, "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}], "dataDir": dir}});
    if let Some(fsync) = fsync {
        c["ipam"]["store"] = json!({"type": "file", "fsync": fsync, "dir": dir.join("bench")});
    }
    c.to_string()
}

/// The `i`th address handed out in 10.200.0.0/N (after the gateway .1).
fn nth(i: u32) -> String {
    format!("10.200.{}.{}", (i + 2) / 256, (i + 2) % 256)
}

/// The spec `rorqual-ipam` derives from [`conf`], so the prefilled pool needs no update.
fn spec(subnet: &str) -> PoolSpec {
    PoolSpec::new("bench")
        .with_range(IpRange::new(subnet.parse().expect("cidr")))
        .with_route(Route::new("0.0.0.0/0".parse().expect("cidr"), None))
}

/// A file store in `dir/bench` holding pool `bench` with `prefill` allocations.
fn prefill_rorqual(dir: &Path, subnet: &str, prefill: u32) -> FileStore {
    let store = FileStore::open(dir.join("bench")).expect("store");
    let mut state = PoolState::new(spec(subnet)).expect("spec");
    for i in 0..prefill {
        state
            .allocate(&AllocRequest::new(Owner::new(format!("pre{i}"), "eth0")), 0)
            .expect("prefill");
    }
    futures::executor::block_on(store.compare_and_swap("bench", None, Some(&state)))
        .expect("prefill");
    store
}

/// One plugin's shell loop: its config file and the seconds its timed pairs took so far.
struct Loop {
    bin: String,
    conf_file: std::path::PathBuf,
    secs: f64,
}

impl Loop {
    fn new(bin: &str, conf: &str, name: &str, tmp: &Path) -> Loop {
        let conf_file = tmp.join(format!("{name}.conf"));
        std::fs::write(&conf_file, conf).expect("conf");
        let mut l = Loop {
            bin: bin.to_owned(),
            conf_file,
            secs: 0.0,
        };
        l.run(1, &format!("{name}warm"));
        l.secs = 0.0;
        l
    }

    /// Runs `rounds` pairs with containers `<prefix><i>`, adding their time.
    fn run(&mut self, rounds: u32, prefix: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/cni_loop.sh");
        let start = Instant::now();
        let out = Command::new("bash")
            .args([script, &self.bin])
            .arg(&self.conf_file)
            .args([rounds.to_string(), prefix.to_owned()])
            .output()
            .expect("bash");
        self.secs += start.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{}: {}",
            self.bin,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Chunks the pairs are split into, run alternately for every plugin, so that a change of the
/// machine's load during the run falls on all of them alike.
const CHUNKS: u32 = 10;

fn case(prefill: u32, subnet: &str, rounds: u32) {
    let tmp = tempfile::tempdir().expect("tempdir");
    // host-local's on-disk format: one file per address, "containerID\r\nifname".
    let hl = tmp.path().join("hl");
    let hl_net = hl.join("bench");
    std::fs::create_dir_all(&hl_net).expect("mkdir");
    for i in 0..prefill {
        std::fs::write(hl_net.join(nth(i)), format!("pre{i}\r\neth0")).expect("prefill");
    }
    std::fs::write(hl_net.join("last_reserved_ip.0"), nth(prefill - 1)).expect("prefill");
    let rq = tmp.path().join("rq");
    prefill_rorqual(&rq, subnet, prefill);
    let ours = env!("CARGO_BIN_EXE_rorqual-ipam");

    let runs: [(&str, &str, &Path, Option<bool>); 4] = [
        ("/bin/true (process start)", "/bin/true", &hl, None),
        ("host-local", HOST_LOCAL, &hl, None),
        ("rorqual-ipam (fsync)", ours, &rq, Some(true)),
        ("rorqual-ipam (no fsync)", ours, &rq, Some(false)),
    ];
    let mut loops: Vec<Loop> = runs
        .iter()
        .enumerate()
        .map(|(i, (_, bin, dir, fsync))| {
            let plugin = Path::new(bin)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(bin);
            Loop::new(
                bin,
                &conf(plugin, subnet, dir, *fsync),
                &format!("b{i}"),
                tmp.path(),
            )
        })
        .collect();
    let per_chunk = rounds.div_ceil(CHUNKS);
    for chunk in 0..CHUNKS {
        for (i, l) in loops.iter_mut().enumerate() {
            l.run(per_chunk, &format!("b{i}c{chunk}x"));
        }
    }
    let pairs = per_chunk * CHUNKS;
    let mut rows = Vec::new();
    for ((name, ..), l) in runs.iter().zip(&loops) {
        let ms = l.secs * 1000.0 / f64::from(pairs);
        println!(
            "{name:>28}: {pairs} ADD+DEL pairs from a shell loop at {prefill} existing allocations ({subnet}): {ms:.2} ms per pair"
        );
        rows.push(ms);
    }
    // In process: the same pairs through the allocator over the file store, fsync on.
    let inproc = tmp.path().join("inproc");
    let store = prefill_rorqual(&inproc, subnet, prefill);
    let alloc = Allocator::new(Arc::new(store));
    let start = Instant::now();
    futures::executor::block_on(async {
        for i in 0..rounds {
            let o = Owner::new(format!("inproc{i}"), "eth0");
            alloc
                .allocate("bench", &AllocRequest::new(o.clone()))
                .await
                .expect("allocate");
            alloc.release("bench", &o).await.expect("release");
        }
    });
    let inproc_ms = start.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
    println!(
        "{:>28}: {rounds} allocate+release pairs at {prefill} existing allocations: {inproc_ms:.3} ms per pair",
        "in process (fsync)"
    );
    println!(
        "at {prefill}: rorqual-ipam / host-local = {:.2}x with fsync, {:.2}x without (host-local never fsyncs)",
        rows[1] / rows[2],
        rows[1] / rows[3]
    );
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
    let cases = std::env::var("CASES").unwrap_or_else(|_| "1000,10000".into());
    for c in cases.split(',') {
        match c.trim() {
            "1000" => case(1_000, "10.200.0.0/20", rounds),
            "10000" => case(10_000, "10.200.0.0/18", rounds),
            other => println!("unknown case {other} (1000 or 10000)"),
        }
    }
}
