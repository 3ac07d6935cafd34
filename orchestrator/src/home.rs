//! The Skiff home directory: `$SKIFF_HOME`, default `~/.skiff`. It holds
//! the compile cache and, later, the package store and cluster config.

use anyhow::Context;
use std::path::{Path, PathBuf};

/// The Skiff home directory.
pub fn skiff_home() -> PathBuf {
    if let Some(home) = std::env::var_os("SKIFF_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".skiff"),
        None => PathBuf::from(".skiff"),
    }
}

/// Where compiled components are cached.
pub fn cache_dir() -> PathBuf {
    skiff_home().join("cache")
}

/// The local package store.
pub fn store_dir() -> PathBuf {
    skiff_home().join("store")
}

/// Saved registry credentials (`skiff login`).
pub fn credentials_file() -> PathBuf {
    skiff_home().join("credentials.json")
}

/// Writes `bytes` to `path` atomically with mode 0600, creating parents.
///
/// # Errors
///
/// The file or its directory cannot be written.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
