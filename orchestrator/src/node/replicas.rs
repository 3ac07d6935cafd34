//! The replicas this node runs: for each assigned version of a
//! component, pull its package from the control plane by digest
//! (verifying every blob), load it, check it is ready (an instance can be
//! created, and its `health` path answers), and serve it; a load that
//! fails is retried with exponential backoff and its error reported.
//! During a rollout a node may hold two versions of one component.
//! Versions no longer assigned are dropped; requests already inside them
//! finish.

use super::NodeShared;
use crate::api::{Assignment, ComponentStatus, LoadState, StatusReport};
use bytes::Bytes;
use http_body_util::BodyExt;
use skiff_runtime::LoadedComponent;
use skiff_runtime::capability::logging::LogSink;
use skiff_runtime::manifest::ComponentName;
use skiff_runtime::mesh::{Inbound, WorkloadId};
use skiff_runtime::package::blob::{BlobSize, MAX_MANIFEST_SIZE};
use skiff_runtime::package::{self, Digest};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// First retry after a failed load; doubled per failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// `(app, component)`.
type Key = (String, String);

/// A loaded version, ready to serve, and where its guest's lines go.
pub(crate) type Serving = (Arc<LoadedComponent>, Arc<dyn LogSink>);

/// Which versions of a component a request may be served by: a canary
/// sends a share of requests to one version and the rest to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick<'a> {
    /// Any version.
    Any,
    /// Only this one.
    Only(&'a str),
    /// Any but this one.
    Except(&'a str),
}

impl Pick<'_> {
    /// Whether version `package` may serve.
    pub(crate) fn admits(self, package: &str) -> bool {
        match self {
            Pick::Any => true,
            Pick::Only(p) => p == package,
            Pick::Except(p) => p != package,
        }
    }
}

/// The versions held, by app and component.
#[derive(Default)]
pub(crate) struct LocalReplicas {
    held: Mutex<HashMap<Key, Vec<Held>>>,
    /// Signalled whenever a load finishes, well or badly.
    settled: tokio::sync::Notify,
    /// Versions unassigned, with their package, kept until the requests
    /// still inside them finish, so their files stay.
    retired: Mutex<Vec<(Arc<LoadedComponent>, String)>>,
    /// Numbers each change of status; locked after `held`.
    changes: Mutex<StatusChanges>,
    /// A collection of unused packages is due to run again.
    collect_scheduled: AtomicBool,
    /// Counts local requests to spread them over the versions serving
    /// here, and keys the hash that does it.
    dealt: std::sync::atomic::AtomicU64,
    dealer: std::hash::RandomState,
    /// Packages of versions no longer assigned here, and when they left:
    /// kept for [`KEEP_RELEASED`], so a component scaled to zero (or
    /// moved away and back, or rolled back) starts again without
    /// fetching them.
    released: Mutex<HashMap<String, Instant>>,
}

/// How long a package stays on a node after its last component left.
const KEEP_RELEASED: Duration = Duration::from_secs(600);

/// `(app, component, package)`.
type VersionKey = (String, String, String);

/// Numbers every change of what the node reports, so a heartbeat carries
/// only what changed since the status the control plane acknowledged:
/// with thousands of components held, one finished load is one entry.
struct StatusChanges {
    /// The first number this process gave: an acknowledgement below it
    /// is of an earlier run of the node.
    first: u64,
    /// The last number given.
    last: u64,
    /// Versions no longer held, with the number of their removal, until
    /// the control plane acknowledges a status past it.
    removed: Vec<(VersionKey, u64)>,
}

impl Default for StatusChanges {
    fn default() -> Self {
        // Numbers keep increasing across restarts of the node, so an old
        // acknowledgement is never taken for one of this run.
        let first = crate::clock::unix_ms() * 1000;
        StatusChanges {
            first,
            last: first,
            removed: Vec::new(),
        }
    }
}

impl StatusChanges {
    fn next(&mut self) -> u64 {
        self.last += 1;
        self.last
    }

    /// `acknowledged`, when it is a status of this run the control plane
    /// can be brought forward from.
    fn base(&self, acknowledged: Option<u64>) -> Option<u64> {
        acknowledged.filter(|seq| (self.first..=self.last).contains(seq))
    }
}

/// Which held versions are no longer assigned.
pub(crate) enum Unassigned<'a> {
    /// Every one not in the assignments given (they are all of them).
    AllOthers,
    /// These `(app, component, package)`.
    These(&'a [(String, String, String)]),
}

