//! The mesh, in one place. Its trust: the cluster CA that the control
//! plane holds (`ca`), node and workload identities issued from
//! certificate signing requests (`identity`, `workload_certs`), who is a
//! member (`members`), and the rustls configurations that make every
//! connection between nodes (and between nodes and the control plane)
//! mutually authenticated TLS (`tls`); plaintext and certificates from any
//! other CA are refused. Its traffic on a node: guests' calls by name
//! (`calls`), forwarding to other nodes (`forward`, over `client`), and
//! the endpoint serving what other nodes forward (`endpoint`).
//!
//! A forwarded request names its target in the `skiff-app` and
//! `skiff-component` headers; a mesh call goes with its caller workload's
//! certificate and its hop count (`skiff-hops`).

pub(crate) mod admission;
pub mod ca;
pub(crate) mod calls;
pub(crate) mod client;
pub(crate) mod endpoint;
pub(crate) mod forward;
pub mod identity;
pub(crate) mod latency;
pub mod members;
pub mod metrics;
pub(crate) mod outliers;
pub(crate) mod retry_budget;
#[cfg(test)]
mod tests;
pub mod tls;
pub(crate) mod workload_certs;

pub use ca::{CaError, ClusterCa};

/// The cluster's name in SPIFFE IDs (`spiffe://skiff/node/<name>`).
pub const CLUSTER: &str = "skiff";

/// The SPIFFE ID in the control plane's certificate; clients check it, so
/// a node certificate (also signed by the cluster CA) cannot pose as the
/// control plane.
pub fn control_plane_id() -> String {
    format!("spiffe://{CLUSTER}/control-plane")
}
pub use forward::Balancer;
pub use identity::{NodeIdentity, peer_spiffe_id};
pub use members::{Members, NodeCert, Peer, WorkloadCert};

/// Header naming the app of a forwarded request.
pub const APP_HEADER: &str = "skiff-app";
/// Header naming the component of a forwarded request.
pub const COMPONENT_HEADER: &str = "skiff-component";
/// Set on a mesh answer when the node holds no such replica (the sender's
/// endpoints are stale), so the request was not run and may be retried.
/// Only the mesh endpoint sets it: `invoke` strips every `skiff-*` header
/// from guest responses, so a guest cannot make a request replayed.
pub const NOT_HERE_HEADER: &str = "skiff-not-here";
/// Header naming the version (package digest) of the component a
/// forwarded request is for: the sender chose it (a canary's share).
pub const VERSION_HEADER: &str = "skiff-version";
/// Header giving, on a forwarded mesh call, how many mesh hops it took.
pub const HOPS_HEADER: &str = "skiff-hops";
