//! Opening the compile cache's files only when no one but this user can
//! have written them: native code is loaded from these files, so a
//! symbolic link, a FIFO, a file someone else owns or may write, or a
//! second hard link (a name someone else may write through) is refused
//! before a byte of it is read.

use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Why a cache file was not opened.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// There is no such file: an ordinary cache miss.
    Absent,
    /// The file exists but is not safe or not readable; says why.
    Unsafe(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Absent => f.write_str("it does not exist"),
            Refusal::Unsafe(reason) => f.write_str(reason),
        }
    }
}

/// Opens `path` for reading if it is a regular file of at most `max_len`
/// bytes, owned by this process's user, with no permission for anyone
/// else, and one link. Symbolic links are not followed, and opening never
/// blocks (a FIFO is refused, not waited on).
pub(crate) fn open(path: &Path, max_len: u64) -> Result<File, Refusal> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Refusal::Absent,
            _ if e.raw_os_error() == Some(libc::ELOOP) => {
                Refusal::Unsafe("it is a symbolic link".to_string())
            }
            _ => Refusal::Unsafe(format!("it cannot be opened: {e}")),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| Refusal::Unsafe(format!("it cannot be examined: {e}")))?;
    check(&meta, max_len).map_err(Refusal::Unsafe)?;
    Ok(file)
}

/// The whole contents of `path`, a small file opened as [`open`] does.
pub(crate) fn read(path: &Path, max_len: u64) -> Result<Vec<u8>, Refusal> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open(path, max_len)?
        .read_to_end(&mut bytes)
        .map_err(|e| Refusal::Unsafe(format!("it cannot be read: {e}")))?;
    Ok(bytes)
}

/// Whether a directory that will hold native code is this user's and
/// writable by no one else.
pub(crate) fn check_directory(meta: &Metadata) -> Result<(), String> {
    check_owner(meta)?;
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "other users may write in it (mode {:o})",
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

fn check(meta: &Metadata, max_len: u64) -> Result<(), String> {
    if !meta.file_type().is_file() {
        return Err("it is not a regular file".to_string());
    }
    check_owner(meta)?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "other users may read or write it (mode {:o})",
            meta.mode() & 0o777
        ));
    }
    if meta.nlink() != 1 {
        return Err(format!("it has {} hard links", meta.nlink()));
    }
    if meta.len() > max_len {
        return Err(format!(
            "it is {} bytes, more than the {max_len} allowed",
            meta.len()
        ));
    }
    Ok(())
}

/// Whether this process's user owns the file or directory.
fn check_owner(meta: &Metadata) -> Result<(), String> {
    let user = effective_user();
    if meta.uid() != user {
        return Err(format!(
            "it is owned by user id {}, not this user ({user})",
            meta.uid()
        ));
    }
    Ok(())
}

fn effective_user() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn unsafe_reason(path: &Path, max_len: u64) -> String {
        match open(path, max_len) {
            Err(Refusal::Unsafe(reason)) => reason,
            Err(Refusal::Absent) => panic!("{} reported absent", path.display()),
            Ok(_) => panic!("{} was opened", path.display()),
        }
    }

    #[test]
    fn only_a_private_regular_file_with_one_link_opens() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, b"x").unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(open(&good, 1).is_ok());
        assert!(unsafe_reason(&good, 0).contains("more than the 0 allowed"));
        assert!(matches!(
            open(&dir.path().join("none"), 1),
            Err(Refusal::Absent)
        ));

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(unsafe_reason(&link, 1).contains("symbolic link"));

        let hard = dir.path().join("hard");
        std::fs::hard_link(&good, &hard).unwrap();
        assert!(unsafe_reason(&good, 1).contains("2 hard links"));
        std::fs::remove_file(&hard).unwrap();

        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(unsafe_reason(&good, 1).contains("mode 644"));

        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        assert!(unsafe_reason(&fifo, 1).contains("not a regular file"));

        assert!(unsafe_reason(dir.path(), 1).contains("not a regular file"));
    }

    #[test]
    fn a_directory_others_may_write_in_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_directory(&std::fs::metadata(dir.path()).unwrap()).is_ok());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let reason = check_directory(&std::fs::metadata(dir.path()).unwrap()).unwrap_err();
        assert!(reason.contains("mode 777"), "{reason}");
    }
}
