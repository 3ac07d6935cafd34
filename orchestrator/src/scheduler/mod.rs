//! Placement of replicas on nodes, as a pipeline: feasibility filters, then
//! scorers, then the best candidate. Pure: a [`ClusterSnapshot`] and a list
//! of [`ReplicaRequest`]s in, a [`Plan`] out; nothing is applied here.
//!
//! Like Nomad's scheduler, a placement does not score every node: it walks
//! the nodes from a rotating offset, stops after [`Scheduler::candidates`]
//! feasible ones, and picks the best of those. That keeps a placement
//! O(candidates) on large clusters while still spreading load. When no node
//! fits, every filter's refusals are counted, so the plan can say why
//! ("0/3 nodes fit: 2 insufficient memory, 1 labels do not match").

mod filters;
mod scorers;
#[cfg(test)]
mod tests;

pub use filters::{Capacity, Filter, Labels, MemoryPressure, NotFailedThere, Ready, Refusal};
pub use scorers::{AntiAffinity, Binpack, Requested, Scorer, Spread};

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// A node as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// `key=value` labels, e.g. `zone=a`.
    pub labels: BTreeMap<String, String>,
    /// Memory available to replicas, bytes.
    pub memory: u64,
    /// Heartbeating and accepting work.
    pub ready: bool,
    /// Cordoned: keeps its replicas, takes no new ones.
    pub cordoned: bool,
    /// Short of real memory: it refuses new instances, so it takes no new
    /// replicas until it recovers.
    pub pressure: bool,
}

/// Whether a component's replicas are spread over nodes or packed tight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Prefer the least loaded node (the default).
    #[default]
    Spread,
    /// Prefer the most loaded node that still fits.
    Binpack,
}

/// One replica to place.
#[derive(Debug, Clone)]
pub struct ReplicaRequest {
    /// `app/component`: replicas of one component avoid sharing a node.
    pub component: String,
    /// Memory reserved on the node, bytes.
    pub memory: u64,
    /// Labels the node must carry.
    pub required_labels: BTreeMap<String, String>,
    /// Spread or binpack.
    pub strategy: Strategy,
    /// A node to prefer when it fits: the one holding requests for a
    /// component scaled to zero, which then serves them without a hop.
    pub prefer: Option<String>,
    /// Nodes the replica failed to start on: not tried again.
    pub avoid: Vec<String>,
}

/// The cluster state a plan is computed from.
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    /// Every known node.
    pub nodes: Vec<NodeInfo>,
    /// Replicas already running: `(node index, component, memory)`.
    pub running: Vec<(usize, String, u64)>,
}

/// Where one request went.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Placed on a node, for the scores given.
    Placed(Placement),
    /// No node fits; why, per filter.
    Unschedulable(Unschedulable),
}

/// A node chosen for a replica, and why: each scorer's score for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The node's index in the snapshot.
    pub node: usize,
    /// `(scorer, score)` in pipeline order; the node had the highest sum
    /// of the candidates scored.
    pub scores: Vec<(&'static str, f64)>,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for (scorer, score) in &self.scores {
            // `+ 0.0` shows a negative zero as 0.00.
            write!(f, "{sep}{scorer}={:.2}", score + 0.0)?;
            sep = " ";
        }
        Ok(())
    }
}

/// Why no node could take a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Refusals by reason, e.g. `InsufficientMemory -> 2`.
    pub refusals: BTreeMap<Refusal, usize>,
}

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0/{} nodes fit", self.nodes)?;
        let mut sep = ": ";
        for (reason, count) in &self.refusals {
            write!(f, "{sep}{count} {reason}")?;
            sep = ", ";
        }
        Ok(())
    }
}

/// The outcome for every request, in request order.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// One decision per request.
    pub decisions: Vec<Decision>,
}

/// What the pipeline knows while it places: memory in use per node, and
/// which nodes run which component.
pub struct Allocation {
    used: Vec<u64>,
    replicas: HashMap<String, HashMap<usize, u32>>,
}

impl Allocation {
    fn from_snapshot(snapshot: &ClusterSnapshot) -> Allocation {
        let mut allocation = Allocation {
            used: vec![0; snapshot.nodes.len()],
            replicas: HashMap::new(),
        };
        for (node, component, memory) in &snapshot.running {
            allocation.add(*node, component, *memory);
        }
        allocation
    }

    fn add(&mut self, node: usize, component: &str, memory: u64) {
        self.used[node] += memory;
        *self
            .replicas
            .entry(component.to_string())
            .or_default()
            .entry(node)
            .or_default() += 1;
    }

    /// Memory in use on `node`, bytes.
    pub fn used(&self, node: usize) -> u64 {
        self.used[node]
    }

