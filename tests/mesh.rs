//! End-to-end tests of the mesh between nodes: node certificates renewed
//! before they expire, a forgotten node refused everywhere until it joins
//! again, names and addresses that could be mistaken refused, and a guest
//! unable to make a forwarding node replay its request.

mod support;

use serde_json::Value;
use skiff_orchestrator::api_client::ApiClient;
use skiff_orchestrator::mesh::{Members, NodeIdentity};
use skiff_test_guests::{HELLO, HOSTILE};
use std::time::Duration;
use support::cluster::{
    API_REQUEST, Cluster, MESH_REQUEST, api_addr, app, nodes_of, only, saved_identity,
};
use support::tls::{self, CertInfo, unix_now};
use support::{Upstream, get, start_server, temp_dir, toml_path, wait_until, write_manifest};

#[test]
fn node_certificates_are_renewed_before_they_expire() {
    // Node certificates valid 10 s: each node renews about every 5 s.
    const LIFETIME: i64 = 10;
    let mut cluster = Cluster::start(2, &["--node-cert-lifetime", "10s"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let first: Vec<NodeIdentity> = names.iter().map(|n| saved_identity(&cluster, n)).collect();
    // Every certificate each node keeps, in order, read every 50 ms (each
    // lasts about 5 s there before the next replaces it).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kept = {
        let files: Vec<_> = names
            .iter()
            .map(|n| cluster.home().join(format!("node-{n}/node.pem")))
            .collect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut kept: Vec<Vec<CertInfo>> = vec![Vec::new(); files.len()];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (file, certs) in files.iter().zip(&mut kept) {
                    // Gone with the cluster when the test failed.
                    let Ok(pem) = std::fs::read_to_string(file) else {
                        return kept;
                    };
                    let cert = CertInfo::of_pem(&pem);
                    if certs.last() != Some(&cert) {
                        certs.push(cert);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            kept
        })
    };
    let app_dir = temp_dir();
    let app = app(app_dir.path(), "web", HELLO, 1, "");
    cluster.cli(&["deploy", &app, "--wait"]);
    let holder = cluster.wait_running("web", 1)[0].1.clone().unwrap();
    let other = cluster.nodes.iter().find(|n| n.name != holder).unwrap();

    // After each renewal, a new connection to the node's mesh endpoint
    // gets a renewed certificate, the control plane has recorded the
    // renewal, and a request forwarded over the mesh is answered.
    let mut presented: Vec<Vec<CertInfo>> = vec![Vec::new(); names.len()];
    for renewal in 1..=2 {
        for (i, node) in cluster.nodes.iter().enumerate() {
            let renewals = |stderr: &str, also: &str| {
                stderr
                    .lines()
                    .filter(|line| line.contains("node certificate renewed") && line.contains(also))
                    .count()
            };
            wait_until(
                Duration::from_secs(30),
                &format!("{} to renew its certificate {renewal} times", node.name),
                || (renewals(&node.process.stderr(), "") >= renewal).then_some(()),
            );
            let issued_for = format!("node={:?}", node.name);
            assert!(
                renewals(&cluster.server.stderr(), &issued_for) >= renewal,
                "the control plane issued {}'s renewals:\n{}",
                node.name,
                cluster.server.stderr()
            );
            let peer = cluster.nodes.iter().find(|n| n.name != node.name).unwrap();
            let tls = saved_identity(&cluster, &peer.name)
                .client_config(&only(&saved_identity(&cluster, &node.name)))
                .unwrap();
            let exchange = tls::exchange(&runtime, &node.mesh, &node.name, tls, MESH_REQUEST);
            let (cert, answer) = exchange.answer.unwrap();
            assert!(answer.starts_with("HTTP/1.1 "), "{answer:?}");
            let cert = CertInfo::of(&cert);
            assert_ne!(
                cert,
                CertInfo::of_pem(first[i].cert_pem()),
                "after renewal {renewal}, {} still serves its first certificate",
                node.name
            );
            presented[i].push(cert);
        }
        let (status, body) = get(&other.process.at("/"));
        assert_eq!(
            (status, body.as_str()),
            (200, "Hello from Skiff!\n"),
            "forwarded over the mesh after renewal {renewal}"
        );
    }

    // Past the first certificates' expiry, heartbeats and the mesh still
    // work, though the control plane and the mesh refuse those
    // certificates now: every connection uses a renewed one.
    let expiry = first.iter().map(|id| id.expires().unwrap()).max().unwrap();
    wait_until(
        Duration::from_secs(30),
        "the first certificates to expire",
        || (unix_now() > expiry + 1).then_some(()),
    );
    for (i, node) in cluster.nodes.iter().enumerate() {
        let peer = cluster.nodes.iter().find(|n| n.name != node.name).unwrap();
        let members = only(&saved_identity(&cluster, &peer.name));
        let old = first[i].client_config(&members).unwrap();
        let refused = tls::exchange(&runtime, &peer.mesh, &peer.name, old, MESH_REQUEST);
        assert_eq!(
            refused.answer.map(|(_, answer)| answer),
            Err(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateExpired
            )),
            "{}'s mesh endpoint and {}'s first certificate",
            peer.name,
            node.name
        );
        let old = first[i].control_plane_client_config().unwrap();
        let refused = tls::exchange(&runtime, api_addr(&cluster), "127.0.0.1", old, API_REQUEST);
        assert_eq!(
            refused.answer.map(|(_, answer)| answer),
            Err(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateExpired
            )),
            "the control plane and {}'s first certificate",
            node.name
        );
    }
    let nodes = cluster.json(&["nodes"]);
    for node in nodes.as_array().unwrap() {
        assert_eq!(node["state"], "ready", "{nodes}");
        assert!(node["last_seen_ms"].as_u64().unwrap() < 3_000, "{nodes}");
    }
    let (status, body) = get(&other.process.at("/"));
    assert_eq!(
        (status, body.as_str()),
        (200, "Hello from Skiff!\n"),
        "forwarded over the mesh"
    );

    // Each certificate was replaced at about half its life, well before
    // it expired, and served to new connections once it was.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let kept = kept.join().unwrap();
    for (i, name) in names.iter().enumerate() {
        let certs = &kept[i];
        assert!(certs.len() >= 3, "{name} renewed twice: {certs:?}");
        for pair in certs.windows(2) {
            let issued = |cert: &CertInfo| cert.not_after - LIFETIME;
            let after = issued(&pair[1]) - issued(&pair[0]);
            assert!(
                (LIFETIME / 2 - 1..=LIFETIME / 2 + 3).contains(&after),
                "{name} renewed {after} s into a {LIFETIME} s certificate: {certs:?}"
            );
        }
        for (renewal, cert) in presented[i].iter().enumerate() {
            let index = certs.iter().position(|c| c == cert);
            assert!(
                index.is_some_and(|index| index > renewal),
                "after renewal {}, {name} served {cert:?}; it kept {certs:?}",
                renewal + 1
            );
        }
    }

    // A node stops cleanly on SIGTERM, replicas and all.
    let node = cluster.nodes.pop().unwrap();
    assert!(node.process.terminate().success());
}

