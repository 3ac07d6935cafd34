//! The controller: one pass marks silent nodes down, takes replicas off
//! down and drained nodes, matches each component's replica count to its
//! declared scale, and places pending replicas with the scheduler. A pass
//! runs when something changed and a few times per heartbeat regardless.

use super::catalog::{AppSpec, ComponentPlan};
use super::events::EventKind;
use super::{ControlPlaneConfig, Live, Shared};
use crate::api::LoadState;
use crate::autoscaler::{Autoscaler, Policy};
use crate::scheduler::{ClusterSnapshot, Decision, NodeInfo, Refusal, ReplicaRequest, Scheduler};
use crate::state::{AppRecord, ReplicaChange, ReplicaRecord, Replicas};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs controller passes until aborted: soon after being woken, and a
/// few times per heartbeat to notice silent nodes. A tick that finds no
/// node newly down runs the whole pass only once per heartbeat, so an idle
/// cluster of thousands of apps is not reconciled many times a second.
///
/// After a pass that took `d`, the next starts no sooner than 2 x `d`
/// later: with many apps, passes woken back to back (a burst of deploys)
/// take at most a third of a core and hold the state lock no longer, and
/// the API and heartbeats waiting for that lock get the rest. Wakes in
/// between are served by one pass.
pub(super) async fn run(shared: Arc<Shared>) {
    let tick = shared.config.heartbeat / 4;
    let mut last_pass = Instant::now();
    let mut rest = std::time::Duration::ZERO;
    loop {
        let woken = tokio::select! {
            () = shared.wake.notified() => true,
            () = tokio::time::sleep(tick) => false,
        };
        let due = woken
            || last_pass.elapsed() >= shared.config.heartbeat
            || shared
                .live()
                .a_node_fell_silent(Instant::now(), &shared.config);
        if due {
            tokio::time::sleep(rest.saturating_sub(last_pass.elapsed())).await;
            let started = Instant::now();
            // A pass over a large cluster takes a while and holds a
            // std lock: off the async workers, so serving goes on.
            let passing = shared.clone();
            match tokio::task::spawn_blocking(move || pass(&passing)).await {
                Ok(()) => {}
                // The controller stops with its pass (`serve` says so).
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // The runtime is shutting down.
                Err(_) => return,
            }
            last_pass = Instant::now();
            rest = (last_pass - started) * 2;
        }
    }
}

/// One controller pass, persisted in one transaction; then announces its
/// number in `shared.passed`.
fn pass(shared: &Shared) {
    read_missing_specs(shared);
    let mut live = shared.live();
    if live.replicas_unsaved {
        // A pass's changes were not stored, nor could the stored replicas
        // be read back: read them now, or pass no judgement on a state
        // the store does not hold.
        match shared.store.replicas() {
            Ok(replicas) => {
                live.replicas = replicas.into_iter().map(|r| (r.id.clone(), r)).collect();
                live.replicas_unsaved = false;
            }
            Err(e) => {
                tracing::debug!("controller pass skipped: cannot read replicas: {e}");
                return;
            }
        }
    }
    live.passes += 1;
    let number = live.passes;
    let outcome = reconcile(
        &mut live,
        Instant::now(),
        &shared.config,
        crate::clock::unix_secs(),
    );
    if let Err(e) = shared.store.change_replicas(&outcome.changes) {
        // Keep memory equal to what is stored; the next pass retries.
        tracing::error!("cannot record replica changes: {e}");
        match shared.store.replicas() {
            Ok(replicas) => {
                live.replicas = replicas.into_iter().map(|r| (r.id.clone(), r)).collect();
            }
            Err(e) => {
                tracing::error!("cannot reload replicas: {e}");
                live.replicas_unsaved = true;
            }
        }
    }
    for app in &outcome.apps {
        if let Err(e) = shared.store.update_app(&app.name, &mut |_| Ok(app.clone())) {
            // Memory runs ahead of the store until the next change of the
            // app is stored; a restart picks the rollout up where stored.
            tracing::error!(app = app.name, "cannot record the rollout's progress: {e}");
        }
    }
    drop(live);
    for (placed, unplaced, took) in &outcome.scheduling {
        shared.metrics.record_scheduling(*placed, *unplaced, *took);
    }
    if outcome.changed {
        shared.bump();
    }
    shared.passed.send_replace(number);
}

