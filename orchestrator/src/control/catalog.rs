//! What the control plane knows about an uploaded package: each
//! component's route, default replicas and placement, read from the
//! package's locked manifest after verifying every blob.

use crate::scheduler::{ReplicaRequest, Strategy};
use skiff_runtime::manifest::{PlacementStrategy, Replicas};
use skiff_runtime::package::{self, Digest, Store};
use skiff_runtime::reservation;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// An app as declared by its package.
#[derive(Debug, Clone)]
pub struct AppSpec {
    /// The app's name.
    pub name: String,
    /// The app's version.
    pub version: String,
    /// Each component, by name.
    pub components: BTreeMap<String, ComponentPlan>,
    /// Every blob of the package: its manifest, config and layers. A node
    /// may fetch these only while the app has a replica on it.
    pub blobs: BTreeSet<Digest>,
    /// `[app] canary` steps (ending at 100) and interval, when it has
    /// some: a deploy of this version over another is a canary.
    pub canary: Option<(Vec<u32>, Duration)>,
    /// `[app] domains`: host names ingress serves the app at.
    pub domains: Vec<String>,
    /// `[app] https_redirect`: plain HTTP for its domains goes to HTTPS.
    pub https_redirect: bool,
}

impl AppSpec {
    /// Components nothing can reach, and `allow_callers` entries naming a
    /// component this app does not have, as deploy warnings.
    pub fn reachability_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for (name, plan) in &self.components {
            if plan.route.is_none() && plan.allow_callers.is_empty() {
                warnings.push(format!(
                    "component \"{name}\" has neither a route nor allow_callers: nothing can reach it"
                ));
            }
            for pattern in &plan.allow_callers {
                if let (Some(app), Some(component)) = (pattern.app(), pattern.component())
                    && app.as_str() == self.name
                    && !self.components.contains_key(component.as_str())
                {
                    warnings.push(format!(
                        "component \"{name}\" allows calls from \"{pattern}\", but app \"{}\" has no component \"{component}\"",
                        self.name
                    ));
                }
            }
        }
        warnings
    }
}

/// How one component is routed and placed.
#[derive(Debug, Clone)]
pub struct ComponentPlan {
    /// Its route, if any.
    pub route: Option<String>,
    /// Replicas the manifest asks for: a fixed count or autoscaling
    /// bounds.
    pub replicas: Replicas,
    /// Requests in flight per replica the autoscaler aims for.
    pub target_concurrency: u32,
    /// How long demand must stay low before the autoscaler removes
    /// replicas.
    pub scale_down_delay: Duration,
    /// The component's `limits.timeout`: how long one request may run.
    pub timeout: Duration,
    /// Requests one replica takes at once, running or queued
    /// (`max_concurrency + max_queued`): no node can report more demand
    /// per replica than this.
    pub replica_capacity: u32,
    /// What the scheduler needs to place one replica.
    pub request: ReplicaRequest,
    /// Who may call it over the mesh (`allow_callers`).
    pub allow_callers: Vec<skiff_runtime::mesh::CallerPattern>,
    /// How a new version's replicas replace the old ones.
    pub rollout: skiff_runtime::manifest::RolloutBounds,
    /// How long a caller waits for an answer (`request_timeout`).
    pub request_timeout: Option<Duration>,
}

impl ComponentPlan {
    /// The replicas `app` runs of this component (`component`): what a
    /// deploy or `skiff scale` stored, else what the manifest asks for.
    pub fn replicas_in(&self, app: &crate::state::AppRecord, component: &str) -> Replicas {
        app.scale.get(component).copied().unwrap_or(self.replicas)
    }

    /// Whether `app` lets this component run no replica while idle.
    pub fn scales_from_zero(&self, app: &crate::state::AppRecord, component: &str) -> bool {
        matches!(
            self.replicas_in(app, component),
            Replicas::Auto { min: 0, .. }
        )
    }
}

