//! The JSON bodies of the control plane's `/v1` API, shared by the server,
//! the node agent and the CLI so that each side reads what the other wrote.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// An error reply: every non-2xx answer carries one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong, for a person.
    pub error: String,
}

/// `POST /v1/join`: a node asks to join with a one-time token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The join token printed by `skiff server` or `skiff join-token`.
    pub token: String,
    /// The node's name; it goes into the node's certificate.
    pub name: String,
    /// PEM certificate signing request for the node's key.
    pub csr_pem: String,
    /// `key=value` placement labels; after the join only an admin changes
    /// them (`skiff label`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Memory offered to replicas, bytes: the most the node is ever given,
    /// whatever its heartbeats report later.
    #[serde(default)]
    pub memory: u64,
}

/// The answer to a join: the node's certificate and the cluster's CA.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The node's certificate, signed by the cluster CA.
    pub cert_pem: String,
    /// The cluster CA's certificate.
    pub ca_pem: String,
}

/// `POST /v1/node/renew` (mTLS): a fresh certificate for the same name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    /// PEM certificate signing request for the node's new key.
    pub csr_pem: String,
}

/// `POST /v1/node/workload-cert` (mTLS): the identity of a workload placed
/// on the calling node, for its mesh calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadCertRequest {
    /// `app/component`.
    pub workload: String,
    /// PEM certificate signing request for a key the node made for it.
    pub csr_pem: String,
}

/// The answer to a [`WorkloadCertRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadCertResponse {
    /// The workload's certificate, PEM.
    pub cert_pem: String,
}

/// What a node reports about the replicas of one version of a component
/// it holds: during a rollout a node may hold two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// The app.
    pub app: String,
    /// The component.
    pub component: String,
    /// The package digest it is assigned (loading, running or failed).
    pub package: String,
    /// Loading, running or failed, for `package`.
    pub state: LoadState,
    /// `package` once it serves requests: loaded, an instance created,
    /// and its `health` path answering when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
    /// Why it failed, and when it is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a node is with one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadState {
    /// Pulling its package or compiling it.
    Loading,
    /// Serving.
    Running,
    /// Failed to load; retried with backoff.
    Failed,
}

/// One line a guest wrote, shipped from its node to the control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestLine {
    /// The app.
    pub app: String,
    /// The component.
    pub component: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, without its newline.
    pub line: String,
    /// When it was written, Unix milliseconds.
    pub unix_ms: u64,
    /// The trace of the request being served when it was written, 32 hex
    /// digits (`skiff logs --trace`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
}

/// `POST /v1/node/sync` (mTLS): the node's heartbeat. The control plane
/// holds it until the desired state moves past `version` or a heartbeat
/// interval passes, so it doubles as the node's watch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncRequest {
    /// The desired-state version the node last applied; 0 at start.
    pub version: u64,
    /// The control plane run that version is of (see
    /// [`SyncResponse::epoch`]).
    #[serde(default)]
    pub epoch: u64,
    /// Memory offered to replicas now, bytes; the control plane places by
    /// at most what the node declared when it joined.
    pub memory: u64,
    /// Memory the node process uses now (its resident set), bytes.
    #[serde(default)]
    pub used: u64,
    /// Whether the node is short of memory and refuses new instances.
    #[serde(default)]
    pub pressure: bool,
    /// Ingress address, `ip:port`.
    pub ingress: String,
    /// Mesh address, `ip:port`.
    pub mesh: String,
    /// What the node holds, whole or changed since a status the control
    /// plane acknowledged.
    #[serde(flatten)]
    pub status: StatusReport,
    /// The node's number of the first line in `logs`; the rest follow in
    /// order. A line sent again (its heartbeat was cut short) is
    /// recognised by its number and kept once.
    pub logs_first_seq: u64,
    /// Guest log lines not yet acknowledged: at most
    /// [`MAX_LOG_LINES_PER_SYNC`], each at most [`MAX_LOG_LINE_BYTES`].
    pub logs: Vec<GuestLine>,
    /// The demand on each component with any (the autoscaler's input);
    /// a component absent has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load: Vec<ComponentLoad>,
    /// The digest of the TLS bundle the node holds ([`TlsBundle::digest`]);
    /// empty before it has one.
    #[serde(default)]
    pub tls: String,
    /// The node's HTTPS ingress address, `ip:port`, when it serves HTTPS:
    /// only then is it sent certificates and their keys (every node is
    /// sent ACME challenges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<String>,
}

