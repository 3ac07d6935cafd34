//! The control plane (`skiff server`): the durable cluster state, the CA,
//! the `/v1` API over TLS, and the controller that keeps every declared
//! replica placed on a live node.
//!
//! State is split in two. What must survive a restart (apps, nodes,
//! replica assignments, join tokens) is in the [`ClusterStore`], and
//! every change to it is one transaction. What is rebuilt from heartbeats
//! (liveness, what each node reports running) is only in memory; after a
//! restart every known node gets a fresh heartbeat window to reconnect, so
//! nothing is moved just because the control plane was away.

mod acme;
mod api;
mod catalog;
mod certs;
mod cluster;
mod collect;
mod deadline;
mod desired;
mod events;
mod leader;
mod logs;
mod metrics;
mod mirror;
mod reconcile;
mod rollout;
#[cfg(test)]
mod tests;
mod top;
mod ui;
mod views;

pub use crate::mesh::admission::{MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP};
pub use catalog::AppSpec;

pub use deadline::{BODY_TIMEOUT, MIN_UPLOAD_RATE};

use crate::api::{ComponentStatus, JoinTokenResponse, StatusReport};
use crate::mesh::ClusterCa;
use crate::state::{
    AppRecord, ClusterSecrets, ClusterStore, EtcdStore, EtcdTarget, NodeRecord, RedbStore,
    ReplicaRecord,
};
use anyhow::Context;
use skiff_runtime::package::Store;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// How long a join token printed at first start, or made by
/// `skiff join-token`, stays valid.
pub const JOIN_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How the control plane runs.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Where the store, the CA and uploaded packages live.
    pub data_dir: PathBuf,
    /// The API's address.
    pub listen: SocketAddr,
    /// Extra names or IPs the API is reached by (its certificate names
    /// the listen address, `localhost` and 127.0.0.1 already).
    pub hosts: Vec<String>,
    /// How often nodes heartbeat.
    pub heartbeat: Duration,
    /// A node silent this long is down and its replicas move.
    pub down_after: Duration,
    /// How long node certificates are valid; nodes renew at half.
    pub node_cert_lifetime: Duration,
    /// How long workload certificates are valid.
    pub workload_cert_lifetime: Duration,
    /// API connections open at once; more are closed at once. Default
    /// [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// API connections open at once from one IP address, not counting
    /// nodes that presented a cluster certificate. Default
    /// [`MAX_CONNECTIONS_PER_IP`].
    pub max_connections_per_ip: usize,
    /// How long a JSON request body may take to arrive; a blob upload
    /// gets this plus its size at [`MIN_UPLOAD_RATE`]. Default
    /// 30 s.
    pub body_timeout: Duration,
    /// Uploaded blobs no app uses are deleted once no upload or deploy has
    /// happened for this long (a deploy uploads its blobs before it
    /// declares the app). Default 10 minutes.
    pub package_grace: Duration,
    /// How far reservations may exceed what nodes offer; default 1.0.
    pub overcommit: Overcommit,
    /// How long a dashboard login lasts; default 12 hours.
    pub ui_session_lifetime: Duration,
    /// Where the cluster's state is kept; default the embedded store in
    /// `data_dir`.
    pub store: StoreChoice,
    /// Where certificates for app domains without one are ordered; none:
    /// only certificates given with `skiff cert add` are served.
    pub acme: Option<AcmeConfig>,
}

pub use acme::AcmeConfig;

/// Where a control plane keeps the cluster's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreChoice {
    /// In `state.redb` in the data directory, with the CA and admin token
    /// beside it.
    #[default]
    Embedded,
    /// In etcd, CA and admin token included; uploaded packages stay in
    /// the data directory.
    Etcd(EtcdTarget),
}

impl ControlPlaneConfig {
    /// Defaults: heartbeat every second, down after 3 s.
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> ControlPlaneConfig {
        ControlPlaneConfig {
            data_dir,
            listen,
            hosts: Vec::new(),
            heartbeat: Duration::from_secs(1),
            down_after: Duration::from_secs(3),
            node_cert_lifetime: crate::mesh::ca::NODE_CERT_LIFETIME,
            workload_cert_lifetime: crate::mesh::ca::WORKLOAD_CERT_LIFETIME,
            max_connections: MAX_CONNECTIONS,
            max_connections_per_ip: MAX_CONNECTIONS_PER_IP,
            body_timeout: deadline::BODY_TIMEOUT,
            package_grace: collect::GRACE,
            overcommit: Overcommit::default(),
            ui_session_lifetime: ui::SESSION_LIFETIME,
            store: StoreChoice::Embedded,
            acme: None,
        }
    }
}

/// A started control plane, ready to [`ControlPlane::serve`].
pub struct ControlPlane {
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    /// True when this start created the cluster.
    pub first_start: bool,
}

