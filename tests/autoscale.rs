//! End-to-end tests of autoscaling: replicas added across nodes as
//! concurrency rises and removed after `scale_down_delay`, components
//! scaled to zero whose requests are held (not refused) until a replica
//! is ready, through a node without one and through `skiff up`, a hold
//! past its limit answered 503, and `skiff scale` pinning and bounding.
//! Real control planes and nodes on loopback, driven through the CLI.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::cluster::{Cluster, nodes_of, one_at_a_time, probe_app, replica_count};
use support::load::Load;
use support::{Running, get, http, temp_dir, wait_until};

/// The events `skiff events APP -o json` lists.
fn events(cluster: &Cluster, app: &str) -> Vec<Value> {
    cluster.json(&["events", app]).as_array().unwrap().clone()
}

#[test]
fn concurrency_past_the_target_adds_replicas_across_nodes_and_quiet_removes_them() {
    let cluster = Cluster::start(3, &[]);
    let dir = temp_dir();
    // Two instances at once per replica, so a target of 2 (70%, rounded
    // up); replicas of 64 MiB, three nodes of 1 GiB.
    let app = probe_app(
        dir.path(),
        "busy",
        "[component.probe.limits]\nmax_concurrency = 2\n\
         [component.probe.scale]\nmin = 1\nmax = 3\nscale_down_delay = \"3s\"\n\
         [component.probe.placement]\nmemory = \"64MiB\"\n",
    );
    cluster.cli(&["deploy", &app, "--wait"]);
    assert_eq!(cluster.wait_running("busy", 1).len(), 1);
    let apps = cluster.json(&["apps"]);
    let autoscale = &apps[0]["components"][0]["autoscale"];
    assert_eq!(
        (
            &autoscale["min"],
            &autoscale["max"],
            &autoscale["target_concurrency"]
        ),
        (&Value::from(1), &Value::from(3), &Value::from(2))
    );

    // Twelve clients at once on one node's ingress, each request 100 ms:
    // about twelve in flight, six times the target for one replica.
    let ingress = cluster.nodes[0].process.url.clone();
    let load = Load::start(
        12,
        &[format!("{ingress}/sleep?100")],
        Duration::from_secs(60),
    );
    let started = Instant::now();
    let replicas = wait_until(Duration::from_secs(15), "three running replicas", || {
        let replicas = cluster.replicas("busy");
        let running = replicas.iter().filter(|r| r.2 == "running").count();
        (running == 3).then_some(replicas)
    });
    let took = started.elapsed();
    // Keep the load on a little while the new replicas serve.
    std::thread::sleep(Duration::from_secs(2));
    let statuses: Vec<u16> = load.stop().iter().map(|a| a.status).collect();
    assert_eq!(nodes_of(&replicas).len(), 3, "spread: {replicas:?}");
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty() && statuses.len() > 50,
        "{} of {} requests failed ({failed:?}); scaled out in {took:?}",
        failed.len(),
        statuses.len()
    );
    let scaled = events(&cluster, "busy");
    let up = scaled
        .iter()
        .find(|e| e["kind"] == "scaled")
        .unwrap_or_else(|| panic!("{scaled:?}"));
    let message = up["message"].as_str().unwrap();
    assert!(
        message.starts_with("busy/probe 1 -> ") && message.contains("over target 2 per replica"),
        "{message}"
    );
    assert!(
        scaled
            .iter()
            .any(|e| e["kind"] == "placed" && e["message"].as_str().unwrap().contains("spread=")),
        "{scaled:?}"
    );

    // Quiet: back to one replica once the delay has passed, not before.
    let quiet = Instant::now();
    wait_until(Duration::from_secs(15), "one replica again", || {
        (cluster.replicas("busy").len() == 1).then_some(())
    });
    assert!(
        quiet.elapsed() >= Duration::from_secs(2),
        "scaled down after {:?}, before the 3s delay",
        quiet.elapsed()
    );
    // Down in one step, or two while the window's peak fades out.
    let down = events(&cluster, "busy");
    let last = down
        .iter()
        .rev()
        .find(|e| e["kind"] == "scaled")
        .and_then(|e| e["message"].as_str())
        .unwrap_or_default();
    assert!(
        last.starts_with("busy/probe ") && last.contains(" -> 1: "),
        "{down:?}"
    );
}

