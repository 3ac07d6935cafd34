//! End-to-end tests of who may call the control plane and nodes: strangers
//! without the cluster's certificates or tokens refused, and a node granted
//! no more than it joined with.

mod support;

use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use skiff_orchestrator::api_client::ApiClient;
use skiff_orchestrator::mesh::{ClusterCa, NodeIdentity};
use skiff_test_guests::HELLO;
use std::time::{Duration, Instant};
use support::cluster::{
    API_REQUEST, Cluster, MESH_REQUEST, api_addr, app, nodes_of, only, saved_identity,
};
use support::tls;
use support::{skiff, temp_dir, toml_path, wait_until, write_manifest};

/// A certificate from the cluster's CA for node `name` as a CA without
/// name rules would issue it, and its key.
fn legacy_node_cert(cluster: &Cluster, name: &str) -> (String, String) {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
    let ca_key = std::fs::read_to_string(cluster.home().join("server/ca.key")).unwrap();
    let issuer =
        Issuer::from_ca_cert_pem(&cluster.ca_pem(), KeyPair::from_pem(&ca_key).unwrap()).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.subject_alt_names.push(SanType::URI(
        format!("spiffe://skiff/node/{name}").try_into().unwrap(),
    ));
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn strangers_are_refused() {
    let cluster = Cluster::start(1, &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // The API wants the admin token.
    for token in [None, Some("wrong")] {
        let refused = runtime
            .block_on(cluster.admin_client(token).get::<Value>("/v1/apps"))
            .unwrap_err();
        assert_eq!(
            refused.status(),
            Some(http::StatusCode::UNAUTHORIZED),
            "{refused}"
        );
    }
    let output = skiff(cluster.home())
        .args(["apps"])
        .env("SKIFF_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("admin token is not valid"));

    // A join token works once; a made-up one never.
    let token = cluster.cli(&["join-token"]).trim().to_string();
    // An address already taken, so a node stops right after joining.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let join = |token: &str, name: &str| {
        let data = cluster.home().join(name);
        support::expect_failure(
            cluster.home(),
            &[
                "node",
                "--server",
                &cluster.api,
                "--token",
                token,
                "--name",
                name,
                "--listen",
                &taken,
                "--data-dir",
                data.to_str().unwrap(),
            ],
        )
    };
    // A name in use is refused without using up the token.
    let conflict = join(&token, "node-1");
    assert!(
        conflict.contains("already in this cluster (active)"),
        "{conflict}"
    );
    let first = join(&token, "once");
    assert!(
        first.contains("already in use"),
        "joined, then stopped: {first}"
    );
    let reused = join(&token, "twice");
    assert!(reused.contains("join token is not valid"), "{reused}");
    let pin = token.split('.').nth(1).unwrap();
    let forged = join(&format!("skt1.{pin}.{}", "0".repeat(32)), "forged");
    assert!(forged.contains("join token is not valid"), "{forged}");
    let other_cluster = join(
        &format!("skt1.{}.{}", "0".repeat(32), "1".repeat(32)),
        "lost",
    );
    assert!(
        other_cluster.contains("does not match the join token"),
        "{other_cluster}"
    );
    let garbage = join("hello", "garbage");
    assert!(garbage.contains("malformed join token"), "{garbage}");

    // A certificate from another CA is refused by the control plane and
    // by a node's mesh endpoint; so is plaintext.
    let rogue = |cluster_name: &str| {
        let ca = ClusterCa::create(cluster_name).unwrap();
        let (key, csr) = NodeIdentity::request().unwrap();
        let cert = ca.sign_node("node-1", "0", &csr).unwrap();
        NodeIdentity::new(key, cert, cluster.ca_pem())
    };
    let rogues = [
        // Named like this cluster's CA, with another key: the signature
        // does not verify.
        (
            "an impostor CA",
            rogue("skiff"),
            rustls::AlertDescription::DecryptError,
        ),
        (
            "another cluster's CA",
            rogue("elsewhere"),
            rustls::AlertDescription::UnknownCA,
        ),
    ];
    let node_1 = saved_identity(&cluster, "node-1");
    let mesh = &cluster.nodes[0].mesh;
    let members = only(&node_1);
    let to_control_plane = |id: &NodeIdentity| id.control_plane_client_config().unwrap();
    let to_mesh = |id: &NodeIdentity| id.client_config(&members).unwrap();
    type ClientOf<'a> = &'a dyn Fn(&NodeIdentity) -> std::sync::Arc<rustls::ClientConfig>;
    // The same request on the same path, with the node's own certificate
    // (accepted) and with a rogue one (refused at the handshake, at once,
    // with the alert that says why).
    let paths: [(&str, &str, &str, &[u8], ClientOf); 2] = [
        (
            "the control plane",
            api_addr(&cluster),
            "127.0.0.1",
            API_REQUEST,
            &to_control_plane,
        ),
        (
            "node-1's mesh endpoint",
            mesh.as_str(),
            "node-1",
            MESH_REQUEST,
            &to_mesh,
        ),
    ];
    for (what, addr, server, request, client_of) in paths {
        let accepted = tls::exchange(&runtime, addr, server, client_of(&node_1), request);
        let answer = accepted.answer.map(|(_, answer)| answer);
        assert!(
            answer.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1 ")),
            "{what} answers a node of this cluster: {answer:?}"
        );
        for (signer, rogue, alert) in &rogues {
            let refused = tls::exchange(&runtime, addr, server, client_of(rogue), request);
            assert_eq!(
                refused.answer.map(|(_, answer)| answer),
                Err(rustls::Error::AlertReceived(*alert)),
                "{what} and a certificate from {signer}"
            );
            assert!(
                refused.took < skiff_orchestrator::mesh::tls::HANDSHAKE_TIMEOUT / 2,
                "{what} took {:?} to refuse {signer}",
                refused.took
            );
        }
    }

    // Plaintext gets a TLS alert (decode_error) and the connection closed,
    // at once.
    use std::io::{Read, Write};
    let mut plain = std::net::TcpStream::connect(mesh).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let sent = Instant::now();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    plain
        .read_to_end(&mut answer)
        .expect("the mesh endpoint closes a plaintext connection");
    let took = sent.elapsed();
    // An alert record (type 21) of 2 bytes: fatal (2), decode_error (50).
    assert_eq!(
        (answer.first(), answer.get(3..)),
        (Some(&21), Some(&[0, 2, 2, 50][..])),
        "a fatal decode_error alert: {answer:02x?}"
    );
    assert!(
        took < skiff_orchestrator::mesh::tls::HANDSHAKE_TIMEOUT / 2,
        "the mesh took {took:?} to refuse plaintext"
    );

    // A node certificate, though the cluster CA signed it, cannot pose as
    // the control plane, even for the name the CLI dials (the CA no
    // longer names a node `localhost`; an older one could).
    let (cert, key) = legacy_node_cert(&cluster, "localhost");
    let impostor =
        rustls::ServerConfig::builder_with_provider(skiff_orchestrator::mesh::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                skiff_orchestrator::mesh::tls::certs(&cert).unwrap(),
                rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(impostor));
        while let Ok((stream, _)) = listener.accept().await {
            let _ = acceptor.accept(stream).await;
        }
    });
    let fooled = support::expect_failure(
        cluster.home(),
        &["apps", "--server", &format!("https://localhost:{port}")],
    );
    assert!(
        fooled.contains("not this cluster's control plane"),
        "{fooled}"
    );
}

