//! Benchmark: traffic management under load, on loopback clusters of real
//! control planes and nodes.
//!
//! 1. A rolling update of a component of three replicas over three nodes,
//!    under eight clients sending requests back to back to every node:
//!    requests failed (target 0).
//! 2. A new version whose every request answers 500, deployed under the
//!    same load: time from the first 500 a client saw to the rollback
//!    (target under 5 s), and how many requests failed.
//! 3. One slow replica among three (its node paused 60 ms in every 100),
//!    requests entering through a fourth node: p99 latency with the
//!    peak-EWMA balancer against plain least-in-flight (`skiff node
//!    --balancer in-flight`), by `wrk` with 8 connections; the ratio
//!    (lower is better).
//!
//! `SKIFF_BENCH_SECONDS` sets each `wrk` run (default 10).
//!
//! Run: `cargo bench -p skiff-orchestrator --bench traffic`. Part 3 needs
//! `wrk`.

#[path = "../tests/support/mod.rs"]
mod support;
#[path = "support/mod.rs"]
mod wrk;

use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::cluster::{Cluster, Pauser, probe_app};
use support::load::Load;
use support::{temp_dir, wait_until};
use wrk::{wrk, wrk_available};

/// The probe app "shop": `/version` answers `version V` with `status`.
fn shop(dir: &Path, version: &str, status: u16, replicas: u32) -> String {
    probe_app(
        dir,
        "shop",
        &format!(
            "env = {{ VERSION = \"{version}\", STATUS = \"{status}\" }}\n\
             [component.probe.scale]\nreplicas = {replicas}\n\
             [component.probe.placement]\nmemory = \"64MiB\"\n"
        ),
    )
}

fn main() {
    let seconds: u64 = std::env::var("SKIFF_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    rollouts();
    if wrk_available() {
        slow_replica(seconds);
    } else {
        println!("wrk not found (apt-get install wrk): the balancer comparison is skipped");
    }
}

/// Parts 1 and 2.
fn rollouts() {
    let cluster = Cluster::start(3, &[]);
    let dir = temp_dir();
    cluster.cli(&["deploy", &shop(dir.path(), "1", 200, 3), "--wait"]);
    cluster.wait_known_everywhere("shop", 3);
    let urls: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.process.at("/version"))
        .collect();

    let load = Load::start(8, &urls, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    cluster.cli(&["deploy", &shop(dir.path(), "2", 200, 3), "--wait"]);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let answers = load.stop();
    let failed = answers.iter().filter(|a| a.status != 200).count();
    println!(
        "rolling update, 3 replicas on 3 nodes, 8 clients: {failed} of {} requests failed (target 0); the update took {:.1} s",
        answers.len(),
        took.as_secs_f64()
    );

    let load = Load::start(8, &urls, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(1));
    // Instants to wall-clock time, to compare with the event's.
    let (wall, mono) = (SystemTime::now(), Instant::now());
    let unix_ms = |at: Instant| {
        let wall = if at >= mono {
            wall + (at - mono)
        } else {
            wall - (mono - at)
        };
        wall.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
    };
    cluster.cli(&["deploy", &shop(dir.path(), "3", 500, 3)]);
    let rolled_back_ms = wait_until(Duration::from_secs(60), "the rollback", || {
        cluster
            .json(&["events", "shop"])
            .as_array()?
            .iter()
            .find(|e| e["kind"] == "rolled_back")
            .and_then(|e| e["unix_ms"].as_u64())
    });
    std::thread::sleep(Duration::from_secs(2));
    let answers = load.stop();
    let errors: Vec<_> = answers.iter().filter(|a| a.status == 500).collect();
    match (errors.first(), errors.last()) {
        (Some(first), Some(last)) => println!(
            "bad version: first error to rollback {:.3} s (target < 5 s); {} of {} requests failed, the last {:.3} s after the first",
            rolled_back_ms.saturating_sub(unix_ms(first.at)) as f64 / 1000.0,
            errors.len(),
            answers.len(),
            (last.at - first.at).as_secs_f64()
        ),
        _ => println!("bad version: rolled back before any client saw an error"),
    }
}

/// Part 3: p99 with one slow replica, under each balancer.
fn slow_replica(seconds: u64) {
    let mut p99 = Vec::new();
    for balancer in ["ewma", "in-flight"] {
        let cluster = Cluster::start_with(4, &[], &["--balancer", balancer]);
        let dir = temp_dir();
        cluster.cli(&["deploy", &shop(dir.path(), "1", 200, 3), "--wait"]);
        cluster.wait_known_everywhere("shop", 3);
        let running = cluster.wait_running("shop", 3);
        let ingress = cluster.node_without(&running);
        let slow = cluster.node(running[0].1.as_deref().unwrap());
        let _pauser = Pauser::start(
            slow.process.pid(),
            Duration::from_millis(60),
            Duration::from_millis(100),
        );
        let run = wrk(&ingress.process.at("/version"), 2, 8, seconds);
        println!("  one slow replica of three, {balancer:<9} {run}");
        p99.push(run.p99_ms);
        let view: Value = cluster.json(&["apps"]);
        assert!(view.as_array().is_some_and(|a| !a.is_empty()));
    }
    println!(
        "one slow replica of three: p99 {:.2} ms with peak-EWMA, {:.2} ms with least-in-flight: ratio {:.2} (lower is better)",
        p99[0],
        p99[1],
        p99[0] / p99[1]
    );
}
