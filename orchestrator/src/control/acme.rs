//! Certificates ordered from an ACME server (RFC 8555, as Let's Encrypt
//! speaks it) for app domains no certificate was given for, and renewed
//! before they expire. The leading control plane orders each domain once
//! for the whole cluster: the HTTP-01 challenge is sent to every node
//! with the TLS bundle, each node's ingress answers it, and the
//! certificate goes to every node the same way. A failed order is tried
//! again with backoff, its reason shown by `skiff certs`; a certificate
//! being renewed keeps serving until it expires.

use super::Shared;
use super::certs::AcmeProgress;
use crate::state::{CertificateRecord, CertificateSource};
use http_body_util::BodyExt;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Where and how a control plane orders certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The ACME server's directory URL (Let's Encrypt's is
    /// `https://acme-v02.api.letsencrypt.org/directory`).
    pub directory: String,
    /// Contact addresses for the account (`mailto:` URLs).
    pub contact: Vec<String>,
    /// A PEM file of roots the directory's own HTTPS certificate is
    /// checked against, besides the Mozilla roots (a test server's).
    pub ca_roots: Option<PathBuf>,
    /// How long before expiry a certificate is renewed; none: when a
    /// third of its lifetime is left (30 days of Let's Encrypt's 90).
    pub renew_before: Option<Duration>,
}

/// How often the domains are looked over.
const EVERY: Duration = Duration::from_secs(2);

/// The longest one order may take, from new order to certificate.
const ORDER_TIMEOUT: Duration = Duration::from_secs(180);

/// The longest one request to the ACME server may take to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The most bytes of one answer from the ACME server.
const MAX_ANSWER: usize = 1 << 20;

/// How long the challenge waits for every node to hold it.
const SPREAD_TIMEOUT: Duration = Duration::from_secs(15);

/// The first wait after a failure; it doubles with each failure in a row.
const FIRST_BACKOFF_SECS: i64 = 10;

/// The longest wait after failures.
const MAX_BACKOFF_SECS: i64 = 3600;

/// Orders and renews certificates while this control plane leads.
pub(super) async fn run(shared: Arc<Shared>) {
    let Some(config) = shared.config.acme.clone() else {
        return;
    };
    let mut account: Option<Account> = None;
    loop {
        tokio::time::sleep(EVERY).await;
        while let Some(domain) = next_due(&shared, &config) {
            let ordered = tokio::time::timeout(
                ORDER_TIMEOUT,
                order(&shared, &config, &mut account, &domain),
            )
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the order did not complete within {}s",
                    ORDER_TIMEOUT.as_secs()
                ))
            });
            settle(&shared, &domain, ordered);
        }
    }
}

/// The next app domain to order a certificate for: one with none (or an
/// ACME one due for renewal), not waiting out a failure. Marked as being
/// ordered.
fn next_due(shared: &Shared, config: &AcmeConfig) -> Option<String> {
    let mut live = shared.live();
    let now = crate::clock::unix_secs() as i64;
    let domains = super::cluster::certs::app_domains(&live);
    // The most pressing first (none yet, then the one renewal is due
    // soonest for), so a domain ordered again and again cannot keep the
    // others waiting.
    let due = domains
        .values()
        .flatten()
        .filter(|domain| {
            !live
                .certs
                .acme
                .get(domain.as_str())
                .is_some_and(|p| p.ordering || p.next_try_unix > now)
        })
        .filter_map(|domain| {
            let due_at = match live.certs.covering(domain) {
                None => i64::MIN,
                Some(held) if held.record.source == CertificateSource::Uploaded => return None,
                Some(held) => renew_at(&held.info, config),
            };
            (due_at <= now).then_some((due_at, domain))
        })
        .min()
        .map(|(_, domain)| domain.clone())?;
    live.certs.acme.entry(due.clone()).or_default().ordering = true;
    Some(due)
}

/// When a certificate ordered from the ACME server is renewed: when a
/// third of its lifetime is left, or `--acme-renew-before`, but never
/// before half its lifetime is up (a value past its lifetime would have
/// it ordered again at once, and again, into the server's rate limits).
pub(super) fn renew_at(info: &crate::certs::CertificateInfo, config: &AcmeConfig) -> i64 {
    let lifetime = (info.not_after - info.not_before).max(0);
    let before = config
        .renew_before
        .map_or(lifetime / 3, |d| {
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
        })
        .min(lifetime / 2);
    info.not_after - before
}

