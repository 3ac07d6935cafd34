//! End-to-end tests of how requests are spread and retried across nodes:
//! a replica that turns slow gets less traffic (peak-EWMA balancing);
//! under an overload, retries stay within the retry budget; a
//! component's `request_timeout` answers 504 in its time. Real control
//! planes and nodes on loopback, driven through the CLI.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;
use support::cluster::{Cluster, Pauser, probe_app};
use support::load::Load;
use support::{get, temp_dir, wait_until};

/// Deploys the probe app "shop" with `replicas` replicas (spread, one per
/// node) and `extra` lines; returns the ingress of a node running none.
fn shop_beside_one_empty_node(cluster: &Cluster, replicas: u32, extra: &str) -> String {
    let dir = temp_dir();
    let app = probe_app(
        dir.path(),
        "shop",
        &format!(
            "{extra}[component.probe.scale]\nreplicas = {replicas}\n\
             [component.probe.placement]\nmemory = \"64MiB\"\n"
        ),
    );
    cluster.cli(&["deploy", &app, "--wait"]);
    cluster.wait_known_everywhere("shop", replicas as usize);
    let running = cluster.wait_running("shop", replicas as usize);
    cluster.node_without(&running).process.url.clone()
}

/// How many of the guest's stdout lines starting with `prefix` each node
/// shipped, once there are `total` of them.
fn lines_per_node(cluster: &Cluster, prefix: &str, total: usize) -> BTreeMap<String, usize> {
    wait_until(Duration::from_secs(30), "every line shipped", || {
        let out = cluster.cli(&["logs", "shop", "-o", "json"]);
        let mut per_node = BTreeMap::new();
        for line in out.lines() {
            let entry: serde_json::Value = serde_json::from_str(line).ok()?;
            if entry["stream"] == "stdout" && entry["line"].as_str()?.starts_with(prefix) {
                *per_node
                    .entry(entry["node"].as_str()?.to_string())
                    .or_insert(0) += 1;
            }
        }
        (per_node.values().sum::<usize>() >= total).then_some(per_node)
    })
}

#[test]
fn a_replica_that_turns_slow_gets_less_traffic() {
    let cluster = Cluster::start(4, &[]);
    let ingress = shop_beside_one_empty_node(&cluster, 3, "");
    let replicas = cluster.replicas("shop");
    let slow_node = replicas[0].1.clone().unwrap();
    // The slow node pauses 60 ms in every 100: its replica answers late.
    let pauser = Pauser::start(
        cluster.node(&slow_node).process.pid(),
        Duration::from_millis(60),
        Duration::from_millis(100),
    );
    let urls: Vec<String> = (0..600).map(|i| format!("{ingress}/log?req-{i}")).collect();
    let load = Load::start(4, &urls, Duration::from_secs(60));
    wait_until(Duration::from_secs(60), "600 requests", || {
        (load.count() >= 600).then_some(())
    });
    let answers = load.stop();
    drop(pauser);
    assert!(
        answers.iter().all(|a| a.status == 200),
        "every request served"
    );
    let per_node = lines_per_node(&cluster, "req-", answers.len());
    let slow = per_node.get(&slow_node).copied().unwrap_or(0);
    let fair = answers.len() / 3;
    println!("requests per node, {slow_node} slow: {per_node:?}");
    assert!(
        slow < fair / 2,
        "the slow replica got {slow} of {} requests (a fair share is {fair}): {per_node:?}",
        answers.len()
    );
}

#[test]
fn retries_under_an_overload_stay_within_the_budget() {
    let cluster = Cluster::start(3, &[]);
    // One request at a time per replica and no queue: most are refused
    // (503) and, being idempotent GETs, could each be retried elsewhere.
    let ingress = shop_beside_one_empty_node(
        &cluster,
        2,
        "[component.probe.limits]\nmax_concurrency = 1\nmax_queued = 0\n",
    );
    let load = Load::start(16, &[format!("{ingress}/sleep?50")], Duration::from_secs(4));
    std::thread::sleep(Duration::from_secs(4));
    let answers = load.stop();
    let served = answers.iter().filter(|a| a.status == 200).count();
    let refused = answers.iter().filter(|a| a.status == 503).count();
    assert_eq!(served + refused, answers.len(), "only served or refused");
    assert!(
        refused > 100,
        "an overload: {refused} refused, {served} served"
    );
    // Every attempt that reached a replica was served or refused there.
    let refusals_at_replicas: usize = cluster
        .nodes
        .iter()
        .map(|n| {
            n.process
                .stderr()
                .lines()
                .filter(|l| l.contains("reason=\"overloaded\""))
                .count()
        })
        .sum();
    let attempts = served + refusals_at_replicas;
    let retries = attempts.saturating_sub(answers.len());
    let budget = answers.len() as f64 * 0.2 + 10.0 * 10.0;
    println!(
        "overload: {} requests, {attempts} attempts, {retries} retries (budget {budget:.0})",
        answers.len()
    );
    assert!(retries > 0, "some were retried");
    assert!(
        (retries as f64) <= budget * 1.05,
        "{retries} retries over a budget of {budget:.0}"
    );
    let ingress_log = cluster
        .nodes
        .iter()
        .find(|n| n.process.url == ingress)
        .unwrap()
        .process
        .stderr();
    assert!(
        ingress_log.contains("reason=\"retry_budget\""),
        "the budget ran out"
    );
}

#[test]
fn a_request_timeout_answers_504_in_its_time() {
    let cluster = Cluster::start(2, &[]);
    let ingress = shop_beside_one_empty_node(&cluster, 1, "request_timeout = \"300ms\"\n");
    let (status, body) = get(&format!("{ingress}/sleep?3000"));
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("request_timeout (300ms)"), "{body}");
    let (status, _) = get(&format!("{ingress}/sleep?10"));
    assert_eq!(status, 200);
}
