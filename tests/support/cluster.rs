//! A control plane and its nodes on loopback addresses 127.0.0.x, sharing
//! one Skiff home and driven through the `skiff` CLI: the harness of the
//! cluster test files.

use super::{
    Running, expect_failure, skiff, start_server, temp_dir, toml_path, wait_until, write_manifest,
};
use serde_json::Value;
use skiff_orchestrator::api_client::ApiClient;
use skiff_orchestrator::mesh::{Members, NodeIdentity};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// Cluster tests of one test binary run one at a time: each starts several
/// processes whose heartbeats should not starve on a small machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the lock that runs cluster tests one at a time.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A replica as `skiff ps` shows it: `(id, node, state)`.
pub type Replica = (String, Option<String>, String);

/// A control plane and its nodes, sharing one Skiff home.
pub struct Cluster {
    _serial: std::sync::MutexGuard<'static, ()>,
    home: tempfile::TempDir,
    /// The control plane.
    pub server: Running,
    /// `https://127.0.0.1:PORT`
    pub api: String,
    /// The nodes, `node-1` on 127.0.0.2, `node-2` on 127.0.0.3, ...
    pub nodes: Vec<TestNode>,
}

/// A node of a [`Cluster`].
pub struct TestNode {
    /// Its name, `node-N`.
    pub name: String,
    /// Its process; `url` is its ingress.
    pub process: Running,
    /// Its mesh address.
    pub mesh: String,
}

impl Cluster {
    /// A control plane with `server_args` and `nodes` nodes on 127.0.0.2,
    /// .3, ... each labelled `zone=z<N>` and offering 1 GiB.
    pub fn start(nodes: usize, server_args: &[&str]) -> Cluster {
        Cluster::start_with(nodes, server_args, &[])
    }

