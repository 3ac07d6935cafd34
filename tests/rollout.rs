//! End-to-end tests of rollouts, under a bounded load loop each: a rolling
//! update across three nodes that fails no request; a new version that
//! answers 500 rolled back by itself while the old one keeps serving; a
//! version that cannot start never taking traffic, `deploy --wait` saying
//! why, and `skiff rollback` by hand; a 10% canary getting 10% of
//! requests, then promoted. Real control planes and nodes on loopback,
//! driven through the CLI.

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use support::cluster::{Cluster, probe_app};
use support::load::{Answer, Load};
use support::{temp_dir, wait_until};

/// The probe app "shop" whose `/version` answers `version V` with
/// `status`, at `replicas` replicas of 64 MiB; `extra` adds lines to its
/// component (keys first, then tables).
fn shop(dir: &Path, version: &str, status: u16, replicas: u32, extra: &str) -> String {
    probe_app(
        dir,
        "shop",
        &format!(
            "env = {{ VERSION = \"{version}\", STATUS = \"{status}\" }}\n{extra}\
             [component.probe.scale]\nreplicas = {replicas}\n\
             [component.probe.placement]\nmemory = \"64MiB\"\n"
        ),
    )
}

/// `/version` at every node's ingress.
fn urls(cluster: &Cluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .map(|n| n.process.at("/version"))
        .collect()
}

/// "shop" as `skiff apps -o json` shows it.
fn shop_view(cluster: &Cluster) -> Value {
    cluster
        .json(&["apps"])
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "shop")
        .unwrap()
        .clone()
}

/// Starts a load of three clients over every node, and waits until it
/// has had some answers.
fn steady_load(cluster: &Cluster) -> Load {
    let load = Load::start(3, &urls(cluster), Duration::from_secs(120));
    wait_until(Duration::from_secs(10), "the load to flow", || {
        (load.count() >= 30).then_some(())
    });
    load
}

/// Answers that were not `200 version V` for a good `V`, described.
fn failures(answers: &[Answer]) -> Vec<String> {
    answers
        .iter()
        .filter(|a| a.status != 200)
        .map(|a| format!("{} {:?}", a.status, a.body))
        .collect()
}

/// Waits until every node answers `version V` to `/version`.
fn wait_serving_version(cluster: &Cluster, version: &str) {
    for url in urls(cluster) {
        wait_until(
            Duration::from_secs(30),
            &format!("{url} to serve {version}"),
            || {
                let (status, body) = support::get(&url);
                (status == 200 && body == format!("version {version}")).then_some(())
            },
        );
    }
}