#[test]
fn a_component_scaled_to_zero_serves_a_request_held_on_a_node_without_a_replica() {
    let cluster = Cluster::start(3, &[]);
    let dir = temp_dir();
    let app = probe_app(
        dir.path(),
        "cold",
        "allow_callers = [\"front/*\"]\n\
         [component.probe.scale]\nmin = 0\nmax = 2\nscale_down_delay = \"1s\"\n\
         [component.probe.placement]\nmemory = \"64MiB\"\n",
    );
    // A new version starts one replica (its load checked by --wait), and
    // with no request goes to zero after the delay.
    let deployed = cluster.cli(&["deploy", &app, "--wait"]);
    assert!(deployed.contains("app \"cold\" created"), "{deployed}");
    assert!(
        deployed.contains("scales to zero without requests: cold/probe after 1s"),
        "{deployed}"
    );
    assert!(
        events(&cluster, "cold")
            .iter()
            .any(|e| e["kind"] == "placed"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("cold/probe/0 on ")),
        "the deploy started one replica"
    );
    wait_until(Duration::from_secs(10), "no replica", || {
        cluster.replicas("cold").is_empty().then_some(())
    });
    assert!(
        events(&cluster, "cold")
            .iter()
            .any(|e| e["message"] == "cold/probe 1 -> 0: no requests for 1s")
    );
    cluster.wait_known_everywhere("cold", 0);

    // Through node-2: held, a replica placed there, served.
    let (status, body) = get(&format!("{}/sleep?1", cluster.nodes[1].process.url));
    assert_eq!((status, body.as_str()), (200, "slept 1ms"));
    let replicas = cluster.replicas("cold");
    assert_eq!(
        nodes_of(&replicas),
        vec!["node-2".to_string()],
        "{replicas:?}"
    );
    let woke = events(&cluster, "cold");
    assert!(
        woke.iter()
            .any(|e| e["message"] == "cold/probe 0 -> 1: 1 request waiting for a replica"),
        "{woke:?}"
    );

    // Idle again: to zero after the delay; then through node-3.
    wait_until(Duration::from_secs(10), "no replica", || {
        cluster.replicas("cold").is_empty().then_some(())
    });
    cluster.wait_known_everywhere("cold", 0);
    let (status, _) = get(&format!("{}/sleep?1", cluster.nodes[2].process.url));
    assert_eq!(status, 200);

    // A mesh call by name is held the same way.
    let front_dir = temp_dir();
    let front = probe_app(
        front_dir.path(),
        "front",
        "[component.probe.placement]\nmemory = \"64MiB\"\n",
    );
    cluster.cli(&["deploy", &front, "--wait"]);
    wait_until(Duration::from_secs(10), "no replica of cold", || {
        cluster.replicas("cold").is_empty().then_some(())
    });
    cluster.wait_known_everywhere("cold", 0);
    let (status, body) = support::cluster::get_as_host(
        &cluster.nodes[0].process.url,
        Some("front"),
        "/call?http://probe.cold.skiff.internal/sleep?1",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("slept 1ms"), "{body}");

    // A max the cluster cannot hold is said at deploy.
    let wide_dir = temp_dir();
    let wide = probe_app(
        wide_dir.path(),
        "wide",
        "[component.probe.scale]\nmax = 5\n\
         [component.probe.placement]\nmemory = \"600MiB\"\n",
    );
    let (_, warned) = cluster.cli_with_stderr(&["deploy", &wide]);
    assert!(
        warned.contains("wide/probe may scale to 5 replicas, but the cluster can hold only 3 now: 0/3 nodes fit: 3 insufficient memory"),
        "{warned}"
    );

    // Pinned by hand, then autoscaled again within new bounds.
    let pinned = cluster.cli(&["scale", "cold/probe", "2"]);
    assert!(
        pinned.contains("cold/probe pinned at 2 replicas; autoscaling is off")
            && pinned.contains("(was autoscaled between 0 and 2 replicas)"),
        "{pinned}"
    );
    cluster.wait_running("cold", 2);
    // One bound alone: the other is the manifest's (min 0).
    let bounded = cluster.cli(&["scale", "cold/probe", "--max", "3"]);
    assert!(
        bounded.contains("cold/probe autoscaled between 0 and 3 replicas (was 2 replicas)"),
        "{bounded}"
    );
    let bounded = cluster.cli(&["scale", "cold/probe", "--min", "1"]);
    assert!(
        bounded.contains(
            "cold/probe autoscaled between 1 and 3 replicas (was autoscaled between 0 and 3 replicas)"
        ),
        "{bounded}"
    );
    let refused = cluster.cli_fails(&["scale", "cold/probe", "--min", "4", "--max", "3"]);
    assert!(refused.contains("--min 4 is above --max 3"), "{refused}");
    let refused = cluster.cli_fails(&["scale", "cold/probe", "--min", "5"]);
    assert!(
        refused.contains("--min 5 is above the max of 3: give --max too"),
        "{refused}"
    );
    let set = events(&cluster, "cold");
    assert!(
        set.iter().any(|e| e["kind"] == "scale_set"
            && e["message"] == "cold/probe 2 replicas by `skiff scale` (was autoscaled between 0 and 2 replicas)"),
        "{set:?}"
    );
    let refused = cluster.cli_fails(&["scale", "cold/probe", "--max", "20000"]);
    assert!(refused.contains("over the limit of 10000"), "{refused}");
    // A request held while its component is pinned keeps waiting for the
    // replica the pin brings: here one no node may run until a label is
    // set.
    let late_dir = temp_dir();
    let late = probe_app(
        late_dir.path(),
        "late",
        "[component.probe.scale]\nmin = 0\n\
         [component.probe.placement]\nlabels = { zone = \"late\" }\nmemory = \"64MiB\"\n",
    );
    cluster.cli(&["deploy", &late]);
    cluster.wait_known_everywhere("late", 0);
    let url = cluster.nodes[0].process.url.clone();
    let held =
        std::thread::spawn(move || support::cluster::get_as_host(&url, Some("late"), "/sleep?1"));
    std::thread::sleep(Duration::from_secs(1));
    cluster.cli(&["scale", "late/probe", "1"]);
    std::thread::sleep(Duration::from_millis(500));
    cluster.cli(&["label", "node-1", "zone=late"]);
    let (status, body) = held.join().unwrap();
    assert_eq!((status, body.as_str()), (200, "slept 1ms"));

    let apps = cluster.json(&["apps"]);
    let cold = apps
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "cold")
        .unwrap();
    assert_eq!(cold["components"][0]["autoscale"]["min"], 1);
}

