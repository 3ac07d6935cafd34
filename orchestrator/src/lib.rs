//! Skiff's orchestrator and command line. Today it holds the `skiff` CLI
//! and the local app loop (`skiff run`); the control plane, node agent,
//! scheduler and mesh grow here.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app_source;
pub mod cli;
pub mod credentials;
pub mod home;
pub mod mesh;
pub mod registry;
pub mod scheduler;
pub mod state;
