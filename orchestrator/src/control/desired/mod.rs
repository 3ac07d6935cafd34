//! What each node should run and route, and what of it changed since a
//! version: the desired state is computed once per version for all nodes,
//! each part stamped with the version it last changed at, so a node that
//! applied version V is sent only the parts stamped after V.
//!
//! A node of 10,000 apps then hears of one new app as one app's routing
//! and one assignment, not the whole cluster's state again.

mod inputs;
mod stamped;

use super::Live;
use super::reconcile::endpoint_node;
use crate::api::{AppRouting, Assignment, DesiredChange, Endpoint, SharedJson};
use crate::state::{AppRecord, ReplicaRecord};
use inputs::Inputs;
use stamped::Stamped;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

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
    apps: Stamped<String, Routing>,
    /// Per node, what it runs.
    assignments: BTreeMap<String, Stamped<ComponentKey, Assignment>>,
    members: (BTreeMap<String, String>, u64),
    /// When the last computation ended, and how long it took.
    last: Option<(Instant, Duration)>,
    /// What the parts were computed from, to tell what a change touched.
    inputs: Inputs,
    /// When every part was last computed from scratch.
    last_full: Option<Instant>,
    /// The apps' routing changed after a version (0: all of it), encoded
    /// at the computed version: the nodes brought up from one version are
    /// sent one encoding.
    encoded: HashMap<u64, SharedJson>,
    /// The bytes in `encoded`.
    encoded_bytes: usize,
    /// The latest versions computed, oldest first: nodes answered since
    /// hold one of them.
    recent: std::collections::VecDeque<u64>,
}

/// An app's routing, encoded when first sent: an app that changed once
/// is encoded once, however many nodes hear of it, and whichever version
/// each heard last.
struct Routing {
    value: AppRouting,
    json: std::sync::OnceLock<String>,
}

impl Routing {
    fn new(value: AppRouting) -> Routing {
        Routing {
            value,
            json: std::sync::OnceLock::new(),
        }
    }

    fn all(apps: BTreeMap<String, AppRouting>) -> BTreeMap<String, Routing> {
        apps.into_iter()
            .map(|(name, value)| (name, Routing::new(value)))
            .collect()
    }

    /// The routing as JSON.
    fn json(&self) -> &str {
        self.json
            .get_or_init(|| serde_json::to_string(&self.value).expect("routing encodes"))
    }
}

/// Routings are the same when their values are: the encoding follows.
impl PartialEq for Routing {
    fn eq(&self, other: &Routing) -> bool {
        self.value == other.value
    }
}

/// Encodings of apps' routing kept per computed version, for nodes at
/// that many of the latest versions: a node at another version (none an
/// honest node holds) has its answer put together each time.
const MAX_ENCODINGS: usize = 64;

