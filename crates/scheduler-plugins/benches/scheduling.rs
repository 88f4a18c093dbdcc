//! Scheduling throughput and extender latency, each beside a naive baseline run in the same
//! process: the baseline rebuilds the snapshot from scratch for every pod and filters and
//! scores every node (no sampling), using the same plugins.
//!
//! `cargo bench -p rorqual-scheduler --bench scheduling` runs the full shapes (5,000 nodes,
//! 10,000 pods); under `cargo test` (no `--bench` argument) a small smoke run checks that
//! every scenario works. A plain harness rather than criterion: the figures wanted are pods/s
//! of one whole run and a p99 of request latencies, which criterion does not report.
//!
//! The extender scenario needs feature `extender` (`--features extender` or `--all-features`);
//! without it, asking for that scenario says so instead of passing silently.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use rorqual_core::model::Resources;
use rorqual_scheduler::snapshot::{AffinityTerm, HOSTNAME_LABEL};
use rorqual_scheduler::{NodeInfo, PodInfo, Scheduler, Snapshot};

struct Shape {
    nodes: usize,
    pods: usize,
    baseline_pods: usize,
    runs: usize,
    /// Extender requests per measurement (read only with feature `extender`).
    #[cfg_attr(not(feature = "extender"), allow(dead_code))]
    requests: usize,
}

fn cluster(n: usize) -> Vec<NodeInfo> {
    // scheduler_perf's default node: 4 cpu, 32 GiB, 110 pods.
    (0..n)
        .map(|i| {
            NodeInfo::new(&format!("node-{i}"), Resources::new(4000, 32 << 30))
                .label("topology.kubernetes.io/zone", &format!("zone-{}", i % 3))
        })
        .collect()
}

/// scheduler_perf's default pod: 100m cpu, 500 MiB. With `anti`, pods come in groups of 10
/// replicas with required anti-affinity to their own group per host.
fn pods(n: usize, anti: bool, tag: &str) -> Vec<PodInfo> {
    (0..n)
        .map(|i| {
            let mut p = PodInfo::new(
                &format!("{tag}-{i}"),
                "bench",
                &format!("{tag}-{i}"),
                Resources::new(100, 500 << 20),
            );
            if anti {
                let group = format!("g{}", i / 10);
                p = p.label("app", &group);
                p.anti_affinity
                    .required
                    .push(AffinityTerm::new("app", &group, HOSTNAME_LABEL));
            }
            p
        })
        .collect()
}

/// CPU seconds this process used so far (all threads; Linux USER_HZ = 100), to show what a
/// run costs independent of other load on the machine.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The Scheduler: queue, sampled parallel filter/score, incremental snapshot.
fn run_scheduler(rt: &tokio::runtime::Runtime, shape: &Shape, anti: bool) -> (f64, f64) {
    let s = Scheduler::with_default_plugins();
    s.add_nodes(cluster(shape.nodes));
    let pods = pods(shape.pods, anti, "p");
    let start = Instant::now();
    let cpu = cpu_seconds();
    for p in pods {
        s.enqueue(p).unwrap();
    }
    let summary = rt.block_on(s.run_until_idle());
    let elapsed = start.elapsed();
    let cpu = cpu_seconds() - cpu;
    assert_eq!(summary.bound, shape.pods, "{summary:?}");
    (
        shape.pods as f64 / elapsed.as_secs_f64(),
        shape.pods as f64 / cpu.max(0.01),
    )
}

/// Naive: for every pod a fresh snapshot built from the node list, every node filtered and
/// scored, the best taken.
fn run_naive(shape: &Shape, anti: bool) -> f64 {
    let s = Scheduler::with_default_plugins();
    let mut nodes = cluster(shape.nodes);
    let pods = pods(shape.baseline_pods, anti, "b");
    let start = Instant::now();
    for p in pods {
        let snapshot = Snapshot::from_nodes(nodes.iter().cloned().map(|mut n| {
            // `requested` counts the node's pods again when they are re-added.
            n.requested = Resources::default();
            n
        }));
        let (_, eval) = s.evaluate(&p, &snapshot, None, true).unwrap();
        let best = eval
            .scores
            .iter()
            .enumerate()
            .max_by_key(|(_, s)| **s)
            .map(|(i, _)| eval.feasible[i])
            .unwrap();
        let node = &mut nodes[best as usize];
        node.requested = node.requested.saturating_add(p.requests);
        node.pods.push(Arc::new(p));
    }
    shape.baseline_pods as f64 / start.elapsed().as_secs_f64()
}