/// What the API handlers and the controller share.
pub(crate) struct Shared {
    config: ControlPlaneConfig,
    cluster: String,
    /// Held while this control plane runs: one per data directory.
    _lock: std::fs::File,
    store: Arc<dyn ClusterStore>,
    /// The same store when it is etcd: the leader is elected there.
    etcd: Option<Arc<EtcdStore>>,
    /// Whether this control plane leads, or stands by for another.
    role: watch::Sender<leader::Role>,
    /// This control plane's URL, as nodes and the CLI reach it.
    url: String,
    /// The URLs of the cluster's control planes, nodes are told of.
    servers: Mutex<Vec<String>>,
    packages: Store,
    ca: ClusterCa,
    /// Where the API listens, as bound.
    api_addr: SocketAddr,
    /// The names and IPs the API's certificate is signed for; no node
    /// may take one as its name.
    hosts: Vec<String>,
    admin_token: String,
    live: Mutex<Live>,
    /// What each node should run, by version; locked after `live`.
    desired: Mutex<desired::DesiredLog>,
    version: watch::Sender<u64>,
    wake: Notify,
    /// The number of the last controller pass finished.
    passed: watch::Sender<u64>,
    logs: logs::LogRing,
    /// Uploads and deploys under way, and when package collection runs.
    collector: collect::Collector,
    /// The control plane's own Prometheus metrics.
    metrics: metrics::ControlMetrics,
    /// The dashboard's sessions and login links.
    ui: ui::Sessions,
    /// The SHA-256 fingerprint of the API's certificate, as browsers show
    /// it, for a user to check before accepting it.
    api_fingerprint: String,
    /// The last `skiff top` view and when it was made; locked alone.
    top: Mutex<Option<(Instant, Arc<crate::api::TopView>)>>,
    /// What nodes need to serve HTTPS, as last published from the live
    /// state: read by every heartbeat without the state lock.
    tls: watch::Sender<certs::Published>,
}

/// The in-memory view: the durable records plus liveness.
#[derive(Default)]
pub(crate) struct Live {
    nodes: BTreeMap<String, LiveNode>,
    apps: BTreeMap<String, AppRecord>,
    specs: HashMap<String, Arc<AppSpec>>,
    replicas: BTreeMap<String, ReplicaRecord>,
    /// Why each pending replica could not be placed.
    pending: BTreeMap<String, String>,
    /// Packages of declared apps that could not be read, by digest.
    unreadable: HashMap<String, Unreadable>,
    /// How far reservations may exceed what nodes offer.
    overcommit: Overcommit,
    /// Controller passes started.
    passes: u64,
    /// Each autoscaled component's autoscaler, by `(app, component)`.
    autoscalers: HashMap<(String, String), crate::autoscaler::Autoscaler>,
    /// Per autoscaled component with requests held for it, the node
    /// holding the most: its next replica goes there when it fits.
    held_at: HashMap<(String, String), String>,
    /// Recent scheduling and scaling decisions.
    events: events::EventLog,
    /// Per `(app, package)` under a rollout, what became of the requests
    /// that version answered since it began.
    tallies: HashMap<(String, String), rollout::Tally>,
    /// The certificates apps are served with over HTTPS, and ACME's work.
    certs: certs::Certs,
    /// Replicas that failed to start on a node, by id: since when, and
    /// the nodes they failed on (not tried again).
    unready: HashMap<String, reconcile::Unready>,
    /// When this control plane read its state, Unix milliseconds: what
    /// nodes reported before is in no tally.
    started_unix_ms: u64,
    /// The replicas in memory are a pass ahead of the store's (it failed
    /// to store them and to read them back): read before the next pass.
    replicas_unsaved: bool,
}

/// How far the replicas placed on a node may reserve beyond the memory it
/// offers: 1.0 (the default) places no more than offered; 1.5 places half
/// as much again, on the bet that replicas seldom all use their
/// reservation at once. A node that does run short refuses new instances
/// and takes no new replicas until it recovers (memory pressure).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overcommit(f64);

impl Overcommit {
    /// The largest ratio allowed.
    pub const MAX: f64 = 10.0;

    /// A ratio from 1.0 to [`Overcommit::MAX`].
    ///
    /// # Errors
    ///
    /// A ratio below 1, above the maximum, or not a number.
    pub fn new(ratio: f64) -> anyhow::Result<Overcommit> {
        if !(1.0..=Self::MAX).contains(&ratio) {
            anyhow::bail!(
                "--overcommit must be from 1.0 (reserve no more than nodes offer) to {} (got {ratio})",
                Self::MAX
            );
        }
        Ok(Overcommit(ratio))
    }

    /// The ratio.
    pub fn ratio(self) -> f64 {
        self.0
    }

    /// What replicas may reserve on a node offering `memory` bytes.
    pub fn placeable(self, memory: u64) -> u64 {
        if self.0 == 1.0 {
            return memory;
        }
        // f64 to u64 saturates, so an unlimited node stays unlimited.
        (memory as f64 * self.0) as u64
    }
}

impl Default for Overcommit {
    fn default() -> Self {
        Overcommit(1.0)
    }
}

/// A package that could not be read, and when to try again.
pub(crate) struct Unreadable {
    /// Why, as the user sees it.
    reason: String,
    /// Not read again before this.
    next_try: Instant,
    /// The wait after the next failure.
    backoff: Duration,
}