/// The demand on one component at a node, as its heartbeat reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentLoad {
    /// The app.
    pub app: String,
    /// The component.
    pub component: String,
    /// Requests in its instances or queued for one, averaged over the
    /// last second.
    #[serde(default)]
    pub concurrency: f64,
    /// Requests held because no replica of it runs anywhere: they wait
    /// for one the control plane places.
    #[serde(default)]
    pub held: u32,
    /// What became of the requests each version here answered, counted
    /// since it loaded (the control plane takes the differences).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionOutcomes>,
    /// Its traffic here so far (for `skiff top`), when it changed since
    /// the last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Traffic>,
}

/// A component's traffic at a node, counted since it began serving there
/// (all its versions together): the control plane takes the differences
/// between reports for `skiff top`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Requests answered.
    pub requests: u64,
    /// Of those, answered 5xx.
    pub errors: u64,
    /// Their durations: a count per bucket of
    /// `skiff_runtime::metrics::REQUEST_DURATION_BUCKETS`, the last past
    /// every bound.
    pub durations: Vec<u64>,
    /// Requests inside an instance or queued now.
    pub in_flight: u64,
    /// When these counts began there, Unix milliseconds.
    #[serde(default)]
    pub since_unix_ms: u64,
}

/// Requests one version of a component answered at a node, and how many
/// failed, by reason: counted since the version loaded there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionOutcomes {
    /// The version's package digest.
    pub package: String,
    /// Requests answered.
    pub answered: u64,
    /// Requests answered below 400.
    #[serde(default)]
    pub succeeded: u64,
    /// Requests answered with a 5xx status, or given up by the platform
    /// (`request_timeout`).
    pub failed: u64,
    /// Failures by reason (`trap`, `timeout`, `status_500`...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reasons: BTreeMap<String, u64>,
}

/// A heartbeat's report of the components a node holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusReport {
    /// The first number this run of the node gave: which run of the node
    /// the numbers are of.
    #[serde(default, rename = "status_run")]
    pub run: u64,
    /// The node's number for the status this report brings the control
    /// plane to; it only grows while the node runs.
    #[serde(default, rename = "status_seq")]
    pub seq: u64,
    /// The status (a `seq` the control plane acknowledged) that
    /// `components` and `removed` change; none when they are the whole.
    #[serde(default, rename = "status_base")]
    pub base: Option<u64>,
    /// Components held, with their state: each whose state changed since
    /// `base`, or all of them when there is no base.
    pub components: Vec<ComponentStatus>,
    /// Versions (`app`, `component`, `package`) no longer held since
    /// `base`.
    #[serde(default)]
    pub removed: Vec<(String, String, String)>,
}

/// Guest log lines one heartbeat carries at most; the control plane keeps
/// no more than this from one heartbeat and says how many it dropped.
pub const MAX_LOG_LINES_PER_SYNC: usize = 2_000;

/// Longest guest log line shipped, bytes; a longer one is cut to this
/// length, ending with a note of how much was cut.
pub const MAX_LOG_LINE_BYTES: usize = 16 * 1024;

impl GuestLine {
    /// Cuts the line to at most [`MAX_LOG_LINE_BYTES`] (on a character
    /// boundary), ending it with `… (N bytes cut)`; whether it was cut.
    pub fn clip(&mut self) -> bool {
        if self.line.len() <= MAX_LOG_LINE_BYTES {
            return false;
        }
        let cut = self.line.len();
        // The note is at most this long: " … (" + 20 digits + " bytes cut)".
        let mut end = MAX_LOG_LINE_BYTES - 40;
        while !self.line.is_char_boundary(end) {
            end -= 1;
        }
        self.line.truncate(end);
        self.line.push_str(&format!(" … ({} bytes cut)", cut - end));
        true
    }
}