/// One version of a component held here.
struct Held {
    package: String,
    /// Replicas of it placed here: its concurrency limit is that many
    /// times `max_concurrency`.
    replicas: u32,
    state: LoadState,
    error: Option<String>,
    /// Set once it is loaded and ready.
    serving: Option<Serving>,
    failures: u32,
    /// Bumped on every (re)load, so a stale load result is ignored.
    attempt: u64,
    /// The number of the last change to what is reported of it.
    changed: u64,
}

impl Held {
    fn new(package: &str, replicas: u32, changed: u64) -> Held {
        Held {
            package: package.to_string(),
            replicas,
            state: LoadState::Loading,
            error: None,
            serving: None,
            failures: 0,
            attempt: 1,
            changed,
        }
    }
}

impl LocalReplicas {
    /// Loads the versions `assigned` holds that are new, and drops what
    /// `unassigned` says is no longer assigned.
    pub(crate) fn apply(
        &self,
        node: &Arc<NodeShared>,
        assigned: &[Assignment],
        unassigned: Unassigned<'_>,
    ) {
        let mut held = self.held.lock().expect("replica lock");
        let mut changes = self.changes.lock().expect("status lock");
        let mut gone: Vec<(Key, Held)> = Vec::new();
        match unassigned {
            Unassigned::AllOthers => {
                let wanted: std::collections::HashSet<(&str, &str, &str)> = assigned
                    .iter()
                    .map(|a| (a.app.as_str(), a.component.as_str(), a.package.as_str()))
                    .collect();
                held.retain(|key, versions| {
                    let (kept, left): (Vec<Held>, Vec<Held>) =
                        std::mem::take(versions).into_iter().partition(|h| {
                            wanted.contains(&(key.0.as_str(), key.1.as_str(), h.package.as_str()))
                        });
                    gone.extend(left.into_iter().map(|h| (key.clone(), h)));
                    *versions = kept;
                    !versions.is_empty()
                });
            }
            Unassigned::These(versions) => {
                for (app, component, package) in versions {
                    let key = (app.clone(), component.clone());
                    let Some(held_versions) = held.get_mut(&key) else {
                        continue;
                    };
                    if let Some(i) = held_versions.iter().position(|h| &h.package == package) {
                        gone.push((key.clone(), held_versions.remove(i)));
                    }
                    if held_versions.is_empty() {
                        held.remove(&key);
                    }
                }
            }
        }
        let dropped = !gone.is_empty();
        for ((app, component), h) in gone {
            tracing::info!(
                app,
                component,
                version = short(&h.package),
                "replica removed from this node"
            );
            self.released
                .lock()
                .expect("released lock")
                .insert(h.package.clone(), Instant::now());
            let seq = changes.next();
            changes
                .removed
                .push(((app, component, h.package.clone()), seq));
            self.retire(h);
        }
        // Only a removal frees a package here.
        if dropped {
            let node = node.clone();
            tokio::spawn(async move { collect_unused_packages(&node).await });
        }
        for a in assigned {
            let key = (a.app.clone(), a.component.clone());
            let versions = held.entry(key.clone()).or_default();
            match versions.iter_mut().find(|h| h.package == a.package) {
                Some(h) => {
                    h.replicas = a.replicas;
                    if let Some((component, _)) = &h.serving {
                        component.set_replicas(a.replicas);
                    }
                }
                None => {
                    versions.push(Held::new(&a.package, a.replicas, changes.next()));
                    tokio::spawn(load(node.clone(), key, a.package.clone(), 1));
                }
            }
        }
    }

    /// A version of `app`/`component` that `pick` admits and that serves
    /// here; when several do (a rolling update), each in proportion to its
    /// replicas here, so a new version takes its share of requests as its
    /// replicas become ready, and shows at once whether it fails.
    pub(crate) fn serving(&self, app: &str, component: &str, pick: Pick<'_>) -> Option<Serving> {
        use std::hash::BuildHasher;
        let held = self.held.lock().expect("replica lock");
        let versions = held.get(&(app.to_string(), component.to_string()))?;
        let serving = || {
            versions
                .iter()
                .filter(|h| pick.admits(&h.package) && h.serving.is_some())
        };
        let total: u64 = serving().map(|h| u64::from(h.replicas.max(1))).sum();
        if total == 0 {
            return None;
        }
        let n = self.dealt.fetch_add(1, Ordering::Relaxed);
        let mut at = self.dealer.hash_one(n) % total;
        for h in serving() {
            let weight = u64::from(h.replicas.max(1));
            if at < weight {
                return h.serving.clone();
            }
            at -= weight;
        }
        None
    }