fn throughput(rt: &tokio::runtime::Runtime, shape: &Shape, anti: bool, label: &str) {
    let runs: Vec<(f64, f64)> = (0..shape.runs)
        .map(|_| run_scheduler(rt, shape, anti))
        .collect();
    let naive: Vec<f64> = (0..shape.runs.min(3))
        .map(|_| run_naive(shape, anti))
        .collect();
    let fast: Vec<f64> = runs.iter().map(|r| r.0).collect();
    let per_cpu = median(runs.iter().map(|r| r.1).collect());
    let (f, n) = (median(fast.clone()), median(naive));
    println!(
        "{label}: {} nodes, {} pods: Scheduler median {f:.0} pods/s wall (runs: {}; median {per_cpu:.0} pods per CPU-second), naive baseline ({} pods) median {n:.0} pods/s, ratio {:.1}x",
        shape.nodes,
        shape.pods,
        fast.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        shape.baseline_pods,
        f / n
    );
}

/// Where the underlay scenario's pools live.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pools {
    /// No underlay need at all (the same pods, the same cluster): the baseline.
    None,
    /// `MemoryIpCapacity`.
    Memory,
    /// rorqual-net's `AllocatorCapacity` over an `Allocator` on the memory store: every
    /// reservation is committed to the store at PreBind.
    Allocator,
}

/// 50 pools, each a /20 whose hosts are 1/50 of the nodes; every pod needs an address from
/// any pool.
fn run_underlay(rt: &tokio::runtime::Runtime, shape: &Shape, pools: Pools) -> f64 {
    use rorqual_net::{
        Allocator, AllocatorCapacity, IpRange, PoolSpec, store::memory::MemoryStore,
    };
    use rorqual_scheduler::plugins::{DefaultPlugins, IpCapacity, MemoryIpCapacity};
    use rorqual_scheduler::snapshot::UnderlayRequest;
    const POOLS: usize = 50;
    let per_pool = shape.nodes.div_ceil(POOLS);
    let hosts = |p: usize| -> Vec<String> {
        (p * per_pool..((p + 1) * per_pool).min(shape.nodes))
            .map(|i| format!("node-{i}"))
            .collect()
    };
    let subnet = |p: usize| format!("10.{}.{}.0/20", p / 16, (p % 16) * 16);
    let capacity: Option<Arc<dyn IpCapacity>> = match pools {
        Pools::None => None,
        Pools::Memory => {
            let cap = MemoryIpCapacity::new();
            for p in 0..POOLS {
                let net: ipnet::Ipv4Net = subnet(p).parse().unwrap();
                cap.add_pool(&format!("pool-{p}"), hosts(p), net.hosts().map(Into::into));
            }
            Some(Arc::new(cap))
        }
        Pools::Allocator => rt.block_on(async {
            let alloc = Allocator::new(Arc::new(MemoryStore::new()));
            for p in 0..POOLS {
                let spec = PoolSpec::new(format!("pool-{p}"))
                    .with_range(IpRange::new(subnet(p).parse().unwrap()))
                    .with_nodes(hosts(p));
                alloc.create_pool(spec).await.unwrap();
            }
            let cap: Arc<dyn IpCapacity> = Arc::new(AllocatorCapacity::start(alloc).await.unwrap());
            Some(cap)
        }),
    };
    let mut plugins = DefaultPlugins::new();
    if let Some(cap) = &capacity {
        plugins = plugins.underlay(cap.clone());
    }
    let s = Scheduler::new(plugins.build().unwrap());
    s.add_nodes(cluster(shape.nodes));
    let mut pods = pods(shape.pods, false, "u");
    if pools != Pools::None {
        for p in &mut pods {
            p.underlay = Some(UnderlayRequest {
                pool: None,
                bound_claim: None,
                claim: None,
            });
        }
    }
    let start = Instant::now();
    for p in pods {
        s.enqueue(p).unwrap();
    }
    let summary = rt.block_on(s.run_until_idle());
    let elapsed = start.elapsed();
    assert_eq!(summary.bound, shape.pods, "{summary:?}");
    if let Some(cap) = capacity {
        let taken: usize = cap.snapshot().pools.iter().map(|p| p.taken).sum();
        assert_eq!(taken, shape.pods, "one address per pod");
    }
    shape.pods as f64 / elapsed.as_secs_f64()
}

