//! The replicas this node runs: for each assigned component, pull its
//! package from the control plane by digest (verifying every blob), load
//! it, and serve it; a load that fails is retried with exponential backoff
//! and its error reported. Components no longer assigned are dropped;
//! requests already inside them finish.

use super::NodeShared;
use crate::api::{Assignment, ComponentStatus, LoadState, StatusReport};
use skiff_runtime::LoadedComponent;
use skiff_runtime::capability::logging::LogSink;
use skiff_runtime::manifest::ComponentName;
use skiff_runtime::mesh::WorkloadId;
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

/// The components held, by app and component.
#[derive(Default)]
pub(crate) struct LocalReplicas {
    held: Mutex<HashMap<Key, Held>>,
    /// Signalled whenever a load finishes, well or badly.
    settled: tokio::sync::Notify,
    /// Components replaced or unassigned, with their package, kept until
    /// the requests still inside them finish, so their files stay.
    retired: Mutex<Vec<(Arc<LoadedComponent>, String)>>,
    /// Numbers each change of status; locked after `held`.
    changes: Mutex<StatusChanges>,
    /// A collection of unused packages is due to run again.
    collect_scheduled: AtomicBool,
    /// Packages of components no longer assigned here, and when they
    /// left: kept for [`KEEP_RELEASED`], so a component scaled to zero
    /// (or moved away and back) starts again without fetching them.
    released: Mutex<HashMap<String, Instant>>,
}

/// How long a package stays on a node after its last component left.
const KEEP_RELEASED: Duration = Duration::from_secs(600);

/// Numbers every change of what the node reports, so a heartbeat carries
/// only what changed since the status the control plane acknowledged:
/// with thousands of components held, one finished load is one entry.
struct StatusChanges {
    /// The first number this process gave: an acknowledgement below it
    /// is of an earlier run of the node.
    first: u64,
    /// The last number given.
    last: u64,
    /// Components no longer held, with the number of their removal, until
    /// the control plane acknowledges a status past it.
    removed: Vec<(Key, u64)>,
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

/// Which held components are no longer assigned.
pub(crate) enum Unassigned<'a> {
    /// Every one not in the assignments given (they are all of them).
    AllOthers,
    /// These `(app, component)`.
    These(&'a [(String, String)]),
}

struct Held {
    package: String,
    /// Replicas of it placed here: its concurrency limit is that many
    /// times `max_concurrency`.
    replicas: u32,
    state: LoadState,
    error: Option<String>,
    serving: Option<(Arc<LoadedComponent>, Arc<dyn LogSink>)>,
    /// The package `serving` came from.
    serving_package: Option<String>,
    failures: u32,
    /// Bumped on every (re)load, so a stale load result is ignored.
    attempt: u64,
    /// The number of the last change to what is reported of it.
    changed: u64,
}

impl LocalReplicas {
    /// Loads what `assigned` holds that is new (or moved to a new
    /// package), and drops what `unassigned` says is no longer assigned.
    pub(crate) fn apply(
        &self,
        node: &Arc<NodeShared>,
        assigned: &[Assignment],
        unassigned: Unassigned<'_>,
    ) {
        let mut held = self.held.lock().expect("replica lock");
        let mut changes = self.changes.lock().expect("status lock");
        let before = held.len();
        let mut drop_held = |key: &Key, h: &mut Held| {
            let (app, component) = key;
            tracing::info!(app, component, "replica removed from this node");
            let mut released = self.released.lock().expect("released lock");
            let now = Instant::now();
            for package in std::iter::once(&h.package).chain(h.serving_package.as_ref()) {
                released.insert(package.clone(), now);
            }
            self.retire(h);
            let seq = changes.next();
            changes.removed.push((key.clone(), seq));
        };
        match unassigned {
            Unassigned::AllOthers => {
                let wanted: std::collections::HashSet<(&str, &str)> = assigned
                    .iter()
                    .map(|a| (a.app.as_str(), a.component.as_str()))
                    .collect();
                held.retain(|key, h| {
                    let keep = wanted.contains(&(key.0.as_str(), key.1.as_str()));
                    if !keep {
                        drop_held(key, h);
                    }
                    keep
                });
            }
            Unassigned::These(keys) => {
                for key in keys {
                    if let Some(mut h) = held.remove(key) {
                        drop_held(key, &mut h);
                    }
                }
            }
        }
        // Only a removal frees a package here; a new version's load
        // collects the old one when it completes.
        if held.len() < before {
            let node = node.clone();
            tokio::spawn(async move { collect_unused_packages(&node).await });
        }
        for a in assigned {
            let (key, package) = ((a.app.clone(), a.component.clone()), &a.package);
            match held.get_mut(&key) {
                Some(h) if h.package == *package => {
                    h.replicas = a.replicas;
                    if let Some((component, _)) = &h.serving {
                        component.set_replicas(a.replicas);
                    }
                }
                // A new version: the old one keeps serving until the new
                // one is loaded.
                Some(h) => {
                    h.package = package.clone();
                    h.replicas = a.replicas;
                    h.state = LoadState::Loading;
                    h.error = None;
                    h.failures = 0;
                    h.attempt += 1;
                    h.changed = changes.next();
                    tokio::spawn(load(node.clone(), key, package.clone(), h.attempt));
                }
                None => {
                    held.insert(
                        key.clone(),
                        Held {
                            package: package.clone(),
                            replicas: a.replicas,
                            state: LoadState::Loading,
                            error: None,
                            serving: None,
                            serving_package: None,
                            failures: 0,
                            attempt: 1,
                            changed: changes.next(),
                        },
                    );
                    tokio::spawn(load(node.clone(), key, package.clone(), 1));
                }
            }
        }
    }

