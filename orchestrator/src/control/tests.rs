//! The controller's passes on hand-built cluster states: placement,
//! failure detection, scale changes, drains and unschedulable reasons.

use super::catalog::{AppSpec, ComponentPlan};
use super::reconcile::reconcile;
use super::{ControlPlaneConfig, Live, LiveNode};
use crate::scheduler::{ReplicaRequest, Strategy};
use crate::state::{AppRecord, NodeRecord, ReplicaChange, ReplicaRecord, Replicas};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn config() -> ControlPlaneConfig {
    ControlPlaneConfig::new("/nonexistent".into(), "127.0.0.1:0".parse().unwrap())
}

fn node(name: &str, memory: u64, now: Instant) -> LiveNode {
    let mut node = LiveNode::new(NodeRecord {
        name: name.to_string(),
        labels: BTreeMap::new(),
        memory,
        ingress: String::new(),
        mesh: String::new(),
        cordoned: false,
        drained: false,
        incarnation: format!("i-{name}"),
    });
    node.last_seen = now;
    node.heard = true;
    node
}

/// A cluster of `nodes` (name, memory) running app "web" whose component
/// "api" wants `replicas` replicas of `memory` each.
fn cluster(nodes: &[(&str, u64)], replicas: u32, memory: u64, now: Instant) -> Live {
    let mut live = Live::default();
    for (name, capacity) in nodes {
        live.nodes
            .insert(name.to_string(), node(name, *capacity, now));
    }
    let plan = ComponentPlan {
        route: Some("/...".to_string()),
        allow_callers: Vec::new(),
        replicas: Replicas::Fixed(replicas),
        target_concurrency: 10,
        scale_down_delay: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
        replica_capacity: 200,
        request: ReplicaRequest {
            component: "web/api".to_string(),
            memory,
            required_labels: BTreeMap::new(),
            strategy: Strategy::Spread,
            prefer: None,
            avoid: Vec::new(),
        },
        rollout: Default::default(),
        request_timeout: None,
    };
    live.specs.insert(
        "sha256:p".to_string(),
        Arc::new(AppSpec {
            name: "web".to_string(),
            version: "1".to_string(),
            components: BTreeMap::from([("api".to_string(), plan)]),
            blobs: Default::default(),
            canary: None,
            domains: Vec::new(),
            https_redirect: false,
        }),
    );
    live.apps.insert(
        "web".to_string(),
        AppRecord {
            name: "web".to_string(),
            package: "sha256:p".to_string(),
            scale: BTreeMap::from([("api".to_string(), Replicas::Fixed(replicas))]),
            generation: 1,
            ..AppRecord::new("")
        },
    );
    live
}

fn placement(live: &Live) -> Vec<(String, Option<String>)> {
    live.replicas
        .values()
        .map(|r| (r.id.clone(), r.node.clone()))
        .collect()
}

fn per_node(live: &Live) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for replica in live.replicas.values() {
        *counts
            .entry(replica.node.clone().unwrap_or_else(|| "-".to_string()))
            .or_default() += 1;
    }
    counts
}

#[test]
fn replicas_are_created_and_placed_on_distinct_nodes() {
    let now = Instant::now();
    let mut live = cluster(
        &[("a", 1024 * MIB), ("b", 1024 * MIB), ("c", 1024 * MIB)],
        3,
        64 * MIB,
        now,
    );
    let outcome = reconcile(&mut live, now, &config(), 100);
    assert!(outcome.changed);
    assert_eq!(
        per_node(&live),
        BTreeMap::from([("a".into(), 1), ("b".into(), 1), ("c".into(), 1)])
    );
    assert!(live.replicas.values().all(|r| r.created_unix == 100));
    // The store hears the final record of every replica.
    let stored: BTreeMap<String, Option<String>> = outcome
        .changes
        .iter()
        .filter_map(|c| match c {
            ReplicaChange::Put(r) => Some((r.id.clone(), r.node.clone())),
            ReplicaChange::Remove(_) => None,
        })
        .collect();
    assert_eq!(stored.into_iter().collect::<Vec<_>>(), placement(&live));

    // A second pass with nothing new changes nothing.
    let again = reconcile(&mut live, now, &config(), 101);
    assert!(!again.changed && again.changes.is_empty());
}

#[test]
fn a_silent_node_is_marked_down_and_its_replicas_move() {
    let start = Instant::now();
    let mut live = cluster(&[("a", 1024 * MIB), ("b", 1024 * MIB)], 2, 64 * MIB, start);
    reconcile(&mut live, start, &config(), 0);
    let on_b = live
        .replicas
        .values()
        .find(|r| r.node.as_deref() == Some("b"))
        .unwrap()
        .id
        .clone();

    // "a" keeps heartbeating; "b" goes silent.
    let later = start + Duration::from_millis(2_900);
    live.nodes.get_mut("a").unwrap().last_seen = later;
    reconcile(&mut live, later, &config(), 0);
    assert!(!live.nodes["b"].down, "not yet past down_after");

    let past = start + Duration::from_millis(3_100);
    live.nodes.get_mut("a").unwrap().last_seen = past;
    let outcome = reconcile(&mut live, past, &config(), 0);
    assert!(outcome.changed);
    assert!(live.nodes["b"].down);
    assert_eq!(
        live.replicas[&on_b].node.as_deref(),
        Some("a"),
        "moved to the live node"
    );
}

