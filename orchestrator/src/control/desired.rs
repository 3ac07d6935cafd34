//! What each node should run and route, and what of it changed since a
//! version: the desired state is computed once per version for all nodes,
//! each part stamped with the version it last changed at, so a node that
//! applied version V is sent only the parts stamped after V.
//!
//! A node of 10,000 apps then hears of one new app as one app's routing
//! and one assignment, not the whole cluster's state again.

use super::Live;
use super::reconcile::endpoint_node;
use crate::api::{AppRouting, Assignment, DesiredChange, Endpoint};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Removals remembered per part before the oldest are forgotten; a node
/// whose version is older than a forgotten removal gets the whole state.
const MAX_TOMBSTONES: usize = 20_000;

/// `(app, component, package)`: one version of a component.
type ComponentKey = (String, String, String);

/// Per node, the versions of components placed on it.
type Assignments = BTreeMap<String, BTreeMap<ComponentKey, Assignment>>;

/// The desired state of every node at one version, with when each part
/// last changed.
pub(super) struct DesiredLog {
    /// This run's number: versions of another run are not comparable.
    epoch: u64,
    /// The version the parts were last computed at; 0 before the first.
    computed_at: u64,
    /// Versions at or below this may miss a removal that was forgotten.
    horizon: u64,
    apps: Stamped<String, AppRouting>,
    /// Per node, what it runs.
    assignments: BTreeMap<String, Stamped<ComponentKey, Assignment>>,
    members: (BTreeMap<String, String>, u64),
    /// When the last computation ended, and how long it took.
    last: Option<(Instant, Duration)>,
}

/// After a computation that took `d`, the next waits until `REST_FACTOR`
/// x `d` has passed: with many apps and fast-moving versions, computing
/// desired states takes at most a third of a core and holds the state
/// lock no more, leaving the rest to the API, heartbeats and controller.
const REST_FACTOR: u32 = 2;

impl DesiredLog {
    /// An empty log for a run numbered `epoch`.
    pub(super) fn new(epoch: u64) -> DesiredLog {
        DesiredLog {
            epoch,
            computed_at: 0,
            horizon: 0,
            apps: Stamped::default(),
            assignments: BTreeMap::new(),
            members: (BTreeMap::new(), 0),
            last: None,
        }
    }

    /// How long to wait before computing version `version` (nothing when
    /// it is computed already, or the last computation was long enough
    /// ago).
    pub(super) fn rest_before(&self, version: u64) -> Duration {
        match self.last {
            Some((ended, took)) if self.computed_at != version => {
                (took * REST_FACTOR).saturating_sub(ended.elapsed())
            }
            _ => Duration::ZERO,
        }
    }

    /// This run's number.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Recomputes every part from `live` at `version`, once per version,
    /// stamping what differs from the last computation; returns the
    /// version the parts are at. Call it with `live` locked and `version`
    /// read under that lock, so versions only grow and a change is never
    /// stamped with a version from before it.
    pub(super) fn refresh(&mut self, live: &Live, version: u64) -> u64 {
        if version <= self.computed_at {
            return self.computed_at;
        }
        let started = Instant::now();
        let (apps, mut assignments) = routing_and_assignments(live);
        let mut horizon = self.apps.update(apps, version);
        // Nodes gone from the cluster are never asked for again.
        self.assignments
            .retain(|node, _| assignments.contains_key(node));
        for (node, now) in &mut assignments {
            let log = self.assignments.entry(node.clone()).or_default();
            horizon = horizon.max(log.update(std::mem::take(now), version));
        }
        let members = members(live);
        if members != self.members.0 {
            self.members = (members, version);
        }
        self.horizon = self.horizon.max(horizon);
        self.computed_at = version;
        self.last = Some((Instant::now(), started.elapsed()));
        version
    }