/// The answer to a sync (`Apps` as in [`DesiredChange`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncResponse<Apps = Vec<AppRouting>> {
    /// The current desired-state version.
    pub version: u64,
    /// A number of this run of the control plane: versions of another
    /// run say nothing of what changed since, so a node whose epoch
    /// differs is sent the whole state.
    #[serde(default)]
    pub epoch: u64,
    /// How the node's desired state changed since its version (or all of
    /// it), when it moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<DesiredChange<Apps>>,
    /// The node's status (`StatusReport::seq`) the control plane
    /// holds now; when it is not one the node sent, the node sends its
    /// whole status next.
    #[serde(default)]
    pub status_seq: Option<u64>,
    /// Milliseconds the node waits before its next sync.
    pub heartbeat_ms: u64,
    /// The node's labels as the control plane places by them (set at
    /// join, changed only by `skiff label`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The memory the node declared when it joined, bytes: the most it is
    /// given.
    #[serde(default)]
    pub memory: u64,
    /// The URLs of the cluster's control planes (the leader and those
    /// standing by), for the node to turn to when this one goes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// The cluster's TLS bundle, when the node's is not this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Arc<TlsBundle>>,
}

/// What every node needs to serve HTTPS: the cluster's certificates with
/// their keys, and the ACME HTTP-01 challenges it answers meanwhile.
/// Sent only to nodes, over mTLS.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsBundle {
    /// A digest of the rest: a node holding this one is sent nothing.
    pub digest: String,
    /// Every certificate, by the name it is kept under.
    pub certificates: Vec<ServedCertificate>,
    /// Pending HTTP-01 challenges: token to key authorization, answered
    /// at `/.well-known/acme-challenge/TOKEN` on plain HTTP.
    pub challenges: BTreeMap<String, String>,
}

impl std::fmt::Debug for TlsBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys, wherever this is logged.
        f.debug_struct("TlsBundle")
            .field("digest", &self.digest)
            .field("certificates", &self.certificates.len())
            .field("challenges", &self.challenges.len())
            .finish()
    }
}

/// A certificate as nodes serve it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedCertificate {
    /// The name it is kept under (an exact domain or `*.parent`).
    pub domain: String,
    /// Its chain, PEM, leaf first.
    pub chain_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

/// `POST /v1/certs` (admin): a certificate and key for a domain.
#[derive(Clone, Serialize, Deserialize)]
pub struct CertAddRequest {
    /// The domain (or `*.parent`) it serves.
    pub domain: String,
    /// The chain, PEM, leaf first.
    pub chain_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
}

/// The answer to `POST /v1/certs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertAddResponse {
    /// The certificate as stored.
    pub certificate: CertificateView,
    /// Whether it replaced one for the same domain.
    pub replaced: bool,
    /// What the user should know (it expires soon, no app uses it).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A domain's certificate, as `skiff certs` shows it: never its key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateView {
    /// The domain, or `*.parent` for a wildcard.
    pub domain: String,
    /// `uploaded`, `acme`, or `none` (an app's domain with no certificate).
    pub source: String,
    /// The names the certificate is valid for.
    #[serde(default)]
    pub names: Vec<String>,
    /// Who issued it.
    #[serde(default)]
    pub issuer: String,
    /// Its serial number, hex.
    #[serde(default)]
    pub serial: String,
    /// Valid until, Unix seconds; 0 without a certificate.
    #[serde(default)]
    pub not_after_unix: i64,
    /// The apps it serves.
    #[serde(default)]
    pub apps: Vec<String>,
    /// In a few words: `valid`, `expires soon`, `not yet valid`,
    /// `expired`, `expired, renewal failing`, `renewing`, `renewal
    /// failing`; for a domain without one, `waiting to order`, `ordering`,
    /// `order failing` or `no certificate`.
    pub status: String,
    /// Why the last order or renewal failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the control plane tries again after a failure, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_try_unix: Option<i64>,
}

/// `POST /v1/nodes/NAME/labels` (admin): sets and removes labels of a node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LabelRequest {
    /// Labels to set, `key -> value`.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Keys to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The answer to a label change: the node's labels now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabelResponse {
    /// The node.
    pub node: String,
    /// Its labels after the change.
    pub labels: BTreeMap<String, String>,
    /// Whether anything changed.
    pub changed: bool,
}

