//! Benchmark: the cluster's reaction times, with real processes on
//! loopback (a control plane and three nodes on 127.0.0.2-4).
//!
//! - Deploy-to-ready: from starting `skiff deploy` on a new app to its
//!   first 200 through a node's ingress (target under 1 s).
//! - Failover: from `kill -9` of the node running an app's only replica to
//!   the first 200 served by the moved replica through another node's
//!   ingress, with default heartbeat settings (target under 3 s).
//!
//! - Ingress throughput (with `wrk` installed): hello through the ingress
//!   of the node holding its replica, and through another node's ingress,
//!   which forwards every request over the mTLS mesh.
//!
//! Run: `cargo bench -p skiff-orchestrator --bench cluster`.

#[path = "../tests/support/mod.rs"]
mod support;
#[path = "support/mod.rs"]
mod wrk;

use skiff_test_guests::HELLO;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{Running, skiff, temp_dir, toml_path, write_manifest};

const DEPLOY_ROUNDS: usize = 10;
const FAILOVER_ROUNDS: usize = 10;

struct Node {
    name: String,
    process: Running,
}

fn main() {
    let home = temp_dir();
    let data = home.path().join("server");
    let server = Running::launch(
        home.path(),
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        "Control plane serving ",
    );
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| start_node(home.path(), &server.url, i))
        .collect();
    let mut next_node = 4;

    let mut deploys = Vec::new();
    for round in 0..DEPLOY_ROUNDS {
        let app = format!("ready-{round}");
        let dir = app_dir(&app);
        let started = Instant::now();
        cli(home.path(), &["deploy", dir.path().to_str().unwrap()]);
        first_200(&nodes[0].process.url, &app, started);
        deploys.push(started.elapsed());
    }
    report("deploy-to-ready", &mut deploys, Duration::from_secs(1));

    let dir = app_dir("fo");
    cli(
        home.path(),
        &["deploy", dir.path().to_str().unwrap(), "--wait"],
    );
    let mut failovers = Vec::new();
    for _ in 0..FAILOVER_ROUNDS {
        let holder = holder_of(home.path(), "fo");
        let index = nodes.iter().position(|n| n.name == holder).unwrap();
        let mut victim = nodes.remove(index);
        let probe = nodes[0].process.url.clone();
        victim.process.kill();
        let killed = Instant::now();
        first_200(&probe, "fo", killed);
        failovers.push(killed.elapsed());
        // Keep three nodes for the next round.
        nodes.push(start_node(home.path(), &server.url, next_node));
        next_node += 1;
    }
    report("failover", &mut failovers, Duration::from_secs(3));

    if !wrk::wrk_available() {
        println!("ingress throughput: skipped (install wrk)");
        return;
    }
    let dir = temp_dir();
    write_manifest(
        dir.path(),
        &format!(
            "[app]\nname = \"tp\"\n[component.web]\nsource = {}\nroute = \"/tp/...\"\n\
             [component.web.placement]\nmemory = \"64MiB\"\n",
            toml_path(HELLO)
        ),
    );
    cli(
        home.path(),
        &["deploy", dir.path().to_str().unwrap(), "--wait"],
    );
    let holder = holder_of(home.path(), "tp");
    let local = nodes.iter().find(|n| n.name == holder).unwrap();
    let remote = nodes.iter().find(|n| n.name != holder).unwrap();
    let local_run = wrk::wrk(&local.process.at("/tp/"), 2, 32, 10);
    let forwarded_run = wrk::wrk(&remote.process.at("/tp/"), 2, 32, 10);
    println!("ingress, replica on the node:  {local_run}");
    println!("ingress, forwarded over mTLS:  {forwarded_run}");
    println!(
        "forwarded / local: {:.2}x req/s",
        forwarded_run.requests_per_sec / local_run.requests_per_sec
    );
}

fn start_node(home: &Path, api: &str, i: usize) -> Node {
    let token = cli(home, &["join-token"]).trim().to_string();
    let name = format!("node-{i}");
    let listen = format!("127.0.0.{}:0", 2 + (i - 1) % 3);
    let process = Running::launch(
        home,
        &[
            "node",
            "--server",
            api,
            "--token",
            &token,
            "--name",
            &name,
            "--listen",
            &listen,
            "--capacity",
            "4GiB",
        ],
        "serving ingress on ",
    );
    Node { name, process }
}

fn app_dir(name: &str) -> tempfile::TempDir {
    let dir = temp_dir();
    write_manifest(
        dir.path(),
        &format!(
            "[app]\nname = \"{name}\"\n[component.web]\nsource = {}\nroute = \"/...\"\n\
             [component.web.placement]\nmemory = \"64MiB\"\n",
            toml_path(HELLO)
        ),
    );
    dir
}

fn cli(home: &Path, args: &[&str]) -> String {
    let output = skiff(home).args(args).output().expect("running skiff");
    assert!(
        output.status.success(),
        "skiff {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls `ingress` for `app` (chosen by Host) every 2 ms until it answers
/// 200, for at most 30 s.
fn first_200(ingress: &str, app: &str, since: Instant) {
    let agent = support::http();
    let host = format!("{app}.skiff.local");
    while since.elapsed() < Duration::from_secs(30) {
        let answer = agent.get(ingress).header("host", &host).call();
        if answer.is_ok_and(|r| r.status() == 200) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("{app} never answered 200 through {ingress}");
}

fn holder_of(home: &Path, app: &str) -> String {
    let ps: serde_json::Value =
        serde_json::from_str(&cli(home, &["ps", app, "-o", "json"])).unwrap();
    ps[0]["node"]
        .as_str()
        .expect("the replica is placed")
        .to_string()
}

fn report(what: &str, samples: &mut [Duration], target: Duration) {
    samples.sort();
    let median = samples[samples.len() / 2];
    let max = samples[samples.len() - 1];
    println!(
        "{what}: median {:.0} ms, max {:.0} ms over {} rounds (target under {:.0} ms: {})",
        median.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        samples.len(),
        target.as_secs_f64() * 1e3,
        if max < target { "met" } else { "missed" }
    );
}