#[test]
fn a_down_node_whose_replicas_have_nowhere_to_go_keeps_them_until_it_returns() {
    let start = Instant::now();
    // Room for two replicas on "a" alone; three are asked for.
    let mut live = cluster(&[("a", 128 * MIB)], 3, 64 * MIB, start);
    reconcile(&mut live, start, &config(), 0);
    let before = placement(&live);
    assert_eq!(per_node(&live).get("a"), Some(&2), "{before:?}");

    let past = start + Duration::from_millis(3_100);
    reconcile(&mut live, past, &config(), 0);
    assert!(live.nodes["a"].down);
    // Nothing could move: the same replicas stay bound to "a", the third
    // still waits, and what is bound says why it stays.
    assert_eq!(placement(&live), before);
    let reasons: Vec<&String> = live.pending.values().collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("its node is down and no other node can take it")),
        "{reasons:?}"
    );

    // "a" returns: it has what it ran, not a reshuffle.
    live.nodes.get_mut("a").unwrap().down = false;
    live.nodes.get_mut("a").unwrap().last_seen = past;
    reconcile(&mut live, past, &config(), 0);
    assert_eq!(placement(&live), before);
}

#[test]
fn a_broken_heartbeat_marks_a_node_down_after_half_the_silence_limit() {
    let now = Instant::now();
    let mut live = cluster(&[("a", 1024 * MIB), ("b", 1024 * MIB)], 1, 64 * MIB, now);
    live.nodes.get_mut("b").unwrap().connection_lost = Some(now);
    live.nodes.get_mut("a").unwrap().last_seen = now + Duration::from_millis(1_600);
    reconcile(&mut live, now + Duration::from_millis(1_400), &config(), 0);
    assert!(
        !live.nodes["b"].down,
        "a live node reconnects within half of down_after"
    );
    reconcile(&mut live, now + Duration::from_millis(1_600), &config(), 0);
    assert!(live.nodes["b"].down);
}

#[test]
fn scaling_down_removes_from_the_most_crowded_node_first() {
    let now = Instant::now();
    let mut live = cluster(&[("a", 1024 * MIB), ("b", 1024 * MIB)], 4, 64 * MIB, now);
    reconcile(&mut live, now, &config(), 0);
    assert_eq!(
        per_node(&live),
        BTreeMap::from([("a".into(), 2), ("b".into(), 2)])
    );
    // Crowd "a" by hand: three there, one on "b".
    let moved = live
        .replicas
        .values_mut()
        .find(|r| r.node.as_deref() == Some("b"))
        .unwrap();
    moved.node = Some("a".to_string());

    live.apps
        .get_mut("web")
        .unwrap()
        .scale
        .insert("api".into(), Replicas::Fixed(2));
    let outcome = reconcile(&mut live, now, &config(), 0);
    assert_eq!(
        per_node(&live),
        BTreeMap::from([("a".into(), 1), ("b".into(), 1)])
    );
    let removed = outcome
        .changes
        .iter()
        .filter(|c| matches!(c, ReplicaChange::Remove(_)))
        .count();
    assert_eq!(removed, 2);

    // Scaling up again continues the numbering.
    live.apps
        .get_mut("web")
        .unwrap()
        .scale
        .insert("api".into(), Replicas::Fixed(3));
    reconcile(&mut live, now, &config(), 0);
    assert_eq!(live.replicas.len(), 3);
    assert!(
        live.replicas.contains_key("web/api/4"),
        "{:?}",
        placement(&live)
    );
}

#[test]
fn drained_nodes_give_up_replicas_and_cordoned_ones_keep_theirs() {
    let now = Instant::now();
    let mut live = placed_on_a_and_b(now);
    live.nodes.get_mut("a").unwrap().record.cordoned = true;
    reconcile(&mut live, now, &config(), 0);
    assert_eq!(
        per_node(&live),
        BTreeMap::from([("a".into(), 1), ("b".into(), 1)])
    );

    // Draining "a" while "b" is cordoned too: nowhere to go, so the
    // replica stays, saying why.
    live.nodes.get_mut("b").unwrap().record.cordoned = true;
    live.nodes.get_mut("a").unwrap().record.drained = true;
    reconcile(&mut live, now, &config(), 0);
    assert_eq!(
        per_node(&live),
        BTreeMap::from([("a".into(), 1), ("b".into(), 1)])
    );
    let stuck: Vec<&String> = live.pending.values().collect();
    assert_eq!(stuck.len(), 1);
    assert!(
        stuck[0].starts_with("cannot leave its draining node: 0/2 nodes fit: 2 cordoned"),
        "{stuck:?}"
    );
    let again = reconcile(&mut live, now, &config(), 0);
    assert!(!again.changed, "a stuck drain does not churn");

    // Room on "b": the replica moves.
    live.nodes.get_mut("b").unwrap().record.cordoned = false;
    reconcile(&mut live, now, &config(), 0);
    assert_eq!(per_node(&live), BTreeMap::from([("b".into(), 2)]));
    assert!(live.pending.is_empty());
}

