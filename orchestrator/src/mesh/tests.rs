//! mTLS between node identities over real loopback connections.

use super::*;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn node(ca: &ClusterCa, name: &str) -> NodeIdentity {
    let (key, csr) = NodeIdentity::request().unwrap();
    let cert = ca.sign_node(name, &csr).unwrap();
    NodeIdentity::new(key, cert, ca.cert_pem().to_string())
}

/// Serves one TLS connection: echoes the peer's SPIFFE ID, or reports the
/// handshake error.
async fn serve_once(
    identity: &NodeIdentity,
) -> (String, tokio::task::JoinHandle<Result<String, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let acceptor = TlsAcceptor::from(identity.server_config().unwrap());
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
    let (addr, server) = serve_once(&a).await;
    let answer = connect(b.client_config().unwrap(), &addr, "node-a")
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
    let forged = rogue_ca.sign_node("node-b", &csr).unwrap();
    let rogue = NodeIdentity::new(key, forged, ca.cert_pem().to_string());
    let (addr, server) = serve_once(&a).await;
    let _ = connect(rogue.client_config().unwrap(), &addr, "node-a").await;
    let refused = server.await.unwrap().unwrap_err();
    assert!(refused.contains("certificate"), "{refused}");
}

#[tokio::test]
async fn plaintext_is_refused() {
    let ca = ClusterCa::create("test").unwrap();
    let (addr, server) = serve_once(&node(&ca, "node-a")).await;
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
        ca.sign_node("bad name!", &csr),
        Err(CaError::BadName(_))
    ));
    let mut tampered = csr.replace("\n", "");
    tampered.insert_str(60, "AAAA");
    assert!(matches!(
        ca.sign_node("node-1", &tampered),
        Err(CaError::BadRequest(_))
    ));
    let cert = ca.sign_node("node-1", &csr).unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert.as_bytes()).unwrap();
    assert_eq!(
        peer_spiffe_id(&der).as_deref(),
        Some("spiffe://prod/node/node-1")
    );

    // The CA survives a save and a load.
    let reloaded = ClusterCa::load("prod", ca.cert_pem(), ca.key_pem()).unwrap();
    let (key, csr) = NodeIdentity::request().unwrap();
    let cert = reloaded.sign_node("node-2", &csr).unwrap();
    let identity = NodeIdentity::new(key, cert, ca.cert_pem().to_string());
    assert!(identity.server_config().is_ok());
}