/// The first wait before an unreadable package is read again; it doubles
/// up to [`MAX_READ_BACKOFF`].
const READ_BACKOFF: Duration = Duration::from_secs(5);
const MAX_READ_BACKOFF: Duration = Duration::from_secs(300);

/// A node as the control plane sees it now.
pub(crate) struct LiveNode {
    record: NodeRecord,
    last_seen: Instant,
    /// When its held heartbeat connection broke, if it has not come back.
    connection_lost: Option<Instant>,
    /// When a heartbeat last moved its addresses.
    moved_at: Option<Instant>,
    /// Counts heartbeats, so a broken one that a newer one already
    /// replaced is not taken for a lost connection.
    heartbeats: u64,
    /// The node's number of the last log line taken from it.
    logs_seen: u64,
    /// Heartbeats from it being held right now.
    holding: u32,
    /// Heard from since this control plane started: until then a node
    /// from the store keeps its replicas but takes no new ones.
    heard: bool,
    down: bool,
    /// What its last heartbeat said of each version of a component it
    /// holds, by app and then `(component, package)`, so a replica's state
    /// is found without scanning every component.
    components: HashMap<String, HashMap<(String, String), ComponentStatus>>,
    /// Counts changes to `components`: the desired state recomputes the
    /// routing of the apps on a node whose count moved.
    status_changes: u64,
    /// The node's run (the first number it gave) and number for the status
    /// in `components`, when it is whole as of that number; none until a
    /// heartbeat brought all of it.
    status_seq: Option<(u64, u64)>,
    /// Memory its last heartbeat offered, bytes; it is given at most the
    /// smaller of this and what it declared at join (`record.memory`).
    reported_memory: u64,
    /// Memory its last heartbeat said the node process uses, bytes.
    used: u64,
    /// Whether its last heartbeat said it is short of memory.
    pressure: bool,
    /// The demand its last heartbeat reported, by `(app, component)`.
    load: HashMap<(String, String), crate::api::ComponentLoad>,
    /// How often its heartbeats may move the desired-state version.
    bumps: BumpBudget,
    /// The digest of the TLS bundle its last heartbeat said it holds.
    tls: String,
    /// Where it serves HTTPS, if it does (then it is sent certificates
    /// and keys), as its last heartbeat said.
    https: Option<String>,
    /// When it was last sent a TLS bundle, and of which publication (the
    /// whole bundle's digest).
    tls_sent: Option<(String, Instant)>,
    /// Signalled when the node has news: its held heartbeat is answered
    /// at once, so it can send the next one with the news.
    news: Arc<tokio::sync::Notify>,
    /// What it last said each version answered.
    outcomes_seen: rollout::OutcomesSeen,
    /// The traffic it reported of each component, for `skiff top`.
    traffic: top::TrafficLog,
}

/// Heartbeats of one node may move the desired-state version (which wakes
/// every node) only so often: a burst of [`BumpBudget::BURST`], then
/// [`BumpBudget::PER_SEC`] a second. A change past that is kept and sent
/// with a later bump, so nothing is lost, but a node churning what it
/// reports cannot keep the whole cluster busy.
#[derive(Debug, Clone)]
pub(crate) struct BumpBudget {
    tokens: f64,
    refilled: Instant,
    /// A change of this node is waiting for a bump.
    owed: bool,
}

impl Default for BumpBudget {
    fn default() -> Self {
        BumpBudget {
            tokens: Self::BURST,
            refilled: Instant::now(),
            owed: false,
        }
    }
}

impl BumpBudget {
    /// Bumps a node may make at once.
    const BURST: f64 = 10.0;
    /// Bumps a node may make each second after its burst.
    const PER_SEC: f64 = 2.0;

    /// Whether a bump may happen now, for a change now (`change`) or one
    /// owed from earlier; a refused change is owed.
    fn take(&mut self, change: bool, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * Self::PER_SEC).min(Self::BURST);
        self.refilled = now;
        let wanted = change || self.owed;
        if wanted && self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.owed = false;
            true
        } else {
            self.owed = wanted;
            false
        }
    }
}

impl LiveNode {
    /// A node just heard from.
    fn new(record: NodeRecord) -> LiveNode {
        LiveNode {
            last_seen: Instant::now(),
            connection_lost: None,
            moved_at: None,
            heartbeats: 0,
            logs_seen: 0,
            holding: 0,
            heard: false,
            down: false,
            components: HashMap::new(),
            status_changes: 0,
            status_seq: None,
            reported_memory: record.memory,
            used: 0,
            pressure: false,
            load: HashMap::new(),
            bumps: BumpBudget::default(),
            tls: String::new(),
            https: None,
            tls_sent: None,
            news: Arc::new(tokio::sync::Notify::new()),
            outcomes_seen: HashMap::new(),
            traffic: top::TrafficLog::default(),
            record,
        }
    }

    /// What the node last said of version `package` of `app`/`component`.
    fn component(&self, app: &str, component: &str, package: &str) -> Option<&ComponentStatus> {
        // Keys are owned; a lookup by borrowed parts scans the app's few.
        self.components
            .get(app)?
            .iter()
            .find(|((c, p), _)| c == component && p == package)
            .map(|(_, status)| status)
    }