/// A client of the control plane speaking as node `name`, with the key and
/// certificate it saved in its data directory.
fn as_node(cluster: &Cluster, name: &str) -> ApiClient {
    let both =
        std::fs::read_to_string(cluster.home().join(format!("node-{name}/node.pem"))).unwrap();
    let identity = NodeIdentity::new(both.clone(), both, cluster.ca_pem());
    ApiClient::new(
        &cluster.api,
        identity.control_plane_client_config().unwrap(),
        None,
    )
}

#[test]
fn a_node_gets_no_more_than_it_joined_with() {
    let mut cluster = Cluster::start(2, &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // "web" runs one replica on each node; "eu" needs zone=eu, "big" more
    // memory than any node declared.
    let web_dir = temp_dir();
    cluster.cli(&["deploy", &app(web_dir.path(), "web", HELLO, 2, "")]);
    let web = cluster.wait_running("web", 2);
    assert_eq!(nodes_of(&web).len(), 2);
    let eu_dir = temp_dir();
    write_manifest(
        eu_dir.path(),
        &format!(
            "[app]\nname = \"eu\"\n[component.api]\nsource = {}\nroute = \"/eu/...\"\n\
             [component.api.placement]\nmemory = \"64MiB\"\nlabels = {{ zone = \"eu\" }}\n\
             [component.api.env]\nSECRET = \"eu-only\"\n",
            toml_path(HELLO)
        ),
    );
    cluster.cli(&["deploy", eu_dir.path().to_str().unwrap()]);
    let big_dir = temp_dir();
    write_manifest(
        big_dir.path(),
        &format!(
            "[app]\nname = \"big\"\n[component.api]\nsource = {}\nroute = \"/big/...\"\n\
             [component.api.placement]\nmemory = \"2GiB\"\n",
            toml_path(HELLO)
        ),
    );
    cluster.cli(&["deploy", big_dir.path().to_str().unwrap()]);
    let (web_package, eu_package) = (cluster.package_of("web"), cluster.package_of("eu"));

    // node-1 claims, heartbeat after heartbeat, the labels and memory it
    // would need for "eu" and "big", and sends a flood of log lines.
    let node1 = as_node(&cluster, "node-1");
    let ingress = cluster
        .node("node-1")
        .process
        .url
        .trim_start_matches("http://")
        .to_string();
    let heartbeat = |logs: Vec<Value>, first_seq: u64| {
        serde_json::json!({
            "version": 0,
            "labels": { "zone": "eu" },
            "memory": 1u64 << 40,
            "ingress": ingress,
            "mesh": cluster.node("node-1").mesh,
            "components": [{
                "app": "web", "component": "web", "package": web_package,
                "state": "running", "serving": web_package,
            }],
            "logs_first_seq": first_seq,
            "logs": logs,
        })
    };
    let line = |text: String| {
        serde_json::json!({
            "app": "web", "component": "web", "stream": "stdout", "line": text, "unix_ms": 1,
        })
    };
    let first_seq = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 3_600_000)
        * 1000;
    let flood: Vec<Value> = (0..100_000).map(|i| line(format!("flood {i}"))).collect();
    let sync = |body: &Value| {
        runtime
            .block_on(node1.call::<_, Value>(
                http::Method::POST,
                "/v1/node/sync",
                body,
                Duration::from_secs(30),
            ))
            .unwrap()
    };
    let answer = sync(&heartbeat(flood, first_seq));
    assert_eq!(
        answer["labels"],
        serde_json::json!({ "zone": "z1" }),
        "{answer}"
    );
    assert_eq!(answer["memory"], 1u64 << 30, "{answer}");
    sync(&heartbeat(
        vec![line("x".repeat(10 << 20))],
        first_seq + 100_000,
    ));
    for _ in 0..20 {
        sync(&heartbeat(Vec::new(), 0));
        std::thread::sleep(Duration::from_millis(100));
    }
    for app in ["eu", "big"] {
        let replicas = cluster.replicas(app);
        assert_eq!(replicas.len(), 1);
        assert_eq!(replicas[0].1, None, "{app} placed by a claim: {replicas:?}");
    }
    let nodes = cluster.json(&["nodes"]);
    let shown = &nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-1")
        .unwrap();
    assert_eq!(shown["labels"], serde_json::json!({ "zone": "z1" }));
    assert_eq!(shown["memory"], 1u64 << 30);

    // The flood is bounded: 2,000 lines, then one saying how many were
    // dropped; the 10 MB line is cut to 16 KiB and says so.
    let logs = wait_until(Duration::from_secs(10), "the bounded flood", || {
        let lines: Vec<String> = cluster
            .cli(&["logs", "web", "-o", "json"])
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["node"] == "node-1")
            .map(|l| l["line"].as_str().unwrap().to_string())
            .collect();
        lines
            .iter()
            .any(|l| l.ends_with("bytes cut)"))
            .then_some(lines)
    });
    assert_eq!(
        logs.iter().filter(|l| l.starts_with("flood ")).count(),
        2000
    );
    assert!(
        logs.iter().any(|l| l
            == "(98000 log lines dropped: node \"node-1\" sent more than 2000 in one heartbeat)"),
        "{:?}",
        &logs[logs.len().saturating_sub(3)..]
    );
    let cut = logs.iter().find(|l| l.ends_with("bytes cut)")).unwrap();
    assert!(cut.len() <= 16 * 1024, "{}", cut.len());

    // node-1 may fetch the package it runs, not another app's (whose
    // config holds that app's environment), nor learn whether a blob
    // exists.
    let fetch = |digest: &str| {
        runtime.block_on(node1.send(
            http::Method::GET,
            &format!("/v1/node/blobs/{digest}"),
            None,
            Duration::from_secs(30),
        ))
    };
    let manifest: Value = serde_json::from_slice(&fetch(&web_package).unwrap()).unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap();
    assert!(fetch(config).is_ok());
    for digest in [eu_package.clone(), format!("sha256:{}", "ab".repeat(32))] {
        let refused = fetch(&digest).unwrap_err();
        assert_eq!(
            refused.status(),
            Some(http::StatusCode::FORBIDDEN),
            "{refused}"
        );
        assert!(
            refused.to_string().contains(&format!(
                "blob {digest} is not part of a package assigned to node \"node-1\""
            )),
            "{refused}"
        );
    }

    // An admin's label places "eu"; then node-2 may fetch its package.
    let labelled = cluster.cli(&["label", "node-2", "zone=eu", "disk=ssd"]);
    assert!(
        labelled.contains("node \"node-2\" labelled: disk=ssd,zone=eu"),
        "{labelled}"
    );
    let eu = cluster.wait_running("eu", 1);
    assert_eq!(eu[0].1.as_deref(), Some("node-2"));
    let removed = cluster.json(&["label", "node-2", "--remove", "disk"]);
    assert_eq!(removed["labels"], serde_json::json!({ "zone": "eu" }));
    let bad = cluster.cli_fails(&["label", "node-2", "zone=e u"]);
    assert!(
        bad.contains("invalid value \"e u\" of label \"zone\""),
        "{bad}"
    );
    let unknown = cluster.cli_fails(&["label", "nosuch", "zone=eu"]);
    assert!(unknown.contains("no node \"nosuch\""), "{unknown}");

    // Restarted with other labels, node-1 keeps the ones it joined with,
    // and says so in its log.
    let mut old = cluster.nodes.remove(0);
    old.process.kill();
    let listen = old.process.url.trim_start_matches("http://").to_string();
    let restarted = cluster.launch_node(
        "node-1",
        &[
            "--listen",
            &listen,
            "--mesh-listen",
            &old.mesh,
            "--labels",
            "zone=eu",
        ],
    );
    restarted
        .process
        .wait_for_stderr("but the control plane places by \"zone=z1\"");
    cluster.nodes.insert(0, restarted);
    let nodes = cluster.json(&["nodes"]);
    let shown = &nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-1")
        .unwrap();
    assert_eq!(shown["labels"], serde_json::json!({ "zone": "z1" }));
}
