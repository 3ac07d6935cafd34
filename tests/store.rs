//! The cluster store's contract, kept by both stores: the embedded redb
//! file and a real etcd (Debian's etcd-server, on loopback). Then what is
//! etcd's alone: writers racing on one record, a damaged value, an etcd
//! that is not there.

mod support;

use skiff_orchestrator::api_client::ApiClient;
use skiff_orchestrator::state::{
    Applied, CertificateRecord, CertificateSource, ClusterSecrets, ClusterStore, EtcdStore,
    EtcdTarget, Leadership, NodeRecord, RedbStore, ReplicaChange, ReplicaRecord, Replicas,
    StateError,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::cluster::{Cluster, deploy_probe, one_at_a_time};
use support::etcd::Etcd;
use support::{Running, get, skiff, start_server, wait_until};

fn scale(pairs: &[(&str, u32)]) -> BTreeMap<String, Replicas> {
    pairs
        .iter()
        .map(|(c, n)| (c.to_string(), Replicas::Fixed(*n)))
        .collect()
}

fn node(name: &str) -> NodeRecord {
    NodeRecord {
        name: name.to_string(),
        labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
        memory: 1 << 30,
        ingress: "127.0.0.2:3000".to_string(),
        mesh: "127.0.0.2:4000".to_string(),
        cordoned: false,
        drained: false,
        incarnation: "0123".to_string(),
    }
}

fn replica(id: &str) -> ReplicaRecord {
    let mut parts = id.split('/');
    ReplicaRecord {
        id: id.to_string(),
        app: parts.next().unwrap().to_string(),
        component: parts.next().unwrap().to_string(),
        node: Some("edge-1".to_string()),
        created_unix: 1,
        package: "sha256:aa".to_string(),
    }
}

fn secrets(tag: &str) -> ClusterSecrets {
    ClusterSecrets {
        ca_cert_pem: format!("cert {tag}"),
        ca_key_pem: format!("key {tag}"),
        admin_token: format!("token {tag}"),
    }
}

/// What every store must do, on an empty one.
fn keeps_the_contract(store: &dyn ClusterStore) {
    // The cluster's secrets: created once, whoever asks second.
    assert_eq!(store.secrets().unwrap(), None);
    assert_eq!(store.create_secrets(secrets("a")).unwrap(), secrets("a"));
    assert_eq!(store.create_secrets(secrets("b")).unwrap(), secrets("a"));
    assert_eq!(store.secrets().unwrap(), Some(secrets("a")));

    // Apps: idempotent declarations, generations, scale.
    let web = scale(&[("api", 3)]);
    assert_eq!(
        store.apply_app("web", "sha256:aa", web.clone()).unwrap(),
        Applied::Created
    );
    assert_eq!(
        store.apply_app("web", "sha256:aa", web.clone()).unwrap(),
        Applied::Unchanged
    );
    assert_eq!(
        store.apply_app("web", "sha256:bb", web).unwrap(),
        Applied::Updated(2)
    );
    let (applied, record) = store.scale("web", "api", Replicas::Fixed(5)).unwrap();
    assert_eq!(applied, Applied::Updated(3));
    assert_eq!(record.generation, 3);
    assert_eq!(record.scale["api"], Replicas::Fixed(5));
    assert!(matches!(
        store.scale("web", "nope", Replicas::Fixed(1)),
        Err(StateError::UnknownComponent { .. })
    ));
    assert!(matches!(
        store.scale("none", "api", Replicas::Fixed(1)),
        Err(StateError::UnknownApp(_))
    ));
    assert_eq!(store.app("web").unwrap().unwrap().package, "sha256:bb");
    assert_eq!(store.app("none").unwrap(), None);
    store
        .apply_app("web2", "sha256:cc", scale(&[("api", 1)]))
        .unwrap();
    let names: Vec<String> = store.apps().unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["web", "web2"]);

    // Replicas, in more changes than one etcd transaction takes.
    let puts: Vec<ReplicaChange> = (0..300)
        .map(|i| ReplicaChange::Put(replica(&format!("web/api/{i}"))))
        .chain([ReplicaChange::Put(replica("web2/api/0"))])
        .collect();
    store.change_replicas(&puts).unwrap();
    assert_eq!(store.replicas().unwrap().len(), 301);
    let removes: Vec<ReplicaChange> = (0..150)
        .map(|i| ReplicaChange::Remove(format!("web/api/{i}")))
        .collect();
    store.change_replicas(&removes).unwrap();
    assert_eq!(store.replicas().unwrap().len(), 151);
    // One replica changed twice in one go (created, then placed): the
    // last change stands.
    let mut placed = replica("web/api/500");
    placed.node = Some("edge-2".to_string());
    store
        .change_replicas(&[
            ReplicaChange::Put(replica("web/api/500")),
            ReplicaChange::Put(placed.clone()),
            ReplicaChange::Put(replica("web/api/501")),
            ReplicaChange::Remove("web/api/501".to_string()),
        ])
        .unwrap();
    let stored = store.replicas().unwrap();
    assert!(stored.contains(&placed));
    assert!(!stored.iter().any(|r| r.id == "web/api/501"));

    // Deleting an app takes its replicas, and only its own ("web2"'s
    // ids start with "web" too).
    assert!(store.delete_app("web").unwrap());
    assert!(!store.delete_app("web").unwrap());
    let left: Vec<String> = store
        .replicas()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, ["web2/api/0"]);
    assert!(store.app("web").unwrap().is_none());

    // Nodes and join tokens: a token admits one node, once, unexpired.
    store.add_join_token("skt1.x.good", 2_000).unwrap();
    store.add_join_token("skt1.x.old", 1_000).unwrap();
    assert!(store.join_token_valid("skt1.x.good", 1_500).unwrap());
    assert!(!store.join_token_valid("skt1.x.old", 1_500).unwrap());
    assert!(!store.join_token_valid("skt1.x.unknown", 1_500).unwrap());
    assert!(
        !store
            .admit_node("skt1.x.old", &node("late"), 1_500)
            .unwrap()
    );
    assert!(
        store
            .admit_node("skt1.x.good", &node("edge-1"), 1_500)
            .unwrap()
    );
    assert!(
        !store
            .admit_node("skt1.x.good", &node("edge-2"), 1_500)
            .unwrap()
    );
    assert!(!store.join_token_valid("skt1.x.good", 1_500).unwrap());
    let mut moved = node("edge-1");
    moved.mesh = "127.0.0.2:5000".to_string();
    store.put_node(&moved).unwrap();
    assert_eq!(store.nodes().unwrap(), [moved]);
    assert!(store.delete_node("edge-1").unwrap());
    assert!(!store.delete_node("edge-1").unwrap());
    assert!(store.nodes().unwrap().is_empty());

    // Certificates, by domain (wildcards too), and ACME accounts, by
    // directory.
    let cert = |domain: &str, source| CertificateRecord {
        domain: domain.to_string(),
        chain_pem: format!("chain of {domain}"),
        key_pem: format!("key of {domain}"),
        source,
        added_unix: 7,
    };
    assert!(store.certificates().unwrap().is_empty());
    store
        .put_certificate(&cert("shop.example.com", CertificateSource::Acme))
        .unwrap();
    store
        .put_certificate(&cert("*.example.com", CertificateSource::Uploaded))
        .unwrap();
    store
        .put_certificate(&cert("shop.example.com", CertificateSource::Uploaded))
        .unwrap();
    assert_eq!(
        store.certificates().unwrap(),
        [
            cert("*.example.com", CertificateSource::Uploaded),
            cert("shop.example.com", CertificateSource::Uploaded)
        ]
    );
    assert!(store.delete_certificate("*.example.com").unwrap());
    assert!(!store.delete_certificate("*.example.com").unwrap());
    let directory = "https://acme.example/dir";
    assert_eq!(store.acme_account(directory).unwrap(), None);
    store.put_acme_account(directory, "{\"id\":1}").unwrap();
    store.put_acme_account("https://other/dir", "{}").unwrap();
    assert_eq!(
        store.acme_account(directory).unwrap().as_deref(),
        Some("{\"id\":1}")
    );

    assert!(store.set_aside_damaged().unwrap().is_empty());
    assert!(store.quarantined().unwrap().is_empty());
}