    /// What node `name` must change to be at the computed version, having
    /// applied `since` (a version of `epoch`): everything when that
    /// version cannot be brought up to date by a change.
    /// The `(app, component)`s assigned to node `name`, as last computed.
    pub(super) fn assigned_to(&self, name: &str) -> std::collections::HashSet<(String, String)> {
        self.assignments
            .get(name)
            .map_or_else(Default::default, |stamped| {
                stamped
                    .values
                    .keys()
                    .map(|(app, component, _)| (app.clone(), component.clone()))
                    .collect()
            })
    }

    pub(super) fn change_for(&self, name: &str, epoch: u64, since: u64) -> DesiredChange {
        let none = Stamped::default();
        let assigned = self.assignments.get(name).unwrap_or(&none);
        let full = epoch != self.epoch || since <= self.horizon || since > self.computed_at;
        let after = if full { 0 } else { since };
        DesiredChange {
            full,
            assignments: assigned.changed_after(after).cloned().collect(),
            unassigned: assigned.removed_after(after).cloned().collect(),
            apps: self.apps.changed_after(after).cloned().collect(),
            removed_apps: self.apps.removed_after(after).cloned().collect(),
            members: (full || self.members.1 > since).then(|| self.members.0.clone()),
        }
    }
}

/// Values by key, each with the version it last changed at, and the keys
/// removed with the version they went at.
struct Stamped<K, V> {
    values: BTreeMap<K, (V, u64)>,
    removed: BTreeMap<K, u64>,
}

