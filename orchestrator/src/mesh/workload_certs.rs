//! The workload identities a node holds: for each workload placed here
//! that calls components on other nodes, a key made here, the certificate
//! the control plane issued for it (only to a node the workload is placed
//! on), and a mesh client presenting it. Obtained on the workload's first
//! call across nodes; renewed in the background from half its life on,
//! while calls keep using the one held (so a control plane that hangs
//! delays no call); dropped when the workload leaves the node. Each is
//! also kept in the node's data directory (`workload-certs/`, mode 0600),
//! so a node restarted while the control plane is away still calls across
//! nodes with the certificates it held.

use super::NodeIdentity;
use super::client::MeshClient;
use crate::api::{WorkloadCertRequest, WorkloadCertResponse};
use crate::node::NodeShared;
use skiff_runtime::mesh::WorkloadId;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A workload's certificate stops being used this close to its expiry
/// when it could not be renewed.
const EXPIRY_MARGIN_SECS: i64 = 2;
/// How long the control plane may take to issue a certificate: well under
/// a mesh call's own timeout, so a first call fails fast rather than late.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed request, the next for that workload waits this long.
const RETRY_AFTER_SECS: i64 = 5;

/// The identities of the workloads on this node that call across nodes.
pub(crate) struct WorkloadIdentities {
    /// Where each certificate and its key are kept between restarts, one
    /// file per workload (`<app>.<component>.pem`).
    saved: PathBuf,
    held: Mutex<HashMap<WorkloadId, Held>>,
    /// Per workload, one first request at a time: a burst of its first
    /// calls waits for the one certificate instead of asking for many
    /// (each at most [`ISSUE_TIMEOUT`]). Other workloads do not wait.
    obtaining: Mutex<HashMap<WorkloadId, Arc<tokio::sync::Mutex<()>>>>,
    /// Workloads whose renewal runs in the background now.
    renewing: Mutex<HashSet<WorkloadId>>,
    /// Per workload, no request before then (Unix seconds): the last one
    /// failed.
    failed_until: Mutex<HashMap<WorkloadId, i64>>,
}

struct Held {
    client: MeshClient,
    /// Renewed from then on, Unix seconds.
    renew_at: i64,
    /// Not valid from then on, Unix seconds.
    expires: i64,
}

impl WorkloadIdentities {
    /// The identities of a node whose data directory is `data_dir`.
    pub(crate) fn new(data_dir: &Path) -> WorkloadIdentities {
        WorkloadIdentities {
            saved: data_dir.join("workload-certs"),
            held: Mutex::default(),
            obtaining: Mutex::default(),
            renewing: Mutex::default(),
            failed_until: Mutex::default(),
        }
    }

    /// A mesh client presenting `workload`'s certificate: the one held
    /// while it is valid (renewed in the background once due), else one
    /// obtained now.
    ///
    /// # Errors
    ///
    /// Why no valid certificate could be had (the control plane refused,
    /// is unreachable or slow, or failed moments ago).
    pub(crate) async fn client(
        &self,
        node: &Arc<NodeShared>,
        workload: &WorkloadId,
    ) -> Result<MeshClient, String> {
        let arrived = now();
        if let Some(client) = self.current(workload, arrived, true) {
            return Ok(client);
        }
        if let Some(client) = self.current(workload, arrived, false) {
            self.renew_in_background(node, workload);
            return Ok(client);
        }
        let one = self
            .obtaining
            .lock()
            .expect("workload identities lock")
            .entry(workload.clone())
            .or_default()
            .clone();
        let _one = one.lock().await;
        // Another call may have obtained it while this one waited.
        let now = now();
        if let Some(client) = self.current(workload, now, false) {
            return Ok(client);
        }
        // Kept from before a restart: valid still, and this node's.
        if let Some(client) = self.load_saved(node, workload, now) {
            return Ok(client);
        }
        self.obtain_now(node, workload, now).await
    }

    /// Obtains `workload`'s certificate and keeps it, unless a request for
    /// it failed moments ago.
    async fn obtain_now(
        &self,
        node: &NodeShared,
        workload: &WorkloadId,
        now: i64,
    ) -> Result<MeshClient, String> {
        let failed_until = self
            .failed_until
            .lock()
            .expect("workload identities lock")
            .get(workload)
            .copied();
        if failed_until.is_some_and(|until| now < until) {
            return Err(format!(
                "the last request for {workload}'s certificate failed moments ago"
            ));
        }
        match obtain(node, workload).await {
            // It left while the control plane answered: keep nothing.
            Ok(_) if !node.runs(workload) => Err(format!(
                "{workload} left this node while its certificate was issued"
            )),
            Ok((held, pem)) => {
                let client = held.client.clone();
                tracing::info!(%workload, "workload certificate obtained");
                let path = self.saved_path(workload);
                if let Err(e) = crate::home::write_private(&path, pem.as_bytes()) {
                    tracing::warn!(%workload, "cannot keep the workload certificate in {}: {e:#}", path.display());
                }
                self.held
                    .lock()
                    .expect("workload identities lock")
                    .insert(workload.clone(), held);
                self.failed_until
                    .lock()
                    .expect("workload identities lock")
                    .remove(workload);
                Ok(client)
            }
            Err(e) => {
                self.failed_until
                    .lock()
                    .expect("workload identities lock")
                    .insert(workload.clone(), now + RETRY_AFTER_SECS);
                Err(e)
            }
        }
    }