fn underlay(rt: &tokio::runtime::Runtime, shape: &Shape) {
    let runs = |pools: Pools| -> (f64, Vec<f64>) {
        let v: Vec<f64> = (0..shape.runs)
            .map(|_| run_underlay(rt, shape, pools))
            .collect();
        (median(v.clone()), v)
    };
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (alloc, alloc_runs) = runs(Pools::Allocator);
    let (mem, mem_runs) = runs(Pools::Memory);
    let (none, none_runs) = runs(Pools::None);
    println!(
        "underlay IPs: {} nodes, 50 pools (/20 each, 1/50 of the nodes each), {} pods each needing an address: AllocatorCapacity over the memory store median {alloc:.0} pods/s (runs: {}); MemoryIpCapacity {mem:.0} pods/s ({}); same pods without underlay {none:.0} pods/s ({}); ratio to no underlay {:.2}",
        shape.nodes,
        shape.pods,
        fmt(&alloc_runs),
        fmt(&mem_runs),
        fmt(&none_runs),
        alloc / none
    );
}

/// Extender latency (feature `extender`).
#[cfg(feature = "extender")]
mod extender_latency {
    use std::time::{Duration, Instant};

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use rorqual_scheduler::extender::ExtenderServer;
    use serde_json::json;
    use tower::ServiceExt;

    use super::{Shape, cluster};

    fn percentile(v: &mut [Duration], p: f64) -> Duration {
        v.sort();
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    }

    fn pod_json() -> serde_json::Value {
        json!({"metadata": {"name": "web-0", "namespace": "bench", "uid": "u-web-0"},
               "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}}]}})
    }

    fn node_json(name: &str) -> serde_json::Value {
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
               "status": {"allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"}}})
    }

    fn latencies(
        rt: &tokio::runtime::Runtime,
        server: &ExtenderServer,
        body: &str,
        requests: usize,
    ) -> Vec<Duration> {
        let router = server.router();
        rt.block_on(async {
            let mut out = Vec::with_capacity(requests);
            for _ in 0..requests {
                let start = Instant::now();
                let response = router
                    .clone()
                    .oneshot(
                        Request::post("/filter")
                            .header("content-type", "application/json")
                            .body(Body::from(body.to_owned()))
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                out.push(start.elapsed());
                assert!(bytes.len() > 10);
            }
            out
        })
    }

    /// The same requests over HTTP on loopback, through one kept-alive connection (as
    /// kube-scheduler's extender client does): what a real kube-scheduler waits for.
    fn latencies_http(
        rt: &tokio::runtime::Runtime,
        addr: std::net::SocketAddr,
        body: &str,
        requests: usize,
    ) -> Vec<Duration> {
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/filter");
        rt.block_on(async {
            let mut out = Vec::with_capacity(requests);
            for _ in 0..requests {
                let start = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.to_owned())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let bytes = response.bytes().await.unwrap();
                out.push(start.elapsed());
                assert!(bytes.len() > 10);
            }
            out
        })
    }

    pub(crate) fn extender(rt: &tokio::runtime::Runtime, shape: &Shape) {
        let server = ExtenderServer::with_default_plugins();
        server.scheduler().add_nodes(cluster(shape.nodes));
        let names: Vec<String> = (0..shape.nodes).map(|i| format!("node-{i}")).collect();
        let cached = json!({"Pod": pod_json(), "Nodes": null, "NodeNames": names}).to_string();
        let full = json!({"Pod": pod_json(), "Nodes": {"items": names.iter().map(|n| node_json(n)).collect::<Vec<_>>()}, "NodeNames": null}).to_string();
        // Warm up.
        latencies(rt, &server, &cached, 20.min(shape.requests));
        let mut fast = latencies(rt, &server, &cached, shape.requests);
        let mut naive = latencies(rt, &server, &full, (shape.requests / 5).max(5));
        let (p50, p99) = (percentile(&mut fast, 0.5), percentile(&mut fast, 0.99));
        let (n50, n99) = (percentile(&mut naive, 0.5), percentile(&mut naive, 0.99));
        println!(
            "extender filter, {} NodeNames (in-process router, JSON in and out): p50 {:.3} ms, p99 {:.3} ms over {} requests; naive baseline (Nodes mode: {} full node objects, snapshot built per request) p50 {:.3} ms, p99 {:.3} ms; p50 ratio {:.1}x",
            shape.nodes,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            fast.len(),
            shape.nodes,
            n50.as_secs_f64() * 1e3,
            n99.as_secs_f64() * 1e3,
            n50.as_secs_f64() / p50.as_secs_f64()
        );

        // Over loopback HTTP: the server on its own thread and runtime, the client on this one.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let served = ExtenderServer::new(server.scheduler().clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                served.serve(listener).await.unwrap();
            });
        });
        latencies_http(rt, addr, &cached, 20.min(shape.requests));
        let mut http = latencies_http(rt, addr, &cached, shape.requests);
        let (h50, h99) = (percentile(&mut http, 0.5), percentile(&mut http, 0.99));
        println!(
            "extender filter, {} NodeNames over HTTP on 127.0.0.1 (kept-alive connection, server on its own thread): p50 {:.3} ms, p99 {:.3} ms over {} requests",
            shape.nodes,
            h50.as_secs_f64() * 1e3,
            h99.as_secs_f64() * 1e3,
            http.len()
        );
    }
}

