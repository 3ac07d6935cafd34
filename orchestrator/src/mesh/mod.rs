//! The mesh's trust: the cluster CA that the control plane holds, node
//! identities issued from certificate signing requests, and the rustls
//! configurations that make every connection between nodes (and between
//! nodes and the control plane) mutually authenticated TLS. Plaintext and
//! certificates from any other CA are refused.

pub mod ca;
pub mod identity;
#[cfg(test)]
mod tests;

pub use ca::{CaError, ClusterCa};
pub use identity::{NodeIdentity, peer_spiffe_id};
