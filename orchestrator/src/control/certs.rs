//! The certificates the cluster serves apps with over HTTPS, as the
//! control plane holds them: those stored (given with `skiff cert add`,
//! or ordered by ACME), the ACME challenges pending, each ACME domain's
//! progress; the bundle of them every node is sent; and what `skiff
//! certs` shows.

use crate::api::{CertificateView, ServedCertificate, TlsBundle};
use crate::certs::CertificateInfo;
use crate::state::{CertificateRecord, CertificateSource};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A certificate expiring within this long is `expires soon`, and warned
/// of when it is added.
pub(crate) const EXPIRES_SOON_SECS: i64 = 14 * 24 * 3600;

/// The cluster's certificates and ACME work, in the live state.
#[derive(Default)]
pub(crate) struct Certs {
    /// Stored certificates, by the name they are kept under.
    pub(crate) stored: BTreeMap<String, Held>,
    /// Pending HTTP-01 challenges: token to key authorization.
    pub(crate) challenges: BTreeMap<String, String>,
    /// How ordering each ACME domain goes.
    pub(crate) acme: BTreeMap<String, AcmeProgress>,
}

/// A stored certificate and what it says of itself.
pub(crate) struct Held {
    pub(crate) record: CertificateRecord,
    pub(crate) info: CertificateInfo,
}

/// How ordering a domain's certificate from the ACME server goes.
#[derive(Debug, Clone, Default)]
pub(crate) struct AcmeProgress {
    /// An order is under way.
    pub(crate) ordering: bool,
    /// Why the last attempt failed.
    pub(crate) error: Option<String>,
    /// Failures in a row.
    pub(crate) failures: u32,
    /// Not tried again before this, Unix seconds.
    pub(crate) next_try_unix: i64,
}

impl Certs {
    /// The certificates in `records`; one that does not read is logged
    /// and left out (the rest serve).
    pub(crate) fn load(records: Vec<CertificateRecord>) -> Certs {
        let mut certs = Certs::default();
        for record in records {
            if let Err(e) = certs.keep(record.clone()) {
                tracing::error!(
                    domain = record.domain,
                    "the stored certificate for {} cannot be served ({e}); add it again with `skiff cert add`",
                    record.domain
                );
            }
        }
        certs
    }

    /// Holds `record` (replacing the one for its domain); what its
    /// certificate says of itself.
    ///
    /// # Errors
    ///
    /// A certificate or key that does not read.
    pub(crate) fn keep(&mut self, record: CertificateRecord) -> Result<&CertificateInfo, String> {
        let read = crate::certs::read(&record.chain_pem, &record.key_pem)?;
        let domain = record.domain.clone();
        self.stored.insert(
            domain.clone(),
            Held {
                record,
                info: read.info,
            },
        );
        Ok(&self.stored[&domain].info)
    }

    /// The certificate serving `domain`: its own, else a wildcard's.
    pub(crate) fn covering(&self, domain: &str) -> Option<&Held> {
        self.stored.get(domain).or_else(|| {
            let (_, parent) = domain.split_once('.')?;
            self.stored.get(&format!("*.{parent}"))
        })
    }

