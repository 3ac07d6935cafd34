//! Turning what the user points at (a `skiff.toml`, a directory holding one,
//! or a bare `.wasm` component) into a manifest, and running the
//! components' build commands.

use crate::home;
use crate::registry::{self, Registry};
use anyhow::{Context, bail};
use skiff_runtime::Manifest;
use skiff_runtime::manifest::MANIFEST_FILE;
use skiff_runtime::package::compose::{Dependency, compose};
use skiff_runtime::package::oci::Descriptor;
use skiff_runtime::package::{self, Store, StoreError};
use std::path::{Path, PathBuf};
use std::process::Command;

/// An app as found on disk.
pub struct AppSource {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The directory relative paths in the manifest are resolved against.
    pub base_dir: PathBuf,
}

impl AppSource {
    /// Resolves `path`: a manifest file, a directory with `skiff.toml`, or a
    /// `.wasm` file.
    ///
    /// # Errors
    ///
    /// When the path does not exist, a directory has no manifest, or the
    /// manifest is invalid.
    pub fn open(path: &Path) -> anyhow::Result<AppSource> {
        if !path.exists() {
            bail!("{} does not exist", path.display());
        }
        let manifest_path = if path.is_dir() {
            let candidate = path.join(MANIFEST_FILE);
            if !candidate.is_file() {
                bail!(
                    "{} has no {MANIFEST_FILE}; point at an app directory, a manifest or a .wasm file",
                    path.display()
                );
            }
            candidate
        } else if path.extension().is_some_and(|e| e == "wasm") {
            let wasm = path
                .canonicalize()
                .with_context(|| format!("cannot resolve {}", path.display()))?;
            let base_dir = wasm.parent().map(Path::to_path_buf).unwrap_or_default();
            return Ok(AppSource {
                manifest: Manifest::for_single_component(&wasm),
                base_dir,
            });
        } else {
            path.to_path_buf()
        };
        let manifest = Manifest::from_file(&manifest_path)?;
        let base_dir = manifest_path
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", manifest_path.display()))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Ok(AppSource { manifest, base_dir })
    }

    /// Makes every component a local, self-contained file: fetches
    /// `oci://` sources and composes declared dependencies. Call after
    /// [`AppSource::build`], whose outputs it may read.
    ///
    /// # Errors
    ///
    /// A source that cannot be fetched or a dependency that does not fit,
    /// naming the component.
    pub fn resolve(&mut self) -> anyhow::Result<()> {
        fetch_remote_sources(&mut self.manifest)?;
        compose_dependencies(&mut self.manifest, &self.base_dir)
    }

    /// Resolves `reference` in the local package store, pulling it first
    /// when it names a registry and is not there yet. The package is
    /// verified and its file layers unpacked.
    ///
    /// # Errors
    ///
    /// An unknown reference, a failed pull, or a package that fails
    /// verification.
    pub fn from_package(reference: &str) -> anyhow::Result<AppSource> {
        let store = Store::open(&home::store_dir())?;
        let descriptor = local_package(&store, reference)?;
        let manifest = package::open(&store, &descriptor.digest)
            .with_context(|| format!("cannot run package {reference}"))?;
        Ok(AppSource {
            manifest,
            base_dir: PathBuf::from("/"),
        })
    }

    /// Runs every component's `build` command in turn, output streaming to
    /// the terminal; stops at the first failure, naming the component.
    ///
    /// # Errors
    ///
    /// A build command that cannot start or exits unsuccessfully.
    pub fn build(&self) -> anyhow::Result<()> {
        for (name, spec) in &self.manifest.component {
            let Some(command) = &spec.build else {
                continue;
            };
            let workdir = match &spec.workdir {
                Some(dir) => self.base_dir.join(dir),
                None => self.base_dir.clone(),
            };
            eprintln!("building component \"{name}\": {command}");
            let status = Command::new("sh")
                .arg("-c")
                .arg(command)
                .current_dir(&workdir)
                .status()
                .with_context(|| {
                    format!(
                        "cannot start the build of component \"{name}\" in {}",
                        workdir.display()
                    )
                })?;
            if !status.success() {
                bail!("build of component \"{name}\" failed ({status}): {command}");
            }
            let source = self.base_dir.join(&spec.source);
            if !source.is_file() {
                bail!(
                    "the build of component \"{name}\" succeeded but did not write its source {}; \
                     check `source` in the manifest against what `{command}` produces",
                    source.display()
                );
            }
        }
        Ok(())
    }
}