/// What a node should hold, and where every app's replicas are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    /// Components this node runs.
    pub assignments: Vec<Assignment>,
    /// Every app's routes and endpoints, for ingress.
    pub apps: Vec<AppRouting>,
    /// Every node in the cluster, name to incarnation: the only peers
    /// whose certificates the mesh honours.
    #[serde(default)]
    pub members: BTreeMap<String, String>,
}

impl DesiredState {
    /// Brings the state up to date with `change`, in one pass over what
    /// is held whatever the size of the change.
    pub fn apply(&mut self, change: &DesiredChange) {
        if change.full {
            *self = DesiredState {
                assignments: change.assignments.clone(),
                apps: change.apps.clone(),
                members: change.members.clone().unwrap_or_default(),
            };
            self.assignments
                .sort_by(|a, b| assignment_key(a).cmp(&assignment_key(b)));
            self.apps.sort_by(|a, b| app_key(a).cmp(&app_key(b)));
            return;
        }
        let unassigned: Vec<(&str, &str, &str)> = change
            .unassigned
            .iter()
            .map(|(app, component, package)| (app.as_str(), component.as_str(), package.as_str()))
            .collect();
        merge_sorted(
            &mut self.assignments,
            &change.assignments,
            unassigned,
            assignment_key,
        );
        let removed: Vec<Key<'_>> = change
            .removed_apps
            .iter()
            .map(|name| ("", "", name.as_str()))
            .collect();
        merge_sorted(&mut self.apps, &change.apps, removed, app_key);
        if let Some(members) = &change.members {
            self.members = members.clone();
        }
    }
}

fn assignment_key(a: &Assignment) -> (&str, &str, &str) {
    (&a.app, &a.component, &a.package)
}

fn app_key(a: &AppRouting) -> Key<'_> {
    ("", "", &a.name)
}

/// How [`merge_sorted`] orders items: an assignment by app, component and
/// package; an app routing by name.
type Key<'a> = (&'a str, &'a str, &'a str);

/// Makes `sorted` (ordered by `key`) hold `upserts` in place of the items
/// of their key (or beside them), without the items keyed in `removed`: an
/// item both removed and upserted is upserted.
fn merge_sorted<T: Clone>(
    sorted: &mut Vec<T>,
    upserts: &[T],
    mut removed: Vec<Key<'_>>,
    key: for<'a> fn(&'a T) -> Key<'a>,
) {
    let mut changes: Vec<&T> = upserts.iter().collect();
    changes.sort_by(|a, b| key(a).cmp(&key(b)));
    removed.sort_unstable();
    let mut changes = changes.into_iter().peekable();
    let mut merged = Vec::with_capacity(sorted.len() + upserts.len());
    for item in sorted.drain(..) {
        let mut replaced = false;
        while let Some(change) = changes.next_if(|c| key(c) <= key(&item)) {
            replaced |= key(change) == key(&item);
            merged.push(change.clone());
        }
        if !replaced && removed.binary_search(&key(&item)).is_err() {
            merged.push(item);
        }
    }
    merged.extend(changes.cloned());
    *sorted = merged;
}

/// How a node's desired state changed: all of it, or only what changed
/// since the version the node last applied, so a change to one app costs
/// one app's worth, not the whole cluster's.
///
/// A node decodes the apps' routing (`Apps` is `Vec<AppRouting>`); the
/// control plane sends it as [`SharedJson`], encoded once for every node
/// brought up from the same version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredChange<Apps = Vec<AppRouting>> {
    /// This is the whole state: the node replaces what it has.
    #[serde(default)]
    pub full: bool,
    /// Components assigned to the node that are new or changed (all of
    /// them when `full`).
    #[serde(default)]
    pub assignments: Vec<Assignment>,
    /// Versions of components (`app`, `component`, `package`) no longer
    /// assigned to the node.
    #[serde(default)]
    pub unassigned: Vec<(String, String, String)>,
    /// Apps whose routes or endpoints are new or changed (all of them
    /// when `full`).
    #[serde(default)]
    pub apps: Apps,
    /// Apps deleted.
    #[serde(default)]
    pub removed_apps: Vec<String>,
    /// The cluster's members, when they changed (always when `full`).
    #[serde(default)]
    pub members: Option<BTreeMap<String, String>>,
}