    /// Takes what a heartbeat says of the components held: all of them
    /// (no `base`), or what changed since the status numbered `base`.
    /// Returns whether what the node serves changed (other nodes route by
    /// it), or `None` when the report is not taken; then the node is told
    /// the status held here, and sends what changed since, or all of it.
    ///
    /// - A change is taken when it is of the run held and its `base` is at
    ///   or before the status held: a repeat of changes already held (a
    ///   heartbeat whose answer the node never read) is applied again with
    ///   their values now, removals first. One numbered below the status
    ///   held arrived late and is refused.
    /// - A whole status is taken unless it is an older one of the run held
    ///   that arrived late; a new run of the node is always taken, even
    ///   numbered lower (its clock was set back).
    /// - No report may bring the components held past
    ///   [`MAX_COMPONENTS_PER_NODE`].
    fn take_status(&mut self, report: StatusReport) -> Option<bool> {
        let StatusReport {
            run,
            seq,
            base,
            components,
            removed,
        } = report;
        let held = self.status_seq.filter(|(held_run, _)| *held_run == run);
        let routed = match base {
            None => {
                if held.is_some_and(|(_, held)| seq < held)
                    || components.len() > MAX_COMPONENTS_PER_NODE
                {
                    return None;
                }
                let before = running_set(self.components.values().flat_map(|c| c.values()));
                let routed = before != running_set(components.iter());
                let mut now: HashMap<_, HashMap<_, _>> = HashMap::new();
                for status in components {
                    now.entry(status.app.clone())
                        .or_default()
                        .insert((status.component.clone(), status.package.clone()), status);
                }
                if now != self.components {
                    self.components = now;
                    self.status_changes += 1;
                }
                routed
            }
            Some(base) => {
                let taken = held.is_some_and(|(_, held)| base <= held && held <= seq);
                let count: usize = self.components.values().map(HashMap::len).sum();
                if !taken || count + components.len() > MAX_COMPONENTS_PER_NODE {
                    return None;
                }
                let mut routed = false;
                for (app, component, package) in removed {
                    let Some(held) = self.components.get_mut(&app) else {
                        continue;
                    };
                    if let Some(gone) = held.remove(&(component, package)) {
                        routed |= gone.serving.is_some();
                        self.status_changes += 1;
                    }
                    if held.is_empty() {
                        self.components.remove(&app);
                    }
                }
                for status in components {
                    let held = self.components.entry(status.app.clone()).or_default();
                    let serving = status.serving.clone();
                    let key = (status.component.clone(), status.package.clone());
                    match held.get_mut(&key) {
                        Some(old) if *old == status => continue,
                        Some(old) => routed |= std::mem::replace(old, status).serving != serving,
                        None => {
                            held.insert(key, status);
                            routed |= serving.is_some();
                        }
                    }
                    self.status_changes += 1;
                }
                routed
            }
        };
        self.status_seq = Some((run, seq));
        Some(routed)
    }

    /// Forgets what the node said it holds (it is down).
    fn forget_status(&mut self) {
        if !self.components.is_empty() {
            self.components.clear();
            self.status_changes += 1;
        }
        self.status_seq = None;
        self.load.clear();
        // What it reported of each version stays the baseline: a node
        // back from down reports counts that include what was counted.
    }

    /// Takes the demand a heartbeat reports (at most one entry per
    /// component, and no more than [`MAX_COMPONENTS_PER_NODE`]); returns
    /// whether the autoscaler should look now (requests are held for a
    /// component, or one's demand at least doubled), and the outcomes of
    /// the versions it reports, by `(app, component)`.
    fn take_load(
        &mut self,
        load: Vec<crate::api::ComponentLoad>,
        assigned: &std::collections::HashSet<(String, String)>,
    ) -> (bool, Vec<ReportedOutcomes>) {
        let mut urgent = false;
        let mut outcomes = Vec::new();
        let mut taken = HashMap::with_capacity(load.len().min(MAX_COMPONENTS_PER_NODE));
        let now = Instant::now();
        for mut entry in load.into_iter().take(MAX_COMPONENTS_PER_NODE) {
            // Traffic only of a component the control plane assigned the
            // node: what the node says it holds is its word, another's is
            // not its to report.
            let key = (entry.app.clone(), entry.component.clone());
            if let Some(traffic) = entry.traffic.take()
                && assigned.contains(&key)
            {
                self.traffic.record(key, traffic, now);
            }
            if !entry.versions.is_empty() {
                outcomes.push((
                    entry.app.clone(),
                    entry.component.clone(),
                    std::mem::take(&mut entry.versions),
                ));
            }
            let key = (entry.app.clone(), entry.component.clone());
            let before = self.load.get(&key).map_or(0.0, |l| l.concurrency);
            urgent |=
                entry.held > 0 || (entry.concurrency >= 1.0 && entry.concurrency >= 2.0 * before);
            taken.insert(key, entry);
        }
        self.load = taken;
        // Nor is the traffic of a component it no longer runs kept.
        self.traffic.keep_only(assigned);
        (urgent, outcomes)
    }