impl<K, V> Default for Stamped<K, V> {
    fn default() -> Self {
        Stamped {
            values: BTreeMap::new(),
            removed: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone, V: PartialEq> Stamped<K, V> {
    /// Takes `now` as the values at `version`; returns the newest version
    /// whose removals were forgotten (0 when none were).
    fn update(&mut self, mut now: BTreeMap<K, V>, version: u64) -> u64 {
        let removed: Vec<K> = self
            .values
            .keys()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        for key in removed {
            self.values.remove(&key);
            self.removed.insert(key, version);
        }
        for (key, value) in std::mem::take(&mut now) {
            match self.values.get_mut(&key) {
                Some((old, _)) if *old == value => {}
                Some(entry) => *entry = (value, version),
                None => {
                    self.removed.remove(&key);
                    self.values.insert(key, (value, version));
                }
            }
        }
        self.forget_oldest_removals()
    }

    /// Keeps at most [`MAX_TOMBSTONES`] removals, forgetting the oldest
    /// half when there are more; returns the newest version forgotten.
    fn forget_oldest_removals(&mut self) -> u64 {
        if self.removed.len() <= MAX_TOMBSTONES {
            return 0;
        }
        let mut stamps: Vec<u64> = self.removed.values().copied().collect();
        stamps.sort_unstable();
        let cut = stamps[stamps.len() / 2];
        self.removed.retain(|_, at| *at > cut);
        cut
    }

    fn changed_after(&self, version: u64) -> impl Iterator<Item = &V> {
        self.values
            .values()
            .filter(move |(_, at)| *at > version)
            .map(|(value, _)| value)
    }

    fn removed_after(&self, version: u64) -> impl Iterator<Item = &K> {
        self.removed
            .iter()
            .filter(move |(_, at)| **at > version)
            .map(|(key, _)| key)
    }
}

/// What node `name` should run, and where every app's running replicas are.
#[cfg(test)]
pub(super) fn desired_for(live: &Live, name: &str) -> crate::api::DesiredState {
    let (apps, mut assignments) = routing_and_assignments(live);
    crate::api::DesiredState {
        assignments: assignments
            .remove(name)
            .unwrap_or_default()
            .into_values()
            .collect(),
        apps: apps.into_values().collect(),
        members: members(live),
    }
}

/// Every app's routes and the nodes serving each of its components, and
/// per node the components placed on it with their replica count: one
/// walk over the apps and their replicas.
fn routing_and_assignments(live: &Live) -> (BTreeMap<String, AppRouting>, Assignments) {
    let replicas_of = live.replicas_by(|r| Some(&r.app));
    let mut per_node: Assignments = live
        .nodes
        .keys()
        .map(|n| (n.clone(), BTreeMap::new()))
        .collect();
    let mut apps = BTreeMap::new();
    for (app, record) in &live.apps {
        let replicas = replicas_of.get(app.as_str()).map_or(&[][..], Vec::as_slice);
        for replica in replicas {
            let Some(node) = replica.node.as_ref().and_then(|n| per_node.get_mut(n)) else {
                continue;
            };
            node.entry((
                app.clone(),
                replica.component.clone(),
                replica.package.clone(),
            ))
            .or_insert_with(|| Assignment {
                app: app.clone(),
                component: replica.component.clone(),
                package: replica.package.clone(),
                replicas: 0,
            })
            .replicas += 1;
        }
        let Some(spec) = live.specs.get(&record.package) else {
            continue;
        };
        let routes = spec
            .components
            .iter()
            .filter_map(|(c, plan)| Some((plan.route.clone()?, c.clone())))
            .collect();
        let mut endpoints: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
        for replica in replicas {
            if let Some(node) = endpoint_node(live, replica) {
                endpoints
                    .entry(replica.component.clone())
                    .or_default()
                    .push(Endpoint {
                        node: node.record.name.clone(),
                        mesh: node.record.mesh.clone(),
                        package: replica.package.clone(),
                    });
            }
        }
        let split = if record.rollout.is_some() {
            endpoints
                .iter()
                .filter_map(|(component, endpoints)| {
                    let versions = endpoints.iter().map(|e| e.package.as_str());
                    Some((component.clone(), super::rollout::split(record, versions)?))
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let routing = AppRouting {
            name: app.clone(),
            routes,
            components: spec.components.keys().cloned().collect(),
            endpoints,
            split,
            callers: Some(
                spec.components
                    .iter()
                    .filter(|(_, plan)| !plan.allow_callers.is_empty())
                    .map(|(c, plan)| (c.clone(), plan.allow_callers.clone()))
                    .collect(),
            ),
            scale_from_zero: spec
                .components
                .iter()
                .filter(|(c, plan)| plan.scales_from_zero(record, c))
                .map(|(c, _)| c.clone())
                .collect(),
            timeouts_ms: spec
                .components
                .iter()
                .map(|(c, plan)| (c.clone(), plan.timeout.as_millis() as u64))
                .collect(),
            request_timeouts_ms: request_timeouts(live, record, spec),
        };
        apps.insert(app.clone(), routing);
    }
    (apps, per_node)
}

/// Per component of `record` (declared by `spec`) with a
/// `request_timeout`, that timeout in milliseconds. While a rollout
/// moves the app, a component gets the looser of its two versions'
/// (none when either has none): a new, tighter timeout applies once every
/// replica runs the new version, while its errors are still watched, so
/// a timeout that fails requests rolls its version back rather than
/// failing the old version's requests too.
fn request_timeouts(
    live: &Live,
    record: &crate::state::AppRecord,
    spec: &super::catalog::AppSpec,
) -> BTreeMap<String, u64> {
    use crate::state::RolloutStrategy;
    let before = record
        .rollout
        .as_ref()
        .filter(|r| {
            r.done_unix_ms.is_none() && !matches!(r.strategy, RolloutStrategy::Rollback { .. })
        })
        .and_then(|r| live.specs.get(&r.from));
    spec.components
        .iter()
        .filter_map(|(component, plan)| {
            let mut timeout = plan.request_timeout?;
            if let Some(before) = before {
                let old = before.components.get(component).map(|p| p.request_timeout);
                match old {
                    Some(Some(old)) => timeout = timeout.max(old),
                    Some(None) => return None,
                    None => {}
                }
            }
            Some((component.clone(), timeout.as_millis() as u64))
        })
        .collect()
}

/// Every node in the cluster, name to incarnation.
fn members(live: &Live) -> BTreeMap<String, String> {
    live.nodes
        .values()
        .map(|n| (n.record.name.clone(), n.record.incarnation.clone()))
        .collect()
}