/// Keeps what ordering `domain` came to: the certificate, or why not
/// (and when to try again).
fn settle(shared: &Shared, domain: &str, ordered: Result<CertificateRecord, String>) {
    let mut live = shared.live();
    live.certs.challenges.clear();
    let now = crate::clock::unix_secs() as i64;
    // A certificate given by hand while the order ran is the domain's:
    // the order's is dropped.
    let given = live
        .certs
        .covering(domain)
        .is_some_and(|held| held.record.source == CertificateSource::Uploaded);
    let renewing = live.certs.stored.contains_key(domain);
    match ordered {
        Ok(_) if given => {
            live.certs.acme.remove(domain);
        }
        Ok(record) => {
            let kept = shared
                .store
                .put_certificate(&record)
                .map_err(|e| format!("cannot store the certificate: {e}"))
                .and_then(|()| live.certs.keep(record).map(drop));
            match kept {
                Ok(()) => {
                    let what = if renewing { "renewed" } else { "ordered" };
                    tracing::info!(domain, "certificate {what} from the ACME server");
                    live.certs.acme.remove(domain);
                }
                Err(e) => failed(&mut live.certs.acme, domain, e, now),
            }
        }
        Err(e) => failed(&mut live.certs.acme, domain, e, now),
    }
    shared.publish_tls(&live);
}

/// The longest challenge token taken.
const MAX_TOKEN: usize = 256;

/// The most of an error kept to show (an ACME server writes its own
/// problem details, of any length).
const MAX_ERROR: usize = 1024;

/// `text` with control characters escaped, cut to [`MAX_ERROR`] bytes.
fn printable_clipped(text: &str) -> String {
    let text = skiff_runtime::printable::printable(text);
    if text.len() <= MAX_ERROR {
        return text.into_owned();
    }
    let mut end = MAX_ERROR;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} … ({} bytes cut)", &text[..end], text.len() - end)
}

/// Records that ordering `domain` failed with `error` at `now`.
fn failed(
    progress: &mut std::collections::BTreeMap<String, AcmeProgress>,
    domain: &str,
    error: String,
    now: i64,
) {
    let error = printable_clipped(&error);
    let entry = progress.entry(domain.to_string()).or_default();
    entry.ordering = false;
    entry.failures += 1;
    let backoff = FIRST_BACKOFF_SECS
        .saturating_mul(1 << (entry.failures - 1).min(20))
        .min(MAX_BACKOFF_SECS);
    entry.next_try_unix = now + backoff;
    tracing::warn!(
        domain,
        "cannot get a certificate for {domain} from the ACME server: {error}; trying again in {backoff}s"
    );
    entry.error = Some(error);
}

