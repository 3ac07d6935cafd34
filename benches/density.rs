//! Benchmark: how many apps one node holds, and what each costs, on one
//! `skiff up` (a control plane and a node in one process) on loopback.
//!
//! - Apps of one component: deploys apps made of the hello component, each
//!   with its own name and `GREETING`, in stages up to each count of
//!   `SKIFF_BENCH_APPS` (default `1000,10000`). Per stage it prints the
//!   deploy rate (pack, upload and declare through the API, 8 at a time),
//!   the time until every replica runs, the process's RSS idle (the
//!   node's resident memory with every app loaded and none serving), then
//!   after one request to each app (each answer checked: 200 and the app's
//!   own greeting), the cost per app, and the p50/p99 of requests to apps
//!   picked at random (target: 10,000 idle apps within 2 GiB RSS, p99
//!   under 5 ms).
//! - Distinct components: `SKIFF_BENCH_DISTINCT` (default 100) apps each
//!   of a component with different bytes (hello with a custom section
//!   naming it), and the RSS each adds once loaded and once used.
//! - A restart: `skiff up` again on the same home, every app loaded from
//!   the compile cache (no compiler in memory), and the RSS idle then;
//!   `SKIFF_BENCH_LOG=FILE` keeps what the restarted process logged.
//!
//! Run: `cargo bench -p skiff-orchestrator --bench density`.

#[path = "../tests/support/mod.rs"]
mod support;

use skiff_orchestrator::api::AppView;
use skiff_orchestrator::api_client::ApiClient;
use skiff_orchestrator::cluster_config::ClusterConfig;
use skiff_orchestrator::deploy;
use skiff_test_guests::HELLO;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::cluster::get_as_host;
use support::{Running, temp_dir, toml_path, write_manifest};
use wasm_encoder::{ComponentSection, CustomSection};

/// Deploys in flight at once.
const DEPLOYERS: usize = 8;
/// The longest a stage may wait for its replicas to run.
const RUNNING_LIMIT: Duration = Duration::from_secs(1800);
/// Requests to random apps per latency sample.
const RANDOM_REQUESTS: usize = 2000;

