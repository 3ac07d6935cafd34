//! Joins and heartbeats on a real control plane's state (its store, CA
//! and live state, in a temporary directory), called directly: no HTTP, no
//! node process.

use super::Refused;
use super::{heartbeat, members, nodes};
use crate::api::{
    ComponentStatus, GuestLine, JoinRequest, LoadState, StatusReport, SyncRequest, SyncResponse,
};
use crate::control::{ControlPlane, ControlPlaneConfig, Shared};
use crate::mesh::NodeCert;
use crate::state::ReplicaRecord;
use std::collections::BTreeMap;
use std::sync::Arc;

const GIB: u64 = 1 << 30;

/// A control plane started in a temporary directory (its API bound to a
/// free loopback port, never served).
async fn control_plane() -> (Arc<Shared>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = ControlPlaneConfig::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    let plane = ControlPlane::start(config).await.unwrap();
    (plane.shared, dir)
}

fn token(shared: &Shared) -> String {
    shared.new_join_token().unwrap().token
}

fn join_request(token: &str, name: &str, memory: u64) -> JoinRequest {
    let (_, csr_pem) = crate::mesh::NodeIdentity::request().unwrap();
    JoinRequest {
        token: token.to_string(),
        name: name.to_string(),
        csr_pem,
        labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
        memory,
    }
}

/// Joins node `name` offering `memory`; its certificate's identity.
fn joined(shared: &Shared, name: &str, memory: u64) -> NodeCert {
    members::join(shared, join_request(&token(shared), name, memory)).unwrap();
    let live = shared.live.lock().unwrap();
    NodeCert {
        name: name.to_string(),
        incarnation: live.nodes[name].record.incarnation.clone(),
    }
}

/// A heartbeat of a node that has applied nothing and holds nothing.
fn first_heartbeat(memory: u64) -> SyncRequest {
    SyncRequest {
        version: 0,
        epoch: 0,
        memory,
        used: 0,
        pressure: false,
        ingress: "127.0.0.1:18080".to_string(),
        mesh: "127.0.0.1:18443".to_string(),
        status: StatusReport {
            run: 7,
            seq: 1,
            base: None,
            components: Vec::new(),
            removed: Vec::new(),
        },
        logs_first_seq: 1,
        logs: Vec::new(),
        load: Vec::new(),
        tls: String::new(),
        https: None,
    }
}

/// Takes `sync` and answers it at once (as a heartbeat that is not held).
async fn beat(shared: &Shared, node: &NodeCert, sync: SyncRequest) -> SyncResponse {
    let taken = heartbeat::take(shared, node, sync).unwrap();
    let answer = heartbeat::answer(shared, node, &taken).await.unwrap();
    // As the node reads it.
    serde_json::from_slice(&serde_json::to_vec(&answer).unwrap()).unwrap()
}

/// Marks node `name` down, as the controller does when it falls silent.
fn mark_down(shared: &Shared, name: &str) {
    shared
        .live
        .lock()
        .unwrap()
        .nodes
        .get_mut(name)
        .unwrap()
        .down = true;
}

fn stored_node(shared: &Shared, name: &str) -> Option<crate::state::NodeRecord> {
    shared
        .store
        .nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.name == name)
}

#[tokio::test]
async fn a_join_token_admits_one_node_and_is_used_up() {
    let (shared, _dir) = control_plane().await;
    let token = token(&shared);
    let issued = members::join(&shared, join_request(&token, "edge-1", 2 * GIB)).unwrap();
    assert!(issued.cert_pem.contains("BEGIN CERTIFICATE"));
    assert_eq!(issued.ca_pem, shared.ca.cert_pem());
    let record = stored_node(&shared, "edge-1").expect("the node is recorded");
    assert_eq!(record.memory, 2 * GIB);
    assert_eq!(record.labels["zone"], "a");
    assert_eq!(record.incarnation.len(), 32, "a fresh incarnation");
    let again = members::join(&shared, join_request(&token, "edge-2", GIB)).unwrap_err();
    assert!(
        matches!(&again, Refused::Unauthorized(m) if m.contains("already used")),
        "{again:?}"
    );
    assert!(stored_node(&shared, "edge-2").is_none());
}