/// The extender per request with bodies shaped like kube-scheduler v1.20.2's (feature
/// `extender`): 50 nodes as informer objects (managedFields, conditions, images; about 5 KB
/// each), a Deployment's pod; filter and prioritize in Nodes mode (`nodeCacheCapable: false`,
/// what the example's stanza asks for without a Node watch) and in NodeNames mode.
#[cfg(feature = "extender")]
mod extender_kube {
    use std::time::{Duration, Instant};

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use rorqual_scheduler::extender::ExtenderServer;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    fn fixture(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/v1_20/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    fn nodes(n: usize) -> Vec<Value> {
        let template = fixture("node.json");
        (0..n)
            .map(|i| {
                let mut node = template.clone();
                let name = format!("node-{i}");
                node["metadata"]["labels"]["kubernetes.io/hostname"] = json!(name);
                node["metadata"]["labels"]["topology.kubernetes.io/zone"] =
                    json!(format!("zone-{}", i % 3));
                node["metadata"]["name"] = json!(name);
                node
            })
            .collect()
    }

    fn stats(mut v: Vec<Duration>) -> String {
        v.sort();
        let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3;
        let mean = v.iter().sum::<Duration>().as_secs_f64() * 1e3 / v.len() as f64;
        format!(
            "mean {mean:.3} ms, p50 {:.3} ms, p99 {:.3} ms ({} requests)",
            at(0.5),
            at(0.99),
            v.len()
        )
    }

    fn in_process(
        rt: &tokio::runtime::Runtime,
        server: &ExtenderServer,
        path: &str,
        body: &str,
        requests: usize,
    ) -> Vec<Duration> {
        let router = server.router();
        rt.block_on(async {
            let mut out = Vec::with_capacity(requests);
            for _ in 0..requests {
                let start = Instant::now();
                let response = router
                    .clone()
                    .oneshot(
                        Request::post(path)
                            .header("content-type", "application/json")
                            .body(Body::from(body.to_owned()))
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                out.push(start.elapsed());
                assert!(bytes.len() > 10);
            }
            out
        })
    }

    /// One pod's filter then prioritize, over HTTP on loopback through one kept-alive
    /// connection (kube-scheduler's extender client keeps connections alive).
    fn over_http(
        rt: &tokio::runtime::Runtime,
        addr: std::net::SocketAddr,
        filter: &str,
        prioritize: &str,
        pods: usize,
    ) -> Vec<Duration> {
        let client = reqwest::Client::new();
        rt.block_on(async {
            let mut out = Vec::with_capacity(pods);
            for _ in 0..pods {
                let start = Instant::now();
                for (verb, body) in [("filter", filter), ("prioritize", prioritize)] {
                    let response = client
                        .post(format!("http://{addr}/{verb}"))
                        .header("content-type", "application/json")
                        .body(body.to_owned())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    assert!(response.bytes().await.unwrap().len() > 10);
                }
                out.push(start.elapsed());
            }
            out
        })
    }

    pub(crate) fn extender_kube(rt: &tokio::runtime::Runtime, requests: usize) {
        const NODES: usize = 50;
        let pod = fixture("pod.json");
        let nodes = nodes(NODES);
        let names: Vec<&str> = nodes
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap())
            .collect();
        let full =
            json!({"Pod": pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": null})
                .to_string();
        let cached = json!({"Pod": pod, "Nodes": null, "NodeNames": names}).to_string();
        println!(
            "extender, kube-scheduler 1.20 bodies, {NODES} nodes: Nodes-mode request {} bytes, NodeNames-mode request {} bytes",
            full.len(),
            cached.len()
        );
        let server = ExtenderServer::with_default_plugins().node_cache_capable(false);
        // Warm up (and, in Nodes mode, fill the cache the NodeNames runs use).
        in_process(rt, &server, "/filter", &full, 20);
        in_process(rt, &server, "/filter", &cached, 20);
        for (label, path, body) in [
            ("filter, Nodes mode", "/filter", &full),
            ("prioritize, Nodes mode", "/prioritize", &full),
            ("filter, NodeNames mode", "/filter", &cached),
            ("prioritize, NodeNames mode", "/prioritize", &cached),
        ] {
            let times = in_process(rt, &server, path, body, requests);
            println!(
                "extender {label} (in-process router, JSON in and out): {}",
                stats(times)
            );
        }

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let served = server.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                served.serve(listener).await.unwrap();
            });
        });
        over_http(rt, addr, &full, &full, 20);
        let times = over_http(rt, addr, &full, &full, requests);
        println!(
            "extender filter + prioritize per pod, Nodes mode, over HTTP on 127.0.0.1 (kept-alive connection): {}",
            stats(times)
        );
        let times = over_http(rt, addr, &cached, &cached, requests);
        println!(
            "extender filter + prioritize per pod, NodeNames mode, over HTTP on 127.0.0.1 (kept-alive connection): {}",
            stats(times)
        );
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let shape = if full {
        Shape {
            nodes: 5000,
            pods: 10_000,
            baseline_pods: 300,
            runs: 5,
            requests: 1000,
        }
    } else {
        Shape {
            nodes: 200,
            pods: 300,
            baseline_pods: 20,
            runs: 1,
            requests: 10,
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "machine: {} cores available",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // SCHED_BENCH=basic|anti|underlay|extender|extender-kube runs one scenario.
    let only = std::env::var("SCHED_BENCH").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only == name;
    if run("basic") {
        throughput(&rt, &shape, false, "SchedulingBasic (default plugins)");
    }
    if run("underlay") {
        underlay(&rt, &shape);
    }
    if run("anti") {
        throughput(
            &rt,
            &shape,
            true,
            "required pod anti-affinity (groups of 10 per hostname)",
        );
    }
    if run("extender-kube") {
        #[cfg(feature = "extender")]
        extender_kube::extender_kube(&rt, if full { 2000 } else { 10 });
        #[cfg(not(feature = "extender"))]
        println!("extender with kube-scheduler 1.20 bodies: not run (needs feature `extender`)");
    }
    if run("extender") {
        #[cfg(feature = "extender")]
        extender_latency::extender(&rt, &shape);
        #[cfg(not(feature = "extender"))]
        println!("extender filter: not run (needs feature `extender`)");
    }
}