/// The most bytes of encodings kept per computed version, whatever the
/// versions nodes ask from.
const MAX_ENCODED_BYTES: usize = 64 << 20;

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
            inputs: Inputs::default(),
            last_full: None,
            encoded: HashMap::new(),
            encoded_bytes: 0,
            recent: std::collections::VecDeque::new(),
        }
    }

    /// How long to wait before computing version `version` (nothing when
    /// it is computed already, or the last computation was long enough
    /// ago): at least `least` after the last one, so that a cluster whose
    /// version moves hundreds of times a second computes one state for
    /// many of them.
    pub(super) fn rest_before(&self, version: u64, least: Duration) -> Duration {
        match self.last {
            Some((ended, took)) if self.computed_at != version => (took * REST_FACTOR)
                .max(least)
                .saturating_sub(ended.elapsed()),
            _ => Duration::ZERO,
        }
    }

    /// This run's number.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Brings every part up to `live` at `version`, once per version,
    /// stamping what differs from the last computation; returns the
    /// version the parts are at. Call it with `live` locked and `version`
    /// read under that lock, so versions only grow and a change is never
    /// stamped with a version from before it.
    ///
    /// Only the apps a change touched are computed again (see
    /// [`Inputs::touched`]); every [`FULL_EVERY`], all of them are.
    pub(super) fn refresh(&mut self, live: &Live, version: u64) -> u64 {
        if version <= self.computed_at {
            return self.computed_at;
        }
        let started = Instant::now();
        let mut touched = self.inputs.touched(live);
        // An app with a replica on a node that changed may route
        // differently: such a replica was on the node as last computed,
        // or it changed (and its app is touched already)...
        for node in &touched.nodes {
            if let Some(log) = self.assignments.get(node) {
                for (app, _, _) in log.values.keys() {
                    if !touched.apps.contains(app) {
                        touched.apps.insert(app.clone());
                    }
                }
            }
        }
        // ...or it names a node new to the cluster (one joining again).
        if !touched.came.is_empty() {
            for replica in live.replicas.values() {
                if replica
                    .node
                    .as_ref()
                    .is_some_and(|n| touched.came.contains(n))
                {
                    touched.apps.insert(replica.app.clone());
                }
            }
        }
        // Nodes of an app whose record came or went, or whose replicas
        // did: their assignments count only apps with a record.
        for app in &touched.recorded {
            for replica in live.replicas_under(&format!("{app}/")) {
                if let Some(node) = &replica.node {
                    touched.placed.insert(node.clone());
                }
            }
        }
        // Taken while computing: a computation that does not finish (a
        // panic) leaves what it saw as seen, and the next computes all.
        let last_full = self.last_full.take();
        let full = last_full.is_none_or(|at| at.elapsed() >= FULL_EVERY);
        let only = (!full).then_some(&touched.apps);
        let (mut apps, mut assignments) = routing_and_assignments(live, only);
        let mut horizon = match only {
            None => self
                .apps
                .update_where(Routing::all(apps), |_| true, version),
            Some(only) => {
                for app in only {
                    self.apps
                        .set(app, apps.remove(app).map(Routing::new), version);
                }
                self.apps.forget_oldest_removals()
            }
        };
        if touched.members {
            // Nodes gone from the cluster are never asked for again.
            self.assignments
                .retain(|node, _| live.nodes.contains_key(node));
        }
        match only {
            None => {
                for (node, log) in &mut self.assignments {
                    let now = assignments.remove(node).unwrap_or_default();
                    horizon = horizon.max(log.update_where(now, |_| true, version));
                }
            }
            // A node's assignments change only with the replicas on it,
            // or when it comes.
            Some(only) => {
                for node in touched.placed.iter().chain(&touched.came) {
                    let Some(log) = self.assignments.get_mut(node) else {
                        continue;
                    };
                    let now = assignments.remove(node).unwrap_or_default();
                    let in_scope = |(app, _, _): &ComponentKey| only.contains(app);
                    horizon = horizon.max(log.update_where(now, in_scope, version));
                }
            }
        }
        // Nodes given their first assignments.
        for (node, now) in assignments {
            if self.assignments.contains_key(&node) || !live.nodes.contains_key(&node) {
                continue;
            }
            let mut log = Stamped::default();
            horizon = horizon.max(log.update_where(now, |_| true, version));
            self.assignments.insert(node, log);
        }
        if full || touched.members {
            let members = members(live);
            if members != self.members.0 {
                self.members = (members, version);
            }
        }
        #[cfg(debug_assertions)]
        self.check_against_scratch(live);
        self.last_full = if full {
            Some(Instant::now())
        } else {
            last_full
        };
        self.horizon = self.horizon.max(horizon);
        self.computed_at = version;
        self.encoded.clear();
        self.encoded_bytes = 0;
        if self.recent.len() == MAX_ENCODINGS {
            self.recent.pop_front();
        }
        self.recent.push_back(version);
        self.last = Some((Instant::now(), started.elapsed()));
        version
    }

    /// Panics when the parts differ from what a computation from scratch
    /// gives: a change of the live state that [`Inputs`] does not see.
    #[cfg(debug_assertions)]
    fn check_against_scratch(&self, live: &Live) {
        let (apps, assignments) = routing_and_assignments(live, None);
        let held: BTreeMap<&String, &AppRouting> = self
            .apps
            .values
            .iter()
            .map(|(k, (v, _))| (k, &v.value))
            .collect();
        let scratch: BTreeMap<&String, &AppRouting> = apps.iter().collect();
        assert_eq!(
            held, scratch,
            "the desired routing drifted from the live state"
        );
        for node in live.nodes.keys() {
            let held: BTreeMap<_, _> = self
                .assignments
                .get(node)
                .map(|log| log.values.iter().map(|(k, (v, _))| (k, v)).collect())
                .unwrap_or_default();
            let scratch: BTreeMap<_, _> = assignments
                .get(node)
                .map(|now| now.iter().collect())
                .unwrap_or_default();
            assert_eq!(
                held, scratch,
                "node {node}'s assignments drifted from the live state"
            );
        }
    }

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

    /// What node `name` must change to be at the computed version, having
    /// applied `since` (a version of `epoch`): everything when that
    /// version cannot be brought up to date by a change.
    pub(super) fn change_for(
        &mut self,
        name: &str,
        epoch: u64,
        since: u64,
    ) -> DesiredChange<SharedJson> {
        let full = epoch != self.epoch || since <= self.horizon || since > self.computed_at;
        let after = if full { 0 } else { since };
        let apps = self.apps_changed_after(after);
        let none = Stamped::default();
        let assigned = self.assignments.get(name).unwrap_or(&none);
        DesiredChange {
            full,
            assignments: assigned.changed_after(after).cloned().collect(),
            unassigned: assigned.removed_after(after).cloned().collect(),
            apps,
            removed_apps: self.apps.removed_after(after).cloned().collect(),
            members: (full || self.members.1 > since).then(|| self.members.0.clone()),
        }
    }

    /// The bytes of encodings kept for the computed version.
    #[cfg(test)]
    pub(super) fn encoded_bytes(&self) -> usize {
        self.encoded_bytes
    }

    /// The apps' routing changed after version `after`, as a JSON array
    /// of each app's encoding, put together once per computed version.
    fn apps_changed_after(&mut self, after: u64) -> SharedJson {
        if let Some(encoded) = self.encoded.get(&after) {
            return encoded.clone();
        }
        let mut json = String::from("[");
        for (i, routing) in self.apps.changed_after(after).enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(routing.json());
        }
        json.push(']');
        let encoded = SharedJson::from_json(json);
        let shared = after == 0 || self.recent.contains(&after);
        if shared && self.encoded_bytes + encoded.len() <= MAX_ENCODED_BYTES {
            self.encoded_bytes += encoded.len();
            self.encoded.insert(after, encoded.clone());
        }
        encoded
    }
}