    /// Whether no component's traffic is kept for it.
    fn traffic_is_empty(&self) -> bool {
        self.traffic.is_empty()
    }

    /// Memory replicas may reserve on it: what it declared at join, or
    /// less if it now offers less.
    fn memory(&self) -> u64 {
        self.record.memory.min(self.reported_memory)
    }
}

/// Whether `path` is on the API route `template`, where `:name` stands
/// for any one segment (`/v1/apps/:name/logs`); empty segments are
/// ignored, as the API's router does.
pub(crate) fn path_fits(template: &str, path: &str) -> bool {
    // Without allocating: every API request is labelled by it.
    let mut pattern = template.split('/').filter(|s| !s.is_empty());
    let mut actual = path.split('/').filter(|s| !s.is_empty());
    loop {
        match (pattern.next(), actual.next()) {
            (None, None) => return true,
            (Some(want), Some(got)) if want == ":name" || want == got => {}
            _ => return false,
        }
    }
}

/// The SHA-256 of the first certificate in the PEM `chain`, as browsers
/// show it (`AB:CD:...`).
fn fingerprint(chain: &str) -> String {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(chain.as_bytes()) else {
        return String::new();
    };
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&pem.contents);
    digest
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `(app, component, outcomes of its versions)` as a heartbeat reports them.
type ReportedOutcomes = (String, String, Vec<crate::api::VersionOutcomes>);

/// The most components a node's reports may say it holds; a report past
/// it is refused. A node holds one per app it runs a replica of.
pub(crate) const MAX_COMPONENTS_PER_NODE: usize = 100_000;

/// What other nodes route by: which components a node serves.
fn running_set<'a>(
    components: impl Iterator<Item = &'a ComponentStatus>,
) -> Vec<(&'a str, &'a str, &'a str)> {
    let mut set: Vec<_> = components
        .filter_map(|c| Some((c.app.as_str(), c.component.as_str(), c.serving.as_deref()?)))
        .collect();
    set.sort_unstable();
    set
}