/// Sends a forwarded request to the mesh endpoint at `mesh` (node
/// `server`, checked against `members`) as `identity`: the answer's first
/// bytes, or why there was none.
fn mesh_answer(
    runtime: &tokio::runtime::Runtime,
    mesh: &str,
    server: &str,
    identity: &NodeIdentity,
    members: &Members,
) -> Result<String, String> {
    let tls = identity.client_config(members).unwrap();
    tls::exchange(runtime, mesh, server, tls, MESH_REQUEST)
        .answer
        .map(|(_, answer)| answer)
        .map_err(|e| e.to_string())
}

/// A node's API calls as `identity`: the statuses of a heartbeat, a
/// certificate renewal and a fetch of blob `digest`.
fn node_calls(
    runtime: &tokio::runtime::Runtime,
    cluster: &Cluster,
    identity: &NodeIdentity,
    digest: &str,
) -> Vec<Result<(), String>> {
    let api = ApiClient::new(
        &cluster.api,
        identity.control_plane_client_config().unwrap(),
        None,
    );
    let sync = serde_json::json!({
        "version": 0, "labels": {}, "memory": 1u64 << 30,
        "ingress": "127.0.0.2:1", "mesh": "127.0.0.2:2",
        "components": [], "logs_first_seq": 0, "logs": []
    });
    let (_, csr) = NodeIdentity::request().unwrap();
    let renew = serde_json::json!({ "csr_pem": csr });
    let status = |result: Result<Value, skiff_orchestrator::api_client::ApiError>| {
        result
            .map(|_| ())
            .map_err(|e| format!("{:?}: {e}", e.status()))
    };
    vec![
        status(runtime.block_on(api.post::<_, Value>("/v1/node/sync", &sync))),
        status(runtime.block_on(api.post::<_, Value>("/v1/node/renew", &renew))),
        runtime
            .block_on(api.send(
                http::Method::GET,
                &format!("/v1/node/blobs/{digest}"),
                None,
                Duration::from_secs(10),
            ))
            .map(|_| ())
            .map_err(|e| format!("{:?}: {e}", e.status())),
    ]
}

