//! File-tree layers: a directory as a deterministic tar+gzip (sorted
//! entries, zero timestamps and owners, normalized modes) so the same tree
//! always packs to the same digest; and the guarded reverse, which only
//! ever creates regular files and directories inside the destination.

use flate2::Compression;
use flate2::read::GzDecoder;
use std::io::{self, Read, Write};
use std::path::{Component, Path};

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

/// Unpacks a layer made by [`pack_dir`] into `dest` (which must exist).
///
/// # Errors
///
/// A damaged archive, or an entry that is not a regular file or directory,
/// or whose path is absolute or climbs out with `..`.
pub fn unpack(layer: &[u8], dest: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(GzDecoder::new(layer));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let safe = path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !safe {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("layer entry {} leaves its directory", path.display()),
            ));
        }
        let target = dest.join(&path);
        match entry.header().entry_type() {
            tar::EntryType::Directory => std::fs::create_dir_all(&target)?,
            tar::EntryType::Regular => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes)?;
                std::fs::write(&target, bytes)?;
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "layer entry {} has unsupported type {other:?}",
                        path.display()
                    ),
                ));
            }
        }
    }
    Ok(())
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
        unpack(&first, out.path()).unwrap();
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
        let err = unpack(&layer, &out.path().join("inner")).unwrap_err();
        assert!(err.to_string().contains("leaves its directory"), "{err}");
        assert!(!out.path().join("escape").exists());
    }
}