/// Retries reading the packages of apps whose package could not be read
/// (a volume not mounted yet, a transient I/O error), each no sooner than
/// its backoff allows, and without holding the state lock while blobs are
/// read and hashed.
fn read_missing_specs(shared: &Shared) {
    let due: BTreeSet<String> = {
        let live = shared.live();
        let now = Instant::now();
        live.apps
            .values()
            .flat_map(AppRecord::versions)
            .filter(|package| !live.specs.contains_key(*package))
            .filter(|package| {
                live.unreadable
                    .get(*package)
                    .is_none_or(|u| u.next_try <= now)
            })
            .cloned()
            .collect()
    };
    for package in due {
        let read = super::catalog::read(&shared.packages, &package);
        let mut live = shared.live();
        match read {
            Ok(spec) => {
                tracing::info!(package, "package readable again");
                live.unreadable.remove(&package);
                live.specs.insert(package, Arc::new(spec));
            }
            Err(e) => live.mark_unreadable(&package, e, Instant::now()),
        }
    }
}

/// What a pass did.
#[derive(Default)]
pub(super) struct Outcome {
    /// The replica records to store, in order.
    pub(super) changes: Vec<ReplicaChange>,
    /// Whether nodes must hear of a new desired state.
    pub(super) changed: bool,
    /// Apps whose rollout moved on, to store.
    pub(super) apps: Vec<AppRecord>,
    /// Each scheduler run: replicas placed, not placed, and its time.
    pub(super) scheduling: Vec<(u64, u64, Duration)>,
}

impl Outcome {
    fn put(&mut self, replica: &ReplicaRecord) {
        self.changes.push(ReplicaChange::Put(replica.clone()));
        self.changed = true;
    }

    fn remove(&mut self, id: &str) {
        self.changes.push(ReplicaChange::Remove(id.to_string()));
        self.changed = true;
    }
}

pub(super) fn reconcile(
    live: &mut Live,
    now: Instant,
    config: &ControlPlaneConfig,
    now_unix: u64,
) -> Outcome {
    let mut out = Outcome::default();
    mark_down(live, now, config, &mut out);
    out.apps = super::rollout::progress(live, crate::clock::unix_ms());
    out.changed |= !out.apps.is_empty();
    let specs = AppSpecs::of(live);
    release_lost(live, &specs, &mut out);
    autoscale(live, &specs, now);
    match_scale(live, now_unix, &mut out);
    move_unready(live, &specs, &mut out, now);
    place_pending(live, &specs, &mut out);
    move_off(live, &specs, &mut out);
    out
}

/// A replica that failed to start on its node.
#[derive(Debug, Default)]
pub(crate) struct Unready {
    /// The node it is not ready on now (failed, or still loading), and
    /// since when.
    failing: Option<(String, Instant)>,
    /// Every node it was not ready on for long enough to leave it.
    avoid: Vec<String>,
}

/// How long a replica may fail to start on its node (its load retried
/// with backoff there) before it is tried on another.
pub(crate) const MOVE_UNREADY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a replica may be loading on its node before it is tried on
/// another: generous for a large package on a slow link, and a bound on a
/// node that says it is loading forever.
pub(crate) const MOVE_LOADING_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// Moves each replica that has failed to start on its node for
/// [`MOVE_UNREADY_AFTER`] (or is still loading after
/// [`MOVE_LOADING_AFTER`]) to a node it has not failed on, once one can
/// take it: what fails on one node (its disk, its memory, a compromised
/// node that never starts it) is tried elsewhere, and a version that
/// fails everywhere stops moving once it has failed on every node that
/// fits.
fn move_unready(live: &mut Live, specs: &AppSpecs, out: &mut Outcome, now: Instant) {
    let mut due = Vec::new();
    {
        let (replicas, nodes, unready) = (&live.replicas, &live.nodes, &mut live.unready);
        unready.retain(|id, _| replicas.contains_key(id));
        for replica in replicas.values() {
            let Some(name) = replica.node.as_deref() else {
                continue;
            };
            // Failed, or loading (not serving) for long: how long it may be.
            let state = nodes
                .get(name)
                .filter(|node| !node.down && node.heard)
                .and_then(|node| node.component(&replica.app, &replica.component, &replica.package))
                .filter(|c| c.serving.is_none())
                .map(|c| c.state);
            let allowed = match state {
                Some(LoadState::Failed) => MOVE_UNREADY_AFTER,
                Some(LoadState::Loading) => MOVE_LOADING_AFTER,
                _ => {
                    if let Some(entry) = unready.get_mut(&replica.id) {
                        entry.failing = None;
                    }
                    continue;
                }
            };
            let entry = unready.entry(replica.id.clone()).or_default();
            let since = match &entry.failing {
                Some((node, since)) if node == name => *since,
                _ => {
                    entry.failing = Some((name.to_string(), now));
                    now
                }
            };
            if now.saturating_duration_since(since) >= allowed {
                if !entry.avoid.iter().any(|n| n == name) {
                    tracing::warn!(
                        replica = replica.id,
                        node = name,
                        "replica not ready on its node for {allowed:?}: trying another node"
                    );
                    entry.avoid.push(name.to_string());
                }
                due.push(replica.id.clone());
            }
        }
    }
    place(live, specs, out, due, true);
}

