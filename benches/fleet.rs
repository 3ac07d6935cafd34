//! Benchmark: the control plane at fleet scale, as kwok and Nomad's
//! nomad-nodesim measure theirs. One real `skiff server` (embedded store,
//! or etcd with `SKIFF_FLEET_STORE=etcd`, which starts a local etcd
//! member), `SKIFF_FLEET_NODES` simulated nodes (default 5,000) in this
//! process, each with its own certificate and connection, heartbeating
//! every second over the real API and mTLS and reporting what it is
//! assigned as running; then `SKIFF_FLEET_APPS` apps (default 10,000) of
//! `SKIFF_FLEET_REPLICAS` replicas (default 5: 50,000 in all), packed in
//! process and deployed 32 at a time through the API as `skiff deploy`
//! does; then `SKIFF_FLEET_FAIL` nodes (default 500) stop heartbeating.
//!
//! It prints: the control plane's time over each heartbeat (p50/p99, from
//! its `skiff_heartbeat_duration_seconds`; the heartbeat is then held
//! until something changes for the node, so a round trip says nothing),
//! its CPU and resident memory, how long placing every replica took and
//! how long until every node held its assignments, how long the failed
//! nodes took to be found down and their replicas placed elsewhere, and
//! the store's write rate. Targets: heartbeats p99 under 100 ms, every
//! replica placed within 60 s. The simulated nodes share the machine's
//! two cores with the control plane.
//!
//! Run: `cargo bench -p skiff-orchestrator --bench fleet`.

#[path = "support/sim.rs"]
mod sim;
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "support/mod.rs"]
mod tools;

use futures::StreamExt;
use sim::{SimNode, admin_client, join_fleet, poll, settled};
use skiff_orchestrator::api::{NodeView, ReplicaView};
use skiff_orchestrator::deploy::{Prepared, RolloutChoice, upload_and_declare};
use skiff_runtime::manifest::Manifest;
use skiff_runtime::package::{self, Store};
use skiff_test_guests::HELLO;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{start_server, temp_dir, toml_path};

const GIB: u64 = 1 << 30;
/// What each simulated node offers.
const NODE_MEMORY: u64 = 8 * GIB;
/// Deploys in flight at once.
const DEPLOYS_AT_ONCE: usize = 32;
/// How long any one wait may take.
const PATIENCE: Duration = Duration::from_secs(600);
/// How often the API is polled for progress.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How long each steady-state measurement lasts.
const WINDOW: Duration = Duration::from_secs(10);

