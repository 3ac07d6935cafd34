//! End-to-end tests of the cluster: a real control plane and real nodes on
//! loopback addresses 127.0.0.x, driven through the `skiff` CLI, killed and
//! restarted like real processes.

mod support;

use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use skiff_orchestrator::api_client::ApiClient;
use skiff_orchestrator::mesh::{ClusterCa, Members, NodeIdentity};
use skiff_test_guests::{HELLO, HOSTILE, PROBE, STATIC_FILES};
use std::path::Path;
use std::time::{Duration, Instant};
use support::tls::{self, CertInfo, unix_now};
use support::{
    Running, Upstream, get, skiff, start_server, temp_dir, toml_path, wait_until, write_manifest,
};

/// Cluster tests run one at a time: each starts several processes whose
/// heartbeats should not starve on a small machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A control plane and its nodes, sharing one Skiff home.
struct Cluster {
    _serial: std::sync::MutexGuard<'static, ()>,
    home: tempfile::TempDir,
    server: Running,
    /// `https://127.0.0.1:PORT`
    api: String,
    nodes: Vec<TestNode>,
}

struct TestNode {
    name: String,
    process: Running,
    mesh: String,
}

impl Cluster {
    /// A control plane and `nodes` nodes on 127.0.0.2, .3, ... each
    /// labelled `zone=z<N>` and offering 1 GiB.
    fn start(nodes: usize) -> Cluster {
        Cluster::start_with(nodes, &[])
    }

    /// As [`Cluster::start`], with extra `skiff server` arguments.
    fn start_with(nodes: usize, server_args: &[&str]) -> Cluster {
        let serial = one_at_a_time();
        let home = temp_dir();
        let server = start_server(home.path(), "127.0.0.1:0", server_args);
        let api = server.url.clone();
        let mut cluster = Cluster {
            _serial: serial,
            home,
            server,
            api,
            nodes: Vec::new(),
        };
        for i in 1..=nodes {
            cluster.add_node(i);
        }
        cluster
    }

    fn home(&self) -> &Path {
        self.home.path()
    }

    fn add_node(&mut self, i: usize) {
        let token = self.cli(&["join-token"]).trim().to_string();
        let name = format!("node-{i}");
        let listen = format!("127.0.0.{}:0", i + 1);
        let node = self.launch_node(&name, &["--token", &token, "--listen", &listen]);
        self.nodes.push(node);
    }

    /// Kills node `name` and starts it again on the same addresses, with
    /// the identity it saved (no token).
    fn restart_node(&mut self, name: &str) {
        let index = self.nodes.iter().position(|n| n.name == name).unwrap();
        let mut old = self.nodes.remove(index);
        old.process.kill();
        let listen = old.process.url.trim_start_matches("http://").to_string();
        let node = self.launch_node(name, &["--listen", &listen, "--mesh-listen", &old.mesh]);
        self.nodes.insert(index, node);
    }

