//! The cluster-state layer: every change to the cluster's state (a join, a
//! heartbeat, a deploy, a scale, a node's labels...) made under the live
//! state lock and written through the [`crate::state::ClusterStore`], one
//! transaction per change, with no HTTP in sight. The API (`api.rs`) reads
//! requests, calls these, and writes their answers; the tests call them
//! directly.

pub(super) mod apps;
pub(super) mod certs;
pub(super) mod heartbeat;
pub(super) mod members;
pub(super) mod nodes;
#[cfg(test)]
mod tests;

use crate::state::StateError;

/// Why a change to the cluster was refused, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The request itself is wrong.
    Invalid(String),
    /// The caller is not who may ask (a bad token, a stale certificate).
    Unauthorized(String),
    /// The caller is known but may not ask this.
    Forbidden(String),
    /// What it names does not exist.
    NotFound(String),
    /// It clashes with the cluster as it is.
    Conflict(String),
    /// The store cannot take the change now (etcd without quorum):
    /// nothing changed, and it may work later.
    Unavailable(String),
    /// The control plane failed (its store).
    Internal(String),
}

impl Refused {
    /// The message for the user.
    pub(crate) fn message(&self) -> &str {
        match self {
            Refused::Invalid(m)
            | Refused::Unauthorized(m)
            | Refused::Forbidden(m)
            | Refused::NotFound(m)
            | Refused::Conflict(m)
            | Refused::Unavailable(m)
            | Refused::Internal(m) => m,
        }
    }

    /// No app by that name.
    fn no_app(app: &str) -> Refused {
        Refused::NotFound(format!("no app {app:?}; see `skiff apps`"))
    }

    /// No node by that name.
    fn no_node(node: &str) -> Refused {
        Refused::NotFound(format!("no node {node:?}; see `skiff nodes`"))
    }
}

impl From<StateError> for Refused {
    fn from(e: StateError) -> Refused {
        match e {
            StateError::UnknownApp(_) | StateError::UnknownComponent { .. } => {
                Refused::NotFound(e.to_string())
            }
            StateError::NotLeader => {
                Refused::Unavailable(format!("{e}: the change was not made; try again"))
            }
            StateError::Unavailable(_) => Refused::Unavailable(format!(
                "{e}; the change may not have been made: check, and try again once the store is back"
            )),
            e => Refused::Internal(e.to_string()),
        }
    }
}
