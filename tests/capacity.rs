//! End to end: what a replica reserves (a few instances of its component,
//! not its limits), what nodes offer and may overcommit, and a node short
//! of real memory refusing new instances and new replicas until it
//! recovers.

mod support;

use serde_json::Value;
use skiff_runtime::reservation::{self, EXPECTED_INSTANCES, INSTANCE_OVERHEAD};
use skiff_test_guests::{EXAMPLES_DIR, HELLO, HOSTILE};
use std::time::Duration;
use support::cluster::{Cluster, get_as_host};
use support::{temp_dir, toml_path, wait_until, write_manifest};

const MIB: u64 = 1 << 20;

/// The one node of `cluster`, as `skiff nodes -o json` shows it.
fn the_node(cluster: &Cluster) -> Value {
    cluster.json(&["nodes"]).as_array().unwrap()[0].clone()
}

#[test]
fn hello_reserves_a_few_instances_so_a_one_gib_node_holds_hundreds() {
    let cluster = Cluster::start(1, &["--overcommit", "1.5"]);
    let hello = format!("{EXAMPLES_DIR}/hello");
    cluster.cli(&["deploy", &hello, "--wait"]);

    // The default reservation: two instances of hello's initial memory
    // plus their overhead; nowhere near its limits (12.5 GiB).
    let initial = reservation::initial_memory(&std::fs::read(HELLO).unwrap()).unwrap();
    assert!(
        initial > 0 && initial < 8 * MIB,
        "hello starts with {initial} bytes"
    );
    let node = the_node(&cluster);
    let reserved = node["reserved"].as_u64().unwrap();
    assert_eq!(reserved, EXPECTED_INSTANCES * (initial + INSTANCE_OVERHEAD));
    assert!(
        (1 << 30) / reserved >= 200,
        "a 1 GiB node holds only {} hello replicas",
        (1 << 30) / reserved
    );
    // Overcommit 1.5: replicas may reserve 1.5 GiB of the 1 GiB offered.
    assert_eq!(node["memory"].as_u64(), Some(1 << 30));
    assert_eq!(node["placeable"].as_u64(), Some(3 << 29));
    // The node reports what it really uses: its resident memory.
    let used = node["used"].as_u64().unwrap();
    assert!(used > 4 * MIB && used < 1 << 30, "node uses {used} bytes");
    assert_eq!(node["pressure"], false);
    let table = cluster.cli(&["nodes"]);
    for column in ["RESERVED", "USED", "OFFERED"] {
        assert!(table.contains(column), "{table}");
    }
    assert!(table.contains("/1.5 GiB"), "{table}");

    // A replica reserving 1.2 GiB fits only thanks to the overcommit; one
    // reserving 2 GiB does not, and says what to do.
    let dir = temp_dir();
    let big = |name: &str, memory: &str| {
        write_manifest(
            dir.path(),
            &format!(
                "[app]\nname = \"{name}\"\n[component.web]\nsource = {}\n\
                 [component.web.placement]\nmemory = \"{memory}\"\n",
                toml_path(HELLO)
            ),
        );
        cluster.cli(&["deploy", dir.path().to_str().unwrap()]);
    };
    big("roomy", "1200MiB");
    cluster.wait_running("roomy", 1);
    // Scaled past what fits: the scale says which replica waits, and why.
    let (_, warned) = cluster.cli_with_stderr(&["scale", "roomy", "2"]);
    assert!(
        warned.contains("warning: roomy/web/1 cannot be placed: ")
            && warned.contains("insufficient memory"),
        "{warned}"
    );
    // Asked again, it says so again; several replicas share one warning.
    let (again, warned) = cluster.cli_with_stderr(&["scale", "roomy", "2"]);
    assert!(again.contains("already has 2 replicas"), "{again}");
    assert!(
        warned.contains("warning: roomy/web/1 cannot be placed: "),
        "{warned}"
    );
    let (_, warned) = cluster.cli_with_stderr(&["scale", "roomy", "6"]);
    assert!(
        warned.contains(
            "warning: 5 replicas (roomy/web/1, roomy/web/2, roomy/web/3 and 2 more) cannot be placed: "
        ),
        "{warned}"
    );
    assert_eq!(warned.matches("warning:").count(), 1, "{warned}");
    cluster.cli(&["scale", "roomy", "1"]);
    big("huge", "2GiB");
    let reason = wait_until(Duration::from_secs(30), "huge to be pending", || {
        let ps = cluster.json(&["ps", "huge"]);
        ps[0]["reason"].as_str().map(str::to_string)
    });
    assert!(
        reason.contains("insufficient memory") && reason.contains("--overcommit"),
        "{reason}"
    );
}

#[test]
fn an_overcommit_below_one_or_absurd_is_refused() {
    let home = temp_dir();
    for ratio in ["0.5", "11", "NaN"] {
        let err = support::expect_failure(
            home.path(),
            &["server", "--listen", "127.0.0.1:0", "--overcommit", ratio],
        );
        assert!(
            err.contains("--overcommit must be from 1.0"),
            "{ratio}: {err}"
        );
    }
}