fn node_names(cluster: &Cluster) -> Vec<String> {
    cluster
        .json(&["nodes"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect()
}

fn node_state(cluster: &Cluster, name: &str) -> Option<String> {
    cluster
        .json(&["nodes"])
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .map(|n| n["state"].as_str().unwrap().to_string())
}

#[test]
fn a_forgotten_node_is_refused_everywhere_until_it_joins_again() {
    let mut cluster = Cluster::start(2, &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app_dir = temp_dir();
    cluster.cli(&[
        "deploy",
        &app(app_dir.path(), "web", HELLO, 2, ""),
        "--wait",
    ]);
    cluster.wait_running("web", 2);
    let package = cluster.json(&["apps"])[0]["package"]
        .as_str()
        .unwrap()
        .to_string();
    let stolen = saved_identity(&cluster, "node-1");
    let node_2 = only(&saved_identity(&cluster, "node-2"));
    let mesh_2 = cluster.node("node-2").mesh.clone();
    // While node-1 is a member, its certificate is honoured.
    assert!(node_calls(&runtime, &cluster, &stolen, &package)[2].is_ok());
    let answer = mesh_answer(&runtime, &mesh_2, "node-2", &stolen, &node_2);
    assert!(
        answer.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1")),
        "{answer:?}"
    );

    // Down is not gone: a fresh token cannot take its name.
    cluster.nodes[0].process.kill();
    wait_until(Duration::from_secs(15), "node-1 to be down", || {
        (node_state(&cluster, "node-1").as_deref() == Some("down")).then_some(())
    });
    let token = cluster.cli(&["join-token"]).trim().to_string();
    let taken = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let elsewhere = cluster.home().join("elsewhere");
    let refused = cluster.cli_fails(&[
        "node",
        "--server",
        &cluster.api,
        "--token",
        &token,
        "--name",
        "node-1",
        "--listen",
        &taken,
        "--data-dir",
        elsewhere.to_str().unwrap(),
    ]);
    assert!(
        refused.contains("already in this cluster (down)")
            && refused.contains("skiff forget node-1"),
        "{refused}"
    );

    // Forgotten, it comes back with its saved certificate: refused.
    cluster.cli(&["forget", "node-1"]);
    cluster.restart_node("node-1");
    cluster
        .node("node-1")
        .process
        .wait_for_stderr("not a member of this cluster");
    let refused_everywhere = |cluster: &Cluster| {
        for call in node_calls(&runtime, cluster, &stolen, &package) {
            let refused = call.unwrap_err();
            assert!(
                refused.contains("401") && refused.contains("not a member of this cluster"),
                "{refused}"
            );
        }
        assert_eq!(node_names(cluster), ["node-2"]);
        // Node 2 hears of it from the control plane.
        wait_until(
            Duration::from_secs(10),
            "node-2's mesh to refuse node-1",
            || mesh_answer(&runtime, &mesh_2, "node-2", &stolen, &node_2).err(),
        );
    };
    refused_everywhere(&cluster);
    // Refused again and again, the node stops rather than serve on.
    let revoked = cluster
        .nodes
        .iter_mut()
        .find(|n| n.name == "node-1")
        .unwrap();
    assert!(!revoked.process.wait_exit(Duration::from_secs(30)).success());
    assert!(
        revoked
            .process
            .stderr()
            .contains("the control plane no longer accepts this node"),
        "{}",
        revoked.process.stderr()
    );
    assert_eq!(
        cluster
            .wait_running("web", 2)
            .iter()
            .filter(|r| r.1.as_deref() == Some("node-2"))
            .count(),
        2,
        "its replicas moved to node-2"
    );

    // Still after the control plane restarts.
    let port = cluster.api.rsplit(':').next().unwrap().to_string();
    cluster.server.kill();
    cluster.server = start_server(cluster.home(), &format!("127.0.0.1:{port}"), &[]);
    wait_until(Duration::from_secs(15), "node-2 to be back", || {
        (node_state(&cluster, "node-2").as_deref() == Some("ready")).then_some(())
    });
    refused_everywhere(&cluster);

    // A new join token brings it back under its name, with a new
    // certificate; the old one stays refused.
    let mut old = cluster.nodes.remove(0);
    old.process.kill();
    std::fs::remove_dir_all(cluster.home().join("node-node-1")).unwrap();
    let listen = old.process.url.trim_start_matches("http://").to_string();
    let node = cluster.launch_node("node-1", &["--token", &token, "--listen", &listen]);
    cluster.nodes.insert(0, node);
    wait_until(Duration::from_secs(15), "node-1 to be ready", || {
        (node_state(&cluster, "node-1").as_deref() == Some("ready")).then_some(())
    });
    let rejoined = saved_identity(&cluster, "node-1");
    wait_until(
        Duration::from_secs(10),
        "node-2's mesh to honour node-1 again",
        || mesh_answer(&runtime, &mesh_2, "node-2", &rejoined, &node_2).ok(),
    );
    assert!(mesh_answer(&runtime, &mesh_2, "node-2", &stolen, &node_2).is_err());
    for call in node_calls(&runtime, &cluster, &stolen, &package) {
        assert!(call.unwrap_err().contains("not a member"));
    }
}

#[test]
fn names_and_addresses_that_could_be_mistaken_are_refused() {
    let cluster = Cluster::start(1, &["--host", "cp-main"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let token = cluster.cli(&["join-token"]).trim().to_string();

    // The CLI refuses such names before anything starts.
    for name in ["localhost", "127.0.0.1", "Node-2", "1234", "node.example"] {
        let refused = cluster.cli_fails(&[
            "node",
            "--server",
            &cluster.api,
            "--token",
            &token,
            "--name",
            name,
        ]);
        assert!(
            refused.contains(&format!("invalid node name {name:?}")),
            "{refused}"
        );
    }
    // A second process for a running node (same data directory) is
    // refused: two would share one identity.
    let twin = cluster.cli_fails(&[
        "node",
        "--server",
        &cluster.api,
        "--name",
        "node-1",
        "--listen",
        "127.0.0.9:0",
    ]);
    assert!(
        twin.contains("another skiff node is running with the data directory"),
        "{twin}"
    );
    // So does the control plane, for a client that skips the check; and
    // the names the control plane is reached by. The token stays usable.
    let pin = token.split('.').nth(1).unwrap();
    let joining = ApiClient::new(
        &cluster.api,
        skiff_orchestrator::mesh::tls::client_pinned(pin).unwrap(),
        None,
    );
    let join = |name: &str| {
        let (_, csr) = NodeIdentity::request().unwrap();
        runtime.block_on(joining.post::<_, Value>(
            "/v1/join",
            &serde_json::json!({ "token": token, "name": name, "csr_pem": csr }),
        ))
    };
    for name in ["localhost", "127.0.0.1", "NODE", "1234", "cp-main"] {
        let refused = join(name).unwrap_err();
        assert_eq!(
            refused.status(),
            Some(http::StatusCode::BAD_REQUEST),
            "{refused}"
        );
        assert!(
            refused
                .to_string()
                .contains(&format!("invalid node name {name:?}")),
            "{refused}"
        );
    }
    assert!(join("node-2").is_ok(), "the token was not used up");
    assert_eq!(node_names(&cluster), ["node-1", "node-2"]);

    // A node reporting the control plane's API as its mesh address (so
    // others would forward into /v1/node/*) is refused, and nothing it
    // reported is recorded.
    let node_1 = saved_identity(&cluster, "node-1");
    let api = ApiClient::new(
        &cluster.api,
        node_1.control_plane_client_config().unwrap(),
        None,
    );
    let control_plane = cluster.api.trim_start_matches("https://").to_string();
    for (ingress, mesh) in [
        ("127.0.0.2:4444", control_plane.as_str()),
        ("127.0.0.2:4444", "0.0.0.0:4445"),
        ("127.0.0.2:4444", "127.0.0.2:0"),
        ("127.0.0.2:4444", "224.0.0.1:4445"),
    ] {
        let refused = runtime
            .block_on(api.post::<_, Value>(
                "/v1/node/sync",
                &serde_json::json!({
                    "version": 0, "labels": {}, "memory": 1u64 << 30,
                    "ingress": ingress, "mesh": mesh,
                    "components": [], "logs_first_seq": 0, "logs": []
                }),
            ))
            .unwrap_err();
        assert_eq!(
            refused.status(),
            Some(http::StatusCode::BAD_REQUEST),
            "{refused}"
        );
        assert!(
            refused
                .to_string()
                .contains(&format!("invalid mesh address {mesh:?}")),
            "{refused}"
        );
    }
    let nodes = cluster.json(&["nodes"]);
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["ingress"] != "127.0.0.2:4444"),
        "{nodes}"
    );
}

#[test]
fn a_guest_cannot_make_a_forwarding_node_replay_its_request() {
    let cluster = Cluster::start(3, &[]);
    let upstream = Upstream::start("counted");
    let app_dir = temp_dir();
    write_manifest(
        app_dir.path(),
        &format!(
            "[app]\nname = \"forger\"\n\
             [component.web]\nsource = {}\nroute = \"/...\"\n\
             allowed_outbound_hosts = [\"http://{}\"]\n\
             [component.web.scale]\nreplicas = 2\n\
             [component.web.placement]\nmemory = \"64MiB\"\n",
            toml_path(HOSTILE),
            upstream.addr
        ),
    );
    cluster.cli(&["deploy", app_dir.path().to_str().unwrap(), "--wait"]);
    let replicas = cluster.wait_running("forger", 2);
    assert_eq!(nodes_of(&replicas).len(), 2, "{replicas:?}");
    let forwarder = cluster
        .nodes
        .iter()
        .find(|n| {
            replicas
                .iter()
                .all(|r| r.1.as_deref() != Some(n.name.as_str()))
        })
        .unwrap();
    wait_until(
        Duration::from_secs(15),
        "the node without a replica to forward",
        || (get(&forwarder.process.at("/ok")) == (200, "fine".to_string())).then_some(()),
    );

    // The guest answers 503 with `skiff-not-here` set, as a node holding
    // no replica would: the forwarding node must not replay the GET on
    // the other replica, and the client gets the guest's answer.
    for round in 1..=3 {
        let (status, body) = get(&forwarder
            .process
            .at(&format!("/not-here?http://{}/", upstream.addr)));
        assert_eq!(
            (status, body.as_str()),
            (503, "forged, after calling: 200 OK"),
            "round {round}"
        );
        assert_eq!(upstream.hits(), round, "the guest ran once per request");
    }
}

#[test]
fn a_node_certificate_past_its_end_is_refused_on_a_kept_connection_and_cannot_resume() {
    let cluster = Cluster::start(1, &["--node-cert-lifetime", "4s"]);
    // The certificate node-1 holds now: renewed from 2 s on, so this one
    // is left to expire.
    let held = saved_identity(&cluster, &cluster.nodes[0].name);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let news = b"POST /v1/node/news HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n";
    let api = cluster.api.trim_start_matches("https://").to_string();
    let resuming = held.control_plane_client_config().unwrap();
    let connect = |tls: std::sync::Arc<rustls::ClientConfig>| {
        runtime.block_on(async {
            let stream = tokio::net::TcpStream::connect(&api).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            tokio_rustls::TlsConnector::from(tls)
                .connect(name, stream)
                .await
        })
    };
    let ask = |stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        runtime.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream.write_all(news).await.ok()?;
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
    };
    let mut kept = connect(resuming.clone()).expect("a valid certificate connects");
    let answer = ask(&mut kept).unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    std::thread::sleep(Duration::from_secs(5));
    let answer = ask(&mut kept).unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // A client that has connected before would resume its session if the
    // server kept one: it must handshake afresh, and is refused.
    let resumed = connect(resuming)
        .and_then(|mut stream| ask(&mut stream).ok_or_else(|| std::io::Error::other("refused")));
    assert!(resumed.is_err(), "{resumed:?}");
}

#[test]
fn a_stranger_holding_many_connections_to_the_mesh_port_is_cut_off_at_its_cap() {
    use std::io::Read;
    let cluster = Cluster::start(1, &[]);
    let node = &cluster.nodes[0];
    // Connections that never start a handshake, all from one address:
    // the first 256 wait out the handshake timeout, the rest are closed
    // at once.
    let held: Vec<std::net::TcpStream> = (0..266)
        .map(|_| std::net::TcpStream::connect(&node.mesh).unwrap())
        .collect();
    let closed = |stream: &std::net::TcpStream| {
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        // Still open: the read times out. Closed: end of stream, or reset.
        match (&mut &*stream).read(&mut [0u8; 1]) {
            Ok(n) => n == 0,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    };
    assert!(!closed(&held[0]), "the first connection was closed at once");
    let over = held[256..].iter().filter(|s| closed(s)).count();
    assert_eq!(
        over, 10,
        "of the 10 over the cap, {over} were closed at once"
    );
    node.process
        .wait_for_line(&["mesh connection limit reached"]);
    drop(held);
}