/// The kinds of events `skiff events shop` lists.
fn event_kinds(cluster: &Cluster) -> Vec<String> {
    cluster
        .json(&["events", "shop"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_rolling_update_across_three_nodes_fails_no_request() {
    let cluster = Cluster::start(3, &[]);
    let dir = temp_dir();
    cluster.cli(&["deploy", &shop(dir.path(), "1", 200, 3, ""), "--wait"]);
    cluster.wait_known_everywhere("shop", 3);
    let load = steady_load(&cluster);

    let out = cluster.cli(&["deploy", &shop(dir.path(), "2", 200, 3, ""), "--wait"]);
    assert!(out.contains("rolling out"), "{out}");
    wait_serving_version(&cluster, "2");
    let answers = load.stop();

    let failed = failures(&answers);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rollout: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(10)]
    );
    let served = |v: &str| answers.iter().filter(|a| a.body == v).count();
    assert!(served("version 1") > 0 && served("version 2") > 0);
    println!(
        "rolling update of 3 replicas over 3 nodes: {} requests, {} failed",
        answers.len(),
        failed.len()
    );
    // Every replica runs the new version; the events tell the story.
    let view = shop_view(&cluster);
    let replicas = cluster.json(&["ps", "shop"]);
    let replicas = replicas.as_array().unwrap();
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    let package = view["package"].as_str().unwrap();
    let digits = &package.trim_start_matches("sha256:")[..12];
    assert!(
        replicas
            .iter()
            .all(|r| r["version"].as_str().unwrap().contains(digits)),
        "{replicas:?}"
    );
    let kinds = event_kinds(&cluster);
    assert!(kinds.contains(&"rollout_started".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"rollout_done".to_string()), "{kinds:?}");
}

#[test]
fn a_version_answering_500_is_rolled_back_by_itself_and_the_old_keeps_serving() {
    let cluster = Cluster::start(3, &[]);
    let dir = temp_dir();
    cluster.cli(&["deploy", &shop(dir.path(), "1", 200, 3, ""), "--wait"]);
    cluster.wait_known_everywhere("shop", 3);
    let load = steady_load(&cluster);

    // The new version gets its share of requests as soon as a replica is
    // ready, fails them, and replaces no old replica meanwhile.
    let refused = cluster.cli_fails(&["deploy", &shop(dir.path(), "2", 500, 3, ""), "--wait"]);
    assert!(refused.contains("was rolled back"), "{refused}");
    let view = wait_until(Duration::from_secs(30), "the rollback", || {
        let view = shop_view(&cluster);
        view["rollout"].is_null().then_some(view)
    });
    let bad = view["rolled_back"]["package"].as_str().unwrap().to_string();
    let reason = view["rolled_back"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("requests failed") && reason.contains("status_500"),
        "{reason}"
    );
    assert_ne!(view["package"], bad.as_str(), "back on the old version");
    wait_serving_version(&cluster, "1");
    let after_rollback = Instant::now();
    wait_until(Duration::from_secs(10), "more requests", || {
        (load.count() > 0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let answers = load.stop();

    let errors: Vec<&Answer> = answers.iter().filter(|a| a.status == 500).collect();
    assert!(
        !errors.is_empty(),
        "the bad version was given some requests"
    );
    let late: Vec<String> = failures(
        &answers
            .iter()
            .filter(|a| a.at > after_rollback)
            .cloned()
            .collect::<Vec<_>>(),
    );
    assert!(late.is_empty(), "failures after the rollback: {late:?}");
    let rolled_back_at = cluster
        .json(&["events", "shop"])
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "rolled_back")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .expect("a rolled_back event");
    assert!(
        rolled_back_at.contains("rolled back to"),
        "{rolled_back_at}"
    );
    let first = errors.first().unwrap().at;
    let last = errors.last().unwrap().at;
    println!(
        "bad version: {} of {} requests failed, over {:.2}s from the first error to the last",
        errors.len(),
        answers.len(),
        (last - first).as_secs_f64()
    );
}

#[test]
fn a_version_that_cannot_start_never_takes_traffic_and_rollback_by_hand_walks_back() {
    let cluster = Cluster::start(2, &[]);
    let dir = temp_dir();
    cluster.cli(&["deploy", &shop(dir.path(), "1", 200, 2, ""), "--wait"]);
    cluster.wait_known_everywhere("shop", 2);
    let load = steady_load(&cluster);

    // A memory limit too small for the guest to start: every request to
    // it would fail. It is found before it is given any.
    let starved = shop(
        dir.path(),
        "2",
        200,
        2,
        "[component.probe.limits]\nmemory = \"64KiB\"\n",
    );
    let refused = cluster.cli_fails(&["deploy", &starved, "--wait"]);
    assert!(refused.contains("was rolled back"), "{refused}");
    assert!(refused.contains("cannot be instantiated"), "{refused}");
    let answers = load.stop();
    let failed = failures(&answers);
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(answers.iter().all(|a| a.body == "version 1"));
    let apps = cluster.cli(&["apps"]);
    assert!(apps.contains("was rolled back"), "{apps}");

    // A good version, then back by hand, then nothing further back.
    cluster.cli(&["deploy", &shop(dir.path(), "3", 200, 2, ""), "--wait"]);
    wait_serving_version(&cluster, "3");
    let back = cluster.cli(&["rollback", "shop"]);
    assert!(back.contains("rolling back"), "{back}");
    wait_serving_version(&cluster, "1");
    wait_until(Duration::from_secs(30), "the rollback to finish", || {
        shop_view(&cluster)["rollout"].is_null().then_some(())
    });
    let none = cluster.cli_fails(&["rollback", "shop"]);
    assert!(none.contains("no earlier version"), "{none}");
    let promote = cluster.cli_fails(&["promote", "shop"]);
    assert!(promote.contains("no canary"), "{promote}");
}

/// Where the old version's replica of a canary runs, as `skiff ps`
/// shows it, when it runs; `canary` is the start of the canary's digest.
fn old_version_running_on(cluster: &Cluster, canary: &str) -> Option<String> {
    let replicas = cluster.json(&["ps", "shop"]);
    let old = replicas
        .as_array()?
        .iter()
        .find(|r| !r["version"].as_str().unwrap_or("").contains(canary))?;
    (old["state"] == "running").then(|| old["node"].as_str().map(str::to_string))?
}

#[test]
fn a_replica_of_the_old_version_moved_during_a_canary_fetches_and_runs_its_own_version() {
    let cluster = Cluster::start(3, &[]);
    let dir = temp_dir();
    cluster.cli(&["deploy", &shop(dir.path(), "1", 200, 1, ""), "--wait"]);
    cluster.cli(&[
        "deploy",
        &shop(dir.path(), "2", 200, 1, ""),
        "--canary",
        "50",
        "--canary-interval",
        "1h",
    ]);
    let canary =
        shop_view(&cluster)["package"].as_str().unwrap()["sha256:".len()..][..12].to_string();
    let first = wait_until(Duration::from_secs(30), "the old version running", || {
        old_version_running_on(&cluster, &canary)
    });
    // Its node drained, the old version's replica goes to a node that
    // never held that version, which must be let fetch it.
    cluster.cli(&["drain", &first]);
    let moved = wait_until(
        Duration::from_secs(60),
        "the old version running elsewhere",
        || old_version_running_on(&cluster, &canary).filter(|node| *node != first),
    );
    assert_ne!(moved, first);
    let view = shop_view(&cluster);
    assert_eq!(view["rollout"]["share"], 50, "{view}");
}

#[test]
fn a_ten_percent_canary_gets_ten_percent_of_requests_then_is_promoted() {
    let cluster = Cluster::start(3, &[]);
    let dir = temp_dir();
    cluster.cli(&["deploy", &shop(dir.path(), "1", 200, 2, ""), "--wait"]);
    let refused = cluster.cli_fails(&[
        "deploy",
        &shop(dir.path(), "2", 200, 2, ""),
        "--canary",
        "150",
    ]);
    assert!(refused.contains("150"), "{refused}");
    let out = cluster.cli(&[
        "deploy",
        &shop(dir.path(), "2", 200, 2, ""),
        "--canary",
        "10",
        "--canary-interval",
        "1h",
    ]);
    assert!(out.contains("canary"), "{out}");
    // One replica of the canary beside the two of the old version, and
    // every node told to split.
    cluster.wait_known_everywhere("shop", 3);
    for node in &cluster.nodes {
        wait_until(Duration::from_secs(30), "the split everywhere", || {
            let desired = cluster.desired_state(&node.name)?;
            let shop = desired["apps"]
                .as_array()?
                .iter()
                .find(|a| a["name"] == "shop")?
                .clone();
            shop["split"]["probe"][1]
                .as_u64()
                .filter(|share| *share == 10)
        });
    }
    let load = Load::start(3, &urls(&cluster), Duration::from_secs(60));
    wait_until(Duration::from_secs(60), "2,000 requests", || {
        (load.count() >= 2_000).then_some(())
    });
    let answers = load.stop();
    let answers = &answers[..2_000];
    assert!(failures(answers).is_empty(), "{:?}", failures(answers));
    let canary = answers.iter().filter(|a| a.body == "version 2").count();
    println!("canary at 10%: {canary} of 2000 requests");
    assert!(
        (140..=260).contains(&canary),
        "10% of 2,000 is 200 (within 3 points: 140 to 260), got {canary}"
    );
    let view = shop_view(&cluster);
    assert_eq!(view["rollout"]["share"], 10, "{view}");
    let promoted = cluster.cli(&["promote", "shop"]);
    assert!(promoted.contains("promoted"), "{promoted}");
    wait_serving_version(&cluster, "2");
    wait_until(Duration::from_secs(30), "the old version gone", || {
        let replicas = cluster.json(&["ps", "shop"]);
        let view = shop_view(&cluster);
        let package = view["package"].as_str()?.trim_start_matches("sha256:")[..12].to_string();
        replicas
            .as_array()?
            .iter()
            .all(|r| r["version"].as_str().is_some_and(|v| v.contains(&package)))
            .then_some(())
    });
}

#[test]
fn a_request_timeout_too_tight_for_the_new_version_rolls_it_back_and_spares_the_old() {
    let cluster = Cluster::start(3, &[]);
    let dir = temp_dir();
    cluster.cli(&["deploy", &shop(dir.path(), "1", 200, 3, ""), "--wait"]);
    cluster.wait_known_everywhere("shop", 3);
    let urls: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.process.at("/sleep?200"))
        .collect();
    let load = Load::start(3, &urls, Duration::from_secs(120));
    wait_until(Duration::from_secs(10), "the load to flow", || {
        (load.count() >= 10).then_some(())
    });
    // The new version asks callers to give up after 100 ms, which a 200 ms
    // request never meets: while it rolls out the old version keeps the
    // looser limit (none); once it runs everywhere its own applies, its
    // requests fail, and it is rolled back.
    cluster.cli(&[
        "deploy",
        &shop(dir.path(), "2", 200, 3, "request_timeout = \"100ms\"\n"),
    ]);
    let view = wait_until(Duration::from_secs(60), "the rollback", || {
        let view = shop_view(&cluster);
        (view["rolled_back"].is_object() && view["rollout"].is_null()).then_some(view)
    });
    let reason = view["rolled_back"]["reason"].as_str().unwrap();
    assert!(reason.contains("request_timeout"), "{reason}");
    let answers = load.stop();
    let timed_out = answers.iter().filter(|a| a.status == 504).count();
    assert!(
        timed_out < answers.len() / 2,
        "{timed_out} of {} timed out",
        answers.len()
    );
}