#[test]
fn unplaceable_replicas_wait_with_a_reason_and_deleted_apps_lose_theirs() {
    let now = Instant::now();
    let mut live = cluster(&[("a", 100 * MIB), ("b", 100 * MIB)], 3, 64 * MIB, now);
    reconcile(&mut live, now, &config(), 0);
    assert_eq!(
        per_node(&live),
        BTreeMap::from([("-".into(), 1), ("a".into(), 1), ("b".into(), 1)])
    );
    let reasons: Vec<&String> = live.pending.values().collect();
    assert_eq!(
        reasons,
        [
            "0/2 nodes fit: 2 insufficient memory; a replica of web/api reserves 64.0 MiB: \
          set [component.api.placement] memory to reserve less, add nodes, or let nodes \
          overcommit with `skiff server --overcommit`"
        ]
    );

    // Room appears: the pending replica is placed and its reason cleared.
    let a = live.nodes.get_mut("a").unwrap();
    (a.record.memory, a.reported_memory) = (200 * MIB, 200 * MIB);
    reconcile(&mut live, now, &config(), 0);
    assert!(live.pending.is_empty());
    assert_eq!(
        per_node(&live),
        BTreeMap::from([("a".into(), 2), ("b".into(), 1)])
    );

    live.apps.remove("web");
    let outcome = reconcile(&mut live, now, &config(), 0);
    assert!(live.replicas.is_empty());
    assert_eq!(outcome.changes.len(), 3);
}

#[test]
fn every_node_learns_each_member_and_its_incarnation() {
    let now = Instant::now();
    let mut live = cluster(&[("a", 1024 * MIB), ("b", 1024 * MIB)], 1, 64 * MIB, now);
    live.nodes.get_mut("b").unwrap().down = true;
    let desired = super::desired::desired_for(&live, "a");
    // A down node is still a member (it may come back); only forgetting
    // it removes it.
    assert_eq!(
        desired.members,
        BTreeMap::from([
            ("a".to_string(), "i-a".to_string()),
            ("b".to_string(), "i-b".to_string())
        ])
    );
    live.nodes.remove("b");
    let desired = super::desired::desired_for(&live, "a");
    assert_eq!(desired.members.keys().collect::<Vec<_>>(), ["a"]);
}

#[test]
fn reported_addresses_must_be_dialable_and_not_the_control_plane() {
    use super::cluster::heartbeat::check_reported_address;
    let api: std::net::SocketAddr = "127.0.0.1:7070".parse().unwrap();
    let any: std::net::SocketAddr = "0.0.0.0:7070".parse().unwrap();
    let hosts = vec!["10.1.2.3".to_string(), "cp".to_string()];
    for (what, addr, server, why) in [
        ("mesh", "127.0.0.1:7070", api, "control plane's own API"),
        (
            "mesh",
            "[::ffff:127.0.0.1]:7070",
            api,
            "control plane's own API",
        ),
        ("ingress", "127.0.0.1:7070", api, "control plane's own API"),
        ("mesh", "127.0.0.9:7070", any, "control plane's own API"),
        ("mesh", "10.1.2.3:7070", any, "control plane's own API"),
        ("mesh", "0.0.0.0:4000", api, "unspecified"),
        ("mesh", "[::]:4000", api, "unspecified"),
        ("mesh", "127.0.0.2:0", api, "port 0"),
        ("ingress", "127.0.0.2:0", api, "port 0"),
        ("mesh", "224.0.0.1:4000", api, "multicast"),
        ("mesh", "[ff02::1]:4000", api, "multicast"),
        ("ingress", "255.255.255.255:80", api, "broadcast"),
        ("mesh", "node-1:4000", api, "expected ip:port"),
    ] {
        let refused = check_reported_address(what, addr, server, &hosts).unwrap_err();
        assert!(
            refused.contains(&format!("invalid {what} address {addr:?}")) && refused.contains(why),
            "{what} {addr}: {refused}"
        );
    }
    for (what, addr, server) in [
        ("mesh", "127.0.0.2:7070", api),
        ("mesh", "127.0.0.1:7071", api),
        ("mesh", "10.1.2.4:7070", any),
        ("ingress", "0.0.0.0:3000", api),
        ("mesh", "[2001:db8::1]:4000", api),
    ] {
        assert!(
            check_reported_address(what, addr, server, &hosts).is_ok(),
            "{what} {addr}"
        );
    }
}

#[test]
fn an_unreadable_package_is_read_again_only_after_a_growing_wait() {
    let now = Instant::now();
    let mut live = cluster(&[("n1", 1024 * MIB)], 1, 64 * MIB, now);
    live.mark_unreadable("sha256:p", "blob sha256:aa is missing".to_string(), now);
    let first = live.unreadable["sha256:p"].next_try;
    assert_eq!(first, now + super::READ_BACKOFF);
    live.mark_unreadable("sha256:p", "blob sha256:aa is missing".to_string(), first);
    let second = live.unreadable["sha256:p"].next_try;
    assert_eq!(second, first + super::READ_BACKOFF * 2);
    for _ in 0..20 {
        live.mark_unreadable("sha256:p", "still missing".to_string(), now);
    }
    assert_eq!(
        live.unreadable["sha256:p"].next_try,
        now + super::MAX_READ_BACKOFF
    );
    assert_eq!(live.unreadable["sha256:p"].reason, "still missing");
}

#[test]
fn a_node_is_given_at_most_the_memory_it_declared_at_join() {
    let now = Instant::now();
    // Declared 1 GiB at join; its heartbeats claim a terabyte.
    let mut live = cluster(&[("a", 1024 * MIB)], 1, 2048 * MIB, now);
    live.nodes.get_mut("a").unwrap().reported_memory = 1 << 40;
    reconcile(&mut live, now, &config(), 0);
    assert_eq!(placement(&live), [("web/api/0".to_string(), None)]);
    assert!(live.pending["web/api/0"].contains("insufficient memory"));

    // Offering less than declared is believed.
    let mut live = cluster(&[("a", 1024 * MIB)], 1, 768 * MIB, now);
    live.nodes.get_mut("a").unwrap().reported_memory = 512 * MIB;
    reconcile(&mut live, now, &config(), 0);
    assert_eq!(placement(&live), [("web/api/0".to_string(), None)]);
    live.nodes.get_mut("a").unwrap().reported_memory = 1024 * MIB;
    reconcile(&mut live, now, &config(), 1);
    assert_eq!(
        placement(&live),
        [("web/api/0".to_string(), Some("a".to_string()))]
    );
}

