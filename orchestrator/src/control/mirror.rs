//! Standby control planes' copies of the leader's packages, so that one
//! taking over can read every app's package and serve it to nodes. The
//! leader pushes a package to every standby before a deploy declares it
//! ([`push`]); each standby also copies, from the leader, every version an
//! app declared in the store may run that it lacks ([`run`]: one that was
//! down during a deploy catches up). Blobs travel by digest, with the
//! cluster's admin token, and are verified against it on arrival.

use super::Shared;
use crate::api_client::ApiClient;
use crate::state::AppRecord;
use skiff_runtime::package::Digest;
use skiff_runtime::package::blob::{BlobSize, MAX_BLOB_SIZE};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the store is read for versions to copy.
const EVERY: Duration = Duration::from_secs(2);

/// The longest one blob may take to arrive.
const BLOB_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the leader waits on a standby for a deploy's package: a
/// standby that hangs must not hold up deploys (it copies the package
/// itself later).
const PUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// A blob that failed is tried again after this.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Pushes the `blobs` of a package to every other control plane of the
/// cluster that lacks them; what could not be pushed, as warnings (that
/// standby copies them itself once it can reach the leader).
pub(super) async fn push(shared: &Shared, blobs: &BTreeSet<Digest>) -> Vec<String> {
    // Read now, not the list refreshed each second: a standby that
    // started a moment ago must not miss the package.
    let others: Vec<String> = match &shared.etcd {
        Some(etcd) => match etcd.servers() {
            Ok(servers) => servers.into_iter().filter(|s| *s != shared.url).collect(),
            Err(e) => {
                return vec![format!(
                    "cannot list the standby control planes to copy the package to: {e}"
                )];
            }
        },
        None => return Vec::new(),
    };
    let tls = match crate::mesh::tls::client_trusting(shared.ca.cert_pem()) {
        Ok(tls) => tls,
        Err(e) => {
            return vec![format!(
                "cannot copy the package to the standby control planes: {e}"
            )];
        }
    };
    let mut warnings = Vec::new();
    for standby in others {
        let client = ApiClient::new(&standby, tls.clone(), Some(shared.admin_token.clone()));
        for digest in blobs {
            let pushed = async {
                let path = format!("/v1/standby/blobs/{digest}");
                let here = client
                    .send(http::Method::HEAD, &path, None, PUSH_TIMEOUT)
                    .await;
                match here {
                    Ok(_) => return Ok(()),
                    Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => {}
                    Err(e) => return Err(e.to_string()),
                }
                let bytes = shared.packages.read(digest).map_err(|e| e.to_string())?;
                client
                    .send(
                        http::Method::PUT,
                        &path,
                        Some((bytes.into(), "application/octet-stream")),
                        PUSH_TIMEOUT * 4,
                    )
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            };
            if let Err(e) = pushed.await {
                tracing::warn!(standby, "cannot copy a package to a standby: {e}");
                warnings.push(format!(
                    "the package could not be copied to the standby control plane {standby} ({e}); it copies it from the leader once it can"
                ));
                break;
            }
        }
    }
    warnings
}

/// Copies the leader's packages whenever this control plane stands by
/// for a known leader; runs until aborted.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut mirror = Mirror::new(&shared);
    let mut role = shared.role.subscribe();
    loop {
        let leader = match &*role.borrow_and_update() {
            super::leader::Role::Standing(Some(leader)) => Some(leader.clone()),
            _ => None,
        };
        if let Some(leader) = leader {
            mirror.copy_from(&leader).await;
        }
        // Woken early when the role changes.
        let _ = tokio::time::timeout(EVERY, role.changed()).await;
    }
}

/// What a standby copied, and from where.
struct Mirror {
    shared: Arc<Shared>,
    /// The leader copied from, and a client of it.
    client: Option<(String, ApiClient)>,
    /// When the store was last read.
    last: Option<Instant>,
    /// Blobs that failed, and when to try again.
    failed: HashMap<Digest, Instant>,
}

impl Mirror {
    fn new(shared: &Arc<Shared>) -> Mirror {
        Mirror {
            shared: shared.clone(),
            client: None,
            last: None,
            failed: HashMap::new(),
        }
    }

    /// Copies what is missing of every declared version from `leader`,
    /// at most every [`EVERY`].
    async fn copy_from(&mut self, leader: &str) {
        if self.last.is_some_and(|last| last.elapsed() < EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let apps = {
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || shared.store.apps()).await
        };
        let versions: BTreeSet<String> = match apps {
            Ok(Ok(apps)) => apps.iter().flat_map(AppRecord::versions).cloned().collect(),
            _ => return,
        };
        let client = match &self.client {
            Some((url, client)) if url == leader => client.clone(),
            _ => {
                let tls = match crate::mesh::tls::client_trusting(self.shared.ca.cert_pem()) {
                    Ok(tls) => tls,
                    Err(e) => {
                        tracing::error!("cannot copy packages from the leader: {e}");
                        return;
                    }
                };
                let client = ApiClient::new(leader, tls, Some(self.shared.admin_token.clone()));
                self.client = Some((leader.to_string(), client.clone()));
                client
            }
        };
        for version in versions {
            let Ok(manifest) = version.parse::<Digest>() else {
                continue;
            };
            if !self.copy(&client, &manifest).await {
                continue;
            }
            let Ok(read) = self.shared.packages.manifest(&manifest) else {
                continue;
            };
            for blob in std::iter::once(read.config).chain(read.layers) {
                self.copy(&client, &blob.digest).await;
            }
        }
    }

    /// Copies blob `digest` unless it is here; whether it is now.
    async fn copy(&mut self, client: &ApiClient, digest: &Digest) -> bool {
        let packages = &self.shared.packages;
        if packages.blob_path(digest).exists() {
            return true;
        }
        if self
            .failed
            .get(digest)
            .is_some_and(|at| at.elapsed() < RETRY_AFTER)
        {
            return false;
        }
        let copied = async {
            let body = client
                .download(&format!("/v1/blobs/{digest}"), BLOB_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            let writer = packages
                .writer(digest, BlobSize::AtMost(MAX_BLOB_SIZE))
                .map_err(|e| e.to_string())?;
            writer
                .receive(body, BLOB_TIMEOUT)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        };
        match copied.await {
            Ok(()) => {
                self.failed.remove(digest);
                true
            }
            Err(e) => {
                tracing::warn!(%digest, "cannot copy a package blob from the leader: {e}");
                self.failed.insert(digest.clone(), Instant::now());
                false
            }
        }
    }
}
