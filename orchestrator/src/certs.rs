//! Certificates apps are served with over HTTPS: reading one with its key
//! (and refusing a key that is not its own), what it says of itself
//! (names, issuer, dates), and which names it covers.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// The most bytes a certificate chain or key may take, PEM.
pub const MAX_PEM_BYTES: usize = 64 * 1024;

/// What a certificate says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The DNS names it is valid for (its subject alternative names, in
    /// lower case).
    pub names: Vec<String>,
    /// Who issued it (the issuer's distinguished name).
    pub issuer: String,
    /// Its serial number, hex.
    pub serial: String,
    /// Valid from, Unix seconds.
    pub not_before: i64,
    /// Valid until, Unix seconds.
    pub not_after: i64,
}

impl CertificateInfo {
    /// Whether the certificate is valid for `domain` (an exact name, or a
    /// wildcard that must then be among its names as such).
    pub fn covers(&self, domain: &str) -> bool {
        self.names.iter().any(|name| name_covers(name, domain))
    }
}

/// Whether certificate name `pattern` covers `domain`: the same name, or
/// a wildcard one label above an exact `domain`.
pub fn name_covers(pattern: &str, domain: &str) -> bool {
    if pattern.eq_ignore_ascii_case(domain) {
        return true;
    }
    match (pattern.strip_prefix("*."), domain.split_once('.')) {
        (Some(parent), Some((first, rest))) => {
            first != "*" && !first.is_empty() && rest.eq_ignore_ascii_case(parent)
        }
        _ => false,
    }
}

/// A certificate chain and key read together: the key TLS signs with and
/// what the leaf says of itself.
#[derive(Debug)]
pub struct Certificate {
    /// The chain with its signing key, as rustls serves it.
    pub key: Arc<CertifiedKey>,
    /// What the leaf says of itself.
    pub info: CertificateInfo,
}

/// Reads `chain_pem` (leaf first) with `key_pem`.
///
/// # Errors
///
/// PEM that holds no certificate or no key, or is too long; a key of a
/// kind TLS cannot sign with; a key that is not the leaf's; a leaf that
/// does not parse.
pub fn read(chain_pem: &str, key_pem: &str) -> Result<Certificate, String> {
    if chain_pem.len() > MAX_PEM_BYTES || key_pem.len() > MAX_PEM_BYTES {
        return Err(format!(
            "the certificate or key is over {} KiB of PEM",
            MAX_PEM_BYTES >> 10
        ));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate is not valid PEM: {}", pem_problem(&e)))?;
    let Some(leaf) = chain.first() else {
        return Err(
            "the certificate file holds no certificate (no \"BEGIN CERTIFICATE\" block)"
                .to_string(),
        );
    };
    let info = info(leaf)?;
    if key_pem.contains("ENCRYPTED") {
        return Err(
            "the key is encrypted: give it decrypted (`openssl pkey -in KEY -out plain.key`)"
                .to_string(),
        );
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        format!(
            "the key file holds no private key (a PKCS#8, PKCS#1 or SEC1 PEM block): {}",
            pem_problem(&e)
        )
    })?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("the key cannot sign TLS handshakes: {e}"))?;
    let matches = |cert: &CertificateDer<'static>| {
        CertifiedKey::new(vec![cert.clone()], signing.clone()).keys_match()
    };
    match matches(leaf) {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            // The domain's certificate may be there, but not first.
            if let Some(n) = chain.iter().skip(1).position(|c| matches(c).is_ok()) {
                return Err(format!(
                    "the key is that of certificate {} in the file, not the first: put the domain's certificate first, then the chain that signed it",
                    n + 2
                ));
            }
            return Err(
                "the key does not match the certificate: it is another certificate's key"
                    .to_string(),
            );
        }
        Err(e) => return Err(format!("cannot check the key against the certificate: {e}")),
    }
    let certified = CertifiedKey::new(chain, signing);
    Ok(Certificate {
        key: Arc::new(certified),
        info,
    })
}

/// What is wrong with a PEM file, in words that never quote it: the PEM
/// parser's own errors carry the offending line, and a key's line is the
/// key.
pub fn pem_problem(error: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error;
    match error {
        Error::MissingSectionEnd { .. } => {
            "a BEGIN line has no END line (a PEM file keeps its line breaks)"
        }
        Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        Error::Base64Decode(_) => "a block is not base64",
        Error::NoItemsFound => "no PEM block of that kind",
        _ => "it does not read as PEM",
    }
}

/// What the certificate `der` says of itself.
///
/// # Errors
///
/// A certificate that does not parse.
pub fn info(der: &[u8]) -> Result<CertificateInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        Some(dns.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CertificateInfo {
        names,
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// A Unix time as a UTC date and time, for messages.
pub fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix).map_or_else(
        |_| format!("{unix} (Unix time)"),
        |t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute()
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_certificate_is_read_only_with_its_own_key() {
        let (cert, key) = self_signed(&["shop.example.com"]);
        let read = read(&cert, &key).unwrap();
        assert_eq!(read.info.names, ["shop.example.com"]);
        assert!(read.info.covers("shop.example.com"));
        let (_, other_key) = self_signed(&["shop.example.com"]);
        let error = super::read(&cert, &other_key).unwrap_err();
        assert!(error.contains("does not match"), "{error}");
        let error = super::read("garbage", &key).unwrap_err();
        assert!(error.contains("no certificate"), "{error}");
        let error = super::read(&cert, "garbage").unwrap_err();
        assert!(error.contains("no private key"), "{error}");
        // A key on one line (as secret stores keep them) is refused
        // without quoting a byte of it.
        let one_line = key.replace('\n', "");
        let error = super::read(&cert, &one_line).unwrap_err();
        assert!(error.contains("has no END line"), "{error}");
        let body: String = key.lines().nth(1).unwrap().chars().take(12).collect();
        let bytes = format!("{:?}", body.as_bytes());
        assert!(
            !error.contains(&body) && !error.contains(&bytes[1..20]),
            "{error}"
        );
    }

    #[test]
    fn a_chain_out_of_order_or_an_encrypted_key_is_named() {
        let (cert, key) = self_signed(&["shop.example.com"]);
        let (other, _) = self_signed(&["ca.example.com"]);
        let error = read(&format!("{other}{cert}"), &key).unwrap_err();
        assert!(
            error.contains("certificate 2 in the file, not the first"),
            "{error}"
        );
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let error = read(&cert, encrypted).unwrap_err();
        assert!(error.contains("the key is encrypted"), "{error}");
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_covers("*.example.com", "shop.example.com"));
        assert!(!name_covers("*.example.com", "a.shop.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(!name_covers("*.example.com", "*.example.com.evil"));
        assert!(name_covers("*.example.com", "*.example.com"));
        assert!(!name_covers("shop.example.com", "*.example.com"));
    }
}