#[test]
fn a_node_churning_its_reports_moves_the_version_only_so_often() {
    let start = Instant::now();
    let mut budget = super::BumpBudget::default();
    // A burst is let through at once, then the rest wait their turn.
    let bumps = (0..100).filter(|_| budget.take(true, start)).count();
    assert_eq!(bumps, 10);
    // A change refused now is owed, and made once the budget allows,
    // even by a heartbeat that reports nothing new.
    assert!(!budget.take(false, start + Duration::from_millis(100)));
    assert!(budget.take(false, start + Duration::from_millis(600)));
    assert!(!budget.take(false, start + Duration::from_millis(700)));
    // Over a second of churn buys two bumps.
    let later = start + Duration::from_secs(5);
    let mut budget = super::BumpBudget {
        tokens: 0.0,
        refilled: later,
        owed: false,
    };
    let bumps = (0..1100)
        .filter(|i| budget.take(true, later + Duration::from_millis(*i)))
        .count();
    assert_eq!(bumps, 2);
}

/// What node `a` reports when it serves `app`/`api` from package `p`.
fn serving(app: &str) -> crate::api::ComponentStatus {
    crate::api::ComponentStatus {
        app: app.to_string(),
        component: "api".to_string(),
        package: "sha256:p".to_string(),
        state: crate::api::LoadState::Running,
        serving: Some("sha256:p".to_string()),
        error: None,
    }
}

/// Nodes "a" and "b", and app "web" of two replicas placed on them.
fn placed_on_a_and_b(now: Instant) -> Live {
    let mut live = cluster(&[("a", 1024 * MIB), ("b", 1024 * MIB)], 2, 64 * MIB, now);
    reconcile(&mut live, now, &config(), 0);
    live
}

/// `change` as a node reads it.
fn as_read(change: crate::api::DesiredChange<crate::api::SharedJson>) -> crate::api::DesiredChange {
    serde_json::from_slice(&serde_json::to_vec(&change).unwrap()).unwrap()
}

#[test]
fn a_node_brought_forward_by_changes_holds_the_whole_desired_state() {
    use super::desired::{DesiredLog, desired_for};
    let now = Instant::now();
    let mut live = placed_on_a_and_b(now);
    let mut log = DesiredLog::new(7);
    // What node "a" holds, and the version and epoch it applied.
    let mut held = crate::api::DesiredState::default();
    let (mut version, mut epoch) = (0, 0);
    let mut step = |live: &Live, at: u64| {
        log.refresh(live, at);
        let change = as_read(log.change_for("a", epoch, version));
        held.apply(&change);
        (version, epoch) = (at, log.epoch());
        assert_eq!(held, desired_for(live, "a"), "at version {at}");
        change
    };
    let first = step(&live, 10);
    assert!(first.full && first.members.is_some());
    assert_eq!(first.assignments.len(), 1);

    // Node "a" starts serving: only the app's routing changes.
    let a = live.nodes.get_mut("a").unwrap();
    assert_eq!(a.take_status(report(1, None, 1, &["web"], &[])), Some(true));
    let change = step(&live, 11);
    assert!(!change.full && change.assignments.is_empty() && change.members.is_none());
    assert_eq!(change.apps.len(), 1);
    assert_eq!(change.apps[0].endpoints["api"].len(), 1);

    // Nothing changed: nothing is sent.
    let change = step(&live, 12);
    assert_eq!(change, crate::api::DesiredChange::default());

    // A second app: its routing, and its assignment where it is placed.
    let mut shop = (**live.specs.get("sha256:p").unwrap()).clone();
    shop.name = "shop".to_string();
    live.specs.insert("sha256:q".to_string(), Arc::new(shop));
    live.apps.insert(
        "shop".to_string(),
        AppRecord {
            name: "shop".to_string(),
            package: "sha256:q".to_string(),
            scale: BTreeMap::from([("api".to_string(), Replicas::Fixed(2))]),
            generation: 1,
            ..AppRecord::new("")
        },
    );
    reconcile(&mut live, now, &config(), 0);
    let change = step(&live, 13);
    assert_eq!(change.apps.len(), 1);
    assert_eq!(change.apps[0].name, "shop");
    assert_eq!(change.assignments.len(), 1);

    // The first app goes: its routing and assignment are removed.
    live.apps.remove("web");
    reconcile(&mut live, now, &config(), 0);
    let change = step(&live, 14);
    assert_eq!(change.removed_apps, ["web"]);
    assert_eq!(
        change.unassigned,
        [("web".to_string(), "api".to_string(), "sha256:p".to_string())]
    );

    // A node leaves the cluster: the members change.
    live.nodes.remove("b");
    reconcile(&mut live, now, &config(), 0);
    let change = step(&live, 15);
    assert_eq!(change.members.map(|m| m.len()), Some(1));

    // A node of another run of the control plane gets everything.
    log.refresh(&live, 15);
    assert!(log.change_for("a", 3, 15).full);
    // As does one claiming a version not reached yet.
    assert!(log.change_for("a", log.epoch(), 99).full);
}