/// Each declared app's spec (none while its package cannot be read),
/// looked up once per pass instead of once per replica; and every
/// version's, for the replicas of a version being replaced.
struct AppSpecs(
    HashMap<String, Option<Arc<AppSpec>>>,
    HashMap<String, Arc<AppSpec>>,
);

impl AppSpecs {
    fn of(live: &Live) -> AppSpecs {
        AppSpecs(
            live.apps
                .iter()
                .map(|(name, app)| (name.clone(), live.specs.get(&app.package).cloned()))
                .collect(),
            live.specs.clone(),
        )
    }

    /// How `replica`'s version of its component is placed: its own
    /// version's plan (a replica of the old version reserves what that
    /// version needs), else the app's current one.
    fn plan_of(&self, replica: &ReplicaRecord) -> Option<&ComponentPlan> {
        self.1
            .get(&replica.package)
            .and_then(|spec| spec.components.get(&replica.component))
            .or_else(|| self.plan(&replica.app, &replica.component))
    }

    /// Whether `app` declares `component`; an app whose package cannot be
    /// read is taken to declare all it had.
    fn declares(&self, app: &str, component: &str) -> bool {
        self.0.get(app).is_some_and(|spec| {
            spec.as_ref()
                .is_none_or(|s| s.components.contains_key(component))
        })
    }

    fn plan(&self, app: &str, component: &str) -> Option<&ComponentPlan> {
        self.0.get(app)?.as_ref()?.components.get(component)
    }
}

impl Live {
    /// Whether a node not yet marked down should be (see [`mark_down`]).
    fn a_node_fell_silent(&self, now: Instant, config: &ControlPlaneConfig) -> bool {
        self.nodes
            .values()
            .any(|node| !node.down && is_silent(node, now, config))
    }
}

/// Whether `node` has been silent past `down_after`, or lost its held
/// heartbeat connection more than half of that ago.
fn is_silent(node: &super::LiveNode, now: Instant, config: &ControlPlaneConfig) -> bool {
    let silent = now.saturating_duration_since(node.last_seen);
    let lost = node
        .connection_lost
        .is_some_and(|at| now.saturating_duration_since(at) > config.down_after / 2);
    silent > config.down_after || lost
}

/// A node is down when silent past `down_after`, or sooner when its held
/// heartbeat connection broke and it did not reconnect within half of that
/// (a killed process closes its sockets; a live one reconnects at once).
fn mark_down(live: &mut Live, now: Instant, config: &ControlPlaneConfig, out: &mut Outcome) {
    let events = &mut live.events;
    for (name, node) in &mut live.nodes {
        let silent = now.saturating_duration_since(node.last_seen);
        if !node.down && is_silent(node, now, config) {
            node.down = true;
            node.forget_status();
            out.changed = true;
            tracing::warn!(
                node = name,
                "node is down: no heartbeat for {silent:.1?}; moving its replicas where others can take them"
            );
            events.record(
                EventKind::NodeDown,
                None,
                format!("node {name} is down: no heartbeat for {silent:.1?}"),
            );
        }
    }
}

/// Replicas on nodes that are gone (forgotten) become pending again;
/// replicas of deleted apps or components are removed. A down node keeps
/// its replicas until another node can take them (`move_off`), so a node
/// that comes back when nothing could move gets back what it ran.
fn release_lost(live: &mut Live, specs: &AppSpecs, out: &mut Outcome) {
    let mut removed = Vec::new();
    for replica in live.replicas.values_mut() {
        // An app whose package cannot be read right now keeps its replicas:
        // only a declaration that no longer names them removes them.
        if !specs.declares(&replica.app, &replica.component) {
            removed.push(replica.id.clone());
            continue;
        }
        let Some(node) = &replica.node else { continue };
        // A drained or down node keeps its replicas until they can move
        // (`move_off`); an unknown one loses them now.
        let keep = live.nodes.contains_key(node);
        if !keep {
            tracing::info!(replica = replica.id, node, "replica released from its node");
            replica.node = None;
            out.put(replica);
        }
    }
    for id in removed {
        live.replicas.remove(&id);
        live.pending.remove(&id);
        out.remove(&id);
    }
}

/// Requests held for a component at one node that count as its demand,
/// at most: a node holds no more than this many (see the node's
/// `hold` module), whatever it reports.
const MAX_HELD_COUNTED: u32 = 1_000;

