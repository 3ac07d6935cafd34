//! The workload identities a node holds: for each workload placed here
//! that calls components on other nodes, a key made here, the certificate
//! the control plane issued for it (only to a node the workload is placed
//! on), and a mesh client presenting it. Obtained on the workload's first
//! call across nodes, renewed at half its life, dropped when the workload
//! leaves the node.

use super::NodeShared;
use super::mesh::MeshClient;
use crate::api::{WorkloadCertRequest, WorkloadCertResponse};
use crate::mesh::NodeIdentity;
use skiff_runtime::mesh::WorkloadId;
use std::collections::HashMap;
use std::sync::Mutex;

/// A workload's certificate stops being used this close to its expiry
/// when it could not be renewed.
const EXPIRY_MARGIN_SECS: i64 = 2;

/// The identities of the workloads on this node that call across nodes.
#[derive(Default)]
pub(crate) struct WorkloadIdentities {
    held: Mutex<HashMap<WorkloadId, Held>>,
    /// One certificate request at a time: a burst of first calls waits
    /// for the one certificate instead of asking for many.
    obtaining: tokio::sync::Mutex<()>,
}

struct Held {
    client: MeshClient,
    /// Renewed from then on, Unix seconds.
    renew_at: i64,
    /// Not valid from then on, Unix seconds.
    expires: i64,
}

impl WorkloadIdentities {
    /// A mesh client presenting `workload`'s certificate, obtained or
    /// renewed first when needed.
    ///
    /// # Errors
    ///
    /// Why no valid certificate could be had (the control plane refused
    /// or is unreachable, and none is held that is still valid).
    pub(crate) async fn client(
        &self,
        node: &NodeShared,
        workload: &WorkloadId,
    ) -> Result<MeshClient, String> {
        if let Some(client) = self.current(workload, now(), true) {
            return Ok(client);
        }
        let _one = self.obtaining.lock().await;
        let now = now();
        if let Some(client) = self.current(workload, now, true) {
            return Ok(client);
        }
        match obtain(node, workload).await {
            Ok(held) => {
                let client = held.client.clone();
                tracing::info!(%workload, "workload certificate obtained");
                self.held
                    .lock()
                    .expect("workload identities lock")
                    .insert(workload.clone(), held);
                Ok(client)
            }
            Err(e) => match self.current(workload, now, false) {
                // Renewal failed; the certificate held still serves.
                Some(client) => {
                    tracing::warn!(%workload, "cannot renew the workload certificate yet: {e}");
                    Ok(client)
                }
                None => Err(e),
            },
        }
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

    /// Drops the identities of workloads `placed` says are no longer here.
    pub(crate) fn retain(&self, placed: impl Fn(&WorkloadId) -> bool) {
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
    }
}

/// Asks the control plane for `workload`'s certificate, for a key made
/// here, and builds the client that presents it.
async fn obtain(node: &NodeShared, workload: &WorkloadId) -> Result<Held, String> {
    let (key_pem, csr_pem) = NodeIdentity::request().map_err(|e| e.to_string())?;
    let issued: WorkloadCertResponse = node
        .api()
        .post(
            "/v1/node/workload-cert",
            &WorkloadCertRequest {
                workload: workload.to_string(),
                csr_pem,
            },
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
    let identity = NodeIdentity::new(key_pem, issued.cert_pem, ca_pem);
    let expires = identity.expires().map_err(|e| e.to_string())?;
    let obtained = now();
    let client = node
        .forwarder
        .client_presenting(&identity)
        .map_err(|e| format!("{e:#}"))?;
    Ok(Held {
        client,
        renew_at: obtained + (expires - obtained) / 2,
        expires,
    })
}

fn now() -> i64 {
    crate::clock::unix_secs() as i64
}
