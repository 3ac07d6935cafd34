//! Component dependencies: plugging the exports of library components into
//! the imports of the component that declares them, producing one
//! self-contained component (with `wac-graph`).

use std::collections::BTreeMap;
use wac_graph::types::{Package, SubtypeChecker};
use wac_graph::{CompositionGraph, EncodeOptions};

/// One dependency: the import it satisfies and the library's bytes.
pub struct Dependency<'a> {
    /// The import name, e.g. `acme:lib/greet` (versions may differ by semver).
    pub import: &'a str,
    /// Where the library came from, for messages.
    pub source: &'a str,
    /// The library component.
    pub wasm: &'a [u8],
}

/// Why composition failed; each message names the import or the library.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ComposeError(String);

/// Composes `main` with its `dependencies`.
///
/// # Errors
///
/// A component that is not a component, an import `main` does not have, a
/// library that does not export the import, or one whose export has another
/// type than the import expects.
pub fn compose(main: &[u8], dependencies: &[Dependency<'_>]) -> Result<Vec<u8>, ComposeError> {
    let mut graph = CompositionGraph::new();
    let main_package = Package::from_bytes("skiff:app", None, main.to_vec(), graph.types_mut())
        .map_err(|e| ComposeError(format!("the component cannot be composed: {e:#}")))?;
    let main_id = graph
        .register_package(main_package)
        .map_err(|e| ComposeError(format!("{e:#}")))?;
    let main_ty = graph[main_id].ty();
    let main_imports: BTreeMap<String, _> = graph.types()[main_ty]
        .imports
        .iter()
        .map(|(name, kind)| (name.clone(), *kind))
        .collect();
    let main_instance = graph.instantiate(main_id);

    for (index, dependency) in dependencies.iter().enumerate() {
        let import = dependency.import;
        let Some((import_name, import_kind)) = matching(&main_imports, import) else {
            return Err(ComposeError(format!(
                "dependency {import:?}: the component has no such import (it imports {})",
                list(main_imports.keys())
            )));
        };
        let package = Package::from_bytes(
            &format!("skiff:dependency{index}"),
            None,
            dependency.wasm.to_vec(),
            graph.types_mut(),
        )
        .map_err(|e| {
            ComposeError(format!(
                "dependency {import:?}: {} is not a component: {e:#}",
                dependency.source
            ))
        })?;
        let id = graph
            .register_package(package)
            .map_err(|e| ComposeError(format!("{e:#}")))?;
        let exports: BTreeMap<String, _> = graph.types()[graph[id].ty()]
            .exports
            .iter()
            .map(|(name, kind)| (name.clone(), *kind))
            .collect();
        let Some((export_name, export_kind)) = matching(&exports, &import_name) else {
            return Err(ComposeError(format!(
                "dependency {import:?}: {} does not export it (it exports {})",
                dependency.source,
                list(exports.keys())
            )));
        };
        let mut cache = Default::default();
        let mut checker = SubtypeChecker::new(&mut cache);
        if let Err(e) = checker.is_subtype(export_kind, graph.types(), import_kind, graph.types()) {
            return Err(ComposeError(format!(
                "dependency {import:?}: the export of {} does not match what the component imports: {e:#}",
                dependency.source
            )));
        }
        let instance = graph.instantiate(id);
        let export = graph
            .alias_instance_export(instance, &export_name)
            .map_err(|e| ComposeError(format!("dependency {import:?}: {e:#}")))?;
        graph
            .set_instantiation_argument(main_instance, &import_name, export)
            .map_err(|e| ComposeError(format!("dependency {import:?}: {e:#}")))?;
    }

    let main_exports: Vec<String> = graph.types()[main_ty].exports.keys().cloned().collect();
    for name in main_exports {
        let export = graph
            .alias_instance_export(main_instance, &name)
            .map_err(|e| ComposeError(format!("{e:#}")))?;
        graph
            .export(export, &name)
            .map_err(|e| ComposeError(format!("{e:#}")))?;
    }
    graph
        .encode(EncodeOptions::default())
        .map_err(|e| ComposeError(format!("the composed component is invalid: {e:#}")))
}

/// The entry of `names` equal to `wanted`, or equal up to the version
/// suffix (`@x.y.z`).
fn matching<T: Copy>(names: &BTreeMap<String, T>, wanted: &str) -> Option<(String, T)> {
    let unversioned = |name: &str| name.split('@').next().unwrap_or(name).to_string();
    names
        .get(wanted)
        .map(|kind| (wanted.to_string(), *kind))
        .or_else(|| {
            names
                .iter()
                .find(|(name, _)| unversioned(name) == unversioned(wanted))
                .map(|(name, kind)| (name.clone(), *kind))
        })
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "nothing".to_string()
    } else {
        names.join(", ")
    }
}