    /// Whether a version of `app`/`component` that `pick` admits is
    /// assigned here (loading, serving or failed).
    pub(crate) fn holds(&self, app: &str, component: &str, pick: Pick<'_>) -> bool {
        self.held
            .lock()
            .expect("replica lock")
            .get(&(app.to_string(), component.to_string()))
            .is_some_and(|versions| versions.iter().any(|h| pick.admits(&h.package)))
    }

    /// Whether `app`/`component` is assigned here and every version of it
    /// failed to load (each is retried with backoff).
    pub(crate) fn failed(&self, app: &str, component: &str) -> bool {
        self.held
            .lock()
            .expect("replica lock")
            .get(&(app.to_string(), component.to_string()))
            .is_some_and(|versions| {
                versions
                    .iter()
                    .all(|h| h.state == LoadState::Failed && h.serving.is_none())
            })
    }

    /// Runs `f` on every version serving here, with its package, under
    /// the replica lock (so `f` must be quick).
    pub(crate) fn for_each_serving(&self, mut f: impl FnMut(&Key, &str, &LoadedComponent)) {
        let held = self.held.lock().expect("replica lock");
        for (key, versions) in held.iter() {
            for h in versions {
                if let Some((component, _)) = &h.serving {
                    f(key, &h.package, component);
                }
            }
        }
    }

    /// Completes when the next load finishes, well or badly (registered
    /// at once, so a load finishing before it is awaited counts).
    pub(crate) fn settled(&self) -> tokio::sync::futures::Notified<'_> {
        self.settled.notified()
    }

    /// A version of `app`/`component` that `pick` admits once it serves
    /// here: at once if one does, after its load if one is loading (at
    /// most `limit`), `None` if none is held or all failed. When no
    /// version `pick` admits is held, any version will do: the sender's
    /// view of where versions run was only early.
    pub(crate) async fn wait_serving(
        &self,
        app: &str,
        component: &str,
        pick: Pick<'_>,
        limit: Duration,
    ) -> Option<Serving> {
        let deadline = tokio::time::Instant::now() + limit;
        let key = (app.to_string(), component.to_string());
        loop {
            let settled = self.settled.notified();
            {
                let held = self.held.lock().expect("replica lock");
                let versions = held.get(&key)?;
                let pick = if versions.iter().any(|h| pick.admits(&h.package)) {
                    pick
                } else {
                    Pick::Any
                };
                let admitted = || versions.iter().filter(|h| pick.admits(&h.package));
                if let Some(serving) = admitted().find_map(|h| h.serving.clone()) {
                    return Some(serving);
                }
                if !admitted().any(|h| h.state == LoadState::Loading) {
                    return None;
                }
            }
            tokio::time::timeout_at(deadline, settled).await.ok()?;
        }
    }

    fn packages_in_use(&self) -> (std::collections::HashSet<String>, bool) {
        // One lock at a time: `retire` takes `retired` while `held` is held.
        let retired: Vec<String> = {
            let mut retired = self.retired.lock().expect("retired lock");
            retired.retain(|(component, _)| Arc::strong_count(component) > 1);
            retired.iter().map(|(_, package)| package.clone()).collect()
        };
        let kept: Vec<String> = {
            let mut released = self.released.lock().expect("released lock");
            released.retain(|_, at| at.elapsed() < KEEP_RELEASED);
            released.keys().cloned().collect()
        };
        let draining = !retired.is_empty() || !kept.is_empty();
        let held = self.held.lock().expect("replica lock");
        let in_use = held
            .values()
            .flatten()
            .map(|h| h.package.clone())
            .chain(retired)
            .chain(kept)
            .collect();
        (in_use, draining)
    }

    /// Takes `h`'s serving component out of service, keeping it while
    /// requests are inside.
    fn retire(&self, mut h: Held) {
        if let Some((component, _)) = h.serving.take() {
            self.retired
                .lock()
                .expect("retired lock")
                .push((component, h.package));
        }
    }

    /// What to report to the control plane, which holds the status
    /// numbered `acknowledged`: what changed since, or everything when
    /// that is not a status of this run.
    pub(crate) fn report(&self, acknowledged: Option<u64>) -> StatusReport {
        let held = self.held.lock().expect("replica lock");
        let changes = self.changes.lock().expect("status lock");
        let base = changes.base(acknowledged);
        let after = base.unwrap_or(0);
        let mut components: Vec<_> = held
            .iter()
            .flat_map(|(key, versions)| versions.iter().map(move |h| (key, h)))
            .filter(|(_, h)| h.changed > after)
            .map(|((app, component), h)| ComponentStatus {
                app: app.clone(),
                component: component.clone(),
                package: h.package.clone(),
                state: h.state,
                error: h.error.clone(),
                serving: h.serving.as_ref().map(|_| h.package.clone()),
            })
            .collect();
        components.sort_by(|a, b| {
            (&a.app, &a.component, &a.package).cmp(&(&b.app, &b.component, &b.package))
        });
        let removed = match base {
            Some(base) => changes
                .removed
                .iter()
                .filter(|(_, seq)| *seq > base)
                .map(|(key, _)| key.clone())
                .collect(),
            None => Vec::new(),
        };
        StatusReport {
            run: changes.first,
            seq: changes.last,
            base,
            components,
            removed,
        }
    }

    /// The control plane holds the status numbered `acknowledged`: the
    /// removals it includes need not be reported again.
    pub(crate) fn acknowledged(&self, acknowledged: Option<u64>) {
        let mut changes = self.changes.lock().expect("status lock");
        if let Some(seq) = changes.base(acknowledged) {
            changes.removed.retain(|(_, removed)| *removed > seq);
        }
    }
}