fn main() {
    let stages: Vec<usize> = std::env::var("SKIFF_BENCH_APPS")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("SKIFF_BENCH_APPS: counts, e.g. 1000,10000")
        })
        .collect();
    let distinct: usize = std::env::var("SKIFF_BENCH_DISTINCT")
        .map(|n| n.parse().expect("SKIFF_BENCH_DISTINCT: a count"))
        .unwrap_or(100);
    let home = temp_dir();
    // SAFETY: set before any thread starts; the API client reads the
    // cluster `skiff up` writes into this home.
    unsafe { std::env::set_var("SKIFF_HOME", home.path()) };
    let up = Running::launch(
        home.path(),
        &["up", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"],
        "Serving ",
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = Arc::new(ClusterConfig::load(None).unwrap().client().unwrap());
    let sources = temp_dir();
    let baseline = Rss::of(up.pid());
    println!("skiff up with no apps: {baseline}");

    let hello = std::fs::read(HELLO).unwrap();
    let mut deployed = 0;
    for &count in &stages {
        println!("\n{count} apps of one component (hello, each with its own GREETING):");
        let apps: Vec<String> = (deployed..count).map(|i| format!("app-{i}")).collect();
        let started = Instant::now();
        deploy_all(&runtime, &client, sources.path(), &apps, |_| {
            HELLO.to_string()
        });
        let declared = started.elapsed();
        wait_all_running(&runtime, &client, count);
        let running = started.elapsed();
        deployed = count;
        println!(
            "  deploy: {} apps declared in {:.1} s ({:.0} apps/s), all running after {:.1} s",
            apps.len(),
            declared.as_secs_f64(),
            apps.len() as f64 / declared.as_secs_f64(),
            running.as_secs_f64()
        );
        let idle = Rss::settled(up.pid());
        println!("  RSS idle:                  {idle}");
        println!(
            "  per app, idle:             {}",
            idle.per_app(&baseline, count)
        );
        let names: Vec<String> = (0..count).map(|i| format!("app-{i}")).collect();
        for name in &names {
            expect_greeting(&up, name, name);
        }
        let used = Rss::settled(up.pid());
        println!("  RSS after one request each: {used}");
        println!(
            "  per app, used:             {}",
            used.per_app(&baseline, count)
        );
        let p99 = latency(&up, &names);
        let projected =
            baseline.total + idle.total.saturating_sub(baseline.total) / count as u64 * 10_000;
        println!(
            "  target: 10,000 idle apps within 2 GiB RSS: {} (idle RSS at this rate: {:.0} MiB); p99 under 5 ms: {}",
            verdict(projected <= 2 << 30),
            projected as f64 / (1 << 20) as f64,
            verdict(p99 < 5.0)
        );
    }

    if distinct > 0 {
        println!(
            "\n{distinct} apps each of a distinct component (hello with its own custom section):"
        );
        let before = Rss::settled(up.pid());
        let apps: Vec<String> = (0..distinct).map(|i| format!("distinct-{i}")).collect();
        let started = Instant::now();
        deploy_all(&runtime, &client, sources.path(), &apps, |name| {
            let path = sources.path().join(format!("{name}.wasm"));
            std::fs::write(&path, distinct_hello(&hello, name)).unwrap();
            path.to_str().unwrap().to_string()
        });
        wait_all_running(&runtime, &client, deployed + distinct);
        println!(
            "  deploy (each compiled): all running after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let loaded = Rss::settled(up.pid());
        println!(
            "  per distinct component, loaded: {}",
            loaded.per_app(&before, distinct)
        );
        for name in &apps {
            expect_greeting(&up, name, name);
        }
        let used = Rss::settled(up.pid());
        println!(
            "  per distinct component, used:   {}",
            used.per_app(&before, distinct)
        );
    }

    // Compiling leaves the allocator holding memory the compiled code does
    // not use; a restart loads every component from the compile cache.
    assert!(up.terminate().success(), "skiff up stops cleanly");
    let up = Running::launch(
        home.path(),
        &["up", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"],
        "Serving ",
    );
    let client = ClusterConfig::load(None).unwrap().client().unwrap();
    let started = Instant::now();
    wait_all_running(&runtime, &client, deployed + distinct);
    let restarted = Rss::settled(up.pid());
    if let Ok(path) = std::env::var("SKIFF_BENCH_LOG") {
        std::fs::write(&path, up.stderr()).unwrap();
    }
    println!(
        "\nafter a restart, all {} apps running again in {:.1} s, every component from the compile cache:",
        deployed + distinct,
        started.elapsed().as_secs_f64()
    );
    println!("  RSS idle: {restarted}");
    println!(
        "  per app, idle: {}",
        restarted.per_app(&baseline, deployed + distinct)
    );
}

/// Packs, uploads and declares one app per name, [`DEPLOYERS`] at a time;
/// `source(name)` is the path of its component.
fn deploy_all(
    runtime: &tokio::runtime::Runtime,
    client: &Arc<ApiClient>,
    dir: &Path,
    apps: &[String],
    source: impl Fn(&str) -> String,
) {
    let mut pending = Vec::new();
    for chunk in apps.chunks(DEPLOYERS) {
        for name in chunk {
            let app_dir = dir.join(name);
            std::fs::create_dir_all(&app_dir).unwrap();
            write_manifest(
                &app_dir,
                &format!(
                    "[app]\nname = \"{name}\"\n[component.web]\nsource = {}\nroute = \"/...\"\n\
                     env = {{ GREETING = \"{name}\" }}\n",
                    toml_path(&source(name))
                ),
            );
            let prepared = deploy::prepare(app_dir.to_str().unwrap(), false).unwrap();
            let client = client.clone();
            pending.push(runtime.spawn(async move {
                deploy::upload_and_declare(&client, &prepared, &Default::default()).await
            }));
        }
        for task in pending.drain(..) {
            if let Err(e) = runtime.block_on(task).unwrap() {
                panic!("deploy failed: {e:#}");
            }
        }
    }
}

/// Waits until `count` apps are declared and each has all its replicas
/// running.
fn wait_all_running(runtime: &tokio::runtime::Runtime, client: &ApiClient, count: usize) {
    let started = Instant::now();
    loop {
        let apps: Vec<AppView> = runtime.block_on(client.get("/v1/apps")).unwrap();
        let running = apps
            .iter()
            .filter(|a| a.components.iter().all(|c| c.running >= c.desired))
            .count();
        if apps.len() >= count && running == apps.len() {
            return;
        }
        assert!(
            started.elapsed() < RUNNING_LIMIT,
            "only {running} of {count} apps running after {RUNNING_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Asks `up` for app `name` by its Host name and checks it answers 200
/// with its own greeting.
fn expect_greeting(up: &Running, name: &str, greeting: &str) {
    let host = format!("{name}.localhost");
    let answer = get_as_host(&up.url, Some(&host), "/");
    assert_eq!(
        answer,
        (200, format!("{greeting} from Skiff!\n")),
        "app {name}"
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// Requests to apps picked at random; prints p50 and p99, returns p99 (ms).
fn latency(up: &Running, names: &[String]) -> f64 {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut took = Vec::with_capacity(RANDOM_REQUESTS);
    for _ in 0..RANDOM_REQUESTS {
        // xorshift64: a fixed, repeatable sequence of apps.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let name = &names[(seed % names.len() as u64) as usize];
        let started = Instant::now();
        expect_greeting(up, name, name);
        took.push(started.elapsed());
    }
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "  {RANDOM_REQUESTS} requests to random apps (new connection each): p50 {:.2} ms, p99 {:.2} ms",
        at(0.50),
        at(0.99)
    );
    at(0.99)
}

/// The hello component with a custom section naming `name`: the same
/// program with other bytes, so it is compiled and held on its own.
fn distinct_hello(hello: &[u8], name: &str) -> Vec<u8> {
    let mut wasm = hello.to_vec();
    CustomSection {
        name: "skiff-bench".into(),
        data: format!("{name} of pid {}", std::process::id())
            .as_bytes()
            .into(),
    }
    .append_to_component(&mut wasm);
    wasm
}

/// A process's resident memory, from `/proc/PID/status`, bytes.
struct Rss {
    total: u64,
    anon: u64,
}

impl Rss {
    fn of(pid: u32) -> Rss {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
                * 1024
        };
        Rss {
            total: field("VmRSS:"),
            anon: field("RssAnon:"),
        }
    }

    /// The RSS once background work (loads, reaping of instances) has
    /// settled: read after two quiet seconds.
    fn settled(pid: u32) -> Rss {
        std::thread::sleep(Duration::from_secs(2));
        Rss::of(pid)
    }

    fn per_app(&self, baseline: &Rss, apps: usize) -> String {
        let per = |now: u64, before: u64| now.saturating_sub(before) as f64 / apps as f64 / 1024.0;
        format!(
            "{:.1} KiB total, {:.1} KiB anonymous",
            per(self.total, baseline.total),
            per(self.anon, baseline.anon)
        )
    }
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} MiB ({:.1} MiB anonymous)",
            self.total as f64 / (1 << 20) as f64,
            self.anon as f64 / (1 << 20) as f64
        )
    }
}