impl ControlPlane {
    /// Opens (or on first start creates) the cluster in
    /// `config.data_dir`, binds the API address, and issues the API's
    /// certificate.
    ///
    /// # Errors
    ///
    /// An unreadable data directory, a damaged store or CA, or an
    /// address that cannot be bound.
    pub async fn start(config: ControlPlaneConfig) -> anyhow::Result<ControlPlane> {
        if config.heartbeat < Duration::from_millis(100) {
            anyhow::bail!("the heartbeat interval must be at least 100ms");
        }
        if config.down_after < config.heartbeat * 2 {
            anyhow::bail!(
                "--down-after ({:?}) must be at least twice the heartbeat ({:?}), or live nodes are taken for dead",
                config.down_after,
                config.heartbeat
            );
        }
        check_lifetime(
            "--node-cert-lifetime",
            config.node_cert_lifetime,
            MAX_NODE_CERT_LIFETIME,
        )?;
        check_lifetime(
            "--workload-cert-lifetime",
            config.workload_cert_lifetime,
            MAX_WORKLOAD_CERT_LIFETIME,
        )?;
        if config.max_connections == 0 || config.max_connections_per_ip == 0 {
            anyhow::bail!("--max-connections and --max-connections-per-ip must be at least 1");
        }
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        let lock = lock_data_dir(dir)?;
        let (store, etcd): (Arc<dyn ClusterStore>, _) = match &config.store {
            StoreChoice::Embedded => (Arc::new(RedbStore::open(&dir.join("state.redb"))?), None),
            StoreChoice::Etcd(target) => {
                let store = Arc::new(EtcdStore::connect(target.clone())?);
                refuse_another_cluster(dir, store.as_ref())?;
                (store.clone(), Some(store))
            }
        };
        let cluster = crate::mesh::CLUSTER.to_string();
        let (secrets, first_start) = match store.secrets()? {
            Some(secrets) => (secrets, false),
            None => {
                let ca = ClusterCa::create(&cluster)?;
                let fresh = ClusterSecrets {
                    ca_cert_pem: ca.cert_pem().to_string(),
                    ca_key_pem: ca.key_pem().to_string(),
                    admin_token: random_hex(32),
                };
                let kept = store.create_secrets(fresh.clone())?;
                // Another control plane may have created the cluster first.
                let first = kept.ca_cert_pem == fresh.ca_cert_pem;
                (kept, first)
            }
        };
        let mut ca = ClusterCa::load(&cluster, &secrets.ca_cert_pem, &secrets.ca_key_pem)
            .with_context(|| format!("the cluster CA in {}", store.describe()))?;
        ca.set_node_lifetime(config.node_cert_lifetime);
        ca.set_workload_lifetime(config.workload_cert_lifetime);
        let admin_token = secrets.admin_token;
        let packages = Store::open(&dir.join("packages"))?;

        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                anyhow::anyhow!(
                    "cannot serve the control plane API on {}: the address is already in use; stop the other control plane or choose another address",
                    config.listen
                )
            } else {
                anyhow::anyhow!("cannot listen on {}: {e}", config.listen)
            }
        })?;
        let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let ip = config.listen.ip();
        if !ip.is_unspecified() {
            hosts.push(ip.to_string());
        }
        hosts.extend(config.hosts.iter().cloned());
        hosts.sort();
        hosts.dedup();
        let (chain, key) = ca.sign_control_plane(&hosts)?;
        let tls = crate::mesh::tls::control_plane_server(ca.cert_pem(), &chain, &key)?;
        let api_fingerprint = fingerprint(&chain);

        // On etcd the state is read when this control plane wins the
        // election (its packages may still be on their way to it).
        let (mut live, node_names) = match etcd {
            None => {
                let live = Live::load(store.as_ref(), &packages)?;
                let names: Vec<String> = live.nodes.keys().cloned().collect();
                (live, names)
            }
            Some(_) => {
                let names = store.nodes().unwrap_or_default();
                (
                    Live {
                        started_unix_ms: crate::clock::unix_ms(),
                        ..Live::default()
                    },
                    names.into_iter().map(|n| n.name).collect(),
                )
            }
        };
        live.overcommit = config.overcommit;
        if let Some(node) = node_names
            .iter()
            .find(|n| hosts.iter().any(|h| h.eq_ignore_ascii_case(n)))
        {
            anyhow::bail!(
                "--host {node:?} is the name of a node of this cluster; a node name must not be one the control plane is reached by: choose another --host"
            );
        }
        let api_addr = listener.local_addr()?;
        // A version unlike any earlier run's, so a node that kept running
        // while the control plane restarted takes the full state again.
        let version = crate::clock::unix_ms().max(1);
        let ui_session_lifetime = config.ui_session_lifetime;
        let url = advertised_url(api_addr, &config.hosts);
        // The others already standing by or leading, for the CLI and the
        // join command; nodes learn of later ones with their heartbeats.
        let mut servers = vec![url.clone()];
        if let Some(etcd) = &etcd {
            servers.extend(etcd.servers()?.into_iter().filter(|s| *s != url));
        }
        // Without etcd this one always leads; with it, it stands by until
        // it wins the election.
        let role = match etcd {
            None => leader::Role::Leading,
            Some(_) => leader::Role::Standing(None),
        };
        let shared = Arc::new(Shared {
            config,
            cluster,
            _lock: lock,
            store,
            etcd,
            role: watch::Sender::new(role),
            url,
            servers: Mutex::new(servers),
            packages,
            ca,
            api_addr,
            hosts,
            admin_token,
            live: Mutex::new(live),
            // Never 0, the epoch of a node that has heard nothing yet.
            desired: Mutex::new(desired::DesiredLog::new(new_epoch())),
            version: watch::Sender::new(version),
            wake: Notify::new(),
            passed: watch::Sender::new(0),
            logs: logs::LogRing::default(),
            collector: collect::Collector::default(),
            metrics: Default::default(),
            ui: ui::Sessions::new(ui_session_lifetime),
            api_fingerprint,
            top: Mutex::default(),
            tls: watch::Sender::new(certs::Published::default()),
        });
        shared.publish_tls(&shared.live());
        Ok(ControlPlane {
            shared,
            listener,
            tls,
            first_start,
        })
    }

    /// The API's URL, `https://host:port`: the listen address, or when
    /// it is every address, the first `--host` (else 127.0.0.1).
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    /// The URLs of the cluster's control planes known at start, this
    /// one's first.
    pub fn servers(&self) -> Vec<String> {
        self.shared.servers.lock().expect("servers lock").clone()
    }

    /// The admin token the CLI presents.
    pub fn admin_token(&self) -> &str {
        &self.shared.admin_token
    }

    /// The cluster CA certificate.
    pub fn ca_pem(&self) -> &str {
        self.shared.ca.cert_pem()
    }

    /// Makes a new one-time join token.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub fn new_join_token(&self) -> anyhow::Result<JoinTokenResponse> {
        Ok(self.shared.new_join_token()?)
    }

    /// Adds the control plane's metrics to `registry`; with
    /// `certificates`, also when the cluster CA expires (which a node in
    /// the same process reports already).
    pub fn register_metrics(
        &self,
        registry: &mut prometheus_client::registry::Registry,
        certificates: bool,
    ) {
        metrics::register(&self.shared, registry);
        if certificates {
            metrics::register_certificates(&self.shared, registry);
        }
    }

    /// Forgets node `name` before serving: used by `skiff up`, whose one
    /// node lost its identity (its data directory is gone), so that it can
    /// join again under its own name. Returns whether it was known.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub fn forget_node(&self, name: &str) -> anyhow::Result<bool> {
        let mut live = self.shared.live();
        let known = self.shared.store.delete_node(name)?;
        live.nodes.remove(name);
        Ok(known)
    }

    /// Serves the API and runs the controller until `shutdown` completes.
    ///
    /// # Errors
    ///
    /// The controller stopped (it panicked): then the API stops too, rather
    /// than serve a cluster nothing heals.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        // Every known node's heartbeat window starts now, not when the
        // state was read: reading thousands of packages takes seconds,
        // and no node could reach the API meanwhile.
        let now = Instant::now();
        for node in self.shared.live().nodes.values_mut() {
            node.last_seen = now;
        }
        let api = api::serve(self.shared.clone(), self.listener, self.tls, shutdown);
        let Some(etcd) = self.shared.etcd.clone() else {
            let mut controller = tokio::spawn(reconcile::run(self.shared.clone()));
            let acme = tokio::spawn(acme::run(self.shared.clone()));
            let collector = tokio::spawn(collect::run(self.shared));
            return tokio::select! {
                () = api => {
                    controller.abort();
                    acme.abort();
                    collector.abort();
                    Ok(())
                }
                stopped = &mut controller => {
                    anyhow::bail!("the cluster controller stopped unexpectedly: {stopped:?}")
                }
            };
        };
        let url = self.shared.url.clone();
        let mut election = tokio::spawn(leader::run(self.shared, etcd, url));
        tokio::select! {
            () = api => {
                election.abort();
                Ok(())
            }
            stopped = &mut election => {
                anyhow::bail!("the cluster controller stopped unexpectedly: {stopped:?}")
            }
        }
    }
}

