//! End-to-end tests of the cluster: replicas placed, healed and kept past a
//! restarted control plane, frozen nodes, pending and failing replicas,
//! `skiff up` and its logs, and large blobs streamed to nodes. A real
//! control plane and real nodes on loopback addresses 127.0.0.x, driven
//! through the `skiff` CLI, killed and restarted like real processes.

mod support;

use serde_json::Value;
use skiff_test_guests::{HELLO, PROBE, STATIC_FILES};
use std::time::{Duration, Instant};
use support::cluster::{Cluster, Replica, admin_token, app, nodes_of, one_at_a_time};
use support::{Running, get, skiff, start_server, temp_dir, toml_path, wait_until, write_manifest};

#[test]
fn replicas_spread_heal_and_outlive_the_control_plane() {
    let mut cluster = Cluster::start(3, &[]);
    let app_dir = temp_dir();
    let app = app(app_dir.path(), "web", HELLO, 3, "");
    let deployed = cluster.cli(&["deploy", &app, "--wait"]);
    assert!(deployed.contains("app \"web\" created"), "{deployed}");
    let again = cluster.cli(&["deploy", &app]);
    assert!(
        again.contains("unchanged"),
        "deploying twice changes nothing: {again}"
    );

    let replicas = cluster.wait_running("web", 3);
    assert_eq!(
        nodes_of(&replicas).len(),
        3,
        "one replica per node: {replicas:?}"
    );
    for node in &cluster.nodes {
        let (status, body) = get(&node.process.at("/"));
        assert_eq!(
            (status, body.as_str()),
            (200, "Hello from Skiff!\n"),
            "via {}",
            node.name
        );
    }
    let nodes = cluster.json(&["nodes"]);
    assert_eq!(nodes.as_array().unwrap().len(), 3);
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["state"] == "ready"),
        "{nodes}"
    );

    // A node dies: its replica is placed elsewhere and every surviving
    // ingress keeps answering.
    // Watched through the API from here: a CLI process every 50 ms would
    // load the machine the cluster runs on.
    let admin = cluster.admin_client(Some(&admin_token(&cluster)));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    cluster.nodes[2].process.kill();
    let killed = Instant::now();
    let survivors = ["node-1", "node-2"];
    wait_until(
        Duration::from_secs(15),
        "the dead node's replica to move",
        || {
            let replicas: Value = runtime.block_on(admin.get("/v1/replicas?app=web")).ok()?;
            let replicas = replicas.as_array()?;
            let placed = replicas.len() == 3
                && replicas.iter().all(|r| {
                    r["state"] == "running" && survivors.contains(&r["node"].as_str().unwrap_or(""))
                });
            placed.then_some(())
        },
    );
    for name in survivors {
        let (status, _) = get(&cluster.node(name).process.at("/"));
        assert_eq!(status, 200, "via {name} after the failure");
    }
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "healed in {:?}",
        killed.elapsed()
    );
    let down = cluster.json(&["nodes"]);
    assert!(
        down.as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "node-3" && n["state"] == "down"),
        "{down}"
    );
    // A dead node can be forgotten; a live one cannot.
    let refused = cluster.cli_fails(&["forget", "node-1"]);
    assert!(refused.contains("not down"), "{refused}");
    cluster.cli(&["forget", "node-3"]);
    assert_eq!(cluster.json(&["nodes"]).as_array().unwrap().len(), 2);

    // With one replica left, one node must forward to the other.
    cluster.cli(&["scale", "web", "1"]);
    let single = cluster.wait_running("web", 1);
    let holder = single[0].1.clone().unwrap();
    let forwarder = survivors.iter().find(|n| **n != holder).unwrap();

    // The control plane dies: nodes keep serving what they have, and
    // forwarding with the endpoints they last saw.
    let api = cluster.api.clone();
    let port = api.rsplit(':').next().unwrap().to_string();
    cluster.server.kill();
    for _ in 0..3 {
        for name in [holder.as_str(), forwarder] {
            let (status, _) = get(&cluster.node(name).process.at("/"));
            assert_eq!(status, 200, "via {name} with the control plane down");
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    // A node restarted meanwhile comes back serving what it had.
    cluster.restart_node(&holder);
    for name in [holder.as_str(), forwarder] {
        let (status, _) = get(&cluster.node(name).process.at("/"));
        assert_eq!(
            status, 200,
            "via {name} after {holder} restarted with the control plane down"
        );
    }

    // It comes back with the same apps and replicas, none lost or doubled.
    cluster.server = start_server(cluster.home(), &format!("127.0.0.1:{port}"), &[]);
    let apps = cluster.json(&["apps"]);
    assert_eq!(apps.as_array().unwrap().len(), 1, "{apps}");
    let after = cluster.wait_running("web", 1);
    let ids = |r: &[Replica]| {
        r.iter()
            .map(|r| (r.0.clone(), r.1.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&after),
        ids(&single),
        "the same replica on the same node"
    );

    // Scale up and down.
    cluster.cli(&["scale", "web/web", "5"]);
    cluster.wait_running("web", 5);
    cluster.cli(&["scale", "web", "2"]);
    let scaled = cluster.wait_running("web", 2);
    assert_eq!(nodes_of(&scaled).len(), 2, "{scaled:?}");

    // Drain a node: its replicas move, and its ingress still forwards.
    let drained = cluster.cli(&["drain", "node-1"]);
    assert!(drained.contains("draining"), "{drained}");
    wait_until(Duration::from_secs(10), "node-1 to be empty", || {
        let replicas = cluster.replicas("web");
        (replicas.len() == 2
            && replicas
                .iter()
                .all(|r| r.1.as_deref() == Some("node-2") && r.2 == "running"))
        .then_some(())
    });
    let (status, body) = get(&cluster.node("node-1").process.at("/"));
    assert_eq!(
        (status, body.as_str()),
        (200, "Hello from Skiff!\n"),
        "forwarded by the drained node"
    );
    cluster.cli(&["delete", "web"]);
    assert_eq!(cluster.json(&["ps"]), serde_json::json!([]));
    let gone = cluster.cli_fails(&["ps", "web"]);
    assert!(gone.contains("no app \"web\""), "{gone}");
}

#[test]
fn a_frozen_node_is_replaced_and_drops_what_moved_when_it_returns() {
    let cluster = Cluster::start(2, &[]);
    let app_dir = temp_dir();
    let app = app(app_dir.path(), "web", HELLO, 2, "");
    cluster.cli(&["deploy", &app, "--wait"]);
    let replicas = cluster.wait_running("web", 2);
    assert_eq!(nodes_of(&replicas).len(), 2, "{replicas:?}");

    // Frozen, node-2 keeps its connections open but says nothing: after
    // --down-after (3 s) it is down and its replica moves.
    let frozen = cluster.node("node-2");
    frozen.process.signal("STOP");
    let stopped = Instant::now();
    wait_until(Duration::from_secs(10), "node-2's replica to move", || {
        let replicas = cluster.replicas("web");
        replicas
            .iter()
            .all(|r| r.1.as_deref() == Some("node-1") && r.2 == "running")
            .then_some(())
    });
    // Silence counts from its last heartbeat, which came up to one
    // heartbeat interval (1 s) before the stop.
    assert!(
        stopped.elapsed() >= Duration::from_millis(1_900),
        "not before 3 s of silence"
    );

    // Back, it is told to drop the replica that moved, and forwards.
    frozen.process.signal("CONT");
    frozen
        .process
        .wait_for_stderr("replica removed from this node");
    wait_until(Duration::from_secs(10), "node-2 ready again", || {
        let nodes = cluster.json(&["nodes"]);
        nodes
            .as_array()?
            .iter()
            .any(|n| n["name"] == "node-2" && n["state"] == "ready")
            .then_some(())
    });
    assert_eq!(cluster.replicas("web").len(), 2);
    let (status, body) = get(&frozen.process.at("/"));
    assert_eq!((status, body.as_str()), (200, "Hello from Skiff!\n"));

    // A new version: `deploy --wait` returns once every replica runs it.
    let old_package = cluster.json(&["apps"])[0]["package"]
        .as_str()
        .unwrap()
        .to_string();
    write_manifest(
        app_dir.path(),
        &format!(
            "[app]\nname = \"web\"\n\
             [component.web]\nsource = {}\nroute = \"/...\"\nenv = {{ GREETING = \"Hi\" }}\n\
             [component.web.scale]\nreplicas = 2\n\
             [component.web.placement]\nmemory = \"64MiB\"\n",
            toml_path(HELLO)
        ),
    );
    let updated = cluster.cli(&["deploy", &app, "--wait"]);
    assert!(updated.contains("updated"), "{updated}");
    for node in &cluster.nodes {
        let (status, body) = get(&node.process.at("/"));
        assert_eq!(
            (status, body.as_str()),
            (200, "Hi from Skiff!\n"),
            "via {}",
            node.name
        );
    }

    // The node holding the replicas keeps the old package a while, so a
    // rollback starts without fetching it again (it is collected once it
    // has gone unused for ten minutes).
    let new_package = cluster.json(&["apps"])[0]["package"]
        .as_str()
        .unwrap()
        .to_string();
    let store = cluster.home().join("node-node-1/packages");
    let old_blob = store
        .join("blobs/sha256")
        .join(old_package.trim_start_matches("sha256:"));
    let new_blob = store
        .join("blobs/sha256")
        .join(new_package.trim_start_matches("sha256:"));
    wait_until(Duration::from_secs(10), "the new package stored", || {
        new_blob.exists().then_some(())
    });
    assert!(old_blob.exists(), "the old version is kept for a rollback");
}

/// The time of a log line, seconds since midnight UTC.
fn log_time(line: &str) -> f64 {
    let stamp = line.split_whitespace().next().unwrap();
    let time = stamp
        .split_once('T')
        .and_then(|(_, time)| time.strip_suffix('Z'))
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    time.split(':')
        .map(|part| part.parse::<f64>().unwrap())
        .fold(0.0, |seconds, part| seconds * 60.0 + part)
}

#[test]
fn pending_and_failing_replicas_say_why_and_bad_deploys_change_nothing() {
    let cluster = Cluster::start(2, &[]);
    let picky_dir = temp_dir();
    write_manifest(
        picky_dir.path(),
        &format!(
            "[app]\nname = \"picky\"\n\
             [component.api]\nsource = {}\nroute = \"/...\"\n\
             [component.api.placement]\nmemory = \"64MiB\"\nlabels = {{ zone = \"mars\" }}\n\
             [component.big]\nsource = {}\nroute = \"/big/...\"\n\
             [component.big.placement]\nmemory = \"2GiB\"\n",
            toml_path(HELLO),
            toml_path(HELLO)
        ),
    );
    let deployed = skiff(cluster.home())
        .args(["deploy", picky_dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(deployed.status.success());
    let warnings = String::from_utf8_lossy(&deployed.stderr);
    assert!(
        warnings.contains(
            "picky/api/0 cannot be placed: 0/2 nodes fit: 2 labels do not match; labels needed: zone=mars"
        ),
        "{warnings}"
    );
    let table = wait_until(Duration::from_secs(10), "pending reasons", || {
        let table = cluster.cli(&["ps", "picky"]);
        (table.contains("0/2 nodes fit: 2 labels do not match")
            && table.contains("0/2 nodes fit: 2 insufficient memory"))
        .then_some(table)
    });
    assert!(table.contains("pending"), "{table}");
    let (status, body) = get(&cluster.nodes[0].process.at("/"));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no running replica"), "{body}");

    // A replica whose component this node refuses is retried with backoff,
    // its error shown.
    let deep_dir = temp_dir();
    write_manifest(
        deep_dir.path(),
        &format!(
            "[app]\nname = \"deep\"\n\
             [component.deep]\nsource = {}\nroute = \"/deep/...\"\n\
             [component.deep.limits]\nstack = \"16MiB\"\n\
             [component.deep.placement]\nmemory = \"64MiB\"\n",
            toml_path(HELLO)
        ),
    );
    cluster.cli(&["deploy", deep_dir.path().to_str().unwrap()]);
    let failed = wait_until(Duration::from_secs(10), "the load failure in ps", || {
        let replicas = cluster.json(&["ps", "deep"]);
        let replica = replicas.as_array()?.first()?.clone();
        (replica["state"] == "failed").then_some(replica)
    });
    // The node's log has each failed attempt with the wait before the
    // next, doubling from 1 s, and the attempts are at least that far
    // apart (by the log's own timestamps).
    let node = &cluster.node(failed["node"].as_str().unwrap()).process;
    let failures = wait_until(Duration::from_secs(30), "three failed loads", || {
        let failures: Vec<(f64, String)> = node
            .stderr()
            .lines()
            .filter(|line| line.contains("replica failed to load") && line.contains("app=\"deep\""))
            .map(|line| (log_time(line), line.to_string()))
            .collect();
        (failures.len() >= 3).then_some(failures)
    });
    for (attempt, (_, line)) in failures.iter().take(3).enumerate() {
        let wait = format!("; retrying in {}s ", 1 << attempt);
        assert!(line.contains(&wait), "attempt {}: {line}", attempt + 1);
    }
    for (attempt, pair) in failures.windows(2).take(2).enumerate() {
        // Across midnight, a day later.
        let apart = (pair[1].0 - pair[0].0).rem_euclid(86_400.0);
        let wait = f64::from(1 << attempt);
        assert!(
            apart >= wait,
            "attempt {} came {apart:.3} s after a failure that said {wait} s",
            attempt + 2
        );
    }
    // ps shows the error, the attempt, and the wait after it.
    let reason = cluster.json(&["ps", "deep"])[0]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    let (error, attempt) = reason
        .rsplit_once(" (attempt ")
        .unwrap_or_else(|| panic!("{reason}"));
    assert_eq!(
        error,
        "component \"deep\": limits.stack \"16.0 MiB\" is above this node's maximum of 8 MiB"
    );
    let n: u32 = attempt.split(',').next().unwrap().parse().unwrap();
    assert_eq!(
        attempt,
        format!("{n}, next in {}s)", (1u64 << (n - 1)).min(60)),
        "{reason}"
    );

    // An invalid manifest is refused before anything is uploaded.
    let apps_before = cluster.json(&["apps"]);
    let bad_dir = temp_dir();
    let bad = write_manifest(bad_dir.path(), "[app]\nname = \"bad\"\nreplicas = 3\n");
    let error = cluster.cli_fails(&["deploy", bad_dir.path().to_str().unwrap()]);
    assert!(
        error.contains(&format!(
            "{}:3:1: unknown field `replicas`, expected one of `name`, `version`, `description`",
            bad.display()
        )),
        "{error}"
    );
    assert_eq!(cluster.json(&["apps"]), apps_before);

    // The API refuses a blob that does not match its digest, and a package
    // it does not hold.
    let client = cluster.admin_client(Some(&admin_token(&cluster)));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let digest = format!("sha256:{}", "ab".repeat(32));
    let refused = runtime
        .block_on(client.send(
            http::Method::PUT,
            &format!("/v1/blobs/{digest}"),
            Some((
                bytes::Bytes::from_static(b"not that"),
                "application/octet-stream",
            )),
            Duration::from_secs(10),
        ))
        .unwrap_err();
    assert_eq!(
        refused.status(),
        Some(http::StatusCode::BAD_REQUEST),
        "{refused}"
    );
    assert!(refused.to_string().contains("hash to"), "{refused}");
    let refused = runtime
        .block_on(client.post::<_, Value>("/v1/apps", &serde_json::json!({ "package": digest })))
        .unwrap_err();
    assert!(refused.to_string().contains("package refused"), "{refused}");
    assert_eq!(cluster.json(&["apps"]), apps_before);
}

#[test]
fn skiff_up_serves_an_app_and_collects_its_logs() {
    let _serial = one_at_a_time();
    let home = temp_dir();
    let app_dir = temp_dir();
    write_manifest(
        app_dir.path(),
        &format!(
            "[app]\nname = \"probe\"\n[component.probe]\nsource = {}\nroute = \"/...\"\n",
            toml_path(PROBE)
        ),
    );
    let up = Running::launch(
        home.path(),
        &[
            "up",
            app_dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
        ],
        "Serving ",
    );
    assert!(up.banner.contains("App \"probe\""), "{}", up.banner);
    let (status, body) = get(&up.at("/log?hello-from-the-guest"));
    assert_eq!((status, body.as_str()), (200, "logged"));

    let cli = |args: &[&str]| {
        let output = skiff(home.path()).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let ps: Value = serde_json::from_str(&cli(&["ps", "-o", "json"])).unwrap();
    assert_eq!(ps[0]["node"], "local");
    assert_eq!(ps[0]["state"], "running");
    let logs = wait_until(Duration::from_secs(10), "the guest's lines", || {
        let logs = cli(&["logs", "probe"]);
        logs.contains("err hello-from-the-guest").then_some(logs)
    });
    assert!(
        logs.contains("local probe/probe | hello-from-the-guest"),
        "{logs}"
    );

    // A guest's escape sequences and carriage returns are shown, not
    // obeyed: it cannot recolour the terminal or fake a line's origin.
    let (status, _) = get(&up
        .at("/log?%1b%5b31mred%1b%5b0m%c2%9b2J%0dlocal%20other/app%20%7c%20forged%e2%80%ae%c3%a9"));
    assert_eq!(status, 200);
    let escaped = "\\x1b[31mred\\x1b[0m\\u{9b}2J\\rlocal other/app | forged\\u{202e}é";
    let logs = wait_until(Duration::from_secs(10), "the escaped line", || {
        let logs = cli(&["logs", "probe"]);
        logs.contains("forged").then_some(logs)
    });
    assert!(
        logs.contains(&format!("local probe/probe | {escaped}")),
        "{logs:?}"
    );
    assert!(
        !logs.contains(['\u{1b}', '\r', '\u{9b}', '\u{202e}']),
        "{logs:?}"
    );
    let echoed = up.wait_for_stderr("forged");
    assert!(
        echoed.contains(&format!("[probe/probe] {escaped}")),
        "{echoed:?}"
    );
    assert!(!echoed.contains(['\u{1b}', '\r', '\u{9b}']), "{echoed:?}");

    // Following: a line written after `logs -f` started shows up.
    let mut follow = skiff(home.path())
        .args(["logs", "probe/probe", "-f"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    // The earlier lines come first; then a new one.
    assert!(
        seen.recv_timeout(Duration::from_secs(10))
            .unwrap()
            .contains("hello-from-the-guest")
    );
    let (status, _) = get(&up.at("/log?followed-later"));
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut followed = false;
    while let Ok(line) = seen.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains("followed-later") {
            followed = true;
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(followed, "logs -f showed the new line");

    let unknown = support::expect_failure(home.path(), &["logs", "probe/nosuch"]);
    assert!(unknown.contains("has no component \"nosuch\""), "{unknown}");
    let missing = support::expect_failure(home.path(), &["logs", "nope"]);
    assert!(missing.contains("no app \"nope\""), "{missing}");
    assert!(
        up.terminate().success(),
        "skiff up stops cleanly on SIGTERM"
    );
}

/// Peak resident memory (VmHWM) of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

#[test]
fn large_blobs_stream_through_the_control_plane_and_nodes() {
    let cluster = Cluster::start(1, &[]);
    let app_dir = temp_dir();
    // 256 MiB that do not compress, so the files layer is as large.
    let public = app_dir.path().join("public");
    std::fs::create_dir_all(&public).unwrap();
    std::fs::write(public.join("hello.txt"), "hello\n").unwrap();
    let mut big = std::io::BufWriter::new(std::fs::File::create(public.join("big.bin")).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..256 {
        for word in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        std::io::Write::write_all(&mut big, &block).unwrap();
    }
    drop(big);
    write_manifest(
        app_dir.path(),
        &format!(
            "[app]\nname = \"big\"\n[component.files]\nsource = {}\nroute = \"/...\"\nfiles = [{{ source = \"public\", destination = \"/www\" }}]\n[component.files.placement]\nmemory = \"64MiB\"\n",
            toml_path(STATIC_FILES)
        ),
    );
    let server = cluster.server.pid();
    let node = cluster.nodes[0].process.pid();
    let (server_before, node_before) = (peak_rss(server), peak_rss(node));
    cluster.cli(&[
        "deploy",
        app_dir.path().to_str().unwrap(),
        "--wait",
        "--timeout",
        "600s",
    ]);
    cluster.wait_running("big", 1);
    assert_eq!(
        get(&cluster.nodes[0].process.at("/hello.txt")),
        (200, "hello\n".to_string())
    );
    // The control plane took the upload, verified the package and served
    // the blob to the node; the node fetched, verified and unpacked it.
    // Neither held the 256 MiB in memory.
    let server_growth = peak_rss(server).saturating_sub(server_before);
    let node_growth = peak_rss(node).saturating_sub(node_before);
    eprintln!(
        "peak memory growth: control plane {} KiB, node {} KiB",
        server_growth >> 10,
        node_growth >> 10
    );
    assert!(
        server_growth < 64 << 20,
        "the control plane grew by {server_growth} bytes"
    );
    assert!(
        node_growth < 96 << 20,
        "the node grew by {node_growth} bytes"
    );
}

#[test]
fn a_request_forwarded_to_a_node_that_froze_gets_504_after_its_deadline() {
    let cluster = Cluster::start(2, &[]);
    let app_dir = temp_dir();
    // One replica, on node-2; requests may run 1 s there, so node-1 waits
    // 2 x 1 s + 1 s for an answer.
    write_manifest(
        app_dir.path(),
        &format!(
            "[app]\nname = \"slow\"\n\
             [component.web]\nsource = {}\nroute = \"/...\"\n\
             [component.web.limits]\ntimeout = \"1s\"\n\
             [component.web.placement]\nmemory = \"64MiB\"\nlabels = {{ zone = \"z2\" }}\n",
            toml_path(HELLO)
        ),
    );
    cluster.cli(&["deploy", app_dir.path().to_str().unwrap(), "--wait"]);
    cluster.wait_known_everywhere("slow", 1);
    let via_node_1 = cluster.node("node-1").process.at("/");
    // A first request opens node-1's mesh connection to node-2, kept.
    assert_eq!(get(&via_node_1).0, 200);

    let frozen = cluster.node("node-2");
    frozen.process.signal("STOP");
    let sent = Instant::now();
    let (status, body) = get(&via_node_1);
    let waited = sent.elapsed();
    frozen.process.signal("CONT");
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("no answer within 3s"), "{body}");
    assert!(
        waited >= Duration::from_millis(2_900) && waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
    cluster
        .node("node-1")
        .process
        .wait_for_line(&["forward_timeout", "app=\"slow\""]);
}
