//! The node agent (`skiff node`): joins the cluster, heartbeats, runs the
//! replicas assigned to it, serves HTTP ingress for every app, and
//! exchanges forwarded requests with other nodes over mTLS.
//!
//! The heartbeat is also the watch: the control plane holds each
//! heartbeat until the desired state changes or a heartbeat interval
//! passes, so assignments arrive as soon as they are made. When the
//! control plane is unreachable the node keeps serving what it has and
//! forwarding with the endpoints it last saw (static stability), also
//! across its own restarts: the last desired state is kept on disk.

mod hold;
mod https;
mod identity;
mod ingress;
mod load;
pub(crate) mod reach;
pub(crate) mod replicas;
pub(crate) mod routing;

use crate::api::{DesiredChange, DesiredState, GuestLine, SyncRequest, SyncResponse};
use crate::api_client::ApiClient;
use anyhow::Context;
use http::Method;
use skiff_runtime::capability::logging::{LogSink, LogStream};
use skiff_runtime::package::Store;
use skiff_runtime::{CompileCache, EngineConfig, SkiffEngine};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Guest log lines a node keeps while the control plane is away.
const MAX_BUFFERED_LINES: usize = 10_000;
/// Lines shipped per heartbeat: all the control plane takes from one.
const LINES_PER_SYNC: usize = crate::api::MAX_LOG_LINES_PER_SYNC;
/// The last desired state heard, in the data directory.
const LAST_DESIRED: &str = "desired.json";

pub use crate::api::UNLIMITED_MEMORY;
pub use hold::HOLD_LIMIT;

/// The memory a node declared when it joined, in its data directory.
const DECLARED_CAPACITY: &str = "capacity";

/// The memory the node with data directory `data_dir` declared when it
/// joined, if it saved it.
pub fn declared_capacity(data_dir: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(data_dir.join(DECLARED_CAPACITY))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The mesh address the node last listened on, in its data directory.
const LAST_MESH_ADDR: &str = "mesh-addr";

/// Binds the mesh listener. Without a port given, the node takes the one
/// it had before (saved in `data_dir`), so peers that last heard of it
/// while the control plane is away still reach it after a restart; a free
/// one only when that is taken. The address bound is saved.
async fn bind_mesh(wanted: SocketAddr, data_dir: &std::path::Path) -> anyhow::Result<TcpListener> {
    let saved = data_dir.join(LAST_MESH_ADDR);
    let last: Option<SocketAddr> = std::fs::read_to_string(&saved)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .filter(|last: &SocketAddr| wanted.port() == 0 && last.ip() == wanted.ip());
    let listener = match last {
        Some(last) => match TcpListener::bind(last).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(
                    "cannot listen on the mesh address {last} this node had before ({e}); other nodes reach the new one once the control plane tells them"
                );
                bind_as(wanted, "the mesh").await?
            }
        },
        None => bind_as(wanted, "the mesh").await?,
    };
    if let Err(e) =
        crate::home::write_private(&saved, listener.local_addr()?.to_string().as_bytes())
    {
        tracing::warn!("cannot keep the mesh address for the next start: {e:#}");
    }
    Ok(listener)
}

/// Binds `addr` for `what`, saying which address failed and why.
async fn bind_as(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!("cannot listen on {addr} for {what}: the address is already in use")
        } else {
            anyhow::anyhow!("cannot listen on {addr} for {what}: {e}")
        }
    })
}

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The control plane, `https://host:port`.
    pub server: String,
    /// A join token; needed only the first time.
    pub token: Option<String>,
    /// The node's name in the cluster.
    pub name: String,
    /// `key=value` labels for placement.
    pub labels: BTreeMap<String, String>,
    /// Memory offered to replicas, bytes.
    pub memory: u64,
    /// HTTP ingress address.
    pub listen: SocketAddr,
    /// HTTPS ingress address, if the node serves HTTPS.
    pub https_listen: Option<SocketAddr>,
    /// Mesh (mTLS) address; port 0 picks a free one.
    pub mesh_listen: SocketAddr,
    /// Where the node's identity, packages and cache live.
    pub data_dir: PathBuf,
    /// The longest a request for a component scaled to zero is held
    /// waiting for a replica; default [`HOLD_LIMIT`].
    pub hold_limit: Duration,
    /// How requests forwarded to other nodes choose among replicas.
    pub balancer: crate::mesh::Balancer,
}

