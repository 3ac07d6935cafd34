//! What the API shows of the cluster: apps, replicas, nodes and the
//! `skiff top` view, each read from the live state under its lock.

use super::reconcile::replica_running;
use super::{Live, Shared};
use crate::api::{
    AppView, ComponentView, LoadState, NodeView, ReplicaView, RolledBackView, RolloutView,
};
use crate::state::ReplicaRecord;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Every app as `skiff apps` shows it.
pub(super) fn app_views(shared: &Shared) -> Vec<AppView> {
    let live = shared.live();
    let replicas_of = live.replicas_by(|r| Some(&r.app));
    live.apps
        .values()
        .map(|app| {
            let spec = live.specs.get(&app.package);
            let components = spec
                .map(|spec| {
                    spec.components
                        .iter()
                        .map(|(name, plan)| ComponentView {
                            name: name.clone(),
                            route: plan.route.clone(),
                            desired: live.desired_replicas(app, name, plan),
                            autoscale: live.autoscale_view(app, name, plan),
                            running: replicas_of
                                .get(app.name.as_str())
                                .into_iter()
                                .flatten()
                                .filter(|r| &r.component == name)
                                .filter(|r| replica_running(&live, r))
                                .count() as u32,
                        })
                        .collect()
                })
                .unwrap_or_default();
            AppView {
                name: app.name.clone(),
                version: spec.map(|s| s.version.clone()).unwrap_or_default(),
                package: app.package.clone(),
                generation: app.generation,
                components,
                error: live.unreadable.get(&app.package).map(|u| {
                    format!(
                        "the control plane cannot read the app's package: {}; its replicas keep running; deploy the app again",
                        u.reason
                    )
                }),
                rollout: app
                    .rollout
                    .as_ref()
                    .map(|rollout| rollout_view(&live, app, rollout, &replicas_of)),
                rolled_back: app.failed.as_ref().map(|failed| RolledBackView {
                    version: version_of(&live, &failed.package),
                    package: failed.package.clone(),
                    reason: failed.reason.clone(),
                    unix_ms: failed.unix_ms,
                }),
                history: app.history.iter().map(|p| version_of(&live, p)).collect(),
            }
        })
        .collect()
}

/// How `app`'s `rollout` shows in `skiff apps`.
fn rollout_view(
    live: &Live,
    app: &crate::state::AppRecord,
    rollout: &crate::state::Rollout,
    replicas_of: &std::collections::HashMap<&str, Vec<&ReplicaRecord>>,
) -> RolloutView {
    use crate::state::RolloutStrategy;
    let (strategy, share) = match &rollout.strategy {
        RolloutStrategy::Rolling => ("rolling", None),
        RolloutStrategy::Canary { steps, step, .. } => ("canary", Some(steps[*step])),
        RolloutStrategy::Rollback { .. } => ("rollback", None),
    };
    let state = match (&rollout.strategy, rollout.done_unix_ms) {
        (RolloutStrategy::Rollback { .. }, _) => "rolling back",
        (_, Some(_)) => "watching",
        _ => "rolling out",
    };
    let replicas = replicas_of
        .get(app.name.as_str())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let ready = replicas
        .iter()
        .filter(|r| r.package == app.package)
        .filter(|r| super::reconcile::endpoint_node(live, r).is_some())
        .count() as u32;
    let desired = live.specs.get(&app.package).map_or(0, |spec| {
        spec.components
            .iter()
            .map(|(name, plan)| live.desired_replicas(app, name, plan))
            .sum()
    });
    let requests = |package: &str| {
        live.tallies
            .get(&(app.name.clone(), package.to_string()))
            .map_or((0, 0), |t| (t.answered, t.failed))
    };
    RolloutView {
        strategy: strategy.to_string(),
        state: state.to_string(),
        from: version_of(live, &rollout.from),
        to: version_of(live, &app.package),
        share,
        ready,
        desired,
        new_requests: requests(&app.package),
        old_requests: requests(&rollout.from),
    }
}

/// How a version is shown: the app's `version` and the first digits of
/// its package digest.
pub(super) fn version_of(live: &Live, package: &str) -> String {
    let digits = crate::node::replicas::short(package);
    match live.specs.get(package) {
        Some(spec) => format!("{} ({digits})", spec.version),
        None => digits.to_string(),
    }
}

