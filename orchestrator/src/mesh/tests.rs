//! mTLS between node identities over real loopback connections.

use super::*;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Node `name` of the cluster of `ca`, of incarnation `i-<name>`.
fn node(ca: &ClusterCa, name: &str) -> NodeIdentity {
    let (key, csr) = NodeIdentity::request().unwrap();
    let cert = ca.sign_node(name, &format!("i-{name}"), &csr).unwrap();
    NodeIdentity::new(key, cert, ca.cert_pem().to_string())
}

/// Members of cluster `cluster`: each name with incarnation `i-<name>`.
fn members(cluster: &str, names: &[&str]) -> Members {
    let members = Members::new(cluster);
    members.set(
        names
            .iter()
            .map(|n| (n.to_string(), format!("i-{n}")))
            .collect(),
    );
    members
}

/// Serves one TLS connection as `identity` honouring `members`.
async fn serve_once(
    identity: &NodeIdentity,
    members: &Members,
) -> (String, tokio::task::JoinHandle<Result<String, String>>) {
    serve_once_with(identity.server_config(members).unwrap()).await
}

/// Serves one TLS connection: echoes the peer's SPIFFE ID, or reports the
/// handshake error.
async fn serve_once_with(
    tls: Arc<rustls::ServerConfig>,
) -> (String, tokio::task::JoinHandle<Result<String, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let acceptor = TlsAcceptor::from(tls);
    let handle = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(peer_spiffe_id)
            .unwrap_or_default();
        tls.write_all(peer.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok(peer)
    });
    (addr, handle)
}

async fn connect(
    client: Arc<rustls::ClientConfig>,
    addr: &str,
    server: &str,
) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(server.to_string()).unwrap();
    let mut tls = TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer)
}

#[tokio::test]
async fn nodes_of_one_cluster_authenticate_each_other() {
    let ca = ClusterCa::create("test").unwrap();
    let (a, b) = (node(&ca, "node-a"), node(&ca, "node-b"));
    let both = members("test", &["node-a", "node-b"]);
    let (addr, server) = serve_once(&a, &both).await;
    let answer = connect(b.client_config(&both).unwrap(), &addr, "node-a")
        .await
        .unwrap();
    assert_eq!(
        answer, "spiffe://test/node/node-b",
        "the server sees who called"
    );
    assert_eq!(server.await.unwrap().unwrap(), "spiffe://test/node/node-b");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let ca = ClusterCa::create("test").unwrap();
    let rogue_ca = ClusterCa::create("test").unwrap();
    let a = node(&ca, "node-a");
    // The rogue knows the cluster CA (it is public) but its own certificate
    // comes from another CA.
    let (key, csr) = NodeIdentity::request().unwrap();
    let forged = rogue_ca.sign_node("node-b", "i-node-b", &csr).unwrap();
    let rogue = NodeIdentity::new(key, forged, ca.cert_pem().to_string());
    let both = members("test", &["node-a", "node-b"]);
    let (addr, server) = serve_once(&a, &both).await;
    let _ = connect(rogue.client_config(&both).unwrap(), &addr, "node-a").await;
    let refused = server.await.unwrap().unwrap_err();
    assert!(refused.contains("certificate"), "{refused}");
}

#[tokio::test]
async fn plaintext_is_refused() {
    let ca = ClusterCa::create("test").unwrap();
    let (addr, server) = serve_once(&node(&ca, "node-a"), &members("test", &["node-a"])).await;
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET /v1/apps HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    assert!(
        !answer.starts_with(b"HTTP"),
        "no HTTP answer over plaintext"
    );
    assert!(server.await.unwrap().is_err());
}

#[test]
fn the_ca_chooses_every_name_and_checks_the_request() {
    let ca = ClusterCa::create("prod").unwrap();
    let (_, csr) = NodeIdentity::request().unwrap();
    assert!(matches!(
        ca.sign_node("bad name!", "1", &csr),
        Err(CaError::BadName { .. })
    ));
    let mut tampered = csr.replace("\n", "");
    tampered.insert_str(60, "AAAA");
    assert!(matches!(
        ca.sign_node("node-1", "1", &tampered),
        Err(CaError::BadRequest(_))
    ));
    let cert = ca.sign_node("node-1", "ab12", &csr).unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert.as_bytes()).unwrap();
    assert_eq!(
        peer_spiffe_id(&der).as_deref(),
        Some("spiffe://prod/node/node-1")
    );
    assert_eq!(
        NodeCert::of(&der, "prod"),
        Some(NodeCert {
            name: "node-1".to_string(),
            incarnation: "ab12".to_string()
        })
    );
    assert_eq!(NodeCert::of(&der, "other"), None, "another cluster's node");

    // The CA survives a save and a load.
    let reloaded = ClusterCa::load("prod", ca.cert_pem(), ca.key_pem()).unwrap();
    let (key, csr) = NodeIdentity::request().unwrap();
    let cert = reloaded.sign_node("node-2", "1", &csr).unwrap();
    let identity = NodeIdentity::new(key, cert, ca.cert_pem().to_string());
    assert!(identity.server_config(&Members::new("prod")).is_ok());
}

