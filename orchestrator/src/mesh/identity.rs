//! A node's identity in the mesh: its private key (which never leaves the
//! node), the certificate the cluster CA issued for it, and the CA it
//! trusts; from these, the rustls server and client configurations that
//! demand a CA-signed certificate of a current member from the other side.

use super::members::{MemberClients, Members, NodeCert, WorkloadCert};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::sync::Arc;

/// A node's key, certificate and trusted CA.
pub struct NodeIdentity {
    key_pem: String,
    cert_pem: String,
    ca_pem: String,
}

/// Why an identity or a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("node identity: {0}")]
pub struct IdentityError(String);

impl NodeIdentity {
    /// A fresh P-256 key and a CSR for it (PEM), to send to the control
    /// plane with the join token. Returns the key (PEM) and the CSR.
    ///
    /// # Errors
    ///
    /// When key generation fails.
    pub fn request() -> Result<(String, String), IdentityError> {
        let err = |e: rcgen::Error| IdentityError(e.to_string());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let csr = CertificateParams::new(Vec::<String>::new())
            .map_err(err)?
            .serialize_request(&key)
            .map_err(err)?;
        Ok((key.serialize_pem(), csr.pem().map_err(err)?))
    }

    /// The identity from the node's key and the issued certificate.
    pub fn new(key_pem: String, cert_pem: String, ca_pem: String) -> NodeIdentity {
        NodeIdentity {
            key_pem,
            cert_pem,
            ca_pem,
        }
    }

    /// TLS for accepting mesh connections: clients must present a node
    /// certificate issued by the cluster CA to a node `members` holds
    /// current (checked again per request by the mesh endpoint, as the
    /// set changes).
    ///
    /// # Errors
    ///
    /// Unparsable PEM.
    pub fn server_config(
        &self,
        members: &Members,
    ) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone())
                .build()
                .map_err(|e| IdentityError(e.to_string()))?;
        let verifier = Arc::new(MemberClients {
            chain,
            members: members.clone(),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain()?, self.key()?)
            .map_err(|e| IdentityError(e.to_string()))?;
        crate::mesh::tls::without_resumption(&mut config);
        Ok(Arc::new(config))
    }

    /// TLS for connecting to another node's mesh endpoint, dialled by
    /// its node name: the server must present that node's certificate,
    /// issued by the cluster CA with the node's SPIFFE ID and an
    /// incarnation `members` holds current; this node presents its own.
    ///
    /// # Errors
    ///
    /// Unparsable PEM.
    pub fn client_config(
        &self,
        members: &Members,
    ) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
        let verifier = crate::mesh::tls::node_verifier(self.roots()?, members.clone())
            .map_err(|e| IdentityError(e.to_string()))?;
        let config = rustls::ClientConfig::builder_with_provider(crate::mesh::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain()?, self.key()?)
            .map_err(|e| IdentityError(e.to_string()))?;
        Ok(Arc::new(config))
    }

    /// The node certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The node key, PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The cluster CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// When the node certificate stops being valid, Unix seconds.
    ///
    /// # Errors
    ///
    /// An unreadable certificate.
    pub fn expires(&self) -> Result<i64, IdentityError> {
        let der = self.chain()?.remove(0);
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| IdentityError(format!("node certificate: {e}")))?;
        Ok(cert.validity().not_after.timestamp())
    }

    /// The node this identity's certificate names, in `cluster`.
    ///
    /// # Errors
    ///
    /// An unreadable certificate, or one that names no node of `cluster`.
    pub fn node(&self, cluster: &str) -> Result<NodeCert, IdentityError> {
        let der = self.chain()?.remove(0);
        NodeCert::of(&der, cluster).ok_or_else(|| {
            IdentityError(format!(
                "the node certificate names no node of cluster {cluster:?}"
            ))
        })
    }

    /// The workload, node and join this identity's certificate names, when
    /// it is a workload's.
    ///
    /// # Errors
    ///
    /// An unreadable certificate, or one that is no workload's.
    pub fn workload(&self) -> Result<WorkloadCert, IdentityError> {
        let der = self.chain()?.remove(0);
        WorkloadCert::of(&der)
            .ok_or_else(|| IdentityError("the certificate names no workload".to_string()))
    }

    /// Client settings for talking to the control plane: the node
    /// certificate, and only the cluster's control plane trusted (another
    /// node's certificate is refused, though the same CA signed it).
    ///
    /// # Errors
    ///
    /// Unreadable certificates or key.
    pub fn control_plane_client_config(&self) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
        let verifier = crate::mesh::tls::control_plane_verifier(self.roots()?)
            .map_err(|e| IdentityError(e.to_string()))?;
        let config = rustls::ClientConfig::builder_with_provider(crate::mesh::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain()?, self.key()?)
            .map_err(|e| IdentityError(e.to_string()))?;
        Ok(Arc::new(config))
    }

    fn roots(&self) -> Result<RootCertStore, IdentityError> {
        let mut roots = RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(self.ca_pem.as_bytes())
            .map_err(|e| IdentityError(format!("CA certificate: {e}")))?;
        roots
            .add(ca)
            .map_err(|e| IdentityError(format!("CA certificate: {e}")))?;
        Ok(roots)
    }

    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| IdentityError(format!("node certificate: {e}")))?;
        Ok(vec![cert])
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, IdentityError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| IdentityError(format!("node key: {e}")))
    }
}

/// The SPIFFE ID (`spiffe://...` URI SAN) in a peer's certificate, if any.
pub fn peer_spiffe_id(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
            Some(uri.to_string())
        }
        _ => None,
    })
}