pub(super) fn replica_views(shared: &Shared, app: Option<&str>) -> Vec<ReplicaView> {
    let live = shared.live();
    let now = crate::clock::unix_secs();
    live.replicas
        .values()
        .filter(|r| app.is_none_or(|a| r.app == a))
        .map(|r| {
            let (state, reason) = match &r.node {
                None => (
                    "pending",
                    Some(
                        live.pending
                            .get(&r.id)
                            .cloned()
                            .unwrap_or_else(|| "not placed yet".to_string()),
                    ),
                ),
                Some(node) => match live.nodes.get(node) {
                    Some(n) if n.down => ("unknown", Some(format!("node {node} is down"))),
                    Some(n) => match n.component(&r.app, &r.component, &r.package) {
                        _ if replica_running(&live, r) => ("running", None),
                        Some(c) if c.state == LoadState::Failed => ("failed", c.error.clone()),
                        Some(c) if c.serving.is_some() => ("running", None),
                        Some(_) => (
                            "starting",
                            Some("loading and checking it is ready".to_string()),
                        ),
                        _ => ("starting", None),
                    },
                    None => ("unknown", Some(format!("node {node} is not known"))),
                },
            };
            // A replica stuck on a draining node says why; so does one of
            // an app whose package cannot be read.
            let reason = reason
                .or_else(|| live.pending.get(&r.id).cloned())
                .or_else(|| {
                    let unreadable = live.unreadable.get(&r.package)?;
                    Some(format!(
                        "the app's package cannot be read: {}",
                        unreadable.reason
                    ))
                });
            ReplicaView {
                id: r.id.clone(),
                app: r.app.clone(),
                component: r.component.clone(),
                node: r.node.clone(),
                state: state.to_string(),
                age_secs: now.saturating_sub(r.created_unix),
                reason,
                version: version_of(&live, &r.package),
            }
        })
        .collect()
}

/// What `skiff top` shows now: made at most once a second, however many
/// ask (every open dashboard does, every 2 s).
pub(super) fn top_view(shared: &Shared) -> Arc<crate::api::TopView> {
    let mut cached = shared.top.lock().expect("top cache lock");
    if let Some((at, view)) = cached.as_ref()
        && at.elapsed() < Duration::from_secs(1)
    {
        return view.clone();
    }
    let view = Arc::new(make_top_view(shared));
    *cached = Some((Instant::now(), view.clone()));
    view
}

fn make_top_view(shared: &Shared) -> crate::api::TopView {
    let replicas = replica_views(shared, None);
    let nodes = node_views(shared);
    let traffic = {
        let live = shared.live();
        super::top::snapshot(
            live.nodes
                .iter()
                .map(|(name, node)| (name.as_str(), &node.traffic)),
            Instant::now(),
            crate::clock::unix_ms(),
        )
    };
    super::top::view(&traffic, &replicas, &nodes)
}

/// Every node as `skiff nodes` shows it.
pub(super) fn node_views(shared: &Shared) -> Vec<NodeView> {
    let live = shared.live();
    let replicas_on = live.replicas_by(|r| r.node.as_deref());
    live.nodes
        .values()
        .map(|n| {
            let name = &n.record.name;
            let on_node = replicas_on
                .get(name.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let reserved = on_node
                .iter()
                .filter_map(|r| live.specs.get(&r.package)?.components.get(&r.component))
                .map(|plan| plan.request.memory)
                .sum();
            let state = if n.down {
                "down"
            } else if !n.heard {
                "unknown"
            } else if n.record.drained {
                "draining"
            } else if n.record.cordoned {
                "cordoned"
            } else {
                "ready"
            };
            NodeView {
                name: name.clone(),
                state: state.to_string(),
                labels: n.record.labels.clone(),
                memory: n.memory(),
                placeable: live.overcommit.placeable(n.memory()),
                reserved,
                used: n.used,
                pressure: n.pressure,
                replicas: on_node.len() as u32,
                ingress: n.record.ingress.clone(),
                https: n.https.clone(),
                last_seen_ms: n.last_seen.elapsed().as_millis() as u64,
            }
        })
        .collect()
}