/// Composes every component that declares `dependencies` with them, stores
/// the result, and points the component's source at it; afterwards the
/// manifest has no dependencies left, so running and packing see one
/// self-contained component.
fn compose_dependencies(manifest: &mut Manifest, base_dir: &Path) -> anyhow::Result<()> {
    if manifest
        .component
        .values()
        .all(|spec| spec.dependencies.is_empty())
    {
        return Ok(());
    }
    let store = Store::open(&home::store_dir())?;
    for (name, spec) in &mut manifest.component {
        if spec.dependencies.is_empty() {
            continue;
        }
        let main_path = base_dir.join(&spec.source);
        let main = std::fs::read(&main_path).with_context(|| {
            format!(
                "component \"{name}\": cannot read source {}",
                main_path.display()
            )
        })?;
        let mut libraries = Vec::new();
        for (import, source) in &spec.dependencies {
            let wasm = read_dependency(&store, base_dir, source)
                .with_context(|| format!("component \"{name}\": dependency {import:?}"))?;
            libraries.push((import.as_str(), source.as_str(), wasm));
        }
        let dependencies: Vec<Dependency<'_>> = libraries
            .iter()
            .map(|(import, source, wasm)| Dependency {
                import,
                source,
                wasm,
            })
            .collect();
        let composed = compose(&main, &dependencies)
            .with_context(|| format!("component \"{name}\": cannot compose its dependencies"))?;
        let digest = store.put(&composed)?;
        spec.source = store.blob_path(&digest);
        spec.dependencies.clear();
    }
    Ok(())
}

/// A dependency's bytes, from a path relative to `base_dir` or an `oci://`
/// reference.
fn read_dependency(store: &Store, base_dir: &Path, source: &str) -> anyhow::Result<Vec<u8>> {
    if let Some(reference) = source.strip_prefix("oci://") {
        let registry = Registry::for_reference(reference)?;
        let digest = tokio::runtime::Runtime::new()
            .context("failed to start the async runtime")?
            .block_on(registry.pull_component(store))?;
        return Ok(store.read(&digest)?);
    }
    let path = base_dir.join(source);
    std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// The descriptor of package `reference` in `store`, pulling it first when
/// it names a registry and is not there yet.
///
/// # Errors
///
/// An unknown reference or a failed pull.
pub fn local_package(store: &Store, reference: &str) -> anyhow::Result<Descriptor> {
    match store.resolve(reference) {
        Ok(descriptor) => Ok(descriptor),
        Err(StoreError::UnknownReference { .. }) if registry::is_remote(reference) => {
            let registry = Registry::for_reference(reference)?;
            tokio::runtime::Runtime::new()
                .context("failed to start the async runtime")?
                .block_on(registry.pull(store))
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether a command-line argument names a path rather than a package
/// reference: it exists, or could not be a reference.
pub fn is_path(arg: &str) -> bool {
    Path::new(arg).exists()
        || arg.starts_with('.')
        || arg.starts_with('/')
        || arg.ends_with(".wasm")
        || arg.ends_with(".toml")
}

/// Replaces every `oci://REGISTRY/REPO:TAG` component source with the path
/// of that component, pulled (and verified) into the local store. Such a
/// source is a single component in the CNCF Wasm OCI layout, as published
/// by other Wasm tooling.
fn fetch_remote_sources(manifest: &mut Manifest) -> anyhow::Result<()> {
    let remote: Vec<_> = manifest
        .component
        .iter()
        .filter_map(|(name, spec)| {
            let source = spec.source.to_str()?.strip_prefix("oci://")?;
            Some((name.clone(), source.to_string()))
        })
        .collect();
    if remote.is_empty() {
        return Ok(());
    }
    let store = Store::open(&home::store_dir())?;
    let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
    for (name, reference) in remote {
        let registry = Registry::for_reference(&reference)?;
        let digest = runtime
            .block_on(registry.pull_component(&store))
            .with_context(|| {
                format!("component \"{name}\": cannot fetch source oci://{reference}")
            })?;
        let spec = manifest
            .component
            .get_mut(&name)
            .expect("the component was just listed");
        spec.source = store.blob_path(&digest);
    }
    Ok(())
}
