//! Scorers: each ranks a feasible node for a replica; the pipeline adds
//! their scores and takes the highest.

use super::{Allocation, NodeInfo, ReplicaRequest, Strategy};

/// One ranking criterion.
pub trait Scorer: Send + Sync {
    /// Its name, as a placement's scores show it (`spread=0.73`).
    fn name(&self) -> &'static str;

    /// Higher is better; scorers that do not apply return 0.
    fn score(
        &self,
        node: &NodeInfo,
        index: usize,
        allocation: &Allocation,
        request: &ReplicaRequest,
    ) -> f64;
}

/// Penalizes nodes already running a replica of the same component, so
/// replicas land on distinct nodes whenever a distinct node fits. Its weight
/// dominates the load scorers (which stay within 0..=1).
pub struct AntiAffinity;

impl Scorer for AntiAffinity {
    fn name(&self) -> &'static str {
        "anti_affinity"
    }

    fn score(
        &self,
        _: &NodeInfo,
        index: usize,
        allocation: &Allocation,
        request: &ReplicaRequest,
    ) -> f64 {
        -10.0 * f64::from(allocation.replicas_of(&request.component, index))
    }
}

/// The fraction of the node's memory free after placing: spread prefers
/// emptier nodes.
pub struct Spread;

impl Scorer for Spread {
    fn name(&self) -> &'static str {
        "spread"
    }

    fn score(
        &self,
        node: &NodeInfo,
        index: usize,
        allocation: &Allocation,
        request: &ReplicaRequest,
    ) -> f64 {
        if request.strategy != Strategy::Spread || node.memory == 0 {
            return 0.0;
        }
        1.0 - (allocation.used(index) + request.memory) as f64 / node.memory as f64
    }
}

/// The fraction of the node's memory used after placing: binpack prefers
/// fuller nodes, leaving others empty.
pub struct Binpack;

impl Scorer for Binpack {
    fn name(&self) -> &'static str {
        "binpack"
    }

    fn score(
        &self,
        node: &NodeInfo,
        index: usize,
        allocation: &Allocation,
        request: &ReplicaRequest,
    ) -> f64 {
        if request.strategy != Strategy::Binpack || node.memory == 0 {
            return 0.0;
        }
        (allocation.used(index) + request.memory) as f64 / node.memory as f64
    }
}

/// Prefers the node that asked for the replica (it holds requests for a
/// component scaled to zero): those requests are then served there,
/// without a hop. Weighs more than the load scorers and less than
/// anti-affinity.
pub struct Requested;

impl Scorer for Requested {
    fn name(&self) -> &'static str {
        "requested"
    }

    fn score(&self, node: &NodeInfo, _: usize, _: &Allocation, request: &ReplicaRequest) -> f64 {
        if request.prefer.as_deref() == Some(node.name.as_str()) {
            2.0
        } else {
            0.0
        }
    }
}
