//! The local package store, `$SKIFF_HOME/store`: an OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/...`). Blobs are written
//! atomically and verified against their digest when read, so a
//! tampered or truncated blob is refused and never loaded. A component
//! blob shared by thousands of apps is hashed once per process: later
//! verifications check that the file is the one hashed and unchanged since
//! (inode, size, modification and status-change times; the last cannot be
//! set back by a user).

use super::Digest;
use super::blob::{BlobSize, BlobWriter};
use super::layer::UnpackLimits;
use super::oci::{Descriptor, ImageIndex, ImageManifest, REF_NAME_ANNOTATION};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// File system trouble.
    #[error("package store {}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A blob a package refers to is absent.
    #[error("blob {digest} is missing from the package store; pack or pull the package again")]
    Missing {
        /// The blob.
        digest: Digest,
    },
    /// A blob's content does not match its digest.
    #[error(
        "blob {digest} is corrupt (its content hashes to {actual}); it must be stored again: pack, pull or upload its package again (`skiff rmi` removes a local package first)"
    )]
    Corrupt {
        /// The digest it should have.
        digest: Digest,
        /// The digest it has.
        actual: Digest,
    },
    /// A blob came with more bytes than it may have.
    #[error("{}", too_large(digest, *limit, *declared))]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// The size it may have.
        limit: u64,
        /// Whether the limit is the size its descriptor declares.
        declared: bool,
    },
    /// A blob ended before the size its descriptor declares.
    #[error(
        "blob {digest} ended after {received} bytes, but its descriptor declares {declared}; refusing it"
    )]
    Truncated {
        /// The blob.
        digest: Digest,
        /// The declared size.
        declared: u64,
        /// The bytes that came.
        received: u64,
    },
    /// A blob's transfer failed or stalled; nothing was stored.
    #[error("blob {digest} could not be received: {reason}; nothing was stored, try again")]
    Transfer {
        /// The blob.
        digest: Digest,
        /// What went wrong.
        reason: String,
    },
    /// A file layer does not unpack: damaged, hostile or over a limit.
    #[error("file layer {digest} refused: {reason}")]
    Unpack {
        /// The layer.
        digest: Digest,
        /// What is wrong with it.
        reason: String,
    },
    /// No package has this reference.
    #[error("no package {reference:?} in the local store; see `skiff images`")]
    UnknownReference {
        /// The reference asked for.
        reference: String,
    },
    /// `index.json` or a manifest is not valid JSON of the right shape.
    #[error("package store {}: {message}", path.display())]
    Format {
        /// The file involved.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn too_large(digest: &Digest, limit: u64, declared: bool) -> String {
    if declared {
        format!(
            "blob {digest} has more bytes than the {limit} its descriptor declares; refusing it"
        )
    } else {
        format!("blob {digest} is larger than the limit of {limit} bytes; refusing it")
    }
}

/// The local package store.
pub struct Store {
    root: PathBuf,
    unpack_limits: UnpackLimits,
    /// Blobs [`Store::verify`] found sound in this process, with the file
    /// as it was then.
    verified: Mutex<HashMap<Digest, BlobFile>>,
}

/// Which file a blob was, when it was verified: a blob is replaced only
/// by renaming a new file over it (another inode), and written in place
/// only by changing its size or modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BlobFile {
    device: u64,
    inode: u64,
    size: u64,
    modified: Option<std::time::SystemTime>,
    /// Status-change time, seconds and nanoseconds.
    changed: (i64, i64),
}