/// The first digits of a package digest, as logs show a version.
pub(crate) fn short(package: &str) -> &str {
    let hex = package.strip_prefix("sha256:").unwrap_or(package);
    &hex[..hex.len().min(12)]
}

/// Pulls, loads and readies one version of a component, then records the
/// outcome (unless it was unassigned meanwhile) and schedules a retry on
/// failure.
async fn load(node: Arc<NodeShared>, key: Key, package: String, attempt: u64) {
    let (app, component) = key.clone();
    let result = match pull_and_load(&node, &app, &component, &package).await {
        Ok((loaded, health)) => {
            let sink = node.log_sink(&app);
            ready(&node, &loaded, &sink, health.as_deref())
                .await
                .map(|()| (loaded, sink))
        }
        Err(e) => Err(e),
    };
    let retry_in = {
        let mut held = node.replicas.held.lock().expect("replica lock");
        let Some(h) = held
            .get_mut(&key)
            .and_then(|versions| versions.iter_mut().find(|h| h.package == package))
            .filter(|h| h.attempt == attempt)
        else {
            return;
        };
        match result {
            Ok((loaded, sink)) => {
                tracing::info!(
                    app,
                    component,
                    version = short(&package),
                    code = loaded.cache.as_str(),
                    "replica running"
                );
                h.state = LoadState::Running;
                h.error = None;
                h.failures = 0;
                h.changed = node.replicas.changes.lock().expect("status lock").next();
                loaded.set_replicas(h.replicas);
                h.serving = Some((Arc::new(loaded), sink));
                None
            }
            Err(e) => {
                h.failures += 1;
                let backoff = FIRST_BACKOFF
                    .saturating_mul(1 << (h.failures - 1).min(6))
                    .min(MAX_BACKOFF);
                tracing::error!(
                    app,
                    component,
                    version = short(&package),
                    "replica failed to load: {e}; retrying in {backoff:?}"
                );
                h.state = LoadState::Failed;
                h.changed = node.replicas.changes.lock().expect("status lock").next();
                h.error = Some(format!(
                    "{e} (attempt {}, next in {}s)",
                    h.failures,
                    backoff.as_secs()
                ));
                Some(backoff)
            }
        }
    };
    node.replicas.settled.notify_waiters();
    node.changed.notify_one();
    if let Some(backoff) = retry_in {
        tokio::time::sleep(backoff).await;
        let next = {
            let mut held = node.replicas.held.lock().expect("replica lock");
            match held
                .get_mut(&key)
                .and_then(|versions| versions.iter_mut().find(|h| h.package == package))
                .filter(|h| h.attempt == attempt)
            {
                Some(h) => {
                    h.attempt += 1;
                    h.attempt
                }
                None => return,
            }
        };
        Box::pin(load(node, key, package, next)).await;
    }
}