/// A control plane and one node, `node-1`, offering `capacity`.
fn one_node_offering(capacity: &str) -> Cluster {
    let mut cluster = Cluster::start(0, &[]);
    let token = cluster.cli(&["join-token"]).trim().to_string();
    let node = cluster.launch_node(
        "node-1",
        &[
            "--token",
            &token,
            "--listen",
            "127.0.0.2:0",
            "--capacity",
            capacity,
        ],
    );
    cluster.nodes.push(node);
    cluster
}

#[test]
fn a_node_short_of_memory_refuses_new_instances_and_takes_no_new_replicas() {
    // The node offers 160 MiB; its own resident memory stays well below
    // that until a guest fills 256 MiB.
    let cluster = one_node_offering("160MiB");
    let ingress = cluster.nodes[0].process.url.clone();
    let dir = temp_dir();
    let deploy = |name: &str, source: &str, memory_limit: &str| {
        write_manifest(
            dir.path(),
            &format!(
                "[app]\nname = \"{name}\"\n[component.web]\nsource = {}\nroute = \"/...\"\n\
                 [component.web.limits]\nmemory = \"{memory_limit}\"\n\
                 [component.web.placement]\nmemory = \"16MiB\"\n",
                toml_path(source)
            ),
        );
        cluster.cli(&["deploy", dir.path().to_str().unwrap()]);
    };
    deploy("hog", HOSTILE, "512MiB");
    deploy("calm", HELLO, "128MiB");
    cluster.wait_running("hog", 1);
    cluster.wait_running("calm", 1);
    let calm = |path: &str| get_as_host(&ingress, Some("calm.localhost"), path);
    assert_eq!(calm("/").0, 200);
    assert_eq!(the_node(&cluster)["pressure"], false);

    // A guest fills 256 MiB and holds it: the node is past what it offers.
    let hog_ingress = ingress.clone();
    let hog = std::thread::spawn(move || {
        get_as_host(&hog_ingress, Some("hog.localhost"), "/hold?256&15000")
    });
    wait_until(
        Duration::from_secs(15),
        "the node to report pressure",
        || (the_node(&cluster)["pressure"] == true).then_some(()),
    );
    let (status, body) = calm("/");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("short of memory"), "{body}");
    // The refusal is logged with its reason; the log line may reach the
    // test's reader of the node's stderr just after the response.
    cluster.nodes[0]
        .process
        .wait_for_stderr("reason=\"memory_pressure\"");
    // A new app gets no replica there while the pressure lasts.
    deploy("late", HELLO, "128MiB");
    let reason = wait_until(Duration::from_secs(10), "late to be pending", || {
        cluster.json(&["ps", "late"])[0]["reason"]
            .as_str()
            .map(str::to_string)
    });
    assert!(reason.contains("under memory pressure"), "{reason}");
    let table = cluster.cli(&["nodes"]);
    assert!(table.contains("(memory pressure)"), "{table}");

    // The guest answers and its memory goes back: the node serves again
    // and takes the waiting replica.
    assert_eq!(hog.join().unwrap(), (200, "held 256 MiB".to_string()));
    wait_until(Duration::from_secs(15), "the pressure to end", || {
        (the_node(&cluster)["pressure"] == false).then_some(())
    });
    assert_eq!(calm("/").0, 200);
    cluster.wait_running("late", 1);
}

#[test]
fn a_node_offering_less_than_its_own_process_uses_is_warned() {
    let cluster = one_node_offering("16MiB");
    let node = &cluster.nodes[0];
    node.process
        .wait_for_stderr("--capacity 16.0 MiB is below the ");
    assert!(
        node.process
            .stderr()
            .contains("refuses every instance; offer more"),
        "{}",
        node.process.stderr()
    );
}

#[test]
fn a_node_restarted_without_capacity_offers_what_it_declared_at_join() {
    let mut cluster = Cluster::start(1, &[]);
    let mut node = cluster.nodes.pop().unwrap();
    node.process.kill();
    // Started again as the README says: --capacity is given once, at join.
    let listen = node.process.url.trim_start_matches("http://").to_string();
    let restarted = support::Running::launch(
        cluster.home(),
        &[
            "node",
            "--server",
            &cluster.api,
            "--name",
            "node-1",
            "--listen",
            &listen,
            "--labels",
            "zone=z1",
        ],
        "serving ingress on ",
    );
    wait_until(
        Duration::from_secs(15),
        "the node to be ready again",
        || (the_node(&cluster)["state"] == "ready").then_some(()),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(the_node(&cluster)["memory"], 1024 * MIB);
    let stderr = restarted.stderr();
    assert!(!stderr.contains("but declared"), "{stderr}");
}
