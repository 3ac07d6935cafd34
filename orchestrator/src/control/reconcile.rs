//! The controller: one pass marks silent nodes down, takes replicas off
//! down and drained nodes, matches each component's replica count to its
//! declared scale, and places pending replicas with the scheduler. A pass
//! runs when something changed and a few times per heartbeat regardless.

use super::{ControlPlaneConfig, Live, Shared};
use crate::api::{AppRouting, Assignment, DesiredState, Endpoint, LoadState};
use crate::scheduler::{ClusterSnapshot, Decision, NodeInfo, ReplicaRequest, Scheduler};
use crate::state::{ReplicaChange, ReplicaRecord};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

/// Runs controller passes until aborted.
pub(super) async fn run(shared: Arc<Shared>) {
    let tick = shared.config.heartbeat / 4;
    loop {
        tokio::select! {
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(tick) => {}
        }
        pass(&shared);
    }
}

/// One controller pass, persisted in one transaction.
pub(super) fn pass(shared: &Shared) {
    read_missing_specs(shared);
    let mut live = shared.live.lock().expect("live state lock");
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
            Err(e) => tracing::error!("cannot reload replicas: {e}"),
        }
    }
    drop(live);
    if outcome.changed {
        shared.bump();
    }
}

/// Retries reading the packages of apps whose package could not be read
/// (a volume not mounted yet, a transient I/O error), each no sooner than
/// its backoff allows, and without holding the state lock while blobs are
/// read and hashed.
fn read_missing_specs(shared: &Shared) {
    let due: BTreeSet<String> = {
        let live = shared.live.lock().expect("live state lock");
        let now = Instant::now();
        live.apps
            .values()
            .map(|app| &app.package)
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
        let mut live = shared.live.lock().expect("live state lock");
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
    release_lost(live, &mut out);
    match_scale(live, now_unix, &mut out);
    place_pending(live, &mut out);
    move_off_drained(live, &mut out);
    out
}

/// A node is down when silent past `down_after`, or sooner when its held
/// heartbeat connection broke and it did not reconnect within half of that
/// (a killed process closes its sockets; a live one reconnects at once).
fn mark_down(live: &mut Live, now: Instant, config: &ControlPlaneConfig, out: &mut Outcome) {
    for (name, node) in &mut live.nodes {
        let silent = now.saturating_duration_since(node.last_seen);
        let lost = node
            .connection_lost
            .is_some_and(|at| now.saturating_duration_since(at) > config.down_after / 2);
        if !node.down && (silent > config.down_after || lost) {
            node.down = true;
            node.components.clear();
            out.changed = true;
            tracing::warn!(
                node = name,
                "node is down: no heartbeat for {silent:.1?}; moving its replicas"
            );
        }
    }
}

/// Replicas on nodes that are down or gone become pending again; replicas
/// of deleted apps or components are removed.
fn release_lost(live: &mut Live, out: &mut Outcome) {
    let mut removed = Vec::new();
    for replica in live.replicas.values_mut() {
        // An app whose package cannot be read right now keeps its replicas:
        // only a declaration that no longer names them removes them.
        let declared = live.apps.get(&replica.app).is_some_and(|app| {
            live.specs
                .get(&app.package)
                .is_none_or(|spec| spec.components.contains_key(&replica.component))
        });
        if !declared {
            removed.push(replica.id.clone());
            continue;
        }
        let Some(node) = &replica.node else { continue };
        // A drained node keeps its replicas until they can move
        // (`move_off_drained`); a down or unknown one loses them now.
        let keep = live.nodes.get(node).is_some_and(|n| !n.down);
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

/// Adds or removes replicas so each component has its declared count.
fn match_scale(live: &mut Live, now_unix: u64, out: &mut Outcome) {
    let mut wanted: Vec<(String, String, u32)> = Vec::new();
    for (name, app) in &live.apps {
        let Some(spec) = live.specs.get(&app.package) else {
            continue;
        };
        for (component, plan) in &spec.components {
            let desired = app.scale.get(component).copied().unwrap_or(plan.replicas);
            wanted.push((name.clone(), component.clone(), desired));
        }
    }
    for (app, component, desired) in wanted {
        let mut removed = Vec::new();
        let prefix = format!("{app}/{component}/");
        let mut current: Vec<&ReplicaRecord> = live
            .replicas
            .range(prefix.clone()..)
            .take_while(|(id, _)| id.starts_with(&prefix))
            .map(|(_, r)| r)
            .collect();
        let count = current.len() as u32;
        if count > desired {
            // One at a time: a pending one first, then one from the node
            // with the most replicas of this component, then the newest.
            for _ in desired..count {
                let per_node =
                    |node: &Option<String>| current.iter().filter(|r| &r.node == node).count();
                let victim = current
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, r)| (r.node.is_none(), per_node(&r.node), index_of(&r.id)))
                    .map(|(i, r)| (i, r.id.clone()));
                let Some((i, id)) = victim else { break };
                current.remove(i);
                removed.push(id);
            }
        } else if count < desired {
            let first = current
                .iter()
                .map(|r| index_of(&r.id) + 1)
                .max()
                .unwrap_or(0);
            for next in first..first + u64::from(desired - count) {
                let replica = ReplicaRecord {
                    id: format!("{prefix}{next}"),
                    app: app.clone(),
                    component: component.clone(),
                    node: None,
                    created_unix: now_unix,
                };
                out.put(&replica);
                live.replicas.insert(replica.id.clone(), replica);
            }
        }
        for id in removed {
            live.replicas.remove(&id);
            live.pending.remove(&id);
            out.remove(&id);
        }
    }
}

fn index_of(id: &str) -> u64 {
    id.rsplit('/')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Places every pending replica the scheduler can fit.
fn place_pending(live: &mut Live, out: &mut Outcome) {
    let (replicas, nodes) = (&live.replicas, &live.nodes);
    live.pending.retain(|id, _| {
        replicas.get(id).is_some_and(|r| match &r.node {
            None => true,
            Some(node) => nodes.get(node).is_some_and(|n| n.record.drained),
        })
    });
    let pending = replicas_where(live, |_, r| r.node.is_none());
    place(live, out, pending, false);
}

/// Moves replicas off drained nodes, each only once another node can take
/// it: a drain never leaves a replica with nowhere to run.
fn move_off_drained(live: &mut Live, out: &mut Outcome) {
    let draining = replicas_where(live, |live, r| {
        r.node
            .as_deref()
            .and_then(|n| live.nodes.get(n))
            .is_some_and(|n| n.record.drained && !n.down)
    });
    place(live, out, draining, true);
}

fn replicas_where(live: &Live, wanted: impl Fn(&Live, &ReplicaRecord) -> bool) -> Vec<String> {
    live.replicas
        .values()
        .filter(|r| wanted(live, r))
        .map(|r| r.id.clone())
        .collect()
}

/// Runs the scheduler for replicas `ids` (pending, or `moving` off a
/// drained node) against every other replica's placement, and records
/// where each goes or why it cannot.
fn place(live: &mut Live, out: &mut Outcome, ids: Vec<String>, moving: bool) {
    let (ids, requests): (Vec<String>, Vec<ReplicaRequest>) = ids
        .into_iter()
        .filter_map(|id| {
            let r = &live.replicas[&id];
            let plan = component_plan(live, &r.app, &r.component)?;
            Some((id, plan.request.clone()))
        })
        .unzip();
    if ids.is_empty() {
        return;
    }
    let names: Vec<String> = live.nodes.keys().cloned().collect();
    let index: BTreeMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let placing: std::collections::BTreeSet<&String> = ids.iter().collect();
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
            .filter(|r| !placing.contains(&r.id))
            .filter_map(|r| {
                let node = index.get(r.node.as_deref()?)?;
                let plan = component_plan(live, &r.app, &r.component)?;
                Some((*node, plan.request.component.clone(), plan.request.memory))
            })
            .collect(),
    };
    let plan = Scheduler::new().plan(&snapshot, &requests);
    for ((id, request), decision) in ids.iter().zip(&requests).zip(plan.decisions) {
        match decision {
            Decision::Placed(node) => {
                let replica = live.replicas.get_mut(id).expect("the replica exists");
                let from = replica.node.replace(names[node].clone());
                match from {
                    Some(from) => tracing::info!(
                        replica = id,
                        from,
                        to = names[node],
                        "replica moved off a draining node"
                    ),
                    None => tracing::info!(replica = id, node = names[node], "replica placed"),
                }
                out.put(replica);
                live.pending.remove(id);
            }
            Decision::Unschedulable(why) => {
                let mut reason = why.to_string();
                if why.refusals.contains_key("labels do not match") {
                    let labels: Vec<String> = request
                        .required_labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    reason.push_str(&format!(" (it needs {})", labels.join(", ")));
                }
                if why.refusals.contains_key("insufficient memory") {
                    reason.push_str(&format!(
                        " (a replica of {} reserves {}; set [component.{}.placement] memory to reserve less, add nodes, or let nodes overcommit with `skiff server --overcommit`)",
                        request.component,
                        bytesize::ByteSize::b(request.memory).display().iec(),
                        request.component.rsplit('/').next().unwrap_or_default()
                    ));
                }
                if moving {
                    reason = format!("cannot leave its draining node: {reason}");
                }
                if live.pending.get(id) != Some(&reason) {
                    tracing::warn!(replica = id, "cannot place replica: {reason}");
                    live.pending.insert(id.clone(), reason);
                    out.changed = true;
                }
            }
        }
    }
}

fn component_plan<'a>(
    live: &'a Live,
    app: &str,
    component: &str,
) -> Option<&'a super::catalog::ComponentPlan> {
    live.spec(app)?.components.get(component)
}