/// A JSON value encoded once and written as it is into many answers:
/// thousands of nodes brought up from one version are sent the same apps'
/// routing, which is then not cloned and encoded once per node.
#[derive(Debug, Clone)]
pub struct SharedJson(Arc<serde_json::value::RawValue>);

impl SharedJson {
    /// Takes `json`, JSON put together from encoded values.
    ///
    /// # Panics
    ///
    /// `json` is not JSON: a defect in whatever put it together.
    pub fn from_json(json: String) -> SharedJson {
        let raw = serde_json::value::RawValue::from_string(json).expect("put-together JSON");
        SharedJson(Arc::from(raw))
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    /// Whether it is empty (never: it is JSON).
    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }
}

impl Serialize for SharedJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// One version of a component a node should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The app.
    pub app: String,
    /// The component.
    pub component: String,
    /// The package digest holding it.
    pub package: String,
    /// Replicas of it placed on this node (at least 1).
    pub replicas: u32,
}

/// How ingress reaches an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRouting {
    /// The app.
    pub name: String,
    /// `(route, component)` for every routed component.
    pub routes: Vec<(String, String)>,
    /// Every component of the app, routed or not: a mesh call to a name
    /// not among them is told so, not that it has no replica.
    #[serde(default)]
    pub components: Vec<String>,
    /// Per component, the nodes running a replica (one entry per replica).
    pub endpoints: BTreeMap<String, Vec<Endpoint>>,
    /// Per component whose requests are split between versions (a canary,
    /// a rollback): one version (package digest) and the share of
    /// requests it gets, percent; the other versions share the rest. A
    /// component absent sends each request to any endpoint, whatever its
    /// version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub split: BTreeMap<String, (String, u32)>,
    /// Per component, the callers its `allow_callers` lists (a component
    /// absent lists none), so the caller's node refuses a call the callee
    /// would refuse before routing it anywhere; the callee's node checks
    /// again. `None` from a control plane that does not send them: only
    /// the callee checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callers: Option<BTreeMap<String, Vec<skiff_runtime::mesh::CallerPattern>>>,
    /// Components the autoscaler may take to zero replicas: a request
    /// for one while no replica runs is held (not refused) until the
    /// control plane places one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scale_from_zero: Vec<String>,
    /// Per component, its `limits.timeout` in milliseconds: a node
    /// forwarding a request to it gives up waiting for the answer after a
    /// while longer (see the node's `reach`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub timeouts_ms: BTreeMap<String, u64>,
    /// Per component with a `request_timeout`, that timeout in
    /// milliseconds: how long a caller waits for its answer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub request_timeouts_ms: BTreeMap<String, u64>,
    /// `[app] domains`: host names that pick this app, whatever the path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// `[app] https_redirect`: plain-HTTP requests for its domains are
    /// redirected to HTTPS where the node serves it a certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
}

/// A node running a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The node's name (its certificate's DNS name).
    pub node: String,
    /// Its mesh address.
    pub mesh: String,
    /// The version (package digest) the replica runs.
    #[serde(default)]
    pub package: String,
}

/// `POST /v1/apps`: declare the app in an uploaded package.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRequest {
    /// The package digest; its blobs must be uploaded first.
    pub package: String,
    /// Canary steps (percent of requests the new version gets in turn),
    /// overriding the manifest's `[app] canary`; `[100]` or none with no
    /// `canary` in the manifest: a rolling update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Vec<u32>>,
    /// How long each canary step lasts, milliseconds, overriding the
    /// manifest's `canary_interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_interval_ms: Option<u64>,
}

/// The answer to `POST /v1/apps/NAME/rollback` or `.../promote`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutResponse {
    /// The app.
    pub app: String,
    /// What was done.
    pub message: String,
}

/// A version that was rolled back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolledBackView {
    /// The version, as `skiff apps` shows versions.
    pub version: String,
    /// Its package digest.
    pub package: String,
    /// Why, with the evidence.
    pub reason: String,
    /// When, Unix milliseconds.
    pub unix_ms: u64,
}