#[test]
fn node_names_are_lower_case_dns_labels_never_an_address_or_this_machine() {
    let ca = ClusterCa::create("test").unwrap();
    let (_, csr) = NodeIdentity::request().unwrap();
    for (name, why) in [
        ("localhost", "local machine"),
        ("127.0.0.1", "no dots"),
        ("10.0.0.7", "no dots"),
        ("::1", "lower-case letters"),
        ("1234", "all-digit"),
        ("Node-1", "no upper case"),
        ("node.example.com", "no dots"),
        ("-node", "start and end"),
        ("node-", "start and end"),
        ("", "1 to 63"),
        (&"a".repeat(64), "1 to 63"),
    ] {
        let refused = ca.sign_node(name, "1", &csr).unwrap_err().to_string();
        assert!(
            refused.contains(&format!("invalid node name {name:?}")) && refused.contains(why),
            "{name:?}: {refused}"
        );
    }
    for name in ["node-1", "a", "edge7", "1a", &"a".repeat(63)] {
        assert!(ca.sign_node(name, "1", &csr).is_ok(), "{name:?}");
    }
}

/// A certificate signed by `ca` for DNS name `dns` with URIs `uris`, for
/// client and server authentication: what a compromised signer could make.
fn issue(ca: &ClusterCa, dns: &str, uris: &[&str]) -> (String, String) {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
    let issuer =
        Issuer::from_ca_cert_pem(ca.cert_pem(), KeyPair::from_pem(ca.key_pem()).unwrap()).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec![dns.to_string()]).unwrap();
    for uri in uris {
        params
            .subject_alt_names
            .push(SanType::URI(uri.to_string().try_into().unwrap()));
    }
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A server presenting `cert_pem` (with `key_pem`), asking for no client
/// certificate.
fn plain_server(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    Arc::new(
        rustls::ServerConfig::builder_with_provider(crate::mesh::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                crate::mesh::tls::certs(cert_pem).unwrap(),
                rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    )
}

#[tokio::test]
async fn the_mesh_client_accepts_only_the_node_it_dialled() {
    let ca = ClusterCa::create("test").unwrap();
    let (a, c) = (node(&ca, "node-a"), node(&ca, "node-c"));
    let all = members("test", &["node-a", "node-b", "node-c"]);
    let client = c.client_config(&all).unwrap();

    // Node A answers at the address the forwarder dials for node B.
    let (addr, _server) = serve_once(&a, &all).await;
    let refused = connect(client.clone(), &addr, "node-b").await.unwrap_err();
    assert!(refused.contains("certificate"), "{refused}");

    // A certificate naming node-b as DNS name but node A as SPIFFE ID.
    let (cert, key) = issue(
        &ca,
        "node-b",
        &[
            "spiffe://test/node/node-a",
            "urn:skiff:incarnation:i-node-a",
        ],
    );
    let (addr, _server) = serve_once_with(plain_server(&cert, &key)).await;
    let refused = connect(client.clone(), &addr, "node-b").await.unwrap_err();
    assert!(
        refused.contains("names node \"node-a\", not \"node-b\""),
        "{refused}"
    );

    // The control plane's certificate, signed for the name dialled (as it
    // is for `localhost`): the mesh never forwards into the API.
    let (chain, key) = ca.sign_control_plane(&["node-b".to_string()]).unwrap();
    let api = crate::mesh::tls::control_plane_server(ca.cert_pem(), &chain, &key).unwrap();
    let (addr, _server) = serve_once_with(api).await;
    let refused = connect(client.clone(), &addr, "node-b").await.unwrap_err();
    assert!(refused.contains("not a node certificate"), "{refused}");

    // The node dialled, of the current incarnation, is accepted; of an
    // earlier one (forgotten, then joined again), refused.
    let (addr, _server) = serve_once(&a, &all).await;
    assert_eq!(
        connect(client.clone(), &addr, "node-a").await.unwrap(),
        "spiffe://test/node/node-c"
    );
    let rejoined = Members::new("test");
    rejoined.set(
        [("node-a", "i-later"), ("node-c", "i-node-c")]
            .into_iter()
            .map(|(n, i)| (n.to_string(), i.to_string()))
            .collect(),
    );
    let (addr, _server) = serve_once(&a, &all).await;
    let refused = connect(c.client_config(&rejoined).unwrap(), &addr, "node-a")
        .await
        .unwrap_err();
    assert!(
        refused.contains("node \"node-a\" is not a member"),
        "{refused}"
    );
}

#[tokio::test]
async fn the_mesh_endpoint_accepts_only_current_member_nodes() {
    let ca = ClusterCa::create("test").unwrap();
    let (a, b) = (node(&ca, "node-a"), node(&ca, "node-b"));
    let all = members("test", &["node-a", "node-b"]);

    // Node B was forgotten: A's endpoint refuses its certificate.
    let only_a = members("test", &["node-a"]);
    let (addr, server) = serve_once(&a, &only_a).await;
    let _ = connect(b.client_config(&all).unwrap(), &addr, "node-a").await;
    let refused = server.await.unwrap().unwrap_err();
    assert!(refused.contains("Revoked"), "{refused}");

    // Nothing heard from the control plane yet: nobody is trusted.
    let (addr, server) = serve_once(&a, &Members::new("test")).await;
    let _ = connect(b.client_config(&all).unwrap(), &addr, "node-a").await;
    assert!(server.await.unwrap().is_err());

    // A certificate of the cluster CA that is not a node's (here the
    // control plane's SPIFFE ID, usable as a client) is refused.
    let (cert, key) = issue(&ca, "cp", &["spiffe://test/control-plane"]);
    let impostor = NodeIdentity::new(key, cert, ca.cert_pem().to_string());
    let (addr, server) = serve_once(&a, &all).await;
    let _ = connect(impostor.client_config(&all).unwrap(), &addr, "node-a").await;
    let refused = server.await.unwrap().unwrap_err();
    assert!(refused.contains("certificate"), "{refused}");

    // The same peer, a member, is accepted.
    let (addr, server) = serve_once(&a, &all).await;
    connect(b.client_config(&all).unwrap(), &addr, "node-a")
        .await
        .unwrap();
    assert_eq!(server.await.unwrap().unwrap(), "spiffe://test/node/node-b");
}

#[test]
fn a_member_leaving_or_rejoining_is_reported_so_pooled_connections_are_dropped() {
    let set = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(n, i)| (n.to_string(), i.to_string()))
            .collect()
    };
    let members = Members::new("skiff");
    assert!(
        !members.set(set(&[("a", "1"), ("b", "2")])),
        "the first set"
    );
    assert!(
        !members.set(set(&[("a", "1"), ("b", "2"), ("c", "3")])),
        "a join"
    );
    assert!(members.set(set(&[("a", "1"), ("c", "3")])), "b forgotten");
    assert!(
        members.set(set(&[("a", "9"), ("c", "3")])),
        "a joined again"
    );
}