/// A node that joined and bound its addresses, ready to run.
pub struct Node {
    shared: Arc<NodeShared>,
    ingress: TcpListener,
    https: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    mesh: TcpListener,
}

/// What the node's tasks share.
pub(crate) struct NodeShared {
    // Declared (so dropped) before the engine that loaded them.
    pub(crate) replicas: replicas::LocalReplicas,
    pub(crate) config: NodeConfig,
    ingress_addr: SocketAddr,
    /// Where HTTPS ingress listens, if it does.
    pub(crate) https_addr: Option<SocketAddr>,
    mesh_addr: SocketAddr,
    engine: SkiffEngine,
    cache: CompileCache,
    packages: Store,
    /// Held while pulling into or collecting from `packages`.
    store_lock: tokio::sync::Mutex<()>,
    pub(crate) identity: RwLock<identity::Current>,
    pub(crate) routing: RwLock<Arc<routing::Routing>>,
    /// Signalled whenever `routing` changes.
    pub(crate) routing_changed: Notify,
    /// The demand on the components served here, for the autoscaler.
    pub(crate) load: load::LoadMeter,
    /// Requests held for components scaled to zero.
    pub(crate) holds: hold::Holds,
    pub(crate) forwarder: crate::mesh::forward::Forwarder,
    /// The nodes honoured on the mesh, as last heard.
    pub(crate) members: crate::mesh::Members,
    /// Held while the node runs: one process per data directory.
    _data_dir_lock: std::fs::File,
    logs: Mutex<LogBuffer>,
    /// Something the control plane should hear about happened.
    pub(crate) changed: Notify,
    /// Something the control plane should hear about at once happened (a
    /// request is held for a component scaled to zero): told without
    /// waiting for other news to gather.
    pub(crate) urgent: Notify,
    /// The desired state last heard, whole.
    desired: Mutex<DesiredState>,
    /// `desired` changed since it was last saved.
    unsaved: Notify,
    /// Where guests' mesh calls go.
    mesh_router: Arc<crate::mesh::calls::NodeMesh>,
    /// The certificates of workloads here that call across nodes.
    pub(crate) workload_identities: crate::mesh::workload_certs::WorkloadIdentities,
    /// What ingress answered.
    pub(crate) ingress_metrics: ingress::IngressMetrics,
    /// The certificates HTTPS ingress serves, and ACME challenges.
    pub(crate) tls: Arc<https::ServedTls>,
}

impl std::fmt::Debug for NodeShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeShared")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl NodeShared {
    /// Whether `workload` is placed on this node, as last heard.
    pub(crate) fn runs(&self, workload: &skiff_runtime::mesh::WorkloadId) -> bool {
        placed_in(&self.desired.lock().expect("desired state lock"), workload)
    }

    /// The router for guests' calls to `*.skiff.internal`.
    pub(crate) fn mesh_router(&self) -> Arc<dyn skiff_runtime::mesh::MeshRouter> {
        self.mesh_router.clone()
    }
}

struct LogBuffer {
    lines: VecDeque<(u64, GuestLine)>,
    next: u64,
}