fn main() {
    let nodes = env_or("SKIFF_FLEET_NODES", 5_000);
    let apps = env_or("SKIFF_FLEET_APPS", 10_000);
    let per_app = env_or("SKIFF_FLEET_REPLICAS", 5);
    let fail = env_or("SKIFF_FLEET_FAIL", 500).min(nodes);
    let total = apps * per_app;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let home = temp_dir();
    let etcd = (std::env::var("SKIFF_FLEET_STORE").as_deref() == Ok("etcd"))
        .then(|| support::etcd::Etcd::start(1));
    let metrics_port = tools::free_port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let mut args = vec![
        "--max-connections".to_string(),
        "20000".to_string(),
        "--max-connections-per-ip".to_string(),
        "20000".to_string(),
        "--metrics-listen".to_string(),
        metrics_listen.clone(),
    ];
    if let Some(etcd) = &etcd {
        args.extend(["--store".to_string(), etcd.store_arg()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = start_server(home.path(), "127.0.0.1:0", &args);
    let plane = Process(server.pid());
    let metrics = format!("http://{metrics_listen}/metrics");
    let admin = runtime.block_on(admin_client(home.path()));
    println!(
        "fleet: {nodes} simulated nodes, {apps} apps x {per_app} replicas = {total}, {fail} nodes failing; store: {}",
        if etcd.is_some() { "etcd" } else { "embedded" }
    );

    // Joins, 16 at a time, then heartbeats.
    let started = Instant::now();
    let fleet = join_fleet(
        &runtime,
        &admin,
        &server.url,
        nodes,
        NODE_MEMORY,
        16,
        PATIENCE,
    );
    println!(
        "  joined (16 at a time) and all ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // How far the simulator's own runtime falls behind: a simulated node
    // it cannot run in time is silent, and rightly taken for down.
    let behind = Arc::new(AtomicU64::new(0));
    runtime.spawn(lag_monitor(behind.clone()));
    let idle = steady(&plane, &metrics);
    println!("  idle, {nodes} nodes heartbeating: {idle}");

    // Packs every app in process (one shared component, a config each),
    // then deploys them through the API.
    let packing = Instant::now();
    let local = temp_dir();
    let store_path = local.path().join("store");
    let store = Store::open(&store_path).unwrap();
    let packages: Vec<_> = (0..apps)
        .map(|i| {
            let name = format!("fleet-{i}");
            let text = format!(
                "[app]\nname = \"{name}\"\n[component.web]\nsource = {}\nroute = \"/{name}/...\"\n\
                 [component.web.scale]\nreplicas = {per_app}\n\
                 [component.web.placement]\nmemory = \"16MiB\"\n",
                toml_path(HELLO)
            );
            let manifest = Manifest::parse(&text, Path::new("skiff.toml")).unwrap();
            package::pack(&manifest, Path::new("/"), &store)
                .unwrap()
                .descriptor
        })
        .collect();
    println!(
        "  packed {apps} apps in {:.1} s (not counted below)",
        packing.elapsed().as_secs_f64()
    );
    let writes_before = scrape(&metrics, "skiff_store_write_duration_seconds_count");
    let cpu_before = plane.cpu_seconds();
    behind.store(0, Ordering::Relaxed);
    let deploying = Instant::now();
    // A deploy that gets no answer in time is sent again (a declaration
    // made twice changes nothing); how many needed it is printed.
    let retried = AtomicU64::new(0);
    let declared_so_far = AtomicU64::new(0);
    let at_once = env_or("SKIFF_FLEET_DEPLOYS_AT_ONCE", DEPLOYS_AT_ONCE);
    runtime.block_on(async {
        // Says how far the deploys are every 10 s: where it bends, the
        // rate shows it.
        let progress = async {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                println!(
                    "    {:.0} s: {} of {apps} deploys answered",
                    deploying.elapsed().as_secs_f64(),
                    declared_so_far.load(Ordering::Relaxed)
                );
            }
        };
        let deploys = futures::stream::iter(packages)
            .map(|descriptor| {
                let (admin, retried, declared_so_far) = (admin.clone(), &retried, &declared_so_far);
                let prepared = Prepared {
                    store: Store::open(&store_path).unwrap(),
                    descriptor,
                };
                async move {
                    for attempt in 1.. {
                        match upload_and_declare(&admin, &prepared, &RolloutChoice::default()).await
                        {
                            Ok(_) => {
                                declared_so_far.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(e) if attempt < 5 => {
                                retried.fetch_add(1, Ordering::Relaxed);
                                eprintln!("  a deploy is sent again: {e:#}");
                            }
                            Err(e) => panic!("deploy: {e:#}"),
                        }
                    }
                }
            })
            .buffer_unordered(at_once)
            .for_each(|_| async {});
        tokio::select! {
            () = deploys => {}
            () = progress => {}
        }
    });
    let declared = deploying.elapsed();
    let retried = retried.load(Ordering::Relaxed);
    let (placed, pending) = poll(
        &runtime,
        &admin,
        "/v1/replicas",
        POLL_EVERY,
        PATIENCE,
        |views: Vec<ReplicaView>| settled(&views, total),
    );
    let placing = deploying.elapsed();
    let writes = scrape(&metrics, "skiff_store_write_duration_seconds_count") - writes_before;
    println!(
        "  {apps} deploys answered in {:.1} s; {placed} replicas placed ({pending} unschedulable) {:.1} s after the first deploy: {:.0} placements/s (target: all within 60 s)",
        declared.as_secs_f64(),
        placing.as_secs_f64(),
        placed as f64 / placing.as_secs_f64()
    );
    println!(
        "    the simulator's own runtime fell behind by up to {:.1} s (over 3 s, its nodes are late by its doing)",
        behind.swap(0, Ordering::Relaxed) as f64 / 1000.0
    );
    let (p50, p99) = deploy_times(&metrics);
    println!(
        "    the control plane's time over each deploy (placement included): p50 {p50} p99 {p99}"
    );
    println!(
        "    store writes meanwhile: {writes:.0}, {:.0}/s; control plane CPU {:.0}% of one core; deploys sent again after no answer within 30 s: {retried}",
        writes / placing.as_secs_f64(),
        100.0 * (plane.cpu_seconds() - cpu_before) / placing.as_secs_f64()
    );
    match wait_held(&fleet, placed as u64) {
        Some(()) => println!(
            "    every node held its assignments {:.1} s after the first deploy",
            deploying.elapsed().as_secs_f64()
        ),
        None => println!(
            "    the nodes did not all hold their assignments within {PATIENCE:?} (they hold {})",
            held(&fleet)
        ),
    }
    let busy = steady(&plane, &metrics);
    println!("  steady, {nodes} nodes and {placed} replicas: {busy}");

    // A batch of nodes dies: found down, and their replicas placed
    // elsewhere.
    let views: Vec<ReplicaView> = runtime.block_on(admin.get("/v1/replicas")).unwrap();
    let failing: HashSet<String> = fleet.iter().take(fail).map(|n| n.name.clone()).collect();
    let stranded = views
        .iter()
        .filter(|r| r.node.as_ref().is_some_and(|n| failing.contains(n)))
        .count();
    let failed_at = Instant::now();
    for node in fleet.iter().take(fail) {
        node.alive.store(false, Ordering::Relaxed);
    }
    poll(
        &runtime,
        &admin,
        "/v1/nodes",
        POLL_EVERY,
        PATIENCE,
        |views: Vec<NodeView>| {
            let down = views
                .iter()
                .filter(|n| failing.contains(&n.name) && n.state == "down")
                .count();
            (down == fail).then_some(())
        },
    );
    let detected = failed_at.elapsed();
    poll(
        &runtime,
        &admin,
        "/v1/replicas",
        POLL_EVERY,
        PATIENCE,
        |views: Vec<ReplicaView>| {
            let on_failed = views
                .iter()
                .any(|r| r.node.as_ref().is_some_and(|n| failing.contains(n)));
            (!on_failed && settled(&views, total).is_some()).then_some(())
        },
    );
    println!(
        "  {fail} nodes stopped: all found down after {:.1} s, their {stranded} replicas placed elsewhere after {:.1} s",
        detected.as_secs_f64(),
        failed_at.elapsed().as_secs_f64()
    );
    let errors: u64 = fleet.iter().map(|n| n.errors.load(Ordering::Relaxed)).sum();
    let log = server.stderr();
    println!(
        "  failed heartbeats: {errors}; \"node is down\" in the control plane's log: {} (the {fail} stopped ones included)",
        log.matches("node is down").count()
    );
    for line in log.lines().filter(|l| l.contains("panicked")).take(3) {
        println!("  the control plane panicked: {line}");
    }
    drop(server);
}

/// Keeps in `behind` the most the simulator's runtime was late waking a
/// task, in milliseconds.
async fn lag_monitor(behind: Arc<AtomicU64>) {
    const TICK: Duration = Duration::from_millis(100);
    loop {
        let asleep = Instant::now();
        tokio::time::sleep(TICK).await;
        let late = asleep.elapsed().saturating_sub(TICK);
        behind.fetch_max(late.as_millis() as u64, Ordering::Relaxed);
    }
}

/// The control plane's figures over a [`WINDOW`]: heartbeat time, CPU,
/// memory and store writes.
fn steady(plane: &Process, metrics: &str) -> String {
    let before = Sample::take(plane, metrics);
    std::thread::sleep(WINDOW);
    let after = Sample::take(plane, metrics);
    let seconds = after.at.duration_since(before.at).as_secs_f64();
    let heartbeats: Vec<(f64, f64)> = after
        .heartbeats
        .iter()
        .zip(&before.heartbeats)
        .map(|((le, a), (_, b))| (*le, a - b))
        .collect();
    let count = heartbeats.last().map_or(0.0, |(_, n)| *n);
    format!(
        "{:.0} heartbeats/s, the control plane's time over each p50 {} p99 {} (target p99 < 100 ms); CPU {:.0}% of one core; RSS {:.0} MiB; store writes {:.1}/s",
        count / seconds,
        quantile(&heartbeats, 0.5),
        quantile(&heartbeats, 0.99),
        100.0 * (after.cpu - before.cpu) / seconds,
        after.rss as f64 / (1 << 20) as f64,
        (after.writes - before.writes) / seconds
    )
}

/// The quantile `q` of a cumulative histogram `(le, count)`, as
/// Prometheus' `histogram_quantile` reads it: interpolated in its bucket.
fn quantile(buckets: &[(f64, f64)], q: f64) -> String {
    let Some(&(_, total)) = buckets.last() else {
        return "-".to_string();
    };
    if total <= 0.0 {
        return "-".to_string();
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return format!("> {:.0} ms", lower.0 * 1000.0);
            }
            let within = (rank - lower.1) / (count - lower.1).max(f64::MIN_POSITIVE);
            return format!("{:.1} ms", 1000.0 * (lower.0 + (le - lower.0) * within));
        }
        lower = (le, count);
    }
    "-".to_string()
}

/// The buckets `(le, count)` of the histogram lines starting with `name`
/// that contain `labels`.
fn buckets(text: &str, name: &str, labels: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// The control plane's time over a deploy (`POST /v1/apps`, which waits
/// for the replicas' placement), p50 and p99, from `metrics`.
fn deploy_times(metrics: &str) -> (String, String) {
    let deploys = buckets(
        &tools_get(metrics),
        "skiff_api_request_duration_seconds_bucket",
        "method=\"POST\",route=\"/v1/apps\"}",
    );
    (quantile(&deploys, 0.5), quantile(&deploys, 0.99))
}

/// One reading of the control plane.
struct Sample {
    at: Instant,
    /// CPU seconds used so far.
    cpu: f64,
    rss: u64,
    writes: f64,
    /// `skiff_heartbeat_duration_seconds` buckets: `(le, count)`.
    heartbeats: Vec<(f64, f64)>,
}

impl Sample {
    fn take(plane: &Process, metrics: &str) -> Sample {
        let text = tools_get(metrics);
        let heartbeats = buckets(&text, "skiff_heartbeat_duration_seconds_bucket", "");
        Sample {
            at: Instant::now(),
            cpu: plane.cpu_seconds(),
            rss: plane.rss(),
            writes: metric(&text, "skiff_store_write_duration_seconds_count"),
            heartbeats,
        }
    }
}

/// The control plane's process.
struct Process(u32);

impl Process {
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0)).unwrap_or_default();
        // Fields after the command's closing parenthesis; utime and stime
        // are the 14th and 15th fields of the line.
        let rest = stat.rsplit(')').next().unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / 100.0
    }

    fn rss(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

/// `GET url`'s body.
fn tools_get(url: &str) -> String {
    support::get(url).1
}

/// The value of the unlabelled metric `name` in `text`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Scrapes `url` for metric `name`.
fn scrape(url: &str, name: &str) -> f64 {
    metric(&tools_get(url), name)
}

/// Replicas the nodes hold in their assignments, together.
fn held(fleet: &[Arc<SimNode>]) -> u64 {
    fleet.iter().map(|n| n.held.load(Ordering::Relaxed)).sum()
}

/// Waits until the nodes together hold `replicas`; `None` if they do not
/// within [`PATIENCE`].
fn wait_held(fleet: &[Arc<SimNode>], replicas: u64) -> Option<()> {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if held(fleet) == replicas {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
