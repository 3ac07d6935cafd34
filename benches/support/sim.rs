//! Simulated nodes for the control-plane benchmarks, as kwok and Nomad's
//! nomad-nodesim simulate them, and the benchmarks' admin calls. Nodes: each joins with a one-time token and its
//! own certificate, and heartbeats over mTLS with the requests `skiff
//! node` sends, reporting what it is assigned as running; it runs,
//! serves and pulls nothing.

#![allow(dead_code)]

use http::Method;
use serde::Deserialize;
use skiff_orchestrator::api::{
    ComponentStatus, JoinRequest, JoinResponse, LoadState, StatusReport, SyncRequest,
};
use skiff_orchestrator::api_client::ApiClient;
use skiff_orchestrator::mesh::NodeIdentity;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A node that joins and heartbeats like `skiff node`, and runs nothing.
pub struct SimNode {
    /// Its name, `sim-I`.
    pub name: String,
    api: ApiClient,
    /// Its ingress and mesh addresses, as it reports them (nothing
    /// listens there: no one dials a simulated node).
    addresses: (String, String),
    memory: u64,
    /// Replicas in the assignments last received.
    pub held: AtomicU64,
    /// Heartbeats that failed.
    pub errors: AtomicU64,
    /// Cleared to stop heartbeating, as a node that died.
    pub alive: AtomicBool,
    /// What it holds, by (app, component): package and replicas.
    assigned: Mutex<BTreeMap<(String, String), (String, u32)>>,
}

/// The parts of a sync answer a simulated node reads.
#[derive(Deserialize)]
struct Synced {
    version: u64,
    #[serde(default)]
    epoch: u64,
    heartbeat_ms: u64,
    #[serde(default)]
    desired: Option<Desired>,
    #[serde(default)]
    status_seq: Option<u64>,
}

#[derive(Deserialize)]
struct Desired {
    #[serde(default)]
    full: bool,
    #[serde(default)]
    assignments: Vec<skiff_orchestrator::api::Assignment>,
    #[serde(default)]
    unassigned: Vec<(String, String, String)>,
}

impl SimNode {
    /// Joins as `sim-I` with `token` through `client` (which trusts the
    /// token's CA pin), offering `memory`, labelled with one of three
    /// zones.
    ///
    /// # Errors
    ///
    /// The join refused, or the control plane unreachable.
    pub async fn join(
        client: &ApiClient,
        token: &str,
        i: usize,
        memory: u64,
    ) -> anyhow::Result<SimNode> {
        let (key_pem, csr_pem) = NodeIdentity::request()?;
        let name = format!("sim-{i}");
        let joined: JoinResponse = client
            .post(
                "/v1/join",
                &JoinRequest {
                    token: token.to_string(),
                    name: name.clone(),
                    csr_pem,
                    labels: BTreeMap::from([(
                        "zone".to_string(),
                        ["a", "b", "c"][i % 3].to_string(),
                    )]),
                    memory,
                },
            )
            .await?;
        let identity = NodeIdentity::new(key_pem, joined.cert_pem, joined.ca_pem);
        let api = ApiClient::new(
            &client.servers(),
            identity.control_plane_client_config()?,
            None,
        );
        // Distinct loopback addresses, one per node.
        let host = format!("127.{}.{}.{}", 1 + i / 62_500, (i / 250) % 250, 2 + i % 250);
        Ok(SimNode {
            name,
            api,
            addresses: (format!("{host}:3000"), format!("{host}:3001")),
            memory,
            held: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            alive: AtomicBool::new(true),
            assigned: Mutex::new(BTreeMap::new()),
        })
    }