/// The desired state worked out from what changed stays what a
/// computation from scratch gives (checked on every refresh in debug
/// builds) through the changes no deploy or controller pass announces: a
/// node falling silent, its status forgotten, leaving the cluster while
/// replicas still name it, and joining again.
#[test]
fn the_desired_state_worked_out_from_changes_matches_one_from_scratch() {
    use super::desired::{DesiredLog, desired_for};
    let now = Instant::now();
    let mut live = placed_on_a_and_b(now);
    let mut log = DesiredLog::new(1);
    let mut version = 0;
    let mut refresh = |live: &Live| {
        version += 1;
        log.refresh(live, version);
        let change = as_read(log.change_for("b", 0, 0));
        let mut held = crate::api::DesiredState::default();
        held.apply(&change);
        assert_eq!(held, desired_for(live, "b"), "at version {version}");
        change
    };
    refresh(&live);
    for name in ["a", "b"] {
        let node = live.nodes.get_mut(name).unwrap();
        assert_eq!(
            node.take_status(report(1, None, 1, &["web"], &[])),
            Some(true)
        );
    }
    let both = refresh(&live);
    assert_eq!(both.apps[0].endpoints["api"].len(), 2);
    // "b" goes down: it is no endpoint, and still holds its assignment.
    let b = live.nodes.get_mut("b").unwrap();
    b.down = true;
    b.forget_status();
    let down = refresh(&live);
    assert_eq!(down.apps[0].endpoints["api"].len(), 1);
    assert_eq!(down.assignments.len(), 1);
    // "b" leaves while its replica still names it; then joins again.
    let b = live.nodes.remove("b").unwrap();
    refresh(&live);
    live.nodes.insert("b".to_string(), b);
    let back = refresh(&live);
    assert_eq!(back.assignments.len(), 1, "{back:?}");
    let b = live.nodes.get_mut("b").unwrap();
    b.down = false;
    assert_eq!(b.take_status(report(2, None, 1, &["web"], &[])), Some(true));
    assert_eq!(refresh(&live).apps[0].endpoints["api"].len(), 2);
}

/// A node naming versions the control plane never sent gets its answer
/// put together each time, and keeps no encoding: it cannot fill the
/// shared encodings with near-whole copies of the routing.
#[test]
fn encodings_are_kept_only_for_versions_nodes_were_sent() {
    use super::desired::DesiredLog;
    let now = Instant::now();
    let mut live = placed_on_a_and_b(now);
    let mut log = DesiredLog::new(1);
    log.refresh(&live, 10);
    let a = live.nodes.get_mut("a").unwrap();
    assert_eq!(a.take_status(report(1, None, 1, &["web"], &[])), Some(true));
    log.refresh(&live, 20);
    for since in 11..20 {
        let change = as_read(log.change_for("b", 1, since));
        assert!(!change.full && change.apps.len() == 1, "{change:?}");
    }
    assert_eq!(log.encoded_bytes(), 0);
    // A version sent is shared by every node at it.
    let change = as_read(log.change_for("b", 1, 10));
    assert_eq!(change.apps.len(), 1);
    assert!(log.encoded_bytes() > 0);
}

/// A report of run `run`, numbered `seq`, changing `base` (whole when
/// none): `serving` apps served, `removed` apps gone.
fn report(
    run: u64,
    base: Option<u64>,
    seq: u64,
    serving_apps: &[&str],
    removed: &[&str],
) -> crate::api::StatusReport {
    crate::api::StatusReport {
        run,
        seq,
        base,
        components: serving_apps.iter().map(|app| serving(app)).collect(),
        removed: removed
            .iter()
            .map(|app| (app.to_string(), "api".to_string(), "sha256:p".to_string()))
            .collect(),
    }
}

#[test]
fn a_node_status_is_taken_whole_then_by_changes_and_never_backwards() {
    let now = Instant::now();
    let mut node = node("a", 1024 * MIB, now);
    // A change from a status the control plane does not hold is refused.
    assert_eq!(node.take_status(report(1, Some(5), 6, &["x"], &[])), None);
    assert_eq!(node.status_seq, None);

    assert_eq!(
        node.take_status(report(1, None, 10, &["x", "y"], &[])),
        Some(true)
    );
    // A state change that leaves what is served alone.
    let mut loading = report(1, Some(10), 11, &["y"], &[]);
    loading.components[0].state = crate::api::LoadState::Loading;
    assert_eq!(node.take_status(loading), Some(false));
    assert_eq!(
        node.component("y", "api", "sha256:p").map(|c| c.state),
        Some(crate::api::LoadState::Loading)
    );
    // A removal, and a repeat from an older base (an answer the node never
    // read): both taken.
    assert_eq!(
        node.take_status(report(1, Some(11), 12, &[], &["x"])),
        Some(true)
    );
    assert_eq!(
        node.take_status(report(1, Some(10), 13, &[], &["x"])),
        Some(false)
    );
    assert!(node.component("x", "api", "sha256:p").is_none());
    assert_eq!(node.status_seq, Some((1, 13)));
    // Older than the status held, change or whole: it arrived late.
    assert_eq!(node.take_status(report(1, Some(10), 12, &["x"], &[])), None);
    assert_eq!(node.take_status(report(1, None, 12, &["x"], &[])), None);
    assert!(node.component("x", "api", "sha256:p").is_none());
    // A base past the status held (lost by the control plane): refused.
    assert_eq!(node.take_status(report(1, Some(20), 21, &["x"], &[])), None);
    // A change of another run of the node is refused; its whole status is
    // taken even numbered lower (the node's clock went back).
    assert_eq!(node.take_status(report(0, Some(13), 14, &["x"], &[])), None);
    assert_eq!(
        node.take_status(report(0, None, 5, &["z"], &[])),
        Some(true)
    );
    assert_eq!(node.status_seq, Some((0, 5)));
    // Down: forgotten, so the node must send everything again.
    node.forget_status();
    assert_eq!(node.take_status(report(0, Some(5), 22, &[], &[])), None);
    assert_eq!(
        node.take_status(report(0, None, 22, &["z"], &[])),
        Some(true)
    );
}

