//! Benchmark: scheduler throughput, in process and through the API of a
//! running control plane.
//!
//! In process: places 100,000 replicas (2,000 components of 50 replicas,
//! memory reservations from 16 MiB to 256 MiB, a quarter with label
//! constraints, a tenth binpacked) on 5,000 simulated nodes of mixed
//! capacity (2 to 64 GiB) and labels (three zones, two disk kinds) with one
//! call of the scheduler function, and prints placements per second
//! (replicas placed, not requested, over the time) and the replicas that
//! could not be placed. This figure is not comparable to Nomad's C1M
//! (about 3,750 placements/s) or kube-scheduler (about 100-300 pods/s):
//! theirs include network, consensus and API round trips; this one has no
//! I/O at all.
//!
//! Through the API, the comparable figure: starts a real `skiff server`,
//! joins `SKIFF_BENCH_NODES` simulated nodes (default 500) with one-time
//! tokens over the API and keeps them heartbeating over mTLS with the
//! requests `skiff node` sends (they hold their listening addresses but run
//! nothing, serve nothing and pull nothing), then deploys
//! `SKIFF_BENCH_APPS` apps (default 10) of `SKIFF_BENCH_REPLICAS` replicas
//! (default 100) one after another with `skiff deploy`, timing each from
//! the start of the command to the first `GET /v1/replicas?app=` showing
//! every replica on a node, and then scales every app to twice its replicas
//! with `POST /v1/apps/NAME/scale`, timed the same way. It prints
//! placements per second for both, and how long the nodes took to receive
//! their assignments through their heartbeats. The simulated nodes run in
//! this process, on the machine the control plane runs on, so they take
//! CPU from it.
//!
//! Run: `cargo bench -p skiff-orchestrator --bench scheduler`.

#[path = "support/sim.rs"]
mod sim;
#[path = "../tests/support/mod.rs"]
mod support;

use sim::{SimNode, admin_client, join_fleet, poll, settled};
use skiff_orchestrator::api::{NodeView, ReplicaView, ScaleRequest};
use skiff_orchestrator::scheduler::{
    ClusterSnapshot, Decision, NodeInfo, ReplicaRequest, Scheduler, Strategy,
};
use skiff_test_guests::HELLO;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::{skiff, start_server, temp_dir, toml_path, write_manifest};

const NODES: usize = 5_000;
const COMPONENTS: usize = 2_000;
const REPLICAS_EACH: usize = 50;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A small deterministic generator, so every run places the same cluster.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

fn main() {
    in_process();
    println!();
    through_api();
}