/// Orders a certificate for `domain`: the account (made once and kept in
/// the store), the order, its HTTP-01 challenge spread to every node,
/// then a new key, its CSR, and the certificate.
async fn order(
    shared: &Shared,
    config: &AcmeConfig,
    account: &mut Option<Account>,
    domain: &str,
) -> Result<CertificateRecord, String> {
    let identifiers = [Identifier::Dns(domain.to_string())];
    let refused = |e: instant_acme::Error| {
        format!(
            "cannot place an order with the ACME server {}: {e}",
            config.directory
        )
    };
    let acme = match account {
        Some(account) => account.clone(),
        None => account
            .insert(open_account(shared, config, false).await?)
            .clone(),
    };
    let mut order = match acme.new_order(&NewOrder::new(&identifiers)).await {
        Ok(order) => order,
        // The server forgot the account (reset, or deactivated on its
        // side): a new one, kept in place of the old.
        Err(instant_acme::Error::Api(problem))
            if problem
                .r#type
                .as_deref()
                .is_some_and(|t| t.ends_with(":accountDoesNotExist")) =>
        {
            tracing::warn!(
                "the ACME server {} does not know the cluster's account; making a new one",
                config.directory
            );
            let fresh = account.insert(open_account(shared, config, true).await?);
            fresh
                .new_order(&NewOrder::new(&identifiers))
                .await
                .map_err(refused)?
        }
        Err(e) => return Err(refused(e)),
    };
    if order.state().authorizations.len() != 1 {
        return Err(format!(
            "the ACME server asks for {} authorizations for one domain",
            order.state().authorizations.len()
        ));
    }
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization =
            authorization.map_err(|e| format!("cannot read the order's authorization: {e}"))?;
        let named = authorization.identifier().to_string();
        if named != domain {
            return Err(format!(
                "the ACME server asks to authorize {} for an order of {domain}",
                printable_clipped(&named)
            ));
        }
        match authorization.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            status => return Err(format!("the authorization is {status:?}")),
        }
        let mut challenge = authorization
            .challenge(ChallengeType::Http01)
            .ok_or("the ACME server offers no HTTP-01 challenge for the domain")?;
        let token = challenge.token.clone();
        let key_authorization = challenge.key_authorization().as_str().to_string();
        spread_challenge(shared, token, key_authorization).await?;
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("the ACME server refused the challenge: {e}"))?;
    }
    let retries = RetryPolicy::new().timeout(Duration::from_secs(90));
    let status = order
        .poll_ready(&retries)
        .await
        .map_err(|e| format!("the domain was not validated: {e}"))?;
    if status != OrderStatus::Ready {
        return Err(format!(
            "the domain was not validated (the order is {status:?}): the ACME server could not fetch the challenge from http://{domain}/.well-known/acme-challenge/ on a node"
        ));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])
        .map_err(|e| format!("cannot make the request: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("cannot make the request: {e}"))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| format!("the ACME server refused to finalize the order: {e}"))?;
    let chain_pem = order
        .poll_certificate(&retries)
        .await
        .map_err(|e| format!("the ACME server issued no certificate: {e}"))?;
    let record = CertificateRecord {
        domain: domain.to_string(),
        chain_pem,
        key_pem: key.serialize_pem(),
        source: CertificateSource::Acme,
        added_unix: crate::clock::unix_secs(),
    };
    let issued = crate::certs::read(&record.chain_pem, &record.key_pem)
        .map_err(|e| format!("the ACME server issued an unusable certificate: {e}"))?;
    // Renewed half way through its life at the soonest: one that is over
    // on arrival would be ordered again at once, and again.
    if issued.info.not_after <= crate::clock::unix_secs() as i64 {
        return Err(format!(
            "the ACME server issued a certificate that has expired ({})",
            crate::certs::date(issued.info.not_after)
        ));
    }
    if !issued.info.covers(domain) {
        return Err(format!(
            "the ACME server issued a certificate for {} instead",
            issued.info.names.join(", ")
        ));
    }
    Ok(record)
}

/// The cluster's account at the directory: the one kept in the store
/// (unless `fresh`), else a new one (then kept).
async fn open_account(
    shared: &Shared,
    config: &AcmeConfig,
    fresh: bool,
) -> Result<Account, String> {
    let http = || -> Result<Box<dyn HttpClient>, String> { Ok(Box::new(Client::new(config)?)) };
    let kept = shared
        .store
        .acme_account(&config.directory)
        .map_err(|e| format!("cannot read the ACME account: {e}"))?;
    if let Some(kept) = kept.filter(|_| !fresh) {
        match serde_json::from_str::<AccountCredentials>(&kept) {
            Ok(credentials) => {
                return Account::builder_with_http(http()?)
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| {
                        format!("cannot reach the ACME server {}: {e}", config.directory)
                    });
            }
            Err(e) => {
                tracing::error!("the stored ACME account does not read ({e}); making a new one")
            }
        }
    }
    let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
    let (account, credentials) = Account::builder_with_http(http()?)
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            None,
        )
        .await
        .map_err(|e| {
            format!(
                "cannot make an account at the ACME server {}: {e}",
                config.directory
            )
        })?;
    let saved = serde_json::to_string(&credentials).expect("credentials serialize");
    shared
        .store
        .put_acme_account(&config.directory, &saved)
        .map_err(|e| format!("cannot store the ACME account: {e}"))?;
    Ok(account)
}