    /// Heartbeats as `skiff node` does, until `alive` is cleared: each
    /// sync is held by the control plane until the desired state changes
    /// or a heartbeat passes; each reports every component assigned as
    /// running.
    pub async fn heartbeat(self: std::sync::Arc<Self>) {
        let (mut version, mut epoch) = (0, 0);
        let mut heartbeat = Duration::from_secs(1);
        let run = 1 + rand_u64() % 1_000_000;
        let mut seq = 0;
        // What the status numbered `seq` said: once the control plane
        // holds it, the next reports say only what changed, as a node's do.
        let mut reported: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut acknowledged = None;
        while self.alive.load(Ordering::Relaxed) {
            let now: BTreeMap<(String, String), String> = self
                .assigned
                .lock()
                .unwrap()
                .iter()
                .map(|(key, (package, _))| (key.clone(), package.clone()))
                .collect();
            let base = acknowledged.filter(|held| *held == seq);
            let removed: Vec<(String, String, String)> = match base {
                Some(_) => reported
                    .iter()
                    .filter(|(key, package)| now.get(*key) != Some(*package))
                    .map(|((app, component), package)| {
                        (app.clone(), component.clone(), package.clone())
                    })
                    .collect(),
                None => Vec::new(),
            };
            let components: Vec<ComponentStatus> = now
                .iter()
                .filter(|(key, package)| base.is_none() || reported.get(*key) != Some(*package))
                .map(|((app, component), package)| ComponentStatus {
                    app: app.clone(),
                    component: component.clone(),
                    package: package.clone(),
                    state: LoadState::Running,
                    serving: Some(package.clone()),
                    error: None,
                })
                .collect();
            if base.is_none() || !components.is_empty() || !removed.is_empty() {
                seq += 1;
            }
            reported = now;
            let request = SyncRequest {
                used: 20 << 20,
                pressure: false,
                version,
                epoch,
                status: StatusReport {
                    run,
                    seq,
                    base,
                    components,
                    removed,
                },
                memory: self.memory,
                ingress: self.addresses.0.clone(),
                mesh: self.addresses.1.clone(),
                logs_first_seq: 0,
                logs: Vec::new(),
                load: Vec::new(),
                // The fleet has no certificates: its bundle is empty.
                tls: String::new(),
                https: None,
            };
            let answer = self
                .api
                .call::<_, Synced>(
                    Method::POST,
                    "/v1/node/sync",
                    &request,
                    heartbeat + Duration::from_secs(10),
                )
                .await;
            match answer {
                Ok(synced) => {
                    (version, epoch) = (synced.version, synced.epoch);
                    acknowledged = synced.status_seq;
                    heartbeat = Duration::from_millis(synced.heartbeat_ms.max(100));
                    if let Some(desired) = synced.desired {
                        let mut assigned = self.assigned.lock().unwrap();
                        if desired.full {
                            assigned.clear();
                        }
                        for (app, component, _) in desired.unassigned {
                            assigned.remove(&(app, component));
                        }
                        for a in desired.assignments {
                            assigned.insert((a.app, a.component), (a.package, a.replicas));
                        }
                        let held = assigned.values().map(|(_, n)| u64::from(*n));
                        self.held.store(held.sum(), Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    // The control plane may or may not hold that report.
                    acknowledged = None;
                    if self.errors.fetch_add(1, Ordering::Relaxed) == 0
                        && std::env::var_os("SKIFF_SIM_DEBUG").is_some()
                    {
                        eprintln!("{}: heartbeat failed: {e:#}", self.name);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// Joins `nodes` simulated nodes (`sim-0`...) offering `memory` each, with
/// a one-time token apiece from `admin`, `at_once` joins in flight; then
/// starts their heartbeats on `runtime` and waits (at most `patience`)
/// until the control plane counts them all ready.
pub fn join_fleet(
    runtime: &tokio::runtime::Runtime,
    admin: &ApiClient,
    server: &str,
    nodes: usize,
    memory: u64,
    at_once: usize,
    patience: Duration,
) -> Vec<std::sync::Arc<SimNode>> {
    use futures::StreamExt;
    use skiff_orchestrator::api::{JoinTokenResponse, NodeView};
    let fleet: Vec<std::sync::Arc<SimNode>> = runtime.block_on(async {
        let token = || async {
            let token: JoinTokenResponse = admin
                .post("/v1/join-tokens", &serde_json::json!({}))
                .await
                .expect("a join token");
            token.token
        };
        // A node that has not joined trusts the CA pinned in its token;
        // one client (and connection) for every join.
        let first = token().await;
        let pin = first.split('.').nth(1).expect("a token has a CA pin");
        let tls = skiff_orchestrator::mesh::tls::client_pinned(pin).expect("a pinned client");
        let joining = ApiClient::new(server, tls, None);
        futures::stream::iter(0..nodes)
            .map(|i| {
                let (joining, token) = (joining.clone(), token);
                async move {
                    let node = SimNode::join(&joining, &token().await, i, memory)
                        .await
                        .unwrap_or_else(|e| panic!("simulated node {i} cannot join: {e:#}"));
                    std::sync::Arc::new(node)
                }
            })
            .buffered(at_once)
            .collect()
            .await
    });
    for node in &fleet {
        runtime.spawn(node.clone().heartbeat());
    }
    poll(
        runtime,
        admin,
        "/v1/nodes",
        Duration::from_millis(100),
        patience,
        |views: Vec<NodeView>| {
            (views.iter().filter(|n| n.state == "ready").count() == nodes).then_some(())
        },
    );
    fleet
}

/// The admin client the CLI would use, from `HOME/cluster.json`.
pub async fn admin_client(home: &std::path::Path) -> ApiClient {
    let settings: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("cluster.json")).unwrap()).unwrap();
    let server = settings["current"].as_str().unwrap();
    let cluster = &settings["clusters"][server];
    let tls = skiff_orchestrator::mesh::tls::client_trusting(cluster["ca_pem"].as_str().unwrap())
        .expect("the cluster CA");
    ApiClient::new(
        server,
        tls,
        Some(cluster["token"].as_str().unwrap().to_string()),
    )
}

/// Polls `GET path` every `every` until `done` returns a value; panics
/// after `patience`.
pub fn poll<T: serde::de::DeserializeOwned, R>(
    runtime: &tokio::runtime::Runtime,
    admin: &ApiClient,
    path: &str,
    every: Duration,
    patience: Duration,
    mut done: impl FnMut(T) -> Option<R>,
) -> R {
    let deadline = std::time::Instant::now() + patience;
    loop {
        let answer: T = runtime
            .block_on(admin.get(path))
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        if let Some(value) = done(answer) {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "GET {path} never showed it done"
        );
        std::thread::sleep(every);
    }
}

/// When all `expected` replicas exist and each is on a node or was found
/// unschedulable by the controller: (placed, unschedulable).
pub fn settled(
    views: &[skiff_orchestrator::api::ReplicaView],
    expected: usize,
) -> Option<(usize, usize)> {
    let placed = views.iter().filter(|r| r.node.is_some()).count();
    let unschedulable = views
        .iter()
        .filter(|r| r.node.is_none())
        .filter(|r| {
            r.reason
                .as_deref()
                .is_some_and(|why| why != "not placed yet")
        })
        .count();
    (views.len() == expected && placed + unschedulable == expected)
        .then_some((placed, unschedulable))
}

/// A random number, from the OS.
fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    u64::from_le_bytes(bytes)
}