impl BlobFile {
    fn of(metadata: &std::fs::Metadata) -> BlobFile {
        use std::os::unix::fs::MetadataExt;
        BlobFile {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.len(),
            modified: metadata.modified().ok(),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// Adds `:latest` to a reference without a tag; digests pass unchanged.
pub fn normalize_reference(reference: &str) -> String {
    if reference.starts_with("sha256:") || reference.contains('@') {
        return reference.to_string();
    }
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if last.contains(':') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    ///
    /// # Errors
    ///
    /// When the directories cannot be created.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for dir in ["blobs/sha256", "incoming", "unpacked"] {
            let dir = root.join(dir);
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(Store {
            root: root.to_path_buf(),
            unpack_limits: UnpackLimits::default(),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// This store with other limits on what a file layer may unpack to.
    pub fn with_unpack_limits(self, limits: UnpackLimits) -> Store {
        Store {
            unpack_limits: limits,
            ..self
        }
    }

    /// A writer of blob `digest`, which may have `size` bytes: the blob
    /// appears in the store only once it is complete and verified.
    ///
    /// # Errors
    ///
    /// When the temporary file cannot be created.
    pub fn writer(&self, digest: &Digest, size: BlobSize) -> Result<BlobWriter, StoreError> {
        BlobWriter::new(
            digest,
            size,
            self.blob_path(digest),
            &self.root.join("incoming"),
        )
    }

    /// Removes blob `digest` when its content does not match it, so that
    /// fetching it again stores a sound copy; a sound blob is kept.
    /// Returns whether it was removed.
    ///
    /// # Errors
    ///
    /// When the file cannot be removed.
    pub fn discard_if_corrupt(&self, digest: &Digest) -> Result<bool, StoreError> {
        match self.verify(digest) {
            Err(StoreError::Corrupt { .. }) => {
                let path = self.blob_path(digest);
                std::fs::remove_file(&path).map_err(|source| StoreError::Io { path, source })?;
                self.verified_lock().remove(digest);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Verifies blob `digest` without holding it in memory; returns its
    /// size. A blob already verified in this process whose file is
    /// unchanged since (same inode, size and modification time) is not
    /// hashed again.
    ///
    /// # Errors
    ///
    /// [`StoreError::Missing`] or [`StoreError::Corrupt`].
    pub fn verify(&self, digest: &Digest) -> Result<u64, StoreError> {
        use sha2::Digest as _;
        let (mut file, _) = self.open_blob(digest)?;
        let io_error = |source| StoreError::Io {
            path: self.blob_path(digest),
            source,
        };
        let before = BlobFile::of(&file.metadata().map_err(io_error)?);
        if self.verified_lock().get(digest) == Some(&before) {
            return Ok(before.size);
        }
        self.verified_lock().remove(digest);
        let mut hasher = sha2::Sha256::new();
        let size = std::io::copy(&mut file, &mut hasher).map_err(io_error)?;
        let actual = Digest::from_hasher(hasher);
        if &actual != digest {
            return Err(StoreError::Corrupt {
                digest: digest.clone(),
                actual,
            });
        }
        // Written to while it was read: sound as read, but not known to
        // be sound as it is now.
        let after = BlobFile::of(&file.metadata().map_err(io_error)?);
        if after == before && after.size == size {
            self.verified_lock().insert(digest.clone(), after);
        }
        Ok(size)
    }

    fn verified_lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, BlobFile>> {
        // A panic elsewhere while it was held leaves a map that is still
        // consistent: at worst a blob is hashed again.
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens blob `digest` for reading as a stream, unverified (the reader
    /// verifies); returns the file and its size.
    ///
    /// # Errors
    ///
    /// [`StoreError::Missing`], or I/O errors.
    pub fn open_blob(&self, digest: &Digest) -> Result<(std::fs::File, u64), StoreError> {
        let path = self.blob_path(digest);
        let missing_or = |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::NotFound {
                StoreError::Missing {
                    digest: digest.clone(),
                }
            } else {
                StoreError::Io {
                    path: path.clone(),
                    source,
                }
            }
        };
        let file = std::fs::File::open(&path).map_err(missing_or)?;
        let size = file.metadata().map_err(missing_or)?.len();
        Ok((file, size))
    }

    /// Where blob `digest` lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// The digest of the blob at `path`, when `path` is where this store
    /// keeps a blob (as [`Store::blob_path`] gives it).
    pub fn blob_at(&self, path: &Path) -> Option<Digest> {
        let name = path.file_name()?.to_str()?;
        let digest: Digest = format!("sha256:{name}").parse().ok()?;
        (self.blob_path(&digest) == path).then_some(digest)
    }

    /// Stores `bytes`, returning their digest.
    ///
    /// # Errors
    ///
    /// When the blob cannot be written.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        let path = self.blob_path(&digest);
        if !path.exists() {
            write_atomic(&path, bytes)?;
        }
        Ok(digest)
    }

    /// Stores `bytes` only if they hash to `expected` (a pulled blob).
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] on a mismatch, leaving the store unchanged.
    pub fn put_verified(&self, expected: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let actual = Digest::of(bytes);
        if &actual != expected {
            return Err(StoreError::Corrupt {
                digest: expected.clone(),
                actual,
            });
        }
        self.put(bytes).map(drop)
    }

    /// Reads blob `digest`, verifying it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Missing`] or [`StoreError::Corrupt`].
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                StoreError::Missing {
                    digest: digest.clone(),
                }
            } else {
                StoreError::Io { path, source }
            }
        })?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(StoreError::Corrupt {
                digest: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Reads and parses the image manifest `digest`.
    ///
    /// # Errors
    ///
    /// As [`Store::read`], or a manifest that does not parse.
    pub fn manifest(&self, digest: &Digest) -> Result<ImageManifest, StoreError> {
        let bytes = self.read(digest)?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Format {
            path: self.blob_path(digest),
            message: format!("not an OCI image manifest: {e}"),
        })
    }

    /// Every tag and the manifest it names.
    ///
    /// # Errors
    ///
    /// When `index.json` cannot be read.
    pub fn list(&self) -> Result<Vec<(String, Descriptor)>, StoreError> {
        Ok(self
            .index()?
            .manifests
            .into_iter()
            .filter_map(|d| {
                let name = d.annotations.get(REF_NAME_ANNOTATION)?.clone();
                Some((name, d))
            })
            .collect())
    }

    /// The manifest `reference` names: a tag (`name:tag`) or a digest.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownReference`].
    pub fn resolve(&self, reference: &str) -> Result<Descriptor, StoreError> {
        let wanted = normalize_reference(reference);
        let found = self
            .list()?
            .into_iter()
            .find(|(name, d)| *name == wanted || d.digest.as_str() == wanted);
        found
            .map(|(_, d)| d)
            .ok_or_else(|| StoreError::UnknownReference {
                reference: reference.to_string(),
            })
    }

    /// Points `reference` at the manifest `descriptor`, replacing any
    /// previous target of that tag.
    ///
    /// # Errors
    ///
    /// When `index.json` cannot be written.
    pub fn tag(&self, reference: &str, descriptor: &Descriptor) -> Result<(), StoreError> {
        let name = normalize_reference(reference);
        let _lock = self.lock_index()?;
        let mut index = self.index()?;
        index
            .manifests
            .retain(|d| d.annotations.get(REF_NAME_ANNOTATION) != Some(&name));
        let mut entry = descriptor.clone();
        entry
            .annotations
            .insert(REF_NAME_ANNOTATION.to_string(), name);
        index.manifests.push(entry);
        index.manifests.sort_by(|a, b| {
            a.annotations
                .get(REF_NAME_ANNOTATION)
                .cmp(&b.annotations.get(REF_NAME_ANNOTATION))
        });
        self.write_index(&index)
    }

    /// Removes the tag `reference`, then every blob no remaining tag needs.
    /// Returns the removed tag's descriptor.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownReference`], or I/O errors.
    pub fn remove(&self, reference: &str) -> Result<Descriptor, StoreError> {
        let _lock = self.lock_index()?;
        let target = self.resolve(reference)?;
        let wanted = normalize_reference(reference);
        let mut index = self.index()?;
        // By digest: every tag of that package goes; by tag: only that tag.
        let by_digest = wanted.starts_with("sha256:");
        index.manifests.retain(|d| {
            if by_digest {
                d.digest != target.digest
            } else {
                d.annotations.get(REF_NAME_ANNOTATION) != Some(&wanted)
            }
        });
        self.write_index(&index)?;
        self.collect_garbage(&index);
        Ok(target)
    }

    /// Removes every tag that starts with `prefix`, in one rewrite of the
    /// index, without deleting any blob (see [`Store::keep_only`]);
    /// returns how many were removed.
    ///
    /// # Errors
    ///
    /// I/O errors reading or writing `index.json`.
    pub fn untag_all(&self, prefix: &str) -> Result<usize, StoreError> {
        let _lock = self.lock_index()?;
        let mut index = self.index()?;
        let before = index.manifests.len();
        index.manifests.retain(|d| {
            !d.annotations
                .get(REF_NAME_ANNOTATION)
                .is_some_and(|name| name.starts_with(prefix))
        });
        let removed = before - index.manifests.len();
        if removed > 0 {
            self.write_index(&index)?;
        }
        Ok(removed)
    }

    /// Deletes every blob that neither a tagged package nor one of
    /// `packages` needs (its manifest, config and layers), with its
    /// unpacked files; returns how many blobs were removed. A package to
    /// keep whose manifest is missing or damaged keeps only that blob.
    ///
    /// # Errors
    ///
    /// I/O errors reading `index.json` or a manifest to keep; then nothing
    /// was removed.
    pub fn keep_only(&self, packages: &[Digest]) -> Result<usize, StoreError> {
        let _lock = self.lock_index()?;
        let index = self.index()?;
        let roots: Vec<&Digest> = index
            .manifests
            .iter()
            .map(|d| &d.digest)
            .chain(packages)
            .collect();
        let live = self.needed_by(&roots)?;
        Ok(self.sweep(&live))
    }

    /// Deletes blobs no manifest in `index` refers to (best effort).
    fn collect_garbage(&self, index: &ImageIndex) {
        let roots: Vec<&Digest> = index.manifests.iter().map(|d| &d.digest).collect();
        if let Ok(live) = self.needed_by(&roots) {
            self.sweep(&live);
        }
    }

    /// The blobs (hex digests) the packages `roots` need.
    fn needed_by(
        &self,
        roots: &[&Digest],
    ) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let mut live = std::collections::BTreeSet::new();
        for root in roots {
            live.insert(root.hex().to_string());
            match self.manifest(root) {
                Ok(manifest) => {
                    live.insert(manifest.config.digest.hex().to_string());
                    live.extend(manifest.layers.iter().map(|l| l.digest.hex().to_string()));
                }
                Err(e @ StoreError::Io { .. }) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(live)
    }

    /// Deletes every blob (and leftover temporary file) not in `live`,
    /// with its unpacked files; how many were removed.
    fn sweep(&self, live: &std::collections::BTreeSet<String>) -> usize {
        let Ok(entries) = std::fs::read_dir(self.root.join("blobs/sha256")) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) && std::fs::remove_file(entry.path()).is_ok() {
                super::unpacked::remove(&self.root.join("unpacked"), &name);
                removed += 1;
            }
        }
        if removed > 0 {
            self.verified_lock()
                .retain(|digest, _| live.contains(digest.hex()));
        }
        removed
    }

    /// The directory holding file layer `digest` unpacked, unpacking it
    /// (verifying the blob as it is read) when it is missing or no longer
    /// matches what was unpacked. Safe to call from several threads and
    /// processes at once: one unpacks, the others wait and share.
    ///
    /// # Errors
    ///
    /// A missing or corrupt blob, or a layer that fails to unpack or is
    /// over the store's [`UnpackLimits`].
    pub fn unpacked(&self, digest: &Digest) -> Result<PathBuf, StoreError> {
        super::unpacked::unpacked(
            &self.root.join("unpacked"),
            &self.blob_path(digest),
            digest,
            &self.unpack_limits,
        )
    }

    /// Serializes read-modify-write cycles of `index.json` between
    /// processes (two `skiff pack` at once must not lose a tag). Released
    /// when the returned file is dropped.
    fn lock_index(&self) -> Result<std::fs::File, StoreError> {
        let path = self.root.join("index.lock");
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        file.lock().map_err(io)?;
        Ok(file)
    }

    fn index(&self) -> Result<ImageIndex, StoreError> {
        let path = self.root.join("index.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Format {
                path,
                message: format!("index.json is damaged: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ImageIndex {
                schema_version: 2,
                manifests: Vec::new(),
            }),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    fn write_index(&self, index: &ImageIndex) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(index).expect("the index serializes");
        write_atomic(&self.root.join("index.json"), &bytes)
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// crash never leaves a partial file under the final name.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::oci::MANIFEST_MEDIA_TYPE;

    #[test]
    fn references_get_a_default_tag() {
        assert_eq!(normalize_reference("hello"), "hello:latest");
        assert_eq!(normalize_reference("hello:1"), "hello:1");
        assert_eq!(
            normalize_reference("127.0.0.1:5000/a/b"),
            "127.0.0.1:5000/a/b:latest"
        );
        assert_eq!(
            normalize_reference("127.0.0.1:5000/a/b:2"),
            "127.0.0.1:5000/a/b:2"
        );
    }

    #[test]
    fn reads_verify_and_refuse_damaged_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = store.put(b"component bytes").unwrap();
        assert_eq!(store.read(&digest).unwrap(), b"component bytes");
        std::fs::write(store.blob_path(&digest), b"component bytez").unwrap();
        let err = store.read(&digest).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(digest.as_str()), "{err}");
        let err = store.put_verified(&digest, b"other bytes").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }));
    }