#[test]
fn a_node_cannot_report_more_components_than_the_bound() {
    let now = Instant::now();
    let mut node = node("a", 1024 * MIB, now);
    let many = |from: usize, count: usize| crate::api::StatusReport {
        run: 1,
        seq: (from + count) as u64,
        base: (from > 0).then_some(from as u64),
        components: (from..from + count)
            .map(|i| serving(&format!("app-{i}")))
            .collect(),
        removed: Vec::new(),
    };
    let max = super::MAX_COMPONENTS_PER_NODE;
    assert_eq!(node.take_status(many(0, max + 1)), None);
    assert_eq!(node.take_status(many(0, max - 1)), Some(true));
    // Changes adding past the bound are refused; the node sends all next,
    // and a whole status is bounded too.
    assert_eq!(node.take_status(many(max - 1, 2)), None);
    assert_eq!(node.take_status(many(max - 1, 1)), Some(true));
}

#[test]
fn a_certificate_lifetime_too_short_to_renew_or_longer_than_its_cap_is_refused_by_flag() {
    let day = Duration::from_secs(24 * 3600);
    let week = 7 * day;
    assert!(super::check_lifetime("--workload-cert-lifetime", day, week).is_ok());
    assert!(super::check_lifetime("--workload-cert-lifetime", week, week).is_ok());
    let long = super::check_lifetime("--workload-cert-lifetime", 30 * day, week)
        .unwrap_err()
        .to_string();
    assert_eq!(
        long,
        "--workload-cert-lifetime 30days is too long: at most 7days"
    );
    let short = super::check_lifetime("--node-cert-lifetime", Duration::from_secs(1), week)
        .unwrap_err()
        .to_string();
    assert_eq!(
        short,
        "--node-cert-lifetime 1s is too short: certificates must live at least 2s"
    );
}

#[test]
fn a_component_nothing_can_reach_and_a_caller_the_app_lacks_are_warned_of_at_deploy() {
    let now = Instant::now();
    let live = cluster(&[("n1", 1 << 30)], 1, 64 << 20, now);
    let mut spec = (*live.specs["sha256:p"]).clone();
    let mut plan = spec.components["api"].clone();
    assert!(spec.reachability_warnings().is_empty());
    plan.route = None;
    spec.components.insert("worker".to_string(), plan.clone());
    plan.allow_callers = vec!["web/nosuch".to_string().try_into().unwrap()];
    spec.components.insert("store".to_string(), plan);
    assert_eq!(
        spec.reachability_warnings(),
        [
            "component \"store\" allows calls from \"web/nosuch\", but app \"web\" has no component \"nosuch\"",
            "component \"worker\" has neither a route nor allow_callers: nothing can reach it",
        ]
    );
}

#[test]
fn the_autoscaler_follows_demand_prefers_the_holding_node_and_caps_absurd_reports() {
    let now = Instant::now();
    let nodes = [("a", 1024 * MIB), ("b", 1024 * MIB), ("c", 1024 * MIB)];
    let mut live = cluster(&nodes, 1, 64 * MIB, now);
    live.apps
        .get_mut("web")
        .unwrap()
        .scale
        .insert("api".into(), Replicas::Auto { min: 0, max: 3 });
    reconcile(&mut live, now, &config(), 0);
    assert!(live.replicas.is_empty(), "min 0 and no demand: no replica");

    let report = |live: &mut Live, node: &str, concurrency: f64, held: u32| {
        let load = crate::api::ComponentLoad {
            app: "web".to_string(),
            component: "api".to_string(),
            concurrency,
            held,
            versions: Vec::new(),
            traffic: None,
        };
        live.nodes.get_mut(node).unwrap().load =
            std::collections::HashMap::from([(("web".to_string(), "api".to_string()), load)]);
    };
    // Requests held on "b": one replica, placed on "b".
    report(&mut live, "b", 0.0, 5);
    reconcile(&mut live, now, &config(), 0);
    let placed = placement(&live);
    assert_eq!(
        placed,
        vec![("web/api/0".to_string(), Some("b".to_string()))]
    );
    let events = live.events.read(Some("web"), 0);
    assert!(
        events
            .iter()
            .any(|e| e.message == "web/api 0 -> 1: 5 requests waiting for a replica"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == "placed" && e.message.contains("requested=2.00")),
        "{events:?}"
    );

    // Once a replica serves, no node's word of held requests counts: "c"
    // claiming a thousand changes nothing.
    let serving = crate::api::ComponentStatus {
        app: "web".to_string(),
        component: "api".to_string(),
        package: "sha256:p".to_string(),
        state: crate::api::LoadState::Running,
        serving: Some("sha256:p".to_string()),
        error: None,
    };
    live.nodes.get_mut("b").unwrap().components.insert(
        "web".to_string(),
        std::collections::HashMap::from([(("api".to_string(), "sha256:p".to_string()), serving)]),
    );
    report(&mut live, "c", 0.0, 1000);
    reconcile(&mut live, now, &config(), 0);
    assert_eq!(placement(&live).len(), 1);
    report(&mut live, "c", 0.0, 0);

    // "b" claims a billion in flight: counted as no more than its one
    // replica can take (200), and never past max.
    report(&mut live, "b", 1e9, 0);
    reconcile(&mut live, now, &config(), 0);
    let placed = placement(&live);
    assert_eq!(placed.len(), 3, "{placed:?}");
    let mut on: Vec<_> = placed.iter().filter_map(|(_, n)| n.clone()).collect();
    on.sort();
    assert_eq!(on, vec!["a", "b", "c"], "spread over the nodes");
    // Both placements of the pass are one event.
    let last = live.events.read(Some("web"), 0).pop().unwrap();
    assert_eq!(last.kind, "placed");
    assert!(
        last.message
            .starts_with("2 replicas of web/api placed: web/api/1 on "),
        "{}",
        last.message
    );

    // Quiet for the whole scale-down delay (30 s): back to none.
    report(&mut live, "b", 0.0, 0);
    for s in 1..=31 {
        let at = now + Duration::from_secs(s);
        for node in live.nodes.values_mut() {
            node.last_seen = at;
        }
        reconcile(&mut live, at, &config(), 0);
        if s < 30 {
            assert_eq!(live.replicas.len(), 3, "still 3 at {s}s");
        }
    }
    assert!(live.replicas.is_empty(), "{:?}", placement(&live));
    assert!(
        live.events
            .read(None, 0)
            .iter()
            .any(|e| e.message == "web/api 3 -> 0: no requests for 30s")
    );
}