    fn launch_node(&self, name: &str, extra: &[&str]) -> TestNode {
        let zone = format!("zone=z{}", name.trim_start_matches("node-"));
        let mut args = vec![
            "node",
            "--server",
            &self.api,
            "--name",
            name,
            "--capacity",
            "1GiB",
            "--labels",
            &zone,
        ];
        args.extend_from_slice(extra);
        let process = Running::launch(self.home(), &args, "serving ingress on ");
        let mesh = process
            .banner
            .split("(mesh ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .expect("the node prints its mesh address")
            .to_string();
        TestNode {
            name: name.to_string(),
            process,
            mesh,
        }
    }

    /// Runs `skiff ARGS`, expecting success; returns stdout.
    fn cli(&self, args: &[&str]) -> String {
        let output = skiff(self.home())
            .args(args)
            .output()
            .expect("running skiff");
        assert!(
            output.status.success(),
            "skiff {args:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `skiff ARGS`, expecting failure; returns stderr.
    fn cli_fails(&self, args: &[&str]) -> String {
        support::expect_failure(self.home(), args)
    }

    /// `skiff ARGS -o json`, parsed.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.cli(&all)).expect("JSON output")
    }

    /// Every replica of `app` as `(id, node, state)`.
    fn replicas(&self, app: &str) -> Vec<(String, Option<String>, String)> {
        self.json(&["ps", app])
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["node"].as_str().map(str::to_string),
                    r["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Waits until `app` has exactly `count` replicas, all running.
    fn wait_running(&self, app: &str, count: usize) -> Vec<(String, Option<String>, String)> {
        wait_until(
            Duration::from_secs(15),
            &format!("{count} running replicas of {app}"),
            || {
                let replicas = self.replicas(app);
                (replicas.len() == count && replicas.iter().all(|r| r.2 == "running"))
                    .then_some(replicas)
            },
        )
    }

    fn node(&self, name: &str) -> &TestNode {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    fn admin_client(&self, token: Option<&str>) -> ApiClient {
        let tls = skiff_orchestrator::tls::client_trusting(&self.ca_pem()).unwrap();
        ApiClient::new(&self.api, tls, token.map(str::to_string))
    }

    fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.home().join("server/ca.pem")).unwrap()
    }
}

/// An app `name` running hello with `replicas` replicas reserving 64 MiB.
fn hello_app(dir: &Path, name: &str, replicas: u32) -> String {
    write_manifest(
        dir,
        &format!(
            "[app]\nname = \"{name}\"\n\
             [component.web]\nsource = {}\nroute = \"/...\"\n\
             [component.web.scale]\nreplicas = {replicas}\n\
             [component.web.placement]\nmemory = \"64MiB\"\n",
            toml_path(HELLO)
        ),
    );
    dir.to_str().unwrap().to_string()
}

fn distinct_nodes(replicas: &[(String, Option<String>, String)]) -> usize {
    let mut nodes: Vec<_> = replicas.iter().filter_map(|r| r.1.clone()).collect();
    nodes.sort();
    nodes.dedup();
    nodes.len()
}

#[test]
fn replicas_spread_heal_and_outlive_the_control_plane() {
    let mut cluster = Cluster::start(3);
    let app_dir = temp_dir();
    let app = hello_app(app_dir.path(), "web", 3);
    let deployed = cluster.cli(&["deploy", &app, "--wait"]);
    assert!(deployed.contains("app \"web\" created"), "{deployed}");
    let again = cluster.cli(&["deploy", &app]);
    assert!(
        again.contains("unchanged"),
        "deploying twice changes nothing: {again}"
    );

    let replicas = cluster.wait_running("web", 3);
    assert_eq!(
        distinct_nodes(&replicas),
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
    let ids = |r: &[(String, Option<String>, String)]| {
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
    assert_eq!(distinct_nodes(&scaled), 2, "{scaled:?}");

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
    let cluster = Cluster::start(2);
    let app_dir = temp_dir();
    let app = hello_app(app_dir.path(), "web", 2);
    cluster.cli(&["deploy", &app, "--wait"]);
    let replicas = cluster.wait_running("web", 2);
    assert_eq!(distinct_nodes(&replicas), 2, "{replicas:?}");

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
    assert!(
        stopped.elapsed() >= Duration::from_millis(2_900),
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

    // The node holding the replicas drops the old package from its store.
    let new_package = cluster.json(&["apps"])[0]["package"]
        .as_str()
        .unwrap()
        .to_string();
    let store = cluster.home().join("node-node-1/packages");
    let old_blob = store
        .join("blobs/sha256")
        .join(old_package.trim_start_matches("sha256:"));
    wait_until(Duration::from_secs(10), "the old package collected", || {
        let index = std::fs::read_to_string(store.join("index.json")).ok()?;
        (index.contains(&new_package) && !index.contains(&old_package) && !old_blob.exists())
            .then_some(())
    });
}

#[test]
fn node_certificates_are_renewed_before_they_expire() {
    // Node certificates valid 10 s: each node renews about every 5 s.
    const LIFETIME: i64 = 10;
    let mut cluster = Cluster::start_with(2, &["--node-cert-lifetime", "10s"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let first: Vec<NodeIdentity> = names.iter().map(|n| saved_identity(&cluster, n)).collect();
    // Every certificate each node keeps, in order, read every 50 ms (each
    // lasts about 5 s there before the next replaces it).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kept = {
        let files: Vec<_> = names
            .iter()
            .map(|n| cluster.home().join(format!("node-{n}/node.pem")))
            .collect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut kept: Vec<Vec<CertInfo>> = vec![Vec::new(); files.len()];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (file, certs) in files.iter().zip(&mut kept) {
                    // Gone with the cluster when the test failed.
                    let Ok(pem) = std::fs::read_to_string(file) else {
                        return kept;
                    };
                    let cert = CertInfo::of_pem(&pem);
                    if certs.last() != Some(&cert) {
                        certs.push(cert);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            kept
        })
    };
    let app_dir = temp_dir();
    let app = hello_app(app_dir.path(), "web", 1);
    cluster.cli(&["deploy", &app, "--wait"]);
    let holder = cluster.wait_running("web", 1)[0].1.clone().unwrap();
    let other = cluster.nodes.iter().find(|n| n.name != holder).unwrap();

    // After each renewal, a new connection to the node's mesh endpoint
    // gets a renewed certificate, the control plane has recorded the
    // renewal, and a request forwarded over the mesh is answered.
    let mut presented: Vec<Vec<CertInfo>> = vec![Vec::new(); names.len()];
    for renewal in 1..=2 {
        for (i, node) in cluster.nodes.iter().enumerate() {
            let renewals = |stderr: &str, also: &str| {
                stderr
                    .lines()
                    .filter(|line| line.contains("node certificate renewed") && line.contains(also))
                    .count()
            };
            wait_until(
                Duration::from_secs(30),
                &format!("{} to renew its certificate {renewal} times", node.name),
                || (renewals(&node.process.stderr(), "") >= renewal).then_some(()),
            );
            let issued_for = format!("node={:?}", node.name);
            assert!(
                renewals(&cluster.server.stderr(), &issued_for) >= renewal,
                "the control plane issued {}'s renewals:\n{}",
                node.name,
                cluster.server.stderr()
            );
            let peer = cluster.nodes.iter().find(|n| n.name != node.name).unwrap();
            let tls = saved_identity(&cluster, &peer.name)
                .client_config(&only(&saved_identity(&cluster, &node.name)))
                .unwrap();
            let exchange = tls::exchange(&runtime, &node.mesh, &node.name, tls, MESH_REQUEST);
            let (cert, answer) = exchange.answer.unwrap();
            assert!(answer.starts_with("HTTP/1.1 "), "{answer:?}");
            let cert = CertInfo::of(&cert);
            assert_ne!(
                cert,
                CertInfo::of_pem(first[i].cert_pem()),
                "after renewal {renewal}, {} still serves its first certificate",
                node.name
            );
            presented[i].push(cert);
        }
        let (status, body) = get(&other.process.at("/"));
        assert_eq!(
            (status, body.as_str()),
            (200, "Hello from Skiff!\n"),
            "forwarded over the mesh after renewal {renewal}"
        );
    }

    // Past the first certificates' expiry, heartbeats and the mesh still
    // work, though the control plane and the mesh refuse those
    // certificates now: every connection uses a renewed one.
    let expiry = first.iter().map(|id| id.expires().unwrap()).max().unwrap();
    wait_until(
        Duration::from_secs(30),
        "the first certificates to expire",
        || (unix_now() > expiry + 1).then_some(()),
    );
    for (i, node) in cluster.nodes.iter().enumerate() {
        let peer = cluster.nodes.iter().find(|n| n.name != node.name).unwrap();
        let members = only(&saved_identity(&cluster, &peer.name));
        let old = first[i].client_config(&members).unwrap();
        let refused = tls::exchange(&runtime, &peer.mesh, &peer.name, old, MESH_REQUEST);
        assert_eq!(
            refused.answer.map(|(_, answer)| answer),
            Err(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateExpired
            )),
            "{}'s mesh endpoint and {}'s first certificate",
            peer.name,
            node.name
        );
        let old = first[i].control_plane_client_config().unwrap();
        let refused = tls::exchange(&runtime, api_addr(&cluster), "127.0.0.1", old, API_REQUEST);
        assert_eq!(
            refused.answer.map(|(_, answer)| answer),
            Err(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateExpired
            )),
            "the control plane and {}'s first certificate",
            node.name
        );
    }
    let nodes = cluster.json(&["nodes"]);
    for node in nodes.as_array().unwrap() {
        assert_eq!(node["state"], "ready", "{nodes}");
        assert!(node["last_seen_ms"].as_u64().unwrap() < 3_000, "{nodes}");
    }
    let (status, body) = get(&other.process.at("/"));
    assert_eq!(
        (status, body.as_str()),
        (200, "Hello from Skiff!\n"),
        "forwarded over the mesh"
    );

    // Each certificate was replaced at about half its life, well before
    // it expired, and served to new connections once it was.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let kept = kept.join().unwrap();
    for (i, name) in names.iter().enumerate() {
        let certs = &kept[i];
        assert!(certs.len() >= 3, "{name} renewed twice: {certs:?}");
        for pair in certs.windows(2) {
            let issued = |cert: &CertInfo| cert.not_after - LIFETIME;
            let after = issued(&pair[1]) - issued(&pair[0]);
            assert!(
                (LIFETIME / 2 - 1..=LIFETIME / 2 + 3).contains(&after),
                "{name} renewed {after} s into a {LIFETIME} s certificate: {certs:?}"
            );
        }
        for (renewal, cert) in presented[i].iter().enumerate() {
            let index = certs.iter().position(|c| c == cert);
            assert!(
                index.is_some_and(|index| index > renewal),
                "after renewal {}, {name} served {cert:?}; it kept {certs:?}",
                renewal + 1
            );
        }
    }

    // A node stops cleanly on SIGTERM, replicas and all.
    let node = cluster.nodes.pop().unwrap();
    assert!(node.process.terminate().success());
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

/// The control plane's `127.0.0.1:PORT`.
fn api_addr(cluster: &Cluster) -> &str {
    cluster.api.trim_start_matches("https://")
}

/// A node's request to the control plane (for a blob that does not exist).
const API_REQUEST: &[u8] = b"GET /v1/node/blobs/sha256:00 HTTP/1.1\r\nhost: x\r\n\r\n";

#[test]
fn pending_and_failing_replicas_say_why_and_bad_deploys_change_nothing() {
    let cluster = Cluster::start(2);
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
            "picky/api/0 cannot be placed: 0/2 nodes fit: 2 labels do not match (it needs zone=mars)"
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

/// A certificate from the cluster's CA for node `name` as a CA without
/// name rules would issue it, and its key.
fn legacy_node_cert(cluster: &Cluster, name: &str) -> (String, String) {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
    let ca_key = std::fs::read_to_string(cluster.home().join("server/ca.key")).unwrap();
    let issuer =
        Issuer::from_ca_cert_pem(&cluster.ca_pem(), KeyPair::from_pem(&ca_key).unwrap()).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.subject_alt_names.push(SanType::URI(
        format!("spiffe://skiff/node/{name}").try_into().unwrap(),
    ));
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Sends a forwarded request to the mesh endpoint at `mesh` (node
/// `server`, checked against `members`) as `identity`: the answer's first
/// bytes, or why there was none.
fn mesh_answer(
    runtime: &tokio::runtime::Runtime,
    mesh: &str,
    server: &str,
    identity: &NodeIdentity,
    members: &Members,
) -> Result<String, String> {
    let tls = identity.client_config(members).unwrap();
    tls::exchange(runtime, mesh, server, tls, MESH_REQUEST)
        .answer
        .map(|(_, answer)| answer)
        .map_err(|e| e.to_string())
}

/// A forwarded request as one node sends another over the mesh.
const MESH_REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nhost: x\r\nskiff-app: a\r\nskiff-component: b\r\n\r\n";

/// The identity node `name` saved in its data directory.
fn saved_identity(cluster: &Cluster, name: &str) -> NodeIdentity {
    let dir = cluster.home().join(format!("node-{name}"));
    let both = std::fs::read_to_string(dir.join("node.pem")).unwrap();
    let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    NodeIdentity::new(both.clone(), both, ca)
}

/// Members holding exactly `identity`'s node, of its incarnation.
fn only(identity: &NodeIdentity) -> Members {
    let node = identity.node("skiff").unwrap();
    let members = Members::new("skiff");
    members.set([(node.name, node.incarnation)].into_iter().collect());
    members
}

/// A node's API calls as `identity`: the statuses of a heartbeat, a
/// certificate renewal and a fetch of blob `digest`.
fn node_calls(
    runtime: &tokio::runtime::Runtime,
    cluster: &Cluster,
    identity: &NodeIdentity,
    digest: &str,
) -> Vec<Result<(), String>> {
    let api = ApiClient::new(
        &cluster.api,
        identity.control_plane_client_config().unwrap(),
        None,
    );
    let sync = serde_json::json!({
        "version": 0, "labels": {}, "memory": 1u64 << 30,
        "ingress": "127.0.0.2:1", "mesh": "127.0.0.2:2",
        "components": [], "logs_first_seq": 0, "logs": []
    });
    let (_, csr) = NodeIdentity::request().unwrap();
    let renew = serde_json::json!({ "csr_pem": csr });
    let status = |result: Result<Value, skiff_orchestrator::api_client::ApiError>| {
        result
            .map(|_| ())
            .map_err(|e| format!("{:?}: {e}", e.status()))
    };
    vec![
        status(runtime.block_on(api.post::<_, Value>("/v1/node/sync", &sync))),
        status(runtime.block_on(api.post::<_, Value>("/v1/node/renew", &renew))),
        runtime
            .block_on(api.send(
                http::Method::GET,
                &format!("/v1/node/blobs/{digest}"),
                None,
                Duration::from_secs(10),
            ))
            .map(|_| ())
            .map_err(|e| format!("{:?}: {e}", e.status())),
    ]
}

fn node_names(cluster: &Cluster) -> Vec<String> {
    cluster
        .json(&["nodes"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect()
}

fn node_state(cluster: &Cluster, name: &str) -> Option<String> {
    cluster
        .json(&["nodes"])
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .map(|n| n["state"].as_str().unwrap().to_string())
}

#[test]
fn a_forgotten_node_is_refused_everywhere_until_it_joins_again() {
    let mut cluster = Cluster::start(2);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app_dir = temp_dir();
    cluster.cli(&["deploy", &hello_app(app_dir.path(), "web", 2), "--wait"]);
    cluster.wait_running("web", 2);
    let package = cluster.json(&["apps"])[0]["package"]
        .as_str()
        .unwrap()
        .to_string();
    let stolen = saved_identity(&cluster, "node-1");
    let node_2 = only(&saved_identity(&cluster, "node-2"));
    let mesh_2 = cluster.node("node-2").mesh.clone();
    // While node-1 is a member, its certificate is honoured.
    assert!(node_calls(&runtime, &cluster, &stolen, &package)[2].is_ok());
    let answer = mesh_answer(&runtime, &mesh_2, "node-2", &stolen, &node_2);
    assert!(
        answer.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1")),
        "{answer:?}"
    );

    // Down is not gone: a fresh token cannot take its name.
    cluster.nodes[0].process.kill();
    wait_until(Duration::from_secs(15), "node-1 to be down", || {
        (node_state(&cluster, "node-1").as_deref() == Some("down")).then_some(())
    });
    let token = cluster.cli(&["join-token"]).trim().to_string();
    let taken = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let elsewhere = cluster.home().join("elsewhere");
    let refused = cluster.cli_fails(&[
        "node",
        "--server",
        &cluster.api,
        "--token",
        &token,
        "--name",
        "node-1",
        "--listen",
        &taken,
        "--data-dir",
        elsewhere.to_str().unwrap(),
    ]);
    assert!(
        refused.contains("already in this cluster (down)")
            && refused.contains("skiff forget node-1"),
        "{refused}"
    );

    // Forgotten, it comes back with its saved certificate: refused.
    cluster.cli(&["forget", "node-1"]);
    cluster.restart_node("node-1");
    cluster
        .node("node-1")
        .process
        .wait_for_stderr("not a member of this cluster");
    let refused_everywhere = |cluster: &Cluster| {
        for call in node_calls(&runtime, cluster, &stolen, &package) {
            let refused = call.unwrap_err();
            assert!(
                refused.contains("401") && refused.contains("not a member of this cluster"),
                "{refused}"
            );
        }
        assert_eq!(node_names(cluster), ["node-2"]);
        // Node 2 hears of it from the control plane.
        wait_until(
            Duration::from_secs(10),
            "node-2's mesh to refuse node-1",
            || mesh_answer(&runtime, &mesh_2, "node-2", &stolen, &node_2).err(),
        );
    };
    refused_everywhere(&cluster);
    // Refused again and again, the node stops rather than serve on.
    let revoked = cluster
        .nodes
        .iter_mut()
        .find(|n| n.name == "node-1")
        .unwrap();
    assert!(!revoked.process.wait_exit(Duration::from_secs(30)).success());
    assert!(
        revoked
            .process
            .stderr()
            .contains("the control plane no longer accepts this node"),
        "{}",
        revoked.process.stderr()
    );
    assert_eq!(
        cluster
            .wait_running("web", 2)
            .iter()
            .filter(|r| r.1.as_deref() == Some("node-2"))
            .count(),
        2,
        "its replicas moved to node-2"
    );

    // Still after the control plane restarts.
    let port = cluster.api.rsplit(':').next().unwrap().to_string();
    cluster.server.kill();
    cluster.server = start_server(cluster.home(), &format!("127.0.0.1:{port}"), &[]);
    wait_until(Duration::from_secs(15), "node-2 to be back", || {
        (node_state(&cluster, "node-2").as_deref() == Some("ready")).then_some(())
    });
    refused_everywhere(&cluster);

    // A new join token brings it back under its name, with a new
    // certificate; the old one stays refused.
    let mut old = cluster.nodes.remove(0);
    old.process.kill();
    std::fs::remove_dir_all(cluster.home().join("node-node-1")).unwrap();
    let listen = old.process.url.trim_start_matches("http://").to_string();
    let node = cluster.launch_node("node-1", &["--token", &token, "--listen", &listen]);
    cluster.nodes.insert(0, node);
    wait_until(Duration::from_secs(15), "node-1 to be ready", || {
        (node_state(&cluster, "node-1").as_deref() == Some("ready")).then_some(())
    });
    let rejoined = saved_identity(&cluster, "node-1");
    wait_until(
        Duration::from_secs(10),
        "node-2's mesh to honour node-1 again",
        || mesh_answer(&runtime, &mesh_2, "node-2", &rejoined, &node_2).ok(),
    );
    assert!(mesh_answer(&runtime, &mesh_2, "node-2", &stolen, &node_2).is_err());
    for call in node_calls(&runtime, &cluster, &stolen, &package) {
        assert!(call.unwrap_err().contains("not a member"));
    }
}

#[test]
fn names_and_addresses_that_could_be_mistaken_are_refused() {
    let cluster = Cluster::start_with(1, &["--host", "cp-main"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let token = cluster.cli(&["join-token"]).trim().to_string();

    // The CLI refuses such names before anything starts.
    for name in ["localhost", "127.0.0.1", "Node-2", "1234", "node.example"] {
        let refused = cluster.cli_fails(&[
            "node",
            "--server",
            &cluster.api,
            "--token",
            &token,
            "--name",
            name,
        ]);
        assert!(
            refused.contains(&format!("invalid node name {name:?}")),
            "{refused}"
        );
    }
    // A second process for a running node (same data directory) is
    // refused: two would share one identity.
    let twin = cluster.cli_fails(&[
        "node",
        "--server",
        &cluster.api,
        "--name",
        "node-1",
        "--listen",
        "127.0.0.9:0",
    ]);
    assert!(
        twin.contains("another skiff node is running with the data directory"),
        "{twin}"
    );
    // So does the control plane, for a client that skips the check; and
    // the names the control plane is reached by. The token stays usable.
    let pin = token.split('.').nth(1).unwrap();
    let joining = ApiClient::new(
        &cluster.api,
        skiff_orchestrator::tls::client_pinned(pin).unwrap(),
        None,
    );
    let join = |name: &str| {
        let (_, csr) = NodeIdentity::request().unwrap();
        runtime.block_on(joining.post::<_, Value>(
            "/v1/join",
            &serde_json::json!({ "token": token, "name": name, "csr_pem": csr }),
        ))
    };
    for name in ["localhost", "127.0.0.1", "NODE", "1234", "cp-main"] {
        let refused = join(name).unwrap_err();
        assert_eq!(
            refused.status(),
            Some(http::StatusCode::BAD_REQUEST),
            "{refused}"
        );
        assert!(
            refused
                .to_string()
                .contains(&format!("invalid node name {name:?}")),
            "{refused}"
        );
    }
    assert!(join("node-2").is_ok(), "the token was not used up");
    assert_eq!(node_names(&cluster), ["node-1", "node-2"]);

    // A node reporting the control plane's API as its mesh address (so
    // others would forward into /v1/node/*) is refused, and nothing it
    // reported is recorded.
    let node_1 = saved_identity(&cluster, "node-1");
    let api = ApiClient::new(
        &cluster.api,
        node_1.control_plane_client_config().unwrap(),
        None,
    );
    let control_plane = cluster.api.trim_start_matches("https://").to_string();
    for (ingress, mesh) in [
        ("127.0.0.2:4444", control_plane.as_str()),
        ("127.0.0.2:4444", "0.0.0.0:4445"),
        ("127.0.0.2:4444", "127.0.0.2:0"),
        ("127.0.0.2:4444", "224.0.0.1:4445"),
    ] {
        let refused = runtime
            .block_on(api.post::<_, Value>(
                "/v1/node/sync",
                &serde_json::json!({
                    "version": 0, "labels": {}, "memory": 1u64 << 30,
                    "ingress": ingress, "mesh": mesh,
                    "components": [], "logs_first_seq": 0, "logs": []
                }),
            ))
            .unwrap_err();
        assert_eq!(
            refused.status(),
            Some(http::StatusCode::BAD_REQUEST),
            "{refused}"
        );
        assert!(
            refused
                .to_string()
                .contains(&format!("invalid mesh address {mesh:?}")),
            "{refused}"
        );
    }
    let nodes = cluster.json(&["nodes"]);
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["ingress"] != "127.0.0.2:4444"),
        "{nodes}"
    );
}

fn admin_token(cluster: &Cluster) -> String {
    std::fs::read_to_string(cluster.home().join("server/admin-token")).unwrap()
}

#[test]
fn strangers_are_refused() {
    let cluster = Cluster::start(1);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // The API wants the admin token.
    for token in [None, Some("wrong")] {
        let refused = runtime
            .block_on(cluster.admin_client(token).get::<Value>("/v1/apps"))
            .unwrap_err();
        assert_eq!(
            refused.status(),
            Some(http::StatusCode::UNAUTHORIZED),
            "{refused}"
        );
    }
    let output = skiff(cluster.home())
        .args(["apps"])
        .env("SKIFF_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("admin token is not valid"));

    // A join token works once; a made-up one never.
    let token = cluster.cli(&["join-token"]).trim().to_string();
    // An address already taken, so a node stops right after joining.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let join = |token: &str, name: &str| {
        let data = cluster.home().join(name);
        support::expect_failure(
            cluster.home(),
            &[
                "node",
                "--server",
                &cluster.api,
                "--token",
                token,
                "--name",
                name,
                "--listen",
                &taken,
                "--data-dir",
                data.to_str().unwrap(),
            ],
        )
    };
    // A name in use is refused without using up the token.
    let conflict = join(&token, "node-1");
    assert!(
        conflict.contains("already in this cluster (active)"),
        "{conflict}"
    );
    let first = join(&token, "once");
    assert!(
        first.contains("already in use"),
        "joined, then stopped: {first}"
    );
    let reused = join(&token, "twice");
    assert!(reused.contains("join token is not valid"), "{reused}");
    let pin = token.split('.').nth(1).unwrap();
    let forged = join(&format!("skt1.{pin}.{}", "0".repeat(32)), "forged");
    assert!(forged.contains("join token is not valid"), "{forged}");
    let other_cluster = join(
        &format!("skt1.{}.{}", "0".repeat(32), "1".repeat(32)),
        "lost",
    );
    assert!(
        other_cluster.contains("does not match the join token"),
        "{other_cluster}"
    );
    let garbage = join("hello", "garbage");
    assert!(garbage.contains("malformed join token"), "{garbage}");

    // A certificate from another CA is refused by the control plane and
    // by a node's mesh endpoint; so is plaintext.
    let rogue = |cluster_name: &str| {
        let ca = ClusterCa::create(cluster_name).unwrap();
        let (key, csr) = NodeIdentity::request().unwrap();
        let cert = ca.sign_node("node-1", "0", &csr).unwrap();
        NodeIdentity::new(key, cert, cluster.ca_pem())
    };
    let rogues = [
        // Named like this cluster's CA, with another key: the signature
        // does not verify.
        (
            "an impostor CA",
            rogue("skiff"),
            rustls::AlertDescription::DecryptError,
        ),
        (
            "another cluster's CA",
            rogue("elsewhere"),
            rustls::AlertDescription::UnknownCA,
        ),
    ];
    let node_1 = saved_identity(&cluster, "node-1");
    let mesh = &cluster.nodes[0].mesh;
    let members = only(&node_1);
    let to_control_plane = |id: &NodeIdentity| id.control_plane_client_config().unwrap();
    let to_mesh = |id: &NodeIdentity| id.client_config(&members).unwrap();
    type ClientOf<'a> = &'a dyn Fn(&NodeIdentity) -> std::sync::Arc<rustls::ClientConfig>;
    // The same request on the same path, with the node's own certificate
    // (accepted) and with a rogue one (refused at the handshake, at once,
    // with the alert that says why).
    let paths: [(&str, &str, &str, &[u8], ClientOf); 2] = [
        (
            "the control plane",
            api_addr(&cluster),
            "127.0.0.1",
            API_REQUEST,
            &to_control_plane,
        ),
        (
            "node-1's mesh endpoint",
            mesh.as_str(),
            "node-1",
            MESH_REQUEST,
            &to_mesh,
        ),
    ];
    for (what, addr, server, request, client_of) in paths {
        let accepted = tls::exchange(&runtime, addr, server, client_of(&node_1), request);
        let answer = accepted.answer.map(|(_, answer)| answer);
        assert!(
            answer.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1 ")),
            "{what} answers a node of this cluster: {answer:?}"
        );
        for (signer, rogue, alert) in &rogues {
            let refused = tls::exchange(&runtime, addr, server, client_of(rogue), request);
            assert_eq!(
                refused.answer.map(|(_, answer)| answer),
                Err(rustls::Error::AlertReceived(*alert)),
                "{what} and a certificate from {signer}"
            );
            assert!(
                refused.took < skiff_orchestrator::tls::HANDSHAKE_TIMEOUT / 2,
                "{what} took {:?} to refuse {signer}",
                refused.took
            );
        }
    }

    // Plaintext gets a TLS alert (decode_error) and the connection closed,
    // at once.
    use std::io::{Read, Write};
    let mut plain = std::net::TcpStream::connect(mesh).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let sent = Instant::now();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    plain
        .read_to_end(&mut answer)
        .expect("the mesh endpoint closes a plaintext connection");
    let took = sent.elapsed();
    // An alert record (type 21) of 2 bytes: fatal (2), decode_error (50).
    assert_eq!(
        (answer.first(), answer.get(3..)),
        (Some(&21), Some(&[0, 2, 2, 50][..])),
        "a fatal decode_error alert: {answer:02x?}"
    );
    assert!(
        took < skiff_orchestrator::tls::HANDSHAKE_TIMEOUT / 2,
        "the mesh took {took:?} to refuse plaintext"
    );

    // A node certificate, though the cluster CA signed it, cannot pose as
    // the control plane, even for the name the CLI dials (the CA no
    // longer names a node `localhost`; an older one could).
    let (cert, key) = legacy_node_cert(&cluster, "localhost");
    let impostor = rustls::ServerConfig::builder_with_provider(skiff_orchestrator::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            skiff_orchestrator::tls::certs(&cert).unwrap(),
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(impostor));
        while let Ok((stream, _)) = listener.accept().await {
            let _ = acceptor.accept(stream).await;
        }
    });
    let fooled = support::expect_failure(
        cluster.home(),
        &["apps", "--server", &format!("https://localhost:{port}")],
    );
    assert!(
        fooled.contains("not this cluster's control plane"),
        "{fooled}"
    );
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

#[test]
fn a_guest_cannot_make_a_forwarding_node_replay_its_request() {
    let cluster = Cluster::start(3);
    let upstream = Upstream::start("counted");
    let app_dir = temp_dir();
    write_manifest(
        app_dir.path(),
        &format!(
            "[app]\nname = \"forger\"\n\
             [component.web]\nsource = {}\nroute = \"/...\"\n\
             allowed_outbound_hosts = [\"http://{}\"]\n\
             [component.web.scale]\nreplicas = 2\n\
             [component.web.placement]\nmemory = \"64MiB\"\n",
            toml_path(HOSTILE),
            upstream.addr
        ),
    );
    cluster.cli(&["deploy", app_dir.path().to_str().unwrap(), "--wait"]);
    let replicas = cluster.wait_running("forger", 2);
    assert_eq!(distinct_nodes(&replicas), 2, "{replicas:?}");
    let forwarder = cluster
        .nodes
        .iter()
        .find(|n| {
            replicas
                .iter()
                .all(|r| r.1.as_deref() != Some(n.name.as_str()))
        })
        .unwrap();
    wait_until(
        Duration::from_secs(15),
        "the node without a replica to forward",
        || (get(&forwarder.process.at("/ok")) == (200, "fine".to_string())).then_some(()),
    );

    // The guest answers 503 with `skiff-not-here` set, as a node holding
    // no replica would: the forwarding node must not replay the GET on
    // the other replica, and the client gets the guest's answer.
    for round in 1..=3 {
        let (status, body) = get(&forwarder
            .process
            .at(&format!("/not-here?http://{}/", upstream.addr)));
        assert_eq!(
            (status, body.as_str()),
            (503, "forged, after calling: 200 OK"),
            "round {round}"
        );
        assert_eq!(upstream.hits(), round, "the guest ran once per request");
    }
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
    let cluster = Cluster::start(1);
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

/// A client of the control plane speaking as node `name`, with the key and
/// certificate it saved in its data directory.
fn as_node(cluster: &Cluster, name: &str) -> ApiClient {
    let both =
        std::fs::read_to_string(cluster.home().join(format!("node-{name}/node.pem"))).unwrap();
    let identity = NodeIdentity::new(both.clone(), both, cluster.ca_pem());
    ApiClient::new(
        &cluster.api,
        identity.control_plane_client_config().unwrap(),
        None,
    )
}

#[test]
fn a_node_gets_no_more_than_it_joined_with() {
    let mut cluster = Cluster::start(2);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // "web" runs one replica on each node; "eu" needs zone=eu, "big" more
    // memory than any node declared.
    let web_dir = temp_dir();
    cluster.cli(&["deploy", &hello_app(web_dir.path(), "web", 2)]);
    let web = cluster.wait_running("web", 2);
    assert_eq!(distinct_nodes(&web), 2);
    let eu_dir = temp_dir();
    write_manifest(
        eu_dir.path(),
        &format!(
            "[app]\nname = \"eu\"\n[component.api]\nsource = {}\nroute = \"/eu/...\"\n\
             [component.api.placement]\nmemory = \"64MiB\"\nlabels = {{ zone = \"eu\" }}\n\
             [component.api.env]\nSECRET = \"eu-only\"\n",
            toml_path(HELLO)
        ),
    );
    cluster.cli(&["deploy", eu_dir.path().to_str().unwrap()]);
    let big_dir = temp_dir();
    write_manifest(
        big_dir.path(),
        &format!(
            "[app]\nname = \"big\"\n[component.api]\nsource = {}\nroute = \"/big/...\"\n\
             [component.api.placement]\nmemory = \"2GiB\"\n",
            toml_path(HELLO)
        ),
    );
    cluster.cli(&["deploy", big_dir.path().to_str().unwrap()]);
    let apps = cluster.json(&["apps"]);
    let package = |app: &str| {
        apps.as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == app)
            .unwrap()["package"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (web_package, eu_package) = (package("web"), package("eu"));

    // node-1 claims, heartbeat after heartbeat, the labels and memory it
    // would need for "eu" and "big", and sends a flood of log lines.
    let node1 = as_node(&cluster, "node-1");
    let ingress = cluster
        .node("node-1")
        .process
        .url
        .trim_start_matches("http://")
        .to_string();
    let heartbeat = |logs: Vec<Value>, first_seq: u64| {
        serde_json::json!({
            "version": 0,
            "labels": { "zone": "eu" },
            "memory": 1u64 << 40,
            "ingress": ingress,
            "mesh": cluster.node("node-1").mesh,
            "components": [{
                "app": "web", "component": "web", "package": web_package,
                "state": "running", "serving": web_package,
            }],
            "logs_first_seq": first_seq,
            "logs": logs,
        })
    };
    let line = |text: String| {
        serde_json::json!({
            "app": "web", "component": "web", "stream": "stdout", "line": text, "unix_ms": 1,
        })
    };
    let first_seq = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 3_600_000)
        * 1000;
    let flood: Vec<Value> = (0..100_000).map(|i| line(format!("flood {i}"))).collect();
    let sync = |body: &Value| {
        runtime
            .block_on(node1.call::<_, Value>(
                http::Method::POST,
                "/v1/node/sync",
                body,
                Duration::from_secs(30),
            ))
            .unwrap()
    };
    let answer = sync(&heartbeat(flood, first_seq));
    assert_eq!(
        answer["labels"],
        serde_json::json!({ "zone": "z1" }),
        "{answer}"
    );
    assert_eq!(answer["memory"], 1u64 << 30, "{answer}");
    sync(&heartbeat(
        vec![line("x".repeat(10 << 20))],
        first_seq + 100_000,
    ));
    for _ in 0..20 {
        sync(&heartbeat(Vec::new(), 0));
        std::thread::sleep(Duration::from_millis(100));
    }
    for app in ["eu", "big"] {
        let replicas = cluster.replicas(app);
        assert_eq!(replicas.len(), 1);
        assert_eq!(replicas[0].1, None, "{app} placed by a claim: {replicas:?}");
    }
    let nodes = cluster.json(&["nodes"]);
    let shown = &nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-1")
        .unwrap();
    assert_eq!(shown["labels"], serde_json::json!({ "zone": "z1" }));
    assert_eq!(shown["memory"], 1u64 << 30);

    // The flood is bounded: 2,000 lines, then one saying how many were
    // dropped; the 10 MB line is cut to 16 KiB and says so.
    let logs = wait_until(Duration::from_secs(10), "the bounded flood", || {
        let lines: Vec<String> = cluster
            .cli(&["logs", "web", "-o", "json"])
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["node"] == "node-1")
            .map(|l| l["line"].as_str().unwrap().to_string())
            .collect();
        lines
            .iter()
            .any(|l| l.ends_with("bytes cut)"))
            .then_some(lines)
    });
    assert_eq!(
        logs.iter().filter(|l| l.starts_with("flood ")).count(),
        2000
    );
    assert!(
        logs.iter().any(|l| l
            == "(98000 log lines dropped: node \"node-1\" sent more than 2000 in one heartbeat)"),
        "{:?}",
        &logs[logs.len().saturating_sub(3)..]
    );
    let cut = logs.iter().find(|l| l.ends_with("bytes cut)")).unwrap();
    assert!(cut.len() <= 16 * 1024, "{}", cut.len());

    // node-1 may fetch the package it runs, not another app's (whose
    // config holds that app's environment), nor learn whether a blob
    // exists.
    let fetch = |digest: &str| {
        runtime.block_on(node1.send(
            http::Method::GET,
            &format!("/v1/node/blobs/{digest}"),
            None,
            Duration::from_secs(30),
        ))
    };
    let manifest: Value = serde_json::from_slice(&fetch(&web_package).unwrap()).unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap();
    assert!(fetch(config).is_ok());
    for digest in [eu_package.clone(), format!("sha256:{}", "ab".repeat(32))] {
        let refused = fetch(&digest).unwrap_err();
        assert_eq!(
            refused.status(),
            Some(http::StatusCode::FORBIDDEN),
            "{refused}"
        );
        assert!(
            refused.to_string().contains(&format!(
                "blob {digest} is not part of a package assigned to node \"node-1\""
            )),
            "{refused}"
        );
    }

    // An admin's label places "eu"; then node-2 may fetch its package.
    let labelled = cluster.cli(&["label", "node-2", "zone=eu", "disk=ssd"]);
    assert!(
        labelled.contains("node \"node-2\" labelled: disk=ssd,zone=eu"),
        "{labelled}"
    );
    let eu = cluster.wait_running("eu", 1);
    assert_eq!(eu[0].1.as_deref(), Some("node-2"));
    let removed = cluster.json(&["label", "node-2", "--remove", "disk"]);
    assert_eq!(removed["labels"], serde_json::json!({ "zone": "eu" }));
    let bad = cluster.cli_fails(&["label", "node-2", "zone=e u"]);
    assert!(
        bad.contains("invalid value \"e u\" of label \"zone\""),
        "{bad}"
    );
    let unknown = cluster.cli_fails(&["label", "nosuch", "zone=eu"]);
    assert!(unknown.contains("no node \"nosuch\""), "{unknown}");

    // Restarted with other labels, node-1 keeps the ones it joined with,
    // and says so in its log.
    let mut old = cluster.nodes.remove(0);
    old.process.kill();
    let listen = old.process.url.trim_start_matches("http://").to_string();
    let restarted = cluster.launch_node(
        "node-1",
        &[
            "--listen",
            &listen,
            "--mesh-listen",
            &old.mesh,
            "--labels",
            "zone=eu",
        ],
    );
    restarted
        .process
        .wait_for_stderr("but the control plane places by \"zone=z1\"");
    cluster.nodes.insert(0, restarted);
    let nodes = cluster.json(&["nodes"]);
    let shown = &nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-1")
        .unwrap();
    assert_eq!(shown["labels"], serde_json::json!({ "zone": "z1" }));
}