    /// The loaded component for `app`/`component`, if it is serving here.
    pub(crate) fn serving(
        &self,
        app: &str,
        component: &str,
    ) -> Option<(Arc<LoadedComponent>, Arc<dyn LogSink>)> {
        self.held
            .lock()
            .expect("replica lock")
            .get(&(app.to_string(), component.to_string()))
            .and_then(|h| h.serving.clone())
    }

    /// Whether `app`/`component` is assigned here (loading, serving or
    /// failed).
    pub(crate) fn holds(&self, app: &str, component: &str) -> bool {
        self.held
            .lock()
            .expect("replica lock")
            .contains_key(&(app.to_string(), component.to_string()))
    }

    /// Whether `app`/`component` is assigned here and its last load
    /// failed (it is retried with backoff).
    pub(crate) fn failed(&self, app: &str, component: &str) -> bool {
        self.held
            .lock()
            .expect("replica lock")
            .get(&(app.to_string(), component.to_string()))
            .is_some_and(|h| h.state == LoadState::Failed && h.serving.is_none())
    }

    /// Runs `f` on every component serving here, under the replica lock
    /// (so `f` must be quick).
    pub(crate) fn for_each_serving(&self, mut f: impl FnMut(&Key, &LoadedComponent)) {
        let held = self.held.lock().expect("replica lock");
        for (key, h) in held.iter() {
            if let Some((component, _)) = &h.serving {
                f(key, component);
            }
        }
    }

    /// Completes when the next load finishes, well or badly (registered
    /// at once, so a load finishing before it is awaited counts).
    pub(crate) fn settled(&self) -> tokio::sync::futures::Notified<'_> {
        self.settled.notified()
    }