/// A rollout under way, as `skiff apps` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutView {
    /// `rolling`, `canary` or `rollback`.
    pub strategy: String,
    /// `rolling out`, `watching` (every replica moved; errors are still
    /// watched) or `rolling back`.
    pub state: String,
    /// The version being replaced.
    pub from: String,
    /// The version moved to.
    pub to: String,
    /// A canary's share of requests now, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<u32>,
    /// Replicas of the new version serving, over all components.
    pub ready: u32,
    /// Replicas the app should run, over all components.
    pub desired: u32,
    /// Requests the new version answered since the rollout began, and
    /// how many failed.
    pub new_requests: (u64, u64),
    /// Requests the old version answered meanwhile, and how many failed.
    pub old_requests: (u64, u64),
}

/// The answer to a deploy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployResponse {
    /// The app's name.
    pub app: String,
    /// `created`, `updated` or `unchanged`.
    pub outcome: String,
    /// The app's generation after the deploy.
    pub generation: u64,
    /// How the new version replaces the old one, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// What the user should know: replicas that cannot be placed (and
    /// why), routes another app serves too.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// `POST /v1/apps/NAME/scale`: pins a component at a count
/// (`replicas`), or autoscales it within bounds (`min`, `max`); not both.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScaleRequest {
    /// The component.
    pub component: String,
    /// Replicas to run whatever the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Fewest replicas the autoscaler keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    /// Most replicas the autoscaler runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
}

/// The answer to a scale.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleResponse {
    /// The app.
    pub app: String,
    /// The component.
    pub component: String,
    /// What it runs now: pinned at a count or autoscaled within bounds.
    pub replicas: skiff_runtime::manifest::Replicas,
    /// What it ran before.
    pub before: skiff_runtime::manifest::Replicas,
    /// Whether anything changed.
    pub changed: bool,
    /// Replicas that cannot be placed, and why.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// An app, as `skiff apps` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppView {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The package digest.
    pub package: String,
    /// Bumped on every change.
    pub generation: u64,
    /// Each component.
    pub components: Vec<ComponentView>,
    /// Why the control plane cannot read the app's package, if it cannot:
    /// its replicas keep running what they run, and nothing else changes
    /// until the app is deployed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The move to this version, while under way or watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutView>,
    /// The last version rolled back, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<RolledBackView>,
    /// Earlier versions kept for `skiff rollback`, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<String>,
}

/// A component of an app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentView {
    /// Its name.
    pub name: String,
    /// Its route, if any.
    pub route: Option<String>,
    /// Desired replicas.
    pub desired: u32,
    /// Replicas running, of any version (during a rollout, the old and the
    /// new; its line says how many run the new one).
    pub running: u32,
    /// The autoscaler's bounds and what it sees, when autoscaled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleView>,
}

/// An autoscaled component's settings and demand.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoscaleView {
    /// Fewest replicas.
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Requests in flight per replica aimed for.
    pub target_concurrency: u32,
    /// How long demand must stay low before replicas are removed, ms.
    pub scale_down_delay_ms: u64,
    /// Requests in flight, queued or held now, over all its nodes.
    pub concurrency: f64,
}

/// A scheduling or scaling decision, as `skiff events` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventView {
    /// Position in the control plane's event log; increasing.
    pub seq: u64,
    /// When, Unix milliseconds.
    pub unix_ms: u64,
    /// `scaled`, `scale_set`, `placed`, `moved`, `unschedulable`,
    /// `load_failed`, `node_down` or `node_back`.
    pub kind: String,
    /// The app it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The component it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// What happened and why.
    pub message: String,
}

/// A replica, as `skiff ps` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaView {
    /// `app/component/N`.
    pub id: String,
    /// The app.
    pub app: String,
    /// The component.
    pub component: String,
    /// Its node; none while pending.
    pub node: Option<String>,
    /// `pending`, `starting`, `running`, `failed` or `unknown` (its node
    /// is down).
    pub state: String,
    /// Seconds since it was created.
    pub age_secs: u64,
    /// Why it is pending or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The version it runs: the app's `version` and the first digits of
    /// its package digest (`1.2.0 3fa9c1d2e4b7`).
    #[serde(default)]
    pub version: String,
}