#[tokio::test]
async fn an_unknown_token_is_refused_and_nothing_is_recorded() {
    let (shared, _dir) = control_plane().await;
    let refused = members::join(&shared, join_request("skt1.x.y", "edge-1", GIB)).unwrap_err();
    assert!(matches!(refused, Refused::Unauthorized(_)), "{refused:?}");
    assert!(shared.store.nodes().unwrap().is_empty());
    assert!(shared.live.lock().unwrap().nodes.is_empty());
}

#[tokio::test]
async fn refusals_before_the_token_is_checked_leave_it_usable() {
    let (shared, _dir) = control_plane().await;
    joined(&shared, "edge-1", GIB);
    let token = token(&shared);
    // A name already in the cluster, up or down.
    let taken = members::join(&shared, join_request(&token, "edge-1", GIB)).unwrap_err();
    assert!(
        matches!(&taken, Refused::Conflict(m) if m.contains("skiff forget edge-1")),
        "{taken:?}"
    );
    mark_down(&shared, "edge-1");
    let down = members::join(&shared, join_request(&token, "edge-1", GIB)).unwrap_err();
    assert!(
        matches!(&down, Refused::Conflict(m) if m.contains("(down)")),
        "{down:?}"
    );
    // The name the API is reached by.
    let host = members::join(&shared, join_request(&token, "LOCALHOST", GIB)).unwrap_err();
    assert!(
        matches!(&host, Refused::Invalid(m) if m.contains("reached by")),
        "{host:?}"
    );
    // Bad labels, and a request that is not a CSR.
    let mut labeled = join_request(&token, "edge-2", GIB);
    labeled
        .labels
        .insert("bad key!".to_string(), "x".to_string());
    assert!(matches!(
        members::join(&shared, labeled),
        Err(Refused::Invalid(_))
    ));
    let mut garbage = join_request(&token, "edge-2", GIB);
    garbage.csr_pem =
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            .to_string();
    assert!(matches!(
        members::join(&shared, garbage),
        Err(Refused::Invalid(_))
    ));
    // None of them used the token up.
    members::join(&shared, join_request(&token, "edge-2", GIB)).unwrap();
}

#[tokio::test]
async fn a_certificate_of_an_earlier_join_or_a_forgotten_node_speaks_for_nothing() {
    let (shared, _dir) = control_plane().await;
    let node = joined(&shared, "edge-1", GIB);
    let stale = NodeCert {
        incarnation: "0".repeat(32),
        ..node.clone()
    };
    for refused in [
        heartbeat::take(&shared, &stale, first_heartbeat(GIB)).err(),
        heartbeat::news(&shared, &stale).err(),
        members::member(&shared, &stale).err(),
    ] {
        assert!(
            matches!(refused, Some(Refused::Unauthorized(_))),
            "{refused:?}"
        );
    }
    assert_eq!(shared.live.lock().unwrap().nodes["edge-1"].heartbeats, 0);
    // Forgotten while its heartbeat was held: its answer is refused, and
    // its next heartbeat does not bring it back.
    let taken = heartbeat::take(&shared, &node, first_heartbeat(GIB)).unwrap();
    mark_down(&shared, "edge-1");
    nodes::forget(&shared, "edge-1").unwrap();
    assert!(matches!(
        heartbeat::answer(&shared, &node, &taken).await,
        Err(Refused::Unauthorized(_))
    ));
    assert!(heartbeat::take(&shared, &node, first_heartbeat(GIB)).is_err());
    assert!(stored_node(&shared, "edge-1").is_none());
}