/// How often a new replica's `health` path is asked before it is given up
/// on (the load is then retried with backoff), and the pause between.
const HEALTH_TRIES: u32 = 20;
const HEALTH_PAUSE: Duration = Duration::from_millis(500);
/// How long one health check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a loaded version may take traffic: an instance of it can be
/// created, and its `health` path (when it has one) answers 2xx.
async fn ready(
    node: &Arc<NodeShared>,
    loaded: &LoadedComponent,
    sink: &Arc<dyn LogSink>,
    health: Option<&str>,
) -> Result<(), String> {
    loaded.check_instantiates(sink).await?;
    let Some(path) = health else {
        return Ok(());
    };
    // The checks are the node's own requests, not the version's clients'.
    let checked = check_health(node, loaded, sink, path).await;
    loaded.outcomes.reset();
    checked
}

/// Asks `path` of `loaded` until it answers 2xx, each try within
/// [`HEALTH_TIMEOUT`], at most [`HEALTH_TRIES`] times.
async fn check_health(
    node: &Arc<NodeShared>,
    loaded: &LoadedComponent,
    sink: &Arc<dyn LogSink>,
    path: &str,
) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..HEALTH_TRIES {
        let request = hyper::Request::get(path)
            .header(http::header::HOST, loaded.workload.app.as_str())
            .body(
                http_body_util::Empty::<Bytes>::new()
                    .map_err(|never| -> wasmtime_wasi_http::Error { match never {} }),
            )
            .map_err(|e| format!("health = {path:?}: {e}"))?;
        let answer = tokio::time::timeout(
            HEALTH_TIMEOUT,
            skiff_runtime::invoke::invoke(
                loaded,
                request,
                sink,
                Inbound::ingress(Some(node.mesh_router())),
            ),
        )
        .await;
        match answer.map(|answer| answer.status()) {
            Ok(status) if status.is_success() => return Ok(()),
            Ok(status) => last = format!("its health check GET {path} answered {status}"),
            Err(_) => {
                last =
                    format!("its health check GET {path} did not answer within {HEALTH_TIMEOUT:?}");
            }
        }
        tokio::time::sleep(HEALTH_PAUSE).await;
    }
    Err(format!(
        "{last} ({HEALTH_TRIES} tries over {:?})",
        HEALTH_PAUSE * HEALTH_TRIES
    ))
}

/// Pulls package `package` and loads its `component`; returns it with its
/// `health` path.
async fn pull_and_load(
    node: &Arc<NodeShared>,
    app: &str,
    component: &str,
    package: &str,
) -> Result<(LoadedComponent, Option<String>), String> {
    let digest: Digest = package
        .parse()
        .map_err(|e| format!("package {package}: {e}"))?;
    pull(node, app, &digest).await?;
    // A blob damaged on this node's disk is fetched again from the control
    // plane, which holds a sound copy: once, then the error stands.
    let opened = {
        let node = node.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || package::open(&node.packages, &digest))
            .await
            .map_err(|e| format!("the load task failed: {e}"))?
    };
    if let Err(package::PackageError::Store(package::StoreError::Corrupt { digest: bad, .. })) =
        &opened
    {
        let _store = node.store_lock.lock().await;
        match node.packages.discard_if_corrupt(bad) {
            Ok(true) => tracing::warn!(
                app,
                blob = %bad,
                "a blob of this node's package store was corrupt: removed, fetching it again"
            ),
            Ok(false) => {}
            Err(e) => return Err(format!("cannot remove the corrupt blob {bad}: {e}")),
        }
        drop(_store);
        pull(node, app, &digest).await?;
    }
    let node = node.clone();
    let component = ComponentName::try_from(component.to_string())?;
    let app = app.to_string();
    tokio::task::spawn_blocking(move || {
        let manifest = package::open(&node.packages, &digest).map_err(|e| e.to_string())?;
        let spec = manifest.component.get(&component).ok_or_else(|| {
            format!("package {digest} of app {app:?} has no component \"{component}\"")
        })?;
        // The app's name in the cluster, which may differ from its
        // package's manifest.
        let app_name =
            ComponentName::try_from(app.clone()).map_err(|e| format!("app {app:?}: {e}"))?;
        let workload = WorkloadId::new(app_name, component.clone());
        // `open` verified the component's blob: the engine need not hash
        // it again for every app that shares it.
        let loaded = match node.packages.blob_at(&spec.source) {
            Some(blob) => LoadedComponent::load_verified(
                &node.engine,
                &node.cache,
                &workload,
                spec,
                Path::new("/"),
                blob.hex(),
            ),
            None => {
                LoadedComponent::load(&node.engine, &node.cache, &workload, spec, Path::new("/"))
            }
        }
        .map_err(|e| e.to_string())?;
        Ok((loaded, spec.health.clone()))
    })
    .await
    .map_err(|e| format!("the load task failed: {e}"))?
}

