//! Skiff's orchestrator and command line: the local app loop (`skiff run`),
//! packages, the control plane (`skiff server`), the node agent
//! (`skiff node`), the scheduler and the mesh.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod api_client;
pub mod app_source;
pub mod autoscaler;
pub mod certs;
pub mod cli;
pub mod clock;
pub mod cluster_config;
pub mod control;
pub mod credentials;
pub mod deploy;
pub mod home;
pub mod labels;
pub mod mesh;
pub mod node;
pub mod registry;
pub mod scheduler;
pub mod state;