/// An etcd store on `etcd`, under a prefix of its own.
fn etcd_store(etcd: &Etcd, prefix: &str) -> EtcdStore {
    let target = EtcdTarget::parse(&format!("{}/{prefix}", etcd.store_arg())).unwrap();
    EtcdStore::connect(target).unwrap()
}

#[test]
fn the_embedded_store_keeps_the_contract() {
    let dir = support::temp_dir();
    let store = RedbStore::open(&dir.path().join("state.redb")).unwrap();
    keeps_the_contract(&store);
}

#[test]
fn etcd_keeps_the_contract_and_a_second_prefix_is_another_cluster() {
    let etcd = Etcd::start(1);
    keeps_the_contract(&etcd_store(&etcd, "one"));
    // Nothing of the first cluster shows under another prefix.
    keeps_the_contract(&etcd_store(&etcd, "two"));
}

#[test]
fn writers_racing_on_one_app_in_etcd_lose_no_update() {
    let etcd = Etcd::start(1);
    let stores: Vec<Arc<EtcdStore>> = (0..4)
        .map(|_| Arc::new(etcd_store(&etcd, "race")))
        .collect();
    stores[0]
        .apply_app("web", "sha256:aa", scale(&[("api", 0)]))
        .unwrap();
    // Four control planes each add one replica 25 times: every
    // read-modify-write must see the one before it.
    let writers: Vec<_> = stores
        .iter()
        .cloned()
        .map(|store| {
            std::thread::spawn(move || {
                for _ in 0..25 {
                    store
                        .update_app("web", &mut |current| {
                            let mut record = current.unwrap().clone();
                            let Replicas::Fixed(n) = record.scale["api"] else {
                                unreachable!()
                            };
                            record.scale.insert("api".into(), Replicas::Fixed(n + 1));
                            Ok(record)
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let app = stores[0].app("web").unwrap().unwrap();
    assert_eq!(app.scale["api"], Replicas::Fixed(100));
    assert_eq!(app.generation, 101);
}

#[test]
fn control_planes_creating_one_cluster_at_once_keep_one_ca() {
    let etcd = Etcd::start(1);
    let racers: Vec<_> = (0..4)
        .map(|i| {
            let store = etcd_store(&etcd, "ca");
            std::thread::spawn(move || store.create_secrets(secrets(&i.to_string())).unwrap())
        })
        .collect();
    let kept: Vec<ClusterSecrets> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(kept.iter().all(|k| *k == kept[0]), "{kept:?}");
}

#[test]
fn a_damaged_value_in_etcd_is_named_and_set_aside_and_the_rest_loads() {
    let etcd = Etcd::start(1);
    let store = etcd_store(&etcd, "damaged");
    store
        .apply_app("good", "sha256:aa", scale(&[("api", 1)]))
        .unwrap();
    put_raw(&etcd, "/damaged/apps/bad", b"{not json");
    put_raw(&etcd, "/damaged/replicas/bad/api/0", b"\xff\xfe");
    let error = store.apps().unwrap_err().to_string();
    assert!(error.contains("apps/bad"), "{error}");
    let set_aside = store.set_aside_damaged().unwrap();
    let named: Vec<String> = set_aside
        .iter()
        .map(|s| format!("{}/{}", s.table, s.key))
        .collect();
    assert_eq!(named, ["apps/bad", "replicas/bad/api/0"]);
    assert_eq!(
        store.quarantined().unwrap(),
        ["apps/bad", "replicas/bad/api/0"]
    );
    let names: Vec<String> = store.apps().unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["good"]);
    assert!(store.replicas().unwrap().is_empty());
}

/// Writes `value` at `key` in `etcd` with etcd's own client, as something
/// other than Skiff would.
fn put_raw(etcd: &Etcd, key: &str, value: &[u8]) {
    let endpoints = etcd.endpoints();
    let (key, value) = (key.to_string(), value.to_vec());
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let mut client = etcd_client::Client::connect(endpoints, None).await.unwrap();
            client.put(key, value, None).await.unwrap();
        });
}

#[test]
fn an_etcd_that_is_not_there_is_named_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let target = EtcdTarget::parse(&format!("etcd://127.0.0.1:{port}")).unwrap();
    let Err(error) = EtcdStore::connect(target) else {
        panic!("connected to nothing");
    };
    let message = error.to_string();
    assert!(matches!(error, StateError::Unavailable(_)), "{message}");
    assert!(
        message.contains(&format!("etcd at 127.0.0.1:{port}")),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(15), "{message}");
}

#[test]
fn store_addresses_are_read_strictly() {
    let target = EtcdTarget::parse("etcd://10.0.0.1:2379,etcd-2.internal:2379/prod").unwrap();
    assert_eq!(
        target.endpoints,
        ["http://10.0.0.1:2379", "http://etcd-2.internal:2379"]
    );
    assert_eq!(target.prefix, "/prod/");
    assert_eq!(
        EtcdTarget::parse("etcd://[::1]:2379").unwrap().endpoints,
        ["http://[::1]:2379"]
    );
    for bad in [
        "http://10.0.0.1:2379",
        "etcd://",
        "etcd://10.0.0.1",
        "etcd://10.0.0.1:0",
        "etcd://10.0.0.1:99999",
        "etcd://:2379",
        "etcd://user@10.0.0.1:2379",
        "etcd://10.0.0.1:2379,",
        "etcd://a:1;b:2",
        "etcd://10.0.0.1:2379/prod/apps",
        "etcd://10.0.0.1:2379/cluster",
    ] {
        let error = EtcdTarget::parse(bad).unwrap_err();
        assert!(error.contains("--store"), "{bad}: {error}");
    }
    let nested = EtcdTarget::parse("etcd://10.0.0.1:2379/prod/apps").unwrap_err();
    assert!(nested.contains("\"apps\""), "{nested}");
    let scheme = EtcdTarget::parse("etcd://http://10.0.0.1:2379").unwrap_err();
    assert!(scheme.contains("without http://"), "{scheme}");
    // A password in the address is refused, and not repeated.
    let secret = EtcdTarget::parse("etcd://root:hunter2@10.0.0.1:2379").unwrap_err();
    assert!(!secret.contains("hunter2"), "{secret}");
}

#[test]
fn a_deposed_leader_cannot_write_even_for_a_request_it_was_still_answering() {
    let etcd = Etcd::start(1);
    let (old, new) = (etcd_store(&etcd, "fence"), etcd_store(&etcd, "fence"));
    let old_lease = old.grant_lease(30).unwrap();
    assert_eq!(old.lead("https://old", old_lease).unwrap(), Leadership::Won);
    old.apply_app("web", "sha256:aa", scale(&[("api", 1)]))
        .unwrap();
    let new_lease = new.grant_lease(30).unwrap();
    assert_eq!(
        new.lead("https://new", new_lease).unwrap(),
        Leadership::Held(Some("https://old".to_string()))
    );
    // The old leader's lease ends (as when it expires while it is cut
    // off), and the other wins.
    old.revoke(old_lease).unwrap();
    assert_eq!(new.lead("https://new", new_lease).unwrap(), Leadership::Won);
    // A request the old one was still answering: refused, nothing written.
    assert!(matches!(
        old.apply_app("web", "sha256:bb", scale(&[("api", 9)])),
        Err(StateError::NotLeader)
    ));
    assert!(matches!(
        old.change_replicas(&[ReplicaChange::Put(replica("web/api/0"))]),
        Err(StateError::NotLeader)
    ));
    assert_eq!(new.app("web").unwrap().unwrap().package, "sha256:aa");
    assert!(new.replicas().unwrap().is_empty());
    new.apply_app("web", "sha256:cc", scale(&[("api", 2)]))
        .unwrap();
    // An expired lease is said as such, not as an error.
    assert!(!old.keep_alive(old_lease).unwrap());
}

/// The replica ids of `app` and where each runs.
fn placement(cluster: &Cluster, app: &str) -> Vec<(String, Option<String>)> {
    cluster
        .replicas(app)
        .into_iter()
        .map(|(id, node, _)| (id, node))
        .collect()
}

#[test]
fn a_control_plane_on_etcd_survives_its_own_death_and_etcd_members_dying() {
    let mut etcd = Etcd::start(3);
    let store = etcd.store_arg();
    let mut cluster = Cluster::start(2, &["--store", &store]);
    deploy_probe(&cluster, "hello", 2);
    let before = placement(&cluster, "hello");
    let node = cluster.nodes[0].process.url.clone();
    assert_eq!(get(&format!("{node}/version")).0, 200);
    // The cluster is in etcd: the data directory keeps only packages.
    for kept_elsewhere in ["state.redb", "ca.pem", "ca.key", "admin-token"] {
        assert!(
            !cluster.home().join("server").join(kept_elsewhere).exists(),
            "{kept_elsewhere} written to the data directory"
        );
    }

    // Killed and started again: the same cluster, nothing moved.
    let port = cluster.api.rsplit(':').next().unwrap().to_string();
    cluster.server.kill();
    cluster.server = start_server(
        cluster.home(),
        &format!("127.0.0.1:{port}"),
        &["--store", &store],
    );
    assert!(!cluster.server.banner.contains("Join a node with"));
    cluster.wait_running("hello", 2);
    assert_eq!(placement(&cluster, "hello"), before);
    let nodes = cluster.json(&["nodes"]);
    assert_eq!(nodes.as_array().unwrap().len(), 2, "{nodes}");

    // One member of three gone: quorum holds and writes go on.
    etcd.kill(0);
    cluster.cli(&["scale", "hello", "3"]);
    cluster.wait_running("hello", 3);

    // Two gone: writes are refused with the reason, reads and the data
    // plane go on.
    etcd.kill(1);
    let refused = cluster.cli_fails(&["scale", "hello", "1"]);
    assert!(
        refused.contains("unavailable") && refused.contains("etcd"),
        "{refused}"
    );
    assert_eq!(cluster.replicas("hello").len(), 3);
    assert_eq!(get(&format!("{node}/version")).0, 200);

    // Back: everything resumes, and the refused change was not made.
    etcd.restart(0);
    etcd.restart(1);
    etcd.wait_healthy();
    assert_eq!(cluster.replicas("hello").len(), 3);
    wait_until(Duration::from_secs(30), "a write once etcd is back", || {
        let output = skiff(cluster.home())
            .args(["scale", "hello", "1"])
            .output()
            .unwrap();
        output.status.success().then_some(())
    });
    cluster.wait_running("hello", 1);
}

#[test]
fn a_data_directory_of_another_cluster_is_refused_on_etcd() {
    let _serial = one_at_a_time();
    let etcd = Etcd::start(1);
    let home = support::temp_dir();
    // A cluster of its own, made with the embedded store.
    let mut embedded = start_server(home.path(), "127.0.0.1:0", &[]);
    embedded.kill();
    let refused = support::expect_failure(
        home.path(),
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            home.path().join("server").to_str().unwrap(),
            "--store",
            &etcd.store_arg(),
        ],
    );
    assert!(
        refused.contains("ca.pem") && refused.contains("another cluster"),
        "{refused}"
    );
    // A data directory in use by a control plane on etcd is refused to
    // another, whatever its store.
    let elsewhere = support::temp_dir();
    let data = elsewhere.path().join("server");
    let data = data.to_str().unwrap();
    let store = etcd.store_arg();
    let _running = Running::launch(
        elsewhere.path(),
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
            "--store",
            &store,
        ],
        "Control plane serving ",
    );
    for store in ["embedded", store.as_str()] {
        let in_use = support::expect_failure(
            elsewhere.path(),
            &[
                "server",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data,
                "--store",
                store,
            ],
        );
        assert!(
            in_use.contains("is in use by another control plane"),
            "{in_use}"
        );
    }
    assert!(!elsewhere.path().join("server/ca.pem").exists());
    // The lock is never taken through a link (a file elsewhere would be
    // created or truncated).
    let linked = support::temp_dir();
    std::fs::create_dir_all(linked.path().join("server")).unwrap();
    let victim = linked.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    std::os::unix::fs::symlink(&victim, linked.path().join("server/lock")).unwrap();
    let refused = support::expect_failure(
        linked.path(),
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            linked.path().join("server").to_str().unwrap(),
        ],
    );
    assert!(refused.contains("must not be a link"), "{refused}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    // Credentials in --store are refused without being repeated.
    let secret = support::expect_failure(
        linked.path(),
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "etcd://admin:pw@d@127.0.0.1:1",
        ],
    );
    assert!(
        !secret.contains("pw@") && !secret.contains("admin"),
        "{secret}"
    );
    let unreachable = support::expect_failure(
        home.path(),
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "etcd://127.0.0.1:1",
        ],
    );
    assert!(unreachable.contains("etcd at 127.0.0.1:1"), "{unreachable}");
    assert_eq!(
        unreachable.matches("unavailable").count(),
        1,
        "{unreachable}"
    );
}