#[test]
fn a_workload_certificate_names_its_workload_and_node_and_is_no_node_certificate() {
    let ca = ClusterCa::create(CLUSTER).unwrap();
    let (_, csr) = NodeIdentity::request().unwrap();
    let workload = skiff_runtime::mesh::WorkloadId::new(
        "shop".to_string().try_into().unwrap(),
        "frontend".to_string().try_into().unwrap(),
    );
    let cert = ca
        .sign_workload("node-1", "i-node-1", &workload, &csr)
        .unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert.as_bytes()).unwrap();
    assert_eq!(
        peer_spiffe_id(&der).as_deref(),
        Some("spiffe://skiff/app/shop/component/frontend")
    );
    // It cannot pass for a node, toward the control plane or a peer.
    assert_eq!(NodeCert::of(&der, CLUSTER), None);
    let parsed = WorkloadCert::of(&der).unwrap();
    assert_eq!(parsed.workload, workload);
    assert_eq!(
        parsed.node,
        NodeCert {
            name: "node-1".to_string(),
            incarnation: "i-node-1".to_string()
        }
    );
    assert!((parsed.issued_unix - crate::clock::unix_secs() as i64).abs() < 5);
    // Honoured only while its node is a member under that incarnation.
    assert!(matches!(
        members(CLUSTER, &["node-1"]).check_peer(&der),
        Ok(Peer::Workload(_))
    ));
    assert!(matches!(
        members(CLUSTER, &["node-2"]).check_peer(&der),
        Err(members::PeerError::NotMember(name)) if name == "node-1"
    ));
    // A node certificate is no workload's.
    let node_cert = ca.sign_node("node-1", "i-node-1", &csr).unwrap();
    let node_der = rustls::pki_types::pem::PemObject::from_pem_slice(node_cert.as_bytes()).unwrap();
    assert_eq!(WorkloadCert::of(&node_der), None);
}