#[tokio::test]
async fn a_heartbeat_stores_moved_addresses_and_never_raises_the_memory_declared() {
    let (shared, _dir) = control_plane().await;
    let node = joined(&shared, "edge-1", 2 * GIB);
    let answer = beat(&shared, &node, first_heartbeat(8 * GIB)).await;
    assert_eq!(answer.memory, 2 * GIB, "placed by what it declared");
    assert_eq!(answer.labels["zone"], "a");
    let record = stored_node(&shared, "edge-1").unwrap();
    assert_eq!(record.ingress, "127.0.0.1:18080");
    assert_eq!(record.mesh, "127.0.0.1:18443");
    assert_eq!(
        shared.live.lock().unwrap().nodes["edge-1"].memory(),
        2 * GIB
    );
    // Addresses changing again at once (a hostile node flapping them to
    // have the store written at its heartbeat rate) are not taken yet.
    let mut flapping = first_heartbeat(2 * GIB);
    flapping.mesh = "127.0.0.1:38443".to_string();
    beat(&shared, &node, flapping).await;
    assert_eq!(
        stored_node(&shared, "edge-1").unwrap().mesh,
        "127.0.0.1:18443"
    );
    // Restarted on other ports a while later, offering less.
    tokio::time::sleep(heartbeat::MOVE_EVERY).await;
    let mut moved = first_heartbeat(GIB / 2);
    moved.mesh = "127.0.0.1:28443".to_string();
    beat(&shared, &node, moved).await;
    assert_eq!(
        stored_node(&shared, "edge-1").unwrap().mesh,
        "127.0.0.1:28443"
    );
    assert_eq!(
        shared.live.lock().unwrap().nodes["edge-1"].memory(),
        GIB / 2
    );
}

#[tokio::test]
async fn a_heartbeat_naming_the_apis_own_address_is_refused_and_changes_nothing() {
    let (shared, _dir) = control_plane().await;
    let node = joined(&shared, "edge-1", GIB);
    let mut hostile = first_heartbeat(GIB);
    hostile.mesh = shared.api_addr.to_string();
    let refused = heartbeat::take(&shared, &node, hostile).err();
    assert!(
        matches!(&refused, Some(Refused::Invalid(m)) if m.contains("control plane's own API")),
        "{refused:?}"
    );
    assert_eq!(stored_node(&shared, "edge-1").unwrap().mesh, "");
    assert_eq!(shared.live.lock().unwrap().nodes["edge-1"].heartbeats, 0);
}

#[tokio::test]
async fn a_down_node_that_heartbeats_is_back_with_an_event() {
    let (shared, _dir) = control_plane().await;
    let node = joined(&shared, "edge-1", GIB);
    beat(&shared, &node, first_heartbeat(GIB)).await;
    mark_down(&shared, "edge-1");
    let version = *shared.version.borrow();
    beat(&shared, &node, first_heartbeat(GIB)).await;
    let live = shared.live.lock().unwrap();
    assert!(!live.nodes["edge-1"].down);
    let events = live.events.read(None, 0);
    assert!(
        events
            .iter()
            .any(|e| e.kind == "node_back" && e.message.contains("edge-1")),
        "{events:?}"
    );
    assert!(*shared.version.borrow() > version, "every node hears of it");
}

#[tokio::test]
async fn a_node_gets_the_whole_state_first_then_only_what_changed() {
    let (shared, _dir) = control_plane().await;
    let node = joined(&shared, "edge-1", GIB);
    let first = beat(&shared, &node, first_heartbeat(GIB)).await;
    let desired = first
        .desired
        .expect("a node that applied nothing gets the state");
    assert!(desired.full, "{desired:?}");
    assert!(desired.members.is_some_and(|m| m.contains_key("edge-1")));
    assert_eq!(first.status_seq, Some(1), "its whole status was taken");
    // Up to date both ways: nothing to send.
    let mut current = first_heartbeat(GIB);
    current.version = first.version;
    current.epoch = first.epoch;
    current.status.base = Some(1);
    current.status.seq = 1;
    let answer = beat(&shared, &node, current).await;
    assert!(answer.desired.is_none(), "{:?}", answer.desired);
    assert_eq!(answer.version, first.version);
}

