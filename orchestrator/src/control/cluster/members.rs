//! Who is a member of the cluster: nodes joining with a one-time token,
//! renewing their certificates, asking for their workloads' identities,
//! and the check every node call passes (its certificate's incarnation).

use super::Refused;
use crate::api::{
    JoinRequest, JoinResponse, RenewRequest, WorkloadCertRequest, WorkloadCertResponse,
};
use crate::control::{LiveNode, Shared};
use crate::mesh::NodeCert;
use crate::state::NodeRecord;
use skiff_runtime::manifest::ComponentName;
use skiff_runtime::mesh::WorkloadId;

/// Admits a node presenting a one-time join token: signs its
/// certificate with a new incarnation and records it, using the token up.
/// A name the API is reached by, or one a node of the cluster has (up or
/// down), is refused; neither refusal uses the token.
pub(crate) fn join(shared: &Shared, join: JoinRequest) -> Result<JoinResponse, Refused> {
    if shared
        .hosts
        .iter()
        .any(|host| host.eq_ignore_ascii_case(&join.name))
    {
        return Err(Refused::Invalid(format!(
            "invalid node name {:?}: the control plane is reached by that name; pick another --name",
            join.name
        )));
    }
    crate::labels::check(&join.labels)
        .map_err(|e| Refused::Invalid(format!("join refused: {e}")))?;
    // Sign first, so a bad name or request does not use up the token; the
    // certificate is only handed out if the token is good.
    let incarnation = crate::control::random_hex(16);
    let cert_pem = shared
        .ca
        .sign_node(&join.name, &incarnation, &join.csr_pem)
        .map_err(|e| Refused::Invalid(e.to_string()))?;
    {
        let mut live = shared.live();
        let refused = || {
            tracing::warn!(node = join.name, "join refused: bad token");
            Refused::Unauthorized("the join token is not valid: it is unknown, expired or already used; make a new one with `skiff join-token`".to_string(),
            )
        };
        let valid = shared
            .store
            .join_token_valid(&join.token, crate::clock::unix_secs())?;
        if !valid {
            return Err(refused());
        }
        // Checked only for holders of a good token, so names cannot be
        // probed without one; and before the token is used up, so the
        // holder can retry with another name. A node that is merely down
        // keeps its name: only forgetting it frees the name.
        if let Some(node) = live.nodes.get(&join.name) {
            let state = if node.down { "down" } else { "active" };
            return Err(Refused::Conflict(format!(
                "a node named {:?} is already in this cluster ({state}); pick another --name, or if that node is gone for good, run `skiff forget {}` first",
                join.name, join.name
            )));
        }
        // The node is a member from now on, with this incarnation, even if
        // the control plane restarts before its first heartbeat.
        let record = NodeRecord {
            name: join.name.clone(),
            labels: join.labels.clone(),
            memory: join.memory,
            ingress: String::new(),
            mesh: String::new(),
            cordoned: false,
            drained: false,
            incarnation,
        };
        let admitted = shared
            .store
            .admit_node(&join.token, &record, crate::clock::unix_secs())?;
        if !admitted {
            return Err(refused());
        }
        live.nodes.insert(join.name.clone(), LiveNode::new(record));
    }
    tracing::info!(node = join.name, "node joined");
    // Every node learns the new member.
    shared.bump();
    Ok(JoinResponse {
        cert_pem,
        ca_pem: shared.ca.cert_pem().to_string(),
    })
}

/// Signs a new certificate for a member node, of the same incarnation.
pub(crate) fn renew(
    shared: &Shared,
    node: &NodeCert,
    renew: RenewRequest,
) -> Result<JoinResponse, Refused> {
    // Checked again now that the body is here: a node forgotten while it
    // arrived gets nothing. A renewal is the same join, so it keeps the
    // incarnation; a certificate from before incarnations existed gets
    // one now, so that it too can be revoked.
    let incarnation = {
        let mut live = shared.live();
        let entry = live
            .nodes
            .get_mut(&node.name)
            .filter(|n| n.record.incarnation == node.incarnation)
            .ok_or_else(|| not_a_member(node))?;
        if node.incarnation.is_empty() {
            let record = NodeRecord {
                incarnation: crate::control::random_hex(16),
                ..entry.record.clone()
            };
            shared.store.put_node(&record)?;
            entry.record = record;
        }
        entry.record.incarnation.clone()
    };
    if node.incarnation.is_empty() {
        // Every node learns the new incarnation.
        shared.bump();
    }
    let cert_pem = shared
        .ca
        .sign_node(&node.name, &incarnation, &renew.csr_pem)
        .map_err(|e| Refused::Invalid(e.to_string()))?;
    tracing::info!(node = node.name, "node certificate renewed");
    Ok(JoinResponse {
        cert_pem,
        ca_pem: shared.ca.cert_pem().to_string(),
    })
}

/// Issues a workload's certificate to a node it is placed on; any other
/// node is refused, so a node cannot obtain the identity of a workload it
/// does not run.
pub(crate) fn workload_cert(
    shared: &Shared,
    node: &NodeCert,
    asked: WorkloadCertRequest,
) -> Result<WorkloadCertResponse, Refused> {
    let workload = asked
        .workload
        .split_once('/')
        .and_then(|(app, component)| {
            Some(WorkloadId::new(
                ComponentName::try_from(app.to_string()).ok()?,
                ComponentName::try_from(component.to_string()).ok()?,
            ))
        })
        .ok_or_else(|| {
            Refused::Invalid(format!(
                "workload {:?} is not app/component",
                asked.workload
            ))
        })?;
    let incarnation = {
        let live = shared.live();
        let entry = live
            .nodes
            .get(&node.name)
            .filter(|n| n.record.incarnation == node.incarnation)
            .ok_or_else(|| not_a_member(node))?;
        let placed = live.replicas.values().any(|r| {
            r.node.as_deref() == Some(node.name.as_str())
                && r.app == workload.app.as_str()
                && r.component == workload.component.as_str()
        });
        if !placed {
            tracing::warn!(node = node.name, %workload, "workload certificate refused: not placed on the node");
            return Err(Refused::Forbidden(format!(
                "node {} runs no replica of {workload}: no certificate for it",
                node.name
            )));
        }
        entry.record.incarnation.clone()
    };
    let cert_pem = shared
        .ca
        .sign_workload(&node.name, &incarnation, &workload, &asked.csr_pem)
        .map_err(|e| Refused::Invalid(e.to_string()))?;
    tracing::info!(node = node.name, %workload, "workload certificate issued");
    Ok(WorkloadCertResponse { cert_pem })
}

/// The calling node's name, if the cluster holds a node of that name and
/// of the incarnation in its certificate: a node forgotten (or joined
/// again since the certificate was issued) is refused.
pub(crate) fn member<'a>(shared: &Shared, caller: &'a NodeCert) -> Result<&'a str, Refused> {
    let live = shared.live();
    match live.nodes.get(&caller.name) {
        Some(node) if node.record.incarnation == caller.incarnation => Ok(&caller.name),
        _ => Err(not_a_member(caller)),
    }
}

/// The refusal of a certificate whose node the cluster no longer holds
/// (under that incarnation).
pub(crate) fn not_a_member(caller: &NodeCert) -> Refused {
    tracing::warn!(
        node = caller.name,
        "refused a certificate that is no longer valid"
    );
    Refused::Unauthorized(format!(
        "node {:?} is not a member of this cluster: it was forgotten, or joined again since this certificate was issued; remove the node's data directory and join again with a new token from `skiff join-token`",
        caller.name
    ))
}