    /// The bundle nodes are sent: every certificate with its key (for
    /// nodes serving HTTPS, `keys`), and the pending challenges, with a
    /// digest of them (empty when there are none).
    pub(crate) fn bundle(&self, keys: bool) -> TlsBundle {
        use sha2::{Digest as _, Sha256};
        let certificates: Vec<ServedCertificate> = if keys {
            self.stored
                .values()
                .map(|held| ServedCertificate {
                    domain: held.record.domain.clone(),
                    chain_pem: held.record.chain_pem.clone(),
                    key_pem: held.record.key_pem.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut hash = Sha256::new();
        for cert in &certificates {
            for part in [&cert.domain, &cert.chain_pem, &cert.key_pem] {
                hash.update((part.len() as u64).to_le_bytes());
                hash.update(part.as_bytes());
            }
        }
        for (token, authorization) in &self.challenges {
            for part in [token, authorization] {
                hash.update((part.len() as u64).to_le_bytes());
                hash.update(part.as_bytes());
            }
        }
        TlsBundle {
            // Nothing to serve is what a node holds before it hears of
            // any: the empty digest.
            digest: if certificates.is_empty() && self.challenges.is_empty() {
                String::new()
            } else {
                hex::encode(hash.finalize())
            },
            certificates,
            challenges: self.challenges.clone(),
        }
    }

    /// What nodes are sent now.
    pub(crate) fn published(&self) -> Published {
        Published {
            full: Arc::new(self.bundle(true)),
            challenges: Arc::new(self.bundle(false)),
        }
    }

    /// What `skiff certs` shows: every stored certificate, then every
    /// app domain none serves; `domains` is each app's domains, by app;
    /// `acme`, whether the control plane orders certificates.
    pub(crate) fn views(
        &self,
        domains: &BTreeMap<String, Vec<String>>,
        acme: bool,
        now_unix: i64,
    ) -> Vec<CertificateView> {
        let apps_of = |covers: &dyn Fn(&str) -> bool| -> Vec<String> {
            domains
                .iter()
                .filter(|(_, ds)| ds.iter().any(|d| covers(d)))
                .map(|(app, _)| app.clone())
                .collect()
        };
        let mut views: Vec<CertificateView> = self
            .stored
            .values()
            .map(|held| {
                let progress = self.acme.get(&held.record.domain);
                // A short-lived certificate is not "soon" to expire until
                // a third of its life is left.
                let lifetime = held.info.not_after - held.info.not_before;
                let soon = EXPIRES_SOON_SECS.min(lifetime / 3);
                let status = match progress {
                    _ if held.info.not_after <= now_unix => match progress {
                        Some(p) if p.error.is_some() => "expired, renewal failing",
                        _ => "expired",
                    },
                    _ if held.info.not_before > now_unix => "not yet valid",
                    Some(p) if p.ordering => "renewing",
                    Some(p) if p.error.is_some() => "renewal failing",
                    _ if held.info.not_after - now_unix < soon => "expires soon",
                    _ => "valid",
                };
                CertificateView {
                    domain: held.record.domain.clone(),
                    source: source_name(held.record.source).to_string(),
                    names: held.info.names.clone(),
                    issuer: held.info.issuer.clone(),
                    serial: held.info.serial.clone(),
                    not_after_unix: held.info.not_after,
                    apps: apps_of(&|d| {
                        crate::certs::name_covers(&held.record.domain, d)
                            && self
                                .covering(d)
                                .is_some_and(|c| c.record.domain == held.record.domain)
                    }),
                    status: status.to_string(),
                    error: progress.and_then(|p| p.error.clone()),
                    next_try_unix: progress
                        .filter(|p| p.error.is_some())
                        .map(|p| p.next_try_unix),
                }
            })
            .collect();
        let uncovered: BTreeSet<&String> = domains
            .values()
            .flatten()
            .filter(|d| self.covering(d).is_none())
            .collect();
        for domain in uncovered {
            let progress = self.acme.get(domain.as_str());
            let status = match progress {
                Some(p) if p.ordering => "ordering",
                Some(p) if p.error.is_some() => "order failing",
                _ if acme => "waiting to order",
                _ => "no certificate",
            };
            views.push(CertificateView {
                domain: domain.clone(),
                source: "none".to_string(),
                apps: apps_of(&|d| d == domain.as_str()),
                status: status.to_string(),
                error: progress.and_then(|p| p.error.clone()).or_else(|| {
                    (!acme).then(|| {
                        "served over plain HTTP only: add a certificate with `skiff cert add`, or start the control plane with --acme-directory".to_string()
                    })
                }),
                next_try_unix: progress
                    .filter(|p| p.error.is_some())
                    .map(|p| p.next_try_unix),
                ..CertificateView::default()
            });
        }
        views
    }
}

/// How a source is named to users.
pub(crate) fn source_name(source: CertificateSource) -> &'static str {
    match source {
        CertificateSource::Uploaded => "uploaded",
        CertificateSource::Acme => "acme",
    }
}

/// The TLS bundles nodes are sent: the whole one to nodes serving HTTPS;
/// to the others only the ACME challenges (every node's plain HTTP
/// answers them), and never a key.
#[derive(Clone, Default)]
pub(crate) struct Published {
    pub(crate) full: Arc<TlsBundle>,
    pub(crate) challenges: Arc<TlsBundle>,
}

impl Published {
    /// The bundle for a node that serves HTTPS (`https`) or not.
    pub(crate) fn for_node(&self, https: bool) -> &Arc<TlsBundle> {
        if https { &self.full } else { &self.challenges }
    }
}