#[tokio::test]
async fn a_status_change_against_a_status_not_held_is_not_taken() {
    let (shared, _dir) = control_plane().await;
    let node = joined(&shared, "edge-1", GIB);
    let serving = |seq| ComponentStatus {
        app: "web".to_string(),
        component: "api".to_string(),
        package: format!("sha256:{seq:064x}"),
        state: LoadState::Running,
        serving: Some(format!("sha256:{seq:064x}")),
        error: None,
    };
    let mut whole = first_heartbeat(GIB);
    whole.status.seq = 5;
    whole.status.components = vec![serving(5)];
    assert_eq!(beat(&shared, &node, whole).await.status_seq, Some(5));
    // A change from status 9, which the control plane never held: the
    // node is told it holds 5, and sends what changed since.
    let mut ahead = first_heartbeat(GIB);
    ahead.status.seq = 10;
    ahead.status.base = Some(9);
    ahead.status.components = vec![serving(10)];
    let answer = beat(&shared, &node, ahead).await;
    assert_eq!(answer.status_seq, Some(5));
    let live = shared.live.lock().unwrap();
    let held = live.nodes["edge-1"].component("web", "api", &format!("sha256:{:064x}", 5));
    assert!(held.is_some(), "the status held is kept");
    assert!(
        live.nodes["edge-1"]
            .component("web", "api", &format!("sha256:{:064x}", 10))
            .is_none()
    );
}

#[tokio::test]
async fn guest_lines_are_kept_once_and_only_for_apps_placed_on_the_node() {
    let (shared, _dir) = control_plane().await;
    let node = joined(&shared, "edge-1", GIB);
    let other = joined(&shared, "edge-2", GIB);
    shared.live.lock().unwrap().replicas.insert(
        "web/api/0".to_string(),
        ReplicaRecord {
            id: "web/api/0".to_string(),
            app: "web".to_string(),
            component: "api".to_string(),
            node: Some("edge-1".to_string()),
            created_unix: 0,
            package: String::new(),
        },
    );
    let line = |app: &str, text: &str| GuestLine {
        app: app.to_string(),
        component: "api".to_string(),
        stream: "stdout".to_string(),
        line: text.to_string(),
        unix_ms: 1,
        trace_id: String::new(),
    };
    let mut sync = first_heartbeat(GIB);
    sync.logs = vec![line("web", "one"), line("shop", "not placed here")];
    beat(&shared, &node, sync.clone()).await;
    // The same lines again (the answer was lost), then one more.
    sync.logs.push(line("web", "two"));
    beat(&shared, &node, sync).await;
    // Another node may not speak for edge-1's apps.
    let mut forged = first_heartbeat(GIB);
    forged.mesh = "127.0.0.1:19443".to_string();
    forged.logs = vec![line("web", "forged")];
    beat(&shared, &other, forged).await;
    let filter = crate::control::logs::LogFilter {
        component: None,
        trace_id: None,
    };
    let lines: Vec<String> = shared
        .logs
        .read("web", &filter, 0, None)
        .await
        .lines
        .into_iter()
        .map(|l| l.line.line)
        .collect();
    assert_eq!(lines, ["one", "two"]);
    assert!(
        shared
            .logs
            .read("shop", &filter, 0, None)
            .await
            .lines
            .is_empty()
    );
}

