//! Feasibility filters: each answers whether a node can take a replica at
//! all, and if not, why.

use super::{Allocation, NodeInfo, ReplicaRequest};

/// A filter's reason for refusing a node, as shown in "0/3 nodes fit: ...".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal(pub &'static str);

/// One feasibility check.
pub trait Filter: Send + Sync {
    /// `Ok` when `node` can take `request`.
    ///
    /// # Errors
    ///
    /// The [`Refusal`] naming why it cannot.
    fn check(
        &self,
        node: &NodeInfo,
        index: usize,
        allocation: &Allocation,
        request: &ReplicaRequest,
    ) -> Result<(), Refusal>;
}

/// The node is up and not cordoned.
pub struct Ready;

impl Filter for Ready {
    fn check(
        &self,
        node: &NodeInfo,
        _: usize,
        _: &Allocation,
        _: &ReplicaRequest,
    ) -> Result<(), Refusal> {
        if !node.ready {
            Err(Refusal("not ready"))
        } else if node.cordoned {
            Err(Refusal("cordoned"))
        } else {
            Ok(())
        }
    }
}

/// The replica's memory reservation fits what the node has left.
pub struct Capacity;

impl Filter for Capacity {
    fn check(
        &self,
        node: &NodeInfo,
        index: usize,
        allocation: &Allocation,
        request: &ReplicaRequest,
    ) -> Result<(), Refusal> {
        if allocation.used(index).saturating_add(request.memory) <= node.memory {
            Ok(())
        } else {
            Err(Refusal("insufficient memory"))
        }
    }
}

/// The node is not short of real memory: its own measure of what it uses,
/// not the reservations, which a burst can outgrow.
pub struct MemoryPressure;

impl Filter for MemoryPressure {
    fn check(
        &self,
        node: &NodeInfo,
        _: usize,
        _: &Allocation,
        _: &ReplicaRequest,
    ) -> Result<(), Refusal> {
        if node.pressure {
            Err(Refusal("under memory pressure"))
        } else {
            Ok(())
        }
    }
}

/// The node carries every required label.
pub struct Labels;

impl Filter for Labels {
    fn check(
        &self,
        node: &NodeInfo,
        _: usize,
        _: &Allocation,
        request: &ReplicaRequest,
    ) -> Result<(), Refusal> {
        let all = request
            .required_labels
            .iter()
            .all(|(key, value)| node.labels.get(key) == Some(value));
        if all {
            Ok(())
        } else {
            Err(Refusal("labels do not match"))
        }
    }
}