/// Starts another control plane of `cluster` on `store`, with a data
/// directory of its own (`server-N`).
fn another_server(cluster: &Cluster, n: usize, store: &str) -> Running {
    let data = cluster.home().join(format!("server-{n}"));
    Running::launch(
        cluster.home(),
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--store",
            store,
        ],
        "Control plane serving ",
    )
}

/// What the control plane at `url` says of itself (`role`: `leader` or
/// `standby`, and a standby's `leader`); `None` when it does not answer.
fn health(cluster: &Cluster, url: &str) -> Option<serde_json::Value> {
    let tls = skiff_orchestrator::mesh::tls::client_trusting(&cluster.ca_pem()).unwrap();
    // One server only: no failover to another that would answer for it.
    let client = ApiClient::new(url, tls, None);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(client.get::<serde_json::Value>("/v1/health"))
        .ok()
}

fn role(cluster: &Cluster, url: &str) -> Option<String> {
    health(cluster, url)?["role"].as_str().map(str::to_string)
}

/// Waits until exactly one of `urls` leads; its index.
fn leader_of(cluster: &Cluster, urls: &[String]) -> usize {
    wait_until(Duration::from_secs(20), "one control plane to lead", || {
        let leading: Vec<usize> = (0..urls.len())
            .filter(|&i| role(cluster, &urls[i]).as_deref() == Some("leader"))
            .collect();
        (leading.len() == 1).then(|| leading[0])
    })
}

