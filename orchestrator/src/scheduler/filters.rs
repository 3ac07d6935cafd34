//! Feasibility filters: each answers whether a node can take a replica at
//! all, and if not, why.

use super::{Allocation, NodeInfo, ReplicaRequest};

/// A filter's reason for refusing a node. Declared in the order reasons
/// are listed in "0/3 nodes fit: ...".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// The node is cordoned: it keeps its replicas and takes no new ones.
    Cordoned,
    /// The replica's reservation does not fit what the node has left.
    InsufficientMemory,
    /// The node lacks a label the component requires.
    LabelsDoNotMatch,
    /// The node is down or has not heartbeated yet.
    NotReady,
    /// The node is short of real memory.
    UnderMemoryPressure,
    /// The replica failed to start on the node already.
    FailedThere,
}

impl Refusal {
    /// The reason in words, as `skiff ps` shows it.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Cordoned => "cordoned",
            Refusal::InsufficientMemory => "insufficient memory",
            Refusal::LabelsDoNotMatch => "labels do not match",
            Refusal::NotReady => "not ready",
            Refusal::UnderMemoryPressure => "under memory pressure",
            Refusal::FailedThere => "it failed to start there",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

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
            Err(Refusal::NotReady)
        } else if node.cordoned {
            Err(Refusal::Cordoned)
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
            Err(Refusal::InsufficientMemory)
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
            Err(Refusal::UnderMemoryPressure)
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
            Err(Refusal::LabelsDoNotMatch)
        }
    }
}

/// Not a node the replica already failed to start on: a replica that
/// never becomes ready on one node is tried on another.
pub struct NotFailedThere;

impl Filter for NotFailedThere {
    fn check(
        &self,
        node: &NodeInfo,
        _: usize,
        _: &Allocation,
        request: &ReplicaRequest,
    ) -> Result<(), Refusal> {
        if request.avoid.contains(&node.name) {
            Err(Refusal::FailedThere)
        } else {
            Ok(())
        }
    }
}
