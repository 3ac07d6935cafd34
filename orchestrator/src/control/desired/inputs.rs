//! What the desired state was last computed from, and what of it a
//! change of the live state touched.

use super::super::catalog::AppSpec;
use super::super::{Live, LiveNode};
use crate::state::{AppRecord, ReplicaRecord};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What the desired state was last computed from, in brief: enough to
/// tell which apps a change of the live state touched, with one pass over
/// nodes, apps and replicas that allocates nothing for what is unchanged.
/// Whatever changed the state (a deploy, a controller pass, a heartbeat),
/// it is seen here; nothing needs to say what it changed.
#[derive(Default)]
pub(super) struct Inputs {
    nodes: BTreeMap<String, NodeInputs>,
    apps: BTreeMap<String, AppInputs>,
    /// Each replica by id.
    replicas: BTreeMap<String, ReplicaRecord>,
}

/// What of a node the routing of the apps on it depends on.
#[derive(PartialEq)]
struct NodeInputs {
    down: bool,
    heard: bool,
    mesh: String,
    incarnation: String,
    status_changes: u64,
}

/// What an app's routing depends on beside its replicas: its record, and
/// which of its versions' packages are read.
struct AppInputs {
    record: AppRecord,
    /// The specs of its package and of the version a rollout moves from.
    specs: [Option<Arc<AppSpec>>; 2],
}

/// What a change touched: the apps whose routing or assignments may have
/// changed as far as their records and replicas say, the nodes whose state
/// changed (the apps with replicas there may route differently), the
/// nodes a replica changed on (their assignments may differ), and whether
/// the members did.
#[derive(Default)]
pub(super) struct Touched {
    pub(super) apps: BTreeSet<String>,
    pub(super) nodes: BTreeSet<String>,
    /// Nodes new to the cluster.
    pub(super) came: BTreeSet<String>,
    pub(super) placed: BTreeSet<String>,
    /// Apps whose record came or went.
    pub(super) recorded: BTreeSet<String>,
    pub(super) members: bool,
}

impl NodeInputs {
    fn of(node: &LiveNode) -> NodeInputs {
        NodeInputs {
            down: node.down,
            heard: node.heard,
            mesh: node.record.mesh.clone(),
            incarnation: node.record.incarnation.clone(),
            status_changes: node.status_changes,
        }
    }

    fn same(&self, node: &LiveNode) -> bool {
        self.down == node.down
            && self.heard == node.heard
            && self.mesh == node.record.mesh
            && self.incarnation == node.record.incarnation
            && self.status_changes == node.status_changes
    }
}

impl AppInputs {
    fn specs(live: &Live, record: &AppRecord) -> [Option<Arc<AppSpec>>; 2] {
        let spec = |package: &str| live.specs.get(package).cloned();
        [
            spec(&record.package),
            record.rollout.as_ref().and_then(|r| spec(&r.from)),
        ]
    }

    /// Whether `record`, with the specs `live` holds for it, is what was
    /// seen.
    fn same(&self, record: &AppRecord, live: &Live) -> bool {
        let same_spec = |seen: &Option<Arc<AppSpec>>, package: Option<&String>| match (
            seen,
            package.and_then(|p| live.specs.get(p)),
        ) {
            (Some(seen), Some(now)) => Arc::ptr_eq(seen, now),
            (seen, now) => seen.is_none() && now.is_none(),
        };
        self.record == *record
            && same_spec(&self.specs[0], Some(&record.package))
            && same_spec(&self.specs[1], record.rollout.as_ref().map(|r| &r.from))
    }
}

impl Inputs {
    /// Takes `live` as what the parts are computed from now; returns what
    /// changed since the last call: the apps whose record, package or
    /// replicas changed or went, the nodes whose state changed or that
    /// came or went, and whether the members changed.
    pub(super) fn touched(&mut self, live: &Live) -> Touched {
        let mut touched = Touched::default();
        follow(
            &mut self.nodes,
            &live.nodes,
            NodeInputs::same,
            NodeInputs::of,
            |name, seen, node| {
                touched.members |= match (seen, node) {
                    (Some(seen), Some(node)) => seen.incarnation != node.record.incarnation,
                    _ => true,
                };
                if seen.is_none() {
                    touched.came.insert(name.to_string());
                }
                touched.nodes.insert(name.to_string());
            },
        );
        follow(
            &mut self.apps,
            &live.apps,
            |seen, record| seen.same(record, live),
            |record| AppInputs {
                record: record.clone(),
                specs: AppInputs::specs(live, record),
            },
            |name, seen, record| {
                touched.apps.insert(name.to_string());
                if seen.is_none() || record.is_none() {
                    touched.recorded.insert(name.to_string());
                }
            },
        );
        follow(
            &mut self.replicas,
            &live.replicas,
            |seen, replica| seen == replica,
            Clone::clone,
            |_, seen, replica| {
                for replica in [seen, replica].into_iter().flatten() {
                    if !touched.apps.contains(&replica.app) {
                        touched.apps.insert(replica.app.clone());
                    }
                    if let Some(node) = &replica.node
                        && !touched.placed.contains(node)
                    {
                        touched.placed.insert(node.clone());
                    }
                }
            },
        );
        touched
    }
}

/// Makes `seen` hold the summary of each value of `now`, walking both (in
/// key order) in step, so that what is unchanged costs a comparison and
/// no lookup; calls `changed` with the key, the summary seen and the value
/// now of each key that changed, came or went.
fn follow<'a, S, V>(
    seen: &mut BTreeMap<String, S>,
    now: &'a BTreeMap<String, V>,
    same: impl Fn(&S, &V) -> bool,
    summary: impl Fn(&V) -> S,
    mut changed: impl FnMut(&str, Option<&S>, Option<&V>),
) {
    let mut came: Vec<(&'a String, &'a V)> = Vec::new();
    let mut went: Vec<String> = Vec::new();
    let mut before = seen.iter_mut().peekable();
    for (key, value) in now {
        while let Some((gone, old)) = before.next_if(|(k, _)| k.as_str() < key.as_str()) {
            changed(gone, Some(old), None);
            went.push(gone.clone());
        }
        match before.next_if(|(k, _)| *k == key) {
            Some((_, old)) if same(old, value) => {}
            Some((_, old)) => {
                changed(key, Some(old), Some(value));
                *old = summary(value);
            }
            None => {
                changed(key, None, Some(value));
                came.push((key, value));
            }
        }
    }
    for (gone, old) in before {
        changed(gone, Some(old), None);
        went.push(gone.clone());
    }
    for key in went {
        seen.remove(&key);
    }
    for (key, value) in came {
        seen.insert(key.clone(), summary(value));
    }
}