    #[test]
    fn a_blob_verified_once_is_hashed_again_only_when_its_file_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = store.put(b"component bytes").unwrap();
        let path = store.blob_path(&digest);
        assert_eq!(store.verify(&digest).unwrap(), 15);
        assert_eq!(store.blob_at(&path), Some(digest.clone()));
        assert_eq!(store.blob_at(&dir.path().join("elsewhere")), None);

        // Written in place (same size, one byte changed, a later time).
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"component bytez").unwrap();
        let err = store.verify(&digest).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");

        // Replaced by another file with the right bytes: sound again, and
        // a damaged file renamed over it is caught in turn.
        write_atomic(&path, b"component bytes").unwrap();
        assert_eq!(store.verify(&digest).unwrap(), 15);
        write_atomic(&path, b"component bytez").unwrap();
        let err = store.verify(&digest).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");

        // A blob collected is forgotten.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            store.verify(&digest).unwrap_err(),
            StoreError::Missing { .. }
        ));
    }

    /// Stores a package of `config` and `layers`; its manifest's digest.
    fn package(store: &Store, config: &[u8], layers: &[&[u8]]) -> Digest {
        let manifest = crate::package::oci::ImageManifest {
            schema_version: 2,
            media_type: Some(MANIFEST_MEDIA_TYPE.to_string()),
            artifact_type: None,
            config: Descriptor::of("config", config),
            layers: layers.iter().map(|l| Descriptor::of("layer", l)).collect(),
            annotations: Default::default(),
        };
        store.put(config).unwrap();
        for layer in layers {
            store.put(layer).unwrap();
        }
        store.put(&serde_json::to_vec(&manifest).unwrap()).unwrap()
    }

    #[test]
    fn keep_only_removes_every_blob_no_kept_or_tagged_package_needs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let kept = package(&store, b"config 1", &[b"shared", b"only 1"]);
        let gone = package(&store, b"config 2", &[b"shared", b"only 2"]);
        let tagged = package(&store, b"config 3", &[b"only 3"]);
        let bytes = store.read(&tagged).unwrap();
        store
            .tag("local:1", &Descriptor::of(MANIFEST_MEDIA_TYPE, &bytes))
            .unwrap();
        let stray = store.put(b"uploaded, never declared").unwrap();
        assert_eq!(store.keep_only(std::slice::from_ref(&kept)).unwrap(), 4);
        for digest in [
            &kept,
            &tagged,
            &Digest::of(b"shared"),
            &Digest::of(b"only 1"),
        ] {
            assert!(store.blob_path(digest).exists(), "{digest} is kept");
        }
        for digest in [
            &gone,
            &stray,
            &Digest::of(b"config 2"),
            &Digest::of(b"only 2"),
        ] {
            assert!(!store.blob_path(digest).exists(), "{digest} is removed");
        }
        assert_eq!(store.keep_only(&[]).unwrap(), 4, "then all but the tag");
    }

    #[test]
    fn untagging_by_prefix_deletes_nothing_until_collected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tag = |reference: &str, digest: &Digest| {
            let bytes = store.read(digest).unwrap();
            let descriptor = Descriptor::of(MANIFEST_MEDIA_TYPE, &bytes);
            store.tag(reference, &descriptor).unwrap();
        };
        let in_use = package(&store, b"config 1", &[b"layer 1"]);
        let unused = package(&store, b"config 2", &[b"layer 2"]);
        let local = package(&store, b"config 3", &[b"layer 3"]);
        tag("assigned:1", &in_use);
        tag("assigned:2", &unused);
        tag("local:1", &local);
        assert_eq!(store.untag_all("assigned:").unwrap(), 2);
        assert_eq!(store.untag_all("assigned:").unwrap(), 0);
        let tags: Vec<String> = store.list().unwrap().into_iter().map(|(t, _)| t).collect();
        assert_eq!(tags, ["local:1"]);
        // Every blob is still there until a collection says what to keep.
        for digest in [&in_use, &unused, &Digest::of(b"layer 2")] {
            assert!(store.blob_path(digest).exists(), "{digest} is kept");
        }
        assert_eq!(store.keep_only(std::slice::from_ref(&in_use)).unwrap(), 3);
        assert!(store.blob_path(&Digest::of(b"layer 1")).exists());
        assert!(store.blob_path(&local).exists());
        assert!(!store.blob_path(&unused).exists());
    }

    #[test]
    fn concurrent_tags_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let store = Store::open(&root).unwrap();
                    let bytes = format!("manifest {i}").into_bytes();
                    store.put(&bytes).unwrap();
                    let descriptor = Descriptor::of(MANIFEST_MEDIA_TYPE, &bytes);
                    store.tag(&format!("app{i}:1"), &descriptor).unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let store = Store::open(&root).unwrap();
        assert_eq!(store.list().unwrap().len(), 8);
    }
}