/// Fetches every blob of package `digest` this node lacks, each streamed
/// to disk and verified against its digest (and, for the config and
/// layers, the size the manifest declares) before it is stored. Holds the
/// store lock so a collection cannot remove blobs half way.
///
/// Nothing is tagged: which packages are in use is known from the held
/// components, and a tag would rewrite the store's index (every package
/// the node holds) on each pull.
async fn pull(node: &Arc<NodeShared>, app: &str, digest: &Digest) -> Result<(), String> {
    let _store = node.store_lock.lock().await;
    fetch(node, app, digest, BlobSize::AtMost(MAX_MANIFEST_SIZE)).await?;
    let image = node.packages.manifest(digest).map_err(|e| e.to_string())?;
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        fetch(node, app, &blob.digest, BlobSize::Exactly(blob.size)).await?;
    }
    Ok(())
}

/// Tags of packages in use that earlier versions of the node wrote; they
/// are dropped (without deleting anything) when packages are collected.
const LEGACY_ASSIGNED_TAG: &str = "assigned:";

/// How long after a collection that had to keep a package (a replaced
/// component still had requests inside) it runs again.
const COLLECT_AGAIN: Duration = Duration::from_secs(30);

/// Removes from the node's store every package no held or serving
/// component uses, with the blobs and unpacked files only it needed. When
/// a replaced component still has requests inside, its package is kept
/// and collection runs again [`COLLECT_AGAIN`] later.
pub(super) async fn collect_unused_packages(node: &Arc<NodeShared>) {
    let _store = node.store_lock.lock().await;
    let (in_use, draining) = node.replicas.packages_in_use();
    if let Err(e) = node.packages.untag_all(LEGACY_ASSIGNED_TAG) {
        tracing::warn!("cannot drop the tags of packages in use: {e}");
        return;
    }
    let keep: Vec<Digest> = in_use.iter().filter_map(|p| p.parse().ok()).collect();
    match node.packages.keep_only(&keep) {
        Ok(0) => {}
        Ok(removed) => tracing::info!(blobs = removed, "removed packages no replica uses"),
        Err(e) => tracing::warn!("cannot collect unused packages: {e}"),
    }
    if draining && !node.replicas.collect_scheduled.swap(true, Ordering::SeqCst) {
        tokio::spawn(collect_again(node.clone()));
    }
}

/// [`collect_unused_packages`] after [`COLLECT_AGAIN`].
fn collect_again(node: Arc<NodeShared>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        tokio::time::sleep(COLLECT_AGAIN).await;
        node.replicas
            .collect_scheduled
            .store(false, Ordering::SeqCst);
        collect_unused_packages(&node).await;
    })
}

async fn fetch(
    node: &Arc<NodeShared>,
    app: &str,
    digest: &Digest,
    size: BlobSize,
) -> Result<(), String> {
    if node.packages.blob_path(digest).exists() {
        return Ok(());
    }
    let failed = |e: &dyn std::fmt::Display| format!("cannot fetch {digest}: {e}");
    let body = node
        .api()
        .download(
            &format!("/v1/node/blobs/{digest}?app={app}"),
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| failed(&e))?;
    let writer = node.packages.writer(digest, size).map_err(|e| failed(&e))?;
    writer
        .receive(body, Duration::from_secs(60))
        .await
        .map_err(|e| match e {
            // The store's own advice (`skiff rmi`, pack again) is for a
            // local store, not for a copy the control plane sent.
            package::StoreError::Corrupt { digest, actual } => format!(
                "refused blob {digest} from the control plane: what arrived hashes to {actual}, so the control plane's copy (or the transfer) is corrupt; nothing was stored"
            ),
            e => failed(&e),
        })?;
    Ok(())
}