/// The scheduler function alone, on 5,000 simulated nodes.
fn in_process() {
    let mut rng = SplitMix(42);
    let zones = ["a", "b", "c"];
    let disks = ["ssd", "hdd"];
    let nodes: Vec<NodeInfo> = (0..NODES)
        .map(|i| NodeInfo {
            pressure: false,
            name: format!("node-{i}"),
            labels: BTreeMap::from([
                ("zone".to_string(), rng.pick(&zones).to_string()),
                ("disk".to_string(), rng.pick(&disks).to_string()),
            ]),
            memory: [2, 4, 8, 16, 32, 64][(rng.next() % 6) as usize] * GIB,
            ready: true,
            cordoned: false,
        })
        .collect();
    let mut requests = Vec::with_capacity(COMPONENTS * REPLICAS_EACH);
    for c in 0..COMPONENTS {
        let memory = [16, 32, 64, 128, 256][(rng.next() % 5) as usize] * MIB;
        let mut required_labels = BTreeMap::new();
        if c % 4 == 0 {
            required_labels.insert("zone".to_string(), rng.pick(&zones).to_string());
        }
        if c % 8 == 0 {
            required_labels.insert("disk".to_string(), "ssd".to_string());
        }
        let strategy = if c % 10 == 0 {
            Strategy::Binpack
        } else {
            Strategy::Spread
        };
        for _ in 0..REPLICAS_EACH {
            requests.push(ReplicaRequest {
                component: format!("app-{}/component-{c}", c / 4),
                memory,
                required_labels: required_labels.clone(),
                strategy,
                prefer: None,
                avoid: Vec::new(),
            });
        }
    }
    let snapshot = ClusterSnapshot {
        nodes,
        running: Vec::new(),
    };
    let scheduler = Scheduler::new();

    // One warm-up pass, then the measured one.
    scheduler.plan(&snapshot, &requests[..10_000]);
    let started = Instant::now();
    let plan = scheduler.plan(&snapshot, &requests);
    let elapsed = started.elapsed();

    let placed = plan
        .decisions
        .iter()
        .filter(|d| matches!(d, Decision::Placed(_)))
        .count();
    let mut per_node = vec![0u32; NODES];
    for decision in &plan.decisions {
        if let Decision::Placed(placement) = decision {
            per_node[placement.node] += 1;
        }
    }
    let busiest = per_node.iter().max().copied().unwrap_or(0);
    println!("in process (the scheduler function alone: no network, no API, no store):");
    println!(
        "  placed {placed} of {} replicas on {NODES} nodes in {:.3} s",
        requests.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "  {:.0} placements/s (placed replicas only; target >= 20,000)",
        placed as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  unschedulable: {} (not counted above); busiest node holds {busiest} replicas (mean {:.1})",
        requests.len() - placed,
        placed as f64 / NODES as f64
    );
    println!(
        "  old-comparable: {:.0} requests/s (replicas requested over the time, as printed before)",
        requests.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  not comparable to Nomad C1M (~3,750 placements/s) or kube-scheduler (~100-300 pods/s): their figures include network, consensus and API round trips; this one has none (see the figure through the API below)"
    );
}

/// Memory each simulated node offers, and each replica reserves.
const SIM_NODE_MEMORY: u64 = 4 * GIB;
const REPLICA_MEMORY: &str = "64MiB";
/// How often the API is polled for progress.
const POLL_EVERY: Duration = Duration::from_millis(10);
/// How long any one wait of the run through the API may take.
const PATIENCE: Duration = Duration::from_secs(120);

