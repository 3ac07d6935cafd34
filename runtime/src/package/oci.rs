//! The OCI types a package is made of: descriptors, the image manifest and
//! the image-layout index, with Skiff's media types.

use super::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Media type of an OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Artifact type of a Skiff package.
pub const PACKAGE_ARTIFACT_TYPE: &str = "application/vnd.skiff.package.v1";
/// Media type of a package's config blob: the locked app manifest.
pub const PACKAGE_CONFIG_MEDIA_TYPE: &str = "application/vnd.skiff.package.config.v1+json";
/// Media type of a component layer.
pub const WASM_MEDIA_TYPE: &str = "application/wasm";
/// Media type of a file-tree layer.
pub const FILES_MEDIA_TYPE: &str = "application/vnd.skiff.files.v1.tar+gzip";
/// Config media type of a single component in the CNCF Wasm OCI layout.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The annotation holding a tag in an image-layout index.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// The annotation naming what a layer holds.
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

/// Points at one blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// A descriptor for `bytes`.
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
        }
    }
}

/// An OCI image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MANIFEST_MEDIA_TYPE`].
    #[serde(default)]
    pub media_type: Option<String>,
    /// [`PACKAGE_ARTIFACT_TYPE`] for packages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers, in order.
    pub layers: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image-layout `index.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// One entry per tag.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}