impl Node {
    /// Loads or obtains (joining with the token) the node's identity and
    /// binds its ingress and mesh addresses.
    ///
    /// # Errors
    ///
    /// A refused join, an unreachable control plane at first join, or an
    /// address that cannot be bound.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
        crate::mesh::ca::check_node_name(&config.name)?;
        // One process per data directory: two would share one identity
        // and fight over its files. Held until the process exits.
        let lock_path = config.data_dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            anyhow::bail!(
                "another skiff node is running with the data directory {}; stop it, or give this one another --name or --data-dir",
                config.data_dir.display()
            );
        }
        // No peer is trusted on the mesh until the control plane (or the
        // last desired state saved) says who the members are.
        let members = crate::mesh::Members::new(crate::mesh::CLUSTER);
        let current = identity::load_or_join(&config, &members).await?;
        let ingress = bind_as(config.listen, "ingress").await?;
        let https = match config.https_listen {
            Some(addr) => Some(bind_as(addr, "HTTPS ingress").await?),
            None => None,
        };
        let https_addr = https.as_ref().map(TcpListener::local_addr).transpose()?;
        let mesh = bind_mesh(config.mesh_listen, &config.data_dir).await?;
        let ingress_addr = ingress.local_addr()?;
        let mesh_addr = mesh.local_addr()?;
        // What the node offers is also where it stops starting instances:
        // reservations are a bet, its resident memory is the truth.
        let engine = SkiffEngine::new(EngineConfig {
            memory_budget: (config.memory < UNLIMITED_MEMORY).then_some(config.memory),
            ..EngineConfig::default()
        })?;
        warn_if_capacity_below_baseline(config.memory);
        let cache = CompileCache::open(&crate::home::cache_dir())?;
        let packages = Store::open(&config.data_dir.join("packages"))?;
        let forwarder = crate::mesh::forward::Forwarder::new(&current.identity, &members)?
            .with_balancer(config.balancer);
        let workload_identities =
            crate::mesh::workload_certs::WorkloadIdentities::new(&config.data_dir);
        let tls = Arc::new(https::ServedTls::load(&config.data_dir));
        let https = match https {
            Some(listener) => Some((listener, https::acceptor(tls.clone())?)),
            None => None,
        };
        let shared = Arc::new_cyclic(|weak| NodeShared {
            replicas: replicas::LocalReplicas::default(),
            config,
            ingress_addr,
            https_addr,
            tls,
            mesh_addr,
            engine,
            cache,
            packages,
            store_lock: tokio::sync::Mutex::new(()),
            identity: RwLock::new(current),
            routing: RwLock::new(Arc::new(routing::Routing::default())),
            routing_changed: Notify::new(),
            load: load::LoadMeter::default(),
            holds: hold::Holds::default(),
            forwarder,
            members,
            _data_dir_lock: lock,
            logs: Mutex::new(LogBuffer {
                lines: VecDeque::new(),
                // Line numbers keep increasing across restarts of the node,
                // so the control plane can tell a resent line from a new one.
                next: crate::clock::unix_ms() * 1000,
            }),
            changed: Notify::new(),
            urgent: Notify::new(),
            desired: Mutex::new(DesiredState::default()),
            unsaved: Notify::new(),
            mesh_router: Arc::new(crate::mesh::calls::NodeMesh::new(weak.clone())),
            workload_identities,
            ingress_metrics: Default::default(),
        });
        Ok(Node {
            shared,
            ingress,
            https,
            mesh,
        })
    }

    /// Where ingress listens.
    pub fn ingress_addr(&self) -> SocketAddr {
        self.shared.ingress_addr
    }

    /// Where HTTPS ingress listens, if it does.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.shared.https_addr
    }

    /// Where the mesh endpoint listens.
    pub fn mesh_addr(&self) -> SocketAddr {
        self.shared.mesh_addr
    }

    /// Adds the node's metrics to `registry`: its runtime's (requests,
    /// instances, loads), its forwards to other nodes, and when its
    /// certificate and the cluster CA's expire.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.shared.engine.metrics().register(registry);
        self.shared.forwarder.metrics.register(registry);
        self.shared.ingress_metrics.register(registry);
        let shared = Arc::downgrade(&self.shared);
        registry.register_collector(Box::new(crate::mesh::metrics::CertificateExpiry(
            move || {
                let Some(shared) = shared.upgrade() else {
                    return Vec::new();
                };
                let current = shared.identity.read().expect("identity lock");
                vec![
                    ("node", current.identity.cert_pem().to_string()),
                    ("ca", current.identity.ca_pem().to_string()),
                ]
            },
        )));
    }

    /// Heartbeats, runs replicas and serves until `shutdown` completes;
    /// then finishes in-flight requests.
    ///
    /// # Errors
    ///
    /// The control plane refused this node's certificate again and again
    /// (the node was forgotten): it stops serving.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let saved = std::fs::read(self.shared.config.data_dir.join(LAST_DESIRED));
        if let Ok(desired) = saved.as_deref().map(serde_json::from_slice::<DesiredState>) {
            match desired {
                Ok(desired) => self.shared.apply(DesiredChange {
                    full: true,
                    assignments: desired.assignments,
                    apps: desired.apps,
                    members: Some(desired.members),
                    ..DesiredChange::default()
                }),
                Err(e) => tracing::warn!("ignoring the saved desired state: {e}"),
            }
        }
        let saver = tokio::spawn(save_loop(self.shared.clone()));
        // Packages of versions replaced before this start are not in use:
        // collected once the replicas have had time to load.
        let collector = self.shared.clone();
        let first_collection = tokio::spawn(async move {
            tokio::time::sleep(FIRST_COLLECTION).await;
            replicas::collect_unused_packages(&collector).await;
        });
        let mut sync = tokio::spawn(sync_loop(self.shared.clone()));
        let load = tokio::spawn(load::run(self.shared.clone()));
        // The control plane hears of memory pressure at once, not with the
        // next heartbeat, so it stops placing replicas here.
        let mut pressure = self.shared.engine.memory().changes();
        let pressure_shared = self.shared.clone();
        let pressure_reports = tokio::spawn(async move {
            while pressure.changed().await.is_ok() {
                pressure_shared.changed.notify_one();
            }
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mesh = tokio::spawn(crate::mesh::endpoint::serve(
            self.shared.clone(),
            self.mesh,
            wait_for(stopped.clone()),
        ));
        let https = self.https.map(|(listener, acceptor)| {
            tokio::spawn(https::serve(
                self.shared.clone(),
                listener,
                acceptor,
                wait_for(stopped.clone()),
            ))
        });
        let ingress = tokio::spawn(ingress::serve(
            self.shared.clone(),
            self.ingress,
            wait_for(stopped),
        ));
        // A revoked node stops: its certificate will never be honoured
        // again, so serving on would only hide that.
        let outcome = tokio::select! {
            () = shutdown => Ok(()),
            revoked = &mut sync => match revoked {
                Ok(refusal) => Err(anyhow::anyhow!(
                    "the control plane no longer accepts this node ({refusal}); stopping. If it was forgotten, remove {} and join again with a new token from `skiff join-token`",
                    self.shared.config.data_dir.display()
                )),
                Err(e) => Err(anyhow::anyhow!("the heartbeat loop stopped: {e}")),
            },
        };
        sync.abort();
        load.abort();
        pressure_reports.abort();
        saver.abort();
        first_collection.abort();
        self.shared.save_desired();
        let _ = stop.send(true);
        let _ = ingress.await;
        if let Some(https) = https {
            let _ = https.await;
        }
        let _ = mesh.await;
        outcome
    }
}

