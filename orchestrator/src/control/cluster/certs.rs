//! An admin's changes to the cluster's certificates: `skiff cert add`
//! (checked against its key, its domain and its dates before it is
//! stored) and `skiff cert rm`; and the list `skiff certs` shows.

use super::Refused;
use crate::api::{CertAddRequest, CertAddResponse, CertificateView};
use crate::control::{Live, Shared};
use crate::state::{CertificateRecord, CertificateSource};
use std::collections::BTreeMap;

/// A certificate not yet valid this far in the future is refused: a
/// clock a few minutes off is not.
const CLOCK_SLACK_SECS: i64 = 300;

/// `POST /v1/certs`: stores a certificate and key for a domain, after
/// checking that the key is the certificate's, that it is valid for the
/// domain, and that it is in date; every node serves it from its next
/// heartbeat.
pub(crate) fn add(shared: &Shared, request: CertAddRequest) -> Result<CertAddResponse, Refused> {
    let domain = request.domain.trim().to_string();
    skiff_runtime::domain::check_certificate_name(&domain).map_err(Refused::Invalid)?;
    let read = crate::certs::read(&request.chain_pem, &request.key_pem)
        .map_err(|e| Refused::Invalid(format!("certificate for {domain} refused: {e}")))?;
    let info = &read.info;
    if !info.covers(&domain) {
        return Err(Refused::Invalid(format!(
            "certificate for {domain} refused: it is not valid for {domain}; it names {}",
            match info.names.as_slice() {
                [] => "no DNS names (no subject alternative names)".to_string(),
                names => names.join(", "),
            }
        )));
    }
    let now = crate::clock::unix_secs() as i64;
    if info.not_after <= now {
        return Err(Refused::Invalid(format!(
            "certificate for {domain} refused: it expired on {}",
            crate::certs::date(info.not_after)
        )));
    }
    if info.not_before > now + CLOCK_SLACK_SECS {
        return Err(Refused::Invalid(format!(
            "certificate for {domain} refused: it is not valid until {}",
            crate::certs::date(info.not_before)
        )));
    }
    let mut warnings = Vec::new();
    if info.not_after - now < crate::control::certs::EXPIRES_SOON_SECS {
        warnings.push(format!(
            "it expires on {}: add its renewal before then",
            crate::certs::date(info.not_after)
        ));
    }
    let record = CertificateRecord {
        domain: domain.clone(),
        chain_pem: request.chain_pem,
        key_pem: request.key_pem,
        source: CertificateSource::Uploaded,
        added_unix: now as u64,
    };
    let mut live = shared.live();
    shared.store.put_certificate(&record)?;
    let replaced = live.certs.stored.contains_key(&domain);
    live.certs
        .keep(record)
        .map_err(|e| Refused::Internal(format!("the certificate read once but not twice: {e}")))?;
    // Given by hand, it is the domain's from now on: no ACME order.
    live.certs.acme.remove(&domain);
    let domains = app_domains(&live);
    if !domains
        .values()
        .flatten()
        .any(|d| crate::certs::name_covers(&domain, d))
    {
        warnings.push(format!(
            "no app lists {domain} in its [app] domains yet: nodes hold the certificate, and serve it once one does"
        ));
    }
    shared.publish_tls(&live);
    let view = live
        .certs
        .views(&domains, shared.config.acme.is_some(), now)
        .into_iter()
        .find(|v| v.domain == domain)
        .expect("the certificate just kept is listed");
    tracing::info!(domain, replaced, "certificate added");
    Ok(CertAddResponse {
        certificate: view,
        replaced,
        warnings,
    })
}

/// `DELETE /v1/certs/DOMAIN`: removes a certificate; nodes stop serving
/// it from their next heartbeat (with ACME, the domain is ordered anew).
/// Returns the wildcard certificate that serves the domain now, if one
/// does.
pub(crate) fn remove(shared: &Shared, domain: &str) -> Result<Option<String>, Refused> {
    let mut live = shared.live();
    if !live.certs.stored.contains_key(domain) {
        return Err(Refused::NotFound(format!(
            "no certificate for {domain:?}; see `skiff certs`"
        )));
    }
    shared.store.delete_certificate(domain)?;
    live.certs.stored.remove(domain);
    live.certs.acme.remove(domain);
    shared.publish_tls(&live);
    tracing::info!(domain, "certificate removed");
    Ok(live
        .certs
        .covering(domain)
        .map(|held| held.record.domain.clone()))
}

/// `GET /v1/certs`: every certificate and every app domain without one.
pub(crate) fn list(shared: &Shared) -> Vec<CertificateView> {
    let live = shared.live();
    live.certs.views(
        &app_domains(&live),
        shared.config.acme.is_some(),
        crate::clock::unix_secs() as i64,
    )
}

/// Each app's `[app] domains`, by app (of the version it runs).
pub(crate) fn app_domains(live: &Live) -> BTreeMap<String, Vec<String>> {
    live.apps
        .keys()
        .filter_map(|app| {
            let spec = live.spec(app)?;
            (!spec.domains.is_empty()).then(|| (app.clone(), spec.domains.clone()))
        })
        .collect()
}
