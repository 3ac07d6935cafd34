//! Benchmark: what metrics cost.
//!
//! 1. The hot path: `wrk` (64 connections) against `skiff run hello` with
//!    `--metrics-listen`, scraped every second while it runs, against the
//!    same app under `SKIFF_BASELINE_BIN` (a `skiff` built before metrics
//!    were recorded), interleaved round by round; prints requests/s, p50,
//!    p99 and the ratio of the medians (target: at least 0.97).
//! 2. Scraping a node with many apps: loads the hello component as 1,000
//!    and as 5,000 apps in one engine, each having served requests, and
//!    times encoding the whole registry (median of 20) and its size; past
//!    2,000 components the `_other` series bounds both.
//!
//! Run: `cargo bench -p skiff-orchestrator --bench observability`. Needs
//! `wrk` for part 1; without `SKIFF_BASELINE_BIN`, part 1 measures this
//! build alone. `SKIFF_BENCH_SECONDS` and `SKIFF_BENCH_ROUNDS` shorten or
//! lengthen it.

use prometheus_client::registry::Registry;
use skiff_runtime::manifest::{ComponentName, ComponentSpec};
use skiff_runtime::mesh::WorkloadId;
use skiff_runtime::{CompileCache, EngineConfig, LoadedComponent, Manifest, SkiffEngine};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{WrkRun, free_port, get_status, wrk, wrk_available};

const CONNECTIONS: u32 = 64;

fn main() {
    let seconds = u64::from(env_or("SKIFF_BENCH_SECONDS", 10));
    let rounds = env_or("SKIFF_BENCH_ROUNDS", 3);
    hot_path(seconds, rounds);
    for apps in [1_000, 5_000] {
        scrape(apps);
    }
}

/// Part 1: throughput with metrics recorded and scraped, against the
/// baseline binary.
fn hot_path(seconds: u64, rounds: u32) {
    println!("## hot path: skiff run hello, wrk {CONNECTIONS} connections, {seconds} s a round");
    if !wrk_available() {
        println!("wrk not found: apt-get install wrk");
        return;
    }
    let baseline = std::env::var("SKIFF_BASELINE_BIN").ok();
    if baseline.is_none() {
        println!("(no SKIFF_BASELINE_BIN: set it to a skiff built before metrics for the ratio)");
    }
    let home = tempfile::tempdir().unwrap();
    let (mut with_metrics, mut before) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first, so drift hits both alike.
        let order: Vec<bool> = if round % 2 == 0 {
            vec![true, false]
        } else {
            vec![false, true]
        };
        for current in order {
            let binary = match (current, &baseline) {
                (true, _) => env!("CARGO_BIN_EXE_skiff").to_string(),
                (false, Some(baseline)) => baseline.clone(),
                (false, None) => continue,
            };
            let server = Server::start(&binary, home.path(), current);
            let scraper = current.then(|| Scraper::start(&server.metrics));
            let run = wrk(&server.url, 2, CONNECTIONS, seconds);
            drop(scraper);
            let label = if current {
                "with metrics"
            } else {
                "baseline    "
            };
            println!("  round {} {label} {run}", round + 1);
            if current {
                with_metrics.push(run);
            } else {
                before.push(run);
            }
        }
    }
    let now = WrkRun::median(&with_metrics);
    println!("with metrics (median): {now}");
    if !before.is_empty() {
        let then = WrkRun::median(&before);
        println!("baseline     (median): {then}");
        println!(
            "ratio with/without metrics: {:.3} (target at least 0.97)",
            now.requests_per_sec / then.requests_per_sec
        );
    }
}

/// Part 2: one scrape of `apps` apps that each served requests.
fn scrape(apps: usize) {
    println!("\n## scrape of {apps} apps on one node");
    let engine = SkiffEngine::new(EngineConfig::default()).unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = CompileCache::open(cache_dir.path()).unwrap();
    let wasm = Path::new(skiff_test_guests::HELLO);
    let manifest = Manifest::for_single_component(wasm);
    let spec: &ComponentSpec = manifest.component.values().next().unwrap();
    let started = Instant::now();
    let loaded: Vec<LoadedComponent> = (0..apps)
        .map(|n| {
            let workload = WorkloadId::new(
                ComponentName::try_from(format!("app-{n}")).unwrap(),
                ComponentName::try_from("web".to_string()).unwrap(),
            );
            let component =
                LoadedComponent::load(&engine, &cache, &workload, spec, Path::new("/")).unwrap();
            // What a served component shows: a few statuses and a refusal.
            for status in [200, 200, 404, 500] {
                component
                    .series
                    .record_request(status, None, Duration::from_micros(400));
            }
            component
                .series
                .record_request(503, Some("overloaded"), Duration::from_micros(20));
            component.series.record_instance();
            component
        })
        .collect();
    println!("  loaded in {:.1?}", started.elapsed());
    let mut registry = Registry::with_prefix("skiff");
    engine.metrics().register(&mut registry);
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..20 {
        let started = Instant::now();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        times.push(started.elapsed());
        size = text.len();
    }
    times.sort();
    println!(
        "  /metrics: {:.1} KiB ({:.2} KiB an app), encoded in {:.2} ms (median of 20; max {:.2} ms)",
        size as f64 / 1024.0,
        size as f64 / 1024.0 / apps as f64,
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    drop(loaded);
}

/// `skiff run hello` on a free port, with metrics on another when
/// `metrics` (a baseline binary has no such option).
struct Server {
    child: Child,
    url: String,
    metrics: String,
}

impl Server {
    fn start(binary: &str, home: &Path, metrics: bool) -> Server {
        let port = free_port();
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(binary);
        command.args([
            "run",
            skiff_test_guests::HELLO,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ]);
        if metrics {
            command.args(["--metrics-listen", &metrics_addr]);
        }
        let child = command
            .env("SKIFF_HOME", home)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting skiff");
        let server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            metrics: format!("http://{metrics_addr}/metrics"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while get_status(&server.url) != Some(200) {
            assert!(Instant::now() < deadline, "{binary} did not serve");
            std::thread::sleep(Duration::from_millis(5));
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Scrapes a URL every second until dropped, as Prometheus would.
struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scraper {
    fn start(url: &str) -> Scraper {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let url = url.to_string();
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(get_status(&url), Some(200), "a scrape of {url}");
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Scraper {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