    /// [`Cluster::start`], each node started with `node_args` too.
    pub fn start_with(nodes: usize, server_args: &[&str], node_args: &[&str]) -> Cluster {
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
            cluster.add_node_with(i, node_args);
        }
        cluster
    }

    /// The Skiff home the CLI, the control plane and the nodes share.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Joins `node-<i>` on 127.0.0.<i+1>.
    pub fn add_node(&mut self, i: usize) {
        self.add_node_with(i, &[]);
    }

    /// Joins `node-<i>` on 127.0.0.<i+1>, with `extra` `skiff node`
    /// arguments.
    pub fn add_node_with(&mut self, i: usize, extra: &[&str]) {
        let token = self.cli(&["join-token"]).trim().to_string();
        let name = format!("node-{i}");
        let listen = format!("127.0.0.{}:0", i + 1);
        let mut args = vec!["--token", token.as_str(), "--listen", listen.as_str()];
        args.extend_from_slice(extra);
        let node = self.launch_node(&name, &args);
        self.nodes.push(node);
    }

    /// Kills node `name` and starts it again on the same addresses, with
    /// the identity it saved (no token).
    pub fn restart_node(&mut self, name: &str) {
        let index = self.nodes.iter().position(|n| n.name == name).unwrap();
        let mut old = self.nodes.remove(index);
        old.process.kill();
        let listen = old.process.url.trim_start_matches("http://").to_string();
        let node = self.launch_node(name, &["--listen", &listen, "--mesh-listen", &old.mesh]);
        self.nodes.insert(index, node);
    }

    /// Starts node `name` (`node-N`, labelled `zone=zN`, offering 1 GiB
    /// unless `extra` has its own `--capacity`) with `extra` `skiff node`
    /// arguments.
    pub fn launch_node(&self, name: &str, extra: &[&str]) -> TestNode {
        let zone = format!("zone=z{}", name.trim_start_matches("node-"));
        let mut args = vec![
            "node", "--server", &self.api, "--name", name, "--labels", &zone,
        ];
        if !extra.contains(&"--capacity") {
            args.extend_from_slice(&["--capacity", "1GiB"]);
        }
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

    /// Runs `skiff ARGS`, expecting success; returns `(stdout, stderr)`.
    pub fn cli_with_stderr(&self, args: &[&str]) -> (String, String) {
        let output = skiff(self.home())
            .args(args)
            .output()
            .expect("running skiff");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "skiff {args:?} failed:\n{stderr}");
        (String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
    }

    /// Runs `skiff ARGS`, expecting success; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_with_stderr(args).0
    }

    /// Runs `skiff ARGS`, expecting failure; returns stderr.
    pub fn cli_fails(&self, args: &[&str]) -> String {
        expect_failure(self.home(), args)
    }

    /// `skiff ARGS -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.cli(&all)).expect("JSON output")
    }

    /// The package digest `skiff apps` shows for `app`.
    pub fn package_of(&self, app: &str) -> String {
        package_in(&self.json(&["apps"]), app)
    }

    /// Every replica of `app`.
    pub fn replicas(&self, app: &str) -> Vec<Replica> {
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
    pub fn wait_running(&self, app: &str, count: usize) -> Vec<Replica> {
        wait_until(
            Duration::from_secs(30),
            &format!("{count} running replicas of {app}"),
            || {
                let replicas = self.replicas(app);
                (replicas.len() == count && replicas.iter().all(|r| r.2 == "running"))
                    .then_some(replicas)
            },
        )
    }

    /// Waits until every node has heard of `replicas` replicas of `app`
    /// (endpoints in the desired state it saved): from then on, its
    /// ingress serves the app or forwards to them.
    pub fn wait_known_everywhere(&self, app: &str, replicas: usize) {
        for node in &self.nodes {
            wait_until(
                Duration::from_secs(30),
                &format!("{} to know {replicas} replicas of {app}", node.name),
                || {
                    let desired = self.desired_state(&node.name)?;
                    let routing = desired["apps"]
                        .as_array()?
                        .iter()
                        .find(|a| a["name"] == app)?
                        .clone();
                    let known: usize = routing["endpoints"]
                        .as_object()?
                        .values()
                        .filter_map(Value::as_array)
                        .map(Vec::len)
                        .sum();
                    (known == replicas).then_some(())
                },
            );
        }
    }

    /// A node running none of `replicas` (as [`Cluster::replicas`] lists
    /// them): requests entering there are all forwarded.
    pub fn node_without(&self, replicas: &[Replica]) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| {
                !replicas
                    .iter()
                    .any(|r| r.1.as_deref() == Some(n.name.as_str()))
            })
            .expect("a node without a replica")
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> &TestNode {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    /// An API client trusting the cluster CA, with bearer `token`.
    pub fn admin_client(&self, token: Option<&str>) -> ApiClient {
        let tls = skiff_orchestrator::mesh::tls::client_trusting(&self.ca_pem()).unwrap();
        ApiClient::new(&self.api, tls, token.map(str::to_string))
    }

    /// The cluster CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        // From the CLI's settings: a control plane on etcd keeps its CA
        // there, not in its data directory.
        let settings: Value =
            serde_json::from_slice(&std::fs::read(self.home().join("cluster.json")).unwrap())
                .unwrap();
        let current = settings["current"].as_str().unwrap();
        settings["clusters"][current]["ca_pem"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The desired state node `name` last heard from the control plane,
    /// as it saved it in its data directory.
    pub fn desired_state(&self, name: &str) -> Option<Value> {
        let saved = std::fs::read(self.home().join(format!("node-{name}/desired.json"))).ok()?;
        serde_json::from_slice(&saved).ok()
    }
}

/// An app `name` of `replicas` replicas of `source` on route `/...`,
/// reserving 64 MiB each, with `env` (TOML inline table entries).
pub fn app(dir: &Path, name: &str, source: &str, replicas: u32, env: &str) -> String {
    write_manifest(
        dir,
        &format!(
            "[app]\nname = \"{name}\"\n\
             [component.web]\nsource = {}\nroute = \"/...\"\nenv = {{ {env} }}\n\
             [component.web.scale]\nreplicas = {replicas}\n\
             [component.web.placement]\nmemory = \"64MiB\"\n",
            toml_path(source)
        ),
    );
    dir.to_str().unwrap().to_string()
}

/// The package digest that `apps` (`skiff apps -o json` output) shows
/// for `app`.
pub fn package_in(apps: &Value, app: &str) -> String {
    apps.as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == app)
        .unwrap()["package"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The distinct nodes `replicas` are on.
pub fn nodes_of(replicas: &[Replica]) -> Vec<String> {
    let mut nodes: Vec<_> = replicas.iter().filter_map(|r| r.1.clone()).collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

/// Sends `GET path` as HTTP/1.0 to `url` (`http://ADDR`), with `Host:
/// host` when given (HTTP/1.0 may leave it out); returns (status, body).
pub fn get_as_host(url: &str, host: Option<&str>, path: &str) -> (u16, String) {
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    get_with_headers(url, path, &host)
}

/// `GET path` (HTTP/1.0) at `url` with `headers` (`Name: value` lines,
/// each ending in CRLF): status and body.
pub fn get_with_headers(url: &str, path: &str, headers: &str) -> (u16, String) {
    let addr = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\n{headers}\r\n").unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete HTTP answer: {answer:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// The control plane's `127.0.0.1:PORT`.
pub fn api_addr(cluster: &Cluster) -> &str {
    cluster.api.trim_start_matches("https://")
}

/// A node's request to the control plane (for a blob that does not exist).
pub const API_REQUEST: &[u8] = b"GET /v1/node/blobs/sha256:00 HTTP/1.1\r\nhost: x\r\n\r\n";

/// A forwarded request as one node sends another over the mesh.
pub const MESH_REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nhost: x\r\nskiff-app: a\r\nskiff-component: b\r\n\r\n";

/// The identity node `name` saved in its data directory.
pub fn saved_identity(cluster: &Cluster, name: &str) -> NodeIdentity {
    let dir = cluster.home().join(format!("node-{name}"));
    let both = std::fs::read_to_string(dir.join("node.pem")).unwrap();
    let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    NodeIdentity::new(both.clone(), both, ca)
}

/// Members holding exactly `identity`'s node, of its incarnation.
pub fn only(identity: &NodeIdentity) -> Members {
    let node = identity.node("skiff").unwrap();
    let members = Members::new("skiff");
    members.set([(node.name, node.incarnation)].into_iter().collect());
    members
}

/// The admin token the control plane wrote in its data directory.
pub fn admin_token(cluster: &Cluster) -> String {
    std::fs::read_to_string(cluster.home().join("server/admin-token")).unwrap()
}

/// Deploys the probe app `name` with `replicas` replicas (spread, 64 MiB
/// each) and waits until they all run.
pub fn deploy_probe(cluster: &Cluster, name: &str, replicas: u32) {
    let dir = crate::support::temp_dir();
    let app = probe_app(
        dir.path(),
        name,
        &format!(
            "[component.probe.scale]\nreplicas = {replicas}\n\
             [component.probe.placement]\nmemory = \"64MiB\"\n"
        ),
    );
    cluster.cli(&["deploy", &app, "--wait"]);
    cluster.wait_running(name, replicas as usize);
}

/// An app `name` of one component, `probe` (the probe guest), on route
/// `/...`, with `extra` manifest lines: keys of `[component.probe]`, then
/// its `[component.probe.*]` tables.
pub fn probe_app(dir: &Path, name: &str, extra: &str) -> String {
    write_manifest(
        dir,
        &format!(
            "[app]\nname = \"{name}\"\n[component.probe]\nsource = {}\nroute = \"/...\"\n{extra}",
            toml_path(skiff_test_guests::PROBE)
        ),
    );
    dir.to_str().unwrap().to_string()
}

/// The replicas of `app` that `skiff ps APP -o json` lists, with the
/// Skiff home `home` (a `skiff up`'s); 0 when it cannot tell.
pub fn replica_count(home: &Path, app: &str) -> usize {
    let output = skiff(home)
        .args(["ps", app, "-o", "json"])
        .output()
        .expect("running skiff ps");
    serde_json::from_slice::<Value>(&output.stdout)
        .ok()
        .and_then(|replicas| replicas.as_array().map(Vec::len))
        .unwrap_or(0)
}

/// Makes a process slow: stops it for `pause` in every `period`, until
/// dropped (then it runs on).
pub struct Pauser {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pauser {
    /// Starts pausing process `pid`.
    pub fn start(pid: u32, pause: Duration, period: Duration) -> Pauser {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let signal = |s: &str| {
                std::process::Command::new("kill")
                    .args([&format!("-{s}"), &pid.to_string()])
                    .status()
                    .unwrap();
            };
            while !stopping.load(Ordering::Relaxed) {
                signal("STOP");
                std::thread::sleep(pause);
                signal("CONT");
                std::thread::sleep(period.saturating_sub(pause));
            }
        });
        Pauser {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Pauser {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
