//! Host capabilities: what an instance may touch beyond its own memory.
//!
//! Each capability is one module with three phases: its config (a field of
//! [`ComponentSpec`]), its per-component state, validated once when the
//! component is loaded ([`prepare`]), and its per-instance grant, added to
//! every fresh instance ([`Capability::grant`]). Everything not granted is
//! denied: an instance starts with no environment, no files, no sockets and
//! no outbound HTTP.

pub mod env;
pub mod files;
pub mod logging;
pub mod outbound_http;
pub mod sockets;

use crate::instance::InstanceBuilder;
use crate::manifest::{ComponentName, ComponentSpec};
use std::path::Path;

/// What a capability needs to know about the component it is prepared for.
pub struct PrepareContext<'a> {
    /// The component's name, for errors and logs.
    pub component: &'a ComponentName,
    /// The manifest's directory, which relative paths are resolved against.
    pub base_dir: &'a Path,
}

/// A capability's per-component state, ready to grant to instances.
pub trait Capability: Send + Sync {
    /// Adds this capability to one instance being built.
    ///
    /// # Errors
    ///
    /// A message saying what could not be granted, e.g. a mounted directory
    /// that has since disappeared.
    fn grant(&self, instance: &mut InstanceBuilder) -> Result<(), String>;
}

/// Validates every capability of `spec` and returns them ready to grant.
///
/// # Errors
///
/// A message naming the component and the manifest key at fault.
pub fn prepare(
    spec: &ComponentSpec,
    cx: &PrepareContext<'_>,
) -> Result<Vec<Box<dyn Capability>>, String> {
    Ok(vec![
        Box::new(env::Env::prepare(spec, cx)?),
        Box::new(files::Files::prepare(spec, cx)?),
        Box::new(logging::GuestLogs::prepare(spec, cx)?),
        Box::new(outbound_http::OutboundHttp::prepare(spec, cx)?),
        Box::new(sockets::Sockets::prepare(spec, cx)?),
    ])
}