#[tokio::test]
async fn a_panic_while_the_state_is_locked_does_not_stop_the_control_plane() {
    let (shared, _dir) = control_plane().await;
    let poisoner = shared.clone();
    let failed = std::thread::spawn(move || {
        let _locked = poisoner.live.lock().unwrap();
        panic!("a handler fails while holding the state lock");
    })
    .join();
    assert!(failed.is_err());
    assert!(shared.live.is_poisoned());
    // Joins and heartbeats go on.
    let node = joined(&shared, "edge-1", GIB);
    let answer = beat(&shared, &node, first_heartbeat(GIB)).await;
    assert_eq!(answer.memory, GIB);
    assert!(!shared.live.is_poisoned());
}

#[tokio::test]
async fn certificates_go_once_to_nodes_serving_https_never_to_others_and_survive_a_restart() {
    let (shared, dir) = control_plane().await;
    let node = joined(&shared, "edge-1", GIB);
    // No certificates: nothing to send, and a node holding none is up to
    // date (its heartbeat is held as usual).
    let answer = beat(&shared, &node, first_heartbeat(GIB)).await;
    assert!(answer.tls.is_none());

    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["shop.example.com".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let request = crate::api::CertAddRequest {
        domain: "shop.example.com".to_string(),
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    let added = super::certs::add(&shared, request).unwrap();
    assert!(!added.replaced);
    assert_eq!(added.certificate.source, "uploaded");
    // Its expiry is a metric, for alerts.
    let mut registry = prometheus_client::registry::Registry::with_prefix("skiff");
    crate::control::metrics::register(&shared, &mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let expiry = format!(
        "skiff_app_certificate_expiry_timestamp_seconds{{domain=\"shop.example.com\",source=\"uploaded\"}} {}",
        added.certificate.not_after_unix
    );
    assert!(text.contains(&expiry), "{text}");
    // A node that serves no HTTPS is never sent a key.
    let answer = beat(&shared, &node, first_heartbeat(GIB)).await;
    assert!(answer.tls.is_none());
    let serving = || SyncRequest {
        https: Some("127.0.0.1:18443".to_string()),
        ..first_heartbeat(GIB)
    };
    let answer = beat(&shared, &node, serving()).await;
    let bundle = answer.tls.expect("the node is sent the certificates");
    assert_eq!(bundle.certificates.len(), 1);
    assert_eq!(bundle.certificates[0].key_pem, key.serialize_pem());
    // One that does not take it (an earlier release, a hostile node) is
    // not sent it again with every heartbeat, nor answered at once.
    let taken = heartbeat::take(&shared, &node, serving()).unwrap();
    assert!(!taken.tls_due_for_tests());
    assert!(
        heartbeat::answer(&shared, &node, &taken)
            .await
            .unwrap()
            .tls
            .is_none()
    );
    // Nor one holding another bundle and saying it serves HTTPS, then
    // not, then again.
    for https in [false, true, false, true] {
        let flipping = SyncRequest {
            https: https.then(|| "127.0.0.1:18443".to_string()),
            tls: "x".to_string(),
            ..first_heartbeat(GIB)
        };
        let taken = heartbeat::take(&shared, &node, flipping).unwrap();
        assert!(!taken.tls_due_for_tests(), "https: {https}");
        let answer = heartbeat::answer(&shared, &node, &taken).await.unwrap();
        assert!(answer.tls.is_none(), "https: {https}");
    }
    let holding = SyncRequest {
        tls: bundle.digest.clone(),
        ..serving()
    };
    assert!(beat(&shared, &node, holding).await.tls.is_none());

    // Read back from the store by the next control plane on the data
    // directory: the same bundle.
    drop(shared);
    let config = ControlPlaneConfig::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    let again = ControlPlane::start(config).await.unwrap().shared;
    assert_eq!(again.tls.borrow().full.digest, bundle.digest);
    super::certs::remove(&again, "shop.example.com").unwrap();
    assert_eq!(again.tls.borrow().full.digest, "");
    assert!(matches!(
        super::certs::remove(&again, "shop.example.com"),
        Err(Refused::NotFound(_))
    ));
}
