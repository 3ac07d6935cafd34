//! A loaded app: every component of a manifest compiled and linked, and the
//! router that maps request paths to them.

use crate::cache::CompileCache;
use crate::component::{LoadError, LoadedComponent};
use crate::engine::SkiffEngine;
use crate::manifest::Manifest;
use crate::mesh::WorkloadId;
use crate::route::Router;
use std::path::Path;

/// An app ready to serve on this node.
pub struct LoadedApp {
    /// `[app] name`.
    pub name: String,
    /// `[app] version`.
    pub version: String,
    /// Components in manifest order (sorted by name).
    pub components: Vec<LoadedComponent>,
    router: Router,
}

impl LoadedApp {
    /// Loads every component of `manifest`, resolving paths against
    /// `base_dir`.
    ///
    /// # Errors
    ///
    /// The first component that fails to load, named in the error.
    pub fn load(
        engine: &SkiffEngine,
        cache: &CompileCache,
        manifest: &Manifest,
        base_dir: &Path,
    ) -> Result<LoadedApp, LoadError> {
        let components = manifest
            .component
            .iter()
            .map(|(name, spec)| {
                let workload = WorkloadId::new(manifest.app.name.clone(), name.clone());
                LoadedComponent::load(engine, cache, &workload, spec, base_dir)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let router = Router::new(
            components
                .iter()
                .enumerate()
                .filter_map(|(index, c)| c.route.clone().map(|route| (route, index))),
        );
        Ok(LoadedApp {
            name: manifest.app.name.to_string(),
            version: manifest.app.version.clone(),
            components,
            router,
        })
    }

    /// The component serving `path`, if any.
    pub fn route(&self, path: &str) -> Option<&LoadedComponent> {
        self.router.find(path).map(|index| &self.components[index])
    }
}