/// The cluster as `skiff top` shows it: what each component and node did
/// over the last `window_secs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TopView {
    /// The span the rates cover, seconds.
    pub window_secs: f64,
    /// Every component with a replica or recent traffic, by app and name.
    pub components: Vec<ComponentTop>,
    /// Every node.
    pub nodes: Vec<NodeTop>,
}

/// One component in `skiff top`: summed over the nodes serving it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentTop {
    /// The app.
    pub app: String,
    /// The component.
    pub component: String,
    /// Requests answered a second.
    pub rps: f64,
    /// Of those, answered 5xx, a second.
    pub errors_per_sec: f64,
    /// The share of requests answered 5xx, 0 to 1.
    pub error_rate: f64,
    /// Median time to the response head, ms; none without requests.
    pub p50_ms: Option<f64>,
    /// 99th percentile time to the response head, ms.
    pub p99_ms: Option<f64>,
    /// Requests inside an instance or queued, as last reported.
    pub in_flight: u64,
    /// Replicas running.
    pub running: u32,
    /// Replicas in all.
    pub replicas: u32,
}

/// One node in `skiff top`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeTop {
    /// Its name.
    pub name: String,
    /// As `skiff nodes` shows it.
    pub state: String,
    /// Requests its replicas answered a second.
    pub rps: f64,
    /// Requests inside its instances or queued.
    pub in_flight: u64,
    /// Replicas placed on it.
    pub replicas: u32,
    /// Memory the node process uses, bytes.
    pub used: u64,
    /// Memory its replicas reserve, bytes.
    pub reserved: u64,
    /// Memory it offers, bytes; `null` in JSON when unlimited.
    #[serde(with = "unlimited_as_null")]
    pub memory: u64,
}

/// A node, as `skiff nodes` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// Its name.
    pub name: String,
    /// `ready`, `down`, `cordoned` or `draining`.
    pub state: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Memory offered, bytes; `null` in JSON when unlimited (`skiff up`'s
    /// node), kept here as [`UNLIMITED_MEMORY`].
    #[serde(with = "unlimited_as_null")]
    pub memory: u64,
    /// What its replicas may reserve in all: the memory offered times the
    /// control plane's overcommit ratio, bytes; `null` when unlimited.
    #[serde(default, with = "unlimited_as_null")]
    pub placeable: u64,
    /// Memory reserved by its replicas, bytes.
    pub reserved: u64,
    /// Memory the node process uses, as it last reported, bytes.
    #[serde(default)]
    pub used: u64,
    /// Whether it is short of memory: it refuses new instances and takes
    /// no new replicas.
    #[serde(default)]
    pub pressure: bool,
    /// Replicas assigned to it.
    pub replicas: u32,
    /// Ingress address.
    pub ingress: String,
    /// HTTPS ingress address, when the node serves HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<String>,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: u64,
}

/// `GET /v1/apps/NAME/logs`: lines after a cursor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogsResponse {
    /// The lines, oldest first.
    pub lines: Vec<LogEntry>,
    /// Pass as `after` to get only newer lines.
    pub next: u64,
}

/// One guest line as stored by the control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogEntry {
    /// Position in the control plane's log; increasing.
    pub seq: u64,
    /// The node that ran the replica.
    pub node: String,
    /// The line as the guest wrote it.
    #[serde(flatten)]
    pub line: GuestLine,
}

/// `POST /v1/join-tokens`: a new one-time join token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinTokenResponse {
    /// The token.
    pub token: String,
    /// When it expires, Unix seconds.
    pub expires_unix: u64,
}

/// Memory a node offers when it sets no limit (`skiff up`'s node): any
/// reservation fits, and only the machine running short is pressure.
pub const UNLIMITED_MEMORY: u64 = 1 << 62;

/// Serializes a memory figure of [`UNLIMITED_MEMORY`] or more as `null`,
/// not as a number of bytes no machine has, and reads `null` back as it.
mod unlimited_as_null {
    use super::UNLIMITED_MEMORY;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        if *bytes >= UNLIMITED_MEMORY {
            serializer.serialize_none()
        } else {
            serializer.serialize_u64(*bytes)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        Ok(Option::<u64>::deserialize(deserializer)?.unwrap_or(UNLIMITED_MEMORY))
    }
}