/// What node `name` should run, and where every app's running replicas are.
#[cfg(test)]
pub(super) fn desired_for(live: &Live, name: &str) -> crate::api::DesiredState {
    let (apps, mut assignments) = routing_and_assignments(live, None);
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

/// How often every part of the desired state is computed from scratch,
/// whatever [`Inputs`] says changed.
const FULL_EVERY: Duration = Duration::from_secs(10);

/// Every app's routes and the nodes serving each of its components, and
/// per node the components placed on it with their replica count: one
/// walk over the apps and their replicas. With `only`, of those apps alone
/// (an app in `only` that is gone has no routing), and per node only their
/// components.
fn routing_and_assignments(
    live: &Live,
    only: Option<&BTreeSet<String>>,
) -> (BTreeMap<String, AppRouting>, Assignments) {
    let replicas_of: std::collections::HashMap<&str, Vec<&ReplicaRecord>> = match only {
        None => live.replicas_by(|r| Some(r.app.as_str())),
        // Replica ids start with `app/`: no walk over every replica.
        Some(only) => only
            .iter()
            .map(|app| {
                let replicas = live
                    .replicas_under(&format!("{app}/"))
                    .filter(|replica| replica.app == *app)
                    .collect();
                (app.as_str(), replicas)
            })
            .collect(),
    };
    let mut per_node: Assignments = BTreeMap::new();
    let mut apps = BTreeMap::new();
    let records: Box<dyn Iterator<Item = (&String, &AppRecord)>> = match only {
        None => Box::new(live.apps.iter()),
        Some(only) => Box::new(only.iter().filter_map(|app| live.apps.get_key_value(app))),
    };
    for (app, record) in records {
        let replicas = replicas_of.get(app.as_str()).map_or(&[][..], Vec::as_slice);
        for replica in replicas {
            let Some(node) = replica
                .node
                .as_ref()
                .filter(|n| live.nodes.contains_key(*n))
            else {
                continue;
            };
            let node = match per_node.get_mut(node) {
                Some(node) => node,
                None => per_node.entry(node.clone()).or_default(),
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
            domains: spec.domains.clone(),
            https_redirect: spec.https_redirect,
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
