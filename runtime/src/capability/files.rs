//! Files: host directories mounted read-only at guest paths.
//!
//! The guest reaches them through WASI preopens, whose capability-based
//! lookups (cap-std) refuse `..` and symlinks that lead out of the mount.

use super::{Capability, PrepareContext};
use crate::instance::InstanceBuilder;
use crate::manifest::ComponentSpec;
use std::path::PathBuf;
use wasmtime_wasi::FsPerms;

/// The directories one component is granted.
pub struct Files {
    /// (host directory, canonicalized; guest path)
    mounts: Vec<(PathBuf, String)>,
}

impl Files {
    /// Resolves every mount's `source` against the manifest directory and
    /// checks that it is a directory.
    ///
    /// # Errors
    ///
    /// A `source` that does not exist or is not a directory.
    pub fn prepare(spec: &ComponentSpec, cx: &PrepareContext<'_>) -> Result<Files, String> {
        let mut mounts = Vec::new();
        for mount in &spec.files {
            let host = cx.base_dir.join(&mount.source);
            let canonical = host.canonicalize().map_err(|e| {
                format!(
                    "component \"{}\": files source {:?} cannot be mounted: {e}",
                    cx.component,
                    host.display().to_string()
                )
            })?;
            if !canonical.is_dir() {
                return Err(format!(
                    "component \"{}\": files source {:?} is not a directory",
                    cx.component,
                    host.display().to_string()
                ));
            }
            mounts.push((canonical, mount.destination.clone()));
        }
        Ok(Files { mounts })
    }
}

impl Capability for Files {
    fn grant(&self, instance: &mut InstanceBuilder) -> Result<(), String> {
        for (host, guest) in &self.mounts {
            instance
                .wasi
                .preopened_dir(host, guest, FsPerms::ReadOnly)
                .map_err(|e| format!("cannot mount {}: {e}", host.display()))?;
        }
        Ok(())
    }
}