#[test]
fn scale_down_removes_pending_first_then_from_the_fullest_node_newest_first() {
    let record = |i: u64, node: Option<&str>| ReplicaRecord {
        id: format!("web/api/{i}"),
        app: "web".to_string(),
        component: "api".to_string(),
        node: node.map(str::to_string),
        created_unix: 0,
        package: "sha256:p".to_string(),
    };
    // 10,000 replicas: a: 5,000, b: 3,000, c: 1,990, and 10 pending.
    let replicas: Vec<ReplicaRecord> = (0..10_000u64)
        .map(|i| {
            let node = match i {
                0..5_000 => Some("a"),
                5_000..8_000 => Some("b"),
                8_000..9_990 => Some("c"),
                _ => None,
            };
            record(i, node)
        })
        .collect();
    let refs: Vec<&ReplicaRecord> = replicas.iter().collect();
    let order = super::reconcile::scale_down_order(&refs, 9_997);
    assert_eq!(order.len(), 9_997);
    assert_eq!(order[0], "web/api/9999", "pending, newest first");
    assert_eq!(order[9], "web/api/9990");
    assert_eq!(
        order[10], "web/api/4999",
        "then the newest on the fullest node"
    );
    let removed: std::collections::HashSet<&String> = order.iter().collect();
    let mut left: Vec<&str> = replicas
        .iter()
        .filter(|r| !removed.contains(&r.id))
        .filter_map(|r| r.node.as_deref())
        .collect();
    left.sort_unstable();
    assert_eq!(left, vec!["a", "b", "c"], "the three left stay spread");
}

#[test]
fn a_replica_failing_to_start_on_its_node_moves_once_to_each_node_that_can_take_it() {
    let now = Instant::now();
    let mut live = cluster(&[("a", 1024 * MIB), ("b", 1024 * MIB)], 1, 64 * MIB, now);
    reconcile(&mut live, now, &config(), 0);
    let first = live.replicas.values().next().unwrap().node.clone().unwrap();
    let other = if first == "a" { "b" } else { "a" };
    let fail_on = |live: &mut Live, node: &str| {
        let failed = crate::api::ComponentStatus {
            state: crate::api::LoadState::Failed,
            serving: None,
            error: Some("disk full".to_string()),
            ..serving("web")
        };
        live.nodes.get_mut(node).unwrap().components.insert(
            "web".to_string(),
            std::collections::HashMap::from([(
                ("api".to_string(), "sha256:p".to_string()),
                failed,
            )]),
        );
    };
    let at = |live: &mut Live, later: Instant| {
        for node in live.nodes.values_mut() {
            node.last_seen = later;
        }
        reconcile(live, later, &config(), 0);
        live.replicas.values().next().unwrap().node.clone().unwrap()
    };
    fail_on(&mut live, &first);
    assert_eq!(at(&mut live, now), first, "not at the first failure");
    let later = now + super::reconcile::MOVE_UNREADY_AFTER;
    assert_eq!(at(&mut live, later), other, "moved after failing a while");
    // It fails on the other node too: with nowhere left, it stays, and
    // says why.
    fail_on(&mut live, other);
    let id = live.replicas.keys().next().unwrap().clone();
    assert_eq!(at(&mut live, later), other);
    let much_later = later + super::reconcile::MOVE_UNREADY_AFTER * 2;
    assert_eq!(at(&mut live, much_later), other);
    assert!(
        live.pending[&id].contains("fails to start on its node"),
        "{:?}",
        live.pending.get(&id)
    );
}