impl Shared {
    /// The live state, locked. A handler that panicked while holding the
    /// lock left the state as it was then: the control plane logs it and
    /// carries on (the store holds every change committed), rather than
    /// refuse every later call and heartbeat.
    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|poisoned| {
            tracing::error!(
                "a request failed while changing the cluster's live state; carrying on with the state as it left it"
            );
            self.live.clear_poison();
            poisoned.into_inner()
        })
    }

    /// The desired-state log, locked (after the live state, if both are);
    /// poisoning is survived as for [`Shared::live`].
    fn desired(&self) -> std::sync::MutexGuard<'_, desired::DesiredLog> {
        self.desired.lock().unwrap_or_else(|poisoned| {
            self.desired.clear_poison();
            poisoned.into_inner()
        })
    }

    fn new_join_token(&self) -> Result<JoinTokenResponse, crate::state::StateError> {
        let pin = crate::mesh::tls::ca_pin(self.ca.cert_pem()).expect("the cluster CA is readable");
        let token = format!("skt1.{pin}.{}", random_hex(16));
        let expires_unix = crate::clock::unix_secs() + JOIN_TOKEN_LIFETIME.as_secs();
        self.store.add_join_token(&token, expires_unix)?;
        Ok(JoinTokenResponse {
            token,
            expires_unix,
        })
    }

    /// Runs `f` on node `name` under the state lock, if the node is known.
    fn with_node(&self, name: &str, f: impl FnOnce(&mut LiveNode)) {
        if let Some(node) = self.live().nodes.get_mut(name) {
            f(node);
        }
    }

    /// Marks the desired state changed: held heartbeats return at once.
    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Publishes the TLS bundle of `live`'s certificates and challenges
    /// to nodes, when it changed: held heartbeats are answered with it.
    fn publish_tls(&self, live: &Live) {
        let published = live.certs.published();
        if self.tls.borrow().full.digest == published.full.digest {
            return;
        }
        self.tls.send_replace(published);
        self.bump();
    }
}

impl Live {
    /// The replicas whose ids start with `prefix` (`app/` or
    /// `app/component/`: ids are `app/component/N`), found without a walk
    /// over every replica.
    fn replicas_under<'a>(&'a self, prefix: &str) -> impl Iterator<Item = &'a ReplicaRecord> {
        use std::ops::Bound;
        self.replicas
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(id, _)| id.starts_with(prefix))
            .map(|(_, replica)| replica)
    }

    /// Every replica grouped by `key` (its app, its node...), in one pass,
    /// so views of thousands of apps need no scan of all replicas per app.
    fn replicas_by<'a>(
        &'a self,
        key: impl Fn(&'a ReplicaRecord) -> Option<&'a str>,
    ) -> HashMap<&'a str, Vec<&'a ReplicaRecord>> {
        let mut groups: HashMap<&str, Vec<&ReplicaRecord>> = HashMap::new();
        for replica in self.replicas.values() {
            if let Some(key) = key(replica) {
                groups.entry(key).or_default().push(replica);
            }
        }
        groups
    }

    /// Reads the durable state from `store` (at `path`), setting aside
    /// records that do not decode, and each app's package from `packages`.
    fn load(store: &dyn ClusterStore, packages: &Store) -> anyhow::Result<Live> {
        let mut live = Live {
            started_unix_ms: crate::clock::unix_ms(),
            ..Live::default()
        };
        for aside in store.set_aside_damaged()? {
            tracing::error!(
                table = aside.table,
                key = aside.key,
                "cluster state {}: the {} record {:?} is damaged ({}); it was moved to the \"quarantine\" table and the control plane runs without it: {}",
                store.describe(),
                aside.table,
                aside.key,
                aside.message,
                aside.remedy()
            );
        }
        for record in store.nodes()? {
            live.nodes
                .insert(record.name.clone(), LiveNode::new(record));
        }
        for app in store.apps()? {
            live.apps.insert(app.name.clone(), app);
        }
        let packages_used: std::collections::BTreeSet<String> = live
            .apps
            .values()
            .flat_map(AppRecord::versions)
            .cloned()
            .collect();
        for package in packages_used {
            match catalog::read(packages, &package) {
                Ok(spec) => {
                    live.specs.insert(package, Arc::new(spec));
                }
                Err(e) => live.mark_unreadable(&package, e, Instant::now()),
            }
        }
        live.certs = certs::Certs::load(store.certificates()?);
        for mut replica in store.replicas()? {
            // Stored before versions were: it runs the app's package.
            if replica.package.is_empty()
                && let Some(app) = live.apps.get(&replica.app)
            {
                replica.package = app.package.clone();
            }
            live.replicas.insert(replica.id.clone(), replica);
        }
        Ok(live)
    }

    /// Records that `package` could not be read (`reason`) at `now`, and
    /// when to try again; logs when the reason is new.
    fn mark_unreadable(&mut self, package: &str, reason: String, now: Instant) {
        let apps: Vec<&str> = self
            .apps
            .values()
            .filter(|a| a.package == package)
            .map(|a| a.name.as_str())
            .collect();
        let entry = self
            .unreadable
            .entry(package.to_string())
            .or_insert(Unreadable {
                reason: String::new(),
                next_try: now,
                backoff: READ_BACKOFF,
            });
        if entry.reason != reason {
            tracing::error!(
                package,
                ?apps,
                "cannot read the package of {apps:?}: {reason}; its replicas keep what they run; deploy the app again to upload the package again"
            );
        }
        entry.reason = reason;
        entry.next_try = now + entry.backoff;
        entry.backoff = (entry.backoff * 2).min(MAX_READ_BACKOFF);
    }

    fn spec(&self, app: &str) -> Option<&Arc<AppSpec>> {
        self.apps
            .get(app)
            .and_then(|record| self.specs.get(&record.package))
    }
}