/// A real control plane, simulated nodes, and apps deployed with the CLI.
fn through_api() {
    let nodes = env_or("SKIFF_BENCH_NODES", 500);
    let apps = env_or("SKIFF_BENCH_APPS", 10);
    let replicas = env_or("SKIFF_BENCH_REPLICAS", 100);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let home = temp_dir();
    let server = start_server(home.path(), "127.0.0.1:0", &[]);
    let admin = runtime.block_on(admin_client(home.path()));

    // Joins first, then heartbeats: as many nodes started at once would.
    let started = Instant::now();
    let ready = |views: &[NodeView]| views.iter().filter(|n| n.state == "ready").count();
    let fleet = join_fleet(
        &runtime,
        &admin,
        &server.url,
        nodes,
        SIM_NODE_MEMORY,
        1,
        PATIENCE,
    );
    println!(
        "through the API of a running control plane ({nodes} simulated nodes joined over the API and ready after {:.1} s):",
        started.elapsed().as_secs_f64()
    );

    // Deploys, one after another.
    let mut deploy_time = Duration::ZERO;
    let mut placed_by_deploy = 0;
    let mut unschedulable = 0;
    let mut delivered = Duration::ZERO;
    for i in 0..apps {
        let name = format!("sched-{i}");
        let dir = temp_dir();
        write_manifest(
            dir.path(),
            &format!(
                "[app]\nname = \"{name}\"\n[component.web]\nsource = {}\nroute = \"/{name}/...\"\n\
                 [component.web.scale]\nreplicas = {replicas}\n\
                 [component.web.placement]\nmemory = \"{REPLICA_MEMORY}\"\n",
                toml_path(HELLO)
            ),
        );
        let begun = Instant::now();
        let output = skiff(home.path())
            .args(["deploy", dir.path().to_str().unwrap()])
            .output()
            .expect("running skiff deploy");
        assert!(
            output.status.success(),
            "skiff deploy: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let path = format!("/v1/replicas?app={name}");
        let (placed, pending) = poll(
            &runtime,
            &admin,
            &path,
            POLL_EVERY,
            PATIENCE,
            |views: Vec<ReplicaView>| settled(&views, replicas),
        );
        deploy_time += begun.elapsed();
        placed_by_deploy += placed;
        unschedulable += pending;
        if wait_delivered(&fleet, placed_by_deploy).is_none() {
            println!(
                "  sched-{i}: the nodes did not all hold their assignments within {PATIENCE:?}"
            );
        }
        delivered += begun.elapsed();
    }
    println!(
        "  skiff deploy: {placed_by_deploy} replicas placed ({apps} apps of {replicas}, one deploy after another) in {:.3} s: {:.0} placements/s; unschedulable: {unschedulable}",
        deploy_time.as_secs_f64(),
        placed_by_deploy as f64 / deploy_time.as_secs_f64()
    );
    println!(
        "    includes the CLI packaging each app and uploading what the control plane lacks, the deploy request, the controller placing and storing the replicas, and a GET /v1/replicas showing all placed"
    );
    println!(
        "    every node held its assignments (through its heartbeat) {:.3} s after the deploys started, in total: {:.0} placements/s",
        delivered.as_secs_f64(),
        placed_by_deploy as f64 / delivered.as_secs_f64()
    );

    // Scaling every app to twice its replicas, through the HTTP API.
    let total = 2 * apps * replicas;
    let begun = Instant::now();
    runtime.block_on(async {
        for i in 0..apps {
            let _: serde_json::Value = admin
                .post(
                    &format!("/v1/apps/sched-{i}/scale"),
                    &ScaleRequest {
                        component: "web".to_string(),
                        replicas: Some(2 * replicas as u32),
                        ..ScaleRequest::default()
                    },
                )
                .await
                .expect("scaling");
        }
    });
    let (placed, pending) = poll(
        &runtime,
        &admin,
        "/v1/replicas",
        POLL_EVERY,
        PATIENCE,
        |views: Vec<ReplicaView>| settled(&views, total),
    );
    let scale_time = begun.elapsed();
    let delivered = wait_delivered(&fleet, placed).map(|()| begun.elapsed());
    let added = placed.saturating_sub(placed_by_deploy);
    println!(
        "  POST /v1/apps/NAME/scale to {} replicas each: {added} more placed in {:.3} s: {:.0} placements/s; unschedulable: {pending}",
        2 * replicas,
        scale_time.as_secs_f64(),
        added as f64 / scale_time.as_secs_f64()
    );
    println!(
        "    includes the scale requests, the controller placing and storing the replicas, and GET /v1/replicas polled until all placed; {}",
        match delivered {
            Some(d) => format!("nodes held them after {:.3} s", d.as_secs_f64()),
            None => format!("the nodes did not all hold their assignments within {PATIENCE:?}"),
        }
    );
    let errors: u64 = fleet.iter().map(|n| n.errors.load(Ordering::Relaxed)).sum();
    let views: Vec<NodeView> = runtime.block_on(admin.get("/v1/nodes")).unwrap();
    let log = server.stderr();
    let downs = log.matches("node is down").count();
    if let Some(first) = log.lines().find(|l| l.contains("node is down")) {
        println!(
            "  the control plane's first \"node is down\": {}",
            first.trim()
        );
    }
    println!(
        "  nodes ready at the end: {} of {nodes}; nodes taken for down during the run: {downs}; failed heartbeats: {errors}",
        ready(&views)
    );
    println!(
        "  comparable in kind to Nomad C1M (~3,750 placements/s) and kube-scheduler (~100-300 pods/s): each counts placements made through an API and stored; theirs also include consensus among several servers and real networks, this one is one control plane on loopback, with nodes that start nothing"
    );
    drop(server);
}

/// Waits until the nodes together hold `replicas` replicas in the
/// assignments their heartbeats brought; `None` if they do not within
/// [`PATIENCE`].
fn wait_delivered(fleet: &[Arc<SimNode>], replicas: usize) -> Option<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let held: u64 = fleet.iter().map(|n| n.held.load(Ordering::Relaxed)).sum();
        if held == replicas as u64 {
            return Some(());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
