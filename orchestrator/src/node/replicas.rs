//! The replicas this node runs: for each assigned component, pull its
//! package from the control plane by digest (verifying every blob), load
//! it, and serve it; a load that fails is retried with exponential backoff
//! and its error reported. Components no longer assigned are dropped;
//! requests already inside them finish.

use super::NodeShared;
use crate::api::{Assignment, ComponentStatus, LoadState};
use skiff_runtime::LoadedComponent;
use skiff_runtime::capability::logging::LogSink;
use skiff_runtime::manifest::ComponentName;
use skiff_runtime::package::blob::{BlobSize, MAX_MANIFEST_SIZE};
use skiff_runtime::package::{self, Digest};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
}

struct Held {
    package: String,
    state: LoadState,
    error: Option<String>,
    serving: Option<(Arc<LoadedComponent>, Arc<dyn LogSink>)>,
    /// The package `serving` came from.
    serving_package: Option<String>,
    failures: u32,
    /// Bumped on every (re)load, so a stale load result is ignored.
    attempt: u64,
}

impl LocalReplicas {
    /// Makes the held set equal `assignments`: loads what is new (or
    /// moved to a new package), drops what is no longer assigned.
    pub(crate) fn apply(&self, node: &Arc<NodeShared>, assignments: Vec<Assignment>) {
        let mut held = self.held.lock().expect("replica lock");
        let wanted: HashMap<Key, String> = assignments
            .into_iter()
            .map(|a| ((a.app, a.component), a.package))
            .collect();
        let before = held.len();
        held.retain(|(app, component), h| {
            let keep = wanted.contains_key(&(app.clone(), component.clone()));
            if !keep {
                tracing::info!(app, component, "replica removed from this node");
                self.retire(h);
            }
            keep
        });
        // Only a removal frees a package here; a new version's load
        // collects the old one when it completes.
        if held.len() < before {
            let node = node.clone();
            tokio::spawn(async move { collect_unused_packages(&node).await });
        }
        for (key, package) in wanted {
            match held.get_mut(&key) {
                Some(h) if h.package == package => continue,
                // A new version: the old one keeps serving until the new
                // one is loaded.
                Some(h) => {
                    h.package = package.clone();
                    h.state = LoadState::Loading;
                    h.error = None;
                    h.failures = 0;
                    h.attempt += 1;
                    tokio::spawn(load(node.clone(), key, package, h.attempt));
                }
                None => {
                    held.insert(
                        key.clone(),
                        Held {
                            package: package.clone(),
                            state: LoadState::Loading,
                            error: None,
                            serving: None,
                            serving_package: None,
                            failures: 0,
                            attempt: 1,
                        },
                    );
                    tokio::spawn(load(node.clone(), key, package, 1));
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

    /// Packages a held component is assigned or serving, or a retired one
    /// still has requests inside.
    fn packages_in_use(&self) -> std::collections::HashSet<String> {
        // One lock at a time: `retire` takes `retired` while `held` is held.
        let retired: Vec<String> = {
            let mut retired = self.retired.lock().expect("retired lock");
            retired.retain(|(component, _)| Arc::strong_count(component) > 1);
            retired.iter().map(|(_, package)| package.clone()).collect()
        };
        let held = self.held.lock().expect("replica lock");
        held.values()
            .flat_map(|h| std::iter::once(h.package.clone()).chain(h.serving_package.clone()))
            .chain(retired)
            .collect()
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

    /// What to report to the control plane.
    pub(crate) fn status(&self) -> Vec<ComponentStatus> {
        let held = self.held.lock().expect("replica lock");
        let mut status: Vec<_> = held
            .iter()
            .map(|((app, component), h)| ComponentStatus {
                app: app.clone(),
                component: component.clone(),
                package: h.package.clone(),
                state: h.state,
                error: h.error.clone(),
                serving: h.serving_package.clone(),
            })
            .collect();
        status.sort_by(|a, b| (&a.app, &a.component).cmp(&(&b.app, &b.component)));
        status
    }
}

/// Pulls and loads one component, then records the outcome (unless the
/// assignment changed meanwhile) and schedules a retry on failure.
async fn load(node: Arc<NodeShared>, key: Key, package: String, attempt: u64) {
    let (app, component) = key.clone();
    let result = pull_and_load(&node, &app, &component, &package).await;
    let retry_in = {
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
                node.replicas.retire(h);
                h.serving = Some((Arc::new(loaded), node.log_sink(&app)));
                h.serving_package = Some(package.clone());
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
                    "replica failed to load: {e}; retrying in {backoff:?}"
                );
                h.state = LoadState::Failed;
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
    if retry_in.is_none() {
        // An earlier version may have stopped serving.
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
    pull(node, &digest).await?;
    let node = node.clone();
    let component = ComponentName::try_from(component.to_string())?;
    let app = app.to_string();
    tokio::task::spawn_blocking(move || {
        let manifest = package::open(&node.packages, &digest).map_err(|e| e.to_string())?;
        let spec = manifest.component.get(&component).ok_or_else(|| {
            format!("package {digest} of app {app:?} has no component \"{component}\"")
        })?;
        LoadedComponent::load(&node.engine, &node.cache, &component, spec, Path::new("/"))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("the load task failed: {e}"))?
}

/// The tag a pulled package carries in the node's store while a replica
/// may use it; untagged packages are collected.
fn assigned_tag(digest: &Digest) -> String {
    format!("{ASSIGNED_TAG}{}", digest.hex())
}

const ASSIGNED_TAG: &str = "assigned:";

/// Fetches every blob of package `digest` this node lacks, each streamed
/// to disk and verified against its digest (and, for the config and
/// layers, the size the manifest declares) before it is stored, then tags
/// it as in use. Holds the store lock so a collection cannot remove blobs
/// half way.
async fn pull(node: &Arc<NodeShared>, digest: &Digest) -> Result<(), String> {
    let _store = node.store_lock.lock().await;
    fetch(node, digest, BlobSize::AtMost(MAX_MANIFEST_SIZE)).await?;
    let image = node.packages.manifest(digest).map_err(|e| e.to_string())?;
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        fetch(node, &blob.digest, BlobSize::Exactly(blob.size)).await?;
    }
    let bytes = node.packages.read(digest).map_err(|e| e.to_string())?;
    let descriptor = skiff_runtime::package::oci::Descriptor::of(
        skiff_runtime::package::oci::MANIFEST_MEDIA_TYPE,
        &bytes,
    );
    node.packages
        .tag(&assigned_tag(digest), &descriptor)
        .map_err(|e| e.to_string())
}

/// Removes from the node's store every package no held or serving
/// component uses, with the blobs and unpacked files only it needed.
async fn collect_unused_packages(node: &Arc<NodeShared>) {
    let _store = node.store_lock.lock().await;
    let in_use = node.replicas.packages_in_use();
    let Ok(tagged) = node.packages.list() else {
        return;
    };
    for (reference, descriptor) in tagged {
        if !reference.starts_with(ASSIGNED_TAG) || in_use.contains(descriptor.digest.as_str()) {
            continue;
        }
        match node.packages.remove(&reference) {
            Ok(_) => {
                tracing::info!(package = %descriptor.digest, "removed a package no replica uses")
            }
            Err(e) => {
                tracing::warn!(package = %descriptor.digest, "cannot remove an unused package: {e}")
            }
        }
    }
}

async fn fetch(node: &Arc<NodeShared>, digest: &Digest, size: BlobSize) -> Result<(), String> {
    if node.packages.blob_path(digest).exists() {
        return Ok(());
    }
    let failed = |e: &dyn std::fmt::Display| format!("cannot fetch {digest}: {e}");
    let body = node
        .api()
        .download(&format!("/v1/node/blobs/{digest}"), Duration::from_secs(60))
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
