//! Which node certificates are honoured. Every join gives the node a
//! random incarnation, kept in its store record and in every certificate
//! issued to it (a `urn:skiff:incarnation:<hex>` URI beside its SPIFFE
//! ID); renewals keep it. A node certificate counts only while the
//! cluster holds a node of that name and incarnation: the control plane
//! checks its records on every node call, and every node checks the set
//! it last heard from the control plane on both ends of each mesh
//! connection. Forgetting a node so revokes every certificate it was
//! issued, and joining again under the same name does not revive them.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

const INCARNATION_PREFIX: &str = "urn:skiff:incarnation:";

/// The URI that carries `incarnation` in a node certificate.
pub(crate) fn incarnation_uri(incarnation: &str) -> String {
    format!("{INCARNATION_PREFIX}{incarnation}")
}

/// A node as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCert {
    /// The node's name, from its SPIFFE ID.
    pub name: String,
    /// The join it belongs to; empty in certificates issued before
    /// incarnations existed.
    pub incarnation: String,
}

impl NodeCert {
    /// The node `certificate` names, when its one SPIFFE ID is
    /// `spiffe://<cluster>/node/<name>`; `None` for any other
    /// certificate (the control plane's, another cluster's, a malformed
    /// one).
    pub fn of(certificate: &CertificateDer<'_>, cluster: &str) -> Option<NodeCert> {
        let (_, cert) = x509_parser::parse_x509_certificate(certificate).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect();
        let one = |prefix: &str| {
            let mut found = uris.iter().filter_map(|uri| uri.strip_prefix(prefix));
            match (found.next(), found.next()) {
                (Some(value), None) => Ok(Some(value)),
                (None, _) => Ok(None),
                (Some(_), Some(_)) => Err(()),
            }
        };
        if uris
            .iter()
            .filter(|uri| uri.starts_with("spiffe://"))
            .count()
            != 1
        {
            return None;
        }
        let name = one(&format!("spiffe://{cluster}/node/")).ok()??;
        let incarnation = one(INCARNATION_PREFIX).ok()?.unwrap_or_default();
        Some(NodeCert {
            name: name.to_string(),
            incarnation: incarnation.to_string(),
        })
    }
}

/// Why a peer's certificate is not honoured on the mesh.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Not a node certificate of this cluster.
    #[error("the peer's certificate is not a node certificate of cluster {0:?}")]
    NotANode(String),
    /// A node that is not (or no longer) in the cluster.
    #[error(
        "node {0:?} is not a member of this cluster: it was forgotten, or its certificate is from an earlier join"
    )]
    NotMember(String),
    /// Another node than the one dialled.
    #[error("the peer's certificate names node {found:?}, not {expected:?}, the node dialled")]
    WrongNode {
        /// The node dialled.
        expected: String,
        /// The node the certificate names.
        found: String,
    },
    /// Nothing heard from the control plane yet.
    #[error("no member list from the control plane yet, so no peer is trusted")]
    Unknown,
}

/// The nodes of one cluster that a node honours on its mesh: name to
/// incarnation, as last heard from the control plane (kept while it is
/// away). Until the first word, none. Clones share one set.
#[derive(Debug, Clone)]
pub struct Members {
    cluster: Arc<str>,
    current: Arc<RwLock<Option<BTreeMap<String, String>>>>,
}

impl Members {
    /// No member known yet, in cluster `cluster`.
    pub fn new(cluster: &str) -> Members {
        Members {
            cluster: cluster.into(),
            current: Arc::new(RwLock::new(None)),
        }
    }

    /// Replaces the set: node name to incarnation. Returns whether a node
    /// known before lost its standing (left the set, or joined again under
    /// a new incarnation): connections already open to or from it were
    /// checked against what is now stale.
    pub fn set(&self, members: BTreeMap<String, String>) -> bool {
        let mut current = self.current.write().expect("members lock");
        let revoked = current.as_ref().is_some_and(|before| {
            before
                .iter()
                .any(|(name, incarnation)| members.get(name) != Some(incarnation))
        });
        *current = Some(members);
        revoked
    }

    /// Whether `node` is a current member.
    pub fn admits(&self, node: &NodeCert) -> bool {
        self.current
            .read()
            .expect("members lock")
            .as_ref()
            .is_some_and(|m| m.get(&node.name) == Some(&node.incarnation))
    }

    /// The node `certificate` names, if it is a current member.
    ///
    /// # Errors
    ///
    /// Not a node certificate of this cluster, or not a current member.
    pub fn check(&self, certificate: &CertificateDer<'_>) -> Result<NodeCert, PeerError> {
        let node = NodeCert::of(certificate, &self.cluster)
            .ok_or_else(|| PeerError::NotANode(self.cluster.to_string()))?;
        if self.current.read().expect("members lock").is_none() {
            return Err(PeerError::Unknown);
        }
        if !self.admits(&node) {
            return Err(PeerError::NotMember(node.name));
        }
        Ok(node)
    }
}

/// The mesh endpoint's check of its clients: a chain to the cluster CA
/// (the wrapped verifier), then a node certificate of a current member.
#[derive(Debug)]
pub(crate) struct MemberClients {
    pub(crate) chain: Arc<dyn ClientCertVerifier>,
    pub(crate) members: Members,
}

impl ClientCertVerifier for MemberClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        match self.members.check(end_entity) {
            Ok(_) => Ok(verified),
            Err(e) => {
                tracing::warn!("mesh peer refused: {e}");
                Err(rustls::Error::InvalidCertificate(match e {
                    PeerError::NotMember(_) => rustls::CertificateError::Revoked,
                    _ => rustls::CertificateError::ApplicationVerificationFailure,
                }))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