#[test]
fn a_nodes_outcomes_count_from_a_baseline_bounded_and_only_for_what_it_runs() {
    use super::rollout::take_outcomes;
    use crate::api::VersionOutcomes;
    let now = Instant::now();
    let mut live = cluster(&[("a", 1024 * MIB)], 1, 64 * MIB, now);
    reconcile(&mut live, now, &config(), 0);
    // A replica of the old version beside the new one's, mid-rollout.
    live.replicas.insert(
        "web/api/9".to_string(),
        ReplicaRecord {
            id: "web/api/9".to_string(),
            app: "web".to_string(),
            component: "api".to_string(),
            node: Some("a".to_string()),
            created_unix: 0,
            package: "sha256:old".to_string(),
        },
    );
    live.apps.get_mut("web").unwrap().rollout = Some(crate::state::Rollout {
        from: "sha256:old".to_string(),
        started_unix_ms: 0,
        strategy: crate::state::RolloutStrategy::Rolling,
        done_unix_ms: None,
    });
    let report = |live: &mut Live, package: &str, answered: u64, failed: u64| {
        let version = VersionOutcomes {
            package: package.to_string(),
            answered,
            succeeded: answered - failed.min(answered),
            failed,
            reasons: BTreeMap::from([("x".repeat(1000), failed)]),
        };
        take_outcomes(live, "a", "web", "api", vec![version.clone(), version]);
    };
    let tally = |live: &Live, package: &str| {
        live.tallies
            .get(&("web".to_string(), package.to_string()))
            .map(|t| (t.answered, t.failed))
            .unwrap_or_default()
    };
    // The new version loaded after the rollout began: all of it counts,
    // once however often it is listed.
    report(&mut live, "sha256:p", 10, 10);
    assert_eq!(tally(&live, "sha256:p"), (10, 10));
    // The old version's counts go back to before the rollout: a baseline.
    report(&mut live, "sha256:old", 10_000, 9_000);
    assert_eq!(tally(&live, "sha256:old"), (0, 0));
    report(&mut live, "sha256:old", 10_010, 9_000);
    assert_eq!(tally(&live, "sha256:old"), (10, 0));
    // A version the node runs no replica of is not its to speak of.
    report(&mut live, "sha256:other", 50, 50);
    assert_eq!(tally(&live, "sha256:other"), (0, 0));
    // Absurd figures neither overflow nor claim more failures than answers.
    report(&mut live, "sha256:p", u64::MAX, u64::MAX);
    report(&mut live, "sha256:p", u64::MAX - 1, u64::MAX);
    let (answered, failed) = tally(&live, "sha256:p");
    assert_eq!(answered, u64::MAX);
    assert!(failed <= answered);
    let reasons = &live.tallies[&("web".to_string(), "sha256:p".to_string())].reasons;
    assert!(reasons.keys().all(|r| r.len() <= 40), "{reasons:?}");
}

#[test]
fn only_a_node_given_the_new_version_can_report_it_failed_and_only_where_it_serves_nowhere() {
    let now = Instant::now();
    let mut live = cluster(&[("a", 1024 * MIB), ("b", 1024 * MIB)], 1, 64 * MIB, now);
    live.apps.get_mut("web").unwrap().rollout = Some(crate::state::Rollout {
        from: "sha256:old".to_string(),
        started_unix_ms: 0,
        strategy: crate::state::RolloutStrategy::Rolling,
        done_unix_ms: None,
    });
    reconcile(&mut live, now, &config(), 0);
    let holder = live.replicas.values().next().unwrap().node.clone().unwrap();
    let other = if holder == "a" { "b" } else { "a" };
    let failed = crate::api::ComponentStatus {
        state: crate::api::LoadState::Failed,
        serving: None,
        error: Some("disk on fire (attempt 1, next in 1s)".to_string()),
        ..serving("web")
    };
    // The node without a replica of it claims the new version failed.
    live.nodes.get_mut(other).unwrap().components.insert(
        "web".to_string(),
        std::collections::HashMap::from([(
            ("api".to_string(), "sha256:p".to_string()),
            failed.clone(),
        )]),
    );
    reconcile(&mut live, now, &config(), 0);
    assert!(
        live.apps["web"].failed.is_none(),
        "a node speaks only of what it runs"
    );
    // The node holding it says so: rolled back, the retry note dropped.
    live.nodes.get_mut(&holder).unwrap().components.insert(
        "web".to_string(),
        std::collections::HashMap::from([(("api".to_string(), "sha256:p".to_string()), failed)]),
    );
    reconcile(&mut live, now, &config(), 0);
    let failed = live.apps["web"].failed.clone().expect("rolled back");
    assert!(failed.reason.ends_with("disk on fire"), "{}", failed.reason);
}

#[test]
fn a_node_reports_traffic_only_of_components_it_holds() {
    let now = Instant::now();
    let mut entry = node("a", 1 << 30, now);
    let traffic = crate::api::Traffic {
        requests: 5,
        errors: 0,
        durations: vec![0; skiff_runtime::metrics::REQUEST_DURATION_BUCKETS.len() + 1],
        in_flight: 0,
        since_unix_ms: 0,
    };
    let load = crate::api::ComponentLoad {
        app: "web".to_string(),
        component: "api".to_string(),
        concurrency: 0.0,
        held: 0,
        versions: Vec::new(),
        traffic: Some(traffic),
    };
    // It says it holds web/api; the control plane assigned it nothing.
    entry.components.insert(
        "web".to_string(),
        std::collections::HashMap::from([(
            ("api".to_string(), "sha256:00".to_string()),
            crate::api::ComponentStatus {
                app: "web".to_string(),
                component: "api".to_string(),
                package: "sha256:00".to_string(),
                state: crate::api::LoadState::Running,
                serving: Some("sha256:00".to_string()),
                error: None,
            },
        )]),
    );
    entry.take_load(vec![load.clone()], &Default::default());
    assert!(entry.traffic.is_empty(), "a component not assigned to it");
    let assigned = std::collections::HashSet::from([("web".to_string(), "api".to_string())]);
    entry.take_load(vec![load.clone()], &assigned);
    assert!(!entry.traffic.is_empty(), "its own component");
    // Moved away: what it said of it is forgotten.
    entry.take_load(vec![], &Default::default());
    assert!(entry.traffic.is_empty());
}
