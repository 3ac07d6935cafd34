//! Benchmark: how fast the autoscaler meets load, and how fast a
//! component scaled to zero answers its first request.
//!
//! 1. A 10x load step. A control plane and three nodes on loopback run a
//!    probe component whose replicas admit 4 requests at once
//!    (`max_concurrency = 4`, `target_concurrency = 4`, `max = 10`); each
//!    request sleeps 20 ms in the guest. 4 clients load node-1's ingress
//!    for a few seconds (one replica is enough), then 40 clients do. The
//!    figures: the time from the step until the control plane reports the
//!    added replicas running, the time until request latency is back
//!    under twice the steady figure, and the p99 during the first two
//!    seconds and over the last five of the step. Target: added replicas
//!    serving in under 2 s (Kubernetes' HPA syncs every 15 s).
//! 2. Scale from zero. A component with `min = 0` and a one-second
//!    `scale_down_delay`: once it has no replica, the time from a request
//!    to its 200, through a node holding no replica (the replica is
//!    placed on the node holding the request) and through `skiff up`;
//!    repeated, with the compile cache warm after the first (a deploy
//!    starts one replica: `skiff up`'s first request here finds the code
//!    compiled by it). Targets:
//!    under 50 ms and under 20 ms (Knative's activator path takes
//!    seconds).
//!
//! `SKIFF_BENCH_COLD_STARTS` sets the cold starts measured per path
//! (default 10).
//!
//! Run: `cargo bench -p skiff-orchestrator --bench autoscale`.

#[path = "../tests/support/mod.rs"]
mod support;

use skiff_orchestrator::api::AppView;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::cluster::{Cluster, one_at_a_time, probe_app, replica_count};
use support::{Running, http, temp_dir, wait_until};

/// Guest time per request in the load step, ms.
const SLEEP_MS: u64 = 20;

fn main() {
    let cold_starts = std::env::var("SKIFF_BENCH_COLD_STARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    {
        let cluster = Cluster::start(3, &[]);
        load_step(&cluster);
        from_zero_in_a_cluster(&cluster, cold_starts);
    }
    from_zero_in_skiff_up(cold_starts);
}

/// One request's send time (since the load started) and latency, ms.
type Sample = (f64, f64);