/// Reads package `digest` from `store`, verifying every blob; a blob
/// found corrupt is removed from the store.
///
/// # Errors
///
/// A malformed digest, a missing or corrupt blob, or a package whose
/// manifest is not valid.
pub fn read(store: &Store, digest: &str) -> Result<AppSpec, String> {
    let digest: Digest = digest
        .parse()
        .map_err(|e| format!("package {digest}: {e}"))?;
    let manifest = package::verify(store, &digest).map_err(|e| {
        // A corrupt blob is of no use to anyone: remove it, so checking
        // again is cheap and the next deploy of the app uploads it anew.
        if let package::PackageError::Store(package::StoreError::Corrupt { digest, .. }) = &e {
            let _ = std::fs::remove_file(store.blob_path(digest));
        }
        e.to_string()
    })?;
    let image = store.manifest(&digest).map_err(|e| e.to_string())?;
    let blobs = std::iter::once(digest.clone())
        .chain(std::iter::once(image.config.digest))
        .chain(image.layers.into_iter().map(|layer| layer.digest))
        .collect();
    let name = manifest.app.name.to_string();
    let components = manifest
        .component
        .iter()
        .map(|(component, spec)| {
            // `verify` pointed the source at the component's verified blob.
            let initial_memory = initial_memory_of(store, &spec.source)
                .map_err(|e| format!("package {digest}: component \"{component}\": {e}"))?;
            let plan = ComponentPlan {
                route: spec.route.as_ref().map(ToString::to_string),
                allow_callers: spec.allow_callers.clone(),
                rollout: spec.rollout.clone(),
                request_timeout: spec.request_timeout.map(|t| t.as_duration()),
                replicas: spec.scale.replicas(),
                target_concurrency: spec.scale.target_concurrency(&spec.limits),
                scale_down_delay: spec.scale.scale_down_delay(),
                timeout: spec.limits.timeout.as_duration(),
                replica_capacity: spec
                    .limits
                    .max_concurrency
                    .saturating_add(spec.limits.max_queued),
                request: ReplicaRequest {
                    component: format!("{name}/{component}"),
                    memory: reservation::replica_reservation(spec, initial_memory),
                    required_labels: spec.placement.labels.clone(),
                    strategy: match spec.placement.strategy {
                        PlacementStrategy::Spread => Strategy::Spread,
                        PlacementStrategy::Binpack => Strategy::Binpack,
                    },
                    prefer: None,
                    avoid: Vec::new(),
                },
            };
            Ok((component.to_string(), plan))
        })
        .collect::<Result<_, String>>()?;
    use skiff_runtime::manifest::rollout;
    let canary = if manifest.app.canary.is_empty() {
        None
    } else {
        Some((
            rollout::canary_steps(&manifest.app.canary)?,
            rollout::canary_interval(manifest.app.canary_interval)?,
        ))
    };
    Ok(AppSpec {
        name,
        version: manifest.app.version.clone(),
        components,
        blobs,
        canary,
        domains: manifest.app.domains.iter().map(|d| d.to_string()).collect(),
        https_redirect: manifest.app.https_redirect,
    })
}

/// Component blobs whose initial memory was read, and that memory: apps
/// made of one component (thousands on a dense cluster) share its blob,
/// so a control plane starting reads it once rather than once per app.
/// Keyed by content, so it holds across control planes in one process.
static INITIAL_MEMORY: LazyLock<Mutex<HashMap<Digest, u64>>> = LazyLock::new(Default::default);

/// Distinct component blobs remembered in [`INITIAL_MEMORY`] at most; past
/// that it starts afresh.
const MAX_REMEMBERED: usize = 4096;

/// The initial memory of the component in the verified blob at `source`.
fn initial_memory_of(store: &Store, source: &Path) -> Result<u64, String> {
    let blob = store.blob_at(source);
    let remembered = |blob: &Digest| {
        let memo = INITIAL_MEMORY.lock().unwrap_or_else(|e| e.into_inner());
        memo.get(blob).copied()
    };
    if let Some(bytes) = blob.as_ref().and_then(remembered) {
        return Ok(bytes);
    }
    let wasm = std::fs::read(source).map_err(|e| e.to_string())?;
    let bytes = reservation::initial_memory(&wasm)?;
    if let Some(blob) = blob {
        let mut memo = INITIAL_MEMORY.lock().unwrap_or_else(|e| e.into_inner());
        if memo.len() >= MAX_REMEMBERED {
            memo.clear();
        }
        memo.insert(blob, bytes);
    }
    Ok(bytes)
}
