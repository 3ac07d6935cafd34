//! The mesh's trust: the cluster CA that the control plane holds, node
//! identities issued from certificate signing requests, and the rustls
//! configurations that make every connection between nodes (and between
//! nodes and the control plane) mutually authenticated TLS. Plaintext and
//! certificates from any other CA are refused.

pub mod ca;
pub mod identity;
pub mod members;
#[cfg(test)]
mod tests;

pub use ca::{CaError, ClusterCa};

/// The cluster's name in SPIFFE IDs (`spiffe://skiff/node/<name>`).
pub const CLUSTER: &str = "skiff";

/// The SPIFFE ID in the control plane's certificate; clients check it, so
/// a node certificate (also signed by the cluster CA) cannot pose as the
/// control plane.
pub fn control_plane_id() -> String {
    format!("spiffe://{CLUSTER}/control-plane")
}
pub use identity::{NodeIdentity, peer_spiffe_id};
pub use members::{Members, NodeCert, Peer, WorkloadCert};