/// `clients` threads sending `GET url` back to back on keep-alive
/// connections until stopped (or a minute passes), each request's time
/// recorded.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn start(clients: usize, url: &str, epoch: Instant) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let (stop, url) = (stop.clone(), url.to_string());
                std::thread::spawn(move || {
                    let agent = http();
                    let mut samples = Vec::new();
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let sent = Instant::now();
                        let ok = agent
                            .get(&url)
                            .call()
                            .is_ok_and(|r| r.status().as_u16() == 200);
                        let latency = sent.elapsed().as_secs_f64() * 1000.0;
                        let at = sent.duration_since(epoch).as_secs_f64() * 1000.0;
                        samples.push((at, if ok { latency } else { f64::NAN }));
                    }
                    samples
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// Replicas of `app` the control plane reports running.
fn running(runtime: &tokio::runtime::Runtime, cluster: &Cluster, app: &str) -> u32 {
    let client = cluster.admin_client(Some(&support::cluster::admin_token(cluster)));
    let apps: Vec<AppView> = runtime.block_on(client.get("/v1/apps")).unwrap();
    apps.iter()
        .find(|a| a.name == app)
        .map_or(0, |a| a.components.iter().map(|c| c.running).sum())
}

fn load_step(cluster: &Cluster) {
    let dir = temp_dir();
    let app = probe_app(
        dir.path(),
        "step",
        "[component.probe.limits]\nmax_concurrency = 4\n\
         [component.probe.scale]\nmin = 1\nmax = 10\ntarget_concurrency = 4\nscale_down_delay = \"60s\"\n\
         [component.probe.placement]\nmemory = \"64MiB\"\n",
    );
    cluster.cli(&["deploy", &app, "--wait"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("{}/sleep?{SLEEP_MS}", cluster.nodes[0].process.url);
    let epoch = Instant::now();
    let steady = Load::start(4, &url, epoch);
    std::thread::sleep(Duration::from_secs(4));
    let before = running(&runtime, cluster, "step");
    let step_at = epoch.elapsed().as_secs_f64() * 1000.0;
    let surge = Load::start(36, &url, epoch);
    let stepped = Instant::now();
    let mut all_running = None;
    while stepped.elapsed() < Duration::from_secs(12) {
        let now = running(&runtime, cluster, "step");
        if all_running.is_none() && now >= 10 {
            all_running = Some(stepped.elapsed());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let mut samples = steady.stop();
    samples.extend(surge.stop());
    let failed = samples.iter().filter(|(_, l)| l.is_nan()).count();
    let ok: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|(_, l)| !l.is_nan())
        .collect();
    let mut steady_latencies: Vec<f64> = ok
        .iter()
        .filter(|(at, _)| *at > 1000.0 && *at < step_at)
        .map(|(_, l)| *l)
        .collect();
    let steady_p50 = percentile(&mut steady_latencies, 0.5);
    // Latency back to normal: the first 100 ms window after the step whose
    // p90 is under twice the steady median, and every later one too.
    let windows = (0..120)
        .map(|w| {
            let (start, end) = (step_at + w as f64 * 100.0, step_at + (w + 1) as f64 * 100.0);
            let mut in_window: Vec<f64> = ok
                .iter()
                .filter(|(at, _)| *at >= start && *at < end)
                .map(|(_, l)| *l)
                .collect();
            percentile(&mut in_window, 0.9)
        })
        .collect::<Vec<_>>();
    let recovered = (0..windows.len())
        .find(|&w| {
            windows[w..]
                .iter()
                .all(|p| p.is_nan() || *p < 2.0 * steady_p50)
        })
        .map(|w| Duration::from_millis(w as u64 * 100));
    let mut during: Vec<f64> = ok
        .iter()
        .filter(|(at, _)| *at >= step_at && *at < step_at + 2000.0)
        .map(|(_, l)| *l)
        .collect();
    let last = ok.iter().map(|(at, _)| *at).fold(0.0, f64::max);
    let mut after: Vec<f64> = ok
        .iter()
        .filter(|(at, _)| *at >= last - 5000.0)
        .map(|(_, l)| *l)
        .collect();
    println!(
        "load step 4 -> 40 clients on node-1's ingress ({SLEEP_MS} ms per request, 4 at once per replica, 3 nodes):"
    );
    println!(
        "  before the step: {before} replica(s) running, p50 {steady_p50:.1} ms; {} requests, {failed} failed",
        samples.len()
    );
    match all_running {
        Some(took) => println!(
            "  10 replicas running {:.2} s after the step; target < 2 s: {}; ratio to the HPA's 15 s sync period: {:.2}x",
            took.as_secs_f64(),
            if took < Duration::from_secs(2) {
                "met"
            } else {
                "missed"
            },
            took.as_secs_f64() / 15.0
        ),
        None => println!("  10 replicas not running within 12 s"),
    }
    match recovered {
        Some(took) => println!(
            "  latency back under 2x the steady p50 {:.2} s after the step",
            took.as_secs_f64()
        ),
        None => println!("  latency not back under 2x the steady p50 within 12 s"),
    }
    println!(
        "  p99 during the first 2 s after the step: {:.1} ms; over the last 5 s: {:.1} ms (p50 {:.1} ms)",
        percentile(&mut during, 0.99),
        percentile(&mut after.clone(), 0.99),
        percentile(&mut after, 0.5)
    );
    cluster.cli(&["delete", "step"]);
}

/// Times requests to a component scaled to zero, through nodes that hold
/// no replica of it, `count` times after a first (cold cache) one.
fn from_zero_in_a_cluster(cluster: &Cluster, count: usize) {
    let dir = temp_dir();
    let app = probe_app(
        dir.path(),
        "zero",
        "[component.probe.scale]\nmin = 0\nmax = 1\nscale_down_delay = \"1s\"\n\
         [component.probe.placement]\nmemory = \"64MiB\"\n",
    );
    cluster.cli(&["deploy", &app]);
    cluster.wait_known_everywhere("zero", 0);
    let mut times = Vec::new();
    for i in 0..=count {
        // Alternate the nodes the request enters by.
        let node = &cluster.nodes[1 + i % 2];
        let time = time_first_request(&format!("{}/sleep?0", node.process.url), Some("zero"));
        times.push(time);
        wait_until(Duration::from_secs(20), "zero replicas again", || {
            cluster.replicas("zero").is_empty().then_some(())
        });
        cluster.wait_known_everywhere("zero", 0);
    }
    report_cold_starts(
        "through a node holding no replica (3-node cluster; the load step compiled the probe)",
        times,
        50.0,
    );
}

/// The same through `skiff up`.
fn from_zero_in_skiff_up(count: usize) {
    let _serial = one_at_a_time();
    let home = temp_dir();
    let dir = temp_dir();
    let app = probe_app(
        dir.path(),
        "zero",
        "[component.probe.scale]\nmin = 0\nmax = 1\nscale_down_delay = \"1s\"\n",
    );
    let up = Running::up(home.path(), &app, &[]);
    let replicas = || replica_count(home.path(), "zero");
    // A new version starts one replica; wait for it to go.
    wait_until(Duration::from_secs(20), "zero replicas", || {
        (replicas() == 0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(200));
    let mut times = Vec::new();
    for _ in 0..=count {
        times.push(time_first_request(&up.at("/sleep?0"), None));
        wait_until(Duration::from_secs(20), "zero replicas again", || {
            (replicas() == 0).then_some(())
        });
        // The node hears of it with the same heartbeat; give it a moment.
        std::thread::sleep(Duration::from_millis(200));
    }
    report_cold_starts("through skiff up", times, 20.0);
}

/// How long `GET url` (with `Host: host`) takes to answer 200, ms.
fn time_first_request(url: &str, host: Option<&str>) -> f64 {
    let started = Instant::now();
    let mut request = http().get(url);
    if let Some(host) = host {
        request = request.header("Host", host);
    }
    let response = request.call().expect("an answer");
    let took = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(response.status().as_u16(), 200, "a request from zero");
    took
}

fn report_cold_starts(path: &str, mut times: Vec<f64>, target_ms: f64) {
    let first = times.remove(0);
    let mut sorted = times.clone();
    let median = percentile(&mut sorted, 0.5);
    let worst = sorted.last().copied().unwrap_or(f64::NAN);
    println!(
        "scale from zero {path}: first {first:.1} ms; then {} times: median {median:.1} ms, worst {worst:.1} ms; target < {target_ms} ms: {}",
        times.len(),
        if median < target_ms { "met" } else { "missed" }
    );
}