#[test]
fn three_control_planes_on_one_etcd_hand_over_when_the_leader_is_killed() {
    let etcd = Etcd::start(3);
    let store = etcd.store_arg();
    let mut cluster = Cluster::start(0, &["--store", &store]);
    let mut servers = vec![cluster.api.clone()];
    leader_of(&cluster, &servers);
    let standbys: Vec<Running> = (2..=3)
        .map(|n| another_server(&cluster, n, &store))
        .collect();
    servers.extend(standbys.iter().map(|s| s.url.clone()));
    // The last one started printed every control plane in its join line,
    // and the CLI knows them all.
    let banner = &standbys[1].banner;
    assert!(
        servers.iter().all(|url| banner.contains(url.as_str())),
        "{banner}"
    );
    assert_eq!(leader_of(&cluster, &servers), 0);
    // Nodes given one control plane, and the CLI pointed at a standby,
    // find the leader.
    for i in 1..=3 {
        cluster.add_node(i);
    }
    deploy_probe(&cluster, "hello", 3);
    let before = placement(&cluster, "hello");
    // A standby names the leader.
    let standby = health(&cluster, &servers[2]).unwrap();
    assert_eq!(standby["role"], "standby", "{standby}");
    assert_eq!(standby["leader"], servers[0].as_str(), "{standby}");

    // The leader is killed: another takes over within seconds, with the
    // same replicas on the same nodes.
    let killed_at = Instant::now();
    cluster.server.kill();
    leader_of(&cluster, &servers[1..]);
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(15), "took over after {took:?}");
    eprintln!("a standby led {took:?} after the leader was killed");
    cluster.wait_running("hello", 3);
    assert_eq!(placement(&cluster, "hello"), before);
    for node in &cluster.nodes {
        let (status, body) = get(&node.process.at("/version"));
        assert_eq!(
            status,
            200,
            "{}: {body}\n{}\nstandbys:\n{}\n{}",
            node.name,
            node.process.stderr(),
            standbys[0].stderr(),
            standbys[1].stderr()
        );
    }

    // The new leader deploys (the package goes to it) and scales, and
    // every node follows it.
    deploy_probe(&cluster, "second", 2);
    cluster.cli(&["scale", "hello", "4"]);
    cluster.wait_running("hello", 4);
    let ids: Vec<String> = cluster.replicas("hello").into_iter().map(|r| r.0).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{ids:?}");
    let nodes = cluster.json(&["nodes"]);
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["state"] == "ready"),
        "{nodes}"
    );

    // A standby that froze past its lease's life takes part again; and a
    // leader that freezes, rather than dies, is replaced: nodes turn to
    // the new one in time, nothing moves, and the frozen one stands by
    // once it wakes.
    let leading = leader_of(&cluster, &servers);
    let other = 3 - leading;
    let before = placement(&cluster, "hello");
    standbys[other - 1].signal("STOP");
    std::thread::sleep(Duration::from_secs(6));
    standbys[other - 1].signal("CONT");
    standbys[leading - 1].signal("STOP");
    wait_until(Duration::from_secs(30), "the other standby to lead", || {
        (role(&cluster, &servers[other]).as_deref() == Some("leader")).then_some(())
    });
    // Past the new leader's grace for nodes still waiting on the frozen
    // one, and past --down-after.
    std::thread::sleep(Duration::from_secs(16));
    let on = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", servers[other].as_str()]);
        cluster.json(&all)
    };
    let nodes = on(&["nodes"]);
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["state"] == "ready"),
        "{nodes}"
    );
    let after: Vec<(String, Option<String>)> = on(&["ps", "hello"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["node"].as_str().map(str::to_string),
            )
        })
        .collect();
    let mut before = before;
    let mut after = after;
    before.sort();
    after.sort();
    assert_eq!(after, before);
    standbys[leading - 1].signal("CONT");
    wait_until(
        Duration::from_secs(20),
        "the frozen leader to stand by",
        || (role(&cluster, &servers[leading]).as_deref() == Some("standby")).then_some(()),
    );
    drop(standbys);
}
