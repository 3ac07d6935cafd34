//! TLS settings shared by the control plane, nodes and the CLI: which
//! certificates each side presents and which it trusts. Everything uses
//! rustls with the ring provider.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS setup: {0}")]
pub struct TlsError(pub String);

fn tls_err(e: impl std::fmt::Display) -> TlsError {
    TlsError(e.to_string())
}

/// A peer must finish its TLS handshake within this.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Completes the server side of a TLS handshake on `stream` within
/// [`HANDSHAKE_TIMEOUT`]; a refused or slow peer is logged and dropped.
/// Each handshake is counted for `endpoint` (`api`, `mesh`).
pub async fn accept(
    endpoint: &'static str,
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let count =
        |outcome| super::metrics::count_handshake(endpoint, super::metrics::Side::Server, outcome);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            count("ok");
            Some(stream)
        }
        Ok(Err(e)) => {
            count("refused");
            tracing::warn!(%peer, "TLS handshake refused: {e}");
            None
        }
        Err(_) => {
            count("timeout");
            tracing::debug!(%peer, "TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}");
            None
        }
    }
}

/// Turns off session resumption on a server: a resumed session would
/// bring back the client certificate of its first handshake without
/// checking it again, so a certificate could outlive its expiry (or its
/// node's membership) by resuming. Connections are long-lived and pooled,
/// so full handshakes stay rare.
pub fn without_resumption(config: &mut rustls::ServerConfig) {
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
}

/// When the peer's certificate on `connection` stops being valid, Unix
/// seconds; `None` without a readable one. A kept-alive connection is
/// refused from then on, as a new handshake would be.
pub fn peer_expiry(connection: &rustls::ServerConnection) -> Option<i64> {
    let certificate = connection.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certificate).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The crypto provider every config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in PEM text, in order.
///
/// # Errors
///
/// Text with no certificate or an unreadable one.
pub fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(tls_err)?;
    if certs.is_empty() {
        return Err(TlsError("no certificate in PEM text".to_string()));
    }
    Ok(certs)
}

/// A root store holding only the cluster CA.
///
/// # Errors
///
/// An unreadable CA certificate.
pub fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem)? {
        roots.add(cert).map_err(tls_err)?;
    }
    Ok(roots)
}

/// The short fingerprint of a CA certificate carried in join tokens: the
/// first 16 bytes of the sha256 of its DER, hex.
///
/// # Errors
///
/// An unreadable CA certificate.
pub fn ca_pin(ca_pem: &str) -> Result<String, TlsError> {
    let ca = certs(ca_pem)?.remove(0);
    Ok(pin_of(&ca))
}

fn pin_of(cert: &CertificateDer<'_>) -> String {
    hex::encode(&Sha256::digest(cert.as_ref())[..16])
}

/// The control plane's server config: its certificate chain (leaf, then
/// CA), and client certificates *optional* but verified against the CA
/// when present. Nodes present one; the CLI and joining nodes do not, and
/// authenticate with tokens instead.
///
/// # Errors
///
/// Unreadable certificates or key.
pub fn control_plane_server(
    ca_pem: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(tls_err)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(tls_err)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(chain_pem)?, key)
        .map_err(tls_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    without_resumption(&mut config);
    Ok(Arc::new(config))
}

/// A client config for the CLI: trusts only the cluster's control plane
/// (signed by the cluster CA and carrying its SPIFFE ID), presents no
/// certificate.
///
/// # Errors
///
/// An unreadable CA certificate.
pub fn client_trusting(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(control_plane_verifier(roots(ca_pem)?)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Verifies a server as this cluster's control plane: a chain to `roots`
/// for the name dialled, and the control plane's SPIFFE ID.
///
/// # Errors
///
/// An empty root store.
pub fn control_plane_verifier(
    roots: RootCertStore,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    cluster_server(roots, Expect::ControlPlane)
}

/// Verifies a server as the node dialled: a chain to `roots` for the
/// node's name, the SPIFFE ID `spiffe://<cluster>/node/<that name>`, and
/// an incarnation `members` holds current. Another node's certificate
/// (at the address dialled for this one) or the control plane's is
/// refused.
///
/// # Errors
///
/// An empty root store.
pub fn node_verifier(
    roots: RootCertStore,
    members: crate::mesh::Members,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    cluster_server(roots, Expect::Node(members))
}

/// A [`ClusterServer`] trusting `roots` and expecting `expect`.
fn cluster_server(
    roots: RootCertStore,
    expect: Expect,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let provider = provider();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(tls_err)?;
    Ok(Arc::new(ClusterServer {
        trust: Trust::Roots(verifier),
        expect,
        algorithms: provider.signature_verification_algorithms,
    }))
}

/// A client config for a node that has not joined yet: it knows only the
/// CA's pin from its join token, so it accepts a server whose chain
/// carries a CA with that pin, whose leaf that CA signed for the name
/// dialled, and which is the control plane.
///
/// # Errors
///
/// None in practice; the signature matches the other builders.
pub fn client_pinned(pin: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = ClusterServer {
        trust: Trust::Pin {
            pin: pin.to_ascii_lowercase(),
            provider: provider.clone(),
        },
        expect: Expect::ControlPlane,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts only the server meant: a chain to a trusted CA for the name
/// dialled, and the SPIFFE ID of the control plane or of the node
/// dialled, so one certificate signed by the cluster CA cannot pose as
/// another.
#[derive(Debug)]
struct ClusterServer {
    trust: Trust,
    expect: Expect,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Whom a [`ClusterServer`] expects.
#[derive(Debug)]
enum Expect {
    /// The cluster's control plane.
    ControlPlane,
    /// The node named by the name dialled, as a current member.
    Node(crate::mesh::Members),
}

/// Which CA a [`ClusterServer`] trusts.
#[derive(Debug)]
enum Trust {
    /// The cluster CA, known.
    Roots(Arc<rustls::client::WebPkiServerVerifier>),
    /// Whichever CA in the server's chain has this pin (a join token's).
    Pin {
        pin: String,
        provider: Arc<CryptoProvider>,
    },
}

impl ClusterServer {
    fn chain_verifier(
        &self,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Arc<rustls::client::WebPkiServerVerifier>, rustls::Error> {
        let (pin, provider) = match &self.trust {
            Trust::Roots(verifier) => return Ok(verifier.clone()),
            Trust::Pin { pin, provider } => (pin, provider),
        };
        let ca = intermediates
            .iter()
            .find(|cert| &pin_of(cert) == pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's CA does not match the join token; is this the right cluster?"
                        .to_string(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))
    }
}

impl ServerCertVerifier for ClusterServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.chain_verifier(intermediates)?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match &self.expect {
            Expect::ControlPlane => {
                if crate::mesh::peer_spiffe_id(end_entity) != Some(crate::mesh::control_plane_id())
                {
                    return Err(rustls::Error::General(
                        "the server's certificate is not this cluster's control plane".to_string(),
                    ));
                }
            }
            Expect::Node(members) => {
                let ServerName::DnsName(dialled) = server_name else {
                    return Err(rustls::Error::General(format!(
                        "mesh peers are dialled by node name, not {server_name:?}"
                    )));
                };
                let found = members
                    .check(end_entity)
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                if found.name != dialled.as_ref() {
                    return Err(rustls::Error::General(
                        crate::mesh::members::PeerError::WrongNode {
                            expected: dialled.as_ref().to_string(),
                            found: found.name,
                        }
                        .to_string(),
                    ));
                }
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