#[test]
fn skiff_up_holds_a_request_until_a_replica_is_ready_and_refuses_one_held_too_long() {
    let _serial = one_at_a_time();
    let home = temp_dir();
    let dir = temp_dir();
    let app = probe_app(
        dir.path(),
        "cold",
        "[component.probe.scale]\nmin = 0\nmax = 1\nscale_down_delay = \"1s\"\n",
    );
    let up = Running::up(home.path(), &app, &["--hold-limit", "1s"]);
    assert!(
        up.banner
            .contains("scales to zero without requests: cold/probe after 1s"),
        "{}",
        up.banner
    );
    // Started with one replica by the deploy; held once it is gone.
    wait_until(Duration::from_secs(10), "no replica of cold", || {
        (replica_count(home.path(), "cold") == 0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = get(&up.at("/sleep?1"));
    assert_eq!((status, body.as_str()), (200, "slept 1ms"));
    let output = support::skiff(home.path())
        .args(["events", "cold"])
        .output()
        .unwrap();
    let woke = String::from_utf8_lossy(&output.stdout);
    assert!(
        woke.contains("cold/probe 0 -> 1: 1 request waiting for a replica"),
        "{woke}"
    );

    // A component no node may run (its labels match none): its request
    // is held for the limit, then refused with a reason to retry.
    let stuck_dir = temp_dir();
    let stuck = probe_app(
        stuck_dir.path(),
        "stuck",
        "[component.probe.scale]\nmin = 0\n\
         [component.probe.placement]\nlabels = { zone = \"nowhere\" }\n",
    );
    let deployed = support::skiff(home.path())
        .args(["deploy", &stuck])
        .output()
        .unwrap();
    assert!(deployed.status.success());
    let host_url = up.at("/sleep?1");
    let (held, retry_after, body) = wait_until(
        Duration::from_secs(10),
        "the stuck app held and refused",
        || {
            let started = Instant::now();
            let mut response = http().get(&host_url).header("Host", "stuck").call().ok()?;
            // 404 until the node has heard of the app.
            (response.status() == 503).then(|| {
                let retry_after = response.headers().contains_key("retry-after");
                let body = response.body_mut().read_to_string().unwrap();
                (started.elapsed(), retry_after, body)
            })
        },
    );
    assert!(held >= Duration::from_millis(900), "held only {held:?}");
    assert!(retry_after);
    assert!(
        body.contains("had no replica ready within 1s") && body.contains("skiff events stuck"),
        "{body}"
    );
    // A component that cannot load, scaled to zero: the deploy starts one
    // replica, so --wait says so, and so does `skiff events`.
    let broken_dir = temp_dir();
    support::write_manifest(
        broken_dir.path(),
        &format!(
            "[app]\nname = \"broken\"\n[component.web]\nsource = {}\nroute = \"/broken/...\"\n\
             [component.web.scale]\nmin = 0\n",
            support::toml_path(skiff_test_guests::UNKNOWN_IMPORT)
        ),
    );
    let failed = support::skiff(home.path())
        .args(["deploy", broken_dir.path().to_str().unwrap(), "--wait"])
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(
        error.contains("app \"broken\" failed to start")
            && error.contains("it stays deployed")
            && error.contains("skiff delete broken"),
        "{error}"
    );
    let output = support::skiff(home.path())
        .args(["events", "broken"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(
        listed.contains("load_failed") && listed.contains("broken/web failed to load on local: "),
        "{listed}"
    );

    let events = support::skiff(home.path())
        .args(["events", "stuck"])
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(
        events.contains("stuck/probe/0 cannot be placed: 0/1 nodes fit: 1 labels do not match"),
        "{events}"
    );
}
