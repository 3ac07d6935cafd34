//! An admin's changes to nodes: labels, cordon and drain, forgetting one
//! that is gone.

use super::Refused;
use crate::api::{LabelRequest, LabelResponse};
use crate::control::Shared;
use crate::state::NodeRecord;

/// Sets and removes labels of node `name` (an admin's call): the only
/// way a node's labels change after it joined.
pub(crate) fn label(
    shared: &Shared,
    name: &str,
    change: LabelRequest,
) -> Result<LabelResponse, Refused> {
    for key in &change.remove {
        crate::labels::check_key(key).map_err(|e| Refused::Invalid(e.to_string()))?;
    }
    let (changed, record) = change_record(shared, name, |record| {
        for key in &change.remove {
            record.labels.remove(key);
        }
        record.labels.extend(change.set.clone());
        crate::labels::check(&record.labels).map_err(|e| Refused::Invalid(e.to_string()))
    })?;
    if changed {
        tracing::info!(node = name, labels = ?record.labels, "node labels changed");
        // Placement follows at the controller's next pass.
        shared.wake.notify_one();
    }
    Ok(LabelResponse {
        node: name.to_string(),
        labels: record.labels,
        changed,
    })
}

/// Cordons, uncordons or drains node `name` (an admin's call).
pub(crate) fn act(shared: &Shared, name: &str, action: &str) -> Result<(), Refused> {
    change_record(shared, name, |record| {
        match action {
            "cordon" => record.cordoned = true,
            "uncordon" => {
                record.cordoned = false;
                record.drained = false;
            }
            "drain" => {
                record.cordoned = true;
                record.drained = true;
            }
            _ => {
                return Err(Refused::NotFound(format!(
                    "unknown node action {action:?}: use cordon, uncordon or drain"
                )));
            }
        }
        Ok(())
    })?;
    tracing::info!(node = name, action, "node updated");
    shared.wake.notify_one();
    shared.bump();
    Ok(())
}

/// Changes node `name`'s record by `change` under the state lock, storing
/// it when it changed; returns whether it did, and the record now.
fn change_record(
    shared: &Shared,
    name: &str,
    change: impl FnOnce(&mut NodeRecord) -> Result<(), Refused>,
) -> Result<(bool, NodeRecord), Refused> {
    let mut live = shared.live();
    let node = live
        .nodes
        .get_mut(name)
        .ok_or_else(|| Refused::no_node(name))?;
    let mut record = node.record.clone();
    change(&mut record)?;
    let changed = record != node.record;
    if changed {
        shared.store.put_node(&record)?;
        node.record = record;
    }
    Ok((changed, node.record.clone()))
}

/// Removes a node that is down from the cluster; its replicas are placed
/// elsewhere. A live node is refused: it would come back at its next
/// heartbeat.
pub(crate) fn forget(shared: &Shared, name: &str) -> Result<(), Refused> {
    {
        let mut live = shared.live();
        let node = live.nodes.get(name).ok_or_else(|| Refused::no_node(name))?;
        if !node.down {
            return Err(Refused::Conflict(format!(
                "node {name:?} is not down; drain it and stop it before forgetting it"
            )));
        }
        shared.store.delete_node(name)?;
        live.nodes.remove(name);
    }
    tracing::info!(node = name, "node forgotten");
    shared.wake.notify_one();
    // Every node drops it from the members its mesh honours.
    shared.bump();
    Ok(())
}
