//! File layers unpacked for running, under `unpacked/<hex>/` in the store:
//! the tree in `tree/` and, beside it, `contents.json` recording the layer
//! and every path with its size. One process or thread at a time unpacks a
//! given layer (an exclusive lock on `unpacked/.<hex>.lock`), into a
//! staging directory only it uses, hashing the blob as it goes; the result
//! is published by one rename. Every use checks the tree against its
//! record, so a tree that lost, gained or changed the size of a file is
//! unpacked again rather than served.

use super::Digest;
use super::layer::{self, UnpackLimits};
use super::store::StoreError;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The record written beside an unpacked tree.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Contents {
    /// The layer the tree was unpacked from.
    layer: Digest,
    /// Every directory (no size) and file (its size), sorted by path.
    entries: Vec<Entry>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
}

const TREE: &str = "tree";
const CONTENTS: &str = "contents.json";

/// The unpacked tree of file layer `digest`, whose blob is at `blob`,
/// unpacking it under `root` (the store's `unpacked/`) when it is missing
/// or does not match its record.
pub(super) fn unpacked(
    root: &Path,
    blob: &Path,
    digest: &Digest,
    limits: &UnpackLimits,
) -> Result<PathBuf, StoreError> {
    let dir = root.join(digest.hex());
    if matches_record(&dir, digest) {
        return Ok(dir.join(TREE));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    let lock_path = root.join(format!(".{}.lock", digest.hex()));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    // Another unpacker may have finished while this one waited.
    if matches_record(&dir, digest) {
        return Ok(dir.join(TREE));
    }
    // Only the lock holder uses the staging directory; a leftover is from
    // an unpacker that died.
    let staging = root.join(format!(".{}.staging", digest.hex()));
    remove_dir_if_present(&staging).map_err(io(&staging))?;
    let result = unpack_into(&staging, blob, digest, limits).and_then(|()| {
        // A tree that does not match its record goes aside first: a
        // directory cannot be renamed over a non-empty one.
        if dir.exists() {
            let stale = root.join(format!(".{}.stale", digest.hex()));
            remove_dir_if_present(&stale).map_err(io(&stale))?;
            std::fs::rename(&dir, &stale).map_err(io(&dir))?;
            remove_dir_if_present(&stale).map_err(io(&stale))?;
        }
        std::fs::rename(&staging, &dir).map_err(io(&dir))
    });
    if result.is_err() {
        let _ = remove_dir_if_present(&staging);
    }
    result.map(|()| dir.join(TREE))
}

/// Removes the unpacked tree of the layer whose digest's hex is `hex`
/// (its blob is gone), under the same per-layer lock as unpacking: an
/// unpacker under way finishes first, and its tree is removed then, not
/// left behind. The lock file itself stays, so two unpackers can never
/// hold locks on two different files of one layer.
pub(super) fn remove(root: &Path, hex: &str) {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join(format!(".{hex}.lock")));
    let Ok(lock) = lock else { return };
    if lock.lock().is_err() {
        return;
    }
    for leftover in [
        hex.to_string(),
        format!(".{hex}.staging"),
        format!(".{hex}.stale"),
    ] {
        let _ = remove_dir_if_present(&root.join(leftover));
    }
}

/// Unpacks the blob at `blob` into `staging/tree`, verifying on the way
/// that it hashes to `digest`, then records what is there.
fn unpack_into(
    staging: &Path,
    blob: &Path,
    digest: &Digest,
    limits: &UnpackLimits,
) -> Result<(), StoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    let tree = staging.join(TREE);
    std::fs::create_dir_all(&tree).map_err(io(&tree))?;
    let file = std::fs::File::open(blob).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            StoreError::Missing {
                digest: digest.clone(),
            }
        } else {
            StoreError::Io {
                path: blob.to_path_buf(),
                source,
            }
        }
    })?;
    let mut hashing = Hashing {
        inner: file,
        hasher: Sha256::new(),
    };
    let unpacked = layer::unpack(&mut hashing, &tree, limits);
    // Hash whatever the archive reader left unread, so the digest covers
    // the whole blob.
    let drained = io::copy(&mut hashing, &mut io::sink());
    let actual = Digest::from_hasher(hashing.hasher);
    if drained.is_ok() && &actual != digest {
        return Err(StoreError::Corrupt {
            digest: digest.clone(),
            actual,
        });
    }
    unpacked.map_err(|e| StoreError::Unpack {
        digest: digest.clone(),
        reason: e.to_string(),
    })?;
    drained.map_err(io(blob))?;
    let contents = Contents {
        layer: digest.clone(),
        entries: scan(&tree).map_err(io(&tree))?,
    };
    let record = staging.join(CONTENTS);
    std::fs::write(
        &record,
        serde_json::to_vec(&contents).expect("contents serialize"),
    )
    .map_err(io(&record))
}

/// Whether `dir` holds a tree of `digest` that matches its record.
fn matches_record(dir: &Path, digest: &Digest) -> bool {
    let Ok(bytes) = std::fs::read(dir.join(CONTENTS)) else {
        return false;
    };
    let Ok(recorded) = serde_json::from_slice::<Contents>(&bytes) else {
        return false;
    };
    if &recorded.layer != digest {
        return false;
    }
    scan(&dir.join(TREE)).is_ok_and(|entries| entries == recorded.entries)
}

/// Every directory and file under `tree`, sorted; anything else (a
/// symlink, a device) is an error.
fn scan(tree: &Path) -> io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for item in std::fs::read_dir(tree.join(&relative))? {
            let item = item?;
            let path = relative.join(item.file_name());
            let name = path
                .to_str()
                .ok_or_else(|| io::Error::other(format!("{} is not UTF-8", path.display())))?
                .to_string();
            let meta = std::fs::symlink_metadata(item.path())?;
            if meta.is_dir() {
                entries.push(Entry {
                    path: name,
                    size: None,
                });
                pending.push(path);
            } else if meta.is_file() {
                entries.push(Entry {
                    path: name,
                    size: Some(meta.len()),
                });
            } else {
                return Err(io::Error::other(format!(
                    "{} is neither a file nor a directory",
                    item.path().display()
                )));
            }
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

fn remove_dir_if_present(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