/// Sends the challenge's answer to every node, and waits until each that
/// is up holds it (or [`SPREAD_TIMEOUT`] passes: the ACME server may well
/// reach one that does).
async fn spread_challenge(
    shared: &Shared,
    token: String,
    key_authorization: String,
) -> Result<(), String> {
    // RFC 8555 tokens are base64url, 128 bits or more: 22 characters and
    // up; none needs more than a few hundred.
    if token.is_empty()
        || token.len() > MAX_TOKEN
        || key_authorization.len() > 2 * MAX_TOKEN
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "the ACME server sent a challenge token that is not base64url of at most {MAX_TOKEN} characters: {}",
            printable_clipped(&token)
        ));
    }
    let published = {
        let mut live = shared.live();
        live.certs.challenges.insert(token, key_authorization);
        shared.publish_tls(&live);
        shared.tls.borrow().clone()
    };
    let deadline = tokio::time::Instant::now() + SPREAD_TIMEOUT;
    loop {
        let waiting = {
            let live = shared.live();
            live.nodes
                .values()
                .filter(|n| {
                    n.heard && !n.down && n.tls != published.for_node(n.https.is_some()).digest
                })
                .count()
        };
        if waiting == 0 || tokio::time::Instant::now() >= deadline {
            if waiting > 0 {
                tracing::warn!(
                    "{waiting} nodes do not hold the ACME challenge yet; asking the ACME server to check anyway"
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `error` and what caused it, innermost last: "client error (Connect)"
/// alone says nothing of a refused connection or a bad certificate.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The HTTP client the ACME account speaks through: HTTPS only, the
/// Mozilla roots and any given, bounded answers and waits.
struct Client {
    inner: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        BodyWrapper<bytes::Bytes>,
    >,
}

impl Client {
    fn new(config: &AcmeConfig) -> Result<Client, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &config.ca_roots {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read --acme-ca-roots {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    format!(
                        "--acme-ca-roots {}: {}",
                        path.display(),
                        crate::certs::pem_problem(&e)
                    )
                })?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--acme-ca-roots {}: {e}", path.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(Client {
            inner:
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build(connector),
        })
    }
}

impl HttpClient for Client {
    fn request(
        &self,
        request: http::Request<BodyWrapper<bytes::Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let answer = self.inner.request(request);
        Box::pin(async move {
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, answer)
                .await
                .map_err(|_| instant_acme::Error::Str("the ACME server did not answer within 30s"))?
                .map_err(|e| {
                    let what = if e.is_connect() {
                        "cannot reach it"
                    } else {
                        "the request failed"
                    };
                    instant_acme::Error::Other(format!("{what}: {}", causes(&e)).into())
                })?;
            // Read here, bounded in size and time: the account reads
            // whatever it is given.
            let (parts, body) = answer.into_parts();
            let body = tokio::time::timeout(
                REQUEST_TIMEOUT,
                http_body_util::Limited::new(body, MAX_ANSWER).collect(),
            )
            .await
            .map_err(|_| {
                instant_acme::Error::Str("the ACME server's answer did not arrive within 30s")
            })?
            .map_err(instant_acme::Error::Other)?
            .to_bytes();
            Ok(BytesResponse::from(http::Response::from_parts(
                parts,
                http_body_util::Full::new(body),
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lasting(seconds: i64) -> crate::certs::CertificateInfo {
        crate::certs::CertificateInfo {
            names: vec!["shop.example.com".to_string()],
            issuer: String::new(),
            serial: String::new(),
            not_before: 1_000,
            not_after: 1_000 + seconds,
        }
    }

    #[test]
    fn renewal_comes_a_third_before_expiry_and_never_before_half_the_lifetime() {
        let mut config = AcmeConfig {
            directory: "https://acme.example/dir".to_string(),
            contact: Vec::new(),
            ca_roots: None,
            renew_before: None,
        };
        let days = |n: i64| n * 86_400;
        assert_eq!(renew_at(&lasting(days(90)), &config), 1_000 + days(60));
        config.renew_before = Some(Duration::from_secs(days(10) as u64));
        assert_eq!(renew_at(&lasting(days(90)), &config), 1_000 + days(80));
        // Past the lifetime (or a year for a 90-day certificate): not at
        // once, again and again, but half way.
        config.renew_before = Some(Duration::from_secs(days(365) as u64));
        assert_eq!(renew_at(&lasting(days(90)), &config), 1_000 + days(45));
        config.renew_before = Some(Duration::MAX);
        assert_eq!(renew_at(&lasting(days(90)), &config), 1_000 + days(45));
    }
}