    /// The component for `app`/`component` once it serves here: at once if
    /// it does, after its load if it is loading (at most `limit`), `None`
    /// if it is not held or failed.
    pub(crate) async fn wait_serving(
        &self,
        app: &str,
        component: &str,
        limit: Duration,
    ) -> Option<(Arc<LoadedComponent>, Arc<dyn LogSink>)> {
        let deadline = tokio::time::Instant::now() + limit;
        let key = (app.to_string(), component.to_string());
        loop {
            let settled = self.settled.notified();
            {
                let held = self.held.lock().expect("replica lock");
                let h = held.get(&key)?;
                if let Some(serving) = &h.serving {
                    return Some(serving.clone());
                }
                if h.state != LoadState::Loading {
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
            .flat_map(|h| std::iter::once(h.package.clone()).chain(h.serving_package.clone()))
            .chain(retired)
            .chain(kept)
            .collect();
        (in_use, draining)
    }

    /// Takes `h`'s serving component out of service, keeping it while
    /// requests are inside.
    fn retire(&self, h: &mut Held) {
        if let (Some((component, _)), Some(package)) = (h.serving.take(), h.serving_package.take())
        {
            self.retired
                .lock()
                .expect("retired lock")
                .push((component, package));
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
            .filter(|(_, h)| h.changed > after)
            .map(|((app, component), h)| ComponentStatus {
                app: app.clone(),
                component: component.clone(),
                package: h.package.clone(),
                state: h.state,
                error: h.error.clone(),
                serving: h.serving_package.clone(),
            })
            .collect();
        components.sort_by(|a, b| (&a.app, &a.component).cmp(&(&b.app, &b.component)));
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

/// Pulls and loads one component, then records the outcome (unless the
/// assignment changed meanwhile) and schedules a retry on failure.
async fn load(node: Arc<NodeShared>, key: Key, package: String, attempt: u64) {
    let (app, component) = key.clone();
    let result = pull_and_load(&node, &app, &component, &package).await;
    // When to retry, or (after a load) whether another package stopped serving.
    let (retry_in, replaced) = {
        let mut held = node.replicas.held.lock().expect("replica lock");
        let Some(h) = held.get_mut(&key).filter(|h| h.attempt == attempt) else {
            return;
        };
        match result {
            Ok(loaded) => {
                tracing::info!(
                    app,
                    component,
                    code = loaded.cache.as_str(),
                    "replica running"
                );
                h.state = LoadState::Running;
                h.error = None;
                h.failures = 0;
                h.changed = node.replicas.changes.lock().expect("status lock").next();
                // A first load (attempt 1) replaces nothing; a later one
                // follows a new version or a failure, whose package may
                // now be unused.
                let replaced = attempt > 1;
                node.replicas.retire(h);
                loaded.set_replicas(h.replicas);
                h.serving = Some((Arc::new(loaded), node.log_sink(&app)));
                h.serving_package = Some(package.clone());
                (None, replaced)
            }
            Err(e) => {
                h.failures += 1;
                let backoff = FIRST_BACKOFF
                    .saturating_mul(1 << (h.failures - 1).min(6))
                    .min(MAX_BACKOFF);
                tracing::error!(
                    app,
                    component,
                    "replica failed to load: {e}; retrying in {backoff:?}"
                );
                h.state = LoadState::Failed;
                h.changed = node.replicas.changes.lock().expect("status lock").next();
                h.error = Some(format!(
                    "{e} (attempt {}, next in {}s)",
                    h.failures,
                    backoff.as_secs()
                ));
                (Some(backoff), false)
            }
        }
    };
    node.replicas.settled.notify_waiters();
    node.changed.notify_one();
    // Collecting reads every package in use: only worth it when one may
    // have stopped being used, not after every first load.
    if replaced {
        collect_unused_packages(&node).await;
    }
    if let Some(backoff) = retry_in {
        tokio::time::sleep(backoff).await;
        let next = {
            let mut held = node.replicas.held.lock().expect("replica lock");
            match held.get_mut(&key).filter(|h| h.attempt == attempt) {
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

async fn pull_and_load(
    node: &Arc<NodeShared>,
    app: &str,
    component: &str,
    package: &str,
) -> Result<LoadedComponent, String> {
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
        match node.packages.blob_at(&spec.source) {
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
        .map_err(|e| e.to_string())
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