    /// Starts renewing `workload`'s certificate unless that already runs;
    /// calls meanwhile use the one held.
    fn renew_in_background(&self, node: &Arc<NodeShared>, workload: &WorkloadId) {
        let backing_off = self
            .failed_until
            .lock()
            .expect("workload identities lock")
            .get(workload)
            .is_some_and(|until| now() < *until);
        if backing_off {
            return;
        }
        if !self
            .renewing
            .lock()
            .expect("workload identities lock")
            .insert(workload.clone())
        {
            return;
        }
        let node = node.clone();
        let workload = workload.clone();
        tokio::spawn(async move {
            let identities = &node.workload_identities;
            if let Err(e) = identities.obtain_now(&node, &workload, now()).await {
                tracing::warn!(%workload, "cannot renew the workload certificate yet: {e}");
            }
            identities
                .renewing
                .lock()
                .expect("workload identities lock")
                .remove(&workload);
        });
    }

    /// The client held for `workload`, if its certificate is valid (and,
    /// when `fresh`, not yet due for renewal).
    fn current(&self, workload: &WorkloadId, now: i64, fresh: bool) -> Option<MeshClient> {
        let held = self.held.lock().expect("workload identities lock");
        let entry = held.get(workload)?;
        let usable = if fresh {
            now < entry.renew_at
        } else {
            now + EXPIRY_MARGIN_SECS < entry.expires
        };
        usable.then(|| entry.client.clone())
    }

    /// Drops the identities of workloads `placed` says are no longer here,
    /// held or kept on disk.
    pub(crate) fn retain(&self, placed: impl Fn(&WorkloadId) -> bool) {
        self.obtaining
            .lock()
            .expect("workload identities lock")
            .retain(|workload, _| placed(workload));
        self.held
            .lock()
            .expect("workload identities lock")
            .retain(|workload, _| {
                let keep = placed(workload);
                if !keep {
                    tracing::info!(%workload, "workload certificate dropped: the workload left this node");
                }
                keep
            });
        let Ok(files) = std::fs::read_dir(&self.saved) else {
            return;
        };
        for file in files.flatten() {
            let name = file.file_name();
            // Anything not named for a workload placed here goes too.
            let placed_here = name
                .to_str()
                .and_then(|n| n.strip_suffix(".pem"))
                .and_then(|n| n.split_once('.'))
                .and_then(|(app, component)| {
                    Some(WorkloadId::new(
                        app.to_string().try_into().ok()?,
                        component.to_string().try_into().ok()?,
                    ))
                })
                .is_some_and(|workload| placed(&workload));
            if !placed_here && let Err(e) = std::fs::remove_file(file.path()) {
                tracing::warn!("cannot remove {}: {e}", file.path().display());
            }
        }
    }

    /// Where `workload`'s certificate and key are kept.
    fn saved_path(&self, workload: &WorkloadId) -> PathBuf {
        self.saved
            .join(format!("{}.{}.pem", workload.app, workload.component))
    }

    /// The certificate kept for `workload` before a restart, held again
    /// when it is still valid and names this node's current join.
    fn load_saved(&self, node: &NodeShared, workload: &WorkloadId, now: i64) -> Option<MeshClient> {
        let path = self.saved_path(workload);
        let pem = std::fs::read_to_string(&path).ok()?;
        let (ca_pem, own) = {
            let current = node.identity.read().expect("identity lock");
            let own = current.identity.node(super::CLUSTER).ok()?;
            (current.identity.ca_pem().to_string(), own)
        };
        let identity = NodeIdentity::new(pem.clone(), pem, ca_pem);
        let named = identity.workload().ok()?;
        let expires = identity.expires().ok()?;
        if named.workload != *workload || named.node != own || now + EXPIRY_MARGIN_SECS >= expires {
            return None;
        }
        let client = node.forwarder.client_presenting(&identity).ok()?;
        let obtained = named.issued_unix;
        tracing::info!(%workload, "workload certificate kept from before a restart");
        let held = Held {
            client: client.clone(),
            renew_at: obtained + (expires - obtained) / 2,
            expires,
        };
        self.held
            .lock()
            .expect("workload identities lock")
            .insert(workload.clone(), held);
        Some(client)
    }
}

/// Asks the control plane for `workload`'s certificate, for a key made
/// here, and builds the client that presents it; also gives the
/// certificate and key in one PEM text, to keep.
async fn obtain(node: &NodeShared, workload: &WorkloadId) -> Result<(Held, String), String> {
    let (key_pem, csr_pem) = NodeIdentity::request().map_err(|e| e.to_string())?;
    let issued: WorkloadCertResponse = node
        .api()
        .call(
            http::Method::POST,
            "/v1/node/workload-cert",
            &WorkloadCertRequest {
                workload: workload.to_string(),
                csr_pem,
            },
            ISSUE_TIMEOUT,
        )
        .await
        .map_err(|e| format!("the control plane issued no certificate for {workload}: {e}"))?;
    let ca_pem = node
        .identity
        .read()
        .expect("identity lock")
        .identity
        .ca_pem()
        .to_string();
    // Same shape as a node's identity: a key, its certificate, the CA.
    let pem = format!("{}{key_pem}", issued.cert_pem);
    let identity = NodeIdentity::new(key_pem, issued.cert_pem, ca_pem);
    let expires = identity.expires().map_err(|e| e.to_string())?;
    let obtained = now();
    let client = node
        .forwarder
        .client_presenting(&identity)
        .map_err(|e| format!("{e:#}"))?;
    let held = Held {
        client,
        renew_at: obtained + (expires - obtained) / 2,
        expires,
    };
    Ok((held, pem))
}

fn now() -> i64 {
    crate::clock::unix_secs() as i64
}
