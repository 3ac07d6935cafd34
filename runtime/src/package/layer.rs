//! File-tree layers: a directory as a deterministic tar+gzip (sorted
//! entries, zero timestamps and owners, normalized modes) so the same tree
//! always packs to the same digest; and the guarded reverse, which only
//! ever creates regular files and directories inside the destination.

use flate2::Compression;
use flate2::read::GzDecoder;
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::path::{Component, Path};
use std::rc::Rc;

/// Packs the tree under `dir`.
///
/// # Errors
///
/// I/O errors, and symlinks or special files in the tree (a package holds
/// only regular files and directories).
pub fn pack_dir(dir: &Path) -> io::Result<Vec<u8>> {
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    append_sorted(&mut tar, dir, Path::new(""))?;
    let gz = tar.into_inner()?;
    gz.finish()
}

fn append_sorted<W: Write>(
    tar: &mut tar::Builder<W>,
    root: &Path,
    relative: &Path,
) -> io::Result<()> {
    let mut entries: Vec<_> =
        std::fs::read_dir(root.join(relative))?.collect::<io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = relative.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            tar.append_dir(&name, entry.path())?;
            append_sorted(tar, root, &name)?;
        } else if kind.is_file() {
            tar.append_path_with_name(entry.path(), &name)?;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is a symlink or special file; packages hold only regular files and directories",
                    entry.path().display()
                ),
            ));
        }
    }
    Ok(())
}

/// How much one file layer may unpack to. A layer over any of them is
/// refused as soon as that is known, so a small archive cannot fill the
/// disk (a gzip of zeros expands about a thousandfold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of all files together; default 1 GiB.
    pub total_bytes: u64,
    /// Bytes of any one file; default 512 MiB.
    pub file_bytes: u64,
    /// Files and directories; default 100,000.
    pub entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> UnpackLimits {
        UnpackLimits {
            total_bytes: 1 << 30,
            file_bytes: 512 << 20,
            entries: 100_000,
        }
    }
}

/// Archive bytes allowed between two entries (headers, long names, pax
/// records); the tar reader holds them in memory.
const MAX_ENTRY_METADATA: u64 = 1 << 20;
/// Archive bytes allowed outside file contents in one layer: headers and
/// padding take about 1 KiB per entry.
const MAX_METADATA: u64 = 256 << 20;

/// Unpacks a layer made by [`pack_dir`] into `dest` (which must exist),
/// streaming each file to disk. Stops at the first entry that breaks a
/// limit; what was written by then is the caller's to discard.
///
/// # Errors
///
/// A damaged archive; an entry that is not a regular file or directory,
/// whose path is absolute, climbs out with `..` or is not UTF-8; or a
/// layer over one of `limits` (the message names the limit).
pub fn unpack(layer: impl Read, dest: &Path, limits: &UnpackLimits) -> io::Result<()> {
    let meter = Rc::new(Meter {
        between_entries: Cell::new(true),
        ..Meter::default()
    });
    let mut archive = tar::Archive::new(Metered {
        inner: GzDecoder::new(layer),
        meter: meter.clone(),
    });
    let refuse = |message: String| io::Error::new(io::ErrorKind::InvalidData, message);
    let mut entries = 0u64;
    let mut total = 0u64;
    for entry in archive.entries()? {
        let mut entry = entry?;
        meter.between_entries.set(false);
        entries += 1;
        if entries > limits.entries {
            return Err(refuse(format!(
                "the layer has more than {} entries (the limit for one file layer); split the files across several mounts",
                limits.entries
            )));
        }
        let path = entry.path()?.into_owned();
        let safe = path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !safe {
            return Err(refuse(format!(
                "layer entry {} leaves its directory",
                path.display()
            )));
        }
        if path.to_str().is_none() {
            return Err(refuse(format!(
                "layer entry {} has a name that is not UTF-8",
                path.display()
            )));
        }
        let target = dest.join(&path);
        match entry.header().entry_type() {
            tar::EntryType::Directory => std::fs::create_dir_all(&target)?,
            tar::EntryType::Regular => {
                let size = entry.size();
                if size > limits.file_bytes {
                    return Err(refuse(format!(
                        "layer entry {} has {size} bytes, over the limit of {} for one file",
                        path.display(),
                        limits.file_bytes
                    )));
                }
                total += size;
                if total > limits.total_bytes {
                    return Err(refuse(format!(
                        "the files unpack to more than {} bytes (the limit for one file layer); split them across several mounts",
                        limits.total_bytes
                    )));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut file = std::fs::File::create_new(&target)?;
                // The entry reads at most its header's size.
                let copied = io::copy(&mut entry, &mut file)?;
                if copied != size {
                    return Err(refuse(format!(
                        "layer entry {} is truncated",
                        path.display()
                    )));
                }
            }
            other => {
                return Err(refuse(format!(
                    "layer entry {} has unsupported type {other:?}",
                    path.display()
                )));
            }
        }
        meter.between_entries.set(true);
        meter.gap.set(0);
    }
    Ok(())
}

/// Counts the archive bytes read outside file contents.
#[derive(Default)]
struct Meter {
    /// Not inside an entry's contents (headers, extensions, padding).
    between_entries: Cell<bool>,
    /// Bytes read since the last entry ended.
    gap: Cell<u64>,
    /// Bytes read outside file contents in all.
    metadata: Cell<u64>,
}

/// The decompressed archive, metered.
struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let meter = &self.meter;
        if meter.between_entries.get() {
            meter.gap.set(meter.gap.get() + n as u64);
            meter.metadata.set(meter.metadata.get() + n as u64);
            if meter.gap.get() > MAX_ENTRY_METADATA || meter.metadata.get() > MAX_METADATA {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the layer has more than {} bytes of tar metadata between entries (or {} in all)",
                        MAX_ENTRY_METADATA, MAX_METADATA
                    ),
                ));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_reproducible_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("b.txt"), "bee").unwrap();
        std::fs::write(dir.path().join("a.txt"), "ay").unwrap();
        std::fs::write(dir.path().join("sub/c.txt"), "sea").unwrap();
        let first = pack_dir(dir.path()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(dir.path().join("a.txt"), "ay").unwrap(); // new mtime
        assert_eq!(pack_dir(dir.path()).unwrap(), first);

        let out = tempfile::tempdir().unwrap();
        unpack(&first[..], out.path(), &UnpackLimits::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.path().join("sub/c.txt")).unwrap(),
            "sea"
        );
        assert_eq!(
            std::fs::read_to_string(out.path().join("b.txt")).unwrap(),
            "bee"
        );
    }

    #[test]
    fn symlinks_are_refused_when_packing() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let err = pack_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
    }

    #[test]
    fn escaping_entries_are_refused_when_unpacking() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_entry_type(tar::EntryType::Regular);
        // Write the raw name so `..` survives into the archive.
        header.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        header.set_cksum();
        tar.append(&header, &b"x"[..]).unwrap();
        let raw = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&raw).unwrap();
        let layer = gz.finish().unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = unpack(
            &layer[..],
            &out.path().join("inner"),
            &UnpackLimits::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("leaves its directory"), "{err}");
        assert!(!out.path().join("escape").exists());
    }
}