async fn wait_for(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

impl NodeShared {
    pub(crate) fn api(&self) -> ApiClient {
        self.identity.read().expect("identity lock").api.clone()
    }

    /// Brings the desired state up to date with `change` and acts on it,
    /// touching only the apps and components it names.
    fn apply(self: &Arc<Self>, change: DesiredChange) {
        let mut desired = self.desired.lock().expect("desired state lock");
        desired.apply(&change);
        // Kept on disk, so a node restarted while the control plane is
        // away comes back serving what it had.
        self.unsaved.notify_one();
        if change.members.is_some() && self.members.set(desired.members.clone()) {
            // Pooled mesh connections were made to a node that no longer
            // holds that name: drop them all, so the next request dials
            // and checks its peer afresh.
            let identity = self.identity.read().expect("identity lock");
            if let Err(e) = self.forwarder.use_identity(&identity.identity) {
                tracing::warn!("cannot rebuild the mesh client: {e:#}");
            }
        }
        self.forwarder.learn(&change.apps);
        let mut routing = self.routing.write().expect("routing lock");
        *routing = Arc::new(routing.changed(change.full, &change.apps, &change.removed_apps));
        drop(routing);
        self.routing_changed.notify_waiters();
        let unassigned = if change.full {
            replicas::Unassigned::AllOthers
        } else {
            replicas::Unassigned::These(&change.unassigned)
        };
        self.replicas.apply(self, &change.assignments, unassigned);
        if change.full || !change.unassigned.is_empty() {
            self.workload_identities.retain(|w| placed_in(&desired, w));
        }
    }

    /// Writes the desired state to the data directory.
    fn save_desired(&self) {
        let saved = {
            let desired = self.desired.lock().expect("desired state lock");
            serde_json::to_vec(&*desired).expect("a desired state serializes")
        };
        if let Err(e) = crate::home::write_private(&self.config.data_dir.join(LAST_DESIRED), &saved)
        {
            tracing::warn!("cannot save the last desired state: {e:#}");
        }
    }

    /// A log sink that tags lines with `app` and buffers them for the
    /// control plane.
    fn log_sink(self: &Arc<Self>, app: &str) -> Arc<dyn LogSink> {
        Arc::new(NodeLogSink {
            app: app.to_string(),
            node: Arc::downgrade(self),
        })
    }
}

/// How long after it starts a node collects the packages it no longer
/// uses.
const FIRST_COLLECTION: Duration = Duration::from_secs(60);

/// The shortest time between two saves of the desired state: changes in
/// between are saved together, so a burst of deploys is not a burst of
/// writes of every app's routing.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Saves the desired state when it changed, at most once per
/// [`SAVE_EVERY`] (and once more when the node stops).
async fn save_loop(shared: Arc<NodeShared>) {
    loop {
        shared.unsaved.notified().await;
        let saving = shared.clone();
        let _ = tokio::task::spawn_blocking(move || saving.save_desired()).await;
        tokio::time::sleep(SAVE_EVERY).await;
    }
}

/// How long the node gathers changes (loads finishing together) before
/// it reports them.
const REPORT_GATHER: Duration = Duration::from_millis(20);

/// Refusals of this node's certificate in a row after which it takes
/// itself for revoked (one can be a renewal racing a heartbeat).
const REFUSALS_TO_STOP: u32 = 5;

/// Heartbeats until the control plane refuses this node's certificate
/// [`REFUSALS_TO_STOP`] times in a row; returns that refusal. See the
/// module docs.
async fn sync_loop(shared: Arc<NodeShared>) -> String {
    let mut refusals = 0;
    let mut version = 0;
    let mut epoch = 0;
    let mut acknowledged = None;
    let mut heartbeat = Duration::from_secs(1);
    let mut unreachable_since: Option<Instant> = None;
    let mut warned = None;
    loop {
        let (status, shipped) = {
            let logs = shared.logs.lock().expect("log buffer lock");
            let lines: Vec<_> = logs.lines.iter().take(LINES_PER_SYNC).cloned().collect();
            (shared.replicas.report(acknowledged), lines)
        };
        let memory = shared.engine.memory().reading();
        let request = SyncRequest {
            version,
            epoch,
            memory: shared.config.memory,
            used: memory.used,
            pressure: memory.pressure,
            ingress: shared.ingress_addr.to_string(),
            mesh: shared.mesh_addr.to_string(),
            status,
            logs_first_seq: shipped.first().map_or(0, |(seq, _)| *seq),
            logs: shipped.iter().map(|(_, line)| line.clone()).collect(),
            load: shared.load.report(
                shared.holds.counts(),
                shared.load.changed_outcomes(&shared),
                shared.load.changed_traffic(&shared),
            ),
            tls: shared.tls.digest(),
            https: shared.https_addr.map(|addr| addr.to_string()),
        };
        // The control plane holds a heartbeat while the node is up to date
        // both ways. News while it is held (a replica loaded, memory
        // pressure) is told with a separate small request, which has the
        // held heartbeat answered at once; the next heartbeat carries it.
        let holdable = version != 0 && epoch != 0 && request.status.base.is_some();
        let api = shared.api();
        let changed = shared.changed.notified();
        let urgent = shared.urgent.notified();
        let call = api.call::<_, SyncResponse>(
            Method::POST,
            "/v1/node/sync",
            &request,
            heartbeat + Duration::from_secs(10),
        );
        let answer = if holdable {
            let mut call = std::pin::pin!(call);
            tokio::select! {
                answer = &mut call => answer,
                () = changed => {
                    // Loads finishing together make one report.
                    tokio::time::sleep(REPORT_GATHER).await;
                    tokio::spawn(tell_news(api.clone()));
                    call.await
                }
                () = urgent => {
                    tokio::spawn(tell_news(api.clone()));
                    call.await
                }
            }
        } else {
            call.await
        };
        match answer {
            Ok(response) => {
                refusals = 0;
                if let Some(since) = unreachable_since.take() {
                    tracing::info!(
                        "control plane reachable again after {:.1?}",
                        since.elapsed()
                    );
                }
                if let Some((last, _)) = shipped.last() {
                    let mut logs = shared.logs.lock().expect("log buffer lock");
                    while logs.lines.front().is_some_and(|(seq, _)| seq <= last) {
                        logs.lines.pop_front();
                    }
                }
                warn_if_declared_differently(&shared.config, &response, &mut warned);
                heartbeat = Duration::from_millis(response.heartbeat_ms.max(100));
                api.set_servers(&response.servers);
                acknowledged = response.status_seq;
                shared.replicas.acknowledged(acknowledged);
                if let Some(change) = response.desired {
                    shared.apply(change);
                }
                if let Some(bundle) = &response.tls {
                    shared.tls.apply(bundle, &shared.config.data_dir);
                }
                (version, epoch) = (response.version, response.epoch);
                identity::renew_if_due(&shared).await;
            }
            Err(e) => {
                if unreachable_since.is_none() {
                    tracing::warn!("{e}; serving the last known assignments until it is back");
                    unreachable_since = Some(Instant::now());
                }
                if e.status() == Some(http::StatusCode::UNAUTHORIZED) {
                    refusals += 1;
                    if refusals >= REFUSALS_TO_STOP {
                        return e.to_string();
                    }
                } else {
                    refusals = 0;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Asks the control plane to answer this node's held heartbeat now (see
/// the control plane's `POST /v1/node/news`). If the request is lost, the
/// heartbeat is answered at the end of its interval all the same.
async fn tell_news(api: ApiClient) {
    let told = api
        .send(Method::POST, "/v1/node/news", None, NEWS_TIMEOUT)
        .await;
    if let Err(e) = told {
        tracing::debug!("cannot tell the control plane of news: {e}");
    }
}

/// How long telling the control plane of news may take.
const NEWS_TIMEOUT: Duration = Duration::from_secs(5);

/// Warns when the memory the node offers is below what its process
/// already uses before running anything: it would be under memory
/// pressure from the start and refuse every instance.
fn warn_if_capacity_below_baseline(offered: u64) {
    let Some(used) = skiff_runtime::pressure::resident_bytes() else {
        return;
    };
    if offered < UNLIMITED_MEMORY && used >= offered {
        let size = |bytes: u64| bytesize::ByteSize::b(bytes).display().iec().to_string();
        tracing::warn!(
            "--capacity {} is below the {} this node process uses before running anything: it is short of memory from the start and refuses every instance; offer more than that plus what its apps use",
            size(offered),
            size(used)
        );
    }
}

/// Whether `desired` places `workload` on this node.
fn placed_in(desired: &DesiredState, workload: &skiff_runtime::mesh::WorkloadId) -> bool {
    // Assignments are sorted by app and component.
    desired
        .assignments
        .binary_search_by(|a| {
            (a.app.as_str(), a.component.as_str())
                .cmp(&(workload.app.as_str(), workload.component.as_str()))
        })
        .is_ok()
}

/// Says once (until it changes) when the labels or memory this node was
/// started with are not what the control plane places by: those were
/// declared when the node joined, and only `skiff label` changes labels.
fn warn_if_declared_differently(
    config: &NodeConfig,
    response: &SyncResponse,
    warned: &mut Option<(BTreeMap<String, String>, u64)>,
) {
    let placed_by = (response.labels.clone(), response.memory);
    if warned.as_ref() == Some(&placed_by) {
        return;
    }
    for warning in declared_differently(config, &response.labels, response.memory) {
        tracing::warn!("{warning}");
    }
    *warned = Some(placed_by);
}

/// What differs between how this node was started and what the control
/// plane places it by (`labels`, `memory`), in words.
fn declared_differently(
    config: &NodeConfig,
    labels: &BTreeMap<String, String>,
    memory: u64,
) -> Vec<String> {
    let mut warnings = Vec::new();
    // Started without --labels: it keeps those it joined with, silently.
    if !config.labels.is_empty() && *labels != config.labels {
        let show = |labels: &BTreeMap<String, String>| {
            let all: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{:?}", all.join(","))
        };
        warnings.push(format!(
            "this node was started with --labels {} but the control plane places by {}, the labels it joined with or an admin set; change them with `skiff label {} KEY=VALUE... [--remove KEY]`",
            show(&config.labels),
            show(labels),
            config.name
        ));
    }
    if config.memory > memory {
        let size = |bytes: u64| bytesize::ByteSize::b(bytes).display().iec().to_string();
        warnings.push(format!(
            "this node offers {} but declared {} when it joined: it is given at most {}; to offer more, forget it and join it again",
            size(config.memory),
            size(memory),
            size(memory)
        ));
    }
    warnings
}

/// Guest lines of one app on this node: echoed to stderr and buffered
/// for the control plane.
struct NodeLogSink {
    app: String,
    node: std::sync::Weak<NodeShared>,
}

impl LogSink for NodeLogSink {
    fn line(&self, component: &str, stream: LogStream, line: &str, trace_id: &str) {
        eprintln!(
            "[{}/{component}] {}",
            self.app,
            skiff_runtime::printable::printable(line)
        );
        let Some(node) = self.node.upgrade() else {
            return;
        };
        let unix_ms = crate::clock::unix_ms();
        let mut logs = node.logs.lock().expect("log buffer lock");
        logs.next += 1;
        let seq = logs.next;
        let mut line = GuestLine {
            app: self.app.clone(),
            component: component.to_string(),
            stream: match stream {
                LogStream::Stdout => "stdout",
                LogStream::Stderr => "stderr",
            }
            .to_string(),
            line: line.to_string(),
            unix_ms,
            trace_id: trace_id.to_string(),
        };
        // Shipped within the control plane's bound, so it is never cut there.
        line.clip();
        logs.lines.push_back((seq, line));
        if logs.lines.len() > MAX_BUFFERED_LINES {
            logs.lines.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started_with(labels: &[(&str, &str)], memory: u64) -> NodeConfig {
        NodeConfig {
            server: "https://127.0.0.1:1".to_string(),
            token: None,
            name: "edge-1".to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            memory,
            listen: "127.0.0.1:0".parse().unwrap(),
            https_listen: None,
            mesh_listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: PathBuf::from("/nonexistent"),
            hold_limit: hold::HOLD_LIMIT,
            balancer: Default::default(),
        }
    }

    #[test]
    fn a_node_restarted_without_labels_keeps_its_own_silently_and_different_ones_are_warned_of() {
        let joined: BTreeMap<String, String> = [("zone".to_string(), "b".to_string())].into();
        assert!(declared_differently(&started_with(&[], 1 << 30), &joined, 1 << 30).is_empty());
        let other =
            declared_differently(&started_with(&[("zone", "c")], 1 << 30), &joined, 1 << 30);
        assert_eq!(other.len(), 1, "{other:?}");
        assert!(
            other[0].contains("--labels \"zone=c\" but the control plane places by \"zone=b\""),
            "{other:?}"
        );
        let more = declared_differently(&started_with(&[], 2 << 30), &joined, 1 << 30);
        assert!(
            more[0].contains("offers 2.0 GiB but declared 1.0 GiB"),
            "{more:?}"
        );
    }
}
