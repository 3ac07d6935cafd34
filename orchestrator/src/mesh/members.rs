//! Which node certificates are honoured. Every join gives the node a
//! random incarnation, kept in its store record and in every certificate
//! issued to it (a `urn:skiff:incarnation:<hex>` URI beside its SPIFFE
//! ID); renewals keep it. A node certificate counts only while the
//! cluster holds a node of that name and incarnation: the control plane
//! checks its records on every node call, and every node checks the set
//! it last heard from the control plane on both ends of each mesh
//! connection. Forgetting a node so revokes every certificate it was
//! issued, and joining again under the same name does not revive them.
//! A workload certificate (a workload's SPIFFE ID, issued to the node it
//! is placed on) names that node and incarnation too (`urn:skiff:node:`),
//! so it counts only while its node does.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use skiff_runtime::mesh::WorkloadId;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

const INCARNATION_PREFIX: &str = "urn:skiff:incarnation:";

const NODE_PREFIX: &str = "urn:skiff:node:";

/// The URI that names the node a workload certificate was issued to.
pub(crate) fn node_uri(node: &str) -> String {
    format!("{NODE_PREFIX}{node}")
}

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

/// A workload as its certificate names it, with the node it was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadCert {
    /// The workload.
    pub workload: WorkloadId,
    /// The node holding it, and the join it belongs to.
    pub node: NodeCert,
    /// When it was issued, Unix seconds.
    pub issued_unix: i64,
}

impl WorkloadCert {
    /// The workload `certificate` names, when its one SPIFFE ID is a
    /// workload's of this trust domain and it names exactly one node and
    /// one incarnation; `None` for any other certificate.
    pub fn of(certificate: &CertificateDer<'_>) -> Option<WorkloadCert> {
        let (_, cert) = x509_parser::parse_x509_certificate(certificate).ok()?;
        let issued_unix =
            cert.validity().not_before.timestamp() + crate::mesh::ca::CLOCK_SKEW.whole_seconds();
        let uris = uris_of(certificate)?;
        let mut spiffe = uris.iter().filter(|uri| uri.starts_with("spiffe://"));
        let workload = match (spiffe.next(), spiffe.next()) {
            (Some(id), None) => WorkloadId::from_spiffe_id(id)?,
            _ => return None,
        };
        let only = |prefix: &str| {
            let mut found = uris.iter().filter_map(|uri| uri.strip_prefix(prefix));
            match (found.next(), found.next()) {
                (Some(value), None) if !value.is_empty() => Some(value.to_string()),
                _ => None,
            }
        };
        Some(WorkloadCert {
            workload,
            node: NodeCert {
                name: only(NODE_PREFIX)?,
                incarnation: only(INCARNATION_PREFIX)?,
            },
            issued_unix,
        })
    }
}

/// A peer on the mesh: a node, or a workload speaking through its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A node certificate: forwarded ingress requests.
    Node(NodeCert),
    /// A workload certificate: mesh calls from that workload.
    Workload(WorkloadCert),
}

impl Peer {
    /// The node behind the peer, whose membership decides.
    pub fn node(&self) -> &NodeCert {
        match self {
            Peer::Node(node) => node,
            Peer::Workload(workload) => &workload.node,
        }
    }
}

/// The URI SANs of `certificate`, `None` when it does not parse.
fn uris_of(certificate: &CertificateDer<'_>) -> Option<Vec<String>> {
    let (_, cert) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    Some(
        san.value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
                _ => None,
            })
            .collect(),
    )
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

    /// The node or workload `certificate` names, if its node is a current
    /// member.
    ///
    /// # Errors
    ///
    /// Neither a node nor a workload certificate of this cluster, or its
    /// node not a current member.
    pub fn check_peer(&self, certificate: &CertificateDer<'_>) -> Result<Peer, PeerError> {
        let peer = match NodeCert::of(certificate, &self.cluster) {
            Some(node) => Peer::Node(node),
            None => Peer::Workload(
                WorkloadCert::of(certificate)
                    .ok_or_else(|| PeerError::NotANode(self.cluster.to_string()))?,
            ),
        };
        if self.current.read().expect("members lock").is_none() {
            return Err(PeerError::Unknown);
        }
        if !self.admits(peer.node()) {
            return Err(PeerError::NotMember(peer.node().name.clone()));
        }
        Ok(peer)
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
/// (the wrapped verifier), then a node or workload certificate of a
/// current member.
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
        match self.members.check_peer(end_entity) {
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
