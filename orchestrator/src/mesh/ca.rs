//! The cluster certificate authority (ECDSA P-256, via rcgen). It signs
//! short-lived node certificates, and workload certificates for the
//! workloads placed on a node, from CSRs; the CSR proves possession of
//! the key, but every name in the issued certificate is chosen by the CA,
//! never copied from the request.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use std::time::Duration;

/// How long node certificates live before they must be renewed.
pub const NODE_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long workload certificates live; nodes renew them at half of it.
pub const WORKLOAD_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Certificates are valid from this long before they are issued, so a
/// peer whose clock is a little behind accepts them.
pub(crate) const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);
/// How long the CA itself lives.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why the CA could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Key or certificate generation failed.
    #[error("certificate authority: {0}")]
    Generate(String),
    /// A stored CA could not be loaded.
    #[error("cannot load the cluster CA: {0}")]
    Load(String),
    /// A CSR did not parse or its signature does not verify.
    #[error("refusing certificate signing request: {0}")]
    BadRequest(String),
    /// A node name that cannot name a node.
    #[error("invalid node name {name:?}: {reason}")]
    BadName {
        /// The name asked for.
        name: String,
        /// What is wrong with it and what to do.
        reason: &'static str,
    },
}

/// The cluster CA.
pub struct ClusterCa {
    cluster: String,
    node_lifetime: Duration,
    workload_lifetime: Duration,
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl ClusterCa {
    /// Creates a new CA for the cluster named `cluster`.
    ///
    /// # Errors
    ///
    /// [`CaError::Generate`] when key generation fails.
    pub fn create(cluster: &str) -> Result<ClusterCa, CaError> {
        let gen_err = |e: rcgen::Error| CaError::Generate(e.to_string());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name = name(&format!("skiff cluster {cluster} CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let key_pem = key.serialize_pem();
        Ok(ClusterCa {
            cluster: cluster.to_string(),
            node_lifetime: NODE_CERT_LIFETIME,
            workload_lifetime: WORKLOAD_CERT_LIFETIME,
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA saved with [`ClusterCa::cert_pem`] and [`ClusterCa::key_pem`].
    ///
    /// # Errors
    ///
    /// [`CaError::Load`] for unparsable PEM.
    pub fn load(cluster: &str, cert_pem: &str, key_pem: &str) -> Result<ClusterCa, CaError> {
        let load_err = |e: rcgen::Error| CaError::Load(e.to_string());
        let key = KeyPair::from_pem(key_pem).map_err(load_err)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(load_err)?;
        Ok(ClusterCa {
            cluster: cluster.to_string(),
            node_lifetime: NODE_CERT_LIFETIME,
            workload_lifetime: WORKLOAD_CERT_LIFETIME,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    /// The CA certificate, PEM; every node trusts exactly this.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM; stays with the control plane.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The SPIFFE ID of node `name`: `spiffe://<cluster>/node/<name>`.
    pub fn node_id(&self, name: &str) -> String {
        format!("spiffe://{}/node/{name}", self.cluster)
    }

    /// Issues a certificate for node `name` from its CSR (PEM): valid for
    /// [`NODE_CERT_LIFETIME`], for both server and client authentication,
    /// naming `name` as DNS name, the node's SPIFFE ID as URI, and
    /// `incarnation` (the join it belongs to, see
    /// [`crate::mesh::members`]) as a second URI unless it is empty.
    ///
    /// # Errors
    ///
    /// [`CaError::BadRequest`] for a CSR that does not parse or verify,
    /// [`CaError::BadName`] for an unusable name.
    pub fn sign_node(
        &self,
        name: &str,
        incarnation: &str,
        csr_pem: &str,
    ) -> Result<String, CaError> {
        check_node_name(name)?;
        let gen_err = |e: rcgen::Error| CaError::Generate(e.to_string());
        let mut sans = vec![
            SanType::DnsName(name.try_into().map_err(gen_err)?),
            SanType::URI(self.node_id(name).try_into().map_err(gen_err)?),
        ];
        if !incarnation.is_empty() {
            let uri = crate::mesh::members::incarnation_uri(incarnation);
            sans.push(SanType::URI(uri.try_into().map_err(gen_err)?));
        }
        self.sign_request(
            csr_pem,
            name_of_node(name),
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            self.node_lifetime,
        )
    }

    /// Signs the key of `csr_pem` (whose signature proves possession)
    /// into a certificate with only what the CA chose: `subject`, `sans`
    /// and `usages`, valid for `lifetime` (from [`CLOCK_SKEW`] ago).
    fn sign_request(
        &self,
        csr_pem: &str,
        subject: DistinguishedName,
        sans: Vec<SanType>,
        usages: Vec<ExtendedKeyUsagePurpose>,
        lifetime: Duration,
    ) -> Result<String, CaError> {
        let mut request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadRequest(e.to_string()))?;
        let gen_err = |e: rcgen::Error| CaError::Generate(e.to_string());
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        params.distinguished_name = subject;
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + lifetime;
        request.params = params;
        let cert = request.signed_by(&self.issuer).map_err(gen_err)?;
        Ok(cert.pem())
    }
}

impl ClusterCa {
    /// Node certificates signed from now on are valid this long (default
    /// [`NODE_CERT_LIFETIME`]); nodes renew at half of it.
    pub fn set_node_lifetime(&mut self, lifetime: Duration) {
        self.node_lifetime = lifetime;
    }

    /// Workload certificates signed from now on are valid this long
    /// (default [`WORKLOAD_CERT_LIFETIME`]).
    pub fn set_workload_lifetime(&mut self, lifetime: Duration) {
        self.workload_lifetime = lifetime;
    }

    /// Issues node `node`'s certificate for `workload`, from a CSR (PEM)
    /// for a key of the node's: a client certificate whose one SPIFFE ID
    /// is the workload's, also naming the node and its incarnation, so it
    /// is honoured only while that node is a member. The caller checks
    /// that the workload is placed on the node.
    ///
    /// # Errors
    ///
    /// [`CaError::BadRequest`] for a CSR that does not parse or verify.
    pub fn sign_workload(
        &self,
        node: &str,
        incarnation: &str,
        workload: &skiff_runtime::mesh::WorkloadId,
        csr_pem: &str,
    ) -> Result<String, CaError> {
        check_node_name(node)?;
        let gen_err = |e: rcgen::Error| CaError::Generate(e.to_string());
        let uris = [
            workload.spiffe_id(),
            crate::mesh::members::node_uri(node),
            crate::mesh::members::incarnation_uri(incarnation),
        ];
        let sans = uris
            .into_iter()
            .map(|uri| Ok(SanType::URI(uri.try_into().map_err(gen_err)?)))
            .collect::<Result<Vec<_>, CaError>>()?;
        self.sign_request(
            csr_pem,
            name(&format!("skiff workload {workload} on {node}")),
            sans,
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            self.workload_lifetime,
        )
    }

    /// Issues the control plane's own serving certificate for `hosts` (IP
    /// addresses or DNS names it is reached by), with a fresh key. Returns
    /// `(chain_pem, key_pem)`; the chain holds the leaf then the CA, so a
    /// joining node can check the CA against its token's pin.
    ///
    /// # Errors
    ///
    /// A host that is neither an IP address nor a DNS name.
    pub fn sign_control_plane(&self, hosts: &[String]) -> Result<(String, String), CaError> {
        let gen_err = |e: rcgen::Error| CaError::Generate(e.to_string());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        params.distinguished_name = name(&format!("skiff cluster {} control plane", self.cluster));
        let mut sans = vec![SanType::URI(
            format!("spiffe://{}/control-plane", self.cluster)
                .try_into()
                .map_err(gen_err)?,
        )];
        for host in hosts {
            sans.push(match host.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.clone().try_into().map_err(gen_err)?),
            });
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_LIFETIME;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok((
            format!("{}{}", cert.pem(), self.cert_pem),
            key.serialize_pem(),
        ))
    }
}

/// Checks that `name` can name a node: one lower-case DNS label (letters,
/// digits and `-`, starting and ending with a letter or digit, at most 63
/// characters), not all digits and not `localhost`. It becomes the DNS
/// name other nodes verify in its certificate and part of its data
/// directory, so it must never read as an IP address or as this machine.
/// (The control plane also refuses the names its own certificate is
/// signed for.)
///
/// # Errors
///
/// [`CaError::BadName`] saying what is wrong.
pub fn check_node_name(name: &str) -> Result<(), CaError> {
    let bad = |reason| {
        Err(CaError::BadName {
            name: name.to_string(),
            reason,
        })
    };
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if name.is_empty() || name.len() > 63 {
        return bad("use 1 to 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad(
            "use lower-case letters, digits and '-' only (one DNS label: no dots, no upper case)",
        );
    }
    if !edge(name.as_bytes().first()) || !edge(name.as_bytes().last()) {
        return bad("start and end with a letter or digit");
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return bad("an all-digit name reads as an IP address; include a letter");
    }
    if name == "localhost" {
        return bad("\"localhost\" names the local machine everywhere; pick another name");
    }
    Ok(())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn name_of_node(node: &str) -> DistinguishedName {
    name(&format!("skiff node {node}"))
}