/// What node `name` should run, and where every app's running replicas are.
pub(super) fn desired_for(live: &Live, name: &str) -> DesiredState {
    let mut assignments: BTreeMap<(String, String), u32> = BTreeMap::new();
    for replica in live.replicas.values() {
        if replica.node.as_deref() == Some(name) {
            *assignments
                .entry((replica.app.clone(), replica.component.clone()))
                .or_default() += 1;
        }
    }
    let assignments = assignments
        .into_iter()
        .filter_map(|((app, component), replicas)| {
            let package = live.apps.get(&app)?.package.clone();
            Some(Assignment {
                app,
                component,
                package,
                replicas,
            })
        })
        .collect();
    let replicas_of = live.replicas_by(|r| Some(&r.app));
    let apps = live
        .apps
        .keys()
        .filter_map(|app| {
            let spec = live.spec(app)?;
            let routes = spec
                .components
                .iter()
                .filter_map(|(c, plan)| Some((plan.route.clone()?, c.clone())))
                .collect();
            let mut endpoints: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
            for replica in replicas_of.get(app.as_str()).into_iter().flatten() {
                if let Some(node) = endpoint_node(live, replica) {
                    endpoints
                        .entry(replica.component.clone())
                        .or_default()
                        .push(Endpoint {
                            node: node.record.name.clone(),
                            mesh: node.record.mesh.clone(),
                        });
                }
            }
            Some(AppRouting {
                name: app.clone(),
                routes,
                endpoints,
            })
        })
        .collect();
    let members = live
        .nodes
        .values()
        .map(|n| (n.record.name.clone(), n.record.incarnation.clone()))
        .collect();
    DesiredState {
        assignments,
        apps,
        members,
    }
}

/// The replica's node, when that node is up and serves its component
/// (any version: during a rollout the old one serves until the new loads).
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
                .component(&replica.app, &replica.component)
                .is_some_and(|c| c.serving.is_some()));
    serving.then_some(node)
}

/// Whether the replica runs the app's current package on a live node.
pub(super) fn replica_running(live: &Live, replica: &ReplicaRecord) -> bool {
    let Some(package) = live.apps.get(&replica.app).map(|a| &a.package) else {
        return false;
    };
    replica
        .node
        .as_deref()
        .and_then(|name| live.nodes.get(name))
        .is_some_and(|node| {
            !node.down
                && node
                    .component(&replica.app, &replica.component)
                    .is_some_and(|c| c.state == LoadState::Running && &c.package == package)
        })
}