/// Runs each autoscaled component's autoscaler on its demand now: what
/// the nodes up report in flight, queued and held, each node's figure
/// capped at what the replicas it holds can take (a node cannot drive a
/// component past what it could really be asked for), and records each
/// change of count with its reason.
fn autoscale(live: &mut Live, specs: &AppSpecs, now: Instant) {
    let mut on_node: HashMap<(&str, &str, &str), u32> = HashMap::new();
    let mut count: HashMap<(&str, &str), u32> = HashMap::new();
    let mut serving: std::collections::HashSet<(&str, &str)> = Default::default();
    for replica in live.replicas.values() {
        let workload = (replica.app.as_str(), replica.component.as_str());
        *count.entry(workload).or_default() += 1;
        if let Some(node) = replica.node.as_deref() {
            *on_node.entry((workload.0, workload.1, node)).or_default() += 1;
        }
        if endpoint_node(live, replica).is_some() {
            serving.insert(workload);
        }
    }
    let mut demand: HashMap<(&str, &str), f64> = HashMap::new();
    let mut held_at: HashMap<(String, String), (u32, String)> = HashMap::new();
    for (name, node) in live.nodes.iter().filter(|(_, n)| !n.down) {
        for ((app, component), load) in &node.load {
            let Some(plan) = specs.plan(app, component) else {
                continue;
            };
            let replicas = on_node
                .get(&(app.as_str(), component.as_str(), name.as_str()))
                .copied()
                .unwrap_or(0);
            let most = f64::from(replicas.saturating_mul(plan.replica_capacity));
            let concurrency = if load.concurrency.is_finite() {
                load.concurrency.clamp(0.0, most)
            } else {
                0.0
            };
            // Requests are held only for a component that may run no
            // replica and has none serving: a node's word of others held
            // is not demand, so a node can bring a component from zero
            // but not keep it up by claiming held requests once it runs.
            let scales_from_zero = live
                .apps
                .get(app)
                .is_some_and(|record| plan.scales_from_zero(record, component));
            let none_serving = !serving.contains(&(app.as_str(), component.as_str()));
            let held = if scales_from_zero && none_serving {
                load.held.min(MAX_HELD_COUNTED)
            } else {
                0
            };
            *demand.entry((app, component)).or_default() += concurrency + f64::from(held);
            if held > 0 {
                let top = held_at
                    .entry((app.clone(), component.clone()))
                    .or_insert((0, String::new()));
                if held > top.0 {
                    *top = (held, name.clone());
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut changes = Vec::new();
    for (app_name, app) in &live.apps {
        let Some(spec) = live.specs.get(&app.package) else {
            continue;
        };
        for (component, plan) in &spec.components {
            let replicas = plan.replicas_in(app, component);
            let Replicas::Auto { min, max } = replicas else {
                continue;
            };
            let policy = Policy {
                min,
                max,
                target: plan.target_concurrency,
                scale_down_delay: plan.scale_down_delay,
            };
            let key = (app_name.clone(), component.clone());
            let current = count
                .get(&(app_name.as_str(), component.as_str()))
                .copied()
                .unwrap_or(0);
            let demand = demand
                .get(&(app_name.as_str(), component.as_str()))
                .copied()
                .unwrap_or(0.0);
            let autoscaler = live
                .autoscalers
                .entry(key.clone())
                // A component new to the autoscaler (just deployed, or
                // the control plane just started) starts within its bounds.
                .or_insert_with(|| Autoscaler::new(current.clamp(min, max.max(min)), now));
            if let Some(change) = autoscaler.observe(&policy, demand, now) {
                changes.push((key.clone(), change));
            }
            seen.insert(key);
        }
    }
    live.autoscalers.retain(|key, _| seen.contains(key));
    live.held_at = held_at
        .into_iter()
        .map(|(key, (_, node))| (key, node))
        .collect();
    for ((app, component), change) in changes {
        tracing::info!(app, component, "{app}/{component} {change}");
        live.events.record(
            EventKind::Scaled,
            Some((&app, &component)),
            format!("{app}/{component} {change}"),
        );
    }
}

/// A new version of `app` (`record`, declared by `spec`) was deployed:
/// each component that may scale to zero starts one replica (Knative's
/// initial scale), so the new version is loaded, its load errors are
/// seen at deploy, and it scales to zero only after a whole
/// `scale_down_delay` without requests.
pub(super) fn start_new_version(live: &mut Live, record: &AppRecord, spec: &AppSpec, now: Instant) {
    for (component, plan) in &spec.components {
        if plan.scales_from_zero(record, component) {
            live.autoscalers
                .entry((record.name.clone(), component.clone()))
                .or_insert_with(|| Autoscaler::new(0, now))
                .start_with(1, now);
        }
    }
}

impl Live {
    /// The replicas a component should run now: its fixed count, or what
    /// its autoscaler decided.
    pub(super) fn desired_replicas(
        &self,
        app: &AppRecord,
        component: &str,
        plan: &ComponentPlan,
    ) -> u32 {
        match plan.replicas_in(app, component) {
            Replicas::Fixed(n) => n,
            Replicas::Auto { min, .. } => self
                .autoscalers
                .get(&(app.name.clone(), component.to_string()))
                .map_or(min, Autoscaler::desired),
        }
    }

    /// An autoscaled component's bounds, target and demand; none for a
    /// fixed one.
    pub(super) fn autoscale_view(
        &self,
        app: &AppRecord,
        component: &str,
        plan: &ComponentPlan,
    ) -> Option<crate::api::AutoscaleView> {
        let Replicas::Auto { min, max } = plan.replicas_in(app, component) else {
            return None;
        };
        Some(crate::api::AutoscaleView {
            min,
            max,
            target_concurrency: plan.target_concurrency,
            scale_down_delay_ms: plan.scale_down_delay.as_millis() as u64,
            concurrency: self
                .autoscalers
                .get(&(app.name.clone(), component.to_string()))
                .map_or(0.0, Autoscaler::demand),
        })
    }
}

/// Adds or removes replicas so each component has its declared count,
/// of its app's version; during a rollout, replaces the other versions'
/// replicas as [`super::rollout::targets`] allows: new ones first, an old
/// one removed only while enough replicas stay ready.
fn match_scale(live: &mut Live, now_unix: u64, out: &mut Outcome) {
    // Each component's replicas, found in one walk over all of them: ids
    // are `app/component/N`, so a component's replicas are adjacent.
    let mut existing: HashMap<(&str, &str), Vec<&ReplicaRecord>> = HashMap::new();
    for replica in live.replicas.values() {
        existing
            .entry((replica.app.as_str(), replica.component.as_str()))
            .or_default()
            .push(replica);
    }
    let mut add = Vec::new();
    let mut remove = Vec::new();
    let now_ms = crate::clock::unix_ms();
    for (name, app) in &live.apps {
        let Some(spec) = live.specs.get(&app.package) else {
            continue;
        };
        let proven = super::rollout::proven(live, app, now_ms);
        for (component, plan) in &spec.components {
            let desired = live.desired_replicas(app, component, plan);
            let current = existing
                .remove(&(name.as_str(), component.as_str()))
                .unwrap_or_default();
            let next_index = current
                .iter()
                .map(|r| index_of(&r.id) + 1)
                .max()
                .unwrap_or(0);
            let (new, old): (Vec<&ReplicaRecord>, Vec<&ReplicaRecord>) =
                current.into_iter().partition(|r| r.package == app.package);
            let ready = |r: &&&ReplicaRecord| endpoint_node(live, r).is_some();
            let (ready_old, unready_old): (Vec<&ReplicaRecord>, Vec<&ReplicaRecord>) =
                old.iter().partition(ready);
            let targets = match &app.rollout {
                Some(_) => super::rollout::targets(
                    app,
                    desired,
                    old.len() as u32,
                    plan.rollout.for_desired(desired),
                ),
                // No rollout: nothing else should run; what does goes.
                None => super::rollout::VersionTargets {
                    new: desired,
                    keep_old: None,
                    min_ready: 0,
                },
            };
            let mut next = next_index;
            let mut more = |package: &str, n: u32, add: &mut Vec<ReplicaRecord>| {
                for _ in 0..n {
                    add.push(ReplicaRecord {
                        id: format!("{name}/{component}/{next}"),
                        app: name.clone(),
                        component: component.clone(),
                        node: None,
                        created_unix: now_unix,
                        package: package.to_string(),
                    });
                    next += 1;
                }
            };
            let count = new.len() as u32;
            if count > targets.new {
                remove.extend(scale_down_order(&new, (count - targets.new) as usize));
            } else {
                more(&app.package, targets.new - count, &mut add);
            }
            match targets.keep_old {
                // A canary: the old versions stay as they are, scaled
                // with demand, until its last step.
                Some(keep) => {
                    let count = old.len() as u32;
                    if count > keep {
                        remove.extend(scale_down_order(&old, (count - keep) as usize));
                    } else if let Some(from) = app.rollout.as_ref().map(|r| &r.from)
                        && live.specs.contains_key(from)
                    {
                        more(from, keep - count, &mut add);
                    }
                }
                None => {
                    // Old replicas not serving count for nothing: they go.
                    remove.extend(unready_old.iter().map(|r| r.id.clone()));
                    // Until the new version has answered a request well,
                    // its ready replicas replace nothing.
                    let ready_new = if proven {
                        new.iter().filter(ready).count() as u32
                    } else {
                        0
                    };
                    let ready_now = ready_new + ready_old.len() as u32;
                    let spare = ready_now.saturating_sub(targets.min_ready) as usize;
                    remove.extend(scale_down_order(&ready_old, spare.min(ready_old.len())));
                }
            }
        }
    }
    for replica in add {
        out.put(&replica);
        live.replicas.insert(replica.id.clone(), replica);
    }
    for id in remove {
        live.replicas.remove(&id);
        live.pending.remove(&id);
        out.remove(&id);
    }
}

/// The `k` replicas of one component to remove, in order: pending ones
/// first (newest first), then each time the newest on the node holding
/// the most of them, so the ones left stay spread. A heap of nodes by
/// replicas held makes removing k of n cost O(n log n), not O(k n).
pub(super) fn scale_down_order(replicas: &[&ReplicaRecord], k: usize) -> Vec<String> {
    use std::collections::BinaryHeap;
    let mut pending: Vec<(u64, &str)> = Vec::new();
    let mut by_node: HashMap<&str, Vec<(u64, &str)>> = HashMap::new();
    for r in replicas {
        let entry = (index_of(&r.id), r.id.as_str());
        match r.node.as_deref() {
            None => pending.push(entry),
            Some(node) => by_node.entry(node).or_default().push(entry),
        }
    }
    pending.sort_unstable();
    let mut order: Vec<String> = pending
        .iter()
        .rev()
        .take(k)
        .map(|(_, id)| id.to_string())
        .collect();
    // Each node's replicas oldest first, so its newest is at the end; the
    // heap holds (replicas left, its newest index, node).
    let mut heap: BinaryHeap<(usize, u64, &str)> = BinaryHeap::new();
    for (node, held) in &mut by_node {
        held.sort_unstable();
        let newest = held.last().map_or(0, |(index, _)| *index);
        heap.push((held.len(), newest, node));
    }
    while order.len() < k {
        let Some((_, _, node)) = heap.pop() else {
            break;
        };
        let held = by_node
            .get_mut(node)
            .expect("a node in the heap has replicas");
        let (_, id) = held.pop().expect("a node in the heap has replicas");
        order.push(id.to_string());
        if let Some((newest, _)) = held.last() {
            heap.push((held.len(), *newest, node));
        }
    }
    order
}

fn index_of(id: &str) -> u64 {
    id.rsplit('/')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Places every pending replica the scheduler can fit.
fn place_pending(live: &mut Live, specs: &AppSpecs, out: &mut Outcome) {
    let (replicas, nodes) = (&live.replicas, &live.nodes);
    let unready = &live.unready;
    live.pending.retain(|id, _| {
        replicas.get(id).is_some_and(|r| match &r.node {
            None => true,
            Some(node) => {
                nodes.get(node).is_some_and(|n| n.record.drained || n.down)
                    || unready
                        .get(id)
                        .and_then(|u| u.failing.as_ref())
                        .is_some_and(|(failing, _)| failing == node)
            }
        })
    });
    let pending = replicas_where(live, |_, r| r.node.is_none());
    place(live, specs, out, pending, false);
}

/// Moves replicas off drained and down nodes, each only once another node
/// can take it: a drain never leaves a replica with nowhere to run, and a
/// down node whose replicas have nowhere to go gets them back when it
/// returns.
fn move_off(live: &mut Live, specs: &AppSpecs, out: &mut Outcome) {
    let leaving = replicas_where(live, |live, r| {
        r.node
            .as_deref()
            .and_then(|n| live.nodes.get(n))
            .is_some_and(|n| n.record.drained || n.down)
    });
    place(live, specs, out, leaving, true);
}

fn replicas_where(live: &Live, wanted: impl Fn(&Live, &ReplicaRecord) -> bool) -> Vec<String> {
    live.replicas
        .values()
        .filter(|r| wanted(live, r))
        .map(|r| r.id.clone())
        .collect()
}

/// The cluster as the scheduler sees it, with every placed replica but
/// those in `placing`; and the nodes' names, by snapshot index.
fn snapshot(
    live: &Live,
    specs: &AppSpecs,
    placing: &BTreeSet<&str>,
) -> (Vec<String>, ClusterSnapshot) {
    let names: Vec<String> = live.nodes.keys().cloned().collect();
    let index: BTreeMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let snapshot = ClusterSnapshot {
        nodes: live
            .nodes
            .values()
            .map(|n| NodeInfo {
                name: n.record.name.clone(),
                labels: n.record.labels.clone(),
                memory: live.overcommit.placeable(n.memory()),
                ready: !n.down && n.heard,
                cordoned: n.record.cordoned || n.record.drained,
                pressure: n.pressure,
            })
            .collect(),
        running: live
            .replicas
            .values()
            .filter(|r| !placing.contains(r.id.as_str()))
            .filter_map(|r| {
                let node = index.get(r.node.as_deref()?)?;
                let plan = specs.plan_of(r)?;
                Some((*node, plan.request.component.clone(), plan.request.memory))
            })
            .collect(),
    };
    (names, snapshot)
}

/// Warnings for autoscaled components of `app` whose `max` replicas the
/// cluster cannot hold now: the scheduler tries to place the replicas
/// still to come on what is left, and each component that would have
/// some pending says how many fit and why the rest would not.
pub(super) fn headroom_warnings(live: &Live, app: &str) -> Vec<String> {
    let Some(record) = live.apps.get(app) else {
        return Vec::new();
    };
    let Some(spec) = live.specs.get(&record.package) else {
        return Vec::new();
    };
    // A snapshot of every node costs the cluster's size: only for an app
    // with an autoscaled component.
    let autoscaled = spec.components.iter().any(|(component, plan)| {
        matches!(plan.replicas_in(record, component), Replicas::Auto { .. })
    });
    if !autoscaled {
        return Vec::new();
    }
    let specs = AppSpecs::of(live);
    let (_, snapshot) = snapshot(live, &specs, &BTreeSet::new());
    let mut warnings = Vec::new();
    for (component, plan) in &spec.components {
        let Replicas::Auto { max, .. } = plan.replicas_in(record, component) else {
            continue;
        };
        let placed = live
            .replicas
            .values()
            .filter(|r| r.app == app && &r.component == component && r.node.is_some())
            .count() as u32;
        let more = max.saturating_sub(placed);
        let requests = vec![plan.request.clone(); more as usize];
        let decisions = Scheduler::new().plan(&snapshot, &requests).decisions;
        let fit = decisions
            .iter()
            .take_while(|d| matches!(d, Decision::Placed(_)))
            .count() as u32;
        if let Some(Decision::Unschedulable(why)) = decisions.get(fit as usize) {
            warnings.push(format!(
                "{app}/{component} may scale to {max} replicas, but the cluster can hold only {} now: {why}",
                placed + fit
            ));
        }
    }
    warnings
}

/// Runs the scheduler for replicas `ids` (pending, or `moving` off a
/// drained node) against every other replica's placement, and records
/// where each goes or why it cannot.
fn place(live: &mut Live, specs: &AppSpecs, out: &mut Outcome, ids: Vec<String>, moving: bool) {
    let (ids, requests): (Vec<String>, Vec<ReplicaRequest>) = ids
        .into_iter()
        .filter_map(|id| {
            let r = &live.replicas[&id];
            let plan = specs.plan_of(r)?;
            let mut request = plan.request.clone();
            request.prefer = live
                .held_at
                .get(&(r.app.clone(), r.component.clone()))
                .cloned();
            request.avoid = live
                .unready
                .get(&id)
                .map(|u| u.avoid.clone())
                .unwrap_or_default();
            Some((id, request))
        })
        .unzip();
    if ids.is_empty() {
        return;
    }
    let placing: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let (names, snapshot) = snapshot(live, specs, &placing);
    let started = Instant::now();
    let plan = Scheduler::new().plan(&snapshot, &requests);
    let took = started.elapsed();
    let placed = plan
        .decisions
        .iter()
        .filter(|d| matches!(d, Decision::Placed(_)))
        .count() as u64;
    out.scheduling
        .push((placed, plan.decisions.len() as u64 - placed, took));
    let mut decided = PassEvents::default();
    for ((id, request), decision) in ids.iter().zip(&requests).zip(plan.decisions) {
        match decision {
            Decision::Placed(placement) => {
                let node = placement.node;
                let replica = live.replicas.get_mut(id).expect("the replica exists");
                let from = replica.node.replace(names[node].clone());
                let workload = (replica.app.clone(), replica.component.clone());
                out.put(replica);
                match from {
                    Some(from) => {
                        tracing::info!(
                            replica = id,
                            from,
                            to = names[node],
                            "replica moved off a draining, down or failing node"
                        );
                        decided.add(
                            EventKind::Moved,
                            workload,
                            id,
                            format!("from {from} to {}", names[node]),
                        );
                    }
                    None => {
                        tracing::info!(
                            replica = id,
                            node = names[node],
                            scores = %placement,
                            "replica placed"
                        );
                        decided.add(
                            EventKind::Placed,
                            workload,
                            id,
                            format!("on {} ({placement})", names[node]),
                        );
                    }
                }
                live.pending.remove(id);
            }
            Decision::Unschedulable(why) => {
                let mut reason = why.to_string();
                if why.refusals.contains_key(&Refusal::LabelsDoNotMatch) {
                    let labels: Vec<String> = request
                        .required_labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    reason.push_str(&format!("; labels needed: {}", labels.join(", ")));
                }
                if why.refusals.contains_key(&Refusal::InsufficientMemory) {
                    reason.push_str(&format!(
                        "; a replica of {} reserves {}: set [component.{}.placement] memory to reserve less, add nodes, or let nodes overcommit with `skiff server --overcommit`",
                        request.component,
                        bytesize::ByteSize::b(request.memory).display().iec(),
                        request.component.rsplit('/').next().unwrap_or_default()
                    ));
                }
                if moving {
                    let node = live.replicas[id]
                        .node
                        .as_deref()
                        .and_then(|n| live.nodes.get(n));
                    let why = if node.is_some_and(|n| n.down) {
                        "its node is down and no other node can take it, so it stays there until the node returns or room appears"
                    } else if node.is_some_and(|n| n.record.drained) {
                        "cannot leave its draining node"
                    } else {
                        "it fails to start on its node and no other node can take it, so its load is retried there"
                    };
                    reason = format!("{why}: {reason}");
                }
                if live.pending.get(id) != Some(&reason) {
                    tracing::warn!(replica = id, "cannot place replica: {reason}");
                    let r = &live.replicas[id];
                    let workload = (r.app.clone(), r.component.clone());
                    decided.add(
                        EventKind::Unschedulable,
                        workload,
                        id,
                        format!("cannot be placed: {reason}"),
                    );
                    live.pending.insert(id.clone(), reason);
                    out.changed = true;
                }
            }
        }
    }
    decided.record(&mut live.events);
}

/// `(kind, (app, component), the outcome the group shares, if any)`.
type EventGroup = (EventKind, (String, String), String);

/// A pass's placement events, one per component, kind and outcome, so a
/// component scaled up by hundreds of replicas is one event, not hundreds
/// pushing every other app's out of the log.
#[derive(Default)]
struct PassEvents {
    /// Each group's replicas and their outcomes, in order.
    groups: BTreeMap<EventGroup, Vec<(String, String)>>,
}

impl PassEvents {
    fn add(&mut self, kind: EventKind, workload: (String, String), id: &str, outcome: String) {
        // Placements and moves group by component; refusals by reason too.
        let shared = match kind {
            EventKind::Unschedulable => outcome.clone(),
            _ => String::new(),
        };
        self.groups
            .entry((kind, workload, shared))
            .or_default()
            .push((id.to_string(), outcome));
    }

    fn record(self, events: &mut super::events::EventLog) {
        /// Replicas named in one event; the rest are counted.
        const NAMED: usize = 5;
        for ((kind, (app, component), shared), replicas) in self.groups {
            let message = match replicas.as_slice() {
                [(id, outcome)] => format!("{id} {outcome}"),
                many => {
                    let named: Vec<String> = many
                        .iter()
                        .take(NAMED)
                        .map(|(id, outcome)| {
                            if shared.is_empty() {
                                format!("{id} {outcome}")
                            } else {
                                id.clone()
                            }
                        })
                        .collect();
                    let more = many.len().saturating_sub(NAMED);
                    let more = if more > 0 {
                        format!("; and {more} more")
                    } else {
                        String::new()
                    };
                    let verb = match kind {
                        EventKind::Moved => "moved",
                        EventKind::Unschedulable => "cannot be placed",
                        _ => "placed",
                    };
                    if shared.is_empty() {
                        format!(
                            "{} replicas of {app}/{component} {verb}: {}{more}",
                            many.len(),
                            named.join("; ")
                        )
                    } else {
                        format!(
                            "{} replicas ({}{more}) {shared}",
                            many.len(),
                            named.join(", ")
                        )
                    }
                }
            };
            events.record(kind, Some((&app, &component)), message);
        }
    }
}

/// The replica's node, when that node is up and serves the replica's
/// version (loaded and ready).
pub(super) fn endpoint_node<'a>(
    live: &'a Live,
    replica: &ReplicaRecord,
) -> Option<&'a super::LiveNode> {
    let node = live.nodes.get(replica.node.as_deref()?)?;
    // Until a node is heard from after a control-plane restart, trust the
    // stored assignment: it was serving before, and probably still is.
    let serving = !node.down
        && (!node.heard
            || node
                .component(&replica.app, &replica.component, &replica.package)
                .is_some_and(|c| c.serving.is_some()));
    serving.then_some(node)
}

/// Whether the replica runs its version on a live node.
pub(super) fn replica_running(live: &Live, replica: &ReplicaRecord) -> bool {
    replica
        .node
        .as_deref()
        .and_then(|name| live.nodes.get(name))
        .is_some_and(|node| {
            !node.down
                && node
                    .component(&replica.app, &replica.component, &replica.package)
                    .is_some_and(|c| c.state == LoadState::Running)
        })
}