/// `open(2)`'s flag refusing a symbolic link as the last component.
const O_NOFOLLOW: i32 = 0o400_000;

/// Locks data directory `dir` for this control plane: another one there
/// (with any store) would serve the same packages as its own.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("lock");
    // Never through a link, and never truncating: only a file of its own.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("cannot open {} (it must not be a link)", path.display()))?
    };
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "{} is in use by another control plane (a `skiff server` or `skiff up` with the same data directory or SKIFF_HOME); stop it, or give this one another --data-dir or SKIFF_HOME",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Refuses to keep a cluster in `store` (etcd) when the data directory
/// `dir` holds the CA of another cluster, created there with the embedded
/// store: its nodes would be refused, and its state would not follow.
fn refuse_another_cluster(dir: &Path, store: &dyn ClusterStore) -> anyhow::Result<()> {
    let local = dir.join("ca.pem");
    let Ok(local_ca) = std::fs::read_to_string(&local) else {
        return Ok(());
    };
    let same = store
        .secrets()?
        .is_some_and(|kept| kept.ca_cert_pem == local_ca);
    if !same {
        anyhow::bail!(
            "{} holds the CA of another cluster than the one in {} (its state is in the data directory, not there); give this control plane a data directory of its own (--data-dir)",
            local.display(),
            store.describe()
        );
    }
    Ok(())
}

/// A number for a run of the control plane (or a leadership): never 0,
/// the epoch of a node that has heard nothing yet.
fn new_epoch() -> u64 {
    u64::from_str_radix(&random_hex(8), 16).expect("hex") | 1
}

/// The URL nodes and the CLI reach the API at `addr` by: `addr`, or when
/// it is every address, the first of `hosts` (else 127.0.0.1).
fn advertised_url(addr: SocketAddr, hosts: &[String]) -> String {
    if !addr.ip().is_unspecified() {
        return format!("https://{addr}");
    }
    let host = hosts
        .first()
        .map(|h| match h.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{h}]"),
            Err(_) => h.clone(),
        })
        .unwrap_or_else(|| "127.0.0.1".to_string());
    format!("https://{host}:{}", addr.port())
}

/// `bytes` random bytes, hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random source works");
    hex::encode(buf)
}

/// The longest a node certificate may live: a year, as public CAs allow.
const MAX_NODE_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The longest a workload certificate may live. A certificate kept after
/// its workload left a node is refused by the nodes it calls (they check
/// the routing), but one taken off a node speaks for as long as it lives:
/// short lives are the point of workload identities.
const MAX_WORKLOAD_CERT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Refuses a certificate lifetime (`flag`) under 2 s, which leaves no time
/// to renew, or over `max`.
fn check_lifetime(flag: &str, lifetime: Duration, max: Duration) -> anyhow::Result<()> {
    if lifetime < Duration::from_secs(2) {
        anyhow::bail!(
            "{flag} {} is too short: certificates must live at least 2s",
            humantime::format_duration(lifetime)
        );
    }
    if lifetime > max {
        anyhow::bail!(
            "{flag} {} is too long: at most {}",
            humantime::format_duration(lifetime),
            humantime::format_duration(max)
        );
    }
    Ok(())
}