    /// Replicas of `component` on `node`.
    pub fn replicas_of(&self, component: &str, node: usize) -> u32 {
        self.replicas
            .get(component)
            .and_then(|nodes| nodes.get(&node))
            .copied()
            .unwrap_or(0)
    }
}

/// The placement pipeline.
pub struct Scheduler {
    filters: Vec<Box<dyn Filter>>,
    scorers: Vec<Box<dyn Scorer>>,
    candidates: usize,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler::new()
    }
}

impl Scheduler {
    /// The standard pipeline.
    pub fn new() -> Scheduler {
        Scheduler {
            filters: vec![
                // A down node cannot run anything; a cordoned one takes nothing new.
                Box::new(Ready),
                // The node must carry every label the component requires.
                // Before capacity, so a node that could never run the
                // replica is not reported as merely full.
                Box::new(Labels),
                // The replica's memory reservation must fit what is left.
                Box::new(Capacity),
                // A node short of real memory, whatever its reservations
                // say, takes nothing new.
                Box::new(MemoryPressure),
                // Not again where the replica failed to start.
                Box::new(NotFailedThere),
            ],
            scorers: vec![
                // Replicas of one component on distinct nodes when possible.
                Box::new(AntiAffinity),
                // Then by load, in the direction the component asked for.
                Box::new(Spread),
                Box::new(Binpack),
                // The node asking for a replica, when it fits.
                Box::new(Requested),
            ],
            candidates: 0,
        }
    }

    /// Feasible nodes scored per placement; 0 means `max(2, log2(nodes))`.
    pub fn candidates(mut self, candidates: usize) -> Scheduler {
        self.candidates = candidates;
        self
    }

    /// Places `requests` on `snapshot`, in order, each seeing the earlier
    /// ones' reservations.
    pub fn plan(&self, snapshot: &ClusterSnapshot, requests: &[ReplicaRequest]) -> Plan {
        let nodes = &snapshot.nodes;
        let mut allocation = Allocation::from_snapshot(snapshot);
        let wanted = if self.candidates > 0 {
            self.candidates
        } else {
            (usize::BITS - nodes.len().leading_zeros()).max(2) as usize
        };
        let mut offset = 0usize;
        let mut decisions = Vec::with_capacity(requests.len());
        for request in requests {
            let decision = self.place(nodes, &allocation, request, wanted, &mut offset);
            if let Decision::Placed(placement) = &decision {
                allocation.add(placement.node, &request.component, request.memory);
            }
            decisions.push(decision);
        }
        Plan { decisions }
    }

    fn place(
        &self,
        nodes: &[NodeInfo],
        allocation: &Allocation,
        request: &ReplicaRequest,
        wanted: usize,
        offset: &mut usize,
    ) -> Decision {
        let count = nodes.len();
        let mut best: Option<(f64, Placement)> = None;
        let mut feasible = 0;
        let mut refusals: BTreeMap<Refusal, usize> = BTreeMap::new();
        // The preferred node first, so it is scored whatever the window.
        let preferred = request
            .prefer
            .as_deref()
            .and_then(|name| nodes.iter().position(|n| n.name == name));
        let order = preferred.into_iter().chain(
            (0..count)
                .map(|step| (*offset + step) % count)
                .filter(|index| Some(*index) != preferred),
        );
        for index in order {
            let node = &nodes[index];
            let refused = self
                .filters
                .iter()
                .find_map(|filter| filter.check(node, index, allocation, request).err());
            if let Some(refusal) = refused {
                *refusals.entry(refusal).or_default() += 1;
                continue;
            }
            let scores: Vec<(&'static str, f64)> = self
                .scorers
                .iter()
                .map(|scorer| {
                    (
                        scorer.name(),
                        scorer.score(node, index, allocation, request),
                    )
                })
                .collect();
            let score: f64 = scores.iter().map(|(_, score)| score).sum();
            if best.as_ref().is_none_or(|(top, _)| score > *top) {
                best = Some((
                    score,
                    Placement {
                        node: index,
                        scores,
                    },
                ));
            }
            feasible += 1;
            // Enough candidates, unless even the best one already runs this
            // component: then keep looking for a node that does not.
            if feasible >= wanted && best.as_ref().is_some_and(|(top, _)| *top >= 0.0) {
                break;
            }
        }
        // Next placement starts past this one's window, so successive
        // placements look at different nodes.
        *offset = (*offset + 1) % count.max(1);
        match best {
            Some((_, placement)) => Decision::Placed(placement),
            None => Decision::Unschedulable(Unschedulable {
                nodes: count,
                refusals,
            }),
        }
    }
}
