//! Packages: an app, its components and its files as one content-addressed
//! OCI artifact.
//!
//! The image manifest's config blob is the *locked* app manifest: the
//! `skiff.toml` with every path replaced by the digest of the layer that
//! holds it (components as `application/wasm` layers, file trees as
//! deterministic tar+gzip layers). Packing the same inputs gives the same
//! digest. Opening a package verifies every blob it uses.

pub mod blob;
pub mod compose;
pub mod digest;
pub mod layer;
pub mod oci;
pub mod store;
mod unpacked;

pub use digest::Digest;
pub use store::{Store, StoreError};

use crate::manifest::Manifest;
use oci::{
    Descriptor, FILES_MEDIA_TYPE, ImageManifest, MANIFEST_MEDIA_TYPE, PACKAGE_ARTIFACT_TYPE,
    PACKAGE_CONFIG_MEDIA_TYPE, TITLE_ANNOTATION, WASM_MEDIA_TYPE,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why a package could not be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// A component's source or a files directory could not be read.
    #[error("component \"{component}\": cannot read {}: {reason}", path.display())]
    Input {
        /// The component.
        component: String,
        /// The path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The manifest or config is not a Skiff package.
    #[error("{0}")]
    NotAPackage(String),
}

/// A package as stored: its manifest's descriptor, and the manifest.
pub struct Packed {
    /// Descriptor of the image manifest (its digest is the package's).
    pub descriptor: Descriptor,
    /// The image manifest.
    pub manifest: ImageManifest,
}

/// Packs the app `manifest` (paths relative to `base_dir`) into `store`.
///
/// # Errors
///
/// [`PackageError`] naming the component whose input is unreadable.
pub fn pack(manifest: &Manifest, base_dir: &Path, store: &Store) -> Result<Packed, PackageError> {
    let mut locked = manifest.clone();
    let mut layers: BTreeMap<Digest, Descriptor> = BTreeMap::new();
    for (name, spec) in &mut locked.component {
        let input = |path: &Path, reason: String| PackageError::Input {
            component: name.to_string(),
            path: path.to_path_buf(),
            reason,
        };
        let source = base_dir.join(&spec.source);
        let wasm = std::fs::read(&source).map_err(|e| input(&source, e.to_string()))?;
        if !wasm.starts_with(b"\0asm") {
            return Err(input(&source, "not a WebAssembly file".to_string()));
        }
        let mut descriptor = Descriptor::of(WASM_MEDIA_TYPE, &wasm);
        store.put(&wasm)?;
        spec.source = PathBuf::from(descriptor.digest.as_str());
        descriptor
            .annotations
            .insert(TITLE_ANNOTATION.to_string(), format!("{name}.wasm"));
        layers
            .entry(descriptor.digest.clone())
            .or_insert(descriptor);

        for mount in &mut spec.files {
            let dir = base_dir.join(&mount.source);
            let tree = layer::pack_dir(&dir).map_err(|e| input(&dir, e.to_string()))?;
            let mut descriptor = Descriptor::of(FILES_MEDIA_TYPE, &tree);
            store.put(&tree)?;
            mount.source = PathBuf::from(descriptor.digest.as_str());
            descriptor
                .annotations
                .insert(TITLE_ANNOTATION.to_string(), mount.destination.clone());
            layers
                .entry(descriptor.digest.clone())
                .or_insert(descriptor);
        }
        spec.build = None;
        spec.workdir = None;
    }
    let config = serde_json::to_vec(&locked).expect("a manifest serializes");
    store.put(&config)?;
    let image = ImageManifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.to_string()),
        artifact_type: Some(PACKAGE_ARTIFACT_TYPE.to_string()),
        config: Descriptor::of(PACKAGE_CONFIG_MEDIA_TYPE, &config),
        layers: layers.into_values().collect(),
        annotations: BTreeMap::new(),
    };
    let bytes = serde_json::to_vec(&image).expect("a manifest serializes");
    store.put(&bytes)?;
    Ok(Packed {
        descriptor: Descriptor::of(MANIFEST_MEDIA_TYPE, &bytes),
        manifest: image,
    })
}

/// Opens package `digest` from `store` for running: verifies every blob,
/// unpacks file layers, and returns the app manifest with each digest
/// replaced by the path of the verified blob or unpacked directory.
///
/// # Errors
///
/// A missing or corrupt blob (named by digest), or content that is not a
/// Skiff package.
pub fn open(store: &Store, digest: &Digest) -> Result<Manifest, PackageError> {
    read_locked(store, digest, true)
}

/// Verifies every blob of package `digest` in `store` and returns its
/// locked manifest, without unpacking anything: for a control plane that
/// schedules the package but never runs it. Component sources become blob
/// paths; file mounts keep their layer digests.
///
/// # Errors
///
/// As [`open`].
pub fn verify(store: &Store, digest: &Digest) -> Result<Manifest, PackageError> {
    read_locked(store, digest, false)
}

fn read_locked(store: &Store, digest: &Digest, unpack: bool) -> Result<Manifest, PackageError> {
    let image = store.manifest(digest)?;
    if image.config.media_type != PACKAGE_CONFIG_MEDIA_TYPE {
        return Err(PackageError::NotAPackage(format!(
            "{digest} is not a Skiff package (config media type {:?})",
            image.config.media_type
        )));
    }
    let config = store.read(&image.config.digest)?;
    let mut manifest: Manifest = serde_json::from_slice(&config).map_err(|e| {
        PackageError::NotAPackage(format!("{digest}: the locked manifest is invalid: {e}"))
    })?;
    manifest.validate().map_err(|e| {
        PackageError::NotAPackage(format!("{digest}: the locked manifest is invalid: {e}"))
    })?;
    // A locked path must be the digest of one of this package's layers.
    let layer_of = |name: &str, path: &Path, what: &str| -> Result<Digest, PackageError> {
        let layer: Digest = path
            .to_string_lossy()
            .parse()
            .map_err(|e| PackageError::NotAPackage(format!("component \"{name}\": {e}")))?;
        if !image.layers.iter().any(|l| l.digest == layer) {
            return Err(PackageError::NotAPackage(format!(
                "component \"{name}\": {what} {layer} is not in the package"
            )));
        }
        Ok(layer)
    };
    for (name, spec) in &mut manifest.component {
        let layer = layer_of(name.as_str(), &spec.source, "layer")?;
        store.verify(&layer)?;
        spec.source = store.blob_path(&layer);
        for mount in &mut spec.files {
            let layer = layer_of(name.as_str(), &mount.source, "file layer")?;
            if unpack {
                mount.source = store.unpacked(&layer)?;
            } else {
                store.verify(&layer)?;
            }
        }
    }
    Ok(manifest)
}

/// Total bytes of the package: manifest, config and layers.
pub fn size(descriptor: &Descriptor, image: &ImageManifest) -> u64 {
    descriptor.size + image.config.size + image.layers.iter().map(|l| l.size).sum::<u64>()
}
